//! A small packet builder for fixtures: Ethernet (+ VLAN tags), IPv4 (options, fragments) or
//! IPv6 (extension headers), TCP/UDP/ICMP. Lengths and checksums are computed here with code
//! independent of the data path's.

use std::net::IpAddr;

pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86dd;
pub const ETH_ARP: u16 = 0x0806;

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        doff: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// ICMP or ICMPv6 (by the IP version): the 4-byte rest-of-header (an MTU, say), then a body.
    Icmp {
        ty: u8,
        code: u8,
        rest: [u8; 4],
        body: Vec<u8>,
    },
    Raw {
        proto: u8,
        bytes: Vec<u8>,
    },
}

#[derive(Clone, Debug)]
pub struct Packet {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// (TPID, VLAN id) outermost first.
    pub vlans: Vec<(u16, u16)>,
    /// Overrides the EtherType (for non-IP frames the IP part is not built).
    pub ether_type: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    /// IPv4 identification.
    pub id: u16,
    /// IPv4 options (padded to 4 bytes).
    pub ip_options: Vec<u8>,
    /// IPv4 flags+offset field (host order), e.g. 0x2000 for MF.
    pub frag: u16,
    /// IPv6 extension headers: (type, body after the 2-byte next/len prefix).
    pub ext: Vec<(u8, Vec<u8>)>,
    pub l4: L4,
    pub payload: Vec<u8>,
}

pub const CLIENT_MAC: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 1];
/// TCP flags: a connection's first packet (SYN alone) and an established one's (ACK).
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const LB_MAC: [u8; 6] = [0x02, 0x1b, 0, 0, 0, 1];

