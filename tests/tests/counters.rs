//! Traffic counters through a health-check down/up cycle with real traffic (needs root): the
//! failed backend's counters never go back (its data-path id is released while it is down,
//! and it gets a new one when it returns), also across a `kill -9` restart while it is down
//! and through a VIP mode change (every id released and handed out again in one sync);
//! the VIP's total stays the sum of its backends, in `stats --json` and in the Prometheus
//! scrape; no rate goes negative or above the VIP's. Ends with `xdplb daemon --cleanup`,
//! which leaves neither the state file nor its lock behind.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use lb_tests::{
    daemon::{scrape, Daemon},
    peers::Server,
    topology::{L2Topology, VIP4},
};
use serde_json::Value;

const PORT: u16 = 8080;
const METRICS: &str = "127.0.0.1:9464";

/// packets, bytes, new flows.
type Counts = [u64; 3];

/// Counts of the VIP (key "vip") and of each backend (by address).
type Snapshot = BTreeMap<String, Counts>;

struct Env {
    d: Daemon,
    servers: Vec<Option<Server>>,
    _pass: lb_userspace::datapath::DataPath,
    topo: L2Topology,
}

impl Env {
    fn new() -> Env {
        let topo = L2Topology::new(3).expect("topology");
        let pass = topo.attach_peer_pass().expect("pass program on the bridge");
        let servers = (0..3).map(|i| Some(Env::server(&topo, i))).collect();
        let d = Daemon::start(&topo.lb.ns, &["--metrics", METRICS]).expect("daemon");
        Env {
            d,
            servers,
            _pass: pass,
            topo,
        }
    }

    fn server(topo: &L2Topology, i: usize) -> Server {
        Server::start(&topo.backends[i].ns, &format!("b{}", i + 1), PORT, &[]).unwrap()
    }

    fn vip(&self) -> String {
        format!("{VIP4}:{PORT}/tcp")
    }

    fn b(&self, i: usize) -> String {
        self.topo.backends[i].ip4.to_string()
    }

    /// The VIP on eth0 in `mode` with the three backends and a fast HTTP health check.
    fn apply_mode(&self, mode: &str) {
        let backends: String = (0..3)
            .map(|i| format!("[[vip.backend]]\naddr = \"{}\"\n", self.b(i)))
            .collect();
        let check = "{ kind = \"http\", interval_ms = 200, timeout_ms = 200, rise = 2, fall = 3 }";
        let vip = self.vip();
        let toml = format!(
            "[[interface]]\nname = \"eth0\"\n\n[[vip]]\naddr = \"{vip}\"\nmode = \"{mode}\"\nhealth = {check}\n{backends}"
        );
        self.d.apply_text(&format!("{mode}.toml"), &toml).unwrap();
    }

    /// `n` connections from `first_port` on, one request each; the count per backend name.
    fn spread(&self, n: u16, first_port: u16) -> BTreeMap<String, u32> {
        self.topo
            .spread(SocketAddr::new(VIP4.parse().unwrap(), PORT), n, first_port)
    }

