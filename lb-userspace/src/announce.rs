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
//! kernel side (`RouteTable`) speaks netlink (`crate::rtnl`), like the neighbour lookups.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::{
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType},
    AddressFamily, RouteNetlinkMessage,
};
use serde::Serialize;

use crate::{config::AnnounceConfig, model::VipAddr, rtnl};

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

/// One route of xdplb's in the table: destination and prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Route {
    dst: IpAddr,
    len: u8,
}

impl Route {
    fn full_length(&self) -> bool {
        self.len == if self.dst.is_ipv4() { 32 } else { 128 }
    }
}

/// As `ip route` prints a destination: the address alone at full length.
impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.full_length() {
            write!(f, "{}", self.dst)
        } else {
            write!(f, "{}/{}", self.dst, self.len)
        }
    }
}

impl RouteTable {
    /// A route message of this table and protocol for `dst`, with nothing else set.
    fn message(&self, family: AddressFamily, dst: Option<Route>) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = family;
        // Tables above 255 only fit the attribute; the header's field says "see it".
        m.header.table = u8::try_from(self.table).unwrap_or(0);
        m.header.protocol = RouteProtocol::from(self.protocol);
        m.attributes.push(RouteAttribute::Table(self.table));
        if let Some(r) = dst {
            m.header.destination_prefix_length = r.len;
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(r.dst)));
        }
        m
    }

    /// xdplb's routes in the table (its protocol number): full-length ones are
    /// announcements, anything else a stray.
    fn routes(&self) -> Result<Vec<Route>, String> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            // The kernel filters by table and protocol; a table it has never held a route
            // in does not exist (ENOENT): it is empty.
            let all = match rtnl::dump(RouteNetlinkMessage::GetRoute(self.message(family, None))) {
                Ok(all) => all,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(format!("reading announcement table {}: {e}", self.table)),
            };
            out.extend(all.iter().filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => self.own(r),
                _ => None,
            }));
        }
        Ok(out)
    }

    /// `r` if it is one of xdplb's routes in this table.
    fn own(&self, r: &RouteMessage) -> Option<Route> {
        let table = r
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(r.header.table.into());
        if table != self.table || u8::from(r.header.protocol) != self.protocol {
            return None;
        }
        let dst = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
            _ => None,
        });
        // A default route carries no destination at all.
        let dst = dst.unwrap_or(match r.header.address_family {
            AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            _ => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        });
        Some(Route {
            dst,
            len: r.header.destination_prefix_length,
        })
    }

    /// xdplb's routes in the table, by destination as `ip` prints it (e.g. `10.0.0.1`,
    /// `10.0.0.0/24`, `fd00::1`, `0.0.0.0/0`).
    pub fn list(&self) -> Result<Vec<String>, String> {
        Ok(self.routes()?.iter().map(Route::to_string).collect())
    }

    /// Makes the table hold exactly `want` (xdplb's routes only; others are not touched).
    /// Withdrawals first, then announcements; each change is named as `ip route` would be.
    pub fn reconcile(&self, want: &BTreeSet<IpAddr>) -> Result<RouteChanges, String> {
        let mut changes = RouteChanges::default();
        let mut kept = BTreeSet::new();
        for r in self.routes()? {
            if r.full_length() && want.contains(&r.dst) {
                kept.insert(r.dst);
                continue;
            }
            let mut m = self.message(family(r.dst), Some(r));
            // Whatever its type and scope: it is xdplb's (table and protocol) and unwanted.
            m.header.scope = RouteScope::NoWhere;
            rtnl::change(RouteNetlinkMessage::DelRoute(m), 0)
                .map_err(|e| format!("withdrawing {r} from table {}: {e}", self.table))?;
            changes.removed.push(format!("route del {r}"));
        }
        for a in want.difference(&kept) {
            let len = if a.is_ipv4() { 32 } else { 128 };
            let mut m = self.message(family(*a), Some(Route { dst: *a, len }));
            m.header.kind = RouteType::BlackHole;
            rtnl::change(
                RouteNetlinkMessage::NewRoute(m),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
            .map_err(|e| format!("announcing {} in table {}: {e}", prefix(*a), self.table))?;
            changes
                .added
                .push(format!("route replace blackhole {}", prefix(*a)));
        }
        Ok(changes)
    }

    /// Removes every xdplb route from the table.
    pub fn flush(&self) -> Result<RouteChanges, String> {
        self.reconcile(&BTreeSet::new())
    }
}

fn family(a: IpAddr) -> AddressFamily {
    match a {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
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

    #[test]
    fn only_xdplbs_routes_in_its_table_are_its_own_and_print_as_ip_does() {
        let t = RouteTable {
            table: 4201,
            protocol: 201,
        };
        let r = |dst: &str, len: u8| Route {
            dst: dst.parse().unwrap(),
            len,
        };
        let mut m = t.message(AddressFamily::Inet, Some(r("10.0.0.1", 32)));
        assert_eq!(t.own(&m), Some(r("10.0.0.1", 32)));
        assert_eq!(r("10.0.0.1", 32).to_string(), "10.0.0.1");
        assert_eq!(r("10.0.0.0", 24).to_string(), "10.0.0.0/24");
        assert_eq!(r("fd00::1", 128).to_string(), "fd00::1");
        m.header.protocol = RouteProtocol::Boot;
        assert_eq!(t.own(&m), None, "another protocol's route");
        let other = RouteTable {
            table: 4202,
            protocol: 201,
        };
        let m = other.message(AddressFamily::Inet6, None);
        assert_eq!(t.own(&m), None, "another table's route");
        // A default route has no destination attribute.
        assert_eq!(
            other.own(&m).map(|r| r.to_string()).as_deref(),
            Some("::/0")
        );
    }
}
