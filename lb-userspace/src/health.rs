//! Active health checks of backends: TCP connects or HTTP GETs on a timer, one tokio task per
//! target, with rise/fall hysteresis so that one lost probe does not drain a backend.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    runtime::Handle,
    task::JoinHandle,
    time::{self, MissedTickBehavior},
};

const INTERVAL_MS: std::ops::RangeInclusive<u64> = 10..=3_600_000;
const RISE_FALL: std::ops::RangeInclusive<u32> = 1..=100;
const STATUS_CODES: std::ops::RangeInclusive<u16> = 100..=599;
/// Longest status line read; a real one is a few dozen bytes.
const MAX_STATUS_LINE: u64 = 1024;

/// One health check configuration (deserialized from the daemon's TOML config and JSON API).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub kind: CheckKind,
    /// None: the caller substitutes the VIP's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Request path (http only).
    #[serde(default = "default_path")]
    pub path: String,
    /// Status code that counts as healthy (http only).
    #[serde(default = "default_expect")]
    pub expect_status: u16,
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Consecutive successes that bring an unhealthy target back.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures that take a healthy target down.
    #[serde(default = "default_fall")]
    pub fall: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    Tcp,
    Http,
}

fn default_path() -> String {
    "/".to_string()
}
fn default_expect() -> u16 {
    200
}
fn default_interval() -> u64 {
    1000
}
fn default_timeout() -> u64 {
    500
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

impl HealthCheck {
    /// A TCP check with all defaults.
    pub fn tcp() -> Self {
        HealthCheck {
            kind: CheckKind::Tcp,
            port: None,
            path: default_path(),
            expect_status: default_expect(),
            interval_ms: default_interval(),
            timeout_ms: default_timeout(),
            rise: default_rise(),
            fall: default_fall(),
        }
    }

    /// Refuses bad settings with one sentence naming the field, the value and what is accepted.
    /// The http-only fields are checked for tcp checks too: a bad value there is a config mistake.
    pub fn validate(&self) -> Result<(), String> {
        if !INTERVAL_MS.contains(&self.interval_ms) {
            return Err(format!(
                "interval_ms {} is out of range; use {} to {}",
                self.interval_ms,
                INTERVAL_MS.start(),
                INTERVAL_MS.end()
            ));
        }
        if self.timeout_ms < 1 || self.timeout_ms > self.interval_ms {
            return Err(format!(
                "timeout_ms {} is out of range; use 1 to interval_ms ({})",
                self.timeout_ms, self.interval_ms
            ));
        }
        for (name, value) in [("rise", self.rise), ("fall", self.fall)] {
            if !RISE_FALL.contains(&value) {
                return Err(format!(
                    "{name} {value} is out of range; use {} to {}",
                    RISE_FALL.start(),
                    RISE_FALL.end()
                ));
            }
        }
        if !self.path.starts_with('/')
            || self
                .path
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "path {:?} must start with '/' and contain no whitespace or control characters",
                self.path
            ));
        }
        if !STATUS_CODES.contains(&self.expect_status) {
            return Err(format!(
                "expect_status {} is not an HTTP status code; use {} to {}",
                self.expect_status,
                STATUS_CODES.start(),
                STATUS_CODES.end()
            ));
        }
        if self.port == Some(0) {
            return Err(
                "port 0 is not a usable port; use 1 to 65535, or leave it out for the VIP's port"
                    .to_string(),
            );
        }
        Ok(())
    }
}

/// One probe against `target` (the caller has already resolved `check.port`), bounded by the
/// check's timeout. tcp: a TCP connect succeeds. http: a GET whose status code equals
/// `expect_status`. Errors are short human sentences.
pub async fn probe(check: &HealthCheck, target: SocketAddr) -> Result<(), String> {
    let limit = Duration::from_millis(check.timeout_ms);
    match time::timeout(limit, attempt(check, target)).await {
        Ok(result) => result,
        Err(_) => Err(format!("timed out after {} ms", check.timeout_ms)),
    }
}

