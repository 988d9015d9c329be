//! Types and pure functions shared by the xdplb XDP program (`lb-ebpf`) and its control plane
//! (`lb-userspace`).
//!
//! Everything that crosses the kernel/user boundary is `#[repr(C)]`, `Copy`, and has no implicit
//! padding, so both sides agree byte for byte. Logic both sides need (the flow hash, checksum
//! arithmetic, address encoding) lives here once, is unit-tested on the host, and cannot drift
//! between the data path and tools such as `xdplb simulate`.
#![no_std]

pub mod addr;
pub mod csum;
pub mod hash;
pub mod maps;
pub mod stats;
pub mod trace;
pub mod types;

pub use types::*;
