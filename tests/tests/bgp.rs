//! Several xdplb nodes behind an ECMP router running BIRD 2 (needs root and bird2): the same
//! backend choice on every node, flows spread over both nodes, connections that survive losing
//! a node, node drain, and announcements that follow health and the daemon's life.
//! Run with `--nocapture` to see the measured convergence times.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use lb_tests::{
    bgp::{Cluster, BACKENDS, PORT, VIP},
    peers::{hold, serve_all, tcp_once, Conn, Server},
};
use serde_json::Value;

const BOTH: [&str; 2] = ["10.97.0.2", "10.97.0.3"];
const CONVERGE: Duration = Duration::from_secs(10);

fn vip() -> String {
    format!("{VIP}:{PORT}/tcp")
}

fn target() -> SocketAddr {
    SocketAddr::new(VIP.parse().unwrap(), PORT)
}

fn servers(c: &Cluster) -> Vec<Server> {
    serve_all(&c.backends, PORT, &[]).expect("backend servers")
}

fn backend_name(addr: &str) -> String {
    format!("b{}", BACKENDS.iter().position(|b| *b == addr).unwrap() + 1)
}

/// New flows (conntrack misses) the node placed for the VIP.
fn new_flows(c: &Cluster, i: usize) -> u64 {
    c.daemon(i).json(&["stats"]).unwrap()["vips"][0]["new_flows"]
        .as_u64()
        .unwrap()
}

/// `n` connections from `first_port` on, held open: (connection, backend name).
fn hold_n(c: &Cluster, n: u16, first_port: u16) -> Vec<(Conn, String)> {
    c.client
        .run(|| hold(target(), n, first_port))
        .unwrap()
        .unwrap()
}

/// Asks on every held connection; returns how many answered from their first backend.
fn still_on_their_backends(c: &Cluster, held: &mut [(Conn, String)]) -> usize {
    c.client
        .run(|| {
            held.iter_mut()
                .map(|(conn, owner)| conn.ask().is_ok_and(|name| name == *owner))
                .filter(|ok| *ok)
                .count()
        })
        .unwrap()
}

/// Which node holds a connection-table entry for the client flow from `sport`, and to which
/// backend (by `simulate`, which reads the node's table).
fn entries(c: &Cluster, sport: u16) -> Vec<Option<String>> {
    (0..2)
        .map(|i| {
            let s = c
                .daemon(i)
                .json(&["simulate", &format!("10.97.1.2:{sport}"), &vip()])
                .unwrap();
            (s["conntrack_entry"] == true)
                .then(|| s["conntrack_backend"].as_str().unwrap().to_string())
        })
        .collect()
}

fn node_status(c: &Cluster, i: usize) -> Value {
    c.daemon(i).json(&["node", "status"]).unwrap()
}

