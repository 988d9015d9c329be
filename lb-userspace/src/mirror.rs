//! Mirrors the model into the data path's maps, writing only what changed, in an order that
//! never shows a packet a half-applied change:
//!
//! * a new VIP gets its backends and its whole ring before its VIP entry appears;
//! * a backend joins the backend array before any ring slot points at it, and leaves it only
//!   after no slot does; a changed ring is written slot by slot, and every slot is valid on its
//!   own (old or new owner), as in Katran;
//! * a removed VIP disappears from the VIP map first;
//! * an L3 backend's endpoint (how the data path matches its replies) appears after its backend
//!   entry, before the ring of an existing VIP names the backend, and goes before the backend
//!   id is released, so an endpoint never names a backend entry that is invalid;
//! * the address filters gain an address's bit before its VIP or L3 backend appears and lose
//!   it only after they are gone.
//!
//! Every request is validated in full before the first write, so a refused change leaves the
//! maps exactly as they were.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use lb_common::{
    addr,
    hash::{addr_bit, flow_hash},
    maps::{
        ring_lines, RingLine, FILTER_KINDS, FILTER_REPLY, FILTER_VIP, FILTER_WORDS, RING_LINE_SLOTS,
    },
    BackendInfo, Endpoint, EndpointKey, FlowKey, VipInfo, VipKey, BACKEND_F_VALID, NO_BACKEND,
    VIP_F_ADDRESS, VIP_F_MODE_L3,
};
use thiserror::Error;

use crate::{
    maglev::{self, RingMember},
    model::{BackendTarget, EndpointConflict, Mode, ReplyEndpoints, VipAddr, VipState},
};

/// The writes the mirror needs; the kernel maps implement it, and tests record it.
pub trait MapWriter {
    fn put_vip(&mut self, key: &VipKey, info: &VipInfo) -> Result<(), MirrorError>;
    fn del_vip(&mut self, key: &VipKey) -> Result<(), MirrorError>;
    fn put_backend(&mut self, id: u32, info: &BackendInfo) -> Result<(), MirrorError>;
    /// Endpoints of L3 backends (`lb_common::maps::ENDPOINTS`).
    fn put_endpoint(&mut self, key: &EndpointKey, value: &Endpoint) -> Result<(), MirrorError>;
    /// Removes an endpoint; one that is not there is no error.
    fn del_endpoint(&mut self, key: &EndpointKey) -> Result<(), MirrorError>;
    /// Ring lines (`lb_common::maps::RING`): `values[i]` at index `lines[i]`.
    fn put_ring_lines(&mut self, lines: &[u32], values: &[RingLine]) -> Result<(), MirrorError>;
    /// Words of the address filters (`lb_common::maps::ADDR_FILTER`): `words[i]` at `indexes[i]`.
    fn put_filter_words(&mut self, indexes: &[u32], words: &[u64]) -> Result<(), MirrorError>;
    /// Zeroes the traffic counters of an id handed to a new VIP (`vip`) or backend.
    fn reset_counters(&mut self, vip: bool, id: u32) -> Result<(), MirrorError>;
}

#[derive(Debug, Error)]
pub enum MirrorError {
    #[error(
        "{wanted} VIPs requested but the data path was loaded for at most {max} (raise max_vips)"
    )]
    TooManyVips { wanted: usize, max: u32 },
    #[error("{wanted} backends requested but the data path was loaded for at most {max} (raise max_backends)")]
    TooManyBackends { wanted: usize, max: u32 },
    #[error("VIP {0} is declared twice")]
    DuplicateVip(VipAddr),
    #[error("backend {backend} is declared twice for VIP {vip}")]
    DuplicateBackend { vip: VipAddr, backend: IpAddr },
    #[error("backend {backend} of VIP {vip} is IPv{got} but the VIP is IPv{want}; L2 mode needs the same family")]
    FamilyMismatch {
        vip: VipAddr,
        backend: IpAddr,
        got: u8,
        want: u8,
    },
    #[error("backend {backend} of VIP {vip} has a port, but only L3 (NAT) mode can rewrite ports")]
    PortNeedsL3 { vip: VipAddr, backend: IpAddr },
    #[error(transparent)]
    SharedEndpoint(#[from] EndpointConflict),
    #[error("writing map {map} failed: {reason}")]
    Map { map: &'static str, reason: String },
}

/// What one `sync` wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub vips_added: usize,
    pub vips_removed: usize,
    pub backends_written: usize,
    pub ring_slots_written: usize,
}

