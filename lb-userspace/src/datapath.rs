//! The loader: loads the embedded XDP program with the configured map sizes, attaches it to
//! interfaces, and gives typed access to its maps. It owns the `aya::Ebpf` object, so a daemon
//! that owns a `DataPath` owns the whole data path.

use std::{collections::BTreeSet, path::PathBuf};

use aya::{
    include_bytes_aligned,
    maps::{Array, DevMapHash, HashMap, MapData, PerCpuArray},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
        Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use lb_common::{
    maps as m, stats::STATS_LEN, BackendInfo, ConnValue, Endpoint, EndpointKey, FlowKey, FlowKey4,
    IfaceInfo, TrafficCounters, VipInfo, VipKey,
};
use thiserror::Error;

use crate::{
    iface, maglev,
    mirror::{AdoptedMaps, MapWriter, MirrorError},
    model::Mac,
};

pub mod conntrack;
pub mod faults;
mod pass;
mod pins;
mod upgrade;
mod watch;

pub use pass::{pass_off, pass_on};
pub use upgrade::UpgradeReport;

use self::pins::{check_pinned_layout, pinned_maps, RETIRED_MAPS};

/// The load balancer's XDP object (lb-ebpf), built by build.rs.
pub static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

#[derive(Debug, Error)]
pub enum DataPathError {
    #[error("this binary was built with AYA_BUILD_SKIP=1 and carries no XDP program; rebuild without it")]
    NotBuilt,
    #[error("invalid data path option: {0}")]
    Option(String),
    #[error("loading the XDP program failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("{what} failed: {source}")]
    Program {
        what: String,
        source: aya::programs::ProgramError,
    },
    #[error("interface {iface}: {source}")]
    Iface {
        iface: String,
        source: std::io::Error,
    },
    #[error("map {map}: {reason}")]
    Map { map: &'static str, reason: String },
    #[error("interface {0} is not attached")]
    NotAttached(String),
}

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

/// Sizes fixed when the program is loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    pub ring_size: u32,
    pub max_vips: u32,
    pub max_backends: u32,
    /// Entries of the IPv4 flows' connection table (layout 1: of the one table of all flows).
    pub conntrack_size: u32,
    /// Entries of the IPv6 flows' connection table (layout 2 on; `conntrack::tables`).
    pub conntrack6_size: u32,
    /// Pin the maps here (bpffs) so another process can adopt them; `None` keeps them private.
    pub pin_dir: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            ring_size: m::DEFAULT_RING_SIZE,
            max_vips: m::DEFAULT_MAX_VIPS,
            max_backends: m::DEFAULT_MAX_BACKENDS,
            conntrack_size: m::DEFAULT_CONNTRACK_SIZE,
            conntrack6_size: m::DEFAULT_CONNTRACK_SIZE,
            pin_dir: None,
        }
    }
}

impl LoadOptions {
    /// The smallest maps, for loading the object only for its pass or generator program
    /// (veth peers in tests, traffic generation, benchmarks).
    pub fn minimal() -> LoadOptions {
        LoadOptions {
            ring_size: 13,
            max_vips: 1,
            max_backends: 1,
            conntrack_size: 16,
            conntrack6_size: 16,
            pin_dir: None,
        }
    }

    pub fn validate(&self) -> Result<(), DataPathError> {
        let bad = |s: String| Err(DataPathError::Option(s));
        if !maglev::is_prime(self.ring_size) {
            return bad(format!(
                "ring_size {} is not a prime (65537 is the default)",
                self.ring_size
            ));
        }
        if self.max_vips == 0 || self.max_backends == 0 || self.conntrack_size == 0 {
            return bad("max_vips, max_backends and conntrack_size must be at least 1".into());
        }
        if conntrack::TABLES > 1 && self.conntrack6_size == 0 {
            return bad(
                "conntrack6_size must be at least 1 (leave it out to take conntrack_size)".into(),
            );
        }
        if (self.max_vips as u64) * (self.ring_size as u64) > u32::MAX as u64 / 4 {
            return bad(format!(
                "max_vips {} x ring_size {} slots exceed what one array map can hold",
                self.max_vips, self.ring_size
            ));
        }
        Ok(())
    }
}

