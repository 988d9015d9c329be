//! Resolving a backend's MAC address from the kernel's neighbour table (L2 mode), with an
//! ARP/NDP probe when the entry is missing. Runs in the daemon's network namespace.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use crate::model::Mac;

const WAIT: Duration = Duration::from_millis(1500);

/// The MAC of `addr`, probing for it if the neighbour table has no usable entry.
pub fn resolve(addr: IpAddr, dev: Option<&str>) -> Result<Mac, String> {
    if let Some(mac) = lookup(addr, dev)? {
        return Ok(mac);
    }
    probe(addr);
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        if let Some(mac) = lookup(addr, dev)? {
            return Ok(mac);
        }
    }
    Err(format!(
        "cannot resolve the MAC address of backend {addr}: no neighbour entry after an ARP/NDP probe; is it on a directly connected network? Give it with --mac"
    ))
}

/// Without waiting: the MAC if the neighbour table has it, else a probe so a later call may.
pub fn lookup_or_probe(addr: IpAddr, dev: Option<&str>) -> Result<Option<Mac>, String> {
    let found = lookup(addr, dev)?;
    if found.is_none() {
        probe(addr);
    }
    Ok(found)
}

/// A reachable (or stale, delay, probe, permanent) neighbour entry for `addr`.
pub fn lookup(addr: IpAddr, dev: Option<&str>) -> Result<Option<Mac>, String> {
    let addr_s = addr.to_string();
    let mut args = vec!["-j", "neigh", "show", "to", addr_s.as_str()];
    if let Some(d) = dev {
        args.extend(["dev", d]);
    }
    let out = Command::new("ip")
        .args(&args)
        .output()
        .map_err(|e| format!("running ip neigh: {e} (is iproute2 installed?)"))?;
    if !out.status.success() {
        return Err(format!(
            "ip neigh show to {addr}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    for e in entries {
        let unusable = e["state"]
            .as_array()
            .is_some_and(|s| s.iter().any(|st| st == "FAILED" || st == "INCOMPLETE"));
        if let (Some(mac), false) = (e["lladdr"].as_str(), unusable) {
            if let Ok(m) = mac.parse::<Mac>() {
                return Ok(Some(m));
            }
        }
    }
    Ok(None)
}

/// Makes the kernel resolve `addr`: a single datagram to the discard port.
fn probe(addr: IpAddr) {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse()
    } else {
        "[::]:0".parse()
    }
    .expect("literal");
    if let Ok(s) = UdpSocket::bind(bind) {
        let _ = s.send_to(b"", SocketAddr::new(addr, 9));
    }
}
