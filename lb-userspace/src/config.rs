//! The declarative configuration: what the daemon should be doing. The same structure is read
//! from TOML (`--config`, `xdplb apply -f`), sent over the API as JSON, and saved as the
//! daemon's state. `validate` refuses anything wrong with one sentence naming the input,
//! before anything changes.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use serde::{Deserialize, Serialize};

mod check_spec;
mod diff;

pub use check_spec::{check_text, CheckSpec};
pub use diff::{diff, Change};

use crate::{
    datapath::{AttachMode, LoadOptions},
    health::HealthCheck,
    model::{
        unusable_backend_address, unusable_vip_address, HashFields, Mac, Mode, ReplyEndpoints,
        VipAddr,
    },
};

/// Largest backend weight (weights are relative; 0 drains, as does `drained`).
pub const MAX_WEIGHT: u32 = 10_000;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Sizes fixed when the program is loaded (absent: the defaults, or for `apply`, the
    /// running ones); changing them needs `xdplb daemon --cleanup` and a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    #[serde(default, rename = "interface", skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
    /// How the connection table is filled (absent: the defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrack: Option<ConntrackConfig>,
    /// What must match on every node that serves the same VIPs (docs/deploy-bgp.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev: Option<MaglevConfig>,
    /// Announce servable VIPs as routes for a BGP daemon (absent: announce nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<AnnounceConfig>,
    #[serde(default, rename = "vip", skip_serializing_if = "Vec::is_empty")]
    pub vips: Vec<VipConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConntrackConfig {
    /// New L2 flows each CPU records per second; beyond it (a flood of new flows) the ring
    /// alone places them, so the flood cannot evict established flows. 0: no limit.
    #[serde(default = "d_record_limit")]
    pub record_limit: u32,
}

fn d_record_limit() -> u32 {
    lb_common::maps::DEFAULT_RECORD_LIMIT
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaglevConfig {
    /// Mixed into every backend's ring permutation; the same on every node of a cluster.
    #[serde(default)]
    pub seed: u32,
}

/// Route protocol number xdplb marks its announcement routes with (`ip route ... proto 201`).
pub const DEFAULT_ROUTE_PROTOCOL: u8 = 201;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnounceConfig {
    /// Kernel routing table that holds one route per announced VIP address; the BGP daemon
    /// imports it (BIRD: `protocol kernel { kernel table N; learn; }`). No `ip rule` may use it.
    pub table: u32,
    /// Route protocol number of those routes, so xdplb finds its own and nothing else.
    #[serde(default = "d_route_protocol")]
    pub protocol: u8,
}

fn d_route_protocol() -> u8 {
    DEFAULT_ROUTE_PROTOCOL
}

impl AnnounceConfig {
    /// Refuses tables and protocol numbers that belong to the kernel or to a routing daemon.
    pub fn validate(&self) -> Result<(), String> {
        let table = match self.table {
            0 => Some("0 is not a table"),
            253 => Some("253 is the kernel's default table"),
            254 => Some("254 is the main table"),
            255 => Some("255 is the local table"),
            _ => None,
        };
        if let Some(why) = table {
            return Err(format!(
                "announce.table {}: {why}; give xdplb a table of its own that no ip rule uses (e.g. 4200)",
                self.table
            ));
        }
        let protocol = match self.protocol {
            0..=4 => Some("0 to 4 are reserved by the kernel"),
            11 | 186..=192 => Some("it is FRR's"),
            12 => Some("it is BIRD's (BIRD would take the routes for its own)"),
            _ => None,
        };
        if let Some(why) = protocol {
            return Err(format!(
                "announce.protocol {}: {why}; give a number no other program uses (default {DEFAULT_ROUTE_PROTOCOL})",
                self.protocol
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "d_ring")]
    pub ring_size: u32,
    #[serde(default = "d_vips")]
    pub max_vips: u32,
    #[serde(default = "d_backends")]
    pub max_backends: u32,
    /// Entries of the IPv4 flows' connection table (layout 1: of all flows).
    #[serde(default = "d_conntrack")]
    pub conntrack_size: u32,
    /// Entries of the IPv6 flows' connection table; absent: `conntrack_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrack6_size: Option<u32>,
}

/// As the configuration file spells them.
impl std::fmt::Display for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ring_size {}, max_vips {}, max_backends {}, conntrack_size {}, conntrack6_size {}",
            self.ring_size,
            self.max_vips,
            self.max_backends,
            self.conntrack_size,
            self.conntrack6_size()
        )
    }
}

fn d_ring() -> u32 {
    lb_common::maps::DEFAULT_RING_SIZE
}
fn d_vips() -> u32 {
    lb_common::maps::DEFAULT_MAX_VIPS
}
fn d_backends() -> u32 {
    lb_common::maps::DEFAULT_MAX_BACKENDS
}
fn d_conntrack() -> u32 {
    lb_common::maps::DEFAULT_CONNTRACK_SIZE
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            ring_size: d_ring(),
            max_vips: d_vips(),
            max_backends: d_backends(),
            conntrack_size: d_conntrack(),
            conntrack6_size: None,
        }
    }
}

