//! The daemon's side of `conn list` / `conn count`: a walk over the pinned connection tables
//! (IPv4 flows' first, then IPv6's: `datapath::conntrack`) with `BPF_MAP_LOOKUP_BATCH`, naming each entry's ids as the data path reads them. Traffic
//! is not stopped; what a walk can miss under churn is said in `batch::lookup_each`.
//!
//! An entry is *active* while its backend slot is valid and holds the generation the entry was
//! recorded with; otherwise it is *stale*: its flow is placed again on its next packet. A stale
//! entry still names its removed backend while the id was not given to another one.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Instant,
};

use aya::maps::{Array, Map, MapData};
use lb_common::{addr, maps as m, BackendInfo, ConnValue, FlowKey, BACKEND_F_VALID, VIP_F_MODE_L3};
use serde::Serialize;
use serde_json::{json, Value};

use super::ConnQuery;
use crate::{
    daemon::core::Core,
    datapath::conntrack::{self, Table},
    model::{Mode, VipAddr},
};

/// Entries per batch syscall: a few hundred KiB of buffer, and a full default table (262144
/// entries) in 64 calls.
const CHUNK: usize = 4096;

/// One connection-table entry, as `conn list --json` shows it (docs/cli.md).
#[derive(Clone, Debug, Serialize)]
pub struct Conn {
    /// "tcp", "udp", or the protocol number.
    pub proto: String,
    pub client: SocketAddr,
    /// Where the client sends: the VIP's address and the flow's destination port.
    pub dst: SocketAddr,
    /// The VIP the entry names (None: its VIP is gone or its id now names another one).
    pub vip: Option<VipAddr>,
    pub mode: Mode,
    /// None: the entry's backend id was given to another backend since.
    pub backend: Option<IpAddr>,
    pub backend_id: u32,
    /// L3: the destination packets are rewritten to (the backend and its port).
    pub to: Option<SocketAddr>,
    /// "active" or "stale".
    pub state: &'static str,
    /// L3: milliseconds since a packet of the flow (either direction) last refreshed its next
    /// hop, which packets do at most once per `HOP_TTL` (about 1.07 s): the flow was last seen
    /// about this long ago, up to 1.07 s less. None in L2 (nothing kept) or before a first hop.
    pub idle_ms: Option<u64>,
}

/// What the walk needs to name the ids of an entry and apply the filters.
struct Names {
    vips: HashMap<u32, VipAddr>,
    backends: Array<MapData, BackendInfo>,
    /// Backend slots read so far, by id (None: unreadable, past the array).
    slots: HashMap<u32, Option<BackendInfo>>,
    query: ConnQuery,
    /// The data path's coarse clock (`Hop::checked` units) when the walk began.
    now: u32,
}

/// How a walk went.
struct Walk {
    /// Entries read from the table, matching or not.
    walked: usize,
    /// It stopped at `limit` with more matching entries left.
    truncated: bool,
}

/// A walk prepared under the daemon's lock (the query checked, the VIPs' ids copied, the maps
/// opened on descriptors of its own) and run without it: a walk over a full table takes
/// long enough (docs/operations.md) that health checks and metrics must not wait for it.
pub struct Walker {
    names: Names,
    tables: Vec<(Table, MapData)>,
}

impl Walker {
    pub fn new(core: &Core, query: &ConnQuery) -> Result<Walker, String> {
        let pins =
            core.dp.options().pin_dir.clone().ok_or(
                "the data path's maps are not pinned, so the connection table cannot be read",
            )?;
        let tables = conntrack::tables(core.dp.options())
            .into_iter()
            .map(|t| Ok((t, open(&pins, t.name)?)))
            .collect::<Result<_, String>>()?;
        Ok(Walker {
            names: Names::new(core, &pins, query)?,
            tables,
        })
    }

