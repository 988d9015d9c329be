//! Running the real `xdplb` daemon in a test namespace and driving it with the real CLI.
//! Each harness has its own directory with its own bpffs mount (pins must be shared between
//! `ip netns exec` processes, which each get a fresh /sys), socket and state file; dropping it
//! stops the daemon, removes every pin (`xdplb daemon --cleanup`), unmounts and deletes.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    exposition::{self, Sample},
    netns::{sh, Netns},
};

/// The `xdplb` binary of this workspace (built by `cargo xtask test` before the tests run).
pub fn xdplb_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // Tests run from target/<profile>/deps/, binaries (the demo) from target/<profile>/.
    let dir = exe.parent().context("locating the target directory")?;
    let candidates = [
        dir.join("xdplb"),
        dir.parent().map(|d| d.join("xdplb")).unwrap_or_default(),
    ];
    match candidates.iter().find(|p| p.is_file()) {
        Some(bin) => Ok(bin.clone()),
        None => bail!(
            "{} is missing: build it first (cargo build --release --bins; cargo xtask test does)",
            candidates[0].display()
        ),
    }
}

/// An `xdplb` built from this tree with the previous map layout (lb-userspace feature
/// `layout-v1`), for the upgrade test: built on first use into `target/layout-v1`, apart from
/// the workspace's own build (minutes the first time, a no-op after).
pub fn layout_v1_bin() -> Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("locating the workspace")?
        .to_path_buf();
    let target = root.join("target/layout-v1");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "lb-userspace",
            "--bin",
            "xdplb",
            "--features",
            "layout-v1",
            "--target-dir",
        ])
        .arg(&target)
        .output()
        .context("running cargo to build the layout-1 xdplb")?;
    if !out.status.success() {
        bail!(
            "building the layout-1 xdplb failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(target.join("release/xdplb"))
}

/// A copy of the `xdplb` binary that any user can run, for tests that run the CLI as another
/// user: the build's own may sit where only root can enter (a clone under a 0700 `/root`).
/// Removed on drop.
pub struct SharedBin {
    dir: PathBuf,
    pub path: PathBuf,
}

impl SharedBin {
    pub fn new() -> Result<SharedBin> {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!(
            "xdplb-shared-bin-{}",
            crate::netns::unique_prefix()
        ));
        std::fs::create_dir_all(&dir)?;
        let shared = SharedBin {
            path: dir.join("xdplb"),
            dir,
        };
        std::fs::set_permissions(&shared.dir, std::fs::Permissions::from_mode(0o755))?;
        std::fs::copy(xdplb_bin()?, &shared.path)?;
        std::fs::set_permissions(&shared.path, std::fs::Permissions::from_mode(0o755))?;
        Ok(shared)
    }
}

impl Drop for SharedBin {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Daemon {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub pin_path: PathBuf,
    pub state_file: PathBuf,
    pub ns: String,
    extra: Vec<String>,
    child: Option<Child>,
    bin: PathBuf,
    mounted: bool,
}

impl Daemon {
    /// Starts `xdplb daemon` inside `ns` with `extra` arguments and waits until it answers.
    pub fn start(ns: &Netns, extra: &[&str]) -> Result<Daemon> {
        Daemon::start_bin(xdplb_bin()?, ns, extra)
    }

