//! The test and benchmark XDP programs, an object of their own so the load balancer's object
//! (and so the `xdplb` binary) carries production programs only. They share header parsing
//! with the load balancer (`lb_ebpf::parse`) and names with user space (`lb_common::maps`).
//! The daemon never loads this object; the tests and the `bench` binary do (lb-tests).
#![no_std]
#![no_main]

mod floor;
mod generator;
mod sink;

use aya_ebpf::{macros::xdp, programs::XdpContext};

/// Test and benchmark traffic (see `generator`).
#[xdp]
pub fn xdplb_gen(ctx: XdpContext) -> u32 {
    generator::generate(&ctx)
}

/// The receiving end of live benchmarks (see `sink`).
#[xdp]
pub fn xdplb_sink(ctx: XdpContext) -> u32 {
    sink::sink(&ctx)
}

/// The floor forwarder live benchmarks compare with (see `floor`).
#[xdp]
pub fn xdplb_floor(ctx: XdpContext) -> u32 {
    floor::floor(&ctx)
}

lb_ebpf::binary_items!();
