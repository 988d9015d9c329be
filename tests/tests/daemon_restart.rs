//! The daemon's restarts in the L2 topology (needs root): kill -9 and restart without a lost
//! packet, health failover (also across a restart), `--cleanup` with an unreadable state.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use lb_tests::{
    daemon::xdplb_bin,
    l2env::{wait_for, L2Env as Env, PORT},
    peers::{udp_once, Server},
    topology::VIP4,
};

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
    // A daemon started on it refuses with status 78, which systemd does not restart on (no
    // loop), and touches nothing: the routes stay, the pins forward.
    let refused = e.d.refused_start(&xdplb_bin().unwrap()).unwrap();
    let why = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(
        refused.status.code(),
        Some(lb_userspace::daemon::EXIT_REFUSED),
        "{why}"
    );
    assert!(why.contains("is not valid"), "{why}");
    assert!(routes().contains(VIP4), "{}", routes());
    assert!(e.d.pin_path.join("XDPLB_VIPS").exists());
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
