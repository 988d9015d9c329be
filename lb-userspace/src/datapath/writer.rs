//! The kernel maps as the mirror's `MapWriter`: each write goes through the test faults
//! (`faults`) first, and arrays take batched updates.

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use lb_common::{maps as m, BackendInfo, Endpoint, EndpointKey, TrafficCounters, VipInfo, VipKey};

use super::{nr_cpus, DataPath, DataPathError};
use crate::mirror::{MapWriter, MirrorError};

impl DataPath {
    /// Writer for the mirror.
    pub fn writer(&mut self) -> KernelMaps<'_> {
        KernelMaps { dp: self }
    }
}

/// The kernel maps as the mirror's `MapWriter`.
pub struct KernelMaps<'a> {
    dp: &'a mut DataPath,
}

fn mirror_err(map: &'static str) -> impl Fn(DataPathError) -> MirrorError {
    move |e| MirrorError::Map {
        map,
        reason: e.to_string(),
    }
}

impl KernelMaps<'_> {
    /// One `BPF_MAP_UPDATE_BATCH` into array `map`.
    fn batch<V: aya::Pod>(
        &mut self,
        map: &'static str,
        keys: &[u32],
        values: &[V],
    ) -> Result<(), MirrorError> {
        let err = |reason: String| MirrorError::Map { map, reason };
        if !keys.is_empty() {
            self.dp.faults.before_write(map).map_err(err)?;
        }
        match self.dp.ebpf.map(map) {
            Some(aya::maps::Map::Array(data)) => {
                crate::batch::update(data, keys, values).map_err(|e| err(e.to_string()))
            }
            _ => Err(err("not an array in the object".into())),
        }
    }

    fn write<'b, T, F>(&'b mut self, map: &'static str, f: F) -> Result<(), MirrorError>
    where
        T: TryFrom<&'b mut aya::maps::Map, Error = aya::maps::MapError>,
        F: FnOnce(&mut T) -> Result<(), aya::maps::MapError>,
    {
        self.dp
            .faults
            .before_write(map)
            .map_err(|reason| MirrorError::Map { map, reason })?;
        let mut typed: T = self.dp.typed(map).map_err(mirror_err(map))?;
        f(&mut typed).map_err(|e| MirrorError::Map {
            map,
            reason: e.to_string(),
        })
    }
}

impl MapWriter for KernelMaps<'_> {
    fn put_vip(&mut self, key: &VipKey, info: &VipInfo) -> Result<(), MirrorError> {
        self.write(m::VIPS, |v: &mut HashMap<&mut MapData, VipKey, VipInfo>| {
            v.insert(key, info, 0)
        })
    }

    fn del_vip(&mut self, key: &VipKey) -> Result<(), MirrorError> {
        self.write(
            m::VIPS,
            |v: &mut HashMap<&mut MapData, VipKey, VipInfo>| match v.remove(key) {
                Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                r => r,
            },
        )
    }

    fn put_backend(&mut self, id: u32, info: &BackendInfo) -> Result<(), MirrorError> {
        self.write(m::BACKENDS, |a: &mut Array<&mut MapData, BackendInfo>| {
            a.set(id, info, 0)
        })
    }

    fn put_endpoint(&mut self, key: &EndpointKey, value: &Endpoint) -> Result<(), MirrorError> {
        self.write(
            m::ENDPOINTS,
            |h: &mut HashMap<&mut MapData, EndpointKey, Endpoint>| h.insert(key, value, 0),
        )
    }

    fn del_endpoint(&mut self, key: &EndpointKey) -> Result<(), MirrorError> {
        self.write(
            m::ENDPOINTS,
            |h: &mut HashMap<&mut MapData, EndpointKey, Endpoint>| match h.remove(key) {
                Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                r => r,
            },
        )
    }

    fn reset_counters(&mut self, vip: bool, id: u32) -> Result<(), MirrorError> {
        let map = if vip { m::VIP_STATS } else { m::BACKEND_STATS };
        let zeros =
            aya::maps::PerCpuValues::try_from(vec![TrafficCounters::default(); nr_cpus(map)?])
                .map_err(|e| MirrorError::Map {
                    map,
                    reason: e.to_string(),
                })?;
        self.write(map, |a: &mut PerCpuArray<&mut MapData, TrafficCounters>| {
            a.set(id, zeros, 0)
        })
    }

    fn put_filter_words(&mut self, indexes: &[u32], words: &[u64]) -> Result<(), MirrorError> {
        self.batch(m::ADDR_FILTER, indexes, words)
    }
    fn put_ring_lines(&mut self, lines: &[u32], values: &[m::RingLine]) -> Result<(), MirrorError> {
        self.batch(m::RING, lines, values)
    }
}
