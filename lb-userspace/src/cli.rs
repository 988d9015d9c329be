//! The `xdplb` command line: the daemon, and a client for every API request. Listings print
//! tables by default and the API's JSON with `--json` (schemas in docs/cli.md).

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{CommandFactory, Parser, Subcommand};
use serde_json::Value;

use crate::{
    api::{self, BackendChange, Request, DEFAULT_SOCKET},
    config::{CheckSpec, Config, XdpModeName},
    conn::{self, ConnCmd},
    daemon::{self, DaemonArgs},
    datapath::{pass_off, pass_on},
    model::{HashFields, Mode, VipAddr},
    trace::{self, TraceFilter},
};

/// `xdplb --version`: the crate version and the git revision it was built from.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("XDPLB_GIT_REV"), ")");

#[derive(Parser)]
#[command(
    name = "xdplb",
    version = VERSION,
    about = "XDP load balancer: the daemon and its control CLI",
    after_help = "Examples:\n  xdplb daemon --config /etc/xdplb/xdplb.toml\n  xdplb vip add 10.0.0.100:80/tcp --mode l2\n  xdplb backend add 10.0.0.100:80/tcp 10.0.1.1 --weight 2\n  xdplb stats --watch\n\nEvery command: docs/cli.md; running the daemon: docs/operations.md."
)]
pub struct Cli {
    /// Control socket of the daemon.
    #[arg(long, global = true, env = "XDPLB_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run the daemon (owns the data path; see --cleanup to remove everything it pinned).
    #[command(
        after_help = "Examples:\n  xdplb daemon --config /etc/xdplb/xdplb.toml --metrics 127.0.0.1:9100\n  xdplb daemon --cleanup      # stop balancing: remove the pins and the saved state"
    )]
    Daemon(DaemonArgs),
    /// Attach the load balancer to an interface.
    #[command(after_help = "Example:\n  xdplb attach eth0 --xdp-mode native")]
    Attach {
        iface: String,
        #[arg(long, value_enum, default_value_t = XdpModeName::Auto)]
        xdp_mode: XdpModeName,
    },
    /// Detach from an interface: its traffic is no longer balanced.
    #[command(after_help = "Example:\n  xdplb detach eth0")]
    Detach { iface: String },
    /// Put the pass-everything XDP program on a veth peer (no daemon needed; stays attached).
    #[command(
        after_help = "Examples:\n  xdplb pass veth1                       # the peer of the LB's veth, in this namespace\n  ip netns exec peer-ns xdplb pass veth1  # the peer in another namespace\n  xdplb pass veth1 --off\n\nWhy: docs/troubleshooting.md, \"veth test beds\"."
    )]
    Pass {
        iface: String,
        /// Remove it again (only xdplb's own pass program is removed).
        #[arg(long)]
        off: bool,
    },
    /// Manage VIPs.
    #[command(subcommand)]
    Vip(VipCmd),
    /// Manage the backends of a VIP.
    #[command(subcommand)]
    Backend(BackendCmd),
    /// The connection table: which backend each flow is on (`ipvsadm -Lnc`).
    #[command(subcommand)]
    Conn(ConnCmd),
    /// This node in a cluster behind ECMP: drain (withdraw its VIP announcements) and status.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Packets, bytes, new flows and rates per VIP and backend, and the verdict counters.
    #[command(
        after_help = "Examples:\n  xdplb stats\n  xdplb stats --watch\n  xdplb stats --json | jq '.verdicts'"
    )]
    Stats {
        #[arg(long)]
        json: bool,
        /// Refresh every second until Ctrl-C.
        #[arg(long, conflicts_with = "json")]
        watch: bool,
    },
    /// Program, interfaces, map fill levels and daemon health.
    #[command(after_help = "Example:\n  xdplb status --json")]
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Move the running state to a configuration file (TOML) with the fewest changes, and
    /// print them.
    #[command(
        after_help = "Examples:\n  xdplb apply -f /etc/xdplb/xdplb.toml --dry-run   # what would change\n  xdplb apply -f /etc/xdplb/xdplb.toml      # keys: docs/config.md"
    )]
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Check the file as applying it would, print the changes, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the running configuration (TOML, as `apply -f` takes it).
    #[command(after_help = "Example:\n  xdplb config > /etc/xdplb/xdplb.toml")]
    Config {
        #[arg(long)]
        json: bool,
    },
    /// Which backend a flow from SRC:SPORT to VIP gets, and whether it is in the connection table.
    #[command(
        after_help = "Examples:\n  xdplb simulate 192.0.2.7:40000 10.0.0.100:80/tcp\n  xdplb simulate [2001:db8::7]:40000 [2001:db8::100]:443/tcp --json"
    )]
    Simulate {
        /// Client address and port, e.g. 10.0.0.1:40000 or [2001:db8::1]:40000.
        src: SocketAddr,
        /// The VIP, e.g. 10.0.0.100:80/tcp (for an all-ports VIP, the port the client uses).
        vip: VipAddr,
        #[arg(long)]
        json: bool,
    },
    /// Log every verdict of the data path into the daemon's log (target xdplb::datapath), or
    /// stop (no reload).
    #[command(
        after_help = "Example:\n  xdplb debug on && journalctl -u xdplb -f | grep xdplb::datapath\n  xdplb debug off\n\nThe daemon's RUST_LOG filters the records, e.g. RUST_LOG=info,xdplb::datapath=off."
    )]
    Debug { state: OnOff },
    /// Show the data path's decisions live, one line per packet that matches the filter.
    #[command(
        after_help = "Examples:\n  xdplb trace --client 10.0.0.1 --count 10\n  xdplb trace --vip 10.0.0.100:80/tcp --verdict drop_no_backend\n  xdplb trace --backend 10.0.1.2 --json\n\nWalkthrough: docs/troubleshooting.md, \"Tracing a flow\"."
    )]
    Trace {
        #[command(flatten)]
        filter: TraceFilter,
        /// The daemon's JSON lines ({\"event\": ...}, {\"dropped\": ...}, {\"end\": ...}).
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script.
    #[command(after_help = "Example:\n  xdplb completions bash > /etc/bash_completion.d/xdplb")]
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    #[command(after_help = "Example:\n  xdplb man > /usr/local/share/man/man8/xdplb.8")]
    Man,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Subcommand)]
