//! Hits at N concurrent flows, as users mean it (issue 16): N flows recorded in an IPv4
//! connection table sized to hold them, then packets of those flows only, each call another
//! flow's, in a random order, so the steady state is hits on a big, cold table. The opposite
//! of the flood (more flows than entries: every packet a miss), which the live section's
//! 1 000 000 flows in the default table are.

use anyhow::{bail, Context, Result};
use lb_common::{maps::GEN_FLOWS_PER_ADDR, stats};
use lb_tests::xdp::XDP_TX;
use lb_userspace::datapath::{DataPath, LoadOptions};

use super::{bench_data_path, counts, established, measure, Fill, Input};

/// Sources of the recorded flows (14.0.0.0/8), apart from every other case's.
const FIRST_SOURCE: u32 = 0x0e00_0000;

/// A data path holding `flows` recorded flows, and the order their packets are sent in.
pub struct Concurrent {
    pub flows: u32,
    /// IPv4 connection-table entries: the smallest power of two that holds the flows
    /// (operations.md: powers of two waste nothing).
    pub table: u32,
    dp: DataPath,
    c0: u32,
    /// A random permutation of the flows; the rounds take their packets from it in turn.
    order: Vec<u32>,
    next: usize,
}

/// Flow `i`'s packet to the L2 VIP: a TCP ACK (source `FIRST_SOURCE + i / 16384`, port
/// `1024 + i % 16384`, as the generator numbers flows).
fn packet(i: u32) -> Vec<u8> {
    let src = std::net::Ipv4Addr::from(FIRST_SOURCE + i / GEN_FLOWS_PER_ADDR).to_string();
    let sport = 1024 + (i % GEN_FLOWS_PER_ADDR) as u16;
    established(&src, sport, "10.1.0.100", 80)
}

/// The flows in a random order (Fisher-Yates with a fixed-seed xorshift: every run alike).
/// Flows recorded one after another sit in neighbouring elements; shuffled, consecutive
/// packets land on unrelated buckets and elements, out of the caches' and prefetchers' reach.
fn shuffled(n: u32) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}

impl Concurrent {
    /// Loads a data path whose IPv4 table holds `flows`, and records every flow through the
    /// program itself (one call each, the record limit off), so the entries are the ones real
    /// traffic writes. Fails if any flow went unrecorded.
    pub fn warm(flows: u32) -> Result<Concurrent> {
        let table = flows.next_power_of_two();
        let opts = LoadOptions {
            conntrack_size: table,
            conntrack6_size: 1024,
            ..LoadOptions::default()
        };
        let (mut dp, c0, _) = bench_data_path(&opts, Fill::Empty)?;
        let before = dp.stats()?;
        let prog = dp.program()?;
        for i in 0..flows {
            super::run(prog, &packet(i), 1, c0, XDP_TX)
                .with_context(|| format!("recording flow {i} of {flows}"))?;
        }
        let after = dp.stats()?;
        let recorded = after[stats::EV_CT_MISS as usize] - before[stats::EV_CT_MISS as usize];
        let unrecorded =
            after[stats::EV_CT_UNRECORDED as usize] - before[stats::EV_CT_UNRECORDED as usize];
        if recorded != u64::from(flows) || unrecorded != 0 {
            bail!("warming {flows} flows: {recorded} recorded as new, {unrecorded} unrecorded");
        }
        Ok(Concurrent {
            flows,
            table,
            dp,
            c0,
            order: shuffled(flows),
            next: 0,
        })
    }

    /// ns per packet of the next calls' worth of flows in the order (wrapping), one call
    /// each. Every packet must be a hit: the `conntrack_hit` counter must rise by exactly the
    /// packets sent and no flow may be missed or stale (an evicted flow would measure a miss).
    pub fn measure(&mut self) -> Result<f64> {
        let frames: Vec<Vec<u8>> = (0..counts().1 as usize)
            .map(|k| packet(self.order[(self.next + k) % self.order.len()]))
            .collect();
        self.next = (self.next + frames.len()) % self.order.len();
        let before = self.dp.stats()?;
        let ns = measure(self.dp.program()?, Input::Calls(&frames), self.c0, XDP_TX)?;
        let after = self.dp.stats()?;
        let rise = |ev: u32| after[ev as usize] - before[ev as usize];
        let (hits, misses, stale) = (
            rise(stats::EV_CT_HIT),
            rise(stats::EV_CT_MISS),
            rise(stats::EV_CT_STALE),
        );
        if hits != frames.len() as u64 || misses != 0 || stale != 0 {
            bail!(
                "{} flows in a table of {}: {hits} hits, {misses} misses, {stale} stale of {} packets",
                self.flows,
                self.table,
                frames.len()
            );
        }
        Ok(ns)
    }
}

/// The flow counts measured: 10 000 and 2^20 (quick mode: 65 536, for a short warm-up).
pub fn flow_counts(quick: bool) -> [u32; 2] {
    match quick {
        false => [10_000, 1 << 20],
        true => [10_000, 1 << 16],
    }
}
