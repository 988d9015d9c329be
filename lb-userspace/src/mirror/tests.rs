//! The mirror's unit tests: write order, slot deltas, draining, id generations, endpoints,
//! restores, and refusals that write nothing, against an in-memory `MapWriter`.

use super::*;
use crate::model::{HashFields, Mac, VipSpec};

/// Records writes and keeps a copy of the maps, like the kernel would. It also checks the
/// endpoints' invariant on every write: an endpoint names a valid backend entry of the
/// same generation.
#[derive(Clone, Default)]
struct FakeMaps {
    vips: BTreeMap<(Vec<u32>, u16, u8), VipInfo>,
    backends: BTreeMap<u32, BackendInfo>,
    ring: BTreeMap<u32, u32>,
    filter: BTreeMap<u32, u64>,
    endpoints: HashMap<EndpointKey, Endpoint>,
    log: Vec<String>,
    /// Log length at each ring write (ring writes are not logged).
    ring_writes: Vec<usize>,
}

impl FakeMaps {
    /// Whether the filter of `kind` has `ip`'s bit.
    fn has(&self, kind: u32, ip: IpAddr) -> bool {
        let bit = addr_bit(&addr::to_words(ip));
        let word = self.filter.get(&(kind * FILTER_WORDS + (bit >> 6)));
        word.is_some_and(|w| w & (1 << (bit & 63)) != 0)
    }

    /// Log position of the filter write that set (`on`) or cleared `ip`'s bit of `kind`.
    fn filter_write(&self, kind: u32, ip: IpAddr, on: bool) -> Option<usize> {
        let bit = addr_bit(&addr::to_words(ip));
        let index = kind * FILTER_WORDS + (bit >> 6);
        self.log.iter().position(|l| {
            let mut f = l.split(' ');
            f.next() == Some("filter")
                && f.next() == Some(&index.to_string())
                && f.next()
                    .and_then(|w| u64::from_str_radix(w, 16).ok())
                    .is_some_and(|w| (w & (1 << (bit & 63)) != 0) == on)
        })
    }
}

impl MapWriter for FakeMaps {
    fn put_vip(&mut self, k: &VipKey, i: &VipInfo) -> Result<(), MirrorError> {
        self.log.push(format!("vip+ {}", k.proto));
        self.vips.insert((k.addr.to_vec(), k.port, k.proto), *i);
        Ok(())
    }
    fn del_vip(&mut self, k: &VipKey) -> Result<(), MirrorError> {
        self.log.push(format!("vip- {}", k.proto));
        self.vips.remove(&(k.addr.to_vec(), k.port, k.proto));
        Ok(())
    }
    fn put_backend(&mut self, id: u32, i: &BackendInfo) -> Result<(), MirrorError> {
        self.log.push(format!("backend {id} valid={}", i.flags));
        for e in self.endpoints.values().filter(|e| e.backend == id) {
            assert!(
                i.flags & BACKEND_F_VALID != 0 && i.generation == e.generation,
                "backend {id} written as {i:?} while endpoint {e:?} names it: {:?}",
                self.writes()
            );
        }
        self.backends.insert(id, *i);
        Ok(())
    }
    fn put_endpoint(&mut self, k: &EndpointKey, e: &Endpoint) -> Result<(), MirrorError> {
        self.log.push(format!("endpoint+ {}", e.backend));
        let b = self.backends.get(&e.backend);
        assert!(
            b.is_some_and(|b| b.flags & BACKEND_F_VALID != 0 && b.generation == e.generation),
            "endpoint {e:?} names backend entry {b:?}: {:?}",
            self.writes()
        );
        self.endpoints.insert(*k, *e);
        Ok(())
    }
    fn del_endpoint(&mut self, k: &EndpointKey) -> Result<(), MirrorError> {
        let gone = self.endpoints.remove(k);
        self.log.push(format!(
            "endpoint- {}",
            gone.map_or("absent".into(), |e| e.backend.to_string())
        ));
        Ok(())
    }
    fn put_filter_words(&mut self, indexes: &[u32], words: &[u64]) -> Result<(), MirrorError> {
        for (&index, &word) in indexes.iter().zip(words) {
            self.log.push(format!("filter {index} {word:x}"));
            self.filter.insert(index, word);
        }
        Ok(())
    }
    fn reset_counters(&mut self, vip: bool, id: u32) -> Result<(), MirrorError> {
        self.log.push(format!(
            "reset {} {id}",
            if vip { "vip" } else { "backend" }
        ));
        Ok(())
    }
    fn put_ring_lines(&mut self, lines: &[u32], values: &[RingLine]) -> Result<(), MirrorError> {
        self.ring_writes.push(self.log.len());
        for (line, value) in lines.iter().zip(values) {
            for (j, b) in value.iter().enumerate() {
                self.ring.insert(line * RING_LINE_SLOTS + j as u32, *b);
            }
        }
        Ok(())
    }
}

