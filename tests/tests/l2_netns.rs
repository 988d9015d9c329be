//! L2 (direct server return) end to end, in network namespaces with real TCP and UDP servers
//! (needs root). See lb_tests::topology for the layout.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use lb_common::stats;
use lb_tests::{
    netns::Netns,
    peers::{hold, serve_all, tcp_once, udp_once, Server},
    topology::{L2Topology, VIP4, VIP6},
};
use lb_userspace::{
    datapath::{DataPath, LoadOptions},
    mirror::Mirror,
    model::{BackendTarget, HashFields, Mode, Proto, VipAddr, VipSpec, VipState},
};

const PORT: u16 = 8080;
const CONNECTIONS: u16 = 300;

struct Setup {
    dp: DataPath,
    mirror: Mirror,
    desired: Vec<VipState>,
    _servers: Vec<Server>,
    topo: L2Topology,
}

impl Setup {
    /// Three backends with `weights`, one VIP per (family, protocol) on port 8080.
    fn new(weights: &[u32]) -> Setup {
        let topo = L2Topology::new(weights.len()).expect("build the L2 topology");
        let opts = LoadOptions::default();
        let mut dp = DataPath::load(&opts).expect("load xdplb (root? scripts/setup.sh?)");
        topo.attach(&mut dp)
            .expect("attach xdplb in the lb namespace");
        let mirror = Mirror::new(opts.ring_size, opts.max_vips, opts.max_backends);
        let servers = serve_all(
            topo.backends.iter().map(|h| &h.ns),
            PORT,
            &[VIP4.parse().unwrap(), VIP6.parse().unwrap()],
        )
        .unwrap();
        let mut desired = Vec::new();
        for ip in [VIP4, VIP6] {
            for proto in [Proto::Tcp, Proto::Udp] {
                let addr = VipAddr {
                    ip: ip.parse().unwrap(),
                    port: PORT,
                    proto,
                };
                let backends = topo
                    .backends
                    .iter()
                    .zip(weights)
                    .map(|(b, &weight)| BackendTarget {
                        addr: if addr.ip.is_ipv4() { b.ip4 } else { b.ip6 },
                        weight,
                        mac: b.mac,
                        ifindex: 0,
                        src_mac: Default::default(),
                        port: 0,
                    })
                    .collect();
                desired.push(VipState {
                    spec: VipSpec {
                        addr,
                        mode: Mode::L2,
                        hash: HashFields::FiveTuple,
                    },
                    backends,
                });
            }
        }
        let mut s = Setup {
            dp,
            mirror,
            desired,
            _servers: servers,
            topo,
        };
        s.apply();
        s
    }

    fn apply(&mut self) {
        self.mirror
            .sync(&mut self.dp.writer(), &self.desired)
            .expect("apply configuration");
    }

    fn vip(ip: &str, proto: Proto) -> VipAddr {
        VipAddr {
            ip: ip.parse().unwrap(),
            port: PORT,
            proto,
        }
    }

    fn client(&self) -> &Netns {
        &self.topo.client.ns
    }

    /// Per-backend share check against weights, within 10 percentage points.
    fn assert_shares(counts: &BTreeMap<String, u32>, weights: &[(&str, u32)], what: &str) {
        let total: u32 = counts.values().sum();
        let wsum: u32 = weights.iter().map(|(_, w)| w).sum();
        for &(name, w) in weights {
            let got = *counts.get(name).unwrap_or(&0) as f64 / total as f64 * 100.0;
            let want = w as f64 / wsum as f64 * 100.0;
            println!("{what}: {name} weight {w}: {got:.1}% (ideal {want:.1}%)");
            assert!(
                (got - want).abs() <= 10.0,
                "{what}: {name} got {got:.1}%, weighted share {want:.1}%; all: {counts:?}"
            );
        }
    }

    /// Kernel counters of the backends: segments (TCP) or datagrams (UDP) received.
    fn received(&self, vip: &VipAddr) -> Vec<u64> {
        let (section, field) = match (vip.proto, vip.ip.is_ipv4()) {
            (Proto::Tcp, _) => ("Tcp", "InSegs"),
            (Proto::Udp, true) => ("Udp", "InDatagrams"),
            (Proto::Udp, false) => ("Udp6", "InDatagrams"),
        };
        self.topo
            .backends
            .iter()
            .map(|b| b.ns.snmp(section, field).unwrap())
            .collect()
    }

