//! ICMP errors and path MTU through L3 (NAT) VIPs, with real traffic (needs root;
//! lb_tests::pmtu has the topologies). Each scenario runs over IPv4 and IPv6 with the real
//! daemon on both LB interfaces, and once more with nftables DNAT in its place: that oracle
//! proves the topology and the checks, so a failure through xdplb is xdplb's.
//!
//! - A router hop (MTU 1400) between the client and the LB: 1 MiB downloads complete only if
//!   the router's "too big", sent to the VIP about a reply, reaches the backend translated
//!   (RFC 5508); uploads complete through the client's own path MTU discovery.
//! - The LB's routes carry an MTU of 1400 (the links stay at 1500): client and backends learn
//!   it only if the LB answers packets too big for its egress with "fragmentation needed" /
//!   "packet too big", to the client from the VIP and to the backend. The routes say
//!   `mtu lock 1400`: the FIB lookup an XDP program gets sees only a locked route MTU.
//! - UDP to a port no backend listens on: the backend's "port unreachable" reaches the client as
//!   from the VIP, quoting client -> VIP, so a connected socket reports ECONNREFUSED; the
//!   client never sees a backend's address, outside or inside an ICMP error.

use std::{net::SocketAddr, time::Duration};

use lb_tests::{
    capture::Capture,
    netns::Netns,
    peers::{serve_all, udp_refused, Server},
    pmtu::{
        forget_path_mtus, l3_namespaces, learned_mtu, limit_lb_routes, transfers, wait_for_dad,
        Balancer, Family, Lb, RouteMtu, RouterHop, Service, Transfer, SMALL_MTU,
    },
    topology::{Host, L3Topology},
};

const MIB: usize = 1 << 20;
/// Transfers of each kind per family: several connections, so most backends serve one.
const TRANSFERS: usize = 4;
const UDP_ATTEMPTS: u16 = 20;
/// How long the client waits for all its "port unreachable" errors: milliseconds, once IPv6
/// addresses are no longer tentative (pmtu::wait_for_dad).
const UDP_WAIT: Duration = Duration::from_secs(2);

/// The web VIP: port 80 rewritten to the backends' 8080.
fn web(family: Family) -> Service {
    Service {
        vip: SocketAddr::new(family.vip(), 80),
        proto: "tcp",
        backend_port: 8080,
    }
}

fn serve_web(topo: &L3Topology) -> Vec<Server> {
    serve_all(topo.backends.iter().map(|b| &b.ns), 8080, &[]).expect("web servers")
}

/// IPv6 traffic waits for duplicate address detection to end (pmtu::wait_for_dad); IPv4 need
/// not.
fn settle(family: Family, namespaces: &[&Netns]) {
    if family == Family::V6 {
        wait_for_dad(namespaces).expect("IPv6 addresses usable");
    }
}

/// The data path's counters, for a failure message (nothing for the nftables oracle).
fn counters(lb: &Lb) -> String {
    let Some(d) = lb.daemon() else {
        return String::new();
    };
    match d.json(&["stats"]) {
        Ok(s) => format!("\nverdicts: {}\nevents: {}", s["verdicts"], s["events"]),
        Err(e) => format!("\n(no stats: {e:#})"),
    }
}

/// Who must tell the senders that their packets are too big.
struct Tellers {
    backends: &'static str,
    client: &'static str,
}

