//! MAC addresses followed by the real daemon in the L2 topology (needs root): a backend's new
//! MAC (learned from the neighbour table), the load balancer's own interface's new MAC, and
//! the API answering while a backend's MAC is still being probed for.
//!
//! A host announces its new MAC the way Linux does when `arp_notify` is on: a gratuitous ARP
//! when the address changes, which updates the neighbour entries of the hosts that had one
//! (the LB's for a backend, the client's for the LB). No neighbour entry is edited by hand.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use lb_tests::{l2env::L2Env, netns::Netns};
use lb_userspace::api::{call, Request};

/// The shared L2 environment with two backends, an L2 VIP on the LB's eth0 and both backends
/// added without `--mac`.
struct Env(L2Env);

impl std::ops::Deref for Env {
    type Target = L2Env;
    fn deref(&self) -> &L2Env {
        &self.0
    }
}

impl std::ops::DerefMut for Env {
    fn deref_mut(&mut self) -> &mut L2Env {
        &mut self.0
    }
}

impl Env {
    fn new() -> Env {
        let e = Env(L2Env::with_backends(2, &[]));
        e.d.ok(&["attach", "eth0", "--xdp-mode", "native"]).unwrap();
        e.d.ok(&["vip", "add", &e.vip(), "--mode", "l2"]).unwrap();
        for b in &e.topo.backends {
            e.d.ok(&["backend", "add", &e.vip(), &b.ip4.to_string()])
                .unwrap();
        }
        e
    }

    fn backend_mac(&self, i: usize) -> String {
        let list = self.d.json(&["vip", "list"]).unwrap();
        list["vips"][0]["backends"][i]["mac"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn wait_for_log(&self, line: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.d.log().contains(line) {
            assert!(
                Instant::now() < deadline,
                "no {line:?} in the daemon's log within {timeout:?}:\n{}",
                self.d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Gives `ns`'s eth0 a new MAC, announced with a gratuitous ARP (`arp_notify`).
fn change_mac(ns: &Netns, mac: &str) {
    ns.exec(&["sysctl", "-qw", "net.ipv4.conf.eth0.arp_notify=1"])
        .unwrap();
    ns.exec(&["ip", "link", "set", "dev", "eth0", "address", mac])
        .unwrap();
}

fn both_serve(c: &BTreeMap<String, u32>, n: u32) {
    assert!(
        c.len() == 2 && c.values().sum::<u32>() == n,
        "every request answered, by both backends: {c:?}"
    );
}

#[test]
fn traffic_follows_a_backends_new_mac() {
    let mut e = Env::new();
    let (ip, old) = (e.topo.backends[0].ip4, e.topo.backends[0].mac);
    assert_eq!(
        e.backend_mac(0),
        old.to_string(),
        "learned from the neighbour table"
    );
    both_serve(&e.spread(40, 30000), 40);

    // The backend host is replaced under the same IP: a new MAC. The old one no longer exists,
    // so frames still sent to it would be lost and requests time out.
    let new = "02:00:00:00:aa:01";
    change_mac(&e.topo.backends[0].ns, new);
    e.wait_for_log(
        &format!("backend {ip} of VIP {}: MAC {old} -> {new}", e.vip()),
        Duration::from_secs(5),
    );
    assert_eq!(e.backend_mac(0), new);
    both_serve(&e.spread(40, 31000), 40);

    // Replaced again while the daemon is down: the MAC it saved is checked against the
    // neighbour table when it starts.
    e.d.stop().unwrap();
    let newer = "02:00:00:00:aa:02";
    change_mac(&e.topo.backends[0].ns, newer);
    e.d.spawn().unwrap();
    e.wait_for_log(
        &format!("backend {ip} of VIP {}: MAC {new} -> {newer}", e.vip()),
        Duration::from_secs(5),
    );
    both_serve(&e.spread(40, 31100), 40);
}

#[test]
fn traffic_follows_the_load_balancers_new_mac() {
    let e = Env::new();
    both_serve(&e.spread(20, 32000), 20);
    let old = e.topo.lb.mac;
    let new = "02:00:00:00:bb:02";
    // The client (the LB's router here) learns it from the gratuitous ARP; the data path must
    // take frames sent to the new MAC as its own.
    change_mac(&e.topo.lb.ns, new);
    e.wait_for_log(
        &format!("interface eth0: MAC {old} -> {new}"),
        Duration::from_secs(5),
    );
    let client_sees = || {
        e.topo
            .client
            .ns
            .exec(&["ip", "neigh", "show", &e.topo.lb.ip4.to_string()])
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !client_sees().contains(new) {
        assert!(
            Instant::now() < deadline,
            "the client's entry: {}",
            client_sees()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    both_serve(&e.spread(40, 33000), 40);
}

#[test]
fn the_api_answers_while_a_backends_mac_is_probed_for() {
    let e = Env::new();
    let socket = e.d.socket.clone();
    let vip: lb_userspace::model::VipAddr = e.vip().parse().unwrap();
    // Nobody answers ARP for .250: the add probes for about 1.5 s, then is refused.
    let add = std::thread::spawn({
        let socket = socket.clone();
        move || {
            let req: Request = serde_json::from_value(serde_json::json!({
                "cmd": "backend_add", "vip": vip.to_string(), "addr": "10.99.0.250"
            }))
            .unwrap();
            let started = Instant::now();
            (call(&socket, &req), started.elapsed())
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    for req in [Request::Status, Request::VipList, Request::Stats] {
        let started = Instant::now();
        call(&socket, &req).unwrap();
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(500) && !add.is_finished(),
            "{req:?} answered after {took:?} while the probe was pending (a lock stall)"
        );
    }
    let (refused, took) = add.join().unwrap();
    let err = refused.unwrap_err();
    assert!(
        err.contains("cannot resolve the MAC address of backend 10.99.0.250"),
        "{err}"
    );
    assert!(took >= Duration::from_secs(1), "the probe waited: {took:?}");
    // Refused: nothing changed.
    let list = e.d.json(&["vip", "list"]).unwrap();
    assert_eq!(list["vips"][0]["backends"].as_array().unwrap().len(), 2);
}
