//! Prometheus metrics for xdplb: what the daemon exports (`MetricsSnapshot`, taken from the
//! maps at scrape time), its exposition through the `prometheus-client` crate (`exposition`)
//! and the `GET /metrics` server on hyper (`http`).

use std::net::SocketAddr;

mod exposition;
mod http;

pub use self::{
    exposition::{render, Format},
    http::{serve, SnapshotFn},
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
    use super::*;

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
}
