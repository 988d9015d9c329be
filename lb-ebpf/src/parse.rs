//! Header parsing. Every read goes through `ptr_at`, which bounds-checks against `data_end`;
//! anything that does not parse is reported as a reason and passed to the kernel untouched.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{
    addr::{FAMILY_V4, FAMILY_V6},
    stats, FlowKey,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    vlan::VlanHdr,
};

use crate::proto::{
    ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, ICMP_HDR_LEN, IPPROTO_AH, IPPROTO_DSTOPTS,
    IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_ROUTING, IPPROTO_TCP,
    IPPROTO_UDP,
};

/// IPv6 extension headers skipped before giving up (counted as malformed).
const MAX_IPV6_EXT: usize = 6;
const TCP_HDR_LEN: usize = 20;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const UDP_HDR_LEN: usize = 8;
/// IPv4 "more fragments" flag and fragment offset mask, in network order.
const IPV4_MF_OFFSET: u16 = 0x3fffu16.to_be();

/// A destination address, for lookups of packets that carry no usable ports.
pub struct Dest {
    pub addr: [u32; 4],
    pub family: u8,
}

/// Where the IP and transport headers start (L3 mode rewrites them).
#[derive(Clone, Copy)]
pub struct Offsets {
    pub l3: usize,
    pub l4: usize,
}

/// What the packet is, as far as balancing cares.
pub enum Class {
    /// TCP or UDP (or another protocol, with ports 0): the flow as the sender sent it.
    Flow(FlowKey, Offsets, FlowFlags),
    /// An ICMP error quoting a TCP or UDP packet; `flow` is the quoted flow turned around (the
    /// direction the error travels: client -> VIP for an error about a VIP's reply, backend ->
    /// client for one about a client's packet), `outer` the error's own addresses.
    IcmpError {
        flow: FlowKey,
        outer: FlowKey,
        /// The error has the one layout L3 translation rewrites (constant offsets, see
        /// `icmp`): no IPv4 options outside or inside, no IPv6 extension headers.
        plain: bool,
    },
    /// An ICMP error, not parsed further (the ICMP program does).
    IcmpErrorLater,
    /// An ICMP or ICMPv6 echo request, and where its headers start.
    Echo(Dest, Offsets),
    /// Any other ICMP message (echo, errors about other traffic).
    Icmp(Dest),
    /// An IPv4 or IPv6 fragment.
    Fragment(Dest),
}

#[derive(Clone, Copy)]
pub struct FlowFlags {
    /// A TCP SYN without ACK: the packet opens a connection.
    pub syn: bool,
    /// IPv6 with a Routing header or AH: its addresses must not be rewritten (the upper-layer
    /// checksum covers the final destination; AH authenticates the addresses).
    pub no_nat: bool,
}

pub struct Parsed {
    pub class: Class,
    pub vlan: bool,
}

/// The one bounds-checked accessor for packet memory.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, u32> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(stats::PASS_MALFORMED);
    }
    Ok((start + offset) as *const T)
}

/// Reads a `T` at `offset` (packet data has no alignment guarantee).
///
/// Never use it for a single byte: LLVM turns `p + 1 > end` into `p >= end`, from which the
/// verifier learns no range. Read the surrounding header instead.
#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Result<T, u32> {
    let p = ptr_at::<T>(ctx, offset)?;
    // SAFETY: `ptr_at` checked that the bytes lie inside the packet.
    Ok(unsafe { core::ptr::read_unaligned(p) })
}

