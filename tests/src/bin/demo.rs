//! The xdplb demo: an L2 (direct server return) topology in network namespaces, the real
//! `xdplb daemon` started with an embedded configuration (one VIP, three HTTP backends weighted
//! 1:2:1, HTTP health checks), real HTTP requests from a client, and the `xdplb` CLI's own
//! listings. Everything it creates is removed at the end, also on Ctrl-C.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use lb_tests::{
    daemon::Daemon,
    peers::{http_get, Server},
    topology::{L2Topology, VIP4},
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
    section("Topology: client, lb and b1..b3 on a bridge, each in its own network namespace");
    let topo = L2Topology::new(3)?;
    let _pass = topo.attach_peer_pass()?;
    let _servers = topo
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| Server::start(&b.ns, &format!("b{}", i + 1), PORT, &[]))
        .collect::<Result<Vec<_>>>()?;
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
    let cfg = config(&topo);
    print!("{cfg}");
    let cfg_path = std::env::temp_dir().join(format!("xdplb-demo-{}.toml", std::process::id()));
    std::fs::write(&cfg_path, &cfg)?;
    let started = Daemon::start(
        &topo.lb.ns,
        &["--config", cfg_path.to_str().context("temp path")?],
    );
    let _ = std::fs::remove_file(&cfg_path);
    let daemon = started?;
    println!("\n$ xdplb vip list");
    print!("{}", daemon.ok(&["vip", "list"])?);
    check_interrupt()?;

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
    let mut answered: BTreeMap<String, usize> = BTreeMap::new();
    for n in names {
        *answered.entry(n).or_default() += 1;
    }
    println!("\nWhat the backends answered (weights 1:2:1 -> ideal 25% / 50% / 25%):");
    for (name, n) in &answered {
        println!(
            "  {name} answered {n:>3} requests ({:.1}%)",
            *n as f64 * 100.0 / REQUESTS as f64
        );
    }
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