pub enum VipCmd {
    /// Add a VIP.
    #[command(
        after_help = "Examples:\n  xdplb vip add 10.0.0.100:80/tcp --mode l2\n  xdplb vip add [2001:db8::100]:443/tcp --mode l3 --hash src-ip\n  xdplb vip add 10.0.0.100:*/udp        # all ports"
    )]
    Add {
        vip: VipAddr,
        #[arg(long, default_value = "l2")]
        mode: Mode,
        #[arg(long, default_value = "5tuple")]
        hash: HashFields,
    },
    /// Delete a VIP and its backends.
    #[command(after_help = "Example:\n  xdplb vip del 10.0.0.100:80/tcp")]
    Del { vip: VipAddr },
    /// Change a VIP's health check (for every backend without a check of its own).
    #[command(
        after_help = "Examples:\n  xdplb vip set 10.0.0.100:80/tcp --check http:/healthz\n  xdplb vip set 10.0.0.100:80/tcp --check tcp:8081,interval_ms=500,fall=2\n  xdplb vip set 10.0.0.100:80/tcp --check none"
    )]
    Set {
        vip: VipAddr,
        /// KIND[:PORT][PATH][,KEY=VALUE...] (keys as in the config file), or none.
        #[arg(long, value_name = "KIND[:PORT][PATH][,KEY=VALUE...]|none")]
        check: CheckSpec,
    },
    /// List VIPs and their backends.
    #[command(after_help = "Example:\n  xdplb vip list --json")]
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum NodeCmd {
    /// Withdraw every VIP announcement; flows that still arrive are served (kept across restarts).
    #[command(
        after_help = "Example:\n  xdplb node drain && xdplb node status   # wait for the routers to move the flows, then stop\n\nNeeds [announce] in the configuration (docs/deploy-bgp.md)."
    )]
    Drain,
    /// Announce again every VIP address the node can serve.
    #[command(after_help = "Example:\n  xdplb node undrain")]
    Undrain,
    /// Drain state, Maglev seed, and whether (and why not) each VIP address is announced.
    #[command(after_help = "Example:\n  xdplb node status --json")]
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum BackendCmd {
    /// Add a backend (L2: its MAC is looked up in the neighbour table unless --mac is given).
    #[command(
        after_help = "Examples:\n  xdplb backend add 10.0.0.100:80/tcp 10.0.1.1\n  xdplb backend add 10.0.0.100:80/tcp 10.0.1.2 --weight 2 --mac 02:00:00:00:00:02\n  xdplb backend add 10.0.0.100:80/tcp 10.0.1.3 --check http:/healthz\n  xdplb backend add 10.0.0.200:443/tcp 10.0.2.1:8443     # L3 VIP, port rewrite"
    )]
    Add(BackendChange),
    /// Change a backend's weight, MAC, interface, (L3) port or health check.
    #[command(
        after_help = "Examples:\n  xdplb backend set 10.0.0.100:80/tcp 10.0.1.1 --weight 3\n  xdplb backend set 10.0.0.200:443/tcp 10.0.2.1:9443"
    )]
    Set(BackendChange),
    /// Remove a backend: its flows move to the others.
    #[command(after_help = "Example:\n  xdplb backend del 10.0.0.100:80/tcp 10.0.1.1")]
    Del { vip: VipAddr, addr: IpAddr },
    /// No new flows (existing flows stay); its weight is kept for `backend undrain`.
    #[command(
        after_help = "Example:\n  xdplb backend drain 10.0.0.100:80/tcp 10.0.1.1   # then watch its rate fall in `xdplb stats --watch`"
    )]
    Drain { vip: VipAddr, addr: IpAddr },
    /// End a drain: new flows again, with the weight it had.
    #[command(after_help = "Example:\n  xdplb backend undrain 10.0.0.100:80/tcp 10.0.1.1")]
    Undrain { vip: VipAddr, addr: IpAddr },
}

