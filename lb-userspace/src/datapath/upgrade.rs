//! Upgrades that keep every flow. A daemon whose map layout (`m::LAYOUT_VERSION`) is newer than
//! the pinned maps' migrates their flow state instead of refusing them:
//!
//! 1. load: the maps whose layout did not change are reused from their pins, the new ones are
//!    created (and pinned) empty; the old program goes on forwarding with the old maps;
//! 2. copy: the flow state moves into the new maps while the old program runs;
//! 3. swap: each pinned attachment is adopted (`bpf_link_update`: atomic, no packet without a
//!    program), and what the old program recorded since step 2 is copied again at once;
//! 4. finish: a last copy, the old entries are removed, and the pins are marked with the new
//!    version.
//!
//! The pins keep the old version until step 4: a daemon stopped anywhere before it leaves pins
//! that the next start migrates again. A copy never overwrites an entry the new maps already
//! hold: the new program wrote it, so it is newer.

use aya::maps::{Array, HashMap};
use lb_common::{addr::FAMILY_V4, maps as m, ConnValue, FlowKey, FlowKey4};

use super::{map_err, DataPath, DataPathError};

/// A way from the pinned maps of one layout version to this daemon's.
pub(super) struct Migration {
    pub(super) from: u32,
    to: u32,
    /// What moves, for the log and `status`.
    what: &'static str,
    /// Copies the flow state from the old maps into the new ones (entries already in the new
    /// maps are kept); returns how many entries were copied.
    copy: fn(&mut DataPath) -> Result<usize, DataPathError>,
    /// Removes the old maps' entries the new program no longer reads; returns how many.
    retire: fn(&mut DataPath) -> Result<usize, DataPathError>,
}

/// Every migration there is; this daemon uses those to its own `m::LAYOUT_VERSION` (a layout-1
/// build, feature `layout-v1`, migrates from nothing).
const MIGRATIONS: &[Migration] = &[Migration {
    from: 1,
    to: 2,
    what: "IPv4 flows move from XDPLB_CONNTRACK to their compact table XDPLB_CT4",
    copy: copy_ipv4_flows,
    retire: retire_ipv4_flows,
}];

/// The migration from pins of layout `version`, if this daemon has one.
pub(super) fn migration_from(version: u32) -> Option<&'static Migration> {
    MIGRATIONS
        .iter()
        .find(|g| g.from == version && g.to == m::LAYOUT_VERSION)
}

/// The versions this daemon migrates from, for the sentence that refuses others.
pub(super) fn migratable() -> Vec<u32> {
    MIGRATIONS
        .iter()
        .filter(|g| g.to == m::LAYOUT_VERSION)
        .map(|g| g.from)
        .collect()
}

/// An upgrade under way (between load and `finish_upgrade`).
pub(super) struct Upgrade {
    migration: &'static Migration,
    /// Entries copied so far (over every pass).
    copied: usize,
}

impl Upgrade {
    pub(super) fn new(migration: &'static Migration) -> Upgrade {
        Upgrade {
            migration,
            copied: 0,
        }
    }
}

/// What an upgrade did, for the log and `status` (`program.upgraded`, as these fields).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UpgradeReport {
    pub from: u32,
    pub to: u32,
    pub what: &'static str,
    /// Entries copied into the new maps.
    pub copied: usize,
    /// Old entries removed once the new program ran everywhere (none while `not_swapped`
    /// names an attachment).
    pub retired: usize,
    /// Pinned attachments of interfaces this daemon does not configure: they still run the
    /// previous program (nothing swaps it), which reads only the old maps.
    pub not_swapped: Vec<String>,
}

impl std::fmt::Display for UpgradeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "upgraded the pinned maps from layout {} to {}: {} ({} entries copied, {} old entries removed)",
            self.from, self.to, self.what, self.copied, self.retired
        )
    }
}

impl DataPath {
    /// Copies the flow state into the new maps if an upgrade is under way: at load, and right
    /// after each attachment starts running the new program.
    pub(super) fn upgrade_copy(&mut self) -> Result<(), DataPathError> {
        let Some(copy) = self.upgrade.as_ref().map(|u| u.migration.copy) else {
            return Ok(());
        };
        let n = copy(self)?;
        if let Some(u) = self.upgrade.as_mut() {
            u.copied += n;
        }
        Ok(())
    }

