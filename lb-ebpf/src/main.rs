//! The xdplb XDP program: parse -> classify (VIP?) -> choose a backend (connection table, else
//! the VIP's Maglev ring) -> rewrite -> forward, counting every verdict.
//!
//! Module per concern, as in Katran: `parse` reads headers, `maps` declares the maps,
//! `balance` picks the backend, `forward` rewrites and sends, `counters` counts.
#![no_std]
#![no_main]

mod balance;
mod counters;
mod forward;
mod maps;
mod parse;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{stats, VipInfo};

use crate::{
    counters::verdict,
    parse::{Class, Parsed},
};

/// The load balancer. Every path returns through `verdict`, so each packet is counted under
/// exactly one reason.
#[xdp]
pub fn xdplb(ctx: XdpContext) -> u32 {
    match parse::classify(&ctx) {
        Err(reason) => verdict(reason, xdp_action::XDP_PASS),
        Ok(Parsed { class, vlan }) => {
            if vlan {
                counters::event(stats::EV_VLAN);
            }
            dispatch(&ctx, class)
        }
    }
}

#[inline(always)]
fn dispatch(ctx: &XdpContext, class: Class) -> u32 {
    match class {
        Class::Flow(key) => match maps::find_vip(&key) {
            Some(vip) => steer(ctx, &vip, &key, true),
            None => verdict(stats::PASS_NOT_VIP, xdp_action::XDP_PASS),
        },
        // An error a router sent about a packet a backend sent from the VIP (fragmentation
        // needed, say): it belongs to the backend that owns the flow, so PMTU discovery works.
        Class::IcmpError { flow, outer } => match maps::find_vip(&flow) {
            Some(vip) => {
                counters::event(stats::EV_ICMP_STEERED);
                steer(ctx, &vip, &flow, false)
            }
            None => pass_unless_vip_address(&outer, stats::PASS_ICMP),
        },
        Class::Icmp(dst) => pass_unless_vip_address(&dst, stats::PASS_ICMP),
        // Non-first fragments carry no ports, so they cannot be steered consistently with the
        // first one: fragments to a VIP address are dropped (counted); see docs/datapath.md.
        Class::Fragment(dst) => {
            if maps::is_vip_address(&dst) {
                verdict(stats::DROP_FRAGMENT, xdp_action::XDP_DROP)
            } else {
                verdict(stats::PASS_NOT_VIP, xdp_action::XDP_PASS)
            }
        }
    }
}

#[inline(always)]
fn pass_unless_vip_address(dst: &parse::Dest, vip_reason: u32) -> u32 {
    let reason = if maps::is_vip_address(dst) {
        vip_reason
    } else {
        stats::PASS_NOT_VIP
    };
    verdict(reason, xdp_action::XDP_PASS)
}

/// Sends a VIP packet to its backend; `record` creates a connection-table entry on a miss.
#[inline(always)]
fn steer(ctx: &XdpContext, vip: &VipInfo, key: &lb_common::FlowKey, record: bool) -> u32 {
    let Some(choice) = balance::choose(vip, key, record) else {
        return verdict(stats::DROP_NO_BACKEND, xdp_action::XDP_DROP);
    };
    // Counted as VIP traffic only once it can be sent.
    let Some(out) = forward::egress(ctx, &choice.backend) else {
        return verdict(stats::DROP_NO_IFACE, xdp_action::XDP_DROP);
    };
    let len = (ctx.data_end() - ctx.data()) as u64;
    counters::traffic(vip.id, choice.id, len, choice.new_flow);
    forward::l2(ctx, &choice.backend, &out)
}

/// Passes everything. Attached to the peer end of a veth so XDP_TX/XDP_REDIRECT into it
/// delivers, and measured as the empty baseline by benchmarks.
#[xdp]
pub fn xdplb_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