/// Flags value of a restored VIP whose entry must be rewritten on the next sync.
const UNKNOWN_FLAGS: u32 = u32::MAX;

/// The ids a mirror handed out, saved by the daemon so a restarted daemon keeps them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MirrorSnapshot {
    pub vips: Vec<SnapshotVip>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotVip {
    pub addr: VipAddr,
    pub id: u32,
    /// (backend address, backend id)
    pub backends: Vec<(IpAddr, u32)>,
}

/// What a restarted daemon reads from the maps it adopted: they, not the saved ids, say what
/// the data path holds.
#[derive(Clone, Debug, Default)]
pub struct AdoptedMaps {
    /// The backend array, by id.
    pub backends: Vec<BackendInfo>,
    /// Every entry of the endpoint map.
    pub endpoints: Vec<(EndpointKey, Endpoint)>,
}

impl AdoptedMaps {
    /// The port (host order, 0 for none) of the backend `addr` holding id `id`, or 0 when the
    /// entry is another backend's: then the id is not known to be this backend's endpoint.
    fn port_of(&self, id: u32, addr: IpAddr) -> u16 {
        self.backends
            .get(id as usize)
            .filter(|b| b.addr == addr::to_words(addr) && b.family == addr::family(addr))
            .map_or(0, |b| u16::from_be(b.port))
    }
}

struct MirroredVip {
    id: u32,
    flags: u32,
    /// Backend ids by address.
    backends: BTreeMap<IpAddr, (u32, BackendTarget)>,
    ring: Vec<u32>,
    /// `ring_digest`, kept from the last sync that wrote the ring (None before).
    digest: Option<u64>,
}

/// The control plane's copy of what is in the maps, and the ids it handed out.
pub struct Mirror {
    ring_size: u32,
    /// Maglev seed of every ring (`[maglev] seed`); the next sync rebuilds rings with it.
    seed: u32,
    max_vips: u32,
    max_backends: u32,
    vips: BTreeMap<VipAddr, MirroredVip>,
    free_vip_ids: BTreeSet<u32>,
    free_backend_ids: BTreeSet<u32>,
    /// Generation of each backend id, bumped whenever the id is handed out again.
    generations: Vec<u32>,
    /// Address-filter words last written (None: unknown, all written on the next sync).
    filter: Option<Vec<u64>>,
    /// Endpoint entries this mirror wrote, as the map holds them.
    endpoints: HashMap<EndpointKey, Endpoint>,
    /// Endpoint entries found in adopted maps and not rewritten yet: removed before the
    /// backend they name is released, and at the end of a sync if no wanted backend has them.
    adopted_endpoints: HashMap<EndpointKey, Endpoint>,
}

impl Mirror {
    pub fn new(ring_size: u32, max_vips: u32, max_backends: u32) -> Self {
        Mirror {
            ring_size,
            seed: 0,
            max_vips,
            max_backends,
            vips: BTreeMap::new(),
            free_vip_ids: (0..max_vips).collect(),
            free_backend_ids: (0..max_backends).collect(),
            generations: vec![0; max_backends as usize],
            filter: None,
            endpoints: HashMap::new(),
            adopted_endpoints: HashMap::new(),
        }
    }

