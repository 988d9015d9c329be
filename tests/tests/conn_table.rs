//! `xdplb conn list` / `conn count` against known flows (needs root): held TCP connections and
//! UDP flows from chosen client ports to L2 and L3 VIPs (IPv4 and IPv6) through the real daemon;
//! the table must show exactly those flows, each on the backend whose server answered it.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use aya::maps::{HashMap, Map, MapData};
use lb_common::{addr, maps as m, ConnValue, FlowKey, FlowKey4};
use lb_tests::{
    daemon::Daemon,
    l3env::L3Env,
    peers::{hold, udp_once, Server},
    topology::{Host, L2Topology, L3Topology, L3_VIP4, L3_VIP6, VIP4, VIP6},
};
use serde_json::Value;

const PORT: u16 = 8080;
const REWRITTEN: u16 = 9090;

/// One entry as the test expects it: (proto, client, dst, backend, to, mode, state).
type Row = (String, String, String, String, String, String, String);

fn row(c: &Value) -> Row {
    let s = |k: &str| match &c[k] {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    (
        s("proto"),
        s("client"),
        s("dst"),
        s("backend"),
        s("to"),
        s("mode"),
        s("state"),
    )
}

fn rows(d: &Daemon, args: &[&str]) -> BTreeSet<Row> {
    let mut a = vec!["conn", "list"];
    a.extend_from_slice(args);
    let list = d.json(&a).unwrap();
    list["conns"].as_array().unwrap().iter().map(row).collect()
}

fn rows_json(d: &Daemon) -> Vec<Value> {
    d.json(&["conn", "list"]).unwrap()["conns"]
        .as_array()
        .unwrap()
        .clone()
}

/// The backend host whose server calls itself `name` (b1, b2, ...).
fn host<'a>(backends: &'a [Host], name: &str) -> &'a Host {
    let i: usize = name.trim_start_matches('b').parse().unwrap();
    &backends[i - 1]
}

/// What `conn list` must show for a flow from `client` to `dst` that backend `backend` answered
/// (`to`: the L3 destination, else "-").
fn expect(
    proto: &str,
    client: SocketAddr,
    dst: SocketAddr,
    backend: IpAddr,
    to: &str,
    mode: &str,
) -> Row {
    (
        proto.into(),
        client.to_string(),
        dst.to_string(),
        backend.to_string(),
        to.into(),
        mode.into(),
        "active".into(),
    )
}

