//! `xdplb daemon`: owns the data path, serves the control API on a Unix socket, runs health
//! checks, samples rates and exports metrics. Stopping it (or `kill -9`) leaves the pinned
//! attachments and maps in place, so traffic keeps flowing; the next daemon adopts them.

pub mod core;
mod counters;
mod neighbours;
pub mod state;

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{signal, SignalKind},
};

use self::core::{Core, Paths};
use crate::{
    api::{BackendChange, Request, Response, MAX_REQUEST},
    config::{Config, MetricsConfig},
    conn::table::Walker,
    datapath::{conntrack, AttachMode, DataPath, DataPathError},
    health::Checker,
    mirror::Mirror,
    trace::{
        hub::{self, Hub, Names},
        TraceFilter,
    },
};

/// Default locations.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/xdplb";
pub const DEFAULT_STATE_FILE: &str = "/var/lib/xdplb/state.json";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Clone, Debug, clap::Args)]
pub struct DaemonArgs {
    /// Initial configuration (TOML), used when no saved state exists.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// bpffs directory for pinned maps and attachments.
    #[arg(long, default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// Where the running state is saved after every change.
    #[arg(long, default_value = DEFAULT_STATE_FILE)]
    pub state_file: PathBuf,
    /// Serve Prometheus metrics here (loopback unless the config allows otherwise).
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Detach and remove everything pinned under --pin-path and the saved state, then exit.
    #[arg(long)]
    pub cleanup: bool,
}

/// Exit status of a daemon that found its core poisoned (EX_SOFTWARE).
const EXIT_POISONED: i32 = 70;

/// The core, or the end of the process. Crash-only: a panic while the lock was held may have
/// left the mirror and the running state half-updated, and serving them could write wrong
/// entries. Exiting keeps traffic flowing through the pinned program and maps; systemd
/// (`Restart=on-failure`) starts a new daemon, which adopts the maps and rewrites them from
/// the state saved by the last completed change.
fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    core.lock().unwrap_or_else(|_| {
        log::error!("a panic interrupted a change of the daemon's state; exiting ({EXIT_POISONED}) so that a restarted daemon adopts the maps (the pinned data path keeps forwarding)");
        std::process::exit(EXIT_POISONED)
    })
}

/// Exit status of a start refused for what no restart changes: a configuration or saved state
/// the daemon refuses, or pinned maps of other limits or an unmigratable layout (sysexits'
/// EX_CONFIG). The systemd unit does not restart on it (`RestartPreventExitStatus=78`), so a
/// refused state does not loop every two seconds; the pinned data path forwards meanwhile.
pub const EXIT_REFUSED: i32 = 78;

/// Why the daemon stopped with an error.
enum Stop {
    /// Nothing a restart changes (`EXIT_REFUSED`).
    Refused(String),
    /// Anything else (exit status 1: a restart may succeed).
    Failed(String),
}

