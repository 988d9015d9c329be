//! The daemon's side of `xdplb trace`: reads the data path's trace ring, names what it reads
//! and hands each subscriber (one per `trace` request) the events its filter matches.
//!
//! The data path sends events only while the trace bit is set (`DataPath::set_tracing`): the
//! first subscriber sets it and the last one to leave clears it, so with no trace running the
//! data path pays one branch. Nothing here blocks on a slow client: a subscriber whose queue is
//! full loses events, counted and reported to it like the data path's own drops.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use lb_common::trace::{TraceEvent, TRACE_EVENTS_PER_SEC};
use serde_json::json;
use tokio::{
    io::{unix::AsyncFd, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest},
    sync::mpsc,
};

use super::{line, Namer, TraceFilter, TraceLine};
use crate::{mirror::MirrorSnapshot, model::VipAddr};

/// Events queued for one subscriber at most; more are lost (and counted) until it catches up.
const QUEUE: usize = 4096;

/// What a subscriber receives.
#[derive(Debug)]
pub enum Msg {
    Event(Box<TraceLine>),
    /// Events it did not get since the last notice: over the data path's budget or the ring's
    /// room (`data_path`), or its own queue was full (`queue`).
    Dropped {
        data_path: u64,
        queue: u64,
    },
}

/// VIPs and backends by id (the running configuration's), interfaces by index.
#[derive(Clone, Debug, Default)]
pub struct Names {
    vips: HashMap<u32, VipAddr>,
    backends: HashMap<u32, IpAddr>,
}

impl Names {
    pub fn new(ids: &MirrorSnapshot) -> Names {
        let mut n = Names::default();
        for v in &ids.vips {
            n.vips.insert(v.id, v.addr);
            n.backends
                .extend(v.backends.iter().map(|(addr, id)| (*id, *addr)));
        }
        n
    }

    pub fn has_vip(&self, vip: &VipAddr) -> bool {
        self.vips.values().any(|v| v == vip)
    }

    pub fn has_backend(&self, addr: IpAddr) -> bool {
        self.backends.values().any(|b| *b == addr)
    }
}

impl Namer for Names {
    fn vip(&self, id: u32) -> Option<VipAddr> {
        self.vips.get(&id).copied()
    }

    fn backend(&self, id: u32) -> Option<IpAddr> {
        self.backends.get(&id).copied()
    }

    fn iface(&self, ifindex: u32) -> String {
        let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
        // SAFETY: the buffer holds IF_NAMESIZE bytes, as if_indextoname requires.
        let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
        if p.is_null() {
            return format!("ifindex {ifindex}");
        }
        // SAFETY: on success the buffer holds a NUL-terminated name.
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    }
}

struct Sub {
    id: u64,
    filter: TraceFilter,
    tx: mpsc::Sender<Msg>,
    /// Events its full queue lost since the last notice.
    lost: u64,
}

#[derive(Default)]
struct Inner {
    next: u64,
    subs: Vec<Sub>,
    names: Names,
}

/// The subscribers of the running traces.
#[derive(Default)]
pub struct Hub {
    inner: Mutex<Inner>,
}

