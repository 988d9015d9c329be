//! The L3 namespace tests' environment: the L3 topology, pass programs on the LB's peers, the
//! backends' servers, and the real daemon on both LB interfaces with the test's VIPs applied.
//! Dropped in field order: the daemon first, the namespaces last.

use anyhow::Result;
use lb_userspace::datapath::DataPath;

use crate::{daemon::Daemon, peers::Server, topology::L3Topology};

/// Both LB interfaces, native XDP (the start of every L3 test configuration).
const INTERFACES: &str = "[[interface]]\nname = \"eth0\"\nxdp_mode = \"native\"\n[[interface]]\nname = \"eth1\"\nxdp_mode = \"native\"\n";

pub struct L3Env {
    pub d: Daemon,
    _servers: Vec<Server>,
    _pass: DataPath,
    pub topo: L3Topology,
}

impl L3Env {
    /// `backends` backends serving what `serve` starts, and the daemon configured with the
    /// `[[vip]]` sections `vips` writes for the topology.
    pub fn start(
        backends: usize,
        serve: impl FnOnce(&L3Topology) -> Result<Vec<Server>>,
        vips: impl FnOnce(&L3Topology) -> String,
    ) -> Result<L3Env> {
        Self::start_bin(crate::daemon::xdplb_bin()?, backends, serve, vips)
    }

    /// `start` with the daemon of another `xdplb` binary.
    pub fn start_bin(
        bin: std::path::PathBuf,
        backends: usize,
        serve: impl FnOnce(&L3Topology) -> Result<Vec<Server>>,
        vips: impl FnOnce(&L3Topology) -> String,
    ) -> Result<L3Env> {
        let topo = L3Topology::new(backends)?;
        let pass = topo.attach_peer_pass()?;
        let servers = serve(&topo)?;
        let d = Daemon::start_bin(bin, &topo.lb, &[])?;
        d.apply_text("l3.toml", &format!("{INTERFACES}{}", vips(&topo)))?;
        Ok(L3Env {
            d,
            _servers: servers,
            _pass: pass,
            topo,
        })
    }

    /// Every backend `bN` serving TCP on each of `ports`, and UDP on the first of them (on
    /// every address, so replies leave from the address asked).
    pub fn serve(topo: &L3Topology, ports: &[u16]) -> Result<Vec<Server>> {
        let mut servers = Vec::new();
        for (i, b) in topo.backends.iter().enumerate() {
            let name = format!("b{}", i + 1);
            for (n, port) in ports.iter().enumerate() {
                let udp = if n == 0 { vec!["::".parse()?] } else { vec![] };
                servers.push(Server::start(&b.ns, &name, *port, &udp)?);
            }
        }
        Ok(servers)
    }

    /// Runs `f` in the client's namespace.
    pub fn in_client<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.topo.client.ns.run(f).unwrap()
    }
}