impl From<String> for Stop {
    fn from(e: String) -> Stop {
        Stop::Failed(e)
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(socket: &Path, args: &DaemonArgs) -> Result<(), String> {
    if args.cleanup {
        return cleanup(args);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    let stopped = rt.block_on(serve(socket.to_path_buf(), args.clone()));
    drop(rt);
    match stopped {
        Ok(()) => Ok(()),
        Err(Stop::Failed(e)) => Err(e),
        Err(Stop::Refused(e)) => {
            eprintln!("xdplb: {e}");
            std::process::exit(EXIT_REFUSED)
        }
    }
}

fn cleanup(args: &DaemonArgs) -> Result<(), String> {
    let pin = args.pin_path.is_dir().then_some(args.pin_path.as_path());
    let lock = state::StateLock::acquire(&args.state_file, pin)
        .map_err(|e| format!("{e}; stop the daemon before --cleanup"))?;
    let mut problems = Vec::new();
    let saved = state::load(&args.state_file);
    // Nothing balanced, nothing announced: a BGP daemon must not keep sending VIP traffic here.
    // The announcement table is the saved state's, else the one --config names.
    let announce = match &saved {
        Ok(Some(s)) => s.config.announce.clone(),
        _ => None,
    };
    let announce = match (announce, &args.config) {
        (Some(a), _) => Some(a),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| Config::from_toml(&t))
            .map_err(|e| problems.push(format!("reading {}: {e}", path.display())))
            .ok()
            .and_then(|c| c.announce),
        (None, None) => None,
    };
    match (announce, &saved) {
        (Some(a), _) => match crate::announce::RouteTable::from(&a).flush() {
            Ok(c) => {
                for r in c.removed {
                    println!("withdrawn {r} (table {})", a.table);
                }
            }
            Err(e) => problems.push(format!(
                "withdrawing the announcements in table {}: {e}",
                a.table
            )),
        },
        (None, Err(e)) => problems.push(format!(
            "{e}: which announcement table this node used is unknown, so VIP routes may still be announced; run `xdplb daemon --cleanup --config FILE` with the [announce] section it ran with"
        )),
        (None, Ok(_)) => {}
    }
    let removed = DataPath::cleanup_pins(&args.pin_path)
        .map_err(|e| format!("cleaning {}: {e}", args.pin_path.display()))?;
    for p in &removed {
        println!("removed {}", p.display());
    }
    // A state file that could not be read is moved aside, not deleted: it may be all there is
    // of the configuration.
    let state = &args.state_file;
    if saved.is_err() {
        let aside = PathBuf::from(format!("{}.unreadable", state.display()));
        std::fs::rename(state, &aside)
            .map_err(|e| format!("moving {} aside: {e}", state.display()))?;
        println!(
            "kept the unreadable {} as {}",
            state.display(),
            aside.display()
        );
    } else {
        match std::fs::remove_file(state) {
            Ok(()) => println!("removed {}", state.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("removing {}: {e}", state.display())),
        }
    }
    // Last, still held: a daemon starting now finds nothing left to adopt.
    match lock.remove() {
        Ok(Some(path)) => println!("removed {}", path.display()),
        Ok(None) => {}
        Err(e) => return Err(e),
    }
    if !problems.is_empty() {
        return Err(format!(
            "xdplb is detached and nothing is balanced, but: {}",
            problems.join("; ")
        ));
    }
    println!("xdplb is detached; nothing is balanced any more");
    Ok(())
}

/// The configuration to start with: the saved state's if there is one, else the file's.
fn initial_config(args: &DaemonArgs, saved: Option<&state::SavedState>) -> Result<Config, String> {
    if let Some(saved) = saved {
        log::info!("restoring the state saved in {}", args.state_file.display());
        return Ok(saved.config.clone());
    }
    match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            Config::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))
        }
        None => Ok(Config::default()),
    }
}

/// The pin directory must be on a bpffs, or pins would fail (or vanish with a tmpfs).
fn ensure_bpffs(dir: &Path) -> Result<(), String> {
    // `ip netns exec` mounts a fresh sysfs for the command, without the bpffs on /sys/fs/bpf:
    // mkdir there fails (ENOENT), and a bpffs mounted inside the command goes with it.
    let fix = format!(
        "the daemon keeps its maps and attachments in a bpf filesystem: mount one (mkdir -p {d} && mount -t bpf bpf {d}) or pass --pin-path DIR on a mounted one; under `ip netns exec`, which hides /sys/fs/bpf, mount it outside /sys in the host's mount namespace (mkdir -p /run/xdplb/bpf && mount -t bpf bpf /run/xdplb/bpf) and pass --pin-path /run/xdplb/bpf",
        d = dir.display()
    );
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("creating pin path {}: {e}; {fix}", dir.display()))?;
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| "pin path contains NUL".to_string())?;
    // SAFETY: statfs on a valid path into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 || st.f_type as i64 != BPF_FS_MAGIC {
        return Err(format!(
            "pin path {} is not on a bpf filesystem; {fix}",
            dir.display()
        ));
    }
    Ok(())
}