impl Hub {
    /// Adds a subscriber; `switch(true)` sets the data path's trace bit for the first one
    /// (under the hub's lock, so it cannot race a last subscriber leaving).
    pub fn subscribe(
        &self,
        filter: TraceFilter,
        names: Names,
        switch: impl FnOnce(bool) -> Result<(), String>,
    ) -> Result<(u64, mpsc::Receiver<Msg>), String> {
        let mut inner = self.lock();
        if inner.subs.is_empty() {
            switch(true)?;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        inner.next += 1;
        let id = inner.next;
        inner.names = names;
        inner.subs.push(Sub {
            id,
            filter,
            tx,
            lost: 0,
        });
        Ok((id, rx))
    }

    /// Removes a subscriber; `switch(false)` clears the trace bit when it was the last one.
    pub fn unsubscribe(&self, id: u64, switch: impl FnOnce(bool) -> Result<(), String>) {
        let mut inner = self.lock();
        inner.subs.retain(|s| s.id != id);
        if inner.subs.is_empty() {
            if let Err(e) = switch(false) {
                log::warn!("switching tracing off: {e}");
            }
        }
    }

    /// Subscribers now.
    pub fn subscribers(&self) -> usize {
        self.lock().subs.len()
    }

    pub fn set_names(&self, names: Names) {
        self.lock().names = names;
    }

    /// Hands each subscriber the events its filter matches.
    pub fn dispatch(&self, events: &[TraceEvent]) {
        let mut inner = self.lock();
        let Inner { subs, names, .. } = &mut *inner;
        for e in events {
            let l = line(e, names);
            for s in subs.iter_mut().filter(|s| s.filter.matches(&l)) {
                if s.tx.try_send(Msg::Event(Box::new(l.clone()))).is_err() {
                    s.lost += 1;
                }
            }
        }
    }

    /// Tells every subscriber what it did not get: `data_path` events the data path dropped
    /// since the last notice (for all traces: the budget is the data path's), and what its
    /// own queue lost.
    pub fn notice(&self, data_path: u64) {
        for s in self.lock().subs.iter_mut() {
            if data_path == 0 && s.lost == 0 {
                continue;
            }
            let msg = Msg::Dropped {
                data_path,
                queue: s.lost,
            };
            if s.tx.try_send(msg).is_ok() {
                s.lost = 0;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while the lock was held leaves only subscriber bookkeeping: keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the reader needs from the daemon each second while a trace runs: the names of the
/// running configuration, and the data path's dropped-event count.
pub trait Source: Send + Sync + 'static {
    fn names(&self) -> Names;
    fn dropped(&self) -> u64;
}

/// Reads the trace ring for the daemon's lifetime and dispatches what it reads.
pub async fn read(ring: RingBuf<MapData>, hub: Arc<Hub>, source: Arc<dyn Source>) {
    // SAFETY: the ring owns its map's fd until it is dropped, with the `AsyncFd`.
    let mut fd = match unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            log::error!("watching the trace ring: {e}; xdplb trace will show nothing");
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // The data path drops events only while tracing, and its count starts at 0 with the
    // program (not pinned): counted from 0, so drops before a trace's first tick are reported.
    let mut dropped_before = 0;
    loop {
        tokio::select! {
            ready = fd.readable_mut() => {
                let mut guard = match ready {
                    Ok(g) => g,
                    Err(e) => {
                        log::error!("reading the trace ring: {e}");
                        return;
                    }
                };
                let mut batch = Vec::new();
                while let Some(item) = guard.get_inner_mut().next() {
                    if item.len() >= std::mem::size_of::<TraceEvent>() {
                        // SAFETY: the data path writes whole `TraceEvent`s (plain integers);
                        // the ring gives no alignment promise, hence the unaligned read.
                        batch.push(unsafe { (item.as_ptr() as *const TraceEvent).read_unaligned() });
                    }
                }
                guard.clear_ready();
                hub.dispatch(&batch);
            }
            _ = tick.tick() => {
                if hub.subscribers() == 0 {
                    continue;
                }
                let s = source.clone();
                let Ok((names, dropped)) =
                    tokio::task::spawn_blocking(move || (s.names(), s.dropped())).await
                else {
                    continue;
                };
                hub.set_names(names);
                hub.notice(dropped.saturating_sub(dropped_before));
                dropped_before = dropped;
            }
        }
    }
}

/// Serves one `trace` request: the answer line, then one JSON line per matching event
/// (`{"event": ...}`), per drop notice (`{"dropped": ...}`), and `{"end": "count"}` once
/// `count` events were sent. Ends when the client goes away or the count is reached.
pub async fn stream<R, W>(
    mut rx: mpsc::Receiver<Msg>,
    count: Option<u64>,
    mut read: R,
    mut write: W,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let start = json!({"ok": true, "data": {"events_per_cpu_per_sec": TRACE_EVENTS_PER_SEC}});
    if send(&mut write, &start).await.is_err() {
        return;
    }
    let mut sent = 0u64;
    let mut scratch = [0u8; 64];
    loop {
        tokio::select! {
            // The client sends nothing more: end of file (or an error) means it is gone.
            r = read.read(&mut scratch) => if !matches!(r, Ok(n) if n > 0) {
                return;
            },
            msg = rx.recv() => {
                let out = match msg {
                    None => return,
                    Some(Msg::Event(l)) => json!({ "event": l }),
                    Some(Msg::Dropped { data_path, queue }) => {
                        json!({ "dropped": { "data_path": data_path, "queue": queue } })
                    }
                };
                let is_event = out.get("event").is_some();
                if send(&mut write, &out).await.is_err() {
                    return;
                }
                sent += u64::from(is_event);
                if count.is_some_and(|n| sent >= n) {
                    let _ = send(&mut write, &json!({ "end": "count" })).await;
                    return;
                }
            }
        }
    }
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, v: &serde_json::Value) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    out.push(b'\n');
    w.write_all(&out).await
}
