//! veth peers. A frame a driver-mode XDP program sends back out of a veth (XDP_TX) or
//! redirects into one goes to the peer's XDP ring, and only a driver-mode XDP program on the
//! peer delivers it. Measured on 6.18: with no program, the kernel drops the frame and counts
//! it only in the sender's ethtool statistics (`xdp_tx_errors`) and the peer's rx `dropped`;
//! with GRO on the peer instead, the kernel accepts frames into the ring (its `ndo-xmit` XDP
//! feature is set and nothing counts as an error) but never delivers them, and drops again
//! once the 256 slots are full. So the peer's own program is what is checked; where the peer
//! is in a namespace without a name, only the kernel's `ndo-xmit` feature is left, which can
//! prove drops but not delivery.

use std::{io, process::Command};

use netlink_packet_route::{
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage, LinkXdp, XdpAttached},
    nsid::{NsidAttribute, NsidMessage},
    RouteNetlinkMessage,
};
use serde::Serialize;
use serde_json::Value;

use crate::{netlink, rtnl};

/// iproute2's number for an XDP program attached in driver mode.
pub const DRIVER: u64 = 1;

/// Where named network namespaces are (`ip netns add`).
const NETNS_DIR: &str = "/run/netns";

/// What the kernel says of a veth interface and its peer (JSON: `status`, `veth_peer`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VethPeer {
    /// The peer's name, when it is in this namespace or in a named one.
    pub peer: Option<String>,
    /// The named namespace (`ip netns`) the peer is in; `None` with `peer_netnsid` `None`:
    /// this namespace.
    pub peer_netns: Option<String>,
    /// The peer's namespace id as seen from here, when it is in another namespace.
    pub peer_netnsid: Option<i64>,
    /// The XDP program the peer runs in driver mode (`None`: none, or the peer could not be
    /// inspected).
    pub peer_program: Option<String>,
    /// Whether XDP frames sent out of this interface reach the peer: it runs a driver-mode
    /// program. `None`: the peer could not be inspected and the kernel did not rule it out.
    pub takes_xdp_frames: Option<bool>,
    /// XDP frames this side failed to hand to the peer so far (ethtool `xdp_tx_errors` and
    /// `xdp_xmit_errors`, every queue); `None` when ethtool could not be read.
    pub xdp_frames_dropped: Option<u64>,
}

/// What the kernel says of one interface (RTM_GETLINK).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Link {
    veth: bool,
    /// The peer's (or lower device's) index, in `netnsid`'s namespace when that is set.
    peer_index: Option<u32>,
    netnsid: Option<i64>,
    /// The attached XDP program: (iproute2's mode number, program id).
    xdp: Option<(u64, u32)>,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Link {
        let mut l = Link::default();
        for a in &m.attributes {
            match a {
                LinkAttribute::LinkInfo(infos) => {
                    l.veth = infos
                        .iter()
                        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
                }
                LinkAttribute::Link(i) => l.peer_index = Some(*i),
                LinkAttribute::LinkNetNsId(id) => l.netnsid = Some(i64::from(*id)),
                LinkAttribute::Xdp(xdp) => l.xdp = program_in(xdp),
                _ => {}
            }
        }
        l
    }
}

/// The program of an interface's XDP attributes: (mode as iproute2 numbers it, id).
fn program_in(xdp: &[LinkXdp]) -> Option<(u64, u32)> {
    let mode = xdp.iter().find_map(|x| match x {
        LinkXdp::Attached(XdpAttached::Driver) => Some(1),
        LinkXdp::Attached(XdpAttached::SocketBuffer) => Some(2),
        LinkXdp::Attached(XdpAttached::Hardware) => Some(3),
        LinkXdp::Attached(XdpAttached::Multiple) => Some(4),
        _ => None,
    })?;
    let id = xdp.iter().find_map(|x| match x {
        LinkXdp::ProgId(id) | LinkXdp::DrvProgId(id) => Some(*id),
        _ => None,
    });
    Some((mode, id.unwrap_or(0)))
}