fn bind_socket(path: &Path) -> Result<UnixListener, String> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(format!(
            "another xdplb daemon is listening on {}",
            path.display()
        ));
    }
    let _ = std::fs::remove_file(path); // a stale socket from a killed daemon
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    // Create the socket owner-only from the start (no window with wider permissions).
    // SAFETY: umask only affects this process's file creation mask.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let listener =
        listener.map_err(|e| format!("binding control socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("setting permissions of {}: {e}", path.display()))?;
    Ok(listener)
}

async fn serve(socket: PathBuf, args: DaemonArgs) -> Result<(), Stop> {
    ensure_bpffs(&args.pin_path)?;
    let _lock = state::StateLock::acquire(&args.state_file, Some(&args.pin_path))?;
    // Claim the socket before touching the maps: a second daemon stops here.
    let listener = bind_socket(&socket)?;
    let result = start(&socket, &args, listener).await;
    let _ = std::fs::remove_file(&socket);
    result
}

async fn start(socket: &Path, args: &DaemonArgs, listener: UnixListener) -> Result<(), Stop> {
    let saved = state::load(&args.state_file).map_err(Stop::Refused)?;
    let mut config = initial_config(args, saved.as_ref()).map_err(Stop::Refused)?;
    if let Some(listen) = args.metrics {
        config.metrics = Some(MetricsConfig {
            listen,
            allow_remote: false,
        });
    }
    config.validate().map_err(Stop::Refused)?;
    let limits = config.limits();
    let mut dp =
        DataPath::load(&limits.load_options(Some(&args.pin_path))).map_err(|e| match e {
            DataPathError::PinsRefused { .. } => Stop::Refused(e.to_string()),
            e => Stop::Failed(e.to_string()),
        })?;
    if let Some(file) = std::env::var_os(crate::datapath::faults::ENV) {
        log::warn!(
            "{} is set: map writes fail as the test plans in {} say (tests only)",
            crate::datapath::faults::ENV,
            PathBuf::from(&file).display()
        );
        dp.enable_test_faults(file.into());
    }
    let pinned_vips = dp.vip_entries().map_err(|e| e.to_string())?;
    if saved.is_none() && pinned_vips > 0 {
        // Without the saved ids, new ids would overwrite rings and backends that live VIPs use.
        return Err(Stop::Refused(format!(
            "the maps pinned in {} hold {pinned_vips} VIP entries but no saved state describes them ({} is missing); restore the state file, or stop balancing with `xdplb daemon --cleanup` and start again",
            args.pin_path.display(),
            args.state_file.display()
        )));
    }
    let adopted = dp.adopted_maps().map_err(|e| e.to_string())?;
    // What the data path reports while watched: its aya-log records go to this process's log,
    // its trace events to the subscribers of `xdplb trace`.
    let logger = dp.take_logger().map_err(|e| e.to_string())?;
    let trace_ring = dp.take_trace_ring().map_err(|e| e.to_string())?;
    let mirror = Mirror::restore(
        limits.ring_size,
        limits.max_vips,
        limits.max_backends,
        &saved.as_ref().map(|s| s.ids.clone()).unwrap_or_default(),
        &adopted,
    );

    let (health_tx, mut health_rx) = tokio::sync::mpsc::unbounded_channel();
    let checker = Checker::new(Arc::new(move |key, up| {
        let _ = health_tx.send((key, up));
    }));
    let paths = Paths {
        socket: socket.to_path_buf(),
        pin_path: args.pin_path.clone(),
        state_file: args.state_file.clone(),
    };
    let core = Arc::new(Mutex::new(Core::new(dp, mirror, paths, checker)));
    // Backends' MACs are probed for before the first commit, as before a change; a saved MAC
    // is checked against the neighbour table once started.
    if saved.is_none() {
        let missing = lock(&core).macs_missing(&config);
        let found = neighbours::resolve(missing);
        lock(&core).learn_macs(found);
    }
    lock(&core).start(config.clone(), saved.as_ref())?;
    lock(&core).finish_upgrade()?;
    lock(&core).recheck_macs();
    neighbours::watch(core.clone());
    forward_datapath_log(logger);
    let hub = Arc::new(Hub::default());
    tokio::spawn(hub::read(
        trace_ring,
        hub.clone(),
        Arc::new(CoreSource(core.clone())),
    ));
    log::info!("xdplb daemon ready; control socket {}", socket.display());

    let c = core.clone();
    tokio::spawn(async move {
        while let Some((key, up)) = health_rx.recv().await {
            let c = c.clone();
            let _ = tokio::task::spawn_blocking(move || lock(&c).set_health(key, up)).await;
        }
    });
    let c = core.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let c = c.clone();
            let _ = tokio::task::spawn_blocking(move || lock(&c).tick()).await;
        }
    });
    if let Some(m) = &config.metrics {
        let l = tokio::net::TcpListener::bind(m.listen)
            .await
            .map_err(|e| format!("binding metrics address {}: {e}", m.listen))?;
        let c = core.clone();
        log::info!("metrics on http://{}/metrics", m.listen);
        tokio::spawn(crate::metrics::serve(
            l,
            Arc::new(move || lock(&c).metrics()),
        ));
    }

    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => { tokio::spawn(connection(stream, core.clone(), hub.clone())); }
                Err(e) => log::warn!("accepting on the control socket: {e}"),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // An orderly stop withdraws the announcements (the routers move the flows to other nodes,
    // which pick the same backends); a crash or kill -9 leaves them, as it leaves the data
    // path forwarding, until the next daemon reconciles.
    let result = {
        let mut c = lock(&core);
        c.withdraw_all();
        c.save()
    };
    log::info!(
        "xdplb daemon stopping; attachments and maps stay pinned in {}, traffic keeps flowing",
        args.pin_path.display()
    );
    result.map_err(Stop::Failed)
}

