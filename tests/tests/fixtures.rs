//! Data-driven packet fixtures through BPF_PROG_TEST_RUN (needs root): each step is a packet
//! with its expected verdict reason and exact output, or a control-plane change between
//! packets. Counters are checked against the table at the end.
//!
//! Every packet row carries the scapy line that builds the same frame.

use std::{collections::HashMap, net::IpAddr};

use lb_common::{maps as m, stats, TrafficCounters};
use lb_tests::{
    packet::{with_macs, Packet, ACK, CLIENT_MAC, ETH_ARP, L4, LB_MAC, SYN},
    xdp::{test_run, XDP_DROP, XDP_PASS, XDP_TX},
};
use lb_userspace::{
    datapath::{DataPath, LoadOptions},
    mirror::Mirror,
    model::{flow_key, BackendTarget, Mac, Mode, VipAddr, VipState},
};

/// BPF_PROG_TEST_RUN without a context runs as if received on loopback.
const TEST_IFINDEX: u32 = 1;

const V4_WEB: &str = "10.0.0.100:80/tcp";
const V4_UDP_ALL: &str = "10.0.0.100:*/udp";
const V6_WEB: &str = "[2001:db8::100]:443/tcp";
const V6_DNS: &str = "[2001:db8::100]:53/udp";
const V4_EMPTY: &str = "10.0.0.101:80/tcp";

fn backend(addr: &str, last: u8, weight: u32) -> BackendTarget {
    BackendTarget {
        addr: addr.parse().unwrap(),
        weight,
        mac: Mac([0x02, 0xbe, 0, 0, 0, last]),
        ifindex: 0,
        src_mac: Mac::default(),
        port: 0,
    }
}

fn vip(addr: &str, backends: Vec<BackendTarget>) -> VipState {
    lb_tests::xdp::vip(addr, Mode::L2, backends)
}

struct Fixture {
    dp: DataPath,
    mirror: Mirror,
    desired: Vec<VipState>,
    /// Backend each labelled flow went to.
    flows: HashMap<&'static str, IpAddr>,
    expected_reasons: HashMap<u32, u64>,
    /// Forwarded packets per VIP and per backend address, as the table expects them.
    expected_vip_packets: HashMap<VipAddr, u64>,
    expected_backend_packets: HashMap<(VipAddr, IpAddr), u64>,
}

impl Fixture {
    fn new() -> Fixture {
        let opts = LoadOptions::default();
        let mut dp = DataPath::load(&opts)
            .expect("load the XDP program (are you root? run scripts/setup.sh)");
        dp.register_iface(TEST_IFINDEX, Mac(LB_MAC)).unwrap();
        let mirror = Mirror::new(opts.ring_size, opts.max_vips, opts.max_backends);
        let desired = vec![
            vip(
                V4_WEB,
                vec![
                    backend("10.0.1.1", 1, 1),
                    backend("10.0.1.2", 2, 1),
                    backend("10.0.1.3", 3, 1),
                ],
            ),
            vip(V4_UDP_ALL, vec![backend("10.0.1.4", 4, 1)]),
            vip(
                V6_WEB,
                vec![
                    backend("2001:db8:1::1", 0x61, 1),
                    backend("2001:db8:1::2", 0x62, 1),
                ],
            ),
            vip(V6_DNS, vec![backend("2001:db8:1::3", 0x63, 1)]),
            vip(V4_EMPTY, vec![]),
        ];
        let mut f = Fixture {
            dp,
            mirror,
            desired,
            flows: HashMap::new(),
            expected_reasons: HashMap::new(),
            expected_vip_packets: HashMap::new(),
            expected_backend_packets: HashMap::new(),
        };
        f.apply();
        f
    }

    fn apply(&mut self) {
        self.mirror
            .sync(&mut self.dp.writer(), &self.desired)
            .expect("apply the configuration");
    }

    fn vip_mut(&mut self, addr: &str) -> &mut VipState {
        let a: VipAddr = addr.parse().unwrap();
        self.desired.iter_mut().find(|v| v.spec.addr == a).unwrap()
    }

    fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        test_run(self.dp.program().unwrap(), frame, None)
    }

    fn backend_mac(&self, vip: &VipAddr, addr: IpAddr) -> [u8; 6] {
        let state = self.desired.iter().find(|v| v.spec.addr == *vip).unwrap();
        state
            .backends
            .iter()
            .find(|b| b.addr == addr)
            .expect("backend in config")
            .mac
            .0
    }

    /// A TCP packet from the client's port `sport` to the v4 web VIP, expected to go as `pick`.
    fn web(&mut self, what: &'static str, sport: u16, flags: u8, pick: Pick) {
        let p = Packet::tcp(c(), sport, "10.0.0.100", 80).flags(flags);
        self.check(&tx(what, "", p, V4_WEB, pick, None));
    }

    fn check(&mut self, row: &Row) {
        let frame = row.frame.clone();
        let (action, out) = self.run(&frame);
        let ctx = format!("row {:?} (scapy: {})", row.name, row.scapy);
        *self.expected_reasons.entry(row.reason).or_default() += 1;
        match &row.expect {
            Expect::Pass => {
                assert_eq!(action, XDP_PASS, "{ctx}: verdict");
                assert_eq!(
                    out, frame,
                    "{ctx}: a passed packet must be byte-for-byte unchanged"
                );
            }
            Expect::Drop => assert_eq!(action, XDP_DROP, "{ctx}: verdict"),
            Expect::Answer(want) => {
                assert_eq!(action, XDP_TX, "{ctx}: verdict");
                assert_eq!(&out, want, "{ctx}: the answer");
            }
            Expect::Tx { vip, pick, record } => {
                let vip: VipAddr = vip.parse().unwrap();
                let backend = match pick {
                    Pick::Ring(key) => self
                        .mirror
                        .ring_choice(&vip, key)
                        .expect("ring has a backend"),
                    Pick::Flow(label) => self.flows[label],
                    Pick::Literal(addr) => addr.parse().unwrap(),
                };
                assert_eq!(action, XDP_TX, "{ctx}: verdict");
                // Sent back out from the interface's MAC, which the frame was sent to.
                let src = LB_MAC;
                let want = with_macs(&frame, self.backend_mac(&vip, backend), src);
                assert_eq!(
                    out, want,
                    "{ctx}: output must be the input with MACs {backend}/{src:02x?}"
                );
                if let Some(label) = record {
                    self.flows.insert(label, backend);
                }
                *self.expected_vip_packets.entry(vip).or_default() += 1;
                *self
                    .expected_backend_packets
                    .entry((vip, backend))
                    .or_default() += 1;
            }
        }
        let reason_count = self.dp.stats().unwrap()[row.reason as usize];
        assert_eq!(
            reason_count,
            self.expected_reasons[&row.reason],
            "{ctx}: counter {}",
            stats::name(row.reason).unwrap()
        );
    }
}

enum Pick {
    /// Whatever the VIP's ring gives this flow now (computed by the control plane's code).
    Ring(lb_common::FlowKey),
    /// This backend, computed independently of the code under test (`INDEPENDENT`).
    Literal(&'static str),
    /// The backend an earlier row's flow went to.
    Flow(&'static str),
}

enum Expect {
    Pass,
    Drop,
    /// Answered out of the receiving interface (XDP_TX) with exactly this frame.
    Answer(Vec<u8>),
    Tx {
        vip: &'static str,
        pick: Pick,
        record: Option<&'static str>,
    },
}

struct Row {
    name: &'static str,
    scapy: &'static str,
    frame: Vec<u8>,
    reason: u32,
    expect: Expect,
}

fn key(src: &str, sport: u16, vip: &str, dport: u16) -> lb_common::FlowKey {
    flow_key(src.parse().unwrap(), sport, &vip.parse().unwrap(), dport)
}

/// An echo request's body after identifier and sequence (which the rest-of-header holds as 0).
const PING: [u8; 8] = *b"xdplb-pi";
/// Another host's MAC on the same segment.
const OTHER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x99];

fn answer(
    name: &'static str,
    scapy: &'static str,
    packet: impl Frame,
    reason: u32,
    want: Packet,
) -> Row {
    Row {
        name,
        scapy,
        frame: packet.frame(),
        reason,
        expect: Expect::Answer(want.build()),
    }
}

fn pass(name: &'static str, scapy: &'static str, packet: impl Frame, reason: u32) -> Row {
    Row {
        name,
        scapy,
        frame: packet.frame(),
        reason,
        expect: Expect::Pass,
    }
}

fn drop(name: &'static str, scapy: &'static str, packet: impl Frame, reason: u32) -> Row {
    Row {
        name,
        scapy,
        frame: packet.frame(),
        reason,
        expect: Expect::Drop,
    }
}

fn tx(
    name: &'static str,
    scapy: &'static str,
    packet: impl Frame,
    vip: &'static str,
    pick: Pick,
    record: Option<&'static str>,
) -> Row {
    Row {
        name,
        scapy,
        frame: packet.frame(),
        reason: stats::TX,
        expect: Expect::Tx { vip, pick, record },
    }
}

/// A row's input: a built packet or raw bytes.
trait Frame {
    fn frame(self) -> Vec<u8>;
}

impl Frame for Packet {
    fn frame(self) -> Vec<u8> {
        self.build()
    }
}

impl Frame for Vec<u8> {
    fn frame(self) -> Vec<u8> {
        self
    }
}

/// A packet's first `len` bytes.
fn cut(p: Packet, len: usize) -> Vec<u8> {
    let mut f = p.build();
    assert!(len < f.len(), "cut at {len} of a {}-byte frame", f.len());
    f.truncate(len);
    f
}

fn c() -> &'static str {
    "10.0.0.1"
}

