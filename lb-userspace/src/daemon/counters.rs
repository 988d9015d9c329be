//! Traffic counters that only go up while a VIP or backend is configured.
//!
//! The data path counts per id, and ids change hands: a backend whose health check fails (or
//! whose MAC is lost, or whose port or VIP mode changes) releases its id and gets a new,
//! zeroed one when it returns. What an id counted for its holder is carried here when the id
//! is released, by VIP and backend address, and added to whatever id the holder has now; it
//! is forgotten when the holder leaves the configuration. A VIP counts every packet its
//! backends do, on its own id, so the carried parts keep the VIP total equal to the sum of
//! its backends (the ones removed from the configuration aside).

use std::{collections::HashMap, net::IpAddr};

use lb_common::{
    maps::{RingLine, BACKEND_STATS, VIP_STATS},
    BackendInfo, Endpoint, EndpointKey, TrafficCounters, VipInfo, VipKey,
};

use super::state::SavedCounters;
use crate::{
    config::Config,
    datapath::DataPath,
    mirror::{MapWriter, Mirror, MirrorError, SyncReport},
    model::{VipAddr, VipState},
};

/// A VIP (backend `None`) or one of its backends.
pub type CounterKey = (VipAddr, Option<IpAddr>);

/// A slot of the data path's per-id counter arrays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Id {
    Vip(u32),
    Backend(u32),
}

/// What earlier ids counted, by the VIP or backend that held them.
#[derive(Debug, Default)]
pub struct Carried {
    by_key: HashMap<CounterKey, TrafficCounters>,
    /// Released ids whose last counts could not be read, by their last holder: read again
    /// every second (`retry_unread`), or taken from the read made before the id is zeroed.
    unread: HashMap<Id, CounterKey>,
}

/// Ids as a span of syncs found them, and what each id had counted when a sync of the span
/// zeroed it. A failed sync and the rollback that follows are one span: an id released by the
/// first and given back by the second to its holder changed hands only if it was zeroed.
pub struct Handover {
    before: HashMap<CounterKey, Id>,
    zeroed: HashMap<Id, TrafficCounters>,
}

impl Handover {
    pub fn begin(mirror: &Mirror) -> Handover {
        Handover {
            before: held(mirror),
            zeroed: HashMap::new(),
        }
    }

    /// `Mirror::sync`, reading each id's counters before it is zeroed for a new holder;
    /// `Carried::end` carries them, and reads ids released and not handed out again (nothing
    /// counts on them any more), so nothing is lost between the last read and the release.
    pub fn sync(
        &mut self,
        dp: &mut DataPath,
        mirror: &mut Mirror,
        states: &[VipState],
    ) -> Result<SyncReport, MirrorError> {
        let mut writer = Recorder {
            dp,
            zeroed: &mut self.zeroed,
        };
        mirror.sync(&mut writer, states)
    }
}

impl Carried {
    /// Carries what changed hands between the start of `span` and the ids `mirror` holds now.
    pub fn end(&mut self, span: Handover, dp: &DataPath, mirror: &Mirror) {
        self.carry(&span.before, &held(mirror), &span.zeroed, |id| {
            counters(dp, id).map_err(|e| e.to_string())
        });
    }

    fn carry(
        &mut self,
        before: &HashMap<CounterKey, Id>,
        after: &HashMap<CounterKey, Id>,
        zeroed: &HashMap<Id, TrafficCounters>,
        read: impl Fn(Id) -> Result<TrafficCounters, String>,
    ) {
        for (key, id) in before {
            let last = match zeroed.get(id) {
                Some(c) => *c,
                None if after.get(key) != Some(id) => match read(*id) {
                    Ok(c) => c,
                    Err(e) => {
                        log::warn!(
                            "reading the last counters of {} failed: {e}; retried every second",
                            described(key)
                        );
                        self.unread.insert(*id, *key);
                        continue;
                    }
                },
                None => continue,
            };
            self.by_key.entry(*key).or_default().add(&last);
        }
        // Unread ids handed out again were read just before they were zeroed.
        for (id, c) in zeroed {
            if let Some(key) = self.unread.remove(id) {
                self.by_key.entry(key).or_default().add(c);
            }
        }
    }

    /// Reads the released ids whose last counts could not be read before (every second).
    pub fn retry_unread(&mut self, dp: &DataPath) {
        self.retry(|id| counters(dp, id).map_err(|e| e.to_string()));
    }

    fn retry(&mut self, read: impl Fn(Id) -> Result<TrafficCounters, String>) {
        let by_key = &mut self.by_key;
        self.unread.retain(|id, key| match read(*id) {
            Ok(c) => {
                by_key.entry(*key).or_default().add(&c);
                false
            }
            Err(_) => true,
        });
    }

