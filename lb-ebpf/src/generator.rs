//! `xdplb_gen`: a packet generator for tests and benchmarks, run with BPF_PROG_RUN live frames
//! (each run's XDP_TX sends the frame out of the interface given as the run's ingress). It
//! rewrites the source address and port of an IPv4 UDP template (checksum 0) so that packet n
//! belongs to flow n mod `flows`: flow f comes from `src + f / 16384`, port `1024 + f % 16384`.
//! Not attached anywhere by the daemon.

use aya_ebpf::{bindings::xdp_action, macros::map, maps::PerCpuArray, programs::XdpContext};
use lb_common::csum;
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{maps::GEN_CONFIG, parse::ptr_at};

/// Packets sent by this CPU so far.
#[map(name = "XDPLB_GEN_SEQ")]
static SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

const FLOWS_PER_ADDR: u32 = 16384;

#[inline(always)]
pub fn generate(ctx: &XdpContext) -> u32 {
    let (Some(cfg), Some(seq)) = (GEN_CONFIG.get(0), SEQ.get_ptr_mut(0)) else {
        return xdp_action::XDP_ABORTED;
    };
    let [flows, src_base, _, _] = *cfg;
    // SAFETY: a per-CPU slot only this run touches.
    let n = unsafe {
        let n = *seq;
        *seq = n.wrapping_add(1);
        n
    };
    let flow = n.checked_rem(flows).unwrap_or(0);
    let src = (src_base + flow / FLOWS_PER_ADDR).to_be();
    let sport = ((1024 + flow % FLOWS_PER_ADDR) as u16).to_be();
    let (Ok(ip), Ok(udp)) = (
        ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN),
        ptr_at::<[u16; 4]>(ctx, EthHdr::LEN + Ipv4Hdr::LEN),
    ) else {
        return xdp_action::XDP_ABORTED;
    };
    let (ip, udp) = (ip as *mut Ipv4Hdr, udp as *mut [u16; 4]);
    // SAFETY: bounds-checked by ptr_at; XDP packet memory is writable.
    unsafe {
        let old = u32::from_ne_bytes((*ip).src_addr);
        (*ip).check = csum::replace32(u16::from_ne_bytes((*ip).check), old, src).to_ne_bytes();
        (*ip).src_addr = src.to_ne_bytes();
        (*udp)[0] = sport;
    }
    xdp_action::XDP_TX
}
