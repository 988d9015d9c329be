//! The test and benchmark programs (lb-ebpf-tools) through BPF_PROG_TEST_RUN, without live
//! frames (which need a capability some environments lack): what each does to a frame and to
//! its maps. The live benchmark relies on exactly this; here it runs everywhere (needs root).

use std::net::Ipv4Addr;

use aya::programs::{TestRun, TestRunOptions};
use lb_common::maps as m;
use lb_tests::{
    generator::pin_thread,
    netns::{unique_prefix, veth, Netns},
    packet::{internet_checksum, with_macs, Packet, ETH_ARP},
    tools::Tools,
    xdp::{test_run, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
};
use lb_userspace::{iface, model::Mac};

#[test]
fn sink_counts_and_drops_udp_and_passes_the_rest() {
    let mut t = Tools::load().unwrap();
    t.set_sink_port(8080).unwrap();
    let before = t.sink_counts().unwrap();
    assert_eq!(before, (0, 0));
    let to_port = Packet::udp("10.0.0.1", 1000, "10.0.0.2", 8080).build();
    let other_port = Packet::udp("10.0.0.1", 1000, "10.0.0.2", 8081).build();
    let sink = t.program(m::PROG_SINK).unwrap();
    assert_eq!(test_run(sink, &to_port, None).0, XDP_DROP);
    assert_eq!(test_run(sink, &other_port, None).0, XDP_DROP);
    // Not benchmark traffic: the link's own traffic (TCP, ARP, IPv6) goes on to the kernel.
    for frame in [
        Packet::tcp("10.0.0.1", 1000, "10.0.0.2", 8080).build(),
        Packet::udp("fd00::1", 1000, "fd00::2", 8080).build(),
        Packet::udp("10.0.0.1", 1000, "10.0.0.2", 8080)
            .ether(ETH_ARP)
            .build(),
    ] {
        assert_eq!(test_run(sink, &frame, None).0, XDP_PASS);
    }
    assert_eq!(t.sink_counts().unwrap(), (2, 1));
    assert_eq!(t.sink_per_cpu().unwrap().iter().sum::<u64>(), 2);
}

#[test]
fn floor_sets_both_macs_and_redirects_to_its_egress() {
    let ns = Netns::new(&format!("{}-floor", unique_prefix())).unwrap();
    veth(&ns, "f0", &ns, "f1").unwrap();
    let (dst, src) = (Mac([0x02, 0xd5, 0, 0, 0, 1]), Mac([0x02, 0x5c, 0, 0, 0, 2]));
    let mut t = Tools::load().unwrap();
    // The devmap resolves the egress's index in the writer's namespace.
    ns.run(|| t.set_floor(iface::index("f0").unwrap(), dst, src))
        .unwrap()
        .unwrap();
    let frame = Packet::udp("10.0.0.1", 1000, "10.0.0.2", 8080).build();
    let (verdict, out) = test_run(t.program(m::PROG_FLOOR).unwrap(), &frame, None);
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(out, with_macs(&frame, dst.0, src.0));
}

/// Packet n is flow n mod `flows`; flow f comes from `first + f / 16384`, port
/// `1024 + f % 16384`, with a valid IPv4 checksum, and leaves by XDP_TX.
#[test]
fn generator_gives_each_packet_its_flows_source() {
    // Its sequence number is per CPU: one CPU numbers the packets 0, 1, 2, ...
    pin_thread(0).unwrap();
    let mut t = Tools::load().unwrap();
    let first = Ipv4Addr::new(10, 9, 0, 1);
    let flows = m::GEN_FLOWS_PER_ADDR + 2;
    let template = Packet::udp("192.0.2.1", 7, "10.0.0.2", 8080).build();
    t.set_generator(flows, first, &template).unwrap();
    // The last packet of each call: 0, then 16384 (flow 16384: the next address), then 16385.
    let mut out = vec![0u8; template.len()];
    for (repeat, src, sport) in [
        (1, first, 1024),
        (m::GEN_FLOWS_PER_ADDR, Ipv4Addr::new(10, 9, 0, 2), 1024),
        (1, Ipv4Addr::new(10, 9, 0, 2), 1025),
        // Packet 16386 is flow 0 again.
        (1, first, 1024),
    ] {
        let r = t
            .program(m::PROG_GEN)
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(&template),
                data_out: Some(&mut out),
                repeat,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(r.return_value, XDP_TX);
        assert_eq!(&out[26..30], &src.octets(), "source address");
        assert_eq!(u16::from_be_bytes([out[34], out[35]]), sport, "source port");
        assert_eq!(internet_checksum(&out[14..34]), 0, "IPv4 checksum");
        // Everything else is the template's (a zero UDP checksum: not maintained).
        assert_eq!(&out[..24], &template[..24]);
        assert_eq!(&out[30..34], &template[30..34]);
        assert_eq!(&out[36..40], &template[36..40]);
        assert_eq!(&out[40..42], &[0, 0]);
        assert_eq!(&out[42..], &template[42..]);
    }
}
