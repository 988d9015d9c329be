//! `xdplb trace`: the data path's decisions, live. The data path sends one `TraceEvent` per
//! verdict while a trace runs (`lb_common::trace`); the daemon reads them (`hub`), names the
//! VIP, backend and interfaces, and streams the events that match each client's filter as
//! JSON lines over the control socket (`client` prints them).

pub mod client;
pub mod hub;

use std::net::{IpAddr, SocketAddr};

use lb_common::{
    addr::from_words,
    stats,
    trace::{self as t, TraceEvent},
};
use serde::{Deserialize, Serialize};

use crate::model::{BackendAddr, Mac, VipAddr};

/// Which packets a trace shows (all given conditions hold), and how many.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct TraceFilter {
    /// Only packets for this VIP (ADDR:PORT/PROTO).
    #[arg(long)]
    #[serde(default)]
    pub vip: Option<VipAddr>,
    /// Only this client's packets (and the replies to it): IP, IP:PORT or [IPv6]:PORT.
    #[arg(long, value_name = "IP[:PORT]")]
    #[serde(default)]
    pub client: Option<BackendAddr>,
    /// Only packets steered to (or replies from) this backend.
    #[arg(long, value_name = "IP")]
    #[serde(default)]
    pub backend: Option<IpAddr>,
    /// Only packets with this verdict reason (the names `xdplb stats` shows, e.g. tx,
    /// drop_no_backend).
    #[arg(long, value_name = "REASON")]
    #[serde(default)]
    pub verdict: Option<String>,
    /// Stop after this many packets.
    #[arg(long, value_name = "N")]
    #[serde(default)]
    pub count: Option<u64>,
}

impl TraceFilter {
    /// Refuses a filter that can never match, with a sentence naming what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if let Some(v) = &self.verdict {
            if verdict_index(v).is_none() {
                let names: Vec<&str> = (0..stats::VERDICT_COUNT).filter_map(stats::name).collect();
                return Err(format!(
                    "--verdict {v:?} is not a verdict reason; one of: {}",
                    names.join(", ")
                ));
            }
        }
        if self.count == Some(0) {
            return Err("--count 0 would show nothing; give at least 1".into());
        }
        Ok(())
    }

    /// Whether `line` is one this filter shows.
    pub fn matches(&self, line: &TraceLine) -> bool {
        if self.vip.is_some_and(|v| line.vip != Some(v)) {
            return false;
        }
        if self.backend.is_some_and(|b| line.backend != Some(b)) {
            return false;
        }
        if self.verdict.as_ref().is_some_and(|v| *v != line.verdict) {
            return false;
        }
        match (self.client, line.client()) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(want), Some(c)) => want.ip == c.ip() && want.port.is_none_or(|p| p == c.port()),
        }
    }
}

fn verdict_index(name: &str) -> Option<u32> {
    (0..stats::VERDICT_COUNT).find(|&i| stats::name(i) == Some(name))
}

/// One traced packet, as the trace shows it (docs/troubleshooting.md, "Tracing a flow").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceLine {
    /// Interface it arrived on.
    pub iface: String,
    /// tcp, udp, or the IP protocol number; absent for frames that were not parsed as IP.
    pub proto: Option<String>,
    pub src: Option<SocketAddr>,
    pub dst: Option<SocketAddr>,
    /// The verdict reason (`xdplb stats` names) and the XDP action.
    pub verdict: String,
    pub action: String,
    pub vip: Option<VipAddr>,
    pub backend: Option<IpAddr>,
    /// new, hit, stale (connection table), ring (placed without an entry), reply (a backend's
    /// reply, L3), or absent.
    pub flow: Option<String>,
    /// mac (L2), dnat, snat (L3), or absent.
    pub rewrite: Option<String>,
    /// L3: the address (and port) written.
    pub rewrite_to: Option<SocketAddr>,
    /// Destination MAC and interface of a frame the data path sent.
    pub dmac: Option<Mac>,
    pub egress: Option<String>,
}

impl TraceLine {
    /// The client of the packet's flow: its source, or for a backend's reply its destination.
    pub fn client(&self) -> Option<SocketAddr> {
        if self.flow.as_deref() == Some("reply") {
            self.dst
        } else {
            self.src
        }
    }

    /// The line `xdplb trace` prints.
    pub fn text(&self) -> String {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        let tuple = match (&self.proto, self.src, self.dst) {
            (Some(p), Some(s), Some(d)) => format!("{p} {s} -> {d}"),
            _ => "(not an IP flow)".into(),
        };
        let mut out = format!(
            "{} {tuple} {} ({}) vip {} backend {} flow {}",
            self.iface,
            self.verdict,
            self.action,
            opt(self.vip.map(|v| v.to_string())),
            opt(self.backend.map(|b| b.to_string())),
            opt(self.flow.clone()),
        );
        if let Some(r) = &self.rewrite {
            out += &format!(" rewrite {r}");
            if let Some(to) = self.rewrite_to {
                out += &format!(" {to}");
            }
        }
        if let Some(e) = &self.egress {
            out += &format!(" out {e}");
            if let Some(m) = self.dmac {
                out += &format!(" to {m}");
            }
        }
        out
    }
}

/// What names a traced packet's ids: the running configuration's VIPs and backends by id,
/// and interfaces by index.
pub trait Namer {
    fn vip(&self, id: u32) -> Option<VipAddr>;
    fn backend(&self, id: u32) -> Option<IpAddr>;
    fn iface(&self, ifindex: u32) -> String;
}