const M: u32 = 1009;

fn vip(port: u16, n: u8) -> VipState {
    VipState {
        spec: VipSpec {
            addr: VipAddr {
                ip: "10.0.0.100".parse().unwrap(),
                port,
                proto: crate::model::Proto::Tcp,
            },
            mode: Mode::L2,
            hash: HashFields::FiveTuple,
        },
        backends: (1..=n).map(|i| target(i, 1)).collect(),
    }
}

fn target(i: u8, weight: u32) -> BackendTarget {
    BackendTarget {
        addr: IpAddr::from([10, 0, 1, i]),
        weight,
        mac: Mac([2, 0, 0, 0, 0, i]),
        ifindex: 0,
        src_mac: Mac::default(),
        port: 0,
    }
}

#[test]
fn ring_digest_follows_addresses_not_ids() {
    let (mut maps, mut other_maps) = (FakeMaps::default(), FakeMaps::default());
    let (mut a, mut b) = (Mirror::new(M, 4, 16), Mirror::new(M, 4, 16));
    let addr = vip(80, 3).spec.addr;
    assert_eq!(a.ring_digest(&addr), None, "no ring yet");
    a.sync(&mut maps, &[vip(80, 3)]).unwrap();
    // Another node that handed out its ids in another order.
    let mut reversed = vip(80, 3);
    reversed.backends.reverse();
    b.sync(&mut other_maps, &[vip(81, 2), reversed]).unwrap();
    let digest = a.ring_digest(&addr).unwrap();
    assert_ne!(
        a.backend_id(&addr, target(1, 1).addr),
        b.backend_id(&addr, target(1, 1).addr)
    );
    assert_eq!(b.ring_digest(&addr), Some(digest));
    // Kept up to date by every sync.
    a.sync(&mut maps, &[vip(80, 2)]).unwrap();
    assert_ne!(a.ring_digest(&addr), Some(digest));
    a.set_seed(7);
    let unseeded = a.ring_digest(&addr);
    a.sync(&mut maps, &[vip(80, 2)]).unwrap();
    assert_ne!(a.ring_digest(&addr), unseeded);
}

#[test]
fn new_vip_is_written_whole_and_appears_last() {
    let mut maps = FakeMaps::default();
    let mut mirror = Mirror::new(M, 4, 16);
    let r = mirror.sync(&mut maps, &[vip(80, 3)]).unwrap();
    assert_eq!(
        r,
        SyncReport {
            vips_added: 1,
            vips_removed: 0,
            backends_written: 3,
            ring_slots_written: M as usize
        }
    );
    // Whole lines: the ring's slots, then the last line's padding.
    assert_eq!(maps.ring.len(), (ring_lines(M) * RING_LINE_SLOTS) as usize);
    let slots: Vec<u32> = maps.ring.values().copied().collect();
    assert!(slots[..M as usize].iter().all(|b| *b < 3));
    assert!(slots[M as usize..].iter().all(|b| *b == NO_BACKEND));
    // The filters first (all of them: their state was unknown), counters of the new ids
    // zeroed, backends written, then the VIP and its address entry.
    let filters = (FILTER_KINDS * FILTER_WORDS) as usize;
    assert!(maps.log[..filters].iter().all(|l| l.starts_with("filter")));
    assert!(maps.has(FILTER_VIP, "10.0.0.100".parse().unwrap()));
    let n = maps.log.len();
    assert_eq!(&maps.log[n - 2..], &["vip+ 6", "vip+ 0"]);
    assert_eq!(maps.log[filters], "reset vip 0");
    assert_eq!(
        maps.log
            .iter()
            .filter(|l| l.starts_with("reset backend"))
            .count(),
        3
    );
    assert_eq!(
        maps.log.iter().filter(|l| l.starts_with("backend")).count(),
        3
    );
}

