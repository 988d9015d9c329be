//! L3 (NAT) mode: a client's packet gets its backend's address (and port) as destination, a
//! backend's reply gets the VIP's back as source. Checksums are updated incrementally
//! (`lb_common::csum`), the TTL or hop limit is decremented, and the FIB picks next hop, MACs
//! and egress interface.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NOT_FWDED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_ktime_get_coarse_ns},
    programs::XdpContext,
    EbpfContext,
};
use lb_common::{addr::FAMILY_V4, csum, FlowKey, Hop, HOP_TTL};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    forward::Egress,
    maps::IFACES,
    parse::{ptr_at, words, write_words, Offsets},
    proto::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP},
};

/// The address (and port) a packet gets.
pub struct Rewrite {
    /// Replace the destination (client -> backend); else the source (reply -> client).
    pub dst: bool,
    pub addr: [u32; 4],
    /// Network byte order; 0 keeps the port.
    pub port: u16,
    /// The next-hop cache to use and refresh: the flow's own (in its connection-table entry)
    /// or, for a flow's first packet, its backend's (`maps::BACKEND_HOPS`).
    pub hop: HopRef,
}

/// A next-hop cache and the tag that says it was written for this packet's flow or backend
/// (an LRU entry can be recycled for another flow, a backend id reused for another backend).
/// `at` is null for none: an `Option` here left its payload undefined when `None`, and LLVM
/// then spilled an undefined register, which the verifier refuses.
#[derive(Clone, Copy)]
pub struct HopRef {
    pub at: *mut Hop,
    pub tag: u16,
}

impl HopRef {
    pub const NONE: HopRef = HopRef {
        at: core::ptr::null_mut(),
        tag: 0,
    };

    #[inline(always)]
    fn get(&self) -> Option<&HopRef> {
        (!self.at.is_null()).then_some(self)
    }
}

/// Where the rewritten packet goes.
pub enum Route {
    Forward {
        out: Egress,
        dmac: [u8; 6],
    },
    /// A route the kernel must take over: no neighbour entry for the next hop yet, or an
    /// egress xdplb is not attached to (it cannot redirect there).
    Kernel,
    /// Larger than the egress MTU (the MTU).
    TooBig(u16),
    /// The destination is this host (the LB's own traffic, say a health check's reply).
    Local,
    /// No usable route (unreachable, blackhole, prohibited, forwarding off).
    None,
    /// TTL or hop limit would reach 0.
    Expired,
}