    /// Everything `key` counted while configured: the carried part and its id's live one. A
    /// failed read is an error, never a smaller total (Prometheus would see a counter reset).
    pub fn total(
        &self,
        dp: &DataPath,
        mirror: &Mirror,
        key: &CounterKey,
    ) -> Result<TrafficCounters, String> {
        let mut total = self.by_key.get(key).copied().unwrap_or_default();
        let id = match key.1 {
            None => mirror.vip_id(&key.0).map(Id::Vip),
            Some(b) => mirror.backend_id(&key.0, b).map(Id::Backend),
        };
        if let Some(id) = id {
            let live = counters(dp, id)
                .map_err(|e| format!("reading the counters of {} failed: {e}", described(key)))?;
            total.add(&live);
        }
        Ok(total)
    }

    /// Forgets VIPs and backends `config` no longer has: one added again starts from zero.
    pub fn retain_configured(&mut self, config: &Config) {
        let configured = |(vip, backend): &CounterKey| {
            config
                .vip(vip)
                .is_some_and(|v| backend.is_none_or(|b| v.backend(b).is_some()))
        };
        self.by_key.retain(|key, _| configured(key));
        // An id whose last read failed is kept while its VIP or backend is configured, even
        // before anything was carried for it: dropping it would lose those counts.
        self.unread.retain(|_, key| configured(key));
    }

    /// For the saved state, in a stable order.
    pub fn saved(&self) -> Vec<SavedCounters> {
        let mut out: Vec<SavedCounters> = self
            .by_key
            .iter()
            .map(|(&(vip, backend), c)| SavedCounters {
                vip,
                backend,
                packets: c.packets,
                bytes: c.bytes,
                new_flows: c.new_flows,
                reply_packets: c.reply_packets,
                reply_bytes: c.reply_bytes,
            })
            .collect();
        out.sort_by_key(|s| (s.vip, s.backend));
        out
    }

    pub fn restore(&mut self, saved: &[SavedCounters]) {
        self.by_key = saved
            .iter()
            .map(|s| {
                let c = TrafficCounters {
                    packets: s.packets,
                    bytes: s.bytes,
                    new_flows: s.new_flows,
                    reply_packets: s.reply_packets,
                    reply_bytes: s.reply_bytes,
                };
                ((s.vip, s.backend), c)
            })
            .collect();
    }
}

/// A VIP or backend as the command line names it.
fn described((vip, backend): &CounterKey) -> String {
    match backend {
        None => format!("VIP {vip}"),
        Some(b) => format!("backend {b} of VIP {vip}"),
    }
}

/// The id each VIP and backend holds in the mirror.
fn held(mirror: &Mirror) -> HashMap<CounterKey, Id> {
    let mut ids = HashMap::new();
    for v in mirror.snapshot().vips {
        ids.insert((v.addr, None), Id::Vip(v.id));
        for (b, id) in v.backends {
            ids.insert((v.addr, Some(b)), Id::Backend(id));
        }
    }
    ids
}

fn counters(dp: &DataPath, id: Id) -> Result<TrafficCounters, crate::datapath::DataPathError> {
    match id {
        Id::Vip(id) => dp.vip_counters(id),
        Id::Backend(id) => dp.backend_counters(id),
    }
}

/// The kernel maps' writer, reading each id's counters before they are zeroed for a new
/// holder.
struct Recorder<'a> {
    dp: &'a mut DataPath,
    zeroed: &'a mut HashMap<Id, TrafficCounters>,
}

