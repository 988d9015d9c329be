//! Load on the daemon with the live-frames generator in the L2 topology (needs root): a
//! million-source flood, a thousand changes under traffic. SKIPPED where live frames are refused.

use std::time::{Duration, Instant};

use lb_tests::{
    daemon::Daemon,
    l2env::{L2Env as Env, PORT},
    packet::Packet,
    topology::VIP4,
};

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
        // The flood is IPv4: its flows fill XDPLB_CT4 (layout 2).
        .find(|m| m["name"] == lb_common::maps::CONNTRACK4)
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