    /// The ids handed out, for saving.
    pub fn snapshot(&self) -> MirrorSnapshot {
        MirrorSnapshot {
            vips: self
                .vips
                .iter()
                .map(|(addr, v)| SnapshotVip {
                    addr: *addr,
                    id: v.id,
                    backends: v.backends.iter().map(|(a, (id, _))| (*a, *id)).collect(),
                })
                .collect(),
        }
    }

    /// The mirror of maps adopted from an earlier daemon: ids from its snapshot, generations
    /// and backend ports as read from the backend map (an L3 backend whose port differed
    /// would get a new id, and its flows would be placed again). Contents are treated as
    /// unknown, so the next `sync` rewrites every entry and every ring slot of the kept VIPs
    /// (each write is valid on its own) and removes what is no longer wanted, endpoints
    /// included. Snapshot entries that do not fit the limits are ignored.
    pub fn restore(
        ring_size: u32,
        max_vips: u32,
        max_backends: u32,
        snap: &MirrorSnapshot,
        maps: &AdoptedMaps,
    ) -> Self {
        let mut m = Mirror::new(ring_size, max_vips, max_backends);
        for (i, b) in maps.backends.iter().enumerate().take(max_backends as usize) {
            m.generations[i] = b.generation;
        }
        m.adopted_endpoints = maps.endpoints.iter().copied().collect();
        for v in &snap.vips {
            if !m.free_vip_ids.remove(&v.id) {
                continue;
            }
            let mut backends = BTreeMap::new();
            for (addr, id) in &v.backends {
                if m.free_backend_ids.remove(id) {
                    // Unknown target: differs from any desired one, so it is rewritten.
                    let unknown = BackendTarget {
                        addr: *addr,
                        weight: 0,
                        mac: crate::model::Mac([0; 6]),
                        ifindex: u32::MAX,
                        src_mac: crate::model::Mac([0; 6]),
                        port: maps.port_of(*id, *addr),
                    };
                    backends.insert(*addr, (*id, unknown));
                }
            }
            m.vips.insert(
                v.addr,
                MirroredVip {
                    id: v.id,
                    flags: UNKNOWN_FLAGS,
                    backends,
                    ring: Vec::new(),
                    digest: None,
                },
            );
        }
        m
    }

    /// Ids of every backend the mirror holds (for sweeping stale entries out of adopted maps).
    pub fn backend_ids(&self) -> BTreeSet<u32> {
        self.vips
            .values()
            .flat_map(|v| v.backends.values().map(|(id, _)| *id))
            .collect()
    }

    pub fn ring_size(&self) -> u32 {
        self.ring_size
    }

    /// The Maglev seed the next `sync` builds rings with (slots that change are rewritten).
    pub fn set_seed(&mut self, seed: u32) {
        self.seed = seed;
    }

    pub fn seed(&self) -> u32 {
        self.seed
    }

    /// A digest of a VIP's ring by backend address (ids differ between nodes, owners must
    /// not): two nodes whose digests match give every new flow the same backend.
    /// Computed when a sync writes the ring, not on every call (a listing of many VIPs would
    /// otherwise walk every ring under the daemon's lock).
    pub fn ring_digest(&self, vip: &VipAddr) -> Option<u64> {
        self.vips.get(vip)?.digest
    }

    /// Data-path id of a VIP.
    pub fn vip_id(&self, vip: &VipAddr) -> Option<u32> {
        self.vips.get(vip).map(|v| v.id)
    }

    /// Data-path id of a VIP's backend.
    pub fn backend_id(&self, vip: &VipAddr, backend: IpAddr) -> Option<u32> {
        self.vips
            .get(vip)?
            .backends
            .get(&backend)
            .map(|(id, _)| *id)
    }

    /// The ring as last written for a VIP.
    pub fn ring(&self, vip: &VipAddr) -> Option<&[u32]> {
        self.vips.get(vip).map(|v| v.ring.as_slice())
    }

