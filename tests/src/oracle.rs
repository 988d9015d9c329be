//! A reference model of the data path's documented policy (docs/datapath.md "Per packet",
//! "Policies", "One flow state", "ICMP and path MTU"; the verdict table of
//! docs/troubleshooting.md), for the fuzzer: given a frame, the interface it arrives on and
//! the loaded configuration, it predicts every verdict reason the data path may legitimately
//! give and, for each, what the output must be. It parses frames itself (nothing from
//! `lb_common` or `lb-ebpf`) and picks backends with `reference` (Maglev and MurmurHash3 as
//! docs/maglev.md describes them), so the mode of a VIP comes from the configuration, never
//! from the output.
//!
//! Where the outcome depends on state the model does not track (the ICMP rate limit, the
//! kernel's answer for an address outside the test namespace's routes), it predicts the set.

use std::{net::IpAddr, ops::Range};

use lb_common::stats;
use lb_userspace::model::{Mode, VipState};

use crate::{
    packet::internet_checksum,
    reference,
    xdp::{XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
};

/// A backend as the policy sees it.
#[derive(Clone, Debug)]
pub struct Backend {
    pub addr: IpAddr,
    /// L3: the port a client's packets get (0 keeps the VIP's).
    pub port: u16,
    pub mac: [u8; 6],
    pub weight: u32,
}

/// A VIP: address, port (0: all ports), protocol number, mode, backends and their ring.
pub struct Vip {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: u8,
    pub l3: bool,
    pub backends: Vec<Backend>,
    ring: Vec<Option<usize>>,
}

impl Vip {
    /// The VIP of a desired state, its ring built by the reference Maglev with `ring_size`
    /// slots.
    pub fn from_state(s: &VipState, ring_size: u64) -> Vip {
        let backends: Vec<Backend> = s
            .backends
            .iter()
            .map(|b| Backend {
                addr: b.addr,
                port: b.port,
                mac: b.mac.0,
                weight: b.weight,
            })
            .collect();
        let members: Vec<(IpAddr, u32)> = backends.iter().map(|b| (b.addr, b.weight)).collect();
        Vip {
            addr: s.spec.addr.ip,
            port: s.spec.addr.port,
            proto: s.spec.addr.proto.number(),
            l3: s.spec.mode == Mode::L3,
            ring: reference::maglev(&members, ring_size),
            backends,
        }
    }

    /// The backend the ring gives a flow (5-tuple hashing), if any has weight.
    fn pick(&self, f: &Flow) -> Option<&Backend> {
        let h = reference::flow_hash(f.proto, f.src, f.sport, f.dst, f.dport, false);
        self.ring[h as usize % self.ring.len()].map(|i| &self.backends[i])
    }
}

/// What the kernel's FIB answers for a destination.
#[derive(Clone, Copy)]
pub enum Hop {
    /// A neighbour with a known MAC, behind interface `ifindex`.
    Neighbour { ifindex: u32, mac: [u8; 6] },
    /// On a connected subnet without a neighbour entry: the kernel resolves it.
    Kernel,
    /// An address of this host (or a broadcast), or one without any route: `bpf_fib_lookup`
    /// answers "not forwarded" for both, and the data path reads that as local (a reply then
    /// passes as the LB's own traffic, not `drop_no_route` as docs/datapath.md says for "no
    /// usable route"; reported, see docs/testing.md).
    Local,
    /// An address the model does not know the answer for: any answer but forwarding.
    Unknown,
}

/// The routes of the namespace the data path runs in.
pub struct Fib {
    pub neighbours: Vec<(IpAddr, u32, [u8; 6])>,
    /// Connected subnets: (network, prefix length, ifindex).
    pub subnets: Vec<(IpAddr, u8, u32)>,
    pub locals: Vec<IpAddr>,
    /// Every egress's MTU.
    pub mtu: u16,
}

impl Fib {
    pub fn route(&self, dst: IpAddr) -> Hop {
        if let Some((_, ifindex, mac)) = self.neighbours.iter().find(|n| n.0 == dst) {
            return Hop::Neighbour {
                ifindex: *ifindex,
                mac: *mac,
            };
        }
        if self.locals.contains(&dst) {
            return Hop::Local;
        }
        let host = |net: IpAddr, len: u8| -> Option<u128> {
            match (net, dst) {
                (IpAddr::V4(n), IpAddr::V4(d)) => {
                    let mask = u32::MAX << (32 - len);
                    (u32::from(n) & mask == u32::from(d) & mask).then(|| (u32::from(d) & !mask) as u128)
                }
                (IpAddr::V6(n), IpAddr::V6(d)) => {
                    let mask = u128::MAX << (128 - len);
                    (u128::from(n) & mask == u128::from(d) & mask).then(|| u128::from(d) & !mask)
                }
                _ => None,
            }
        };
        for (net, len, _) in &self.subnets {
            if let Some(h) = host(*net, *len) {
                // The network and broadcast addresses of an IPv4 subnet answer differently
                // across kernels; the rest are hosts to resolve.
                let last = if dst.is_ipv4() { (1u128 << (32 - len)) - 1 } else { u128::MAX };
                return if h == 0 || h == last { Hop::Unknown } else { Hop::Kernel };
            }
        }
        match dst {
            IpAddr::V4(a) if a.is_private() => Hop::Local,
            _ => Hop::Unknown,
        }
    }
}

/// The configuration the data path was loaded with, and where it runs.
pub struct Model {
    pub vips: Vec<Vip>,
    /// Interfaces registered with the data path: (ifindex, MAC).
    pub ifaces: Vec<(u32, [u8; 6])>,
    pub fib: Fib,
}

/// What an output must be for one verdict reason.
#[derive(Clone, Debug)]
pub enum Effect {
    /// Passed untouched.
    Unchanged,
    Dropped,
    /// Exactly `want`, except checksum fields in `free`; the checksums valid whenever the
    /// input's were.
    Rewritten { want: Vec<u8>, free: Vec<Range<usize>> },
    /// A new ICMP "too big" packet back to `to`, out of the receiving interface.
    TooBig { to: IpAddr },
}

/// The reasons the data path may give a frame, each with its output, and why (for messages).
pub struct Prediction {
    pub outcomes: Vec<(u32, Effect)>,
    pub why: String,
}

impl Prediction {
    fn one(reason: u32, effect: Effect, why: impl Into<String>) -> Prediction {
        Prediction {
            outcomes: vec![(reason, effect)],
            why: why.into(),
        }
    }

    /// Checks one run's verdict (`action`, counted `reason`) and output against the prediction.
    pub fn check(&self, input: &[u8], action: u32, out: &[u8], reason: u32) -> Result<(), String> {
        let name = |r: u32| stats::name(r).unwrap_or("?");
        let Some((_, effect)) = self.outcomes.iter().find(|(r, _)| *r == reason) else {
            let want: Vec<&str> = self.outcomes.iter().map(|(r, _)| name(*r)).collect();
            return Err(format!(
                "reason {} not predicted (expected {}: {})",
                name(reason),
                want.join(" or "),
                self.why
            ));
        };
        if action != action_of(reason) {
            return Err(format!("action {action} with reason {}", name(reason)));
        }
        match effect {
            Effect::Dropped => Ok(()),
            Effect::Unchanged if out == input => Ok(()),
            Effect::Unchanged => Err(format!("a passed packet changed ({})", self.why)),
            Effect::Rewritten { want, free } => {
                if out.len() != want.len() {
                    return Err(format!("a rewritten packet changed length ({})", self.why));
                }
                if let Some(i) =
                    (0..want.len()).find(|i| out[*i] != want[*i] && !free.iter().any(|r| r.contains(i)))
                {
                    return Err(format!(
                        "byte {i} is {:#04x}, expected {:#04x} ({})",
                        out[i], want[i], self.why
                    ));
                }
                if checksums_valid(input) == Some(true) && checksums_valid(out) != Some(true) {
                    return Err(format!("valid checksums in, invalid out ({})", self.why));
                }
                Ok(())
            }
            Effect::TooBig { to } => {
                let ip = parse_ip(out).ok_or("a \"too big\" answer that is no IP packet")?;
                if ip.dst != *to || out[0..6] != input[6..12] || checksums_valid(out) != Some(true) {
                    return Err(format!("a wrong \"too big\" answer ({})", self.why));
                }
                Ok(())
            }
        }
    }
}

/// The XDP action that goes with a verdict reason (docs/datapath.md, "Policies").
pub fn action_of(reason: u32) -> u32 {
    match reason {
        stats::DROP_FRAGMENT
        | stats::DROP_NO_BACKEND
        | stats::DROP_NO_IFACE
        | stats::DROP_NO_ROUTE
        | stats::DROP_L3_VLAN
        | stats::DROP_TOO_BIG
        | stats::DROP_L3_IPV6_EXT
        | stats::DROP_ICMP_UNTRANSLATABLE
        | stats::DROP_ALL_PORTS_FLOOD => XDP_DROP,
        stats::TX | stats::TX_ICMP_TOO_BIG | stats::TX_ICMP_ECHO => XDP_TX,
        stats::REDIRECT => XDP_REDIRECT,
        _ => XDP_PASS,
    }
}

/// An IP header as the frame carries it.
#[derive(Clone)]
struct Ip {
    v6: bool,
    l3: usize,
    l4: usize,
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    /// The length the header claims (IPv6: payload length + 40), which routing checks
    /// against the MTU.
    len: u32,
    df: bool,
    vlan: bool,
    /// IPv6 with a Routing header or AH.
    no_nat: bool,
    /// No VLAN tag, IPv4 options or IPv6 extension headers.
    plain: bool,
}

impl Ip {
    fn addr_at(&self, dst: bool) -> usize {
        match (self.v6, dst) {
            (false, false) => self.l3 + 12,
            (false, true) => self.l3 + 16,
            (true, false) => self.l3 + 8,
            (true, true) => self.l3 + 24,
        }
    }
    fn ttl_at(&self) -> usize {
        self.l3 + if self.v6 { 7 } else { 8 }
    }
}

/// A flow as the sender sent it.
#[derive(Clone)]
struct Flow {
    proto: u8,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
}

/// The packet quoted by an ICMP error.
struct Quote {
    at: usize,
    /// An IPv4 quote with options (not translated).
    options: bool,
    l4: usize,
    flow: Flow,
}

enum Class {
    NotIp,
    Malformed,
    Fragment(Ip),
    Flow(Ip, Flow),
    Echo(Ip),
    Icmp(Ip),
    /// An ICMP error; the quote, or the verdict of one that cannot be used.
    IcmpError(Ip, Result<Quote, u32>),
}

fn u16_at(f: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]))
}

