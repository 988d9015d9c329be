//! The daemon's core: the running configuration, the data path it owns, and every change to
//! them. A change is validated and resolved (MAC addresses, interfaces) in full before the
//! first write; the mirror then writes only what differs; the state is saved last.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Instant,
};

mod macs;
mod node;
mod sync;

use lb_common::{hash::flow_hash, stats, TrafficCounters};
pub use macs::MacKey;
use serde_json::{json, Value};

use self::sync::{ApplyError, SyncState};
use super::{
    counters::{Carried, CounterKey, Handover},
    state::{self, SavedMac, SavedState, STATE_VERSION},
};
use crate::{
    api::{BackendChange, Request},
    config::{diff, BackendConfig, Change, CheckSpec, Config, InterfaceConfig, VipConfig},
    datapath::{AttachMode, Attached, DataPath},
    health::{Checker, TargetName},
    iface,
    metrics::{BackendMetrics, MetricsSnapshot, NodeMetrics, VipMetrics},
    mirror::Mirror,
    model::{flow_key, BackendTarget, Mac, Mode, VipAddr, VipSpec, VipState},
    neigh, veth,
};

/// A backend of a VIP.
pub type BackendKey = (VipAddr, IpAddr);

impl TargetName for BackendKey {
    fn target_name(&self) -> String {
        format!("backend {} of VIP {}", self.1, self.0)
    }
}

/// A VIP (backend `None`) or one of its backends, for rates.
type RateKey = CounterKey;

/// Where the daemon keeps things.
#[derive(Clone, Debug)]
pub struct Paths {
    pub socket: PathBuf,
    pub pin_path: PathBuf,
    pub state_file: PathBuf,
}

#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    at: Option<Instant>,
    packets: u64,
    bytes: u64,
    pps: f64,
    bps: f64,
}

pub struct Core {
    pub dp: DataPath,
    pub mirror: Mirror,
    pub config: Config,
    pub paths: Paths,
    pub health: Checker<BackendKey>,
    /// Backends whose health check failed: out of the ring until they rise again.
    down: HashSet<BackendKey>,
    macs: HashMap<(IpAddr, Option<String>), Mac>,
    /// Counter samples for rates, by VIP and by (VIP, backend).
    rates: HashMap<RateKey, Sample>,
    /// What ids held before the current ones counted, so counters never go back.
    carried: Carried,
    started: Instant,
    /// Interfaces whose attachment was adopted from an earlier daemon.
    adopted: usize,
    /// Backends left out because their MAC could not be resolved (start-up only).
    unresolved: HashSet<BackendKey>,
    /// Set while starting: unresolvable MACs leave a backend out instead of failing.
    lenient: bool,
    /// Whether the maps hold the running configuration (core/sync.rs).
    sync: SyncState,
    /// Set during a dry run: `resolve` checks interfaces instead of registering them.
    checking: bool,
    /// Drain state and VIP announcements (core/node.rs).
    node: node::Node,
}

fn not_found_vip(vip: &VipAddr) -> String {
    format!("no VIP {vip}; `xdplb vip list` shows the VIPs")
}

fn not_found_backend(vip: &VipAddr, addr: IpAddr) -> String {
    format!("VIP {vip} has no backend {addr}; `xdplb vip list` shows its backends")
}

/// The backend `addr` of VIP `vip` in a configuration being edited.
fn backend_mut<'a>(
    config: &'a mut Config,
    vip: &VipAddr,
    addr: IpAddr,
) -> Result<&'a mut BackendConfig, String> {
    let v = config.vip_mut(vip).ok_or_else(|| not_found_vip(vip))?;
    v.backends
        .iter_mut()
        .find(|b| b.addr == addr)
        .ok_or_else(|| not_found_backend(vip, addr))
}

