//! A real Prometheus server (Debian's `prometheus` package, which scripts/setup.sh installs for
//! promtool) scraping one target on loopback every second, and its HTTP API, for tests that
//! need to know what Prometheus itself makes of the daemon's exposition.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::netns::unique_prefix;

/// Time Prometheus has to start and to scrape; both take about a second here.
const PATIENCE: Duration = Duration::from_secs(30);

/// The server; dropping it stops it and deletes its configuration and storage.
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port, scraping `target` (`/metrics`) every second.
    pub fn start(target: SocketAddr) -> Result<Prometheus> {
        let dir = std::env::temp_dir().join(format!("xdplb-prometheus-{}", unique_prefix()));
        std::fs::create_dir_all(&dir)?;
        let config = format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s}}\n\
             scrape_configs:\n  - job_name: xdplb\n    static_configs: [{{targets: ['{target}']}}]\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config)?;
        // A port the kernel just handed out and nobody holds; loopback only.
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let log = std::fs::File::create(dir.join("log"))?;
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("running prometheus (scripts/setup.sh installs Debian's prometheus)");
        let server = Prometheus {
            child: match child {
                Ok(child) => child,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(e);
                }
            },
            dir,
            addr,
        };
        server.wait("Prometheus ready", || Ok(server.get("/-/ready").is_ok()))?;
        Ok(server)
    }

    /// Waits until the target has been scraped `n` times, all of them successfully.
    pub fn wait_for_scrapes(&self, n: usize) -> Result<()> {
        self.wait(&format!("{n} successful scrapes"), || {
            let up = self.query("count_over_time(up[1m]) and min_over_time(up[1m]) == 1")?;
            let count = up.first().map(sample_value).transpose()?;
            Ok(count.is_some_and(|c| c >= n as f64))
        })
    }

    /// The series of an instant query (`data.result`).
    pub fn query(&self, expr: &str) -> Result<Vec<Value>> {
        let data = self.api(&format!("/api/v1/query?query={}", percent_encode(expr)))?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// `data` of a successful API answer, e.g. of `/api/v1/metadata`.
    pub fn api(&self, path: &str) -> Result<Value> {
        let answer: Value = serde_json::from_str(&self.get(path)?)?;
        if answer["status"] != "success" {
            bail!("{path}: {answer}");
        }
        Ok(answer["data"].clone())
    }

    /// The body of a 200 answer to GET `path`.
    fn get(&self, path: &str) -> Result<String> {
        let mut s = TcpStream::connect(self.addr)?;
        s.set_read_timeout(Some(PATIENCE))?;
        // HTTP/1.0: the answer is the whole rest of the stream, never chunked.
        write!(s, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr)?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        let (head, body) = reply.split_once("\r\n\r\n").context("an HTTP reply")?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
        }
        Ok(body.to_string())
    }

    fn wait(&self, what: &str, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
        let deadline = Instant::now() + PATIENCE;
        let mut last = Ok(false);
        while Instant::now() < deadline {
            last = done();
            if matches!(last, Ok(true)) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        bail!("no {what} within {PATIENCE:?} (last: {last:?}); its log:\n{log}")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value of one series of an instant vector (`"value": [time, "text"]`).
pub fn sample_value(series: &Value) -> Result<f64> {
    let text = series["value"][1].as_str().context("a sample value")?;
    Ok(text.parse()?)
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
