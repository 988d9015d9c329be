//! `xdplb_gen`: a packet generator for tests and benchmarks, run with BPF_PROG_RUN live frames
//! (each run's XDP_TX sends the frame out of the interface given as the run's ingress).
//!
//! Live frames are recycled pages, and veth and XDP_REDIRECT hand the same page all the way to
//! the receiver: whatever a load balancer or the kernel rewrote (MACs, addresses, ports, TTL)
//! comes back in a later frame. So every packet starts from the template's first 42 bytes
//! (Ethernet, IPv4, the UDP header or the start of TCP's), kept in `XDPLB_GEN_HDR` with a valid
//! IPv4 checksum (and a zero UDP checksum; TCP's is not maintained), then gets its flow's source: packet n belongs to flow n mod `flows`;
//! flow f comes from `src + f / 16384`, port `1024 + f % 16384`. Not attached by the daemon.

use aya_ebpf::{
    bindings::xdp_action,
    macros::map,
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{csum, maps::GEN_HDR_LEN};

use crate::{maps::GEN_CONFIG, parse::ptr_at};

/// Packets sent by this CPU so far.
#[map(name = "XDPLB_GEN_SEQ")]
static SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// The template's first `GEN_HDR_LEN` bytes, zero-padded to 48.
#[map(name = "XDPLB_GEN_HDR")]
static HDR: Array<[u64; 6]> = Array::with_max_entries(1, 0);

const FLOWS_PER_ADDR: u32 = 16384;
/// Offsets in the template: IPv4 checksum and source address, L4 source port.
const IP_CHECK: usize = 24;
const IP_SRC: usize = 26;
const SPORT: usize = 34;

#[inline(always)]
pub fn generate(ctx: &XdpContext) -> u32 {
    let (Some(cfg), Some(hdr), Some(seq)) = (GEN_CONFIG.get(0), HDR.get(0), SEQ.get_ptr_mut(0))
    else {
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
    let Ok(frame) = ptr_at::<[u8; GEN_HDR_LEN]>(ctx, 0) else {
        return xdp_action::XDP_ABORTED;
    };
    let frame = frame as *mut u8;
    let tpl = hdr.as_ptr() as *const u8;
    // SAFETY: `frame` has GEN_HDR_LEN bytes (ptr_at), the map value 48; XDP packet memory is
    // writable. Unaligned accesses because packet data has no alignment guarantee.
    unsafe {
        let w = hdr.as_ptr();
        for i in 0..5 {
            (frame.add(8 * i) as *mut u64).write_unaligned(*w.add(i));
        }
        (frame.add(40) as *mut u16).write_unaligned((tpl.add(40) as *const u16).read_unaligned());
        let old = (tpl.add(IP_SRC) as *const u32).read_unaligned();
        let check = (tpl.add(IP_CHECK) as *const u16).read_unaligned();
        (frame.add(IP_CHECK) as *mut u16).write_unaligned(csum::replace32(check, old, src));
        (frame.add(IP_SRC) as *mut u32).write_unaligned(src);
        (frame.add(SPORT) as *mut u16).write_unaligned(sport);
    }
    xdp_action::XDP_TX
}
