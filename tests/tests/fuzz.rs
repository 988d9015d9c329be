//! Data-path fuzzing through BPF_PROG_TEST_RUN with L2 and L3 VIPs over IPv4 and IPv6 loaded
//! (needs root; runs in the FIB namespace so L3 packets take their real path). Structure-aware
//! packets (valid frames, some to other hosts' MACs, then corrupted at every layer) and pure
//! random bytes. Every packet is judged by `lb_tests::oracle`, a reference model of the
//! documented policy with its own parser and its own Maglev: the verdict reason must be one
//! the model predicts (so every XDP_DROP has a documented reason that fits the packet), the
//! action must go with it, and the output must be what that reason makes of the input (passed
//! unchanged; an L2 VIP's packet with only its MACs changed, to the backend the reference ring
//! picks; an L3 packet with exactly the addresses, ports, TTL and MACs the policy changes and
//! valid checksums whenever the input had them). At the end the verdict counters add up to
//! the packets sent.
//!
//! `XDPLB_FUZZ_PACKETS` sets the count (default 200 000); `XDPLB_FUZZ_SEED` the seed.
//! `cargo xtask fuzz N` runs N.

use std::net::IpAddr;

use lb_common::{addr, maps as m, stats};
use lb_tests::{
    fib::{be_mac, fib_namespace},
    oracle::{self, Fib, Model},
    packet::{Packet, CLIENT_MAC, L4},
    xdp::{test_run, vip},
};
use lb_userspace::{
    datapath::{DataPath, LoadOptions},
    mirror::Mirror,
    model::{BackendTarget, Mac, Mode, VipState},
};

/// xorshift64*: deterministic, so a failure reproduces from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const V4_DST: [&str; 5] = [
    "10.1.0.100",
    "10.1.0.200",
    "10.1.0.7",
    "10.2.0.1",
    "10.1.0.1",
];
const V6_DST: [&str; 4] = ["fd01::100", "fd01::200", "fd01::7", "fd01::1"];
/// Destination MACs of frames for other hosts: broadcast, IPv6 multicast, another station.
const OTHER_MACS: [[u8; 6]; 3] = [[0xff; 6], [0x33, 0x33, 0, 0, 0, 1], [2, 0, 0, 0, 0, 0x99]];
const V4_SRC: [&str; 3] = ["10.1.0.1", "10.2.0.1", "10.2.0.2"];
const V6_SRC: [&str; 3] = ["fd01::1", "fd02::1", "fd02::2"];
const PORTS: [u16; 6] = [80, 443, 53, 8080, 40000, 1];

fn backends(v6: bool, l3: bool) -> Vec<BackendTarget> {
    (1..=2u8)
        .map(|i| BackendTarget {
            addr: if v6 {
                format!("fd02::{i}").parse().unwrap()
            } else {
                format!("10.2.0.{i}").parse().unwrap()
            },
            weight: 1,
            mac: be_mac(i),
            ifindex: 0,
            src_mac: Default::default(),
            port: if l3 && i == 2 { 8080 } else { 0 },
        })
        .collect()
}

fn behind(backends: Vec<BackendTarget>, ifindex: u32) -> Vec<BackendTarget> {
    backends
        .into_iter()
        .map(|b| BackendTarget { ifindex, ..b })
        .collect()
}

