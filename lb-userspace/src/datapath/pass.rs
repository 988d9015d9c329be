//! `xdplb pass IFACE`: the pass-everything program on a veth peer, so that frames the load
//! balancer sends into the veth are delivered (see crate::veth). It is attached through the
//! device (netlink, `crate::rtnl`), not through a bpf_link, because a bpf_link goes with the process or with
//! its bpffs pin, and `ip netns exec` gives each command a private, short-lived /sys.

use std::os::fd::{AsFd, AsRawFd};

use lb_common::maps as m;

use super::{program, DataPath, DataPathError, LoadOptions};
use crate::{
    iface,
    rtnl::{self, XDP_FLAGS_DRV_MODE, XDP_FLAGS_UPDATE_IF_NOEXIST},
    veth::{self, DRIVER},
};

impl DataPath {
    /// Attaches the pass program to `iface` in driver mode for good: it stays after this
    /// process exits, until `remove_pass`. Fails if `iface` already has an XDP program.
    pub fn attach_lasting_pass(&mut self, iface: &str) -> Result<(), DataPathError> {
        let err = |source| DataPathError::Iface {
            iface: iface.into(),
            source,
        };
        let ifindex = iface::index(iface).map_err(err)?;
        let prog = program(&mut self.ebpf, m::PROG_PASS)?;
        let fd = prog.fd().map_err(|source| DataPathError::Program {
            what: format!("program {}", m::PROG_PASS),
            source,
        })?;
        rtnl::set_xdp(
            ifindex,
            fd.as_fd().as_raw_fd(),
            XDP_FLAGS_DRV_MODE | XDP_FLAGS_UPDATE_IF_NOEXIST,
        )
        .map_err(err)
    }
}

/// `xdplb pass IFACE`: attaches the pass program to `iface` (in this network namespace) unless
/// a driver-mode program already receives its frames. Returns what was done, as a sentence.
pub fn pass_on(iface: &str) -> Result<String, String> {
    iface::index(iface).map_err(|e| e.to_string())?;
    match veth::xdp_program(iface)? {
        Some((DRIVER, id, name)) => {
            return Ok(format!(
                "{iface} already runs XDP program {name} (id {id}) in driver mode, which receives frames sent into it; nothing changed"
            ))
        }
        Some((_, id, name)) => {
            return Err(format!(
                "{iface} runs XDP program {name} (id {id}) in generic mode, which does not receive frames sent into a veth, and the kernel allows no driver-mode program beside it; remove it first (ip link set dev {iface} xdpgeneric off)"
            ))
        }
        None => {}
    }
    let mut dp = DataPath::load_unverified(&LoadOptions::minimal()).map_err(|e| e.to_string())?;
    dp.attach_lasting_pass(iface)
        .map_err(|e| format!("attaching {} to {iface}: {e}", m::PROG_PASS))?;
    let id = match veth::xdp_program(iface)? {
        Some((DRIVER, id, _)) => id,
        _ => return Err(format!("{} did not stay attached to {iface}", m::PROG_PASS)),
    };
    Ok(format!(
        "{} is attached to {iface} in driver mode (program id {id}) and stays after this command: frames XDP sends into its veth peer are delivered; undo with `xdplb pass {iface} --off`",
        m::PROG_PASS
    ))
}

/// `xdplb pass IFACE --off`: removes the pass program from `iface`, and nothing else.
pub fn pass_off(iface: &str) -> Result<String, String> {
    let ifindex = iface::index(iface).map_err(|e| e.to_string())?;
    match veth::xdp_program(iface)? {
        None => Ok(format!("{iface} has no XDP program; nothing changed")),
        Some((DRIVER, _, name)) if name == m::PROG_PASS => {
            rtnl::set_xdp(ifindex, -1, XDP_FLAGS_DRV_MODE).map_err(|e| {
                format!(
                    "removing {} from {iface}: {e} (an attachment another process holds through a bpf_link, such as a test's, goes only with that process)",
                    m::PROG_PASS
                )
            })?;
            Ok(format!(
                "{} is removed from {iface}: frames XDP sends into its veth peer are dropped again",
                m::PROG_PASS
            ))
        }
        Some((_, id, name)) => Err(format!(
            "{iface} runs XDP program {name} (id {id}), not {}; `xdplb pass --off` removes only its own program, nothing changed",
            m::PROG_PASS
        )),
    }
}
