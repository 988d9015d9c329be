//! Path MTU and ICMP errors through an L3 (NAT) VIP (`tests/tests/l3_icmp.rs`): a router hop
//! with a smaller MTU in front of the LB, LB routes with an `mtu` attribute, the balancer on
//! the LB (the real daemon, or nftables DNAT as an oracle that the topology itself is right),
//! bounded transfers, and what each host learned about the path.
//!
//! The router hop puts two routers in front of the L3 topology of [`crate::topology`], whose
//! client namespace becomes router r2 (and keeps its name, `<prefix>-client`):
//! ```text
//!   client  eth0 --- eth0  r1  eth1 ==MTU 1400== eth1  r2  eth0 --- eth0  lb  eth1 -- bridge -- bN
//!   10.98.4.2   10.98.4.1  10.98.3.2       10.98.3.1  10.98.1.1   10.98.1.2  10.98.2.1  10.98.2.1N
//!   fd98:4::2   fd98:4::1  fd98:3::2       fd98:3::1  fd98:1::1   fd98:1::2  fd98:2::1  fd98:2::1N
//! ```
//! The client routes the VIPs via r1, r1 via r2, r2 via the LB; r2 and the LB route the
//! client's subnet back via r1 and r2. Every other interface keeps MTU 1500, so both ends
//! announce the MSS of a 1500-byte MTU and the hop is found by path MTU discovery alone.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lb_userspace::datapath::DataPath;

use crate::{
    daemon::Daemon,
    netns::{unique_prefix, veth, Netns},
    peers::{http_download, http_upload},
    topology::{Host, L3Topology, L3_VIP4, L3_VIP6},
};

/// The MTU of the small link (the router hop, or the LB's routes).
pub const SMALL_MTU: u32 = 1400;

/// An IP family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: IpAddr) -> Family {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    /// `host`'s address of this family.
    pub fn addr(self, host: &Host) -> IpAddr {
        match self {
            Family::V4 => host.ip4,
            Family::V6 => host.ip6,
        }
    }

    /// The L3 topology's VIP of this family.
    pub fn vip(self) -> IpAddr {
        match self {
            Family::V4 => L3_VIP4,
            Family::V6 => L3_VIP6,
        }
        .parse()
        .expect("the VIP constants parse")
    }

    /// The `ip` command's family switch.
    fn flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }

    /// The nftables family (and address expression).
    fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
}

/// A veth link: `a_dev` in `a` to `b_dev` in `b`, each end with its two addresses (prefix
/// included) and `mtu`, up. Addresses skip duplicate detection: a tentative IPv6 address
/// cannot be used for a second or two.
fn link(
    (a, a_dev, a_addrs): (&Netns, &str, [&str; 2]),
    (b, b_dev, b_addrs): (&Netns, &str, [&str; 2]),
    mtu: u32,
) -> Result<()> {
    veth(a, a_dev, b, b_dev)?;
    for (ns, dev, addrs) in [(a, a_dev, a_addrs), (b, b_dev, b_addrs)] {
        for addr in addrs {
            ns.exec(&["ip", "addr", "add", addr, "dev", dev, "nodad"])?;
        }
        ns.exec(&["ip", "link", "set", dev, "mtu", &mtu.to_string(), "up"])?;
    }
    Ok(())
}

/// Adds routes to `ns`: each (destination, gateway).
fn routes(ns: &Netns, list: &[(&str, &str)]) -> Result<()> {
    for (dst, via) in list {
        ns.exec(&["ip", "route", "add", dst, "via", via])?;
    }
    Ok(())
}

/// Forwarding on in a router namespace, once its interfaces exist: IPv6's `all` switch reaches
/// only interfaces that exist already (`default` covers later ones).
fn forward(ns: &Netns) -> Result<()> {
    for kv in [
        "net.ipv4.conf.all.forwarding=1",
        "net.ipv6.conf.default.forwarding=1",
        "net.ipv6.conf.all.forwarding=1",
    ] {
        ns.exec(&["sysctl", "-qw", kv])?;
    }
    Ok(())
}