#[test]
fn one_backend_change_writes_only_the_slots_that_change() {
    // The default ring size: disruption bounds hold for it (small rings move more).
    const M: u32 = lb_common::maps::DEFAULT_RING_SIZE;
    let mut maps = FakeMaps::default();
    let mut mirror = Mirror::new(M, 4, 16);
    mirror.sync(&mut maps, &[vip(80, 10)]).unwrap();
    let before = mirror.ring(&vip(80, 10).spec.addr).unwrap().to_vec();
    let removed_id = mirror
        .backend_id(&vip(80, 10).spec.addr, target(4, 1).addr)
        .unwrap();
    let owned = before.iter().filter(|&&b| b == removed_id).count();

    let mut smaller = vip(80, 10);
    smaller.backends.retain(|b| b.addr != target(4, 1).addr);
    maps.log.clear();
    let r = mirror.sync(&mut maps, &[smaller]).unwrap();
    // The removed backend's slots move, few others do; then it is invalidated.
    assert!(
        r.ring_slots_written >= owned && r.ring_slots_written < owned + M as usize / 100,
        "{r:?}, owned {owned}"
    );
    assert_eq!(maps.log, vec![format!("backend {removed_id} valid=0")]);
    assert!(maps.ring.values().all(|&b| b != removed_id));
}

#[test]
fn weight_zero_drains_without_removing_the_backend() {
    let mut maps = FakeMaps::default();
    let mut mirror = Mirror::new(M, 4, 16);
    let mut v = vip(80, 3);
    mirror.sync(&mut maps, &[v.clone()]).unwrap();
    v.backends[1].weight = 0;
    maps.log.clear();
    mirror.sync(&mut maps, &[v.clone()]).unwrap();
    let id = mirror.backend_id(&v.spec.addr, v.backends[1].addr).unwrap();
    assert!(
        maps.log.is_empty(),
        "the backend entry stays valid: {:?}",
        maps.log
    );
    assert_eq!(maps.backends[&id].flags, BACKEND_F_VALID);
    assert!(maps.ring.values().all(|&b| b != id));
}

#[test]
fn a_new_egress_mac_rewrites_the_backend_in_place() {
    let mut maps = FakeMaps::default();
    let mut mirror = Mirror::new(M, 4, 16);
    let mut v = vip(80, 2);
    v.backends[0].ifindex = 7;
    v.backends[0].src_mac = Mac([2, 0, 0, 0, 7, 1]);
    mirror.sync(&mut maps, &[v.clone()]).unwrap();
    let id = mirror.backend_id(&v.spec.addr, v.backends[0].addr).unwrap();
    let generation = maps.backends[&id].generation;
    // The interface got another address (a bond failing over, say).
    v.backends[0].src_mac = Mac([2, 0, 0, 0, 7, 2]);
    mirror.sync(&mut maps, &[v.clone()]).unwrap();
    assert_eq!(maps.backends[&id].src_mac, [2, 0, 0, 0, 7, 2]);
    assert_eq!(
        maps.backends[&id].generation, generation,
        "same backend: its flows stay"
    );
}

#[test]
fn reused_backend_ids_get_a_new_generation() {
    let mut maps = FakeMaps::default();
    let mut mirror = Mirror::new(M, 4, 16);
    mirror.sync(&mut maps, &[vip(80, 1)]).unwrap();
    let gen1 = maps.backends[&0].generation;
    mirror.sync(&mut maps, &[]).unwrap();
    let mut other = vip(80, 0);
    other.backends.push(target(9, 1));
    mirror.sync(&mut maps, &[other]).unwrap();
    assert_eq!(maps.backends[&0].addr[0], u32::from_ne_bytes([10, 0, 1, 9]));
    assert_ne!(maps.backends[&0].generation, gen1);
}

