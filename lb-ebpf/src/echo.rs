//! Echo requests ("ping") to a VIP address are answered here, from the VIP, whatever the VIP's
//! mode: an LB need not own its VIPs, and its kernel would route a ping it does not own back
//! towards the router that sent it. The request becomes the reply in place: addresses and
//! MACs swapped, type changed, TTL set, checksums updated incrementally, XDP_TX.

use aya_ebpf::programs::XdpContext;
use lb_common::csum;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    parse::{ptr_at, words, write_words, Offsets},
    proto::TTL,
};

/// Turns the echo request (headers at `off`, IPv4 or not) into its reply.
#[inline(always)]
pub fn answer(ctx: &XdpContext, off: &Offsets, v4: bool) -> Result<(), u32> {
    let eth = ptr_at::<EthHdr>(ctx, 0)? as *mut EthHdr;
    let icmp = ptr_at::<[u8; 4]>(ctx, off.l4)? as *mut [u8; 4];
    // SAFETY: every header is bounds-checked (ptr_at) before the first write; XDP packet
    // memory is writable.
    unsafe {
        let reply_type = if v4 {
            let ip = ptr_at::<Ipv4Hdr>(ctx, off.l3)? as *mut Ipv4Hdr;
            // Swapped addresses leave the header checksum as it was; the TTL does not.
            let before = u16::from_ne_bytes([(*ip).ttl, (*ip).proto]);
            let check = csum::replace16(
                u16::from_ne_bytes((*ip).check),
                before,
                u16::from_ne_bytes([TTL, (*ip).proto]),
            );
            core::mem::swap(&mut (*ip).src_addr, &mut (*ip).dst_addr);
            (*ip).ttl = TTL;
            (*ip).check = check.to_ne_bytes();
            0
        } else {
            let ip = ptr_at::<Ipv6Hdr>(ctx, off.l3)? as *mut Ipv6Hdr;
            // ICMPv6's pseudo-header sums both addresses: swapped, the sum is the same.
            let src: [u32; 4] = words::<4, 16>(&raw const (*ip).src_addr);
            let dst: [u32; 4] = words::<4, 16>(&raw const (*ip).dst_addr);
            write_words(&raw mut (*ip).src_addr, &dst);
            write_words(&raw mut (*ip).dst_addr, &src);
            (*ip).hop_limit = TTL;
            129
        };
        let before = u16::from_ne_bytes([(*icmp)[0], (*icmp)[1]]);
        let after = u16::from_ne_bytes([reply_type, (*icmp)[1]]);
        let check = csum::replace16(u16::from_ne_bytes([(*icmp)[2], (*icmp)[3]]), before, after);
        (*icmp)[0] = reply_type;
        let c = check.to_ne_bytes();
        (*icmp)[2] = c[0];
        (*icmp)[3] = c[1];
        core::mem::swap(&mut (*eth).src_addr, &mut (*eth).dst_addr);
    }
    Ok(())
}
