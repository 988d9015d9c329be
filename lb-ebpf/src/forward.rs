//! Rewrite and send. L2 (direct server return) changes only the Ethernet addresses: the
//! backend's MAC as destination, the egress interface's MAC as source; a frame redirected out
//! another interface also loses its VLAN tags (`pop_vlan`).

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext, EbpfContext,
};
use lb_common::{stats, BackendInfo};
use network_types::{eth::EthHdr, vlan::VlanHdr};

use crate::{
    counters::verdict,
    maps::{IFACES, TX_PORTS},
    parse::ptr_at,
    proto::{ETH_P_8021AD, ETH_P_8021Q},
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

/// Removes the one or two VLAN tags of a frame that `parse::classify` found tagged (it parses
/// no more than two): the ingress VLAN means nothing on another interface, so the frame leaves
/// untagged there. Only the head moves: the 12 address bytes now in front of the inner
/// EtherType are stale and `send` overwrites all of them. Every packet pointer is re-derived
/// afterwards (`send` calls `ptr_at` again).
#[inline(always)]
pub fn pop_vlan(ctx: &XdpContext) -> Result<(), u32> {
    // Addresses, outer tag, and the EtherType after it: an inner TPID means a second tag.
    let head = ptr_at::<[u16; 9]>(ctx, 0)?;
    // SAFETY: bounds-checked by ptr_at; 2-byte aligned (frames start aligned).
    let inner = unsafe { (*head)[8] };
    let tags = if inner == ETH_P_8021Q || inner == ETH_P_8021AD {
        2
    } else {
        1
    };
    // SAFETY: the context is the program's own; no packet pointer is used after the call.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, tags * VlanHdr::LEN as i32) } != 0 {
        return Err(stats::PASS_MALFORMED);
    }
    Ok(())
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