    /// `start` with another `xdplb` binary (`layout_v1_bin`).
    pub fn start_bin(bin: PathBuf, ns: &Netns, extra: &[&str]) -> Result<Daemon> {
        let dir =
            std::env::temp_dir().join(format!("xdplb-test-{}", crate::netns::unique_prefix()));
        // From here on, Drop removes whatever was created, also when a later step fails.
        let mut d = Daemon {
            socket: dir.join("xdplb.sock"),
            // In a directory of its own, so a test can put a small filesystem under it.
            state_file: dir.join("state/state.json"),
            pin_path: dir.join("bpf"),
            dir,
            ns: ns.name.clone(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            bin,
            mounted: false,
        };
        std::fs::create_dir_all(&d.pin_path)?;
        sh(&[
            "mount",
            "-t",
            "bpf",
            "bpf",
            d.pin_path.to_str().context("temp path is UTF-8")?,
        ])?;
        d.mounted = true;
        d.spawn()?;
        Ok(d)
    }

    /// (Re)starts the daemon process with the same directories.
    pub fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns])
            .arg(&self.bin)
            .arg("--socket")
            .arg(&self.socket)
            .arg("daemon")
            .arg("--pin-path")
            .arg(&self.pin_path)
            .arg("--state-file")
            .arg(&self.state_file)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(cmd.spawn().context("starting xdplb daemon")?);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.cli(&["status", "--json"])?.status.success() {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait()? {
                bail!(
                    "xdplb daemon exited ({status}) while starting:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                bail!("xdplb daemon did not answer within 30 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The binary the next `spawn` (and the CLI, and the final `--cleanup`) runs: an upgrade.
    pub fn set_bin(&mut self, bin: PathBuf) {
        self.bin = bin;
    }

    /// Runs `xdplb daemon` of `bin` once on this daemon's pins and state, with its own socket,
    /// and returns its output: for a start that must be refused (it exits at once).
    pub fn refused_start(&self, bin: &Path) -> Result<Output> {
        Ok(Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(bin)
            .arg("--socket")
            .arg(self.dir.join("refused.sock"))
            .args(["daemon", "--pin-path"])
            .arg(&self.pin_path)
            .arg("--state-file")
            .arg(&self.state_file)
            .args(&self.extra)
            .output()?)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// Runs the CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new(&self.bin)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()?)
    }

    /// Writes `toml` to `name` in the test's directory and applies it (`xdplb apply -f`).
    pub fn apply_text(&self, name: &str, toml: &str) -> Result<String> {
        let path = self.dir.join(name);
        std::fs::write(&path, toml)?;
        self.ok(&["apply", "-f", &path.to_string_lossy()])
    }

    /// Runs the CLI and fails with its stderr unless it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.cli(args)?;
        if !out.status.success() {
            bail!(
                "xdplb {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `--json` output of a listing command, parsed.
    pub fn json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut a = args.to_vec();
        a.push("--json");
        Ok(serde_json::from_str(&self.ok(&a)?)?)
    }

    /// SIGKILL: nothing of the daemon runs on exit.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// A node's end: `kill -9`, then `xdplb daemon --cleanup` (XDP detached, pins, state and
    /// announcement routes removed).
    pub fn kill_and_detach(&mut self) -> Result<()> {
        self.kill9()?;
        let out = self.cleanup(&[])?;
        if !out.status.success() {
            bail!(
                "xdplb daemon --cleanup: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// `xdplb daemon --cleanup` on this daemon's pins and state, in its namespace, with
    /// `extra` arguments; its output, whatever the outcome.
    pub fn cleanup(&self, extra: &[&str]) -> Result<Output> {
        Ok(Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(&self.bin)
            .args(["daemon", "--cleanup", "--pin-path"])
            .arg(&self.pin_path)
            .arg("--state-file")
            .arg(&self.state_file)
            .args(extra)
            .output()?)
    }

    /// Waits up to `timeout` for the daemon to exit on its own: its exit status (`ip netns
    /// exec` runs it in place, so the status is the daemon's).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let child = self.child.as_mut().context("the daemon is not running")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("the daemon still runs after {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM and wait: the daemon's orderly exit.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child process by its id.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    c.kill()?;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            c.wait()?;
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.stop();
        // In the daemon's namespace: --cleanup also removes its announcement routes. Without
        // the namespace (already deleted) there are no routes to remove, only pins.
        let mut cleanup = if Path::new("/run/netns").join(&self.ns).exists() {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &self.ns]).arg(&self.bin);
            c
        } else {
            Command::new(&self.bin)
        };
        let _ = cleanup
            .args(["daemon", "--cleanup", "--pin-path"])
            .arg(&self.pin_path)
            .arg("--state-file")
            .arg(&self.state_file)
            .output();
        if self.mounted {
            let _ = Command::new("umount").arg(&self.pin_path).output();
        }
        // A test may have mounted a filesystem over the state directory.
        if let Some(state_dir) = self.state_file.parent() {
            let _ = Command::new("umount").arg(state_dir).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The Prometheus samples a daemon in `ns` serves at `addr` (`--metrics ADDR`), in the text
/// format 0.0.4 (what a scraper that asks for nothing gets), checked to parse.
pub fn scrape(ns: &Netns, addr: &str) -> Result<Vec<Sample>> {
    let (_, body) = scrape_text(ns, addr, None)?;
    exposition::parse(&body).map_err(|e| anyhow::anyhow!("invalid Prometheus text: {e}"))
}

/// One plain HTTP GET of /metrics from inside `ns` (the daemon listens on that namespace's
/// loopback), with `accept` as the Accept header if given: the Content-Type and the body of a
/// 200 reply.
pub fn scrape_text(ns: &Netns, addr: &str, accept: Option<&str>) -> Result<(String, String)> {
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{accept}\r\n");
    let reply = ns.run(|| -> Result<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr)?;
        s.write_all(request.as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })??;
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .context("an HTTP reply with a body")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET /metrics answered {head}");
    }
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_string())
        })
        .context("a Content-Type header")?;
    Ok((content_type, body.to_string()))
}
