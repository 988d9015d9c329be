//! Per-CPU counters: verdict reasons and events in the global stats array, traffic per VIP and
//! per backend. Per-CPU slots need no atomics; user space sums the CPUs.

use lb_common::TrafficCounters;

use crate::maps::{BACKEND_STATS, STATS, VIP_STATS};

/// Counts the packet under `reason` and returns `action`; while anything watches the data
/// path (`xdplb debug on`, `xdplb trace`; off by default) also logs or traces it (`watch`).
#[inline(always)]
pub fn verdict(reason: u32, action: u32) -> u32 {
    event(reason);
    crate::watch::verdict(reason, action);
    action
}

/// Increments one slot of the stats array.
#[inline(always)]
pub fn event(index: u32) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot is only touched by this CPU while the program runs.
        unsafe { *slot += 1 };
    }
}

/// Adds a forwarded packet to its VIP's and its backend's counters.
#[inline(always)]
pub fn traffic(vip: u32, backend: u32, bytes: u64, new_flow: bool) {
    both(vip, backend, |c| {
        c.packets += 1;
        c.bytes += bytes;
        c.new_flows += new_flow as u64;
    });
}

/// Adds a backend's reply (L3 mode) to the flow's VIP's and backend's counters.
#[inline(always)]
pub fn reply(vip: u32, backend: u32, bytes: u64) {
    both(vip, backend, |c| {
        c.reply_packets += 1;
        c.reply_bytes += bytes;
    });
}

#[inline(always)]
fn both(vip: u32, backend: u32, add: impl Fn(&mut TrafficCounters)) {
    if let Some(c) = VIP_STATS.get_ptr_mut(vip) {
        // SAFETY: per-CPU slot, see `event`.
        unsafe { add(&mut *c) };
    }
    if let Some(c) = BACKEND_STATS.get_ptr_mut(backend) {
        // SAFETY: per-CPU slot, see `event`.
        unsafe { add(&mut *c) };
    }
}
