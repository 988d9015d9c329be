//! Resolving a backend's MAC address from the kernel's neighbour table (L2 mode), with an
//! ARP/NDP probe when the entry is missing, and reading the neighbour and link changes the
//! kernel announces. Runs in the daemon's network namespace, over netlink (`rtnl`).

use std::{
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use netlink_packet_route::{
    link::{LinkAttribute, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    AddressFamily, RouteNetlinkMessage,
};

use crate::{iface, model::Mac, rtnl};

const WAIT: Duration = Duration::from_millis(1500);

/// The sentence for a backend whose MAC no probe found.
pub fn unresolved(addr: IpAddr) -> String {
    format!(
        "cannot resolve the MAC address of backend {addr}: no neighbour entry after an ARP/NDP probe; is it on a directly connected network? Give it with --mac"
    )
}

/// The MAC of `addr`, probing for it and waiting up to 1.5 s if the neighbour table has no
/// usable entry. Blocks: never call it under the daemon's lock.
pub fn resolve(addr: IpAddr, dev: Option<&str>) -> Result<Mac, String> {
    if let Some(mac) = lookup(addr, dev)? {
        return Ok(mac);
    }
    probe(addr);
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        if let Some(mac) = lookup(addr, dev)? {
            return Ok(mac);
        }
    }
    Err(unresolved(addr))
}

/// Without waiting: the MAC if the neighbour table has it, else a probe so a later call may.
pub fn lookup_or_probe(addr: IpAddr, dev: Option<&str>) -> Result<Option<Mac>, String> {
    let found = lookup(addr, dev)?;
    if found.is_none() {
        probe(addr);
    }
    Ok(found)
}

/// A neighbour entry as the kernel reports it (a dump line, or a change).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub addr: IpAddr,
    pub ifindex: u32,
    /// `None` for an entry without a usable link-layer address (incomplete, failed, deleted).
    pub mac: Option<Mac>,
}

impl Neighbour {
    fn from_message(m: &NeighbourMessage) -> Option<Neighbour> {
        let mut addr = None;
        let mut lladdr = None;
        for a in &m.attributes {
            match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                    addr = Some(IpAddr::V4(*a))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                    addr = Some(IpAddr::V6(*a))
                }
                NeighbourAttribute::LinkLayerAddress(l) => {
                    lladdr = <[u8; 6]>::try_from(&l[..]).ok()
                }
                _ => {}
            }
        }
        let usable = !matches!(
            m.header.state,
            NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None
        );
        Some(Neighbour {
            addr: addr?,
            ifindex: m.header.ifindex,
            mac: lladdr.filter(|_| usable).map(Mac),
        })
    }
}

/// A usable (reachable, stale, delay, probe, permanent) neighbour entry for `addr`, on
/// interface `dev` when given.
pub fn lookup(addr: IpAddr, dev: Option<&str>) -> Result<Option<Mac>, String> {
    let ifindex = dev
        .map(|d| iface::index(d).map_err(|e| format!("interface {d}: {e}")))
        .transpose()?;
    let family = match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    let all = table(family).map_err(|e| format!("{e} (looking for {addr})"))?;
    Ok(find(&all, addr, ifindex))
}

/// The MAC of `addr` in a neighbour table `table` read, on interface `ifindex` when given.
pub fn find(table: &[Neighbour], addr: IpAddr, ifindex: Option<u32>) -> Option<Mac> {
    table
        .iter()
        .filter(|n| n.addr == addr && ifindex.is_none_or(|i| i == n.ifindex))
        .find_map(|n| n.mac)
}

/// The kernel's neighbour table of `family` (`AddressFamily::Unspec`: both), one dump.
pub fn table(family: AddressFamily) -> Result<Vec<Neighbour>, String> {
    let mut req = NeighbourMessage::default();
    req.header.family = family;
    let all = rtnl::dump(RouteNetlinkMessage::GetNeighbour(req))
        .map_err(|e| format!("reading the neighbour table: {e}"))?;
    Ok(all
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewNeighbour(n) => Neighbour::from_message(n),
            _ => None,
        })
        .collect())
}

/// Makes the kernel resolve `addr`: a single datagram to the discard port.
fn probe(addr: IpAddr) {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse()
    } else {
        "[::]:0".parse()
    }
    .expect("literal");
    if let Ok(s) = UdpSocket::bind(bind) {
        let _ = s.send_to(b"", SocketAddr::new(addr, 9));
    }
}

/// One change the kernel announced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Neighbour(Neighbour),
    /// An interface with its current MAC (new, or changed in any way).
    Link {
        ifindex: u32,
        mac: Mac,
    },
}

fn link_change(m: &LinkMessage) -> Option<Change> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(a) => Some(Change::Link {
            ifindex: m.header.index,
            mac: Mac(<[u8; 6]>::try_from(&a[..]).ok()?),
        }),
        _ => None,
    })
}

/// The kernel's neighbour and link changes in this namespace, as they happen.
pub struct Changes(rtnl::Events);

impl Changes {
    pub fn subscribe() -> io::Result<Changes> {
        rtnl::Events::subscribe(&[libc::RTNLGRP_NEIGH, libc::RTNLGRP_LINK]).map(Changes)
    }

    /// The next changes (blocks); an error of `ENOBUFS` means some were lost.
    pub fn next(&self) -> io::Result<Vec<Change>> {
        Ok(self
            .0
            .next()?
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => {
                    Neighbour::from_message(n).map(Change::Neighbour)
                }
                // Gone: whatever MAC it carried is no longer the backend's.
                RouteNetlinkMessage::DelNeighbour(n) => Neighbour::from_message(n)
                    .map(|n| Change::Neighbour(Neighbour { mac: None, ..n })),
                RouteNetlinkMessage::NewLink(l) => link_change(l),
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(state: NeighbourState, dst: IpAddr, lladdr: &[u8]) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.ifindex = 3;
        m.header.state = state;
        m.attributes = vec![
            NeighbourAttribute::Destination(dst.into()),
            NeighbourAttribute::LinkLayerAddress(lladdr.to_vec()),
        ];
        m
    }

    #[test]
    fn only_usable_entries_give_a_mac() {
        let mac = [2, 0, 0, 0, 0, 1];
        let v6: IpAddr = "fd00::1".parse().unwrap();
        let n = Neighbour::from_message(&entry(NeighbourState::Stale, v6, &mac)).unwrap();
        assert_eq!(
            n,
            Neighbour {
                addr: v6,
                ifindex: 3,
                mac: Some(Mac(mac))
            }
        );
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        for state in [NeighbourState::Failed, NeighbourState::Incomplete] {
            let n = Neighbour::from_message(&entry(state, v4, &mac)).unwrap();
            assert_eq!(n.mac, None, "{state:?}");
        }
        // Not an Ethernet address: no MAC rather than a wrong one.
        let n = Neighbour::from_message(&entry(NeighbourState::Reachable, v4, &[1, 2])).unwrap();
        assert_eq!(n.mac, None);
        assert_eq!(Neighbour::from_message(&NeighbourMessage::default()), None);
    }
}