fn addr(f: &[u8], at: usize, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::from(<[u8; 16]>::try_from(&f[at..at + 16]).unwrap())
    } else {
        IpAddr::from(<[u8; 4]>::try_from(&f[at..at + 4]).unwrap())
    }
}

/// The IP header after Ethernet and up to two VLAN tags: None when the frame is no IP packet
/// or its header is cut or invalid (the fuzzer uses it on outputs too).
fn parse_ip(f: &[u8]) -> Option<Ip> {
    match classify(f) {
        Class::Fragment(ip)
        | Class::Flow(ip, _)
        | Class::Echo(ip)
        | Class::Icmp(ip)
        | Class::IcmpError(ip, _) => Some(ip),
        Class::NotIp | Class::Malformed => None,
    }
}

/// Parses a frame by the rules of docs/datapath.md ("Per packet", step 1).
fn classify(f: &[u8]) -> Class {
    let Some(mut ty) = u16_at(f, 12) else {
        return Class::Malformed;
    };
    let mut l3 = 14;
    for _ in 0..2 {
        if ty != 0x8100 && ty != 0x88a8 {
            break;
        }
        if f.len() < l3 + 4 {
            return Class::Malformed;
        }
        ty = u16_at(f, l3 + 2).unwrap();
        l3 += 4;
    }
    let vlan = l3 > 14;
    let ip = match ty {
        0x0800 => {
            if f.len() < l3 + 20 {
                return Class::Malformed;
            }
            let ihl = (f[l3] & 0x0f) as usize * 4;
            if f[l3] >> 4 != 4 || ihl < 20 {
                return Class::Malformed;
            }
            let frag = u16_at(f, l3 + 6).unwrap();
            let ip = Ip {
                v6: false,
                l3,
                l4: l3 + ihl,
                proto: f[l3 + 9],
                src: addr(f, l3 + 12, false),
                dst: addr(f, l3 + 16, false),
                ttl: f[l3 + 8],
                len: u16_at(f, l3 + 2).unwrap() as u32,
                df: frag & 0x4000 != 0,
                vlan,
                no_nat: false,
                plain: !vlan && ihl == 20,
            };
            if frag & 0x3fff != 0 {
                return Class::Fragment(ip);
            }
            ip
        }
        0x86dd => {
            if f.len() < l3 + 40 {
                return Class::Malformed;
            }
            if f[l3] >> 4 != 6 {
                return Class::Malformed;
            }
            // Hop-by-hop, routing, destination options and AH are skipped, at most 6.
            let (mut next, mut at, mut no_nat, mut seen) = (f[l3 + 6], l3 + 40, false, 0);
            while matches!(next, 0 | 43 | 60 | 51) {
                if seen == 6 || f.len() < at + 2 {
                    return Class::Malformed;
                }
                no_nat |= matches!(next, 43 | 51);
                let (following, len) = (f[at], f[at + 1] as usize);
                // AH counts 4-byte units minus 2, the others 8-byte units minus 1.
                at += if next == 51 { (len + 2) * 4 } else { (len + 1) * 8 };
                next = following;
                seen += 1;
            }
            let ip = Ip {
                v6: true,
                l3,
                l4: at,
                proto: next,
                src: addr(f, l3 + 8, true),
                dst: addr(f, l3 + 24, true),
                ttl: f[l3 + 7],
                len: u16_at(f, l3 + 4).unwrap() as u32 + 40,
                df: true,
                vlan,
                no_nat,
                plain: !vlan && at == l3 + 40,
            };
            if next == 44 {
                return Class::Fragment(ip);
            }
            ip
        }
        _ => return Class::NotIp,
    };
    transport(f, ip)
}

