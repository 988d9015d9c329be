//! `xdplb_floor`: the floor forwarder live benchmarks compare xdplb with. It does the least an
//! L2 load balancer must: set both MACs and redirect through a devmap to the egress. No parsing,
//! no lookup, no counting; what xdplb costs beyond it is the cost of balancing.

use aya_ebpf::{
    bindings::xdp_action,
    maps::{Array, DevMap},
    programs::XdpContext,
};
use lb_ebpf::parse::ptr_at;
use network_types::eth::EthHdr;

lb_ebpf::map! {
    /// Destination MAC, source MAC, 4 bytes of padding.
    static FLOOR: Array<[u8; 16]> = Array::with_max_entries(1, 0);
}

lb_ebpf::map! {
    /// Slot 0: the egress interface.
    static FLOOR_TX: DevMap = DevMap::with_max_entries(1, 0);
}

#[inline(always)]
pub fn floor(ctx: &XdpContext) -> u32 {
    let (Some(macs), Ok(eth)) = (FLOOR.get(0), ptr_at::<EthHdr>(ctx, 0)) else {
        return xdp_action::XDP_ABORTED;
    };
    let eth = eth as *mut EthHdr;
    // SAFETY: bounds-checked by ptr_at; XDP packet memory is writable.
    unsafe {
        (*eth).dst_addr.copy_from_slice(&macs[..6]);
        (*eth).src_addr.copy_from_slice(&macs[6..12]);
    }
    FLOOR_TX.redirect(0, 0).unwrap_or(xdp_action::XDP_ABORTED)
}