/// Runs `f` in named network namespace `netns`, in a thread of its own (a thread's namespace
/// is its own to change; this one's stays).
fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let file = std::fs::File::open(format!("{NETNS_DIR}/{netns}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a namespace file we hold open, in this short-lived thread only.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    })
}

/// Interface `name` (in named namespace `netns`, else this one).
fn link(name: &str, netns: Option<&str>) -> Result<(Link, u32), String> {
    let get = || {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match rtnl::get(RouteNetlinkMessage::GetLink(m))? {
            RouteNetlinkMessage::NewLink(l) => Ok((Link::from_message(&l), l.header.index)),
            other => Err(io::Error::other(format!("an unexpected answer: {other:?}"))),
        }
    };
    match netns {
        None => get(),
        Some(ns) => in_netns(ns, get),
    }
    .map_err(|e| match netns {
        None => format!("reading interface {name}: {e}"),
        Some(ns) => format!("reading interface {name} in network namespace {ns}: {e}"),
    })
}

/// The name of the BPF program with id `id` (`?` when it cannot be read).
fn program_name(id: u32) -> String {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// The XDP program attached to `iface` in this namespace: (mode, id, name). Mode is
/// iproute2's number: 1 driver, 2 generic, 3 offloaded, 4 several.
pub fn xdp_program(iface: &str) -> Result<Option<(u64, u64, String)>, String> {
    Ok(link(iface, None)?
        .0
        .xdp
        .map(|(mode, id)| (mode, u64::from(id), program_name(id))))
}

/// The named namespace that has id `nsid` here: the one whose file the kernel gives that id.
fn netns_name(nsid: i64) -> Option<String> {
    std::fs::read_dir(NETNS_DIR)
        .ok()?
        .filter_map(Result::ok)
        .find_map(|e| {
            let file = std::fs::File::open(e.path()).ok()?;
            use std::os::fd::AsRawFd;
            let mut m = NsidMessage::default();
            m.attributes
                .push(NsidAttribute::Fd(file.as_raw_fd() as u32));
            let RouteNetlinkMessage::NewNsId(a) =
                rtnl::get(RouteNetlinkMessage::GetNsId(m)).ok()?
            else {
                return None;
            };
            let id = a.attributes.iter().find_map(|a| match a {
                NsidAttribute::Id(id) => Some(i64::from(*id)),
                _ => None,
            })?;
            (id == nsid).then(|| e.file_name().to_string_lossy().into_owned())
        })
}

/// The name of interface `ifindex` in named namespace `netns`.
fn name_in(netns: &str, ifindex: u32) -> Option<String> {
    in_netns(netns, || {
        let mut m = LinkMessage::default();
        m.header.index = ifindex;
        match rtnl::get(RouteNetlinkMessage::GetLink(m))? {
            RouteNetlinkMessage::NewLink(l) => Ok(l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })),
            _ => Ok(None),
        }
    })
    .ok()
    .flatten()
}

/// The name of interface `ifindex` in this namespace.
fn name_here(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer has the IF_NAMESIZE bytes if_indextoname writes at most.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let c = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    c.to_str().ok().map(str::to_string)
}

/// Sum of the ethtool statistics of `iface` whose names end in one of `suffixes`.
fn ethtool_sum(iface: &str, suffixes: &[&str]) -> Option<u64> {
    let out = Command::new("ethtool").args(["-S", iface]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().split_once(": "))
            .filter(|(k, _)| suffixes.iter().any(|s| k.ends_with(s)))
            .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
            .sum(),
    )
}

/// Facts about `iface`'s veth peer; `None` when `iface` is not a veth.
pub fn peer(iface: &str) -> Result<Option<VethPeer>, String> {
    let (l, ifindex) = link(iface, None)?;
    if !l.veth {
        return Ok(None);
    }
    let nsid = l.netnsid;
    let peer_netns = nsid.and_then(netns_name);
    let peer = match (&peer_netns, nsid, l.peer_index) {
        (_, None, Some(i)) => name_here(i),
        (Some(ns), Some(_), Some(i)) => name_in(ns, i),
        _ => None,
    };
    // The peer itself, where it can be named: its driver-mode program decides.
    let inspected = match (&peer, nsid) {
        (Some(p), None) => link(p, None).ok(),
        (Some(p), Some(_)) => peer_netns.as_deref().and_then(|ns| link(p, Some(ns)).ok()),
        (None, _) => None,
    };
    let peer_program = inspected
        .as_ref()
        .and_then(|(l, _)| l.xdp)
        .filter(|(mode, _)| *mode == DRIVER)
        .map(|(_, id)| program_name(id));
    let takes_xdp_frames = match inspected {
        Some(_) => Some(peer_program.is_some()),
        // Without the peer, the kernel's ndo-xmit feature: off proves the drops.
        None => {
            let features = netlink::xdp_features(ifindex)
                .map_err(|e| format!("reading the XDP features of {iface}: {e}"))?;
            features
                .filter(|f| f & netlink::NETDEV_XDP_ACT_NDO_XMIT == 0)
                .map(|_| false)
        }
    };
    Ok(Some(VethPeer {
        peer,
        peer_netns,
        peer_netnsid: nsid,
        peer_program,
        takes_xdp_frames,
        xdp_frames_dropped: ethtool_sum(iface, &["xdp_tx_errors", "xdp_xmit_errors"]),
    }))
}

impl VethPeer {
    /// The command that puts the pass program on the peer, as the operator would type it.
    fn pass_command(&self) -> String {
        let peer = self.peer.as_deref().unwrap_or("PEER");
        match (&self.peer_netns, self.peer_netnsid) {
            (_, None) => format!("`xdplb pass {peer}`"),
            (Some(ns), _) => format!("`ip netns exec {ns} xdplb pass {peer}`"),
            (None, Some(id)) => format!(
                "`xdplb pass {peer}` in the peer's network namespace (namespace id {id} here)"
            ),
        }
    }

