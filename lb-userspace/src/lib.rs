//! xdplb control plane: the model of VIPs and backends, the Maglev ring builder, the mirror
//! that writes the model into the data path's maps, the loader that owns the program, and the
//! daemon and CLI built on them.
pub mod announce;
pub mod api;
mod batch;
pub mod cli;
pub mod config;
pub mod conn;
pub mod daemon;
pub mod datapath;
pub mod health;
pub mod iface;
pub mod maglev;
pub mod metrics;
pub mod mirror;
pub mod model;
pub mod neigh;
mod netlink;
mod rtnl;
pub mod trace;
pub mod veth;
