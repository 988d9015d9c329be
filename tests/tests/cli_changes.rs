//! Changes say what they did (needs root): the real daemon in the L2 topology, driven by the
//! real CLI. `apply --dry-run` lists the changes and changes nothing (configuration, listing,
//! ring and traffic), a real apply prints the same list; `backend drain` keeps the weight,
//! across a restart too, and `backend undrain` restores it; health checks set with `--check`
//! take a backend out and back; refused flags change nothing.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use lb_tests::{
    daemon::Daemon,
    l2env::wait_for,
    peers::Server,
    topology::{L2Topology, VIP4},
};
use serde_json::Value;

const PORT: u16 = 8080;

struct Env {
    d: Daemon,
    vip: String,
    _servers: Vec<Server>,
    _pass: lb_userspace::datapath::DataPath,
    topo: L2Topology,
}

impl Env {
    /// Three backends serving, the daemon running with nothing configured.
    fn new() -> Env {
        let topo = L2Topology::new(3).expect("topology");
        let pass = topo.attach_peer_pass().expect("pass program");
        let servers = (0..3)
            .map(|i| {
                Server::start(&topo.backends[i].ns, &format!("b{}", i + 1), PORT, &[]).unwrap()
            })
            .collect();
        let d = Daemon::start(&topo.lb.ns, &[]).expect("start the daemon");
        Env {
            d,
            vip: format!("{VIP4}:{PORT}/tcp"),
            _servers: servers,
            _pass: pass,
            topo,
        }
    }

    fn b(&self, i: usize) -> String {
        self.topo.backends[i].ip4.to_string()
    }