/// Downloads, then uploads, through the web VIP from `client`; each direction must have taught
/// the small MTU to its sender: the backends that served a download learned it towards the
/// client, the client towards the VIP.
fn transfer_both_ways(lb: &Lb, topo: &L3Topology, client: &Host, family: Family, told: Tellers) {
    let vip = web(family).vip;
    let to_client = family.addr(client);
    let down = transfers(&client.ns, vip, Transfer::Download, TRANSFERS, MIB);
    // Read now: the uploads need them forgotten.
    let learned: Vec<(String, Option<u32>)> = topo
        .backends
        .iter()
        .map(|b| (b.ns.name.clone(), learned_mtu(&b.ns, to_client).unwrap()))
        .collect();
    for b in &topo.backends {
        forget_path_mtus(&b.ns, to_client).unwrap();
    }
    let up = transfers(&client.ns, vip, Transfer::Upload, TRANSFERS, MIB);
    let served = match (down, up) {
        (Ok(served), Ok(_)) => served,
        (d, u) => panic!(
            "downloads: {}\nuploads: {}{}",
            outcome(&d),
            outcome(&u),
            counters(lb)
        ),
    };
    // Every backend that served a download learned the small MTU towards the client: with the
    // MSS of a 1500-byte MTU and no MTU probing, a download completes no other way.
    for (i, (name, mtu)) in learned.iter().enumerate() {
        if served.contains(&format!("b{}", i + 1)) {
            assert_eq!(
                *mtu,
                Some(SMALL_MTU),
                "{name} towards {to_client}: {} should have told it{}",
                told.backends,
                counters(lb)
            );
        }
    }
    let mtu = learned_mtu(&client.ns, vip.ip()).unwrap();
    assert_eq!(
        mtu,
        Some(SMALL_MTU),
        "{} towards {vip}: {} should have told it{}",
        client.ns.name,
        told.client,
        counters(lb)
    );
}

fn outcome(r: &anyhow::Result<Vec<String>>) -> String {
    match r {
        Ok(served) => format!("complete, served by {served:?}"),
        Err(e) => format!("{e:#}"),
    }
}

fn router_hop(family: Family, how: Balancer) {
    let hop = RouterHop::new(3).expect("router-hop topology");
    let lb = Lb::start(&hop.l3, how, &[web(family)]).expect("balancer");
    let _servers = serve_web(&hop.l3);
    settle(family, &hop.namespaces());
    // r2's "too big" about the downloads goes to the VIP: the balancer must pass it on to the
    // backend. r1 tells the client about the uploads itself.
    let told = Tellers {
        backends: "r2, through the balancer",
        client: "r1",
    };
    transfer_both_ways(&lb, &hop.l3, &hop.client, family, told);
    if how == Balancer::Xdplb {
        let n = lb.counter("events", "icmp_error_to_backend").unwrap();
        assert!(n > 0, "icmp_error_to_backend {n}{}", counters(&lb));
    }
}

fn lb_route_mtu(family: Family, how: Balancer, route: RouteMtu) {
    let topo = L3Topology::new(3).expect("L3 topology");
    limit_lb_routes(&topo, SMALL_MTU, route).expect("routes with an MTU");
    let lb = Lb::start(&topo, how, &[web(family)]).expect("balancer");
    let _servers = serve_web(&topo);
    settle(family, &l3_namespaces(&topo));
    // The LB itself tells the backends (downloads) and the client (uploads). Were it to forward
    // full-size packets, they would arrive (the links are 1500), and nobody would learn.
    let told = Tellers {
        backends: "the LB",
        client: "the LB (as the VIP)",
    };
    transfer_both_ways(&lb, &topo, &topo.client, family, told);
    if how == Balancer::Xdplb {
        let n = lb.counter("verdicts", "tx_icmp_too_big").unwrap();
        assert!(n > 0, "tx_icmp_too_big {n}{}", counters(&lb));
    }
}

