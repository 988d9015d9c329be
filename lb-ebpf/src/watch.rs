//! Watching verdicts at runtime: aya-log records (`xdplb debug on`) and typed trace events
//! (`xdplb trace`), both switched by one global word the daemon writes (`XDPLB_WATCH`).
//!
//! With nothing switched on, each watch point costs one load of that word and one branch: no
//! map lookup, no helper call. Everything else is out of line (`#[inline(never)]`), so the
//! balancer's own code and stack are what they were; the out-of-line parts use map memory, not
//! the stack (the ICMP program has little stack left). Along the way the packet's facts are
//! gathered in a per-CPU record (`TRACE_NOW`); as the program returns its verdict, `xdplb_watch`
//! (tail-called) logs and sends the record.

use aya_ebpf::{
    bindings::xdp_action,
    maps::{PerCpuArray, ProgramArray, RingBuf},
    programs::XdpContext,
};
use aya_log_ebpf::info;
use lb_common::{
    addr::FAMILY_V4,
    trace::{
        TraceBudget, TraceEvent, FLOW_HIT, FLOW_NEW, FLOW_NONE, FLOW_REPLY, FLOW_RING, FLOW_STALE,
        REWRITE_MAC, REWRITE_NONE, TRACE_EVENTS_PER_SEC, TRACE_NO_ID, TRACE_RING_BYTES,
        WATCH_DEBUG, WATCH_TRACE,
    },
    FlowKey,
};

use crate::balance::{Choice, Known};

/// `lb_common::trace::GLOBAL_WATCH`: `WATCH_*` bits. In a data section of its own, which aya
/// exposes as a one-slot array map the daemon writes; `static mut` keeps it out of read-only
/// data (which aya freezes at load).
#[unsafe(no_mangle)]
#[unsafe(link_section = ".bss.watch")]
static mut XDPLB_WATCH: u32 = 0;

lb_ebpf::map! {
    static TRACE_RING: RingBuf = RingBuf::with_byte_size(TRACE_RING_BYTES, 0);
}

lb_ebpf::map! {
    static TRACE_NOW: PerCpuArray<TraceEvent> = PerCpuArray::with_max_entries(1, 0);
}

lb_ebpf::map! {
    /// Slot 0: `xdplb_watch` (filled by the loader; not pinned).
    static WATCH_JUMP: ProgramArray = ProgramArray::with_max_entries(1, 0);
}

lb_ebpf::map! {
    static TRACE_BUDGET: PerCpuArray<TraceBudget> = PerCpuArray::with_max_entries(1, 0);
}

/// The switch word: non-zero while anything watches.
#[inline(always)]
pub fn watching() -> bool {
    // SAFETY: a plain load of a word only user space writes.
    unsafe { core::ptr::read_volatile(&raw const XDPLB_WATCH) != 0 }
}

/// The interface the packet arrived on, for `xdplb_icmp`, which has no room to read it itself
/// (`finish_icmp`); `xdplb_watch` reads it from its own context.
#[inline(always)]
pub fn ingress(ctx: &XdpContext) {
    if watching() {
        note_ingress(ctx.ingress_ifindex() as u32);
    }
}

#[inline(never)]
fn note_ingress(ifindex: u32) {
    if let Some(now) = TRACE_NOW.get_ptr_mut(0) {
        // SAFETY: this CPU's slot, touched only while this packet runs.
        unsafe { (*now).ifindex = ifindex };
    }
}

/// Forgets the reported packet's facts: the next packet starts from nothing (the daemon also
/// clears the record when it switches watching on, in case a packet was cut off by a switch).
#[inline(always)]
fn reset(now: *mut TraceEvent) {
    // SAFETY: this CPU's slot (`note_ingress`).
    unsafe { *now = TraceEvent::arrived(0) };
}

/// The packet's flow, as parsed.
#[inline(always)]
pub fn flow(key: &FlowKey) {
    if watching() {
        note_flow(key);
    }
}

#[inline(never)]
fn note_flow(key: &FlowKey) {
    if let Some(now) = TRACE_NOW.get_ptr_mut(0) {
        // SAFETY: as in `note_ingress`.
        unsafe {
            (*now).key = *key;
            (*now).has_flow = 1;
        }
    }
}

/// What the connection table said before the flow was placed (`placed` finishes it).
#[inline(always)]
pub fn known(known: &Known) -> u8 {
    match known {
        Known::Hit(..) => FLOW_HIT,
        Known::Stale => FLOW_STALE,
        _ => FLOW_NEW,
    }
}