/// Looks up the route of the packet as it will be after `rw`.
#[inline(always)]
pub fn route(ctx: &XdpContext, key: &FlowKey, off: &Offsets, rw: &Rewrite) -> Result<Route, u32> {
    let v4 = key.family == FAMILY_V4;
    // TOS (IPv4) and flow info (IPv6) go into the lookup too: policy rules and multipath
    // hashing then agree with what the kernel does for the packets it forwards itself.
    let (ttl, tot_len, tos) = if v4 {
        let ip = ptr_at::<Ipv4Hdr>(ctx, off.l3)?;
        // SAFETY: bounds-checked by ptr_at.
        unsafe {
            (
                (*ip).ttl,
                u16::from_be_bytes((*ip).tot_len),
                (*ip).tos as u32,
            )
        }
    } else {
        let ip = ptr_at::<Ipv6Hdr>(ctx, off.l3)?;
        // SAFETY: bounds-checked by ptr_at.
        unsafe {
            let len = u16::from_be_bytes((*ip).payload_len).wrapping_add(Ipv6Hdr::LEN as u16);
            (
                (*ip).hop_limit,
                len,
                u32::from_ne_bytes((*ip).vcf) & 0x0fff_ffffu32.to_be(),
            )
        }
    };
    if ttl <= 1 {
        return Ok(Route::Expired);
    }
    // SAFETY: the coarse clock helper has no preconditions.
    let now = ((unsafe { bpf_ktime_get_coarse_ns() } >> 20) as u32).max(1);
    let ingress = ctx.ingress_ifindex() as u32;
    if let Some(r) = rw.hop.get() {
        // SAFETY: a valid map value; copied at once.
        let h = unsafe { *r.at };
        if h.tag == r.tag
            && h.checked != 0
            && now.wrapping_sub(h.checked) < HOP_TTL
            && tot_len <= h.mtu
        {
            return Ok(Route::Forward {
                out: Egress {
                    ifindex: h.ifindex,
                    back_out: h.ifindex == ingress,
                    mac: h.smac,
                },
                dmac: h.dmac,
            });
        }
    }
    let (mut src, mut dst, mut sport, mut dport) = (key.src, key.dst, key.sport, key.dport);
    if rw.dst {
        dst = rw.addr;
        if rw.port != 0 {
            dport = rw.port;
        }
    } else {
        src = rw.addr;
        if rw.port != 0 {
            sport = rw.port;
        }
    }
    // SAFETY: an all-zero bpf_fib_lookup is a valid request skeleton.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.family = if v4 { AF_INET } else { AF_INET6 };
    p.l4_protocol = key.proto;
    p.sport = sport;
    p.dport = dport;
    p.__bindgen_anon_1.tot_len = tot_len;
    p.ifindex = ctx.ingress_ifindex() as u32;
    if v4 {
        p.__bindgen_anon_2.tos = tos as u8;
        p.__bindgen_anon_3.ipv4_src = src[0];
        p.__bindgen_anon_4.ipv4_dst = dst[0];
    } else {
        p.__bindgen_anon_2.flowinfo = tos;
        p.__bindgen_anon_3.ipv6_src = src;
        p.__bindgen_anon_4.ipv6_dst = dst;
    }
    // SAFETY: `p` is a valid, initialised request of the size given.
    let rc = unsafe { fib_lookup(ctx.as_ptr(), &mut p, size_of::<bpf_fib_lookup>() as i32, 0) };
    Ok(match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS if attached(p.ifindex) => {
            if let Some(r) = rw.hop.get() {
                // SAFETY: a valid map value (possibly recycled for another flow since the
                // lookup: the tag tells that flow not to use it). A reader on another CPU may
                // see a half-written refresh; a flow's packets stay on one CPU, so rarely.
                unsafe {
                    *r.at = Hop {
                        ifindex: p.ifindex,
                        checked: now,
                        dmac: p.dmac,
                        smac: p.smac,
                        mtu: p.__bindgen_anon_1.mtu_result,
                        tag: r.tag,
                    }
                };
            }
            let back_out = p.ifindex == ingress;
            Route::Forward {
                out: Egress {
                    ifindex: p.ifindex,
                    back_out,
                    mac: p.smac,
                },
                dmac: p.dmac,
            }
        }
        BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_NO_NEIGH => Route::Kernel,
        // SAFETY: the lookup answered with the MTU in the union.
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Route::TooBig(unsafe { p.__bindgen_anon_1.mtu_result }),
        BPF_FIB_LKUP_RET_NOT_FWDED => Route::Local,
        _ => Route::None,
    })
}

/// The flow's digest in its cached hop (`Hop::tag`).
#[inline(always)]
pub fn hop_tag(key: &FlowKey) -> u16 {
    // Written out: an iterator chain here compiled to a stack read the verifier refused.
    let (s, d) = (&key.src, &key.dst);
    let x = s[0]
        ^ s[1].rotate_left(4)
        ^ s[2].rotate_left(8)
        ^ s[3].rotate_left(12)
        ^ d[0].rotate_left(16)
        ^ d[1].rotate_left(20)
        ^ d[2].rotate_left(24)
        ^ d[3].rotate_left(28)
        ^ ((key.sport as u32) << 16 | key.dport as u32);
    (x ^ (x >> 16)) as u16
}

/// Whether frames can be redirected out of `ifindex` (the loader registered it).
#[inline(always)]
fn attached(ifindex: u32) -> bool {
    // SAFETY: only presence is checked.
    unsafe { IFACES.get(ifindex) }.is_some()
}

/// Rewrites address, port and checksums (and decrements the TTL when `hop`: the kernel does it
/// itself for packets passed to it). Every header is bounds-checked before the first write,
/// so a packet is rewritten whole or not at all.
#[inline(always)]
pub fn rewrite(
    ctx: &XdpContext,
    key: &FlowKey,
    off: &Offsets,
    rw: &Rewrite,
    hop: bool,
) -> Result<(), u32> {
    match key.proto {
        IPPROTO_TCP => {
            let h = ptr_at::<[u8; 20]>(ctx, off.l4)? as *mut [u8; 20];
            let (old, new) = rewrite_ip(ctx, key, off, rw, hop)?;
            l4_fix::<20, 16>(h, rw, &old, &new, key.family != FAMILY_V4, false);
        }
        IPPROTO_UDP => {
            let h = ptr_at::<[u8; 8]>(ctx, off.l4)? as *mut [u8; 8];
            let (old, new) = rewrite_ip(ctx, key, off, rw, hop)?;
            l4_fix::<8, 6>(h, rw, &old, &new, key.family != FAMILY_V4, true);
        }
        _ => {
            rewrite_ip(ctx, key, off, rw, hop)?;
        }
    }
    Ok(())
}

