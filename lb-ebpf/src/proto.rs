//! Protocol numbers and sizes the modules share (kernel constants, written once).

/// IP protocol numbers.
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_DSTOPTS: u8 = 60;

/// Address families of `bpf_fib_lookup`.
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// EtherTypes, in network byte order as read from the frame.
pub const ETH_P_IP: u16 = 0x0800u16.to_be();
pub const ETH_P_IPV6: u16 = 0x86ddu16.to_be();
/// VLAN tag protocol identifiers: 802.1Q, and 802.1ad (the outer tag of QinQ).
pub const ETH_P_8021Q: u16 = 0x8100u16.to_be();
pub const ETH_P_8021AD: u16 = 0x88a8u16.to_be();

/// The ICMP / ICMPv6 header before an error's quote or an echo's data.
pub const ICMP_HDR_LEN: usize = 8;

/// TTL / hop limit of the packets the data path writes itself (answers to pings, "too big").
pub const TTL: u8 = 64;
