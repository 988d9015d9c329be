//! L3 (NAT) packet fixtures through BPF_PROG_TEST_RUN (needs root). They run inside a network
//! namespace set up for the FIB: a client-side and a backend-side veth with routes and
//! permanent neighbour entries, forwarding on. Each row's expected output is built from
//! scratch by the packet builder (its own checksum code), so every rewritten checksum is
//! verified independently, byte for byte.

use std::{collections::HashMap, net::IpAddr};

use lb_common::{maps as m, stats};
use lb_tests::{
    fib::{be_mac, fib_namespace, set_neighbour},
    packet::{with_macs, Packet, ACK, CLIENT_MAC, SYN},
    xdp::{test_run, vip, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
};
use lb_userspace::{
    datapath::{DataPath, LoadOptions},
    iface,
    mirror::Mirror,
    model::{flow_key, BackendTarget, Mac, Mode, VipAddr, VipState},
};

const WEB4: &str = "10.1.0.100:80/tcp";
const DNS4: &str = "10.1.0.100:53/udp";
const WEB6: &str = "[fd01::100]:80/tcp";
const DNS6: &str = "[fd01::100]:53/udp";
const NO_NEIGH: &str = "10.1.0.101:80/tcp";
const NO_ROUTE: &str = "10.1.0.102:80/tcp";
const L2_WEB: &str = "10.1.0.100:443/tcp";
const ELSEWHERE: &str = "10.1.0.103:80/tcp";
/// L2 VIPs whose backend is behind b0: with the egress MAC stored with the backend (here a
/// marker, so the output shows which was used), and without (looked up per packet).
const L2_VIA: &str = "10.1.0.104:80/tcp";
const L2_VIA_LOOKUP: &str = "10.1.0.105:80/tcp";
/// An IPv6 L2 VIP whose backend is behind b0 (the VLAN rows need both families).
const L2_VIA6: &str = "[fd01::107]:80/tcp";
const STORED_MAC: Mac = Mac([0x02, 0x5c, 0, 0, 0, 1]);
/// An all-ports L3 VIP: its flows are always recorded (only their entry matches replies).
const ANY4: &str = "10.1.0.106:*/tcp";
/// The egress MTU of the FIB namespace's interfaces.
const MTU: u16 = 1500;
/// Bytes of the offending packet a generated "too big" quotes (lb-ebpf's too_big::QUOTE).
const QUOTE: usize = 256;

fn backend(addr: &str, port: u16) -> BackendTarget {
    BackendTarget {
        addr: addr.parse().unwrap(),
        weight: 1,
        mac: Mac::default(),
        ifindex: 0,
        src_mac: Mac::default(),
        port,
    }
}

struct Fix {
    dp: DataPath,
    mirror: Mirror,
    desired: Vec<VipState>,
    ifindex: HashMap<&'static str, u32>,
    mac: HashMap<&'static str, Mac>,
    counted: HashMap<u32, u64>,
}

impl Fix {
    fn run(&mut self, ingress: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        test_run(
            self.dp.program().unwrap(),
            frame,
            Some(self.ifindex[ingress]),
        )
    }

    /// Sends `input` in on `ingress` and checks verdict, reason and exact output.
    fn check(
        &mut self,
        what: &str,
        ingress: &str,
        input: &[u8],
        action: u32,
        reason: u32,
        want: &[u8],
    ) {
        let (got, out) = self.run(ingress, input);
        assert_eq!(got, action, "{what}: verdict");
        assert_eq!(out, want, "{what}: output bytes");
        *self.counted.entry(reason).or_default() += 1;
        let n = self.dp.stats().unwrap()[reason as usize];
        assert_eq!(
            n,
            self.counted[&reason],
            "{what}: counter {}",
            stats::name(reason).unwrap()
        );
    }

    /// A row forwarded out of another interface (XDP_REDIRECT) as exactly `want`.
    fn redirect(&mut self, what: &str, ingress: &str, input: &[u8], want: &[u8]) {
        self.check(what, ingress, input, XDP_REDIRECT, stats::REDIRECT, want);
    }

    /// A client's packet (with DF) larger than the egress MTU, from c0: answered from the VIP
    /// with "fragmentation needed" / "packet too big", sent back out.
    fn too_big(&mut self, what: &str, packet: Packet) {
        let input = oversized(packet).frag(DF);
        let want = too_big_answer(&input, &input.dst.to_string());
        let input = input.build();
        self.check(what, "c0", &input, XDP_TX, stats::TX_ICMP_TOO_BIG, &want);
    }

    /// The data path's count of `event`.
    fn event(&self, event: u32) -> u64 {
        self.dp.stats().unwrap()[event as usize]
    }

    fn ring(&self, vip: &str, src: &str, sport: u16, dport: u16) -> IpAddr {
        let v: VipAddr = vip.parse().unwrap();
        self.mirror
            .ring_choice(&v, &flow_key(src.parse().unwrap(), sport, &v, dport))
            .unwrap()
    }

    fn port_of(&self, vip: &str, backend: IpAddr) -> u16 {
        let v: VipAddr = vip.parse().unwrap();
        let b = self
            .desired
            .iter()
            .find(|s| s.spec.addr == v)
            .unwrap()
            .backends
            .iter()
            .find(|b| b.addr == backend)
            .unwrap();
        if b.port == 0 {
            v.port
        } else {
            b.port
        }
    }
}

/// `Packet::tcp` or `Packet::udp`.
type MakePacket = fn(&str, u16, &str, u16) -> Packet;

/// IPv4 "don't fragment".
const DF: u16 = 0x4000;

/// `packet` with a payload larger than the egress MTU.
fn oversized(packet: Packet) -> Packet {
    Packet {
        payload: vec![7; 1600],
        ..packet
    }
}

/// The ICMP error the data path makes of `input` (too big for the egress): from `from` to the
/// sender, quoting the first `QUOTE` bytes of its IP packet, sent back to the frame's sender.
/// Built from scratch here (IPv4 identification 0, TTL 64), checksums by the packet builder.
fn too_big_answer(input: &Packet, from: &str) -> Vec<u8> {
    let quote = input.ip_bytes()[..QUOTE].to_vec();
    Packet {
        dst_mac: input.src_mac,
        src_mac: input.dst_mac,
        id: 0,
        ..Packet::icmp_too_big(from, &input.src.to_string(), MTU, quote)
    }
    .build()
}

fn neighbour_mac(addr: IpAddr) -> [u8; 6] {
    let last = match addr {
        IpAddr::V4(a) => a.octets()[3],
        IpAddr::V6(a) => a.octets()[15],
    };
    be_mac(last).0
}

#[test]
fn l3_nat_fixtures() {
    let ns = fib_namespace();
    ns.run(|| {
        let opts = LoadOptions::default();
        let mut dp = DataPath::load(&opts).expect("load xdplb (root?)");
        // The all-ports VIP's backend.
        set_neighbour(&ns, "10.2.0.4", be_mac(4), "b0");
        let mut ifindex = HashMap::new();
        let mut mac = HashMap::new();
        for dev in ["c0", "b0"] {
            ifindex.insert(dev, dp.register_egress(dev).unwrap().0);
            mac.insert(dev, iface::mac(dev).unwrap());
        }
        let via_b0 = |addr, src_mac| BackendTarget {
            mac: be_mac(8),
            ifindex: ifindex["b0"],
            src_mac,
            ..backend(addr, 0)
        };
        let desired = vec![
            vip(L2_VIA, Mode::L2, vec![via_b0("10.2.0.8", STORED_MAC)]),
            vip(
                L2_VIA_LOOKUP,
                Mode::L2,
                vec![via_b0("10.2.0.8", Mac::default())],
            ),
            vip(L2_VIA6, Mode::L2, vec![via_b0("fd02::8", STORED_MAC)]),
            vip(
                WEB4,
                Mode::L3,
                vec![backend("10.2.0.1", 8080), backend("10.2.0.2", 0)],
            ),
            vip(DNS4, Mode::L3, vec![backend("10.2.0.1", 0)]),
            vip(
                WEB6,
                Mode::L3,
                vec![backend("fd02::1", 8080), backend("fd02::2", 0)],
            ),
            vip(DNS6, Mode::L3, vec![backend("fd02::2", 5353)]),
            vip(NO_NEIGH, Mode::L3, vec![backend("10.2.0.3", 0)]),
            vip(ANY4, Mode::L3, vec![backend("10.2.0.4", 0)]),
            vip(NO_ROUTE, Mode::L3, vec![backend("10.9.9.9", 0)]),
            vip(ELSEWHERE, Mode::L3, vec![backend("10.3.0.1", 0)]),
            vip(
                L2_WEB,
                Mode::L2,
                vec![BackendTarget {
                    mac: be_mac(7),
                    ..backend("10.2.0.7", 0)
                }],
            ),
        ];
        let mut mirror = Mirror::new(opts.ring_size, opts.max_vips, opts.max_backends);
        mirror.sync(&mut dp.writer(), &desired).unwrap();
        let mut f = Fix {
            dp,
            mirror,
            desired,
            ifindex,
            mac,
            counted: HashMap::new(),
        };
        let (c0, b0) = (f.mac["c0"].0, f.mac["b0"].0);

        // Forward and reply, per family and protocol, with and without port rewrite.
        let flows: [(&str, &str, &str, u16, MakePacket); 6] = [
            (WEB4, "10.1.0.1", "10.1.0.100", 80, Packet::tcp),
            (WEB4, "10.1.0.1", "10.1.0.100", 80, Packet::tcp),
            (DNS4, "10.1.0.1", "10.1.0.100", 53, Packet::udp),
            (WEB6, "fd01::1", "fd01::100", 80, Packet::tcp),
            (WEB6, "fd01::1", "fd01::100", 80, Packet::tcp),
            (DNS6, "fd01::1", "fd01::100", 53, Packet::udp),
        ];
        let by_ring = f.event(stats::EV_REPLY_BY_RING);
        for (i, (vip, client, vip_ip, vport, mk)) in flows.into_iter().enumerate() {
            // Several source ports so both backends (with and without a port) are seen.
            for sport in [
                40000 + i as u16 * 10,
                40001 + i as u16 * 10,
                40002 + i as u16 * 10,
            ] {
                let b = f.ring(vip, client, sport, vport);
                let bport = f.port_of(vip, b);
                let bs = b.to_string();
                let input = mk(client, sport, vip_ip, vport).build();
                let want = with_macs(
                    &Packet {
                        ttl: 63,
                        ..mk(client, sport, &bs, bport)
                    }
                    .build(),
                    neighbour_mac(b),
                    b0,
                );
                f.redirect(
                    &format!("{vip} from {client}:{sport} -> {bs}:{bport}"),
                    "c0",
                    &input,
                    &want,
                );
                // The flow's next packet hits the connection table: same output.
                f.redirect(&format!("{vip} again"), "c0", &input, &want);
                // The backend's reply comes back from the VIP.
                let reply = Packet {
                    dst_mac: b0,
                    src_mac: neighbour_mac(b),
                    ..mk(&bs, bport, client, sport)
                }
                .build();
                let want = with_macs(
                    &Packet {
                        ttl: 63,
                        ..mk(vip_ip, vport, client, sport)
                    }
                    .build(),
                    CLIENT_MAC,
                    c0,
                );
                f.redirect(
                    &format!("reply of {vip} from {bs}:{bport}"),
                    "b0",
                    &reply,
                    &want,
                );
                // Layout 2: an IPv4 flow is in XDPLB_CT4 (compact key), an IPv6 one in
                // XDPLB_CONNTRACK, each in one table, where its reply found it (below).
                let key = flow_key(client.parse().unwrap(), sport, &vip.parse().unwrap(), vport);
                let table = if vip_ip.contains(':') {
                    m::CONNTRACK
                } else {
                    m::CONNTRACK4
                };
                assert_eq!(
                    f.dp.tables_holding(&key).unwrap(),
                    [table],
                    "{vip} :{sport}"
                );
            }
        }
        assert_eq!(
            f.event(stats::EV_REPLY_BY_RING),
            by_ring,
            "every reply above was matched by its flow's entry, not vouched for by the ring"
        );

        // IPv4 UDP without a checksum stays without one.
        let b = f.ring(DNS4, "10.1.0.1", 41000, 53);
        let zero = |mut fr: Vec<u8>, at: usize| {
            fr[at..at + 2].fill(0);
            fr
        };
        let input = zero(
            Packet::udp("10.1.0.1", 41000, "10.1.0.100", 53).build(),
            14 + 20 + 6,
        );
        let want = with_macs(
            &zero(
                Packet {
                    ttl: 63,
                    ..Packet::udp("10.1.0.1", 41000, &b.to_string(), 53)
                }
                .build(),
                14 + 20 + 6,
            ),
            neighbour_mac(b),
            b0,
        );
        f.redirect("UDP checksum 0", "c0", &input, &want);

        // Frames for another host (a bridge flooding, promiscuous mode): neither translated nor
        // recorded, in either direction.
        let other = [2, 0, 0, 0, 0, 0x99];
        let input = Packet {
            dst_mac: other,
            ..Packet::tcp("10.1.0.1", 41020, "10.1.0.100", 80).flags(SYN)
        }
        .build();
        f.check(
            "client packet to another host's MAC",
            "c0",
            &input,
            XDP_PASS,
            stats::PASS_NOT_FOR_US,
            &input.clone(),
        );
        let key = flow_key(
            "10.1.0.1".parse().unwrap(),
            41020,
            &WEB4.parse().unwrap(),
            80,
        );
        assert_eq!(
            f.dp.conntrack(&key).unwrap(),
            None,
            "another host's SYN was recorded"
        );
        let reply = Packet {
            dst_mac: other,
            src_mac: neighbour_mac(b),
            ..Packet::udp(&b.to_string(), 53, "10.1.0.1", 41000)
        }
        .build();
        f.check(
            "reply to another host's MAC",
            "b0",
            &reply,
            XDP_PASS,
            stats::PASS_NOT_FOR_US,
            &reply.clone(),
        );

        // VLAN-tagged: not NATed (the tag would have to follow the egress), dropped: passed,
        // the kernel would route the VIP packet back where it came from.
        let input = Packet::tcp("10.1.0.1", 41001, "10.1.0.100", 80)
            .vlan(0x8100, 7)
            .build();
        f.check(
            "VLAN-tagged",
            "c0",
            &input,
            XDP_DROP,
            stats::DROP_L3_VLAN,
            &input.clone(),
        );
        // IPv6 Routing header or AH: rewriting the destination would break the transport
        // checksum (it covers the final destination) or the authentication: dropped.
        for (what, ext) in [("Routing header", 43), ("AH", 51)] {
            let input = Packet::tcp("fd01::1", 41014, "fd01::100", 80)
                .ext(ext, 6)
                .build();
            f.check(
                what,
                "c0",
                &input,
                XDP_DROP,
                stats::DROP_L3_IPV6_EXT,
                &input.clone(),
            );
        }

        // IPv4 options and IPv6 extension headers: the transport header is found after them.
        let b = f.ring(WEB4, "10.1.0.1", 41010, 80);
        let bport = f.port_of(WEB4, b);
        let opts = [0x94, 4, 0, 0];
        let input = Packet::tcp("10.1.0.1", 41010, "10.1.0.100", 80)
            .options(&opts)
            .build();
        let want = with_macs(
            &Packet {
                ttl: 63,
                ..Packet::tcp("10.1.0.1", 41010, &b.to_string(), bport).options(&opts)
            }
            .build(),
            neighbour_mac(b),
            b0,
        );
        f.redirect("IPv4 options", "c0", &input, &want);
        let b = f.ring(WEB6, "fd01::1", 41011, 80);
        let bport = f.port_of(WEB6, b);
        let input = Packet::tcp("fd01::1", 41011, "fd01::100", 80)
            .ext(60, 6)
            .build();
        let want = with_macs(
            &Packet {
                ttl: 63,
                ..Packet::tcp("fd01::1", 41011, &b.to_string(), bport).ext(60, 6)
            }
            .build(),
            neighbour_mac(b),
            b0,
        );
        f.redirect("IPv6 destination options", "c0", &input, &want);

        // Larger than the egress MTU: answered from the VIP (path MTU discovery).
        f.too_big(
            "too big for the egress",
            Packet::tcp("10.1.0.1", 41012, "10.1.0.100", 80),
        );

        // A route out of an interface xdplb is not attached to: rewritten, the kernel forwards.
        let input = Packet::tcp("10.1.0.1", 41013, "10.1.0.103", 80).build();
        let want = Packet::tcp("10.1.0.1", 41013, "10.3.0.1", 80).build();
        f.check(
            "egress not attached",
            "c0",
            &input,
            XDP_PASS,
            stats::PASS_NO_NEIGH,
            &want,
        );

        // TTL 1: passed unchanged, the kernel answers with time exceeded.
        let input = Packet {
            ttl: 1,
            ..Packet::tcp("10.1.0.1", 41002, "10.1.0.100", 80)
        }
        .build();
        f.check(
            "TTL 1",
            "c0",
            &input,
            XDP_PASS,
            stats::PASS_TTL,
            &input.clone(),
        );

        // No neighbour entry for the backend yet: rewritten (TTL left to the kernel) and passed.
        let input = Packet::tcp("10.1.0.1", 41003, "10.1.0.101", 80).build();
        let want = Packet::tcp("10.1.0.1", 41003, "10.2.0.3", 80).build();
        f.check(
            "no neighbour",
            "c0",
            &input,
            XDP_PASS,
            stats::PASS_NO_NEIGH,
            &want,
        );

        // No route to the backend: dropped (passed, the VIP packet could loop via the router).
        let input = Packet::tcp("10.1.0.1", 41004, "10.1.0.102", 80).build();
        f.check(
            "no route",
            "c0",
            &input,
            XDP_DROP,
            stats::DROP_NO_ROUTE,
            &input.clone(),
        );

        // A backend endpoint's packet to a client whose flow goes to another backend (by its
        // ring slot, no entry): not a reply of ours, passed untouched.
        let other = (1000..)
            .find(|p| f.ring(WEB4, "10.1.0.1", *p, 80).to_string() != "10.2.0.1")
            .unwrap();
        let input = Packet::tcp("10.2.0.1", 8080, "10.1.0.1", other).build();
        let unconfirmed = f.event(stats::EV_REPLY_UNCONFIRMED);
        f.check(
            "reply without a flow",
            "b0",
            &input,
            XDP_PASS,
            stats::PASS_NOT_VIP,
            &input.clone(),
        );
        assert_eq!(f.event(stats::EV_REPLY_UNCONFIRMED), unconfirmed + 1);

        // Truncated inside the TCP header: passed untouched.
        let mut input = Packet::tcp("10.1.0.1", 41005, "10.1.0.100", 80).build();
        input.truncate(14 + 20 + 10);
        f.check(
            "truncated",
            "c0",
            &input,
            XDP_PASS,
            stats::PASS_MALFORMED,
            &input.clone(),
        );

        // L2 and L3 VIPs served by the same program.
        // Addressed to c0, as a router would send it: the output's source is that address.
        let input = Packet {
            dst_mac: c0,
            ..Packet::tcp("10.1.0.1", 41006, "10.1.0.100", 443)
        }
        .build();
        let want = with_macs(&input, be_mac(7).0, c0);
        f.check(
            "L2 VIP beside L3 ones",
            "c0",
            &input,
            XDP_TX,
            stats::TX,
            &want,
        );

        // L2 backends behind another interface: redirected there, the source being the MAC
        // stored with the backend, else the interface's own.
        for (vip_ip, src) in [("10.1.0.104", STORED_MAC.0), ("10.1.0.105", b0)] {
            let input = Packet {
                dst_mac: c0,
                ..Packet::tcp("10.1.0.1", 41007, vip_ip, 80)
            }
            .build();
            f.redirect(
                &format!("L2 VIP {vip_ip} with its backend behind b0"),
                "c0",
                &input,
                &with_macs(&input, be_mac(8).0, src),
            );
        }

        // VLAN-tagged frames for those backends: the ingress VLAN means nothing behind b0, so
        // the tags (one, or two for QinQ) are removed; the expected frame is built untagged.
        // Back out of the interface they came in on, frames keep their tags.
        let tagged = |p: Packet, tags: &[(u16, u16)]| {
            tags.iter()
                .fold(p, |p, &(tpid, id)| p.vlan(tpid, id))
                .build()
        };
        let mut popped = 0;
        for (client, vip_ip) in [("10.1.0.1", "10.1.0.104"), ("fd01::1", "fd01::107")] {
            for (what, tags) in [
                ("one VLAN tag", &[(0x8100, 7)][..]),
                ("QinQ", &[(0x88a8, 20), (0x8100, 7)][..]),
            ] {
                let untagged = |dst_mac| Packet {
                    dst_mac,
                    ..Packet::tcp(client, 41008, vip_ip, 80)
                };
                let want = with_macs(&untagged(c0).build(), be_mac(8).0, STORED_MAC.0);
                let input = tagged(untagged(c0), tags);
                f.redirect(
                    &format!("{what}, L2 VIP {vip_ip} behind b0: tags removed"),
                    "c0",
                    &input,
                    &want,
                );
                popped += 1;
                let input = tagged(untagged(b0), tags);
                f.check(
                    &format!("{what}, L2 VIP {vip_ip} from b0, sent back out: tags kept"),
                    "b0",
                    &input,
                    XDP_TX,
                    stats::TX,
                    &with_macs(&input, be_mac(8).0, b0),
                );
            }
        }
        assert_eq!(f.event(stats::EV_VLAN_POPPED), popped, "vlan_popped");

        // Known flows reuse their next hop (no FIB lookup) for about a second: a neighbour
        // change reaches them after that, and the MTU still applies to every packet.
        let (sport, vport) = (41100, 80);
        let b = f.ring(WEB4, "10.1.0.1", sport, vport);
        let (bs, bport) = (b.to_string(), f.port_of(WEB4, b));
        // The connection's first packet is a SYN (recorded afresh, no cache); then ACKs.
        let input = |flags| {
            Packet::tcp("10.1.0.1", sport, "10.1.0.100", vport)
                .flags(flags)
                .build()
        };
        let out = |mac: [u8; 6], flags| {
            let p = Packet {
                ttl: 63,
                ..Packet::tcp("10.1.0.1", sport, &bs, bport).flags(flags)
            };
            with_macs(&p.build(), mac, b0)
        };
        let reply = Packet {
            dst_mac: b0,
            src_mac: neighbour_mac(b),
            ..Packet::tcp(&bs, bport, "10.1.0.1", sport)
        }
        .build();
        let back = |mac: [u8; 6]| {
            let p = Packet {
                ttl: 63,
                ..Packet::tcp("10.1.0.100", vport, "10.1.0.1", sport)
            };
            with_macs(&p.build(), mac, c0)
        };
        // New flow, then the first hits (which fill the caches).
        for (what, flags) in [
            ("cache: new flow", SYN),
            ("cache: first hit", ACK),
            ("cache: cached", ACK),
        ] {
            f.redirect(what, "c0", &input(flags), &out(neighbour_mac(b), flags));
        }
        for what in ["cache: reply", "cache: cached reply"] {
            f.redirect(what, "b0", &reply, &back(CLIENT_MAC));
        }
        f.too_big(
            "cache: too big",
            Packet::tcp("10.1.0.1", sport, "10.1.0.100", vport).flags(ACK),
        );
        let (moved_b, moved_c) = ([0x02, 0xbe, 0, 0, 0, 0x99], [0x02, 0xc1, 0, 0, 0, 0x99]);
        let neigh = |addr: &str, mac: [u8; 6], dev: &str| set_neighbour(&ns, addr, Mac(mac), dev);
        neigh(&bs, moved_b, "b0");
        neigh("10.1.0.1", moved_c, "c0");
        f.redirect(
            "cache: still cached",
            "c0",
            &input(ACK),
            &out(neighbour_mac(b), ACK),
        );
        // A new flow to the same backend starts with the backend's cached next hop (no FIB
        // lookup for a new flow while it is fresh), and so does the flow's own entry.
        let sport2 = (41101..)
            .find(|p| f.ring(WEB4, "10.1.0.1", *p, vport) == b)
            .unwrap();
        for (what, flags) in [
            ("cache: new flow, backend's hop", SYN),
            ("cache: its hit", ACK),
        ] {
            let p = Packet {
                ttl: 63,
                ..Packet::tcp("10.1.0.1", sport2, &bs, bport).flags(flags)
            };
            f.redirect(
                what,
                "c0",
                &Packet::tcp("10.1.0.1", sport2, "10.1.0.100", vport)
                    .flags(flags)
                    .build(),
                &with_macs(&p.build(), neighbour_mac(b), b0),
            );
        }
        f.redirect("cache: reply still cached", "b0", &reply, &back(CLIENT_MAC));
        std::thread::sleep(std::time::Duration::from_millis(1300));
        f.redirect("cache: expired", "c0", &input(ACK), &out(moved_b, ACK));
        f.redirect("cache: reply expired", "b0", &reply, &back(moved_c));
        neigh(&bs, neighbour_mac(b), "b0");
        neigh("10.1.0.1", CLIENT_MAC, "c0");

        // ---- One flow state: replies follow the connection table, else the ring. ----
        let mut replies = 18 + 4;
        // A reply whose flow has no entry (evicted, or placed during a flood) but whose ring
        // slot names its backend: translated, as the flow's next packet would go there.
        let by_ring = f.event(stats::EV_REPLY_BY_RING);
        let sport = (1000..)
            .find(|p| f.ring(WEB4, "10.1.0.1", *p, 80).to_string() == "10.2.0.1")
            .unwrap();
        let reply = Packet::tcp("10.2.0.1", 8080, "10.1.0.1", sport).flags(ACK);
        let back = Packet {
            ttl: 63,
            ..Packet::tcp("10.1.0.100", 80, "10.1.0.1", sport).flags(ACK)
        };
        f.redirect(
            "reply vouched for by the ring",
            "b0",
            &reply.build(),
            &with_macs(&back.build(), CLIENT_MAC, c0),
        );
        replies += 1;
        assert_eq!(f.event(stats::EV_REPLY_BY_RING), by_ring + 1);

        // Eviction: the flow's next packet is placed again (same ring slot, same backend) and
        // recorded afresh; its replies are translated all along.
        let (sport, vport) = (41200, 80);
        let b = f.ring(WEB4, "10.1.0.1", sport, vport);
        let (bs, bport) = (b.to_string(), f.port_of(WEB4, b));
        let fwd = |flags| Packet::tcp("10.1.0.1", sport, "10.1.0.100", vport).flags(flags);
        let fwd_out = |flags| {
            let p = Packet {
                ttl: 63,
                ..Packet::tcp("10.1.0.1", sport, &bs, bport).flags(flags)
            };
            with_macs(&p.build(), neighbour_mac(b), b0)
        };
        let key = flow_key(
            "10.1.0.1".parse().unwrap(),
            sport,
            &WEB4.parse().unwrap(),
            vport,
        );
        f.redirect(
            "evicted: first packet",
            "c0",
            &fwd(SYN).build(),
            &fwd_out(SYN),
        );
        assert!(f.dp.conntrack(&key).unwrap().is_some(), "recorded");
        f.dp.forget_flow(&key).unwrap();
        let misses = f.event(stats::EV_CT_MISS);
        f.redirect(
            "evicted: next packet",
            "c0",
            &fwd(ACK).build(),
            &fwd_out(ACK),
        );
        assert_eq!(f.event(stats::EV_CT_MISS), misses + 1, "placed again");
        assert!(f.dp.conntrack(&key).unwrap().is_some(), "recorded again");

        // A flood of new flows over the record limit: L3 flows are balanced by the ring alone
        // (no entry, so established flows keep theirs) and their replies still come back from
        // the VIP. An all-ports VIP's new flows are dropped instead (only an entry could match
        // their replies, and recording them would let the flood evict established flows); its
        // established flows go on.
        let any_in = |sport: u16, flags: u8| {
            Packet::tcp("10.1.0.1", sport, "10.1.0.106", 4444)
                .flags(flags)
                .build()
        };
        let any_out = |sport: u16, flags: u8| {
            let p = Packet {
                ttl: 63,
                ..Packet::tcp("10.1.0.1", sport, "10.2.0.4", 4444).flags(flags)
            };
            with_macs(&p.build(), neighbour_mac("10.2.0.4".parse().unwrap()), b0)
        };
        f.redirect(
            "all-ports VIP: a flow before the flood",
            "c0",
            &any_in(42009, SYN),
            &any_out(42009, SYN),
        );
        f.dp.set_record_limit(1).unwrap();
        let unrecorded = f.event(stats::EV_CT_UNRECORDED);
        for sport in 42000..42004u16 {
            let b = f.ring(DNS4, "10.1.0.1", sport, 53);
            let bs = b.to_string();
            let out = Packet {
                ttl: 63,
                ..Packet::udp("10.1.0.1", sport, &bs, 53)
            };
            f.redirect(
                "flood: new flow",
                "c0",
                &Packet::udp("10.1.0.1", sport, "10.1.0.100", 53).build(),
                &with_macs(&out.build(), neighbour_mac(b), b0),
            );
            let back = Packet {
                ttl: 63,
                ..Packet::udp("10.1.0.100", 53, "10.1.0.1", sport)
            };
            f.redirect(
                "flood: reply",
                "b0",
                &Packet::udp(&bs, 53, "10.1.0.1", sport).build(),
                &with_macs(&back.build(), CLIENT_MAC, c0),
            );
            replies += 1;
        }
        // At least the last three went over the limit of one per second.
        assert!(f.event(stats::EV_CT_UNRECORDED) >= unrecorded + 3);
        let flood_key = flow_key(
            "10.1.0.1".parse().unwrap(),
            42003,
            &DNS4.parse().unwrap(),
            53,
        );
        assert!(
            f.dp.conntrack(&flood_key).unwrap().is_none(),
            "not recorded"
        );
        let any = flow_key(
            "10.1.0.1".parse().unwrap(),
            42010,
            &ANY4.parse().unwrap(),
            4444,
        );
        let input = any_in(42010, SYN);
        f.check(
            "flood: a new all-ports flow, dropped",
            "c0",
            &input,
            XDP_DROP,
            stats::DROP_ALL_PORTS_FLOOD,
            &input.clone(),
        );
        assert!(
            f.dp.conntrack(&any).unwrap().is_none(),
            "all-ports: not recorded"
        );
        f.redirect(
            "flood: the established all-ports flow",
            "c0",
            &any_in(42009, ACK),
            &any_out(42009, ACK),
        );
        f.dp.set_record_limit(0).unwrap();

        // ---- ICMP errors, translated both ways (RFC 5508), every checksum rebuilt here. ----
        // About a reply, from a router on the client's side to the VIP: for the backend, with
        // the quoted source turned into the backend's address and port.
        // The whole packet quoted (as Linux does), or only its header and 8 bytes (RFC 792):
        // then the quoted TCP checksum is not there to update.
        for (vip, client, vip_ip, router, mk, short) in [
            (
                WEB4,
                "10.1.0.1",
                "10.1.0.100",
                "10.1.0.253",
                Packet::tcp as MakePacket,
                28,
            ),
            (WEB6, "fd01::1", "fd01::100", "fd01::fd", Packet::tcp, 48),
        ] {
            for quote_len in [None, Some(short)] {
                let sport = 43000;
                let b = f.ring(vip, client, sport, 80);
                let (bs, bport) = (b.to_string(), f.port_of(vip, b));
                let quoted = |src: &str, sport| {
                    let p = Packet {
                        ttl: 63,
                        ..mk(src, sport, client, 43000).flags(ACK)
                    };
                    let mut ip = p.ip_bytes();
                    ip.truncate(quote_len.unwrap_or(ip.len()));
                    ip
                };
                let input = Packet::icmp_too_big(router, vip_ip, 1400, quoted(vip_ip, 80));
                let want = Packet {
                    ttl: 63,
                    ..Packet::icmp_too_big(router, &bs, 1400, quoted(&bs, bport))
                };
                let to_backend = f.event(stats::EV_ICMP_TO_BACKEND);
                f.redirect(
                    &format!("too big about a reply of {vip}, quote {quote_len:?}"),
                    "c0",
                    &input.build(),
                    &with_macs(&want.build(), neighbour_mac(b), b0),
                );
                assert_eq!(f.event(stats::EV_ICMP_TO_BACKEND), to_backend + 1);
            }
        }
        // About a client's packet, from its backend ("port unreachable"): for the client, from
        // the VIP and quoting the VIP's address and port. From a router on the backend's side:
        // the outer source stays the router's.
        for (vip, client, vip_ip, vport, unreach) in [
            (DNS4, "10.1.0.1", "10.1.0.100", 53, (3u8, 3u8)),
            (DNS6, "fd01::1", "fd01::100", 53, (1, 4)),
        ] {
            let sport = 43100;
            let b = f.ring(vip, client, sport, vport);
            let (bs, bport) = (b.to_string(), f.port_of(vip, b));
            // The flow is recorded by its first packet.
            let out = Packet {
                ttl: 63,
                ..Packet::udp(client, sport, &bs, bport)
            };
            f.redirect(
                &format!("{vip}: flow for the error"),
                "c0",
                &Packet::udp(client, sport, vip_ip, vport).build(),
                &with_macs(&out.build(), neighbour_mac(b), b0),
            );
            let router = if vip == DNS4 {
                "10.2.0.253"
            } else {
                "fd02::fd"
            };
            for from in [bs.as_str(), router] {
                let quoted = |dst: &str, dport| {
                    Packet {
                        ttl: 63,
                        ..Packet::udp(client, sport, dst, dport)
                    }
                    .ip_bytes()
                };
                let (ty, code) = unreach;
                let input = Packet::icmp(from, client, ty, code, quoted(&bs, bport));
                let outer_src = if from == bs { vip_ip } else { router };
                let want = Packet {
                    ttl: 63,
                    ..Packet::icmp(outer_src, client, ty, code, quoted(vip_ip, vport))
                };
                let to_client = f.event(stats::EV_ICMP_TO_CLIENT);
                f.redirect(
                    &format!("unreachable from {from} about {vip}"),
                    "b0",
                    &input.build(),
                    &with_macs(&want.build(), CLIENT_MAC, c0),
                );
                assert_eq!(f.event(stats::EV_ICMP_TO_CLIENT), to_client + 1);
            }
        }
        // An error quoting a VIP flow but addressed to another host: not ours, passed unchanged.
        let foreign = f.event(stats::EV_ICMP_FOREIGN);
        let quoted = Packet::tcp("10.1.0.100", 80, "10.1.0.1", 43000).ip_bytes();
        let input = Packet::icmp_too_big("10.1.0.253", "10.1.0.200", 1400, quoted).build();
        f.check(
            "error sent elsewhere",
            "c0",
            &input,
            XDP_PASS,
            stats::PASS_NOT_VIP,
            &input.clone(),
        );
        assert_eq!(f.event(stats::EV_ICMP_FOREIGN), foreign + 1);

        // ---- Path MTU: "too big" generated both ways; IPv4 without DF fragmented. ----
        f.too_big(
            "IPv6 too big",
            Packet::tcp("fd01::1", 43200, "fd01::100", 80).flags(ACK),
        );
        // Without DF: rewritten and handed to the kernel, which fragments it.
        let b = f.ring(WEB4, "10.1.0.1", 43201, 80);
        let input = oversized(Packet::tcp("10.1.0.1", 43201, "10.1.0.100", 80).flags(ACK));
        let want = oversized(
            Packet::tcp("10.1.0.1", 43201, &b.to_string(), f.port_of(WEB4, b)).flags(ACK),
        );
        f.check(
            "too big without DF",
            "c0",
            &input.build(),
            XDP_PASS,
            stats::PASS_KERNEL_FRAGMENTS,
            &want.build(),
        );
        // A backend's reply too big towards the client: answered from the LB's own address on
        // the backend's side (b0's), quoting the reply as the backend sent it.
        let sport = 43300;
        let b = f.ring(WEB4, "10.1.0.1", sport, 80);
        let (bs, bport) = (b.to_string(), f.port_of(WEB4, b));
        f.redirect(
            "too big reply: its flow",
            "c0",
            &Packet::tcp("10.1.0.1", sport, "10.1.0.100", 80).build(),
            &with_macs(
                &Packet {
                    ttl: 63,
                    ..Packet::tcp("10.1.0.1", sport, &bs, bport)
                }
                .build(),
                neighbour_mac(b),
                b0,
            ),
        );
        let reply = Packet {
            dst_mac: b0,
            src_mac: neighbour_mac(b),
            ..oversized(Packet::tcp(&bs, bport, "10.1.0.1", sport).flags(ACK)).frag(DF)
        };
        f.check(
            "too big reply",
            "b0",
            &reply.build(),
            XDP_TX,
            stats::TX_ICMP_TOO_BIG,
            &too_big_answer(&reply, "10.2.0.254"),
        );

        // ---- A stale entry during a flood: the flow's backend was removed; its packets go
        // where the ring says (the entry is not rewritten over the limit), and so do its
        // replies, vouched for by the ring. ----
        let sport = (44000..)
            .find(|p| f.ring(WEB4, "10.1.0.1", *p, 80).to_string() == "10.2.0.2")
            .unwrap();
        let key = flow_key(
            "10.1.0.1".parse().unwrap(),
            sport,
            &WEB4.parse().unwrap(),
            80,
        );
        let web = |src: &str, sport: u16, dst: &str, dport: u16, flags: u8| {
            Packet::tcp(src, sport, dst, dport).flags(flags)
        };
        let routed = |p: Packet| Packet { ttl: 63, ..p }.build();
        f.redirect(
            "stale: the flow on 10.2.0.2",
            "c0",
            &web("10.1.0.1", sport, "10.1.0.100", 80, SYN).build(),
            &with_macs(
                &routed(web("10.1.0.1", sport, "10.2.0.2", 80, SYN)),
                neighbour_mac("10.2.0.2".parse().unwrap()),
                b0,
            ),
        );
        let web4: VipAddr = WEB4.parse().unwrap();
        f.desired
            .iter_mut()
            .find(|v| v.spec.addr == web4)
            .unwrap()
            .backends
            .retain(|b| b.addr.to_string() != "10.2.0.2");
        let desired = f.desired.clone();
        f.mirror.sync(&mut f.dp.writer(), &desired).unwrap();
        f.dp.set_record_limit(1).unwrap();
        // New flows use up this second's allowance of one.
        for p in 44100..44103u16 {
            let (action, _) = f.run("c0", &Packet::udp("10.1.0.1", p, "10.1.0.100", 53).build());
            assert_eq!(action, XDP_REDIRECT);
            *f.counted.entry(stats::REDIRECT).or_default() += 1;
        }
        f.redirect(
            "stale: the flow's next packet, placed again by the ring",
            "c0",
            &web("10.1.0.1", sport, "10.1.0.100", 80, ACK).build(),
            &with_macs(
                &routed(web("10.1.0.1", sport, "10.2.0.1", 8080, ACK)),
                neighbour_mac("10.2.0.1".parse().unwrap()),
                b0,
            ),
        );
        assert!(
            f.dp.conntrack(&key).unwrap().is_some(),
            "the stale entry stays (over the limit it is not rewritten)"
        );
        f.redirect(
            "stale: the new backend's reply, vouched for by the ring",
            "b0",
            &web("10.2.0.1", 8080, "10.1.0.1", sport, ACK).build(),
            &with_macs(
                &routed(web("10.1.0.100", 80, "10.1.0.1", sport, ACK)),
                CLIENT_MAC,
                c0,
            ),
        );
        replies += 1;
        f.dp.set_record_limit(0).unwrap();

        // ---- A removed VIP's replies are no longer translated. ----
        f.desired.retain(|v| v.spec.addr != DNS4.parse().unwrap());
        let desired = f.desired.clone();
        f.mirror.sync(&mut f.dp.writer(), &desired).unwrap();
        let input = Packet::udp("10.2.0.1", 53, "10.1.0.1", 42000).build();
        f.check(
            "reply of a removed VIP",
            "b0",
            &input,
            XDP_PASS,
            stats::PASS_NOT_VIP,
            &input.clone(),
        );

        // Every packet counted under exactly one reason; replies counted as NAT reverse events.
        let st = f.dp.stats().unwrap();
        let sent: u64 = f.counted.values().sum();
        assert_eq!(
            (0..stats::VERDICT_COUNT)
                .map(|i| st[i as usize])
                .sum::<u64>(),
            sent
        );
        assert_eq!(st[stats::EV_NAT_REVERSE as usize], replies);
    })
    .unwrap();
}