#[test]
fn removing_a_vip_removes_its_entries_but_keeps_a_shared_address() {
    let mut maps = FakeMaps::default();
    let mut mirror = Mirror::new(M, 4, 16);
    mirror.sync(&mut maps, &[vip(80, 2), vip(443, 2)]).unwrap();
    assert_eq!(maps.vips.len(), 3, "two VIPs and one address entry");
    mirror.sync(&mut maps, &[vip(443, 2)]).unwrap();
    assert_eq!(maps.vips.len(), 2);
    mirror.sync(&mut maps, &[]).unwrap();
    assert!(maps.vips.is_empty());
    assert!(maps.backends.values().all(|b| b.flags == 0));
}

#[test]
fn filter_bits_are_set_before_an_address_appears_and_cleared_after_it_goes() {
    let mut maps = FakeMaps::default();
    let mut mirror = Mirror::new(M, 4, 16);
    mirror.sync(&mut maps, &[vip(80, 1)]).unwrap();
    let vip_ip: IpAddr = "10.0.0.100".parse().unwrap();
    assert!(maps.has(FILTER_VIP, vip_ip));
    assert_eq!(
        maps.filter.len(),
        (FILTER_KINDS * FILTER_WORDS) as usize,
        "first sync writes all"
    );

    // An L3 VIP on another address: its address and its backends' become visible first.
    let mut l3 = vip(443, 1);
    l3.spec.addr.ip = "10.0.0.200".parse().unwrap();
    l3.spec.mode = Mode::L3;
    l3.backends[0].port = 8443;
    l3.backends[0].addr = "10.0.2.1".parse().unwrap();
    let (l3_ip, backend) = (l3.spec.addr.ip, l3.backends[0].addr);
    maps.log.clear();
    mirror.sync(&mut maps, &[vip(80, 1), l3.clone()]).unwrap();
    let vip_in = maps
        .log
        .iter()
        .position(|l| l == "vip+ 6")
        .expect("VIP written");
    let reply_on = maps
        .filter_write(FILTER_REPLY, backend, true)
        .expect("reply bit");
    let addr_on = maps.filter_write(FILTER_VIP, l3_ip, true).expect("VIP bit");
    assert!(reply_on < vip_in && addr_on < vip_in, "{:?}", maps.log);
    assert!(
        maps.log.iter().filter(|l| l.starts_with("filter")).count() <= 2,
        "only changed words: {:?}",
        maps.log
    );
    let id = mirror.backend_id(&l3.spec.addr, backend).unwrap();
    assert_eq!(maps.backends[&id].port, 8443u16.to_be());
    // An L2 VIP's backends are not reply sources.
    assert!(!maps.has(FILTER_REPLY, vip(80, 1).backends[0].addr));

    // Removed: the bits go only after the VIP entry did.
    maps.log.clear();
    mirror.sync(&mut maps, &[vip(80, 1)]).unwrap();
    let vip_out = maps
        .log
        .iter()
        .position(|l| l == "vip- 6")
        .expect("VIP removed");
    let reply_off = maps
        .filter_write(FILTER_REPLY, backend, false)
        .expect("reply bit cleared");
    let addr_off = maps
        .filter_write(FILTER_VIP, l3_ip, false)
        .expect("VIP bit cleared");
    assert!(vip_out < reply_off && vip_out < addr_off, "{:?}", maps.log);
    assert!(!maps.has(FILTER_REPLY, backend) && !maps.has(FILTER_VIP, l3_ip));
    assert!(maps.has(FILTER_VIP, vip_ip));
}

