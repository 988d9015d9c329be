//! What the load balancer's programs share with the test and benchmark programs
//! (`lb-ebpf-tools`): header parsing and protocol numbers, compiled once for both objects.
#![no_std]

pub mod parse;
pub mod proto;
