//! A cluster of xdplb nodes behind an ECMP router speaking BGP (BIRD 2), in namespaces:
//!
//! ```text
//!   client 10.97.1.2 -- eth0 router eth1 10.97.0.1 --+-- bridge in "net"
//!                        BIRD, AS 65000, ECMP       +-- lb1 10.97.0.2  xdplb + BIRD, AS 65001
//!                        L4 multipath hash          +-- lb2 10.97.0.3  xdplb + BIRD, AS 65001
//!                                                   +-- b1..b3 10.97.0.11-13 (VIP on lo)
//! ```
//!
//! Each node's BIRD imports the xdplb announcement table (4200) and announces it to the router;
//! the router installs one multipath route for the VIP. L2 mode: backends answer the client
//! directly through the router. Namespaces, BIRD processes and daemons are removed on drop,
//! also when a test fails; BIRD is ended by its pid, never by name.

use std::{
    net::IpAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lb_userspace::datapath::{AttachMode, DataPath, LoadOptions};

use crate::{
    daemon::Daemon,
    netns::{unique_prefix, veth, Netns},
};

pub const VIP: &str = "10.97.9.100";
pub const PORT: u16 = 8080;
pub const TABLE: u32 = 4200;
pub const ROUTER: &str = "10.97.0.1";
pub const BACKENDS: [&str; 3] = ["10.97.0.11", "10.97.0.12", "10.97.0.13"];

/// A BIRD 2 process in a namespace, ended (SIGTERM, then SIGKILL) by its pid on drop.
pub struct Bird {
    child: Option<Child>,
    pub socket: PathBuf,
    pub dir: PathBuf,
}

impl Bird {
    pub fn start(ns: &Netns, name: &str, config: &str) -> Result<Bird> {
        if Command::new("bird").arg("--version").output().is_err() {
            bail!("BIRD 2 (`bird`) is not installed; run scripts/setup.sh (it installs the Debian package bird2)");
        }
        let dir = std::env::temp_dir().join(format!("xdplb-bird-{}-{name}", unique_prefix()));
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("bird.conf");
        std::fs::write(&conf, config)?;
        let socket = dir.join("bird.ctl");
        let log = std::fs::File::create(dir.join("bird.log"))?;
        // -f: stays in the foreground, so the child's pid is BIRD's (ip netns exec execs it).
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "bird", "-f", "-c"])
            .arg(&conf)
            .arg("-s")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting bird")?;
        let mut bird = Bird {
            child: Some(child),
            socket,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while bird.cli(&["show", "status"]).is_err() {
            if let Some(status) = bird.child.as_mut().unwrap().try_wait()? {
                bail!("bird {name} exited ({status}): {}", bird.log());
            }
            if Instant::now() > deadline {
                bail!("bird {name} did not answer within 10 s: {}", bird.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(bird)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("bird.log")).unwrap_or_default()
    }

    /// `birdc -s SOCKET ARGS...`
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("birdc {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// SIGKILL: the node's routing daemon dies (its TCP sessions close).
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// BFD and short BGP timers on both sides: a silent node is declared dead in ~300 ms, a
/// node whose BIRD exits is noticed at once (its TCP session closes).
const TIMERS: &str = "hold time 3; keepalive time 1; connect retry time 1; bfd on;";
const BFD: &str = "protocol bfd { interface \"*\" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }; }";

/// The router: learns the VIP from both nodes and installs one route with both next hops.
pub fn router_bird_conf(nodes: &[&str]) -> String {
    let peers: String = nodes
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            format!(
                "protocol bgp lb{} from lbnode {{ neighbor {addr} as 65001; }}\n",
                i + 1
            )
        })
        .collect();
    format!(
        "router id {ROUTER};\n\
         protocol device {{ scan time 10; }}\n\
         # merge paths: equal BGP routes from several nodes become one ECMP kernel route.\n\
         protocol kernel {{ ipv4 {{ import none; export all; }}; merge paths on; }}\n\
         {BFD}\n\
         template bgp lbnode {{ local {ROUTER} as 65000; {TIMERS} ipv4 {{ import all; export none; }}; }}\n\
         {peers}"
    )
}

/// A node: imports xdplb's table (only routes with xdplb's protocol number) and announces it.
pub fn node_bird_conf(addr: &str) -> String {
    format!(
        "router id {addr};\n\
         protocol device {{ scan time 10; }}\n\
         protocol kernel xdplb_vips {{ ipv4 {{ import where krt_source = 201; export none; }}; kernel table {TABLE}; learn; scan time 2; }}\n\
         {BFD}\n\
         protocol bgp upstream {{ local {addr} as 65001; neighbor {ROUTER} as 65000; {TIMERS} ipv4 {{ import none; export where proto = \"xdplb_vips\"; next hop self; }}; }}\n"
    )
}

/// The xdplb configuration every node runs (identical on both: same seed, same backends).
pub fn node_config(seed: u32, health: bool) -> String {
    let check = if health {
        "health = { kind = \"tcp\", interval_ms = 200, timeout_ms = 200, rise = 2, fall = 3 }\n"
    } else {
        ""
    };
    let backends: String = BACKENDS
        .iter()
        .map(|b| format!("[[vip.backend]]\naddr = \"{b}\"\n"))
        .collect();
    format!(
        "[maglev]\nseed = {seed}\n\n[announce]\ntable = {TABLE}\n\n[[interface]]\nname = \"eth0\"\nxdp_mode = \"native\"\n\n[[vip]]\naddr = \"{VIP}:{PORT}/tcp\"\nmode = \"l2\"\n{check}{backends}"
    )
}

pub struct Node {
    pub name: String,
    pub addr: String,
    pub daemon: Option<Daemon>,
    pub bird: Option<Bird>,
    pub ns: Netns,
}

pub struct Cluster {
    pub client: Netns,
    pub nodes: Vec<Node>,
    pub backends: Vec<Netns>,
    /// Pass program on the bridge ports facing the nodes (XDP_TX into a veth needs one).
    _pass: DataPath,
    pub router_bird: Option<Bird>,
    pub router: Netns,
    /// Last: dropping it removes the bridge after the hosts.
    pub net: Netns,
}

/// Namespace `<prefix>-<role>` with eth0 (`addr/24`) whose peer `peer` joins br0 in `net`.
fn on_bridge(prefix: &str, role: &str, peer: &str, net: &Netns, addr: &str) -> Result<Netns> {
    let ns = Netns::new(&format!("{prefix}-{role}"))?;
    veth(&ns, "eth0", net, peer)?;
    net.exec(&["ip", "link", "set", peer, "master", "br0", "up"])?;
    ns.exec(&["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
    ns.exec(&["ip", "link", "set", "eth0", "up"])?;
    Ok(ns)
}

impl Cluster {
    /// The namespaces and links; with `bgp`, BIRD on the router and on both nodes; daemons
    /// on both nodes with `node_config(seed, health)`.
    pub fn new(bgp: bool, seed: u32, health: bool) -> Result<Cluster> {
        let p = unique_prefix();
        let net = Netns::new(&format!("{p}-net"))?;
        net.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
        net.exec(&["ip", "link", "set", "br0", "up"])?;
        let router = on_bridge(&p, "rtr", &format!("{p}pr"), &net, ROUTER)?;
        let client = Netns::new(&format!("{p}-client"))?;
        veth(&client, "eth0", &router, "eth1")?;
        router.exec(&["ip", "addr", "add", "10.97.1.1/24", "dev", "eth1"])?;
        router.exec(&["ip", "link", "set", "eth1", "up"])?;
        for (k, v) in [
            ("net.ipv4.ip_forward", "1"),
            // ECMP over the nodes by the 5-tuple, as routers in front of L4 balancers do.
            ("net.ipv4.fib_multipath_hash_policy", "1"),
        ] {
            router.exec(&["sysctl", "-qw", &format!("{k}={v}")])?;
        }
        client.exec(&["ip", "addr", "add", "10.97.1.2/24", "dev", "eth0"])?;
        client.exec(&["ip", "link", "set", "eth0", "up"])?;
        client.exec(&["ip", "route", "add", "default", "via", "10.97.1.1"])?;
        // Frames that cross an XDP forwarder must carry complete checksums.
        client.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;

        let mut backends = Vec::new();
        for (i, addr) in BACKENDS.iter().enumerate() {
            let b = on_bridge(&p, &format!("b{}", i + 1), &format!("{p}pb{i}"), &net, addr)?;
            b.exec(&["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
            b.exec(&["ip", "route", "add", "default", "via", ROUTER])?;
            for (k, v) in [("arp_ignore", "1"), ("arp_announce", "2")] {
                for dev in ["all", "eth0"] {
                    b.exec(&["sysctl", "-qw", &format!("net.ipv4.conf.{dev}.{k}={v}")])?;
                }
            }
            backends.push(b);
        }
        let mut pass = DataPath::load(&LoadOptions::minimal())?;
        let mut nodes = Vec::new();
        for (i, addr) in ["10.97.0.2", "10.97.0.3"].into_iter().enumerate() {
            let name = format!("lb{}", i + 1);
            let port = format!("{p}pl{i}");
            let ns = on_bridge(&p, &name, &port, &net, addr)?;
            net.run(|| pass.attach_pass(&port, AttachMode::Native))??;
            nodes.push(Node {
                name,
                addr: addr.to_string(),
                daemon: None,
                bird: None,
                ns,
            });
        }
        let mut c = Cluster {
            client,
            nodes,
            backends,
            _pass: pass,
            router_bird: None,
            router,
            net,
        };
        if bgp {
            let addrs: Vec<&str> = c.nodes.iter().map(|n| n.addr.as_str()).collect();
            c.router_bird = Some(Bird::start(&c.router, "router", &router_bird_conf(&addrs))?);
            for n in &mut c.nodes {
                n.bird = Some(Bird::start(&n.ns, &n.name, &node_bird_conf(&n.addr))?);
            }
        }
        for n in &mut c.nodes {
            let dir = std::env::temp_dir().join(format!("xdplb-cfg-{}-{}", p, n.name));
            std::fs::create_dir_all(&dir)?;
            let path = dir.join("xdplb.toml");
            std::fs::write(&path, node_config(seed, health))?;
            let d = Daemon::start(&n.ns, &["--config", path.to_str().context("UTF-8 path")?]);
            let _ = std::fs::remove_dir_all(&dir);
            n.daemon = Some(d?);
        }
        Ok(c)
    }

    pub fn daemon(&self, i: usize) -> &Daemon {
        self.nodes[i].daemon.as_ref().expect("daemon running")
    }

    /// The router's next hops for the VIP (empty: no route).
    pub fn next_hops(&self) -> Result<Vec<IpAddr>> {
        let out = self.router.exec(&["ip", "-j", "route", "show", VIP])?;
        let routes: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_default();
        let mut hops = Vec::new();
        for r in &routes {
            if let Some(g) = r["gateway"].as_str() {
                hops.push(g.parse()?);
            }
            for nh in r["nexthops"].as_array().into_iter().flatten() {
                if let Some(g) = nh["gateway"].as_str() {
                    hops.push(g.parse()?);
                }
            }
        }
        hops.sort();
        Ok(hops)
    }

    /// Waits until the router's next hops for the VIP are exactly `want`; returns how long.
    pub fn await_next_hops(&self, want: &[&str], timeout: Duration) -> Result<Duration> {
        let mut want: Vec<IpAddr> = want.iter().map(|a| a.parse().unwrap()).collect();
        want.sort();
        let start = Instant::now();
        loop {
            let hops = self.next_hops()?;
            if hops == want {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                let birds: String = self
                    .nodes
                    .iter()
                    .filter_map(|n| n.bird.as_ref())
                    .chain(self.router_bird.as_ref())
                    .map(|b| b.cli(&["show", "protocols"]).unwrap_or_default())
                    .collect();
                bail!("the router's next hops for {VIP} are {hops:?}, not {want:?}, after {timeout:?}\n{birds}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// xdplb's routes in node `i`'s announcement table.
    pub fn announced(&self, i: usize) -> Result<String> {
        let t = TABLE.to_string();
        match self.nodes[i]
            .ns
            .exec(&["ip", "route", "show", "table", &t, "proto", "201"])
        {
            Ok(out) => Ok(out.trim().to_string()),
            // Never used yet: the kernel has no such table.
            Err(e) if e.to_string().contains("table does not exist") => Ok(String::new()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Daemons and BIRDs before their namespaces.
        for n in &mut self.nodes {
            n.daemon.take();
            n.bird.take();
        }
        self.router_bird.take();
    }
}
