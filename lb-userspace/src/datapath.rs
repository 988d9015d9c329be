//! The loader: loads the embedded XDP program with the configured map sizes and gives typed
//! access to its maps. It owns the `aya::Ebpf` object, so a daemon that owns a `DataPath` owns
//! the whole data path. Its jobs live in the children: attaching (`attach`), reading the maps
//! back (`read`), the mirror's writes (`writer`), the connection tables (`conntrack`), pins
//! (`pins`), upgrades (`upgrade`) and watching (`watch`).

use std::path::PathBuf;

use aya::{include_bytes_aligned, programs::Xdp, Ebpf, EbpfLoader};
use lb_common::maps as m;
use thiserror::Error;

use crate::{maglev, mirror::MirrorError};

mod attach;
pub mod conntrack;
pub mod faults;
mod pass;
mod pins;
mod read;
mod upgrade;
mod watch;
mod writer;

pub use attach::{AttachMode, Attached};
pub use pass::{pass_off, pass_on};
pub use upgrade::UpgradeReport;
pub use writer::KernelMaps;

use self::{
    attach::Attachment,
    pins::{check_pinned_layout, pinned_maps},
};

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
    /// Pins of other limits or a layout this daemon cannot migrate: left as they are, and
    /// refused until the operator acts (a restart changes nothing).
    #[error("map {map}: {reason}")]
    PinsRefused { map: &'static str, reason: String },
    #[error("interface {0} is not attached")]
    NotAttached(String),
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