/// How an attachment is held.
enum Held {
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

struct Attachment {
    iface: String,
    program: &'static str,
    held: Held,
    /// The mode used (None when an existing pinned attachment was adopted).
    mode: Option<AttachMode>,
    adopted: bool,
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

/// The loaded program and its maps.
pub struct DataPath {
    ebpf: Ebpf,
    opts: LoadOptions,
    links: Vec<Attachment>,
    /// Test-only failures of the mirror's writes (`faults`), inert unless enabled.
    faults: faults::Faults,
    /// A migration of pins of an older layout, from load to `finish_upgrade` (`upgrade.rs`).
    upgrade: Option<upgrade::Upgrade>,
    /// What the finished migration did.
    upgraded: Option<UpgradeReport>,
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> DataPathError {
    move |e| DataPathError::Map {
        map,
        reason: e.to_string(),
    }
}

impl DataPath {
    /// Loads and verifies both programs and creates the maps (not attached anywhere yet).
    pub fn load(opts: &LoadOptions) -> Result<DataPath, DataPathError> {
        let mut dp = Self::load_unverified(opts)?;
        // The balancer (with the ICMP program it tail-calls) and the pass program are verified
        // now; the test and benchmark programs are another object (lb-tests' `tools`).
        for name in [m::PROG_LB, m::PROG_PASS] {
            program(&mut dp.ebpf, name)?;
        }
        fill_jump_table(&mut dp.ebpf)?;
        watch::fill_jump_table(&mut dp.ebpf)?;
        Ok(dp)
    }

    /// Creates the maps and verifies no program until it is used: for the object's helper
    /// programs alone (`xdplb pass`), which need not pay for verifying the balancer.
    pub fn load_unverified(opts: &LoadOptions) -> Result<DataPath, DataPathError> {
        if OBJECT.is_empty() {
            return Err(DataPathError::NotBuilt);
        }
        opts.validate()?;
        let mut loader = EbpfLoader::new();
        loader
            .override_global(m::GLOBAL_RING_SIZE, &opts.ring_size, true)
            .map_max_entries(m::RING, opts.max_vips * m::ring_lines(opts.ring_size))
            .map_max_entries(m::VIPS, m::vip_entries(opts.max_vips))
            .map_max_entries(m::VIP_STATS, opts.max_vips)
            .map_max_entries(m::BACKENDS, opts.max_backends)
            .map_max_entries(m::BACKEND_STATS, opts.max_backends)
            .map_max_entries(m::ENDPOINTS, opts.max_backends)
            .map_max_entries(m::BACKEND_HOPS, opts.max_backends);
        for t in conntrack::tables(opts) {
            loader.map_max_entries(t.name, t.max_entries);
        }
        let pins: Vec<(&'static str, PathBuf)> = match &opts.pin_dir {
            Some(dir) => pinned_maps(opts).map(|p| (p.0, dir.join(p.0))).to_vec(),
            None => Vec::new(),
        };
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let migration = match &opts.pin_dir {
            Some(dir) => check_pinned_layout(dir, opts)?,
            None => None,
        };
        let ebpf = loader.load(OBJECT)?;
        let mut dp = DataPath {
            ebpf,
            opts: opts.clone(),
            links: Vec::new(),
            faults: faults::Faults::default(),
            upgrade: migration.map(upgrade::Upgrade::new),
            upgraded: None,
        };
        match migration {
            // The pins keep the old version until the migration is done (`finish_upgrade`).
            Some(g) => {
                log::info!(
                    "the pinned maps have layout {}, this daemon's is {}: migrating them, the previous program forwarding meanwhile",
                    g.from,
                    m::LAYOUT_VERSION
                );
                dp.upgrade_copy()?;
            }
            // At once: pins left without it (a daemon stopped right here) are refused later.
            None => dp.write_layout_version()?,
        }
        Ok(dp)
    }

    pub fn options(&self) -> &LoadOptions {
        &self.opts
    }

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

    /// Removes the pinned attachments and maps under `dir` that any daemon left: after this
    /// no traffic is balanced. Returns what was removed.
    pub fn cleanup_pins(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(removed);
        };
        for e in entries {
            let path = e?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let pinned = pinned_maps(&LoadOptions::default())
                .iter()
                .any(|p| p.0 == name);
            if name.starts_with("link_") || pinned || RETIRED_MAPS.contains(&name) {
                std::fs::remove_file(&path)?;
                removed.push(path);
            }
        }
        Ok(removed)
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

    /// The load-balancer program (for BPF_PROG_TEST_RUN and program info).
    pub fn program(&mut self) -> Result<&mut Xdp, DataPathError> {
        program(&mut self.ebpf, m::PROG_LB)
    }