fn failure(d: &Daemon, args: &[&str]) -> String {
    let out = d.cli(args).unwrap();
    assert!(!out.status.success(), "xdplb {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

struct L2Env {
    d: Daemon,
    _servers: Vec<Server>,
    _pass: lb_userspace::datapath::DataPath,
    topo: L2Topology,
}

/// The L2 topology with three backends serving TCP and UDP (both families) on PORT, and the
/// daemon balancing a TCP and a UDP VIP of each family.
fn l2_env() -> L2Env {
    let topo = L2Topology::new(3).expect("topology");
    let pass = topo
        .attach_peer_pass()
        .expect("pass program on the bridge port");
    let udp: Vec<IpAddr> = vec![VIP4.parse().unwrap(), VIP6.parse().unwrap()];
    let servers = topo
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| Server::start(&b.ns, &format!("b{}", i + 1), PORT, &udp).unwrap())
        .collect();
    let d = Daemon::start(&topo.lb.ns, &[]).expect("start the daemon");
    let mut cfg = "[[interface]]\nname = \"eth0\"\n".to_string();
    for (vip, v6) in [
        (format!("{VIP4}:{PORT}/tcp"), false),
        (format!("{VIP4}:{PORT}/udp"), false),
        (format!("[{VIP6}]:{PORT}/tcp"), true),
    ] {
        cfg.push_str(&format!("\n[[vip]]\naddr = \"{vip}\"\n"));
        for b in &topo.backends {
            let a = if v6 { b.ip6 } else { b.ip4 };
            cfg.push_str(&format!("[[vip.backend]]\naddr = \"{a}\"\n"));
        }
    }
    d.apply_text("l2.toml", &cfg).unwrap();
    L2Env {
        d,
        _servers: servers,
        _pass: pass,
        topo,
    }
}

#[test]
fn l2_flows_are_listed_filtered_counted_and_turn_stale() {
    let e = l2_env();
    let (vip4, vip6): (IpAddr, IpAddr) = (VIP4.parse().unwrap(), VIP6.parse().unwrap());
    let (tcp4, tcp6) = (SocketAddr::new(vip4, PORT), SocketAddr::new(vip6, PORT));
    let client = &e.topo.client;
    let (held4, held6, udp) = client
        .ns
        .run(|| {
            let held4 = hold(tcp4, 6, 41000).unwrap();
            let held6 = hold(tcp6, 1, 42000).unwrap();
            let udp: Vec<String> = (0..2).map(|i| udp_once(tcp4, 43000 + i).unwrap()).collect();
            (held4, held6, udp)
        })
        .unwrap();

    let mut want = BTreeSet::new();
    for (i, (_, name)) in held4.iter().enumerate() {
        let from = SocketAddr::new(client.ip4, 41000 + i as u16);
        let b = host(&e.topo.backends, name).ip4;
        want.insert(expect("tcp", from, tcp4, b, "-", "l2"));
    }
    let b6 = host(&e.topo.backends, &held6[0].1).ip6;
    want.insert(expect(
        "tcp",
        SocketAddr::new(client.ip6, 42000),
        tcp6,
        b6,
        "-",
        "l2",
    ));
    for (i, name) in udp.iter().enumerate() {
        let from = SocketAddr::new(client.ip4, 43000 + i as u16);
        let b = host(&e.topo.backends, name).ip4;
        want.insert(expect("udp", from, tcp4, b, "-", "l2"));
    }
    let all = rows(&e.d, &[]);
    assert_eq!(all, want, "conn list shows exactly the flows made");
    // `status` counts each family's table: IPv4 flows in XDPLB_CT4, IPv6 in XDPLB_CONNTRACK.
    let status = e.d.json(&["status"]).unwrap();
    let used = |name: &str| {
        status["maps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap()["used"]
            .clone()
    };
    assert_eq!(used(m::CONNTRACK4), held4.len() + udp.len(), "{status}");
    assert_eq!(used(m::CONNTRACK), 1, "{status}");

    // Filters narrow to what they name; the limit caps and says so.
    let vip_tcp = format!("{VIP4}:{PORT}/tcp");
    let only_tcp4: BTreeSet<Row> = want
        .iter()
        .filter(|r| r.0 == "tcp" && r.2 == tcp4.to_string())
        .cloned()
        .collect();
    assert_eq!(rows(&e.d, &["--vip", &vip_tcp]), only_tcp4);
    let first = host(&e.topo.backends, &held4[0].1).ip4.to_string();
    let on_first: BTreeSet<Row> = want.iter().filter(|r| r.3 == first).cloned().collect();
    assert_eq!(rows(&e.d, &["--backend", &first]), on_first);
    let v6_only: BTreeSet<Row> = want
        .iter()
        .filter(|r| r.2 == tcp6.to_string())
        .cloned()
        .collect();
    assert_eq!(rows(&e.d, &["--client", &client.ip6.to_string()]), v6_only);
    assert_eq!(
        rows(
            &e.d,
            &[
                "--client",
                &client.ip4.to_string(),
                "--vip",
                &vip_tcp,
                "--backend",
                &first
            ]
        ),
        only_tcp4.intersection(&on_first).cloned().collect()
    );
    let capped = e.d.json(&["conn", "list", "--limit", "3"]).unwrap();
    assert_eq!(capped["conns"].as_array().unwrap().len(), 3);
    assert_eq!(capped["truncated"], true, "{capped}");
    let exact =
        e.d.json(&["conn", "list", "--limit", &want.len().to_string()])
            .unwrap();
    assert_eq!(exact["truncated"], false, "all {} fit: {exact}", want.len());

    let count = e.d.json(&["conn", "count"]).unwrap();
    assert_eq!(count["total"], want.len(), "{count}");
    assert_eq!(
        (count["active"].as_u64(), count["stale"].as_u64()),
        (Some(want.len() as u64), Some(0))
    );
    let per_vip = count["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vip"] == vip_tcp)
        .unwrap();
    assert_eq!(per_vip["conns"], only_tcp4.len(), "{count}");
    let per_backend: u64 = per_vip["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["conns"].as_u64().unwrap())
        .sum();
    assert_eq!(per_backend, only_tcp4.len() as u64, "{count}");
    let counted = e.d.json(&["conn", "count", "--backend", &first]).unwrap();
    assert_eq!(counted["total"], on_first.len(), "{counted}");

    assert!(
        rows_json(&e.d).iter().all(|c| c["idle_ms"].is_null()),
        "L2 keeps no time"
    );

    // The table printed for people: one line per flow, the client port in it.
    let text = e.d.ok(&["conn", "list"]).unwrap();
    assert!(text.starts_with("PRO"), "{text}");
    assert!(text.contains(&format!("{}:41000", client.ip4)), "{text}");
    assert!(text.contains(&format!("{} entries", want.len())), "{text}");
    println!("{text}");
    let text = e.d.ok(&["conn", "count"]).unwrap();
    assert!(
        text.starts_with(&format!(
            "{} entries ({} active, 0 stale)",
            want.len(),
            want.len()
        )),
        "{text}"
    );
    assert!(text.contains(&vip_tcp), "{text}");

    // Refused: filters naming what is not configured, a zero limit.
    let err = failure(&e.d, &["conn", "list", "--vip", "10.99.0.222:80/tcp"]);
    assert!(err.contains("no VIP 10.99.0.222:80/tcp"), "{err}");
    let err = failure(&e.d, &["conn", "count", "--backend", "10.99.0.250"]);
    assert!(err.contains("no VIP has a backend 10.99.0.250"), "{err}");
    let err = failure(&e.d, &["conn", "list", "--limit", "0"]);
    assert!(err.contains("--limit 0"), "{err}");

    // A removed backend's entries stay until their flows send again: stale, still naming it.
    e.d.ok(&["backend", "del", &vip_tcp, &first]).unwrap();
    let after = rows(&e.d, &[]);
    for r in &after {
        let gone = r.0 == "tcp" && r.2 == tcp4.to_string() && r.3 == first;
        assert_eq!(r.6, if gone { "stale" } else { "active" }, "{r:?}");
    }
    let stale = only_tcp4.intersection(&on_first).count();
    assert!(stale > 0);
    let count = e.d.json(&["conn", "count"]).unwrap();
    assert_eq!(count["stale"], stale, "{count}");
    assert_eq!(count["total"], want.len(), "{count}");
    drop((held4, held6));
}

/// The L3 environment: TCP on PORT (VIP of each family) and on port 80 rewritten to
/// REWRITTEN, UDP on PORT.
fn l3_env() -> L3Env {
    let serve = |topo: &L3Topology| L3Env::serve(topo, &[PORT, REWRITTEN]);
    let vips = |topo: &L3Topology| {
        let mut cfg = String::new();
        for (vip, v6, port) in [
            (format!("{L3_VIP4}:80/tcp"), false, Some(REWRITTEN)),
            (format!("[{L3_VIP6}]:{PORT}/tcp"), true, None),
            (format!("{L3_VIP4}:{PORT}/udp"), false, None),
        ] {
            cfg.push_str(&format!("\n[[vip]]\naddr = \"{vip}\"\nmode = \"l3\"\n"));
            for b in &topo.backends {
                let a = if v6 { b.ip6 } else { b.ip4 };
                let p = port.map(|p| format!("port = {p}\n")).unwrap_or_default();
                cfg.push_str(&format!("[[vip.backend]]\naddr = \"{a}\"\n{p}"));
            }
        }
        cfg
    };
    L3Env::start(3, serve, vips).expect("L3 environment")
}

#[test]
fn l3_flows_show_the_destination_they_are_rewritten_to() {
    let e = l3_env();
    let (vip4, vip6): (IpAddr, IpAddr) = (L3_VIP4.parse().unwrap(), L3_VIP6.parse().unwrap());
    let (web, tcp6, udp4) = (
        SocketAddr::new(vip4, 80),
        SocketAddr::new(vip6, PORT),
        SocketAddr::new(vip4, PORT),
    );
    let client = &e.topo.client;
    let (held, held6, udp) = e.in_client(|| {
        let held = hold(web, 4, 44000).unwrap();
        let held6 = hold(tcp6, 1, 45000).unwrap();
        let udp: Vec<String> = (0..2).map(|i| udp_once(udp4, 46000 + i).unwrap()).collect();
        (held, held6, udp)
    });
    let mut want = BTreeSet::new();
    for (i, (_, name)) in held.iter().enumerate() {
        let b = host(&e.topo.backends, name).ip4;
        let to = SocketAddr::new(b, REWRITTEN).to_string();
        want.insert(expect(
            "tcp",
            SocketAddr::new(client.ip4, 44000 + i as u16),
            web,
            b,
            &to,
            "l3",
        ));
    }
    let b6 = host(&e.topo.backends, &held6[0].1).ip6;
    let to6 = SocketAddr::new(b6, PORT).to_string();
    want.insert(expect(
        "tcp",
        SocketAddr::new(client.ip6, 45000),
        tcp6,
        b6,
        &to6,
        "l3",
    ));
    for (i, name) in udp.iter().enumerate() {
        let b = host(&e.topo.backends, name).ip4;
        let to = SocketAddr::new(b, PORT).to_string();
        want.insert(expect(
            "udp",
            SocketAddr::new(client.ip4, 46000 + i as u16),
            udp4,
            b,
            &to,
            "l3",
        ));
    }
    assert_eq!(
        rows(&e.d, &[]),
        want,
        "conn list shows exactly the flows made"
    );

    // L3 entries tell how long their flow has been silent (at most HOP_TTL, ~1.07 s, less):
    // after 2.5 s without a packet every one says at least that; the held connections, asked
    // again (each still reaching the backend the table names), are fresh, the UDP flows not.
    let silent = std::time::Duration::from_millis(2500);
    std::thread::sleep(silent);
    let idle = |d: &Daemon| -> Vec<(String, String, u64)> {
        let list = d.json(&["conn", "list"]).unwrap();
        list["conns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let ms = c["idle_ms"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no idle_ms: {c}"));
                (
                    c["proto"].as_str().unwrap().into(),
                    c["client"].as_str().unwrap().into(),
                    ms,
                )
            })
            .collect()
    };
    // At least the silence; at most it plus HOP_TTL, plus time for the CLI on a busy machine.
    let expected = 2400..2500 + 1100 + 2000;
    for (_, client, ms) in idle(&e.d) {
        assert!(expected.contains(&ms), "{client}: idle {ms} ms after 2.5 s");
    }
    let mut held = held;
    e.in_client(|| {
        for (c, name) in held.iter_mut() {
            assert_eq!(c.ask().unwrap(), *name);
        }
    });
    let asked = Instant::now();
    for (proto, client, ms) in idle(&e.d) {
        let since = asked.elapsed().as_millis() as u64;
        let port = client.parse::<SocketAddr>().unwrap().port();
        if proto == "tcp" && (44000..44000 + held.len() as u16).contains(&port) {
            assert!(
                ms <= since + 100,
                "{client}: asked {since} ms ago, idle {ms} ms"
            );
        } else {
            assert!(ms >= 2400, "{client}: silent flow idle {ms} ms");
        }
    }
    let text =
        e.d.ok(&["conn", "list", "--vip", &format!("{L3_VIP4}:80/tcp")])
            .unwrap();
    println!("{text}");
    let first = host(&e.topo.backends, &held[0].1).ip4;
    assert!(
        text.contains(&format!("{}:44000", client.ip4))
            && text.contains(&format!("{first}:{REWRITTEN}")),
        "{text}"
    );
    let count = e.d.json(&["conn", "count"]).unwrap();
    assert_eq!(count["total"], want.len(), "{count}");
}

