//! The daemon's exposition read back: what `metrics::render` produces parses to exactly the
//! samples of the snapshot, in both formats, and `promtool check metrics` (Prometheus' own
//! parser and linter) finds nothing wrong with it. No root, no network.

use lb_tests::exposition::{parse, promtool_check, Sample};
use lb_userspace::metrics::{
    render, BackendMetrics, Format, MetricsSnapshot, NodeMetrics, VipMetrics,
};

fn snapshot() -> MetricsSnapshot {
    let backend = |vip: &str, backend: &str, weight, up, draining, n: u64| BackendMetrics {
        vip: vip.into(),
        backend: backend.into(),
        weight,
        up,
        draining,
        packets: n,
        bytes: n * 100,
        new_flows: n / 10,
        reply_packets: n * 2,
        reply_bytes: n * 300,
    };
    MetricsSnapshot {
        vips: vec![
            VipMetrics {
                vip: "10.0.0.1:80/tcp".into(),
                mode: "l2".into(),
                packets: 10,
                bytes: 1000,
                new_flows: 2,
                reply_packets: 0,
                reply_bytes: 0,
            },
            VipMetrics {
                vip: "[2001:db8::1]:443/tcp".into(),
                mode: "tunnel".into(),
                packets: 20,
                bytes: 2000,
                new_flows: 3,
                reply_packets: 40,
                reply_bytes: 6000,
            },
        ],
        backends: vec![
            backend("10.0.0.1:80/tcp", "10.1.0.1", 100, true, false, 10),
            backend(
                "[2001:db8::1]:443/tcp",
                "2001:db8:1::2",
                50,
                false,
                true,
                20,
            ),
        ],
        verdicts: vec![("tx".into(), 30), ("pass".into(), 7)],
        events: vec![("conntrack_hit".into(), 25)],
        uptime_seconds: 12.5,
        maps_in_sync: true,
        node: Some(NodeMetrics {
            drained: false,
            announced: vec![
                ("10.0.0.1/32".into(), true),
                ("2001:db8::1/128".into(), false),
            ],
        }),
    }
}