/// Client, r1, the small link, r2, and the L3 topology (see the module's picture). Every
/// namespace is removed on drop, also when the test panics. Only IPv6 needs `wait_for_dad`
/// before traffic.
pub struct RouterHop {
    pub client: Host,
    pub r1: Netns,
    /// The LB and its backends; its `client` is router r2.
    pub l3: L3Topology,
}

impl RouterHop {
    /// Every namespace of the topology.
    pub fn namespaces(&self) -> Vec<&Netns> {
        let mut all = l3_namespaces(&self.l3);
        all.extend([&self.client.ns, &self.r1]);
        all
    }

    pub fn new(n_backends: usize) -> Result<RouterHop> {
        let l3 = L3Topology::new(n_backends)?;
        let p = unique_prefix();
        let r1 = Netns::new(&format!("{p}-r1"))?;
        let client_ns = Netns::new(&format!("{p}-client"))?;
        let r2 = &l3.client.ns;
        link(
            (&client_ns, "eth0", ["10.98.4.2/24", "fd98:4::2/64"]),
            (&r1, "eth0", ["10.98.4.1/24", "fd98:4::1/64"]),
            1500,
        )?;
        link(
            (&r1, "eth1", ["10.98.3.2/24", "fd98:3::2/64"]),
            (r2, "eth1", ["10.98.3.1/24", "fd98:3::1/64"]),
            SMALL_MTU,
        )?;
        let (vip4, vip6) = (format!("{L3_VIP4}/32"), format!("{L3_VIP6}/128"));
        routes(&client_ns, &[(&vip4, "10.98.4.1"), (&vip6, "fd98:4::1")])?;
        routes(&r1, &[(&vip4, "10.98.3.1"), (&vip6, "fd98:3::1")])?;
        // r2 already routes the VIPs via the LB (as the L3 topology's client).
        routes(
            r2,
            &[("10.98.4.0/24", "10.98.3.2"), ("fd98:4::/64", "fd98:3::2")],
        )?;
        routes(
            &l3.lb,
            &[("10.98.4.0/24", "10.98.1.1"), ("fd98:4::/64", "fd98:1::1")],
        )?;
        forward(&r1)?;
        forward(r2)?;
        // The client's frames cross the LB's XDP program, which needs complete checksums.
        client_ns.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
        let mac = client_ns
            .exec(&["cat", "/sys/class/net/eth0/address"])?
            .trim()
            .parse()?;
        Ok(RouterHop {
            client: Host {
                ns: client_ns,
                ip4: "10.98.4.2".parse()?,
                ip6: "fd98:4::2".parse()?,
                mac,
                port: "eth0".into(),
            },
            r1,
            l3,
        })
    }
}

/// Every namespace of an L3 topology.
pub fn l3_namespaces(topo: &L3Topology) -> Vec<&Netns> {
    let mut all = vec![&topo.client.ns, &topo.lb, &topo.bnet];
    all.extend(topo.backends.iter().map(|b| &b.ns));
    all
}

