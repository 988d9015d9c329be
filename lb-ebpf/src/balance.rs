//! Backend choice: the connection table keeps existing flows where they are; a new flow (or one
//! whose backend is gone) takes the backend in its VIP's Maglev ring slot.

use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use lb_common::{
    hash::flow_hash,
    maps::{self as m, DEFAULT_RING_SIZE},
    stats, BackendInfo, ConnValue, FlowKey, Hop, VipInfo, BACKEND_F_VALID, VIP_F_MODE_L3,
};

use crate::{
    conntrack,
    counters::event,
    maps::{may_record, BACKENDS, BACKEND_HOPS, RING},
    nat::{hop_tag, HopRef},
};

/// `-EEXIST`, what an insert with BPF_NOEXIST returns for a key that has an entry.
const EEXIST: i32 = 17;

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

/// Whether a ring choice is remembered in the connection table.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// ICMP errors: they must not create flows.
    Never,
    /// Flows of all-ports L3 VIPs: their replies are matched by the entry alone (the ring
    /// cannot vouch for them, see `reply`).
    Always,
    /// Other flows: not beyond the per-CPU rate of new flows (`maps::may_record`); the ring
    /// alone then keeps them in place while it does not change (and, in L3, vouches for
    /// their replies).
    UnlessFlood,
}

/// What the connection table knows of a flow.
pub enum Known {
    /// Recorded, and its backend is still the one recorded: the flow's VIP comes with it.
    Hit(VipInfo, Choice),
    /// Recorded, but the backend was removed (or its id reused): to be placed again.
    Stale,
    Unknown,
    /// Not asked: a TCP SYN, most likely a new connection. Its ring choice is recorded only if
    /// the flow has no entry; a retransmitted SYN then finds its first SYN's.
    Opening,
}

/// Looks the flow up in the connection table (counts hits; `place` counts the rest).
#[inline(always)]
pub fn lookup(key: &FlowKey) -> Known {
    let Some(entry) = conntrack::entry(key) else {
        return Known::Unknown;
    };
    // SAFETY: a valid map value; backend, generation and VIP are only written on insert,
    // which fills a fresh element whole.
    let (id, generation, vip) = unsafe {
        (
            (*entry).backend,
            (*entry).generation,
            VipInfo {
                id: (*entry).vip,
                flags: (*entry).vip_flags,
            },
        )
    };
    match live_backend(id) {
        Some(backend) if backend.generation == generation => {
            event(stats::EV_CT_HIT);
            let choice = Choice {
                id,
                backend,
                new_flow: false,
                // SAFETY: a field of the same map value.
                hop: Some(unsafe { &raw mut (*entry).hop }),
            };
            Known::Hit(vip, choice)
        }
        _ => Known::Stale,
    }
}

/// Places a flow of `vip` by the VIP's Maglev ring, recording the choice as `record` says:
/// `known` is what the table said (`Stale`, `Unknown`) or `Opening` (not asked: recorded only
/// if absent, else the entry's choice stands).
#[inline(always)]
fn place(vip: &VipInfo, key: &FlowKey, record: Record, known: &Known) -> Option<Choice> {
    let id = ring_owner(vip, key)?;
    let backend = live_backend(id)?;
    let mut stale = matches!(known, Known::Stale);
    if record != Record::Never {
        let conn = ConnValue {
            backend: id,
            generation: backend.generation,
            vip: vip.id,
            vip_flags: vip.flags,
            hop: if vip.flags & VIP_F_MODE_L3 != 0 {
                first_hop(id, backend.generation, key)
            } else {
                Hop::default()
            },
            reply_hop: Hop::default(),
        };
        // Under a flood of new flows the ring alone places them (stable while it does not
        // change), so the flood cannot evict the entries of established flows.
        if record == Record::Always || may_record() {
            // A full table evicts the least recently used entry; failure only costs stickiness.
            let flags = match known {
                Known::Opening => BPF_NOEXIST,
                _ => BPF_ANY,
            };
            if conntrack::insert(key, &conn, flags as u64) == Err(-EEXIST) {
                // A retransmitted SYN: it goes where its first one went. An entry that is
                // stale (or evicted since) is replaced, as a lookup would have had it.
                if let Known::Hit(_, choice) = lookup(key) {
                    return Some(choice);
                }
                stale = true;
                let _ = conntrack::insert(key, &conn, BPF_ANY as u64);
            }
        } else {
            event(stats::EV_CT_UNRECORDED);
        }
    }
    event(if stale {
        stats::EV_CT_STALE
    } else {
        stats::EV_CT_MISS
    });
    Some(Choice {
        id,
        backend,
        new_flow: record != Record::Never,
        hop: None,
    })
}

/// The backend for a flow of `vip`: the table's, else the ring's.
#[inline(always)]
pub fn choose(vip: &VipInfo, key: &FlowKey, known: Known, record: Record) -> Option<Choice> {
    match known {
        Known::Hit(_, choice) => Some(choice),
        _ => place(vip, key, record, &known),
    }
}

/// This CPU's next-hop cache of backend `id` (`maps::BACKEND_HOPS`), tagged with the backend's
/// generation: a reused id does not inherit its previous holder's next hop.
#[inline(always)]
pub fn backend_hop(id: u32, generation: u32) -> HopRef {
    BACKEND_HOPS
        .get_ptr_mut(id)
        .map_or(HopRef::NONE, |at| HopRef {
            at,
            tag: generation as u16,
        })
}

/// A new L3 flow's own next hop to start with: its backend's, while that is valid (it then
/// ages with the backend's, and the flow asks the FIB itself within about a second).
#[inline(always)]
fn first_hop(id: u32, generation: u32, key: &FlowKey) -> Hop {
    match BACKEND_HOPS.get(id) {
        Some(h) if h.checked != 0 && h.tag == generation as u16 => Hop {
            tag: hop_tag(key),
            ..*h
        },
        _ => Hop::default(),
    }
}

/// The backend id in the flow's slot of its VIP's Maglev ring.
#[inline(always)]
pub fn ring_owner(vip: &VipInfo, key: &FlowKey) -> Option<u32> {
    // SAFETY: reading a plain u32 from read-only data.
    let ring_size = unsafe { core::ptr::read_volatile(&RING_SIZE) };
    // checked_rem: a plain `%` would add a divide-by-zero panic path the verifier rejects.
    let slot = flow_hash(key, vip.flags).checked_rem(ring_size)?;
    let line = vip.id * m::ring_lines(ring_size) + slot / m::RING_LINE_SLOTS;
    Some(RING.get(line)?[(slot % m::RING_LINE_SLOTS) as usize])
}

/// Whether a connection-table entry naming backend `id` of `generation` is still valid.
#[inline(always)]
pub fn is_live(id: u32, generation: u32) -> bool {
    live_backend(id).is_some_and(|b| b.generation == generation)
}

#[inline(always)]
fn live_backend(id: u32) -> Option<BackendInfo> {
    BACKENDS
        .get(id)
        .copied()
        .filter(|b| b.flags & BACKEND_F_VALID != 0)
}