/// The line for one event.
pub fn line(e: &TraceEvent, names: &impl Namer) -> TraceLine {
    let k = &e.key;
    let flow = (e.has_flow != 0).then(|| {
        let port = |p: u16| u16::from_be(p);
        (
            SocketAddr::new(from_words(k.family, k.src), port(k.sport)),
            SocketAddr::new(from_words(k.family, k.dst), port(k.dport)),
        )
    });
    let rewrite = match e.rewrite {
        t::REWRITE_MAC => Some("mac"),
        t::REWRITE_DNAT => Some("dnat"),
        t::REWRITE_SNAT => Some("snat"),
        _ => None,
    };
    let rewrite_to = matches!(e.rewrite, t::REWRITE_DNAT | t::REWRITE_SNAT).then(|| {
        // Port 0 keeps the packet's own (`nat::Rewrite`).
        let kept = match (e.rewrite, flow) {
            (t::REWRITE_DNAT, Some((_, d))) => d.port(),
            (_, Some((s, _))) => s.port(),
            _ => 0,
        };
        let port = match u16::from_be(e.rewrite_port) {
            0 => kept,
            p => p,
        };
        SocketAddr::new(from_words(k.family, e.rewrite_addr), port)
    });
    let id = |v: u32| (v != t::TRACE_NO_ID).then_some(v);
    TraceLine {
        iface: names.iface(e.ifindex),
        proto: flow.map(|_| match k.proto {
            6 => "tcp".to_string(),
            17 => "udp".to_string(),
            p => p.to_string(),
        }),
        src: flow.map(|f| f.0),
        dst: flow.map(|f| f.1),
        verdict: stats::name(e.reason)
            .map_or_else(|| format!("reason {}", e.reason), str::to_string),
        action: action_name(e.action).into(),
        vip: id(e.vip).and_then(|v| names.vip(v)),
        backend: id(e.backend).and_then(|b| names.backend(b)),
        flow: (e.flow != t::FLOW_NONE).then(|| t::flow_name(e.flow).to_string()),
        rewrite: rewrite.map(str::to_string),
        rewrite_to,
        dmac: (e.egress != 0).then_some(Mac(e.dmac)),
        egress: (e.egress != 0).then(|| names.iface(e.egress)),
    }
}

fn action_name(action: u32) -> &'static str {
    match action {
        0 => "aborted",
        1 => "drop",
        2 => "pass",
        3 => "tx",
        4 => "redirect",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use lb_common::{addr::to_words, FlowKey};

    use super::*;

    struct Fixed;

    impl Namer for Fixed {
        fn vip(&self, id: u32) -> Option<VipAddr> {
            (id == 1).then(|| "10.0.0.100:80/tcp".parse().unwrap())
        }
        fn backend(&self, id: u32) -> Option<IpAddr> {
            (id == 7).then(|| "10.0.1.2".parse().unwrap())
        }
        fn iface(&self, ifindex: u32) -> String {
            format!("if{ifindex}")
        }
    }

    fn event(src: &str, sport: u16, dst: &str, dport: u16) -> TraceEvent {
        let mut e = TraceEvent::arrived(3);
        e.key = FlowKey {
            src: to_words(src.parse().unwrap()),
            dst: to_words(dst.parse().unwrap()),
            sport: sport.to_be(),
            dport: dport.to_be(),
            proto: 6,
            family: 4,
            _pad: [0; 2],
        };
        e.has_flow = 1;
        e
    }

    #[test]
    fn an_l3_forward_reads_as_the_data_path_decided() {
        let mut e = event("10.0.0.1", 40000, "10.0.0.100", 80);
        e.reason = stats::REDIRECT;
        e.action = 4;
        e.vip = 1;
        e.backend = 7;
        e.flow = t::FLOW_NEW;
        e.rewrite = t::REWRITE_DNAT;
        e.rewrite_addr = to_words("10.0.1.2".parse().unwrap());
        e.rewrite_port = 0;
        e.egress = 4;
        e.dmac = [2, 0, 0, 0, 0, 9];
        let l = line(&e, &Fixed);
        assert_eq!(
            l.text(),
            "if3 tcp 10.0.0.1:40000 -> 10.0.0.100:80 redirect (redirect) vip 10.0.0.100:80/tcp \
             backend 10.0.1.2 flow new rewrite dnat 10.0.1.2:80 out if4 to 02:00:00:00:00:09"
        );
        let f = |s: &str| -> TraceFilter { serde_json::from_str(s).unwrap() };
        assert!(f(r#"{"client":"10.0.0.1"}"#).matches(&l));
        assert!(f(r#"{"client":"10.0.0.1:40000","backend":"10.0.1.2"}"#).matches(&l));
        assert!(!f(r#"{"client":"10.0.0.1:40001"}"#).matches(&l));
        assert!(!f(r#"{"verdict":"tx"}"#).matches(&l));
        assert!(f(r#"{"vip":"10.0.0.100:80/tcp","verdict":"redirect"}"#).matches(&l));
    }

    #[test]
    fn a_reply_belongs_to_the_client_it_goes_to() {
        let mut e = event("10.0.1.2", 80, "10.0.0.1", 40000);
        e.flow = t::FLOW_REPLY;
        e.vip = 1;
        let l = line(&e, &Fixed);
        let f: TraceFilter = serde_json::from_str(r#"{"client":"10.0.0.1:40000"}"#).unwrap();
        assert!(f.matches(&l));
    }

    #[test]
    fn a_filter_that_cannot_match_is_refused() {
        let f = TraceFilter {
            verdict: Some("dropped".into()),
            ..Default::default()
        };
        let err = f.check().unwrap_err();
        assert!(err.contains("drop_no_backend"), "{err}");
        let f = TraceFilter {
            count: Some(0),
            ..Default::default()
        };
        assert!(f.check().is_err());
        let f = TraceFilter {
            verdict: Some("drop_no_backend".into()),
            ..Default::default()
        };
        assert!(f.check().is_ok());
    }
}