    /// The backend the ring gives a new flow of `vip` (what the data path does on a
    /// connection-table miss; `xdplb simulate` asks this).
    pub fn ring_choice(&self, vip: &VipAddr, key: &FlowKey) -> Option<IpAddr> {
        let v = self.vips.get(vip)?;
        let slot = flow_hash(key, v.flags) % self.ring_size;
        let id = v.ring[slot as usize];
        v.backends
            .iter()
            .find(|(_, (bid, _))| *bid == id)
            .map(|(a, _)| *a)
    }

    /// Moves the maps to `desired` (the complete set of VIPs) with the fewest writes.
    pub fn sync(
        &mut self,
        w: &mut dyn MapWriter,
        desired: &[VipState],
    ) -> Result<SyncReport, MirrorError> {
        self.validate(desired)?;
        let mut report = SyncReport::default();
        let wanted: BTreeSet<VipAddr> = desired.iter().map(|v| v.spec.addr).collect();

        // Filters hold the old and the new addresses while the change is written, then only
        // the new ones.
        let wanted_filter = filter_words(desired.iter().flat_map(|v| {
            let l3 = v.spec.mode == Mode::L3;
            let replies = v.backends.iter().filter(move |_| l3).map(|b| b.addr);
            std::iter::once((FILTER_VIP, v.spec.addr.ip)).chain(replies.map(|a| (FILTER_REPLY, a)))
        }));
        let mut during = self.current_filter();
        during
            .iter_mut()
            .zip(&wanted_filter)
            .for_each(|(d, w)| *d |= w);
        self.write_filter(w, during)?;
        let gone: Vec<VipAddr> = self
            .vips
            .keys()
            .filter(|a| !wanted.contains(a))
            .copied()
            .collect();
        for addr in gone {
            self.remove_vip(w, &addr, &wanted, &mut report)?;
        }
        for state in desired {
            self.apply_vip(w, state, &mut report)?;
        }
        self.remove_adopted_endpoints(w)?;
        self.write_filter(w, wanted_filter)?;
        Ok(report)
    }

    /// Removes the endpoints of adopted maps that no wanted backend rewrote (every wanted one
    /// was by now): leftovers of VIPs, modes or ports the earlier daemon had. Before the
    /// address filters lose their bits, and before `DataPath::sweep` invalidates the backends
    /// no VIP holds.
    fn remove_adopted_endpoints(&mut self, w: &mut dyn MapWriter) -> Result<(), MirrorError> {
        let left: Vec<EndpointKey> = self.adopted_endpoints.keys().copied().collect();
        for key in left {
            w.del_endpoint(&key)?;
            self.adopted_endpoints.remove(&key);
        }
        Ok(())
    }

    /// Filter words for what the maps hold now. A VIP restored with unknown flags counts as
    /// L3: a superfluous bit costs one lookup, a missing one would lose replies.
    fn current_filter(&self) -> Vec<u64> {
        filter_words(self.vips.iter().flat_map(|(addr, v)| {
            let l3 = v.flags & VIP_F_MODE_L3 != 0;
            let replies = v.backends.keys().filter(move |_| l3).copied();
            std::iter::once((FILTER_VIP, addr.ip)).chain(replies.map(|a| (FILTER_REPLY, a)))
        }))
    }

    /// Writes the words that differ from what was last written (all when that is unknown).
    fn write_filter(&mut self, w: &mut dyn MapWriter, words: Vec<u64>) -> Result<(), MirrorError> {
        // Unknown until every write succeeded: a failed sync is followed by a full rewrite.
        let known = self.filter.take();
        let (indexes, changed): (Vec<u32>, Vec<u64>) = words
            .iter()
            .enumerate()
            .filter(|&(i, w)| known.as_ref().is_none_or(|k| k[i] != *w))
            .map(|(i, &w)| (i as u32, w))
            .unzip();
        w.put_filter_words(&indexes, &changed)?;
        self.filter = Some(words);
        Ok(())
    }