#[test]
fn a_new_port_or_mode_gives_new_ids() {
    let mut maps = FakeMaps::default();
    let mut mirror = Mirror::new(M, 4, 16);
    let mut l3 = vip(443, 2);
    l3.spec.mode = Mode::L3;
    mirror.sync(&mut maps, &[l3.clone()]).unwrap();
    let a = l3.backends[0].addr;
    let first = mirror.backend_id(&l3.spec.addr, a).unwrap();
    l3.backends[0].port = 9090;
    mirror.sync(&mut maps, &[l3.clone()]).unwrap();
    let second = mirror.backend_id(&l3.spec.addr, a).unwrap();
    assert_ne!(
        first, second,
        "a port change must re-place the backend's flows"
    );
    assert_eq!(maps.backends[&first].flags, 0, "the old id is released");
    // Back to L2 (no port): every backend is placed anew (a new generation for its id).
    let mut l2 = l3.clone();
    l2.spec.mode = Mode::L2;
    l2.backends[0].port = 0;
    let placed = |m: &Mirror, maps: &FakeMaps, v: &VipState| -> Vec<(u32, u32)> {
        v.backends
            .iter()
            .map(|b| {
                let id = m.backend_id(&v.spec.addr, b.addr).unwrap();
                (id, maps.backends[&id].generation)
            })
            .collect()
    };
    let before = placed(&mirror, &maps, &l2);
    mirror.sync(&mut maps, &[l2.clone()]).unwrap();
    for (after, before) in placed(&mirror, &maps, &l2).into_iter().zip(before) {
        assert_ne!(after, before, "a mode change must re-place every flow");
    }
}

#[test]
fn invalid_requests_change_nothing() {
    let mut maps = FakeMaps::default();
    let mut mirror = Mirror::new(M, 1, 4);
    mirror.sync(&mut maps, &[vip(80, 2)]).unwrap();
    let log = maps.log.len();
    let mut port_on_l2 = vip(80, 2);
    port_on_l2.backends[0].port = 8080;
    let mut dup = vip(80, 2);
    dup.backends.push(target(1, 3));
    let mut v6 = vip(80, 1);
    v6.backends.push(BackendTarget {
        addr: "2001:db8::1".parse().unwrap(),
        ..target(7, 1)
    });
    let cases: Vec<(Vec<VipState>, &str)> = vec![
        (vec![vip(80, 2), vip(443, 2)], "at most 1"),
        (vec![vip(80, 5)], "at most 4"),
        (vec![port_on_l2], "only L3 (NAT) mode can rewrite ports"),
        (vec![dup], "declared twice"),
        (vec![v6], "IPv6"),
        (vec![vip(80, 2), vip(80, 2)], "declared twice"),
    ];
    for (req, want) in cases {
        let err = mirror.sync(&mut maps, &req).unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
        assert_eq!(
            maps.log.len(),
            log,
            "a refused request wrote something: {err}"
        );
    }
}

impl FakeMaps {
    /// What a restarted daemon would read from these maps.
    fn adopted(&self, max_backends: u32) -> AdoptedMaps {
        AdoptedMaps {
            backends: (0..max_backends)
                .map(|i| self.backends.get(&i).copied().unwrap_or_default())
                .collect(),
            endpoints: self.endpoints.iter().map(|(k, v)| (*k, *v)).collect(),
        }
    }

    fn position(&self, line: &str) -> usize {
        self.log
            .iter()
            .position(|l| l == line)
            .unwrap_or_else(|| panic!("no {line:?} in {:?}", self.writes()))
    }

    fn count(&self, prefix: &str) -> usize {
        self.log.iter().filter(|l| l.starts_with(prefix)).count()
    }

    /// The log without the (many) filter writes, for failure messages.
    fn writes(&self) -> Vec<&str> {
        let not_filter = |l: &&String| !l.starts_with("filter");
        self.log
            .iter()
            .filter(not_filter)
            .map(String::as_str)
            .collect()
    }
}

