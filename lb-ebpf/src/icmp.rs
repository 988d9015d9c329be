//! ICMP errors of L3 flows, translated as a NAT must (RFC 5508), so path MTU discovery and
//! "port unreachable" work through the VIP:
//!
//! * an error about a backend's reply, sent to the VIP (a router's "fragmentation needed"),
//!   goes to the flow's backend: outer destination and quoted source become the backend's;
//! * an error about a client's packet (a backend's "port unreachable") goes to the client as
//!   about the VIP: quoted destination, and the outer source when the backend sent it, become
//!   the VIP's.
//!
//! Every checksum follows: outer IPv4 header, ICMP (with ICMPv6's pseudo-header), the quoted
//! IP header, and the quoted transport checksum when the quote holds it. Only errors of one
//! layout are translated (no IPv4 options outside or inside, no IPv6 extension headers), so
//! every offset is a constant; others are dropped (counted) rather than leak the backend.

use aya_ebpf::programs::XdpContext;
use lb_common::csum;
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    nat::{decrement_ttl, l4_check},
    parse::{ptr_at, words, write_words},
    proto::{ICMP_HDR_LEN as ICMP_HDR, IPPROTO_TCP, IPPROTO_UDP},
};

const ETH: usize = 14;
/// IPv4: outer IP header, ICMP header, quoted IP header, quoted transport header.
const V4_ICMP: usize = ETH + Ipv4Hdr::LEN;
const V4_INNER: usize = V4_ICMP + ICMP_HDR;
const V4_INNER_L4: usize = V4_INNER + Ipv4Hdr::LEN;
/// IPv6, the same.
const V6_ICMP: usize = ETH + Ipv6Hdr::LEN;
const V6_INNER: usize = V6_ICMP + ICMP_HDR;
const V6_INNER_L4: usize = V6_INNER + Ipv6Hdr::LEN;

/// What an ICMP error of an L3 flow becomes.
pub struct Translation {
    /// About a reply, for the backend (else about a client's packet, for the client).
    pub to_backend: bool,
    /// The new address: the backend's (to the backend) or the VIP's (to the client).
    pub addr: [u32; 4],
    /// The quoted packet's new port on that side (network order); 0 keeps it.
    pub port: u16,
    /// The outer address changes too (to the client: only when the backend sent the error).
    pub outer: bool,
}

/// Rewrites the error in place; `hop` decrements the outer TTL (the packet is forwarded here).
/// `proto` is the quoted packet's transport protocol. All bounds are checked before the first
/// write.
#[inline(always)]
pub fn translate(
    ctx: &XdpContext,
    v4: bool,
    proto: u8,
    t: &Translation,
    hop: bool,
) -> Result<(), u32> {
    let (icmp_at, inner_l4) = if v4 {
        (V4_ICMP, V4_INNER_L4)
    } else {
        (V6_ICMP, V6_INNER_L4)
    };
    let icmp = ptr_at::<[u8; ICMP_HDR]>(ctx, icmp_at)? as *mut [u8; ICMP_HDR];
    let ports = ptr_at::<[u8; 4]>(ctx, inner_l4)? as *mut [u8; 4];
    // The quoted transport checksum, when the quote is long enough to hold it.
    let l4_check_at = if proto == IPPROTO_TCP { 16 } else { 6 };
    let quoted_check = ptr_at::<[u8; 2]>(ctx, inner_l4 + l4_check_at)
        .ok()
        .map(|p| p as *mut [u8; 2]);
    // SAFETY: every pointer was bounds-checked above or is checked inside; writable packet.
    unsafe {
        let mut ic = u16::from_ne_bytes([(*icmp)[2], (*icmp)[3]]);
        let (old, new) = if v4 {
            v4_headers(ctx, t, hop, &mut ic)?
        } else {
            v6_headers(ctx, t, hop, &mut ic)?
        };
        // The quoted port on the translated side, and the quoted transport checksum.
        let at = if t.to_backend { 0 } else { 2 };
        let old_port = u16::from_ne_bytes([(*ports)[at], (*ports)[at + 1]]);
        let port = if t.port != 0 { t.port } else { old_port };
        ic = csum::replace16(ic, old_port, port);
        let p = port.to_ne_bytes();
        (*ports)[at] = p[0];
        (*ports)[at + 1] = p[1];
        if let Some(c) = quoted_check {
            let before = u16::from_ne_bytes(*c);
            let after = l4_check(
                before,
                &old,
                &new,
                old_port,
                port,
                !v4,
                proto == IPPROTO_UDP,
            );
            ic = csum::replace16(ic, before, after);
            *c = after.to_ne_bytes();
        }
        let c = ic.to_ne_bytes();
        (*icmp)[2] = c[0];
        (*icmp)[3] = c[1];
    }
    Ok(())
}