    /// Checks `desired` against the limits and itself without writing (`sync` does it first).
    pub fn validate(&self, desired: &[VipState]) -> Result<(), MirrorError> {
        let mut seen = BTreeSet::new();
        // One owner per endpoint key: the mirror would otherwise overwrite one VIP's endpoint
        // with another's.
        let mut endpoints = ReplyEndpoints::default();
        for state in desired {
            let vip = state.spec.addr;
            if !seen.insert(vip) {
                return Err(MirrorError::DuplicateVip(vip));
            }
            if state.spec.mode == Mode::L3 {
                for b in &state.backends {
                    endpoints.claim(vip, b.addr, Some(b.port).filter(|p| *p != 0))?;
                }
            }
            if let Some(b) = state
                .backends
                .iter()
                .find(|b| b.port != 0 && state.spec.mode != Mode::L3)
            {
                return Err(MirrorError::PortNeedsL3 {
                    vip,
                    backend: b.addr,
                });
            }
            let mut addrs = BTreeSet::new();
            for b in &state.backends {
                if !addrs.insert(b.addr) {
                    return Err(MirrorError::DuplicateBackend {
                        vip,
                        backend: b.addr,
                    });
                }
                if b.addr.is_ipv4() != vip.ip.is_ipv4() {
                    return Err(MirrorError::FamilyMismatch {
                        vip,
                        backend: b.addr,
                        got: addr::family(b.addr),
                        want: addr::family(vip.ip),
                    });
                }
            }
        }
        if seen.len() > self.max_vips as usize {
            return Err(MirrorError::TooManyVips {
                wanted: seen.len(),
                max: self.max_vips,
            });
        }
        // Within a VIP, new backends take ids before removed ones give theirs back, so the peak
        // is what the kept VIPs hold now plus every backend that is new.
        let held: usize = self
            .vips
            .iter()
            .filter(|(a, _)| seen.contains(a))
            .map(|(_, v)| v.backends.len())
            .sum();
        let new: usize = desired
            .iter()
            .map(|s| {
                let current = self.vips.get(&s.spec.addr);
                s.backends
                    .iter()
                    .filter(|b| current.is_none_or(|v| !v.backends.contains_key(&b.addr)))
                    .count()
            })
            .sum();
        if held + new > self.max_backends as usize {
            return Err(MirrorError::TooManyBackends {
                wanted: held + new,
                max: self.max_backends,
            });
        }
        Ok(())
    }

    fn remove_vip(
        &mut self,
        w: &mut dyn MapWriter,
        addr: &VipAddr,
        wanted: &BTreeSet<VipAddr>,
        report: &mut SyncReport,
    ) -> Result<(), MirrorError> {
        let Some(vip) = self.vips.remove(addr) else {
            return Ok(());
        };
        w.del_vip(&addr.key())?;
        let shared = self
            .vips
            .keys()
            .chain(wanted.iter())
            .any(|a| a.ip == addr.ip);
        if !shared {
            w.del_vip(&addr.address_key())?;
        }
        for (id, target) in vip.backends.values() {
            self.release_backend(w, addr, *id, target)?;
            report.backends_written += 1;
        }
        self.free_vip_ids.insert(vip.id);
        report.vips_removed += 1;
        Ok(())
    }

