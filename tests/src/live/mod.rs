//! Live throughput through veth (issue 8): the `xdplb_gen` live-frames generator pushes 60-byte
//! UDP frames into the LB namespace, the path under test forwards them, and `xdplb_sink`
//! counts what reaches the backends' side. Five paths on one topology (see `topo`) in one run:
//! xdplb L2, xdplb L3, the floor forwarder, nftables DNAT and plain kernel routing, each with 1,
//! 10 000 and 1 000 000 flows.
//!
//! Every run is checked before its figure is kept: frames must arrive, the sink must see the
//! destination port the path should produce (8080 after DNAT/NAT, 80 otherwise), XDP paths
//! must not have gone through the kernel's forwarding and kernel paths must have, and xdplb's
//! own verdicts must say it redirected what arrived. A failed check fails the benchmark.

pub mod chart;
mod report;
mod topo;

use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lb_common::{maps as m, stats};
use lb_userspace::{
    datapath::{AttachMode, DataPath, LoadOptions},
    mirror::Mirror,
    model::{BackendTarget, Mac, Mode, VipState},
};
pub use report::markdown;
use report::{machine, print_ratios, ratios_and_goals};
use serde_json::{json, Value};
use topo::{NftTable, Topology, BACKENDS};

use crate::{generator::Generator, packet::Packet, tools::Tools};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Makes Ctrl-C end the benchmark at the next check (`interrupted`) instead of at once, so
/// namespaces, programs and nftables tables are removed on the way out.
pub fn stop_on_sigint() {
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
}

/// Fails once Ctrl-C was pressed (after `stop_on_sigint`).
pub fn interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted; everything the benchmark created has been removed");
    }
    Ok(())
}

/// How long each run lasts.
#[derive(Clone, Debug)]
pub struct Params {
    /// Rounds over all cases per flow count (each case's figure is its median).
    pub rounds: usize,
    /// Measured sending time per case and round (at least; whole generator calls).
    pub duration: Duration,
    /// Aim of one generator call (each has ~25 ms of set-up: few large calls).
    pub call: Duration,
    /// Warm-up packets before a run: twice the flow count, at most this.
    pub warmup_max: u32,
    pub flows: Vec<u32>,
    /// The cases to run (all of `CASES` unless narrowed, for profiling one).
    pub cases: Vec<Case>,
    /// A run whose frames did not all stay on the generator's CPU fails the benchmark (its
    /// figure would not be one core's); else it is reported (smoke runs check paths, not
    /// speed, and a busy machine can pull a veth NAPI poll to another CPU now and then).
    pub one_core_or_fail: bool,
}

impl Params {
    pub fn full() -> Params {
        Params {
            rounds: 3,
            duration: Duration::from_millis(1500),
            call: Duration::from_millis(500),
            warmup_max: 2_000_000,
            flows: vec![1, 10_000, 1_000_000],
            cases: CASES.to_vec(),
            one_core_or_fail: true,
        }
    }

