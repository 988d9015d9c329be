//! `xdplb_sink`: the receiving end of live benchmarks. Counts and drops IPv4 UDP frames (the
//! benchmark traffic) and passes everything else, so ARP and neighbour traffic on the sink's
//! link keep working. A second counter takes only frames to the expected UDP port, so a
//! benchmark can tell that the path under test rewrote (or kept) the port as it should.

use aya_ebpf::{
    bindings::xdp_action,
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use lb_common::maps::{SINK_ALL, SINK_PORT};
use lb_ebpf::{
    parse::ptr_at,
    proto::{ETH_P_IP, IPPROTO_UDP},
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

lb_ebpf::map! {
    /// Per-CPU counts: `SINK_ALL` every IPv4 UDP frame, `SINK_PORT` those to the expected port.
    static SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);
}

lb_ebpf::map! {
    /// The expected UDP destination port (network order, in the low 16 bits).
    static SINK_CFG: Array<u32> = Array::with_max_entries(1, 0);
}

#[inline(always)]
pub fn sink(ctx: &XdpContext) -> u32 {
    let (Ok(eth), Ok(ip)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN),
    ) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: bounds-checked by ptr_at.
    let (proto, vihl, l4) = unsafe { ((*eth).ether_type, (*ip).vihl, (*ip).proto) };
    if proto != ETH_P_IP || l4 != IPPROTO_UDP {
        return xdp_action::XDP_PASS;
    }
    let off = EthHdr::LEN + ((vihl & 0x0f) as usize) * 4;
    let want = SINK_CFG.get(0).copied().unwrap_or(0) as u16;
    // SAFETY: bounds-checked by ptr_at.
    let port_ok = matches!(ptr_at::<[u16; 2]>(ctx, off), Ok(udp) if unsafe { (*udp)[1] } == want);
    bump(SINK_ALL);
    if port_ok {
        bump(SINK_PORT);
    }
    xdp_action::XDP_DROP
}

#[inline(always)]
fn bump(slot: u32) {
    if let Some(c) = SINK.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot; only this CPU's runs touch it.
        unsafe { *c += 1 };
    }
}
