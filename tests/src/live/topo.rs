//! The live benchmark's topology, three namespaces in a line:
//!
//! ```text
//!  gen ns            LB ns                                  sink ns
//!  g0 ───veth─── in0 [path under test] out0 ───veth─── s0 [xdplb_sink]
//!  10.10.0.2/16  10.10.0.1/16          10.20.0.1/24    10.20.0.2, backends .11 .12 .13
//! ```
//!
//! The generator's frames leave g0 (live frames, XDP_TX) addressed to in0's MAC, so the LB
//! namespace's stack takes them as its own (PACKET_HOST) when a case passes them to the kernel.
//! Every neighbour is permanent: the sink drops UDP only, but nothing on the measured path
//! should wait for ARP. Forwarding is on and reverse-path filtering off in the LB namespace.

use anyhow::{Context, Result};
use lb_userspace::{iface, model::Mac};

use crate::{
    fib::set_neighbour,
    netns::{unique_prefix, veth, Netns},
};

/// Backends (all on the sink's interface, so the sink counts whatever reaches any of them).
pub const BACKENDS: [&str; 3] = ["10.20.0.11", "10.20.0.12", "10.20.0.13"];

pub struct Topology {
    pub gen: Netns,
    pub lb: Netns,
    pub sink: Netns,
    pub g0_mac: Mac,
    pub in0_mac: Mac,
    pub out0_mac: Mac,
    pub s0_mac: Mac,
    pub out0_index: u32,
}

fn mac_in(ns: &Netns, dev: &str) -> Result<Mac> {
    Ok(ns.run(|| iface::mac(dev))??)
}

pub fn build() -> Result<Topology> {
    let p = unique_prefix();
    let (gen, lb, sink) = (
        Netns::new(&format!("{p}-gen"))?,
        Netns::new(&format!("{p}-lb"))?,
        Netns::new(&format!("{p}-sink"))?,
    );
    // IPv4 only. With IPv6 on, the kernel's own packets after link-up (DAD, MLD reports,
    // router solicitations) were sent from any CPU; one sent from the other CPU into a veth
    // scheduled its NAPI there, where it stayed while the benchmark's traffic kept it busy
    // (twice 10% of a run off the generator's core).
    for ns in [&gen, &lb, &sink] {
        for kv in [
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ] {
            ns.exec(&["sysctl", "-qw", kv])?;
        }
    }
    veth(&gen, "g0", &lb, "in0")?;
    veth(&lb, "out0", &sink, "s0")?;
    for (ns, dev, addrs) in [
        (&gen, "g0", &["10.10.0.2/16"][..]),
        (&lb, "in0", &["10.10.0.1/16"]),
        (&lb, "out0", &["10.20.0.1/24"]),
        (
            &sink,
            "s0",
            &[
                "10.20.0.2/24",
                "10.20.0.11/24",
                "10.20.0.12/24",
                "10.20.0.13/24",
            ],
        ),
    ] {
        for a in addrs {
            ns.exec(&["ip", "addr", "add", a, "dev", dev])?;
        }
        ns.exec(&["ip", "link", "set", dev, "up"])?;
    }
    for kv in [
        "net.ipv4.conf.all.forwarding=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
        "net.ipv4.conf.in0.rp_filter=0",
    ] {
        lb.exec(&["sysctl", "-qw", kv])?;
    }
    let t = Topology {
        g0_mac: mac_in(&gen, "g0")?,
        in0_mac: mac_in(&lb, "in0")?,
        out0_mac: mac_in(&lb, "out0")?,
        s0_mac: mac_in(&sink, "s0")?,
        out0_index: lb.run(|| iface::index("out0"))??,
        gen,
        lb,
        sink,
    };
    for b in ["10.20.0.2"].iter().chain(&BACKENDS) {
        set_neighbour(&t.lb, b, t.s0_mac, "out0");
    }
    set_neighbour(&t.lb, "10.10.0.2", t.g0_mac, "in0");
    set_neighbour(&t.gen, "10.10.0.1", t.in0_mac, "g0");
    set_neighbour(&t.sink, "10.20.0.1", t.out0_mac, "s0");
    Ok(t)
}

/// An nftables table in a namespace, deleted on drop (the namespace's deletion would also
/// remove it; this keeps later cases in the same namespace free of its conntrack hooks).
pub struct NftTable<'a> {
    ns: &'a Netns,
    name: &'static str,
}

impl<'a> NftTable<'a> {
    /// Loads `ruleset` (which must define `table ip NAME`).
    pub fn load(ns: &'a Netns, name: &'static str, ruleset: &str) -> Result<NftTable<'a>> {
        let path = std::env::temp_dir().join(format!("{}-{name}.nft", ns.name));
        std::fs::write(&path, ruleset)?;
        let loaded = ns.exec(&["nft", "-f", path.to_str().context("temp path")?]);
        let _ = std::fs::remove_file(&path);
        loaded.context("loading the nftables ruleset (is nftables installed? scripts/setup.sh)")?;
        Ok(NftTable { ns, name })
    }

    /// The packet count of the table's counters, summed.
    pub fn counted(&self) -> Result<u64> {
        let text = self.ns.exec(&["nft", "list", "table", "ip", self.name])?;
        Ok(text
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "packets")
            .filter_map(|w| w[1].parse::<u64>().ok())
            .sum())
    }
}

impl Drop for NftTable<'_> {
    fn drop(&mut self) {
        let _ = self.ns.exec(&["nft", "delete", "table", "ip", self.name]);
    }
}
