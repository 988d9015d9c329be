//! The xdplb XDP program: parse -> classify (VIP?) -> choose a backend (connection table, else
//! the VIP's Maglev ring) -> rewrite -> forward, counting every verdict.
//!
//! Module per concern, as in Katran: `parse` reads headers, `maps` declares the maps,
//! `balance` picks the backend (`conntrack` holds the flows it placed), `forward` rewrites and sends, `counters` counts.
#![no_std]
#![no_main]

mod balance;
mod conntrack;
mod counters;
mod echo;
mod forward;
mod icmp;
mod maps;
mod nat;
mod parse;
mod proto;
mod reply;
mod too_big;
mod watch;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{
    addr::FAMILY_V4,
    maps::{FILTER_REPLY, FILTER_VIP, ICMP_LIMIT, WINDOW_ICMP},
    stats,
    trace::{REWRITE_DNAT, REWRITE_SNAT},
    FlowKey, VipInfo, VIP_F_ALL_PORTS, VIP_F_MODE_L3,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    balance::{Known, Record},
    counters::verdict,
    icmp::Translation,
    parse::{Class, FlowFlags, Offsets, Parsed},
};

/// The load balancer. Every path returns through `verdict`, so each packet is counted under
/// exactly one reason.
#[xdp]
pub fn xdplb(ctx: XdpContext) -> u32 {
    let action = match parse::classify::<false>(&ctx) {
        Err(reason) => verdict(reason, xdp_action::XDP_PASS),
        Ok(Parsed { class, vlan }) => {
            if vlan {
                counters::event(stats::EV_VLAN);
            }
            dispatch(&ctx, class, vlan)
        }
    };
    watch::finish(&ctx, action)
}

#[inline(always)]
fn dispatch(ctx: &XdpContext, class: Class, vlan: bool) -> u32 {
    match class {
        Class::Flow(key, off, flags) => flow(ctx, &key, &off, flags, vlan),
        // Rare, and the translation needs a stack of its own: the ICMP program takes over, as
        // it does for pings to a VIP address.
        Class::IcmpErrorLater => to_icmp_program(ctx),
        Class::Echo(dst, _) if maps::is_vip_address(&dst) => {
            if !maps::sent_to_us(ctx) {
                return not_for_us();
            }
            to_icmp_program(ctx)
        }
        Class::Echo(..) => verdict(stats::PASS_NOT_VIP, xdp_action::XDP_PASS),
        // Not from `classify::<false>`: only the ICMP program parses quoted packets.
        Class::IcmpError { .. } => verdict(stats::PASS_ICMP, xdp_action::XDP_PASS),
        Class::Icmp(dst) => pass_unless_vip_address(&dst, stats::PASS_ICMP),
        // Non-first fragments carry no ports, so they cannot be steered consistently with the
        // first one: fragments to a VIP address are dropped (counted); see docs/datapath.md.
        Class::Fragment(dst) => {
            if maps::is_vip_address(&dst) {
                if !maps::sent_to_us(ctx) {
                    return not_for_us();
                }
                verdict(stats::DROP_FRAGMENT, xdp_action::XDP_DROP)
            } else {
                verdict(stats::PASS_NOT_VIP, xdp_action::XDP_PASS)
            }
        }
    }
}

/// Tail-calls `xdplb_icmp` (`maps::JUMP`, pinned, so it stays filled while no daemon runs);
/// returns only if that fails (an empty table: never after a load), and the packet is passed.
#[inline(always)]
fn to_icmp_program(ctx: &XdpContext) -> u32 {
    watch::ingress(ctx);
    // SAFETY: the program array holds XDP programs of this object only.
    unsafe { maps::JUMP.tail_call(ctx, maps::JUMP_ICMP) };
    verdict(stats::PASS_ICMP, xdp_action::XDP_PASS)
}