fn port_unreachable(family: Family, how: Balancer) {
    let topo = L3Topology::new(3).expect("L3 topology");
    // Every datagram gets its "port unreachable": the backends' ICMP rate limits (one error per
    // second per peer after a burst) are not what this test measures.
    for b in &topo.backends {
        for kv in ["net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0"] {
            b.ns.exec(&["sysctl", "-qw", kv]).unwrap();
        }
    }
    // Port 7000 rewritten to 7001, where no backend listens: the quoted port must be
    // translated back as well as the address, or no socket matches.
    let closed = Service {
        vip: SocketAddr::new(family.vip(), 7000),
        proto: "udp",
        backend_port: 7001,
    };
    let lb = Lb::start(&topo, how, &[closed]).expect("balancer");
    settle(family, &l3_namespaces(&topo));
    let capture = Capture::start(&topo.client.ns, "eth0").unwrap();
    let ports = 36000..36000 + UDP_ATTEMPTS;
    let refused = topo
        .client
        .ns
        .run(|| udp_refused(closed.vip, ports.clone(), UDP_WAIT))
        .unwrap()
        .unwrap();
    let seen = capture.finish_all().unwrap();
    let silent: Vec<u16> = ports
        .zip(&refused)
        .filter(|(_, r)| !**r)
        .map(|(p, _)| p)
        .collect();
    assert!(
        silent.is_empty(),
        "no ECONNREFUSED through {} for {} of {UDP_ATTEMPTS} source ports ({silent:?})\nquoted \
         in ICMP errors the client received: {:?}\nsources: {:?}{}",
        closed.vip,
        silent.len(),
        seen.quoted,
        seen.sources,
        counters(&lb)
    );
    for b in &topo.backends {
        for addr in [b.ip4, b.ip6] {
            assert!(
                !seen.sources.contains_key(&addr),
                "the client received packets from backend {addr}: {:?}",
                seen.sources
            );
            assert!(
                !seen.quoted.keys().any(|q| q.ip() == addr),
                "the client received an ICMP error quoting backend {addr}: {:?}",
                seen.quoted
            );
        }
    }
    // Each refusal was one error quoting client -> VIP:7000.
    let quoting_vip = seen.quoted.get(&closed.vip).copied().unwrap_or(0);
    assert!(
        quoting_vip >= u64::from(UDP_ATTEMPTS),
        "{quoting_vip} ICMP errors quoted {}: {:?}",
        closed.vip,
        seen.quoted
    );
    if how == Balancer::Xdplb {
        let n = lb.counter("events", "icmp_error_to_client").unwrap();
        assert!(
            n >= u64::from(UDP_ATTEMPTS),
            "icmp_error_to_client {n}{}",
            counters(&lb)
        );
    }
}

#[test]
fn router_hop_pmtu_v4() {
    router_hop(Family::V4, Balancer::Xdplb);
}

#[test]
fn router_hop_pmtu_v6() {
    router_hop(Family::V6, Balancer::Xdplb);
}

/// `mtu lock 1400`: a route MTU bpf_fib_lookup reports. A plain `mtu 1400` it does not (it
/// reports the device's; the kernel's own forwarding honours both): docs/deploy-l3.md says
/// to lock route MTUs the LB must see.
#[test]
fn lb_route_mtu_locked_v4() {
    lb_route_mtu(Family::V4, Balancer::Xdplb, RouteMtu::Locked);
}

#[test]
fn lb_route_mtu_locked_v6() {
    lb_route_mtu(Family::V6, Balancer::Xdplb, RouteMtu::Locked);
}

#[test]
fn udp_port_unreachable_v4() {
    port_unreachable(Family::V4, Balancer::Xdplb);
}

#[test]
fn udp_port_unreachable_v6() {
    port_unreachable(Family::V6, Balancer::Xdplb);
}

/// The oracle: the same scenarios with nftables DNAT and the kernel's conntrack, which
/// translates ICMP errors and answers "too big" itself.
#[test]
fn nftables_oracle() {
    for family in [Family::V4, Family::V6] {
        router_hop(family, Balancer::Nftables);
        port_unreachable(family, Balancer::Nftables);
    }
    // IPv4 only: the kernel's own IPv6 "packet too big" about a DNATed reply (backend ->
    // client) is dropped on the way out (Ip6OutNoRoutes; Linux 6.18), so IPv6 downloads hang
    // through nftables; without the DNAT, the same forwarding answers as it should.
    for route in [RouteMtu::Plain, RouteMtu::Locked] {
        lb_route_mtu(Family::V4, Balancer::Nftables, route);
    }
}
