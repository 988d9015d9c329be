//! What fixtures, benchmarks and namespace tests share about the program: XDP verdicts and a
//! shorthand for a VIP's desired state.

use lb_userspace::model::{BackendTarget, HashFields, Mode, VipSpec, VipState};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// A VIP (`ADDR:PORT/PROTO`) in `mode`, 5-tuple hashing, with these backends.
pub fn vip(addr: &str, mode: Mode, backends: Vec<BackendTarget>) -> VipState {
    VipState {
        spec: VipSpec {
            addr: addr.parse().expect("VIP syntax"),
            mode,
            hash: HashFields::FiveTuple,
        },
        backends,
    }
}