impl MapWriter for Recorder<'_> {
    fn reset_counters(&mut self, vip: bool, id: u32) -> Result<(), MirrorError> {
        let id_of = if vip { Id::Vip(id) } else { Id::Backend(id) };
        // Counts that cannot be read are not zeroed: the write fails instead of losing them.
        let last = counters(self.dp, id_of).map_err(|e| MirrorError::Map {
            map: if vip { VIP_STATS } else { BACKEND_STATS },
            reason: format!("reading the counters of id {id} before zeroing them: {e}"),
        })?;
        self.dp.writer().reset_counters(vip, id)?;
        self.zeroed.entry(id_of).or_insert(last);
        Ok(())
    }

    fn put_vip(&mut self, key: &VipKey, info: &VipInfo) -> Result<(), MirrorError> {
        self.dp.writer().put_vip(key, info)
    }

    fn del_vip(&mut self, key: &VipKey) -> Result<(), MirrorError> {
        self.dp.writer().del_vip(key)
    }

    fn put_backend(&mut self, id: u32, info: &BackendInfo) -> Result<(), MirrorError> {
        self.dp.writer().put_backend(id, info)
    }

    fn put_endpoint(&mut self, key: &EndpointKey, value: &Endpoint) -> Result<(), MirrorError> {
        self.dp.writer().put_endpoint(key, value)
    }

    fn del_endpoint(&mut self, key: &EndpointKey) -> Result<(), MirrorError> {
        self.dp.writer().del_endpoint(key)
    }

    fn put_ring_lines(&mut self, lines: &[u32], values: &[RingLine]) -> Result<(), MirrorError> {
        self.dp.writer().put_ring_lines(lines, values)
    }

    fn put_filter_words(&mut self, indexes: &[u32], words: &[u64]) -> Result<(), MirrorError> {
        self.dp.writer().put_filter_words(indexes, words)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(packets: u64) -> TrafficCounters {
        TrafficCounters {
            packets,
            bytes: packets * 100,
            new_flows: 1,
            ..Default::default()
        }
    }

    #[test]
    fn released_and_reused_ids_carry_their_last_counts_to_their_holder() {
        let vip: VipAddr = "10.0.0.1:80/tcp".parse().unwrap();
        let key = |b: &str| (vip, Some(b.parse().unwrap()));
        let (a, b, d, e) = (
            key("10.0.1.1"),
            key("10.0.1.2"),
            key("10.0.1.3"),
            key("10.0.1.4"),
        );
        let mut carried = Carried::default();
        carried.by_key.insert(a, c(5));
        // a keeps id 0; b's id 1 is released (down); d's id 2 is released and handed to e in
        // the same sync; the VIP's id 7 is released and handed out again to the VIP itself
        // (a mode change).
        let before = HashMap::from([
            (a, Id::Backend(0)),
            (b, Id::Backend(1)),
            (d, Id::Backend(2)),
            ((vip, None), Id::Vip(7)),
        ]);
        let after = HashMap::from([
            (a, Id::Backend(0)),
            (e, Id::Backend(2)),
            ((vip, None), Id::Vip(7)),
        ]);
        let zeroed = HashMap::from([(Id::Backend(2), c(30)), (Id::Vip(7), c(90))]);
        // What the released id 1 holds after the sync; reading a kept id is a mistake.
        let read = |id| match id {
            Id::Backend(1) => Ok(c(20)),
            other => panic!("{other:?} must not be read"),
        };
        carried.carry(&before, &after, &zeroed, read);
        assert_eq!(carried.by_key[&a], c(5), "a kept its id: nothing carried");
        assert_eq!(carried.by_key[&b], c(20));
        assert_eq!(carried.by_key[&d], c(30));
        assert_eq!(carried.by_key[&(vip, None)], c(90));
        assert!(
            !carried.by_key.contains_key(&e),
            "e's new id started at zero"
        );

        let saved = carried.saved();
        let mut restored = Carried::default();
        restored.restore(&saved);
        assert_eq!(restored.by_key, carried.by_key);

        let mut config = Config::default();
        config.vips.push(crate::config::VipConfig {
            addr: vip,
            mode: Default::default(),
            hash: Default::default(),
            health: None,
            backends: vec![crate::config::BackendConfig::new(
                "10.0.1.2".parse().unwrap(),
            )],
        });
        carried.retain_configured(&config);
        let mut left: Vec<CounterKey> = carried.by_key.keys().copied().collect();
        left.sort();
        assert_eq!(left, [(vip, None), b], "removed backends are forgotten");
    }

    #[test]
    fn a_released_id_that_cannot_be_read_is_read_again_not_lost() {
        let vip: VipAddr = "10.0.0.1:80/tcp".parse().unwrap();
        let (a, b) = ((vip, Some("10.0.1.1".parse().unwrap())), (vip, None));
        let mut carried = Carried::default();
        let before = HashMap::from([(a, Id::Backend(1)), (b, Id::Vip(0))]);
        let after = HashMap::from([(b, Id::Vip(0))]);
        carried.carry(&before, &after, &HashMap::new(), |_| Err("EIO".into()));
        assert!(!carried.by_key.contains_key(&a), "nothing made up");
        // A commit forgets what is no longer configured: the backend still is (its id was
        // released by a health check, say), so its pending read stays.
        let config = Config::from_toml(
            "[[vip]]\naddr = \"10.0.0.1:80/tcp\"\n[[vip.backend]]\naddr = \"10.0.1.1\"\n",
        )
        .unwrap();
        carried.retain_configured(&config);
        assert_eq!(
            carried.unread.len(),
            1,
            "a configured backend's pending read was dropped"
        );
        carried.retry(|_| Err("EIO".into()));
        assert_eq!(carried.unread.len(), 1, "still to be read");
        carried.retry(|_| Ok(c(20)));
        assert_eq!(carried.by_key[&a], c(20));
        assert!(carried.unread.is_empty());

        // Still unread when the id is handed out again: the read before zeroing counts.
        let mut carried = Carried::default();
        carried.carry(&before, &after, &HashMap::new(), |_| Err("EIO".into()));
        let zeroed = HashMap::from([(Id::Backend(1), c(30))]);
        carried.carry(&after, &after, &zeroed, |_| Err("EIO".into()));
        assert_eq!(carried.by_key[&a], c(30));
        assert!(carried.unread.is_empty());
    }
}
