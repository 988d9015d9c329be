//! The xdplb demo: an L2 (direct server return) topology in network namespaces, one VIP with
//! three backends weighted 1:2:1, 300 real TCP connections from a client, and what each
//! backend answered next to what xdplb counted for it. Everything is removed at the end.

use std::{collections::BTreeMap, net::SocketAddr};

use anyhow::{Context, Result};
use lb_common::stats;
use lb_tests::{
    peers::{tcp_once, Server},
    topology::{L2Topology, VIP4},
};
use lb_userspace::{
    datapath::{DataPath, LoadOptions},
    mirror::Mirror,
    model::{BackendTarget, HashFields, Mode, Proto, VipAddr, VipSpec, VipState},
};

const PORT: u16 = 8080;
const WEIGHTS: [u32; 3] = [1, 2, 1];
const CONNECTIONS: u16 = 300;

fn main() -> Result<()> {
    println!("Building the L2 topology: client, lb, b1..b3 on a bridge (network namespaces)...");
    let topo = L2Topology::new(WEIGHTS.len())?;
    let opts = LoadOptions::default();
    let mut dp = DataPath::load(&opts).context("loading the XDP program")?;
    topo.attach(&mut dp)?;
    let _servers = topo
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| Server::start(&b.ns, &format!("b{}", i + 1), PORT, &[]))
        .collect::<Result<Vec<_>>>()?;

    let vip = VipAddr {
        ip: VIP4.parse()?,
        port: PORT,
        proto: Proto::Tcp,
    };
    let backends: Vec<BackendTarget> = topo
        .backends
        .iter()
        .zip(WEIGHTS)
        .map(|(b, weight)| BackendTarget {
            addr: b.ip4,
            weight,
            mac: b.mac,
            ifindex: 0,
        })
        .collect();
    let mut mirror = Mirror::new(opts.ring_size, opts.max_vips, opts.max_backends);
    let state = VipState {
        spec: VipSpec {
            addr: vip,
            mode: Mode::L2,
            hash: HashFields::FiveTuple,
        },
        backends: backends.clone(),
    };
    mirror.sync(&mut dp.writer(), &[state])?;
    println!(
        "xdplb attached (native XDP) to eth0 in namespace {}; VIP {vip} (L2/DSR)",
        topo.lb.ns.name
    );
    for (i, b) in backends.iter().enumerate() {
        println!(
            "  backend b{} {} mac {} weight {}",
            i + 1,
            b.addr,
            b.mac,
            b.weight
        );
    }

    println!("\nClient opens {CONNECTIONS} TCP connections to {vip}...");
    let target = SocketAddr::new(vip.ip, PORT);
    let names = topo.client.ns.run(|| {
        (0..CONNECTIONS)
            .map(|i| tcp_once(target, 30000 + i))
            .collect::<Result<Vec<_>>>()
    })??;
    let mut answered = BTreeMap::new();
    for n in names {
        *answered.entry(n).or_insert(0u32) += 1;
    }

    let wsum: u32 = WEIGHTS.iter().sum();
    println!(
        "\n{:<8} {:>6} {:>8} {:>10} {:>9} {:>12} {:>9}",
        "backend", "weight", "ideal", "answered", "share", "xdplb pkts", "bytes"
    );
    for (i, b) in backends.iter().enumerate() {
        let name = format!("b{}", i + 1);
        let got = answered.get(&name).copied().unwrap_or(0);
        let c = dp.backend_counters(mirror.backend_id(&vip, b.addr).context("backend id")?)?;
        println!(
            "{name:<8} {:>6} {:>7.1}% {got:>10} {:>8.1}% {:>12} {:>9}",
            b.weight,
            b.weight as f64 * 100.0 / wsum as f64,
            got as f64 * 100.0 / CONNECTIONS as f64,
            c.packets,
            c.bytes
        );
    }
    let v = dp.vip_counters(mirror.vip_id(&vip).context("vip id")?)?;
    println!(
        "VIP {vip}: {} packets, {} bytes, {} new flows",
        v.packets, v.bytes, v.new_flows
    );
    println!("\nVerdicts and events on the LB:");
    for (i, n) in dp.stats()?.iter().enumerate() {
        if *n > 0 {
            println!("  {:<20} {n}", stats::name(i as u32).unwrap_or("?"));
        }
    }
    println!("\nRemoving the topology.");
    Ok(())
}