    /// `conn list`: the matching entries in table order, as JSON text encoded entry by entry
    /// while walking (a full table's listing is tens of megabytes; no copy of it is kept).
    pub fn list(self) -> Result<String, String> {
        let mut out = br#"{"conns":["#.to_vec();
        let mut first = true;
        let mut encoded = Ok(());
        let w = self.walk(|c| {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            if encoded.is_ok() {
                encoded = serde_json::to_writer(&mut out, &c);
            }
        })?;
        encoded.map_err(|e| format!("encoding the connection table: {e}"))?;
        out.extend_from_slice(
            format!(r#"],"walked":{},"truncated":{}}}"#, w.walked, w.truncated).as_bytes(),
        );
        String::from_utf8(out).map_err(|e| format!("encoding the connection table: {e}"))
    }

    /// `conn count`: the matching entries, active and stale, per VIP and per backend.
    pub fn count(self) -> Result<Value, String> {
        let mut by_vip: BTreeMap<Option<VipAddr>, BTreeMap<Option<IpAddr>, usize>> =
            BTreeMap::new();
        let (mut total, mut stale) = (0, 0);
        let w = self.walk(|c| {
            total += 1;
            stale += usize::from(c.state == "stale");
            *by_vip
                .entry(c.vip)
                .or_default()
                .entry(c.backend)
                .or_default() += 1;
        })?;
        let vips: Vec<Value> = by_vip
            .into_iter()
            .map(|(vip, backends)| {
                let list: Vec<Value> = backends
                    .iter()
                    .map(|(addr, n)| json!({ "addr": addr, "conns": n }))
                    .collect();
                json!({ "vip": vip, "conns": backends.values().sum::<usize>(), "backends": list })
            })
            .collect();
        Ok(json!({
            "total": total,
            "active": total - stale,
            "stale": stale,
            "vips": vips,
            "walked": w.walked,
            "truncated": w.truncated,
        }))
    }

    /// Walks the tables, giving `each` every entry the query matches, up to its limit.
    fn walk(mut self, mut each: impl FnMut(Conn)) -> Result<Walk, String> {
        let limit = self.names.query.limit.unwrap_or(usize::MAX);
        let (mut matched, mut truncated, mut walked) = (0, false, 0);
        let started = Instant::now();
        for (table, map) in &self.tables {
            if truncated {
                break;
            }
            walked += conntrack::walk(table, map, CHUNK, |k, v| {
                let Some(conn) = self.names.matching(k, v) else {
                    return true;
                };
                if matched == limit {
                    truncated = true;
                    return false;
                }
                matched += 1;
                each(conn);
                true
            })
            .map_err(|e| format!("reading the connection table {}: {e}", table.name))?;
        }
        log::debug!(
            "connection table walk: {walked} entries in {:?}, {matched} matching",
            started.elapsed()
        );
        Ok(Walk { walked, truncated })
    }
}

/// A map pinned by the daemon, opened anew (its own file descriptor).
fn open(pins: &Path, name: &str) -> Result<MapData, String> {
    MapData::from_pin(pins.join(name))
        .map_err(|e| format!("opening the pinned map {name} in {}: {e}", pins.display()))
}

impl Names {
    /// Checks the query against the running configuration: a filter naming what is not
    /// configured is refused, not answered with an empty list.
    fn new(core: &Core, pins: &Path, query: &ConnQuery) -> Result<Names, String> {
        if let Some(vip) = &query.vip {
            if core.config.vip(vip).is_none() {
                return Err(format!("no VIP {vip}; `xdplb vip list` shows the VIPs"));
            }
        }
        if let Some(b) = query.backend {
            let mut vips = core
                .config
                .vips
                .iter()
                .filter(|v| query.vip.is_none_or(|q| q == v.addr));
            if !vips.any(|v| v.backend(b).is_some()) {
                return Err(match &query.vip {
                    Some(vip) => {
                        format!("VIP {vip} has no backend {b}; `xdplb vip list` shows its backends")
                    }
                    None => {
                        format!("no VIP has a backend {b}; `xdplb vip list` shows the backends")
                    }
                });
            }
        }
        if query.limit == Some(0) {
            return Err("--limit 0 would list nothing; give 1 or more, or leave it out".into());
        }
        let vips = core
            .config
            .vips
            .iter()
            .filter_map(|v| Some((core.mirror.vip_id(&v.addr)?, v.addr)))
            .collect();
        let backends = Map::from_map_data(open(pins, m::BACKENDS)?)
            .and_then(Array::try_from)
            .map_err(|e| format!("reading the backend map {}: {e}", m::BACKENDS))?;
        Ok(Names {
            vips,
            backends,
            slots: HashMap::new(),
            now: coarse_clock()?,
            query: query.clone(),
        })
    }

