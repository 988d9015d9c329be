//! Per-packet cost of the XDP program through BPF_PROG_TEST_RUN, net of an empty XDP_PASS
//! program measured the same way in the same run, plus the verifier's instruction count.
//!
//! Two methods, both from the kernel's own accounting (`BPF_ENABLE_STATS`: run_time_ns /
//! run_cnt), so the syscall overhead is not in the figures:
//! * `repeat`: one call with repeat = N. Valid only where the program's output is again an
//!   input for the same path (pass, and L2 hits: the MAC rewrite is idempotent).
//! * `calls`: N calls with repeat = 1, each with its own packet (new flows for the miss case).
//!
//! Every call's verdict is checked, so a case cannot silently measure the wrong path.

use std::{net::Ipv4Addr, time::Instant};

use anyhow::{bail, Context, Result};
use aya::{
    programs::{TestRun, TestRunOptions, Xdp},
    sys::{enable_stats, Stats},
};
use lb_tests::packet::{Packet, LB_MAC};
use lb_userspace::{
    datapath::{DataPath, LoadOptions},
    mirror::Mirror,
    model::{BackendTarget, HashFields, Mac, Mode, VipSpec, VipState},
};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const REPEAT: u32 = 2_000_000;
const CALLS: u32 = 100_000;

fn stats_of(prog: &Xdp) -> Result<(u64, u64)> {
    let info = prog.info()?;
    Ok((info.run_time().as_nanos() as u64, info.run_count()))
}

/// ns per run by the kernel's accounting over `f`.
fn measure(prog: &mut Xdp, f: impl FnOnce(&mut Xdp) -> Result<()>) -> Result<f64> {
    let (t0, c0) = stats_of(prog)?;
    f(prog)?;
    let (t1, c1) = stats_of(prog)?;
    Ok((t1 - t0) as f64 / (c1 - c0) as f64)
}

fn run_repeat(prog: &mut Xdp, frame: &[u8], want: u32) -> Result<()> {
    let mut out = vec![0u8; frame.len() + 64];
    let r = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat: REPEAT,
        ..Default::default()
    })?;
    if r.return_value != want {
        bail!("verdict {} instead of {want}", r.return_value);
    }
    Ok(())
}

fn run_calls(prog: &mut Xdp, frames: &[Vec<u8>], want: u32) -> Result<()> {
    let mut out = vec![0u8; 256];
    for f in frames {
        let r = prog.test_run(TestRunOptions {
            data_in: Some(f),
            data_out: Some(&mut out),
            ..Default::default()
        })?;
        if r.return_value != want {
            bail!("verdict {} instead of {want}", r.return_value);
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let opts = LoadOptions::default();
    let mut dp = DataPath::load(&opts).context("loading xdplb (root? cargo xtask setup?)")?;
    dp.register_iface(1, Mac(LB_MAC))?;
    let mut mirror = Mirror::new(opts.ring_size, opts.max_vips, opts.max_backends);
    let backends = |v6: bool| -> Vec<BackendTarget> {
        (1..=3u8)
            .map(|i| BackendTarget {
                addr: if v6 {
                    format!("2001:db8:1::{i}").parse().unwrap()
                } else {
                    format!("10.0.1.{i}").parse().unwrap()
                },
                weight: 1,
                mac: Mac([2, 0xbe, 0, 0, 0, i]),
                ifindex: 0,
                port: 0,
            })
            .collect()
    };
    let vip = |addr: &str, v6| VipState {
        spec: VipSpec {
            addr: addr.parse().unwrap(),
            mode: Mode::L2,
            hash: HashFields::FiveTuple,
        },
        backends: backends(v6),
    };
    mirror.sync(
        &mut dp.writer(),
        &[
            vip("10.0.0.100:80/tcp", false),
            vip("[2001:db8::100]:80/tcp", true),
        ],
    )?;
    let insns = dp
        .program()?
        .info()?
        .verified_instruction_count()
        .unwrap_or(0);

    let _stats = enable_stats(Stats::RunTime).context("BPF_ENABLE_STATS")?;
    let non_vip = Packet::tcp("10.0.0.1", 40000, "10.0.0.7", 80).build();
    let hit4 = Packet::tcp("10.0.0.1", 40000, "10.0.0.100", 80).build();
    let hit6 = Packet::tcp("2001:db8::1", 40000, "2001:db8::100", 80).build();
    let new_flows: Vec<Vec<u8>> = (0..CALLS)
        .map(|i| {
            let src = Ipv4Addr::from(0x0b00_0000 + (i >> 14));
            Packet::tcp(
                &src.to_string(),
                1024 + (i & 0x3fff) as u16,
                "10.0.0.100",
                80,
            )
            .build()
        })
        .collect();
    let repeated = |f: &Vec<u8>, n: u32| vec![f.clone(); n as usize];

    let started = Instant::now();
    let mut rows = Vec::new();
    // Baseline: the empty XDP_PASS program, both methods.
    let base_rep = measure(dp.pass_program()?, |p| run_repeat(p, &non_vip, XDP_PASS))?;
    let base_calls = measure(dp.pass_program()?, |p| {
        run_calls(p, &repeated(&non_vip, CALLS), XDP_PASS)
    })?;
    // Prime the connection table for the hit cases.
    run_calls(dp.program()?, &[hit4.clone(), hit6.clone()], XDP_TX)?;
    let lb = dp.program()?;
    rows.push((
        "non-VIP packet",
        "repeat",
        measure(lb, |p| run_repeat(p, &non_vip, XDP_PASS))?,
        base_rep,
    ));
    rows.push((
        "L2 hit, IPv4",
        "repeat",
        measure(lb, |p| run_repeat(p, &hit4, XDP_TX))?,
        base_rep,
    ));
    rows.push((
        "L2 hit, IPv6",
        "repeat",
        measure(lb, |p| run_repeat(p, &hit6, XDP_TX))?,
        base_rep,
    ));
    rows.push((
        "non-VIP packet",
        "calls",
        measure(lb, |p| run_calls(p, &repeated(&non_vip, CALLS), XDP_PASS))?,
        base_calls,
    ));
    rows.push((
        "L2 hit, IPv4",
        "calls",
        measure(lb, |p| run_calls(p, &repeated(&hit4, CALLS), XDP_TX))?,
        base_calls,
    ));
    rows.push((
        "L2 miss (new flow), IPv4",
        "calls",
        measure(lb, |p| run_calls(p, &new_flows, XDP_TX))?,
        base_calls,
    ));

    println!("xdplb per-packet cost (BPF_PROG_TEST_RUN, kernel run_time_ns/run_cnt; repeat={REPEAT}, calls={CALLS})");
    println!("empty XDP_PASS baseline: {base_rep:.1} ns (repeat), {base_calls:.1} ns (calls)");
    println!(
        "{:<28} {:>7} {:>10} {:>10} {:>8}",
        "case", "method", "total ns", "net ns", "x empty"
    );
    for (case, method, ns, base) in rows {
        println!(
            "{case:<28} {method:>7} {ns:>10.1} {:>10.1} {:>8.2}",
            ns - base,
            ns / base
        );
    }
    println!("verifier: {insns} instructions processed (verified_insns)");
    println!("measured in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