/// The transport header: ports of TCP and UDP (whole TCP fixed header, data offset >= 5),
/// ICMP types, other protocols as flows without ports.
fn transport(f: &[u8], ip: Ip) -> Class {
    let l4 = ip.l4;
    let icmp = if ip.v6 { 58 } else { 1 };
    let need = |n: usize| f.len() >= l4 + n;
    let ports = |ip: &Ip| Flow {
        proto: ip.proto,
        src: ip.src,
        sport: u16_at(f, l4).unwrap_or(0),
        dst: ip.dst,
        dport: u16_at(f, l4 + 2).unwrap_or(0),
    };
    match ip.proto {
        6 if !need(20) || f[l4 + 12] >> 4 < 5 => Class::Malformed,
        17 if !need(8) => Class::Malformed,
        6 | 17 => {
            let flow = ports(&ip);
            Class::Flow(ip, flow)
        }
        p if p == icmp => {
            if !need(8) {
                return Class::Malformed;
            }
            let ty = f[l4];
            let error = if ip.v6 {
                (1..=4).contains(&ty)
            } else {
                matches!(ty, 3 | 11 | 12)
            };
            if error {
                let quote = quote(f, &ip);
                Class::IcmpError(ip, quote)
            } else if ty == if ip.v6 { 128 } else { 8 } {
                Class::Echo(ip)
            } else {
                Class::Icmp(ip)
            }
        }
        _ => {
            let flow = Flow {
                proto: ip.proto,
                src: ip.src,
                sport: 0,
                dst: ip.dst,
                dport: 0,
            };
            Class::Flow(ip, flow)
        }
    }
}

