//! Long-lived L3 connections across daemon restarts and upgrades: one VIP per family whose
//! backends are ADDR:PORT (VIP port 80, backends' 8080), b1 and b2 configured and b3 serving
//! but added later (so a lost connection-table entry would move some connections), and the
//! checks that every held connection still answers from its own backend.

use std::net::{IpAddr, SocketAddr};

use crate::{
    l3env::L3Env,
    peers::{hold, tcp_once, Conn, Server},
    topology::{L3Topology, L3_VIP4, L3_VIP6},
};

pub const VIP_PORT: u16 = 80;
pub const BACKEND_PORT: u16 = 8080;
/// Connections held per family.
pub const HELD: u16 = 24;

/// A backend as the CLI and configuration write it with a port: `ADDR:PORT`, `[ADDR]:PORT`.
pub fn with_port(ip: IpAddr) -> String {
    SocketAddr::new(ip, BACKEND_PORT).to_string()
}

/// The VIP of a family, as `ADDR:PORT/tcp`, and as a socket address to connect to.
pub fn vip(v6: bool) -> (String, SocketAddr) {
    let ip: IpAddr = if v6 { L3_VIP6 } else { L3_VIP4 }.parse().unwrap();
    let addr = SocketAddr::new(ip, VIP_PORT);
    (format!("{addr}/tcp"), addr)
}

/// Both families' VIPs with backends b1 and b2 (b3 serves too, but is added later), run by the
/// daemon of `bin`.
pub fn env(bin: std::path::PathBuf) -> L3Env {
    let serve = |topo: &L3Topology| {
        topo.backends
            .iter()
            .enumerate()
            .map(|(i, b)| Server::start(&b.ns, &format!("b{}", i + 1), BACKEND_PORT, &[]))
            .collect()
    };
    let vips = |topo: &L3Topology| {
        let mut cfg = String::new();
        for v6 in [false, true] {
            cfg.push_str(&format!(
                "\n[[vip]]\naddr = \"{}\"\nmode = \"l3\"\n",
                vip(v6).0
            ));
            for b in &topo.backends[..2] {
                let addr = if v6 { b.ip6 } else { b.ip4 };
                cfg.push_str(&format!(
                    "[[vip.backend]]\naddr = \"{addr}\"\nport = {BACKEND_PORT}\n"
                ));
            }
        }
        cfg
    };
    L3Env::start_bin(bin, 3, serve, vips).expect("L3 environment")
}

/// `HELD` connections per family, from ports 41000 (IPv4) and 42000 (IPv6) on, spread over b1
/// and b2: (connection, backend).
pub fn hold_both(e: &L3Env) -> Vec<(Conn, String)> {
    let mut held = Vec::new();
    for (v6, first_port) in [(false, 41000), (true, 42000)] {
        let target = vip(v6).1;
        let conns = e.in_client(|| hold(target, HELD, first_port)).unwrap();
        for b in ["b1", "b2"] {
            assert!(
                conns.iter().any(|(_, n)| n == b),
                "{b} holds some of the connections to {target}"
            );
        }
        held.extend(conns);
    }
    held
}

/// b3 joins both VIPs while the connections are open: new connections (from ports 43000 and
/// 44000 on) reach it too, so held ones stay only through their connection-table entries.
pub fn add_b3(e: &L3Env) {
    let b3 = &e.topo.backends[2];
    for (v6, ip) in [(false, b3.ip4), (true, b3.ip6)] {
        e.d.ok(&["backend", "add", &vip(v6).0, &with_port(ip)])
            .unwrap();
    }
    for (v6, first_port) in [(false, 43000), (true, 44000)] {
        let target = vip(v6).1;
        let names: Vec<String> = e.in_client(|| {
            (0..60)
                .map(|i| tcp_once(target, first_port + i).unwrap())
                .collect()
        });
        assert!(
            names.iter().any(|n| n == "b3"),
            "new connections to {target} reach b3: {names:?}"
        );
    }
}

pub fn vip_list(e: &L3Env) -> String {
    e.d.ok(&["vip", "list", "--json"]).unwrap()
}

pub fn event(e: &L3Env, name: &str) -> u64 {
    e.d.json(&["stats"]).unwrap()["events"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no event {name}"))
}

/// Every held connection answers a request on its own socket, from the backend it had.
pub fn assert_all_answer(held: &mut [(Conn, String)], step: &str) {
    for (i, (c, backend)) in held.iter_mut().enumerate() {
        let got = c
            .ask()
            .unwrap_or_else(|err| panic!("{step}: held connection {i} ({backend}): {err:#}"));
        assert_eq!(
            got, *backend,
            "{step}: held connection {i} moved to another backend"
        );
    }
}

/// Both VIPs answer pings (the ICMP program in the pinned jump table).
pub fn assert_pings(e: &L3Env, step: &str) {
    for vip in [L3_VIP4, L3_VIP6] {
        e.topo
            .client
            .ns
            .exec(&["ping", "-c", "1", "-W", "2", vip])
            .unwrap_or_else(|err| panic!("{step}: no answer to a ping of {vip}: {err}"));
    }
}
