//! Backend choice: the connection table keeps existing flows where they are; a new flow (or one
//! whose backend is gone) takes the backend in its VIP's Maglev ring slot.

use aya_ebpf::bindings::BPF_ANY;
use lb_common::{
    hash::flow_hash, maps::DEFAULT_RING_SIZE, stats, BackendInfo, ConnValue, FlowKey, Hop,
    NatValue, VipInfo, BACKEND_F_VALID,
};

use crate::{
    counters::event,
    maps::{BACKENDS, CONNTRACK, NAT, RING},
};

/// Ring size of every VIP, set by the loader (read-only data, so the verifier sees a constant).
#[unsafe(no_mangle)]
static RING_SIZE: u32 = DEFAULT_RING_SIZE;

pub struct Choice {
    pub id: u32,
    pub backend: BackendInfo,
    /// The flow was placed from the ring (a new flow for the counters).
    pub new_flow: bool,
    /// The connection-table entry's next-hop cache (L3), when the flow was found there.
    pub hop: Option<*mut Hop>,
}

/// Picks the backend for a flow of `vip`. `record`: remember a ring choice in the connection
/// table (not done for ICMP errors, which must not create flows).
#[inline(always)]
pub fn choose(vip: &VipInfo, key: &FlowKey, record: bool) -> Option<Choice> {
    if let Some(entry) = CONNTRACK.get_ptr_mut(key) {
        // SAFETY: a valid map value; backend and generation are only written on insert,
        // which replaces the entry whole.
        let (id, generation) = unsafe { ((*entry).backend, (*entry).generation) };
        if let Some(backend) = live_backend(id) {
            if backend.generation == generation {
                event(stats::EV_CT_HIT);
                return Some(Choice {
                    id,
                    backend,
                    new_flow: false,
                    // SAFETY: a field of the same map value.
                    hop: Some(unsafe { &raw mut (*entry).hop }),
                });
            }
        }
        // The backend was removed (or its id reused): re-balance the flow.
        event(stats::EV_CT_STALE);
    } else {
        event(stats::EV_CT_MISS);
    }

    // SAFETY: reading a plain u32 from read-only data.
    let ring_size = unsafe { core::ptr::read_volatile(&RING_SIZE) };
    // checked_rem: a plain `%` would add a divide-by-zero panic path the verifier rejects.
    let slot = vip.id * ring_size + flow_hash(key, vip.flags).checked_rem(ring_size)?;
    let id = *RING.get(slot)?;
    let backend = live_backend(id)?;
    if record {
        let conn = ConnValue {
            backend: id,
            generation: backend.generation,
            hop: Hop::default(),
        };
        // A full table evicts the least recently used entry; failure only costs stickiness.
        let _ = CONNTRACK.insert(key, conn, BPF_ANY as u64);
    }
    Some(Choice {
        id,
        backend,
        new_flow: record,
        hop: None,
    })
}

#[inline(always)]
fn live_backend(id: u32) -> Option<BackendInfo> {
    BACKENDS
        .get(id)
        .copied()
        .filter(|b| b.flags & BACKEND_F_VALID != 0)
}

/// Records how a backend's replies to this flow are turned back into the VIP's: keyed by the
/// reply's 5-tuple, created together with the connection-table entry.
#[inline(always)]
pub fn record_reply(key: &FlowKey, backend: &BackendInfo) {
    let reply = FlowKey {
        src: backend.addr,
        dst: key.src,
        sport: if backend.port != 0 {
            backend.port
        } else {
            key.dport
        },
        dport: key.sport,
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    };
    let vip = NatValue {
        addr: key.dst,
        port: key.dport,
        _pad: 0,
        hop: Hop::default(),
    };
    // A full table evicts the least recently used entry.
    let _ = NAT.insert(reply, vip, BPF_ANY as u64);
}