/// The VIP and backend a flow went to; `known` as `known` said before it was placed.
#[inline(always)]
pub fn placed(vip: u32, choice: &Choice, known: u8) {
    if watching() {
        // Not recorded (an ICMP error, a flood), or a retransmitted SYN that found its entry.
        let flow = match (known, choice.new_flow, choice.hop.is_some()) {
            (FLOW_NEW, false, true) => FLOW_HIT,
            (FLOW_NEW, false, false) => FLOW_RING,
            _ => known,
        };
        note_choice(vip, choice.id, flow);
    }
}

/// A packet of `vip`, which has no backend to take it (dropped).
#[inline(always)]
pub fn no_backend(vip: u32) {
    if watching() {
        note_choice(vip, TRACE_NO_ID, FLOW_NONE);
    }
}

/// A backend's reply to a flow of `vip`.
#[inline(always)]
pub fn reply(vip: u32, backend: u32) {
    if watching() {
        note_choice(vip, backend, FLOW_REPLY);
    }
}

#[inline(never)]
fn note_choice(vip: u32, backend: u32, flow: u8) {
    if let Some(now) = TRACE_NOW.get_ptr_mut(0) {
        // SAFETY: as in `note_ingress`.
        unsafe {
            (*now).vip = vip;
            (*now).backend = backend;
            (*now).flow = flow;
        }
    }
}

/// What is rewritten (`REWRITE_*`; L3: the address and port written).
#[inline(always)]
pub fn rewrite(kind: u8, addr: &[u32; 4], port: u16) {
    if watching() {
        note_rewrite(
            (kind as u32) << 16 | port as u32,
            addr[0],
            addr[1],
            addr[2],
            addr[3],
        );
    }
}

/// Scalars only (no pointer into the caller's stack): a pointer argument would pin the
/// caller's values to its stack, which the ICMP program has no room for.
#[inline(never)]
fn note_rewrite(kind_port: u32, a0: u32, a1: u32, a2: u32, a3: u32) {
    if let Some(now) = TRACE_NOW.get_ptr_mut(0) {
        // SAFETY: as in `note_ingress`.
        unsafe {
            (*now).rewrite = (kind_port >> 16) as u8;
            (*now).rewrite_addr = [a0, a1, a2, a3];
            (*now).rewrite_port = kind_port as u16;
        }
    }
}

/// Where the frame leaves and the MAC it is sent to (L2: the only rewrite).
#[inline(always)]
pub fn egress(ifindex: u32, dmac: &[u8; 6]) {
    if watching() {
        let m = dmac;
        let mac = u64::from_le_bytes([m[0], m[1], m[2], m[3], m[4], m[5], 0, 0]);
        note_egress(ifindex, mac);
    }
}

/// Scalars only, as `note_rewrite`.
#[inline(never)]
fn note_egress(ifindex: u32, mac: u64) {
    if let Some(now) = TRACE_NOW.get_ptr_mut(0) {
        let b = mac.to_le_bytes();
        // SAFETY: as in `note_ingress`.
        unsafe {
            (*now).egress = ifindex;
            (*now).dmac = [b[0], b[1], b[2], b[3], b[4], b[5]];
            if (*now).rewrite == REWRITE_NONE {
                (*now).rewrite = REWRITE_MAC;
            }
        }
    }
}

/// The verdict (`counters::verdict`): noted only; the program reports it as it returns
/// (`finish`).
#[inline(always)]
pub fn verdict(reason: u32, action: u32) {
    if watching() {
        note_verdict(reason, action);
    }
}

#[inline(never)]
fn note_verdict(reason: u32, action: u32) {
    if let Some(now) = TRACE_NOW.get_ptr_mut(0) {
        // SAFETY: as in `note_ingress`.
        unsafe {
            (*now).reason = reason;
            (*now).action = action;
        }
    }
}

/// `xdplb` returns `action`: while anything watches, it is reported first by tail-calling
/// `xdplb_watch` (which returns the same action). A tail call, not a call: the report
/// (aya-log's record above all) gets a stack of its own, where a called function would add
/// its frame to the balancer's.
#[inline(always)]
pub fn finish(ctx: &XdpContext, action: u32) -> u32 {
    if watching() {
        // SAFETY: the program array holds this object's `xdplb_watch` only.
        unsafe { WATCH_JUMP.tail_call(ctx, 0) };
    }
    action
}