/// L3 VIP 10.0.0.200:`port`/tcp (IPv6: [fd00::200]) with backends 10.0.2.1..=n
/// (fd00:2::1..), each with port `backend_port` (0: none).
fn l3(port: u16, n: u8, backend_port: u16, v6: bool) -> VipState {
    let ip: IpAddr = if v6 {
        "fd00::200".parse().unwrap()
    } else {
        "10.0.0.200".parse().unwrap()
    };
    let backend = |i: u8| BackendTarget {
        addr: if v6 {
            IpAddr::from([0xfd00, 2, 0, 0, 0, 0, 0, u16::from(i)])
        } else {
            IpAddr::from([10, 0, 2, i])
        },
        mac: Mac::default(),
        port: backend_port,
        ..target(i, 1)
    };
    VipState {
        spec: VipSpec {
            addr: VipAddr {
                ip,
                port,
                proto: crate::model::Proto::Tcp,
            },
            mode: Mode::L3,
            hash: HashFields::FiveTuple,
        },
        backends: (1..=n).map(backend).collect(),
    }
}

fn key_of(v: &VipState, b: usize) -> EndpointKey {
    endpoint_key(&v.spec.addr, &v.backends[b])
}

fn id_of(m: &Mirror, v: &VipState, b: usize) -> u32 {
    m.backend_id(&v.spec.addr, v.backends[b].addr).unwrap()
}

#[test]
fn l3_backends_have_endpoints_that_follow_them() {
    let mut maps = FakeMaps::default();
    let mut mirror = Mirror::new(M, 4, 16);
    let mut v = l3(80, 3, 8080, false);
    mirror.sync(&mut maps, &[v.clone()]).unwrap();
    let vip_id = mirror.vip_id(&v.spec.addr).unwrap();
    assert_eq!(maps.endpoints.len(), 3);
    for (i, b) in v.backends.iter().enumerate() {
        let id = id_of(&mirror, &v, i);
        let key = EndpointKey {
            addr: addr::to_words(b.addr),
            port: 8080u16.to_be(),
            proto: 6,
            family: addr::FAMILY_V4,
        };
        let want = Endpoint {
            vip_addr: addr::to_words(v.spec.addr.ip),
            vip_port: 80u16.to_be(),
            _pad: 0,
            vip: vip_id,
            vip_flags: VIP_F_MODE_L3,
            backend: id,
            generation: maps.backends[&id].generation,
        };
        assert_eq!(maps.endpoints.get(&key), Some(&want));
    }
    // A new VIP's endpoints: after its ring, before its entry.
    let first = maps.log.iter().position(|l| l.starts_with("endpoint+"));
    assert!(first.unwrap() >= maps.ring_writes[0]);
    assert!(first.unwrap() < maps.position("vip+ 6"));

    // A hash change rewrites them in place: same ids, new flags.
    v.spec.hash = HashFields::SrcIp;
    maps.log.clear();
    mirror.sync(&mut maps, &[v.clone()]).unwrap();
    assert_eq!(maps.count("endpoint+"), 3, "{:?}", maps.writes());
    assert_eq!(maps.count("backend"), 0, "{:?}", maps.writes());
    assert!(maps
        .endpoints
        .values()
        .all(|e| e.vip_flags == VIP_F_MODE_L3 | lb_common::VIP_F_HASH_SRC_IP));

    // Draining keeps the endpoint (the backend's flows go on) and writes none.
    v.backends[0].weight = 0;
    maps.log.clear();
    mirror.sync(&mut maps, &[v.clone()]).unwrap();
    assert_eq!(maps.count("endpoint"), 0, "{:?}", maps.writes());
    assert!(maps.endpoints.contains_key(&key_of(&v, 0)));

    // A new backend's endpoint is there before the ring names it.
    v.backends.push(BackendTarget {
        port: 8080,
        ..l3(80, 4, 8080, false).backends[3].clone()
    });
    maps.log.clear();
    maps.ring_writes.clear();
    mirror.sync(&mut maps, &[v.clone()]).unwrap();
    let added = id_of(&mirror, &v, 3);
    assert!(maps.position(&format!("endpoint+ {added}")) <= maps.ring_writes[0]);

    // A port change: the old endpoint goes before the old id is released, the new one
    // names the new id.
    let (old_key, old_id) = (key_of(&v, 1), id_of(&mirror, &v, 1));
    v.backends[1].port = 9090;
    maps.log.clear();
    mirror.sync(&mut maps, &[v.clone()]).unwrap();
    assert!(
        maps.position(&format!("endpoint- {old_id}"))
            < maps.position(&format!("backend {old_id} valid=0"))
    );
    assert!(!maps.endpoints.contains_key(&old_key));
    assert_eq!(
        maps.endpoints[&key_of(&v, 1)].backend,
        id_of(&mirror, &v, 1)
    );

    // A removed backend: its endpoint goes before its entry is invalidated.
    let gone = id_of(&mirror, &v, 2);
    v.backends.remove(2);
    maps.log.clear();
    mirror.sync(&mut maps, &[v.clone()]).unwrap();
    assert!(
        maps.position(&format!("endpoint- {gone}"))
            < maps.position(&format!("backend {gone} valid=0"))
    );
    assert_eq!(maps.endpoints.len(), v.backends.len());
}

