//! Prometheus metrics for xdplb: the text exposition format (`render` here, a strict parser
//! for tests in `parse`) and a minimal HTTP/1.1 server for `GET /metrics` (`http`).
//!
//! The server is deliberately tiny: one request per connection, no keep-alive, no body. Every
//! connection is bounded in time and memory so that a misbehaving client cannot hold the
//! daemon's resources or delay other scrapes for long.

use std::{fmt::Write as _, net::SocketAddr};

mod http;
mod parse;

#[cfg(test)]
use self::http::serve_with;
pub use self::{
    http::{serve, SnapshotFn},
    parse::{parse, Sample},
};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct VipMetrics {
    pub vip: String,
    pub mode: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackendMetrics {
    pub vip: String,
    pub backend: String,
    pub weight: u32,
    pub up: bool,
    pub draining: bool,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
}

/// The node's announcements (present when `[announce]` is configured).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeMetrics {
    pub drained: bool,
    /// (prefix, announced) per VIP address.
    pub announced: Vec<(String, bool)>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    pub node: Option<NodeMetrics>,
    pub vips: Vec<VipMetrics>,
    pub backends: Vec<BackendMetrics>,
    /// Verdict reasons of the data path (name, packets): every packet counts under exactly one.
    pub verdicts: Vec<(String, u64)>,
    /// Data-path events (name, count), e.g. conntrack_hit.
    pub events: Vec<(String, u64)>,
    pub uptime_seconds: f64,
    /// Whether the maps hold the running configuration (`xdplb status`, "out of sync").
    pub maps_in_sync: bool,
}

// ---------------------------------------------------------------------------------------------
// Rendering

type Labels<'a> = Vec<(&'a str, &'a str)>;

const COUNTER: &str = "counter";
const GAUGE: &str = "gauge";

