//! veth peers. A frame a driver-mode XDP program sends back out of a veth (XDP_TX) or
//! redirects into one goes to the peer's XDP ring, and only a driver-mode XDP program on the
//! peer delivers it. Measured on 6.18: with no program, the kernel drops the frame and counts
//! it only in the sender's ethtool statistics (`xdp_tx_errors`) and the peer's rx `dropped`;
//! with GRO on the peer instead, the kernel accepts frames into the ring (its `ndo-xmit` XDP
//! feature is set and nothing counts as an error) but never delivers them, and drops again
//! once the 256 slots are full. So the peer's own program is what is checked; where the peer
//! is in a namespace without a name, only the kernel's `ndo-xmit` feature is left, which can
//! prove drops but not delivery.

use std::process::Command;

use serde::Serialize;
use serde_json::Value;

use crate::{iface, netlink};

/// iproute2's number for an XDP program attached in driver mode.
pub const DRIVER: u64 = 1;

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

/// `iface` (in named namespace `netns`, else this one) as `ip -d -j link show` describes it.
fn link(iface: &str, netns: Option<&str>) -> Result<Value, String> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let out = cmd
        .args(["-d", "-j", "link", "show", "dev", iface])
        .output()
        .map_err(|e| format!("running ip link: {e} (is iproute2 installed?)"))?;
    if !out.status.success() {
        return Err(format!(
            "ip link show dev {iface}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let mut all: Vec<Value> = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("reading ip link's answer for {iface}: {e}"))?;
    all.pop()
        .ok_or_else(|| format!("ip link show dev {iface} said nothing"))
}

/// The XDP program in `link`'s description: (mode, id, name). Mode is iproute2's number:
/// 1 driver, 2 generic, 3 offloaded, 4 several.
fn program_of(link: &Value) -> Option<(u64, u64, String)> {
    let xdp = &link["xdp"];
    xdp["mode"].as_u64().map(|mode| {
        (
            mode,
            xdp["prog"]["id"].as_u64().unwrap_or(0),
            xdp["prog"]["name"].as_str().unwrap_or("?").to_string(),
        )
    })
}

/// The XDP program attached to `iface` in this namespace: (mode, id, name), as `program_of`.
pub fn xdp_program(iface: &str) -> Result<Option<(u64, u64, String)>, String> {
    Ok(program_of(&link(iface, None)?))
}

/// The named namespace that has id `nsid` here (`ip netns list-id`).
fn netns_name(nsid: i64) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "list-id"])
        .output()
        .ok()?;
    // "nsid 3 (iproute2 netns name: lb)"
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let rest = l.strip_prefix(&format!("nsid {nsid} "))?;
        let name = rest.split("name: ").nth(1)?.trim_end_matches(')');
        Some(name.to_string())
    })
}

/// The name of interface `ifindex` in namespace `netns`.
fn name_in(netns: &str, ifindex: u64) -> Option<String> {
    let out = Command::new("ip")
        .args(["-n", netns, "-j", "link", "show"])
        .output()
        .ok()?;
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).ok()?;
    all.iter()
        .find(|l| l["ifindex"].as_u64() == Some(ifindex))
        .and_then(|l| l["ifname"].as_str().map(str::to_string))
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
    let l = link(iface, None)?;
    if l["linkinfo"]["info_kind"] != "veth" {
        return Ok(None);
    }
    let nsid = l["link_netnsid"].as_i64();
    let peer_netns = nsid.and_then(netns_name);
    let peer = match (&peer_netns, nsid) {
        (_, None) => l["link"].as_str().map(str::to_string),
        (Some(ns), Some(_)) => l["link_index"].as_u64().and_then(|i| name_in(ns, i)),
        (None, Some(_)) => None,
    };
    // The peer itself, where it can be named: its driver-mode program decides.
    let inspected = match (&peer, nsid) {
        (Some(p), None) => link(p, None).ok(),
        (Some(p), Some(_)) => peer_netns.as_deref().and_then(|ns| link(p, Some(ns)).ok()),
        (None, _) => None,
    };
    let peer_program = inspected
        .as_ref()
        .and_then(program_of)
        .filter(|(mode, _, _)| *mode == DRIVER)
        .map(|(_, _, name)| name);
    let takes_xdp_frames = match inspected {
        Some(_) => Some(peer_program.is_some()),
        // Without the peer, the kernel's ndo-xmit feature: off proves the drops.
        None => {
            let ifindex = iface::index(iface).map_err(|e| e.to_string())?;
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
    fn ip_link_descriptions_give_the_program_and_its_mode() {
        let l: Value = serde_json::from_str(
            r#"{"ifname":"p","xdp":{"mode":1,"prog":{"id":7,"name":"xdplb_pass"}}}"#,
        )
        .unwrap();
        assert_eq!(program_of(&l), Some((DRIVER, 7, "xdplb_pass".into())));
        assert_eq!(program_of(&serde_json::json!({"ifname": "p"})), None);
    }
}