/// A one-line description of a change request (None for read-only requests).
fn describe(req: &Request) -> Option<String> {
    Some(match req {
        Request::VipList
        | Request::Config
        | Request::Stats
        | Request::Status
        | Request::Simulate { .. }
        | Request::NodeStatus
        | Request::ConnList(_)
        | Request::ConnCount(_)
        | Request::Trace(_) => return None,
        Request::NodeDrain => "node drain".into(),
        Request::NodeUndrain => "node undrain".into(),
        Request::VipAdd { vip, mode, hash } => format!("vip add {vip} --mode {mode} --hash {hash}"),
        Request::VipDel { vip } => format!("vip del {vip}"),
        Request::VipSet { vip, check } => format!("vip set {vip} --check {check}"),
        Request::BackendAdd(b) => format!("backend add {}", backend_args(b)),
        Request::BackendSet(b) => format!("backend set {}", backend_args(b)),
        Request::BackendDel { vip, addr } => format!("backend del {vip} {addr}"),
        Request::BackendDrain { vip, addr } => format!("backend drain {vip} {addr}"),
        Request::BackendUndrain { vip, addr } => format!("backend undrain {vip} {addr}"),
        Request::Attach { iface, xdp_mode } => {
            format!("attach {iface} --xdp-mode {}", AttachMode::from(*xdp_mode))
        }
        Request::Detach { iface } => format!("detach {iface}"),
        Request::Apply { config, dry_run } => format!(
            "apply{} ({}, {})",
            if *dry_run { " --dry-run" } else { "" },
            counted(config.vips.len(), "VIP"),
            counted(config.interfaces.len(), "interface")
        ),
        Request::Debug { on } => format!("debug {}", if *on { "on" } else { "off" }),
    })
}

/// What a request answers: a value, or JSON text its handler encoded entry by entry (a
/// connection-table listing: as a `Value` tree, a full table would take about 1.3 KB per entry).
enum Answer {
    Value(serde_json::Value),
    Text(String),
}

/// Runs a request under the core's lock; a connection-table walk only prepares under it and
/// runs without it (`conn::table::Walker`), and a change probes for unknown MACs before it.
fn answer(core: &Mutex<Core>, req: Request) -> Result<Answer, String> {
    match req {
        Request::ConnList(q) => {
            let walker = Walker::new(&lock(core), &q)?;
            walker.list().map(Answer::Text)
        }
        Request::ConnCount(q) => {
            let walker = Walker::new(&lock(core), &q)?;
            walker.count().map(Answer::Value)
        }
        Request::Status => {
            let (mut status, pins, tables) = {
                let mut c = lock(core);
                let tables = conntrack::tables(c.dp.options());
                (c.status(), c.paths.pin_path.clone(), tables)
            };
            core::complete_status(&mut status, &pins, &tables);
            Ok(Answer::Value(status))
        }
        req => {
            // Unknown MACs are probed for first, without the lock: a probe waits up to 1.5 s.
            let missing = lock(core).macs_to_resolve(&req);
            let found = neighbours::resolve(missing);
            let mut c = lock(core);
            c.learn_macs(found);
            c.handle(req).map(Answer::Value)
        }
    }
}