async fn attempt(check: &HealthCheck, target: SocketAddr) -> Result<(), String> {
    let mut stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect to {target}: {}", describe(&e)))?;
    if check.kind == CheckKind::Tcp {
        return Ok(());
    }
    stream
        .write_all(request(&check.path, target.ip()).as_bytes())
        .await
        .map_err(|e| format!("send request to {target}: {}", describe(&e)))?;
    let mut line = Vec::new();
    BufReader::new(stream.take(MAX_STATUS_LINE))
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("read response from {target}: {}", describe(&e)))?;
    let code = status_code(&line)?;
    if code == check.expect_status {
        Ok(())
    } else {
        Err(format!(
            "HTTP status {code}, expected {}",
            check.expect_status
        ))
    }
}

fn request(path: &str, ip: IpAddr) -> String {
    // An IPv6 literal needs brackets in Host (RFC 9110 uri-host).
    let host = match ip {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: xdplb-health\r\n\r\n"
    )
}

/// The code of a status line such as `HTTP/1.1 200 OK`.
fn status_code(line: &[u8]) -> Result<u16, String> {
    if line.is_empty() {
        return Err("connection closed before an HTTP status line".to_string());
    }
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end();
    let mut parts = text.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if version.starts_with("HTTP/") && code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()) {
        // Three ASCII digits always parse.
        return Ok(code.parse().unwrap_or_default());
    }
    let shown: String = text.chars().take(64).collect();
    Err(format!("malformed HTTP status line {shown:?}"))
}

/// "connection refused" rather than "Connection refused (os error 111)".
fn describe(e: &io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error ").next().unwrap_or_default();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => e.kind().to_string(),
    }
}

/// A target's health as its checker sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthStatus {
    pub healthy: bool,
    pub consecutive_ok: u32,
    pub consecutive_fail: u32,
    pub probes: u64,
    /// The most recent failure, kept after later successes so that the cause of a flap stays
    /// visible; `consecutive_fail > 0` says whether it is current.
    pub last_error: Option<String>,
}

impl HealthStatus {
    /// Optimistic start: traffic flows while the first probes run.
    fn new() -> Self {
        HealthStatus {
            healthy: true,
            consecutive_ok: 0,
            consecutive_fail: 0,
            probes: 0,
            last_error: None,
        }
    }

    /// Counts one probe result; returns the new state if it changed.
    fn record(&mut self, result: Result<(), String>, rise: u32, fall: u32) -> Option<bool> {
        self.probes += 1;
        match result {
            Ok(()) => {
                self.consecutive_ok = self.consecutive_ok.saturating_add(1);
                self.consecutive_fail = 0;
            }
            Err(e) => {
                self.consecutive_fail = self.consecutive_fail.saturating_add(1);
                self.consecutive_ok = 0;
                self.last_error = Some(e);
            }
        }
        // max(1): an unvalidated 0 behaves as 1 instead of flipping on every probe.
        let healthy = if self.healthy {
            self.consecutive_fail < fall.max(1)
        } else {
            self.consecutive_ok >= rise.max(1)
        };
        if healthy == self.healthy {
            return None;
        }
        self.healthy = healthy;
        Some(healthy)
    }
}

