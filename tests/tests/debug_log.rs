//! `xdplb debug on|off` (needs root): while on, every verdict of the data path becomes an
//! aya-log record in the daemon's log (target `xdplb::datapath`); while off, none. Switched
//! at runtime without a reload, and kept across a daemon restart.

use std::{net::SocketAddr, time::Duration};

use lb_tests::{
    l2env::{wait_for, L2Env as Env, PORT},
    peers::udp_once,
    topology::VIP4,
};

const WAIT: Duration = Duration::from_secs(10);

/// One UDP request from `port` to the VIP.
fn ask(e: &Env, port: u16) {
    let target = SocketAddr::new(VIP4.parse().unwrap(), PORT);
    e.topo
        .client
        .ns
        .run(|| udp_once(target, port))
        .unwrap()
        .unwrap();
}

/// The data path's records about packets from `port`.
fn records(e: &Env, port: u16) -> usize {
    let from = format!("{}:{port} -> ", e.topo.client.ip4);
    e.d.log()
        .lines()
        .filter(|l| l.contains("xdplb::datapath") && l.contains("verdict") && l.contains(&from))
        .count()
}

fn debug(e: &Env) -> bool {
    let s = e.d.json(&["status"]).unwrap();
    s["program"]["debug_logging"].as_bool().unwrap()
}

#[test]
fn verdicts_reach_the_daemon_log_only_while_debug_is_on() {
    let mut e = Env::new(&[]);
    let vip = e.vip_udp();
    e.d.ok(&["attach", "eth0", "--xdp-mode", "native"]).unwrap();
    e.d.ok(&["vip", "add", &vip, "--mode", "l2"]).unwrap();
    e.d.ok(&["backend", "add", &vip, &e.b(0)]).unwrap();
    assert!(!debug(&e), "off by default");

    off_then_on(&e, 44001, 44002);
    let log = e.d.log();
    let line = log.lines().find(|l| l.contains(":44002 -> ")).unwrap();
    // reason 7 is `tx` (lb_common::stats::TX), action 3 XDP_TX.
    assert!(
        line.contains("verdict reason=7 action=3") && line.contains(&format!("-> {VIP4}:{PORT}")),
        "{line}"
    );

    // Kept across a restart: the switch is in the program, the state file remembers it.
    e.d.stop().unwrap();
    e.d.spawn().unwrap();
    assert!(debug(&e), "debug stays on across a restart");
    ask(&e, 44003);
    wait_for("a record after the restart", WAIT, || {
        records(&e, 44003) == 1
    });

    // Off again, without a reload: nothing more.
    e.d.ok(&["debug", "off"]).unwrap();
    off_then_on(&e, 44004, 44005);
}

/// With debug off, a packet from `off_port` leaves no record; switched on, one from `on_port`
/// does. Records come in order, so once the later packet's record is there, the earlier one's
/// would be too.
fn off_then_on(e: &Env, off_port: u16, on_port: u16) {
    ask(e, off_port);
    e.d.ok(&["debug", "on"]).unwrap();
    ask(e, on_port);
    wait_for("the record of a packet sent while on", WAIT, || {
        records(e, on_port) == 1
    });
    assert_eq!(
        records(e, off_port),
        0,
        "a packet sent while off was logged"
    );
}