/// The configuration a change request asks for, not yet checked (`Core::commit` does).
fn edited(running: &Config, req: Request) -> Result<Config, String> {
    let mut new = running.clone();
    match req {
        Request::VipAdd { vip, mode, hash } => {
            if new.vip(&vip).is_some() {
                return Err(format!(
                    "VIP {vip} already exists; delete it first to change its mode or hash"
                ));
            }
            new.vips.push(VipConfig {
                addr: vip,
                mode,
                hash,
                health: None,
                backends: Vec::new(),
            });
        }
        Request::VipDel { vip } => {
            let before = new.vips.len();
            new.vips.retain(|v| v.addr != vip);
            if new.vips.len() == before {
                return Err(not_found_vip(&vip));
            }
        }
        Request::VipSet { vip, check } => {
            new.vip_mut(&vip).ok_or_else(|| not_found_vip(&vip))?.health = check.into_check();
        }
        Request::BackendAdd(BackendChange {
            vip,
            addr,
            weight,
            mac,
            via,
            check,
        }) => {
            let v = new.vip_mut(&vip).ok_or_else(|| not_found_vip(&vip))?;
            if v.backend(addr.ip).is_some() {
                return Err(format!(
                    "backend {} is already in VIP {vip}; `xdplb backend set` changes it",
                    addr.ip
                ));
            }
            v.backends.push(BackendConfig {
                addr: addr.ip,
                port: addr.port,
                weight: weight.unwrap_or(1),
                drained: false,
                mac,
                via,
                health: check.and_then(CheckSpec::into_check),
            });
        }
        Request::BackendSet(change) => {
            let BackendChange {
                vip,
                addr,
                weight,
                mac,
                via,
                check,
            } = change;
            if weight.is_none()
                && mac.is_none()
                && via.is_none()
                && check.is_none()
                && addr.port.is_none()
            {
                return Err(
                    "backend set needs at least one of ADDR:PORT, --weight, --mac, --via, --check"
                        .into(),
                );
            }
            let b = backend_mut(&mut new, &vip, addr.ip)?;
            // A drained backend keeps draining: the new weight is the one undrain restores.
            b.weight = weight.unwrap_or(b.weight);
            if let Some(c) = check {
                b.health = c.into_check();
            }
            b.port = addr.port.or(b.port);
            b.mac = mac.or(b.mac);
            b.via = via.or(b.via.take());
        }
        Request::BackendDel { vip, addr } => {
            backend_mut(&mut new, &vip, addr)?;
            new.vip_mut(&vip)
                .expect("checked above")
                .backends
                .retain(|b| b.addr != addr);
        }
        Request::BackendDrain { vip, addr } => backend_mut(&mut new, &vip, addr)?.drained = true,
        Request::BackendUndrain { vip, addr } => {
            let b = backend_mut(&mut new, &vip, addr)?;
            if !b.drained && b.weight == 0 {
                return Err(format!(
                    "backend {addr} of VIP {vip} has weight 0 and no kept weight to restore; `xdplb backend set {vip} {addr} --weight N` gives it one"
                ));
            }
            b.drained = false;
        }
        Request::Attach { iface, xdp_mode } => {
            if new.interfaces.iter().any(|i| i.name == iface) {
                return Err(format!("xdplb is already attached to {iface}"));
            }
            new.interfaces.push(InterfaceConfig {
                name: iface,
                xdp_mode,
            });
        }
        Request::Detach { iface } => {
            let before = new.interfaces.len();
            new.interfaces.retain(|i| i.name != iface);
            if new.interfaces.len() == before {
                return Err(format!("xdplb is not attached to {iface}"));
            }
        }
        Request::Apply { config, .. } => {
            new = config;
            // Fixed at start: a file that leaves them out keeps the running ones.
            if new.limits.is_none() {
                new.limits = running.limits.clone();
            }
            if new.metrics.is_none() {
                new.metrics = running.metrics.clone();
            }
        }
        query => return Err(format!("{query:?} is a query, not a change")),
    }
    Ok(new)
}

impl Core {
    pub fn new(dp: DataPath, mirror: Mirror, paths: Paths, health: Checker<BackendKey>) -> Core {
        Core {
            sync: SyncState::new(mirror.snapshot()),
            dp,
            mirror,
            config: Config::default(),
            paths,
            health,
            down: HashSet::new(),
            macs: HashMap::new(),
            rates: HashMap::new(),
            carried: Carried::default(),
            started: Instant::now(),
            adopted: 0,
            unresolved: HashSet::new(),
            lenient: false,
            checking: false,
            node: node::Node::default(),
        }
    }

    /// Brings the data path to `config` at start-up (limits and metrics are taken as given),
    /// then removes whatever an earlier daemon left in adopted maps that is not wanted.
    /// `saved` carries what the previous daemon knew: resolved MACs and failed backends.
    pub fn start(&mut self, config: Config, saved: Option<&SavedState>) -> Result<(), String> {
        self.config.limits = config.limits.clone();
        self.config.metrics = config.metrics.clone();
        if let Some(s) = saved {
            self.macs
                .extend(s.macs.iter().map(|m| ((m.addr, m.via.clone()), m.mac)));
            self.down.extend(s.down.iter().copied());
            self.node.drained = s.drained;
            // Carried counts belong with the live ones of the adopted maps; a data path loaded
            // afresh (after a reboot) counts everything from zero.
            let live = self
                .dp
                .vip_entries()
                .map_err(|e| format!("counting the pinned VIP entries failed: {e}"))?;
            if live > 0 {
                self.carried.restore(&s.carried);
            }
        }
        // A backend whose MAC cannot be found now must not keep the daemon from starting: it
        // stays out of the ring until the neighbour table knows it (retried every second).
        self.lenient = true;
        let result = self.commit(config);
        self.lenient = false;
        result?;
        let swept = self.sweep(&self.config.clone())?;
        if swept > 0 {
            log::info!("removed {swept} stale entries left in the pinned maps");
        }
        Ok(())
    }

    /// Moves everything to `new`: validate, resolve, attach, write maps, detach, save. Nothing
    /// is written before everything that can be checked was; a failed write rolls the maps back
    /// to the running configuration (core/sync.rs).
    pub fn commit(&mut self, mut new: Config) -> Result<(), String> {
        self.preflight(&new)?;
        // Health first: the ring is computed with the failed set the new checks imply.
        self.update_health_targets(&new);
        let seed = self.mirror.seed();
        self.mirror.set_seed(new.maglev_seed());
        let stuck = match self.apply(&new) {
            Ok(stuck) => stuck,
            Err(e) => {
                let old = self.config.clone();
                self.mirror.set_seed(seed);
                self.update_health_targets(&old);
                let e = match e {
                    ApplyError::Refused(e) => e,
                    ApplyError::Written(e, span) => self.roll_back(e, span),
                };
                self.announce();
                return Err(e);
            }
        };
        // An interface that could not be detached is still attached: it stays configured.
        new.interfaces.extend(stuck.iter().map(|(i, _)| i.clone()));
        self.config = new;
        self.forget_unused_macs();
        self.carried.retain_configured(&self.config);
        let saved = self.save();
        self.announce();
        if let Some((i, e)) = stuck.first() {
            return Err(format!("the rest of the change is applied, but detaching {} failed: {e}; it stays in the configuration, and `xdplb detach {}` tries again", i.name, i.name));
        }
        saved
    }