/// A valid frame of random shape.
fn packet(r: &mut Rng) -> Packet {
    let v6 = r.chance(40);
    let (src, dst) = if v6 {
        (*r.pick(&V6_SRC), *r.pick(&V6_DST))
    } else {
        (*r.pick(&V4_SRC), *r.pick(&V4_DST))
    };
    let (sport, dport) = (*r.pick(&PORTS), *r.pick(&PORTS));
    let mut p = match r.below(10) {
        0..=3 => Packet::tcp(src, sport, dst, dport)
            .flags(*r.pick(&[0x02, 0x10, 0x12, 0x11, 0x04, 0xff])),
        4..=6 => Packet::udp(src, sport, dst, dport),
        7 => {
            // An ICMP error quoting a packet from a VIP (or garbage).
            let quoted = if v6 {
                Packet::tcp(dst, dport, src, sport)
            } else {
                Packet::udp(dst, dport, src, sport)
            };
            let mut body = quoted.ip_bytes();
            body.truncate(r.below(body.len() as u64 + 1) as usize);
            let ty = if v6 {
                *r.pick(&[1, 2, 3, 128])
            } else {
                *r.pick(&[3, 11, 8, 0])
            };
            Packet::icmp(src, dst, ty, 4, body)
        }
        8 => Packet::new(
            src,
            dst,
            L4::Raw {
                proto: *r.pick(&[0, 132, 47, 200]),
                bytes: vec![0; r.below(40) as usize],
            },
        ),
        _ => Packet::icmp(src, dst, if v6 { 128 } else { 8 }, 0, vec![1; 8]),
    };
    for _ in 0..r.below(4) {
        if r.chance(30) {
            p = p.vlan(*r.pick(&[0x8100, 0x88a8]), r.below(4096) as u16);
        }
    }
    if !v6 && r.chance(20) {
        p = p.options(&vec![1u8; r.below(41) as usize]);
    }
    if !v6 && r.chance(10) {
        p = p.frag(*r.pick(&[0x2000, 0x0010, 0x4000]));
    }
    if v6 {
        for _ in 0..r.below(8) {
            if r.chance(40) {
                p = p.ext(*r.pick(&[0, 43, 60, 51, 44]), r.below(30) as usize);
            }
        }
    }
    p.ttl = *r.pick(&[64, 2, 1, 0, 255]);
    if r.chance(5) {
        p.dst_mac = *r.pick(&OTHER_MACS);
    }
    // Now and then over the 1500-byte MTU: "too big" answers, or fragmentation by the kernel.
    let len = if r.chance(3) {
        1450 + r.below(150)
    } else {
        r.below(64)
    };
    p.payload = vec![0x5a; len as usize];
    p
}

/// Corrupts a frame: truncation at any point, random bytes in the headers, or both.
fn corrupt(r: &mut Rng, mut f: Vec<u8>) -> Vec<u8> {
    match r.below(4) {
        0 => {
            let len = 14 + r.below(f.len().saturating_sub(14) as u64 + 1) as usize;
            f.truncate(len);
        }
        1 | 2 => {
            for _ in 0..=r.below(4) {
                let at = r.below(f.len().min(120) as u64) as usize;
                f[at] = r.next() as u8;
            }
        }
        _ => {}
    }
    f
}

/// The oracle's picture of the FIB namespace (`lb_tests::fib`): its neighbours, subnets and
/// addresses, with `c0` and `b0` registered and `x0` not.
fn model(desired: &[VipState], ring_size: u32, c0: (u32, Mac), b0: (u32, Mac)) -> Model {
    const X0: u32 = u32::MAX;
    let ip = |a: &str| -> IpAddr { a.parse().unwrap() };
    let mut neighbours = vec![
        (ip("10.1.0.1"), c0.0, CLIENT_MAC),
        (ip("fd01::1"), c0.0, CLIENT_MAC),
        (ip("10.3.0.1"), X0, be_mac(3).0),
    ];
    for i in 1..=2u8 {
        neighbours.push((ip(&format!("10.2.0.{i}")), b0.0, be_mac(i).0));
        neighbours.push((ip(&format!("fd02::{i}")), b0.0, be_mac(i).0));
    }
    let subnets = [
        ("10.1.0.0", 24, c0.0),
        ("10.2.0.0", 24, b0.0),
        ("10.3.0.0", 24, X0),
        ("fd01::", 64, c0.0),
        ("fd02::", 64, b0.0),
        ("fd03::", 64, X0),
    ];
    let locals = [
        "10.1.0.254",
        "10.2.0.254",
        "10.3.0.254",
        "fd01::fe",
        "fd02::fe",
        "fd03::fe",
    ];
    Model {
        vips: desired
            .iter()
            .map(|v| oracle::Vip::from_state(v, ring_size as u64))
            .collect(),
        ifaces: vec![(c0.0, c0.1 .0), (b0.0, b0.1 .0)],
        fib: Fib {
            neighbours,
            subnets: subnets.iter().map(|(n, l, i)| (ip(n), *l, *i)).collect(),
            locals: locals.iter().map(|a| ip(a)).collect(),
            mtu: 1500,
        },
    }
}

