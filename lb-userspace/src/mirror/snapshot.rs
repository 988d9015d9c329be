//! What a restarted daemon restores the mirror from: the ids it saved (`MirrorSnapshot`) and
//! what the maps it adopted hold (`AdoptedMaps`).

use std::{collections::BTreeMap, net::IpAddr};

use lb_common::{addr, BackendInfo, Endpoint, EndpointKey};

use super::{Mirror, MirroredVip, UNKNOWN_FLAGS};
use crate::model::{BackendTarget, VipAddr};

/// The ids a mirror handed out, saved by the daemon so a restarted daemon keeps them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MirrorSnapshot {
    pub vips: Vec<SnapshotVip>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotVip {
    pub addr: VipAddr,
    pub id: u32,
    /// (backend address, backend id)
    pub backends: Vec<(IpAddr, u32)>,
}

/// What a restarted daemon reads from the maps it adopted: they, not the saved ids, say what
/// the data path holds.
#[derive(Clone, Debug, Default)]
pub struct AdoptedMaps {
    /// The backend array, by id.
    pub backends: Vec<BackendInfo>,
    /// Every entry of the endpoint map.
    pub endpoints: Vec<(EndpointKey, Endpoint)>,
}

impl AdoptedMaps {
    /// The port (host order, 0 for none) of the backend `addr` holding id `id`, or 0 when the
    /// entry is another backend's: then the id is not known to be this backend's endpoint.
    fn port_of(&self, id: u32, addr: IpAddr) -> u16 {
        self.backends
            .get(id as usize)
            .filter(|b| b.addr == addr::to_words(addr) && b.family == addr::family(addr))
            .map_or(0, |b| u16::from_be(b.port))
    }
}

impl Mirror {
    /// The ids handed out, for saving.
    pub fn snapshot(&self) -> MirrorSnapshot {
        MirrorSnapshot {
            vips: self
                .vips
                .iter()
                .map(|(addr, v)| SnapshotVip {
                    addr: *addr,
                    id: v.id,
                    backends: v.backends.iter().map(|(a, (id, _))| (*a, *id)).collect(),
                })
                .collect(),
        }
    }

    /// The mirror of maps adopted from an earlier daemon: ids from its snapshot, generations
    /// and backend ports as read from the backend map (an L3 backend whose port differed
    /// would get a new id, and its flows would be placed again). Contents are treated as
    /// unknown, so the next `sync` rewrites every entry and every ring slot of the kept VIPs
    /// (each write is valid on its own) and removes what is no longer wanted, endpoints
    /// included. Snapshot entries that do not fit the limits are ignored.
    pub fn restore(
        ring_size: u32,
        max_vips: u32,
        max_backends: u32,
        snap: &MirrorSnapshot,
        maps: &AdoptedMaps,
    ) -> Self {
        let mut m = Mirror::new(ring_size, max_vips, max_backends);
        for (i, b) in maps.backends.iter().enumerate().take(max_backends as usize) {
            m.generations[i] = b.generation;
        }
        m.adopted_endpoints = maps.endpoints.iter().copied().collect();
        for v in &snap.vips {
            if !m.free_vip_ids.remove(&v.id) {
                continue;
            }
            let mut backends = BTreeMap::new();
            for (addr, id) in &v.backends {
                if m.free_backend_ids.remove(id) {
                    // Unknown target: differs from any desired one, so it is rewritten.
                    let unknown = BackendTarget {
                        addr: *addr,
                        weight: 0,
                        mac: crate::model::Mac([0; 6]),
                        ifindex: u32::MAX,
                        src_mac: crate::model::Mac([0; 6]),
                        port: maps.port_of(*id, *addr),
                    };
                    backends.insert(*addr, (*id, unknown));
                }
            }
            m.vips.insert(
                v.addr,
                MirroredVip {
                    id: v.id,
                    flags: UNKNOWN_FLAGS,
                    backends,
                    ring: Vec::new(),
                    digest: None,
                },
            );
        }
        m
    }
}