    /// The pass-everything program (the empty baseline of benchmarks).
    pub fn pass_program(&mut self) -> Result<&mut Xdp, DataPathError> {
        program(&mut self.ebpf, m::PROG_PASS)
    }

    /// Fails or panics the mirror's writes as the plans in `file` say (tests only; `faults`).
    pub fn enable_test_faults(&mut self, file: PathBuf) {
        self.faults = faults::Faults::enable(file);
    }

    /// Writer for the mirror.
    pub fn writer(&mut self) -> KernelMaps<'_> {
        KernelMaps { dp: self }
    }

    /// The stats array summed over CPUs, indexed by `lb_common::stats`.
    pub fn stats(&self) -> Result<Vec<u64>, DataPathError> {
        let arr: PerCpuArray<_, u64> = self.typed_ref(m::STATS)?;
        (0..STATS_LEN)
            .map(|i| Ok(arr.get(&i, 0).map_err(map_err(m::STATS))?.iter().sum()))
            .collect()
    }

    pub fn vip_counters(&self, vip_id: u32) -> Result<TrafficCounters, DataPathError> {
        self.counters(m::VIP_STATS, vip_id)
    }

    pub fn backend_counters(&self, backend_id: u32) -> Result<TrafficCounters, DataPathError> {
        self.counters(m::BACKEND_STATS, backend_id)
    }

    fn counters(&self, map: &'static str, id: u32) -> Result<TrafficCounters, DataPathError> {
        let arr: PerCpuArray<_, TrafficCounters> = self.typed_ref(map)?;
        let mut sum = TrafficCounters::default();
        for c in arr.get(&id, 0).map_err(map_err(map))?.iter() {
            sum.add(c);
        }
        Ok(sum)
    }

    /// What a restarted daemon must know of the maps it adopted: every backend slot (its
    /// generation and port) and every endpoint entry.
    pub fn adopted_maps(&self) -> Result<AdoptedMaps, DataPathError> {
        let arr: Array<_, BackendInfo> = self.typed_ref(m::BACKENDS)?;
        let backends = arr
            .iter()
            .map(|b| b.map_err(map_err(m::BACKENDS)))
            .collect::<Result<_, _>>()?;
        let h: HashMap<_, EndpointKey, Endpoint> = self.typed_ref(m::ENDPOINTS)?;
        let endpoints = h
            .iter()
            .map(|e| e.map_err(map_err(m::ENDPOINTS)))
            .collect::<Result<_, _>>()?;
        Ok(AdoptedMaps {
            backends,
            endpoints,
        })
    }