/// What a target's task shares with the checker.
struct Shared {
    status: HealthStatus,
    /// Set before the task is aborted, so that a probe finishing right then reports nothing.
    stopped: bool,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // Nothing panics while holding the lock, and the status stays consistent if it did.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

struct Target {
    addr: SocketAddr,
    check: HealthCheck,
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
}

impl Target {
    fn stop(self) {
        lock(&self.shared).stopped = true;
        self.task.abort();
    }
}

/// How log lines name a target (`backend 10.0.1.1 of VIP 10.0.0.100:80/tcp`).
pub trait TargetName {
    fn target_name(&self) -> String;
}

/// Runs one tokio task per target. `K` identifies a target for the caller.
pub struct Checker<K> {
    on_change: Arc<dyn Fn(K, bool) + Send + Sync>,
    targets: HashMap<K, Target>,
    runtime: Handle,
}

impl<K: Clone + Eq + std::hash::Hash + Send + Sync + TargetName + 'static> Checker<K> {
    /// `on_change(key, healthy)` is called from the checker's tasks on every state transition,
    /// with no checker lock held. It should not block: it runs on a runtime worker.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn new(on_change: Arc<dyn Fn(K, bool) + Send + Sync>) -> Self {
        Checker {
            on_change,
            targets: HashMap::new(),
            runtime: Handle::current(),
        }
    }

    /// Moves the set of checks to `targets` (for a key listed twice, the last entry wins).
    /// Targets whose address and check are unchanged keep running with their state; removed ones
    /// are stopped; new or changed ones start healthy with zero counters.
    ///
    /// A notification already past its last check when this runs may still arrive for a removed
    /// or replaced key; callers that need certainty can re-read `is_healthy`.
    pub fn set_targets(&mut self, targets: Vec<(K, SocketAddr, HealthCheck)>) {
        let wanted: HashMap<K, (SocketAddr, HealthCheck)> = targets
            .into_iter()
            .map(|(key, addr, check)| (key, (addr, check)))
            .collect();
        let mut old = std::mem::take(&mut self.targets);
        for (key, (addr, check)) in wanted {
            let target = match old.remove(&key) {
                Some(t) if t.addr == addr && t.check == check => t,
                previous => {
                    if let Some(t) = previous {
                        t.stop();
                    }
                    self.start(key.clone(), addr, check)
                }
            };
            self.targets.insert(key, target);
        }
        for (key, target) in old {
            log::debug!(
                "health: stopped checking {} ({})",
                key.target_name(),
                target.addr
            );
            target.stop();
        }
    }

    /// Current status of every target.
    pub fn status(&self) -> Vec<(K, HealthStatus)> {
        self.targets
            .iter()
            .map(|(key, t)| (key.clone(), lock(&t.shared).status.clone()))
            .collect()
    }

    /// Marks a target as failed (it was known to be down before, say by an earlier daemon):
    /// it must pass `rise` probes before it is reported up again.
    pub fn mark_down(&self, key: &K) {
        if let Some(t) = self.targets.get(key) {
            let mut shared = lock(&t.shared);
            shared.status.healthy = false;
            shared.status.consecutive_ok = 0;
        }
    }

    /// Whether `key` is healthy (true for unknown keys: no check means healthy).
    pub fn is_healthy(&self, key: &K) -> bool {
        self.targets
            .get(key)
            .is_none_or(|t| lock(&t.shared).status.healthy)
    }

    fn start(&self, key: K, addr: SocketAddr, check: HealthCheck) -> Target {
        if let Err(e) = check.validate() {
            let name = key.target_name();
            log::warn!("health: check of {name} ({addr}) runs despite a bad setting: {e}");
        }
        log::debug!(
            "health: checking {} ({addr}) every {} ms",
            key.target_name(),
            check.interval_ms
        );
        let shared = Arc::new(Mutex::new(Shared {
            status: HealthStatus::new(),
            stopped: false,
        }));
        let task = self.runtime.spawn(run(
            key,
            addr,
            check.clone(),
            shared.clone(),
            self.on_change.clone(),
        ));
        Target {
            addr,
            check,
            shared,
            task,
        }
    }
}

impl<K> Drop for Checker<K> {
    fn drop(&mut self) {
        for (_, target) in self.targets.drain() {
            target.stop();
        }
    }
}