/// Runs a parsed command line; errors are sentences for the user.
pub fn run(cli: Cli) -> Result<(), String> {
    let s = cli.socket.as_path();
    match cli.cmd {
        Cmd::Daemon(args) => daemon::run(s, &args),
        Cmd::Attach { iface, xdp_mode } => {
            changed(api::call(s, &Request::Attach { iface, xdp_mode }))
        }
        Cmd::Detach { iface } => changed(api::call(s, &Request::Detach { iface })),
        Cmd::Pass { iface, off } => {
            let what = if off {
                pass_off(&iface)
            } else {
                pass_on(&iface)
            }?;
            println!("{what}");
            Ok(())
        }
        Cmd::Vip(VipCmd::Add { vip, mode, hash }) => {
            changed(api::call(s, &Request::VipAdd { vip, mode, hash }))
        }
        Cmd::Vip(VipCmd::Del { vip }) => changed(api::call(s, &Request::VipDel { vip })),
        Cmd::Vip(VipCmd::Set { vip, check }) => {
            changed(api::call(s, &Request::VipSet { vip, check }))
        }
        Cmd::Vip(VipCmd::List { json }) => show(api::call(s, &Request::VipList)?, json, print_vips),
        Cmd::Backend(BackendCmd::Add(b)) => changed(api::call(s, &Request::BackendAdd(b))),
        Cmd::Backend(BackendCmd::Set(b)) => changed(api::call(s, &Request::BackendSet(b))),
        Cmd::Backend(BackendCmd::Del { vip, addr }) => {
            changed(api::call(s, &Request::BackendDel { vip, addr }))
        }
        Cmd::Backend(BackendCmd::Drain { vip, addr }) => {
            changed(api::call(s, &Request::BackendDrain { vip, addr }))
        }
        Cmd::Backend(BackendCmd::Undrain { vip, addr }) => {
            changed(api::call(s, &Request::BackendUndrain { vip, addr }))
        }
        Cmd::Conn(c) => conn::run(s, c),
        Cmd::Node(NodeCmd::Drain) => done(api::call(s, &Request::NodeDrain)),
        Cmd::Node(NodeCmd::Undrain) => done(api::call(s, &Request::NodeUndrain)),
        Cmd::Node(NodeCmd::Status { json }) => {
            show(api::call(s, &Request::NodeStatus)?, json, print_node)
        }
        Cmd::Stats { json, watch: false } => {
            show(api::call(s, &Request::Stats)?, json, print_stats)
        }
        Cmd::Stats { watch: true, .. } => watch(s),
        Cmd::Debug { state } => done(api::call(
            s,
            &Request::Debug {
                on: matches!(state, OnOff::On),
            },
        )),
        Cmd::Trace { filter, json } => trace::client::run(s, filter, json),
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "xdplb", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Man => clap_mangen::Man::new(Cli::command())
            .section("8")
            .render(&mut std::io::stdout())
            .map_err(|e| format!("writing the man page: {e}")),
        Cmd::Status { json } => show(api::call(s, &Request::Status)?, json, print_status),
        Cmd::Apply { file, dry_run } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("reading {}: {e}", file.display()))?;
            let config =
                Config::from_toml(&text).map_err(|e| format!("{}: {e}", file.display()))?;
            // Validated by the daemon, against its running limits.
            changed(
                api::call(s, &Request::Apply { config, dry_run })
                    .map_err(|e| format!("{}: {e}", file.display())),
            )
        }
        Cmd::Config { json } => {
            let data = api::call(s, &Request::Config)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&data).unwrap_or_default()
                );
            } else {
                let c: Config = serde_json::from_value(data)
                    .map_err(|e| format!("the daemon's configuration: {e}"))?;
                print!("{}", toml::to_string_pretty(&c).map_err(|e| e.to_string())?);
            }
            Ok(())
        }
        Cmd::Simulate { src, vip, json } => {
            let data = api::call(
                s,
                &Request::Simulate {
                    src: src.ip(),
                    sport: src.port(),
                    vip,
                },
            )?;
            show(data, json, print_simulate)
        }
    }
}

