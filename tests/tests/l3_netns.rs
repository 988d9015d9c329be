//! L3 (NAT) end to end (needs root): the L3 topology of lb_tests::topology with the real
//! daemon attached to both LB interfaces, real TCP/HTTP/UDP servers on the backends, and a
//! packet capture on the client proving every reply came from the VIP.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use lb_tests::{
    capture::Capture,
    l3env::L3Env,
    peers::{hold, http_download, http_get, http_upload, tcp_once, udp_once},
    topology::{L3Topology, L3_VIP4, L3_VIP6},
};

const PORT: u16 = 8080;
const REWRITTEN: u16 = 9090;
const MIB: usize = 1 << 20;

/// Each backend serves 8080 (TCP and UDP) and 9090 (the port-rewrite VIP's target: one
/// backend port may serve only one L3 VIP); the VIPs of both families and protocols, one with
/// a port rewrite.
fn env() -> L3Env {
    let serve = |topo: &L3Topology| L3Env::serve(topo, &[PORT, REWRITTEN]);
    let vips = |topo: &L3Topology| {
        let backends = |v6: bool, port: Option<u16>| -> String {
            topo.backends
                .iter()
                .map(|b| {
                    let addr = if v6 { b.ip6 } else { b.ip4 };
                    let port = port.map(|p| format!("port = {p}\n")).unwrap_or_default();
                    format!("[[vip.backend]]\naddr = \"{addr}\"\n{port}")
                })
                .collect::<String>()
        };
        let mut cfg = String::new();
        for (vip, v6, port) in [
            (format!("{L3_VIP4}:{PORT}/tcp"), false, None),
            (format!("{L3_VIP4}:80/tcp"), false, Some(REWRITTEN)),
            (format!("[{L3_VIP6}]:{PORT}/tcp"), true, None),
            (format!("{L3_VIP4}:{PORT}/udp"), false, None),
            (format!("[{L3_VIP6}]:{PORT}/udp"), true, None),
        ] {
            cfg.push_str(&format!(
                "\n[[vip]]\naddr = \"{vip}\"\nmode = \"l3\"\n{}",
                backends(v6, port)
            ));
        }
        cfg
    };
    L3Env::start(3, serve, vips).expect("L3 environment")
}

fn count(names: Vec<String>) -> BTreeMap<String, u32> {
    let mut c = BTreeMap::new();
    for n in names {
        *c.entry(n).or_insert(0) += 1;
    }
    c
}

fn assert_equal_shares(c: &BTreeMap<String, u32>, names: &[&str], what: &str) {
    let total: u32 = c.values().sum();
    for n in names {
        let share = *c.get(*n).unwrap_or(&0) as f64 * 100.0 / total as f64;
        let ideal = 100.0 / names.len() as f64;
        println!("{what}: {n} {share:.1}% (ideal {ideal:.1}%)");
        assert!((share - ideal).abs() <= 10.0, "{what}: {c:?}");
    }
}

