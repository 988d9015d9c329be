//! xdplb control plane: the model of VIPs and backends, the Maglev ring builder, the mirror
//! that writes the model into the data path's maps, and the loader that owns the program.
pub mod datapath;
pub mod iface;
pub mod maglev;
pub mod mirror;
pub mod model;
