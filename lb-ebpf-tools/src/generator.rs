//! `xdplb_gen`: a packet generator for tests and benchmarks, run with BPF_PROG_RUN live frames
//! (each run's XDP_TX sends the frame out of the interface given as the run's ingress).
//!
//! Live frames are recycled pages, and veth and XDP_REDIRECT hand the same page all the way to
//! the receiver: whatever a load balancer or the kernel rewrote (MACs, addresses, ports, TTL)
//! comes back in a later frame. So every packet starts from the template's first 42 bytes
//! (Ethernet, IPv4, the UDP header or the start of TCP's), kept in `XDPLB_GEN_HDR` with a valid
//! IPv4 checksum (and a zero UDP checksum; TCP's is not maintained), then gets its flow's
//! source: packet n belongs to flow n mod `flows`; flow f comes from `src + f / 16384`, port
//! `1024 + f % 16384`.

use aya_ebpf::{
    bindings::xdp_action,
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{csum, maps::GEN_FLOWS_PER_ADDR};
use lb_ebpf::parse::ptr_at;

lb_ebpf::map! {
    /// Its settings: [flows, first source address (host order), 0, 0].
    static GEN: Array<[u32; 4]> = Array::with_max_entries(1, 0);
}

lb_ebpf::map! {
    /// Packets sent by this CPU so far.
    static GEN_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
}

lb_ebpf::map! {
    /// The template's first `GEN_HDR_LEN` bytes, zero-padded to 48.
    static GEN_HDR: Array<[u64; 6]> = Array::with_max_entries(1, 0);
}

/// 16-bit word indices in the template: IPv4 checksum, source address (two words), L4 source
/// port, and the last word (bytes 40..42).
const IP_CHECK: usize = 12;
const IP_SRC: usize = 13;
const SPORT: usize = 17;
const LAST: usize = 20;

#[inline(always)]
pub fn generate(ctx: &XdpContext) -> u32 {
    let (Some(cfg), Some(hdr), Some(seq)) = (GEN.get(0), GEN_HDR.get(0), GEN_SEQ.get_ptr_mut(0))
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
    let src = (src_base + flow / GEN_FLOWS_PER_ADDR).to_be_bytes();
    let src = [
        u16::from_ne_bytes([src[0], src[1]]),
        u16::from_ne_bytes([src[2], src[3]]),
    ];
    let sport = ((1024 + flow % GEN_FLOWS_PER_ADDR) as u16).to_be();
    // The frame's header, built on the stack (aligned word accesses) and then stored whole.
    let mut h = *hdr;
    let w = h.as_mut_ptr() as *mut u16;
    // SAFETY: every index is inside the 48-byte local.
    unsafe {
        let mut check = *w.add(IP_CHECK);
        for (i, word) in src.iter().enumerate() {
            check = csum::replace16(check, *w.add(IP_SRC + i), *word);
            *w.add(IP_SRC + i) = *word;
        }
        *w.add(IP_CHECK) = check;
        *w.add(SPORT) = sport;
    }
    let Ok(frame) = ptr_at::<[u64; 5]>(ctx, 0) else {
        return xdp_action::XDP_ABORTED;
    };
    let Ok(last) = ptr_at::<u16>(ctx, 2 * LAST) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: bounds-checked by ptr_at; XDP packet memory is writable. Word stores, because
    // LLVM splits unaligned ones into bytes (~200 more instructions per packet on the core the
    // benchmark measures). Live-frames data is 8-byte aligned (it starts XDP_PACKET_HEADROOM
    // after a page header), the only place this program runs, and the verifier does not
    // enforce alignment on the JIT targets anyway.
    unsafe {
        *(frame as *mut [u64; 5]) = [h[0], h[1], h[2], h[3], h[4]];
        *(last as *mut u16) = *w.add(LAST);
    }
    xdp_action::XDP_TX
}