    /// Removes VIP entries and invalidates backend slots that are not in the given sets:
    /// leftovers of a change an earlier daemon made but did not live to record.
    pub fn sweep(
        &mut self,
        keep_vips: &std::collections::HashSet<VipKey>,
        keep_backends: &BTreeSet<u32>,
    ) -> Result<usize, DataPathError> {
        let mut removed = 0;
        let mut vips: HashMap<_, VipKey, VipInfo> = self.typed(m::VIPS)?;
        let stale: Vec<VipKey> = vips
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !keep_vips.contains(k))
            .collect();
        for k in stale {
            vips.remove(&k).map_err(map_err(m::VIPS))?;
            removed += 1;
        }
        let mut backends: Array<_, BackendInfo> = self.typed(m::BACKENDS)?;
        for id in 0..backends.len() {
            let mut b = backends.get(&id, 0).map_err(map_err(m::BACKENDS))?;
            if b.flags & lb_common::BACKEND_F_VALID != 0 && !keep_backends.contains(&id) {
                b.flags = 0;
                backends.set(id, b, 0).map_err(map_err(m::BACKENDS))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Entries in a hash map with keys `K`, walking at most `cap` keys: an LRU walk restarts
    /// when the entry under it is evicted, so under churn the figure is approximate but the
    /// call stays bounded. For status, not for hot paths.
    /// Counts a hash map's entries with batched reads (a full 262 144-entry connection table:
    /// about 0.15 s, where key-by-key iteration took 0.6-1.5 s under the daemon's lock).
    fn count_keys<K: aya::Pod + Default, V: aya::Pod + Default>(
        &self,
        map: &'static str,
        cap: u32,
    ) -> Result<usize, DataPathError> {
        let data = self.hash_map_data(map)?;
        let mut n = 0;
        crate::batch::lookup_each::<K, V>(data, 4096, |_, _| {
            n += 1;
            n < cap as usize
        })
        .map_err(|e| DataPathError::Map {
            map,
            reason: e.to_string(),
        })?;
        Ok(n)
    }

    /// A hash map of the object, for batched reads.
    fn hash_map_data(&self, map: &'static str) -> Result<&MapData, DataPathError> {
        match self.ebpf.map(map) {
            Some(aya::maps::Map::HashMap(d) | aya::maps::Map::LruHashMap(d)) => Ok(d),
            _ => Err(DataPathError::Map {
                map,
                reason: "not a hash map in the object".into(),
            }),
        }
    }

    /// Every flow in the connection tables, with the table it is in (tests).
    pub fn conntrack_flows(&self) -> Result<Vec<(&'static str, FlowKey)>, DataPathError> {
        let mut flows = Vec::new();
        for t in conntrack::tables(&self.opts) {
            conntrack::walk(&t, self.hash_map_data(t.name)?, 4096, |k, _| {
                flows.push((t.name, *k));
                true
            })
            .map_err(|e| DataPathError::Map {
                map: t.name,
                reason: e.to_string(),
            })?;
        }
        Ok(flows)
    }

    /// Entries in the connection tables (both families).
    pub fn conntrack_entries(&self) -> Result<usize, DataPathError> {
        let mut n = 0;
        for t in conntrack::tables(&self.opts) {
            n += if t.compact {
                self.count_keys::<FlowKey4, ConnValue>(t.name, t.max_entries)?
            } else {
                self.count_keys::<FlowKey, ConnValue>(t.name, t.max_entries)?
            };
        }
        Ok(n)
    }

    /// Entries in the endpoint map (one per backend of an L3 VIP).
    pub fn endpoint_entries(&self) -> Result<usize, DataPathError> {
        self.count_keys::<EndpointKey, Endpoint>(m::ENDPOINTS, self.opts.max_backends)
    }

    /// Entries in the VIP map (VIPs plus one address entry per VIP address).
    pub fn vip_entries(&self) -> Result<usize, DataPathError> {
        self.count_keys::<VipKey, VipInfo>(m::VIPS, m::vip_entries(self.opts.max_vips))
    }

    /// Kernel memory of each map the load balancer uses (`memlock` of its fdinfo), by name.
    pub fn map_memory(&mut self) -> Result<Vec<(String, u64)>, DataPathError> {
        use std::os::fd::{AsFd, AsRawFd};
        let prog_err = |what: &str, e: String| DataPathError::Map {
            map: "program",
            reason: format!("{what}: {e}"),
        };
        let info = self
            .program()?
            .info()
            .map_err(|e| prog_err("program info", e.to_string()))?;
        let ids = info
            .map_ids()
            .map_err(|e| prog_err("map ids", e.to_string()))?
            .unwrap_or_default();
        let mut out = Vec::new();
        for id in ids {
            let map =
                aya::maps::MapInfo::from_id(id).map_err(|e| prog_err("map info", e.to_string()))?;
            let fd = map.fd().map_err(|e| prog_err("map fd", e.to_string()))?;
            let fdinfo =
                std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd()))
                    .map_err(|e| prog_err("fdinfo", e.to_string()))?;
            let bytes = fdinfo
                .lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            out.push((map.name_as_str().unwrap_or("?").to_string(), bytes));
        }
        out.sort();
        Ok(out)
    }

    /// Verified instruction count of the load balancer program.
    pub fn verified_insns(&mut self) -> Option<u32> {
        self.program()
            .ok()?
            .info()
            .ok()?
            .verified_instruction_count()
    }

    /// Sets the new flows each CPU records in the connection table per second (0: no limit).
    pub fn set_record_limit(&mut self, limit: u32) -> Result<(), DataPathError> {
        let mut a: Array<_, u32> = self.typed(m::CONFIG)?;
        a.set(m::CONFIG_RECORD_LIMIT, limit, 0)
            .map_err(map_err(m::CONFIG))
    }

    /// The record limit in the data path (`set_record_limit`).
    pub fn record_limit(&self) -> Result<u32, DataPathError> {
        let a: Array<_, u32> = self.typed_ref(m::CONFIG)?;
        a.get(&m::CONFIG_RECORD_LIMIT, 0)
            .map_err(map_err(m::CONFIG))
    }

