//! `xdplb trace` end to end in the L2 topology (needs root): a filtered client sees exactly its
//! packets with the backend that served them, a verdict filter sees a drop, two traces run at
//! once, and a trace that ends (killed, or its count reached) frees the data path's trace bit.

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use lb_tests::{
    l2env::{wait_for, L2Env as Env, PORT},
    l3env::L3Env,
    peers::udp_once,
    topology::{L3Topology, L3_VIP4, VIP4},
    trace::Trace,
};

const WAIT: Duration = Duration::from_secs(10);

/// The UDP VIP on eth0 with the three backends.
fn env() -> Env {
    let e = Env::new(&[]);
    let vip = e.vip_udp();
    e.d.ok(&["attach", "eth0", "--xdp-mode", "native"]).unwrap();
    e.d.ok(&["vip", "add", &vip, "--mode", "l2"]).unwrap();
    for i in 0..3 {
        e.d.ok(&["backend", "add", &vip, &e.b(i)]).unwrap();
    }
    e
}

fn tracing(e: &Env) -> bool {
    let s = e.d.json(&["status"]).unwrap();
    s["program"]["tracing"].as_bool().unwrap()
}

/// One UDP request from `port` to the VIP; the backend's address.
fn ask(e: &Env, port: u16) -> String {
    let target = SocketAddr::new(VIP4.parse().unwrap(), PORT);
    let name = e
        .topo
        .client
        .ns
        .run(|| udp_once(target, port))
        .unwrap()
        .unwrap();
    let i: usize = name.strip_prefix('b').unwrap().parse().unwrap();
    e.b(i - 1)
}

#[test]
fn a_client_filter_sees_exactly_its_packets_and_their_backend() {
    let e = env();
    assert!(!tracing(&e), "no trace runs yet");
    let client = e.topo.client.ip4.to_string();
    let t = Trace::start(
        &e.d,
        &["--client", &format!("{client}:41002"), "--count", "2"],
    )
    .unwrap();
    wait_for("the trace to start", WAIT, || tracing(&e));
    // Another port of the same client first: not this trace's.
    ask(&e, 41001);
    let first = ask(&e, 41002);
    let second = ask(&e, 41002);
    assert_eq!(first, second, "the flow keeps its backend");
    let events = t.events(2, WAIT).unwrap();
    for (i, ev) in events.iter().enumerate() {
        assert_eq!(ev["src"], format!("{client}:41002"), "{ev}");
        assert_eq!(ev["dst"], format!("{VIP4}:{PORT}"), "{ev}");
        assert_eq!(ev["proto"], "udp", "{ev}");
        assert_eq!(ev["vip"], e.vip_udp(), "{ev}");
        assert_eq!(ev["backend"], first, "the backend that answered: {ev}");
        assert_eq!(ev["verdict"], "tx", "{ev}");
        assert_eq!(ev["rewrite"], "mac", "{ev}");
        assert_eq!(ev["egress"], "eth0", "{ev}");
        assert_eq!(ev["iface"], "eth0", "{ev}");
        assert_eq!(ev["flow"], if i == 0 { "new" } else { "hit" }, "{ev}");
    }
    // --count 2: the stream ends by itself, and the daemon frees the trace.
    let (rest, status) = t.finish(WAIT).unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(rest.last().map(|v| v["end"].clone()), Some("count".into()));
    wait_for("the trace bit to go off", WAIT, || !tracing(&e));
}