#[test]
fn fuzz_the_data_path() {
    let count: u64 = std::env::var("XDPLB_FUZZ_PACKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let seed: u64 = std::env::var("XDPLB_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_f00d);
    let ns = fib_namespace();
    ns.run(|| {
        let opts = LoadOptions {
            conntrack_size: 65536,
            conntrack6_size: 65536,
            ..LoadOptions::default()
        };
        let mut dp = DataPath::load(&opts).expect("load xdplb (root?)");
        let c0 = dp.register_egress("c0").unwrap();
        let b0 = dp.register_egress("b0").unwrap();
        let ifaces = [c0.0, b0.0];
        let mut mirror = Mirror::new(opts.ring_size, opts.max_vips, opts.max_backends);
        let desired = [
            vip("10.1.0.100:80/tcp", Mode::L2, backends(false, false)),
            vip("10.1.0.100:*/udp", Mode::L2, backends(false, false)),
            vip("[fd01::100]:443/tcp", Mode::L2, backends(true, false)),
            // Backends behind b0: tagged frames from c0 leave untagged (docs/datapath.md).
            vip("10.1.0.100:443/tcp", Mode::L2, behind(backends(false, false), ifaces[1])),
            vip("[fd01::100]:80/tcp", Mode::L2, behind(backends(true, false), ifaces[1])),
            vip("10.1.0.200:80/tcp", Mode::L3, backends(false, true)),
            vip("10.1.0.200:53/udp", Mode::L3, backends(false, false)),
            vip("[fd01::200]:80/tcp", Mode::L3, backends(true, true)),
        ];
        mirror.sync(&mut dp.writer(), &desired).unwrap();
        let model = model(&desired, opts.ring_size, c0, b0);
        let mut r = Rng(seed | 1);
        let mut last = dp.stats().unwrap();
        let started = std::time::Instant::now();
        for n in 0..count {
            let frame = match r.below(10) {
                0 => (0..14 + r.below(200)).map(|_| r.next() as u8).collect(),
                1..=4 => {
                    let valid = packet(&mut r).build();
                    corrupt(&mut r, valid)
                }
                _ => packet(&mut r).build(),
            };
            let ingress = *r.pick(&ifaces);
            let (action, got) = test_run(dp.program().unwrap(), &frame, Some(ingress));
            let now = dp.stats().unwrap();
            let reason = (0..stats::VERDICT_COUNT)
                .find(|i| now[*i as usize] != last[*i as usize])
                .expect("a verdict was counted");
            last = now;
            if let Err(e) = model.predict(&frame, ingress).check(&frame, action, &got, reason) {
                panic!(
                    "packet {n} (seed {seed}, ingress {ingress}): {e}; action {action}\n in: {frame:02x?}\nout: {got:02x?}"
                );
            }
        }
        let st = dp.stats().unwrap();
        let counted: u64 = (0..stats::VERDICT_COUNT).map(|i| st[i as usize]).sum();
        assert_eq!(counted, count, "verdict counters add up to the packets sent");
        // Verdicts, then the events that show which paths ran (ICMP translations, replies).
        assert!(st[stats::EV_VLAN_POPPED as usize] > 0, "no tagged frame was redirected untagged");
        let seen: Vec<String> = (0..stats::VERDICT_COUNT)
            .chain(stats::EVENT_BASE..stats::STATS_LEN)
            .filter(|i| st[*i as usize] > 0)
            .map(|i| format!("{}={}", stats::name(i).unwrap(), st[i as usize]))
            .collect();
        // Layout 2: every recorded flow is in its family's table (IPv4 under the compact key,
        // which widens back to a flow to one of the VIPs), none in the other.
        let flows = dp.conntrack_flows().unwrap();
        let vip_addrs: Vec<[u32; 4]> = desired.iter().map(|v| addr::to_words(v.spec.addr.ip)).collect();
        for family in [addr::FAMILY_V4, addr::FAMILY_V6] {
            assert!(flows.iter().any(|(_, k)| k.family == family), "no flow of family {family} was recorded");
        }
        for (table, k) in &flows {
            let want = if k.family == addr::FAMILY_V4 { m::CONNTRACK4 } else { m::CONNTRACK };
            assert_eq!(*table, want, "flow {k:?} recorded in the wrong table");
            assert!(vip_addrs.contains(&k.dst), "recorded flow {k:?} is not to a VIP");
        }
        println!("fuzzed {count} packets in {:.1} s (seed {seed}): {}; {} flows recorded", started.elapsed().as_secs_f64(), seen.join(" "), flows.len());
    })
    .unwrap();
}
