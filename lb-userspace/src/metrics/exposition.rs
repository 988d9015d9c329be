//! The exposition: a `prometheus-client` collector over one snapshot, encoded in the Prometheus
//! text format 0.0.4 or in OpenMetrics 1.0, whichever the scraper asks for.
//!
//! Counter families are named without `_total`; both encoders add it to the samples, so the
//! series are `xdplb_vip_packets_total` and so on in either format. (In 0.0.4 the HELP and TYPE
//! lines carry the suffix too, which is what promtool's linter expects.)

use std::fmt;

use prometheus_client::{
    collector::Collector,
    encoding::{prometheus_text, text, DescriptorEncoder, EncodeMetric as _, MetricEncoder},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

use super::{BackendMetrics, MetricsSnapshot, VipMetrics};

/// The two text formats Prometheus scrapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4: for curl, promtool and scrapers that ask for nothing.
    Prometheus,
    /// OpenMetrics 1.0 text, ending in `# EOF`: what Prometheus asks for first.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when an `Accept` header lists it with a non-zero quality (Prometheus lists
    /// it first), the 0.0.4 text format otherwise.
    pub fn from_accept(accept: Option<&str>) -> Self {
        let wants_openmetrics = accept.unwrap_or_default().split(',').any(|range| {
            let mut params = range.split(';').map(str::trim);
            params.next() == Some("application/openmetrics-text")
                && params.all(|p| p.strip_prefix("q=").is_none_or(|q| q.parse() != Ok(0.0)))
        });
        if wants_openmetrics {
            Self::OpenMetrics
        } else {
            Self::Prometheus
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => prometheus_text::CONTENT_TYPE,
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Encodes `s` in `format`. Families without samples are left out entirely (no HELP/TYPE),
/// except `xdplb_up`, `xdplb_uptime_seconds` and `xdplb_maps_in_sync`, which always have one.
pub fn render(s: &MetricsSnapshot, format: Format) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(s.clone())));
    let mut out = String::new();
    match format {
        Format::Prometheus => prometheus_text::encode(&mut out, &registry)?,
        Format::OpenMetrics => text::encode(&mut out, &registry)?,
    }
    Ok(out)
}

/// The metrics of one scrape: the daemon reads the maps when a scrape arrives and hands the
/// snapshot to a fresh registry, so nothing is kept between scrapes and every counter is the
/// daemon's own monotonic count (daemon/counters.rs), not a copy that could drift.
#[derive(Debug)]
struct SnapshotCollector(MetricsSnapshot);

type Labels<'a> = Vec<(&'static str, &'a str)>;

#[derive(Clone, Copy)]
enum Value {
    Count(u64),
    Float(f64),
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Self::Count(b.into())
    }
}

/// A per-VIP or per-backend family: name (counters without `_total`), type, help and the
/// field it shows.
type Family<T> = (&'static str, MetricType, &'static str, fn(&T) -> Value);

const COUNTER: MetricType = MetricType::Counter;
const GAUGE: MetricType = MetricType::Gauge;

const VIP_FAMILIES: [Family<VipMetrics>; 5] = [
    (
        "xdplb_vip_packets",
        COUNTER,
        "Packets received for the VIP.",
        |v| Value::Count(v.packets),
    ),
    (
        "xdplb_vip_bytes",
        COUNTER,
        "Bytes received for the VIP.",
        |v| Value::Count(v.bytes),
    ),
    (
        "xdplb_vip_new_flows",
        COUNTER,
        "New flows scheduled for the VIP.",
        |v| Value::Count(v.new_flows),
    ),
    (
        "xdplb_vip_reply_packets",
        COUNTER,
        "Backends' replies sent back from the VIP (L3 mode).",
        |v| Value::Count(v.reply_packets),
    ),
    (
        "xdplb_vip_reply_bytes",
        COUNTER,
        "Bytes of backends' replies sent back from the VIP (L3 mode).",
        |v| Value::Count(v.reply_bytes),
    ),
];