/// A per-VIP or per-backend family: name, type, help and the field it shows.
type Family<T> = (&'static str, &'static str, &'static str, fn(&T) -> u64);

const VIP_FAMILIES: [Family<VipMetrics>; 5] = [
    (
        "xdplb_vip_packets_total",
        COUNTER,
        "Packets received for the VIP.",
        |v| v.packets,
    ),
    (
        "xdplb_vip_bytes_total",
        COUNTER,
        "Bytes received for the VIP.",
        |v| v.bytes,
    ),
    (
        "xdplb_vip_new_flows_total",
        COUNTER,
        "New flows scheduled for the VIP.",
        |v| v.new_flows,
    ),
    (
        "xdplb_vip_reply_packets_total",
        COUNTER,
        "Backends' replies sent back from the VIP (L3 mode).",
        |v| v.reply_packets,
    ),
    (
        "xdplb_vip_reply_bytes_total",
        COUNTER,
        "Bytes of backends' replies sent back from the VIP (L3 mode).",
        |v| v.reply_bytes,
    ),
];

const BACKEND_FAMILIES: [Family<BackendMetrics>; 8] = [
    (
        "xdplb_backend_packets_total",
        COUNTER,
        "Packets forwarded to the backend.",
        |b| b.packets,
    ),
    (
        "xdplb_backend_bytes_total",
        COUNTER,
        "Bytes forwarded to the backend.",
        |b| b.bytes,
    ),
    (
        "xdplb_backend_new_flows_total",
        COUNTER,
        "New flows scheduled to the backend.",
        |b| b.new_flows,
    ),
    (
        "xdplb_backend_reply_packets_total",
        COUNTER,
        "The backend's replies sent back from the VIP (L3 mode).",
        |b| b.reply_packets,
    ),
    (
        "xdplb_backend_reply_bytes_total",
        COUNTER,
        "Bytes of the backend's replies sent back from the VIP (L3 mode).",
        |b| b.reply_bytes,
    ),
    (
        "xdplb_backend_up",
        GAUGE,
        "Whether the backend passes its health check (1) or not (0).",
        |b| b.up.into(),
    ),
    (
        "xdplb_backend_weight",
        GAUGE,
        "Configured weight of the backend.",
        |b| b.weight.into(),
    ),
    (
        "xdplb_backend_draining",
        GAUGE,
        "Whether the backend is draining: it keeps its flows but gets no new ones.",
        |b| b.draining.into(),
    ),
];

/// Renders `s` in the Prometheus text exposition format 0.0.4.
///
/// Families without samples are left out entirely (no HELP/TYPE), except `xdplb_up`,
/// `xdplb_uptime_seconds` and `xdplb_maps_in_sync`, which always have one.
pub fn render(s: &MetricsSnapshot) -> String {
    let mut out = String::new();
    let help = "Whether the xdplb control daemon is running (always 1 when scraped).";
    family(&mut out, "xdplb_up", GAUGE, help, [(vec![], "1".into())]);
    let help = "Seconds since the xdplb control daemon started.";
    let uptime = [(vec![], format_float(s.uptime_seconds))];
    family(&mut out, "xdplb_uptime_seconds", GAUGE, help, uptime);
    let help = "Whether the data path's maps hold the running configuration (0 while a failed write is retried).";
    let in_sync = [(vec![], u8::from(s.maps_in_sync).to_string())];
    family(&mut out, "xdplb_maps_in_sync", GAUGE, help, in_sync);

    for (name, kind, help, value) in VIP_FAMILIES {
        let samples = s.vips.iter().map(|v| {
            let labels = vec![("vip", v.vip.as_str()), ("mode", v.mode.as_str())];
            (labels, value(v).to_string())
        });
        family(&mut out, name, kind, help, samples);
    }
    for (name, kind, help, value) in BACKEND_FAMILIES {
        let samples = s.backends.iter().map(|b| {
            let labels = vec![("vip", b.vip.as_str()), ("backend", b.backend.as_str())];
            (labels, value(b).to_string())
        });
        family(&mut out, name, kind, help, samples);
    }

    if let Some(n) = &s.node {
        let help = "Whether the node is drained (xdplb node drain): it announces no VIP.";
        let drained = [(vec![], u8::from(n.drained).to_string())];
        family(&mut out, "xdplb_node_drained", GAUGE, help, drained);
        let help = "Whether the VIP address is announced (in the table the BGP daemon imports).";
        let samples = n
            .announced
            .iter()
            .map(|(p, on)| (vec![("prefix", p.as_str())], u8::from(*on).to_string()));
        family(&mut out, "xdplb_vip_announced", GAUGE, help, samples);
    }

    let help = "Packets by data-path verdict; every packet counts under exactly one reason.";
    family(
        &mut out,
        "xdplb_verdicts_total",
        COUNTER,
        help,
        keyed("reason", &s.verdicts),
    );
    let help = "Data-path events by kind.";
    family(
        &mut out,
        "xdplb_events_total",
        COUNTER,
        help,
        keyed("event", &s.events),
    );
    out
}

/// Samples of `(name, count)` rows with the name as the value of `label`.
fn keyed<'a>(
    label: &'a str,
    rows: &'a [(String, u64)],
) -> impl Iterator<Item = (Labels<'a>, String)> + 'a {
    rows.iter()
        .map(move |(key, n)| (vec![(label, key.as_str())], n.to_string()))
}

/// Appends one metric family; nothing at all when it has no samples.
fn family<'a>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels<'a>, String)>,
) {
    let mut samples = samples.into_iter().peekable();
    if samples.peek().is_none() {
        return;
    }
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        out.push_str(name);
        if !labels.is_empty() {
            out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(key);
                out.push_str("=\"");
                escape_label_value(out, value);
                out.push('"');
            }
            out.push('}');
        }
        out.push(' ');
        out.push_str(&value);
        out.push('\n');
    }
}

fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Rust's `Display` never uses exponents and round-trips; only the non-finite spellings differ
/// from what Prometheus expects.
fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        v.to_string()
    }
}