fn table() -> Vec<Row> {
    let web = || Packet::tcp(c(), 40000, "10.0.0.100", 80);
    // VLAN tag + IPv4 options, and IPv6 + an extension header: frames with every boundary.
    let tagged = || {
        Packet::tcp(c(), 40000, "10.0.0.100", 80)
            .vlan(0x8100, 5)
            .options(&[1, 1, 1, 0])
    };
    let v6ext = || Packet::tcp("2001:db8::1", 40000, "2001:db8::100", 443).ext(60, 6);
    vec![
        tx("v4 TCP SYN to VIP", "Ether()/IP(src='10.0.0.1',dst='10.0.0.100')/TCP(sport=40000,dport=80,flags='S')",
           web(), V4_WEB, Pick::Ring(key(c(), 40000, V4_WEB, 80)), Some("v4flow")),
        tx("v4 TCP ACK same flow stays", "Ether()/IP(src='10.0.0.1',dst='10.0.0.100')/TCP(sport=40000,dport=80,flags='A')",
           web().flags(ACK), V4_WEB, Pick::Flow("v4flow"), None),
        tx("v4 TCP second flow", "Ether()/IP(src='10.0.0.1',dst='10.0.0.100')/TCP(sport=40001,dport=80)",
           Packet::tcp(c(), 40001, "10.0.0.100", 80), V4_WEB, Pick::Ring(key(c(), 40001, V4_WEB, 80)), None),
        tx("v4 UDP all-ports VIP, port 5353", "Ether()/IP(dst='10.0.0.100')/UDP(sport=5000,dport=5353)",
           Packet::udp(c(), 5000, "10.0.0.100", 5353), V4_UDP_ALL, Pick::Ring(key(c(), 5000, V4_UDP_ALL, 5353)), None),
        tx("v4 UDP all-ports VIP, port 9", "Ether()/IP(dst='10.0.0.100')/UDP(sport=5001,dport=9)",
           Packet::udp(c(), 5001, "10.0.0.100", 9), V4_UDP_ALL, Pick::Ring(key(c(), 5001, V4_UDP_ALL, 9)), None),
        // Frames for another host (a bridge flooding, promiscuous mode) are never steered.
        pass("v4 to VIP, broadcast Ethernet destination: not for this host", "Ether(dst='ff:ff:ff:ff:ff:ff')/IP(dst='10.0.0.100')/TCP(sport=40102,dport=80,flags='S')",
             Packet { dst_mac: [0xff; 6], ..Packet::tcp(c(), 40102, "10.0.0.100", 80).flags(SYN) }, stats::PASS_NOT_FOR_US),
        pass("v4 to VIP, another host's unicast MAC", "Ether(dst='02:00:00:00:00:99')/IP(dst='10.0.0.100')/TCP(sport=40103,dport=80,flags='S')",
             Packet { dst_mac: OTHER_MAC, ..Packet::tcp(c(), 40103, "10.0.0.100", 80).flags(SYN) }, stats::PASS_NOT_FOR_US),
        pass("v4 known flow, another host's unicast MAC", "Ether(dst='02:00:00:00:00:99')/IP(dst='10.0.0.100')/TCP(sport=40000,dport=80)",
             Packet { dst_mac: OTHER_MAC, ..Packet::tcp(c(), 40000, "10.0.0.100", 80) }, stats::PASS_NOT_FOR_US),
        pass("v6 to VIP, multicast MAC", "Ether(dst='33:33:00:00:00:01')/IPv6(dst='2001:db8::100')/TCP(sport=40009,dport=443)",
             Packet { dst_mac: [0x33, 0x33, 0, 0, 0, 1], ..Packet::tcp("2001:db8::1", 40009, "2001:db8::100", 443) }, stats::PASS_NOT_FOR_US),
        pass("ICMP echo to VIP address, another host's MAC", "Ether(dst='02:00:00:00:00:99')/IP(dst='10.0.0.100')/ICMP()",
             Packet { dst_mac: OTHER_MAC, ..Packet::icmp(c(), "10.0.0.100", 8, 0, PING.to_vec()) }, stats::PASS_NOT_FOR_US),
        pass("v4 fragment to VIP, another host's MAC: passed, not dropped", "Ether(dst='02:00:00:00:00:99')/IP(dst='10.0.0.100',frag=100)/Raw()",
             Packet { dst_mac: OTHER_MAC, ..web().frag(100) }, stats::PASS_NOT_FOR_US),
        pass("ICMP error about a VIP flow, another host's MAC", "Ether(dst='02:00:00:00:00:99')/IP(src='10.9.9.9',dst='10.0.0.100')/ICMP(type=3,code=4)/IP(src='10.0.0.100',dst='10.0.0.1')/TCP(sport=80,dport=40000)",
             Packet { dst_mac: OTHER_MAC, ..Packet::icmp("10.9.9.9", "10.0.0.100", 3, 4, Packet::tcp("10.0.0.100", 80, c(), 40000).ip_bytes()[..28].to_vec()) },
             stats::PASS_NOT_FOR_US),
        pass("v4 TCP to VIP address, other port", "Ether()/IP(dst='10.0.0.100')/TCP(dport=81)",
             Packet::tcp(c(), 40000, "10.0.0.100", 81), stats::PASS_NOT_VIP),
        pass("v4 TCP to another address", "Ether()/IP(dst='10.0.0.7')/TCP(dport=80)",
             Packet::tcp(c(), 40000, "10.0.0.7", 80), stats::PASS_NOT_VIP),
        pass("v4 protocol 0 to VIP address (not its address entry)", "Ether()/IP(dst='10.0.0.100',proto=0)/Raw(b'x'*12)",
             Packet::new(c(), "10.0.0.100", L4::Raw { proto: 0, bytes: vec![0; 12] }), stats::PASS_NOT_VIP),
        pass("v4 SCTP to VIP address", "Ether()/IP(dst='10.0.0.100',proto=132)/Raw(b'x'*12)",
             Packet::new(c(), "10.0.0.100", L4::Raw { proto: 132, bytes: vec![0; 12] }), stats::PASS_NOT_VIP),
        tx("v6 TCP to VIP", "Ether()/IPv6(src='2001:db8::1',dst='2001:db8::100')/TCP(sport=40000,dport=443)",
           Packet::tcp("2001:db8::1", 40000, "2001:db8::100", 443), V6_WEB, Pick::Ring(key("2001:db8::1", 40000, V6_WEB, 443)), Some("v6flow")),
        tx("v6 UDP to VIP", "Ether()/IPv6(src='2001:db8::1',dst='2001:db8::100')/UDP(sport=7000,dport=53)",
           Packet::udp("2001:db8::1", 7000, "2001:db8::100", 53), V6_DNS, Pick::Ring(key("2001:db8::1", 7000, V6_DNS, 53)), None),
        pass("v6 TCP to another address", "Ether()/IPv6(dst='2001:db8::7')/TCP(dport=443)",
             Packet::tcp("2001:db8::1", 40000, "2001:db8::7", 443), stats::PASS_NOT_VIP),
        pass("ARP", "Ether()/ARP()", web().ether(ETH_ARP), stats::PASS_NOT_IP),
        pass("unknown EtherType (LLDP)", "Ether(type=0x88cc)/Raw(b'\\0'*28)", web().ether(0x88cc), stats::PASS_NOT_IP),
        tx("one VLAN tag", "Ether()/Dot1Q(vlan=10)/IP(dst='10.0.0.100')/TCP(sport=40002,dport=80)",
           Packet::tcp(c(), 40002, "10.0.0.100", 80).vlan(0x8100, 10), V4_WEB, Pick::Ring(key(c(), 40002, V4_WEB, 80)), None),
        tx("two VLAN tags (QinQ), IPv6", "Ether()/Dot1AD(vlan=20)/Dot1Q(vlan=10)/IPv6(dst='2001:db8::100')/TCP(sport=40003,dport=443)",
           Packet::tcp("2001:db8::1", 40003, "2001:db8::100", 443).vlan(0x88a8, 20).vlan(0x8100, 10), V6_WEB,
           Pick::Ring(key("2001:db8::1", 40003, V6_WEB, 443)), None),
        pass("three VLAN tags (not parsed further)", "Ether()/Dot1AD()/Dot1Q()/Dot1Q()/IP()/TCP()",
             web().vlan(0x88a8, 1).vlan(0x8100, 2).vlan(0x8100, 3), stats::PASS_NOT_IP),
        tx("v4 with options (IHL 8)", "Ether()/IP(dst='10.0.0.100',options=[IPOption(b'\\x94\\x04\\0\\0'),...])/TCP(sport=40004,dport=80)",
           Packet::tcp(c(), 40004, "10.0.0.100", 80).options(&[0x94, 4, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0]), V4_WEB,
           Pick::Ring(key(c(), 40004, V4_WEB, 80)), None),
        tx("v6 hop-by-hop + destination options", "Ether()/IPv6(dst='2001:db8::100')/IPv6ExtHdrHopByHop()/IPv6ExtHdrDestOpt()/TCP(sport=40005,dport=443)",
           Packet::tcp("2001:db8::1", 40005, "2001:db8::100", 443).ext(0, 6).ext(60, 14), V6_WEB,
           Pick::Ring(key("2001:db8::1", 40005, V6_WEB, 443)), None),
        tx("v6 routing header + AH", "Ether()/IPv6(dst='2001:db8::100')/IPv6ExtHdrRouting()/AH()/TCP(sport=40006,dport=443)",
           Packet::tcp("2001:db8::1", 40006, "2001:db8::100", 443).ext(43, 6).ext(51, 10), V6_WEB,
           Pick::Ring(key("2001:db8::1", 40006, V6_WEB, 443)), None),
        pass("v6 with seven extension headers", "Ether()/IPv6()/IPv6ExtHdrDestOpt()*7/TCP()",
             (0..7).fold(Packet::tcp("2001:db8::1", 40007, "2001:db8::100", 443), |p, _| p.ext(60, 6)), stats::PASS_MALFORMED),
        pass("v4 IHL 4 (invalid)", "Ether()/IP(ihl=4,dst='10.0.0.100')/TCP()",
             { let mut f = web().build(); f[14] = 0x44; f }, stats::PASS_MALFORMED),
        pass("IPv4 EtherType with version 6 header", "Ether(type=0x0800)/IPv6()/TCP()",
             { let mut f = Packet::tcp("2001:db8::1", 1, "2001:db8::100", 443).build(); f[12..14].copy_from_slice(&[8, 0]); f },
             stats::PASS_MALFORMED),
        drop("v4 first fragment to VIP", "Ether()/IP(dst='10.0.0.100',flags='MF')/TCP(dport=80)",
             web().frag(0x2000), stats::DROP_FRAGMENT),
        drop("v4 later fragment to VIP", "Ether()/IP(dst='10.0.0.100',frag=100)/Raw()",
             web().frag(100), stats::DROP_FRAGMENT),
        pass("v4 fragment to another address", "Ether()/IP(dst='10.0.0.7',flags='MF')/TCP()",
             Packet::tcp(c(), 1, "10.0.0.7", 80).frag(0x2000), stats::PASS_NOT_VIP),
        drop("v6 fragment header to VIP", "Ether()/IPv6(dst='2001:db8::100')/IPv6ExtHdrFragment()/TCP(dport=443)",
             Packet::tcp("2001:db8::1", 40000, "2001:db8::100", 443).ext(44, 6), stats::DROP_FRAGMENT),
        answer("ICMP echo to VIP address: answered from the VIP", "Ether()/IP(dst='10.0.0.100')/ICMP()",
             Packet::icmp(c(), "10.0.0.100", 8, 0, PING.to_vec()), stats::TX_ICMP_ECHO,
             Packet { dst_mac: CLIENT_MAC, src_mac: LB_MAC, ..Packet::icmp("10.0.0.100", c(), 0, 0, PING.to_vec()) }),
        answer("ICMPv6 echo to VIP address: answered from the VIP", "Ether()/IPv6(dst='2001:db8::100',hlim=9)/ICMPv6EchoRequest()",
             Packet { ttl: 9, ..Packet::icmp("2001:db8::1", "2001:db8::100", 128, 0, PING.to_vec()) }, stats::TX_ICMP_ECHO,
             Packet { dst_mac: CLIENT_MAC, src_mac: LB_MAC, ..Packet::icmp("2001:db8::100", "2001:db8::1", 129, 0, PING.to_vec()) }),
        pass("ICMP echo to another address", "Ether()/IP(dst='10.0.0.7')/ICMP()",
             Packet::icmp(c(), "10.0.0.7", 8, 0, vec![0; 8]), stats::PASS_NOT_VIP),
        tx("ICMP fragmentation-needed about a VIP flow goes to its backend",
           "Ether()/IP(src='10.9.9.9',dst='10.0.0.100')/ICMP(type=3,code=4)/IP(src='10.0.0.100',dst='10.0.0.1')/TCP(sport=80,dport=40000)",
           Packet::icmp("10.9.9.9", "10.0.0.100", 3, 4, Packet::tcp("10.0.0.100", 80, c(), 40000).ip_bytes()[..28].to_vec()),
           V4_WEB, Pick::Flow("v4flow"), None),
        tx("ICMPv6 packet-too-big about a VIP flow goes to its backend",
           "Ether()/IPv6(src='2001:db8::9',dst='2001:db8::100')/ICMPv6PacketTooBig()/IPv6(src='2001:db8::100',dst='2001:db8::1')/TCP(sport=443,dport=40000)",
           Packet::icmp("2001:db8::9", "2001:db8::100", 2, 0, Packet::tcp("2001:db8::100", 443, "2001:db8::1", 40000).ip_bytes()[..48].to_vec()),
           V6_WEB, Pick::Flow("v6flow"), None),
        tx("ICMP error about a VIP flow not in the table: the ring decides, no entry is made",
           "Ether()/IP(src='10.9.9.9',dst='10.0.0.100')/ICMP(type=3,code=4)/IP(src='10.0.0.100',dst='10.0.0.1')/TCP(sport=80,dport=45000)",
           Packet::icmp("10.9.9.9", "10.0.0.100", 3, 4, Packet::tcp("10.0.0.100", 80, c(), 45000).ip_bytes()[..28].to_vec()),
           V4_WEB, Pick::Ring(key(c(), 45000, V4_WEB, 80)), None),
        pass("ICMP error about a non-VIP flow, to VIP address", "Ether()/IP(dst='10.0.0.100')/ICMP(type=3)/IP(src='10.0.0.100')/TCP(sport=999)",
             Packet::icmp("10.9.9.9", "10.0.0.100", 3, 3, Packet::tcp("10.0.0.100", 999, c(), 40000).ip_bytes()[..28].to_vec()), stats::PASS_ICMP),
        drop("VIP without backends", "Ether()/IP(dst='10.0.0.101')/TCP(dport=80)",
             Packet::tcp(c(), 40000, "10.0.0.101", 80), stats::DROP_NO_BACKEND),
        tx("v4 TTL 1 (L2 mode leaves TTL alone)", "Ether()/IP(dst='10.0.0.100',ttl=1)/TCP(sport=40008,dport=80)",
           Packet { ttl: 1, ..Packet::tcp(c(), 40008, "10.0.0.100", 80) }, V4_WEB, Pick::Ring(key(c(), 40008, V4_WEB, 80)), None),
        // Truncation at every header boundary: all pass untouched, counted as malformed.
        // (BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header.)
        pass("cut after Ethernet header", "", cut(tagged(), 14), stats::PASS_MALFORMED),
        pass("cut after Ethernet header (IPv4)", "", cut(web(), 14), stats::PASS_MALFORMED),
        pass("cut inside VLAN tag", "", cut(tagged(), 16), stats::PASS_MALFORMED),
        pass("cut after VLAN tag", "", cut(tagged(), 18), stats::PASS_MALFORMED),
        pass("cut inside IPv4 header", "", cut(tagged(), 30), stats::PASS_MALFORMED),
        pass("cut inside IPv4 options", "", cut(tagged(), 40), stats::PASS_MALFORMED),
        pass("cut inside TCP header (v4)", "", cut(tagged(), 50), stats::PASS_MALFORMED),
        pass("cut inside UDP header", "", cut(Packet::udp(c(), 5000, "10.0.0.100", 53), 38), stats::PASS_MALFORMED),
        pass("cut inside IPv6 header", "", cut(v6ext(), 40), stats::PASS_MALFORMED),
        pass("cut inside IPv6 extension header", "", cut(v6ext(), 58), stats::PASS_MALFORMED),
        pass("cut inside TCP header (v6)", "", cut(v6ext(), 70), stats::PASS_MALFORMED),
        pass("cut inside a quoted ICMP error", "", cut(Packet::icmp("10.9.9.9", "10.0.0.100", 3, 4,
             Packet::tcp("10.0.0.100", 80, c(), 40000).ip_bytes()[..28].to_vec()), 50), stats::PASS_MALFORMED),
        pass("TCP data offset 4 (invalid)", "Ether()/IP(dst='10.0.0.100')/TCP(dataofs=4)",
             Packet::new(c(), "10.0.0.100", L4::Tcp { sport: 1, dport: 80, flags: 2, doff: 4 }), stats::PASS_MALFORMED),
    ]
}

