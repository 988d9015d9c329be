//! The xdplb XDP program: parse -> classify (VIP?) -> choose a backend (connection table, else
//! the VIP's Maglev ring) -> rewrite -> forward, counting every verdict.
//!
//! Module per concern, as in Katran: `parse` reads headers, `maps` declares the maps,
//! `balance` picks the backend, `forward` rewrites and sends, `counters` counts.
#![no_std]
#![no_main]

mod balance;
mod counters;
mod floor;
mod forward;
mod generator;
mod maps;
mod nat;
mod parse;
mod sink;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{
    maps::{FILTER_REPLY, FILTER_VIP},
    stats, FlowKey, VipInfo, VIP_F_MODE_L3,
};

use crate::{
    balance::{Known, Record},
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
            dispatch(&ctx, class, vlan)
        }
    }
}

#[inline(always)]
fn dispatch(ctx: &XdpContext, class: Class, vlan: bool) -> u32 {
    match class {
        Class::Flow(key, off, syn) => {
            // A flow the connection table knows brings its VIP along: no VIP lookup. Only
            // packets to an address that may be a VIP's are looked up at all. A SYN opens a
            // new connection: not looked up, the ring places it and the insert only succeeds
            // for a new key (a retransmitted SYN finds its entry that way; `balance::place`).
            // A new connection pays one walk of the table's cold bucket, not two.
            let (vip, known) = if maps::may_be(FILTER_VIP, &key.dst) {
                if syn {
                    (maps::vip_lookup(&key), Known::Opening)
                } else {
                    match balance::lookup(&key) {
                        Known::Hit(vip, choice) => (Some(vip), Known::Hit(vip, choice)),
                        other => (maps::vip_lookup(&key), other),
                    }
                }
            } else {
                (None, Known::Unknown)
            };
            // One NAT call site for both directions: the verifier walks the L3 code once per
            // parse path instead of twice.
            let nat = match vip {
                // The tag would have to follow the FIB's egress: not NATed (docs/datapath.md).
                Some(vip) if vip.flags & VIP_F_MODE_L3 != 0 && vlan => {
                    return verdict(stats::PASS_L3_VLAN, xdp_action::XDP_PASS)
                }
                Some(vip) if vip.flags & VIP_F_MODE_L3 != 0 => to_backend(&vip, &key, known),
                Some(vip) => return steer(ctx, &vip, &key, known, Record::UnlessFlood),
                None => to_client(&key, vlan),
            };
            match nat {
                Ok((rw, count)) => nat_send(ctx, &key, &off, &rw, count),
                Err((reason, action)) => verdict(reason, action),
            }
        }
        // An error a router sent about a packet a backend sent from the VIP (fragmentation
        // needed, say): it belongs to the backend that owns the flow, so PMTU discovery works.
        // L3 VIPs: passed (the quoted packet would need translating too); docs/datapath.md.
        Class::IcmpError { flow, outer } => match maps::find_vip(&flow) {
            Some(vip) if vip.flags & VIP_F_MODE_L3 != 0 => {
                verdict(stats::PASS_ICMP, xdp_action::XDP_PASS)
            }
            Some(vip) => {
                counters::event(stats::EV_ICMP_STEERED);
                steer(ctx, &vip, &flow, balance::lookup(&flow), Record::Never)
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
fn steer(ctx: &XdpContext, vip: &VipInfo, key: &FlowKey, known: Known, record: Record) -> u32 {
    let Some(choice) = balance::choose(vip, key, known, record) else {
        return verdict(stats::DROP_NO_BACKEND, xdp_action::XDP_DROP);
    };
    // Counted as VIP traffic only once it can be sent.
    let Some(out) = forward::egress(ctx, &choice.backend) else {
        return verdict(stats::DROP_NO_IFACE, xdp_action::XDP_DROP);
    };
    let len = (ctx.data_end() - ctx.data()) as u64;
    counters::traffic(vip.id, choice.id, len, choice.new_flow);
    forward::send(ctx, choice.backend.mac, &out)
}

/// What an L3 packet becomes, and what to count it as.
type NatPlan = (nat::Rewrite, Count);

/// Whose counters an L3 packet goes to.
#[derive(Clone, Copy)]
enum Count {
    /// A client's packet: VIP id, backend id, whether it placed a new flow.
    Forward(u32, u32, bool),
    /// A backend's reply: VIP id, backend id.
    Reply(u32, u32),
}

/// L3 mode: the flow's packets get the backend's address; a new flow also gets its
/// reverse-NAT entry, so the backend's replies can be turned back into the VIP's.
#[inline(always)]
fn to_backend(vip: &VipInfo, key: &FlowKey, known: Known) -> Result<NatPlan, (u32, u32)> {
    let Some(choice) = balance::choose(vip, key, known, Record::Always) else {
        return Err((stats::DROP_NO_BACKEND, xdp_action::XDP_DROP));
    };
    let b = &choice.backend;
    if choice.new_flow {
        balance::record_reply(key, b, vip.id, choice.id);
    }
    let rw = nat::Rewrite {
        dst: true,
        addr: b.addr,
        port: b.port,
        hop: choice.hop,
    };
    Ok((rw, Count::Forward(vip.id, choice.id, choice.new_flow)))
}

/// A packet that is not for a VIP may be a backend's reply to an L3 flow.
#[inline(always)]
fn to_client(key: &FlowKey, vlan: bool) -> Result<NatPlan, (u32, u32)> {
    let not_ours = (stats::PASS_NOT_VIP, xdp_action::XDP_PASS);
    if !maps::may_be(FILTER_REPLY, &key.src) {
        return Err(not_ours);
    }
    let entry = maps::NAT.get_ptr_mut(key).ok_or(not_ours)?;
    if vlan {
        return Err((stats::PASS_L3_VLAN, xdp_action::XDP_PASS));
    }
    // SAFETY: a valid map value; address, port and ids are only written on insert, which
    // replaces the entry whole.
    let (addr, port, hop, vip, backend) = unsafe {
        let e = &*entry;
        (e.addr, e.port, &raw mut (*entry).hop, e.vip, e.backend)
    };
    Ok((
        nat::Rewrite {
            dst: false,
            addr,
            port,
            hop: Some(hop),
        },
        Count::Reply(vip, backend),
    ))
}

/// Routes, rewrites and sends an L3 packet; `count` = (VIP id, backend id, new flow) for
/// client-to-backend packets.
#[inline(always)]
fn nat_send(
    ctx: &XdpContext,
    key: &FlowKey,
    off: &parse::Offsets,
    rw: &nat::Rewrite,
    count: Count,
) -> u32 {
    // Offsets from every parse path (VLAN tags, IPv6 extension headers) become one bounded
    // unknown here, so the verifier checks the NAT code once instead of once per path.
    let Some(off) = maps::launder(off) else {
        return verdict(stats::PASS_MALFORMED, xdp_action::XDP_PASS);
    };
    let off = &off;
    let route = match nat::route(ctx, key, off, rw) {
        Ok(r) => r,
        Err(reason) => return verdict(reason, xdp_action::XDP_PASS),
    };
    let hop = match route {
        nat::Route::Expired => return verdict(stats::PASS_TTL, xdp_action::XDP_PASS),
        nat::Route::None => return verdict(stats::PASS_NO_ROUTE, xdp_action::XDP_PASS),
        nat::Route::TooBig => return verdict(stats::DROP_TOO_BIG, xdp_action::XDP_DROP),
        nat::Route::Kernel => false,
        nat::Route::Forward { .. } => true,
    };
    let len = (ctx.data_end() - ctx.data()) as u64;
    match count {
        Count::Forward(vip, backend, new_flow) => counters::traffic(vip, backend, len, new_flow),
        Count::Reply(vip, backend) => counters::reply(vip, backend, len),
    }
    if let Err(reason) = nat::rewrite(ctx, key, off, rw, hop) {
        return verdict(reason, xdp_action::XDP_PASS);
    }
    if matches!(count, Count::Reply(..)) {
        counters::event(stats::EV_NAT_REVERSE);
    }
    match route {
        nat::Route::Forward { out, dmac } => forward::send(ctx, dmac, &out),
        // The kernel resolves the next hop and forwards the rewritten packet.
        _ => verdict(stats::PASS_NO_NEIGH, xdp_action::XDP_PASS),
    }
}

/// Passes everything. Attached to the peer end of a veth so XDP_TX/XDP_REDIRECT into it
/// delivers, and measured as the empty baseline by benchmarks.
#[xdp]
pub fn xdplb_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Test and benchmark traffic (see `generator`): never attached by the daemon.
#[xdp]
pub fn xdplb_gen(ctx: XdpContext) -> u32 {
    generator::generate(&ctx)
}

/// The receiving end of live benchmarks (see `sink`): never attached by the daemon.
#[xdp]
pub fn xdplb_sink(ctx: XdpContext) -> u32 {
    sink::sink(&ctx)
}

/// The floor forwarder live benchmarks compare with (see `floor`): never attached by the daemon.
#[xdp]
pub fn xdplb_floor(ctx: XdpContext) -> u32 {
    floor::floor(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
