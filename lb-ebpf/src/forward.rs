//! Rewrite and send. L2 (direct server return) changes only the Ethernet addresses: the
//! backend's MAC as destination, the egress interface's MAC as source.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{stats, BackendInfo};
use network_types::eth::EthHdr;

use crate::{
    counters::verdict,
    maps::{IFACES, TX_PORTS},
    parse::ptr_at,
};

#[inline(always)]
pub fn l2(ctx: &XdpContext, backend: &BackendInfo) -> u32 {
    let ingress = ctx.ingress_ifindex() as u32;
    let egress = if backend.ifindex == 0 {
        ingress
    } else {
        backend.ifindex
    };
    // SAFETY: the value is copied at once.
    let Some(iface) = (unsafe { IFACES.get(egress) }).copied() else {
        return verdict(stats::DROP_NO_IFACE, xdp_action::XDP_DROP);
    };
    let Ok(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        // Unreachable: the header was parsed before.
        return verdict(stats::PASS_MALFORMED, xdp_action::XDP_PASS);
    };
    let eth = eth as *mut EthHdr;
    // SAFETY: bounds-checked by ptr_at; XDP packet memory is writable.
    unsafe {
        (*eth).dst_addr = backend.mac;
        (*eth).src_addr = iface.mac;
    }
    if egress == ingress {
        return verdict(stats::TX, xdp_action::XDP_TX);
    }
    match TX_PORTS.redirect(egress, 0) {
        Ok(action) => verdict(stats::REDIRECT, action),
        Err(_) => verdict(stats::DROP_NO_IFACE, xdp_action::XDP_DROP),
    }
}
