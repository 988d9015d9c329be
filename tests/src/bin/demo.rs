//! The xdplb demo, two scenarios in network namespaces, each with the real `xdplb daemon`
//! started with an embedded configuration and real HTTP traffic from a client:
//! - L2 (direct server return): one VIP, three HTTP backends weighted 1:2:1, HTTP health
//!   checks, and the `xdplb` CLI's own listings;
//! - L3 (NAT): the backends on their own subnet behind the LB, port rewrite, and a capture on
//!   the client showing every reply came from the VIP.
//!
//! Everything it creates is removed at the end, also on Ctrl-C.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use lb_tests::{
    capture::Capture,
    daemon::Daemon,
    peers::{http_download, http_get, serve_all},
    topology::{L2Topology, L3Topology, L3_VIP4, VIP4},
};

const PORT: u16 = 8080;
const REQUESTS: usize = 300;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

fn config(topo: &L2Topology) -> String {
    let mut c = format!(
        r#"# The demo's configuration (xdplb apply -f takes the same format).
[[interface]]
name = "eth0"
xdp_mode = "native"

[[vip]]
addr = "{VIP4}:{PORT}/tcp"
mode = "l2"
hash = "5tuple"
health = {{ kind = "http", path = "/", interval_ms = 500, timeout_ms = 200, rise = 2, fall = 2 }}
"#
    );
    for (b, weight) in topo.backends.iter().zip([1, 2, 1]) {
        // No MAC: the daemon resolves it from the neighbour table.
        c.push_str(&format!(
            "\n[[vip.backend]]\naddr = \"{}\"\nweight = {weight}\n",
            b.ip4
        ));
    }
    c
}

fn section(title: &str) {
    println!("\n== {title}");
}

fn main() -> Result<()> {
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let result = run();
    if INTERRUPTED.load(Ordering::Relaxed) {
        println!("\nInterrupted; everything the demo created has been removed.");
        return Ok(());
    }
    result
}

fn run() -> Result<()> {
    l2_scenario()?;
    check_interrupt()?;
    l3_scenario()
}

/// Starts the daemon in `ns` with `cfg` (printed), then shows `vip list`.
fn start_daemon(ns: &lb_tests::netns::Netns, cfg: &str) -> Result<Daemon> {
    print!("{cfg}");
    let cfg_path = std::env::temp_dir().join(format!("xdplb-demo-{}.toml", std::process::id()));
    std::fs::write(&cfg_path, cfg)?;
    let started = Daemon::start(ns, &["--config", cfg_path.to_str().context("temp path")?]);
    let _ = std::fs::remove_file(&cfg_path);
    let daemon = started?;
    println!("\n$ xdplb vip list");
    print!("{}", daemon.ok(&["vip", "list"])?);
    check_interrupt()?;
    Ok(daemon)
}

fn l3_config(topo: &L3Topology) -> String {
    let mut c = format!(
        "# L3 (NAT): xdplb on both LB interfaces; backends on port 8080 behind VIP port 80.\n[[interface]]\nname = \"eth0\"\nxdp_mode = \"native\"\n[[interface]]\nname = \"eth1\"\nxdp_mode = \"native\"\n\n[[vip]]\naddr = \"{L3_VIP4}:80/tcp\"\nmode = \"l3\"\n"
    );
    for b in &topo.backends {
        c.push_str(&format!(
            "\n[[vip.backend]]\naddr = \"{}\"\nport = {PORT}\n",
            b.ip4
        ));
    }
    c
}

