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
/// L3: the FIB has no usable route (unreachable, blackhole, prohibited, forwarding off):
/// dropped (handed to the kernel, a VIP packet could loop back through the router).
pub const DROP_NO_ROUTE: u32 = 11;
/// L3: a VLAN-tagged frame for an L3 VIP, or a tagged reply: dropped (the tag would have to
/// follow the FIB's egress; passed, it could loop or leak the backend's address).
pub const DROP_L3_VLAN: u32 = 12;
/// L3: larger than the egress MTU and no ICMP error could be sent (over `ICMP_LIMIT`).
pub const DROP_TOO_BIG: u32 = 13;
/// L3: larger than the egress MTU: answered with ICMP "fragmentation needed" / "packet too
/// big" (from the VIP to a client, from the LB to a backend), sent back out.
pub const TX_ICMP_TOO_BIG: u32 = 14;
/// L3: an IPv4 packet without DF larger than the egress MTU: rewritten and handed to the
/// kernel, which fragments and forwards it.
pub const PASS_KERNEL_FRAGMENTS: u32 = 15;
/// L3: an IPv6 packet with a Routing header or AH: dropped (rewriting the address would break
/// the upper-layer checksum or the authentication).
pub const DROP_L3_IPV6_EXT: u32 = 16;
/// L3: an ICMP error that belongs to an L3 flow but cannot be translated (IPv4 options outside
/// or in the quote, IPv6 extension headers outside): dropped rather than leak the backend's
/// address.
pub const DROP_ICMP_UNTRANSLATABLE: u32 = 17;
/// An ICMP echo request ("ping") to a VIP address, answered from the VIP (passed to a kernel
/// that does not own the VIP, it would be routed back towards the router that sent it).
pub const TX_ICMP_ECHO: u32 = 18;
/// L3: a new flow of an all-ports VIP over the per-CPU record limit (a flood): dropped. Its
/// replies can only be matched by its connection-table entry, and recording it would let the
/// flood evict established flows.
pub const DROP_ALL_PORTS_FLOOD: u32 = 19;
/// A VIP packet (or an L3 reply) in a frame not sent to this host: to a group address, or to
/// a unicast MAC other than the receiving interface's (promiscuous mode, a bridge flooding
/// frames). Another host's to answer: passed unchanged, never steered or recorded.
pub const PASS_NOT_FOR_US: u32 = 20;
pub const VERDICT_COUNT: u32 = 21;

pub const EVENT_BASE: u32 = 24;
pub const EV_CT_HIT: u32 = EVENT_BASE;
pub const EV_CT_MISS: u32 = EVENT_BASE + 1;
/// A connection-table entry pointed at a backend that is gone; the flow was re-balanced.
pub const EV_CT_STALE: u32 = EVENT_BASE + 2;
/// An ICMP error about an L2 VIP flow was sent to that flow's backend.
pub const EV_ICMP_STEERED: u32 = EVENT_BASE + 3;
/// The packet carried one or two VLAN tags.
pub const EV_VLAN: u32 = EVENT_BASE + 4;
/// An L3 reply was rewritten back to its VIP.
pub const EV_NAT_REVERSE: u32 = EVENT_BASE + 5;
/// A new flow balanced by the ring without a connection-table entry: over the per-CPU limit of
/// new flows recorded per second (a flood of new flows).
pub const EV_CT_UNRECORDED: u32 = EVENT_BASE + 6;
/// An L3 reply whose flow has no connection-table entry (evicted, or placed during a flood)
/// and whose ring slot names its backend: translated, as the flow's next packet would go there.
pub const EV_REPLY_BY_RING: u32 = EVENT_BASE + 7;
/// A packet from an L3 backend endpoint that belongs to no flow of its VIP (the flow is on
/// another backend, or the backend talks to someone directly): passed unchanged.
pub const EV_REPLY_UNCONFIRMED: u32 = EVENT_BASE + 8;
/// An ICMP error about an L3 flow's reply (sent to the VIP by a router, say "fragmentation
/// needed") was translated and sent to the flow's backend.
pub const EV_ICMP_TO_BACKEND: u32 = EVENT_BASE + 9;
/// An ICMP error about an L3 flow's packet (from its backend, or a router on the backend's
/// side) was translated and sent to the client as about the VIP.
pub const EV_ICMP_TO_CLIENT: u32 = EVENT_BASE + 10;
/// An ICMP error quoting a VIP flow but not addressed to the quoted packet's sender (forged,
/// or misrouted): passed unchanged, never steered.
pub const EV_ICMP_FOREIGN: u32 = EVENT_BASE + 11;
/// An L2 frame's VLAN tags (one or two) were removed: it was redirected to a backend behind
/// another interface (`via`), where the ingress VLAN means nothing. Sent back out of the
/// receiving interface, a frame keeps its tags.
pub const EV_VLAN_POPPED: u32 = EVENT_BASE + 12;
pub const EVENT_COUNT: u32 = 13;

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
        DROP_NO_ROUTE => "drop_no_route",
        DROP_L3_VLAN => "drop_l3_vlan",
        DROP_TOO_BIG => "drop_too_big",
        TX_ICMP_TOO_BIG => "tx_icmp_too_big",
        PASS_KERNEL_FRAGMENTS => "pass_kernel_fragments",
        DROP_L3_IPV6_EXT => "drop_l3_ipv6_ext",
        DROP_ICMP_UNTRANSLATABLE => "drop_icmp_untranslatable",
        TX_ICMP_ECHO => "tx_icmp_echo",
        DROP_ALL_PORTS_FLOOD => "drop_all_ports_flood",
        PASS_NOT_FOR_US => "pass_not_for_us",
        EV_CT_HIT => "conntrack_hit",
        EV_CT_MISS => "conntrack_miss",
        EV_CT_STALE => "conntrack_stale",
        EV_ICMP_STEERED => "icmp_error_steered",
        EV_VLAN => "vlan_tagged",
        EV_NAT_REVERSE => "nat_reverse",
        EV_CT_UNRECORDED => "conntrack_unrecorded",
        EV_REPLY_BY_RING => "reply_by_ring",
        EV_REPLY_UNCONFIRMED => "reply_unconfirmed",
        EV_ICMP_TO_BACKEND => "icmp_error_to_backend",
        EV_ICMP_TO_CLIENT => "icmp_error_to_client",
        EV_ICMP_FOREIGN => "icmp_error_foreign",
        EV_VLAN_POPPED => "vlan_popped",
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
