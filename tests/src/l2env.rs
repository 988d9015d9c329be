//! The L2 daemon tests' environment: the L2 topology with three backends each serving `bN` on
//! PORT (TCP, and UDP on the VIP), the pass program on the LB's bridge port, and the real daemon
//! in the LB namespace. Dropped in field order: the daemon first, the namespaces last.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use lb_userspace::datapath::DataPath;

use crate::{
    daemon::Daemon,
    peers::{hold, Conn, Server},
    topology::{L2Topology, VIP4},
};

/// The port every backend serves and the tests' VIPs use.
pub const PORT: u16 = 8080;

pub struct L2Env {
    pub d: Daemon,
    pub servers: Vec<Option<Server>>,
    _pass: DataPath,
    pub topo: L2Topology,
}

impl L2Env {
    /// Three backends; the daemon started with `extra` arguments.
    pub fn new(extra: &[&str]) -> L2Env {
        L2Env::with_backends(3, extra)
    }

    /// `n` backends; the daemon started with `extra` arguments.
    pub fn with_backends(n: usize, extra: &[&str]) -> L2Env {
        let topo = L2Topology::new(n).expect("topology");
        let pass = topo
            .attach_peer_pass()
            .expect("pass program on the bridge port");
        let servers = topo
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                Some(
                    Server::start(
                        &b.ns,
                        &format!("b{}", i + 1),
                        PORT,
                        &[VIP4.parse().unwrap()],
                    )
                    .unwrap(),
                )
            })
            .collect();
        let d = Daemon::start(&topo.lb.ns, extra).expect("start the daemon");
        L2Env {
            d,
            servers,
            _pass: pass,
            topo,
        }
    }

    pub fn vip(&self) -> String {
        format!("{VIP4}:{PORT}/tcp")
    }

    pub fn vip_udp(&self) -> String {
        format!("{VIP4}:{PORT}/udp")
    }

    pub fn b(&self, i: usize) -> String {
        self.topo.backends[i].ip4.to_string()
    }

    /// `n` new TCP connections; the count per backend name.
    pub fn spread(&self, n: u16, first_port: u16) -> BTreeMap<String, u32> {
        self.topo
            .spread(SocketAddr::new(VIP4.parse().unwrap(), PORT), n, first_port)
    }

    /// After backend `name` (address `addr`) failed: waits until health checks mark it down,
    /// checks that every held connection to another backend still reaches it, and that `n` new
    /// flows from `first_port` on avoid it.
    pub fn expect_failover(
        &self,
        held: &mut [(Conn, String)],
        name: &str,
        addr: &str,
        n: u16,
        first_port: u16,
    ) {
        wait_for(
            &format!("{name} to be marked down"),
            Duration::from_secs(15),
            || self.backend_state(addr) == "down",
        );
        for (c, owner) in held.iter_mut().filter(|(_, owner)| owner != name) {
            assert_eq!(
                c.ask().unwrap(),
                *owner,
                "a flow of a healthy backend moved when {name} failed"
            );
        }
        let c = self.spread(n, first_port);
        assert!(
            !c.contains_key(name) && c.values().sum::<u32>() == n as u32,
            "new flows after {name} failed: {c:?}"
        );
    }

    /// Applies a TOML configuration through `xdplb apply -f`.
    pub fn apply(&self, name: &str, toml: &str) {
        self.d.apply_text(name, toml).unwrap();
    }

    /// A second `xdplb daemon` on this test's pins, with its own socket and state file and
    /// `extra` arguments, run until it exits.
    pub fn other_daemon(&self, extra: &[&std::ffi::OsStr]) -> std::process::Output {
        std::process::Command::new(crate::daemon::xdplb_bin().unwrap())
            .arg("--socket")
            .arg(self.d.dir.join("other.sock"))
            .args(["daemon", "--pin-path"])
            .arg(&self.d.pin_path)
            .arg("--state-file")
            .arg(self.d.dir.join("other.json"))
            .args(extra)
            .output()
            .unwrap()
    }

    /// The TCP VIP on eth0 with the three backends and a fast health check of `kind`.
    pub fn apply_with_health(&self, kind: &str) {
        let backends: String = (0..3)
            .map(|i| format!("[[vip.backend]]\naddr = \"{}\"\n", self.b(i)))
            .collect();
        let check = format!(
            "{{ kind = \"{kind}\", interval_ms = 200, timeout_ms = 200, rise = 2, fall = 3 }}"
        );
        self.apply(&format!("{kind}.toml"), &format!("[[interface]]\nname = \"eth0\"\n\n[[vip]]\naddr = \"{}\"\nhealth = {check}\n{backends}", self.vip()));
    }

    /// `n` TCP connections to the VIP from `first_port` on, held open: (connection, backend).
    pub fn hold(&self, n: u16, first_port: u16) -> Vec<(Conn, String)> {
        let target = SocketAddr::new(VIP4.parse().unwrap(), PORT);
        self.topo
            .client
            .ns
            .run(|| hold(target, n, first_port))
            .unwrap()
            .unwrap()
    }

    pub fn backend_state(&self, addr: &str) -> String {
        let list = self.d.json(&["vip", "list"]).unwrap();
        list["vips"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["addr"] == addr)
            .map(|b| b["state"].as_str().unwrap().to_string())
            .unwrap()
    }
}

/// Percentage of `counts` that went to `name`.
pub fn share(counts: &BTreeMap<String, u32>, name: &str) -> f64 {
    let total: u32 = counts.values().sum();
    *counts.get(name).unwrap_or(&0) as f64 * 100.0 / total as f64
}

/// Waits until `cond` holds, failing the test after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
