//! A namespace where `bpf_fib_lookup` answers, for L3 fixtures and benchmarks: a client-side
//! veth `c0` (10.1.0.254/24, fd01::fe/64) and a backend-side veth `b0` (10.2.0.254/24,
//! fd02::fe/64), an extra veth `x0` (10.3.0.254/24) that the tests never register with xdplb,
//! forwarding on, and permanent neighbour entries for the client (10.1.0.1,
//! fd01::1: `CLIENT_MAC`) and backends 1 and 2 (10.2.0.N, fd02::N: `be_mac(N)`).

use lb_userspace::model::{BackendTarget, Mac};

use crate::{
    netns::{unique_prefix, Netns},
    packet::{CLIENT_MAC, LB_MAC},
};

/// The MAC the FIB namespace gives backend `i`.
pub fn be_mac(i: u8) -> Mac {
    Mac([0x02, 0xbe, 0, 0, 0, i])
}

/// Backends at these addresses, the n-th (from 1) at `be_mac(n)`, weight 1, no port.
pub fn backends(addrs: &[&str]) -> Vec<BackendTarget> {
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| BackendTarget {
            addr: a.parse().expect("backend address"),
            weight: 1,
            mac: be_mac(i as u8 + 1),
            ifindex: 0,
            src_mac: Mac::default(),
            port: 0,
        })
        .collect()
}

/// The `xdp_md` context of a BPF_PROG_TEST_RUN call: a frame of `len` bytes received on
/// `ifindex` (data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex).
pub fn xdp_md(ifindex: u32, len: usize) -> Vec<u8> {
    [0, len as u32, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|w: &u32| w.to_ne_bytes())
        .collect()
}

/// The FIB namespace: c0 (client side, 10.1.0.254, fd01::fe) and b0 (backend side, 10.2.0.254,
/// fd02::fe), each a veth whose peer stays down-stream in the same namespace.
pub fn fib_namespace() -> Netns {
    let ns = Netns::new(&format!("{}-fib", unique_prefix())).unwrap();
    let x = |args: &[&str]| ns.exec(args).unwrap();
    let lb_mac = Mac(LB_MAC).to_string();
    for (dev, peer, v4, v6) in [
        ("c0", "c0p", "10.1.0.254/24", "fd01::fe/64"),
        ("b0", "b0p", "10.2.0.254/24", "fd02::fe/64"),
        // An interface the tests never register with xdplb.
        ("x0", "x0p", "10.3.0.254/24", "fd03::fe/64"),
    ] {
        // Every interface has the LB's MAC, so frames built with the default destination
        // (`LB_MAC`) are sent to this host (`pass_not_for_us` otherwise).
        x(&[
            "ip", "link", "add", dev, "address", &lb_mac, "type", "veth", "peer", "name", peer,
        ]);
        x(&["ip", "addr", "add", v4, "dev", dev]);
        x(&["ip", "addr", "add", v6, "dev", dev, "nodad"]);
        x(&["ip", "link", "set", dev, "up"]);
        x(&["ip", "link", "set", peer, "up"]);
    }
    x(&["sysctl", "-qw", "net.ipv4.conf.all.forwarding=1"]);
    x(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    let client = Mac(CLIENT_MAC);
    for (addr, dev, mac) in [
        ("10.1.0.1", "c0", client),
        ("fd01::1", "c0", client),
        ("10.2.0.1", "b0", be_mac(1)),
        ("10.2.0.2", "b0", be_mac(2)),
        ("fd02::1", "b0", be_mac(1)),
        ("fd02::2", "b0", be_mac(2)),
        ("10.3.0.1", "x0", be_mac(3)),
    ] {
        set_neighbour(&ns, addr, mac, dev);
    }
    ns
}

/// A permanent neighbour entry in `ns`: `addr` is at `mac` on `dev`.
pub fn set_neighbour(ns: &Netns, addr: &str, mac: Mac, dev: &str) {
    let mac = mac.to_string();
    let args = [
        "ip",
        "neigh",
        "replace",
        addr,
        "lladdr",
        &mac,
        "dev",
        dev,
        "nud",
        "permanent",
    ];
    ns.exec(&args).unwrap();
}