/// `xdplb_icmp` returns `action`: its verdict is traced, but not logged. Its stack is nearly
/// full (16 bytes are left for a called function, aya-log's record needs more), and a tail
/// call at its end made LLVM generate code the verifier refuses (arithmetic on the context
/// pointer on a speculated path).
#[inline(always)]
pub fn finish_icmp(action: u32) -> u32 {
    if watching() {
        trace_only();
    }
    action
}

#[inline(never)]
fn trace_only() {
    // SAFETY: a plain load, as in `watching`.
    let bits = unsafe { core::ptr::read_volatile(&raw const XDPLB_WATCH) };
    if let Some(now) = TRACE_NOW.get_ptr_mut(0) {
        if bits & WATCH_TRACE != 0 {
            send(now);
        }
        reset(now);
    }
}

/// `xdplb_watch`: logs and/or sends the verdict `TRACE_NOW` holds, and returns its action.
#[inline(always)]
pub fn report(ctx: &XdpContext) -> u32 {
    let Some(now) = TRACE_NOW.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: a plain load, as in `watching`.
    let bits = unsafe { core::ptr::read_volatile(&raw const XDPLB_WATCH) };
    // SAFETY: as in `note_ingress`.
    let action = unsafe {
        (*now).ifindex = ctx.ingress_ifindex() as u32;
        (*now).action
    };
    if bits & WATCH_DEBUG != 0 {
        log(now);
    }
    if bits & WATCH_TRACE != 0 {
        send(now);
    }
    reset(now);
    action
}

/// One aya-log record per verdict; the daemon's log shows it under `xdplb::datapath`. The
/// reason is the `lb_common::stats` index (`xdplb trace` shows names); ids are `TRACE_NO_ID`
/// (4294967295) where there is none.
#[inline(never)]
fn log(now: *const TraceEvent) {
    // SAFETY: this CPU's slot (`note_ingress`).
    let e = unsafe { &*now };
    let k = &e.key;
    let (sport, dport) = (u16::from_be(k.sport), u16::from_be(k.dport));
    if e.has_flow == 0 {
        info!(
            &(),
            target: "xdplb::datapath",
            "verdict reason={} action={} ifindex={}",
            e.reason,
            e.action,
            e.ifindex
        );
    } else if k.family == FAMILY_V4 {
        info!(
            &(),
            target: "xdplb::datapath",
            "verdict reason={} action={} ifindex={} proto={} {:i}:{} -> {:i}:{} vip={} backend={} egress={}",
            e.reason,
            e.action,
            e.ifindex,
            k.proto,
            k.src[0].to_ne_bytes(),
            sport,
            k.dst[0].to_ne_bytes(),
            dport,
            e.vip,
            e.backend,
            e.egress
        );
    } else {
        info!(
            &(),
            target: "xdplb::datapath",
            "verdict reason={} action={} ifindex={} proto={} [{:i}]:{} -> [{:i}]:{} vip={} backend={} egress={}",
            e.reason,
            e.action,
            e.ifindex,
            k.proto,
            v6_bytes(&k.src),
            sport,
            v6_bytes(&k.dst),
            dport,
            e.vip,
            e.backend,
            e.egress
        );
    }
}

#[inline(always)]
fn v6_bytes(w: &[u32; 4]) -> [u8; 16] {
    let [a, b, c, d] = [
        w[0].to_ne_bytes(),
        w[1].to_ne_bytes(),
        w[2].to_ne_bytes(),
        w[3].to_ne_bytes(),
    ];
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}

/// Sends the event within this CPU's budget; what the budget or a full ring refuses is
/// counted, and the trace shows the count. Inlined: no frame of its own (`trace_only`).
#[inline(always)]
fn send(now: *const TraceEvent) {
    let Some(b) = TRACE_BUDGET.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the coarse clock helper has no preconditions.
    let t = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns() };
    // SAFETY: this CPU's slot, touched only while this packet runs.
    unsafe {
        if t.wrapping_sub((*b).window) >= 1_000_000_000 {
            (*b).window = t;
            (*b).sent = 0;
        }
        if (*b).sent >= TRACE_EVENTS_PER_SEC {
            (*b).dropped += 1;
            return;
        }
        (*b).sent += 1;
        if TRACE_RING.output::<TraceEvent>(&*now, 0).is_err() {
            (*b).dropped += 1;
        }
    }
}