    /// `apply --dry-run`: every check `commit` makes before its first write (the data path's
    /// own included), with nothing written and nothing kept. The failed set is today's: a
    /// changed health check has not probed yet.
    pub fn check(&mut self, new: &Config) -> Result<(), String> {
        self.preflight(new)?;
        let (macs, unresolved) = (self.macs.clone(), self.unresolved.clone());
        self.checking = true;
        let result = self
            .resolve(new)
            .and_then(|states| self.mirror.validate(&states).map_err(|e| e.to_string()));
        self.checking = false;
        (self.macs, self.unresolved) = (macs, unresolved);
        result
    }

    /// What `commit` checks before it changes anything, the kernel's interfaces included.
    fn preflight(&self, new: &Config) -> Result<(), String> {
        new.validate()?;
        if new.limits() != self.config.limits() {
            return Err(format!(
                "limits cannot change while the daemon runs (running {}, requested {}); stop it, run `xdplb daemon --cleanup`, and start it with the new limits",
                self.config.limits(),
                new.limits()
            ));
        }
        if new.metrics != self.config.metrics {
            return Err("the metrics address is fixed when the daemon starts; restart the daemon to change it".into());
        }
        for i in &new.interfaces {
            iface::index(&i.name).map_err(|_| {
                format!(
                    "interface {} does not exist in the daemon's network namespace",
                    i.name
                )
            })?;
        }
        Ok(())
    }

    /// `commit`'s writes; returns the removed interfaces that could not be detached.
    fn apply(&mut self, new: &Config) -> Result<Vec<(InterfaceConfig, String)>, ApplyError> {
        let states = self.resolve(new).map_err(ApplyError::Refused)?;
        self.mirror
            .validate(&states)
            .map_err(|e| ApplyError::Refused(e.to_string()))?;
        // A VIP leaves BGP before it leaves the maps, and joins it after it is in them; only
        // once the change passed every check, so a refused change does not flap routes.
        self.withdraw_ahead(new);
        let mut attached = Vec::new();
        for i in new
            .interfaces
            .iter()
            .filter(|i| !self.config.interfaces.iter().any(|c| c.name == i.name))
        {
            match self.dp.attach(&i.name, AttachMode::from(i.xdp_mode)) {
                Ok(Attached::Adopted) => {
                    log::info!("interface {}: adopted the pinned attachment", i.name);
                    self.adopted += 1;
                }
                Ok(how) => {
                    log::info!("interface {}: {how}", i.name);
                    if let Some(p) = veth::attach_problem(&i.name) {
                        log::warn!("{p}");
                    }
                    attached.push(i.name.clone());
                }
                Err(e) => {
                    self.undo_attach(&attached);
                    return Err(ApplyError::Refused(format!("attaching to {}: {e}", i.name)));
                }
            }
        }
        let mut span = Handover::begin(&self.mirror);
        // Out of sync, the mirror does not know the maps: they are read back and rewritten.
        let written = match self.sync.in_sync() {
            true => self.write_states(&mut span, &states, new.record_limit()),
            false => self.rewrite(&mut span, new, &states),
        };
        if let Err(e) = written {
            self.undo_attach(&attached);
            return Err(ApplyError::Written(e, span));
        }
        self.carried.end(span, &self.dp, &self.mirror);
        let mut stuck = Vec::new();
        for old in &self.config.interfaces {
            if !new.interfaces.iter().any(|i| i.name == old.name) {
                if let Err(e) = self.dp.detach(&old.name) {
                    log::error!("detaching {}: {e}", old.name);
                    stuck.push((old.clone(), e.to_string()));
                }
            }
        }
        Ok(stuck)
    }

    /// Detaches what a failed change attached anew (never an attachment adopted from an
    /// earlier daemon: it was balancing traffic before and must go on doing so).
    fn undo_attach(&mut self, attached: &[String]) {
        for name in attached {
            if let Err(e) = self.dp.detach(name) {
                log::warn!("undoing the attachment to {name}: {e}");
            }
        }
    }

    /// Saves the running state; on failure the running state is kept and the error reported.
    pub fn save(&self) -> Result<(), String> {
        let mut macs: Vec<SavedMac> = self
            .macs
            .iter()
            .map(|((addr, via), mac)| SavedMac {
                addr: *addr,
                via: via.clone(),
                mac: *mac,
            })
            .collect();
        macs.sort_by(|a, b| (a.addr, &a.via).cmp(&(b.addr, &b.via)));
        let mut down: Vec<BackendKey> = self.down.iter().copied().collect();
        down.sort();
        let s = SavedState {
            version: STATE_VERSION,
            config: self.config.clone(),
            ids: self.sync.good_ids.clone(),
            macs,
            down,
            drained: self.node.drained,
            carried: self.carried.saved(),
        };
        state::save(&self.paths.state_file, &s)
            .map_err(|e| format!("the change is applied and running, but {e}"))
    }