    /// The entry as `conn list` shows it, if the query matches it.
    fn matching(&mut self, k: &FlowKey, v: &ConnValue) -> Option<Conn> {
        let client_ip = addr::from_words(k.family, k.src);
        if self.query.client.is_some_and(|c| c != client_ip) {
            return None;
        }
        let dst = SocketAddr::new(addr::from_words(k.family, k.dst), u16::from_be(k.dport));
        // An id the entry names may have been given to another VIP since: only one that
        // serves this destination is the entry's.
        let vip = self.vips.get(&v.vip).copied().filter(|a| {
            a.ip == dst.ip() && a.proto.number() == k.proto && (a.port == 0 || a.port == dst.port())
        });
        if self.query.vip.is_some_and(|q| Some(q) != vip) {
            return None;
        }
        let slot = *self
            .slots
            .entry(v.backend)
            .or_insert_with(|| self.backends.get(&v.backend, 0).ok());
        // Same generation: the slot still describes the backend the flow was recorded for.
        let same = slot.filter(|s| s.generation == v.generation);
        let backend = same.map(|s| addr::from_words(s.family, s.addr));
        if self.query.backend.is_some_and(|q| Some(q) != backend) {
            return None;
        }
        let mode = if v.vip_flags & VIP_F_MODE_L3 != 0 {
            Mode::L3
        } else {
            Mode::L2
        };
        let to = match (mode, same, backend) {
            (Mode::L3, Some(s), Some(ip)) => {
                // Port 0: the backend keeps the client's destination port.
                let port = match u16::from_be(s.port) {
                    0 => dst.port(),
                    p => p,
                };
                Some(SocketAddr::new(ip, port))
            }
            _ => None,
        };
        let active = same.is_some_and(|s| s.flags & BACKEND_F_VALID != 0);
        Some(Conn {
            proto: match k.proto {
                6 => "tcp".into(),
                17 => "udp".into(),
                p => p.to_string(),
            },
            client: SocketAddr::new(client_ip, u16::from_be(k.sport)),
            dst,
            vip,
            mode,
            backend,
            backend_id: v.backend,
            to,
            state: if active { "active" } else { "stale" },
            idle_ms: (mode == Mode::L3).then(|| self.idle_ms(v)).flatten(),
        })
    }

    /// Time since the later of the entry's two next-hop checks (0: never checked).
    fn idle_ms(&self, v: &ConnValue) -> Option<u64> {
        let last = [v.hop.checked, v.reply_hop.checked]
            .into_iter()
            .filter(|&c| c != 0)
            .min_by_key(|&c| self.now.wrapping_sub(c))?;
        Some((u64::from(self.now.wrapping_sub(last)) << CLOCK_SHIFT) / 1_000_000)
    }
}

/// `Hop::checked` counts 2^CLOCK_SHIFT ns of the kernel's coarse monotonic clock.
const CLOCK_SHIFT: u32 = 20;

/// The clock the data path stamps hops with (`bpf_ktime_get_coarse_ns`, which is
/// CLOCK_MONOTONIC_COARSE), in `Hop::checked` units, as the data path truncates it.
fn coarse_clock() -> Result<u32, String> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) } != 0 {
        return Err(format!(
            "reading the coarse monotonic clock: {}",
            std::io::Error::last_os_error()
        ));
    }
    let ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    Ok(((ns >> CLOCK_SHIFT) as u32).max(1))
}