/// A TCP or UDP packet (or another protocol's): for a VIP, or maybe an L3 backend's reply.
#[inline(always)]
fn flow(ctx: &XdpContext, key: &FlowKey, off: &Offsets, flags: FlowFlags, vlan: bool) -> u32 {
    watch::flow(key);
    // A flow the connection table knows brings its VIP along: no VIP lookup. Only packets to
    // an address that may be a VIP's are looked up at all. A SYN opens a new connection: not
    // looked up, the ring places it and the insert only succeeds for a new key (a
    // retransmitted SYN finds its entry that way; `balance::place`). A new connection pays one
    // walk of the table's cold bucket, not two.
    let (vip, known) = if maps::may_be(FILTER_VIP, &key.dst) {
        // Another host's frame leaves no trace here: not looked up in the connection table
        // (a hit would be counted and its entry refreshed), not recorded, not steered. Not a
        // VIP's, it may still be a reply (`to_client` asks again).
        if !maps::sent_to_us(ctx) {
            if maps::vip_lookup(key).is_some() {
                return not_for_us();
            }
            (None, Known::Unknown)
        } else if flags.syn {
            (maps::vip_lookup(key), Known::Opening)
        } else {
            match balance::lookup(key) {
                Known::Hit(vip, choice) => (Some(vip), Known::Hit(vip, choice)),
                other => (maps::vip_lookup(key), other),
            }
        }
    } else {
        (None, Known::Unknown)
    };
    // One NAT call site for both directions: the verifier walks the L3 code once per parse
    // path instead of twice.
    let plan = match vip {
        Some(vip) if vip.flags & VIP_F_MODE_L3 != 0 => match untranslatable(vlan, flags) {
            Some(reason) => Err(reason),
            // Over the record limit (this flow counted, as recording it would), a new flow of
            // an all-ports VIP can be neither recorded (the flood would evict established
            // flows) nor placed without an entry (only an entry can match its replies).
            None if vip.flags & VIP_F_ALL_PORTS != 0
                && !matches!(known, Known::Hit(..))
                && !maps::may_record() =>
            {
                Err(stats::DROP_ALL_PORTS_FLOOD)
            }
            None => to_backend(&vip, key, known),
        },
        Some(vip) => return steer(ctx, &vip, key, known, Record::UnlessFlood, vlan),
        None => to_client(ctx, key, vlan, flags),
    };
    match plan {
        Ok(plan) => nat_send(ctx, key, off, &plan),
        Err(reason) => verdict_of(reason),
    }
}

/// Why an L3 packet cannot be translated, if it cannot. Dropped, not passed: the kernel would
/// route a VIP packet back to where it came from, or send a reply from the backend's address.
#[inline(always)]
fn untranslatable(vlan: bool, flags: FlowFlags) -> Option<u32> {
    if vlan {
        // The tag would have to follow the FIB's egress (docs/datapath.md).
        Some(stats::DROP_L3_VLAN)
    } else if flags.no_nat {
        Some(stats::DROP_L3_IPV6_EXT)
    } else {
        None
    }
}

/// The action that goes with a reason that ends a packet early.
#[inline(always)]
fn verdict_of(reason: u32) -> u32 {
    let action = match reason {
        stats::DROP_NO_BACKEND
        | stats::DROP_L3_VLAN
        | stats::DROP_L3_IPV6_EXT
        | stats::DROP_ICMP_UNTRANSLATABLE
        | stats::DROP_NO_ROUTE
        | stats::DROP_TOO_BIG
        | stats::DROP_ALL_PORTS_FLOOD => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    };
    verdict(reason, action)
}

