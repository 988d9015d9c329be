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

/// Where a packet for a backend leaves: its interface and that interface's MAC.
pub struct Egress {
    pub ifindex: u32,
    /// Out of the interface it came in on (XDP_TX) rather than another (XDP_REDIRECT).
    pub back_out: bool,
    /// Source MAC of the frame.
    pub mac: [u8; 6],
}

/// The egress for `backend`, if its interface is registered (else the packet cannot be sent).
#[inline(always)]
pub fn egress(ctx: &XdpContext, backend: &BackendInfo) -> Option<Egress> {
    let ingress = ctx.ingress_ifindex() as u32;
    let ifindex = if backend.ifindex == 0 {
        ingress
    } else {
        backend.ifindex
    };
    if ifindex == ingress {
        // The frame was sent to this interface's MAC (`maps::sent_to_us` checked it), so that
        // address is the new source: no second interface lookup.
        if let Some(mac) = unicast_destination(ctx) {
            return Some(Egress {
                ifindex,
                back_out: true,
                mac,
            });
        }
    }
    // The daemon stores the egress interface's MAC with the backend (no lookup per packet);
    // a backend written without it (zero) takes it from the interface table.
    let mac = if backend.src_mac != [0; 6] {
        backend.src_mac
    } else {
        // SAFETY: the value is copied at once.
        unsafe { IFACES.get(ifindex) }.copied()?.mac
    };
    Some(Egress {
        ifindex,
        back_out: ifindex == ingress,
        mac,
    })
}

#[inline(always)]
fn unicast_destination(ctx: &XdpContext) -> Option<[u8; 6]> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok()?;
    // SAFETY: bounds-checked by ptr_at.
    let mac = unsafe { (*eth).dst_addr };
    (mac[0] & 1 == 0).then_some(mac)
}

/// Sets the Ethernet addresses (destination `dmac`, source the egress's) and sends.
#[inline(always)]
pub fn send(ctx: &XdpContext, dmac: [u8; 6], out: &Egress) -> u32 {
    let Ok(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        // Unreachable: the header was parsed before.
        return verdict(stats::PASS_MALFORMED, xdp_action::XDP_PASS);
    };
    let eth = eth as *mut EthHdr;
    // SAFETY: bounds-checked by ptr_at; XDP packet memory is writable.
    unsafe {
        (*eth).dst_addr = dmac;
        (*eth).src_addr = out.mac;
    }
    if out.back_out {
        return verdict(stats::TX, xdp_action::XDP_TX);
    }
    match TX_PORTS.redirect(out.ifindex, 0) {
        Ok(action) => verdict(stats::REDIRECT, action),
        Err(_) => verdict(stats::DROP_NO_IFACE, xdp_action::XDP_DROP),
    }
}