    /// CI smoke: every case and flow count runs, briefly.
    pub fn quick() -> Params {
        Params {
            rounds: 1,
            duration: Duration::from_millis(300),
            call: Duration::from_millis(150),
            warmup_max: 200_000,
            flows: vec![1, 10_000, 1_000_000],
            cases: CASES.to_vec(),
            one_core_or_fail: false,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Case {
    L2,
    L3,
    Floor,
    Nft,
    Routing,
    /// The sink itself on in0: what the generator and one veth hop cost, for reference.
    Direct,
}

pub const CASES: [Case; 6] = [
    Case::L2,
    Case::L3,
    Case::Floor,
    Case::Nft,
    Case::Routing,
    Case::Direct,
];

const VIP_L2: &str = "10.30.0.100";
const VIP_L3: &str = "10.30.0.200";
const VIP_NFT: &str = "10.30.0.50";
const PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;

impl Case {
    /// The case whose `key()` is `key`.
    pub fn by_key(key: &str) -> Option<Case> {
        CASES.into_iter().find(|c| c.key() == key)
    }

    pub fn key(self) -> &'static str {
        match self {
            Case::L2 => "xdplb_l2",
            Case::L3 => "xdplb_l3",
            Case::Floor => "floor",
            Case::Nft => "nft_dnat",
            Case::Routing => "routing",
            Case::Direct => "direct",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Case::L2 => "xdplb L2 (DSR, devmap redirect)",
            Case::L3 => "xdplb L3 (NAT, next hop cached, redirect)",
            Case::Floor => "floor (MAC rewrite + devmap redirect)",
            Case::Nft => "nftables DNAT (kernel)",
            Case::Routing => "plain kernel routing",
            Case::Direct => "reference: sink on in0 (no forwarding)",
        }
    }

    /// Where the generator sends, and the UDP port the sink must then see.
    fn addressing(self) -> (&'static str, u16) {
        match self {
            Case::L2 => (VIP_L2, PORT),
            Case::L3 => (VIP_L3, BACKEND_PORT),
            // The floor forwards whatever it gets: any destination will do.
            Case::Floor => (BACKENDS[0], PORT),
            Case::Nft => (VIP_NFT, BACKEND_PORT),
            Case::Routing | Case::Direct => (BACKENDS[0], PORT),
        }
    }

    fn through_kernel(self) -> bool {
        matches!(self, Case::Nft | Case::Routing)
    }
}

/// One measured run.
struct Run {
    sent: u64,
    delivered: u64,
    secs: f64,
    /// Facts the checks were made on (printed and kept in the JSON).
    facts: Value,
}

struct Bench<'t> {
    t: &'t Topology,
    lb: DataPath,
    /// The pass program (the load balancer's object).
    aux: DataPath,
    /// The sink and the floor forwarder.
    tools: Tools,
    gen: Generator,
    /// The CPU the generator (and so the whole path) runs on.
    cpu: usize,
    p: Params,
}

/// Runs every case at every flow count; returns the `live` section of the results.
pub fn run(p: &Params) -> Result<Value> {
    let t = topo::build().context("building the live topology")?;
    let mut b = Bench::new(&t, p)?;
    let cpu = b.cpu;
    let machine = machine();
    println!(
        "\nlive throughput through veth ({}; generator, veth hops, path and sink on CPU {cpu})",
        machine["summary"].as_str().unwrap_or("")
    );
    println!(
        "{:<40} {:>9} {:>10} {:>10} {:>8} {:>8} {:>8}  checks (last round)",
        "case", "flows", "sent Mpps", "deliv Mpps", "deliv %", "ns/pkt", "spread"
    );
    let mut results = Vec::new();
    for &flows in &p.flows {
        // Rounds over all cases, so load that comes and goes on the machine hits every case
        // alike; a case's figure is the median of its rounds.
        let mut runs: Vec<Vec<Run>> = p.cases.iter().map(|_| Vec::new()).collect();
        for round in 0..p.rounds {
            for (i, &case) in p.cases.iter().enumerate() {
                let r = b
                    .case(case, flows, round == 0)
                    .with_context(|| format!("live case {} with {flows} flows", case.label()))?;
                runs[i].push(r);
            }
        }
        for (&case, rs) in p.cases.iter().zip(&runs) {
            results.push(summarize(case, flows, rs));
        }
    }
    let (ratios, goals) = ratios_and_goals(&results, &p.flows);
    print_ratios(&ratios, &goals);
    Ok(json!({
        "machine": machine,
        "cpu": cpu,
        "core": "the generator thread is pinned to this CPU; veth NAPI runs where the frames \
                 were sent, so the generator, both veth hops, the path under test and the sink \
                 share this one core",
        "params": {
            "rounds": p.rounds,
            "duration_s": p.duration.as_secs_f64(),
            "call_s": p.call.as_secs_f64(),
            "warmup_max": p.warmup_max,
            "frame_bytes": 60,
        },
        "results": results,
        "ratios": ratios,
        "goals": goals,
    }))
}

impl<'t> Bench<'t> {
    /// xdplb with an L2 and an L3 VIP, the sink on s0, the floor's configuration, and the
    /// generator pinned to its CPU. Nothing is attached to in0 yet.
    fn new(t: &'t Topology, p: &Params) -> Result<Bench<'t>> {
        let mut lb = DataPath::load(&LoadOptions::default()).context("loading xdplb")?;
        // As the daemon configures it by default (`conntrack.record_limit`).
        lb.set_record_limit(lb_common::maps::DEFAULT_RECORD_LIMIT)?;
        let opts = lb.options().clone();
        let mut mirror = Mirror::new(opts.ring_size, opts.max_vips, opts.max_backends);
        // L2 backends behind out0 carry its MAC (as the daemon configures them).
        let (out0, out0_mac) = t.lb.run(|| lb.register_egress("out0"))??;
        let backends = |port: u16, ifindex: u32, src_mac: Mac| -> Vec<BackendTarget> {
            BACKENDS
                .iter()
                .map(|a| BackendTarget {
                    addr: a.parse().expect("backend address"),
                    weight: 1,
                    mac: t.s0_mac,
                    ifindex,
                    src_mac,
                    port,
                })
                .collect()
        };
        let vips: [VipState; 2] = [
            crate::xdp::vip(
                &format!("{VIP_L2}:{PORT}/udp"),
                Mode::L2,
                backends(0, out0, out0_mac),
            ),
            crate::xdp::vip(
                &format!("{VIP_L3}:{PORT}/udp"),
                Mode::L3,
                backends(BACKEND_PORT, 0, Mac::default()),
            ),
        ];
        mirror.sync(&mut lb.writer(), &vips)?;

        let aux = DataPath::load_unverified(&LoadOptions::minimal())?;
        let mut tools = Tools::load()?;
        t.sink.run(|| tools.attach(m::PROG_SINK, "s0"))??;
        // A devmap resolves its ifindex in the writer's namespace.
        t.lb.run(|| tools.set_floor(t.out0_index, t.s0_mac, t.out0_mac))??;
        let mut gen = Generator::new()?;
        let cpu = core_for_generator();
        gen.pin(cpu);
        Ok(Bench {
            t,
            lb,
            aux,
            tools,
            gen,
            cpu,
            p: p.clone(),
        })
    }
}

/// Prints one case's line of the table and returns its result: the median of its rounds.
fn summarize(case: Case, flows: u32, rs: &[Run]) -> Value {
    let mpps: Vec<f64> = rs
        .iter()
        .map(|r| r.delivered as f64 / r.secs / 1e6)
        .collect();
    let sent_mpps = median(rs.iter().map(|r| r.sent as f64 / r.secs / 1e6).collect());
    let sent: u64 = rs.iter().map(|r| r.sent).sum();
    let delivered: u64 = rs.iter().map(|r| r.delivered).sum();
    let (lo, hi) = mpps
        .iter()
        .fold((f64::MAX, 0.0f64), |(l, h), m| (l.min(*m), h.max(*m)));
    let med = median(mpps.clone());
    let spread = 100.0 * (hi - lo) / med;
    let facts = &rs.last().expect("at least one round").facts;
    println!(
        "{:<40} {flows:>9} {sent_mpps:>10.3} {med:>10.3} {:>7.1}% {:>8.0} {spread:>7.1}%  {facts}",
        case.label(),
        100.0 * delivered as f64 / sent as f64,
        1e3 / med,
    );
    let cpu_user: Vec<Value> = rs.iter().map(|r| r.facts["cpu_user_pct"].clone()).collect();
    json!({
        "case": case.key(), "label": case.label(), "flows": flows,
        "sent": sent, "delivered": delivered,
        "seconds": rs.iter().map(|r| r.secs).sum::<f64>(),
        "sent_mpps": sent_mpps, "mpps": med, "mpps_rounds": mpps, "spread_pct": spread,
        "checks": facts, "cpu_user_pct_rounds": cpu_user,
    })
}

/// The last CPU: on a shared machine CPU 0 takes more of everyone else's interrupts.
pub fn core_for_generator() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()) - 1
}

