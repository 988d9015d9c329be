//! The connection tables of this build's layout, and the one rule for which table holds a flow
//! (the data path's `conntrack.rs` follows the same rule). Layout 2 keeps IPv4 flows in
//! `XDPLB_CT4` (16-byte `FlowKey4` keys, `conntrack_size` entries) and IPv6 flows in
//! `XDPLB_CONNTRACK` (40-byte `FlowKey` keys, `conntrack6_size` entries). Built with the
//! feature `layout-v1`, `XDPLB_CONNTRACK` holds every flow with `conntrack_size` entries.

use std::{io, mem::size_of};

use aya::maps::MapData;
use lb_common::{addr::FAMILY_V4, maps as m, ConnValue, FlowKey, FlowKey4};

use super::LoadOptions;

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