    /// Removes a flow's connection-table entry, as an LRU eviction would (tests).
    pub fn forget_flow(&mut self, key: &FlowKey) -> Result<(), DataPathError> {
        let t = conntrack::table_of(&self.opts, key.family);
        if t.compact {
            let mut ct: HashMap<_, FlowKey4, ConnValue> = self.typed(t.name)?;
            ct.remove(&FlowKey4::of(key)).map_err(map_err(t.name))
        } else {
            let mut ct: HashMap<_, FlowKey, ConnValue> = self.typed(t.name)?;
            ct.remove(key).map_err(map_err(t.name))
        }
    }

    /// The connection-table entry of a flow, if any, from its family's table.
    pub fn conntrack(&self, key: &FlowKey) -> Result<Option<ConnValue>, DataPathError> {
        self.conntrack_in(&conntrack::table_of(&self.opts, key.family), key)
    }

    /// The connection tables that hold an entry for the flow, each one asked (tests: that a
    /// family's flows are recorded in its table and nowhere else).
    pub fn tables_holding(&self, key: &FlowKey) -> Result<Vec<&'static str>, DataPathError> {
        let mut found = Vec::new();
        for t in conntrack::tables(&self.opts) {
            if self.conntrack_in(&t, key)?.is_some() {
                found.push(t.name);
            }
        }
        Ok(found)
    }

    /// A flow's entry in table `t` (none for an IPv6 flow in a table of compact keys).
    fn conntrack_in(
        &self,
        t: &conntrack::Table,
        key: &FlowKey,
    ) -> Result<Option<ConnValue>, DataPathError> {
        let got = if !t.compact {
            let ct: HashMap<_, FlowKey, ConnValue> = self.typed_ref(t.name)?;
            ct.get(key, 0)
        } else if key.family == lb_common::addr::FAMILY_V4 {
            let ct: HashMap<_, FlowKey4, ConnValue> = self.typed_ref(t.name)?;
            ct.get(&FlowKey4::of(key), 0)
        } else {
            return Ok(None);
        };
        match got {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(t.name)(e)),
        }
    }

    fn typed<'a, T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>>(
        &'a mut self,
        name: &'static str,
    ) -> Result<T, DataPathError> {
        let map = self.ebpf.map_mut(name).ok_or(DataPathError::Map {
            map: name,
            reason: "not in the object".into(),
        })?;
        T::try_from(map).map_err(map_err(name))
    }

    fn typed_ref<'a, T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>>(
        &'a self,
        name: &'static str,
    ) -> Result<T, DataPathError> {
        let map = self.ebpf.map(name).ok_or(DataPathError::Map {
            map: name,
            reason: "not in the object".into(),
        })?;
        T::try_from(map).map_err(map_err(name))
    }
}

/// Loads the programs the balancer tail-calls and puts them in its program array (ICMP
/// errors run in their own program: their translation needs a stack of its own). A pinned
/// array adopted from an earlier daemon gets this load's program: the earlier program, still
/// attached until it is swapped, then tail-calls this one, which uses the same pinned maps.
fn fill_jump_table(ebpf: &mut Ebpf) -> Result<(), DataPathError> {
    put_in_jump_table(ebpf, m::JUMP, m::JUMP_ICMP, m::PROG_ICMP)
}

/// Loads program `name` and puts it in slot `slot` of the program array `map`.
fn put_in_jump_table(
    ebpf: &mut Ebpf,
    map: &'static str,
    slot: u32,
    name: &str,
) -> Result<(), DataPathError> {
    let fd = program(ebpf, name)?
        .fd()
        .and_then(|fd| fd.try_clone().map_err(aya::programs::ProgramError::from))
        .map_err(|source| DataPathError::Program {
            what: format!("program {name}"),
            source,
        })?;
    let array = ebpf
        .map_mut(map)
        .ok_or_else(|| DataPathError::Option(format!("map {map} is not in the object")))?;
    let mut jump = aya::maps::ProgramArray::try_from(array).map_err(map_err(map))?;
    jump.set(slot, &fd, 0).map_err(map_err(map))
}

/// Program `name` of the object, loaded (verified) on first use.
fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp, DataPathError> {
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| DataPathError::Option(format!("program {name} is not in the object")))?;
    let xdp: &mut Xdp = prog.try_into().map_err(|source| DataPathError::Program {
        what: format!("program {name}"),
        source,
    })?;
    if xdp.fd().is_err() {
        xdp.load().map_err(|source| DataPathError::Program {
            what: format!("verifying program {name}"),
            source,
        })?;
    }
    Ok(xdp)
}