    /// The data path's view of `config`: MACs and interfaces resolved, failed backends (and,
    /// at start-up, backends whose MAC is not known yet) left out.
    fn resolve(&mut self, config: &Config) -> Result<Vec<VipState>, String> {
        let mut states = Vec::new();
        for v in &config.vips {
            let mut backends = Vec::new();
            for b in &v.backends {
                let key = (v.addr, b.addr);
                if self.down.contains(&key) {
                    continue;
                }
                let (ifindex, src_mac) = match &b.via {
                    Some(via) if self.checking => iface::index(via)
                        .and_then(|i| Ok((i, iface::mac(via)?)))
                        .map_err(|e| {
                            format!("backend {} of VIP {}: interface {via}: {e}", b.addr, v.addr)
                        })?,
                    Some(via) => self
                        .dp
                        .register_egress(via)
                        .map_err(|e| format!("backend {} of VIP {}: {e}", b.addr, v.addr))?,
                    None => (0, Mac::default()),
                };
                // L3: the FIB picks next hop and MACs per packet; nothing to resolve here.
                let mac = match (v.mode, b.mac) {
                    (Mode::L3, _) => Mac::default(),
                    (Mode::L2, Some(m)) => m,
                    (Mode::L2, None) => match self.mac_of(b) {
                        Ok(m) => m,
                        Err(e) if self.lenient || self.unresolved.contains(&key) => {
                            log::warn!("{e}; it stays out of the ring until its MAC is known");
                            self.unresolved.insert(key);
                            continue;
                        }
                        Err(e) => return Err(e),
                    },
                };
                self.unresolved.remove(&key);
                let port = b.port.unwrap_or(0);
                backends.push(BackendTarget {
                    addr: b.addr,
                    weight: b.ring_weight(),
                    mac,
                    ifindex,
                    // L3 takes its source MAC from the FIB.
                    src_mac: if v.mode == Mode::L2 {
                        src_mac
                    } else {
                        Mac::default()
                    },
                    port,
                });
            }
            states.push(VipState {
                spec: VipSpec {
                    addr: v.addr,
                    mode: v.mode,
                    hash: v.hash,
                },
                backends,
            });
        }
        let wanted: HashSet<BackendKey> = config
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(move |b| (v.addr, b.addr)))
            .collect();
        self.unresolved.retain(|k| wanted.contains(k));
        Ok(states)
    }

    /// The MAC of an L2 backend without `--mac`: cached, else from the kernel's neighbour
    /// table. Never waits (it runs under the lock): an unknown MAC is probed for and refused;
    /// a change request had it probed for before the lock was taken (`macs_to_resolve`).
    fn mac_of(&mut self, b: &BackendConfig) -> Result<Mac, String> {
        let key = (b.addr, b.via.clone());
        if let Some(m) = self.macs.get(&key) {
            return Ok(*m);
        }
        let m = neigh::lookup_or_probe(b.addr, b.via.as_deref())?
            .ok_or_else(|| neigh::unresolved(b.addr))?;
        self.macs.insert(key, m);
        Ok(m)
    }

    /// Drops cached MACs no backend uses any more, so a backend deleted and added again is
    /// looked up afresh (its host may have been replaced).
    fn forget_unused_macs(&mut self) {
        let used: HashSet<MacKey> = macs::l2_macs_wanted(&self.config).into_iter().collect();
        self.macs.retain(|k, _| used.contains(k));
    }

    /// The interface a configured backend is reached through (`via`), if it names one.
    fn via_of(&self, vip: &VipAddr, addr: IpAddr) -> Option<String> {
        self.config
            .vip(vip)
            .and_then(|v| v.backend(addr))
            .and_then(|b| b.via.clone())
    }

    /// Called every second: looks again for the MACs of backends kept out for the lack of one
    /// (without blocking: a probe now, the answer on a later tick).
    pub fn retry_unresolved(&mut self) {
        if self.unresolved.is_empty() {
            return;
        }
        let mut found = false;
        for (vip, addr) in self.unresolved.clone() {
            let via = self.via_of(&vip, addr);
            if let Ok(Some(mac)) = neigh::lookup_or_probe(addr, via.as_deref()) {
                log::info!("backend {addr} of VIP {vip}: MAC {mac} found");
                self.macs.insert((addr, via), mac);
                found = true;
            }
        }
        if found {
            self.resync("a backend's MAC was found");
        }
    }

    /// Rewrites the maps for the running configuration after a change of health or MACs (or
    /// to retry while they are out of sync).
    fn resync(&mut self, why: &str) {
        self.write_running(why);
        if let Err(e) = self.save() {
            log::error!("{e}");
        }
        self.announce();
    }

    /// The 1-second tick: rates, MAC retries, and a resync that failed before.
    pub fn tick(&mut self) {
        self.sample_rates();
        self.carried.retry_unread(&self.dp);
        self.retry_unresolved();
        if !self.sync.in_sync() {
            self.resync("retry");
        }
        self.announce_tick();
    }

    fn update_health_targets(&mut self, config: &Config) {
        let mut targets = Vec::new();
        for v in &config.vips {
            for b in &v.backends {
                if let Some(check) = v.check_for(b) {
                    let port = check.port.unwrap_or(v.addr.port);
                    targets.push(((v.addr, b.addr), SocketAddr::new(b.addr, port), check));
                }
            }
        }
        let keys: HashSet<BackendKey> = targets.iter().map(|t| t.0).collect();
        self.health.set_targets(targets);
        // A backend restored as failed (from the saved state) must rise before it returns.
        for k in &self.down {
            if keys.contains(k) {
                self.health.mark_down(k);
            }
        }
        // A changed check restarts healthy; only backends the checker still sees failing stay out.
        let health = &self.health;
        self.down
            .retain(|k| keys.contains(k) && !health.is_healthy(k));
    }

    /// A health transition: a failed backend leaves the ring (its flows move, no other flow
    /// does), a recovered one returns. The reported state is only a prompt: a message queued
    /// before a reload may be stale, so the checker's current view decides.
    pub fn set_health(&mut self, key: BackendKey, _reported: bool) {
        let healthy = self.health.is_healthy(&key);
        let changed = if healthy {
            self.down.remove(&key)
        } else {
            self.down.insert(key)
        };
        if changed {
            if healthy {
                log::info!("backend {} of VIP {} is up: back in the ring", key.1, key.0);
            } else {
                log::warn!(
                    "backend {} of VIP {} is down: out of the ring",
                    key.1,
                    key.0
                );
            }
            self.resync("health");
        }
    }

    /// Handles one API request. A change becomes a whole new configuration, which `commit`
    /// checks in full (`Config::validate`, the same rules as a configuration file) before
    /// anything is written.
    pub fn handle(&mut self, req: Request) -> Result<Value, String> {
        match req {
            Request::VipList => Ok(self.vip_list()),
            Request::Config => serde_json::to_value(&self.config).map_err(|e| e.to_string()),
            Request::Stats => self.stats(),
            Request::Status => Ok(self.status()),
            Request::Debug { on } => {
                self.dp.set_debug(on).map_err(|e| e.to_string())?;
                Ok(json!({ "debug": on }))
            }
            Request::Simulate { src, sport, vip } => self.simulate(src, sport, vip),
            Request::NodeDrain => self.set_drained(true),
            Request::NodeUndrain => self.set_drained(false),
            Request::NodeStatus => Ok(self.node_status()),
            change => {
                let dry_run = matches!(change, Request::Apply { dry_run: true, .. });
                let new = edited(&self.config, change)?;
                let changes = diff(&self.config, &new);
                let attached: Vec<String> = new
                    .interfaces
                    .iter()
                    .filter(|i| self.config.interfaces.iter().all(|o| o.name != i.name))
                    .map(|i| i.name.clone())
                    .collect();
                if dry_run {
                    self.check(&new)?;
                } else {
                    self.commit(new)?;
                }
                // A newly attached veth whose peer drops what is sent back out.
                let warnings: Vec<String> = match dry_run {
                    true => Vec::new(),
                    false => attached
                        .iter()
                        .filter_map(|i| veth::attach_problem(i))
                        .collect(),
                };
                let changes: Vec<Value> = changes.iter().map(Change::to_json).collect();
                Ok(json!({ "changes": changes, "dry_run": dry_run, "warnings": warnings }))
            }
        }
    }

    fn backend_state(&self, vip: &VipAddr, b: &BackendConfig) -> &'static str {
        if self.down.contains(&(*vip, b.addr)) {
            "down"
        } else if self.unresolved.contains(&(*vip, b.addr)) {
            "unresolved"
        } else if b.is_draining() {
            "draining"
        } else {
            "active"
        }
    }

    /// `vip list --json`: the configuration with data-path ids and backend states. Stable
    /// across restarts (no counters, no timestamps).
    pub fn vip_list(&self) -> Value {
        let vips: Vec<Value> = self
            .config
            .vips
            .iter()
            .map(|v| {
                let backends: Vec<Value> = v
                    .backends
                    .iter()
                    .map(|b| {
                        json!({
                            "addr": b.addr,
                            "port": b.port,
                            "weight": b.weight,
                            "drained": b.drained,
                            "mac": b.mac.or_else(|| self.macs.get(&(b.addr, b.via.clone())).copied()),
                            "via": b.via,
                            "state": self.backend_state(&v.addr, b),
                            "health_check": v.check_for(b).is_some(),
                            "id": self.mirror.backend_id(&v.addr, b.addr),
                        })
                    })
                    .collect();
                json!({
                    "vip": v.addr,
                    "mode": v.mode,
                    "hash": v.hash,
                    "id": self.mirror.vip_id(&v.addr),
                    "ring_digest": self.mirror.ring_digest(&v.addr).map(|d| format!("{d:016x}")),
                    "health": v.health,
                    "backends": backends,
                })
            })
            .collect();
        json!({ "vips": vips })
    }

    /// Reads the counters and updates the rates (called once a second, and by `stats`).
    pub fn sample_rates(&mut self) {
        let now = Instant::now();
        let mut next = HashMap::new();
        let keys = self.config.vips.iter().flat_map(|v| {
            std::iter::once((v.addr, None)).chain(v.backends.iter().map(|b| (v.addr, Some(b.addr))))
        });
        for k in keys {
            let prev = self.rates.get(&k).copied().unwrap_or_default();
            // A failed read keeps the last sample (`stats` reports the error).
            let Ok(c) = self.counters(&k) else {
                next.insert(k, prev);
                continue;
            };
            let mut s = Sample {
                at: Some(now),
                packets: c.packets,
                bytes: c.bytes,
                ..prev
            };
            if let Some(at) = prev.at {
                let dt = now.duration_since(at).as_secs_f64();
                // Keep the last rate for calls that come too soon after a sample.
                if dt >= 0.2 {
                    s.pps = c.packets.saturating_sub(prev.packets) as f64 / dt;
                    s.bps = c.bytes.saturating_sub(prev.bytes) as f64 * 8.0 / dt;
                } else {
                    s.at = prev.at;
                    s.packets = prev.packets;
                    s.bytes = prev.bytes;
                }
            }
            next.insert(k, s);
        }
        self.rates = next;
    }

    /// A VIP's or backend's counters since it was configured (whatever ids it held).
    fn counters(&self, key: &RateKey) -> Result<TrafficCounters, String> {
        self.carried.total(&self.dp, &self.mirror, key)
    }

    fn counters_json(&self, c: TrafficCounters, key: RateKey) -> Value {
        let r = self.rates.get(&key).copied().unwrap_or_default();
        json!({
            "packets": c.packets, "bytes": c.bytes, "new_flows": c.new_flows,
            "reply_packets": c.reply_packets, "reply_bytes": c.reply_bytes,
            "pps": r.pps, "bps": r.bps,
        })
    }

    /// `stats --json`. A counter that cannot be read makes it an error, not a zero.
    pub fn stats(&mut self) -> Result<Value, String> {
        self.sample_rates();
        let mut vips = Vec::new();
        for v in &self.config.vips {
            let vc = self.counters(&(v.addr, None))?;
            let mut entry = self.counters_json(vc, (v.addr, None));
            let mut backends = Vec::new();
            for b in &v.backends {
                let c = self.counters(&(v.addr, Some(b.addr)))?;
                let mut e = self.counters_json(c, (v.addr, Some(b.addr)));
                e["addr"] = json!(b.addr);
                e["state"] = json!(self.backend_state(&v.addr, b));
                backends.push(e);
            }
            entry["vip"] = json!(v.addr);
            entry["mode"] = json!(v.mode);
            entry["backends"] = json!(backends);
            vips.push(entry);
        }
        let counters = self
            .dp
            .stats()
            .map_err(|e| format!("reading the verdict counters failed: {e}"))?;
        let named = |range: std::ops::Range<u32>| -> serde_json::Map<String, Value> {
            range
                .filter_map(|i| {
                    Some((
                        stats::name(i)?.to_string(),
                        json!(counters.get(i as usize).copied().unwrap_or(0)),
                    ))
                })
                .collect()
        };
        Ok(json!({
            "vips": vips,
            "verdicts": named(0..stats::VERDICT_COUNT),
            "events": named(stats::EVENT_BASE..stats::EVENT_BASE + stats::EVENT_COUNT),
        }))
    }

    /// `status --json`.
    pub fn status(&mut self) -> Value {
        let o = self.dp.options().clone();
        let backends_used = self.mirror.backend_ids().len();
        let ring_lines = u64::from(lb_common::maps::ring_lines(o.ring_size));
        let maps = json!([
            { "name": lb_common::maps::VIPS, "used": self.dp.vip_entries().ok(), "max": lb_common::maps::vip_entries(o.max_vips) },
            { "name": lb_common::maps::BACKENDS, "used": backends_used, "max": o.max_backends },
            { "name": lb_common::maps::RING, "used": self.config.vips.len() as u64 * ring_lines, "max": o.max_vips as u64 * ring_lines },
            { "name": lb_common::maps::CONNTRACK, "used": self.dp.conntrack_entries().ok(), "max": o.conntrack_size },
            { "name": lb_common::maps::ENDPOINTS, "used": self.dp.endpoint_entries().ok(), "max": o.max_backends },
        ]);
        let ifaces: Vec<Value> = self
            .dp
            .attachments()
            .into_iter()
            .map(|(name, mode, adopted)| {
                let configured = self
                    .config
                    .interfaces
                    .iter()
                    .find(|i| i.name == name)
                    .map(|i| i.xdp_mode);
                json!({
                    "name": name,
                    "mode": mode.map(|m| m.to_string()).unwrap_or_else(|| "adopted".into()),
                    "configured_mode": configured,
                    "adopted": adopted,
                    "veth_peer": veth::status(&name),
                })
            })
            .collect();
        let mut checks = self.health.status();
        checks.sort_by_key(|(k, _)| *k);
        let health: Vec<Value> = checks
            .into_iter()
            .map(|((vip, addr), s)| json!({ "vip": vip, "backend": addr, "status": s }))
            .collect();
        json!({
            "daemon": {
                "pid": std::process::id(),
                "uptime_seconds": self.started.elapsed().as_secs_f64(),
                "socket": self.paths.socket,
                "pin_path": self.paths.pin_path,
                "state_file": self.paths.state_file,
                "metrics": self.config.metrics.as_ref().map(|m| m.listen),
                "adopted_attachments": self.adopted,
            },
            "program": {
                "name": lb_common::maps::PROG_LB,
                "verified_insns": self.dp.verified_insns(),
                "ring_size": o.ring_size,
                "debug_logging": self.dp.debug().ok(),
                "record_limit": self.dp.record_limit().ok(),
            },
            "interfaces": ifaces,
            "maps": maps,
            "health": health,
            "node": self.node_status(),
            "sync": self.sync.status(),
        })
    }

    /// Which backend a flow gets: the ring's answer (same hash and ring as the data path) and
    /// the connection table's entry, if any.
    fn simulate(&self, src: IpAddr, sport: u16, dst: VipAddr) -> Result<Value, String> {
        if src.is_ipv4() != dst.ip.is_ipv4() {
            return Err(format!(
                "source {src} and VIP {dst} are of different IP families"
            ));
        }
        let all_ports = VipAddr { port: 0, ..dst };
        let vip = [dst, all_ports]
            .into_iter()
            .find(|a| self.config.vip(a).is_some())
            .ok_or_else(|| not_found_vip(&dst))?;
        let cfg = self.config.vip(&vip).expect("found above");
        let key = flow_key(src, sport, &vip, dst.port);
        let hash = flow_hash(
            &key,
            VipSpec {
                addr: vip,
                mode: cfg.mode,
                hash: cfg.hash,
            }
            .flags(),
        );
        let ring_size = self.mirror.ring_size();
        let by_id = |id: u32| {
            cfg.backends
                .iter()
                .find(|b| self.mirror.backend_id(&vip, b.addr) == Some(id))
                .map(|b| b.addr)
        };
        let conn = self.dp.conntrack(&key).map_err(|e| e.to_string())?;
        Ok(json!({
            "vip": vip,
            "src": src,
            "sport": sport,
            "dport": dst.port,
            "hash": hash,
            "slot": hash % ring_size,
            "ring_backend": self.mirror.ring_choice(&vip, &key),
            "conntrack_backend": conn.and_then(|c| by_id(c.backend)),
            "conntrack_entry": conn.is_some(),
        }))
    }

    /// What the metrics endpoint shows.
    pub fn metrics(&mut self) -> Result<MetricsSnapshot, String> {
        let stats = self.stats()?;
        let mut snap = MetricsSnapshot {
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            maps_in_sync: self.sync.in_sync(),
            node: self.announced_prefixes().map(|announced| NodeMetrics {
                drained: self.node.drained,
                announced,
            }),
            ..Default::default()
        };
        let num = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
        for (v, cfg) in stats["vips"]
            .as_array()
            .into_iter()
            .flatten()
            .zip(&self.config.vips)
        {
            let vip = cfg.addr.to_string();
            snap.vips.push(VipMetrics {
                vip: vip.clone(),
                mode: cfg.mode.to_string(),
                packets: num(v, "packets"),
                bytes: num(v, "bytes"),
                new_flows: num(v, "new_flows"),
                reply_packets: num(v, "reply_packets"),
                reply_bytes: num(v, "reply_bytes"),
            });
            for (b, bc) in v["backends"]
                .as_array()
                .into_iter()
                .flatten()
                .zip(&cfg.backends)
            {
                snap.backends.push(BackendMetrics {
                    vip: vip.clone(),
                    backend: bc.addr.to_string(),
                    weight: bc.weight,
                    up: !self.down.contains(&(cfg.addr, bc.addr)),
                    draining: bc.is_draining(),
                    packets: num(b, "packets"),
                    bytes: num(b, "bytes"),
                    new_flows: num(b, "new_flows"),
                    reply_packets: num(b, "reply_packets"),
                    reply_bytes: num(b, "reply_bytes"),
                });
            }
        }
        for (section, out) in [
            ("verdicts", &mut snap.verdicts),
            ("events", &mut snap.events),
        ] {
            if let Some(m) = stats[section].as_object() {
                out.extend(m.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))));
            }
        }
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HashFields;

    fn l3_vip(vip: &str) -> Request {
        Request::VipAdd {
            vip: vip.parse().unwrap(),
            mode: Mode::L3,
            hash: HashFields::FiveTuple,
        }
    }

    fn backend(vip: &str, addr: &str) -> BackendChange {
        BackendChange {
            vip: vip.parse().unwrap(),
            addr: addr.parse().unwrap(),
            weight: None,
            mac: None,
            via: None,
            check: None,
        }
    }

    /// Runs CLI requests as the daemon does (each edit checked in full before it counts, see
    /// `Core::commit`): the configuration they leave, and the errors of the refused ones.
    fn run(requests: Vec<Request>) -> (Config, Vec<String>) {
        let mut running = Config::default();
        let mut errors = Vec::new();
        for r in requests {
            match edited(&running, r).and_then(|c| c.validate().map(|()| c)) {
                Ok(c) => running = c,
                Err(e) => errors.push(e),
            }
        }
        (running, errors)
    }

    const ALL: &str = "10.0.0.1:*/tcp";
    const WEB: &str = "10.0.0.2:80/tcp";

    #[test]
    fn cli_changes_cannot_put_an_all_ports_l3_vip_on_another_vips_backend() {
        let all_first = vec![
            l3_vip(ALL),
            Request::BackendAdd(backend(ALL, "10.0.1.1")),
            l3_vip(WEB),
            Request::BackendAdd(backend(WEB, "10.0.1.1:8080")),
        ];
        let web_first = vec![
            l3_vip(WEB),
            Request::BackendAdd(backend(WEB, "10.0.1.1:8080")),
            l3_vip(ALL),
            Request::BackendAdd(backend(ALL, "10.0.1.1")),
        ];
        for requests in [all_first, web_first] {
            let (running, errors) = run(requests);
            assert_eq!(errors.len(), 1, "{errors:?}");
            for name in [ALL, WEB, "backend 10.0.1.1 "] {
                assert!(errors[0].contains(name), "{:?} names {name}", errors[0]);
            }
            // The refused backend is not there; the rest is.
            let backends: usize = running.vips.iter().map(|v| v.backends.len()).sum();
            assert_eq!((running.vips.len(), backends), (2, 1));
        }
    }

    #[test]
    fn drain_keeps_the_weight_and_undrain_restores_it() {
        let b = |c: &Config| c.vips[0].backends[0].clone();
        let drain = || Request::BackendDrain {
            vip: WEB.parse().unwrap(),
            addr: "10.0.1.1".parse().unwrap(),
        };
        let undrain = || Request::BackendUndrain {
            vip: WEB.parse().unwrap(),
            addr: "10.0.1.1".parse().unwrap(),
        };
        let weight = |w| {
            Request::BackendSet(BackendChange {
                weight: Some(w),
                ..backend(WEB, "10.0.1.1")
            })
        };
        let (c, errors) = run(vec![
            l3_vip(WEB),
            Request::BackendAdd(BackendChange {
                weight: Some(3),
                ..backend(WEB, "10.0.1.1")
            }),
            drain(),
        ]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            (b(&c).weight, b(&c).drained, b(&c).ring_weight()),
            (3, true, 0)
        );
        // A new weight while drained is the one undrain restores.
        let after = |more: Vec<Request>| {
            let mut all = vec![
                l3_vip(WEB),
                Request::BackendAdd(backend(WEB, "10.0.1.1")),
                drain(),
            ];
            all.extend(more);
            run(all)
        };
        let (c, _) = after(vec![weight(5)]);
        assert_eq!((b(&c).weight, b(&c).ring_weight()), (5, 0));
        let (c, _) = after(vec![weight(5), undrain()]);
        assert_eq!(
            (b(&c).weight, b(&c).drained, b(&c).ring_weight()),
            (5, false, 5)
        );
        // Weight 0 (the old way to drain) has nothing to restore.
        let (c, errors) = after(vec![undrain(), weight(0), undrain()]);
        assert_eq!(b(&c).weight, 0);
        assert_eq!(
            errors,
            ["backend 10.0.1.1 of VIP 10.0.0.2:80/tcp has weight 0 and no kept weight to restore; `xdplb backend set 10.0.0.2:80/tcp 10.0.1.1 --weight N` gives it one"]
        );
    }

    #[test]
    fn health_checks_are_set_and_removed_per_backend_and_per_vip() {
        let check = |s: &str| Some(s.parse::<CheckSpec>().unwrap());
        let (c, errors) = run(vec![
            l3_vip(WEB),
            Request::BackendAdd(BackendChange {
                check: check("http:/healthz"),
                ..backend(WEB, "10.0.1.1")
            }),
            Request::VipSet {
                vip: WEB.parse().unwrap(),
                check: check("tcp:8081").unwrap(),
            },
        ]);
        assert!(errors.is_empty(), "{errors:?}");
        let v = &c.vips[0];
        assert_eq!(v.check_for(&v.backends[0]).unwrap().path, "/healthz");
        let (c, _) = run(vec![
            l3_vip(WEB),
            Request::BackendAdd(BackendChange {
                check: check("http:/healthz"),
                ..backend(WEB, "10.0.1.1")
            }),
            Request::BackendSet(BackendChange {
                check: check("none"),
                ..backend(WEB, "10.0.1.1")
            }),
        ]);
        assert_eq!(c.vips[0].backends[0].health, None);
        // An all-ports VIP's check needs a port: refused, nothing set.
        let (c, errors) = run(vec![
            l3_vip(ALL),
            Request::BackendAdd(backend(ALL, "10.0.1.1")),
            Request::VipSet {
                vip: ALL.parse().unwrap(),
                check: check("tcp").unwrap(),
            },
        ]);
        assert_eq!(
            errors,
            ["VIP 10.0.0.1:*/tcp serves all ports: its health check needs an explicit port"]
        );
        assert_eq!(c.vips[0].health, None);
    }

    #[test]
    fn backend_set_cannot_move_an_l3_backend_onto_another_vips_port() {
        let other = "10.0.0.3:80/tcp";
        let (running, errors) = run(vec![
            l3_vip(WEB),
            Request::BackendAdd(backend(WEB, "10.0.1.1:8080")),
            l3_vip(other),
            Request::BackendAdd(backend(other, "10.0.1.1:9090")),
            Request::BackendSet(backend(WEB, "10.0.1.1:9090")),
        ]);
        assert_eq!(
            errors,
            ["backend 10.0.1.1 cannot serve both L3 VIPs 10.0.0.2:80/tcp and 10.0.0.3:80/tcp: both send to its port 9090, so their replies could not be told apart"]
        );
        let web = running.vip(&WEB.parse().unwrap()).unwrap();
        assert_eq!(web.backends[0].port, Some(8080), "unchanged");
    }
}