#[test]
fn endpoints_go_with_their_vip_and_its_l3_mode() {
    let mut maps = FakeMaps::default();
    let mut mirror = Mirror::new(M, 4, 16);
    // Backends without a port are reached on the VIP's; an all-ports VIP's on every port.
    let v = l3(80, 2, 0, false);
    let all = l3(0, 1, 0, true);
    mirror.sync(&mut maps, &[v.clone(), all.clone()]).unwrap();
    assert_eq!(key_of(&v, 0).port, 80u16.to_be());
    let all_key = key_of(&all, 0);
    assert_eq!((all_key.port, all_key.family), (0, addr::FAMILY_V6));
    assert_eq!(maps.endpoints[&all_key].vip_port, 0);
    assert_eq!(maps.endpoints.len(), 3);

    // L3 -> L2: the endpoints go (before the ids are released: FakeMaps checks), none come.
    let mut l2 = v.clone();
    l2.spec.mode = Mode::L2;
    mirror.sync(&mut maps, &[l2.clone(), all.clone()]).unwrap();
    assert_eq!(maps.endpoints.len(), 1);
    // And back: new ids, new endpoints.
    mirror.sync(&mut maps, &[v.clone(), all.clone()]).unwrap();
    assert_eq!(
        maps.endpoints[&key_of(&v, 1)].backend,
        id_of(&mirror, &v, 1)
    );

    // A removed VIP: its entry first, then its endpoints, then its backends.
    maps.log.clear();
    let gone = id_of(&mirror, &all, 0);
    mirror.sync(&mut maps, std::slice::from_ref(&v)).unwrap();
    let endpoint_out = maps.position(&format!("endpoint- {gone}"));
    assert!(maps.position("vip- 6") < endpoint_out);
    assert!(endpoint_out < maps.position(&format!("backend {gone} valid=0")));
    mirror.sync(&mut maps, &[]).unwrap();
    assert!(maps.endpoints.is_empty());
}

#[test]
fn a_restored_mirror_keeps_every_id_and_rewrites_every_endpoint() {
    let l2_v6 = VipState {
        spec: VipSpec {
            addr: "[fd00::100]:80/tcp".parse().unwrap(),
            ..vip(80, 0).spec
        },
        backends: (1..=2)
            .map(|i| BackendTarget {
                addr: IpAddr::from([0xfd00, 1, 0, 0, 0, 0, 0, u16::from(i)]),
                ..target(i, 1)
            })
            .collect(),
    };
    // Every backend form: ADDR:PORT (IPv4, IPv6), ADDR in L3, L2 (IPv4, IPv6).
    let mut desired = vec![
        l3(80, 3, 8080, false),
        l3(443, 3, 8443, true),
        l3(81, 2, 0, false),
        vip(80, 3),
        l2_v6,
    ];
    let mut maps = FakeMaps::default();
    let mut first = Mirror::new(M, 8, 32);
    first.sync(&mut maps, &desired).unwrap();
    // Some history, so generations differ from the first ones.
    desired[0].backends[0].port = 9090;
    first.sync(&mut maps, &desired).unwrap();
    // Every VIP's id and ring digest, every backend's id, in order.
    let ids = |m: &Mirror| -> Vec<Option<u64>> {
        desired
            .iter()
            .flat_map(|v| {
                let a = v.spec.addr;
                let backends = v.backends.iter().map(move |b| m.backend_id(&a, b.addr));
                std::iter::once(m.vip_id(&a))
                    .chain(backends)
                    .map(|id| id.map(u64::from))
                    .chain([m.ring_digest(&a)])
            })
            .collect()
    };
    let before = (ids(&first), maps.backends.clone(), maps.endpoints.clone());

    let mut second = Mirror::restore(M, 8, 32, &first.snapshot(), &maps.adopted(32));
    maps.log.clear();
    second.sync(&mut maps, &desired).unwrap();
    assert_eq!(
        maps.count("reset"),
        0,
        "no id handed out anew: {:?}",
        maps.writes()
    );
    let after = (ids(&second), maps.backends.clone(), maps.endpoints.clone());
    assert_eq!(after, before, "ids, generations, endpoints as before");
    assert_eq!(maps.count("endpoint+"), 8, "every endpoint rewritten");
    assert_eq!(maps.count("endpoint-"), 0, "{:?}", maps.writes());
}