impl Limits {
    /// Entries of the IPv6 flows' table in force (`conntrack_size` unless given), so a
    /// layout-1 pin of `XDPLB_CONNTRACK` made with the same limits has the size layout 2 needs.
    pub fn conntrack6_size(&self) -> u32 {
        self.conntrack6_size.unwrap_or(self.conntrack_size)
    }

    pub fn load_options(&self, pin_dir: Option<&Path>) -> LoadOptions {
        LoadOptions {
            ring_size: self.ring_size,
            max_vips: self.max_vips,
            max_backends: self.max_backends,
            conntrack_size: self.conntrack_size,
            conntrack6_size: self.conntrack6_size(),
            pin_dir: pin_dir.map(Path::to_path_buf),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceConfig {
    pub name: String,
    #[serde(default)]
    pub xdp_mode: XdpModeName,
}

/// `native`, `generic` or `auto` in configs and on the command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeName {
    Native,
    Generic,
    #[default]
    Auto,
}

impl From<XdpModeName> for AttachMode {
    fn from(m: XdpModeName) -> Self {
        match m {
            XdpModeName::Native => AttachMode::Native,
            XdpModeName::Generic => AttachMode::Generic,
            XdpModeName::Auto => AttachMode::Auto,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
    #[serde(default)]
    pub allow_remote: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipConfig {
    pub addr: VipAddr,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub hash: HashFields,
    /// Health check for every backend of the VIP (a backend may override it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    #[serde(default, rename = "backend", skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendConfig>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub addr: IpAddr,
    /// L3 mode: the port the backend listens on, when not the VIP's (written ADDR:PORT on
    /// the command line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The configured weight, kept while the backend is drained.
    #[serde(default = "d_weight")]
    pub weight: u32,
    /// `xdplb backend drain`: no new flows (weight 0 in the data path) until `backend
    /// undrain` restores `weight`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drained: bool,
    /// L2 mode: the backend's MAC; resolved from the neighbour table when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    /// Interface the backend is reached through, when not the one traffic arrives on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
}

fn d_weight() -> u32 {
    1
}

impl BackendConfig {
    pub fn new(addr: IpAddr) -> Self {
        BackendConfig {
            addr,
            port: None,
            weight: 1,
            drained: false,
            mac: None,
            via: None,
            health: None,
        }
    }
}

impl BackendConfig {
    /// Takes no new flows: drained, or weight 0 (how configurations drained before `drained`).
    pub fn is_draining(&self) -> bool {
        self.drained || self.weight == 0
    }

    /// The weight the data path uses.
    pub fn ring_weight(&self) -> u32 {
        if self.drained {
            0
        } else {
            self.weight
        }
    }
}

impl VipConfig {
    pub fn backend(&self, addr: IpAddr) -> Option<&BackendConfig> {
        self.backends.iter().find(|b| b.addr == addr)
    }

    /// The health check that applies to a backend, with its port filled in.
    pub fn check_for(&self, b: &BackendConfig) -> Option<HealthCheck> {
        let mut c = b.health.clone().or_else(|| self.health.clone())?;
        // An L3 backend may listen on its own port: check that one.
        c.port = c.port.or(b.port).or(Some(self.addr.port));
        Some(c)
    }
}

impl Config {
    /// Parses a TOML configuration; unknown keys are errors.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| format!("invalid configuration: {}", e.message().trim()))
    }

    /// The per-CPU limit of new flows recorded per second in force (the default when
    /// `[conntrack]` is absent).
    pub fn record_limit(&self) -> u32 {
        self.conntrack
            .as_ref()
            .map_or(lb_common::maps::DEFAULT_RECORD_LIMIT, |c| c.record_limit)
    }

    /// The Maglev seed in force (0 when `[maglev]` is absent).
    pub fn maglev_seed(&self) -> u32 {
        self.maglev.as_ref().map_or(0, |m| m.seed)
    }

    /// The limits in force (the defaults when none are given).
    pub fn limits(&self) -> Limits {
        self.limits.clone().unwrap_or_default()
    }

    pub fn vip(&self, addr: &VipAddr) -> Option<&VipConfig> {
        self.vips.iter().find(|v| v.addr == *addr)
    }

    pub fn vip_mut(&mut self, addr: &VipAddr) -> Option<&mut VipConfig> {
        self.vips.iter_mut().find(|v| v.addr == *addr)
    }

    /// Checks everything that can be checked without the kernel.
    pub fn validate(&self) -> Result<(), String> {
        let limits = self.limits();
        limits
            .load_options(None)
            .validate()
            .map_err(|e| e.to_string())?;
        if let Some(m) = &self.metrics {
            crate::metrics::check_bind_addr(m.listen, m.allow_remote)?;
        }
        if let Some(a) = &self.announce {
            a.validate()?;
        }
        let mut ifaces = BTreeSet::new();
        for i in &self.interfaces {
            check_iface_name(&i.name)?;
            if !ifaces.insert(&i.name) {
                return Err(format!("interface {} is listed twice", i.name));
            }
        }
        let mut vips = BTreeSet::new();
        // L3 replies are matched by their source (backend, port, protocol): two VIPs sharing a
        // backend endpoint could not tell their replies apart.
        let mut endpoints = ReplyEndpoints::default();
        if self.vips.len() > limits.max_vips as usize {
            return Err(format!(
                "{} VIPs configured but limits.max_vips is {}",
                self.vips.len(),
                limits.max_vips
            ));
        }
        for v in &self.vips {
            if !vips.insert(v.addr) {
                return Err(format!("VIP {} is declared twice", v.addr));
            }
            if let Some(why) = unusable_vip_address(v.addr.ip) {
                return Err(format!(
                    "VIP {}: {} is {why}, which cannot be a VIP",
                    v.addr, v.addr.ip
                ));
            }
            let mut addrs = BTreeSet::new();
            for b in &v.backends {
                if !addrs.insert(b.addr) {
                    return Err(format!(
                        "backend {} is declared twice for VIP {}",
                        b.addr, v.addr
                    ));
                }
                if let Some(why) = unusable_backend_address(b.addr) {
                    return Err(format!(
                        "backend {} of VIP {}: {} is {why}, which cannot be a backend",
                        b.addr, v.addr, b.addr
                    ));
                }
                if b.addr == v.addr.ip {
                    return Err(format!(
                        "backend {} of VIP {} is the VIP's own address: its packets would come back to the load balancer",
                        b.addr, v.addr
                    ));
                }
                if b.addr.is_ipv4() != v.addr.ip.is_ipv4() {
                    return Err(format!(
                        "backend {} of VIP {} is of another IP family than the VIP",
                        b.addr, v.addr
                    ));
                }
                if b.weight > MAX_WEIGHT {
                    return Err(format!(
                        "backend {} of VIP {}: weight {} is out of range 0..={MAX_WEIGHT}",
                        b.addr, v.addr, b.weight
                    ));
                }
                if let Some(via) = &b.via {
                    check_iface_name(via)?;
                }
                let l3 = v.mode == Mode::L3;
                let what = |w: &str| format!("backend {} of VIP {}: {w}", b.addr, v.addr);
                match (b.port, l3) {
                    (Some(0), _) => {
                        return Err(what("port 0 is not a port; give 1 to 65535 or none"))
                    }
                    (Some(_), false) => {
                        return Err(what(
                            "only L3 (NAT) mode can rewrite the port; use mode l3 or drop the port",
                        ))
                    }
                    _ => {}
                }
                if l3 && v.addr.port == 0 && b.port.is_some() {
                    return Err(what("an all-ports VIP keeps each client's port; a backend port would fold them into one"));
                }
                if l3 {
                    endpoints
                        .claim(v.addr, b.addr, b.port)
                        .map_err(|e| e.to_string())?;
                }
                if l3 && b.via.is_some() {
                    return Err(what(
                        "in L3 mode the routing table picks the interface; drop via",
                    ));
                }
                if l3 && b.mac.is_some() {
                    return Err(what(
                        "in L3 mode the next hop's MAC comes from the neighbour table; drop mac",
                    ));
                }
                if let Some(check) = v.check_for(b) {
                    if check.port == Some(0) {
                        return Err(format!(
                            "VIP {} serves all ports: its health check needs an explicit port",
                            v.addr
                        ));
                    }
                    check.validate().map_err(|e| {
                        format!("health check of backend {} of VIP {}: {e}", b.addr, v.addr)
                    })?;
                }
            }
        }
        Ok(())
    }
}

/// Interface names as the kernel accepts them.
pub fn check_iface_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(format!("interface name {name:?} is not valid (1 to 15 printable characters, no '/', ':' or spaces)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[limits]
ring_size = 65537

[[interface]]
name = "eth0"
xdp_mode = "native"

[metrics]
listen = "127.0.0.1:9100"

[maglev]
seed = 42

[announce]
table = 4200

[[vip]]
addr = "10.0.0.100:80/tcp"
mode = "l2"
hash = "5tuple"
health = { kind = "http", path = "/healthz" }

[[vip.backend]]
addr = "10.0.1.1"
weight = 2
mac = "02:00:00:00:00:01"

[[vip.backend]]
addr = "10.0.1.2"

[[vip]]
addr = "[2001:db8::100]:*/udp"
hash = "src-ip"
"#;

    #[test]
    fn a_full_config_parses_and_validates() {
        let c = Config::from_toml(GOOD).unwrap();
        c.validate().unwrap();
        assert_eq!(c.vips.len(), 2);
        assert_eq!(c.vips[0].backends[1].weight, 1);
        assert_eq!(c.vips[1].hash, HashFields::SrcIp);
        assert_eq!(c.interfaces[0].xdp_mode, XdpModeName::Native);
        assert_eq!(c.maglev_seed(), 42);
        assert_eq!(
            c.announce,
            Some(AnnounceConfig {
                table: 4200,
                protocol: DEFAULT_ROUTE_PROTOCOL
            })
        );
        assert_eq!(Config::default().maglev_seed(), 0);
        let check = c.vips[0].check_for(&c.vips[0].backends[0]).unwrap();
        assert_eq!(check.port, Some(80));
        // JSON round trip (the state file and the API use JSON).
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Config>(&json).unwrap(), c);
    }

    #[test]
    fn the_ipv6_table_takes_the_ipv4_size_unless_given() {
        let sizes = |text: &str| {
            let o = Config::from_toml(text).unwrap().limits().load_options(None);
            (o.conntrack_size, o.conntrack6_size)
        };
        assert_eq!(sizes("[limits]\nconntrack_size = 1000"), (1000, 1000));
        assert_eq!(
            sizes("[limits]\nconntrack_size = 1000\nconntrack6_size = 10"),
            (1000, 10)
        );
        let d = lb_common::maps::DEFAULT_CONNTRACK_SIZE;
        assert_eq!(sizes(""), (d, d));
    }

    #[test]
    fn bad_configs_are_refused_with_a_sentence() {
        let cases = [
            ("[[vip]]\naddr = \"10.0.0.1:80\"", "ADDR:PORT/PROTO"),
            ("[[vip]]\naddr = \"10.0.0.1:80/sctp\"", "protocol \"sctp\""),
            ("[[vip]]\naddr = \"10.0.0.1:80/tcp\"\nmode = \"l4\"", "mode \"l4\""),
            ("[[vip]]\naddr = \"10.0.0.1:80/tcp\"\n[[vip.backend]]\naddr = \"10.0.1.1\"\nport = 8080", "only L3 (NAT) mode can rewrite the port"),
            ("[[vip]]\naddr = \"10.0.0.1:80/tcp\"\nmode = \"l3\"\n[[vip.backend]]\naddr = \"10.0.1.1\"\nvia = \"eth1\"", "drop via"),
            ("[[vip]]\naddr = \"10.0.0.1:*/tcp\"\nmode = \"l3\"\n[[vip.backend]]\naddr = \"10.0.1.1\"\nport = 80", "all-ports VIP"),
            ("[[vip]]\naddr = \"10.0.0.1:80/tcp\"\nmode = \"l3\"\n[[vip.backend]]\naddr = \"10.0.1.1\"\n[[vip]]\naddr = \"10.0.0.2:80/tcp\"\nmode = \"l3\"\n[[vip.backend]]\naddr = \"10.0.1.1\"", "both send to its port 80"),
            ("[[vip]]\naddr = \"10.0.0.1:80/tcp\"\nhash = \"dst\"", "hash \"dst\""),
            ("[[vip]]\naddr = \"10.0.0.1:80/tcp\"\ncolour = 1", "unknown field `colour`"),
            ("[[vip]]\naddr = \"10.0.0.1:80/tcp\"\n[[vip]]\naddr = \"10.0.0.1:80/tcp\"", "declared twice"),
            ("[[vip]]\naddr = \"10.0.0.1:80/tcp\"\n[[vip.backend]]\naddr = \"10.0.1.1\"\nweight = 20000", "out of range"),
            ("[[vip]]\naddr = \"10.0.0.1:80/tcp\"\n[[vip.backend]]\naddr = \"10.0.1.999\"", "invalid IP address"),
            ("[[vip]]\naddr = \"10.0.0.1:80/tcp\"\n[[vip.backend]]\naddr = \"2001:db8::1\"", "another IP family"),
            ("[[vip]]\naddr = \"10.0.0.1:80/tcp\"\n[[vip.backend]]\naddr = \"10.0.1.1\"\nmac = \"zz\"", "MAC address \"zz\""),
            ("[[vip]]\naddr = \"10.0.0.1:80/tcp\"\n[[vip.backend]]\naddr = \"10.0.1.1\"\n[[vip.backend]]\naddr = \"10.0.1.1\"", "declared twice"),
            ("[[vip]]\naddr = \"10.0.0.1:*/tcp\"\nhealth = { kind = \"tcp\" }\n[[vip.backend]]\naddr = \"10.0.1.1\"", "explicit port"),
            ("[[vip]]\naddr = \"10.0.0.1:80/tcp\"\nhealth = { kind = \"tcp\", rise = 0 }\n[[vip.backend]]\naddr = \"10.0.1.1\"", "rise"),
            ("[limits]\nring_size = 65536", "not a prime"),
            ("[limits]\nconntrack6_size = 0", "conntrack6_size must be at least 1"),
            ("[metrics]\nlisten = \"0.0.0.0:9100\"", "not a loopback address"),
            ("[[interface]]\nname = \"a/b\"", "not valid"),
            // Interface names become pin file names (link_NAME): no way out of the pin path.
            ("[[interface]]\nname = \"..\"", "not valid"),
            ("[[interface]]\nname = \"../../etc\"", "not valid"),
            ("[[vip]]\naddr = \"10.0.0.1:80/tcp\"\n[[vip.backend]]\naddr = \"10.0.1.1\"\nvia = \"../x\"", "not valid"),
            ("[[interface]]\nname = \"eth0\"\nxdp_mode = \"fast\"", "unknown variant `fast`"),
            ("[[interface]]\nname = \"eth0\"\n[[interface]]\nname = \"eth0\"", "listed twice"),
            ("vips = 3", "unknown field `vips`"),
            ("[announce]\nprotocol = 201", "missing field `table`"),
            ("[announce]\ntable = 254", "254 is the main table"),
            ("[announce]\ntable = 0", "0 is not a table"),
            ("[announce]\ntable = 4200\nprotocol = 12", "BIRD's"),
            ("[announce]\ntable = 4200\nprotocol = 2", "reserved by the kernel"),
            ("[announce]\ntable = 4200\nprotocol = 300", "invalid value"),
            ("[announce]\ntable = 4200\nmetric = 1", "unknown field `metric`"),
            ("[maglev]\nseed = -1", "invalid value"),
            ("[maglev]\nseeds = 1", "unknown field `seeds`"),
            ("[[vip]]\naddr = \"0.0.0.0:80/tcp\"", "unspecified address"),
            ("[[vip]]\naddr = \"[::]:80/tcp\"", "unspecified address"),
            ("[[vip]]\naddr = \"224.0.0.5:80/udp\"", "multicast address"),
            ("[[vip]]\naddr = \"[ff02::1]:80/udp\"", "multicast address"),
            ("[[vip]]\naddr = \"255.255.255.255:80/udp\"", "broadcast address"),
            ("[[vip]]\naddr = \"127.0.0.1:80/tcp\"", "loopback address"),
            ("[[vip]]\naddr = \"[::1]:80/tcp\"", "loopback address"),
            ("[[vip]]\naddr = \"169.254.1.1:80/tcp\"", "link-local address"),
            ("[[vip]]\naddr = \"[fe80::1]:80/tcp\"", "link-local address"),
            ("[[vip]]\naddr = \"10.0.0.1:80/tcp\"\n[[vip.backend]]\naddr = \"10.0.0.1\"", "the VIP's own address"),
            ("[[vip]]\naddr = \"10.0.0.1:80/tcp\"\n[[vip.backend]]\naddr = \"0.0.0.0\"", "cannot be a backend"),
            ("[[vip]]\naddr = \"10.0.0.1:80/tcp\"\n[[vip.backend]]\naddr = \"239.1.1.1\"", "multicast address"),
        ];
        for (text, want) in cases {
            let err = Config::from_toml(text)
                .and_then(|c| c.validate())
                .unwrap_err();
            assert!(
                err.contains(want),
                "config {text:?}: error {err:?} does not mention {want:?}"
            );
        }
    }

    /// Two L3 VIPs, `a` then `b`, each with one backend (`ADDR` or `ADDR:PORT`).
    fn two_l3_vips(a: (&str, &str), b: (&str, &str)) -> Result<(), String> {
        let vip = |(addr, backend): (&str, &str)| {
            let (ip, port) = match backend.split_once(':') {
                Some((ip, port)) => (ip, format!("port = {port}\n")),
                None => (backend, String::new()),
            };
            format!("[[vip]]\naddr = \"{addr}\"\nmode = \"l3\"\n[[vip.backend]]\naddr = \"{ip}\"\n{port}")
        };
        Config::from_toml(&format!("{}{}", vip(a), vip(b)))?.validate()
    }

    #[test]
    fn an_all_ports_l3_vip_owns_every_port_of_its_backends() {
        let all = ("10.0.0.1:*/tcp", "10.0.1.1");
        for other in [
            ("10.0.0.2:80/tcp", "10.0.1.1"),
            ("10.0.0.2:80/tcp", "10.0.1.1:8080"),
            ("10.0.0.2:*/tcp", "10.0.1.1"),
        ] {
            for (first, second) in [(all, other), (other, all)] {
                let err = two_l3_vips(first, second).unwrap_err();
                // One sentence naming both VIPs and the backend.
                for name in [first.0, second.0, "backend 10.0.1.1 "] {
                    assert!(err.contains(name), "{err:?} does not name {name}");
                }
                assert!(err.contains("serves all ports"), "{err}");
                assert_eq!(err.matches(". ").count(), 0, "one sentence: {err}");
            }
        }
        // Another protocol or another backend address does not share its replies.
        two_l3_vips(all, ("10.0.0.2:80/udp", "10.0.1.1")).unwrap();
        two_l3_vips(all, ("10.0.0.2:80/tcp", "10.0.1.2")).unwrap();
        // Nor does an L2 VIP (its backends answer clients directly).
        Config::from_toml(
            "[[vip]]\naddr = \"10.0.0.1:*/tcp\"\nmode = \"l3\"\n[[vip.backend]]\naddr = \"10.0.1.1\"\n[[vip]]\naddr = \"10.0.0.2:80/tcp\"\n[[vip.backend]]\naddr = \"10.0.1.1\"",
        )
        .unwrap()
        .validate()
        .unwrap();
    }

    #[test]
    fn l3_vips_may_share_a_backend_on_different_ports() {
        two_l3_vips(
            ("10.0.0.1:80/tcp", "10.0.1.1"),
            ("10.0.0.2:80/tcp", "10.0.1.1:8080"),
        )
        .unwrap();
        let err = two_l3_vips(
            ("10.0.0.1:443/tcp", "10.0.1.1:8080"),
            ("10.0.0.2:8080/tcp", "10.0.1.1"),
        )
        .unwrap_err();
        assert_eq!(
            err,
            "backend 10.0.1.1 cannot serve both L3 VIPs 10.0.0.1:443/tcp and 10.0.0.2:8080/tcp: both send to its port 8080, so their replies could not be told apart"
        );
    }
}
