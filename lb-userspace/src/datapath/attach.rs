//! Attaching: the load balancer and the pass program on interfaces (adopting an earlier
//! daemon's pinned attachment), detaching, and registering the interfaces packets leave by.

use std::path::PathBuf;

use aya::{
    maps::{Array, DevMapHash, HashMap, MapData},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
        XdpMode,
    },
};
use lb_common::{maps as m, IfaceInfo};

use super::{map_err, program, DataPath, DataPathError};
use crate::{iface, model::Mac};

/// How to attach XDP to an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver; fails where the driver has no XDP support.
    Native,
    /// In the generic (skb) path; works everywhere, slower.
    Generic,
    /// Native where the driver supports it, else generic.
    #[default]
    Auto,
}

/// How an attachment is held.
pub(super) enum Held {
    /// By the program object: detached when the `DataPath` is dropped (tests, no pin dir).
    Owned(XdpLinkId),
    /// Pinned in bpffs: survives this process. `owned` is this process's handle after adopting
    /// a pinned link (bpf_link_update), which must be released on detach too.
    Pinned {
        path: PathBuf,
        _pin: Option<PinnedLink>,
        owned: Option<XdpLinkId>,
    },
}

pub(super) struct Attachment {
    pub(super) iface: String,
    pub(super) program: &'static str,
    pub(super) held: Held,
    /// The mode used (None when an existing pinned attachment was adopted).
    pub(super) mode: Option<AttachMode>,
    pub(super) adopted: bool,
}

/// What `attach` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A new attachment in this mode.
    New(AttachMode),
    /// An attachment pinned by an earlier daemon now runs this program (atomic replace).
    Adopted,
}

/// As on the command line (`--xdp-mode native`).
impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
            AttachMode::Auto => "auto",
        })
    }
}

impl std::fmt::Display for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attached::New(mode) => write!(f, "attached in {mode} mode"),
            Attached::Adopted => f.write_str("adopted the pinned attachment"),
        }
    }
}