    /// Sends `CONNECTIONS` flows from distinct source ports and checks shares and counters.
    fn balance(&mut self, ip: &str, proto: Proto, weights: &[u32]) {
        let vip = Self::vip(ip, proto);
        let target = SocketAddr::new(vip.ip, PORT);
        let before = self.received(&vip);
        let names: Vec<String> = self
            .client()
            .run(|| {
                (0..CONNECTIONS)
                    .map(|i| {
                        let sport = 30000 + i;
                        match proto {
                            Proto::Tcp => tcp_once(target, sport),
                            Proto::Udp => udp_once(target, sport),
                        }
                        .unwrap_or_else(|e| panic!("{vip} from port {sport}: {e:#}"))
                    })
                    .collect()
            })
            .unwrap();
        let mut counts = BTreeMap::new();
        for n in &names {
            *counts.entry(n.clone()).or_insert(0u32) += 1;
        }
        assert_eq!(
            counts.values().sum::<u32>(),
            CONNECTIONS as u32,
            "every flow succeeded"
        );
        let named: Vec<(String, u32)> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| (format!("b{}", i + 1), w))
            .collect();
        let named: Vec<(&str, u32)> = named.iter().map(|(n, w)| (n.as_str(), *w)).collect();
        Self::assert_shares(&counts, &named, &vip.to_string());

        // What the maps counted per backend equals what each backend's kernel received, and
        // the new-flow counters equal the flows each backend answered.
        // The last FIN/ACK of a connection may still be on its way when the client has its
        // answer: compare until both sides agree (or a deadline says they never will).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let counted = |s: &Self| -> Vec<(u64, u64)> {
            let after = s.received(&vip);
            s.topo
                .backends
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let addr: IpAddr = if vip.ip.is_ipv4() { b.ip4 } else { b.ip6 };
                    let id = s.mirror.backend_id(&vip, addr).unwrap();
                    (
                        s.dp.backend_counters(id).unwrap().packets,
                        after[i] - before[i],
                    )
                })
                .collect()
        };
        let mut pairs = counted(self);
        while pairs.iter().any(|(x, k)| x != k) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
            pairs = counted(self);
        }
        for (i, b) in self.topo.backends.iter().enumerate() {
            let addr: IpAddr = if vip.ip.is_ipv4() { b.ip4 } else { b.ip6 };
            let c = self
                .dp
                .backend_counters(self.mirror.backend_id(&vip, addr).unwrap())
                .unwrap();
            let name = format!("b{}", i + 1);
            assert_eq!(
                pairs[i].0, pairs[i].1,
                "{vip} {name}: packets counted by xdplb vs received by the backend"
            );
            if proto == Proto::Tcp {
                assert_eq!(
                    c.new_flows,
                    *counts.get(&name).unwrap_or(&0) as u64,
                    "{vip} {name}: new flows vs connections answered"
                );
            }
        }
    }
}

#[test]
fn l2_tcp_ipv4_equal_weights() {
    let mut s = Setup::new(&[1, 1, 1]);
    s.balance(VIP4, Proto::Tcp, &[1, 1, 1]);
    let st = s.dp.stats().unwrap();
    assert!(st[stats::TX as usize] > 0 && st[stats::DROP_NO_BACKEND as usize] == 0);
}

#[test]
fn l2_tcp_ipv4_weighted_1_2_1() {
    let mut s = Setup::new(&[1, 2, 1]);
    s.balance(VIP4, Proto::Tcp, &[1, 2, 1]);
}

#[test]
fn l2_tcp_ipv6_and_udp_both_families() {
    let mut s = Setup::new(&[1, 1, 1]);
    s.balance(VIP6, Proto::Tcp, &[1, 1, 1]);
    s.balance(VIP4, Proto::Udp, &[1, 1, 1]);
    s.balance(VIP6, Proto::Udp, &[1, 1, 1]);
}

#[test]
fn l2_backend_removal_keeps_other_connections() {
    let mut s = Setup::new(&[1, 1, 1]);
    let target = SocketAddr::new(VIP4.parse().unwrap(), PORT);
    // Long-lived connections spread over the three backends.
    let mut held = s.client().run(|| hold(target, 60, 31000)).unwrap().unwrap();
    assert!(
        held.iter().any(|(_, n)| n == "b2"),
        "some connection landed on b2"
    );

    // Remove b2 from every VIP.
    let b2 = (s.topo.backends[1].ip4, s.topo.backends[1].ip6);
    for v in &mut s.desired {
        v.backends.retain(|b| b.addr != b2.0 && b.addr != b2.1);
    }
    s.apply();

    // Connections held to b1 and b3 keep working and stay where they were.
    let mut kept = 0;
    for (conn, name) in held.iter_mut().filter(|(_, n)| n != "b2") {
        assert_eq!(
            conn.ask().unwrap(),
            *name,
            "a held connection changed backend"
        );
        kept += 1;
    }
    assert!(
        kept >= 20,
        "enough held connections on the remaining backends ({kept})"
    );

    // New connections spread over the two that remain.
    let names: Vec<String> = s
        .client()
        .run(|| {
            (0..150)
                .map(|i| tcp_once(target, 32000 + i).unwrap())
                .collect()
        })
        .unwrap();
    let mut counts = BTreeMap::new();
    for n in names {
        *counts.entry(n).or_insert(0u32) += 1;
    }
    assert!(
        !counts.contains_key("b2"),
        "no new connection reaches the removed backend: {counts:?}"
    );
    Setup::assert_shares(&counts, &[("b1", 1), ("b3", 1)], "after removing b2");
}