#[test]
fn l3_serves_tcp_http_and_udp_from_the_vip_only() {
    let e = env();
    let capture = Capture::start(&e.topo.client.ns, "eth0").unwrap();
    let v4 = SocketAddr::new(L3_VIP4.parse().unwrap(), PORT);
    let v6 = SocketAddr::new(L3_VIP6.parse().unwrap(), PORT);

    // 300 connections from distinct source ports, spread over the three backends.
    let c = count(e.in_client(|| (0..300).map(|i| tcp_once(v4, 30000 + i).unwrap()).collect()));
    assert_equal_shares(&c, &["b1", "b2", "b3"], "L3 IPv4 TCP");
    let c = count(e.in_client(|| (0..150).map(|i| tcp_once(v6, 30000 + i).unwrap()).collect()));
    assert_equal_shares(&c, &["b1", "b2", "b3"], "L3 IPv6 TCP");

    // Port rewrite: VIP port 80, backends listen on 9090.
    let rewritten = SocketAddr::new(L3_VIP4.parse().unwrap(), 80);
    let names: Vec<String> =
        e.in_client(|| (0..30).map(|_| http_get(rewritten).unwrap()).collect());
    assert_eq!(names.len(), 30);

    // 1 MiB each way, over both families.
    for vip in [v4, v6] {
        e.in_client(|| {
            http_download(vip, MIB).unwrap_or_else(|err| panic!("download from {vip}: {err:#}"));
            http_upload(vip, MIB).unwrap_or_else(|err| panic!("upload to {vip}: {err:#}"));
        });
    }

    // UDP request/response over both families.
    for vip in [v4, v6] {
        let c = count(e.in_client(|| {
            (0..300)
                .map(|i| udp_once(vip, 31000 + i).unwrap())
                .collect()
        }));
        assert_equal_shares(&c, &["b1", "b2", "b3"], &format!("L3 UDP {vip}"));
    }

    // The client heard only from the VIPs (and the LB's own addresses): never a backend.
    let seen = capture.finish().unwrap();
    let backends: Vec<IpAddr> = e
        .topo
        .backends
        .iter()
        .flat_map(|b| [b.ip4, b.ip6])
        .collect();
    for b in &backends {
        assert!(
            !seen.contains_key(b),
            "the client saw packets from backend {b}: {seen:?}"
        );
    }
    for vip in [v4.ip(), v6.ip()] {
        assert!(
            // The part that does not depend on segmentation: 3-4 packets per connection and one per
            // UDP answer (IPv4: 330 connections, IPv6: 150), plus some of the transfers.
            seen.get(&vip).copied().unwrap_or(0) > if vip.is_ipv4() { 1000 } else { 500 },
            "replies from {vip}: {seen:?}"
        );
    }
    // The CLI's views work for L3 VIPs too.
    let sim =
        e.d.json(&[
            "simulate",
            "10.98.1.1:30007",
            &format!("{L3_VIP4}:{PORT}/tcp"),
        ])
        .unwrap();
    assert_eq!(sim["conntrack_entry"], true, "{sim}");
    assert_eq!(sim["ring_backend"], sim["conntrack_backend"], "{sim}");
    let list = e.d.json(&["vip", "list"]).unwrap();
    let rewritten = list["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vip"] == format!("{L3_VIP4}:80/tcp"))
        .unwrap();
    assert_eq!(rewritten["mode"], "l3");
    assert_eq!(rewritten["backends"][0]["port"], REWRITTEN);
    let stats = e.d.json(&["stats"]).unwrap();
    assert!(
        stats["events"]["nat_reverse"].as_u64().unwrap() > 1000,
        "{}",
        stats["events"]
    );
    assert!(
        stats["verdicts"]["redirect"].as_u64().unwrap() > 1000,
        "{}",
        stats["verdicts"]
    );
    // Replies are counted for their VIP and backend: every reverse-NATed packet once, each
    // VIP's the sum of its backends', and the downloads' MiB among the bytes.
    let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap();
    let vips = stats["vips"].as_array().unwrap();
    let replies: u64 = vips.iter().map(|v| n(v, "reply_packets")).sum();
    assert_eq!(replies, n(&stats["events"], "nat_reverse"), "{stats}");
    for v in vips {
        let backends = v["backends"].as_array().unwrap();
        for k in ["reply_packets", "reply_bytes"] {
            assert_eq!(
                n(v, k),
                backends.iter().map(|b| n(b, k)).sum::<u64>(),
                "{k} of {}",
                v["vip"]
            );
        }
    }
    for vip in [v4, v6] {
        let name = format!("{vip}/tcp");
        let v = vips.iter().find(|v| v["vip"] == name).unwrap();
        assert!(n(v, "reply_bytes") > MIB as u64, "{name}: {v}");
    }
}

#[test]
fn l3_drain_and_removal_under_traffic() {
    let e = env();
    let vip = format!("{L3_VIP4}:{PORT}/tcp");
    let target = SocketAddr::new(L3_VIP4.parse().unwrap(), PORT);
    let mut held = e.in_client(|| hold(target, 30, 32000)).unwrap();
    assert!(held.iter().any(|(_, n)| n == "b1"));
    let b = |i: usize| e.topo.backends[i].ip4.to_string();

    e.d.ok(&["backend", "drain", &vip, &b(0)]).unwrap();
    for (c, n) in held.iter_mut() {
        assert_eq!(
            c.ask().unwrap(),
            *n,
            "a held connection moved after a drain"
        );
    }
    let c = count(e.in_client(|| {
        (0..200)
            .map(|i| tcp_once(target, 33000 + i).unwrap())
            .collect()
    }));
    assert!(
        !c.contains_key("b1"),
        "a new flow reached the draining backend: {c:?}"
    );
    assert_equal_shares(&c, &["b2", "b3"], "after draining b1");

    e.d.ok(&["backend", "del", &vip, &b(1)]).unwrap();
    for (c, n) in held.iter_mut().filter(|(_, n)| n != "b2") {
        assert_eq!(
            c.ask().unwrap(),
            *n,
            "a held connection to a remaining backend moved"
        );
    }
    let c = count(e.in_client(|| {
        (0..30)
            .map(|i| tcp_once(target, 34000 + i).unwrap())
            .collect()
    }));
    assert_eq!(c.get("b3"), Some(&30), "only b3 takes new flows: {c:?}");
}
