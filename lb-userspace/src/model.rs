//! The typed model of what the data path should do: VIPs, their mode and hash fields, and
//! their backends. It knows nothing of maps; `mirror` turns it into map writes.

use std::{collections::BTreeMap, fmt, net::IpAddr, str::FromStr};

use lb_common::{
    addr::{self, FAMILY_V4, FAMILY_V6},
    FlowKey, VipKey, VIP_F_HASH_SRC_IP, VIP_F_MODE_L3,
};
use thiserror::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

/// Forwarding mode of a VIP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Direct server return: rewrite the destination MAC only.
    #[default]
    L2,
    /// NAT: rewrite the destination address (and port); replies get the VIP back.
    L3,
}

/// Which fields of a flow pick its backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HashFields {
    #[default]
    FiveTuple,
    SrcIp,
}

/// A VIP's address: `ADDR:PORT/PROTO`, where port 0 (written `*`) means all ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipAddr {
    pub ip: IpAddr,
    pub port: u16,
    pub proto: Proto,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("VIP {0:?} is not of the form ADDR:PORT/PROTO (e.g. 10.0.0.100:80/tcp, [2001:db8::1]:443/tcp, 10.0.0.100:*/udp)")]
    VipSyntax(String),
    #[error("protocol {0:?} is not supported; use tcp or udp")]
    Proto(String),
    #[error("port {0:?} is not a number from 1 to 65535 or * (all ports)")]
    Port(String),
    #[error("address {0:?} is not an IPv4 or IPv6 address")]
    Addr(String),
    #[error("MAC address {0:?} is not six hex bytes separated by colons (e.g. 02:00:00:00:00:01)")]
    Mac(String),
}

/// Why `ip` cannot be a VIP's address, if it cannot: no client can send to it as to one host,
/// or traffic to it never leaves (or reaches) a host's own stack.
pub fn unusable_vip_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        _ if ip.is_unspecified() => Some("the unspecified address"),
        _ if ip.is_loopback() => Some("a loopback address"),
        _ if ip.is_multicast() => Some("a multicast address"),
        IpAddr::V4(a) if a.is_broadcast() => Some("the broadcast address"),
        IpAddr::V4(a) if a.is_link_local() => Some("a link-local address (169.254.0.0/16)"),
        IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80 => {
            Some("a link-local address (fe80::/10)")
        }
        _ => None,
    }
}

/// Why `ip` cannot be a backend's address, if it cannot: frames or packets for it would not
/// reach one host.
pub fn unusable_backend_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        _ if ip.is_unspecified() => Some("the unspecified address"),
        _ if ip.is_multicast() => Some("a multicast address"),
        IpAddr::V4(a) if a.is_broadcast() => Some("the broadcast address"),
        _ => None,
    }
}

impl FromStr for VipAddr {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || ParseError::VipSyntax(s.to_string());
        let (hostport, proto) = s.rsplit_once('/').ok_or_else(syntax)?;
        let proto = match proto.to_ascii_lowercase().as_str() {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return Err(ParseError::Proto(proto.to_string())),
        };
        let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
            let (host, port) = rest.split_once("]:").ok_or_else(syntax)?;
            (host, port)
        } else {
            let (host, port) = hostport.rsplit_once(':').ok_or_else(syntax)?;
            if host.contains(':') {
                // A bare IPv6 address needs brackets to separate the port.
                return Err(syntax());
            }
            (host, port)
        };
        let ip: IpAddr = host
            .parse()
            .map_err(|_| ParseError::Addr(host.to_string()))?;
        let port = match port {
            "*" => 0,
            p => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(ParseError::Port(p.to_string())),
            },
        };
        Ok(VipAddr { ip, port, proto })
    }
}

impl fmt::Display for VipAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:")?,
            IpAddr::V6(ip) => write!(f, "[{ip}]:")?,
        }
        match self.port {
            0 => write!(f, "*")?,
            p => write!(f, "{p}")?,
        }
        write!(f, "/{}", proto_name(self.proto))
    }
}

impl VipAddr {
    /// The data path's key for this VIP.
    pub fn key(&self) -> VipKey {
        VipKey {
            addr: addr::to_words(self.ip),
            port: self.port.to_be(),
            proto: self.proto.number(),
            family: addr::family(self.ip),
        }
    }

    /// The address entry shared by every VIP on this address.
    pub fn address_key(&self) -> VipKey {
        VipKey {
            addr: addr::to_words(self.ip),
            port: 0,
            proto: 0,
            family: if self.ip.is_ipv4() {
                FAMILY_V4
            } else {
                FAMILY_V6
            },
        }
    }
}