/// Waits (10 s at most) until no interface in `namespaces` has a tentative IPv6 address. The
/// topologies add their own addresses without duplicate address detection, but the link-local
/// ones go through it for about two seconds after the links come up, and until then IPv6
/// traffic across the topology gets lost (in a trial, all of 20 datagrams sent at once; TCP
/// recovers with a retransmission a second later, UDP does not).
pub fn wait_for_dad(namespaces: &[&Netns]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut tentative = Vec::new();
        for ns in namespaces {
            let shown = ns.exec(&["ip", "-6", "addr", "show", "tentative"])?;
            if !shown.trim().is_empty() {
                tentative.push(shown);
            }
        }
        if tentative.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("IPv6 addresses still tentative after 10 s: {tentative:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How a route carries its MTU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteMtu {
    /// `mtu N`: the kernel's forwarding honours it, but the FIB lookup XDP programs get does
    /// not (`ip_mtu_from_fib_result` / `ip6_mtu_from_fib6` take a route's MTU only when locked,
    /// or for IPv4 with `net.ipv4.ip_forward_use_pmtu`), and reports the device's.
    Plain,
    /// `mtu lock N`: honoured by both.
    Locked,
}

/// Gives the LB's connected routes (client side and backend side, both families) the MTU
/// `mtu`, the interfaces staying at 1500: a full-size packet is then too big for the LB's
/// egress either way, as it would be for a smaller link behind the LB.
pub fn limit_lb_routes(topo: &L3Topology, mtu: u32, how: RouteMtu) -> Result<()> {
    let mtu = mtu.to_string();
    let attribute: &[&str] = match how {
        RouteMtu::Plain => &["mtu", &mtu],
        RouteMtu::Locked => &["mtu", "lock", &mtu],
    };
    for dev in ["eth0", "eth1"] {
        for family in [Family::V4, Family::V6] {
            let f = family.flag();
            let shown = topo
                .lb
                .exec(&["ip", f, "route", "show", "dev", dev, "proto", "kernel"])?;
            // The route as the kernel made it (prefix, scope, source, metric), plus the MTU; the
            // link-local prefix stays as it is.
            for line in shown.lines().filter(|l| !l.starts_with("fe80:")) {
                let mut args = vec!["ip", f, "route", "replace"];
                args.extend(line.split_whitespace());
                args.extend(["dev", dev]);
                args.extend(attribute);
                topo.lb.exec(&args)?;
            }
        }
    }
    Ok(())
}

/// The path MTU `ns` has cached for `dst` (`ip route get`: an exception made by a "fragmentation
/// needed" / "packet too big"), or None.
pub fn learned_mtu(ns: &Netns, dst: IpAddr) -> Result<Option<u32>> {
    let out = ns.exec(&["ip", "route", "get", &dst.to_string()])?;
    let words: Vec<&str> = out.split_whitespace().collect();
    let Some(at) = words.iter().position(|w| *w == "mtu") else {
        return Ok(None);
    };
    // "mtu lock 552": below its floor (min_pmtu) the kernel locks an IPv4 exception.
    let value = words[at + 1..]
        .iter()
        .find(|w| **w != "lock")
        .with_context(|| format!("no value after mtu in {out:?}"))?;
    Ok(Some(
        value.parse().with_context(|| format!("mtu in {out:?}"))?,
    ))
}

/// An L3 VIP: `vip` (address and port) of `proto` ("tcp" or "udp"), served by every backend of
/// the topology on `backend_port`.
#[derive(Clone, Copy, Debug)]
pub struct Service {
    pub vip: SocketAddr,
    pub proto: &'static str,
    pub backend_port: u16,
}

/// What balances the VIPs on the LB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balancer {
    /// The real daemon, attached to both LB interfaces, with the pass program on the peers it
    /// sends into.
    Xdplb,
    /// nftables DNAT (numgen over the backends) and the kernel's forwarding, which translates
    /// ICMP errors through conntrack: the oracle that proves the topology, not xdplb.
    Nftables,
}

/// The balancer running on an L3 topology's LB; stopped (daemon, pins, XDP) on drop. An
/// nftables ruleset goes with the LB namespace.
pub struct Lb {
    daemon: Option<Daemon>,
    _pass: Option<DataPath>,
}