#[test]
fn nodes_with_one_configuration_choose_the_same_backend() {
    let c = Cluster::new(false, 7, false).expect("cluster without BGP");
    let list = |i: usize| c.daemon(i).json(&["vip", "list"]).unwrap();
    let digest = |i: usize| {
        list(i)["vips"][0]["ring_digest"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let answers = |i: usize| -> Vec<String> {
        (0..200u16)
            .map(|k| {
                let src = format!("198.51.100.{}:{}", k % 250, 20_000 + k * 7);
                let s = c.daemon(i).json(&["simulate", &src, &vip()]).unwrap();
                s["ring_backend"].as_str().unwrap().to_string()
            })
            .collect()
    };
    assert_eq!(digest(0), digest(1), "same configuration, same ring");
    let first = answers(0);
    assert_eq!(first, answers(1), "simulate disagrees between the nodes");
    for b in BACKENDS {
        let n = first.iter().filter(|a| *a == b).count();
        assert!((40..=95).contains(&n), "{b} got {n} of 200 simulated flows");
    }

    // The backends in another order on node 2: same ring (only the set counts).
    let reordered = lb_tests::bgp::node_config(7, false).replace(
        &format!("[[vip.backend]]\naddr = \"{}\"\n", BACKENDS[0]),
        "",
    ) + &format!("[[vip.backend]]\naddr = \"{}\"\n", BACKENDS[0]);
    let apply = |i: usize, name: &str, text: &str| {
        let d = c.daemon(i);
        let path = d.dir.join(name);
        std::fs::write(&path, text).unwrap();
        d.cli(&["apply", "-f", path.to_str().unwrap()]).unwrap()
    };
    assert!(apply(1, "reordered.toml", &reordered).status.success());
    assert_eq!(digest(0), digest(1), "backend order changed the ring");

    // Another seed on node 2: another ring, other answers.
    assert!(apply(1, "seed.toml", &lb_tests::bgp::node_config(8, false))
        .status
        .success());
    assert_ne!(digest(0), digest(1), "the seed did not change the ring");
    let moved = first
        .iter()
        .zip(answers(1))
        .filter(|(a, b)| **a != *b)
        .count();
    assert!(moved > 60, "another seed moved only {moved} of 200 flows");
    assert_eq!(node_status(&c, 1)["maglev_seed"], 8);

    // Refused input leaves the running state as it was.
    let before = c.daemon(1).ok(&["config", "--json"]).unwrap();
    let bad = lb_tests::bgp::node_config(8, false).replace("table = 4200", "table = 254");
    let out = apply(1, "bad.toml", &bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("254 is the main table"),
        "{err}"
    );
    assert_eq!(c.daemon(1).ok(&["config", "--json"]).unwrap(), before);

    // Without [announce] there is nothing to drain: refused with a sentence, nothing changes.
    let plain = lb_tests::bgp::node_config(7, false).replace("[announce]\ntable = 4200\n", "");
    assert!(apply(1, "plain.toml", &plain).status.success());
    let out = c.daemon(1).cli(&["node", "drain"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("[announce] is not configured"),
        "{err}"
    );
    assert_eq!(node_status(&c, 1)["drained"], false);
    assert_eq!(c.announced(1).unwrap(), "", "no [announce]: no route");
    assert_eq!(
        c.announced(0).unwrap(),
        format!("blackhole {VIP}"),
        "{}",
        c.daemon(0).log()
    );
}

#[test]
fn ecmp_spreads_flows_over_both_nodes_and_the_backends() {
    let c = Cluster::new(true, 7, false).expect("cluster");
    let _servers = servers(&c);
    let t = c.await_next_hops(&BOTH, CONVERGE).unwrap();
    println!("both nodes announced; the router has 2 next hops after {t:?}");
    let n = 300u16;
    let names: Vec<String> = c
        .client
        .run(|| {
            (0..n)
                .map(|i| tcp_once(target(), 30_000 + i).unwrap())
                .collect()
        })
        .unwrap();
    let mut per_backend = BTreeMap::new();
    for name in names {
        *per_backend.entry(name).or_insert(0u32) += 1;
    }
    let per_node = [new_flows(&c, 0), new_flows(&c, 1)];
    println!("{n} connections: per node {per_node:?}, per backend {per_backend:?}");
    assert_eq!(
        per_node.iter().sum::<u64>(),
        n as u64,
        "every flow crossed one node once"
    );
    for (i, f) in per_node.iter().enumerate() {
        assert!(
            *f >= n as u64 / 4,
            "node {} placed only {f} of {n} flows",
            i + 1
        );
    }
    for b in 1..=3 {
        let got = per_backend.get(&format!("b{b}")).copied().unwrap_or(0);
        assert!(
            (70..=130).contains(&got),
            "b{b} served {got} of {n} connections"
        );
    }
}

/// Holds connections through both nodes, fails lb1 with `fail`, and checks that the router
/// converges to lb2 alone and every connection goes on with its backend, through lb2.
fn survive_losing_lb1(what: &str, fail: impl FnOnce(&mut Cluster)) {
    let mut c = Cluster::new(true, 7, false).expect("cluster");
    let _servers = servers(&c);
    c.await_next_hops(&BOTH, CONVERGE).unwrap();
    let n = 40u16;
    let mut held = hold_n(&c, n, 41_000);
    // Which node carries each flow: the one with a connection-table entry for it.
    let on: Vec<Vec<Option<String>>> = (0..n).map(|k| entries(&c, 41_000 + k)).collect();
    let via_lb1: Vec<usize> = (0..n as usize).filter(|k| on[*k][0].is_some()).collect();
    let via_lb2 = (0..n as usize).filter(|k| on[*k][1].is_some()).count();
    assert!(
        via_lb1.len() >= 5 && via_lb2 >= 5,
        "flows per node: lb1 {}, lb2 {via_lb2}",
        via_lb1.len()
    );
    for (k, (_, owner)) in held.iter().enumerate() {
        let node_says = on[k].iter().flatten().next().unwrap();
        assert_eq!(backend_name(node_says), *owner, "flow {k}");
    }

    let t0 = Instant::now();
    fail(&mut c);
    c.await_next_hops(&BOTH[1..], CONVERGE).unwrap();
    let converged = t0.elapsed();

    let t1 = Instant::now();
    let kept = still_on_their_backends(&c, &mut held);
    println!(
        "{what}: router converged {converged:?} after the failure; {kept} of {n} connections kept ({} had been through lb1), all answered within {:?}",
        via_lb1.len(),
        t1.elapsed()
    );
    assert_eq!(
        kept, n as usize,
        "connections broken by the loss of lb1 ({what})"
    );
    // lb2 took over lb1's flows and placed them on the same backends, without their state.
    for k in via_lb1 {
        let s = c
            .daemon(1)
            .json(&[
                "simulate",
                &format!("10.97.1.2:{}", 41_000 + k as u16),
                &vip(),
            ])
            .unwrap();
        assert_eq!(s["conntrack_entry"], true, "lb2 has no entry for flow {k}");
        assert_eq!(
            backend_name(s["conntrack_backend"].as_str().unwrap()),
            held[k].1
        );
    }
}

#[test]
fn connections_survive_a_node_whose_daemons_die() {
    // BIRD and xdplb killed, XDP detached: the BGP session closes at once.
    survive_losing_lb1("lb1 killed and detached", |c| {
        c.nodes[0].bird.as_mut().unwrap().kill9().unwrap();
        c.nodes[0]
            .daemon
            .as_mut()
            .unwrap()
            .kill_and_detach()
            .unwrap();
    });
}

#[test]
fn connections_survive_a_node_losing_its_link() {
    // Silent: the router sees no link change (a bridge is in between); BFD notices.
    survive_losing_lb1("lb1 link down", |c| {
        c.nodes[0]
            .ns
            .exec(&["ip", "link", "set", "eth0", "down"])
            .unwrap();
    });
}

#[test]
fn drain_and_stop_withdraw_without_breaking_connections() {
    let mut c = Cluster::new(true, 7, true).expect("cluster");
    let mut servers = servers(&c);
    c.await_next_hops(&BOTH, CONVERGE).unwrap();
    let n = 30u16;
    let mut held = hold_n(&c, n, 42_000);

    // Drain lb1: withdrawn from the router, every connection goes on through lb2.
    let t0 = Instant::now();
    c.daemon(0).ok(&["node", "drain"]).unwrap();
    let t = c.await_next_hops(&BOTH[1..], CONVERGE).unwrap();
    println!(
        "drain: router converged in {t:?} ({:?} after the command)",
        t0.elapsed()
    );
    assert_eq!(c.announced(0).unwrap(), "");
    let s = node_status(&c, 0);
    assert_eq!(s["drained"], true);
    assert_eq!(s["prefixes"][0]["announced"], false);
    assert!(s["prefixes"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("drained"));
    assert_eq!(
        still_on_their_backends(&c, &mut held),
        n as usize,
        "drain broke connections"
    );
    let before = new_flows(&c, 0);
    c.client
        .run(|| (0..40).for_each(|i| drop(tcp_once(target(), 43_000 + i).unwrap())))
        .unwrap();
    assert_eq!(
        new_flows(&c, 0),
        before,
        "a drained node still gets new flows"
    );
    let status = c.daemon(0).json(&["status"]).unwrap();
    assert_eq!(
        status["interfaces"][0]["name"], "eth0",
        "drain detached XDP"
    );

    // Drained survives a restart; undrain announces again.
    let d = c.nodes[0].daemon.as_mut().unwrap();
    d.stop().unwrap();
    d.spawn().unwrap();
    assert_eq!(
        node_status(&c, 0)["drained"],
        true,
        "drain lost in a restart"
    );
    assert_eq!(c.announced(0).unwrap(), "");
    c.daemon(0).ok(&["node", "undrain"]).unwrap();
    c.await_next_hops(&BOTH, CONVERGE).unwrap();
    assert_eq!(still_on_their_backends(&c, &mut held), n as usize);

    // An orderly stop withdraws (the pinned data path goes on forwarding what arrives), a
    // start announces again; kill -9 leaves the route (the data path still forwards).
    let d = c.nodes[0].daemon.as_mut().unwrap();
    d.stop().unwrap();
    c.await_next_hops(&BOTH[1..], CONVERGE).unwrap();
    assert_eq!(still_on_their_backends(&c, &mut held), n as usize);
    let d = c.nodes[0].daemon.as_mut().unwrap();
    d.spawn().unwrap();
    c.await_next_hops(&BOTH, CONVERGE).unwrap();
    c.nodes[0].daemon.as_mut().unwrap().kill9().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        c.announced(0).unwrap(),
        format!("blackhole {VIP}"),
        "kill -9 withdrew"
    );
    c.nodes[0].daemon.as_mut().unwrap().spawn().unwrap();
    assert_eq!(c.next_hops().unwrap().len(), 2);
    assert_eq!(still_on_their_backends(&c, &mut held), n as usize);

    // No healthy backend anywhere: both nodes withdraw; back when one returns.
    drop(held);
    servers.clear();
    let t0 = Instant::now();
    c.await_next_hops(&[], CONVERGE).unwrap();
    println!(
        "all backends down: withdrawn from the router after {:?}",
        t0.elapsed()
    );
    assert_eq!(
        node_status(&c, 1)["prefixes"][0]["reason"],
        "no healthy backend"
    );
    servers = self::servers(&c);
    c.await_next_hops(&BOTH, CONVERGE).unwrap();
    assert_eq!(
        c.client
            .run(|| tcp_once(target(), 44_000))
            .unwrap()
            .unwrap()
            .len(),
        2
    );
    drop(servers);
}