/// An ICMP error quoting a TCP or UDP packet. Only the quoted packet's sender may receive an
/// error about it: the outer destination must be the quoted source, else the error is not
/// ours to steer (forged, or for another host) and passes unchanged.
#[inline(always)]
fn icmp_error(ctx: &XdpContext, flow: &FlowKey, outer: &FlowKey, plain: bool, vlan: bool) -> u32 {
    let pass = parse::Dest {
        addr: outer.dst,
        family: outer.family,
    };
    let foreign = || {
        counters::event(stats::EV_ICMP_FOREIGN);
        pass_unless_vip_address(&pass, stats::PASS_ICMP)
    };
    let addressed = outer.dst == flow.dst;
    let l3_checks = || {
        if vlan {
            Some(stats::DROP_L3_VLAN)
        } else if !plain {
            Some(stats::DROP_ICMP_UNTRANSLATABLE)
        } else {
            None
        }
    };
    // About a VIP's packet (a reply), sent to the VIP: for the flow's backend.
    if let Some(vip) = maps::find_vip(flow) {
        if !addressed {
            return foreign();
        }
        if !maps::sent_to_us(ctx) {
            return not_for_us();
        }
        if vip.flags & VIP_F_MODE_L3 == 0 {
            counters::event(stats::EV_ICMP_STEERED);
            return steer(ctx, &vip, flow, balance::lookup(flow), Record::Never, vlan);
        }
        if let Some(reason) = l3_checks() {
            return verdict_of(reason);
        }
        let Some(choice) = balance::choose(&vip, flow, balance::lookup(flow), Record::Never) else {
            return verdict_of(stats::DROP_NO_BACKEND);
        };
        let t = Translation {
            to_backend: true,
            addr: choice.backend.addr,
            port: choice.backend.port,
            outer: true,
        };
        return icmp_send(ctx, outer, flow.proto, t, stats::EV_ICMP_TO_BACKEND);
    }
    // About a client's packet, from its backend (or a router on the backend's side).
    if maps::may_be(FILTER_REPLY, &flow.src) {
        let mut o = reply::Owner::default();
        match reply::resolve(flow, &mut o) {
            reply::OURS if !addressed => return foreign(),
            reply::OURS if !maps::sent_to_us(ctx) => return not_for_us(),
            reply::OURS => {
                if let Some(reason) = l3_checks() {
                    return verdict_of(reason);
                }
                let t = Translation {
                    to_backend: false,
                    addr: o.vip_addr,
                    port: o.vip_port,
                    outer: outer.src == flow.src,
                };
                return icmp_send(ctx, outer, flow.proto, t, stats::EV_ICMP_TO_CLIENT);
            }
            reply::UNCONFIRMED => counters::event(stats::EV_REPLY_UNCONFIRMED),
            _ => {}
        }
    }
    pass_unless_vip_address(&pass, stats::PASS_ICMP)
}

/// Routes and sends a translated ICMP error (`outer`: its own addresses).
#[inline(always)]
fn icmp_send(ctx: &XdpContext, outer: &FlowKey, proto: u8, t: Translation, event: u32) -> u32 {
    let ip_len = if outer.family == FAMILY_V4 {
        Ipv4Hdr::LEN
    } else {
        Ipv6Hdr::LEN
    };
    let off = Offsets {
        l3: EthHdr::LEN,
        l4: EthHdr::LEN + ip_len,
    };
    let rw = nat::Rewrite {
        dst: t.to_backend,
        addr: if t.outer {
            t.addr
        } else if t.to_backend {
            outer.dst
        } else {
            outer.src
        },
        port: 0,
        hop: nat::HopRef::NONE,
    };
    let plan = Plan {
        rw,
        count: Count::Icmp(event),
        icmp: Some((proto, t)),
    };
    nat_send(ctx, outer, &off, &plan)
}