const BACKEND_FAMILIES: [Family<BackendMetrics>; 8] = [
    (
        "xdplb_backend_packets",
        COUNTER,
        "Packets forwarded to the backend.",
        |b| Value::Count(b.packets),
    ),
    (
        "xdplb_backend_bytes",
        COUNTER,
        "Bytes forwarded to the backend.",
        |b| Value::Count(b.bytes),
    ),
    (
        "xdplb_backend_new_flows",
        COUNTER,
        "New flows scheduled to the backend.",
        |b| Value::Count(b.new_flows),
    ),
    (
        "xdplb_backend_reply_packets",
        COUNTER,
        "The backend's replies sent back from the VIP (L3 mode).",
        |b| Value::Count(b.reply_packets),
    ),
    (
        "xdplb_backend_reply_bytes",
        COUNTER,
        "Bytes of the backend's replies sent back from the VIP (L3 mode).",
        |b| Value::Count(b.reply_bytes),
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
        |b| Value::Count(b.weight.into()),
    ),
    (
        "xdplb_backend_draining",
        GAUGE,
        "Whether the backend is draining: it keeps its flows but gets no new ones.",
        |b| b.draining.into(),
    ),
];

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let s = &self.0;
        let one = |v: Value| [(Labels::new(), v)];
        let help = "Whether the xdplb control daemon is running (always 1 when scraped).";
        family(&mut enc, "xdplb_up", GAUGE, help, one(Value::Count(1)))?;
        let help = "Seconds since the xdplb control daemon started.";
        let uptime = one(Value::Float(s.uptime_seconds));
        family(&mut enc, "xdplb_uptime_seconds", GAUGE, help, uptime)?;
        let help = "Whether the data path's maps hold the running configuration (0 while a failed write is retried).";
        let in_sync = one(s.maps_in_sync.into());
        family(&mut enc, "xdplb_maps_in_sync", GAUGE, help, in_sync)?;

        for (name, kind, help, value) in VIP_FAMILIES {
            let rows = s.vips.iter().map(|v| {
                let labels = vec![("vip", v.vip.as_str()), ("mode", v.mode.as_str())];
                (labels, value(v))
            });
            family(&mut enc, name, kind, help, rows)?;
        }
        for (name, kind, help, value) in BACKEND_FAMILIES {
            let rows = s.backends.iter().map(|b| {
                let labels = vec![("vip", b.vip.as_str()), ("backend", b.backend.as_str())];
                (labels, value(b))
            });
            family(&mut enc, name, kind, help, rows)?;
        }

        if let Some(n) = &s.node {
            let help = "Whether the node is drained (xdplb node drain): it announces no VIP.";
            family(
                &mut enc,
                "xdplb_node_drained",
                GAUGE,
                help,
                one(n.drained.into()),
            )?;
            let help =
                "Whether the VIP address is announced (in the table the BGP daemon imports).";
            let rows = n
                .announced
                .iter()
                .map(|(p, on)| (vec![("prefix", p.as_str())], Value::from(*on)));
            family(&mut enc, "xdplb_vip_announced", GAUGE, help, rows)?;
        }

        let help = "Packets by data-path verdict; every packet counts under exactly one reason.";
        let rows = keyed("reason", &s.verdicts);
        family(&mut enc, "xdplb_verdicts", COUNTER, help, rows)?;
        let help = "Data-path events by kind.";
        family(
            &mut enc,
            "xdplb_events",
            COUNTER,
            help,
            keyed("event", &s.events),
        )
    }
}