#[test]
fn endpoints_left_in_adopted_maps_are_removed_in_order() {
    let (a, b) = (l3(80, 3, 8080, false), l3(81, 3, 8081, false));
    let mut maps = FakeMaps::default();
    let mut first = Mirror::new(M, 4, 16);
    first.sync(&mut maps, &[a.clone(), b.clone()]).unwrap();
    // A change the earlier daemon wrote but did not live to save: id 6 and its endpoint.
    let valid = BackendInfo {
        flags: BACKEND_F_VALID,
        generation: 5,
        ..BackendInfo::default()
    };
    maps.backends.insert(6, valid);
    let stray = EndpointKey {
        addr: addr::to_words(IpAddr::from([10, 0, 2, 9])),
        port: 9999u16.to_be(),
        proto: 6,
        family: addr::FAMILY_V4,
    };
    let named = Endpoint {
        backend: 6,
        generation: 5,
        ..Endpoint::default()
    };
    maps.endpoints.insert(stray, named);
    let snap = first.snapshot();

    // Both VIPs kept and a backend added: it takes id 6 (new generation) once the stray
    // endpoint naming 6 is gone (FakeMaps checks).
    let mut more = a.clone();
    more.backends
        .push(l3(80, 4, 8080, false).backends[3].clone());
    let mut kept = maps.clone();
    let mut second = Mirror::restore(M, 4, 16, &snap, &kept.adopted(16));
    second.sync(&mut kept, &[more.clone(), b.clone()]).unwrap();
    assert_eq!(id_of(&second, &more, 3), 6);
    assert!(!kept.endpoints.contains_key(&stray));
    assert_eq!(kept.endpoints.len(), 7);

    // A VIP removed while no daemon ran: its endpoints go before its ids are released,
    // the stray one at the end of the sync.
    let mut third = Mirror::restore(M, 4, 16, &snap, &maps.adopted(16));
    third.sync(&mut maps, std::slice::from_ref(&a)).unwrap();
    assert!(!maps.endpoints.contains_key(&stray));
    let vip_a = third.vip_id(&a.spec.addr).unwrap();
    assert_eq!(maps.endpoints.len(), 3);
    assert!(maps.endpoints.values().all(|e| e.vip == vip_a));
}

#[test]
fn two_l3_vips_on_one_endpoint_are_refused() {
    let mut maps = FakeMaps::default();
    let mut mirror = Mirror::new(M, 4, 16);
    let all = l3(0, 1, 0, false);
    let one = l3(80, 1, 8080, false);
    let same_port = l3(81, 1, 8080, false);
    for req in [
        vec![all.clone(), one.clone()],
        vec![one.clone(), all.clone()],
        vec![one.clone(), same_port],
    ] {
        let err = mirror.sync(&mut maps, &req).unwrap_err().to_string();
        assert!(err.contains("cannot serve both L3 VIPs"), "{err}");
        assert!(
            maps.log.is_empty(),
            "a refused request wrote {:?}",
            maps.writes()
        );
    }
}
