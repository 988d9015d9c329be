//! The daemon and CLI end to end in the L2 topology (needs root): VIPs and backends managed
//! under traffic, refused input, the announcement table, metrics and socket permissions.

use std::{
    os::unix::fs::PermissionsExt,
    time::{Duration, Instant},
};

use lb_tests::{
    l2env::{share, L2Env as Env, PORT},
    topology::{VIP4, VIP6},
};
use serde_json::Value;

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
    let sum = |name: &str| -> f64 {
        let of_vip = samples
            .iter()
            .filter(|s| s.name == name && s.labels["vip"] == vip);
        of_vip.map(|s| s.value).sum()
    };
    assert_eq!(sum("xdplb_backend_new_flows_total"), 30.0);
    assert_eq!(
        sum("xdplb_backend_packets_total"),
        sum("xdplb_vip_packets_total")
    );
    // What a scraper that asks for nothing gets passes promtool; Prometheus gets OpenMetrics.
    use lb_tests::{daemon::scrape_text, exposition::promtool_check};
    let (kind, text) = scrape_text(&e.topo.lb.ns, "127.0.0.1:9464", None).unwrap();
    assert_eq!(kind, "text/plain; version=0.0.4; charset=utf-8");
    promtool_check(&text).unwrap_or_else(|err| panic!("{err}\n{text}"));
    let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let (kind, text) = scrape_text(&e.topo.lb.ns, "127.0.0.1:9464", Some(accept)).unwrap();
    assert_eq!(
        kind,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(text.contains("\n# TYPE xdplb_vip_packets counter\n") && text.ends_with("\n# EOF\n"));

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