/// One target's loop: probe every interval (the first right away) and report transitions.
async fn run<K: Clone + TargetName>(
    key: K,
    addr: SocketAddr,
    check: HealthCheck,
    shared: Arc<Mutex<Shared>>,
    on_change: Arc<dyn Fn(K, bool) + Send + Sync>,
) {
    // max(1): tokio's interval panics on zero.
    let mut ticks = time::interval(Duration::from_millis(check.interval_ms.max(1)));
    // After a stall, probe once and keep the pace rather than bursting to catch up.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let result = probe(&check, addr).await;
        let changed = {
            let mut shared = lock(&shared);
            if shared.stopped {
                return;
            }
            let changed = shared.status.record(result, check.rise, check.fall);
            changed.map(|_| shared.status.clone())
        };
        let Some(status) = changed else { continue };
        let name = key.target_name();
        if status.healthy {
            log::info!(
                "health: {name} ({addr}) is up after {} successful probes",
                status.consecutive_ok
            );
        } else {
            log::warn!(
                "health: {name} ({addr}) is down after {} failed probes: {}",
                status.consecutive_fail,
                status.last_error.as_deref().unwrap_or_default()
            );
        }
        on_change(key.clone(), status.healthy);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            atomic::{AtomicUsize, Ordering::SeqCst},
            OnceLock, Weak,
        },
        time::Instant,
    };

    use tokio::net::TcpListener;

    use super::*;

    impl TargetName for u32 {
        fn target_name(&self) -> String {
            format!("target {self}")
        }
    }

    fn http(interval_ms: u64, rise: u32, fall: u32) -> HealthCheck {
        HealthCheck {
            kind: CheckKind::Http,
            interval_ms,
            // Generous: the scripts count probes, and a loaded CI machine must not turn a
            // slow loopback answer into a failure.
            timeout_ms: 250,
            rise,
            fall,
            ..HealthCheck::tcp()
        }
    }

    fn fast_tcp() -> HealthCheck {
        HealthCheck {
            interval_ms: 20,
            timeout_ms: 250,
            ..HealthCheck::tcp()
        }
    }

    struct Server {
        addr: SocketAddr,
        /// Requests (http) or connections (tcp) seen so far.
        hits: Arc<AtomicUsize>,
        requests: Arc<Mutex<Vec<String>>>,
    }

    /// An HTTP server on loopback: request n (from 0) is answered with status `answer(n)`, or
    /// never when that is None.
    async fn http_server(answer: impl Fn(usize) -> Option<u16> + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server {
            addr: listener.local_addr().unwrap(),
            hits: Arc::default(),
            requests: Arc::default(),
        };
        let (hits, requests, answer) = (
            server.hits.clone(),
            server.requests.clone(),
            Arc::new(answer),
        );
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let (hits, requests, answer) = (hits.clone(), requests.clone(), answer.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    while !request.ends_with(b"\r\n\r\n") {
                        let mut chunk = [0; 512];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&chunk[..n]),
                        }
                    }
                    requests
                        .lock()
                        .unwrap()
                        .push(String::from_utf8(request).unwrap());
                    match answer(hits.fetch_add(1, SeqCst)) {
                        Some(code) => {
                            let response = format!("HTTP/1.1 {code} Whatever\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                            let _ = stream.write_all(response.as_bytes()).await;
                        }
                        None => std::future::pending().await,
                    }
                });
            }
        });
        server
    }

    /// A TCP server on loopback that counts and closes connections.
    async fn tcp_server() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server {
            addr: listener.local_addr().unwrap(),
            hits: Arc::default(),
            requests: Arc::default(),
        };
        let hits = server.hits.clone();
        tokio::spawn(async move {
            loop {
                drop(listener.accept().await.unwrap());
                hits.fetch_add(1, SeqCst);
            }
        });
        server
    }

    async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn status_of(checker: &Checker<u32>, key: u32) -> HealthStatus {
        let status = checker.status().into_iter().find(|(k, _)| *k == key);
        status.unwrap().1
    }

    fn ignore() -> Arc<dyn Fn(u32, bool) + Send + Sync> {
        Arc::new(|_, _| {})
    }

    type Events = Arc<Mutex<Vec<(u32, bool, HealthStatus)>>>;

    /// A checker whose on_change records each transition with the target's status read from
    /// inside the callback: a target's probes and callbacks run in one task, so that status is
    /// exactly the one that caused the transition.
    fn recording_checker() -> (Arc<Mutex<Checker<u32>>>, Events) {
        let events = Events::default();
        let cell = Arc::new(OnceLock::<Weak<Mutex<Checker<u32>>>>::new());
        let on_change = {
            let (events, cell) = (events.clone(), cell.clone());
            Arc::new(move |key, healthy| {
                let checker = cell.get().unwrap().upgrade().unwrap();
                let status = status_of(&checker.lock().unwrap(), key);
                events.lock().unwrap().push((key, healthy, status));
            })
        };
        let checker = Arc::new(Mutex::new(Checker::new(on_change)));
        cell.set(Arc::downgrade(&checker)).unwrap();
        (checker, events)
    }

    #[test]
    fn deserialize_defaults_and_unknown_fields() {
        let check: HealthCheck = serde_json::from_str(r#"{"kind":"http"}"#).unwrap();
        let defaults = HealthCheck {
            kind: CheckKind::Http,
            port: None,
            path: "/".to_string(),
            expect_status: 200,
            interval_ms: 1000,
            timeout_ms: 500,
            rise: 2,
            fall: 3,
        };
        assert_eq!(check, defaults);
        let tcp: HealthCheck = serde_json::from_str(r#"{"kind":"tcp"}"#).unwrap();
        assert_eq!(tcp, HealthCheck::tcp());
        assert_eq!(HealthCheck::tcp().validate(), Ok(()));

        let err = serde_json::from_str::<HealthCheck>(r#"{"kind":"http","paht":"/x"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `paht`"), "{err}");
        for bad in [r#"{"kind":"udp"}"#, r#"{"kind":"HTTP"}"#, r#"{"port":80}"#] {
            assert!(serde_json::from_str::<HealthCheck>(bad).is_err(), "{bad}");
        }

        // An unset port is left out, and the output reads back the same.
        let json = serde_json::to_string(&check).unwrap();
        assert!(!json.contains("port"), "{json}");
        assert_eq!(serde_json::from_str::<HealthCheck>(&json).unwrap(), check);
        let with_port = HealthCheck {
            port: Some(8080),
            ..check
        };
        let json = serde_json::to_string(&with_port).unwrap();
        assert!(json.contains(r#""port":8080"#), "{json}");
    }

    #[test]
    fn validate_names_the_bad_field() {
        type Case = (fn(&mut HealthCheck), &'static [&'static str]);
        let cases: &[Case] = &[
            (|c| c.interval_ms = 9, &["interval_ms 9", "10 to 3600000"]),
            (
                |c| c.interval_ms = 3_600_001,
                &["interval_ms 3600001", "10 to 3600000"],
            ),
            (
                |c| c.timeout_ms = 0,
                &["timeout_ms 0", "1 to interval_ms (1000)"],
            ),
            (
                |c| c.timeout_ms = 1001,
                &["timeout_ms 1001", "1 to interval_ms (1000)"],
            ),
            (|c| c.rise = 0, &["rise 0", "1 to 100"]),
            (|c| c.rise = 101, &["rise 101", "1 to 100"]),
            (|c| c.fall = 0, &["fall 0", "1 to 100"]),
            (|c| c.fall = 101, &["fall 101", "1 to 100"]),
            (
                |c| c.path = String::new(),
                &[r#"path """#, "start with '/'"],
            ),
            (
                |c| c.path = "healthz".into(),
                &[r#"path "healthz""#, "start with '/'"],
            ),
            (
                |c| c.path = "/a b".into(),
                &[r#"path "/a b""#, "no whitespace"],
            ),
            (
                |c| c.path = "/a\tb".into(),
                &[r#"path "/a\tb""#, "no whitespace"],
            ),
            (
                |c| c.path = "/a\u{7f}".into(),
                &[r#"path "/a\u{7f}""#, "control"],
            ),
            (
                |c| c.expect_status = 99,
                &["expect_status 99", "100 to 599"],
            ),
            (
                |c| c.expect_status = 600,
                &["expect_status 600", "100 to 599"],
            ),
            (|c| c.port = Some(0), &["port 0", "1 to 65535"]),
        ];
        for (i, (spoil, wanted)) in cases.iter().enumerate() {
            let mut check = HealthCheck {
                kind: CheckKind::Http,
                ..HealthCheck::tcp()
            };
            spoil(&mut check);
            let err = check.validate().unwrap_err();
            for w in *wanted {
                assert!(err.contains(w), "case {i}: {err:?} lacks {w:?}");
            }
        }

        // The edges are accepted.
        let edges = HealthCheck {
            port: Some(1),
            path: "/healthz?full=1".into(),
            expect_status: 599,
            interval_ms: 10,
            timeout_ms: 10,
            rise: 100,
            fall: 1,
            ..HealthCheck::tcp()
        };
        assert_eq!(edges.validate(), Ok(()));
        let edges = HealthCheck {
            interval_ms: 3_600_000,
            timeout_ms: 1,
            expect_status: 100,
            rise: 1,
            fall: 100,
            ..edges
        };
        assert_eq!(edges.validate(), Ok(()));
    }

    #[test]
    fn request_and_status_line() {
        assert_eq!(
            request("/h", "10.0.0.1".parse().unwrap()),
            "GET /h HTTP/1.1\r\nHost: 10.0.0.1\r\nConnection: close\r\nUser-Agent: xdplb-health\r\n\r\n"
        );
        assert!(
            request("/", "2001:db8::1".parse().unwrap()).contains("\r\nHost: [2001:db8::1]\r\n")
        );

        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Ok(200));
        assert_eq!(status_code(b"HTTP/1.0 503\n"), Ok(503));
        assert_eq!(status_code(b"HTTP/1.1 204 No Content"), Ok(204));
        assert_eq!(
            status_code(b""),
            Err("connection closed before an HTTP status line".into())
        );
        for bad in [
            "SSH-2.0-OpenSSH_9.6\r\n",
            "HTTP/1.1 2000 X\r\n",
            "HTTP/1.1 +20 X",
            "\r\n",
        ] {
            let err = status_code(bad.as_bytes()).unwrap_err();
            assert!(err.starts_with("malformed HTTP status line"), "{err}");
        }
    }

    #[test]
    fn record_honours_rise_and_fall() {
        // Transitions (1-based probe number, new state) for a script of successes and failures.
        fn transitions(script: &str, rise: u32, fall: u32) -> Vec<(usize, bool)> {
            let mut status = HealthStatus::new();
            let mut out = Vec::new();
            for (i, c) in script.chars().enumerate() {
                let result = if c == 's' {
                    Ok(())
                } else {
                    Err(format!("fail {i}"))
                };
                if let Some(healthy) = status.record(result, rise, fall) {
                    out.push((i + 1, healthy));
                }
            }
            out
        }
        assert_eq!(transitions("ffsfffsfss", 2, 3), [(6, false), (10, true)]);
        assert_eq!(transitions("sffssfsss", 3, 2), [(3, false), (9, true)]);
        assert_eq!(
            transitions("fsfs", 1, 1),
            [(1, false), (2, true), (3, false), (4, true)]
        );
        // Unvalidated zeros behave as 1 rather than flapping on every probe.
        assert_eq!(transitions("sfs", 0, 0), [(2, false), (3, true)]);
        assert_eq!(transitions("ffffffff", 2, 100), []);

        let mut status = HealthStatus::new();
        status.record(Err("refused".into()), 2, 3);
        status.record(Ok(()), 2, 3);
        let wanted = HealthStatus {
            healthy: true,
            consecutive_ok: 1,
            consecutive_fail: 0,
            probes: 2,
            last_error: Some("refused".into()),
        };
        assert_eq!(status, wanted);
    }

    #[tokio::test]
    async fn tcp_probe_up_then_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The kernel completes the handshake from the backlog; nobody needs to accept.
        assert_eq!(probe(&HealthCheck::tcp(), addr).await, Ok(()));
        drop(listener);
        assert_eq!(
            probe(&HealthCheck::tcp(), addr).await,
            Err(format!("connect to {addr}: connection refused"))
        );
    }

    #[tokio::test]
    async fn http_probe_status_and_timeout() {
        let ok = http_server(|_| Some(200)).await;
        let unavailable = http_server(|_| Some(503)).await;
        let silent = http_server(|_| None).await;
        let check = HealthCheck {
            path: "/healthz".into(),
            timeout_ms: 200,
            ..http(1000, 2, 3)
        };

        assert_eq!(probe(&check, ok.addr).await, Ok(()));
        assert_eq!(
            ok.requests.lock().unwrap()[..],
            ["GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nUser-Agent: xdplb-health\r\n\r\n"]
        );
        assert_eq!(
            probe(&check, unavailable.addr).await,
            Err("HTTP status 503, expected 200".into())
        );
        let expect_503 = HealthCheck {
            expect_status: 503,
            ..check.clone()
        };
        assert_eq!(probe(&expect_503, unavailable.addr).await, Ok(()));

        let started = Instant::now();
        assert_eq!(
            probe(&check, silent.addr).await,
            Err("timed out after 200 ms".into())
        );
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(
            silent.hits.load(SeqCst),
            1,
            "the request reached the server"
        );
    }

    #[tokio::test]
    async fn checker_transitions_honour_rise_and_fall() {
        // probe:    1    2    3    4    5    6    7    8    9   10, then 200 for ever
        let script = [503, 503, 200, 503, 503, 503, 200, 503, 200, 200];
        let server = http_server(move |n| Some(script.get(n).copied().unwrap_or(200))).await;
        let (checker, events) = recording_checker();
        let check = http(40, 2, 3);
        checker
            .lock()
            .unwrap()
            .set_targets(vec![(7, server.addr, check)]);
        wait_until("13 probes", || {
            status_of(&checker.lock().unwrap(), 7).probes >= 13
        })
        .await;

        let error = Some("HTTP status 503, expected 200".to_string());
        let down = HealthStatus {
            healthy: false,
            consecutive_ok: 0,
            consecutive_fail: 3,
            probes: 6,
            last_error: error.clone(),
        };
        let up = HealthStatus {
            healthy: true,
            consecutive_ok: 2,
            consecutive_fail: 0,
            probes: 10,
            last_error: error,
        };
        assert_eq!(
            events.lock().unwrap()[..],
            [(7, false, down), (7, true, up)]
        );
        assert!(checker.lock().unwrap().is_healthy(&7));
    }

    #[tokio::test]
    async fn set_targets_keeps_unchanged_and_resets_changed() {
        let unavailable = http_server(|_| Some(503)).await;
        let live = tcp_server().await;
        let doomed = tcp_server().await;
        let events = Arc::new(Mutex::new(Vec::new()));
        let on_change = {
            let events = events.clone();
            Arc::new(move |key, healthy| events.lock().unwrap().push((key, healthy)))
        };
        let mut checker = Checker::new(on_change);
        let down = http(20, 1, 1);
        checker.set_targets(vec![
            (1, unavailable.addr, down.clone()),
            (2, live.addr, fast_tcp()),
            (3, doomed.addr, fast_tcp()),
        ]);
        wait_until("key 1 down, keys 2 and 3 probed", || {
            !checker.is_healthy(&1)
                && status_of(&checker, 2).probes >= 2
                && doomed.hits.load(SeqCst) >= 1
        })
        .await;

        // No await from here to the checks below: on this single-threaded runtime no probe
        // runs in between, so the statuses are exactly those set_targets left.
        let kept = status_of(&checker, 1);
        let changed = HealthCheck {
            interval_ms: 30,
            ..fast_tcp()
        };
        checker.set_targets(vec![
            (1, unavailable.addr, down),
            (2, live.addr, changed),
            (4, live.addr, fast_tcp()),
        ]);
        assert_eq!(status_of(&checker, 1), kept);
        assert!(!checker.is_healthy(&1));
        assert_eq!(status_of(&checker, 2), HealthStatus::new());
        assert_eq!(status_of(&checker, 4), HealthStatus::new());
        assert_eq!(checker.status().len(), 3);
        assert!(
            checker.is_healthy(&3),
            "a removed key is unknown, so healthy"
        );
        let doomed_hits = doomed.hits.load(SeqCst);

        wait_until("more probes of the kept and new targets", || {
            status_of(&checker, 1).probes >= kept.probes + 3
                && status_of(&checker, 2).probes >= 1
                && status_of(&checker, 4).probes >= 1
        })
        .await;
        // At most a connect already in flight when its task was aborted.
        assert!(doomed.hits.load(SeqCst) <= doomed_hits + 1);
        assert_eq!(
            status_of(&checker, 1).consecutive_fail as u64,
            status_of(&checker, 1).probes
        );
        assert_eq!(events.lock().unwrap()[..], [(1, false)]);
    }

    #[tokio::test]
    async fn drop_stops_probing() {
        let kept_server = tcp_server().await;
        let dropped_server = tcp_server().await;
        let mut kept = Checker::new(ignore());
        kept.set_targets(vec![(1, kept_server.addr, fast_tcp())]);
        let mut dropped = Checker::new(ignore());
        dropped.set_targets(vec![(1, dropped_server.addr, fast_tcp())]);
        wait_until("a probe", || dropped_server.hits.load(SeqCst) >= 1).await;

        drop(dropped);
        let (dropped_hits, kept_hits) = (
            dropped_server.hits.load(SeqCst),
            kept_server.hits.load(SeqCst),
        );
        wait_until("three probes of the other checker", || {
            kept_server.hits.load(SeqCst) >= kept_hits + 3
        })
        .await;
        assert!(dropped_server.hits.load(SeqCst) <= dropped_hits + 1);
        assert_eq!(kept.status().len(), 1);
    }
}