/// The connection-table key of a flow from `src:sport` to a VIP (as the data path builds it).
pub fn flow_key(src: IpAddr, sport: u16, vip: &VipAddr, dport: u16) -> FlowKey {
    FlowKey {
        src: addr::to_words(src),
        dst: addr::to_words(vip.ip),
        sport: sport.to_be(),
        dport: dport.to_be(),
        proto: vip.proto.number(),
        family: addr::family(vip.ip),
        _pad: [0; 2],
    }
}

/// Two L3 VIPs that would take the replies of one backend endpoint: the data path finds a
/// reply's VIP by its source (address, port, protocol), so it could not tell them apart.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[error("{}", describe_conflict(self))]
pub struct EndpointConflict {
    pub backend: IpAddr,
    /// The VIP that claimed the endpoint first, and the one refused.
    pub first: VipAddr,
    pub second: VipAddr,
    /// The port both claim (0 when one of them serves all ports).
    pub port: u16,
}

fn describe_conflict(c: &EndpointConflict) -> String {
    let (backend, first, second) = (c.backend, c.first, c.second);
    match [first, second].into_iter().find(|v| v.port == 0) {
        Some(all) => format!(
            "backend {backend} cannot serve both L3 VIPs {first} and {second}: {all} serves all ports, so every {} reply from that address belongs to it",
            proto_name(all.proto)
        ),
        None => format!(
            "backend {backend} cannot serve both L3 VIPs {first} and {second}: both send to its port {}, so their replies could not be told apart",
            c.port
        ),
    }
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}

/// The backend endpoints L3 VIPs take replies from, to refuse two VIPs on one endpoint. An
/// all-ports VIP (port 0) rewrites no port, so it takes every port of its backends' addresses
/// for its protocol and conflicts with any other L3 VIP on such an address.
#[derive(Debug, Default)]
pub struct ReplyEndpoints {
    /// (backend address, protocol) -> (port replies come from, 0 for all; the VIP).
    claims: BTreeMap<(IpAddr, Proto), Vec<(u16, VipAddr)>>,
}

impl ReplyEndpoints {
    /// Records that L3 VIP `vip` sends to `backend`, port `backend_port` (None: the VIP's own
    /// port), unless another VIP already takes replies from there.
    pub fn claim(
        &mut self,
        vip: VipAddr,
        backend: IpAddr,
        backend_port: Option<u16>,
    ) -> Result<(), EndpointConflict> {
        let port = backend_port.unwrap_or(vip.port);
        let claims = self.claims.entry((backend, vip.proto)).or_default();
        let taken = claims
            .iter()
            .find(|(p, other)| *other != vip && (*p == port || *p == 0 || port == 0));
        if let Some(&(p, first)) = taken {
            return Err(EndpointConflict {
                backend,
                first,
                second: vip,
                port: p.min(port),
            });
        }
        claims.push((port, vip));
        Ok(())
    }
}

/// A VIP and how it balances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipSpec {
    pub addr: VipAddr,
    pub mode: Mode,
    pub hash: HashFields,
}

impl VipSpec {
    /// The data path's `VIP_F_*` bits.
    pub fn flags(&self) -> u32 {
        let hash = match self.hash {
            HashFields::FiveTuple => 0,
            HashFields::SrcIp => VIP_F_HASH_SRC_IP,
        };
        let mode = match self.mode {
            Mode::L2 => 0,
            Mode::L3 => VIP_F_MODE_L3,
        };
        hash | mode
    }
}

/// A backend's address as written on the command line: `ADDR`, `ADDR:PORT` or `[ADDR]:PORT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendAddr {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

impl FromStr for BackendAddr {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(BackendAddr { ip, port: None });
        }
        let (host, port) = match s.strip_prefix('[') {
            Some(rest) => rest
                .split_once("]:")
                .ok_or_else(|| ParseError::Addr(s.to_string()))?,
            None => s
                .rsplit_once(':')
                .filter(|(h, _)| !h.contains(':'))
                .ok_or_else(|| ParseError::Addr(s.to_string()))?,
        };
        let ip = host
            .parse()
            .map_err(|_| ParseError::Addr(host.to_string()))?;
        match port.parse::<u16>() {
            Ok(p) if p > 0 => Ok(BackendAddr { ip, port: Some(p) }),
            _ => Err(ParseError::Port(port.to_string())),
        }
    }
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ip, self.port) {
            (ip, None) => write!(f, "{ip}"),
            (IpAddr::V4(ip), Some(p)) => write!(f, "{ip}:{p}"),
            (IpAddr::V6(ip), Some(p)) => write!(f, "[{ip}]:{p}"),
        }
    }
}

