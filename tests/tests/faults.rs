//! Control-plane faults with the real daemon and CLI in the L2 topology (needs root), injected
//! through the test-only `XDPLB_TEST_FAULTS` plan file: a map write failing mid-change (rolled
//! back), writes that keep failing (out of sync in `status` and the metrics, retried every
//! second, in sync once they stop), and a panic mid-change (the daemon exits non-zero, the
//! pinned data path keeps forwarding, a new daemon adopts the maps); and, from a real cause,
//! an attachment pin that cannot be removed (a file mounted over it).

use std::{
    collections::BTreeSet,
    path::PathBuf,
    time::{Duration, Instant},
};

use lb_tests::{daemon::scrape, l2env::L2Env, netns::unique_prefix};
use serde_json::Value;

const METRICS: &str = "127.0.0.1:9465";

/// The shared L2 environment and the file the daemon reads fault plans from.
struct Env {
    e: L2Env,
    plan: PathBuf,
}

impl std::ops::Deref for Env {
    type Target = L2Env;
    fn deref(&self) -> &L2Env {
        &self.e
    }
}

impl std::ops::DerefMut for Env {
    fn deref_mut(&mut self) -> &mut L2Env {
        &mut self.e
    }
}

/// What the daemon says and does: `config`, `vip list` (ids and ring digests included), where
/// the ring sends 20 flows from an address that has no connection-table entries, and the
/// entries `status` counts in the VIP, backend and endpoint maps.
type View = (Value, Value, Vec<Value>, Vec<Value>);

impl Env {
    /// Three backends serving, the daemon reading fault plans from a file of its own, the VIP
    /// on eth0 with b1 and b2.
    fn new() -> Env {
        let plan = std::env::temp_dir().join(format!("xdplb-faults-{}", unique_prefix()));
        // Inherited by the daemon (the tests of this binary run one at a time).
        std::env::set_var(lb_userspace::datapath::faults::ENV, &plan);
        let e = Env {
            e: L2Env::new(&["--metrics", METRICS]),
            plan,
        };
        e.d.ok(&["attach", "eth0"]).unwrap();
        e.d.ok(&["vip", "add", &e.vip()]).unwrap();
        for i in 0..2 {
            e.d.ok(&["backend", "add", &e.vip(), &e.b(i)]).unwrap();
        }
        e
    }

    /// The next map writes follow `plan` (`fail AFTER COUNT`, `panic AFTER`, `off`).
    fn plan(&self, plan: &str) {
        std::fs::write(&self.plan, plan).unwrap();
    }

    /// Runs a change that must fail; its error.
    fn refused(&self, args: &[&str]) -> String {
        let out = self.d.cli(args).unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "xdplb {args:?} succeeded");
        assert!(
            !self.plan.exists(),
            "xdplb {args:?} wrote to a map (the plan was read): {err}"
        );
        err
    }

    fn view(&self) -> View {
        let simulated = (0..20)
            .map(|i| {
                let src = format!("192.0.2.7:{}", 40000 + i);
                self.d.json(&["simulate", &src, &self.vip()]).unwrap()
            })
            .collect();
        let status = self.d.json(&["status"]).unwrap();
        let used = status["maps"]
            .as_array()
            .unwrap()
            .iter()
            // Traffic changes the connection tables' counts (both families').
            .filter(|m| {
                ![lb_common::maps::CONNTRACK, lb_common::maps::CONNTRACK4]
                    .contains(&m["name"].as_str().unwrap_or(""))
            })
            .map(|m| m["used"].clone())
            .collect();
        (
            self.d.json(&["config"]).unwrap(),
            self.d.json(&["vip", "list"]).unwrap(),
            simulated,
            used,
        )
    }

    /// The backends that answered `n` new connections from client ports `first_port` on.
    fn answered(&self, n: u16, first_port: u16) -> BTreeSet<String> {
        self.spread(n, first_port).into_keys().collect()
    }

    fn sync(&self) -> Value {
        self.d.json(&["status"]).unwrap()["sync"].clone()
    }

    fn in_sync_metric(&self) -> f64 {
        let samples = scrape(&self.topo.lb.ns, METRICS).unwrap();
        let s = samples.iter().find(|s| s.name == "xdplb_maps_in_sync");
        s.expect("xdplb_maps_in_sync is exported").value
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.plan);
    }
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_write_failing_mid_change_is_rolled_back() {
    let e = Env::new();
    let before = e.view();
    assert_eq!(e.answered(20, 41000), names(&["b1", "b2"]));

    // backend add: the new id's counters zeroed, its entry written, then the ring fails.
    e.plan("fail 2 1");
    let err = e.refused(&["backend", "add", &e.vip(), &e.b(2)]);
    assert!(
        err.contains("injected test failure") && err.contains("the change was rolled back"),
        "{err}"
    );
    assert_eq!(
        e.view(),
        before,
        "config, vip list, simulate, map counts as before"
    );
    assert_eq!(e.sync()["in_sync"], true);
    assert_eq!(e.in_sync_metric(), 1.0);
    assert_eq!(e.answered(20, 41100), names(&["b1", "b2"]));

    // vip del: the VIP entry's removal fails (the mirror had already let the VIP go).
    e.plan("fail 0 1");
    let err = e.refused(&["vip", "del", &e.vip()]);
    assert!(err.contains("the change was rolled back"), "{err}");
    assert_eq!(e.view(), before);
    assert_eq!(e.answered(20, 41200), names(&["b1", "b2"]));

    // Nothing was left half-done: the same change goes through once writes succeed.
    e.d.ok(&["backend", "add", &e.vip(), &e.b(2)]).unwrap();
    assert_eq!(e.answered(30, 41300), names(&["b1", "b2", "b3"]));
    assert_eq!(e.sync()["in_sync"], true);
}