/// The packet an ICMP error quotes (its IP header, no IPv6 extension headers, and the first 8
/// bytes of TCP or UDP), or the verdict when it cannot be used: cut short, `pass_malformed`;
/// not TCP or UDP, treated as other ICMP (`pass_icmp` or `pass_not_vip`, 0 here).
fn quote(f: &[u8], ip: &Ip) -> Result<Quote, u32> {
    let at = ip.l4 + 8;
    let hdr = if ip.v6 { 40 } else { 20 };
    if f.len() < at + hdr {
        return Err(stats::PASS_MALFORMED);
    }
    let (ihl, proto) = if ip.v6 {
        if f[at] >> 4 != 6 {
            return Err(0);
        }
        (40, f[at + 6])
    } else {
        let ihl = (f[at] & 0x0f) as usize * 4;
        if f[at] >> 4 != 4 || ihl < 20 {
            return Err(0);
        }
        (ihl, f[at + 9])
    };
    if proto != 6 && proto != 17 {
        return Err(0);
    }
    let l4 = at + ihl;
    if f.len() < l4 + 8 {
        return Err(stats::PASS_MALFORMED);
    }
    let (src, dst) = if ip.v6 {
        (addr(f, at + 8, true), addr(f, at + 24, true))
    } else {
        (addr(f, at + 12, false), addr(f, at + 16, false))
    };
    Ok(Quote {
        at,
        options: !ip.v6 && ihl > 20,
        l4,
        flow: Flow {
            proto,
            src,
            sport: u16_at(f, l4).unwrap(),
            dst,
            dport: u16_at(f, l4 + 2).unwrap(),
        },
    })
}

/// Whether the IPv4 header checksum and the TCP/UDP/ICMP checksum of `f` are valid (None:
/// not checkable, e.g. lengths that do not fit the frame).
pub fn checksums_valid(f: &[u8]) -> Option<bool> {
    let ip = parse_ip(f)?;
    let l4_len = (ip.l3 + ip.len as usize).checked_sub(ip.l4)?;
    if !ip.v6 && internet_checksum(f.get(ip.l3..ip.l4)?) != 0 {
        return Some(false);
    }
    let seg = f.get(ip.l4..ip.l4 + l4_len)?;
    if ip.proto == 17 && !ip.v6 && seg.get(6..8)? == [0, 0] {
        return Some(true);
    }
    if !matches!(ip.proto, 1 | 6 | 17 | 58) {
        return Some(true);
    }
    // The pseudo-header; ICMP for IPv4 has none.
    let bytes = |a: IpAddr| match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let mut data = Vec::new();
    if ip.v6 {
        data.extend(bytes(ip.src));
        data.extend(bytes(ip.dst));
        data.extend_from_slice(&(l4_len as u32).to_be_bytes());
        data.extend_from_slice(&[0, 0, 0, ip.proto]);
    } else if ip.proto != 1 {
        data.extend(bytes(ip.src));
        data.extend(bytes(ip.dst));
        data.extend_from_slice(&[0, ip.proto]);
        data.extend_from_slice(&(l4_len as u16).to_be_bytes());
    }
    data.extend_from_slice(seg);
    Some(internet_checksum(&data) == 0)
}