    fn apply_vip(
        &mut self,
        w: &mut dyn MapWriter,
        state: &VipState,
        report: &mut SyncReport,
    ) -> Result<(), MirrorError> {
        let addr = state.spec.addr;
        let flags = state.spec.flags();
        if let Some(v) = self.vips.get(&addr) {
            if v.flags != UNKNOWN_FLAGS && (v.flags ^ flags) & VIP_F_MODE_L3 != 0 {
                // A mode change re-places every flow: connection-table entries made in the
                // other mode were not recorded for replies (or do not need them), and an L3
                // VIP's endpoints go before its backends leave.
                self.remove_vip(w, &addr, &BTreeSet::from([addr]), report)?;
            }
        }
        let is_new = !self.vips.contains_key(&addr);
        if is_new {
            let id = self.take_id(true)?;
            w.reset_counters(true, id)?;
            self.vips.insert(
                addr,
                MirroredVip {
                    id,
                    // Unknown until its entry is written: a failed first attempt is rewritten on retry.
                    flags: UNKNOWN_FLAGS,
                    backends: BTreeMap::new(),
                    ring: Vec::new(),
                    digest: None,
                },
            );
        }

        // 1. New and changed backends go in first.
        let mut replaced: Vec<(u32, BackendTarget)> = Vec::new();
        let desired: BTreeMap<IpAddr, &BackendTarget> =
            state.backends.iter().map(|b| (b.addr, b)).collect();
        for target in state.backends.iter() {
            let existing = self.vips[&addr].backends.get(&target.addr).cloned();
            let id = match existing {
                Some((_, old)) if old == *target => continue,
                // Every field but the weight compared (written so that a new field counts).
                Some((id, old))
                    if old
                        == (BackendTarget {
                            weight: old.weight,
                            ..target.clone()
                        }) =>
                {
                    // Only the weight changed: the ring changes, the backend entry does not.
                    self.vips
                        .get_mut(&addr)
                        .unwrap()
                        .backends
                        .insert(target.addr, (id, target.clone()));
                    continue;
                }
                // A new port is a new endpoint: a new id makes the flows' connection-table
                // entries stale, so they are placed again on the endpoint their replies come
                // from.
                Some((old_id, old)) if old.port != target.port => {
                    replaced.push((old_id, old));
                    self.new_backend_id(w)?
                }
                Some((id, _)) => id,
                None => self.new_backend_id(w)?,
            };
            w.put_backend(id, &self.backend_info(id, target))?;
            report.backends_written += 1;
            self.vips
                .get_mut(&addr)
                .unwrap()
                .backends
                .insert(target.addr, (id, target.clone()));
        }

        // 1b. Endpoints of an existing VIP before its ring names a new backend: the replies
        // of its first flows must be recognised.
        if !is_new {
            self.write_endpoints(w, state)?;
        }

        // 2. The ring, slot by slot where it changed (every slot of a new VIP).
        let vip = &self.vips[&addr];
        let members: Vec<RingMember> = vip
            .backends
            .iter()
            .filter(|(a, _)| desired.contains_key(a))
            .map(|(a, (id, t))| RingMember {
                identity: identity(*a),
                weight: t.weight,
                id: *id,
            })
            .collect();
        let ring = maglev::build_seeded(&members, self.ring_size, self.seed);
        let base = vip.id * ring_lines(self.ring_size);
        // A ring of unknown content (new, or restored after a restart) is written whole.
        let writes: Vec<(u32, u32)> = if is_new || vip.ring.len() != ring.len() {
            ring.iter()
                .enumerate()
                .map(|(i, &b)| (i as u32, b))
                .collect()
        } else {
            maglev::delta(&vip.ring, &ring)
        };
        // Whole lines (a map value holds RING_LINE_SLOTS slots), each line a changed slot is in.
        let changed: BTreeSet<u32> = writes.iter().map(|&(i, _)| i / RING_LINE_SLOTS).collect();
        let (lines, values): (Vec<u32>, Vec<RingLine>) = changed
            .into_iter()
            .map(|k| (base + k, ring_line(&ring, k)))
            .unzip();
        w.put_ring_lines(&lines, &values)?;
        report.ring_slots_written += writes.len();

        // 2b. A new VIP's endpoints once its ring is whole: none of its flows exists before
        // its entry appears, and until now its ring lines may hold a removed VIP's slots.
        if is_new {
            self.write_endpoints(w, state)?;
        }

        // 3. The VIP entry (new VIPs appear only now, fully built), flags when they changed.
        let vip = &self.vips[&addr];
        let vip_id = vip.id;
        if is_new || vip.flags != flags {
            w.put_vip(&addr.key(), &VipInfo { id: vip_id, flags })?;
            w.put_vip(
                &addr.address_key(),
                &VipInfo {
                    id: NO_BACKEND,
                    flags: VIP_F_ADDRESS,
                },
            )?;
        }
        if is_new {
            report.vips_added += 1;
        }

        // 4. Backends no ring slot points at any more leave last.
        let vip = self.vips.get_mut(&addr).unwrap();
        vip.ring = ring;
        vip.flags = flags;
        let removed: Vec<(u32, BackendTarget)> = vip
            .backends
            .iter()
            .filter(|(a, _)| !desired.contains_key(a))
            .map(|(_, v)| v.clone())
            .collect();
        vip.backends.retain(|a, _| desired.contains_key(a));
        vip.digest = Some(digest_of(&vip.ring, &vip.backends));
        for (id, target) in removed.into_iter().chain(replaced) {
            self.release_backend(w, &addr, id, &target)?;
            report.backends_written += 1;
        }
        Ok(())
    }