/// `1 VIP`, `2 VIPs`.
fn counted(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// A backend change as on the command line, with only the options it gave.
fn backend_args(b: &BackendChange) -> String {
    let mut out = format!("{} {}", b.vip, b.addr);
    if let Some(w) = b.weight {
        out += &format!(" --weight {w}");
    }
    if let Some(m) = b.mac {
        out += &format!(" --mac {m}");
    }
    if let Some(v) = &b.via {
        out += &format!(" --via {v}");
    }
    if let Some(c) = &b.check {
        out += &format!(" --check {c}");
    }
    out
}

/// Forwards the data path's aya-log records (`xdplb debug on`) into this process's log, where
/// they appear under the target `xdplb::datapath` (RUST_LOG filters them).
fn forward_datapath_log(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    use tokio::io::{unix::AsyncFd, Interest};
    // SAFETY: the logger owns its ring's fd until it is dropped, with the `AsyncFd`.
    let mut fd = match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            log::error!(
                "watching the data path's log ring: {e}; `xdplb debug on` will log nothing"
            );
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            match fd.readable_mut().await {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(e) => {
                    log::error!("reading the data path's log ring: {e}");
                    return;
                }
            }
        }
    });
}

/// What the trace reader asks the daemon each second while a trace runs.
struct CoreSource(Arc<Mutex<Core>>);

impl hub::Source for CoreSource {
    fn names(&self) -> Names {
        Names::new(&lock(&self.0).mirror.snapshot())
    }

    fn dropped(&self) -> u64 {
        lock(&self.0).dp.trace_dropped().unwrap_or(0)
    }
}

/// Sets or clears the data path's trace bit.
fn switch_tracing(core: &Mutex<Core>, on: bool) -> Result<(), String> {
    lock(core)
        .dp
        .set_tracing(on)
        .map_err(|e| format!("switching tracing {}: {e}", if on { "on" } else { "off" }))
}

/// A `trace` request: checked, subscribed (the first subscriber switches tracing on), then
/// streamed until the client leaves or its count is reached; the last one to leave switches
/// tracing off.
async fn trace(
    filter: TraceFilter,
    core: Arc<Mutex<Core>>,
    hub: Arc<Hub>,
    read: impl tokio::io::AsyncRead + Unpin,
    mut write: tokio::net::unix::OwnedWriteHalf,
    who: &str,
) {
    let count = filter.count;
    let (c, h) = (core.clone(), hub.clone());
    let subscribed = tokio::task::spawn_blocking(move || {
        filter.check()?;
        let names = Names::new(&lock(&c).mirror.snapshot());
        known(&names, &filter)?;
        h.subscribe(filter, names, |on| switch_tracing(&c, on))
    })
    .await
    .unwrap_or_else(|e| Err(format!("internal error: {e}")));
    let (id, rx) = match subscribed {
        Ok(s) => s,
        Err(e) => {
            log::debug!("{who}: trace: refused: {e}");
            let mut out = serde_json::to_vec(&Response::err(e)).unwrap_or_default();
            out.push(b'\n');
            let _ = write.write_all(&out).await;
            return;
        }
    };
    log::info!("{who}: trace started");
    hub::stream(rx, count, read, write).await;
    let _ =
        tokio::task::spawn_blocking(move || hub.unsubscribe(id, |on| switch_tracing(&core, on)))
            .await;
    log::info!("{who}: trace ended");
}

/// A trace of a VIP or backend that is not configured would wait forever: refused.
fn known(names: &Names, filter: &TraceFilter) -> Result<(), String> {
    if let Some(v) = filter.vip {
        if !names.has_vip(&v) {
            return Err(format!(
                "--vip {v}: no such VIP is configured (xdplb vip list)"
            ));
        }
    }
    if let Some(b) = filter.backend {
        if !names.has_backend(b) {
            return Err(format!(
                "--backend {b}: no VIP has this backend (xdplb vip list)"
            ));
        }
    }
    Ok(())
}

