//! An `xdplb trace` process for tests: its JSON lines arrive on a channel (read by a thread),
//! and dropping it kills the process (by its pid) and reaps it.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc::{channel, Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::daemon::{xdplb_bin, Daemon};

pub struct Trace {
    child: Child,
    lines: Receiver<Value>,
}

impl Trace {
    /// `xdplb trace --json ARGS` against `d`.
    pub fn start(d: &Daemon, args: &[&str]) -> Result<Trace> {
        let mut child = Command::new(xdplb_bin()?)
            .arg("--socket")
            .arg(&d.socket)
            .args(["trace", "--json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting xdplb trace")?;
        let out = child.stdout.take().context("trace stdout")?;
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                let Ok(v) = serde_json::from_str::<Value>(&l) else {
                    break;
                };
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Ok(Trace { child, lines })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next `n` traced packets (`event` objects), waiting up to `timeout` in all.
    pub fn events(&self, n: usize, timeout: Duration) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    if let Some(e) = v.get("event") {
                        out.push(e.clone());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "{} of {n} traced packets within {timeout:?}: {out:?}",
                        out.len()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bail!(
                        "the trace ended after {} of {n} packets: {out:?}",
                        out.len()
                    )
                }
            }
        }
        Ok(out)
    }

    /// The next drop notice (`dropped` object), skipping events, waiting up to `timeout`.
    pub fn dropped(&self, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    if let Some(d) = v.get("dropped") {
                        return Ok(d.clone());
                    }
                }
                Err(e) => bail!("no drop notice within {timeout:?} ({e})"),
            }
        }
    }

    /// Every line still to come, until the process ends (at most `timeout`), and its status.
    pub fn finish(mut self, timeout: Duration) -> Result<(Vec<Value>, std::process::ExitStatus)> {
        let deadline = Instant::now() + timeout;
        let mut rest = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => rest.push(v),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => bail!("the trace still runs after {timeout:?}"),
            }
        }
        let status = self.child.wait()?;
        Ok((rest, status))
    }

    /// Stops the CLI as Ctrl-C would end it: killed, by its pid.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