    /// Writes the endpoint of each backend of an L3 VIP where the map holds another value
    /// (new backend, new port or generation, new flags, or an entry adopted from an earlier
    /// daemon). Every backend of `state` holds its id and a valid entry by now.
    fn write_endpoints(
        &mut self,
        w: &mut dyn MapWriter,
        state: &VipState,
    ) -> Result<(), MirrorError> {
        if state.spec.mode != Mode::L3 {
            return Ok(());
        }
        let addr = state.spec.addr;
        let vip = &self.vips[&addr];
        let wanted: Vec<(EndpointKey, Endpoint)> = state
            .backends
            .iter()
            .map(|t| {
                let id = vip.backends[&t.addr].0;
                let value = Endpoint {
                    vip_addr: addr::to_words(addr.ip),
                    vip_port: addr.port.to_be(),
                    _pad: 0,
                    vip: vip.id,
                    vip_flags: state.spec.flags(),
                    backend: id,
                    generation: self.generations[id as usize],
                };
                (endpoint_key(&addr, t), value)
            })
            .collect();
        for (key, value) in wanted {
            if self.endpoints.get(&key) == Some(&value) {
                continue;
            }
            w.put_endpoint(&key, &value)?;
            self.adopted_endpoints.remove(&key);
            self.endpoints.insert(key, value);
        }
        Ok(())
    }

    /// Removes the endpoints that name backend `id` of `vip` (its own, and any an adopted map
    /// had), so none names it once it is released. An endpoint another backend took over in
    /// this sync (a port moved between VIPs) is that backend's and stays.
    fn remove_endpoints(
        &mut self,
        w: &mut dyn MapWriter,
        vip: &VipAddr,
        id: u32,
        t: &BackendTarget,
    ) -> Result<(), MirrorError> {
        let own = endpoint_key(vip, t);
        if self.endpoints.get(&own).is_some_and(|e| e.backend == id) {
            w.del_endpoint(&own)?;
            self.endpoints.remove(&own);
        }
        self.remove_adopted_endpoints_of(w, id)
    }

    /// Removes the entries of adopted maps that name backend `id` (only right after a
    /// restart are there any).
    fn remove_adopted_endpoints_of(
        &mut self,
        w: &mut dyn MapWriter,
        id: u32,
    ) -> Result<(), MirrorError> {
        let naming: Vec<EndpointKey> = self
            .adopted_endpoints
            .iter()
            .filter(|(_, e)| e.backend == id)
            .map(|(k, _)| *k)
            .collect();
        for key in naming {
            w.del_endpoint(&key)?;
            self.adopted_endpoints.remove(&key);
        }
        Ok(())
    }

    fn take_id(&mut self, vip: bool) -> Result<u32, MirrorError> {
        let (set, err) = if vip {
            (
                &mut self.free_vip_ids,
                MirrorError::TooManyVips {
                    wanted: self.vips.len() + 1,
                    max: self.max_vips,
                },
            )
        } else {
            (
                &mut self.free_backend_ids,
                MirrorError::TooManyBackends {
                    wanted: 0,
                    max: self.max_backends,
                },
            )
        };
        set.pop_first().ok_or(err)
    }