fn done(r: Result<Value, String>) -> Result<(), String> {
    r.map(|_| ())
}

/// Prints what a change request did (or, for a dry run, would do), one line each, and the
/// warnings it reports (a veth peer that drops frames, say) on stderr.
fn changed(r: Result<Value, String>) -> Result<(), String> {
    let data = r?;
    let lines: Vec<&str> = data["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["text"].as_str())
        .collect();
    if lines.is_empty() {
        println!("no change");
    }
    for line in lines {
        println!("{line}");
    }
    for w in data["warnings"].as_array().into_iter().flatten() {
        eprintln!("xdplb: warning: {}", text(w));
    }
    if data["dry_run"] == true {
        println!("(dry run: nothing was changed)");
    }
    Ok(())
}

/// Prints an answer as JSON, or for people with `human`.
pub(crate) fn show(data: Value, json: bool, human: fn(&Value)) -> Result<(), String> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&data).unwrap_or_default()
        );
    } else {
        human(&data);
    }
    Ok(())
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_vips(data: &Value) {
    println!(
        "{:<28} {:<4} {:<7} {:<26} {:>6} {:<9} {:<17}",
        "VIP", "MODE", "HASH", "BACKEND", "WEIGHT", "STATE", "MAC"
    );
    for v in data["vips"].as_array().into_iter().flatten() {
        let backends = v["backends"].as_array().cloned().unwrap_or_default();
        let head = format!(
            "{:<28} {:<4} {:<7}",
            text(&v["vip"]),
            text(&v["mode"]),
            text(&v["hash"])
        );
        if backends.is_empty() {
            println!("{head} (no backends)");
        }
        for (i, b) in backends.iter().enumerate() {
            let lead = if i == 0 {
                head.clone()
            } else {
                " ".repeat(head.len())
            };
            println!(
                "{lead} {:<26} {:>6} {:<9} {:<17}",
                backend_addr(b),
                text(&b["weight"]),
                text(&b["state"]),
                text(&b["mac"])
            );
        }
    }
}

/// ADDR, or ADDR:PORT for an L3 backend on its own port.
fn backend_addr(b: &Value) -> String {
    match (b["addr"].as_str(), b["port"].as_u64()) {
        (Some(a), Some(p)) if a.contains(':') => format!("[{a}]:{p}"),
        (Some(a), Some(p)) => format!("{a}:{p}"),
        _ => text(&b["addr"]),
    }
}

fn human_rate(v: f64, unit: &str) -> String {
    let (n, p) = match v {
        x if x >= 1e9 => (x / 1e9, "G"),
        x if x >= 1e6 => (x / 1e6, "M"),
        x if x >= 1e3 => (x / 1e3, "k"),
        x => (x, ""),
    };
    format!("{n:.1}{p}{unit}")
}