/// Rows of `(name, count)` with the name as the value of `label`.
fn keyed<'a>(
    label: &'static str,
    rows: &'a [(String, u64)],
) -> impl Iterator<Item = (Labels<'a>, Value)> + 'a {
    rows.iter()
        .map(move |(key, n)| (vec![(label, key.as_str())], Value::Count(*n)))
}

/// Encodes one metric family; nothing at all when it has no rows.
fn family<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    kind: MetricType,
    help: &str,
    rows: impl IntoIterator<Item = (Labels<'a>, Value)>,
) -> fmt::Result {
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let mut metric = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in rows {
        sample(metric.encode_family(&labels)?, kind, value)?;
    }
    Ok(())
}

fn sample(enc: MetricEncoder, kind: MetricType, value: Value) -> fmt::Result {
    match (kind, value) {
        (MetricType::Counter, Value::Count(n)) => ConstCounter::new(n).encode(enc),
        (MetricType::Counter, Value::Float(v)) => ConstCounter::new(v).encode(enc),
        (_, Value::Count(n)) => ConstGauge::new(n).encode(enc),
        (_, Value::Float(v)) => ConstGauge::new(v).encode(enc),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::NodeMetrics;

    fn snapshot() -> MetricsSnapshot {
        MetricsSnapshot {
            vips: vec![VipMetrics {
                vip: "[2001:db8::1]:443/tcp".into(),
                mode: "tunnel".into(),
                packets: 20,
                ..Default::default()
            }],
            backends: vec![BackendMetrics {
                vip: "[2001:db8::1]:443/tcp".into(),
                backend: "2001:db8:1::2".into(),
                weight: 50,
                draining: true,
                reply_bytes: 6000,
                ..Default::default()
            }],
            verdicts: vec![("tx".into(), 30)],
            events: vec![("conntrack_hit".into(), 25)],
            uptime_seconds: 12.5,
            maps_in_sync: true,
            node: Some(NodeMetrics {
                drained: true,
                announced: vec![("2001:db8::1/128".into(), false)],
            }),
        }
    }

    #[test]
    fn prometheus_text_names_counters_with_total_in_every_line() {
        let text = render(&snapshot(), Format::Prometheus).unwrap();
        for line in [
            "# HELP xdplb_vip_packets_total Packets received for the VIP.",
            "# TYPE xdplb_vip_packets_total counter",
            "xdplb_vip_packets_total{vip=\"[2001:db8::1]:443/tcp\",mode=\"tunnel\"} 20",
            "# TYPE xdplb_backend_up gauge",
            "xdplb_backend_up{vip=\"[2001:db8::1]:443/tcp\",backend=\"2001:db8:1::2\"} 0",
            "xdplb_backend_weight{vip=\"[2001:db8::1]:443/tcp\",backend=\"2001:db8:1::2\"} 50",
            "xdplb_backend_draining{vip=\"[2001:db8::1]:443/tcp\",backend=\"2001:db8:1::2\"} 1",
            "xdplb_backend_reply_bytes_total{vip=\"[2001:db8::1]:443/tcp\",backend=\"2001:db8:1::2\"} 6000",
            "xdplb_uptime_seconds 12.5",
            "xdplb_maps_in_sync 1",
            "xdplb_node_drained 1",
            "xdplb_vip_announced{prefix=\"2001:db8::1/128\"} 0",
            "# TYPE xdplb_verdicts_total counter",
            "xdplb_verdicts_total{reason=\"tx\"} 30",
            "xdplb_events_total{event=\"conntrack_hit\"} 25",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
        // HELP ends with one period, as written: the encoder adds none.
        assert!(!text.contains(".."), "{text}");
        assert_eq!(text.matches("# TYPE ").count(), 20);
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn openmetrics_names_the_family_without_total_and_ends_with_eof() {
        let text = render(&snapshot(), Format::OpenMetrics).unwrap();
        assert!(
            text.contains("\n# TYPE xdplb_vip_packets counter\n"),
            "{text}"
        );
        assert!(text.contains(
            "\nxdplb_vip_packets_total{vip=\"[2001:db8::1]:443/tcp\",mode=\"tunnel\"} 20\n"
        ));
        assert!(text.ends_with("\n# EOF\n"), "{text}");
        // The same samples as the 0.0.4 text, line for line.
        let samples = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(String::from)
                .collect()
        };
        let prometheus = render(&snapshot(), Format::Prometheus).unwrap();
        assert_eq!(samples(&text), samples(&prometheus));
    }

    #[test]
    fn families_without_samples_are_left_out() {
        let text = render(&MetricsSnapshot::default(), Format::Prometheus).unwrap();
        assert_eq!(
            text,
            "# HELP xdplb_up Whether the xdplb control daemon is running (always 1 when scraped).\n\
             # TYPE xdplb_up gauge\n\
             xdplb_up 1\n\
             # HELP xdplb_uptime_seconds Seconds since the xdplb control daemon started.\n\
             # TYPE xdplb_uptime_seconds gauge\n\
             xdplb_uptime_seconds 0.0\n\
             # HELP xdplb_maps_in_sync Whether the data path's maps hold the running configuration (0 while a failed write is retried).\n\
             # TYPE xdplb_maps_in_sync gauge\n\
             xdplb_maps_in_sync 0\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let s = MetricsSnapshot {
            events: vec![("a\"b\\c\nd".into(), 1), ("x},y=\"z\" #ü".into(), 2)],
            ..Default::default()
        };
        for format in [Format::Prometheus, Format::OpenMetrics] {
            let text = render(&s, format).unwrap();
            assert!(
                text.contains("\nxdplb_events_total{event=\"a\\\"b\\\\c\\nd\"} 1\n"),
                "{text}"
            );
            assert!(
                text.contains("\nxdplb_events_total{event=\"x},y=\\\"z\\\" #ü\"} 2\n"),
                "{text}"
            );
        }
    }

    #[test]
    fn the_accept_header_chooses_the_format() {
        let prometheus_default = "application/openmetrics-text;version=1.0.0,\
            application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        for (accept, format) in [
            (Some(prometheus_default), Format::OpenMetrics),
            (
                Some("application/openmetrics-text; version=1.0.0; q=0.8"),
                Format::OpenMetrics,
            ),
            (None, Format::Prometheus),
            (Some("*/*"), Format::Prometheus),
            (Some("text/plain;version=0.0.4"), Format::Prometheus),
            (Some("application/openmetrics-text;q=0"), Format::Prometheus),
        ] {
            assert_eq!(Format::from_accept(accept), format, "{accept:?}");
        }
        assert_eq!(
            Format::Prometheus.content_type(),
            "text/plain; version=0.0.4; charset=utf-8"
        );
    }
}
