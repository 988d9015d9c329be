//! The routes of the namespace the data path runs in, as the oracle needs them: what
//! `bpf_fib_lookup` answers for a destination.

use std::net::IpAddr;

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
    /// The answer for a packet from `src` to `dst`.
    pub fn route(&self, src: IpAddr, dst: IpAddr) -> Hop {
        // IPv6 never forwards multicast, link-local or loopback addresses, either side
        // (`bpf_fib_lookup` says "not forwarded").
        let strict = |a: IpAddr| match a {
            IpAddr::V6(a) => a.is_multicast() || a.is_unicast_link_local() || a.is_loopback(),
            IpAddr::V4(_) => false,
        };
        if strict(src) || strict(dst) {
            return Hop::Local;
        }
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
                    (u32::from(n) & mask == u32::from(d) & mask)
                        .then(|| (u32::from(d) & !mask) as u128)
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
                let last = if dst.is_ipv4() {
                    (1u128 << (32 - len)) - 1
                } else {
                    u128::MAX
                };
                return if h == 0 || h == last {
                    Hop::Unknown
                } else {
                    Hop::Kernel
                };
            }
        }
        match dst {
            IpAddr::V4(a) if a.is_private() => Hop::Local,
            _ => Hop::Unknown,
        }
    }
}