fn print_stats(data: &Value) {
    // Replies pass the LB only in L3 mode: in L2 the column would always read 0. (A daemon
    // that does not say a VIP's mode gets the column.)
    let replies = data["vips"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|v| v["mode"] != "l2");
    let reply_col = |s: String| {
        if replies {
            format!(" {s:>14}")
        } else {
            String::new()
        }
    };
    println!(
        "{:<32} {:>12} {:>14} {:>10}{} {:>10} {:>12}",
        "VIP / BACKEND",
        "PACKETS",
        "BYTES",
        "NEW FLOWS",
        reply_col("REPLY BYTES".into()),
        "RATE",
        "THROUGHPUT"
    );
    let row = |name: String, c: &Value| {
        println!(
            "{name:<32} {:>12} {:>14} {:>10}{} {:>10} {:>12}",
            text(&c["packets"]),
            text(&c["bytes"]),
            text(&c["new_flows"]),
            reply_col(text(&c["reply_bytes"])),
            human_rate(c["pps"].as_f64().unwrap_or(0.0), "pps"),
            human_rate(c["bps"].as_f64().unwrap_or(0.0), "bit/s"),
        )
    };
    for v in data["vips"].as_array().into_iter().flatten() {
        row(text(&v["vip"]), v);
        for b in v["backends"].as_array().into_iter().flatten() {
            row(format!("  {} ({})", text(&b["addr"]), text(&b["state"])), b);
        }
    }
    for section in ["verdicts", "events"] {
        let parts: Vec<String> = data[section]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, n)| n.as_u64() != Some(0))
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        println!(
            "{section}: {}",
            if parts.is_empty() {
                "none".into()
            } else {
                parts.join(" ")
            }
        );
    }
    if data["verdicts"]["pass_not_vip"].as_u64().unwrap_or(0) > 0 {
        // Not a symptom by itself: see docs/troubleshooting.md.
        println!("(pass_not_vip includes the LB's own traffic, health-check replies among it)");
    }
}

fn print_status(d: &Value) {
    let daemon = &d["daemon"];
    println!(
        "daemon: pid {} up {:.0} s, socket {}, pins {}, state {}",
        text(&daemon["pid"]),
        daemon["uptime_seconds"].as_f64().unwrap_or(0.0),
        text(&daemon["socket"]),
        text(&daemon["pin_path"]),
        text(&daemon["state_file"])
    );
    match daemon["metrics"].as_str() {
        Some(addr) => println!("metrics: http://{addr}/metrics"),
        None => println!("metrics: off (xdplb daemon --metrics ADDR, or [metrics] in the config)"),
    }
    println!(
        "program: {} ({} verified instructions, ring size {}, new flows recorded per CPU per second: {})",
        text(&d["program"]["name"]),
        text(&d["program"]["verified_insns"]),
        text(&d["program"]["ring_size"]),
        match d["program"]["record_limit"].as_u64() {
            Some(0) => "no limit".to_string(),
            _ => text(&d["program"]["record_limit"]),
        }
    );
    let p = &d["program"];
    if p["debug_logging"] == true || p["tracing"] == true {
        println!(
            "watching: debug logging {}, tracing {} ({} trace events dropped)",
            if p["debug_logging"] == true {
                "on"
            } else {
                "off"
            },
            if p["tracing"] == true { "on" } else { "off" },
            text(&p["trace_dropped"])
        );
    }
    for i in d["interfaces"].as_array().into_iter().flatten() {
        println!(
            "interface {}: {} mode{}",
            text(&i["name"]),
            text(&i["mode"]),
            if i["adopted"] == true {
                " (adopted from an earlier daemon)"
            } else {
                ""
            }
        );
        let peer = &i["veth_peer"];
        if let Some(p) = peer["problem"].as_str() {
            println!("  problem: {p}");
        } else if !peer.is_null() {
            println!(
                "  veth peer {}: {}",
                text(&peer["peer"]),
                match peer["takes_xdp_frames"].as_bool() {
                    Some(true) => "takes XDP frames",
                    Some(false) => "drops XDP frames (matters in native mode only)",
                    None => "in a namespace xdplb cannot inspect; whether it takes XDP frames is unknown",
                }
            );
        }
    }
    if d["interfaces"].as_array().is_none_or(|a| a.is_empty()) {
        println!("interfaces: none attached (xdplb attach IFACE)");
    }
    let up = &d["program"]["upgraded"];
    if !up.is_null() {
        println!(
            "maps: upgraded at start from layout {} to {}: {} ({} entries copied, {} old removed)",
            text(&up["from"]),
            text(&up["to"]),
            text(&up["what"]),
            text(&up["copied"]),
            text(&up["retired"])
        );
    }
    let sync = &d["sync"];
    match sync["in_sync"].as_bool() {
        Some(true) => println!("maps: in sync with the running configuration"),
        Some(false) => println!(
            "maps: OUT OF SYNC with the running configuration for {:.0} s, {} retries so far (one a second): {}",
            sync["out_of_sync_seconds"].as_f64().unwrap_or(0.0),
            text(&sync["retries"]),
            text(&sync["error"])
        ),
        None => {}
    }
    for m in d["maps"].as_array().into_iter().flatten() {
        let used = m["used"].as_f64().unwrap_or(0.0);
        let max = m["max"].as_f64().unwrap_or(1.0).max(1.0);
        println!(
            "map {:<16} {:>10} / {:<10} {:>5.1}%",
            text(&m["name"]),
            text(&m["used"]),
            text(&m["max"]),
            used * 100.0 / max
        );
    }
    let node = &d["node"];
    if !node["announce"].is_null() {
        let prefixes = node["prefixes"].as_array().cloned().unwrap_or_default();
        let announced = prefixes.iter().filter(|p| p["announced"] == true).count();
        println!(
            "node: {}, {announced} of {} VIP addresses announced in table {}{}",
            if node["drained"] == true {
                "drained"
            } else {
                "serving"
            },
            prefixes.len(),
            text(&node["announce"]["table"]),
            node["last_error"]
                .as_str()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        );
    }
    for h in d["health"].as_array().into_iter().flatten() {
        let s = &h["status"];
        println!(
            "health {} {}: {} ({} probes{})",
            text(&h["vip"]),
            text(&h["backend"]),
            if s["healthy"] == true { "up" } else { "down" },
            text(&s["probes"]),
            s["last_error"]
                .as_str()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        );
    }
}