    /// Where the peer is, for a sentence.
    fn whose(&self) -> String {
        let peer = self
            .peer
            .as_deref()
            .map_or("whose peer".to_string(), |p| format!("whose peer {p}"));
        match (&self.peer_netns, self.peer_netnsid) {
            (_, None) => peer,
            (Some(ns), _) => format!("{peer} (in network namespace {ns})"),
            (None, Some(_)) => format!("{peer} (in another network namespace)"),
        }
    }

    /// The sentence for an interface the load balancer is attached to in driver mode, when the
    /// kernel drops what it sends back out or redirects into it; `None` when frames flow.
    pub fn problem(&self, iface: &str) -> Option<String> {
        if self.takes_xdp_frames != Some(false) {
            return None;
        }
        Some(format!(
            "{iface} is a veth {} has no XDP program in driver mode, so the kernel drops every frame the load balancer sends out of {iface}; run {} (or attach with --xdp-mode generic, slower; docs/troubleshooting.md, \"veth test beds\")",
            self.whose(),
            self.pass_command()
        ))
    }
}

/// Whether `iface` runs an XDP program in driver mode (the mode in which its veth peer matters).
fn in_driver_mode(iface: &str) -> bool {
    matches!(xdp_program(iface), Ok(Some((DRIVER, _, _))))
}

/// The sentence for an interface the load balancer is attached to, when the kernel drops what
/// it sends out of it; `None` when frames flow or nothing can be known.
pub fn attach_problem(iface: &str) -> Option<String> {
    if !in_driver_mode(iface) {
        return None;
    }
    peer(iface).ok().flatten()?.problem(iface)
}

/// The `veth_peer` field of an interface in `status --json`: `null` for an interface that is
/// not a veth; `problem` holds `attach_problem`'s sentence or `null`.
pub fn status(iface: &str) -> Value {
    match peer(iface) {
        Ok(Some(p)) => {
            let problem = in_driver_mode(iface).then(|| p.problem(iface)).flatten();
            let mut v = serde_json::to_value(&p).unwrap_or(Value::Null);
            v["problem"] = problem.into();
            v
        }
        Ok(None) => Value::Null,
        Err(e) => serde_json::json!({ "error": e }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(
        name: Option<&str>,
        netns: Option<&str>,
        nsid: Option<i64>,
        takes: Option<bool>,
    ) -> VethPeer {
        VethPeer {
            peer: name.map(str::to_string),
            peer_netns: netns.map(str::to_string),
            peer_netnsid: nsid,
            peer_program: None,
            takes_xdp_frames: takes,
            xdp_frames_dropped: Some(0),
        }
    }

    #[test]
    fn the_sentence_names_the_fix_where_the_peer_is() {
        let here = peer(Some("veth1"), None, None, Some(false))
            .problem("eth0")
            .unwrap();
        assert!(
            here.contains("whose peer veth1 has no XDP program")
                && here.contains("`xdplb pass veth1`"),
            "{here}"
        );
        let named = peer(Some("p2"), Some("net"), Some(0), Some(false))
            .problem("eth0")
            .unwrap();
        assert!(
            named.contains("`ip netns exec net xdplb pass p2`"),
            "{named}"
        );
        let unnamed = peer(None, None, Some(3), Some(false))
            .problem("eth0")
            .unwrap();
        assert!(
            unnamed.contains("in the peer's network namespace (namespace id 3 here)"),
            "{unnamed}"
        );
        for e in [here, named, unnamed] {
            assert!(
                e.contains("--xdp-mode generic") && e.contains("veth test beds"),
                "{e}"
            );
        }
        // Frames delivered, or nothing known: no claim.
        assert_eq!(
            peer(Some("veth1"), None, None, Some(true)).problem("eth0"),
            None
        );
        assert_eq!(peer(None, None, Some(3), None).problem("eth0"), None);
    }

    #[test]
    fn link_attributes_give_the_program_its_mode_and_the_peer() {
        let mut m = LinkMessage::default();
        m.attributes = vec![
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
            LinkAttribute::Link(7),
            LinkAttribute::LinkNetNsId(2),
            LinkAttribute::Xdp(vec![
                LinkXdp::Attached(XdpAttached::Driver),
                LinkXdp::ProgId(42),
            ]),
        ];
        let l = Link::from_message(&m);
        assert_eq!(
            l,
            Link {
                veth: true,
                peer_index: Some(7),
                netnsid: Some(2),
                xdp: Some((DRIVER, 42)),
            }
        );
        let none = [LinkXdp::Attached(XdpAttached::None)];
        assert_eq!(program_in(&none), None);
        assert_eq!(Link::from_message(&LinkMessage::default()), Link::default());
    }
}