#[test]
fn a_verdict_filter_sees_the_drop() {
    let e = env();
    // A VIP without backends: its packets are dropped.
    let empty = format!("{VIP4}:9090/udp");
    e.d.ok(&["vip", "add", &empty, "--mode", "l2"]).unwrap();
    let t = Trace::start(&e.d, &["--verdict", "drop_no_backend", "--count", "1"]).unwrap();
    wait_for("the trace to start", WAIT, || tracing(&e));
    ask(&e, 42001); // served: not a drop
    e.topo
        .client
        .ns
        .run(|| {
            let s = UdpSocket::bind("0.0.0.0:42002").unwrap();
            s.send_to(b"who", (VIP4, 9090)).unwrap();
        })
        .unwrap();
    let ev = t.events(1, WAIT).unwrap().remove(0);
    assert_eq!(ev["verdict"], "drop_no_backend", "{ev}");
    assert_eq!(ev["action"], "drop", "{ev}");
    assert_eq!(ev["vip"], empty, "{ev}");
    assert_eq!(ev["backend"], serde_json::Value::Null, "{ev}");
    assert_eq!(ev["dst"], format!("{VIP4}:9090"), "{ev}");
    assert_eq!(ev["src"], format!("{}:42002", e.topo.client.ip4), "{ev}");
    let (_, status) = t.finish(WAIT).unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn two_traces_run_at_once_and_killing_them_frees_the_trace() {
    let e = env();
    let client = e.topo.client.ip4.to_string();
    let one = Trace::start(&e.d, &["--client", &format!("{client}:43001")]).unwrap();
    let two = Trace::start(&e.d, &["--client", &format!("{client}:43002")]).unwrap();
    // Both subscribed: a refused filter is checked first, so this waits for the second too.
    wait_for("both traces to start", WAIT, || {
        e.d.log().matches("trace started").count() == 2
    });
    let b1 = ask(&e, 43001);
    let b2 = ask(&e, 43002);
    let ev1 = one.events(1, WAIT).unwrap().remove(0);
    let ev2 = two.events(1, WAIT).unwrap().remove(0);
    assert_eq!(ev1["src"], format!("{client}:43001"));
    assert_eq!(ev1["backend"], b1);
    assert_eq!(ev2["src"], format!("{client}:43002"));
    assert_eq!(ev2["backend"], b2);

    // The first CLI stops (killed by its pid): the other trace goes on.
    one.kill().unwrap();
    wait_for("the daemon to end the first trace", WAIT, || {
        e.d.log().matches("trace ended").count() == 1
    });
    assert!(tracing(&e), "one trace still runs");
    ask(&e, 43002);
    let ev = two.events(1, WAIT).unwrap().remove(0);
    assert_eq!(ev["src"], format!("{client}:43002"));

    // The last one stops: the data path stops tracing.
    two.kill().unwrap();
    wait_for("the trace bit to go off", WAIT, || !tracing(&e));
}

#[test]
fn a_trace_of_nothing_configured_is_refused() {
    let e = env();
    let out =
        e.d.cli(&["trace", "--vip", &format!("{VIP4}:1234/tcp")])
            .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such VIP is configured"), "{err}");
    let out = e.d.cli(&["trace", "--verdict", "dropped"]).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a verdict reason"), "{err}");
    assert!(!tracing(&e), "a refused trace changes nothing");
}

#[test]
fn events_over_the_budget_are_dropped_counted_and_reported() {
    let e = env();
    let client = e.topo.client.ip4.to_string();
    let t = Trace::start(&e.d, &["--client", &format!("{client}:45001")]).unwrap();
    wait_for("the trace to start", WAIT, || tracing(&e));
    // Three times the per-CPU budget at once, from one flow: a few milliseconds of sending,
    // so most of it lands in one budget second.
    let n = 3 * lb_common::trace::TRACE_EVENTS_PER_SEC as usize;
    e.topo
        .client
        .ns
        .run(|| {
            let s = UdpSocket::bind("0.0.0.0:45001").unwrap();
            s.connect((VIP4, PORT)).unwrap();
            for _ in 0..n {
                // A full socket queue may refuse a few: the budget is what is tested.
                let _ = s.send(b"who");
            }
        })
        .unwrap();
    let d = t.dropped(WAIT).unwrap();
    let data_path = d["data_path"].as_u64().unwrap();
    assert!(data_path > 0, "{d}");
    let s = e.d.json(&["status"]).unwrap();
    assert!(
        s["program"]["trace_dropped"].as_u64().unwrap() >= data_path,
        "{}",
        s["program"]
    );
}

#[test]
fn an_l3_flow_shows_its_translation_both_ways() {
    let vips = |topo: &L3Topology| {
        let b = &topo.backends[0];
        format!("\n[[vip]]\naddr = \"{L3_VIP4}:{PORT}/udp\"\nmode = \"l3\"\n[[vip.backend]]\naddr = \"{}\"\n", b.ip4)
    };
    let e = L3Env::start(1, |topo| L3Env::serve(topo, &[PORT]), vips).unwrap();
    let client = e.topo.client.ip4.to_string();
    let backend = e.topo.backends[0].ip4.to_string();
    let t = Trace::start(
        &e.d,
        &["--client", &format!("{client}:46001"), "--count", "2"],
    )
    .unwrap();
    wait_for("the trace to start", WAIT, || {
        e.d.json(&["status"]).unwrap()["program"]["tracing"] == true
    });
    let target = SocketAddr::new(L3_VIP4.parse().unwrap(), PORT);
    assert_eq!(e.in_client(|| udp_once(target, 46001)).unwrap(), "b1");
    let ev = t.events(2, WAIT).unwrap();
    let sent = ["redirect", "pass_kernel_forwards"];
    // The client's packet: to the VIP, rewritten to the backend, out towards it.
    assert_eq!(ev[0]["src"], format!("{client}:46001"), "{}", ev[0]);
    assert_eq!(ev[0]["dst"], format!("{L3_VIP4}:{PORT}"), "{}", ev[0]);
    assert_eq!(ev[0]["flow"], "new", "{}", ev[0]);
    assert_eq!(ev[0]["backend"], backend, "{}", ev[0]);
    assert_eq!(ev[0]["rewrite"], "dnat", "{}", ev[0]);
    assert_eq!(
        ev[0]["rewrite_to"],
        format!("{backend}:{PORT}"),
        "{}",
        ev[0]
    );
    assert!(
        sent.contains(&ev[0]["verdict"].as_str().unwrap()),
        "{}",
        ev[0]
    );
    // The backend's reply: from the VIP again, to the client.
    assert_eq!(ev[1]["src"], format!("{backend}:{PORT}"), "{}", ev[1]);
    assert_eq!(ev[1]["dst"], format!("{client}:46001"), "{}", ev[1]);
    assert_eq!(ev[1]["flow"], "reply", "{}", ev[1]);
    assert_eq!(ev[1]["vip"], format!("{L3_VIP4}:{PORT}/udp"), "{}", ev[1]);
    assert_eq!(ev[1]["rewrite"], "snat", "{}", ev[1]);
    assert_eq!(
        ev[1]["rewrite_to"],
        format!("{L3_VIP4}:{PORT}"),
        "{}",
        ev[1]
    );
    assert!(
        sent.contains(&ev[1]["verdict"].as_str().unwrap()),
        "{}",
        ev[1]
    );
}