fn print_node(n: &Value) {
    let announce = &n["announce"];
    let state = if n["drained"] == true {
        "drained"
    } else {
        "serving"
    };
    if announce.is_null() {
        println!("node: {state}, announcing nothing ([announce] is not configured)");
    } else {
        println!(
            "node: {state}, announcing in kernel table {} (route protocol {})",
            text(&announce["table"]),
            text(&announce["protocol"])
        );
    }
    println!("maglev seed: {}", text(&n["maglev_seed"]));
    if let Some(e) = n["last_error"].as_str() {
        println!("last error: {e}");
    }
    for p in n["prefixes"].as_array().into_iter().flatten() {
        let vips: Vec<String> = p["vips"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        println!(
            "{:<24} {:<13} {} ({})",
            text(&p["prefix"]),
            if p["announced"] == true {
                "announced"
            } else {
                "not announced"
            },
            text(&p["reason"]),
            vips.join(", ")
        );
    }
}

fn print_simulate(d: &Value) {
    println!(
        "flow {}:{} -> {} (dport {}): hash {:#010x}, ring slot {} -> backend {}",
        text(&d["src"]),
        text(&d["sport"]),
        text(&d["vip"]),
        text(&d["dport"]),
        d["hash"].as_u64().unwrap_or(0),
        text(&d["slot"]),
        text(&d["ring_backend"])
    );
    if d["conntrack_entry"] == true {
        println!(
            "connection table: entry, backend {}",
            text(&d["conntrack_backend"])
        );
    } else {
        println!("connection table: no entry (a new flow would take the ring's backend)");
    }
}

/// `stats --watch`: redraws every second; Ctrl-C ends it cleanly.
fn watch(socket: &Path) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let data = api::call(socket, &Request::Stats)?;
                    // Clear the screen and home the cursor, then redraw.
                    print!("\x1b[2J\x1b[H");
                    println!("xdplb stats (every 1 s, Ctrl-C to quit)\n");
                    print_stats(&data);
                }
                _ = tokio::signal::ctrl_c() => {
                    println!();
                    return Ok(());
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn every_command_has_an_example() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in cmd.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                if sub.has_subcommands() {
                    walk(sub, &path, missing);
                } else if !sub
                    .get_after_help()
                    .is_some_and(|h| h.to_string().contains("xdplb"))
                {
                    missing.push(path);
                }
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "xdplb", &mut missing);
        assert!(
            missing.is_empty(),
            "commands without an example in --help: {missing:?}"
        );
    }

    #[test]
    fn completions_man_page_and_version() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "xdplb", &mut out);
            let text = String::from_utf8(out).unwrap();
            assert!(
                text.contains("simulate") && text.contains("backend"),
                "{shell} completion"
            );
        }
        let mut man = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .section("8")
            .render(&mut man)
            .unwrap();
        assert!(String::from_utf8(man).unwrap().contains(".TH xdplb 8"));
        assert!(VERSION.starts_with(env!("CARGO_PKG_VERSION")) && VERSION.contains('('));
    }
}
