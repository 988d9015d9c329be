//! Test topologies (docs/testing.md, docs/architecture.md), in network namespaces. Every namespace (and so every
//! veth) is removed when a topology is dropped, also when the test panics.
//!
//! L2 (direct server return):
//! ```text
//!   client (10.99.0.1, fd99::1) --+
//!   lb     (10.99.0.2, fd99::2) --+-- bridge in namespace "net"
//!   bN     (10.99.0.1N, fd99::1N) -+   (backends hold the VIPs on lo)
//! ```
//! The client routes the VIPs via the LB; the bridge port facing the LB carries the XDP pass
//! program so XDP_TX frames are delivered.
//!
//! L3 (NAT):
//! ```text
//!   client (10.98.1.1) -- eth0 lb eth1 (10.98.2.1) -- bridge in "bnet" -- bN (10.98.2.1N)
//! ```
//! The client routes the VIPs via the LB; backends route everything via the LB, so replies
//! come back through it. The client's interface and the bridge port facing the LB carry the
//! pass program (the LB redirects into both).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use anyhow::Result;
use lb_userspace::{
    datapath::{AttachMode, DataPath, LoadOptions},
    model::Mac,
};

use crate::{
    netns::{unique_prefix, veth, Netns},
    peers::tcp_once,
};

pub const VIP4: &str = "10.99.0.100";
pub const VIP6: &str = "fd99::100";
pub const L3_VIP4: &str = "10.98.0.100";
pub const L3_VIP6: &str = "fd98::100";
pub const LB_IFACE: &str = "eth0";

pub struct Host {
    pub ns: Netns,
    pub ip4: IpAddr,
    pub ip6: IpAddr,
    pub mac: Mac,
    /// Name of the peer of this host's eth0 (a bridge port, or the LB's interface).
    pub port: String,
}

/// Creates namespace `<prefix>-<role>` with `eth0` whose peer `peer` goes into `peer_ns` (and
/// onto its bridge br0 when `bridge`), addressed `v4/24` and `v6/64`.
fn host(
    prefix: &str,
    role: &str,
    peer: &str,
    peer_ns: &Netns,
    bridge: bool,
    v4: &str,
    v6: &str,
) -> Result<Host> {
    let ns = Netns::new(&format!("{prefix}-{role}"))?;
    veth(&ns, "eth0", peer_ns, peer)?;
    if bridge {
        peer_ns.exec(&["ip", "link", "set", peer, "master", "br0"])?;
    }
    peer_ns.exec(&["ip", "link", "set", peer, "up"])?;
    ns.exec(&["ip", "addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
    ns.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{v6}/64"),
        "dev",
        "eth0",
        "nodad",
    ])?;
    ns.exec(&["ip", "link", "set", "eth0", "up"])?;
    let mac: Mac = ns
        .exec(&["cat", "/sys/class/net/eth0/address"])?
        .trim()
        .parse()?;
    Ok(Host {
        ns,
        ip4: v4.parse()?,
        ip6: v6.parse()?,
        mac,
        port: peer.to_string(),
    })
}

fn bridge_ns(name: &str) -> Result<Netns> {
    let net = Netns::new(name)?;
    net.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
    net.exec(&["ip", "link", "set", "br0", "up"])?;
    Ok(net)
}

/// Routes the VIPs via `gw` in `ns`, and turns off checksum offload: frames that cross an XDP
/// forwarder must carry complete checksums.
fn route_vips_via(ns: &Netns, vip4: &str, vip6: &str, gw4: &str, gw6: &str) -> Result<()> {
    ns.exec(&["ip", "route", "add", &format!("{vip4}/32"), "via", gw4])?;
    ns.exec(&[
        "ip",
        "-6",
        "route",
        "add",
        &format!("{vip6}/128"),
        "via",
        gw6,
    ])?;
    ns.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
    Ok(())
}

/// A minimal data path whose pass program the topologies attach to veth peers.
fn pass_only() -> Result<DataPath> {
    Ok(DataPath::load(&LoadOptions::minimal())?)
}

pub struct L2Topology {
    pub client: Host,
    pub lb: Host,
    pub backends: Vec<Host>,
    /// Last: dropping it removes the bridge after the hosts.
    pub net: Netns,
}

impl L2Topology {
    /// `n` new TCP connections from the client to `target`, from source port `first_port`
    /// on, one request each: how many each backend (by the name its server answers) took.
    pub fn spread(&self, target: SocketAddr, n: u16, first_port: u16) -> BTreeMap<String, u32> {
        let names: Vec<String> = self
            .client
            .ns
            .run(|| {
                (0..n)
                    .map(|i| tcp_once(target, first_port + i).unwrap())
                    .collect()
            })
            .unwrap();
        let mut counts = BTreeMap::new();
        for name in names {
            *counts.entry(name).or_insert(0) += 1;
        }
        counts
    }