#[test]
fn packet_fixtures() {
    let mut f = Fixture::new();
    let rows = table();
    let n_rows = rows.len();
    for row in &rows {
        f.check(row);
    }

    // Layout 2: IPv4 flows are recorded in their own table, under the compact key, and IPv6
    // flows in XDPLB_CONNTRACK; each in one table only. The "same flow stays" rows above hit
    // those entries (a hit is counted, no miss).
    for (what, flow, table) in [
        ("v4 TCP", key(c(), 40000, V4_WEB, 80), m::CONNTRACK4),
        ("v4 UDP", key(c(), 5000, V4_UDP_ALL, 5353), m::CONNTRACK4),
        (
            "v6 TCP",
            key("2001:db8::1", 40000, V6_WEB, 443),
            m::CONNTRACK,
        ),
        ("v6 UDP", key("2001:db8::1", 7000, V6_DNS, 53), m::CONNTRACK),
    ] {
        assert_eq!(
            f.dp.tables_holding(&flow).unwrap(),
            [table],
            "{what} flow recorded in the wrong table"
        );
    }

    assert_eq!(
        f.dp.conntrack(&key(c(), 45000, V4_WEB, 80)).unwrap(),
        None,
        "an ICMP error created a connection-table entry"
    );
    for sport in [40102, 40103] {
        assert_eq!(
            f.dp.conntrack(&key(c(), sport, V4_WEB, 80)).unwrap(),
            None,
            "another host's SYN (port {sport}) created a connection-table entry"
        );
    }
    // Another host's frame of a flow this host knows is not even looked up: no hit counted.
    let sport = 40300;
    f.web(
        "a flow of this host",
        sport,
        SYN,
        Pick::Ring(key(c(), sport, V4_WEB, 80)),
    );
    let hits = |f: &Fixture| f.dp.stats().unwrap()[stats::EV_CT_HIT as usize];
    let before = hits(&f);
    f.check(&pass(
        "another host's frame of that flow",
        "",
        Packet {
            dst_mac: OTHER_MAC,
            ..Packet::tcp(c(), sport, "10.0.0.100", 80).flags(ACK)
        },
        stats::PASS_NOT_FOR_US,
    ));
    assert_eq!(
        hits(&f),
        before,
        "another host's frame counted a connection-table hit"
    );
    assert_eq!(
        hits(&f),
        before,
        "another host's frame counted a connection-table hit"
    );
    assert!(
        f.dp.conntrack(&key(c(), 40000, V4_WEB, 80))
            .unwrap()
            .is_some(),
        "a forwarded SYN created one"
    );

    // The ring changes (a fourth backend joins): flows already in the table stay where they
    // are, even those whose ring slot now names another backend.
    let flows: Vec<u16> = (41000..41040).collect();
    let mut before = HashMap::new();
    for &sport in &flows {
        let k = key(c(), sport, V4_WEB, 80);
        before.insert(
            sport,
            f.mirror.ring_choice(&V4_WEB.parse().unwrap(), &k).unwrap(),
        );
        f.check(&tx(
            "flow before ring change",
            "",
            Packet::tcp(c(), sport, "10.0.0.100", 80),
            V4_WEB,
            Pick::Ring(k),
            None,
        ));
    }
    f.vip_mut(V4_WEB).backends.push(backend("10.0.1.5", 5, 3));
    f.apply();
    let mut moved_in_ring = 0;
    for &sport in &flows {
        let k = key(c(), sport, V4_WEB, 80);
        if f.mirror.ring_choice(&V4_WEB.parse().unwrap(), &k).unwrap() != before[&sport] {
            moved_in_ring += 1;
        }
        let label: &'static str = Box::leak(format!("sticky{sport}").into_boxed_str());
        f.flows.insert(label, before[&sport]);
        f.web(
            "flow stays after ring change",
            sport,
            ACK,
            Pick::Flow(label),
        );
    }
    assert!(
        moved_in_ring > 0,
        "the ring change must move some of the 40 flows' slots for this check to mean anything"
    );
    // A SYN (without ACK) opens a new connection: the ring places it and it is recorded
    // without a lookup first (an insert that only succeeds for a new key). A retransmitted
    // SYN finds its flow's entry that way and goes where the first one went.
    let lookups = |f: &Fixture| {
        let st = f.dp.stats().unwrap();
        st[stats::EV_CT_HIT as usize] + st[stats::EV_CT_STALE as usize]
    };
    let (fresh, looked_up) = (key(c(), 41999, V4_WEB, 80), lookups(&f));
    f.check(&tx(
        "SYN of a new connection",
        "",
        Packet::tcp(c(), 41999, "10.0.0.100", 80),
        V4_WEB,
        Pick::Ring(fresh),
        Some("opened"),
    ));
    assert_eq!(
        lookups(&f),
        looked_up,
        "a new connection's SYN is not looked up"
    );
    f.web("its ACK finds the entry", 41999, ACK, Pick::Flow("opened"));
    assert_eq!(lookups(&f), looked_up + 1, "the ACK was a table hit");
    let moved = *flows
        .iter()
        .find(|&&sport| {
            let k = key(c(), sport, V4_WEB, 80);
            f.mirror.ring_choice(&V4_WEB.parse().unwrap(), &k).unwrap() != before[&sport]
        })
        .unwrap();
    let label: &'static str = Box::leak(format!("sticky{moved}").into_boxed_str());
    for (what, flags) in [
        (
            "retransmitted SYN on a moved slot: where its entry says",
            SYN,
        ),
        (
            "SYN+ACK on a moved slot: looked up like any packet",
            SYN | ACK,
        ),
    ] {
        f.web(what, moved, flags, Pick::Flow(label));
    }
    assert_eq!(lookups(&f), looked_up + 3);

    // Draining the backend of "v4flow": the flow stays, new flows avoid it.
    let drained = f.flows["v4flow"];
    f.vip_mut(V4_WEB)
        .backends
        .iter_mut()
        .find(|b| b.addr == drained)
        .unwrap()
        .weight = 0;
    f.apply();
    f.web(
        "flow on a draining backend stays",
        40000,
        ACK,
        Pick::Flow("v4flow"),
    );
    for sport in 42000..42050u16 {
        let k = key(c(), sport, V4_WEB, 80);
        assert_ne!(
            f.mirror.ring_choice(&V4_WEB.parse().unwrap(), &k),
            Some(drained)
        );
        f.check(&tx(
            "new flow avoids the draining backend",
            "",
            Packet::tcp(c(), sport, "10.0.0.100", 80),
            V4_WEB,
            Pick::Ring(k),
            None,
        ));
    }

    // Removing it: its flow is re-balanced (a stale connection-table entry).
    let stale_before = f.dp.stats().unwrap()[stats::EV_CT_STALE as usize];
    f.vip_mut(V4_WEB).backends.retain(|b| b.addr != drained);
    f.apply();
    f.web(
        "flow of a removed backend moves",
        40000,
        ACK,
        Pick::Ring(key(c(), 40000, V4_WEB, 80)),
    );
    assert_eq!(
        f.dp.stats().unwrap()[stats::EV_CT_STALE as usize],
        stale_before + 1
    );
    // A SYN of another flow recorded there: the failed insert finds the stale entry, which is
    // replaced (counted as stale, like a lookup would have), so the ACK that follows hits.
    let orphan = *flows
        .iter()
        .find(|s| before[s] == drained)
        .expect("one of the 40 flows was on the removed backend");
    let k = key(c(), orphan, V4_WEB, 80);
    let hits = f.dp.stats().unwrap()[stats::EV_CT_HIT as usize];
    for (what, flags) in [
        ("SYN of a removed backend's flow: placed again", SYN),
        ("its ACK: the new entry", ACK),
    ] {
        f.web(what, orphan, flags, Pick::Ring(k));
    }
    let st = f.dp.stats().unwrap();
    assert_eq!(st[stats::EV_CT_STALE as usize], stale_before + 2);
    assert_eq!(st[stats::EV_CT_HIT as usize], hits + 1);

    // Counters: every packet counted under exactly one verdict reason, as the table says.
    let st = f.dp.stats().unwrap();
    let sent: u64 = f.expected_reasons.values().sum();
    let counted: u64 = (0..stats::VERDICT_COUNT).map(|i| st[i as usize]).sum();
    assert_eq!(
        counted, sent,
        "verdict counters must add up to the packets sent"
    );
    for i in 0..stats::VERDICT_COUNT {
        assert_eq!(
            st[i as usize],
            f.expected_reasons.get(&i).copied().unwrap_or(0),
            "counter {}",
            stats::name(i).unwrap()
        );
    }
    assert_eq!(
        st[stats::EV_VLAN as usize],
        2,
        "the two VLAN-tagged packets that parse are counted"
    );
    assert_eq!(
        st[stats::EV_VLAN_POPPED as usize],
        0,
        "frames sent back out of the interface they came in on keep their VLAN tags"
    );
    for (vip, packets) in &f.expected_vip_packets {
        let c: TrafficCounters = f.dp.vip_counters(f.mirror.vip_id(vip).unwrap()).unwrap();
        assert_eq!(c.packets, *packets, "packets of VIP {vip}");
    }
    for ((vip, addr), packets) in &f.expected_backend_packets {
        if let Some(id) = f.mirror.backend_id(vip, *addr) {
            assert_eq!(
                f.dp.backend_counters(id).unwrap().packets,
                *packets,
                "packets of backend {addr} of {vip}"
            );
        }
    }
    println!("{n_rows} table rows, {sent} packets in all");
}