/// One client connection: one request line, one response line (a trace: a stream of lines).
async fn connection(stream: UnixStream, core: Arc<Mutex<Core>>, hub: Arc<Hub>) {
    let cred = stream.peer_cred().ok();
    let root = cred.is_some_and(|c| c.uid() == 0);
    let who = cred.map_or_else(
        || "unknown peer".to_string(),
        |c| format!("uid {} pid {}", c.uid(), c.pid().unwrap_or(0)),
    );
    let (read, mut write) = stream.into_split();
    let mut encoded = None;
    // The request is read in every case: answering before the client finished writing would
    // make its write fail instead of letting it read the refusal.
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
    // A client that never finishes its line must not hold a task forever.
    let read = tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no complete request within 10 s",
            ))
        });
    let resp = if !root {
        Response::err("only root may control xdplb")
    } else {
        match read {
            Err(e) => Response::err(format!("reading the request: {e}")),
            Ok(_) if !line.ends_with('\n') => Response::err(format!(
                "the request must be one JSON line of at most {MAX_REQUEST} bytes"
            )),
            Ok(_) => match serde_json::from_str::<Request>(&line) {
                Err(e) => Response::err(format!("invalid request: {e}")),
                Ok(Request::Trace(filter)) => {
                    return trace(filter, core, hub, reader, write, &who).await;
                }
                Ok(req) => {
                    let what = describe(&req);
                    let res = tokio::task::spawn_blocking(move || answer(&core, req)).await;
                    let resp = match res {
                        Ok(Ok(Answer::Value(data))) => Response::ok(data),
                        Ok(Ok(Answer::Text(data))) => {
                            encoded = Some(data);
                            Response::ok(serde_json::Value::Null)
                        }
                        Ok(Err(e)) => Response::err(e),
                        Err(e) => Response::err(format!("internal error: {e}")),
                    };
                    // One line per change: who, what, result (reads only at debug level).
                    let result = resp
                        .error
                        .as_deref()
                        .map_or("ok".to_string(), |e| format!("refused: {e}"));
                    match what {
                        Some(what) => log::info!("{who}: {what}: {result}"),
                        None => log::debug!("{who}: read request: {result}"),
                    }
                    resp
                }
            },
        }
    };
    if let Some(data) = encoded {
        // Written around the handler's text rather than copied into one more buffer.
        for part in [&b"{\"ok\":true,\"data\":"[..], data.as_bytes(), b"}\n"] {
            if write.write_all(part).await.is_err() {
                break;
            }
        }
        return;
    }
    let mut out = serde_json::to_vec(&resp).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
    out.push(b'\n');
    let _ = write.write_all(&out).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> Request {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn changes_are_logged_in_the_command_lines_notation() {
        let cases = [
            (
                r#"{"cmd":"backend_add","vip":"10.0.0.1:80/tcp","addr":"10.0.1.1"}"#,
                "backend add 10.0.0.1:80/tcp 10.0.1.1",
            ),
            (
                r#"{"cmd":"backend_set","vip":"10.0.0.1:80/tcp","addr":"10.0.1.1","weight":2}"#,
                "backend set 10.0.0.1:80/tcp 10.0.1.1 --weight 2",
            ),
            (
                r#"{"cmd":"backend_set","vip":"10.0.0.1:80/tcp","addr":"10.0.1.1","mac":"02:00:00:00:00:01","via":"eth1"}"#,
                "backend set 10.0.0.1:80/tcp 10.0.1.1 --mac 02:00:00:00:00:01 --via eth1",
            ),
            (
                r#"{"cmd":"attach","iface":"eth0","xdp_mode":"native"}"#,
                "attach eth0 --xdp-mode native",
            ),
            (
                r#"{"cmd":"vip_add","vip":"10.0.0.1:80/tcp","mode":"l3","hash":"src-ip"}"#,
                "vip add 10.0.0.1:80/tcp --mode l3 --hash src-ip",
            ),
        ];
        for (json, line) in cases {
            assert_eq!(describe(&request(json)).as_deref(), Some(line), "{json}");
        }
    }

    #[test]
    fn log_lines_name_things_as_the_command_line_does() {
        use crate::{datapath::Attached, health::TargetName};
        let key: core::BackendKey = (
            "10.0.0.1:80/tcp".parse().unwrap(),
            "10.0.1.1".parse().unwrap(),
        );
        assert_eq!(key.target_name(), "backend 10.0.1.1 of VIP 10.0.0.1:80/tcp");
        let attached = Attached::New(AttachMode::Native);
        assert_eq!(attached.to_string(), "attached in native mode");
    }
}
