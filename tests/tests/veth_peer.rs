//! veth test beds with the real daemon and CLI (needs root): a native attachment to a veth
//! whose peer has no XDP program is reported by `attach`, `status` and the log; `xdplb pass`
//! on the peer (in its own namespace, no daemon) makes requests through the VIP answered and
//! stays after the command; `--off` undoes it; generic mode needs no peer program; and a daemon
//! under `ip netns exec` without a bpffs names the fix.

use std::{
    net::SocketAddr,
    process::{Command, Output},
};

use lb_tests::{
    daemon::{xdplb_bin, Daemon},
    peers::{tcp_once, udp_once, Server},
    topology::{L2Topology, VIP4},
};
use serde_json::Value;

const PORT: u16 = 8080;

/// `xdplb ARGS` run with `ip netns exec NS`, as an operator would on the peer's side.
fn xdplb_in(ns: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(xdplb_bin().unwrap())
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The LB's eth0 in `status --json`.
fn eth0(d: &Daemon) -> Value {
    let s = d.json(&["status"]).unwrap();
    s["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "eth0")
        .cloned()
        .expect("eth0 in status")
}

/// `n` TCP requests from the client: how many were answered.
fn answered(topo: &L2Topology, n: u16, first_port: u16) -> usize {
    let vip = SocketAddr::new(VIP4.parse().unwrap(), PORT);
    topo.client
        .ns
        .run(|| {
            (0..n)
                .filter(|i| tcp_once(vip, first_port + i).is_ok())
                .count()
        })
        .unwrap()
}

#[test]
fn a_peer_without_xdp_is_reported_and_xdplb_pass_fixes_it() {
    let topo = L2Topology::new(1).unwrap();
    let _server =
        Server::start(&topo.backends[0].ns, "b1", PORT, &[VIP4.parse().unwrap()]).unwrap();
    let d = Daemon::start(&topo.lb.ns, &[]).unwrap();
    let (net, port) = (topo.net.name.as_str(), topo.lb.port.as_str());
    let fix = format!("ip netns exec {net} xdplb pass {port}");

    // attach says it, in one sentence with the fix; so do status and the log.
    let out = d.cli(&["attach", "eth0", "--xdp-mode", "native"]).unwrap();
    assert!(out.status.success());
    let warning = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        warning.contains("has no XDP program in driver mode") && warning.contains(&fix),
        "attach warns with the fix: {warning}"
    );
    let i = eth0(&d);
    let peer = &i["veth_peer"];
    assert_eq!(peer["peer"], port);
    assert_eq!(peer["peer_netns"], net);
    assert_eq!(peer["takes_xdp_frames"], false);
    assert!(peer["problem"].as_str().unwrap().contains(&fix), "{peer}");
    assert!(d
        .ok(&["status"])
        .unwrap()
        .contains("problem: eth0 is a veth"));
    assert!(d.log().contains(&fix), "the log says it too");

    // The symptom: XDP_TX'd frames dropped, counted on the LB's side.
    let vip = format!("{VIP4}:{PORT}/tcp");
    let vip_udp = format!("{VIP4}:{PORT}/udp");
    let mac = topo.backends[0].mac.to_string();
    let b1 = topo.backends[0].ip4.to_string();
    for v in [&vip, &vip_udp] {
        d.ok(&["vip", "add", v, "--mode", "l2"]).unwrap();
        d.ok(&["backend", "add", v, &b1, "--mac", &mac]).unwrap();
    }
    let target = SocketAddr::new(VIP4.parse().unwrap(), PORT);
    let lost = topo.client.ns.run(|| udp_once(target, 41000)).unwrap();
    assert!(lost.is_err(), "no answer while the peer drops: {lost:?}");
    assert!(
        eth0(&d)["veth_peer"]["xdp_frames_dropped"]
            .as_u64()
            .unwrap()
            >= 1
    );

    // The fix, in the peer's namespace, with no daemon there; it outlives the command.
    let said = stdout(&xdplb_in(net, &["pass", port]));
    assert!(said.contains("xdplb_pass is attached"), "{said}");
    let peer = eth0(&d)["veth_peer"].clone();
    assert_eq!(peer["takes_xdp_frames"], true, "{peer}");
    assert_eq!(peer["peer_program"], "xdplb_pass");
    assert!(peer["problem"].is_null());
    assert_eq!(answered(&topo, 20, 42000), 20, "every request answered");
    let again = stdout(&xdplb_in(net, &["pass", port]));
    assert!(again.contains("nothing changed"), "{again}");

    // Undo: the drops are back, and reported again.
    let said = stdout(&xdplb_in(net, &["pass", port, "--off"]));
    assert!(said.contains("removed"), "{said}");
    assert_eq!(eth0(&d)["veth_peer"]["takes_xdp_frames"], false);
    let lost = topo.client.ns.run(|| udp_once(target, 43000)).unwrap();
    assert!(lost.is_err(), "dropped again after --off: {lost:?}");
    let none = stdout(&xdplb_in(net, &["pass", port, "--off"]));
    assert!(
        none.contains("has no XDP program; nothing changed"),
        "{none}"
    );

    // The alternative: generic mode needs no program on the peer, and nothing is reported.
    d.ok(&["detach", "eth0"]).unwrap();
    let out = d.cli(&["attach", "eth0", "--xdp-mode", "generic"]).unwrap();
    assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
    assert!(eth0(&d)["veth_peer"]["problem"].is_null());
    assert_eq!(answered(&topo, 10, 44000), 10, "generic mode delivers");
}

#[test]
fn xdplb_pass_refuses_what_it_does_not_own() {
    let topo = L2Topology::new(1).unwrap();
    let (net, port) = (topo.net.name.as_str(), topo.lb.port.as_str());
    // A pass program held by this process's bpf_link: not xdplb pass's to remove.
    let _held = topo.attach_peer_pass().unwrap();
    let o = xdplb_in(net, &["pass", port]);
    assert!(stdout(&o).contains("nothing changed"));
    let o = xdplb_in(net, &["pass", port, "--off"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("bpf_link"),
        "refused with a reason: {err}"
    );
    let o = xdplb_in(net, &["pass", "nosuch0"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("nosuch0"), "{err}");
}

#[test]
fn a_daemon_under_ip_netns_exec_without_bpffs_names_the_fix() {
    let topo = L2Topology::new(0).unwrap();
    let dir = std::env::temp_dir().join(format!("xdplb-nobpf-{}", std::process::id()));
    let sock = dir.join("s.sock");
    let state = dir.join("state.json");
    // The default pin path, under ip netns exec's fresh /sys.
    let o = xdplb_in(
        &topo.lb.ns.name,
        &[
            "--socket",
            sock.to_str().unwrap(),
            "daemon",
            "--state-file",
            state.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the daemon cannot start: {err}");
    for part in ["/sys/fs/bpf/xdplb", "mount -t bpf bpf", "--pin-path"] {
        assert!(err.contains(part), "error names {part:?}: {err}");
    }
    assert!(!state.exists() && !sock.exists(), "nothing was created");
    let _ = std::fs::remove_dir_all(&dir);
}