fn put_addr(f: &mut [u8], at: usize, a: IpAddr) {
    match a {
        IpAddr::V4(a) => f[at..at + 4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => f[at..at + 16].copy_from_slice(&a.octets()),
    }
}

fn put_port(f: &mut [u8], at: usize, port: u16) {
    if port != 0 {
        f[at..at + 2].copy_from_slice(&port.to_be_bytes());
    }
}

/// The transport checksum's bytes of a header at `l4`, if the frame holds them. An IPv4 UDP
/// checksum of 0 (none) is not free: it must stay 0.
fn l4_check_field(f: &[u8], l4: usize, proto: u8, v6: bool) -> Option<Range<usize>> {
    let at = l4 + if proto == 6 { 16 } else { 6 };
    if f.len() < at + 2 || (proto == 17 && !v6 && f[at..at + 2] == [0, 0]) {
        return None;
    }
    Some(at..at + 2)
}

/// An L3 rewrite: the destination (a client's packet to its backend) or the source (a reply
/// from the VIP) gets `addr` and, unless 0, `port`.
#[derive(Clone, Copy)]
struct Nat {
    dst: bool,
    addr: IpAddr,
    port: u16,
}

/// What an L3 packet is, for routing and counting.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Forward,
    Reply,
    /// A translated ICMP error (never answered with "too big").
    IcmpError,
}

impl Model {
    /// Every verdict the data path may give `frame` received on `ingress`, with its output.
    pub fn predict(&self, frame: &[u8], ingress: u32) -> Prediction {
        let for_us = self
            .ifaces
            .iter()
            .find(|i| i.0 == ingress)
            .is_some_and(|i| frame.get(0..6) == Some(&i.1[..]) && i.1 != [0; 6]);
        let not_for_us = |why: &str| {
            Prediction::one(
                stats::PASS_NOT_FOR_US,
                Effect::Unchanged,
                format!("{why}, in a frame not sent to the interface's MAC"),
            )
        };
        let by_dst = |ip: &Ip, reason: u32, why: &str| {
            if self.is_vip_address(ip.dst) {
                Prediction::one(reason, Effect::Unchanged, format!("{why} to a VIP address"))
            } else {
                Prediction::one(stats::PASS_NOT_VIP, Effect::Unchanged, format!("{why}, not to a VIP address"))
            }
        };
        match classify(frame) {
            Class::NotIp => Prediction::one(stats::PASS_NOT_IP, Effect::Unchanged, "not IP"),
            Class::Malformed => {
                Prediction::one(stats::PASS_MALFORMED, Effect::Unchanged, "truncated or malformed")
            }
            Class::Fragment(ip) if self.is_vip_address(ip.dst) => {
                if !for_us {
                    return not_for_us("a fragment to a VIP address");
                }
                Prediction::one(stats::DROP_FRAGMENT, Effect::Dropped, "a fragment to a VIP address")
            }
            Class::Fragment(ip) => by_dst(&ip, stats::PASS_NOT_VIP, "a fragment"),
            Class::Echo(ip) if self.is_vip_address(ip.dst) => {
                if !for_us {
                    return not_for_us("a ping to a VIP address");
                }
                Prediction::one(stats::TX_ICMP_ECHO, echo_reply(frame, &ip), "a ping to a VIP address")
            }
            Class::Echo(ip) => by_dst(&ip, stats::PASS_ICMP, "a ping"),
            Class::Icmp(ip) => by_dst(&ip, stats::PASS_ICMP, "ICMP other than errors and pings"),
            Class::IcmpError(ip, Err(0)) => by_dst(&ip, stats::PASS_ICMP, "an ICMP error quoting no TCP/UDP"),
            Class::IcmpError(_, Err(reason)) => {
                Prediction::one(reason, Effect::Unchanged, "an ICMP error with a cut quote")
            }
            Class::IcmpError(ip, Ok(q)) => self.icmp_error(frame, ingress, for_us, &ip, &q),
            Class::Flow(ip, flow) => self.flow(frame, ingress, for_us, &ip, &flow),
        }
    }

    fn is_vip_address(&self, a: IpAddr) -> bool {
        self.vips.iter().any(|v| v.addr == a)
    }

    /// The VIP of a flow: exact port first, then an all-ports VIP.
    fn vip_of(&self, f: &Flow) -> Option<&Vip> {
        let find = |port: u16| {
            self.vips
                .iter()
                .find(|v| v.addr == f.dst && v.port == port && v.proto == f.proto)
        };
        find(f.dport).or_else(|| find(0))
    }

