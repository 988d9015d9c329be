//! Data-path fuzzing through BPF_PROG_TEST_RUN with L2 and L3 VIPs over IPv4 and IPv6 loaded
//! (needs root; runs in the FIB namespace so L3 packets take their real path). Structure-aware
//! packets (valid frames, then corrupted at every layer) and pure random bytes. For every
//! packet: never XDP_ABORTED; a passed packet is byte-identical unless L3 handed it to the
//! kernel rewritten; a rewritten packet differs only in the fields its mode may change, and
//! carries valid checksums whenever the input did (checked by the builder's own code). At the
//! end the verdict counters add up to the packets sent.
//!
//! `XDPLB_FUZZ_PACKETS` sets the count (default 200 000); `XDPLB_FUZZ_SEED` the seed.
//! `cargo xtask fuzz N` runs N.

use lb_common::stats;
use lb_tests::{
    fib::{be_mac, fib_namespace},
    packet::{internet_checksum, Packet, L4},
    xdp::{test_run, vip, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
};
use lb_userspace::{
    datapath::{DataPath, LoadOptions},
    mirror::Mirror,
    model::{BackendTarget, Mode},
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

const V4_DST: [&str; 4] = ["10.1.0.100", "10.1.0.200", "10.1.0.7", "10.2.0.1"];
const V6_DST: [&str; 3] = ["fd01::100", "fd01::200", "fd01::7"];
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
    p.payload = vec![0x5a; r.below(64) as usize];
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

/// Where the IP and transport headers are, parsed independently of the program (its rules:
/// up to two VLAN tags, IPv4 IHL >= 5, IPv6 hop-by-hop/routing/destination/AH headers skipped).
struct Layout {
    v6: bool,
    l3: usize,
    l4: usize,
    proto: u8,
}

/// How many VLAN tags the program parses in `f` (up to two).
fn vlan_tags(f: &[u8]) -> usize {
    let ty = |at: usize| f.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    (0..2)
        .take_while(|n| matches!(ty(12 + 4 * n), Some(0x8100 | 0x88a8)))
        .count()
}

fn layout(f: &[u8]) -> Option<Layout> {
    let mut off = 12;
    let mut ty = u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]);
    for _ in 0..2 {
        if ty == 0x8100 || ty == 0x88a8 {
            off += 4;
            ty = u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]);
        }
    }
    let l3 = off + 2;
    match ty {
        0x0800 => {
            let ihl = (*f.get(l3)? & 0x0f) as usize * 4;
            Some(Layout {
                v6: false,
                l3,
                l4: l3 + ihl,
                proto: *f.get(l3 + 9)?,
            })
        }
        0x86dd => {
            let (mut next, mut at) = (*f.get(l3 + 6)?, l3 + 40);
            while matches!(next, 0 | 43 | 60 | 51) {
                let len = if next == 51 {
                    (*f.get(at + 1)? as usize + 2) * 4
                } else {
                    (*f.get(at + 1)? as usize + 1) * 8
                };
                next = *f.get(at)?;
                at += len;
            }
            Some(Layout {
                v6: true,
                l3,
                l4: at,
                proto: next,
            })
        }
        _ => None,
    }
}

/// Whether the IPv4 header checksum and the TCP/UDP checksum of `f` are valid (None: not
/// checkable, e.g. lengths that do not fit the frame).
fn checksums_valid(f: &[u8]) -> Option<bool> {
    let l = layout(f)?;
    let (src, dst, l4_len) = if l.v6 {
        let plen = u16::from_be_bytes([f[l.l3 + 4], f[l.l3 + 5]]) as usize;
        (
            f.get(l.l3 + 8..l.l3 + 24)?,
            f.get(l.l3 + 24..l.l3 + 40)?,
            (l.l3 + 40 + plen).checked_sub(l.l4)?,
        )
    } else {
        let tot = u16::from_be_bytes([f[l.l3 + 2], f[l.l3 + 3]]) as usize;
        if internet_checksum(f.get(l.l3..l.l4)?) != 0 {
            return Some(false);
        }
        (
            f.get(l.l3 + 12..l.l3 + 16)?,
            f.get(l.l3 + 16..l.l3 + 20)?,
            (l.l3 + tot).checked_sub(l.l4)?,
        )
    };
    let seg = f.get(l.l4..l.l4 + l4_len)?;
    if l.proto == 17 && !l.v6 && seg.get(6..8)? == [0, 0] {
        return Some(true);
    }
    // The pseudo-header; ICMP for IPv4 has none.
    let mut data = Vec::new();
    if l.v6 {
        data.extend_from_slice(src);
        data.extend_from_slice(dst);
        data.extend_from_slice(&(l4_len as u32).to_be_bytes());
        data.extend_from_slice(&[0, 0, 0, l.proto]);
    } else if l.proto != 1 {
        data.extend_from_slice(src);
        data.extend_from_slice(dst);
        data.extend_from_slice(&[0, l.proto]);
        data.extend_from_slice(&(l4_len as u16).to_be_bytes());
    }
    data.extend_from_slice(seg);
    Some(internet_checksum(&data) == 0)
}