/// The IP header's part of `rewrite`; returns the old and new address words.
#[inline(always)]
fn rewrite_ip(
    ctx: &XdpContext,
    key: &FlowKey,
    off: &Offsets,
    rw: &Rewrite,
    hop: bool,
) -> Result<([u32; 4], [u32; 4]), u32> {
    if key.family == FAMILY_V4 {
        let ip = ptr_at::<Ipv4Hdr>(ctx, off.l3)? as *mut Ipv4Hdr;
        // SAFETY: bounds-checked by ptr_at; XDP packet memory is writable.
        unsafe {
            let field = if rw.dst {
                &raw mut (*ip).dst_addr
            } else {
                &raw mut (*ip).src_addr
            };
            let old = u32::from_ne_bytes(*field);
            let mut check = csum::replace32(u16::from_ne_bytes((*ip).check), old, rw.addr[0]);
            if hop {
                check = decrement_ttl(ip, check);
            }
            (*ip).check = check.to_ne_bytes();
            *field = rw.addr[0].to_ne_bytes();
            Ok(([old, 0, 0, 0], rw.addr))
        }
    } else {
        let ip = ptr_at::<Ipv6Hdr>(ctx, off.l3)? as *mut Ipv6Hdr;
        // SAFETY: bounds-checked by ptr_at; XDP packet memory is writable.
        unsafe {
            let field = if rw.dst {
                &raw mut (*ip).dst_addr
            } else {
                &raw mut (*ip).src_addr
            };
            let old = words::<4, 16>(field);
            write_words(field, &rw.addr);
            if hop {
                (*ip).hop_limit -= 1;
            }
            Ok((old, rw.addr))
        }
    }
}

/// Decrements an IPv4 header's TTL; returns the header checksum `check` updated for it.
///
/// # Safety
/// `ip` points to a bounds-checked, writable IPv4 header.
#[inline(always)]
pub unsafe fn decrement_ttl(ip: *mut Ipv4Hdr, check: u16) -> u16 {
    let before = u16::from_ne_bytes([(*ip).ttl, (*ip).proto]);
    (*ip).ttl -= 1;
    csum::replace16(check, before, u16::from_ne_bytes([(*ip).ttl, (*ip).proto]))
}

/// Port and checksum of a transport header of `LEN` bytes with its checksum at `CSUM`. The
/// pseudo-header holds the addresses, so an address change moves the checksum too.
#[inline(always)]
fn l4_fix<const LEN: usize, const CSUM: usize>(
    h: *mut [u8; LEN],
    rw: &Rewrite,
    old: &[u32; 4],
    new: &[u32; 4],
    v6: bool,
    udp: bool,
) {
    // SAFETY: the caller bounds-checked `h`; XDP packet memory is writable.
    unsafe {
        let port_at = if rw.dst { 2 } else { 0 };
        let old_port = u16::from_ne_bytes([(*h)[port_at], (*h)[port_at + 1]]);
        let port = if rw.port != 0 { rw.port } else { old_port };
        let check = u16::from_ne_bytes([(*h)[CSUM], (*h)[CSUM + 1]]);
        let check = l4_check(check, old, new, old_port, port, v6, udp);
        let c = check.to_ne_bytes();
        (*h)[CSUM] = c[0];
        (*h)[CSUM + 1] = c[1];
        let p = port.to_ne_bytes();
        (*h)[port_at] = p[0];
        (*h)[port_at + 1] = p[1];
    }
}

/// A TCP or UDP checksum after an address (`old` -> `new`) and a port changed. IPv4 UDP may
/// carry no checksum (0): it stays so; a computed 0 is sent as 0xffff.
#[inline(always)]
pub fn l4_check(
    check: u16,
    old: &[u32; 4],
    new: &[u32; 4],
    old_port: u16,
    port: u16,
    v6: bool,
    udp: bool,
) -> u16 {
    if udp && check == 0 && !v6 {
        return 0;
    }
    let c = if v6 {
        csum::replace128(check, old, new)
    } else {
        csum::replace32(check, old[0], new[0])
    };
    let c = csum::replace16(c, old_port, port);
    if udp && c == 0 {
        0xffff
    } else {
        c
    }
}
