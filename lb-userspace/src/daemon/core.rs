//! The daemon's core: the running configuration, the data path it owns, and every change to
//! them. A change is validated and resolved (MAC addresses, interfaces) in full before the
//! first write; the mirror then writes only what differs; the state is saved last.
//! Requests become configurations in `edit`, answers are read in `views`, failed writes are
//! rolled back in `sync`, MACs followed in `macs`, and the node's announcements kept in `node`.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Instant,
};

mod edit;
mod macs;
mod node;
mod sync;
mod views;

use lb_common::{hash::flow_hash, stats, TrafficCounters};
pub use macs::MacKey;
use serde_json::{json, Value};
pub use views::complete_status;

use self::{
    edit::{edited, not_found_vip},
    sync::{ApplyError, SyncState},
};
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
    /// What `apply` found wrong with interfaces it attached (a veth peer that drops frames),
    /// for the answer to the change.
    attach_warnings: Vec<String>,
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
            attach_warnings: Vec::new(),
        }
    }

    /// Brings the data path to `config` at start-up (limits and metrics are taken as given),
    /// then removes whatever an earlier daemon left in adopted maps that is not wanted.
    /// `saved` carries what the previous daemon knew: resolved MACs and failed backends.
    pub fn start(&mut self, config: Config, saved: Option<&SavedState>) -> Result<(), String> {
        self.config.limits = config.limits.clone();
        self.config.metrics = config.metrics.clone();
        // The debug switch is the program's, not pinned: from the saved state, or from the
        // CONFIG slot a daemon of an earlier version left set.
        let legacy = self.dp.take_legacy_debug().map_err(|e| e.to_string())?;
        let debug = legacy || saved.is_some_and(|s| s.debug);
        self.dp.set_debug(debug).map_err(|e| e.to_string())?;
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

    /// Ends a migration of older pins (datapath/upgrade.rs) once `start` has swapped this
    /// daemon's program into every configured attachment.
    pub fn finish_upgrade(&mut self) -> Result<(), String> {
        let Some(report) = self.dp.finish_upgrade().map_err(|e| {
            format!("finishing the upgrade of the pinned maps failed: {e}; the pins keep their old layout version, and the next start migrates again")
        })?
        else {
            return Ok(());
        };
        log::info!("{report}");
        if !report.not_swapped.is_empty() {
            log::warn!(
                "pinned attachments of interfaces not in the configuration still run the previous program, which no longer sees the moved flows: {} (`xdplb attach` adopts one, `xdplb daemon --cleanup` removes every pin)",
                report.not_swapped.join(", ")
            );
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
        if new.limits().load_options(None) != self.config.limits().load_options(None) {
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
                        self.attach_warnings.push(p);
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
            debug: self.dp.debug().unwrap_or(false),
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

    /// Caches the MAC `mac_for` gives (address, `via`) for backends kept out for the lack of
    /// one; whether any such backend now has a MAC cached (a resync brings it in).
    fn learn_unresolved(
        &mut self,
        mut mac_for: impl FnMut(IpAddr, Option<&str>) -> Option<Mac>,
    ) -> bool {
        let mut found = false;
        for (vip, addr) in self.unresolved.clone() {
            let via = self.via_of(&vip, addr);
            if self.macs.contains_key(&(addr, via.clone())) {
                found = true;
                continue;
            }
            if let Some(mac) = mac_for(addr, via.as_deref()) {
                log::info!("backend {addr} of VIP {vip}: MAC {mac} found");
                self.macs.insert((addr, via), mac);
                found = true;
            }
        }
        found
    }

    /// Called every second: looks again for the MACs of backends kept out for the lack of one
    /// (without blocking: a probe now, the answer on a later tick).
    pub fn retry_unresolved(&mut self) {
        if self.unresolved.is_empty() {
            return;
        }
        let found =
            self.learn_unresolved(|addr, via| neigh::lookup_or_probe(addr, via).ok().flatten());
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
                // Saved: the switch lives in the program, which a restarted daemon reloads.
                self.save()?;
                Ok(json!({ "debug": on }))
            }
            Request::Trace(_) => Err("a trace is a stream the connection serves".into()),
            Request::Simulate { src, sport, vip } => self.simulate(src, sport, vip),
            Request::NodeDrain => self.set_drained(true),
            Request::NodeUndrain => self.set_drained(false),
            Request::NodeStatus => Ok(self.node_status()),
            change => {
                let dry_run = matches!(change, Request::Apply { dry_run: true, .. });
                let new = edited(&self.config, change)?;
                let changes = diff(&self.config, &new);
                self.attach_warnings.clear();
                if dry_run {
                    self.check(&new)?;
                } else {
                    self.commit(new)?;
                }
                // Newly attached veths whose peer drops what is sent back out (found by `apply`).
                let warnings = std::mem::take(&mut self.attach_warnings);
                let changes: Vec<Value> = changes.iter().map(Change::to_json).collect();
                Ok(json!({ "changes": changes, "dry_run": dry_run, "warnings": warnings }))
            }
        }
    }
}