/// Byte ranges a rewrite may change: MACs always; for L3 also TTL/hop limit, addresses, ports
/// and checksums, and in an ICMP error the quoted packet's (RFC 5508 translation).
fn allowed(f: &[u8], l3_mode: bool) -> Vec<std::ops::Range<usize>> {
    // The MACs are always fair game.
    let mut r = Vec::new();
    r.push(0..12);
    if !l3_mode {
        return r;
    }
    if let Some(l) = layout(f) {
        r.extend(header_fields(l.v6, l.l3, l.l4, l.proto));
        if matches!(l.proto, 1 | 58) {
            // The quoted packet after the 8-byte ICMP header: its header, then TCP or UDP.
            let inner = l.l4 + 8;
            let (v6, ihl) = if l.v6 {
                (true, 40)
            } else {
                (false, (f.get(inner).map_or(5, |b| b & 0x0f) as usize) * 4)
            };
            let proto = f.get(inner + if v6 { 6 } else { 9 }).copied().unwrap_or(0);
            r.extend(header_fields(v6, inner, inner + ihl, proto));
        }
    }
    r
}

/// TTL/hop limit, addresses (and IPv4 header checksum), ports and the transport checksum of
/// an IP header at `l3` whose transport header is at `l4`.
fn header_fields(v6: bool, l3: usize, l4: usize, proto: u8) -> Vec<std::ops::Range<usize>> {
    let mut r = if v6 {
        vec![l3 + 7..l3 + 8, l3 + 8..l3 + 40]
    } else {
        vec![l3 + 8..l3 + 9, l3 + 10..l3 + 20]
    };
    r.push(l4..l4 + 4);
    r.push(if proto == 6 {
        l4 + 16..l4 + 18
    } else {
        l4 + 6..l4 + 8
    });
    r
}

fn check(input: &[u8], action: u32, out: &[u8], reason: u32) -> Result<(), String> {
    if ![XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT].contains(&action) {
        return Err(format!("verdict {action}"));
    }
    let rewritten = matches!(action, XDP_TX | XDP_REDIRECT)
        || reason == stats::PASS_NO_NEIGH
        || reason == stats::PASS_KERNEL_FRAGMENTS;
    if action == XDP_DROP {
        return Ok(());
    }
    if reason == stats::TX_ICMP_TOO_BIG {
        // A new packet: an ICMP error quoting the input's start, its checksums right.
        return if checksums_valid(out) == Some(true) {
            Ok(())
        } else {
            Err("an ICMP \"too big\" with wrong checksums".into())
        };
    }
    if !rewritten {
        return if out == input {
            Ok(())
        } else {
            Err("a passed packet changed".into())
        };
    }
    // Redirected out another interface, an L2 frame leaves without its VLAN tags: compared
    // with its input without them (a redirect that kept them fails the length check).
    let untagged: Vec<u8>;
    let input = match vlan_tags(input) {
        n if action == XDP_REDIRECT && n > 0 => {
            untagged = [&input[..12], &input[12 + 4 * n..]].concat();
            &untagged[..]
        }
        _ => input,
    };
    if out.len() != input.len() {
        return Err("a rewritten packet changed length".into());
    }
    let l3_mode = input[12..] != out[12..];
    let ranges = allowed(input, l3_mode);
    if let Some(i) =
        (0..input.len()).find(|i| input[*i] != out[*i] && !ranges.iter().any(|r| r.contains(i)))
    {
        return Err(format!(
            "byte {i} changed outside the fields the mode may change"
        ));
    }
    if checksums_valid(input) == Some(true) && checksums_valid(out) != Some(true) {
        return Err("valid checksums in, invalid out".into());
    }
    Ok(())
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
        let opts = LoadOptions { conntrack_size: 65536, ..LoadOptions::default() };
        let mut dp = DataPath::load(&opts).expect("load xdplb (root?)");
        let ifaces = [
            dp.register_egress("c0").unwrap().0,
            dp.register_egress("b0").unwrap().0,
        ];
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
            let (action, got) = test_run(dp.program().unwrap(), &frame, Some(*r.pick(&ifaces)));
            let now = dp.stats().unwrap();
            let reason = (0..stats::VERDICT_COUNT).find(|i| now[*i as usize] != last[*i as usize]).expect("a verdict was counted");
            last = now;
            if let Err(e) = check(&frame, action, &got, reason) {
                panic!("packet {n} (seed {seed}): {e}; reason {:?}\n in: {frame:02x?}\nout: {got:02x?}", stats::name(reason));
            }
        }
        let st = dp.stats().unwrap();
        let counted: u64 = (0..stats::VERDICT_COUNT).map(|i| st[i as usize]).sum();
        assert_eq!(counted, count, "verdict counters add up to the packets sent");
        assert!(st[stats::EV_VLAN_POPPED as usize] > 0, "no tagged frame was redirected untagged");
        let mut seen: Vec<String> = (0..stats::VERDICT_COUNT)
            .filter(|i| st[*i as usize] > 0)
            .map(|i| format!("{}={}", stats::name(i).unwrap(), st[i as usize]))
            .collect();
        seen.sort();
        println!("fuzzed {count} packets in {:.1} s (seed {seed}): {}", started.elapsed().as_secs_f64(), seen.join(" "));
    })
    .unwrap();
}