/// A MAC address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseError::Mac(s.to_string());
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut mac {
            let p = parts.next().ok_or_else(err)?;
            if p.len() != 2 {
                return Err(err());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Mac(mac))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// A backend resolved to what the data path needs: where to send and how much.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendTarget {
    pub addr: IpAddr,
    /// Relative weight; 0 drains (existing flows stay, no new ones).
    pub weight: u32,
    pub mac: Mac,
    /// Interface to send out of; 0 sends back out of the receiving interface (L2 mode).
    pub ifindex: u32,
    /// That interface's MAC (zero when `ifindex` is 0, or to have the data path look it up).
    pub src_mac: Mac,
    /// L3 mode: the destination port to rewrite to; 0 keeps the client's.
    pub port: u16,
}

/// One VIP with its backends: the unit the mirror applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipState {
    pub spec: VipSpec,
    pub backends: Vec<BackendTarget>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vip_syntax_round_trips() {
        for s in [
            "10.0.0.100:80/tcp",
            "[2001:db8::1]:443/tcp",
            "10.0.0.100:*/udp",
            "[::1]:*/udp",
        ] {
            let v: VipAddr = s.parse().unwrap();
            assert_eq!(v.to_string(), s);
        }
        let v: VipAddr = "10.0.0.1:53/UDP".parse().unwrap();
        assert_eq!((v.port, v.proto), (53, Proto::Udp));
    }

    #[test]
    fn bad_vips_are_refused_with_a_reason() {
        let cases = [
            ("10.0.0.1:80", "ADDR:PORT/PROTO"),
            ("10.0.0.1:80/icmp", "protocol \"icmp\""),
            ("10.0.0.1:0/tcp", "port \"0\""),
            ("10.0.0.1:99999/tcp", "port \"99999\""),
            ("10.0.0.300:80/tcp", "address \"10.0.0.300\""),
            ("2001:db8::1:80/tcp", "ADDR:PORT/PROTO"),
            ("[2001:db8::1]80/tcp", "ADDR:PORT/PROTO"),
        ];
        for (input, want) in cases {
            let err = input.parse::<VipAddr>().unwrap_err().to_string();
            assert!(err.contains(want), "{input}: {err}");
        }
    }

    #[test]
    fn backend_addresses_take_an_optional_port() {
        for s in [
            "10.0.1.1",
            "10.0.1.1:8080",
            "2001:db8::1",
            "[2001:db8::1]:8080",
        ] {
            assert_eq!(s.parse::<BackendAddr>().unwrap().to_string(), s);
        }
        assert_eq!(
            "10.0.1.1:8080".parse::<BackendAddr>().unwrap().port,
            Some(8080)
        );
        for bad in [
            "10.0.1.1:0",
            "10.0.1.1:x",
            "10.0.1.300",
            "[2001:db8::1]",
            "host:80",
        ] {
            assert!(bad.parse::<BackendAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn macs_parse_and_print() {
        let m: Mac = "02:00:0a:FF:00:01".parse().unwrap();
        assert_eq!(m.to_string(), "02:00:0a:ff:00:01");
        for bad in [
            "02:00:0a:ff:00",
            "02:00:0a:ff:00:01:02",
            "02-00-0a-ff-00-01",
            "zz:00:0a:ff:00:01",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }
}

/// Serde as the text forms above, so configs, the API and `--json` output share one syntax.
mod serde_text {
    use std::{fmt, str::FromStr};

    use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

    use super::{HashFields, Mac, Mode, VipAddr};

    macro_rules! as_text {
        ($t:ty) => {
            impl Serialize for $t {
                fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    s.collect_str(self)
                }
            }
            impl<'de> Deserialize<'de> for $t {
                fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                    let s = String::deserialize(d)?;
                    <$t>::from_str(&s).map_err(de::Error::custom)
                }
            }
        };
    }
    as_text!(VipAddr);
    as_text!(super::BackendAddr);
    as_text!(Mac);
    as_text!(Mode);
    as_text!(HashFields);

    impl fmt::Display for Mode {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(match self {
                Mode::L2 => "l2",
                Mode::L3 => "l3",
            })
        }
    }

    impl FromStr for Mode {
        type Err = String;
        fn from_str(s: &str) -> Result<Self, String> {
            match s {
                "l2" => Ok(Mode::L2),
                "l3" => Ok(Mode::L3),
                _ => Err(format!("mode {s:?} is not supported; use l2 or l3")),
            }
        }
    }

    impl fmt::Display for HashFields {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(match self {
                HashFields::FiveTuple => "5tuple",
                HashFields::SrcIp => "src-ip",
            })
        }
    }

    impl FromStr for HashFields {
        type Err = String;
        fn from_str(s: &str) -> Result<Self, String> {
            match s {
                "5tuple" => Ok(HashFields::FiveTuple),
                "src-ip" => Ok(HashFields::SrcIp),
                _ => Err(format!("hash {s:?} is not supported; use 5tuple or src-ip")),
            }
        }
    }
}