/// Address words of a header field, read through the header's checked pointer (a fresh
/// `ptr_at` at a computed offset can lose the verifier's range on the way).
///
/// Read as 16-bit halves: address fields sit 2 bytes off a 4-byte boundary behind Ethernet
/// (and VLAN tags), and an unaligned 32-bit read compiles to four byte loads, whose spills
/// alone took a third of the 512-byte stack. The halves are aligned (frames start aligned).
#[inline(always)]
pub fn words<const N: usize, const B: usize>(field: *const [u8; B]) -> [u32; N] {
    const { assert!(N * 4 == B) };
    let half = field as *const u16;
    let mut w = [0u32; N];
    let mut i = 0;
    while i < N {
        // SAFETY: the caller passes a field of a header checked by ptr_at; 2-byte aligned.
        // Little-endian target: the low half holds the field's first two bytes.
        w[i] = unsafe { *half.add(2 * i) as u32 | (*half.add(2 * i + 1) as u32) << 16 };
        i += 1;
    }
    w
}

/// Writes address words into a header field as `words` reads them: in 16-bit halves.
///
/// # Safety
/// `field` is a bounds-checked, writable, 2-byte aligned header field of `N * 4` bytes.
#[inline(always)]
pub unsafe fn write_words<const N: usize>(field: *mut [u8; 16], w: &[u32; N]) {
    const { assert!(N == 4) };
    let half = field as *mut u16;
    let mut i = 0;
    while i < N {
        *half.add(2 * i) = w[i] as u16;
        *half.add(2 * i + 1) = (w[i] >> 16) as u16;
        i += 1;
    }
}

#[cfg(not(target_endian = "little"))]
compile_error!("parse::words assumes a little-endian target (bpfel)");

#[inline(always)]
fn v4_addr(field: *const [u8; 4]) -> [u32; 4] {
    [words::<1, 4>(field)[0], 0, 0, 0]
}

/// Parses Ethernet (up to two VLAN tags), IPv4 or IPv6, and the L4 header. The quoted packet
/// of an ICMP error is parsed only with `ICMP` (the ICMP program); without, such an error is
/// `Class::IcmpErrorLater`.
#[inline(always)]
pub fn classify<const ICMP: bool>(ctx: &XdpContext) -> Result<Parsed, u32> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    // SAFETY: bounds-checked by ptr_at.
    let mut proto = unsafe { (*eth).ether_type };
    let mut off = EthHdr::LEN;
    let mut vlan = false;
    for _ in 0..2 {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        let tag = ptr_at::<VlanHdr>(ctx, off)?;
        // SAFETY: bounds-checked by ptr_at.
        proto = unsafe { (*tag).ether_type };
        off += VlanHdr::LEN;
        vlan = true;
    }
    let class = if proto == ETH_P_IP {
        ipv4::<ICMP>(ctx, off)?
    } else if proto == ETH_P_IPV6 {
        ipv6::<ICMP>(ctx, off)?
    } else {
        return Err(stats::PASS_NOT_IP);
    };
    Ok(Parsed { class, vlan })
}

#[inline(always)]
fn ipv4<const ICMP: bool>(ctx: &XdpContext, off: usize) -> Result<Class, u32> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, off)?;
    // SAFETY: bounds-checked by ptr_at.
    let (vihl, frags, proto) = unsafe { ((*ip).vihl, (*ip).frags, (*ip).proto) };
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return Err(stats::PASS_MALFORMED);
    }
    let mut key = FlowKey {
        family: FAMILY_V4,
        proto,
        ..FlowKey::default()
    };
    // SAFETY (both): fields of the header checked above.
    key.src = v4_addr(unsafe { &raw const (*ip).src_addr });
    key.dst = v4_addr(unsafe { &raw const (*ip).dst_addr });
    if u16::from_ne_bytes(frags) & IPV4_MF_OFFSET != 0 {
        return Ok(Class::Fragment(dest(&key)));
    }
    l4::<ICMP>(
        ctx,
        Offsets {
            l3: off,
            l4: off + ihl,
        },
        key,
        IPPROTO_ICMP,
        false,
    )
}

