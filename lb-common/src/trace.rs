//! Watching the data path at runtime: the switch word user space writes, and the typed event
//! the data path emits per packet while a trace runs (`xdplb trace`, docs/troubleshooting.md).
//!
//! The switch is a mutable global in the program's own data section, not a map slot: with
//! nothing switched on, a packet pays one load and one branch on it per watch point, no map
//! lookup. It is not pinned: a restarted daemon writes it again from its own state.

use crate::FlowKey;

/// Name of the switch word in the object (`.bss.watch`, a `u32` of `WATCH_*` bits).
pub const GLOBAL_WATCH: &str = "XDPLB_WATCH";
/// The data section that holds `GLOBAL_WATCH` (aya exposes it as a one-slot array map).
pub const WATCH_SECTION: &str = ".bss.watch";
/// Bit 0: every verdict is logged with aya-log (`xdplb debug on`).
pub const WATCH_DEBUG: u32 = 1;
/// Bit 1: every verdict is sent as a `TraceEvent` to `TRACE_RING` (while a trace runs).
pub const WATCH_TRACE: u32 = 2;

/// The program that reports a verdict (tail-called through `WATCH_JUMP`, slot 0, while
/// anything watches; never attached).
pub const PROG_WATCH: &str = "xdplb_watch";
/// The maps, named in `maps` with every other: `WATCH_JUMP` (the program array holding
/// `PROG_WATCH`), `TRACE_RING` (ring buffer of `TraceEvent`s, user space reads it),
/// `TRACE_NOW` (per-CPU scratch record of the packet being judged) and `TRACE_BUDGET`
/// (per-CPU `TraceBudget`); none is pinned.
pub use crate::maps::{TRACE_BUDGET, TRACE_NOW, TRACE_RING, WATCH_JUMP};
/// `TRACE_RING`'s size in bytes: a power of two and a multiple of the page size.
pub const TRACE_RING_BYTES: u32 = 1 << 18;
/// Events each CPU sends per second at most while tracing; beyond it they are counted as
/// dropped (as are events the ring has no room for), so a trace can never load the host.
pub const TRACE_EVENTS_PER_SEC: u64 = 2000;

/// How the packet's flow was placed.
pub const FLOW_NONE: u8 = 0;
/// Placed by the ring and recorded: a new flow.
pub const FLOW_NEW: u8 = 1;
/// Found in the connection table with its backend.
pub const FLOW_HIT: u8 = 2;
/// Found in the connection table, but its backend was gone: placed again.
pub const FLOW_STALE: u8 = 3;
/// Placed by the ring without a record (an ICMP error, a flood over the record limit).
pub const FLOW_RING: u8 = 4;
/// A backend's reply to an L3 flow.
pub const FLOW_REPLY: u8 = 5;

/// What the data path rewrote.
pub const REWRITE_NONE: u8 = 0;
/// The Ethernet addresses only (L2, direct server return).
pub const REWRITE_MAC: u8 = 1;
/// The destination address and port (L3, towards the backend).
pub const REWRITE_DNAT: u8 = 2;
/// The source address and port (L3, a reply towards the client).
pub const REWRITE_SNAT: u8 = 3;

/// No VIP or backend.
pub const TRACE_NO_ID: u32 = u32::MAX;

/// One verdict, as the data path saw it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    /// The packet as it arrived (valid when `has_flow` is 1).
    pub key: FlowKey,
    /// L3: the address written (destination or source, `rewrite`).
    pub rewrite_addr: [u32; 4],
    /// Interface it arrived on.
    pub ifindex: u32,
    /// Interface it leaves by (0: not sent by the data path).
    pub egress: u32,
    /// `stats` verdict reason and the XDP action.
    pub reason: u32,
    pub action: u32,
    /// VIP and backend ids (`TRACE_NO_ID`: none).
    pub vip: u32,
    pub backend: u32,
    /// L3: the port written (network order).
    pub rewrite_port: u16,
    /// `FLOW_*`.
    pub flow: u8,
    /// `REWRITE_*`.
    pub rewrite: u8,
    /// Destination MAC of a frame the data path sends.
    pub dmac: [u8; 6],
    pub has_flow: u8,
    pub _pad: u8,
}

impl TraceEvent {
    /// Nothing known yet about a packet that arrived on `ifindex`.
    pub const fn arrived(ifindex: u32) -> TraceEvent {
        TraceEvent {
            key: FlowKey {
                src: [0; 4],
                dst: [0; 4],
                sport: 0,
                dport: 0,
                proto: 0,
                family: 0,
                _pad: [0; 2],
            },
            rewrite_addr: [0; 4],
            ifindex,
            egress: 0,
            reason: 0,
            action: 0,
            vip: TRACE_NO_ID,
            backend: TRACE_NO_ID,
            rewrite_port: 0,
            flow: FLOW_NONE,
            rewrite: REWRITE_NONE,
            dmac: [0; 6],
            has_flow: 0,
            _pad: 0,
        }
    }
}

/// A CPU's trace budget: the start of its one-second window (coarse clock, ns), the events
/// sent in it, and all events dropped since the program was loaded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceBudget {
    pub window: u64,
    pub sent: u64,
    pub dropped: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] plain integers and arrays with no implicit padding (tested below).
    unsafe impl aya::Pod for super::TraceEvent {}
    unsafe impl aya::Pod for super::TraceBudget {}
}

/// Name of a `FLOW_*` value as the trace shows it.
pub fn flow_name(flow: u8) -> &'static str {
    match flow {
        FLOW_NEW => "new",
        FLOW_HIT => "hit",
        FLOW_STALE => "stale",
        FLOW_RING => "ring",
        FLOW_REPLY => "reply",
        _ => "-",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_has_no_padding() {
        // key 40 + rewrite_addr 16 + six u32 24 + 2 + 1 + 1 + 6 + 1 + 1.
        assert_eq!(core::mem::size_of::<TraceEvent>(), 92);
        assert_eq!(core::mem::size_of::<TraceBudget>(), 24);
    }
}
