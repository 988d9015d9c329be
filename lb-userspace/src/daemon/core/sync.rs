//! The maps, the mirror and the running configuration never disagree silently. A write that
//! fails mid-sync leaves the maps part old, part new, and the mirror unsure which: the daemon
//! then reads the maps back (as a restarted daemon adopts them) and rewrites every entry for
//! the running configuration, which rolls a failed change back. While that fails too, the
//! maps are out of sync: `status` and the `xdplb_maps_in_sync` gauge say so, and every tick
//! tries again.

use std::{collections::HashSet, time::Instant};

use serde_json::{json, Value};

use super::Core;
use crate::{
    config::Config,
    daemon::counters::Handover,
    mirror::{Mirror, MirrorSnapshot},
    model::VipState,
};

/// Whether the maps hold the running configuration.
#[derive(Default)]
pub struct SyncState {
    /// The ids of the last sync that completed: a rebuilt mirror starts from them, and they
    /// are the ones saved.
    pub good_ids: MirrorSnapshot,
    /// Set while the maps are out of sync.
    failure: Option<Failure>,
}

struct Failure {
    since: Instant,
    error: String,
    /// Failed attempts after the first.
    retries: u64,
}

/// Why `Core::apply` failed: refused before the first write, or a write failed (with the
/// counters' span the rollback continues).
pub enum ApplyError {
    Refused(String),
    Written(String, Handover),
}

impl SyncState {
    pub fn new(good_ids: MirrorSnapshot) -> SyncState {
        SyncState {
            good_ids,
            failure: None,
        }
    }

    pub fn in_sync(&self) -> bool {
        self.failure.is_none()
    }

    /// `status --json`'s `sync`.
    pub fn status(&self) -> Value {
        match &self.failure {
            None => {
                json!({ "in_sync": true, "error": null, "out_of_sync_seconds": null, "retries": 0 })
            }
            Some(f) => json!({
                "in_sync": false,
                "error": f.error,
                "out_of_sync_seconds": f.since.elapsed().as_secs_f64(),
                "retries": f.retries,
            }),
        }
    }

    fn recovered(&mut self) {
        if self.failure.take().is_some() {
            log::info!("the maps hold the running configuration again");
        }
    }

    fn failed(&mut self, error: String) {
        match &mut self.failure {
            Some(f) => {
                f.error = error;
                f.retries += 1;
            }
            None => {
                self.failure = Some(Failure {
                    since: Instant::now(),
                    error,
                    retries: 0,
                })
            }
        }
    }
}

impl Core {
    /// Writes `states` and the record limit; once both are written, the mirror's ids are the
    /// good ones.
    pub(super) fn write_states(
        &mut self,
        span: &mut Handover,
        states: &[VipState],
        record_limit: u32,
    ) -> Result<(), String> {
        span.sync(&mut self.dp, &mut self.mirror, states)
            .map_err(|e| e.to_string())?;
        self.dp.set_record_limit(record_limit).map_err(|e| {
            format!("setting the connection table's record limit to {record_limit} failed: {e}")
        })?;
        self.sync.good_ids = self.mirror.snapshot();
        Ok(())
    }

    /// After a change failed at a write (`error`): the maps back to the running configuration.
    /// Returns the change's error, saying where the maps are.
    pub(super) fn roll_back(&mut self, error: String, span: Handover) -> String {
        // At start-up the running configuration is the empty one: rolling back to it would
        // remove every VIP the pinned maps still balance.
        if self.lenient {
            self.carried.end(span, &self.dp, &self.mirror);
            return format!("{error}; the maps keep what was written so far, and the next start rewrites every entry");
        }
        match self.reconcile(span) {
            Ok(()) => format!(
                "{error}; the change was rolled back: the maps hold the running configuration as before"
            ),
            Err(again) => format!(
                "{error}; rolling it back failed too ({again}): the maps are out of sync with the running configuration, and the daemon retries every second (`xdplb status` shows it)"
            ),
        }
    }

    /// Writes the maps for the running configuration (after a change of health or MACs, or
    /// to retry while out of sync); a failure leaves them out of sync.
    pub(super) fn write_running(&mut self, why: &str) {
        let mut span = Handover::begin(&self.mirror);
        if !self.sync.in_sync() {
            let _ = self.reconcile(span); // logged and shown in status
            return;
        }
        let config = self.config.clone();
        let result = self
            .resolve(&config)
            .and_then(|s| self.write_states(&mut span, &s, config.record_limit()));
        match result {
            Ok(()) => self.carried.end(span, &self.dp, &self.mirror),
            Err(e) => {
                log::error!("applying the change ({why}) failed: {e}; rewriting every map entry for the running configuration");
                let _ = self.reconcile(span);
            }
        }
    }

    /// `rewrite` for the running configuration; a failure leaves the maps out of sync.
    fn reconcile(&mut self, mut span: Handover) -> Result<(), String> {
        let config = self.config.clone();
        let result = self
            .resolve(&config)
            .and_then(|states| self.rewrite(&mut span, &config, &states));
        self.carried.end(span, &self.dp, &self.mirror);
        if let Err(e) = &result {
            if self.sync.in_sync() {
                log::error!("the maps are out of sync with the running configuration: {e}; retrying every second");
            }
            self.sync.failed(e.clone());
        }
        result
    }

    /// Rebuilds the mirror from the maps and the last good ids, rewrites every entry for
    /// `config` (resolved as `states`) and sweeps what no part of it holds: the maps are in
    /// sync again.
    pub(super) fn rewrite(
        &mut self,
        span: &mut Handover,
        config: &Config,
        states: &[VipState],
    ) -> Result<(), String> {
        let maps = self
            .dp
            .adopted_maps()
            .map_err(|e| format!("reading the maps back failed: {e}"))?;
        let o = self.dp.options();
        self.mirror = Mirror::restore(
            o.ring_size,
            o.max_vips,
            o.max_backends,
            &self.sync.good_ids,
            &maps,
        );
        self.mirror.set_seed(config.maglev_seed());
        self.write_states(span, states, config.record_limit())?;
        self.sweep(config)?;
        self.sync.recovered();
        Ok(())
    }

    /// Removes the VIP entries and invalidates the backend slots that belong to nothing of
    /// `config`: leftovers of an earlier daemon or of a failed change.
    pub(super) fn sweep(&mut self, config: &Config) -> Result<usize, String> {
        let mut keep_vips = HashSet::new();
        for v in &config.vips {
            keep_vips.insert(v.addr.key());
            keep_vips.insert(v.addr.address_key());
        }
        self.dp
            .sweep(&keep_vips, &self.mirror.backend_ids())
            .map_err(|e| format!("removing stale map entries failed: {e}"))
    }
}
