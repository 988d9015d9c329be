//! The L2 (direct server return) test topology of docs/design.md:
//!
//! ```text
//!   client (10.99.0.1, fd99::1) --+
//!   lb     (10.99.0.2, fd99::2) --+-- bridge in namespace "net"
//!   bN     (10.99.0.1N, fd99::1N) -+   (backends hold the VIPs on lo)
//! ```
//! The client routes the VIPs via the LB. The LB runs xdplb on its interface; the bridge
//! port facing it carries the XDP pass program so XDP_TX frames are delivered. Every
//! namespace (and so every veth) is removed when the topology is dropped.

use std::net::IpAddr;

use anyhow::Result;
use lb_userspace::{
    datapath::{AttachMode, DataPath},
    model::Mac,
};

use crate::netns::{unique_prefix, Netns};

pub const VIP4: &str = "10.99.0.100";
pub const VIP6: &str = "fd99::100";
pub const LB_IFACE: &str = "eth0";

pub struct Host {
    pub ns: Netns,
    pub ip4: IpAddr,
    pub ip6: IpAddr,
    pub mac: Mac,
    /// Name of the bridge port (in "net") facing this host.
    pub port: String,
}

pub struct L2Topology {
    pub client: Host,
    pub lb: Host,
    pub backends: Vec<Host>,
    /// Last: dropping it removes the bridge after the hosts.
    pub net: Netns,
}

impl L2Topology {
    pub fn new(n_backends: usize) -> Result<L2Topology> {
        let p = unique_prefix();
        let net = Netns::new(&format!("{p}-net"))?;
        net.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
        net.exec(&["ip", "link", "set", "br0", "up"])?;
        let host = |role: &str, idx: u8| -> Result<Host> {
            let ns = Netns::new(&format!("{p}-{role}"))?;
            let port = format!("{p}p{idx}");
            crate::netns::sh(&[
                "ip", "link", "add", "eth0", "netns", &ns.name, "type", "veth", "peer", "name",
                &port, "netns", &net.name,
            ])?;
            net.exec(&["ip", "link", "set", &port, "master", "br0", "up"])?;
            let (ip4, ip6) = (format!("10.99.0.{idx}"), format!("fd99::{idx:x}"));
            ns.exec(&["ip", "addr", "add", &format!("{ip4}/24"), "dev", "eth0"])?;
            ns.exec(&[
                "ip",
                "addr",
                "add",
                &format!("{ip6}/64"),
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
                ip4: ip4.parse()?,
                ip6: ip6.parse()?,
                mac,
                port,
            })
        };
        let client = host("client", 1)?;
        let lb = host("lb", 2)?;
        let backends = (0..n_backends)
            .map(|i| host(&format!("b{}", i + 1), 0x11 + i as u8))
            .collect::<Result<Vec<_>>>()?;
        let topo = L2Topology {
            client,
            lb,
            backends,
            net,
        };

        // Client: VIPs via the LB; no checksum offload (frames cross an XDP forwarder).
        let c = &topo.client.ns;
        c.exec(&[
            "ip",
            "route",
            "add",
            &format!("{VIP4}/32"),
            "via",
            &topo.lb.ip4.to_string(),
        ])?;
        c.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            &format!("{VIP6}/128"),
            "via",
            &topo.lb.ip6.to_string(),
        ])?;
        c.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
        // Backends: VIPs on lo, never answering ARP for them.
        for b in &topo.backends {
            b.ns.exec(&["ip", "addr", "add", &format!("{VIP4}/32"), "dev", "lo"])?;
            b.ns.exec(&["ip", "addr", "add", &format!("{VIP6}/128"), "dev", "lo"])?;
            for (k, v) in [("arp_ignore", "1"), ("arp_announce", "2")] {
                for dev in ["all", "eth0"] {
                    b.ns.exec(&["sysctl", "-qw", &format!("net.ipv4.conf.{dev}.{k}={v}")])?;
                }
            }
        }
        Ok(topo)
    }

    /// Attaches only the pass program to the bridge port facing the LB (for topologies where
    /// `xdplb daemon` owns the LB): a minimal data path whose maps are tiny.
    pub fn attach_peer_pass(&self) -> Result<DataPath> {
        let opts = lb_userspace::datapath::LoadOptions {
            ring_size: 13,
            max_vips: 1,
            max_backends: 1,
            conntrack_size: 1,
            pin_dir: None,
        };
        let mut dp = DataPath::load(&opts)?;
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
