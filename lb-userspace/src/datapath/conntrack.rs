//! The connection tables of this build's layout, and the one rule for which table holds a flow
//! (the data path's `conntrack.rs` follows the same rule). Layout 2 keeps IPv4 flows in
//! `XDPLB_CT4` (16-byte `FlowKey4` keys, `conntrack_size` entries) and IPv6 flows in
//! `XDPLB_CONNTRACK` (40-byte `FlowKey` keys, `conntrack6_size` entries). Built with the
//! feature `layout-v1`, `XDPLB_CONNTRACK` holds every flow with `conntrack_size` entries. Also
//! the `DataPath`'s access to a flow's entry and the record limit.

use std::{io, mem::size_of};

use aya::maps::{Array, HashMap, MapData};
use lb_common::{addr::FAMILY_V4, maps as m, ConnValue, FlowKey, FlowKey4};

use super::{map_err, DataPath, DataPathError, LoadOptions};

/// A connection table: its map, and how big its keys are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Table {
    pub name: &'static str,
    /// Keyed by `FlowKey4` (IPv4 only), else by `FlowKey`.
    pub compact: bool,
    /// The entries it was loaded with.
    pub max_entries: u32,
}

impl Table {
    pub fn key_size(&self) -> u32 {
        if self.compact {
            size_of::<FlowKey4>() as u32
        } else {
            size_of::<FlowKey>() as u32
        }
    }
}

/// How many connection tables this layout has.
#[cfg(not(feature = "layout-v1"))]
pub const TABLES: usize = 2;
#[cfg(feature = "layout-v1")]
pub const TABLES: usize = 1;

/// This layout's connection tables, sized by `o`.
pub fn tables(o: &LoadOptions) -> [Table; TABLES] {
    #[cfg(not(feature = "layout-v1"))]
    return [
        Table {
            name: m::CONNTRACK4,
            compact: true,
            max_entries: o.conntrack_size,
        },
        Table {
            name: m::CONNTRACK,
            compact: false,
            max_entries: o.conntrack6_size,
        },
    ];
    #[cfg(feature = "layout-v1")]
    return [Table {
        name: m::CONNTRACK,
        compact: false,
        max_entries: o.conntrack_size,
    }];
}

/// The table that holds the flows of `family` (`lb_common::addr::FAMILY_*`).
pub fn table_of(o: &LoadOptions, family: u8) -> Table {
    // Layout 2 lists the IPv4 table first; layout 1 has one.
    tables(o)[usize::from(TABLES > 1 && family != FAMILY_V4)]
}

/// Reads a table's entries `chunk` at a time (`batch::lookup_each`), giving each with its key
/// as a `FlowKey` (compact keys widened) until `each` returns false; returns how many were read.
pub fn walk(
    table: &Table,
    map: &MapData,
    chunk: usize,
    mut each: impl FnMut(&FlowKey, &ConnValue) -> bool,
) -> io::Result<usize> {
    if table.compact {
        crate::batch::lookup_each::<FlowKey4, ConnValue>(map, chunk, |k, v| each(&k.widen(), v))
    } else {
        crate::batch::lookup_each::<FlowKey, ConnValue>(map, chunk, each)
    }
}

impl DataPath {
    /// Every flow in the connection tables, with the table it is in (tests).
    pub fn conntrack_flows(&self) -> Result<Vec<(&'static str, FlowKey)>, DataPathError> {
        let mut flows = Vec::new();
        for t in tables(&self.opts) {
            walk(&t, self.hash_map_data(t.name)?, 4096, |k, _| {
                flows.push((t.name, *k));
                true
            })
            .map_err(|e| DataPathError::Map {
                map: t.name,
                reason: e.to_string(),
            })?;
        }
        Ok(flows)
    }

    /// Sets the new flows each CPU records in the connection table per second (0: no limit).
    pub fn set_record_limit(&mut self, limit: u32) -> Result<(), DataPathError> {
        let mut a: Array<_, u32> = self.typed(m::CONFIG)?;
        a.set(m::CONFIG_RECORD_LIMIT, limit, 0)
            .map_err(map_err(m::CONFIG))
    }

    /// The record limit in the data path (`set_record_limit`).
    pub fn record_limit(&self) -> Result<u32, DataPathError> {
        let a: Array<_, u32> = self.typed_ref(m::CONFIG)?;
        a.get(&m::CONFIG_RECORD_LIMIT, 0)
            .map_err(map_err(m::CONFIG))
    }

    /// Removes a flow's connection-table entry, as an LRU eviction would (tests).
    pub fn forget_flow(&mut self, key: &FlowKey) -> Result<(), DataPathError> {
        let t = table_of(&self.opts, key.family);
        if t.compact {
            let mut ct: HashMap<_, FlowKey4, ConnValue> = self.typed(t.name)?;
            ct.remove(&FlowKey4::of(key)).map_err(map_err(t.name))
        } else {
            let mut ct: HashMap<_, FlowKey, ConnValue> = self.typed(t.name)?;
            ct.remove(key).map_err(map_err(t.name))
        }
    }

    /// The connection-table entry of a flow, if any, from its family's table.
    pub fn conntrack(&self, key: &FlowKey) -> Result<Option<ConnValue>, DataPathError> {
        self.conntrack_in(&table_of(&self.opts, key.family), key)
    }

    /// The connection tables that hold an entry for the flow, each one asked (tests: that a
    /// family's flows are recorded in its table and nowhere else).
    pub fn tables_holding(&self, key: &FlowKey) -> Result<Vec<&'static str>, DataPathError> {
        let mut found = Vec::new();
        for t in tables(&self.opts) {
            if self.conntrack_in(&t, key)?.is_some() {
                found.push(t.name);
            }
        }
        Ok(found)
    }

    /// A flow's entry in table `t` (none for an IPv6 flow in a table of compact keys).
    fn conntrack_in(&self, t: &Table, key: &FlowKey) -> Result<Option<ConnValue>, DataPathError> {
        let got = if !t.compact {
            let ct: HashMap<_, FlowKey, ConnValue> = self.typed_ref(t.name)?;
            ct.get(key, 0)
        } else if key.family == lb_common::addr::FAMILY_V4 {
            let ct: HashMap<_, FlowKey4, ConnValue> = self.typed_ref(t.name)?;
            ct.get(&FlowKey4::of(key), 0)
        } else {
            return Ok(None);
        };
        match got {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(t.name)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_family_has_one_table_and_every_table_is_listed() {
        let o = LoadOptions {
            conntrack_size: 100,
            conntrack6_size: 50,
            ..LoadOptions::default()
        };
        let v4 = table_of(&o, lb_common::addr::FAMILY_V4);
        let v6 = table_of(&o, lb_common::addr::FAMILY_V6);
        assert!(tables(&o).contains(&v4) && tables(&o).contains(&v6));
        assert_eq!(v4.max_entries, 100, "IPv4 flows get conntrack_size");
        #[cfg(not(feature = "layout-v1"))]
        {
            assert_eq!((v4.name, v4.key_size()), (m::CONNTRACK4, 16));
            assert_eq!(
                (v6.name, v6.key_size(), v6.max_entries),
                (m::CONNTRACK, 40, 50)
            );
        }
        #[cfg(feature = "layout-v1")]
        assert_eq!(v4, v6, "one table for both families");
    }
}