    /// The L3 VIP and backend a packet from `f`'s source endpoint would be a reply of
    /// (docs/datapath.md, "One flow state"), and whether it is one: Some(true) when the flow's
    /// ring slot names this backend (the connection table, if it has the flow, agrees: nothing
    /// changes the configuration during a run), None when only the table can tell (all-ports
    /// VIPs).
    fn reply_of(&self, f: &Flow) -> Option<(&Vip, &Backend, Option<bool>)> {
        let endpoint = |port: u16| {
            self.vips.iter().filter(|v| v.l3 && v.proto == f.proto).find_map(|v| {
                v.backends.iter().find_map(|b| {
                    let bport = if v.port == 0 { 0 } else if b.port != 0 { b.port } else { v.port };
                    (b.addr == f.src && bport == port).then_some((v, b))
                })
            })
        };
        let (vip, b) = endpoint(f.sport).or_else(|| endpoint(0))?;
        if vip.port == 0 {
            return Some((vip, b, None));
        }
        let client_flow = Flow {
            proto: f.proto,
            src: f.dst,
            sport: f.dport,
            dst: vip.addr,
            dport: vip.port,
        };
        let ours = vip.pick(&client_flow).is_some_and(|p| p.addr == b.addr);
        Some((vip, b, Some(ours)))
    }

    fn flow(&self, frame: &[u8], ingress: u32, for_us: bool, ip: &Ip, f: &Flow) -> Prediction {
        if let Some(vip) = self.vip_of(f) {
            let what = format!(
                "{} VIP {}:{}/{}",
                if vip.l3 { "L3" } else { "L2" },
                vip.addr,
                vip.port,
                vip.proto
            );
            if !for_us {
                return Prediction::one(stats::PASS_NOT_FOR_US, Effect::Unchanged, format!("{what}, not sent to us"));
            }
            let Some(b) = vip.pick(f) else {
                return Prediction::one(stats::DROP_NO_BACKEND, Effect::Dropped, format!("{what} without backends"));
            };
            let why = format!("{what}, backend {}", b.addr);
            if !vip.l3 {
                return Prediction::one(stats::TX, self.l2(frame, ingress, b), why);
            }
            if let Some(reason) = untranslatable(ip) {
                return Prediction::one(reason, Effect::Dropped, why);
            }
            let nat = Nat {
                dst: true,
                addr: b.addr,
                port: b.port,
            };
            return self.nat(frame, ingress, ip, nat, Kind::Forward, why);
        }
        let Some((vip, b, ours)) = self.reply_of(f) else {
            return Prediction::one(stats::PASS_NOT_VIP, Effect::Unchanged, "no VIP, no L3 backend endpoint");
        };
        let why = format!("from backend {} of L3 VIP {}:{}", b.addr, vip.addr, vip.port);
        let not_ours = Prediction::one(stats::PASS_NOT_VIP, Effect::Unchanged, format!("{why}, no reply of ours"));
        let translated = || {
            if !for_us {
                return Prediction::one(stats::PASS_NOT_FOR_US, Effect::Unchanged, format!("a reply {why}, not sent to us"));
            }
            if let Some(reason) = untranslatable(ip) {
                return Prediction::one(reason, Effect::Dropped, why.clone());
            }
            let nat = Nat {
                dst: false,
                addr: vip.addr,
                port: vip.port,
            };
            self.nat(frame, ingress, ip, nat, Kind::Reply, format!("a reply {why}"))
        };
        match ours {
            Some(true) => translated(),
            Some(false) => not_ours,
            None => {
                let mut p = translated();
                p.outcomes.extend(not_ours.outcomes);
                p
            }
        }
    }