/// The L3 scenario: the LB rewrites addresses (and the port) and sends replies back from the
/// VIP; a capture on the client shows it never hears a backend's address.
fn l3_scenario() -> Result<()> {
    section("L3 (NAT): client -- lb -- bridge with b1..b3 on their own subnet, replies routed via the lb");
    let topo = L3Topology::new(3)?;
    let _pass = topo.attach_peer_pass()?;
    let _servers = serve_all(topo.backends.iter().map(|h| &h.ns), PORT, &[])?;
    for (i, b) in topo.backends.iter().enumerate() {
        println!(
            "  b{}  {}  (HTTP server on :{PORT}, no VIP, default route via the lb)",
            i + 1,
            b.ip4
        );
    }
    let daemon = start_daemon(&topo.lb, &l3_config(&topo))?;

    section(&format!(
        "The client sends {REQUESTS} HTTP requests to http://{L3_VIP4}:80/ and a 1 MiB download"
    ));
    let capture = Capture::start(&topo.client.ns, "eth0")?;
    let target = SocketAddr::new(L3_VIP4.parse()?, 80);
    let names = topo.client.ns.run(|| {
        let names = (0..REQUESTS)
            .map(|_| http_get(target))
            .collect::<Result<Vec<_>>>()?;
        http_download(target, 1 << 20)?;
        Ok::<_, anyhow::Error>(names)
    })??;
    print_answers(names, "equal weights -> ideal 33.3% each");
    let seen = capture.finish()?;
    println!("\nSource addresses of the IP packets the client received:");
    for (addr, n) in &seen {
        println!("  {addr:<16} {n:>6} packets");
    }
    println!("\n$ xdplb stats");
    print!("{}", daemon.ok(&["stats"])?);
    section("Removing the daemon, its pins and the topology");
    Ok(())
}

fn print_answers(names: Vec<String>, ideal: &str) {
    let mut answered: BTreeMap<String, usize> = BTreeMap::new();
    let total = names.len();
    for n in names {
        *answered.entry(n).or_default() += 1;
    }
    println!("\nWhat the backends answered ({ideal}):");
    for (name, n) in &answered {
        println!(
            "  {name} answered {n:>3} requests ({:.1}%)",
            *n as f64 * 100.0 / total as f64
        );
    }
}

/// The L2 (direct server return) scenario with health checks and weights 1:2:1.
fn l2_scenario() -> Result<()> {
    section("L2 (DSR): client, lb and b1..b3 on a bridge, each in its own network namespace");
    let topo = L2Topology::new(3)?;
    let _pass = topo.attach_peer_pass()?;
    let _servers = serve_all(topo.backends.iter().map(|h| &h.ns), PORT, &[])?;
    for (i, b) in topo.backends.iter().enumerate() {
        println!(
            "  b{}  {}  {}  (HTTP server on :{PORT}, VIP on lo)",
            i + 1,
            b.ip4,
            b.mac
        );
    }
    check_interrupt()?;

    section("xdplb daemon, started in the lb namespace with this configuration");
    let daemon = start_daemon(&topo.lb.ns, &config(&topo))?;

    section(&format!(
        "The client sends {REQUESTS} HTTP requests to http://{VIP4}:{PORT}/ over about 3 s"
    ));
    let target = SocketAddr::new(VIP4.parse()?, PORT);
    let client = &topo.client.ns;
    let (names, live) = std::thread::scope(|s| -> Result<_> {
        let traffic = s.spawn(move || {
            client.run(|| {
                (0..REQUESTS)
                    .map(|_| {
                        std::thread::sleep(Duration::from_millis(10));
                        check_interrupt()?;
                        http_get(target)
                    })
                    .collect::<Result<Vec<_>>>()
            })
        });
        // Rates are sampled once a second: look while the traffic runs.
        std::thread::sleep(Duration::from_millis(2200));
        let live = daemon.ok(&["stats"]);
        Ok((traffic.join().expect("traffic thread")??, live?))
    })?;
    println!("\n$ xdplb stats        (while the requests run)");
    print!("{live}");
    print_answers(names, "weights 1:2:1 -> ideal 25% / 50% / 25%");
    println!("\n$ xdplb stats        (afterwards: per-backend packets match the shares above)");
    print!("{}", daemon.ok(&["stats"])?);
    println!("\n$ xdplb simulate 10.99.0.1:40000 {VIP4}:{PORT}/tcp");
    print!(
        "{}",
        daemon.ok(&["simulate", "10.99.0.1:40000", &format!("{VIP4}:{PORT}/tcp")])?
    );
    println!("\n$ xdplb status");
    print!("{}", daemon.ok(&["status"])?);

    section("Removing the daemon, its pins and the topology");
    Ok(())
}
