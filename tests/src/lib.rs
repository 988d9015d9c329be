//! Test support for xdplb: a packet builder for fixtures and network-namespace topologies.
//! The tests themselves are in `tests/tests/`; they need root.
pub mod packet;