    fn icmp_error(&self, frame: &[u8], ingress: u32, for_us: bool, ip: &Ip, q: &Quote) -> Prediction {
        // The quoted flow turned around: the direction the error travels.
        let flow = Flow {
            proto: q.flow.proto,
            src: q.flow.dst,
            sport: q.flow.dport,
            dst: q.flow.src,
            dport: q.flow.sport,
        };
        let addressed = ip.dst == flow.dst;
        let foreign = || {
            let reason = if self.is_vip_address(ip.dst) { stats::PASS_ICMP } else { stats::PASS_NOT_VIP };
            Prediction::one(reason, Effect::Unchanged, "an ICMP error about a VIP flow, for someone else")
        };
        let checks = |why: &str| {
            if ip.vlan {
                Some(Prediction::one(stats::DROP_L3_VLAN, Effect::Dropped, why))
            } else if !ip.plain || q.options {
                Some(Prediction::one(stats::DROP_ICMP_UNTRANSLATABLE, Effect::Dropped, why))
            } else {
                None
            }
        };
        if let Some(vip) = self.vip_of(&flow) {
            if !addressed {
                return foreign();
            }
            if !for_us {
                return Prediction::one(stats::PASS_NOT_FOR_US, Effect::Unchanged, "an ICMP error about a VIP flow, not sent to us");
            }
            let Some(b) = vip.pick(&flow) else {
                return Prediction::one(stats::DROP_NO_BACKEND, Effect::Dropped, "an ICMP error about a VIP flow without backends");
            };
            let why = format!("an ICMP error about a flow of VIP {}:{}, backend {}", vip.addr, vip.port, b.addr);
            if !vip.l3 {
                return Prediction::one(stats::TX, self.l2(frame, ingress, b), why);
            }
            if let Some(p) = checks(&why) {
                return p;
            }
            // Outer destination and quoted source become the backend's.
            let mut want = frame.to_vec();
            put_addr(&mut want, ip.addr_at(true), b.addr);
            put_addr(&mut want, quote_addr_at(q, ip.v6, false), b.addr);
            put_port(&mut want, q.l4, b.port);
            return self.icmp_translated(frame, ingress, ip, q, want, b.addr, why);
        }
        if let Some((vip, b, ours)) = self.reply_of(&flow) {
            if ours != Some(false) {
                let why = format!("an ICMP error about a client's packet to backend {} of {}:{}", b.addr, vip.addr, vip.port);
                let p = if !addressed {
                    foreign()
                } else if !for_us {
                    Prediction::one(stats::PASS_NOT_FOR_US, Effect::Unchanged, format!("{why}, not sent to us"))
                } else if let Some(p) = checks(&why) {
                    p
                } else {
                    // Quoted destination (and the outer source when the backend sent it)
                    // become the VIP's.
                    let mut want = frame.to_vec();
                    if ip.src == flow.src {
                        put_addr(&mut want, ip.addr_at(false), vip.addr);
                    }
                    put_addr(&mut want, quote_addr_at(q, ip.v6, true), vip.addr);
                    let port = if vip.port == 0 { 0 } else { vip.port };
                    put_port(&mut want, q.l4 + 2, port);
                    self.icmp_translated(frame, ingress, ip, q, want, ip.dst, why)
                };
                if ours.is_none() {
                    let mut p = p;
                    p.outcomes.extend(foreign().outcomes);
                    return p;
                }
                return p;
            }
        }
        foreign()
    }

    /// A translated ICMP error: `want` holds the new addresses and ports; routed to `to`.
    #[allow(clippy::too_many_arguments)]
    fn icmp_translated(
        &self,
        frame: &[u8],
        ingress: u32,
        ip: &Ip,
        q: &Quote,
        want: Vec<u8>,
        to: IpAddr,
        why: String,
    ) -> Prediction {
        let mut free = vec![ip.l4 + 2..ip.l4 + 4];
        if !ip.v6 {
            free.push(ip.l3 + 10..ip.l3 + 12);
            free.push(q.at + 10..q.at + 12);
        }
        free.extend(l4_check_field(frame, q.l4, q.flow.proto, ip.v6));
        let mut p = self.route(frame, ingress, ip, to, Kind::IcmpError, why);
        for (_, e) in &mut p.outcomes {
            if let Effect::Rewritten { want: w, free: f } = e {
                // Keep the routing's TTL and MACs, take the translation's addresses and ports.
                let mut t = want.clone();
                t[0..12].copy_from_slice(&w[0..12]);
                t[ip.ttl_at()] = w[ip.ttl_at()];
                *w = t;
                f.extend(free.iter().cloned());
            }
        }
        p
    }

    /// An L2 VIP's packet: only the MACs change, to the backend's and the receiving
    /// interface's (sent back out, XDP_TX).
    fn l2(&self, frame: &[u8], ingress: u32, b: &Backend) -> Effect {
        let mut want = frame.to_vec();
        want[0..6].copy_from_slice(&b.mac);
        want[6..12].copy_from_slice(&self.mac(ingress));
        Effect::Rewritten { want, free: vec![] }
    }

    fn mac(&self, ifindex: u32) -> [u8; 6] {
        self.ifaces.iter().find(|i| i.0 == ifindex).map_or([0; 6], |i| i.1)
    }