/// A process's peak resident memory (VmHWM), in MiB.
fn peak_rss_mib(pid: u64) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024
}

/// The cost of walking a full table (docs/operations.md): the daemon's IPv4 table (XDPLB_CT4,
/// compact keys, listed as full flows) is filled to its size from here, then counted and listed through the CLI; for comparison, the same table is
/// walked key by key (`BPF_MAP_GET_NEXT_KEY` + lookup per entry, aya's `HashMap::iter`).
#[test]
fn a_full_table_is_walked_in_batches_and_timed() {
    let e = l2_env();
    let size = m::DEFAULT_CONNTRACK_SIZE;
    let pinned = MapData::from_pin(e.d.pin_path.join(m::CONNTRACK4)).unwrap();
    let mut table: HashMap<_, FlowKey4, ConnValue> =
        HashMap::try_from(Map::from_map_data(pinned).unwrap()).unwrap();
    let filled = Instant::now();
    let vip: IpAddr = VIP4.parse().unwrap();
    for i in 0..size {
        let key = FlowKey {
            src: addr::to_words(IpAddr::from((0x0a00_0000u32 + i).to_be_bytes())),
            dst: addr::to_words(vip),
            sport: ((i % 50000) as u16 + 10000).to_be(),
            dport: PORT.to_be(),
            proto: 6,
            family: addr::family(vip),
            _pad: [0; 2],
        };
        table
            .insert(FlowKey4::of(&key), ConnValue::default(), 0)
            .unwrap();
    }
    println!(
        "filled {size} entries from user space in {:?}",
        filled.elapsed()
    );

    let t = Instant::now();
    let count = e.d.json(&["conn", "count"]).unwrap();
    let count_time = t.elapsed();
    let total = count["total"].as_u64().unwrap();
    assert_eq!(count["walked"], total, "{count}");
    // An LRU table may evict before it is full (per-CPU free lists): most must be there.
    assert!(total > size as u64 / 2 && total <= size as u64, "{count}");
    let pid = e.d.json(&["status"]).unwrap()["daemon"]["pid"]
        .as_u64()
        .unwrap();
    let peak_before = peak_rss_mib(pid);
    let t = Instant::now();
    let out = e.d.cli(&["conn", "list", "--json"]).unwrap();
    let list_time = t.elapsed();
    assert!(out.status.success());
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["conns"].as_array().unwrap().len() as u64, total);
    let peak_after = peak_rss_mib(pid);
    println!("daemon peak RSS {peak_before} MiB before the full listing, {peak_after} MiB after");
    // Encoded entry by entry: the listing costs about its JSON text (as a `Value` tree it
    // took 360 MiB).
    assert!(
        peak_after < peak_before + 150,
        "{peak_before} -> {peak_after} MiB"
    );
    let t = Instant::now();
    let by_key = table.iter().filter(Result::is_ok).count();
    let key_time = t.elapsed();
    let rate = |n: u64, d: std::time::Duration| n as f64 / d.as_secs_f64() / 1e6;
    println!(
        "conn count: {total} entries in {count_time:?} ({:.2} M entries/s, CLI included)",
        rate(total, count_time)
    );
    println!(
        "conn list --json: {total} entries, {} MB of JSON, in {list_time:?} ({:.2} M entries/s)",
        out.stdout.len() / 1_000_000,
        rate(total, list_time)
    );
    println!(
        "key by key (get_next_key + lookup): {by_key} entries in {key_time:?} ({:.2} M entries/s)",
        rate(by_key as u64, key_time)
    );
    // With RUST_LOG=debug the daemon logs each walk's own time.
    for l in
        e.d.log()
            .lines()
            .filter(|l| l.contains("connection table walk"))
    {
        println!("daemon: {l}");
    }
    let limited = e.d.json(&["conn", "list", "--limit", "10"]).unwrap();
    assert_eq!(limited["conns"].as_array().unwrap().len(), 10);
    assert!(
        limited["walked"].as_u64().unwrap() < total,
        "--limit ends the walk early: {limited}"
    );
}
