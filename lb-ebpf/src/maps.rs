//! The program's maps. Sizes here are defaults; the loader overrides them from its options
//! (ring and connection table) before loading. The connection tables are in `conntrack`.
//!
//! Each map is named as its static (`lb_ebpf::map!`): `VIPS` is `lb_common::maps::VIPS`, its
//! name written once in `lb_common::map_name!`, which user space reads too.

use aya_ebpf::{
    maps::{Array, DevMapHash, HashMap, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use lb_common::{
    hash::addr_bit, maps as m, stats::STATS_LEN, BackendInfo, Endpoint, EndpointKey, FlowKey, Hop,
    IfaceInfo, TrafficCounters, VipInfo, VipKey, VIP_F_ADDRESS, VIP_F_ALL_PORTS,
};
use network_types::eth::EthHdr;

use crate::parse::{ptr_at, Dest};

lb_ebpf::map! {
    pub static VIPS: HashMap<VipKey, VipInfo> =
        HashMap::with_max_entries(m::vip_entries(m::DEFAULT_MAX_VIPS), 0);
}

lb_ebpf::map! {
    pub static BACKENDS: Array<BackendInfo> = Array::with_max_entries(m::DEFAULT_MAX_BACKENDS, 0);
}

lb_ebpf::map! {
    pub static RING: Array<m::RingLine> =
        Array::with_max_entries(m::DEFAULT_MAX_VIPS * m::ring_lines(m::DEFAULT_RING_SIZE), 0);
}

lb_ebpf::map! {
    pub static BACKEND_HOPS: PerCpuArray<Hop> =
        PerCpuArray::with_max_entries(m::DEFAULT_MAX_BACKENDS, 0);
}

lb_ebpf::map! {
    pub static ENDPOINTS: HashMap<EndpointKey, Endpoint> =
        HashMap::with_max_entries(m::DEFAULT_MAX_BACKENDS, 0);
}

lb_ebpf::map! {
    /// Programs `xdplb` tail-calls, filled by the loader: slot `JUMP_ICMP` is `xdplb_icmp`.
    pub static JUMP: ProgramArray = ProgramArray::with_max_entries(m::JUMP_SLOTS, 0);
}
pub const JUMP_ICMP: u32 = m::JUMP_ICMP;

lb_ebpf::map! {
    pub static ADDR_FILTER: Array<u64> =
        Array::with_max_entries(m::FILTER_KINDS * m::FILTER_WORDS, 0);
}

lb_ebpf::map! {
    pub static CONFIG: Array<u32> = Array::with_max_entries(m::CONFIG_SLOTS, 0);
}

lb_ebpf::map! {
    pub static RECORD_WINDOW: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(m::WINDOWS, 0);
}

lb_ebpf::map! {
    /// Scratch space for `launder`.
    pub static SCRATCH: PerCpuArray<[u32; 2]> = PerCpuArray::with_max_entries(1, 0);
}

lb_ebpf::map! {
    pub static IFACES: HashMap<u32, IfaceInfo> = HashMap::with_max_entries(m::MAX_IFACES, 0);
}

lb_ebpf::map! {
    pub static IFACE_MACS: Array<IfaceInfo> = Array::with_max_entries(m::IFACE_MAC_SLOTS, 0);
}

lb_ebpf::map! {
    pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(m::MAX_IFACES, 0);
}

lb_ebpf::map! {
    pub static VIP_STATS: PerCpuArray<TrafficCounters> =
        PerCpuArray::with_max_entries(m::DEFAULT_MAX_VIPS, 0);
}

lb_ebpf::map! {
    pub static BACKEND_STATS: PerCpuArray<TrafficCounters> =
        PerCpuArray::with_max_entries(m::DEFAULT_MAX_BACKENDS, 0);
}

lb_ebpf::map! {
    pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_LEN, 0);
}

/// Whether `addr` may be an address of `kind` (`m::FILTER_*`): false is certain, true is
/// checked by a map lookup. An array read the verifier inlines, instead of a hash lookup.
/// A BPF subprogram, called from `find_vip` (flows and ICMP errors) and for replies, but not
/// from `is_vip_address` (ICMP messages and fragments, rare, go straight to the lookup):
/// inlined, or also called there, LLVM's register reuse made the parser do arithmetic on
/// `data_end` on some path, which the verifier refuses.
#[inline(never)]
pub fn may_be(kind: u32, addr: &[u32; 4]) -> bool {
    let bit = addr_bit(addr);
    ADDR_FILTER
        .get(kind * m::FILTER_WORDS + (bit >> 6))
        .is_some_and(|w| *w & (1u64 << (bit & 63)) != 0)
}

/// The VIP for the flow's destination, if its address may be a VIP's (`may_be`).
#[inline(always)]
pub fn find_vip(key: &FlowKey) -> Option<VipInfo> {
    if !may_be(m::FILTER_VIP, &key.dst) {
        return None;
    }
    vip_lookup(key)
}

/// The VIP for the flow's destination: the exact port first, then an all-ports VIP.
#[inline(always)]
pub fn vip_lookup(key: &FlowKey) -> Option<VipInfo> {
    let mut vk = VipKey {
        addr: key.dst,
        port: key.dport,
        proto: key.proto,
        family: key.family,
    };
    // An address entry (proto 0, port 0) is not a VIP, even for a protocol-0 packet.
    let not_address = |v: &VipInfo| v.flags & VIP_F_ADDRESS == 0;
    // SAFETY: the value is copied out at once; VIP entries are replaced whole by user space.
    if let Some(v) = unsafe { VIPS.get(vk) }.copied().filter(not_address) {
        return Some(v);
    }
    vk.port = 0;
    let mut v = unsafe { VIPS.get(vk) }.copied().filter(not_address)?;
    v.flags |= VIP_F_ALL_PORTS;
    Some(v)
}

/// Whether the frame was sent to this host: unicast, to the MAC of the interface it arrived
/// on (`IFACES`, written when the daemon attaches). In promiscuous mode, or when a bridge
/// floods, VIP frames meant for another host arrive too: steering them would serve the flow
/// twice. Asked only of frames that would be steered, so other traffic pays nothing.
#[inline(always)]
pub fn sent_to_us(ctx: &XdpContext) -> bool {
    let Ok(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return false;
    };
    // SAFETY: bounds-checked by ptr_at.
    let dst = unsafe { (*eth).dst_addr };
    let ingress = ctx.ingress_ifindex() as u32;
    // A group address never equals an interface's MAC; an unregistered slot is all zeros,
    // which no frame that reached here is sent to (zero is not a station address).
    let mac = if ingress < m::IFACE_MAC_SLOTS {
        IFACE_MACS.get(ingress).map(|i| i.mac)
    } else {
        // SAFETY: the value is copied at once.
        unsafe { IFACES.get(ingress) }.map(|i| i.mac)
    };
    mac.is_some_and(|mac| mac == dst && mac != [0; 6])
}

/// Whether any VIP uses this address (user space keeps one address entry per VIP address).
#[inline(always)]
pub fn is_vip_address(dst: &Dest) -> bool {
    let vk = VipKey {
        addr: dst.addr,
        port: 0,
        proto: 0,
        family: dst.family,
    };
    // SAFETY: only the presence and a flag are read.
    matches!(unsafe { VIPS.get(vk) }, Some(v) if v.flags & VIP_F_ADDRESS != 0)
}

/// Whether this CPU may record one more new flow in the connection table in the current
/// second (`CONFIG_RECORD_LIMIT`; 0: no limit).
#[inline(always)]
pub fn may_record() -> bool {
    let limit = CONFIG.get(m::CONFIG_RECORD_LIMIT).copied().unwrap_or(0);
    limit == 0 || within_rate(m::WINDOW_RECORD, limit as u64)
}

/// Counts one event in this CPU's one-second window `slot` (`m::WINDOW_*`); whether it is
/// within `limit`. Per CPU, so no atomics: limits are per CPU.
#[inline(always)]
pub fn within_rate(slot: u32, limit: u64) -> bool {
    let Some(w) = RECORD_WINDOW.get_ptr_mut(slot) else {
        return true;
    };
    // SAFETY: the coarse clock helper has no preconditions.
    let now = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns() };
    // SAFETY: a per-CPU slot only this program run touches.
    unsafe {
        if now.wrapping_sub((*w)[0]) >= 1_000_000_000 {
            *w = [now, 0];
        }
        (*w)[1] += 1;
        (*w)[1] <= limit
    }
}

/// Largest header offset the NAT code accepts (headers must start in the first 4 KiB).
const MAX_OFFSET: usize = 0xfff;

/// Passes offsets through map memory: what the verifier reads back is an unknown scalar, which
/// the mask bounds the same way on every path, so states from different parse paths merge.
#[inline(always)]
pub fn launder(off: &crate::parse::Offsets) -> Option<crate::parse::Offsets> {
    if off.l3 > MAX_OFFSET || off.l4 > MAX_OFFSET {
        return None;
    }
    let slot = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU slot only this program run touches.
    unsafe {
        core::ptr::write_volatile(slot, [off.l3 as u32, off.l4 as u32]);
        let [l3, l4] = core::ptr::read_volatile(slot);
        Some(crate::parse::Offsets {
            l3: l3 as usize & MAX_OFFSET,
            l4: l4 as usize & MAX_OFFSET,
        })
    }
}
