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
//!
//! The children: `validate` (the check before any write), `apply` (writing a VIP, its
//! backends and endpoints), `ids` (handing out ids and generations) and `snapshot` (what a
//! restarted daemon restores the mirror from).

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

mod apply;
mod ids;
mod snapshot;
mod validate;

pub use snapshot::{AdoptedMaps, MirrorSnapshot, SnapshotVip};

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