fn nr_cpus(map: &'static str) -> Result<usize, MirrorError> {
    aya::util::nr_cpus().map_err(|(_, e)| MirrorError::Map {
        map,
        reason: format!("counting CPUs: {e}"),
    })
}

/// The kernel maps as the mirror's `MapWriter`.
pub struct KernelMaps<'a> {
    dp: &'a mut DataPath,
}

fn mirror_err(map: &'static str) -> impl Fn(DataPathError) -> MirrorError {
    move |e| MirrorError::Map {
        map,
        reason: e.to_string(),
    }
}

impl KernelMaps<'_> {
    /// One `BPF_MAP_UPDATE_BATCH` into array `map`.
    fn batch<V: aya::Pod>(
        &mut self,
        map: &'static str,
        keys: &[u32],
        values: &[V],
    ) -> Result<(), MirrorError> {
        let err = |reason: String| MirrorError::Map { map, reason };
        if !keys.is_empty() {
            self.dp.faults.before_write(map).map_err(err)?;
        }
        match self.dp.ebpf.map(map) {
            Some(aya::maps::Map::Array(data)) => {
                crate::batch::update(data, keys, values).map_err(|e| err(e.to_string()))
            }
            _ => Err(err("not an array in the object".into())),
        }
    }

    fn write<'b, T, F>(&'b mut self, map: &'static str, f: F) -> Result<(), MirrorError>
    where
        T: TryFrom<&'b mut aya::maps::Map, Error = aya::maps::MapError>,
        F: FnOnce(&mut T) -> Result<(), aya::maps::MapError>,
    {
        self.dp
            .faults
            .before_write(map)
            .map_err(|reason| MirrorError::Map { map, reason })?;
        let mut typed: T = self.dp.typed(map).map_err(mirror_err(map))?;
        f(&mut typed).map_err(|e| MirrorError::Map {
            map,
            reason: e.to_string(),
        })
    }
}

impl MapWriter for KernelMaps<'_> {
    fn put_vip(&mut self, key: &VipKey, info: &VipInfo) -> Result<(), MirrorError> {
        self.write(m::VIPS, |v: &mut HashMap<&mut MapData, VipKey, VipInfo>| {
            v.insert(key, info, 0)
        })
    }

    fn del_vip(&mut self, key: &VipKey) -> Result<(), MirrorError> {
        self.write(
            m::VIPS,
            |v: &mut HashMap<&mut MapData, VipKey, VipInfo>| match v.remove(key) {
                Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                r => r,
            },
        )
    }

    fn put_backend(&mut self, id: u32, info: &BackendInfo) -> Result<(), MirrorError> {
        self.write(m::BACKENDS, |a: &mut Array<&mut MapData, BackendInfo>| {
            a.set(id, info, 0)
        })
    }

    fn put_endpoint(&mut self, key: &EndpointKey, value: &Endpoint) -> Result<(), MirrorError> {
        self.write(
            m::ENDPOINTS,
            |h: &mut HashMap<&mut MapData, EndpointKey, Endpoint>| h.insert(key, value, 0),
        )
    }

    fn del_endpoint(&mut self, key: &EndpointKey) -> Result<(), MirrorError> {
        self.write(
            m::ENDPOINTS,
            |h: &mut HashMap<&mut MapData, EndpointKey, Endpoint>| match h.remove(key) {
                Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                r => r,
            },
        )
    }

    fn reset_counters(&mut self, vip: bool, id: u32) -> Result<(), MirrorError> {
        let map = if vip { m::VIP_STATS } else { m::BACKEND_STATS };
        let zeros =
            aya::maps::PerCpuValues::try_from(vec![TrafficCounters::default(); nr_cpus(map)?])
                .map_err(|e| MirrorError::Map {
                    map,
                    reason: e.to_string(),
                })?;
        self.write(map, |a: &mut PerCpuArray<&mut MapData, TrafficCounters>| {
            a.set(id, zeros, 0)
        })
    }

    fn put_filter_words(&mut self, indexes: &[u32], words: &[u64]) -> Result<(), MirrorError> {
        self.batch(m::ADDR_FILTER, indexes, words)
    }
    fn put_ring_lines(&mut self, lines: &[u32], values: &[m::RingLine]) -> Result<(), MirrorError> {
        self.batch(m::RING, lines, values)
    }
}