impl Packet {
    /// A TCP segment from `src:sport` to `dst:dport` (SYN unless changed).
    pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16) -> Packet {
        Packet::new(
            src,
            dst,
            L4::Tcp {
                sport,
                dport,
                flags: 0x02,
                doff: 5,
            },
        )
    }

    pub fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Packet {
        Packet::new(src, dst, L4::Udp { sport, dport })
    }

    pub fn icmp(src: &str, dst: &str, ty: u8, code: u8, body: Vec<u8>) -> Packet {
        Packet::icmp_with_rest(src, dst, ty, code, [0; 4], body)
    }

    /// An ICMP error reporting `mtu` ("fragmentation needed" with the next-hop MTU in the low
    /// half of the rest-of-header; ICMPv6 "packet too big" with all four bytes) about `quoted`.
    pub fn icmp_too_big(src: &str, dst: &str, mtu: u16, quoted: Vec<u8>) -> Packet {
        let (ty, code) = if src.contains('.') { (3, 4) } else { (2, 0) };
        let m = mtu.to_be_bytes();
        Packet::icmp_with_rest(src, dst, ty, code, [0, 0, m[0], m[1]], quoted)
    }

    fn icmp_with_rest(
        src: &str,
        dst: &str,
        ty: u8,
        code: u8,
        rest: [u8; 4],
        body: Vec<u8>,
    ) -> Packet {
        Packet::new(
            src,
            dst,
            L4::Icmp {
                ty,
                code,
                rest,
                body,
            },
        )
    }

    pub fn new(src: &str, dst: &str, l4: L4) -> Packet {
        Packet {
            dst_mac: LB_MAC,
            src_mac: CLIENT_MAC,
            vlans: Vec::new(),
            ether_type: None,
            src: src.parse().expect("source address"),
            dst: dst.parse().expect("destination address"),
            ttl: 64,
            id: 0x1234,
            ip_options: Vec::new(),
            frag: 0,
            ext: Vec::new(),
            l4,
            payload: b"xdplb".to_vec(),
        }
    }

    pub fn vlan(mut self, tpid: u16, id: u16) -> Packet {
        self.vlans.push((tpid, id));
        self
    }

    pub fn options(mut self, opts: &[u8]) -> Packet {
        self.ip_options = opts.to_vec();
        self
    }

    pub fn frag(mut self, field: u16) -> Packet {
        self.frag = field;
        self
    }

    pub fn ext(mut self, ty: u8, body_len: usize) -> Packet {
        self.ext.push((ty, vec![0; body_len]));
        self
    }

    pub fn flags(mut self, f: u8) -> Packet {
        if let L4::Tcp { flags, .. } = &mut self.l4 {
            *flags = f;
        }
        self
    }

    pub fn ether(mut self, ty: u16) -> Packet {
        self.ether_type = Some(ty);
        self
    }

    /// The IP packet (no Ethernet header).
    pub fn ip_bytes(&self) -> Vec<u8> {
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let l4 = self.l4_bytes(&s.octets(), &d.octets(), 6);
                let mut opts = self.ip_options.clone();
                while !opts.len().is_multiple_of(4) {
                    opts.push(0);
                }
                let ihl = 5 + opts.len() / 4;
                let total = ihl * 4 + l4.len();
                let mut h = vec![0x40 | ihl as u8, 0];
                h.extend_from_slice(&(total as u16).to_be_bytes());
                h.extend_from_slice(&self.id.to_be_bytes());
                h.extend_from_slice(&self.frag.to_be_bytes());
                h.extend_from_slice(&[self.ttl, self.l4_proto(), 0, 0]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                h.extend_from_slice(&opts);
                let c = internet_checksum(&h);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                h.extend_from_slice(&l4);
                h
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let l4 = self.l4_bytes(&s.octets(), &d.octets(), 6);
                let mut exts = Vec::new();
                for (i, (ty, body)) in self.ext.iter().enumerate() {
                    let next = self.ext.get(i + 1).map(|e| e.0).unwrap_or(self.l4_proto());
                    let (len_field, pad_to) = if *ty == 51 {
                        // AH: length in 4-byte units minus 2.
                        let total = (2 + body.len()).div_ceil(4) * 4;
                        ((total / 4 - 2) as u8, total)
                    } else {
                        let total = (2 + body.len()).div_ceil(8) * 8;
                        ((total / 8 - 1) as u8, total)
                    };
                    let mut e = vec![next, len_field];
                    e.extend_from_slice(body);
                    e.resize(pad_to, 0);
                    exts.extend_from_slice(&e);
                }
                let first = self.ext.first().map(|e| e.0).unwrap_or(self.l4_proto());
                let mut h = vec![0x60, 0, 0, 0];
                h.extend_from_slice(&((exts.len() + l4.len()) as u16).to_be_bytes());
                h.extend_from_slice(&[first, self.ttl]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                h.extend_from_slice(&exts);
                h.extend_from_slice(&l4);
                h
            }
            _ => panic!("source and destination of different families"),
        }
    }

    fn l4_proto(&self) -> u8 {
        match &self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Icmp { .. } => {
                if self.src.is_ipv4() {
                    1
                } else {
                    58
                }
            }
            L4::Raw { proto, .. } => *proto,
        }
    }

    fn l4_bytes(&self, src: &[u8], dst: &[u8], _: u8) -> Vec<u8> {
        let proto = self.l4_proto();
        let mut b = match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
                doff,
            } => {
                let mut t = Vec::new();
                t.extend_from_slice(&sport.to_be_bytes());
                t.extend_from_slice(&dport.to_be_bytes());
                t.extend_from_slice(&1u32.to_be_bytes()); // seq
                t.extend_from_slice(&0u32.to_be_bytes()); // ack
                t.extend_from_slice(&[doff << 4, *flags, 0xff, 0xff, 0, 0, 0, 0]);
                t.extend_from_slice(&self.payload);
                t
            }
            L4::Udp { sport, dport } => {
                let mut u = Vec::new();
                u.extend_from_slice(&sport.to_be_bytes());
                u.extend_from_slice(&dport.to_be_bytes());
                u.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                u.extend_from_slice(&[0, 0]);
                u.extend_from_slice(&self.payload);
                u
            }
            L4::Icmp {
                ty,
                code,
                rest,
                body,
            } => {
                let mut i = vec![*ty, *code, 0, 0];
                i.extend_from_slice(rest);
                i.extend_from_slice(body);
                i
            }
            L4::Raw { bytes, .. } => bytes.clone(),
        };
        let (csum_at, pseudo) = match (&self.l4, src.len()) {
            (L4::Tcp { .. }, _) => (Some(16), true),
            (L4::Udp { .. }, _) => (Some(6), true),
            (L4::Icmp { .. }, 4) => (Some(2), false),
            (L4::Icmp { .. }, _) => (Some(2), true),
            _ => (None, false),
        };
        if let Some(at) = csum_at {
            let mut data = Vec::new();
            if pseudo {
                data.extend_from_slice(src);
                data.extend_from_slice(dst);
                if src.len() == 4 {
                    data.extend_from_slice(&[0, proto]);
                    data.extend_from_slice(&(b.len() as u16).to_be_bytes());
                } else {
                    data.extend_from_slice(&(b.len() as u32).to_be_bytes());
                    data.extend_from_slice(&[0, 0, 0, proto]);
                }
            }
            data.extend_from_slice(&b);
            let c = internet_checksum(&data);
            b[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        b
    }

    /// The whole frame.
    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        for (tpid, id) in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
        }
        let ty = self.ether_type.unwrap_or(if self.src.is_ipv4() {
            ETH_IPV4
        } else {
            ETH_IPV6
        });
        f.extend_from_slice(&ty.to_be_bytes());
        if self
            .ether_type
            .is_some_and(|t| t != ETH_IPV4 && t != ETH_IPV6)
        {
            f.extend_from_slice(&[0u8; 28]);
        } else {
            f.extend_from_slice(&self.ip_bytes());
        }
        f
    }
}

/// RFC 1071 checksum, written out plainly (big-endian words), independent of lb_common::csum.
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The frame with its Ethernet addresses replaced: what L2 mode must output.
pub fn with_macs(frame: &[u8], dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f
}
