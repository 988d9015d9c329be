//! The daemon and CLI end to end in the L2 topology (needs root): management under traffic,
//! restarts with kill -9, health failover, refused input, metrics and socket permissions.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    time::{Duration, Instant},
};

use lb_tests::{
    daemon::Daemon,
    packet::Packet,
    peers::{hold, tcp_once, udp_once, Server},
    topology::{L2Topology, VIP4, VIP6},
};
use serde_json::Value;

const PORT: u16 = 8080;

struct Env {
    d: Daemon,
    servers: Vec<Option<Server>>,
    _pass: lb_userspace::datapath::DataPath,
    topo: L2Topology,
}

impl Env {
    fn new(extra: &[&str]) -> Env {
        let topo = L2Topology::new(3).expect("topology");
        let pass = topo
            .attach_peer_pass()
            .expect("pass program on the bridge port");
        let servers = topo
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                Some(
                    Server::start(
                        &b.ns,
                        &format!("b{}", i + 1),
                        PORT,
                        &[VIP4.parse().unwrap()],
                    )
                    .unwrap(),
                )
            })
            .collect();
        let d = Daemon::start(&topo.lb.ns, extra).expect("start the daemon");
        Env {
            d,
            servers,
            _pass: pass,
            topo,
        }
    }

    fn vip(&self) -> String {
        format!("{VIP4}:{PORT}/tcp")
    }

    fn vip_udp(&self) -> String {
        format!("{VIP4}:{PORT}/udp")
    }

    fn b(&self, i: usize) -> String {
        self.topo.backends[i].ip4.to_string()
    }

    /// `n` new TCP connections; the count per backend name.
    fn spread(&self, n: u16, first_port: u16) -> BTreeMap<String, u32> {
        self.topo
            .spread(SocketAddr::new(VIP4.parse().unwrap(), PORT), n, first_port)
    }

    /// After backend `name` (address `addr`) failed: waits until health checks mark it down,
    /// checks that every held connection to another backend still reaches it, and that `n` new
    /// flows from `first_port` on avoid it.
    fn expect_failover(
        &self,
        held: &mut [(lb_tests::peers::Conn, String)],
        name: &str,
        addr: &str,
        n: u16,
        first_port: u16,
    ) {
        wait_for(
            &format!("{name} to be marked down"),
            Duration::from_secs(15),
            || self.backend_state(addr) == "down",
        );
        for (c, owner) in held.iter_mut().filter(|(_, owner)| owner != name) {
            assert_eq!(
                c.ask().unwrap(),
                *owner,
                "a flow of a healthy backend moved when {name} failed"
            );
        }
        let c = self.spread(n, first_port);
        assert!(
            !c.contains_key(name) && c.values().sum::<u32>() == n as u32,
            "new flows after {name} failed: {c:?}"
        );
    }

    /// Applies a TOML configuration through `xdplb apply -f`.
    fn apply(&self, name: &str, toml: &str) {
        self.d.apply_text(name, toml).unwrap();
    }

    /// A second `xdplb daemon` on this test's pins, with its own socket and state file and
    /// `extra` arguments, run until it exits.
    fn other_daemon(&self, extra: &[&std::ffi::OsStr]) -> std::process::Output {
        std::process::Command::new(lb_tests::daemon::xdplb_bin().unwrap())
            .arg("--socket")
            .arg(self.d.dir.join("other.sock"))
            .args(["daemon", "--pin-path"])
            .arg(&self.d.pin_path)
            .arg("--state-file")
            .arg(self.d.dir.join("other.json"))
            .args(extra)
            .output()
            .unwrap()
    }

    /// The TCP VIP on eth0 with the three backends and a fast health check of `kind`.
    fn apply_with_health(&self, kind: &str) {
        let backends: String = (0..3)
            .map(|i| format!("[[vip.backend]]\naddr = \"{}\"\n", self.b(i)))
            .collect();
        let check = format!(
            "{{ kind = \"{kind}\", interval_ms = 200, timeout_ms = 200, rise = 2, fall = 3 }}"
        );
        self.apply(&format!("{kind}.toml"), &format!("[[interface]]\nname = \"eth0\"\n\n[[vip]]\naddr = \"{}\"\nhealth = {check}\n{backends}", self.vip()));
    }

    /// `n` TCP connections to the VIP from `first_port` on, held open: (connection, backend).
    fn hold(&self, n: u16, first_port: u16) -> Vec<(lb_tests::peers::Conn, String)> {
        let target = SocketAddr::new(VIP4.parse().unwrap(), PORT);
        self.topo
            .client
            .ns
            .run(|| hold(target, n, first_port))
            .unwrap()
            .unwrap()
    }

    fn backend_state(&self, addr: &str) -> String {
        let list = self.d.json(&["vip", "list"]).unwrap();
        list["vips"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["addr"] == addr)
            .map(|b| b["state"].as_str().unwrap().to_string())
            .unwrap()
    }
}

