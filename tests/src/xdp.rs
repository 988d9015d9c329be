//! What fixtures, benchmarks and namespace tests share about the program: XDP verdicts and a
//! shorthand for a VIP's desired state.

use aya::programs::{TestRun, TestRunOptions, Xdp};
use lb_userspace::model::{BackendTarget, HashFields, Mode, VipSpec, VipState};

use crate::fib::xdp_md;

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

/// One BPF_PROG_TEST_RUN of `frame`, as received on `ingress` (None: the namespace's loopback):
/// the verdict and the output frame.
pub fn test_run(prog: &mut Xdp, frame: &[u8], ingress: Option<u32>) -> (u32, Vec<u8>) {
    let ctx = ingress.map(|i| xdp_md(i, frame.len()));
    let mut out = vec![0u8; frame.len() + 256];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: ctx.as_deref(),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}
