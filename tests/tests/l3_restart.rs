//! L3 (NAT) connections across changes and daemon restarts (needs root): the L3 topology with
//! the real daemon, one VIP per family whose backends are ADDR:PORT (VIP port 80, backends'
//! 8080), and long-lived TCP connections that must keep their backend and keep exchanging data
//! while a backend is added, the daemon is restarted gracefully, and killed with -9 and
//! started again. A restart must keep every backend id and generation (the connection-table
//! entries stay valid and the replies stay matched), so `vip list --json` is identical too.

use lb_tests::{
    daemon::{xdplb_bin, Daemon},
    l3held::{add_b3, assert_all_answer, assert_pings, env, event, hold_both, vip_list},
};
use serde_json::Value;

/// How a daemon process ends before the next one starts.
type Ending = fn(&mut Daemon) -> anyhow::Result<()>;

#[test]
fn l3_connections_survive_a_new_backend_and_restarts() {
    let mut e = env(xdplb_bin().unwrap());
    let mut held = hold_both(&e);
    assert_all_answer(&mut held, "opened");
    // A third backend joins both VIPs while the connections are open: they stay where they
    // are, and new connections reach it too.
    add_b3(&e);
    assert_all_answer(&mut held, "after adding b3");

    let list = vip_list(&e);
    let stale = event(&e, "conntrack_stale");
    let restarts: [(&str, Ending); 2] = [
        ("SIGTERM and start", Daemon::stop),
        ("kill -9 and start", Daemon::kill9),
    ];
    for (how, end) in restarts {
        end(&mut e.d).unwrap();
        // No daemon: the pinned program balances and translates on its own, and its ICMP
        // program (in the pinned jump table) still answers pings to the VIPs.
        assert_all_answer(&mut held, &format!("{how}: while no daemon runs"));
        assert_pings(&e, &format!("{how}: while no daemon runs"));
        e.d.spawn().unwrap();
        assert_eq!(vip_list(&e), list, "{how}: vip list --json changed");
        let status = e.d.json(&["status"]).unwrap();
        let adopted: Vec<&Value> = status["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| &i["adopted"])
            .collect();
        assert_eq!(
            adopted,
            [&Value::Bool(true); 2],
            "{how}: both attachments adopted"
        );
        assert_all_answer(&mut held, how);
        assert_eq!(
            event(&e, "conntrack_stale"),
            stale,
            "{how}: a connection-table entry went stale (a backend id or generation changed)"
        );
    }
}