impl Bench<'_> {
    fn case(&mut self, case: Case, flows: u32, warm_up: bool) -> Result<Run> {
        self.tools.set_sink_port(case.addressing().1)?;
        let (lb_ns, aux, tools, lb) = (&self.t.lb, &mut self.aux, &mut self.tools, &mut self.lb);
        // The path under test on in0. Kernel paths still need an XDP program on in0 (XDP_PASS):
        // without one, XDP_TX into the veth pair is dropped.
        match case {
            Case::L2 | Case::L3 => lb_ns
                .run(|| lb.attach("in0", AttachMode::Native).map(drop))?
                .map_err(Into::into),
            Case::Floor => lb_ns.run(|| tools.attach(m::PROG_FLOOR, "in0"))?,
            Case::Nft | Case::Routing => lb_ns
                .run(|| aux.attach_pass("in0", AttachMode::Native).map(drop))?
                .map_err(Into::into),
            Case::Direct => lb_ns.run(|| tools.attach(m::PROG_SINK, "in0"))?,
        }?;
        let nft = match case {
            Case::Nft => Some(NftTable::load(lb_ns, "xdplb_bench", &nft_ruleset())?),
            _ => None,
        };
        let run = self.measure(case, flows, warm_up, nft.as_ref());
        drop(nft);
        match case {
            Case::L2 | Case::L3 => self.lb.detach("in0")?,
            Case::Nft | Case::Routing => self.aux.detach("in0")?,
            Case::Floor | Case::Direct => self.tools.detach("in0")?,
        }
        run
    }

    /// Frames the sink counted on the generator's CPU.
    fn sink_on_cpu(&self) -> Result<u64> {
        Ok(self
            .tools
            .sink_per_cpu()?
            .get(self.cpu)
            .copied()
            .unwrap_or(0))
    }

    fn measure(
        &mut self,
        case: Case,
        flows: u32,
        warm_up: bool,
        nft: Option<&NftTable<'_>>,
    ) -> Result<Run> {
        let (dst, want_port) = case.addressing();
        let template = Packet {
            dst_mac: self.t.in0_mac.0,
            src_mac: self.t.g0_mac.0,
            payload: vec![0; 18], // a 60-byte frame (64 on the wire with the FCS)
            ..Packet::udp("10.10.1.0", 1024, dst, PORT)
        }
        .build();
        // Each flow count has its own sources, so no run finds another's table entries.
        let first = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 10, 1, 0)) + 256 * flows.ilog10());
        if warm_up {
            let packets = (2 * flows).clamp(10_000, self.p.warmup_max);
            self.gen
                .send(&self.t.gen, "g0", &template, flows, first, packets)?;
            settle();
        }

        let fwd0 = self.t.lb.snmp("Ip", "ForwDatagrams")?;
        let (sink0, port0) = self.tools.sink_counts()?;
        let on_cpu0 = self.sink_on_cpu()?;
        let lb0 = self.lb.stats()?;
        let nft0 = nft.map(|n| n.counted()).transpose()?;
        let cpu0 = cpu_times(self.cpu)?;
        let started = Instant::now();
        let (mut sent, mut chunk) = (0u64, 100_000u32);
        for _ in 0..10_000 {
            interrupted()?;
            let t = Instant::now();
            self.gen
                .send(&self.t.gen, "g0", &template, flows, first, chunk)?;
            sent += chunk as u64;
            if started.elapsed() >= self.p.duration {
                break;
            }
            // Size the next call to last about `call` at the rate seen.
            let rate = chunk as f64 / t.elapsed().as_secs_f64();
            chunk = (rate * self.p.call.as_secs_f64()).clamp(100_000.0, 50_000_000.0) as u32;
        }
        let secs = started.elapsed().as_secs_f64();
        let cpu1 = cpu_times(self.cpu)?;
        settle();
        let (sink1, port1) = self.tools.sink_counts()?;
        let on_cpu = self.sink_on_cpu()? - on_cpu0;
        let delivered = sink1 - sink0;
        let on_port = port1 - port0;
        let forwarded = self.t.lb.snmp("Ip", "ForwDatagrams")? - fwd0;
        let mut facts = json!({
            "to_port": want_port,
            "delivered_to_port": on_port,
            "kernel_forwarded": forwarded,
            // Whether the whole path ran on the generator's CPU, as the figures assume.
            "sink_on_gen_cpu_pct": (1000.0 * on_cpu as f64 / delivered.max(1) as f64).round() / 10.0,
            // This run is kernel time on its CPU; user time there is someone else's work.
            "cpu_user_pct": (1000.0 * (cpu1.0 - cpu0.0) as f64 / (cpu1.1 - cpu0.1).max(1) as f64).round() / 10.0,
        });

        check_path(case, sent, delivered, on_port, forwarded)?;
        if on_cpu * 100 < delivered * 95 {
            let why = format!(
                "only {on_cpu} of {delivered} frames reached the sink on CPU {}: the path did not \
                 stay on the generator's core, so the figure would not be one core's",
                self.cpu
            );
            if self.p.one_core_or_fail {
                bail!(why);
            }
            println!("warning ({}, {flows} flows): {why}", case.label());
        }
        if let (Some(n), Some(before)) = (nft, nft0) {
            // The DNAT rule's counter sees the first packet of each new connection only.
            let new_conns = n.counted()? - before;
            facts["nft_new_connections"] = json!(new_conns);
        }
        if matches!(case, Case::L2 | Case::L3) {
            let lb1 = self.lb.stats()?;
            let d: Vec<u64> = lb1.iter().zip(&lb0).map(|(a, b)| a - b).collect();
            check_xdplb(&d, delivered, &mut facts)?;
        }
        Ok(Run {
            sent,
            delivered,
            secs,
            facts,
        })
    }
}

