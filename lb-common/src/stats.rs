//! Indices of the global per-CPU stats array.
//!
//! Slots `0..VERDICT_COUNT` are **verdict reasons**: every packet the program sees increments
//! exactly one of them, so their sum is the number of packets. Slots from `EVENT_BASE` on are
//! **events** that annotate a packet (a connection-table hit, say) and do not add up to anything.

pub const PASS_NOT_IP: u32 = 0;
pub const PASS_MALFORMED: u32 = 1;
pub const PASS_NOT_VIP: u32 = 2;
pub const PASS_ICMP: u32 = 3;
pub const DROP_FRAGMENT: u32 = 4;
pub const DROP_NO_BACKEND: u32 = 5;
pub const DROP_NO_IFACE: u32 = 6;
pub const TX: u32 = 7;
pub const REDIRECT: u32 = 8;
/// L3: TTL or hop limit would expire: passed unchanged so the kernel answers with ICMP.
pub const PASS_TTL: u32 = 9;
/// L3: rewritten and handed to the kernel to forward: the next hop's MAC is not known yet, or
/// the route leaves by an interface xdplb is not attached to.
pub const PASS_NO_NEIGH: u32 = 10;
/// L3: the FIB has no usable route (unreachable, blackhole, prohibited): passed unchanged.
pub const PASS_NO_ROUTE: u32 = 11;
/// L3: VLAN-tagged frames are not NATed (the tag would have to follow the egress).
pub const PASS_L3_VLAN: u32 = 12;
/// L3: the packet is larger than the egress MTU (no ICMP "too big" is generated yet).
pub const DROP_TOO_BIG: u32 = 13;
pub const VERDICT_COUNT: u32 = 14;

pub const EVENT_BASE: u32 = 16;
pub const EV_CT_HIT: u32 = EVENT_BASE;
pub const EV_CT_MISS: u32 = EVENT_BASE + 1;
/// A connection-table entry pointed at a backend that is gone; the flow was re-balanced.
pub const EV_CT_STALE: u32 = EVENT_BASE + 2;
/// An ICMP error about a VIP flow was sent to that flow's backend.
pub const EV_ICMP_STEERED: u32 = EVENT_BASE + 3;
/// The packet carried one or two VLAN tags.
pub const EV_VLAN: u32 = EVENT_BASE + 4;
/// An L3 reply was rewritten back to its VIP.
pub const EV_NAT_REVERSE: u32 = EVENT_BASE + 5;
/// A new flow balanced by the ring without a connection-table entry: over the per-CPU limit of
/// new flows recorded per second (a flood of new flows).
pub const EV_CT_UNRECORDED: u32 = EVENT_BASE + 6;
pub const EVENT_COUNT: u32 = 7;

/// Size of the stats array.
pub const STATS_LEN: u32 = EVENT_BASE + EVENT_COUNT;

/// Name of each slot as shown by the CLI and in metrics (`None` for unused slots).
pub fn name(index: u32) -> Option<&'static str> {
    Some(match index {
        PASS_NOT_IP => "pass_not_ip",
        PASS_MALFORMED => "pass_malformed",
        PASS_NOT_VIP => "pass_not_vip",
        PASS_ICMP => "pass_icmp",
        DROP_FRAGMENT => "drop_fragment",
        DROP_NO_BACKEND => "drop_no_backend",
        DROP_NO_IFACE => "drop_no_iface",
        TX => "tx",
        REDIRECT => "redirect",
        PASS_TTL => "pass_ttl_expired",
        PASS_NO_NEIGH => "pass_kernel_forwards",
        PASS_NO_ROUTE => "pass_no_route",
        PASS_L3_VLAN => "pass_l3_vlan",
        DROP_TOO_BIG => "drop_too_big",
        EV_CT_HIT => "conntrack_hit",
        EV_CT_MISS => "conntrack_miss",
        EV_CT_STALE => "conntrack_stale",
        EV_ICMP_STEERED => "icmp_error_steered",
        EV_VLAN => "vlan_tagged",
        EV_NAT_REVERSE => "nat_reverse",
        EV_CT_UNRECORDED => "conntrack_unrecorded",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_verdict_and_event_has_a_unique_name() {
        let mut names = [""; STATS_LEN as usize];
        let mut n = 0;
        for i in 0..STATS_LEN {
            if let Some(s) = name(i) {
                assert!(!names[..n].contains(&s), "duplicate name {s}");
                names[n] = s;
                n += 1;
            }
        }
        assert_eq!(n as u32, VERDICT_COUNT + EVENT_COUNT);
        for i in 0..VERDICT_COUNT {
            assert!(name(i).is_some(), "verdict {i} has no name");
        }
    }
}