#[test]
fn writes_that_keep_failing_show_out_of_sync_until_they_stop() {
    let e = Env::new();
    let before = e.view();
    e.plan("fail 2 1000000");
    let err = e.refused(&["backend", "add", &e.vip(), &e.b(2)]);
    assert!(
        err.contains("rolling it back failed too") && err.contains("out of sync"),
        "{err}"
    );
    let sync = e.sync();
    assert_eq!(sync["in_sync"], false, "{sync}");
    assert!(
        sync["error"]
            .as_str()
            .unwrap()
            .contains("injected test failure"),
        "{sync}"
    );
    let human = e.d.ok(&["status"]).unwrap();
    assert!(
        human.contains("maps: OUT OF SYNC with the running configuration"),
        "{human}"
    );
    assert_eq!(e.in_sync_metric(), 0.0);
    wait_for("two retries", Duration::from_secs(10), || {
        e.sync()["retries"].as_u64().unwrap() >= 2
    });
    // The running VIP goes on serving from what the maps hold.
    assert_eq!(e.answered(20, 42000), names(&["b1", "b2"]));

    e.plan("off");
    wait_for("the maps in sync", Duration::from_secs(10), || {
        e.sync()["in_sync"] == true
    });
    assert_eq!(e.sync()["error"], Value::Null);
    assert_eq!(e.in_sync_metric(), 1.0);
    assert!(e.d.ok(&["status"]).unwrap().contains("maps: in sync"));
    assert_eq!(
        e.view(),
        before,
        "config, vip list, simulate, map counts as before"
    );
    assert_eq!(e.answered(20, 42100), names(&["b1", "b2"]));
    e.d.ok(&["backend", "add", &e.vip(), &e.b(2)]).unwrap();
    assert_eq!(e.answered(30, 42200), names(&["b1", "b2", "b3"]));
}

#[test]
fn a_panic_mid_change_exits_and_a_new_daemon_adopts_the_maps() {
    let mut e = Env::new();
    let before = e.view();
    e.plan("panic 2");
    let err = e.refused(&["backend", "add", &e.vip(), &e.b(2)]);
    assert!(err.contains("internal error"), "{err}");
    let status = e.d.wait_exit(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(70), "crash-only exit:\n{}", e.d.log());
    assert!(e.d.log().contains("a panic interrupted a change"));

    // No daemon: the pinned program and maps go on balancing.
    assert_eq!(e.answered(20, 43000), names(&["b1", "b2"]));

    // What systemd would do: start it again; it adopts the maps and rewrites them.
    e.d.spawn().unwrap();
    assert_eq!(
        e.view(),
        before,
        "config, vip list, simulate, map counts as before"
    );
    assert_eq!(e.sync()["in_sync"], true);
    assert_eq!(e.answered(20, 43100), names(&["b1", "b2"]));
    e.d.ok(&["backend", "add", &e.vip(), &e.b(2)]).unwrap();
    assert_eq!(e.answered(30, 43200), names(&["b1", "b2", "b3"]));
}

#[test]
fn a_pin_that_cannot_be_removed_keeps_the_interface_attached_and_configured() {
    let e = Env::new();
    let pin = e.d.pin_path.join("link_eth0");
    assert!(
        pin.exists(),
        "the attachment is pinned at {}",
        pin.display()
    );
    // A mount point cannot be unlinked (EBUSY): mounted in the daemon's own mount namespace
    // (`ip netns exec` gave it one).
    let pid = e.d.json(&["status"]).unwrap()["daemon"]["pid"].to_string();
    let in_daemon_mounts = |args: &[&str]| {
        let ok = std::process::Command::new("nsenter")
            .args(["-t", &pid, "-m", "--"])
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "{args:?}");
    };
    let pin_str = pin.to_str().unwrap();
    in_daemon_mounts(&["mount", "--bind", "/dev/null", pin_str]);
    let out = e.d.cli(&["detach", "eth0"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    in_daemon_mounts(&["umount", pin_str]);
    assert!(!out.status.success(), "detach reported success");
    assert!(
        err.contains("removing the pin") && err.contains("stays attached"),
        "{err}"
    );
    let config = e.d.json(&["config"]).unwrap();
    assert_eq!(config["interface"][0]["name"], "eth0", "{config}");
    assert_eq!(e.answered(20, 44000), names(&["b1", "b2"]));
    // Once the pin can go, detaching works and nothing is balanced any more.
    e.d.ok(&["detach", "eth0"]).unwrap();
    assert!(!pin.exists());
    assert_eq!(e.d.json(&["config"]).unwrap()["interface"], Value::Null);
}