    pub fn new(n_backends: usize) -> Result<L2Topology> {
        let p = unique_prefix();
        let net = bridge_ns(&format!("{p}-net"))?;
        let mk = |role: &str, idx: u8| {
            host(
                &p,
                role,
                &format!("{p}p{idx}"),
                &net,
                true,
                &format!("10.99.0.{idx}"),
                &format!("fd99::{idx:x}"),
            )
        };
        let client = mk("client", 1)?;
        let lb = mk("lb", 2)?;
        let backends = (0..n_backends)
            .map(|i| mk(&format!("b{}", i + 1), 0x11 + i as u8))
            .collect::<Result<Vec<_>>>()?;
        route_vips_via(
            &client.ns,
            VIP4,
            VIP6,
            &lb.ip4.to_string(),
            &lb.ip6.to_string(),
        )?;
        // Backends: VIPs on lo, never answering ARP for them.
        for b in &backends {
            b.ns.exec(&["ip", "addr", "add", &format!("{VIP4}/32"), "dev", "lo"])?;
            b.ns.exec(&["ip", "addr", "add", &format!("{VIP6}/128"), "dev", "lo"])?;
            for (k, v) in [("arp_ignore", "1"), ("arp_announce", "2")] {
                for dev in ["all", "eth0"] {
                    b.ns.exec(&["sysctl", "-qw", &format!("net.ipv4.conf.{dev}.{k}={v}")])?;
                }
            }
        }
        Ok(L2Topology {
            client,
            lb,
            backends,
            net,
        })
    }

    /// Attaches only the pass program to the bridge port facing the LB (for topologies where
    /// `xdplb daemon` owns the LB).
    pub fn attach_peer_pass(&self) -> Result<DataPath> {
        let mut dp = pass_only()?;
        self.net
            .run(|| dp.attach_pass(&self.lb.port, AttachMode::Native))??;
        Ok(dp)
    }

    /// Attaches the data path to the LB's interface (native XDP) and the pass program to the
    /// bridge port facing it.
    pub fn attach(&self, dp: &mut DataPath) -> Result<()> {
        self.lb
            .ns
            .run(|| dp.attach(LB_IFACE, AttachMode::Native))??;
        self.net
            .run(|| dp.attach_pass(&self.lb.port, AttachMode::Native))??;
        Ok(())
    }
}

pub struct L3Topology {
    pub client: Host,
    /// The LB: `eth0` faces the client (its `port` is the client's eth0), `eth1` the backends.
    pub lb: Netns,
    pub backends: Vec<Host>,
    /// The bridge port facing the LB's eth1.
    pub lb_port: String,
    pub bnet: Netns,
}

impl L3Topology {
    pub fn new(n_backends: usize) -> Result<L3Topology> {
        let p = unique_prefix();
        let lb = Netns::new(&format!("{p}-lb"))?;
        let client = host(&p, "client", "eth0", &lb, false, "10.98.1.1", "fd98:1::1")?;
        lb.exec(&["ip", "addr", "add", "10.98.1.2/24", "dev", "eth0"])?;
        lb.exec(&["ip", "addr", "add", "fd98:1::2/64", "dev", "eth0", "nodad"])?;
        let bnet = bridge_ns(&format!("{p}-bnet"))?;
        let lb_port = format!("{p}plb");
        veth(&lb, "eth1", &bnet, &lb_port)?;
        bnet.exec(&["ip", "link", "set", &lb_port, "master", "br0", "up"])?;
        lb.exec(&["ip", "addr", "add", "10.98.2.1/24", "dev", "eth1"])?;
        lb.exec(&["ip", "addr", "add", "fd98:2::1/64", "dev", "eth1", "nodad"])?;
        lb.exec(&["ip", "link", "set", "eth1", "up"])?;
        // The kernel forwards what XDP passes to it (first packets, before neighbours resolve).
        lb.exec(&["sysctl", "-qw", "net.ipv4.conf.all.forwarding=1"])?;
        lb.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
        route_vips_via(&client.ns, L3_VIP4, L3_VIP6, "10.98.1.2", "fd98:1::2")?;
        let backends = (0..n_backends)
            .map(|i| {
                let idx = 0x11 + i as u8;
                let b = host(
                    &p,
                    &format!("b{}", i + 1),
                    &format!("{p}p{idx}"),
                    &bnet,
                    true,
                    &format!("10.98.2.{idx}"),
                    &format!("fd98:2::{idx:x}"),
                )?;
                b.ns.exec(&["ip", "route", "add", "default", "via", "10.98.2.1"])?;
                b.ns.exec(&["ip", "-6", "route", "add", "default", "via", "fd98:2::1"])?;
                b.ns.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
                Ok(b)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(L3Topology {
            client,
            lb,
            backends,
            lb_port,
            bnet,
        })
    }

    /// The pass program on the two interfaces the LB redirects into: the client's eth0 and the
    /// bridge port facing the LB's eth1.
    pub fn attach_peer_pass(&self) -> Result<DataPath> {
        let mut dp = pass_only()?;
        self.client
            .ns
            .run(|| dp.attach_pass("eth0", AttachMode::Native))??;
        self.bnet
            .run(|| dp.attach_pass(&self.lb_port, AttachMode::Native))??;
        Ok(dp)
    }
}