    /// Runs the CLI, which must succeed; its output lines.
    fn lines(&self, args: &[&str]) -> Vec<String> {
        self.d
            .ok(args)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Runs the CLI, which must fail; its error.
    fn refused(&self, args: &[&str]) -> String {
        let out = self.d.cli(args).unwrap();
        assert!(!out.status.success(), "xdplb {args:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Everything a change could alter: the configuration and the listing (ids, ring digest,
    /// weights, states).
    fn state(&self) -> (String, Value) {
        (
            self.d.ok(&["config"]).unwrap(),
            self.d.json(&["vip", "list"]).unwrap(),
        )
    }

    fn backend(&self, i: usize) -> Value {
        let list = self.d.json(&["vip", "list"]).unwrap();
        list["vips"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["addr"] == self.b(i))
            .unwrap()
            .clone()
    }

    /// `n` new TCP connections from `first_port` on: the count per backend name.
    fn spread(&self, n: u16, first_port: u16) -> BTreeMap<String, u32> {
        self.topo
            .spread(SocketAddr::new(VIP4.parse().unwrap(), PORT), n, first_port)
    }

    /// Backends the node counts as serving the VIP's address (`node status`).
    fn serving(&self) -> Value {
        self.d.json(&["node", "status"]).unwrap()["prefixes"][0]["serving_backends"].clone()
    }

    /// Writes a configuration file in the test's directory: its path.
    fn file(&self, name: &str, toml: &str) -> String {
        let p = self.d.dir.join(name);
        std::fs::write(&p, toml).unwrap();
        p.to_str().unwrap().to_string()
    }
}

#[test]
fn apply_dry_run_lists_the_changes_and_changes_nothing() {
    let e = Env::new();
    let vip = e.vip.clone();
    // Each change prints what it did.
    assert_eq!(
        e.lines(&["attach", "eth0", "--xdp-mode", "native"]),
        ["added interface eth0 (xdp_mode native)"]
    );
    assert_eq!(
        e.lines(&["vip", "add", &vip]),
        [format!("added VIP {vip} (mode l2, hash 5tuple)")]
    );
    for i in 0..2 {
        assert_eq!(
            e.lines(&["backend", "add", &vip, &e.b(i)]),
            [format!("added backend {vip} {} (weight 1)", e.b(i))]
        );
    }
    let next = e.file(
        "next.toml",
        &format!(
            "[[interface]]\nname = \"eth0\"\nxdp_mode = \"native\"\n\n[[vip]]\naddr = \"{vip}\"\nhealth = {{ kind = \"tcp\" }}\n\n[[vip.backend]]\naddr = \"{}\"\nweight = 3\n\n[[vip.backend]]\naddr = \"{}\"\n",
            e.b(0),
            e.b(2)
        ),
    );
    let want = [
        format!("changed VIP {vip}: check none -> tcp"),
        format!("removed backend {vip} {}", e.b(1)),
        format!("changed backend {vip} {}: weight 1 -> 3", e.b(0)),
        format!("added backend {vip} {} (weight 1)", e.b(2)),
    ];

    let before = e.state();
    let flows = e.spread(30, 30000);
    let mut dry = e.lines(&["apply", "-f", &next, "--dry-run"]);
    assert_eq!(dry.pop().as_deref(), Some("(dry run: nothing was changed)"));
    assert_eq!(dry, want);
    assert_eq!(e.state(), before, "a dry run changes nothing");
    let checks = e.d.json(&["status"]).unwrap()["health"].clone();
    assert_eq!(
        checks,
        serde_json::json!([]),
        "a dry run starts no health check"
    );
    // Nor the ring: new flows from the same ports go where they went (b3 is not in it).
    assert_eq!(e.spread(30, 30000), flows, "the ring is unchanged");

    // A dry run checks what a real apply would, the data path's checks included: a backend
    // behind an interface that does not exist is refused, naming it.
    let bad = e.file(
        "bad.toml",
        &format!(
            "[[vip]]\naddr = \"{vip}\"\n\n[[vip.backend]]\naddr = \"{}\"\nvia = \"nosuch1\"\n",
            e.b(0)
        ),
    );
    for args in [
        vec!["apply", "-f", &bad, "--dry-run"],
        vec!["apply", "-f", &bad],
    ] {
        let err = e.refused(&args);
        assert!(err.contains("interface nosuch1"), "{args:?}: {err}");
    }
    assert_eq!(e.state(), before, "refused applies change nothing");

    // The real apply prints the same list and does it; again, it has nothing to do.
    assert_eq!(e.lines(&["apply", "-f", &next]), want);
    assert_ne!(e.state(), before);
    let c = e.spread(60, 31000);
    assert!(c.contains_key("b3") && !c.contains_key("b2"), "{c:?}");
    assert_eq!(e.lines(&["apply", "-f", &next]), ["no change"]);
    assert_eq!(
        e.lines(&["apply", "-f", &next, "--dry-run"]),
        ["no change", "(dry run: nothing was changed)"]
    );

    // The API answers with the same changes, with their fields.
    let sock = e.d.socket.clone();
    let config: Value = e.d.json(&["config"]).unwrap();
    let mut edited = config.clone();
    edited["vip"][0]["backend"][0]["weight"] = 2.into();
    let data = lb_userspace::api::call(
        &sock,
        &serde_json::from_value(
            serde_json::json!({ "cmd": "apply", "config": edited, "dry_run": true }),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(data["dry_run"], true);
    assert_eq!(
        data["changes"][0],
        serde_json::json!({
            "action": "changed", "subject": format!("backend {vip} {}", e.b(0)),
            "field": "weight", "old": "3", "new": "2",
            "text": format!("changed backend {vip} {}: weight 3 -> 2", e.b(0)),
        })
    );
    assert_eq!(e.d.json(&["config"]).unwrap(), config);
}

#[test]
fn drain_keeps_the_weight_and_undrain_restores_it() {
    let mut e = Env::new();
    let vip = e.vip.clone();
    e.d.ok(&["attach", "eth0"]).unwrap();
    e.d.ok(&["vip", "add", &vip]).unwrap();
    e.d.ok(&["backend", "add", &vip, &e.b(0), "--weight", "2"])
        .unwrap();
    for i in 1..3 {
        e.d.ok(&["backend", "add", &vip, &e.b(i)]).unwrap();
    }
    let b1 = e.b(0);

    assert_eq!(
        e.lines(&["backend", "drain", &vip, &b1]),
        [format!("changed backend {vip} {b1}: drained no -> yes")]
    );
    let b = e.backend(0);
    assert_eq!(
        (&b["weight"], &b["drained"], &b["state"]),
        (&2.into(), &true.into(), &"draining".into())
    );
    let c = e.spread(40, 30000);
    assert!(
        !c.contains_key("b1"),
        "no new flow reaches a drained backend: {c:?}"
    );
    assert_eq!(e.lines(&["backend", "drain", &vip, &b1]), ["no change"]);
    // A drained backend does not count as serving for the VIP's announcement.
    assert_eq!(e.serving(), 2);

    // A new weight while drained is kept for the undrain; the backend stays drained.
    assert_eq!(
        e.lines(&["backend", "set", &vip, &b1, "--weight", "4"]),
        [format!("changed backend {vip} {b1}: weight 2 -> 4")]
    );
    assert_eq!(e.backend(0)["state"], "draining");

    // The drain survives a restart, and `config` output applies back unchanged.
    e.d.kill9().unwrap();
    e.d.spawn().unwrap();
    let b = e.backend(0);
    assert_eq!((&b["weight"], &b["drained"]), (&4.into(), &true.into()));
    let config = e.d.ok(&["config"]).unwrap();
    assert!(config.contains("drained = true"), "{config}");
    let saved = e.file("saved.toml", &config);
    assert_eq!(e.lines(&["apply", "-f", &saved]), ["no change"]);

    assert_eq!(
        e.lines(&["backend", "undrain", &vip, &b1]),
        [format!("changed backend {vip} {b1}: drained yes -> no")]
    );
    let b = e.backend(0);
    assert_eq!(
        (&b["weight"], &b["drained"], &b["state"]),
        (&4.into(), &false.into(), &"active".into())
    );
    // Weights 4:1:1: b1 takes about two thirds of the new flows again.
    let c = e.spread(120, 31000);
    let b1_share = c.get("b1").copied().unwrap_or(0);
    assert!(
        (60..=100).contains(&b1_share),
        "b1 has its weight back: {c:?}"
    );
    assert_eq!(e.lines(&["backend", "undrain", &vip, &b1]), ["no change"]);
    assert_eq!(e.serving(), 3);

    // Weight 0 (how configurations drained before) still drains, and has nothing to restore.
    e.d.ok(&["backend", "set", &vip, &e.b(1), "--weight", "0"])
        .unwrap();
    assert_eq!(e.backend(1)["state"], "draining");
    let before = e.state();
    let err = e.refused(&["backend", "undrain", &vip, &e.b(1)]);
    assert!(err.contains("no kept weight to restore"), "{err}");
    assert_eq!(e.state(), before);
}

#[test]
fn health_checks_are_set_from_the_cli() {
    let e = Env::new();
    let vip = e.vip.clone();
    let (b1, b2) = (e.b(0), e.b(1));
    e.d.ok(&["attach", "eth0"]).unwrap();
    e.d.ok(&["vip", "add", &vip]).unwrap();
    let check = "http:/healthz,interval_ms=200,timeout_ms=200,fall=2";
    assert_eq!(
        e.lines(&["backend", "add", &vip, &b1, "--check", check]),
        [format!(
            "added backend {vip} {b1} (weight 1, check {check})"
        )]
    );
    e.d.ok(&["backend", "add", &vip, &b2]).unwrap();
    let b = e.backend(0);
    assert_eq!(
        (&b["health_check"], &b["state"]),
        (&true.into(), &"active".into())
    );
    assert_eq!(e.backend(1)["health_check"], false);
    wait_for("b1's check to pass", Duration::from_secs(10), || {
        let s = e.d.json(&["status"]).unwrap();
        s["health"][0]["status"]["healthy"] == true
            && s["health"][0]["status"]["probes"].as_u64() > Some(1)
    });

    // The server answers 200; a check that wants 204 fails and takes b1 out of the ring.
    let strict = format!("{check},expect_status=204");
    assert_eq!(
        e.lines(&["backend", "set", &vip, &b1, "--check", &strict]),
        [format!(
            "changed backend {vip} {b1}: check {check} -> {strict}"
        )]
    );
    wait_for("b1 to be marked down", Duration::from_secs(10), || {
        e.backend(0)["state"] == "down"
    });
    let c = e.spread(30, 30000);
    assert_eq!(c.keys().collect::<Vec<_>>(), ["b2"], "{c:?}");
    // Back to a check it passes: it returns.
    e.d.ok(&["backend", "set", &vip, &b1, "--check", check])
        .unwrap();
    wait_for("b1 to be active again", Duration::from_secs(10), || {
        e.backend(0)["state"] == "active"
    });

    // Refused flags: a sentence naming the problem, nothing changed.
    let before = e.state();
    for (args, want) in [
        (
            vec!["backend", "set", &vip, &b2, "--check", "udp"],
            "kind \"udp\" is not tcp or http",
        ),
        (
            vec!["backend", "set", &vip, &b2, "--check", "http:/a,rise=0"],
            "rise 0 is out of range",
        ),
        (
            vec!["backend", "add", &vip, "10.99.0.77", "--check", "tcp:/x"],
            "a tcp check has no path",
        ),
        (
            vec!["vip", "set", &vip, "--check", "http:/a,timeout_ms=5000"],
            "timeout_ms 5000 is out of range",
        ),
        (
            vec!["vip", "set", "10.99.0.99:80/tcp", "--check", "tcp"],
            "no VIP 10.99.0.99:80/tcp",
        ),
    ] {
        let err = e.refused(&args);
        assert!(
            err.contains(want),
            "{args:?}: {err:?} does not say {want:?}"
        );
    }
    assert_eq!(e.state(), before, "refused flags change nothing");

    // The VIP-wide check covers b2; `none` removes checks again.
    assert_eq!(
        e.lines(&[
            "vip",
            "set",
            &vip,
            "--check",
            "tcp,interval_ms=200,timeout_ms=200"
        ]),
        [format!(
            "changed VIP {vip}: check none -> tcp,interval_ms=200,timeout_ms=200"
        )]
    );
    assert_eq!(e.backend(1)["health_check"], true);
    assert_eq!(
        e.d.json(&["status"]).unwrap()["health"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    e.d.ok(&["vip", "set", &vip, "--check", "none"]).unwrap();
    assert_eq!(
        e.lines(&["backend", "set", &vip, &b1, "--check", "none"]),
        [format!("changed backend {vip} {b1}: check {check} -> none")]
    );
    assert!(e.d.json(&["status"]).unwrap()["health"]
        .as_array()
        .unwrap()
        .is_empty());
    let config = e.d.ok(&["config"]).unwrap();
    assert!(!config.contains("health"), "{config}");
}
