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
mod tests;