/// A frame for another host (`maps::sent_to_us`): passed, untouched.
#[inline(always)]
fn not_for_us() -> u32 {
    verdict(stats::PASS_NOT_FOR_US, xdp_action::XDP_PASS)
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
/// A tagged frame (`vlan`) keeps its tags going back out where it came in and loses them
/// going out another interface (`forward::pop_vlan`; docs/datapath.md).
#[inline(always)]
fn steer(
    ctx: &XdpContext,
    vip: &VipInfo,
    key: &FlowKey,
    known: Known,
    record: Record,
    vlan: bool,
) -> u32 {
    let was = watch::known(&known);
    let Some(choice) = balance::choose(vip, key, known, record) else {
        watch::no_backend(vip.id);
        return verdict(stats::DROP_NO_BACKEND, xdp_action::XDP_DROP);
    };
    watch::placed(vip.id, &choice, was);
    // Counted as VIP traffic only once it can be sent.
    let Some(out) = forward::egress(ctx, &choice.backend) else {
        return verdict(stats::DROP_NO_IFACE, xdp_action::XDP_DROP);
    };
    watch::egress(out.ifindex, &choice.backend.mac);
    // The bytes that arrived, as on every path.
    let len = (ctx.data_end() - ctx.data()) as u64;
    if vlan && !out.back_out {
        if let Err(reason) = forward::pop_vlan(ctx) {
            // Unreachable: the tags and the IP header behind them were parsed.
            return verdict(reason, xdp_action::XDP_PASS);
        }
        counters::event(stats::EV_VLAN_POPPED);
    }
    counters::traffic(vip.id, choice.id, len, choice.new_flow);
    forward::send(ctx, choice.backend.mac, &out)
}

/// What an L3 packet becomes, and what to count it as.
struct Plan {
    rw: nat::Rewrite,
    count: Count,
    /// A translated ICMP error: the quoted packet's protocol and the translation (`rw` is
    /// then for its outer header).
    icmp: Option<(u8, Translation)>,
}

/// Whose counters an L3 packet goes to.
#[derive(Clone, Copy)]
enum Count {
    /// A client's packet: VIP id, backend id, whether it placed a new flow.
    Forward(u32, u32, bool),
    /// A backend's reply: VIP id, backend id, whether the ring vouched for it (no entry).
    Reply(u32, u32, bool),
    /// A translated ICMP error: its event.
    Icmp(u32),
}

/// L3 mode: the flow's packets get the backend's address (and port). Flows of all-ports VIPs
/// are always recorded: only their entry can match their replies (`reply`; over the record
/// limit they are dropped before, in `flow`).
#[inline(always)]
fn to_backend(vip: &VipInfo, key: &FlowKey, known: Known) -> Result<Plan, u32> {
    let record = if vip.flags & VIP_F_ALL_PORTS != 0 {
        Record::Always
    } else {
        Record::UnlessFlood
    };
    let was = watch::known(&known);
    let Some(choice) = balance::choose(vip, key, known, record) else {
        watch::no_backend(vip.id);
        return Err(stats::DROP_NO_BACKEND);
    };
    watch::placed(vip.id, &choice, was);
    let b = &choice.backend;
    // A known flow has its own next hop; a new one starts with its backend's.
    let hop = match choice.hop {
        Some(at) => nat::HopRef {
            at,
            tag: nat::hop_tag(key),
        },
        None => balance::backend_hop(choice.id, b.generation),
    };
    let rw = nat::Rewrite {
        dst: true,
        addr: b.addr,
        port: b.port,
        hop,
    };
    Ok(Plan {
        rw,
        count: Count::Forward(vip.id, choice.id, choice.new_flow),
        icmp: None,
    })
}

/// A packet that is not for a VIP may be a backend's reply to an L3 flow.
#[inline(always)]
fn to_client(ctx: &XdpContext, key: &FlowKey, vlan: bool, flags: FlowFlags) -> Result<Plan, u32> {
    if !maps::may_be(FILTER_REPLY, &key.src) {
        return Err(stats::PASS_NOT_VIP);
    }
    let mut o = reply::Owner::default();
    match reply::resolve(key, &mut o) {
        reply::OURS if !maps::sent_to_us(ctx) => return Err(stats::PASS_NOT_FOR_US),
        reply::OURS => {}
        reply::UNCONFIRMED => {
            counters::event(stats::EV_REPLY_UNCONFIRMED);
            return Err(stats::PASS_NOT_VIP);
        }
        _ => return Err(stats::PASS_NOT_VIP),
    }
    watch::reply(o.vip, o.backend);
    if let Some(reason) = untranslatable(vlan, flags) {
        return Err(reason);
    }
    Ok(Plan {
        rw: nat::Rewrite {
            dst: false,
            addr: o.vip_addr,
            port: o.vip_port,
            hop: o.hop.map_or(nat::HopRef::NONE, |at| nat::HopRef {
                at,
                tag: nat::hop_tag(key),
            }),
        },
        count: Count::Reply(o.vip, o.backend, o.by_ring),
        icmp: None,
    })
}

/// Routes, rewrites and sends an L3 packet: a flow's, or a translated ICMP error (`key` is
/// then its outer header's).
#[inline(always)]
fn nat_send(ctx: &XdpContext, key: &FlowKey, off: &Offsets, plan: &Plan) -> u32 {
    let (rw, count, icmp) = (&plan.rw, plan.count, plan.icmp.as_ref());
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
        // Unchanged, the kernel answers "time exceeded" as a router does (it never forwards it).
        nat::Route::Expired => return verdict(stats::PASS_TTL, xdp_action::XDP_PASS),
        // The LB's own traffic (a health check's answer): not a client's.
        nat::Route::Local if matches!(count, Count::Reply(..)) => {
            return verdict(stats::PASS_NOT_VIP, xdp_action::XDP_PASS)
        }
        nat::Route::None | nat::Route::Local => return verdict_of(stats::DROP_NO_ROUTE),
        // ICMP errors are never answered with ICMP errors (RFC 1122).
        nat::Route::TooBig(_) if icmp.is_some() => return verdict_of(stats::DROP_TOO_BIG),
        nat::Route::TooBig(mtu) => return too_big(ctx, key, off, rw, count, mtu),
        nat::Route::Kernel => false,
        nat::Route::Forward { .. } => true,
    };
    let len = (ctx.data_end() - ctx.data()) as u64;
    let done = match icmp {
        Some((proto, t)) => icmp::translate(ctx, key.family == FAMILY_V4, *proto, t, hop),
        None => nat::rewrite(ctx, key, off, rw, hop),
    };
    if let Err(reason) = done {
        return verdict(reason, xdp_action::XDP_PASS);
    }
    watch::rewrite(
        if rw.dst { REWRITE_DNAT } else { REWRITE_SNAT },
        &rw.addr,
        rw.port,
    );
    count_sent(count, len);
    match route {
        nat::Route::Forward { out, dmac } => {
            watch::egress(out.ifindex, &dmac);
            forward::send(ctx, dmac, &out)
        }
        // The kernel resolves the next hop and forwards the rewritten packet.
        _ => verdict(stats::PASS_NO_NEIGH, xdp_action::XDP_PASS),
    }
}