    /// Hands out a backend id for a new holder: a new generation (flows recorded for the last
    /// holder become stale), zeroed counters, and no adopted endpoint left naming it.
    fn new_backend_id(&mut self, w: &mut dyn MapWriter) -> Result<u32, MirrorError> {
        let id = self.take_id(false)?;
        self.generations[id as usize] = self.generations[id as usize].wrapping_add(1);
        w.reset_counters(false, id)?;
        self.remove_adopted_endpoints_of(w, id)?;
        Ok(id)
    }

    fn backend_info(&self, id: u32, t: &BackendTarget) -> BackendInfo {
        BackendInfo {
            addr: addr::to_words(t.addr),
            mac: t.mac.0,
            family: addr::family(t.addr),
            ifindex: t.ifindex,
            src_mac: t.src_mac.0,
            flags: BACKEND_F_VALID,
            generation: self.generations[id as usize],
            port: t.port.to_be(),
            ..BackendInfo::default()
        }
    }

    /// Marks a backend id free, after removing its endpoint: connection-table entries that
    /// still name it become stale and their flows are re-balanced by the data path.
    fn release_backend(
        &mut self,
        w: &mut dyn MapWriter,
        vip: &VipAddr,
        id: u32,
        t: &BackendTarget,
    ) -> Result<(), MirrorError> {
        self.remove_endpoints(w, vip, id, t)?;
        let mut info = self.backend_info(id, t);
        info.flags = 0;
        w.put_backend(id, &info)?;
        self.free_backend_ids.insert(id);
        Ok(())
    }
}

/// Where the replies of backend `t` of L3 VIP `vip` come from: its address, its port (the
/// VIP's when it has none; 0 for an all-ports VIP), the VIP's protocol and family.
fn endpoint_key(vip: &VipAddr, t: &BackendTarget) -> EndpointKey {
    let port = if t.port != 0 { t.port } else { vip.port };
    EndpointKey {
        addr: addr::to_words(t.addr),
        port: port.to_be(),
        proto: vip.proto.number(),
        family: addr::family(vip.ip),
    }
}

/// Address-filter words with the bit of each (kind, address) set.
fn filter_words(addrs: impl Iterator<Item = (u32, IpAddr)>) -> Vec<u64> {
    let mut words = vec![0u64; (FILTER_KINDS * FILTER_WORDS) as usize];
    for (kind, ip) in addrs {
        let bit = addr_bit(&addr::to_words(ip));
        words[(kind * FILTER_WORDS + (bit >> 6)) as usize] |= 1 << (bit & 63);
    }
    words
}

/// Line `k` of `ring` as the map holds it (slots past the ring's end: `NO_BACKEND`).
fn ring_line(ring: &[u32], k: u32) -> RingLine {
    let mut line = [NO_BACKEND; RING_LINE_SLOTS as usize];
    let start = (k * RING_LINE_SLOTS) as usize;
    let slots = &ring[start.min(ring.len())..(start + line.len()).min(ring.len())];
    line[..slots.len()].copy_from_slice(slots);
    line
}

/// A ring's digest by backend address (see `Mirror::ring_digest`).
fn digest_of(ring: &[u32], backends: &BTreeMap<IpAddr, (u32, BackendTarget)>) -> u64 {
    let owners: BTreeMap<u32, Vec<u8>> = backends
        .iter()
        .map(|(a, (id, _))| (*id, identity(*a)))
        .collect();
    maglev::digest(ring, |id| owners.get(&id).map(Vec::as_slice))
}

/// A backend's identity for Maglev: its address bytes.
fn identity(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

#[cfg(test)]
mod tests {
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
        fn put_ring_lines(
            &mut self,
            lines: &[u32],
            values: &[RingLine],
        ) -> Result<(), MirrorError> {
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
}