impl DataPath {
    /// Attaches the load balancer to `iface` and registers the interface as an egress. With a
    /// pin directory, an attachment an earlier daemon pinned there is adopted: the kernel swaps
    /// the program atomically (bpf_link_update), so no packet is missed.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<Attached, DataPathError> {
        self.register_egress(iface)?;
        if self
            .links
            .iter()
            .any(|a| a.iface == iface && a.program == m::PROG_LB)
        {
            return Ok(Attached::Adopted);
        }
        let Some(dir) = self.opts.pin_dir.clone() else {
            let (id, used) = self.attach_program(m::PROG_LB, iface, mode)?;
            self.push(iface, m::PROG_LB, Held::Owned(id), Some(used), false);
            return Ok(Attached::New(used));
        };
        let path = dir.join(format!("link_{iface}"));
        let link_err = |reason: String| DataPathError::Map {
            map: "link",
            reason,
        };
        if path.exists() {
            match self.adopt(iface, &path) {
                Ok(id) => {
                    let held = Held::Pinned {
                        path,
                        _pin: None,
                        owned: Some(id),
                    };
                    self.push(iface, m::PROG_LB, held, None, true);
                    // What the previous program recorded up to the swap, at once.
                    self.upgrade_copy()?;
                    return Ok(Attached::Adopted);
                }
                // A pin whose interface was deleted and re-created holds a defunct link
                // (bpf_link_update says ENOLINK): replace it with a fresh attachment.
                Err(e) => {
                    log::warn!("{e}; attaching to {iface} afresh");
                    std::fs::remove_file(&path)
                        .map_err(|e| link_err(format!("removing {}: {e}", path.display())))?;
                }
            }
        }
        let (id, used) = self.attach_program(m::PROG_LB, iface, mode)?;
        let link = program(&mut self.ebpf, m::PROG_LB)?
            .take_link(id)
            .map_err(|source| DataPathError::Program {
                what: format!("taking the link on {iface}"),
                source,
            })?;
        let fd = FdLink::try_from(link).map_err(|e| link_err(format!("{iface}: {e}")))?;
        let pin = fd
            .pin(&path)
            .map_err(|e| link_err(format!("pinning {}: {e}", path.display())))?;
        let held = Held::Pinned {
            path,
            _pin: Some(pin),
            owned: None,
        };
        self.push(iface, m::PROG_LB, held, Some(used), false);
        Ok(Attached::New(used))
    }

    /// Swaps this program into the attachment pinned at `path`.
    fn adopt(&mut self, iface: &str, path: &std::path::Path) -> Result<XdpLinkId, String> {
        let pinned =
            PinnedLink::from_pin(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
        let link = XdpLink::try_from(FdLink::from(pinned))
            .map_err(|e| format!("{} is not an XDP link: {e}", path.display()))?;
        program(&mut self.ebpf, m::PROG_LB)
            .map_err(|e| e.to_string())?
            .attach_to_link(link)
            .map_err(|e| format!("adopting the attachment pinned for {iface}: {e}"))
    }

    fn push(
        &mut self,
        iface: &str,
        program: &'static str,
        held: Held,
        mode: Option<AttachMode>,
        adopted: bool,
    ) {
        self.links.push(Attachment {
            iface: iface.to_string(),
            program,
            held,
            mode,
            adopted,
        });
    }

    /// Registers an interface packets may leave by (its MAC and a devmap slot) without
    /// attaching to it: for backends reached through another interface. Returns its index and
    /// MAC (a `BackendTarget`'s `ifindex` and `src_mac`).
    pub fn register_egress(&mut self, iface: &str) -> Result<(u32, Mac), DataPathError> {
        let err = |source| DataPathError::Iface {
            iface: iface.into(),
            source,
        };
        let ifindex = iface::index(iface).map_err(err)?;
        let mac = iface::mac(iface).map_err(err)?;
        self.register_iface(ifindex, mac)?;
        Ok((ifindex, mac))
    }

    /// Interfaces the load balancer is attached to: (name, mode if this process attached it,
    /// whether an earlier daemon's pinned attachment was adopted).
    pub fn attachments(&self) -> Vec<(String, Option<AttachMode>, bool)> {
        self.links
            .iter()
            .filter(|a| a.program == m::PROG_LB)
            .map(|a| (a.iface.clone(), a.mode, a.adopted))
            .collect()
    }

    /// Attaches the pass-everything program: the peer of a veth that receives XDP_TX or
    /// XDP_REDIRECT frames needs one for them to be delivered. Never pinned.
    pub fn attach_pass(
        &mut self,
        iface: &str,
        mode: AttachMode,
    ) -> Result<AttachMode, DataPathError> {
        let (id, used) = self.attach_program(m::PROG_PASS, iface, mode)?;
        self.push(iface, m::PROG_PASS, Held::Owned(id), Some(used), false);
        Ok(used)
    }

    fn attach_program(
        &mut self,
        name: &'static str,
        iface: &str,
        mode: AttachMode,
    ) -> Result<(XdpLinkId, AttachMode), DataPathError> {
        let prog = program(&mut self.ebpf, name)?;
        let tries: &[(AttachMode, XdpMode)] = match mode {
            AttachMode::Native => &[(AttachMode::Native, XdpMode::Driver)],
            AttachMode::Generic => &[(AttachMode::Generic, XdpMode::Skb)],
            AttachMode::Auto => &[
                (AttachMode::Native, XdpMode::Driver),
                (AttachMode::Generic, XdpMode::Skb),
            ],
        };
        let mut last = None;
        for (used, xdp_mode) in tries {
            match prog.attach(iface, *xdp_mode) {
                Ok(link) => return Ok((link, *used)),
                Err(e) => last = Some(e),
            }
        }
        Err(DataPathError::Program {
            what: format!("attaching {name} to {iface} ({mode} mode)"),
            source: last.expect("at least one attach mode was tried"),
        })
    }

    /// Detaches whatever this data path attached to (or adopted on) `iface`, pin included.
    pub fn detach(&mut self, iface: &str) -> Result<(), DataPathError> {
        let mut found = false;
        while let Some(pos) = self.links.iter().position(|a| a.iface == iface) {
            // A pin that stays keeps the program attached: then the attachment stays ours.
            if let Held::Pinned { path, .. } = &self.links[pos].held {
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(DataPathError::Iface {
                            iface: iface.into(),
                            source: std::io::Error::new(
                                e.kind(),
                                format!(
                                    "removing the pin {} failed ({e}), so xdplb stays attached",
                                    path.display()
                                ),
                            ),
                        });
                    }
                    _ => {}
                }
            }
            let a = self.links.remove(pos);
            let owned = match a.held {
                Held::Owned(id) => Some(id),
                // The pin is gone; closing every fd of the link releases it.
                Held::Pinned { _pin, owned, .. } => {
                    drop(_pin);
                    owned
                }
            };
            if let Some(id) = owned {
                program(&mut self.ebpf, a.program)?
                    .detach(id)
                    .map_err(|source| DataPathError::Program {
                        what: format!("detaching {} from {iface}", a.program),
                        source,
                    })?;
            }
            found = true;
        }
        if found {
            Ok(())
        } else {
            Err(DataPathError::NotAttached(iface.into()))
        }
    }

    /// Declares an interface packets may leave by: its MAC becomes the source of rewritten
    /// frames, and it becomes a redirect target. Frames count as sent to this host only when addressed to the MAC registered for the
    /// interface they arrive on (`pass_not_for_us` otherwise).
    pub fn register_iface(&mut self, ifindex: u32, mac: Mac) -> Result<(), DataPathError> {
        let info = IfaceInfo {
            mac: mac.0,
            _pad: [0; 2],
        };
        let mut ifaces: HashMap<_, u32, IfaceInfo> = self.typed(m::IFACES)?;
        ifaces
            .insert(ifindex, info, 0)
            .map_err(map_err(m::IFACES))?;
        if ifindex < m::IFACE_MAC_SLOTS {
            let mut macs: Array<_, IfaceInfo> = self.typed(m::IFACE_MACS)?;
            macs.set(ifindex, info, 0).map_err(map_err(m::IFACE_MACS))?;
        }
        let map = self.ebpf.map_mut(m::TX_PORTS).ok_or(DataPathError::Map {
            map: m::TX_PORTS,
            reason: "missing".into(),
        })?;
        let mut ports: DevMapHash<&mut MapData> = map.try_into().map_err(map_err(m::TX_PORTS))?;
        ports
            .insert(ifindex, ifindex, None, 0)
            .map_err(|e| DataPathError::Map {
                map: m::TX_PORTS,
                reason: e.to_string(),
            })
    }

    /// The MAC registered for interface `ifindex` (`register_iface`), if it is registered.
    pub fn registered_mac(&self, ifindex: u32) -> Option<Mac> {
        let ifaces: HashMap<_, u32, IfaceInfo> = self.typed_ref(m::IFACES).ok()?;
        let registered = ifaces.get(&ifindex, 0).ok()?;
        if ifindex >= m::IFACE_MAC_SLOTS {
            return Some(Mac(registered.mac));
        }
        // The copy the data path checks frames against, written last: after a registration
        // that failed halfway, it still shows the old MAC, so the next change retries.
        let macs: Array<_, IfaceInfo> = self.typed_ref(m::IFACE_MACS).ok()?;
        macs.get(&ifindex, 0).ok().map(|i| Mac(i.mac))
    }
}