/// Fails unless the frames took the case's path: enough arrived, with the port the path should
/// produce, through the kernel's forwarding for kernel cases and around it for XDP ones.
fn check_path(case: Case, sent: u64, delivered: u64, on_port: u64, forwarded: u64) -> Result<()> {
    let (_, want_port) = case.addressing();
    if delivered == 0 || delivered * 100 < sent {
        bail!("only {delivered} of {sent} frames reached the sink (the LB namespace's kernel forwarded {forwarded})");
    }
    if on_port * 100 < delivered * 99 {
        bail!("{on_port} of {delivered} delivered frames had destination port {want_port}: the path did not rewrite as it should");
    }
    if case.through_kernel() {
        if forwarded * 100 < delivered * 99 {
            bail!("the kernel forwarded {forwarded} datagrams for {delivered} delivered: not the kernel path");
        }
    } else if forwarded * 100 > delivered {
        bail!(
            "the kernel forwarded {forwarded} datagrams for {delivered} delivered: not an XDP path"
        );
    }
    Ok(())
}

/// Fails unless xdplb's own verdicts (`d`: the run's increments of its stats array) say it
/// redirected what arrived; adds its connection-table hit rate to the facts.
fn check_xdplb(d: &[u64], delivered: u64, facts: &mut Value) -> Result<()> {
    let seen: u64 = d[..stats::VERDICT_COUNT as usize].iter().sum();
    let redirected = d[stats::REDIRECT as usize];
    if redirected * 100 < seen * 99 || redirected < delivered {
        bail!(
            "xdplb redirected {redirected} of {seen} frames it saw (verdicts {:?}) for {delivered} delivered",
            (0..stats::VERDICT_COUNT)
                .filter(|&i| d[i as usize] > 0)
                .map(|i| (stats::name(i).unwrap_or("?"), d[i as usize]))
                .collect::<Vec<_>>()
        );
    }
    let (hit, miss) = (d[stats::EV_CT_HIT as usize], d[stats::EV_CT_MISS as usize]);
    facts["xdplb_redirect"] = json!(redirected);
    let pct = |n: u64| json!((1000.0 * n as f64 / (hit + miss).max(1) as f64).round() / 10.0);
    facts["conntrack_hit_pct"] = pct(hit);
    // New flows over the per-CPU record limit: placed by the ring, not recorded.
    facts["unrecorded_pct"] = pct(d[stats::EV_CT_UNRECORDED as usize]);
    Ok(())
}

/// (user + nice, total) jiffies of `cpu` from /proc/stat.
fn cpu_times(cpu: usize) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&name))
        .with_context(|| format!("no {name} in /proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    Ok((v[0] + v[1], v.iter().sum()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Lets frames still queued in veth rings reach the sink before it is read.
fn settle() {
    std::thread::sleep(Duration::from_millis(50));
}

/// DNAT of the nft VIP to the three backends' port 8080, round robin over new connections.
fn nft_ruleset() -> String {
    let map = BACKENDS
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{i} : {b} . {BACKEND_PORT}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "table ip xdplb_bench {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
         ip daddr {VIP_NFT} udp dport {PORT} counter dnat ip to numgen inc mod 3 map {{ {map} }}\n  }}\n}}\n"
    )
}
