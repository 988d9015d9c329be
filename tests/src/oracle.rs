//! A reference model of the data path's documented policy (docs/datapath.md "Per packet",
//! "Policies", "One flow state", "ICMP and path MTU"; the verdict table of
//! docs/troubleshooting.md), for the fuzzer: given a frame, the interface it arrives on and
//! the loaded configuration, it predicts every verdict reason the data path may legitimately
//! give and, for each, what the output must be. It parses frames itself (nothing from
//! `lb-ebpf`, `lb_common::hash` or the mirror; only the verdict numbers of `lb_common::stats`)
//! and picks backends with `reference` (Maglev and MurmurHash3 as
//! docs/maglev.md describes them), so the mode of a VIP comes from the configuration, never
//! from the output.
//!
//! Where the outcome depends on state the model does not track (the ICMP rate limit, the
//! kernel's answer for an address outside the test namespace's routes), it predicts the set.

mod fib;
mod frame;

use std::{net::IpAddr, ops::Range};

use lb_common::stats;
use lb_userspace::model::{Mode, VipState};

use self::frame::{
    addr, classify, l4_check_field, parse_ip, put_addr, put_port, quote_addr_at, Class, Flow, Ip,
    Quote,
};
pub use self::{
    fib::{Fib, Hop},
    frame::checksums_valid,
};
use crate::{
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
    /// L2: the interface it is reached through (0: the receiving one) and the source MAC
    /// stored for it (zero: that interface's).
    pub ifindex: u32,
    pub src_mac: [u8; 6],
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
                ifindex: b.ifindex,
                src_mac: b.src_mac.0,
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
    Rewritten {
        want: Vec<u8>,
        free: Vec<Range<usize>>,
    },
    /// A new ICMP "too big" packet back to `to`, out of the receiving interface.
    TooBig {
        to: IpAddr,
    },
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
                if let Some(i) = (0..want.len())
                    .find(|i| out[*i] != want[*i] && !free.iter().any(|r| r.contains(i)))
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
                if ip.dst != *to || out[0..6] != input[6..12] || checksums_valid(out) != Some(true)
                {
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
                Prediction::one(
                    stats::PASS_NOT_VIP,
                    Effect::Unchanged,
                    format!("{why}, not to a VIP address"),
                )
            }
        };
        match classify(frame) {
            Class::NotIp => Prediction::one(stats::PASS_NOT_IP, Effect::Unchanged, "not IP"),
            Class::Malformed => Prediction::one(
                stats::PASS_MALFORMED,
                Effect::Unchanged,
                "truncated or malformed",
            ),
            Class::Fragment(ip) if self.is_vip_address(ip.dst) => {
                if !for_us {
                    return not_for_us("a fragment to a VIP address");
                }
                Prediction::one(
                    stats::DROP_FRAGMENT,
                    Effect::Dropped,
                    "a fragment to a VIP address",
                )
            }
            Class::Fragment(ip) => by_dst(&ip, stats::PASS_NOT_VIP, "a fragment"),
            Class::Echo(ip) if self.is_vip_address(ip.dst) => {
                if !for_us {
                    return not_for_us("a ping to a VIP address");
                }
                Prediction::one(
                    stats::TX_ICMP_ECHO,
                    echo_reply(frame, &ip),
                    "a ping to a VIP address",
                )
            }
            Class::Echo(ip) => by_dst(&ip, stats::PASS_ICMP, "a ping"),
            Class::Icmp(ip) => by_dst(&ip, stats::PASS_ICMP, "ICMP other than errors and pings"),
            Class::IcmpError(ip, Err(0)) => {
                by_dst(&ip, stats::PASS_ICMP, "an ICMP error quoting no TCP/UDP")
            }
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
            self.vips
                .iter()
                .filter(|v| v.l3 && v.proto == f.proto)
                .find_map(|v| {
                    v.backends.iter().find_map(|b| {
                        let bport = if v.port == 0 {
                            0
                        } else if b.port != 0 {
                            b.port
                        } else {
                            v.port
                        };
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
                return Prediction::one(
                    stats::PASS_NOT_FOR_US,
                    Effect::Unchanged,
                    format!("{what}, not sent to us"),
                );
            }
            let Some(b) = vip.pick(f) else {
                return Prediction::one(
                    stats::DROP_NO_BACKEND,
                    Effect::Dropped,
                    format!("{what} without backends"),
                );
            };
            let why = format!("{what}, backend {}", b.addr);
            if !vip.l3 {
                let (reason, effect) = self.l2(frame, ingress, b);
                return Prediction::one(reason, effect, why);
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
            return Prediction::one(
                stats::PASS_NOT_VIP,
                Effect::Unchanged,
                "no VIP, no L3 backend endpoint",
            );
        };
        let why = format!(
            "from backend {} of L3 VIP {}:{}",
            b.addr, vip.addr, vip.port
        );
        let not_ours = Prediction::one(
            stats::PASS_NOT_VIP,
            Effect::Unchanged,
            format!("{why}, no reply of ours"),
        );
        let translated = || {
            if !for_us {
                return Prediction::one(
                    stats::PASS_NOT_FOR_US,
                    Effect::Unchanged,
                    format!("a reply {why}, not sent to us"),
                );
            }
            if let Some(reason) = untranslatable(ip) {
                return Prediction::one(reason, Effect::Dropped, why.clone());
            }
            let nat = Nat {
                dst: false,
                addr: vip.addr,
                port: vip.port,
            };
            self.nat(
                frame,
                ingress,
                ip,
                nat,
                Kind::Reply,
                format!("a reply {why}"),
            )
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

    fn icmp_error(
        &self,
        frame: &[u8],
        ingress: u32,
        for_us: bool,
        ip: &Ip,
        q: &Quote,
    ) -> Prediction {
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
            let reason = if self.is_vip_address(ip.dst) {
                stats::PASS_ICMP
            } else {
                stats::PASS_NOT_VIP
            };
            Prediction::one(
                reason,
                Effect::Unchanged,
                "an ICMP error about a VIP flow, for someone else",
            )
        };
        let checks = |why: &str| {
            if ip.vlan {
                Some(Prediction::one(stats::DROP_L3_VLAN, Effect::Dropped, why))
            } else if !ip.plain || q.options {
                Some(Prediction::one(
                    stats::DROP_ICMP_UNTRANSLATABLE,
                    Effect::Dropped,
                    why,
                ))
            } else {
                None
            }
        };
        if let Some(vip) = self.vip_of(&flow) {
            if !addressed {
                return foreign();
            }
            if !for_us {
                return Prediction::one(
                    stats::PASS_NOT_FOR_US,
                    Effect::Unchanged,
                    "an ICMP error about a VIP flow, not sent to us",
                );
            }
            let Some(b) = vip.pick(&flow) else {
                return Prediction::one(
                    stats::DROP_NO_BACKEND,
                    Effect::Dropped,
                    "an ICMP error about a VIP flow without backends",
                );
            };
            let why = format!(
                "an ICMP error about a flow of VIP {}:{}, backend {}",
                vip.addr, vip.port, b.addr
            );
            if !vip.l3 {
                let (reason, effect) = self.l2(frame, ingress, b);
                return Prediction::one(reason, effect, why);
            }
            if let Some(p) = checks(&why) {
                return p;
            }
            // Outer destination and quoted source become the backend's.
            let mut want = frame.to_vec();
            put_addr(&mut want, ip.addr_at(true), b.addr);
            put_addr(&mut want, quote_addr_at(q, ip.v6, false), b.addr);
            put_port(&mut want, q.l4, b.port);
            return self.icmp_translated(frame, ingress, ip, q, want, why);
        }
        if let Some((vip, b, ours)) = self.reply_of(&flow) {
            if ours != Some(false) {
                let why = format!(
                    "an ICMP error about a client's packet to backend {} of {}:{}",
                    b.addr, vip.addr, vip.port
                );
                let p = if !addressed {
                    foreign()
                } else if !for_us {
                    Prediction::one(
                        stats::PASS_NOT_FOR_US,
                        Effect::Unchanged,
                        format!("{why}, not sent to us"),
                    )
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
                    put_port(&mut want, q.l4 + 2, vip.port);
                    self.icmp_translated(frame, ingress, ip, q, want, why)
                };
                let mut p = p;
                if ours.is_none() {
                    // Only the connection table knows: a reply of ours, or not (passed).
                    p.outcomes.extend(foreign().outcomes);
                }
                return p;
            }
        }
        foreign()
    }

    /// A translated ICMP error: `want` holds the new addresses and ports.
    fn icmp_translated(
        &self,
        frame: &[u8],
        ingress: u32,
        ip: &Ip,
        q: &Quote,
        want: Vec<u8>,
        why: String,
    ) -> Prediction {
        // The ICMP checksum.
        let mut free: Vec<Range<usize>> = std::iter::once(ip.l4 + 2..ip.l4 + 4).collect();
        if !ip.v6 {
            free.push(ip.l3 + 10..ip.l3 + 12);
            free.push(q.at + 10..q.at + 12);
        }
        free.extend(l4_check_field(frame, q.l4, q.flow.proto, ip.v6));
        self.route(Translated { want, free }, ingress, ip, Kind::IcmpError, why)
    }

    /// An L2 VIP's packet: only the MACs change, to the backend's and the egress interface's.
    /// Sent back out (XDP_TX) as it is; out of another interface (the backend's `via`,
    /// XDP_REDIRECT) without its VLAN tags, from the MAC stored with the backend if any.
    fn l2(&self, frame: &[u8], ingress: u32, b: &Backend) -> (u32, Effect) {
        let redirect = b.ifindex != 0 && b.ifindex != ingress;
        let (reason, mut want, src) = if redirect {
            let tags = (0..2)
                .take_while(|n| {
                    matches!(
                        frame.get(12 + 4 * n..14 + 4 * n),
                        Some([0x81, 0x00] | [0x88, 0xa8])
                    )
                })
                .count();
            let src = if b.src_mac != [0; 6] {
                b.src_mac
            } else {
                self.mac(b.ifindex)
            };
            (
                stats::REDIRECT,
                [&frame[..12], &frame[12 + 4 * tags..]].concat(),
                src,
            )
        } else {
            (stats::TX, frame.to_vec(), self.mac(ingress))
        };
        want[0..6].copy_from_slice(&b.mac);
        want[6..12].copy_from_slice(&src);
        (reason, Effect::Rewritten { want, free: vec![] })
    }

    fn mac(&self, ifindex: u32) -> [u8; 6] {
        self.ifaces
            .iter()
            .find(|i| i.0 == ifindex)
            .map_or([0; 6], |i| i.1)
    }

    /// An L3 packet rewritten by `nat` and routed.
    fn nat(
        &self,
        frame: &[u8],
        ingress: u32,
        ip: &Ip,
        n: Nat,
        kind: Kind,
        why: String,
    ) -> Prediction {
        let mut want = frame.to_vec();
        let mut free = Vec::new();
        put_addr(&mut want, ip.addr_at(n.dst), n.addr);
        if matches!(ip.proto, 6 | 17) {
            put_port(&mut want, ip.l4 + if n.dst { 2 } else { 0 }, n.port);
        }
        free.extend(l4_check_field(frame, ip.l4, ip.proto, ip.v6));
        if !ip.v6 {
            free.push(ip.l3 + 10..ip.l3 + 12);
        }
        self.route(Translated { want, free }, ingress, ip, kind, why)
    }

    /// The routing outcomes of an L3 packet to `to` (docs/datapath.md, L3 policies): handed
    /// to the kernel as `t` says, or forwarded with the next hop's MACs and one less TTL.
    fn route(&self, t: Translated, ingress: u32, ip: &Ip, kind: Kind, why: String) -> Prediction {
        let from = addr(&t.want, ip.addr_at(false), ip.v6);
        let to = addr(&t.want, ip.addr_at(true), ip.v6);
        if ip.ttl <= 1 {
            return Prediction::one(
                stats::PASS_TTL,
                Effect::Unchanged,
                format!("{why}, TTL {}", ip.ttl),
            );
        }
        let kernel = Effect::Rewritten {
            want: t.want.clone(),
            free: t.free.clone(),
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
        let outcomes = match self.fib.route(from, to) {
            Hop::Neighbour { .. } | Hop::Kernel if big => too_big(),
            Hop::Neighbour { ifindex, mac } if self.ifaces.iter().any(|i| i.0 == ifindex) => {
                let mut want = t.want.clone();
                want[0..6].copy_from_slice(&mac);
                want[6..12].copy_from_slice(&self.mac(ifindex));
                want[ip.ttl_at()] -= 1;
                let reason = if ifindex == ingress {
                    stats::TX
                } else {
                    stats::REDIRECT
                };
                let free = t.free.clone();
                vec![(reason, Effect::Rewritten { want, free })]
            }
            Hop::Neighbour { .. } | Hop::Kernel => vec![(stats::PASS_NO_NEIGH, kernel)],
            Hop::Local => vec![local],
            Hop::Unknown => {
                let mut o = vec![
                    (stats::PASS_NO_NEIGH, kernel.clone()),
                    local,
                    (stats::DROP_NO_ROUTE, Effect::Dropped),
                ];
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

/// An L3 packet with its new addresses and ports (`want`) and the checksum fields that follow
/// them (`free`), before routing.
struct Translated {
    want: Vec<u8>,
    free: Vec<Range<usize>>,
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
    // The ICMP checksum.
    let mut free: Vec<Range<usize>> = std::iter::once(ip.l4 + 2..ip.l4 + 4).collect();
    if !ip.v6 {
        free.push(ip.l3 + 10..ip.l3 + 12);
    }
    Effect::Rewritten { want, free }
}