#[inline(always)]
fn ipv6<const ICMP: bool>(ctx: &XdpContext, off: usize) -> Result<Class, u32> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, off)?;
    // SAFETY: bounds-checked by ptr_at.
    let vcf0 = unsafe { (*ip).vcf[0] };
    if vcf0 >> 4 != 6 {
        return Err(stats::PASS_MALFORMED);
    }
    let mut key = FlowKey {
        family: FAMILY_V6,
        // SAFETY (both): fields of the header checked above.
        src: words::<4, 16>(unsafe { &raw const (*ip).src_addr }),
        dst: words::<4, 16>(unsafe { &raw const (*ip).dst_addr }),
        ..FlowKey::default()
    };
    let (next, l4_off, no_nat) = skip_ipv6_extensions(ctx, off)?;
    if next == IPPROTO_FRAGMENT {
        return Ok(Class::Fragment(dest(&key)));
    }
    key.proto = next;
    l4::<ICMP>(
        ctx,
        Offsets {
            l3: off,
            l4: l4_off,
        },
        key,
        IPPROTO_ICMPV6,
        no_nat,
    )
}

/// Walks the extension-header chain; returns the upper-layer protocol (or the fragment header),
/// its offset, and whether a Routing header or AH was on the way.
#[inline(always)]
fn skip_ipv6_extensions(ctx: &XdpContext, ip_off: usize) -> Result<(u8, usize, bool), u32> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, ip_off)?;
    // SAFETY: bounds-checked by ptr_at.
    let mut next = unsafe { (*ip).next_hdr };
    let mut off = ip_off + Ipv6Hdr::LEN;
    let mut no_nat = false;
    for _ in 0..MAX_IPV6_EXT {
        let len_unit = match next {
            IPPROTO_HOPOPTS | IPPROTO_DSTOPTS => 8,
            IPPROTO_ROUTING => {
                no_nat = true;
                8
            }
            IPPROTO_AH => {
                no_nat = true;
                4
            }
            _ => return Ok((next, off, no_nat)),
        };
        // Every extension header starts with (next header, length).
        let [following, len] = read::<[u8; 2]>(ctx, off)?;
        off += if len_unit == 8 {
            (len as usize + 1) * 8
        } else {
            // AH counts its length in 4-byte units, minus 2.
            (len as usize + 2) * 4
        };
        next = following;
    }
    match next {
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH => {
            Err(stats::PASS_MALFORMED)
        }
        _ => Ok((next, off, no_nat)),
    }
}

/// Reads the ports of TCP and UDP, or classifies ICMP. Other protocols are flows with port 0
/// (no VIP matches them unless one is declared for that protocol).
#[inline(always)]
fn l4<const ICMP: bool>(
    ctx: &XdpContext,
    offs: Offsets,
    mut key: FlowKey,
    icmp: u8,
    no_nat: bool,
) -> Result<Class, u32> {
    let off = offs.l4;
    let syn = match key.proto {
        IPPROTO_TCP => {
            // Require the whole fixed header, and a sane data offset.
            let tcp = ptr_at::<[u8; TCP_HDR_LEN]>(ctx, off)?;
            // SAFETY: bounds-checked by ptr_at.
            let (doff, flags) = unsafe { ((*tcp)[12] >> 4, (*tcp)[13]) };
            if (doff as usize) * 4 < TCP_HDR_LEN {
                return Err(stats::PASS_MALFORMED);
            }
            flags & (TCP_SYN | TCP_ACK) == TCP_SYN
        }
        IPPROTO_UDP => false,
        p if p == icmp => return icmp_message::<ICMP>(ctx, offs, &key),
        _ => return Ok(Class::Flow(key, offs, FlowFlags { syn: false, no_nat })),
    };
    // TCP and UDP both start with the two ports; UDP's whole header is 8 bytes.
    let udp = ptr_at::<[u16; UDP_HDR_LEN / 2]>(ctx, off)?;
    // SAFETY: bounds-checked by ptr_at.
    let h = unsafe { core::ptr::read_unaligned(udp) };
    key.sport = h[0];
    key.dport = h[1];
    Ok(Class::Flow(key, offs, FlowFlags { syn, no_nat }))
}

