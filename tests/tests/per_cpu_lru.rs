//! `limits.conntrack_per_cpu_lru`, through BPF_PROG_TEST_RUN (needs root): the connection and
//! reverse-NAT tables get one LRU list per CPU (BPF_F_NO_COMMON_LRU), flows are balanced and
//! found again as with the shared list, and a CPU evicts among its own share of the entries.

use lb_tests::{
    fib::{backends, fib_namespace},
    packet::{Packet, ACK},
    xdp::{test_run, vip, XDP_REDIRECT, XDP_TX},
};
use lb_userspace::{
    datapath::{DataPath, LoadOptions},
    mirror::Mirror,
    model::Mode,
};

const SIZE: u32 = 1024;
/// Flows sent from one CPU: fewer than the table holds, more than one CPU's share of it.
const FLOWS: u16 = 900;

/// Entries left after FLOWS new L2 flows and one L3 flow from CPU 0.
fn entries_after_flows(per_cpu_lru: bool) -> usize {
    let ns = fib_namespace();
    ns.run(|| {
        lb_tests::generator::pin_thread(0).unwrap();
        let opts = LoadOptions {
            conntrack_size: SIZE,
            per_cpu_lru,
            ..LoadOptions::default()
        };
        let mut dp = DataPath::load(&opts).expect("load xdplb (root?)");
        let (c0, _) = dp.register_egress("c0").unwrap();
        let (b0, _) = dp.register_egress("b0").unwrap();
        let mut mirror = Mirror::new(opts.ring_size, opts.max_vips, opts.max_backends);
        mirror
            .sync(
                &mut dp.writer(),
                &[
                    vip("10.1.0.100:80/tcp", Mode::L2, backends(&["10.1.0.11"])),
                    vip("10.1.0.200:80/tcp", Mode::L3, backends(&["10.2.0.1"])),
                ],
            )
            .unwrap();
        dp.set_record_limit(0).unwrap();
        for sport in 0..FLOWS {
            let frame = Packet::tcp("10.1.0.1", 10000 + sport, "10.1.0.100", 80).build();
            assert_eq!(test_run(dp.program().unwrap(), &frame, Some(c0)).0, XDP_TX);
        }
        // An L3 flow and its reply: both tables work with the flag.
        let fwd = Packet::tcp("10.1.0.1", 40000, "10.1.0.200", 80).build();
        assert_eq!(
            test_run(dp.program().unwrap(), &fwd, Some(c0)).0,
            XDP_REDIRECT
        );
        let reply = Packet::tcp("10.2.0.1", 80, "10.1.0.1", 40000)
            .flags(ACK)
            .build();
        assert_eq!(
            test_run(dp.program().unwrap(), &reply, Some(b0)).0,
            XDP_REDIRECT,
            "the reply finds its reverse-NAT entry"
        );
        dp.conntrack_entries().unwrap()
    })
    .unwrap()
}

#[test]
fn per_cpu_lru_lists_split_the_table_among_cpus() {
    let cpus = aya::util::nr_cpus().unwrap();
    let (shared, split) = (entries_after_flows(false), entries_after_flows(true));
    println!("{FLOWS} flows from one CPU into {SIZE} entries: {shared} kept with one LRU list, {split} with one per CPU ({cpus} possible CPUs)");
    assert!(
        shared >= FLOWS as usize,
        "one list: every flow fits ({shared})"
    );
    if cpus > 1 {
        assert!(
            split <= (SIZE as usize).div_ceil(cpus) + 1,
            "one list per CPU: CPU 0 evicts among its share ({split})"
        );
    }
}