fn share(counts: &BTreeMap<String, u32>, name: &str) -> f64 {
    let total: u32 = counts.values().sum();
    *counts.get(name).unwrap_or(&0) as f64 * 100.0 / total as f64
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn cli_manages_vips_and_backends_under_traffic() {
    let e = Env::new(&[]);
    let vip = e.vip();
    e.d.ok(&["attach", "eth0", "--xdp-mode", "native"]).unwrap();
    e.d.ok(&["vip", "add", &vip, "--mode", "l2"]).unwrap();
    // No --mac: the daemon resolves each backend's MAC from the neighbour table (ARP probe).
    for i in 0..3 {
        e.d.ok(&["backend", "add", &vip, &e.b(i)]).unwrap();
    }
    let list = e.d.json(&["vip", "list"]).unwrap();
    for (i, b) in list["vips"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        assert_eq!(
            b["mac"],
            e.topo.backends[i].mac.to_string(),
            "MAC of b{} resolved from the neighbour table",
            i + 1
        );
    }
    let c = e.spread(150, 30000);
    for b in ["b1", "b2", "b3"] {
        assert!((share(&c, b) - 33.3).abs() <= 10.0, "equal shares: {c:?}");
    }

    // simulate answers what the data path did for a new flow, and sees its table entry.
    let sim = e.d.json(&["simulate", "10.99.0.1:30005", &vip]).unwrap();
    assert_eq!(sim["conntrack_entry"], true);
    assert_eq!(sim["ring_backend"], sim["conntrack_backend"]);
    let fresh = e.d.json(&["simulate", "10.99.0.1:39999", &vip]).unwrap();
    assert_eq!(fresh["conntrack_entry"], false);
    let expected_ip = fresh["ring_backend"].as_str().unwrap().to_string();
    let got = e.spread(1, 39999);
    let idx = e
        .topo
        .backends
        .iter()
        .position(|b| b.ip4.to_string() == expected_ip)
        .unwrap();
    assert_eq!(
        got.keys().next().unwrap(),
        &format!("b{}", idx + 1),
        "simulate predicted the backend"
    );

    // Drain b1 while connections to it are held: they keep working, new ones avoid it.
    let mut held = e.hold(30, 31000);
    assert!(held.iter().any(|(_, n)| n == "b1"));
    e.d.ok(&["backend", "drain", &vip, &e.b(0)]).unwrap();
    assert_eq!(e.backend_state(&e.b(0)), "draining");
    for (c, n) in held.iter_mut() {
        assert_eq!(
            c.ask().unwrap(),
            *n,
            "a held connection moved after a drain"
        );
    }
    let c = e.spread(100, 32000);
    assert!(
        !c.contains_key("b1"),
        "no new flow reaches a draining backend: {c:?}"
    );

    // Re-weight b2 to 3 (b1 still drained): b2 75%, b3 25%.
    e.d.ok(&["backend", "set", &vip, &e.b(1), "--weight", "3"])
        .unwrap();
    let c = e.spread(200, 33000);
    assert!((share(&c, "b2") - 75.0).abs() <= 10.0, "weights 3:1: {c:?}");

    // Delete b3: held connections to b2 continue; new flows go to b2 only.
    e.d.ok(&["backend", "del", &vip, &e.b(2)]).unwrap();
    for (c, n) in held.iter_mut().filter(|(_, n)| n == "b2") {
        assert_eq!(c.ask().unwrap(), *n);
    }
    let c = e.spread(50, 34000);
    assert_eq!(c.get("b2"), Some(&50), "{c:?}");

    // Counters reach the CLI.
    let stats = e.d.json(&["stats"]).unwrap();
    let v = &stats["vips"][0];
    assert!(
        v["packets"].as_u64().unwrap() > 0 && v["new_flows"].as_u64().unwrap() >= 500,
        "{v}"
    );
    assert!(stats["verdicts"]["tx"].as_u64().unwrap() > 0);
    let status = e.d.json(&["status"]).unwrap();
    assert_eq!(status["interfaces"][0]["name"], "eth0");
    assert_eq!(status["interfaces"][0]["mode"], "native");
    assert_eq!(
        status["program"]["record_limit"],
        lb_common::maps::DEFAULT_RECORD_LIMIT,
        "the default record limit is in the data path"
    );
    let human = e.d.ok(&["stats"]).unwrap();
    assert!(
        human.contains(&vip) && human.contains("verdicts: "),
        "{human}"
    );

    // stats --watch redraws until Ctrl-C, then exits cleanly.
    let mut watch = std::process::Command::new(lb_tests::daemon::xdplb_bin().unwrap())
        .arg("--socket")
        .arg(&e.d.socket)
        .args(["stats", "--watch"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first screen (the Ctrl-C handler is installed by then), then press Ctrl-C.
    let mut stdout = watch.stdout.take().unwrap();
    let (drawn_tx, drawn) = std::sync::mpsc::channel();
    let screen = std::thread::spawn(move || {
        use std::io::Read;
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&all).contains("Ctrl-C to quit") {
                let _ = drawn_tx.send(());
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    drawn
        .recv_timeout(Duration::from_secs(10))
        .expect("stats --watch draws its screen");
    // SAFETY: signalling our own child by its id.
    unsafe { libc::kill(watch.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let exited = loop {
        if let Some(status) = watch.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = watch.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let status = exited.expect("stats --watch ends on Ctrl-C");
    assert!(
        status.success(),
        "stats --watch exits 0 on Ctrl-C: {status:?}"
    );
    let screen = screen.join().unwrap();
    assert!(
        screen.contains("Ctrl-C to quit") && screen.contains(&vip),
        "{screen}"
    );

    // Every change is logged in one line: who, what, result.
    let log = e.d.log();
    let who = "uid 0 pid ";
    assert!(
        log.lines()
            .any(|l| l.contains(who) && l.contains(&format!("backend drain {vip} {}: ok", e.b(0)))),
        "the drain is one line of the daemon's log:\n{log}"
    );

    // Delete the VIP: its traffic is no longer balanced.
    e.d.ok(&["vip", "del", &vip]).unwrap();
    assert_eq!(
        e.d.json(&["vip", "list"]).unwrap()["vips"],
        Value::Array(vec![])
    );
    drop(held);
}

#[test]
fn kill_dash_nine_and_restart_lose_no_packet() {
    let e = Env::new(&[]);
    let backends: String = (0..3)
        .map(|i| format!("[[vip.backend]]\naddr = \"{}\"\n", e.b(i)))
        .collect();
    let cfg = format!(
        "[[interface]]\nname = \"eth0\"\nxdp_mode = \"native\"\n\n[[vip]]\naddr = \"{VIP4}:{PORT}/udp\"\n{backends}\n[[vip]]\naddr = \"{}\"\n{backends}",
        e.vip()
    );
    e.apply("xdplb.toml", &cfg);

    // TCP connections held across the restart, some on a backend that is draining: only the
    // connection table (entries and backend generations surviving) keeps those where they are.
    let target = SocketAddr::new(VIP4.parse().unwrap(), PORT);
    let mut held = e.hold(30, 42000);
    e.d.ok(&["backend", "drain", &e.vip(), &e.b(0)]).unwrap();
    assert!(
        held.iter().any(|(_, n)| n == "b1"),
        "some held connection is on the drained b1"
    );
    let before = e.d.ok(&["vip", "list", "--json"]).unwrap();
    let stale_before = e.d.json(&["stats"]).unwrap()["events"]["conntrack_stale"].clone();
    let received = |e: &Env| -> u64 {
        e.topo
            .backends
            .iter()
            // Datagrams that reached the backend's UDP layer, read or not.
            .map(|b| {
                b.ns.snmp("Udp", "InDatagrams").unwrap() + b.ns.snmp("Udp", "RcvbufErrors").unwrap()
            })
            .sum()
    };
    let start = received(&e);

    // A bounded stream: 3000 datagrams, one per millisecond, from one socket.
    const N: u64 = 3000;
    let mut e = e;
    let sent = std::thread::scope(|s| {
        let client = &e.topo.client.ns;
        let sender = s.spawn(move || {
            client
                .run(|| {
                    let sock = std::net::UdpSocket::bind("0.0.0.0:40000").unwrap();
                    for _ in 0..N {
                        sock.send_to(b"x", target).unwrap();
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    N
                })
                .unwrap()
        });
        std::thread::sleep(Duration::from_millis(300));
        e.d.kill9().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        e.d.spawn().unwrap();
        sender.join().unwrap()
    });
    wait_for("every datagram to arrive", Duration::from_secs(5), || {
        received(&e) - start >= sent
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        received(&e) - start,
        sent,
        "every packet sent during kill -9 and restart reached a backend"
    );
    assert_eq!(
        e.d.ok(&["vip", "list", "--json"]).unwrap(),
        before,
        "vip list identical after the restart"
    );
    let status = e.d.json(&["status"]).unwrap();
    assert_eq!(
        status["interfaces"][0]["adopted"], true,
        "the restarted daemon adopted the pinned attachment"
    );
    for (c, n) in held.iter_mut() {
        assert_eq!(
            c.ask().unwrap(),
            *n,
            "a held connection changed backend across the restart"
        );
    }
    let stale_after = e.d.json(&["stats"]).unwrap()["events"]["conntrack_stale"].clone();
    assert_eq!(
        stale_after, stale_before,
        "no connection-table entry went stale across the restart"
    );

    // A second daemon on the same pins (another state file and socket) is refused before it
    // touches anything, and traffic goes on.
    let other = e.other_daemon(&[]);
    assert!(!other.status.success());
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("another xdplb daemon holds"),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    for (c, n) in held.iter_mut() {
        assert_eq!(c.ask().unwrap(), *n);
    }
    // And new flows are still balanced (UDP answers from all three).
    let names: Vec<String> = e
        .topo
        .client
        .ns
        .run(|| {
            (0..60)
                .map(|i| udp_once(target, 41000 + i).unwrap())
                .collect()
        })
        .unwrap();
    for b in ["b1", "b2", "b3"] {
        assert!(
            names.iter().any(|n| n == b),
            "{b} answers after the restart"
        );
    }
}

#[test]
fn health_failover_moves_only_the_failed_backends_flows() {
    let mut e = Env::new(&[]);
    e.apply_with_health("http");
    let mut held = e.hold(30, 35000);

    // b2's server stops: health checks fail, b2 leaves the ring.
    let b2 = e.b(1);
    e.servers[1] = None;
    e.expect_failover(&mut held, "b2", &b2, 90, 36000);
    let status = e.d.json(&["status"]).unwrap();
    let h = status["health"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["backend"] == b2.as_str())
        .unwrap()
        .clone();
    assert_eq!(h["status"]["healthy"], false, "{h}");

    // A restart (kill -9) while b2 is down keeps it out: the failed set is part of the saved
    // state, and the restarted checker needs `rise` good probes before b2 returns.
    let before = e.d.ok(&["vip", "list", "--json"]).unwrap();
    e.d.kill9().unwrap();
    e.d.spawn().unwrap();
    assert_eq!(
        e.d.ok(&["vip", "list", "--json"]).unwrap(),
        before,
        "b2 is still down after the restart"
    );
    let c = e.spread(30, 36500);
    assert!(
        !c.contains_key("b2"),
        "no new flow reaches the failed backend after a restart: {c:?}"
    );

    // It comes back when its server does.
    e.servers[1] = Some(Server::start(&e.topo.backends[1].ns, "b2", PORT, &[]).unwrap());
    wait_for("b2 to be active again", Duration::from_secs(15), || {
        e.backend_state(&b2) == "active"
    });
    let c = e.spread(90, 37000);
    assert!(c.contains_key("b2"), "b2 takes new flows again: {c:?}");
    for (c, n) in held.iter_mut().filter(|(_, n)| n != "b2") {
        assert_eq!(
            c.ask().unwrap(),
            *n,
            "a flow of a healthy backend moved when b2 returned"
        );
    }
}

#[test]
fn invalid_input_is_refused_and_changes_nothing() {
    let e = Env::new(&[]);
    let vip = e.vip();
    e.d.ok(&["attach", "eth0"]).unwrap();
    e.d.ok(&["vip", "add", &vip]).unwrap();
    e.d.ok(&[
        "backend",
        "add",
        &vip,
        &e.b(0),
        "--mac",
        &e.topo.backends[0].mac.to_string(),
    ])
    .unwrap();
    // L3 VIPs sharing backend hosts: an all-ports VIP takes every port of its backends.
    let (all, web, api) = (
        "10.99.0.200:*/tcp",
        "10.99.0.201:80/tcp",
        "10.99.0.202:80/tcp",
    );
    for v in [all, web, api] {
        e.d.ok(&["vip", "add", v, "--mode", "l3"]).unwrap();
    }
    e.d.ok(&["backend", "add", all, "10.99.0.30"]).unwrap();
    e.d.ok(&["backend", "add", web, "10.99.0.31:8080"]).unwrap();
    e.d.ok(&["backend", "add", api, "10.99.0.31:9090"]).unwrap();
    let dir = e.d.dir.clone();
    let write = |name: &str, body: &str| {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p.to_str().unwrap().to_string()
    };
    let unknown_key = write(
        "unknown.toml",
        &format!("[[vip]]\naddr = \"{vip}\"\nweight = 3\n"),
    );
    let dup = write(
        "dup.toml",
        &format!("[[vip]]\naddr = \"{vip}\"\n[[vip]]\naddr = \"{vip}\"\n"),
    );
    let bad_limits = write("limits.toml", "[limits]\nring_size = 1009\n");
    let missing_iface = write("iface.toml", "[[interface]]\nname = \"nosuch0\"\n");
    let b = e.b(0);
    let mut cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["vip", "add", "10.99.0.100:80"], "ADDR:PORT/PROTO"),
        (
            vec!["vip", "add", "10.99.0.100:80/sctp"],
            "protocol \"sctp\"",
        ),
        (
            vec!["vip", "add", "10.99.0.300:80/tcp"],
            "address \"10.99.0.300\"",
        ),
        (
            vec!["vip", "add", "10.99.0.100:70000/tcp"],
            "port \"70000\"",
        ),
        (
            vec!["vip", "add", "0.0.0.0:80/tcp"],
            "the unspecified address, which cannot be a VIP",
        ),
        (
            vec!["vip", "add", "[ff02::1]:80/udp"],
            "a multicast address, which cannot be a VIP",
        ),
        (
            vec!["vip", "add", "127.0.0.1:80/tcp"],
            "a loopback address, which cannot be a VIP",
        ),
        (
            vec!["backend", "add", &vip, "10.99.0.100"],
            "is the VIP's own address",
        ),
        (
            vec!["vip", "add", "10.99.0.101:80/tcp", "--mode", "l4"],
            "mode \"l4\"",
        ),
        (
            vec!["backend", "add", &vip, "10.99.0.18:8080"],
            "only L3 (NAT) mode can rewrite the port",
        ),
        (vec!["backend", "add", &vip, "10.99.0.18:0"], "port \"0\""),
        (
            vec!["vip", "add", "10.99.0.101:80/tcp", "--hash", "dst"],
            "hash \"dst\"",
        ),
        (vec!["vip", "add", &vip], "already exists"),
        (
            vec!["vip", "del", "10.99.0.200:80/tcp"],
            "no VIP 10.99.0.200:80/tcp",
        ),
        (
            vec!["backend", "add", "10.99.0.200:80/tcp", "10.99.0.17"],
            "no VIP",
        ),
        (vec!["backend", "add", &vip, &b], "already in VIP"),
        (
            vec!["backend", "add", &vip, "fd99::17"],
            "another IP family",
        ),
        (
            vec!["backend", "add", &vip, "10.99.0.18", "--weight", "100000"],
            "out of range",
        ),
        (
            vec!["backend", "add", &vip, "10.99.0.18", "--mac", "02:00"],
            "MAC address \"02:00\"",
        ),
        (
            vec!["backend", "add", &vip, "10.99.0.18", "--via", "nosuch0"],
            "nosuch0",
        ),
        (
            vec!["backend", "add", &vip, "10.99.0.250"],
            "cannot resolve the MAC address of backend 10.99.0.250",
        ),
        (
            vec!["backend", "del", &vip, "10.99.0.99"],
            "has no backend 10.99.0.99",
        ),
        (
            vec!["backend", "drain", &vip, "10.99.0.99"],
            "has no backend",
        ),
        (vec!["backend", "set", &vip, &b], "at least one of"),
        (
            vec!["backend", "add", web, "10.99.0.30"],
            "backend 10.99.0.30 cannot serve both L3 VIPs 10.99.0.200:*/tcp and 10.99.0.201:80/tcp",
        ),
        (
            vec!["backend", "add", all, "10.99.0.31"],
            "backend 10.99.0.31 cannot serve both L3 VIPs 10.99.0.200:*/tcp and 10.99.0.201:80/tcp",
        ),
        (
            vec!["backend", "set", web, "10.99.0.31:9090"],
            "backend 10.99.0.31 cannot serve both L3 VIPs 10.99.0.201:80/tcp and 10.99.0.202:80/tcp",
        ),
        (
            vec!["attach", "nosuch0"],
            "interface nosuch0 does not exist",
        ),
        (vec!["attach", "eth0"], "already attached"),
        (vec!["detach", "eth9"], "not attached to eth9"),
        (vec!["attach", "bad/name"], "not valid"),
        (vec!["apply", "-f", &unknown_key], "unknown field `weight`"),
        (vec!["apply", "-f", &dup], "declared twice"),
        (vec!["apply", "-f", &bad_limits], "limits cannot change"),
        (
            vec!["apply", "-f", &missing_iface],
            "interface nosuch0 does not exist",
        ),
        (
            vec!["apply", "-f", "/nonexistent/x.toml"],
            "reading /nonexistent/x.toml",
        ),
        (
            vec!["simulate", "[fd99::1]:4000", &vip],
            "different IP families",
        ),
        (
            vec!["simulate", "fd99::1:4000", &vip],
            "invalid socket address",
        ),
        (
            vec!["simulate", "10.99.0.1:4000", "10.99.0.100:81/tcp"],
            "no VIP",
        ),
    ];
    assert!(cases.len() >= 20);
    // Adds an interface and more backends than the data path holds: refused before attaching.
    let too_many: String = (0..4097u32)
        .map(|i| {
            format!(
                "[[vip.backend]]\naddr = \"10.100.{}.{}\"\nmac = \"02:00:00:00:00:01\"\n",
                i / 256,
                i % 256
            )
        })
        .collect();
    let too_many = write("toomany.toml", &format!("[[interface]]\nname = \"eth0\"\n[[interface]]\nname = \"lo\"\n[[vip]]\naddr = \"{vip}\"\n{too_many}"));
    cases.push((vec!["apply", "-f", &too_many], "at most 4096"));
    let before = e.d.ok(&["vip", "list", "--json"]).unwrap();
    let config_before = e.d.ok(&["config", "--json"]).unwrap();
    let interfaces = |e: &Env| e.d.json(&["status"]).unwrap()["interfaces"].clone();
    let interfaces_before = interfaces(&e);
    for (args, want) in &cases {
        let out = e.d.cli(args).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "xdplb {args:?} succeeded");
        assert!(
            err.contains(want),
            "xdplb {args:?}: stderr {err:?} does not mention {want:?}"
        );
        assert_eq!(
            e.d.ok(&["vip", "list", "--json"]).unwrap(),
            before,
            "xdplb {args:?} changed the VIPs"
        );
    }
    assert_eq!(e.d.ok(&["config", "--json"]).unwrap(), config_before);
    assert_eq!(
        interfaces(&e),
        interfaces_before,
        "a refused change left an interface attached"
    );

    // No daemon: the error names the socket tried.
    let out = std::process::Command::new(lb_tests::daemon::xdplb_bin().unwrap())
        .args(["--socket", "/nonexistent/xdplb.sock", "vip", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("cannot reach the xdplb daemon at /nonexistent/xdplb.sock"));
    // Malformed API requests get a sentence too.
    let reply = raw_request(&e.d.socket, "{\"cmd\":\"vip_add\",\"vip\":\"nonsense\"}\n");
    assert!(
        reply.contains("\"ok\":false") && reply.contains("ADDR:PORT/PROTO"),
        "{reply}"
    );
    let reply = raw_request(&e.d.socket, "not json\n");
    assert!(reply.contains("invalid request"), "{reply}");
}

fn raw_request(socket: &std::path::Path, line: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.write_all(line.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn ipv6_vips_are_announced_and_withdrawn_like_ipv4_ones() {
    // The announcement table (docs/deploy-bgp.md) with both families, on one node: a VIP's
    // route is there while the VIP has a backend in its ring and the node is not drained.
    let e = Env::new(&[]);
    let backend = |ip: std::net::IpAddr| {
        format!(
            "[[vip.backend]]\naddr = \"{ip}\"\nmac = \"{}\"\n",
            e.topo.backends[0].mac
        )
    };
    let config = |with_v6_backend: bool| {
        format!(
            "[announce]\ntable = 4201\n\n[[interface]]\nname = \"eth0\"\n\n[[vip]]\naddr = \"{VIP4}:{PORT}/tcp\"\n{}\n[[vip]]\naddr = \"[{VIP6}]:{PORT}/tcp\"\n{}",
            backend(e.topo.backends[0].ip4),
            if with_v6_backend {
                backend(e.topo.backends[0].ip6)
            } else {
                String::new()
            }
        )
    };
    let routes = |family: &str| {
        e.topo
            .lb
            .ns
            .exec(&[
                "ip", family, "route", "show", "table", "4201", "proto", "201",
            ])
            .unwrap_or_default()
    };
    let announced = |v4: bool, v6: bool, when: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (r4, r6) = (routes("-4"), routes("-6"));
            let got = (r4.contains(VIP4), r6.contains(VIP6));
            if got == (v4, v6) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{when}: IPv4 {r4:?}, IPv6 {r6:?}, want {v4}/{v6}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    e.apply("both.toml", &config(true));
    announced(true, true, "both VIPs served");
    assert!(
        routes("-6").contains(&format!("blackhole {VIP6}")),
        "{}",
        routes("-6")
    );
    e.d.ok(&["node", "drain"]).unwrap();
    announced(false, false, "node drained");
    e.d.ok(&["node", "undrain"]).unwrap();
    announced(true, true, "node undrained");
    e.apply("v4-only.toml", &config(false));
    announced(true, false, "the IPv6 VIP without a backend");
}

#[test]
fn cleanup_withdraws_announcements_even_when_the_state_file_is_unreadable() {
    let mut e = Env::new(&[]);
    let b = &e.topo.backends[0];
    let config = format!(
        "[announce]\ntable = 4202\n\n[[interface]]\nname = \"eth0\"\n\n[[vip]]\naddr = \"{VIP4}:{PORT}/tcp\"\n[[vip.backend]]\naddr = \"{}\"\nmac = \"{}\"\n",
        b.ip4, b.mac
    );
    e.apply("announce.toml", &config);
    let routes = || {
        e.topo
            .lb
            .ns
            .exec(&["ip", "route", "show", "table", "4202"])
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !routes().contains(VIP4) {
        assert!(Instant::now() < deadline, "never announced: {:?}", routes());
        std::thread::sleep(Duration::from_millis(50));
    }
    e.d.kill9().unwrap();
    std::fs::write(&e.d.state_file, "{ half a state file").unwrap();
    // Without a configuration the table is unknown: everything else is removed, the state
    // file is kept aside, and the command fails naming what is left.
    let out = e.d.cleanup(&[]).unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stderr.contains("is not valid") && stderr.contains("VIP routes may still be announced"),
        "{stderr}"
    );
    assert!(routes().contains(VIP4), "{}", routes());
    let aside = format!("{}.unreadable", e.d.state_file.display());
    assert_eq!(
        std::fs::read_to_string(&aside).unwrap(),
        "{ half a state file"
    );
    assert!(!e.d.state_file.exists());
    assert!(stdout.contains("kept the unreadable"), "{stdout}");
    assert!(
        !e.d.pin_path.join("XDPLB_VIPS").exists(),
        "pins left: {stdout}"
    );
    // With the configuration it ran with, the announcements go.
    let file = e.d.dir.join("announce.toml");
    let out = e.d.cleanup(&["--config", file.to_str().unwrap()]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!routes().contains(VIP4), "{}", routes());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("withdrawn") && l.contains(VIP4)),
        "{stdout}"
    );
}

#[test]
fn metrics_are_served_and_the_socket_refuses_non_root() {
    let e = Env::new(&["--metrics", "127.0.0.1:9464"]);
    let vip = e.vip();
    e.d.ok(&["attach", "eth0"]).unwrap();
    e.d.ok(&["vip", "add", &vip]).unwrap();
    for i in 0..3 {
        e.d.ok(&["backend", "add", &vip, &e.b(i)]).unwrap();
    }
    e.spread(30, 38000);
    // The daemon runs in the LB namespace: scrape its loopback from there.
    let samples = lb_tests::daemon::scrape(&e.topo.lb.ns, "127.0.0.1:9464").unwrap();
    let find = |name: &str, label: (&str, &str)| {
        samples
            .iter()
            .find(|s| s.name == name && s.labels.get(label.0).map(String::as_str) == Some(label.1))
            .map(|s| s.value)
    };
    assert!(find("xdplb_vip_packets_total", ("vip", &vip)).unwrap() >= 30.0 * 5.0);
    assert_eq!(find("xdplb_vip_new_flows_total", ("vip", &vip)), Some(30.0));
    assert_eq!(find("xdplb_backend_up", ("backend", &e.b(0))), Some(1.0));
    assert!(find("xdplb_verdicts_total", ("reason", "tx")).unwrap() > 0.0);

    // Non-root: the socket file (0600) refuses the connection.
    let mode = std::fs::metadata(&e.d.socket)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap();
    assert_eq!(mode, 0o600);
    let shared = lb_tests::daemon::SharedBin::new().unwrap();
    let nobody = |args: &[&str]| {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(&shared.path)
            .arg("--socket")
            .arg(&e.d.socket)
            .args(args)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let out = nobody(&["vip", "list"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Even with the file opened up, the daemon checks the peer's credentials.
    std::fs::set_permissions(
        &e.d.socket,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let dir_mode = std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(&e.d.dir, dir_mode).unwrap();
    let out = nobody(&["vip", "add", "10.99.0.101:80/tcp"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only root may control xdplb"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        e.d.json(&["vip", "list"]).unwrap()["vips"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn faults_interface_flap_and_a_backend_host_vanishing() {
    let mut e = Env::new(&[]);
    e.apply_with_health("tcp");
    assert_eq!(e.spread(60, 50000).values().sum::<u32>(), 60);

    // The LB's interface goes down and up: the attachment stays, traffic resumes.
    e.topo
        .lb
        .ns
        .exec(&["ip", "link", "set", "eth0", "down"])
        .unwrap();
    e.topo
        .lb
        .ns
        .exec(&["ip", "link", "set", "eth0", "up"])
        .unwrap();
    let target = SocketAddr::new(VIP4.parse().unwrap(), PORT);
    wait_for(
        "traffic after the interface came back",
        Duration::from_secs(10),
        || {
            e.topo
                .client
                .ns
                .run(|| tcp_once(target, 0).is_ok())
                .unwrap()
        },
    );
    assert_eq!(e.spread(60, 51000).values().sum::<u32>(), 60);
    let status = e.d.json(&["status"]).unwrap();
    assert_eq!(
        status["interfaces"][0]["name"], "eth0",
        "still attached after the flap"
    );

    // A backend's host disappears mid-traffic (its namespace is deleted): health checks take
    // it out, flows of the others stay.
    let mut held = e.hold(30, 52000);
    let b3 = e.b(2);
    // Its processes end with it (our server threads hold sockets in it), then the namespace
    // goes, taking its interface off the bridge.
    e.servers[2] = None;
    lb_tests::netns::sh(&["ip", "netns", "del", &e.topo.backends[2].ns.name]).unwrap();
    e.expect_failover(&mut held, "b3", &b3, 60, 53000);
}

#[test]
fn faults_incompatible_pins_and_a_full_disk() {
    let mut e = Env::new(&[]);
    let vip = e.vip();
    e.d.ok(&["attach", "eth0"]).unwrap();
    e.d.ok(&["vip", "add", &vip]).unwrap();
    e.d.ok(&["backend", "add", &vip, &e.b(0)]).unwrap();
    let target = SocketAddr::new(VIP4.parse().unwrap(), PORT);

    // A daemon that wants other limits refuses the pinned maps instead of misreading them,
    // naming the way out, and the running data path is untouched.
    e.d.stop().unwrap();
    let limits = e.d.dir.join("limits.toml");
    std::fs::write(&limits, "[limits]\nring_size = 1009\n").unwrap();
    let other = e.other_daemon(&["--config".as_ref(), limits.as_os_str()]);
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(
        !other.status.success()
            && err.contains("other limits or an older layout")
            && err.contains("--cleanup"),
        "{err}"
    );
    assert_eq!(
        e.topo
            .client
            .ns
            .run(|| tcp_once(target, 0).unwrap())
            .unwrap(),
        "b1",
        "traffic still flows"
    );

    // The state directory fills up: a change is applied and kept running, the error says the
    // state could not be saved; once there is room, the next change saves it all.
    let state_dir = e.d.state_file.parent().unwrap().to_path_buf();
    let saved = std::fs::read(&e.d.state_file).unwrap();
    lb_tests::netns::sh(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "size=64k",
        "tmpfs",
        state_dir.to_str().unwrap(),
    ])
    .unwrap();
    std::fs::write(&e.d.state_file, &saved).unwrap();
    e.d.spawn().unwrap();
    let filler = state_dir.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 64 * 1024]);
    let out = e.d.cli(&["backend", "add", &vip, &e.b(1)]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("applied and running")
            && err.contains("No space left"),
        "{err}"
    );
    let list = e.d.json(&["vip", "list"]).unwrap();
    assert_eq!(
        list["vips"][0]["backends"].as_array().unwrap().len(),
        2,
        "the running state keeps the change"
    );
    std::fs::remove_file(&filler).unwrap();
    e.d.ok(&["backend", "add", &vip, &e.b(2)]).unwrap();
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&e.d.state_file).unwrap()).unwrap();
    assert_eq!(
        saved["config"]["vip"][0]["backend"]
            .as_array()
            .unwrap()
            .len(),
        3,
        "saved once there was room"
    );
    let c = e.spread(90, 54000);
    assert_eq!(c.values().sum::<u32>(), 90);
}

/// Whether a load test's first generator call found live frames refused by the environment
/// (`generator::LiveFramesRefused`): then the test says so and stops; any other error fails it.
fn skipped(first_send: anyhow::Result<()>) -> bool {
    match first_send {
        Ok(()) => false,
        Err(e) if lb_tests::generator::refused(&e) => {
            println!("SKIPPED: {e}");
            true
        }
        Err(e) => panic!("generator: {e:?}"),
    }
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u64) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_million_source_flood_keeps_the_table_bounded_and_flows_sticky() {
    let e = Env::new(&[]);
    let vip = e.vip();
    let cfg = format!(
        "[limits]\nconntrack_size = 65536\n\n[conntrack]\nrecord_limit = 0\n\n[[interface]]\nname = \"eth0\"\nxdp_mode = \"native\"\n\n[[vip]]\naddr = \"{vip}\"\n{}",
        (0..3).map(|i| format!("[[vip.backend]]\naddr = \"{}\"\nmac = \"{}\"\n", e.b(i), e.topo.backends[i].mac)).collect::<String>()
    );
    // Limits are fixed at start: restart the daemon on this configuration.
    let mut e = e;
    e.d.stop().unwrap();
    std::fs::write(e.d.dir.join("flood.toml"), &cfg).unwrap();
    let _ = std::process::Command::new(lb_tests::daemon::xdplb_bin().unwrap())
        .args(["daemon", "--cleanup", "--pin-path"])
        .arg(&e.d.pin_path)
        .arg("--state-file")
        .arg(&e.d.state_file)
        .output()
        .unwrap();
    let mut d = Daemon::start(
        &e.topo.lb.ns,
        &["--config", e.d.dir.join("flood.toml").to_str().unwrap()],
    )
    .unwrap();

    let mut generator = lb_tests::generator::Generator::new().unwrap();
    generator
        .attach_pass(&e.topo.net, &e.topo.client.port)
        .unwrap();
    let syn = Packet {
        dst_mac: e.topo.lb.mac.0,
        src_mac: e.topo.client.mac.0,
        ..Packet::tcp("10.200.0.1", 1024, VIP4, PORT)
    }
    .build();
    let sticky = std::net::Ipv4Addr::new(10, 200, 0, 0);
    let send = |g: &mut lb_tests::generator::Generator,
                first: std::net::Ipv4Addr,
                flows: u32,
                packets: u32| {
        g.send(&e.topo.client.ns, "eth0", &syn, flows, first, packets)
            .unwrap()
    };
    let entry = |d: &Daemon, port: u16| -> serde_json::Value {
        d.json(&["simulate", &format!("10.200.0.0:{port}"), &vip])
            .unwrap()
    };

    // 100 flows get their backends.
    if skipped(generator.send(&e.topo.client.ns, "eth0", &syn, 100, sticky, 100)) {
        return;
    }
    let before: Vec<serde_json::Value> = (0..100)
        .map(|f| entry(&d, 1024 + f)["conntrack_backend"].clone())
        .collect();
    assert!(
        before.iter().all(|b| !b.is_null()),
        "every first flow is in the table"
    );

    // A flood of new flows from a million sources, every one recorded (no record limit): the
    // table stays bounded and evicts.
    // How many frames get through the veth and the bridge in front of the LB varies from run
    // to run: send until the LB has seen ten times the table's size in new flows.
    let balanced = |d: &Daemon| {
        d.json(&["stats"]).unwrap()["vips"][0]["packets"]
            .as_u64()
            .unwrap()
    };
    let packets_before = balanced(&d);
    let started = Instant::now();
    let mut sent = 0u64;
    while balanced(&d) - packets_before < 655_360 && started.elapsed() < Duration::from_secs(90) {
        send(
            &mut generator,
            std::net::Ipv4Addr::new(10, 201, 0, 0),
            1_000_000,
            2_000_000,
        );
        sent += 2_000_000;
    }
    let secs = started.elapsed().as_secs_f64();
    let stats = d.json(&["stats"]).unwrap();
    let handled = balanced(&d) - packets_before;
    println!(
        "flood: {handled} of {sent} packets reached and were balanced by xdplb in {secs:.2} s: {:.2} Mpps (the bridge in front limits it)",
        handled as f64 / secs / 1e6
    );
    assert!(
        handled >= 655_360,
        "the LB saw a real flood ({handled} packets)"
    );
    assert_eq!(stats["verdicts"]["drop_no_backend"], 0);
    let status = d.json(&["status"]).unwrap();
    let ct = status["maps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "XDPLB_CONNTRACK")
        .unwrap()
        .clone();
    assert!(
        ct["used"].as_u64().unwrap() <= 65536 && ct["max"] == 65536,
        "the table stays bounded: {ct}"
    );
    let rss = rss_kib(status["daemon"]["pid"].as_u64().unwrap());
    println!(
        "flood: connection table {} / {} entries, daemon RSS {} MiB",
        ct["used"],
        ct["max"],
        rss / 1024
    );
    assert!(rss < 200 * 1024, "daemon memory stays bounded: {rss} KiB");

    // The first flows were evicted; back, they reach the same backends (the ring is unchanged).
    let evicted = (0..100)
        .filter(|f| entry(&d, 1024 + f)["conntrack_entry"] == false)
        .count();
    assert!(
        evicted >= 90,
        "the flood evicted the first flows ({evicted} of 100)"
    );
    send(&mut generator, sticky, 100, 100);
    for (f, b) in before.iter().enumerate() {
        assert_eq!(
            &entry(&d, 1024 + f as u16)["conntrack_backend"],
            b,
            "flow {f} came back to another backend"
        );
    }

    // With a low record limit, a flood is balanced by the ring alone and the established
    // flows keep their entries.
    let limited = e.d.dir.join("limited.toml");
    std::fs::write(
        &limited,
        cfg.replace("record_limit = 0", "record_limit = 1000"),
    )
    .unwrap();
    d.ok(&["apply", "-f", limited.to_str().unwrap()]).unwrap();
    assert_eq!(
        d.json(&["status"]).unwrap()["program"]["record_limit"],
        1000
    );
    let unrecorded = |d: &Daemon| {
        d.json(&["stats"]).unwrap()["events"]["conntrack_unrecorded"]
            .as_u64()
            .unwrap()
    };
    let (skipped_before, packets_before) = (unrecorded(&d), balanced(&d));
    let started = Instant::now();
    // Every packet of this flood is a flow of its own (each send covers its flows once, from
    // sources no other send uses): a recorded flow's later packets would be hits, neither
    // recorded nor skipped, and the count below could not tell them apart.
    let mut first = u32::from(std::net::Ipv4Addr::new(10, 202, 0, 0));
    while balanced(&d) - packets_before < 655_360 && started.elapsed() < Duration::from_secs(90) {
        send(&mut generator, first.into(), 2_000_000, 2_000_000);
        first += 2_000_000 / lb_common::maps::GEN_FLOWS_PER_ADDR + 1;
    }
    let skipped = unrecorded(&d) - skipped_before;
    let kept = (0..100)
        .filter(|f| entry(&d, 1024 + f)["conntrack_entry"] == true)
        .count();
    // At most 1000 per CPU per second were recorded.
    let flooded = balanced(&d) - packets_before;
    println!("flood with record_limit 1000: {skipped} of {flooded} new flows not recorded, {kept} of 100 established flows kept their entries");
    let cpus = std::thread::available_parallelism().map_or(64, |n| n.get()) as u64;
    // A window opens at most once a second (of the coarse clock, a few ms coarse) per CPU.
    let may_record = 1000 * cpus * (started.elapsed().as_secs_f64().ceil() as u64 + 1);
    assert!(
        skipped + may_record >= flooded,
        "the flood went unrecorded ({skipped} of {flooded})"
    );
    assert!(
        kept >= 95,
        "established flows keep their entries ({kept} of 100)"
    );
    d.stop().unwrap();
}

#[test]
fn a_thousand_changes_under_load_drop_nothing_and_move_no_kept_flow() {
    use lb_userspace::api::{call, BackendChange, Request};
    let e = Env::new(&[]);
    let vip = e.vip_udp();
    let backends: String = (0..3)
        .map(|i| {
            format!(
                "[[vip.backend]]\naddr = \"{}\"\nmac = \"{}\"\n",
                e.b(i),
                e.topo.backends[i].mac
            )
        })
        .collect();
    e.apply(
        "churn.toml",
        &format!("[[interface]]\nname = \"eth0\"\n\n[[vip]]\naddr = \"{vip}\"\n{backends}"),
    );
    // b2 and b3 come and go without a MAC: the daemon takes theirs from the neighbour table,
    // which must not depend on ARP getting through the flood.
    for b in &e.topo.backends[1..] {
        e.topo
            .lb
            .ns
            .exec(&[
                "ip",
                "neigh",
                "replace",
                &b.ip4.to_string(),
                "lladdr",
                &b.mac.to_string(),
                "dev",
                "eth0",
                "nud",
                "permanent",
            ])
            .unwrap();
    }
    let socket = e.d.socket.clone();
    let api = |req: Request| call(&socket, &req);
    let v: lb_userspace::model::VipAddr = vip.parse().unwrap();

    let mut generator = lb_tests::generator::Generator::new().unwrap();
    generator
        .attach_pass(&e.topo.net, &e.topo.client.port)
        .unwrap();
    let mut template = Packet {
        dst_mac: e.topo.lb.mac.0,
        src_mac: e.topo.client.mac.0,
        ..Packet::udp("10.210.0.0", 1024, VIP4, PORT)
    }
    .build();
    template[14 + 20 + 6..14 + 20 + 8].fill(0); // no UDP checksum: the generator's rewrites keep it valid
    const FLOWS: u16 = 1000;
    let first = std::net::Ipv4Addr::new(10, 210, 0, 0);
    if skipped(generator.send(
        &e.topo.client.ns,
        "eth0",
        &template,
        FLOWS as u32,
        first,
        FLOWS as u32,
    )) {
        return;
    }
    let backend_of = |f: u16| -> serde_json::Value {
        api(Request::Simulate {
            src: "10.210.0.0".parse().unwrap(),
            sport: 1024 + f,
            vip: v,
        })
        .unwrap()["conntrack_backend"]
            .clone()
    };
    let before: Vec<serde_json::Value> = (0..FLOWS).map(backend_of).collect();
    let b1 = e.b(0);
    let on_b1: Vec<u16> = (0..FLOWS)
        .filter(|f| before[*f as usize] == b1.as_str())
        .collect();
    assert!(on_b1.len() > 100, "b1 holds flows ({})", on_b1.len());
    let b1_received = |e: &Env| {
        e.topo.backends[0].ns.snmp("Udp", "InDatagrams").unwrap()
            + e.topo.backends[0].ns.snmp("Udp", "RcvbufErrors").unwrap()
    };
    let b1_start = b1_received(&e);

    // The generator keeps the flows going while 1000 changes land: b1 stays (weight >= 1);
    // b2, b3 and five backends that exist only in the configuration come and go, drain and
    // change weight.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let extra: Vec<String> = (0..5).map(|i| format!("10.99.0.{}", 50 + i)).collect();
    let mut present: std::collections::BTreeSet<String> = [e.b(1), e.b(2)].into();
    let ops = std::thread::scope(|s| {
        let client = &e.topo.client.ns;
        let (stop, template) = (&stop, &template);
        s.spawn(move || {
            let mut g = lb_tests::generator::Generator::new().unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                g.send(client, "eth0", template, FLOWS as u32, first, 50_000)
                    .unwrap();
            }
        });
        let mut ops = 0;
        let pool: Vec<String> = [e.b(1), e.b(2)]
            .into_iter()
            .chain(extra.iter().cloned())
            .collect();
        while ops < 1000 {
            let b = pool[next(pool.len() as u64) as usize].clone();
            let change = |weight: Option<u32>| BackendChange {
                vip: v,
                addr: b.parse().unwrap(),
                weight,
                mac: Some(lb_userspace::model::Mac([2, 0, 0, 0, 0, 0x50]))
                    .filter(|_| !b.ends_with(".18") && !b.ends_with(".19")),
                via: None,
                check: None,
            };
            let req = match (present.contains(&b), next(4)) {
                (false, _) => {
                    present.insert(b.clone());
                    Request::BackendAdd(change(Some(1 + next(3) as u32)))
                }
                (true, 0) => {
                    present.remove(&b);
                    Request::BackendDel {
                        vip: v,
                        addr: b.parse().unwrap(),
                    }
                }
                (true, 1) => Request::BackendDrain {
                    vip: v,
                    addr: b.parse().unwrap(),
                },
                (true, _) => Request::BackendSet(BackendChange {
                    mac: None,
                    ..change(Some(next(5) as u32))
                }),
            };
            api(req.clone()).unwrap_or_else(|err| panic!("{req:?}: {err}"));
            // b1 is re-weighted too, never below 1.
            if next(10) == 0 {
                api(Request::BackendSet(BackendChange {
                    vip: v,
                    addr: b1.parse().unwrap(),
                    weight: Some(1 + next(4) as u32),
                    mac: None,
                    via: None,
                    check: None,
                }))
                .unwrap();
                ops += 1;
            }
            ops += 1;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        ops
    });
    let stats = e.d.json(&["stats"]).unwrap();
    println!(
        "churn: {ops} changes under load; VIP packets {}, verdicts {}",
        stats["vips"][0]["packets"], stats["verdicts"]
    );
    assert_eq!(
        stats["verdicts"]["drop_no_backend"], 0,
        "no packet dropped for lack of a backend"
    );
    let moved: Vec<u16> = on_b1
        .iter()
        .copied()
        .filter(|f| backend_of(*f) != b1.as_str())
        .collect();
    assert!(
        moved.is_empty(),
        "flows on b1 (which stayed) moved: {moved:?}"
    );
    assert!(
        b1_received(&e) > b1_start + 10_000,
        "b1 kept receiving its flows"
    );
}
