//! Announcing VIPs to a BGP daemon through a kernel routing table.
//!
//! The daemon keeps one route per VIP address it can serve in a table of its own
//! (`[announce] table`), as `blackhole ADDR/32 proto P` (`/128` for IPv6). A BGP daemon imports
//! that table (BIRD: `protocol kernel { kernel table N; learn; }`, FRR: `ip import-table N`)
//! and announces what is in it. Why a table and not the BGP daemon's control socket:
//!
//! * the kernel holds the state: a restarted BGP daemon re-learns it, a restarted xdplb
//!   finds its routes (by protocol number) and reconciles; neither needs the other running;
//! * any routing daemon can import a table, so xdplb speaks no daemon's private protocol;
//! * the routes never forward anything: no `ip rule` points at the table, and a blackhole
//!   route has no next hop to leak.
//!
//! Which addresses to announce is a pure function (`plan`), tested without a kernel; the
//! kernel side (`RouteTable`) uses the `ip` command, like the neighbour lookups.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    net::IpAddr,
    process::{Command, Stdio},
};

use serde::Serialize;

use crate::{config::AnnounceConfig, model::VipAddr};

/// Whether the node as a whole may announce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Attached and not drained: announce every address that has a servable VIP.
    Serving,
    /// `xdplb node drain`: announce nothing, keep forwarding what still arrives.
    Drained,
    /// Attached to no interface: nothing would be balanced.
    NotAttached,
}

/// One VIP address and whether it is announced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PrefixPlan {
    pub prefix: String,
    #[serde(skip)]
    pub addr: IpAddr,
    /// Whether it should be announced (`announced` in `node status` says whether it is).
    #[serde(rename = "wanted")]
    pub announce: bool,
    /// Why (not): a sentence for `xdplb node status`.
    pub reason: String,
    pub vips: Vec<VipAddr>,
    /// Backends in the ring over all VIPs of the address (healthy, resolved, weight > 0).
    pub serving_backends: usize,
}

pub fn prefix(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// The announcement of every VIP address, given each VIP's count of serving backends. An
/// address is announced when any VIP on it can be served: BGP announces addresses, not
/// ports, and withdrawing a servable port because another port on it has no backend would
/// turn a partial outage into a full one.
pub fn plan(vips: &[(VipAddr, usize)], node: NodeState) -> Vec<PrefixPlan> {
    let mut by_addr: BTreeMap<IpAddr, (Vec<VipAddr>, usize)> = BTreeMap::new();
    for (vip, serving) in vips {
        let e = by_addr.entry(vip.ip).or_default();
        e.0.push(*vip);
        e.1 += serving;
    }
    by_addr
        .into_iter()
        .map(|(addr, (vips, serving))| {
            let (announce, reason) = match node {
                NodeState::Drained => (false, "the node is drained (xdplb node undrain)".into()),
                NodeState::NotAttached => (false, "attached to no interface".into()),
                NodeState::Serving if serving == 0 => (false, "no healthy backend".into()),
                NodeState::Serving => (true, format!("{serving} serving backends")),
            };
            PrefixPlan {
                prefix: prefix(addr),
                addr,
                announce,
                reason,
                vips,
                serving_backends: serving,
            }
        })
        .collect()
}

/// xdplb's routes in one kernel table: the ones with its protocol number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteTable {
    pub table: u32,
    pub protocol: u8,
}

impl From<&AnnounceConfig> for RouteTable {
    fn from(a: &AnnounceConfig) -> Self {
        RouteTable {
            table: a.table,
            protocol: a.protocol,
        }
    }
}

/// What one reconciliation changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

