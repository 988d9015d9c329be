//! The per-CPU limit of new flows recorded per second (`conntrack.record_limit`), through
//! BPF_PROG_TEST_RUN (needs root): beyond it, new flows are still sent to their ring backend
//! but get no connection-table entry (counted as `conntrack_unrecorded`), L2 and L3 alike
//! (an L3 reply without an entry is vouched for by the ring); new flows of an all-ports L3
//! VIP are dropped instead (only an entry could match their replies); the next second records
//! again.

use lb_common::stats;
use lb_tests::{
    fib::{backends, be_mac, fib_namespace},
    packet::{Packet, ACK, SYN},
    xdp::{test_run, vip, XDP_DROP, XDP_REDIRECT, XDP_TX},
};
use lb_userspace::{
    datapath::{DataPath, LoadOptions},
    mirror::Mirror,
    model::{flow_key, Mode},
};

const LIMIT: u32 = 3;

#[test]
fn new_flows_beyond_the_record_limit_are_balanced_but_not_recorded() {
    let ns = fib_namespace();
    ns.run(|| {
        // The window is per CPU: keep every run on one.
        lb_tests::generator::pin_thread(0).unwrap();
        let opts = LoadOptions::default();
        let mut dp = DataPath::load(&opts).expect("load xdplb (root?)");
        let (c0, _) = dp.register_egress("c0").unwrap();
        dp.register_egress("b0").unwrap();
        let mut mirror = Mirror::new(opts.ring_size, opts.max_vips, opts.max_backends);
        let l2 = "10.1.0.100:80/tcp";
        mirror
            .sync(
                &mut dp.writer(),
                &[
                    vip(l2, Mode::L2, backends(&["10.1.0.11", "10.1.0.12"])),
                    // Neighbours in the FIB namespace: forwarded, not passed.
                    vip(
                        "10.1.0.200:80/tcp",
                        Mode::L3,
                        backends(&["10.2.0.1", "10.2.0.2"]),
                    ),
                    // UDP: an all-ports TCP VIP could not share the TCP VIP's backends.
                    vip(
                        "10.1.0.201:*/udp",
                        Mode::L3,
                        backends(&["10.2.0.1", "10.2.0.2"]),
                    ),
                ],
            )
            .unwrap();
        dp.set_record_limit(LIMIT).unwrap();
        let stat = |dp: &DataPath, i: u32| dp.stats().unwrap()[i as usize];
        let recorded_as = |dp: &DataPath, sport: u16, vip: &str| {
            let key = flow_key("10.1.0.1".parse().unwrap(), sport, &vip.parse().unwrap(), 80);
            dp.conntrack(&key).unwrap().is_some()
        };
        let recorded = |dp: &DataPath, sport: u16, dst: &str| {
            recorded_as(dp, sport, &format!("{dst}:80/tcp"))
        };

        // Within one second (the window opens at the first flow): LIMIT recorded, then none.
        // New TCP connections (SYN: not looked up) and packets of flows the table does not
        // know (ACK: looked up, a miss) alike, each kind in a second of its own.
        let n = LIMIT as u16 + 3;
        let send = |dp: &mut DataPath, sport: u16, flags: u8| {
            let frame = Packet::tcp("10.1.0.1", sport, "10.1.0.100", 80)
                .flags(flags)
                .build();
            test_run(dp.program().unwrap(), &frame, Some(c0))
        };
        let l2_id = mirror.vip_id(&l2.parse().unwrap()).unwrap();
        for (first, flags) in [(44000, ACK), (40000, SYN)] {
            let unrecorded = stat(&dp, stats::EV_CT_UNRECORDED);
            let new_flows = dp.vip_counters(l2_id).unwrap().new_flows;
            for sport in first..first + n {
                let (verdict, _) = send(&mut dp, sport, flags);
                assert_eq!(verdict, XDP_TX, "flow {sport} is balanced either way");
            }
            let kept: Vec<bool> = (first..first + n)
                .map(|p| recorded(&dp, p, "10.1.0.100"))
                .collect();
            assert_eq!(
                kept,
                (0..n).map(|i| i < LIMIT as u16).collect::<Vec<_>>(),
                "flags {flags:#x}: the first {LIMIT} flows of the second are recorded, the others not"
            );
            assert_eq!(
                stat(&dp, stats::EV_CT_UNRECORDED) - unrecorded,
                (n - LIMIT as u16) as u64
            );
            assert_eq!(
                dp.vip_counters(l2_id).unwrap().new_flows - new_flows,
                n as u64
            );
            if flags == ACK {
                std::thread::sleep(std::time::Duration::from_millis(1100));
            }
        }
        // Over the limit, a SYN is neither looked up nor recorded: a recorded flow's SYN goes
        // by the ring without touching the table (no hit); its ACK is looked up (a hit).
        let hits = stat(&dp, stats::EV_CT_HIT);
        send(&mut dp, 40000, SYN);
        assert_eq!(stat(&dp, stats::EV_CT_HIT), hits, "a SYN over the limit: no lookup");
        send(&mut dp, 40000, ACK);
        assert_eq!(stat(&dp, stats::EV_CT_HIT), hits + 1, "its ACK: a hit");
        // Unrecorded flows go where the ring says, packet after packet.
        for sport in 40000 + LIMIT as u16..40000 + n {
            let key = flow_key("10.1.0.1".parse().unwrap(), sport, &l2.parse().unwrap(), 80);
            let want = mirror.ring_choice(&l2.parse().unwrap(), &key).unwrap();
            let mac = if want.to_string() == "10.1.0.11" {
                be_mac(1)
            } else {
                be_mac(2)
            };
            let frame = Packet::tcp("10.1.0.1", sport, "10.1.0.100", 80).build();
            // Still over the limit: a miss again, and again not recorded.
            let (_, out) = test_run(dp.program().unwrap(), &frame, Some(c0));
            assert_eq!(out[..6], mac.0, "flow {sport} to its ring backend {want}");
        }

        // L3 flows of a VIP with a port are limited the same way (forwarded, not recorded):
        // their replies' endpoint and ring slot vouch for them.
        for sport in 41000..41003 {
            let frame = Packet::tcp("10.1.0.1", sport, "10.1.0.200", 80).build();
            let (verdict, _) = test_run(dp.program().unwrap(), &frame, Some(c0));
            assert_eq!(verdict, XDP_REDIRECT);
            assert!(
                !recorded(&dp, sport, "10.1.0.200"),
                "L3 flow {sport} over the limit recorded"
            );
        }
        // An all-ports L3 VIP's new flows are dropped over the limit: a reply's source port
        // names no VIP port, only an entry could match it, and recording them would let the
        // flood evict established flows.
        for sport in 41000..41003 {
            let frame = Packet::udp("10.1.0.1", sport, "10.1.0.201", 80).build();
            let (verdict, _) = test_run(dp.program().unwrap(), &frame, Some(c0));
            assert_eq!(verdict, XDP_DROP);
            assert!(
                !recorded_as(&dp, sport, "10.1.0.201:*/udp"),
                "all-ports L3 flow {sport} over the limit recorded"
            );
        }
        assert_eq!(stat(&dp, stats::DROP_ALL_PORTS_FLOOD), 3);
        assert_eq!(
            stat(&dp, stats::EV_CT_UNRECORDED),
            3 * (n - LIMIT as u16) as u64 + 1 + 3
        );

        // A new second: recording resumes.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let frame = Packet::tcp("10.1.0.1", 42000, "10.1.0.100", 80).build();
        test_run(dp.program().unwrap(), &frame, Some(c0));
        assert!(
            recorded(&dp, 42000, "10.1.0.100"),
            "recorded in the next second"
        );

        // 0: no limit.
        dp.set_record_limit(0).unwrap();
        for sport in 43000..43000 + 2 * LIMIT as u16 {
            let frame = Packet::tcp("10.1.0.1", sport, "10.1.0.100", 80).build();
            test_run(dp.program().unwrap(), &frame, Some(c0));
            assert!(
                recorded(&dp, sport, "10.1.0.100"),
                "flow {sport} recorded without a limit"
            );
        }
    })
    .unwrap();
}
