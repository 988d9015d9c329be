//! Following MAC addresses: backends' (from the neighbour table) and the load balancer's own
//! interfaces'. The kernel announces each change (`daemon::neighbours` reads them); a change
//! that matters updates the cache and resyncs the maps, logged at INFO. Probing for a MAC
//! blocks for up to 1.5 s, so it happens before the lock is taken (`macs_to_resolve`, then
//! `learn_macs`); under the lock only the cache and the kernel's table are read.

use std::net::IpAddr;

use netlink_packet_route::AddressFamily;

use super::{edited, Core};
use crate::{
    api::Request,
    config::Config,
    iface,
    model::{Mac, Mode},
    neigh::{Change, Neighbour},
};

/// A cached MAC's key: the backend's address and the interface it is reached by, if given.
pub type MacKey = (IpAddr, Option<String>);

impl Core {
    /// The backend MACs `req` would need that neither the cache nor `--mac` gives: to be
    /// probed for without the lock. Empty for queries and refused changes.
    pub fn macs_to_resolve(&self, req: &Request) -> Vec<MacKey> {
        if !is_change(req) {
            return Vec::new();
        }
        // A change the configuration's rules refuse probes for nothing (a multicast backend,
        // say): the refusal comes at once instead of after a probe's wait.
        match edited(&self.config, req.clone()) {
            Ok(new) if new.validate().is_ok() => self.macs_missing(&new),
            _ => Vec::new(),
        }
    }

    /// The backend MACs `config` needs that the cache does not hold (at start-up: to probe for
    /// before the first commit, as a change does).
    pub fn macs_missing(&self, config: &Config) -> Vec<MacKey> {
        let mut keys = l2_macs_wanted(config);
        keys.retain(|k| !self.macs.contains_key(k));
        keys.sort();
        keys.dedup();
        keys
    }

    /// MACs found without the lock, for the change that follows (unused ones are dropped by
    /// the next commit).
    pub fn learn_macs(&mut self, found: Vec<(MacKey, Mac)>) {
        for (key, mac) in found {
            self.macs.entry(key).or_insert(mac);
        }
    }

    /// Applies what the kernel announced; resyncs once if a backend's or an interface's MAC
    /// changed.
    pub fn follow(&mut self, changes: &[Change]) {
        let mut why = None;
        for c in changes {
            match c {
                Change::Neighbour(n) if self.follow_neighbour(n) => {
                    why = Some("a backend's MAC changed");
                }
                Change::Link { ifindex, mac } if self.follow_link(*ifindex, *mac) => {
                    why = Some("an interface's MAC changed");
                }
                _ => {}
            }
        }
        if let Some(why) = why {
            self.resync(why);
        }
    }

    /// Reads every followed MAC afresh: after the kernel dropped change messages.
    pub fn recheck_macs(&mut self) {
        let mut changes = Vec::new();
        // One dump for every backend, not one each.
        let table = match crate::neigh::table(AddressFamily::Unspec) {
            Ok(t) => t,
            Err(e) => {
                log::warn!("{e}; the backends' MACs stay as they were");
                Vec::new()
            }
        };
        for (addr, via) in self.macs.keys().cloned().collect::<Vec<_>>() {
            let ifindex = match &via {
                Some(v) => match iface::index(v) {
                    Ok(i) => i,
                    Err(_) => continue,
                },
                None => 0,
            };
            if let Some(mac) = crate::neigh::find(&table, addr, via.as_ref().map(|_| ifindex)) {
                changes.push(Change::Neighbour(Neighbour {
                    addr,
                    ifindex,
                    mac: Some(mac),
                }));
            }
        }
        for name in self.registered_names() {
            if let (Ok(ifindex), Ok(mac)) = (iface::index(&name), iface::mac(&name)) {
                changes.push(Change::Link { ifindex, mac });
            }
        }
        self.follow(&changes);
    }

    /// A neighbour entry's MAC, for the backends it is the address of. `ifindex` 0 matches
    /// any interface (a recheck of a backend without `via`).
    fn follow_neighbour(&mut self, n: &Neighbour) -> bool {
        let Some(mac) = n.mac else {
            // Deleted or failing: keep sending to the last MAC known until a new one appears.
            return false;
        };
        let on = |via: &Option<String>| match via {
            None => true,
            Some(v) => n.ifindex == 0 || iface::index(v).is_ok_and(|i| i == n.ifindex),
        };
        let mut changed = false;
        for ((addr, via), cached) in self.macs.iter_mut() {
            if *addr != n.addr || *cached == mac || !on(via) {
                continue;
            }
            for vip in self.config.vips.iter().filter(|v| {
                v.mode == Mode::L2
                    && v.backend(*addr)
                        .is_some_and(|b| b.mac.is_none() && &b.via == via)
            }) {
                log::info!("backend {addr} of VIP {}: MAC {cached} -> {mac}", vip.addr);
            }
            *cached = mac;
            changed = true;
        }
        // Backends left out for the lack of a MAC come in now rather than on the next tick.
        let via_matches = |via: Option<&str>| on(&via.map(str::to_owned));
        changed |=
            self.learn_unresolved(|addr, via| (addr == n.addr && via_matches(via)).then_some(mac));
        changed
    }

    /// An interface's MAC: when the data path knows it under another one (registered at
    /// attach, or as a `via` egress), registers it again; the resync that follows rewrites the
    /// backends that take their source MAC from it.
    fn follow_link(&mut self, ifindex: u32, mac: Mac) -> bool {
        let Some(old) = self.dp.registered_mac(ifindex) else {
            return false;
        };
        if old == mac {
            return false;
        }
        let name = self
            .registered_names()
            .into_iter()
            .find(|n| iface::index(n).is_ok_and(|i| i == ifindex))
            .unwrap_or_else(|| format!("ifindex {ifindex}"));
        if let Err(e) = self.dp.register_iface(ifindex, mac) {
            log::error!("interface {name}: MAC {old} -> {mac}, but registering it failed: {e}");
            return false;
        }
        log::info!("interface {name}: MAC {old} -> {mac}; the data path follows it");
        true
    }

    /// Interfaces the data path has registered: attached ones and `via` egresses.
    fn registered_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .config
            .interfaces
            .iter()
            .map(|i| i.name.clone())
            .collect();
        names.extend(
            self.config
                .vips
                .iter()
                .flat_map(|v| v.backends.iter().filter_map(|b| b.via.clone())),
        );
        names.sort();
        names.dedup();
        names
    }
}

/// The MAC keys of `config`'s L2 backends that have no `--mac`.
pub(super) fn l2_macs_wanted(config: &Config) -> Vec<MacKey> {
    config
        .vips
        .iter()
        .filter(|v| v.mode == Mode::L2)
        .flat_map(|v| {
            v.backends
                .iter()
                .filter(|b| b.mac.is_none())
                .map(|b| (b.addr, b.via.clone()))
        })
        .collect()
}

fn is_change(req: &Request) -> bool {
    matches!(
        req,
        Request::BackendAdd(_) | Request::BackendSet(_) | Request::Apply { .. }
    )
}
