//! The pinned maps: which, with what layout (sizes and `LAYOUT_VERSION`), and the check that
//! refuses pins of another layout before anything is touched; `--cleanup` removes them.

use aya::maps::{Array, MapData};
use lb_common::{
    maps as m, stats::STATS_LEN, BackendInfo, ConnValue, Endpoint, EndpointKey, IfaceInfo,
    TrafficCounters, VipInfo, VipKey,
};

use super::{
    upgrade::{migratable, migration_from, Migration},
    *,
};

/// A pinned map: name, key size, value size (None: not checked) and entries.
type PinnedMap = (&'static str, u32, Option<u32>, u32);

/// Every map that is pinned, with the layout it must have for `o`: one table for pinning,
/// `--cleanup` and the adoption check. `XDPLB_JUMP` too: the kernel empties a program array
/// when its last user-space reference goes, so unpinned it would lose the ICMP program while
/// no daemon runs.
pub(super) fn pinned_maps(o: &LoadOptions) -> [PinnedMap; OTHER_PINS + conntrack::TABLES] {
    use std::mem::size_of;
    let counters = size_of::<TrafficCounters>() as u32;
    let conn = size_of::<ConnValue>() as u32;
    let tables = conntrack::tables(o).map(|t| (t.name, t.key_size(), Some(conn), t.max_entries));
    let others: [PinnedMap; OTHER_PINS] = [
        (
            m::ENDPOINTS,
            size_of::<EndpointKey>() as u32,
            Some(size_of::<Endpoint>() as u32),
            o.max_backends,
        ),
        (m::CONFIG, 4, Some(size_of::<u32>() as u32), m::CONFIG_SLOTS),
        (m::JUMP, 4, Some(size_of::<u32>() as u32), m::JUMP_SLOTS),
        (
            m::RECORD_WINDOW,
            4,
            Some(size_of::<[u64; 2]>() as u32),
            m::WINDOWS,
        ),
        (
            m::ADDR_FILTER,
            4,
            Some(size_of::<u64>() as u32),
            m::FILTER_KINDS * m::FILTER_WORDS,
        ),
        (
            m::VIPS,
            size_of::<VipKey>() as u32,
            Some(size_of::<VipInfo>() as u32),
            m::vip_entries(o.max_vips),
        ),
        (
            m::BACKENDS,
            4,
            Some(size_of::<BackendInfo>() as u32),
            o.max_backends,
        ),
        (
            m::RING,
            4,
            Some(size_of::<m::RingLine>() as u32),
            o.max_vips * m::ring_lines(o.ring_size),
        ),
        (
            m::IFACES,
            4,
            Some(size_of::<IfaceInfo>() as u32),
            m::MAX_IFACES,
        ),
        (
            m::IFACE_MACS,
            4,
            Some(size_of::<IfaceInfo>() as u32),
            m::IFACE_MAC_SLOTS,
        ),
        (m::TX_PORTS, 4, None, m::MAX_IFACES),
        (m::VIP_STATS, 4, Some(counters), o.max_vips),
        (m::BACKEND_STATS, 4, Some(counters), o.max_backends),
        (m::STATS, 4, Some(size_of::<u64>() as u32), STATS_LEN),
    ];
    std::array::from_fn(|i| match i.checked_sub(OTHER_PINS) {
        Some(t) => tables[t],
        None => others[i],
    })
}

/// Pinned maps other than the connection tables.
const OTHER_PINS: usize = 14;

/// Refuses maps pinned by a daemon with other limits or another layout: reusing them would
/// make writes fail halfway or the program misread them. Pins of an older layout this daemon
/// migrates from are accepted: the answer is that migration (`upgrade.rs`).
///
/// The sizes are checked against this daemon's layout: the migrations there are keep the size
/// of every map both layouts have (a new layout adds maps, or changes what moves between them).
pub(super) fn check_pinned_layout(
    dir: &std::path::Path,
    o: &LoadOptions,
) -> Result<Option<&'static Migration>, DataPathError> {
    let expected = pinned_maps(o);
    for (name, key, value, max) in expected {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&path).map_err(map_err(name))?;
        let got = (info.key_size(), info.value_size(), info.max_entries());
        if got.0 != key || value.is_some_and(|v| v != got.1) || got.2 != max {
            return Err(DataPathError::PinsRefused {
                map: name,
                reason: format!(
                    "pinned at {} with key {} B, value {} B, {} entries, but this daemon needs key {key} B, value {} B, {max} entries (other limits or an older layout); start with the limits it was made with, or run `xdplb daemon --cleanup` first",
                    path.display(),
                    got.0,
                    got.1,
                    got.2,
                    value.map(|v| v.to_string()).unwrap_or_else(|| "any".into())
                ),
            });
        }
    }
    check_layout_version(&dir.join(m::CONFIG))
}

/// Refuses pins of another layout version (`m::LAYOUT_VERSION`) that this daemon cannot
/// migrate, also where every size matches: the same bytes may mean something else. Nothing is
/// touched.
fn check_layout_version(
    config: &std::path::Path,
) -> Result<Option<&'static Migration>, DataPathError> {
    if !config.exists() {
        return Ok(None);
    }
    let data = MapData::from_pin(config).map_err(map_err(m::CONFIG))?;
    let version = Array::<_, u32>::try_from(aya::maps::Map::Array(data))
        .and_then(|a| a.get(&m::CONFIG_LAYOUT, 0))
        .map_err(map_err(m::CONFIG))?;
    if version == m::LAYOUT_VERSION {
        return Ok(None);
    }
    if let Some(migration) = migration_from(version) {
        return Ok(Some(migration));
    }
    let dir = config
        .parent()
        .map_or_else(String::new, |d| d.display().to_string());
    let why = match version {
        0 => " (none: older than layout versions, or a daemon stopped while loading)".to_string(),
        v if v > m::LAYOUT_VERSION => " (a newer daemon made them)".to_string(),
        _ => String::new(),
    };
    let migrates = match migratable().as_slice() {
        [] => "migrates from no other version".to_string(),
        versions => format!(
            "migrates from version {} only",
            versions
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    Err(DataPathError::PinsRefused {
        map: m::CONFIG,
        reason: format!(
            "the maps pinned in {dir} have layout version {version}{why}; this daemon reads version {} and {migrates}. They are left as they are: run the daemon that made them, or `xdplb daemon --cleanup` first (it drops the connection table)",
            m::LAYOUT_VERSION
        ),
    })
}

/// Maps earlier versions pinned that this one no longer has: `--cleanup` removes their pins
/// too, or they would stay in bpffs for good. `XDPLB_NAT`: the reverse-NAT table, replaced by
/// the endpoint map and the connection table.
pub(super) const RETIRED_MAPS: [&str; 1] = ["XDPLB_NAT"];

impl DataPath {
    /// Removes the pinned attachments and maps under `dir` that any daemon left: after this
    /// no traffic is balanced. Returns what was removed.
    pub fn cleanup_pins(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(removed);
        };
        for e in entries {
            let path = e?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let pinned = pinned_maps(&LoadOptions::default())
                .iter()
                .any(|p| p.0 == name);
            if name.starts_with("link_") || pinned || RETIRED_MAPS.contains(&name) {
                std::fs::remove_file(&path)?;
                removed.push(path);
            }
        }
        Ok(removed)
    }
}