/// Counters of an L3 packet that was rewritten and leaves.
#[inline(always)]
fn count_sent(count: Count, len: u64) {
    match count {
        Count::Forward(vip, backend, new_flow) => counters::traffic(vip, backend, len, new_flow),
        Count::Reply(vip, backend, by_ring) => {
            counters::reply(vip, backend, len);
            counters::event(stats::EV_NAT_REVERSE);
            if by_ring {
                counters::event(stats::EV_REPLY_BY_RING);
            }
        }
        Count::Icmp(event) => counters::event(event),
    }
}

/// An L3 packet larger than its egress's MTU. An IPv4 packet without DF is rewritten and
/// handed to the kernel, which fragments it; any other is answered with "fragmentation
/// needed" / "packet too big" (`too_big`), at most `ICMP_LIMIT` per CPU per second.
///
#[inline(always)]
fn too_big(
    ctx: &XdpContext,
    key: &FlowKey,
    off: &Offsets,
    rw: &nat::Rewrite,
    count: Count,
    mtu: u16,
) -> u32 {
    let v4 = key.family == FAMILY_V4;
    if v4 && !dont_fragment(ctx, off) {
        let len = (ctx.data_end() - ctx.data()) as u64;
        if let Err(reason) = nat::rewrite(ctx, key, off, rw, false) {
            return verdict(reason, xdp_action::XDP_PASS);
        }
        count_sent(count, len);
        return verdict(stats::PASS_KERNEL_FRAGMENTS, xdp_action::XDP_PASS);
    }
    if !maps::within_rate(WINDOW_ICMP, ICMP_LIMIT) {
        return verdict_of(stats::DROP_TOO_BIG);
    }
    // A client hears from the VIP it talks to; a backend from the LB (a router on its path).
    let mut src = key.dst;
    if !matches!(count, Count::Forward(..)) && !too_big::source_towards(ctx, v4, &key.src, &mut src)
    {
        return verdict_of(stats::DROP_TOO_BIG);
    }
    if too_big::answer(ctx, v4, &src, &key.src, mtu) {
        verdict(stats::TX_ICMP_TOO_BIG, xdp_action::XDP_TX)
    } else {
        verdict_of(stats::DROP_TOO_BIG)
    }
}

