//! Path MTU for L3 flows: a packet larger than its egress's MTU is answered, as a router
//! would, with ICMP "fragmentation needed" (IPv4) or "packet too big" (IPv6) quoting its
//! start. The packet itself is turned into the answer and sent back out where it came in
//! (XDP_TX), so no copy and no second buffer.
//!
//! The answer comes from the VIP when a client's packet was too big (the client's address
//! must never see a backend's), and from the LB's own address towards the backend when a
//! reply was (the kernel's source address for that route).

use core::mem::size_of;

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SKIP_NEIGH, BPF_FIB_LOOKUP_SRC,
    },
    helpers::generated::{
        bpf_csum_diff, bpf_fib_lookup as fib_lookup, bpf_xdp_adjust_head, bpf_xdp_adjust_tail,
    },
    programs::XdpContext,
    EbpfContext,
};
use lb_common::csum;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    parse::ptr_at,
    proto::{AF_INET, AF_INET6, ICMP_HDR_LEN as ICMP_HDR, IPPROTO_ICMP, IPPROTO_ICMPV6, TTL},
};

const ETH: usize = EthHdr::LEN;
/// Bytes of the offending packet quoted, from its IP header on: enough for any IPv4 header
/// with options and the transport ports (RFC 792 asks for the header and 8 bytes), and within
/// `bpf_csum_diff`'s 512 bytes with the ICMP header.
const QUOTE: usize = 256;
/// The LB's address towards `dst` (what the kernel would send from), by the FIB, into `src`.
/// A BPF subprogram (rare; its lookup request would grow the main program's stack).
#[inline(never)]
pub fn source_towards(ctx: &XdpContext, v4: bool, dst: &[u32; 4], src: &mut [u32; 4]) -> bool {
    // SAFETY: an all-zero bpf_fib_lookup is a valid request skeleton.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.ifindex = ctx.ingress_ifindex() as u32;
    if v4 {
        p.family = AF_INET;
        p.__bindgen_anon_4.ipv4_dst = dst[0];
    } else {
        p.family = AF_INET6;
        p.__bindgen_anon_4.ipv6_dst = *dst;
    }
    let flags = BPF_FIB_LOOKUP_SRC | BPF_FIB_LOOKUP_SKIP_NEIGH;
    // SAFETY: `p` is a valid, initialised request of the size given.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut p,
            size_of::<bpf_fib_lookup>() as i32,
            flags,
        )
    };
    if rc as u32 != BPF_FIB_LKUP_RET_SUCCESS {
        return false;
    }
    // SAFETY: the lookup filled the source of the family asked for.
    *src = unsafe {
        if v4 {
            [p.__bindgen_anon_3.ipv4_src, 0, 0, 0]
        } else {
            p.__bindgen_anon_3.ipv6_src
        }
    };
    true
}

/// Turns the packet (IP header at offset `ETH`, no VLAN tag) into the ICMP error from `src`
/// to `dst` reporting `mtu`; whether it could. On failure the packet may be shortened but is
/// never sent. A BPF subprogram, for the stack as `source_towards`.
#[inline(never)]
pub fn answer(ctx: &XdpContext, v4: bool, src: &[u32; 4], dst: &[u32; 4], mtu: u16) -> bool {
    build(ctx, v4, src, dst, mtu).is_ok()
}

#[inline(always)]
fn build(ctx: &XdpContext, v4: bool, src: &[u32; 4], dst: &[u32; 4], mtu: u16) -> Result<(), ()> {
    let ip_len = if v4 { Ipv4Hdr::LEN } else { Ipv6Hdr::LEN };
    let head = (ip_len + ICMP_HDR) as i32;
    let len = ctx.data_end() - ctx.data();
    if len < ETH + QUOTE {
        return Err(());
    }
    let eth = ptr_at::<EthHdr>(ctx, 0).map_err(|_| ())?;
    // SAFETY: bounds-checked by ptr_at.
    let (peer, own, ether_type) = unsafe { ((*eth).src_addr, (*eth).dst_addr, (*eth).ether_type) };
    // Keep Ethernet and the quote, then make room for the new IP and ICMP headers in front.
    // SAFETY: the helpers take the program's own context.
    unsafe {
        if bpf_xdp_adjust_tail(ctx.as_ptr() as *mut _, (ETH + QUOTE) as i32 - len as i32) != 0
            || bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, -head) != 0
        {
            return Err(());
        }
    }
    let eth = ptr_at::<EthHdr>(ctx, 0).map_err(|_| ())? as *mut EthHdr;
    // SAFETY: bounds-checked by ptr_at; packet memory is writable.
    unsafe {
        (*eth).dst_addr = peer;
        (*eth).src_addr = own;
        (*eth).ether_type = ether_type;
    }
    if v4 {
        v4_error(ctx, src[0], dst[0], mtu)
    } else {
        v6_error(ctx, src, dst, mtu)
    }
}