impl RouteTable {
    /// xdplb's routes in the table, by destination as `ip` prints it (e.g. `10.0.0.1`,
    /// `10.0.0.0/24`, `fd00::1`): full-length ones are announcements, anything else a stray.
    pub fn list(&self) -> Result<Vec<String>, String> {
        let (table, proto) = (self.table.to_string(), self.protocol.to_string());
        let mut out = Vec::new();
        for family in ["-4", "-6"] {
            let args = [
                family, "-j", "route", "show", "table", &table, "proto", &proto,
            ];
            let o = Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("running ip route: {e} (is iproute2 installed?)"))?;
            let stderr = String::from_utf8_lossy(&o.stderr);
            // A table the kernel has never held a route in does not exist: it is empty.
            if !o.status.success() && stderr.contains("table does not exist") {
                continue;
            }
            if !o.status.success() {
                return Err(format!("ip {}: {}", args.join(" "), stderr.trim()));
            }
            // An empty table prints nothing at all, not `[]`; anything else must parse, or
            // xdplb's routes would look absent and never be withdrawn.
            let routes: Vec<serde_json::Value> = if o.stdout.trim_ascii().is_empty() {
                Vec::new()
            } else {
                serde_json::from_slice(&o.stdout).map_err(|e| {
                    format!("ip {}: its JSON output does not parse: {e}", args.join(" "))
                })?
            };
            // `ip -batch` takes no family option: spell `default` so the address says it.
            let default = if family == "-4" { "0.0.0.0/0" } else { "::/0" };
            out.extend(routes.iter().filter_map(|r| {
                let dst = r["dst"].as_str()?;
                Some(if dst == "default" { default } else { dst }.to_string())
            }));
        }
        Ok(out)
    }

    /// Makes the table hold exactly `want` (xdplb's routes only; others are not touched).
    pub fn reconcile(&self, want: &BTreeSet<IpAddr>) -> Result<RouteChanges, String> {
        let have = self.list()?;
        let mut changes = RouteChanges::default();
        let mut kept = BTreeSet::new();
        for dst in &have {
            match dst.parse::<IpAddr>() {
                Ok(a) if want.contains(&a) => {
                    kept.insert(a);
                }
                _ => changes.removed.push(format!("route del {dst}")),
            }
        }
        for a in want.difference(&kept) {
            changes
                .added
                .push(format!("route replace blackhole {}", prefix(*a)));
        }
        if changes.added.is_empty() && changes.removed.is_empty() {
            return Ok(changes);
        }
        // Withdrawals first, then announcements, in one `ip -batch` (one process).
        let suffix = format!(" table {} proto {}\n", self.table, self.protocol);
        let script: String = changes
            .removed
            .iter()
            .chain(&changes.added)
            .map(|c| format!("{c}{suffix}"))
            .collect();
        batch(&script)?;
        Ok(changes)
    }

    /// Removes every xdplb route from the table.
    pub fn flush(&self) -> Result<RouteChanges, String> {
        self.reconcile(&BTreeSet::new())
    }
}

fn batch(script: &str) -> Result<(), String> {
    let mut child = Command::new("ip")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running ip -batch: {e} (is iproute2 installed?)"))?;
    let written = child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes());
    let out = child
        .wait_with_output()
        .map_err(|e| format!("ip -batch: {e}"))?;
    written.map_err(|e| format!("writing to ip -batch: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "changing announcement routes failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> VipAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_is_announced_while_any_of_its_vips_can_be_served() {
        let vips = [
            (v("10.0.0.1:80/tcp"), 2),
            (v("10.0.0.1:443/tcp"), 0),
            (v("10.0.0.2:80/tcp"), 0),
            (v("[2001:db8::1]:*/udp"), 1),
        ];
        let p = plan(&vips, NodeState::Serving);
        let got: Vec<(&str, bool)> = p.iter().map(|p| (p.prefix.as_str(), p.announce)).collect();
        assert_eq!(
            got,
            [
                ("10.0.0.1/32", true),
                ("10.0.0.2/32", false),
                ("2001:db8::1/128", true)
            ]
        );
        assert_eq!(p[0].vips.len(), 2);
        assert_eq!(p[0].serving_backends, 2);
        assert_eq!(p[1].reason, "no healthy backend");
    }

    #[test]
    fn a_drained_or_detached_node_announces_nothing() {
        let vips = [(v("10.0.0.1:80/tcp"), 3)];
        for (node, why) in [
            (NodeState::Drained, "drained"),
            (NodeState::NotAttached, "no interface"),
        ] {
            let p = plan(&vips, node);
            assert!(!p[0].announce && p[0].reason.contains(why), "{p:?}");
        }
        assert!(plan(&[], NodeState::Serving).is_empty());
    }
}