#[test]
fn render_parses_back_to_the_expected_samples_and_promtool_finds_nothing() {
    let text = render(&snapshot(), Format::Prometheus).unwrap();
    let (v4, v6) = ("10.0.0.1:80/tcp", "[2001:db8::1]:443/tcp");
    let (b4, b6) = ("10.1.0.1", "2001:db8:1::2");
    let vip4 = [("vip", v4), ("mode", "l2")];
    let vip6 = [("vip", v6), ("mode", "tunnel")];
    let be4 = [("vip", v4), ("backend", b4)];
    let be6 = [("vip", v6), ("backend", b6)];
    let expected = vec![
        Sample::new("xdplb_up", &[], 1.0),
        Sample::new("xdplb_uptime_seconds", &[], 12.5),
        Sample::new("xdplb_maps_in_sync", &[], 1.0),
        Sample::new("xdplb_vip_packets_total", &vip4, 10.0),
        Sample::new("xdplb_vip_packets_total", &vip6, 20.0),
        Sample::new("xdplb_vip_bytes_total", &vip4, 1000.0),
        Sample::new("xdplb_vip_bytes_total", &vip6, 2000.0),
        Sample::new("xdplb_vip_new_flows_total", &vip4, 2.0),
        Sample::new("xdplb_vip_new_flows_total", &vip6, 3.0),
        Sample::new("xdplb_vip_reply_packets_total", &vip4, 0.0),
        Sample::new("xdplb_vip_reply_packets_total", &vip6, 40.0),
        Sample::new("xdplb_vip_reply_bytes_total", &vip4, 0.0),
        Sample::new("xdplb_vip_reply_bytes_total", &vip6, 6000.0),
        Sample::new("xdplb_backend_packets_total", &be4, 10.0),
        Sample::new("xdplb_backend_packets_total", &be6, 20.0),
        Sample::new("xdplb_backend_bytes_total", &be4, 1000.0),
        Sample::new("xdplb_backend_bytes_total", &be6, 2000.0),
        Sample::new("xdplb_backend_new_flows_total", &be4, 1.0),
        Sample::new("xdplb_backend_new_flows_total", &be6, 2.0),
        Sample::new("xdplb_backend_reply_packets_total", &be4, 20.0),
        Sample::new("xdplb_backend_reply_packets_total", &be6, 40.0),
        Sample::new("xdplb_backend_reply_bytes_total", &be4, 3000.0),
        Sample::new("xdplb_backend_reply_bytes_total", &be6, 6000.0),
        Sample::new("xdplb_backend_up", &be4, 1.0),
        Sample::new("xdplb_backend_up", &be6, 0.0),
        Sample::new("xdplb_backend_weight", &be4, 100.0),
        Sample::new("xdplb_backend_weight", &be6, 50.0),
        Sample::new("xdplb_backend_draining", &be4, 0.0),
        Sample::new("xdplb_backend_draining", &be6, 1.0),
        Sample::new("xdplb_node_drained", &[], 0.0),
        Sample::new("xdplb_vip_announced", &[("prefix", "10.0.0.1/32")], 1.0),
        Sample::new("xdplb_vip_announced", &[("prefix", "2001:db8::1/128")], 0.0),
        Sample::new("xdplb_verdicts_total", &[("reason", "tx")], 30.0),
        Sample::new("xdplb_verdicts_total", &[("reason", "pass")], 7.0),
        Sample::new("xdplb_events_total", &[("event", "conntrack_hit")], 25.0),
    ];
    assert_eq!(parse(&text).unwrap(), expected);
    promtool_check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    // OpenMetrics carries the same samples (its TYPE lines name counters without `_total`).
    let openmetrics = render(&snapshot(), Format::OpenMetrics).unwrap();
    assert_eq!(parse(&openmetrics).unwrap(), expected);
    // Every family is described exactly once, with its type.
    for (name, kind) in [
        ("xdplb_up", "gauge"),
        ("xdplb_uptime_seconds", "gauge"),
        ("xdplb_maps_in_sync", "gauge"),
        ("xdplb_vip_packets_total", "counter"),
        ("xdplb_backend_up", "gauge"),
        ("xdplb_backend_weight", "gauge"),
        ("xdplb_verdicts_total", "counter"),
        ("xdplb_events_total", "counter"),
    ] {
        assert!(
            text.contains(&format!("\n# TYPE {name} {kind}\n")),
            "{name}"
        );
    }
    assert_eq!(text.matches("# HELP ").count(), 20);
    assert_eq!(text.matches("# TYPE ").count(), 20);
    assert!(text
        .contains("xdplb_vip_packets_total{vip=\"[2001:db8::1]:443/tcp\",mode=\"tunnel\"} 20\n"));
}

#[test]
fn label_values_with_delimiters_round_trip_and_pass_promtool() {
    let nasty = "a\"b\\c\nd";
    // Delimiters inside a value must not confuse a parser.
    let tricky = "x},y=\"z\" #ü";
    let s = MetricsSnapshot {
        events: vec![(nasty.into(), 1), (tricky.into(), 2)],
        ..Default::default()
    };
    let text = render(&s, Format::Prometheus).unwrap();
    assert_eq!(
        parse(&text).unwrap()[3..],
        [
            Sample::new("xdplb_events_total", &[("event", nasty)], 1.0),
            Sample::new("xdplb_events_total", &[("event", tricky)], 2.0),
        ]
    );
    promtool_check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
}

#[test]
fn promtool_catches_what_the_tests_rely_on_it_for() {
    // A counter without `_total` and a family without HELP: the check is not a formality.
    let bad = "# TYPE xdplb_vip_packets counter\nxdplb_vip_packets 1\n";
    let err = promtool_check(bad).unwrap_err();
    assert!(err.contains("xdplb_vip_packets"), "{err}");
}