/// IPv4 header and ICMP "fragmentation needed" (type 3, code 4) with the next-hop MTU.
#[inline(always)]
fn v4_error(ctx: &XdpContext, src: u32, dst: u32, mtu: u16) -> Result<(), ()> {
    const MSG: usize = ICMP_HDR + QUOTE;
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH).map_err(|_| ())? as *mut Ipv4Hdr;
    let icmp = ptr_at::<[u8; MSG]>(ctx, ETH + Ipv4Hdr::LEN).map_err(|_| ())? as *mut [u8; MSG];
    // SAFETY: bounds-checked by ptr_at; packet memory is writable.
    unsafe {
        let mut h = [0u8; Ipv4Hdr::LEN];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&((Ipv4Hdr::LEN + MSG) as u16).to_be_bytes());
        h[8] = TTL;
        h[9] = IPPROTO_ICMP;
        h[12..16].copy_from_slice(&src.to_ne_bytes());
        h[16..20].copy_from_slice(&dst.to_ne_bytes());
        let check = !csum::fold(sum(h.as_ptr(), Ipv4Hdr::LEN, 0)?);
        h[10..12].copy_from_slice(&check.to_ne_bytes());
        core::ptr::write_unaligned(ip as *mut [u8; Ipv4Hdr::LEN], h);
        let m = mtu.to_be_bytes();
        write_icmp(icmp, [3, 4, 0, 0, 0, 0, m[0], m[1]], 0)?;
    }
    Ok(())
}

/// IPv6 header and ICMPv6 "packet too big" (type 2) with the MTU; its checksum covers the
/// pseudo-header.
#[inline(always)]
fn v6_error(ctx: &XdpContext, src: &[u32; 4], dst: &[u32; 4], mtu: u16) -> Result<(), ()> {
    const MSG: usize = ICMP_HDR + QUOTE;
    let ip = ptr_at::<Ipv6Hdr>(ctx, ETH).map_err(|_| ())? as *mut Ipv6Hdr;
    let icmp = ptr_at::<[u8; MSG]>(ctx, ETH + Ipv6Hdr::LEN).map_err(|_| ())? as *mut [u8; MSG];
    // SAFETY: bounds-checked by ptr_at; packet memory is writable.
    unsafe {
        (*ip).vcf = [0x60, 0, 0, 0];
        (*ip).payload_len = (MSG as u16).to_be_bytes();
        (*ip).next_hdr = IPPROTO_ICMPV6;
        (*ip).hop_limit = TTL;
        core::ptr::write_unaligned(&raw mut (*ip).src_addr as *mut [u32; 4], *src);
        core::ptr::write_unaligned(&raw mut (*ip).dst_addr as *mut [u32; 4], *dst);
        // Pseudo-header: addresses, upper-layer length, next header (words as in memory).
        // Written out: an iterator chain here read past the array in the verifier's view.
        let mut pseudo = 0u32;
        let mut i = 0;
        while i < 4 {
            pseudo = csum::add32(pseudo, src[i]);
            pseudo = csum::add32(pseudo, dst[i]);
            i += 1;
        }
        pseudo = csum::add32(pseudo, (MSG as u32).to_be());
        pseudo = csum::add32(pseudo, (IPPROTO_ICMPV6 as u32).to_be());
        let m = mtu.to_be_bytes();
        write_icmp(icmp, [2, 0, 0, 0, 0, 0, m[0], m[1]], pseudo)?;
    }
    Ok(())
}

/// Writes the ICMP header `hdr` (checksum zero) at `icmp`, then its checksum over the message
/// (header and quote) with `seed` (ICMPv6's pseudo-header).
///
/// # Safety
/// `icmp` points to a bounds-checked, writable message of `N` bytes.
#[inline(always)]
unsafe fn write_icmp<const N: usize>(
    icmp: *mut [u8; N],
    hdr: [u8; ICMP_HDR],
    seed: u32,
) -> Result<(), ()> {
    let p = icmp as *mut u8;
    core::ptr::write_unaligned(p as *mut [u8; ICMP_HDR], hdr);
    let check = !csum::fold(sum(p, N, seed)?);
    core::ptr::write_unaligned(p.add(2) as *mut [u8; 2], check.to_ne_bytes());
    Ok(())
}

/// One's-complement sum of `len` bytes at `p` (a multiple of 4, at most 512) onto `seed`.
///
/// # Safety
/// `p` points to `len` readable bytes (stack or bounds-checked packet memory).
#[inline(always)]
unsafe fn sum(p: *const u8, len: usize, seed: u32) -> Result<u32, ()> {
    let s = bpf_csum_diff(core::ptr::null_mut(), 0, p as *mut u32, len as u32, seed);
    if s < 0 {
        return Err(());
    }
    Ok(s as u32)
}
