//! Network namespaces for tests: created with `ip netns add`, removed on drop (also when the
//! test panics), and entered per thread with setns(2) so one test process can act in many.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context, Result};

/// Runs a command and fails with its stderr when it fails.
pub fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| {
            format!("running {args:?} (is iproute2 installed? run scripts/setup.sh)")
        })?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            args,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A veth pair: `dev` in `ns`, its peer `peer` in `peer_ns` (both down).
pub fn veth(ns: &Netns, dev: &str, peer_ns: &Netns, peer: &str) -> Result<()> {
    sh(&[
        "ip",
        "link",
        "add",
        dev,
        "netns",
        &ns.name,
        "type",
        "veth",
        "peer",
        "name",
        peer,
        "netns",
        &peer_ns.name,
    ])?;
    Ok(())
}

/// A prefix unique to this test run (process) and call: names stay below IFNAMSIZ.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("x{:x}{n}", std::process::id() % 0xffff)
}

/// A network namespace that is deleted when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Result<Netns> {
        sh(&["ip", "netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Moves the calling thread into the namespace (for the rest of the thread's life).
    pub fn enter(&self) -> Result<()> {
        let f = File::open(format!("/run/netns/{}", self.name))
            .with_context(|| format!("opening netns {}", self.name))?;
        // SAFETY: setns on a valid namespace fd; affects only this thread.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!(
                "setns into {}: {}",
                self.name,
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// Runs `f` on a new thread inside the namespace and returns its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| -> Result<T> {
                self.enter()?;
                Ok(f())
            })
            .join()
            .expect("thread in namespace panicked")
        })
    }

    /// A counter from /proc/net/snmp (e.g. ("Tcp", "InSegs"); TCP counts both families) or,
    /// for `Udp6`, from /proc/net/snmp6, of this namespace.
    pub fn snmp(&self, proto: &str, field: &str) -> Result<u64> {
        if proto == "Udp6" {
            let text = self.exec(&["cat", "/proc/net/snmp6"])?;
            let name = format!("Udp6{field}");
            let line = text
                .lines()
                .find(|l| l.split_whitespace().next() == Some(&name))
                .with_context(|| format!("no {name}"))?;
            return Ok(line
                .split_whitespace()
                .nth(1)
                .context("short snmp6 line")?
                .parse()?);
        }
        let text = self.exec(&["cat", "/proc/net/snmp"])?;
        let mut lines = text.lines().filter(|l| l.starts_with(&format!("{proto}:")));
        let (names, values) = (lines.next(), lines.next());
        let (Some(names), Some(values)) = (names, values) else {
            bail!("no {proto} section in /proc/net/snmp")
        };
        let idx = names
            .split_whitespace()
            .position(|n| n == field)
            .with_context(|| format!("no {proto} {field}"))?;
        Ok(values
            .split_whitespace()
            .nth(idx)
            .context("short snmp line")?
            .parse()?)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also deletes the veth ends inside it (and so their peers).
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