    fn wait_state(&self, addr: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let list = self.d.json(&["vip", "list"]).unwrap();
            let state = list["vips"][0]["backends"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["addr"] == addr)
                .map(|b| b["state"].clone());
            if state.as_ref().and_then(Value::as_str) == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{addr} is {state:?}, not {want}, after 15 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `stats --json` once the last connections' closing packets are counted (two reads
    /// 300 ms apart agree).
    fn settled_stats(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = self.d.json(&["stats"]).unwrap();
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = self.d.json(&["stats"]).unwrap();
            if from_stats(&now) == from_stats(&last) || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }

    /// Checks `stats --json` and the scrape against each other, against the invariant and
    /// against `prev` (nothing went back); returns the stats' counts.
    fn check(&self, phase: &str, prev: &Snapshot) -> Snapshot {
        let stats = self.settled_stats();
        let counts = from_stats(&stats);
        let scraped = from_metrics(&self.vip(), &scrape(&self.topo.lb.ns, METRICS).unwrap());
        for (source, s) in [("stats", &counts), ("metrics", &scraped)] {
            let sum = s
                .iter()
                .filter(|(k, _)| *k != "vip")
                .fold([0; 3], |acc, (_, c)| {
                    [acc[0] + c[0], acc[1] + c[1], acc[2] + c[2]]
                });
            assert_eq!(
                s["vip"], sum,
                "{phase}: VIP total = sum of backends ({source}): {s:?}"
            );
            for (k, was) in prev {
                let now = s[k];
                assert!(
                    (0..3).all(|i| now[i] >= was[i]),
                    "{phase}: {k}'s counters went back ({source}): {was:?} -> {now:?}"
                );
            }
        }
        // The scrape came after the stats: never behind them.
        for (k, c) in &counts {
            assert!(
                (0..3).all(|i| scraped[k][i] >= c[i]),
                "{phase}: {k}: metrics {:?} < stats {c:?}",
                scraped[k]
            );
        }
        let vip_pps = stats["vips"][0]["pps"].as_f64().unwrap();
        for b in stats["vips"][0]["backends"].as_array().unwrap() {
            let pps = b["pps"].as_f64().unwrap();
            // A carried count added at the wrong moment would show as a burst of its size.
            assert!(
                (0.0..=vip_pps + 5.0).contains(&pps),
                "{phase}: {} at {pps} pps, its VIP at {vip_pps}",
                b["addr"]
            );
        }
        counts
    }
}

fn from_stats(stats: &Value) -> Snapshot {
    let v = &stats["vips"][0];
    let three = |c: &Value| ["packets", "bytes", "new_flows"].map(|k| c[k].as_u64().unwrap());
    let mut s = BTreeMap::from([("vip".to_string(), three(v))]);
    for b in v["backends"].as_array().unwrap() {
        s.insert(b["addr"].as_str().unwrap().to_string(), three(b));
    }
    s
}

fn from_metrics(vip: &str, samples: &[lb_tests::exposition::Sample]) -> Snapshot {
    let mut s = Snapshot::new();
    for m in samples
        .iter()
        .filter(|m| m.labels.get("vip").map(String::as_str) == Some(vip))
    {
        let (key, family) = if let Some(f) = m.name.strip_prefix("xdplb_vip_") {
            ("vip".to_string(), f)
        } else if let Some(f) = m.name.strip_prefix("xdplb_backend_") {
            (m.labels["backend"].clone(), f)
        } else {
            continue;
        };
        let field = match family {
            "packets_total" => 0,
            "bytes_total" => 1,
            "new_flows_total" => 2,
            _ => continue,
        };
        s.entry(key).or_default()[field] = m.value as u64;
    }
    s
}

#[test]
fn counters_only_go_up_through_health_down_up_a_restart_and_a_mode_change() {
    let mut e = Env::new();
    e.apply_mode("l2");
    let b2 = e.b(1);

    let c = e.spread(60, 40000);
    assert!(c.contains_key("b2"), "{c:?}");
    let up = e.check("before", &Snapshot::new());
    assert!(up[&b2][0] > 0 && up[&b2][2] > 0, "{up:?}");

    // b2's server stops: health checks take it out, its id is released.
    e.servers[1] = None;
    e.wait_state(&b2, "down");
    let c = e.spread(30, 41000);
    assert!(!c.contains_key("b2"), "{c:?}");
    let down = e.check("down", &up);
    assert_eq!(down[&b2], up[&b2], "a down backend keeps what it counted");
    assert!(down["vip"][0] > up["vip"][0]);

    // A restart while it is down: the carried counts come back with the saved state.
    e.d.kill9().unwrap();
    e.d.spawn().unwrap();
    let restarted = e.check("restarted", &down);
    assert_eq!(restarted[&b2], up[&b2], "kept across a restart");

    // b2 returns with a new id, and counts on from where it was.
    e.servers[1] = Some(Env::server(&e.topo, 1));
    e.wait_state(&b2, "active");
    let c = e.spread(90, 42000);
    assert!(c.contains_key("b2"), "{c:?}");
    let back = e.check("back", &restarted);
    assert!(
        back[&b2][0] > up[&b2][0] && back[&b2][2] > up[&b2][2],
        "{back:?}"
    );
    println!(
        "b2 before / down / back: {:?} / {:?} / {:?}",
        up[&b2], down[&b2], back[&b2]
    );

    // A mode change re-places every flow: the VIP and its backends release their ids and take
    // new ones in the same sync, the very ids just released (read before they are zeroed).
    e.apply_mode("l3");
    let l3 = e.check("l3", &back);
    assert_eq!(l3, back, "nothing counted, nothing lost");
    e.apply_mode("l2");
    let l2 = e.check("l2 again", &l3);
    assert_eq!(l2, back);
    e.spread(30, 43000);
    let last = e.check("last", &l2);
    assert!(last["vip"][0] > l2["vip"][0]);

    // The human forms: no REPLY column for an L2-only daemon, pass_not_vip explained.
    let stats = e.d.ok(&["stats"]).unwrap();
    assert!(!stats.contains("REPLY"), "{stats}");
    assert!(stats.contains("health-check replies"), "{stats}");
    let status = e.d.ok(&["status"]).unwrap();
    assert!(
        status.contains(&format!("metrics: http://{METRICS}/metrics")),
        "{status}"
    );

    // --cleanup leaves nothing of the daemon's files.
    e.d.kill_and_detach().unwrap();
    let lock = e.d.state_file.with_file_name("state.json.lock");
    assert!(!e.d.state_file.exists(), "state file removed");
    assert!(!lock.exists(), "{} removed", lock.display());
}