/// IPv4: the outer address (and TTL) with the outer checksum, the quoted address with the
/// quoted header's checksum, both reflected in the ICMP checksum `ic` (which covers the quote).
/// Returns the quoted address's old and new words.
///
/// # Safety
/// Packet memory is writable; the headers are bounds-checked here.
#[inline(always)]
unsafe fn v4_headers(
    ctx: &XdpContext,
    t: &Translation,
    hop: bool,
    ic: &mut u16,
) -> Result<([u32; 4], [u32; 4]), u32> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH)? as *mut Ipv4Hdr;
    let inner = ptr_at::<Ipv4Hdr>(ctx, V4_INNER)? as *mut Ipv4Hdr;
    let new = t.addr[0];
    let mut check = u16::from_ne_bytes((*ip).check);
    if t.outer {
        let field = if t.to_backend {
            &raw mut (*ip).dst_addr
        } else {
            &raw mut (*ip).src_addr
        };
        check = csum::replace32(check, u32::from_ne_bytes(*field), new);
        *field = new.to_ne_bytes();
    }
    if hop {
        check = decrement_ttl(ip, check);
    }
    (*ip).check = check.to_ne_bytes();
    let field = if t.to_backend {
        &raw mut (*inner).src_addr
    } else {
        &raw mut (*inner).dst_addr
    };
    let old = u32::from_ne_bytes(*field);
    let inner_before = u16::from_ne_bytes((*inner).check);
    let inner_after = csum::replace32(inner_before, old, new);
    *ic = csum::replace32(*ic, old, new);
    *ic = csum::replace16(*ic, inner_before, inner_after);
    (*inner).check = inner_after.to_ne_bytes();
    *field = new.to_ne_bytes();
    Ok(([old, 0, 0, 0], t.addr))
}

/// IPv6: as `v4_headers`; no header checksums, but ICMPv6's covers the outer addresses.
///
/// # Safety
/// Packet memory is writable; the headers are bounds-checked here.
#[inline(always)]
unsafe fn v6_headers(
    ctx: &XdpContext,
    t: &Translation,
    hop: bool,
    ic: &mut u16,
) -> Result<([u32; 4], [u32; 4]), u32> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, ETH)? as *mut Ipv6Hdr;
    let inner = ptr_at::<Ipv6Hdr>(ctx, V6_INNER)? as *mut Ipv6Hdr;
    if t.outer {
        let field = if t.to_backend {
            &raw mut (*ip).dst_addr
        } else {
            &raw mut (*ip).src_addr
        };
        let old = words::<4, 16>(field);
        *ic = csum::replace128(*ic, &old, &t.addr);
        write_words(field, &t.addr);
    }
    if hop {
        (*ip).hop_limit -= 1;
    }
    let field = if t.to_backend {
        &raw mut (*inner).src_addr
    } else {
        &raw mut (*inner).dst_addr
    };
    let old = words::<4, 16>(field);
    *ic = csum::replace128(*ic, &old, &t.addr);
    write_words(field, &t.addr);
    Ok((old, t.addr))
}
