//! L3 (NAT) connections across changes and daemon restarts (needs root): the L3 topology with
//! the real daemon, one VIP per family whose backends are ADDR:PORT (VIP port 80, backends'
//! 8080), and long-lived TCP connections that must keep their backend and keep exchanging data
//! while a backend is added, the daemon is restarted gracefully, and killed with -9 and
//! started again. A restart must keep every backend id and generation (the connection-table
//! entries stay valid and the replies stay matched), so `vip list --json` is identical too.

use std::net::{IpAddr, SocketAddr};

use lb_tests::{
    daemon::Daemon,
    l3env::L3Env,
    peers::{hold, tcp_once, Conn, Server},
    topology::{L3Topology, L3_VIP4, L3_VIP6},
};
use serde_json::Value;

const VIP_PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;
/// Connections held per family.
const HELD: u16 = 24;

/// A backend as the CLI and configuration write it with a port: `ADDR:PORT`, `[ADDR]:PORT`.
fn with_port(ip: IpAddr) -> String {
    SocketAddr::new(ip, BACKEND_PORT).to_string()
}

/// The VIP of a family, as `ADDR:PORT/tcp`, and as a socket address to connect to.
fn vip(v6: bool) -> (String, SocketAddr) {
    let ip: IpAddr = if v6 { L3_VIP6 } else { L3_VIP4 }.parse().unwrap();
    let addr = SocketAddr::new(ip, VIP_PORT);
    (format!("{addr}/tcp"), addr)
}

/// Both families' VIPs with backends b1 and b2 (b3 serves too, but is added later).
fn env() -> L3Env {
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
    L3Env::start(3, serve, vips).expect("L3 environment")
}

fn vip_list(e: &L3Env) -> String {
    e.d.ok(&["vip", "list", "--json"]).unwrap()
}

fn event(e: &L3Env, name: &str) -> u64 {
    e.d.json(&["stats"]).unwrap()["events"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no event {name}"))
}

/// How a daemon process ends before the next one starts.
type Ending = fn(&mut Daemon) -> anyhow::Result<()>;

/// Every held connection answers a request on its own socket, from the backend it had.
fn assert_all_answer(held: &mut [(Conn, String)], step: &str) {
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

#[test]
fn l3_connections_survive_a_new_backend_and_restarts() {
    let mut e = env();
    let mut held: Vec<(Conn, String)> = Vec::new();
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
    assert_all_answer(&mut held, "opened");

    // A third backend joins both VIPs while the connections are open: they stay where they
    // are, and new connections reach it too.
    let b3 = &e.topo.backends[2];
    for (v6, ip) in [(false, b3.ip4), (true, b3.ip6)] {
        e.d.ok(&["backend", "add", &vip(v6).0, &with_port(ip)])
            .unwrap();
    }
    assert_all_answer(&mut held, "after adding b3");
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

    let list = vip_list(&e);
    let stale = event(&e, "conntrack_stale");
    let restarts: [(&str, Ending); 2] = [
        ("SIGTERM and start", Daemon::stop),
        ("kill -9 and start", Daemon::kill9),
    ];
    for (how, end) in restarts {
        end(&mut e.d).unwrap();
        // No daemon: the pinned program balances and translates on its own, and its ICMP
        // program (in the pinned jump table) still answers pings to the VIPs.
        assert_all_answer(&mut held, &format!("{how}: while no daemon runs"));
        for vip in [L3_VIP4, L3_VIP6] {
            e.topo
                .client
                .ns
                .exec(&["ping", "-c", "1", "-W", "2", vip])
                .unwrap_or_else(|err| {
                    panic!("{how}: no answer to a ping of {vip} while no daemon runs: {err}")
                });
        }
        e.d.spawn().unwrap();
        assert_eq!(vip_list(&e), list, "{how}: vip list --json changed");
        let status = e.d.json(&["status"]).unwrap();
        let adopted: Vec<&Value> = status["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| &i["adopted"])
            .collect();
        assert_eq!(
            adopted,
            [&Value::Bool(true); 2],
            "{how}: both attachments adopted"
        );
        assert_all_answer(&mut held, how);
        assert_eq!(
            event(&e, "conntrack_stale"),
            stale,
            "{how}: a connection-table entry went stale (a backend id or generation changed)"
        );
    }
}