impl Lb {
    pub fn start(topo: &L3Topology, how: Balancer, services: &[Service]) -> Result<Lb> {
        match how {
            Balancer::Xdplb => {
                let pass = topo.attach_peer_pass()?;
                let d = Daemon::start(&topo.lb, &[])?;
                let mut cfg = String::new();
                for dev in ["eth0", "eth1"] {
                    writeln!(
                        cfg,
                        "[[interface]]\nname = \"{dev}\"\nxdp_mode = \"native\""
                    )?;
                }
                for s in services {
                    writeln!(
                        cfg,
                        "[[vip]]\naddr = \"{}/{}\"\nmode = \"l3\"",
                        s.vip, s.proto
                    )?;
                    for b in &topo.backends {
                        writeln!(
                            cfg,
                            "[[vip.backend]]\naddr = \"{}\"\nport = {}",
                            Family::of(s.vip.ip()).addr(b),
                            s.backend_port
                        )?;
                    }
                }
                let path = d.dir.join("l3_icmp.toml");
                std::fs::write(&path, cfg)?;
                d.ok(&["apply", "-f", path.to_str().context("temp path is UTF-8")?])?;
                Ok(Lb {
                    daemon: Some(d),
                    _pass: Some(pass),
                })
            }
            Balancer::Nftables => {
                let mut rules = String::from(
                    "table inet xdplb_oracle {\n chain pre {\n  \
                     type nat hook prerouting priority dstnat; policy accept;\n",
                );
                for s in services {
                    let family = Family::of(s.vip.ip());
                    let f = family.nft();
                    let map: Vec<String> = topo
                        .backends
                        .iter()
                        .enumerate()
                        .map(|(i, b)| format!("{i} : {}", family.addr(b)))
                        .collect();
                    writeln!(
                        rules,
                        "  {f} daddr {} {} dport {} \
                         dnat {f} to numgen inc mod {} map {{ {} }} : {}",
                        s.vip.ip(),
                        s.proto,
                        s.vip.port(),
                        map.len(),
                        map.join(", "),
                        s.backend_port
                    )?;
                }
                rules.push_str(" }\n}\n");
                let path = std::env::temp_dir().join(format!("{}-oracle.nft", topo.lb.name));
                std::fs::write(&path, rules)?;
                let loaded =
                    topo.lb
                        .exec(&["nft", "-f", path.to_str().context("temp path is UTF-8")?]);
                let _ = std::fs::remove_file(&path);
                loaded.context("loading the nftables oracle (is nftables installed?)")?;
                Ok(Lb {
                    daemon: None,
                    _pass: None,
                })
            }
        }
    }

    /// The daemon, when xdplb balances.
    pub fn daemon(&self) -> Option<&Daemon> {
        self.daemon.as_ref()
    }

    /// A counter of `xdplb stats --json` (`section` "verdicts" or "events"); 0 when this data
    /// path does not know the counter yet, so an older data path fails the comparison instead of
    /// the parsing.
    pub fn counter(&self, section: &str, name: &str) -> Result<u64> {
        let d = self.daemon().context("counters exist only with xdplb")?;
        Ok(d.json(&["stats"])?[section][name].as_u64().unwrap_or(0))
    }
}

/// Which way a transfer's bulk goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transfer {
    /// From the backend: its replies cross the small link (or the LB's small route).
    Download,
    /// From the client.
    Upload,
}

/// `n` transfers of `bytes` each through `vip`, from inside `client`: the backends that served
/// them, or an error saying how many completed before the first failure. A transfer cannot
/// hang: peers::http's socket timeouts fail it after `IO_TIMEOUT` without progress (as in a
/// path-MTU black hole, where the full-size segments are retransmitted and dropped for ever).
pub fn transfers(
    client: &Netns,
    vip: SocketAddr,
    kind: Transfer,
    n: usize,
    bytes: usize,
) -> Result<Vec<String>> {
    let started = Instant::now();
    let mut served = Vec::new();
    client.run(|| {
        for _ in 0..n {
            let backend = match kind {
                Transfer::Download => http_download(vip, bytes),
                Transfer::Upload => http_upload(vip, bytes),
            }
            .with_context(|| {
                format!(
                    "{kind:?} through {vip}: {} of {n} complete, then one failed ({:.1?} in)",
                    served.len(),
                    started.elapsed()
                )
            })?;
            served.push(backend);
        }
        println!(
            "{n} x {kind:?} of {bytes} B through {vip}: {:.1?}",
            started.elapsed()
        );
        Ok(served)
    })?
}

/// Forgets every path MTU `ns` learned (IPv4 and IPv6), and checks it forgot the one towards
/// `dst`. A host announces its learned MTU as its MSS on new connections (both families), so
/// once a backend learned the small MTU its peers stop sending full-size packets to it, and
/// the hop would be found no more in the other direction.
pub fn forget_path_mtus(ns: &Netns, dst: IpAddr) -> Result<()> {
    ns.exec(&["ip", "-4", "route", "flush", "cache"])?;
    ns.exec(&["ip", "-6", "route", "flush", "cache"])?;
    if let Some(mtu) = learned_mtu(ns, dst)? {
        bail!("{} still has path MTU {mtu} towards {dst}", ns.name);
    }
    Ok(())
}