/// Whether an IPv4 packet carries DF (path MTU discovery: the sender wants an error, not
/// fragments).
#[inline(always)]
fn dont_fragment(ctx: &XdpContext, off: &Offsets) -> bool {
    match parse::ptr_at::<Ipv4Hdr>(ctx, off.l3) {
        // SAFETY: bounds-checked by ptr_at.
        Ok(ip) => unsafe { (*ip).frags[0] & 0x40 != 0 },
        Err(_) => true,
    }
}

/// ICMP errors and pings to VIP addresses, tail-called by `xdplb` (`maps::JUMP`): errors are
/// steered or translated for the flow they quote (`icmp_error`), with a stack of their own;
/// pings answered (`echo`). Never attached by the daemon.
#[xdp]
pub fn xdplb_icmp(ctx: XdpContext) -> u32 {
    let action = match parse::classify::<true>(&ctx) {
        Ok(Parsed {
            class: Class::IcmpError { flow, outer, plain },
            vlan,
        }) => icmp_error(&ctx, &flow, &outer, plain, vlan),
        // `xdplb` checked that it is for a VIP address.
        Ok(Parsed {
            class: Class::Echo(dst, off),
            ..
        }) => {
            match maps::launder(&off).map(|off| echo::answer(&ctx, &off, dst.family == FAMILY_V4)) {
                Some(Ok(())) => verdict(stats::TX_ICMP_ECHO, xdp_action::XDP_TX),
                _ => verdict(stats::PASS_MALFORMED, xdp_action::XDP_PASS),
            }
        }
        // The quoted packet is cut short, say.
        Err(reason) => verdict(reason, xdp_action::XDP_PASS),
        // An error quoting something other than TCP or UDP.
        Ok(Parsed {
            class: Class::Icmp(dst),
            ..
        }) => pass_unless_vip_address(&dst, stats::PASS_ICMP),
        // Unreachable: `xdplb` parsed an ICMP error from the same bytes.
        Ok(_) => verdict(stats::PASS_ICMP, xdp_action::XDP_PASS),
    };
    watch::finish_icmp(action)
}

/// Reports a verdict of `xdplb` (tail-called by it while the daemon watches: `watch::finish`)
/// and returns its action. Never attached.
#[xdp]
pub fn xdplb_watch(ctx: XdpContext) -> u32 {
    watch::report(&ctx)
}

/// Passes everything. Attached to the peer end of a veth so XDP_TX/XDP_REDIRECT into it
/// delivers, and measured as the empty baseline by benchmarks.
#[xdp]
pub fn xdplb_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

lb_ebpf::binary_items!();
