//! Frames parsed by the rules of docs/datapath.md ("Per packet", step 1), independently of
//! `lb-ebpf`'s parser, and the byte-level helpers the oracle builds expected outputs with.

use std::{net::IpAddr, ops::Range};

use lb_common::stats;

use crate::packet::internet_checksum;

/// An IP header as the frame carries it.
#[derive(Clone)]
pub struct Ip {
    pub v6: bool,
    pub l3: usize,
    pub l4: usize,
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    /// The length the header claims (IPv6: payload length + 40), which routing checks
    /// against the MTU.
    pub len: u32,
    pub df: bool,
    pub vlan: bool,
    /// IPv6 with a Routing header or AH.
    pub no_nat: bool,
    /// No VLAN tag, IPv4 options or IPv6 extension headers.
    pub plain: bool,
}

impl Ip {
    pub fn addr_at(&self, dst: bool) -> usize {
        match (self.v6, dst) {
            (false, false) => self.l3 + 12,
            (false, true) => self.l3 + 16,
            (true, false) => self.l3 + 8,
            (true, true) => self.l3 + 24,
        }
    }
    pub fn ttl_at(&self) -> usize {
        self.l3 + if self.v6 { 7 } else { 8 }
    }
}

/// A flow as the sender sent it.
#[derive(Clone)]
pub struct Flow {
    pub proto: u8,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
}

/// The packet quoted by an ICMP error.
pub struct Quote {
    pub at: usize,
    /// An IPv4 quote with options (not translated).
    pub options: bool,
    pub l4: usize,
    pub flow: Flow,
}

pub enum Class {
    NotIp,
    Malformed,
    Fragment(Ip),
    Flow(Ip, Flow),
    Echo(Ip),
    Icmp(Ip),
    /// An ICMP error; the quote, or the verdict of one that cannot be used.
    IcmpError(Ip, Result<Quote, u32>),
}

pub fn u16_at(f: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]))
}

pub fn addr(f: &[u8], at: usize, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::from(<[u8; 16]>::try_from(&f[at..at + 16]).unwrap())
    } else {
        IpAddr::from(<[u8; 4]>::try_from(&f[at..at + 4]).unwrap())
    }
}

/// The IP header after Ethernet and up to two VLAN tags: None when the frame is no IP packet
/// or its header is cut or invalid (the fuzzer uses it on outputs too).
pub fn parse_ip(f: &[u8]) -> Option<Ip> {
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
pub fn classify(f: &[u8]) -> Class {
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
                at += if next == 51 {
                    (len + 2) * 4
                } else {
                    (len + 1) * 8
                };
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
pub fn transport(f: &[u8], ip: Ip) -> Class {
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
pub fn quote(f: &[u8], ip: &Ip) -> Result<Quote, u32> {
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

pub fn put_addr(f: &mut [u8], at: usize, a: IpAddr) {
    match a {
        IpAddr::V4(a) => f[at..at + 4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => f[at..at + 16].copy_from_slice(&a.octets()),
    }
}

pub fn put_port(f: &mut [u8], at: usize, port: u16) {
    if port != 0 {
        f[at..at + 2].copy_from_slice(&port.to_be_bytes());
    }
}

/// The transport checksum's bytes of a header at `l4`, if the frame holds them. An IPv4 UDP
/// checksum of 0 (none) is not free: it must stay 0.
pub fn l4_check_field(f: &[u8], l4: usize, proto: u8, v6: bool) -> Option<Range<usize>> {
    let at = l4 + if proto == 6 { 16 } else { 6 };
    if f.len() < at + 2 || (proto == 17 && !v6 && f[at..at + 2] == [0, 0]) {
        return None;
    }
    Some(at..at + 2)
}

/// Where the quoted packet's source (or destination) address is.
pub fn quote_addr_at(q: &Quote, v6: bool, dst: bool) -> usize {
    q.at + match (v6, dst) {
        (false, false) => 12,
        (false, true) => 16,
        (true, false) => 8,
        (true, true) => 24,
    }
}