    /// An L3 packet rewritten by `nat` and routed.
    fn nat(&self, frame: &[u8], ingress: u32, ip: &Ip, n: Nat, kind: Kind, why: String) -> Prediction {
        let mut want = frame.to_vec();
        let mut free = Vec::new();
        put_addr(&mut want, ip.addr_at(n.dst), n.addr);
        if matches!(ip.proto, 6 | 17) {
            put_port(&mut want, ip.l4 + if n.dst { 2 } else { 0 }, n.port);
        }
        free.extend(l4_check_field(frame, ip.l4, ip.proto, ip.v6));
        let to = if n.dst { n.addr } else { ip.dst };
        if !ip.v6 {
            free.push(ip.l3 + 10..ip.l3 + 12);
        }
        let mut p = self.route(frame, ingress, ip, to, kind, why);
        for (_, e) in &mut p.outcomes {
            if let Effect::Rewritten { want: w, free: f } = e {
                let mut t = want.clone();
                t[0..12].copy_from_slice(&w[0..12]);
                t[ip.ttl_at()] = w[ip.ttl_at()];
                *w = t;
                f.extend(free.iter().cloned());
            }
        }
        p
    }

    /// The routing outcomes of an L3 packet to `to` (docs/datapath.md, L3 policies), each
    /// with the frame's MACs and TTL as they leave (addresses are the caller's).
    fn route(&self, frame: &[u8], ingress: u32, ip: &Ip, to: IpAddr, kind: Kind, why: String) -> Prediction {
        if ip.ttl <= 1 {
            return Prediction::one(stats::PASS_TTL, Effect::Unchanged, format!("{why}, TTL {}", ip.ttl));
        }
        let kernel = Effect::Rewritten {
            want: frame.to_vec(),
            free: vec![],
        };
        let too_big = || -> Vec<(u32, Effect)> {
            if kind == Kind::IcmpError {
                vec![(stats::DROP_TOO_BIG, Effect::Dropped)]
            } else if !ip.v6 && !ip.df {
                vec![(stats::PASS_KERNEL_FRAGMENTS, kernel.clone())]
            } else {
                // Over the ICMP rate limit (or without an LB address towards a backend).
                vec![
                    (stats::TX_ICMP_TOO_BIG, Effect::TooBig { to: ip.src }),
                    (stats::DROP_TOO_BIG, Effect::Dropped),
                ]
            }
        };
        let local = if kind == Kind::Reply {
            (stats::PASS_NOT_VIP, Effect::Unchanged)
        } else {
            (stats::DROP_NO_ROUTE, Effect::Dropped)
        };
        let big = ip.len > self.fib.mtu as u32;
        let outcomes = match self.fib.route(to) {
            Hop::Neighbour { .. } | Hop::Kernel if big => too_big(),
            Hop::Neighbour { ifindex, mac } if self.ifaces.iter().any(|i| i.0 == ifindex) => {
                let mut want = frame.to_vec();
                want[0..6].copy_from_slice(&mac);
                want[6..12].copy_from_slice(&self.mac(ifindex));
                want[ip.ttl_at()] -= 1;
                let reason = if ifindex == ingress { stats::TX } else { stats::REDIRECT };
                vec![(reason, Effect::Rewritten { want, free: vec![] })]
            }
            Hop::Neighbour { .. } | Hop::Kernel => vec![(stats::PASS_NO_NEIGH, kernel)],
            Hop::Local => vec![local],
            Hop::Unknown => {
                let mut o = vec![(stats::PASS_NO_NEIGH, kernel.clone()), local, (stats::DROP_NO_ROUTE, Effect::Dropped)];
                if big {
                    o.extend(too_big());
                }
                o
            }
        };
        Prediction {
            outcomes,
            why: format!("{why}, routed to {to}"),
        }
    }
}

/// Why an L3 packet cannot be translated, if it cannot: VLAN-tagged, or IPv6 with a Routing
/// header or AH.
fn untranslatable(ip: &Ip) -> Option<u32> {
    if ip.vlan {
        Some(stats::DROP_L3_VLAN)
    } else if ip.no_nat {
        Some(stats::DROP_L3_IPV6_EXT)
    } else {
        None
    }
}

/// Where the quoted packet's source (or destination) address is.
fn quote_addr_at(q: &Quote, v6: bool, dst: bool) -> usize {
    q.at + match (v6, dst) {
        (false, false) => 12,
        (false, true) => 16,
        (true, false) => 8,
        (true, true) => 24,
    }
}

/// A ping answered from the VIP in place: addresses and MACs swapped, echo reply, TTL 64,
/// checksums (free here, checked for validity).
fn echo_reply(frame: &[u8], ip: &Ip) -> Effect {
    let mut want = frame.to_vec();
    want[0..6].copy_from_slice(&frame[6..12]);
    want[6..12].copy_from_slice(&frame[0..6]);
    put_addr(&mut want, ip.addr_at(false), ip.dst);
    put_addr(&mut want, ip.addr_at(true), ip.src);
    want[ip.ttl_at()] = 64;
    want[ip.l4] = if ip.v6 { 129 } else { 0 };
    let mut free = vec![ip.l4 + 2..ip.l4 + 4];
    if !ip.v6 {
        free.push(ip.l3 + 10..ip.l3 + 12);
    }
    Effect::Rewritten { want, free }
}