/// Refuses a non-loopback metrics address unless `allow_remote`.
pub fn check_bind_addr(addr: SocketAddr, allow_remote: bool) -> Result<(), String> {
    // to_canonical: ::ffff:127.0.0.1 is loopback too.
    if allow_remote || addr.ip().to_canonical().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "metrics address {addr} is not a loopback address; \
             set allow_remote = true under [metrics] to expose it"
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        sync::{
            atomic::{AtomicBool, Ordering},
            Arc,
        },
        time::{Duration, Instant},
    };

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
        time::timeout,
    };

    use super::{
        http::{MAX_HEAD, READ_TIMEOUT},
        *,
    };

    /// Upper bound for any single network exchange in these tests.
    const DEADLINE: Duration = Duration::from_secs(2);

    fn sample(name: &str, labels: &[(&str, &str)], value: f64) -> Sample {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Sample {
            name: name.into(),
            labels,
            value,
        }
    }

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
    fn render_parses_back_to_the_expected_samples() {
        let text = render(&snapshot());
        let (v4, v6) = ("10.0.0.1:80/tcp", "[2001:db8::1]:443/tcp");
        let (b4, b6) = ("10.1.0.1", "2001:db8:1::2");
        let vip4 = [("vip", v4), ("mode", "l2")];
        let vip6 = [("vip", v6), ("mode", "tunnel")];
        let be4 = [("vip", v4), ("backend", b4)];
        let be6 = [("vip", v6), ("backend", b6)];
        let expected = vec![
            sample("xdplb_up", &[], 1.0),
            sample("xdplb_uptime_seconds", &[], 12.5),
            sample("xdplb_maps_in_sync", &[], 1.0),
            sample("xdplb_vip_packets_total", &vip4, 10.0),
            sample("xdplb_vip_packets_total", &vip6, 20.0),
            sample("xdplb_vip_bytes_total", &vip4, 1000.0),
            sample("xdplb_vip_bytes_total", &vip6, 2000.0),
            sample("xdplb_vip_new_flows_total", &vip4, 2.0),
            sample("xdplb_vip_new_flows_total", &vip6, 3.0),
            sample("xdplb_vip_reply_packets_total", &vip4, 0.0),
            sample("xdplb_vip_reply_packets_total", &vip6, 40.0),
            sample("xdplb_vip_reply_bytes_total", &vip4, 0.0),
            sample("xdplb_vip_reply_bytes_total", &vip6, 6000.0),
            sample("xdplb_backend_packets_total", &be4, 10.0),
            sample("xdplb_backend_packets_total", &be6, 20.0),
            sample("xdplb_backend_bytes_total", &be4, 1000.0),
            sample("xdplb_backend_bytes_total", &be6, 2000.0),
            sample("xdplb_backend_new_flows_total", &be4, 1.0),
            sample("xdplb_backend_new_flows_total", &be6, 2.0),
            sample("xdplb_backend_reply_packets_total", &be4, 20.0),
            sample("xdplb_backend_reply_packets_total", &be6, 40.0),
            sample("xdplb_backend_reply_bytes_total", &be4, 3000.0),
            sample("xdplb_backend_reply_bytes_total", &be6, 6000.0),
            sample("xdplb_backend_up", &be4, 1.0),
            sample("xdplb_backend_up", &be6, 0.0),
            sample("xdplb_backend_weight", &be4, 100.0),
            sample("xdplb_backend_weight", &be6, 50.0),
            sample("xdplb_backend_draining", &be4, 0.0),
            sample("xdplb_backend_draining", &be6, 1.0),
            sample("xdplb_node_drained", &[], 0.0),
            sample("xdplb_vip_announced", &[("prefix", "10.0.0.1/32")], 1.0),
            sample("xdplb_vip_announced", &[("prefix", "2001:db8::1/128")], 0.0),
            sample("xdplb_verdicts_total", &[("reason", "tx")], 30.0),
            sample("xdplb_verdicts_total", &[("reason", "pass")], 7.0),
            sample("xdplb_events_total", &[("event", "conntrack_hit")], 25.0),
        ];
        assert_eq!(parse(&text).unwrap(), expected);
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
        assert!(text.contains(
            "xdplb_vip_packets_total{vip=\"[2001:db8::1]:443/tcp\",mode=\"tunnel\"} 20\n"
        ));
    }

    #[test]
    fn render_leaves_out_families_without_samples() {
        let text = render(&MetricsSnapshot::default());
        assert_eq!(
            text,
            "# HELP xdplb_up Whether the xdplb control daemon is running (always 1 when scraped).\n\
             # TYPE xdplb_up gauge\n\
             xdplb_up 1\n\
             # HELP xdplb_uptime_seconds Seconds since the xdplb control daemon started.\n\
             # TYPE xdplb_uptime_seconds gauge\n\
             xdplb_uptime_seconds 0\n\
             # HELP xdplb_maps_in_sync Whether the data path's maps hold the running configuration (0 while a failed write is retried).\n\
             # TYPE xdplb_maps_in_sync gauge\n\
             xdplb_maps_in_sync 0\n"
        );
    }

    #[test]
    fn non_finite_uptime_renders_in_prometheus_spelling() {
        for (v, text) in [
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
        ] {
            let s = MetricsSnapshot {
                uptime_seconds: v,
                ..Default::default()
            };
            let rendered = render(&s);
            assert!(rendered.contains(&format!("xdplb_uptime_seconds {text}\n")));
            let parsed = parse(&rendered).unwrap()[1].value;
            assert!(parsed == v || (v.is_nan() && parsed.is_nan()));
        }
    }

    #[test]
    fn label_escaping_round_trips() {
        let nasty = "a\"b\\c\nd";
        // Delimiters inside a value must not confuse the parser.
        let tricky = "x},y=\"z\" #ü";
        let s = MetricsSnapshot {
            events: vec![(nasty.into(), 1), (tricky.into(), 2)],
            ..Default::default()
        };
        let text = render(&s);
        assert!(
            text.contains(r#"xdplb_events_total{event="a\"b\\c\nd"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"xdplb_events_total{event="x},y=\"z\" #ü"} 2"#),
            "{text}"
        );
        assert_eq!(
            parse(&text).unwrap()[3..],
            [
                sample("xdplb_events_total", &[("event", nasty)], 1.0),
                sample("xdplb_events_total", &[("event", tricky)], 2.0),
            ]
        );
    }

    #[test]
    fn parse_accepts_the_format_around_samples() {
        let text = "# a plain comment\n\n# HELP x Help with \\\\ and \\n.\n# TYPE x counter\n\
                    x{} 1\nx{a=\"1\",b=\"2\",} -2.5e3\ny +Inf\n";
        let samples = parse(text).unwrap();
        assert_eq!(
            samples,
            vec![
                sample("x", &[], 1.0),
                sample("x", &[("a", "1"), ("b", "2")], -2500.0),
                sample("y", &[], f64::INFINITY),
            ]
        );
        assert_eq!(parse(""), Ok(vec![]));
    }

    #[test]
    fn parse_rejects_malformed_lines_naming_the_line() {
        let cases = [
            ("x\n", 1, "expected a blank before the value"),
            ("ok 1\nx{a=\"b\" 1\n", 2, "expected ',' or '}'"),
            ("1x 1\n", 1, "expected a metric name"),
            ("x{a=b} 1\n", 1, "expected '\"'"),
            ("x{a=\"b\\q\"} 1\n", 1, "invalid escape"),
            ("x{a=\"b} 1\n", 1, "unterminated value"),
            ("x{a=\"1\",a=\"2\"} 1\n", 1, "duplicate label a"),
            ("x{1a=\"v\"} 1\n", 1, "expected a label name"),
            ("x{a=\"v\"}1\n", 1, "expected a blank before the value"),
            ("ok 1\n\nx one\n", 3, "invalid value \"one\""),
            ("x inf\n", 1, "invalid value"),
            ("x 1 1700000000\n", 1, "timestamps are not supported"),
            ("x 1\r\n", 1, "invalid value"),
            ("# TYPE x countr\n", 1, "invalid type"),
            (
                "# TYPE x counter\nx 1\n# TYPE x counter\n",
                3,
                "duplicate TYPE line for x",
            ),
            ("# HELP x bad \\t escape\n", 1, "invalid escape in HELP"),
            ("# HELP\n", 1, "expected a metric name after HELP"),
            ("ok 1\nx 1", 2, "missing final newline"),
        ];
        for (text, line, fragment) in cases {
            let err = parse(text).expect_err(text);
            assert!(
                err.starts_with(&format!("line {line}: ")),
                "{text:?}: {err}"
            );
            assert!(err.contains(fragment), "{text:?}: {err}");
        }
    }

    #[test]
    fn check_bind_addr_allows_only_loopback_by_default() {
        for addr in ["127.0.0.1:9100", "[::1]:9100", "[::ffff:127.0.0.1]:9100"] {
            assert_eq!(
                check_bind_addr(addr.parse().unwrap(), false),
                Ok(()),
                "{addr}"
            );
        }
        for addr in ["0.0.0.0:9100", "10.1.2.3:9100", "[::]:9100"] {
            let err = check_bind_addr(addr.parse().unwrap(), false).unwrap_err();
            assert_eq!(
                err,
                format!(
                    "metrics address {addr} is not a loopback address; \
                     set allow_remote = true under [metrics] to expose it"
                )
            );
            assert_eq!(
                check_bind_addr(addr.parse().unwrap(), true),
                Ok(()),
                "{addr}"
            );
        }
    }

    // --- server ---

    struct Server {
        addr: SocketAddr,
        task: tokio::task::JoinHandle<io::Result<()>>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn start(snapshot: SnapshotFn, read_timeout: Duration) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve_with(listener, snapshot, read_timeout));
        Server { addr, task }
    }

    async fn start_default() -> Server {
        start(Arc::new(|| Ok(snapshot())), READ_TIMEOUT).await
    }

    struct Reply {
        status: u16,
        head: String,
        body: String,
    }

    /// Sends `request` and reads the reply until the server closes, within `DEADLINE`.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> Reply {
        let mut reply = Vec::new();
        timeout(DEADLINE, async {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(request).await.unwrap();
            stream.read_to_end(&mut reply).await.unwrap();
        })
        .await
        .expect("exchange timed out");
        let reply = String::from_utf8(reply).unwrap();
        let (head, body) = reply.split_once("\r\n\r\n").expect("no end of head");
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        Reply {
            status,
            head: head.into(),
            body: body.into(),
        }
    }

    async fn get(addr: SocketAddr, path: &str) -> Reply {
        exchange(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
        .await
    }

    #[tokio::test]
    async fn serves_metrics() {
        let server = start_default().await;
        let reply = get(server.addr, "/metrics").await;
        assert_eq!(reply.status, 200);
        assert!(reply.head.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(reply
            .head
            .contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(reply.head.contains("\r\nConnection: close"));
        assert!(reply
            .head
            .contains(&format!("\r\nContent-Length: {}\r\n", reply.body.len())));
        assert_eq!(reply.body, render(&snapshot()));
        assert_eq!(parse(&reply.body).unwrap().len(), 35);

        // Query parameters are ignored.
        assert_eq!(get(server.addr, "/metrics?target=x").await.status, 200);
    }

    #[tokio::test]
    async fn answers_other_requests() {
        let server = start_default().await;
        let root = get(server.addr, "/").await;
        assert_eq!(root.status, 200);
        assert!(root.body.contains("/metrics"));
        assert_eq!(root.body.lines().count(), 1);

        assert_eq!(get(server.addr, "/nope").await.status, 404);
        let post = exchange(server.addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(post.status, 405);
        assert!(post.head.contains("\r\nAllow: GET"));
        assert_eq!(exchange(server.addr, b"garbage\r\n\r\n").await.status, 400);
        assert_eq!(
            exchange(server.addr, b"GET / SPDY/3\r\n\r\n").await.status,
            400
        );
        // Bare LF line ends, as typed into nc.
        assert_eq!(
            exchange(server.addr, b"GET /metrics HTTP/1.0\n\n")
                .await
                .status,
            200
        );
    }

    #[tokio::test]
    async fn refuses_an_oversize_head() {
        let server = start_default().await;
        let filler = "a".repeat(MAX_HEAD);
        let request = format!("GET /metrics HTTP/1.1\r\nX-Filler: {filler}\r\n\r\n");
        let reply = exchange(server.addr, request.as_bytes()).await;
        assert_eq!(reply.status, 431);
        // The server is still there.
        assert_eq!(get(server.addr, "/metrics").await.status, 200);
    }

    #[tokio::test]
    async fn a_silent_client_does_not_block_scrapes() {
        let server = start_default().await;
        let _silent = TcpStream::connect(server.addr).await.unwrap();
        let mut partial = TcpStream::connect(server.addr).await.unwrap();
        partial.write_all(b"GET /metr").await.unwrap();
        let started = Instant::now();
        assert_eq!(get(server.addr, "/metrics").await.status, 200);
        // Well before the silent clients' 5 s read timeout.
        assert!(started.elapsed() < DEADLINE);
    }

    #[tokio::test]
    async fn closes_a_silent_connection_after_the_read_timeout() {
        let server = start(Arc::new(|| Ok(snapshot())), Duration::from_millis(200)).await;
        let mut silent = TcpStream::connect(server.addr).await.unwrap();
        let mut buf = [0; 16];
        let read = timeout(DEADLINE, silent.read(&mut buf))
            .await
            .expect("not closed in time");
        assert_eq!(read.unwrap(), 0, "closed without a response");
    }

    #[tokio::test]
    async fn a_panicking_snapshot_gives_500_and_the_server_goes_on() {
        let panicked = Arc::new(AtomicBool::new(false));
        let flag = panicked.clone();
        let snapshot_fn: SnapshotFn = Arc::new(move || {
            if !flag.swap(true, Ordering::SeqCst) {
                panic!("snapshot failure (expected by this test)");
            }
            Ok(snapshot())
        });
        let server = start(snapshot_fn, READ_TIMEOUT).await;
        assert_eq!(get(server.addr, "/metrics").await.status, 500);
        assert!(panicked.load(Ordering::SeqCst));
        assert_eq!(get(server.addr, "/metrics").await.status, 200);
    }

    #[tokio::test]
    async fn a_failed_counter_read_gives_500_not_zeros() {
        let failing: SnapshotFn = Arc::new(|| Err("reading the counters of VIP x failed".into()));
        let server = start(failing, READ_TIMEOUT).await;
        let reply = get(server.addr, "/metrics").await;
        assert_eq!(reply.status, 500);
        assert!(reply.body.contains("reading the counters of VIP x failed"));
    }

    #[tokio::test]
    async fn public_serve_answers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve(listener, Arc::new(|| Ok(snapshot()))));
        assert_eq!(get(addr, "/metrics").await.status, 200);
        task.abort();
    }
}