/// Flows and the backend each must reach, computed once with `lb_tests::reference` (the flow
/// hash and Maglev ring as docs/maglev.md describes them: MurmurHash3 over family, protocol,
/// addresses and ports; M = 65537, seed 0; slot = hash % M) and kept as literals, so neither
/// `lb_common::hash::flow_hash` nor the mirror's ring decides what is expected.
/// `literals_match_the_reference` recomputes them. Rows before the weighted change use the
/// fixture's configuration; `WEIGHTED` rows come after 10.0.1.5 joins V4_WEB with weight 3.
/// (client, client port, VIP, destination port, backend)
const INDEPENDENT: [(&str, u16, &str, u16, &str); 12] = [
    ("10.0.0.1", 50000, V4_WEB, 80, "10.0.1.2"),
    ("10.0.0.1", 50001, V4_WEB, 80, "10.0.1.1"),
    ("10.0.0.1", 50002, V4_WEB, 80, "10.0.1.3"),
    ("10.0.0.1", 50003, V4_WEB, 80, "10.0.1.2"),
    ("10.0.0.2", 1234, V4_WEB, 80, "10.0.1.3"),
    ("10.0.0.77", 65535, V4_WEB, 80, "10.0.1.1"),
    ("192.0.2.9", 40404, V4_WEB, 80, "10.0.1.1"),
    ("2001:db8:ff::1", 50000, V6_WEB, 443, "2001:db8:1::2"),
    ("2001:db8:ff::1", 50001, V6_WEB, 443, "2001:db8:1::2"),
    ("2001:db8:ff::2", 50002, V6_WEB, 443, "2001:db8:1::2"),
    ("2001:db8:ff::3", 7, V6_WEB, 443, "2001:db8:1::1"),
    ("10.0.0.5", 999, V4_UDP_ALL, 5353, "10.0.1.4"),
];
const WEIGHTED: [(&str, u16, &str, u16, &str); 6] = [
    ("10.0.0.1", 51000, V4_WEB, 80, "10.0.1.5"),
    ("10.0.0.1", 51001, V4_WEB, 80, "10.0.1.3"),
    ("10.0.0.1", 51002, V4_WEB, 80, "10.0.1.2"),
    ("10.0.0.1", 51003, V4_WEB, 80, "10.0.1.5"),
    ("10.0.0.1", 51004, V4_WEB, 80, "10.0.1.5"),
    ("10.0.0.1", 51005, V4_WEB, 80, "10.0.1.5"),
];

