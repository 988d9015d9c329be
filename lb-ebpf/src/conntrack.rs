//! The connection table, behind one rule for which table holds a flow. Layout 2 keeps IPv4
//! flows in `XDPLB_CT4`, keyed by the 16-byte `FlowKey4` (the kernel hashes and compares 16
//! bytes instead of 40 per lookup, and each entry is 24 bytes smaller), and IPv6 flows in
//! `XDPLB_CONNTRACK`. Built with the feature `layout-v1`, every flow is in `XDPLB_CONNTRACK`
//! and `XDPLB_CT4` does not exist, as in layout 1. Every lookup and insert goes through here.

use aya_ebpf::maps::LruHashMap;
#[cfg(not(feature = "layout-v1"))]
use lb_common::{addr::FAMILY_V4, FlowKey4};
use lb_common::{maps as m, ConnValue, FlowKey};

lb_ebpf::map! {
    pub static CONNTRACK: LruHashMap<FlowKey, ConnValue> =
        LruHashMap::with_max_entries(m::DEFAULT_CONNTRACK_SIZE, 0);
}

lb_ebpf::map! {
    #[cfg(not(feature = "layout-v1"))]
    pub static CONNTRACK4: LruHashMap<FlowKey4, ConnValue> =
        LruHashMap::with_max_entries(m::DEFAULT_CONNTRACK_SIZE, 0);
}

/// The flow's entry (a hit refreshes it in the LRU). A pointer into the map value: the hop
/// caches in it are updated in place.
#[inline(always)]
pub fn entry(key: &FlowKey) -> Option<*mut ConnValue> {
    #[cfg(not(feature = "layout-v1"))]
    if key.family == FAMILY_V4 {
        return CONNTRACK4.get_ptr_mut(FlowKey4::of(key));
    }
    CONNTRACK.get_ptr_mut(key)
}

/// Records the flow's entry (`flags`: BPF_ANY or BPF_NOEXIST); the helper's error, if any.
#[inline(always)]
pub fn insert(key: &FlowKey, value: &ConnValue, flags: u64) -> Result<(), i32> {
    #[cfg(not(feature = "layout-v1"))]
    if key.family == FAMILY_V4 {
        return CONNTRACK4.insert(FlowKey4::of(key), value, flags);
    }
    CONNTRACK.insert(key, value, flags)
}