#[inline(always)]
fn dest(key: &FlowKey) -> Dest {
    Dest {
        addr: key.dst,
        family: key.family,
    }
}

/// ICMP errors carry the offending packet's IP header and at least its first 8 bytes: return
/// that packet's flow turned around (the direction the error travels).
#[inline(always)]
fn icmp_message<const ICMP: bool>(
    ctx: &XdpContext,
    offs: Offsets,
    outer: &FlowKey,
) -> Result<Class, u32> {
    let off = offs.l4;
    let icmp = ptr_at::<[u8; ICMP_HDR_LEN]>(ctx, off)?;
    // SAFETY: bounds-checked by ptr_at.
    let icmp_type = unsafe { (*icmp)[0] };
    let v4 = outer.family == FAMILY_V4;
    let is_error = if v4 {
        // Destination unreachable (incl. fragmentation needed), time exceeded, parameter
        // problem.
        icmp_type == 3 || icmp_type == 11 || icmp_type == 12
    } else {
        // Destination unreachable, packet too big, time exceeded, parameter problem.
        (1..=4).contains(&icmp_type)
    };
    if !is_error {
        let echo_request = if v4 { 8 } else { 128 };
        if icmp_type == echo_request {
            return Ok(Class::Echo(dest(outer), offs));
        }
        return Ok(Class::Icmp(dest(outer)));
    }
    if !ICMP {
        return Ok(Class::IcmpErrorLater);
    }
    let inner = off + ICMP_HDR_LEN;
    let mut flow = FlowKey {
        family: outer.family,
        ..FlowKey::default()
    };
    let (inner_l4, plain_inner) = if v4 {
        let ip = ptr_at::<Ipv4Hdr>(ctx, inner)?;
        // SAFETY: bounds-checked by ptr_at.
        let (vihl, proto) = unsafe { ((*ip).vihl, (*ip).proto) };
        let ihl = ((vihl & 0x0f) as usize) * 4;
        if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
            return Ok(Class::Icmp(dest(outer)));
        }
        flow.proto = proto;
        // Turned around: the quoted packet went the other way.
        // SAFETY (both): fields of the header checked above.
        flow.dst = v4_addr(unsafe { &raw const (*ip).src_addr });
        flow.src = v4_addr(unsafe { &raw const (*ip).dst_addr });
        (inner + ihl, ihl == Ipv4Hdr::LEN)
    } else {
        let ip = ptr_at::<Ipv6Hdr>(ctx, inner)?;
        // SAFETY: bounds-checked by ptr_at.
        let (vcf0, proto) = unsafe { ((*ip).vcf[0], (*ip).next_hdr) };
        if vcf0 >> 4 != 6 {
            return Ok(Class::Icmp(dest(outer)));
        }
        flow.proto = proto;
        // SAFETY (both): fields of the header checked above.
        flow.dst = words::<4, 16>(unsafe { &raw const (*ip).src_addr });
        flow.src = words::<4, 16>(unsafe { &raw const (*ip).dst_addr });
        (inner + Ipv6Hdr::LEN, true)
    };
    if flow.proto != IPPROTO_TCP && flow.proto != IPPROTO_UDP {
        return Ok(Class::Icmp(dest(outer)));
    }
    // The quoted transport header: at least its first 8 bytes are there (RFC 792/4443).
    let ports = read::<[u16; 4]>(ctx, inner_l4)?;
    flow.dport = ports[0];
    flow.sport = ports[1];
    let plain_outer = offs.l3 == EthHdr::LEN
        && offs.l4 == EthHdr::LEN + if v4 { Ipv4Hdr::LEN } else { Ipv6Hdr::LEN };
    Ok(Class::IcmpError {
        flow,
        outer: *outer,
        plain: plain_outer && plain_inner,
    })
}
