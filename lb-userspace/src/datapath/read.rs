//! Reading the maps back: the stats and traffic counters, entry counts, kernel memory, and what
//! a restarted daemon adopts (with the sweep of the leftovers it does not).

use std::collections::{BTreeSet, HashSet};

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use lb_common::{
    maps as m, stats::STATS_LEN, BackendInfo, ConnValue, Endpoint, EndpointKey, FlowKey, FlowKey4,
    TrafficCounters, VipInfo, VipKey,
};

use super::{conntrack, map_err, DataPath, DataPathError};
use crate::mirror::AdoptedMaps;

impl DataPath {
    /// The stats array summed over CPUs, indexed by `lb_common::stats`.
    pub fn stats(&self) -> Result<Vec<u64>, DataPathError> {
        let arr: PerCpuArray<_, u64> = self.typed_ref(m::STATS)?;
        (0..STATS_LEN)
            .map(|i| Ok(arr.get(&i, 0).map_err(map_err(m::STATS))?.iter().sum()))
            .collect()
    }

    pub fn vip_counters(&self, vip_id: u32) -> Result<TrafficCounters, DataPathError> {
        self.counters(m::VIP_STATS, vip_id)
    }

    pub fn backend_counters(&self, backend_id: u32) -> Result<TrafficCounters, DataPathError> {
        self.counters(m::BACKEND_STATS, backend_id)
    }

    fn counters(&self, map: &'static str, id: u32) -> Result<TrafficCounters, DataPathError> {
        let arr: PerCpuArray<_, TrafficCounters> = self.typed_ref(map)?;
        let mut sum = TrafficCounters::default();
        for c in arr.get(&id, 0).map_err(map_err(map))?.iter() {
            sum.add(c);
        }
        Ok(sum)
    }

    /// What a restarted daemon must know of the maps it adopted: every backend slot (its
    /// generation and port) and every endpoint entry.
    pub fn adopted_maps(&self) -> Result<AdoptedMaps, DataPathError> {
        let arr: Array<_, BackendInfo> = self.typed_ref(m::BACKENDS)?;
        let backends = arr
            .iter()
            .map(|b| b.map_err(map_err(m::BACKENDS)))
            .collect::<Result<_, _>>()?;
        let h: HashMap<_, EndpointKey, Endpoint> = self.typed_ref(m::ENDPOINTS)?;
        let endpoints = h
            .iter()
            .map(|e| e.map_err(map_err(m::ENDPOINTS)))
            .collect::<Result<_, _>>()?;
        Ok(AdoptedMaps {
            backends,
            endpoints,
        })
    }

    /// Removes VIP entries and invalidates backend slots that are not in the given sets:
    /// leftovers of a change an earlier daemon made but did not live to record.
    pub fn sweep(
        &mut self,
        keep_vips: &HashSet<VipKey>,
        keep_backends: &BTreeSet<u32>,
    ) -> Result<usize, DataPathError> {
        let mut removed = 0;
        let mut vips: HashMap<_, VipKey, VipInfo> = self.typed(m::VIPS)?;
        let stale: Vec<VipKey> = vips
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !keep_vips.contains(k))
            .collect();
        for k in stale {
            vips.remove(&k).map_err(map_err(m::VIPS))?;
            removed += 1;
        }
        let mut backends: Array<_, BackendInfo> = self.typed(m::BACKENDS)?;
        for id in 0..backends.len() {
            let mut b = backends.get(&id, 0).map_err(map_err(m::BACKENDS))?;
            if b.flags & lb_common::BACKEND_F_VALID != 0 && !keep_backends.contains(&id) {
                b.flags = 0;
                backends.set(id, b, 0).map_err(map_err(m::BACKENDS))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Entries in a hash map with keys `K`, walking at most `cap` keys: an LRU walk restarts
    /// when the entry under it is evicted, so under churn the figure is approximate but the
    /// call stays bounded. For status, not for hot paths.
    /// Counts a hash map's entries with batched reads (a full 262 144-entry connection table:
    /// about 0.15 s, where key-by-key iteration took 0.6-1.5 s under the daemon's lock).
    pub(super) fn count_keys<K: aya::Pod + Default, V: aya::Pod + Default>(
        &self,
        map: &'static str,
        cap: u32,
    ) -> Result<usize, DataPathError> {
        let data = self.hash_map_data(map)?;
        let mut n = 0;
        crate::batch::lookup_each::<K, V>(data, 4096, |_, _| {
            n += 1;
            n < cap as usize
        })
        .map_err(|e| DataPathError::Map {
            map,
            reason: e.to_string(),
        })?;
        Ok(n)
    }

    /// A hash map of the object, for batched reads.
    pub(super) fn hash_map_data(&self, map: &'static str) -> Result<&MapData, DataPathError> {
        match self.ebpf.map(map) {
            Some(aya::maps::Map::HashMap(d) | aya::maps::Map::LruHashMap(d)) => Ok(d),
            _ => Err(DataPathError::Map {
                map,
                reason: "not a hash map in the object".into(),
            }),
        }
    }

    /// Entries in the connection tables (both families).
    pub fn conntrack_entries(&self) -> Result<usize, DataPathError> {
        let mut n = 0;
        for t in conntrack::tables(&self.opts) {
            n += if t.compact {
                self.count_keys::<FlowKey4, ConnValue>(t.name, t.max_entries)?
            } else {
                self.count_keys::<FlowKey, ConnValue>(t.name, t.max_entries)?
            };
        }
        Ok(n)
    }

    /// Entries in the endpoint map (one per backend of an L3 VIP).
    pub fn endpoint_entries(&self) -> Result<usize, DataPathError> {
        self.count_keys::<EndpointKey, Endpoint>(m::ENDPOINTS, self.opts.max_backends)
    }

    /// Entries in the VIP map (VIPs plus one address entry per VIP address).
    pub fn vip_entries(&self) -> Result<usize, DataPathError> {
        self.count_keys::<VipKey, VipInfo>(m::VIPS, m::vip_entries(self.opts.max_vips))
    }

    /// Kernel memory of each map the load balancer uses (`memlock` of its fdinfo), by name.
    pub fn map_memory(&mut self) -> Result<Vec<(String, u64)>, DataPathError> {
        use std::os::fd::{AsFd, AsRawFd};
        let prog_err = |what: &str, e: String| DataPathError::Map {
            map: "program",
            reason: format!("{what}: {e}"),
        };
        let info = self
            .program()?
            .info()
            .map_err(|e| prog_err("program info", e.to_string()))?;
        let ids = info
            .map_ids()
            .map_err(|e| prog_err("map ids", e.to_string()))?
            .unwrap_or_default();
        let mut out = Vec::new();
        for id in ids {
            let map =
                aya::maps::MapInfo::from_id(id).map_err(|e| prog_err("map info", e.to_string()))?;
            let fd = map.fd().map_err(|e| prog_err("map fd", e.to_string()))?;
            let fdinfo =
                std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd()))
                    .map_err(|e| prog_err("fdinfo", e.to_string()))?;
            let bytes = fdinfo
                .lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            out.push((map.name_as_str().unwrap_or("?").to_string(), bytes));
        }
        out.sort();
        Ok(out)
    }

    /// Verified instruction count of the load balancer program.
    pub fn verified_insns(&mut self) -> Option<u32> {
        self.program()
            .ok()?
            .info()
            .ok()?
            .verified_instruction_count()
    }
}
