//! L3 replies. A backend's packet to a client is matched by its source endpoint (address,
//! port, protocol), which the control plane maps to the one L3 VIP it serves. That gives the
//! client's flow, and the flow's own connection-table entry must name this backend: one entry
//! is the whole state of both directions, so a reply is translated exactly while its flow's
//! packets go to this backend (docs/datapath.md, "One flow state").

use aya_ebpf::maps::HashMap;
use lb_common::{Endpoint, EndpointKey, FlowKey, Hop, VipInfo};

use crate::{
    balance::{is_live, ring_owner},
    conntrack,
    maps::ENDPOINTS,
};

/// Whose reply a packet is, and what it becomes.
#[derive(Default)]
pub struct Owner {
    /// The VIP address and port the reply gets as its source.
    pub vip_addr: [u32; 4],
    pub vip_port: u16,
    pub vip: u32,
    pub backend: u32,
    /// The flow's reply-direction hop cache (none when the ring vouched for the flow).
    pub hop: Option<*mut Hop>,
    /// The flow has no entry; its ring slot names this backend.
    pub by_ring: bool,
}

/// What `resolve` found.
pub const OURS: u32 = 0;
/// From an L3 backend endpoint, but no flow of its VIP goes to this backend: the backend's own
/// traffic, or a reply to a flow that moved.
pub const UNCONFIRMED: u32 = 1;
/// Not from an L3 backend endpoint.
pub const NOT_OURS: u32 = 2;

/// Resolves a packet from a possible backend endpoint (`reply` as it travels): `OURS` with
/// `out` filled, or why not.
///
#[inline(always)]
pub fn resolve(reply: &FlowKey, out: &mut Owner) -> u32 {
    let Some(ep) = endpoint(reply) else {
        return NOT_OURS;
    };
    // All-ports VIPs (port 0) keep the client's port on both sides.
    let vip_port = if ep.vip_port != 0 {
        ep.vip_port
    } else {
        reply.sport
    };
    let flow = FlowKey {
        src: reply.dst,
        dst: ep.vip_addr,
        sport: reply.dport,
        dport: vip_port,
        proto: reply.proto,
        family: reply.family,
        _pad: [0; 2],
    };
    let mut owner = |hop, by_ring| {
        *out = Owner {
            vip_addr: ep.vip_addr,
            vip_port,
            vip: ep.vip,
            backend: ep.backend,
            hop,
            by_ring,
        };
        OURS
    };
    match conntrack::entry(&flow) {
        Some(entry) => {
            // SAFETY: a valid map value; backend and generation are only written on insert.
            let (backend, generation) = unsafe { ((*entry).backend, (*entry).generation) };
            if backend == ep.backend && generation == ep.generation {
                // SAFETY: a field of the same map value.
                owner(Some(unsafe { &raw mut (*entry).reply_hop }), false)
            } else if is_live(backend, generation) {
                UNCONFIRMED
            } else {
                // A stale entry (its backend gone): the flow's packets are placed by the ring,
                // and left so during a flood (over the record limit it is not rewritten).
                by_ring(&ep, &flow, &mut owner)
            }
        }
        // No entry: evicted, or placed by the ring alone during a flood. The flow's next
        // packet goes where its ring slot says, so the slot vouches for the reply. Not for
        // all-ports VIPs: any packet of their backends' protocol looks like a reply, and the
        // backends' own connections would be translated by chance (their flows are always
        // recorded instead).
        None => by_ring(&ep, &flow, &mut owner),
    }
}

/// A flow without a live entry is vouched for by its ring slot (fixed-port VIPs only; see
/// `resolve`).
#[inline(always)]
fn by_ring(
    ep: &Endpoint,
    flow: &FlowKey,
    owner: &mut impl FnMut(Option<*mut Hop>, bool) -> u32,
) -> u32 {
    let vip = VipInfo {
        id: ep.vip,
        flags: ep.vip_flags,
    };
    if ep.vip_port != 0 && ring_owner(&vip, flow) == Some(ep.backend) {
        owner(None, true)
    } else {
        UNCONFIRMED
    }
}

/// The endpoint entry of the packet's source: its exact port, else an all-ports one.
#[inline(always)]
fn endpoint(reply: &FlowKey) -> Option<Endpoint> {
    let mut key = EndpointKey {
        addr: reply.src,
        port: reply.sport,
        proto: reply.proto,
        family: reply.family,
    };
    if let Some(ep) = get(&ENDPOINTS, &key) {
        return Some(ep);
    }
    key.port = 0;
    get(&ENDPOINTS, &key)
}

#[inline(always)]
fn get(map: &HashMap<EndpointKey, Endpoint>, key: &EndpointKey) -> Option<Endpoint> {
    // SAFETY: the value is copied at once; entries are replaced whole by user space.
    unsafe { map.get(key) }.copied()
}