    /// Ends an upgrade once every configured interface runs the new program: a last copy, the
    /// old entries removed, the pins marked with this daemon's layout version. `None` when no
    /// upgrade was under way.
    pub fn finish_upgrade(&mut self) -> Result<Option<UpgradeReport>, DataPathError> {
        if self.upgrade.is_none() {
            return Ok(None);
        }
        self.upgrade_copy()?;
        let u = self.upgrade.take().expect("checked above");
        let not_swapped = self.unadopted_link_pins();
        // An attachment still running the previous program reads the old entries: they stay
        // (the LRU ages them out once nothing uses them).
        let retired = match not_swapped.is_empty() {
            true => (u.migration.retire)(self)?,
            false => 0,
        };
        self.write_layout_version()?;
        let report = UpgradeReport {
            from: u.migration.from,
            to: u.migration.to,
            what: u.migration.what,
            copied: u.copied,
            retired,
            not_swapped,
        };
        self.upgraded = Some(report.clone());
        Ok(Some(report))
    }

    /// The upgrade this daemon made at start, if any.
    pub fn upgraded(&self) -> Option<&UpgradeReport> {
        self.upgraded.as_ref()
    }

    /// Marks the pins with this daemon's layout version (`m::CONFIG_LAYOUT`).
    pub(super) fn write_layout_version(&mut self) -> Result<(), DataPathError> {
        let mut config: Array<_, u32> = self.typed(m::CONFIG)?;
        config
            .set(m::CONFIG_LAYOUT, m::LAYOUT_VERSION, 0)
            .map_err(map_err(m::CONFIG))
    }

    /// Interfaces with a pinned attachment (`link_IFACE`) this daemon has not adopted.
    fn unadopted_link_pins(&self) -> Vec<String> {
        let Some(dir) = &self.opts.pin_dir else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut left: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_str()?.strip_prefix("link_")?.to_string();
                (!self.links.iter().any(|a| a.iface == name)).then_some(name)
            })
            .collect();
        left.sort();
        left
    }

    /// The IPv4 entries of `XDPLB_CONNTRACK` (every flow's table in layout 1).
    fn ipv4_flows_in_shared_table(&self) -> Result<Vec<(FlowKey, ConnValue)>, DataPathError> {
        let mut flows = Vec::new();
        crate::batch::lookup_each::<FlowKey, ConnValue>(
            self.hash_map_data(m::CONNTRACK)?,
            4096,
            |k, v| {
                if k.family == FAMILY_V4 {
                    flows.push((*k, *v));
                }
                true
            },
        )
        .map_err(|e| DataPathError::Map {
            map: m::CONNTRACK,
            reason: format!("reading it for the upgrade: {e}"),
        })?;
        Ok(flows)
    }
}

/// Layout 1 to 2: every IPv4 entry of `XDPLB_CONNTRACK` into `XDPLB_CT4` under its compact key,
/// unless the new program already recorded the flow there.
fn copy_ipv4_flows(dp: &mut DataPath) -> Result<usize, DataPathError> {
    let flows = dp.ipv4_flows_in_shared_table()?;
    let mut ct4: HashMap<_, FlowKey4, ConnValue> = dp.typed(m::CONNTRACK4)?;
    let mut copied = 0;
    for (key, value) in &flows {
        match ct4.insert(FlowKey4::of(key), value, BPF_NOEXIST) {
            Ok(()) => copied += 1,
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(map_err(m::CONNTRACK4)(e)),
        }
    }
    Ok(copied)
}

/// Layout 1 to 2, once no attachment runs the layout-1 program: the IPv4 entries of
/// `XDPLB_CONNTRACK` are dead weight (the table now holds IPv6 flows only) and go.
fn retire_ipv4_flows(dp: &mut DataPath) -> Result<usize, DataPathError> {
    let flows = dp.ipv4_flows_in_shared_table()?;
    let mut ct: HashMap<_, FlowKey, ConnValue> = dp.typed(m::CONNTRACK)?;
    let mut removed = 0;
    for (key, _) in &flows {
        match ct.remove(key) {
            Ok(()) => removed += 1,
            // Evicted meanwhile.
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(map_err(m::CONNTRACK)(e)),
        }
    }
    Ok(removed)
}

/// `BPF_NOEXIST`: insert only a key the map does not hold.
const BPF_NOEXIST: u64 = 1;
