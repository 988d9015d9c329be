//! The node's part in a cluster: draining, and the VIP announcements a BGP daemon picks up
//! (`crate::announce`). An address is announced while the node is attached and not drained
//! and one of its VIPs has a serving backend; withdrawn otherwise, and when the daemon stops.
//! A failed route change is logged, shown in `node status` and retried every second.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::Core;
use crate::{
    announce::{self, NodeState, PrefixPlan, RouteTable},
    config::Config,
    model::VipAddr,
};

/// Re-read the kernel table this often (in 1-second ticks), to repair routes someone removed.
const RECHECK_TICKS: u32 = 5;

#[derive(Debug, Default)]
pub struct Node {
    /// `xdplb node drain`: saved, so a restart stays drained.
    pub drained: bool,
    /// The table xdplb's routes are in now (None: none installed anywhere).
    table: Option<RouteTable>,
    /// Addresses routed in `table` as of the last successful change.
    installed: BTreeSet<std::net::IpAddr>,
    last_error: Option<String>,
    dirty: bool,
    ticks: u32,
}

impl Core {
    /// Backends in the ring per VIP of `config`: not down, MAC resolved, weight > 0.
    fn serving(&self, config: &Config) -> Vec<(VipAddr, usize)> {
        config
            .vips
            .iter()
            .map(|v| {
                let n = v
                    .backends
                    .iter()
                    .filter(|b| {
                        let key = (v.addr, b.addr);
                        !b.is_draining()
                            && !self.down.contains(&key)
                            && !self.unresolved.contains(&key)
                    })
                    .count();
                (v.addr, n)
            })
            .collect()
    }

    fn plan_for(&self, config: &Config) -> Vec<PrefixPlan> {
        let node = if self.node.drained {
            NodeState::Drained
        } else if config.interfaces.is_empty() {
            NodeState::NotAttached
        } else {
            NodeState::Serving
        };
        announce::plan(&self.serving(config), node)
    }

    /// Before a change is applied: withdraws what the new configuration no longer announces
    /// from the table in use, so a VIP leaves BGP before it leaves the maps.
    pub(super) fn withdraw_ahead(&mut self, new: &Config) {
        let Some(table) = self.node.table else {
            return;
        };
        if new.announce.as_ref().map(RouteTable::from) != Some(table) {
            return; // another table or none: `announce` moves the routes after the change.
        }
        let wanted: BTreeSet<_> = self
            .plan_for(new)
            .into_iter()
            .filter(|p| p.announce)
            .map(|p| p.addr)
            .collect();
        let keep: BTreeSet<_> = self.node.installed.intersection(&wanted).copied().collect();
        if keep != self.node.installed {
            self.change_routes(table, keep);
        }
    }

    /// Brings the kernel table to what the running configuration announces.
    pub(super) fn announce(&mut self) {
        let target = self.config.announce.as_ref().map(RouteTable::from);
        if let Some(old) = self.node.table.filter(|t| Some(*t) != target) {
            // The table or protocol changed, or announcing was switched off. Until the old
            // table is empty it stays the one in use (retried every tick), so its routes are
            // never forgotten while still announced.
            if !self.change_routes(old, BTreeSet::new()) {
                return;
            }
            self.node.table = None;
        }
        let Some(table) = target else {
            return;
        };
        let wanted = self
            .plan_for(&self.config)
            .into_iter()
            .filter(|p| p.announce)
            .map(|p| p.addr)
            .collect();
        self.node.table = Some(table);
        self.change_routes(table, wanted);
    }

    /// Reconciles `table` to `want`; false (and a retry on the next tick) on failure.
    fn change_routes(&mut self, table: RouteTable, want: BTreeSet<std::net::IpAddr>) -> bool {
        match table.reconcile(&want) {
            Ok(c) => {
                for r in &c.removed {
                    log::info!("withdrawn: {r} (table {})", table.table);
                }
                for r in &c.added {
                    log::info!("announced: {r} (table {})", table.table);
                }
                self.node.installed = want;
                self.node.last_error = None;
                self.node.dirty = false;
                true
            }
            Err(e) => {
                log::error!("announcements in table {}: {e}", table.table);
                self.node.last_error = Some(e);
                self.node.dirty = true;
                false
            }
        }
    }

    /// Every second: retry a failed change; every few seconds, repair the table from the
    /// kernel's view (a route removed by hand comes back).
    pub(super) fn announce_tick(&mut self) {
        self.node.ticks = self.node.ticks.wrapping_add(1);
        if self.node.dirty || self.node.ticks.is_multiple_of(RECHECK_TICKS) {
            self.announce();
        }
    }

    /// On an orderly stop: nothing stays announced for a node that no longer manages it.
    pub fn withdraw_all(&mut self) {
        if let Some(table) = self.node.table {
            if self.change_routes(table, BTreeSet::new()) {
                log::info!("every announcement withdrawn from table {}", table.table);
            }
        }
    }

    /// `xdplb node drain` / `undrain`. Idempotent; refused when nothing is announced anyway.
    pub(super) fn set_drained(&mut self, drained: bool) -> Result<Value, String> {
        if self.config.announce.is_none() {
            return Err("this node announces nothing ([announce] is not configured), so there is nothing to withdraw or restore; see docs/deploy-bgp.md".into());
        }
        let changed = self.node.drained != drained;
        self.node.drained = drained;
        self.announce();
        self.save()?;
        // Saying "drained" while a route is still announced would let an operator stop a node
        // that still attracts traffic. The drain stays in force and is retried every second.
        if let Some(e) = &self.node.last_error {
            return Err(format!(
                "the node is {} but the routes could not be changed yet ({e}); retrying every second, see `xdplb node status`",
                if drained { "drained" } else { "undrained" }
            ));
        }
        Ok(json!({ "drained": drained, "changed": changed }))
    }

    /// `xdplb node status --json`.
    pub fn node_status(&self) -> Value {
        let plan = self.plan_for(&self.config);
        let prefixes: Vec<Value> = plan
            .iter()
            .map(|p| {
                let mut v = json!(p);
                v["announced"] = json!(self.node.installed.contains(&p.addr));
                v
            })
            .collect();
        json!({
            "drained": self.node.drained,
            "announce": self.config.announce,
            "maglev_seed": self.config.maglev_seed(),
            "prefixes": prefixes,
            "last_error": self.node.last_error,
        })
    }

    /// (prefix, announced) for the metrics; None when announcing is off.
    pub(super) fn announced_prefixes(&self) -> Option<Vec<(String, bool)>> {
        self.config.announce.as_ref()?;
        Some(
            self.plan_for(&self.config)
                .iter()
                .map(|p| (p.prefix.clone(), self.node.installed.contains(&p.addr)))
                .collect(),
        )
    }
}