/// The reference's backend for a row, with the backends (address, weight) of its VIP.
fn reference_pick(row: &(&str, u16, &str, u16, &str), backends: &[(&str, u32)]) -> String {
    use lb_tests::reference;
    let vip: VipAddr = row.2.parse().unwrap();
    let members: Vec<(IpAddr, u32)> = backends
        .iter()
        .map(|(a, w)| (a.parse().unwrap(), *w))
        .collect();
    let ring = reference::maglev(&members, 65537);
    let h = reference::flow_hash(
        vip.proto.number(),
        row.0.parse().unwrap(),
        row.1,
        vip.ip,
        row.3,
        false,
    );
    let i = ring[h as usize % ring.len()].expect("a backend with weight");
    members[i].0.to_string()
}

/// The fixture's backends of `vip` (address, weight); `weighted`: with 10.0.1.5 at weight 3
/// in V4_WEB.
fn fixture_backends(vip: &str, weighted: bool) -> Vec<(&'static str, u32)> {
    match vip {
        V4_WEB if weighted => vec![
            ("10.0.1.1", 1),
            ("10.0.1.2", 1),
            ("10.0.1.3", 1),
            ("10.0.1.5", 3),
        ],
        V4_WEB => vec![("10.0.1.1", 1), ("10.0.1.2", 1), ("10.0.1.3", 1)],
        V4_UDP_ALL => vec![("10.0.1.4", 1)],
        V6_WEB => vec![("2001:db8:1::1", 1), ("2001:db8:1::2", 1)],
        _ => unreachable!("no independent rows for {vip}"),
    }
}

/// The literals are what the reference computes (needs no root): a change to the reference or
/// the literals shows here, with the table to paste.
#[test]
fn literals_match_the_reference() {
    let mut table = String::new();
    let mut same = true;
    for (rows, weighted) in [(&INDEPENDENT[..], false), (&WEIGHTED[..], true)] {
        for row in rows {
            let want = reference_pick(row, &fixture_backends(row.2, weighted));
            same &= want == row.4;
            table.push_str(&format!(
                "    (\"{}\", {}, {}, {}, \"{want}\"),\n",
                row.0, row.1, row.2, row.3
            ));
        }
    }
    assert!(same, "the reference computes:\n{table}");
}

/// The data path sends every `INDEPENDENT` and `WEIGHTED` flow to its literal backend, as a
/// new flow (exact output bytes, counters as the table says).
#[test]
fn backends_as_the_documented_algorithm_computes() {
    let mut f = Fixture::new();
    let send = |f: &mut Fixture, rows: &[(&'static str, u16, &'static str, u16, &'static str)]| {
        for &(src, sport, vip, dport, backend) in rows {
            let dst = vip.parse::<VipAddr>().unwrap().ip.to_string();
            let p = if vip == V4_UDP_ALL {
                Packet::udp(src, sport, &dst, dport)
            } else {
                Packet::tcp(src, sport, &dst, dport).flags(ACK)
            };
            f.check(&tx(
                "independent backend",
                "",
                p,
                vip,
                Pick::Literal(backend),
                None,
            ));
        }
    };
    send(&mut f, &INDEPENDENT);
    f.vip_mut(V4_WEB).backends.push(backend("10.0.1.5", 5, 3));
    f.apply();
    send(&mut f, &WEIGHTED);
}
