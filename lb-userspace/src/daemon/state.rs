//! The daemon's saved state: the running configuration and the ids handed out, written
//! atomically (temporary file, fsync, rename, fsync of the directory) after every change, so a
//! restarted daemon (even after `kill -9`) finds a complete state.

use std::{
    fs::{self, File, OpenOptions},
    io::Write,
    net::IpAddr,
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    config::Config,
    mirror::MirrorSnapshot,
    model::{Mac, VipAddr},
};

/// Bumped when the saved layout changes incompatibly.
pub const STATE_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedState {
    pub version: u32,
    pub config: Config,
    pub ids: MirrorSnapshot,
    /// MACs resolved from the neighbour table, so a restart does not depend on it.
    #[serde(default)]
    pub macs: Vec<SavedMac>,
    /// Backends whose health check had failed: they stay out until they rise again.
    #[serde(default)]
    pub down: Vec<(VipAddr, IpAddr)>,
    /// `xdplb node drain`: a restarted daemon announces nothing until `node undrain`.
    #[serde(default)]
    pub drained: bool,
    /// `xdplb debug on`: the switch is in the program, which a restarted daemon reloads.
    #[serde(default)]
    pub debug: bool,
    /// What ids held earlier by configured VIPs and backends counted (daemon/counters.rs):
    /// the pinned maps keep the live counts across a restart, so this part must be kept too.
    #[serde(default)]
    pub carried: Vec<SavedCounters>,
}

/// Traffic counted under ids a VIP (`backend` None) or backend held before its current one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedCounters {
    pub vip: VipAddr,
    #[serde(default)]
    pub backend: Option<IpAddr>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedMac {
    pub addr: IpAddr,
    #[serde(default)]
    pub via: Option<String>,
    pub mac: Mac,
}

/// Reads the saved state, if there is one.
pub fn load(path: &Path) -> Result<Option<SavedState>, String> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading state file {}: {e}", path.display())),
    };
    let state: SavedState = serde_json::from_str(&text).map_err(|e| {
        format!(
            "state file {} is not valid ({e}); move it away to start from --config",
            path.display()
        )
    })?;
    if state.version != STATE_VERSION {
        return Err(format!(
            "state file {} has version {}, this daemon reads version {STATE_VERSION}",
            path.display(),
            state.version
        ));
    }
    Ok(Some(state))
}

/// Writes the state so that a crash at any point leaves either the old or the new file.
pub fn save(path: &Path, state: &SavedState) -> Result<(), String> {
    let err =
        |what: &str, e: std::io::Error| format!("saving state to {}: {what}: {e}", path.display());
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| err("creating the directory", e))?;
    let tmp = tmp_path(path);
    let body = serde_json::to_vec_pretty(state).map_err(|e| format!("encoding state: {e}"))?;
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| err("creating the temporary file", e))?;
    let written = f.write_all(&body).and_then(|_| f.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(err("writing", e));
    }
    fs::rename(&tmp, path).map_err(|e| err("renaming into place", e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err("syncing the directory", e))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Exclusive locks that make one daemon the only writer of a state file and of a pin
/// directory: a second daemon (or `--cleanup`) pointed at either is refused before it touches
/// anything.
#[derive(Debug)]
pub struct StateLock {
    _files: Vec<File>,
    path: PathBuf,
}

impl StateLock {
    /// Locks `state_file` (through `<state_file>.lock`) and, if given, the pin directory itself.
    pub fn acquire(state_file: &Path, pin_dir: Option<&Path>) -> Result<StateLock, String> {
        let path = lock_path(state_file);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("opening lock file {}: {e}", path.display()))?;
        let mut files = vec![exclusive(file, &path)?];
        if let Some(dir) = pin_dir {
            let d =
                File::open(dir).map_err(|e| format!("opening pin path {}: {e}", dir.display()))?;
            files.push(exclusive(d, dir)?);
        }
        Ok(StateLock {
            _files: files,
            path,
        })
    }

    /// Removes the lock file (`--cleanup`), then releases the locks: the path it names, if
    /// it was still there.
    pub fn remove(self) -> Result<Option<PathBuf>, String> {
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(Some(self.path.clone())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("removing {}: {e}", self.path.display())),
        }
    }
}

/// `<state_file>.lock`.
fn lock_path(state_file: &Path) -> PathBuf {
    let mut name = state_file
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".lock");
    state_file.with_file_name(name)
}

fn exclusive(file: File, path: &Path) -> Result<File, String> {
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!(
            "another xdplb daemon holds {} (one daemon per state file and pin directory)",
            path.display()
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load_round_trips_and_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("xdplb-state-{}", std::process::id()));
        let path = dir.join("state.json");
        let mut state = SavedState {
            version: STATE_VERSION,
            ..Default::default()
        };
        state.config.vips.push(crate::config::VipConfig {
            addr: "10.0.0.1:80/tcp".parse().unwrap(),
            mode: Default::default(),
            hash: Default::default(),
            health: None,
            backends: vec![crate::config::BackendConfig::new(
                "10.0.1.1".parse().unwrap(),
            )],
        });
        save(&path, &state).unwrap();
        assert_eq!(load(&path).unwrap(), Some(state));
        assert!(!tmp_path(&path).exists());
        let _lock = StateLock::acquire(&path, Some(&dir)).unwrap();
        assert!(StateLock::acquire(&path, None)
            .unwrap_err()
            .contains("another xdplb daemon"));
        let other = dir.join("other.json");
        let err = StateLock::acquire(&other, Some(&dir)).unwrap_err();
        assert!(
            err.contains("another xdplb daemon") && err.contains(dir.to_str().unwrap()),
            "{err}"
        );
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(load(&path).unwrap(), None);
    }

    #[test]
    fn a_state_saved_before_carried_counters_existed_still_loads() {
        let dir = std::env::temp_dir().join(format!("xdplb-old-state-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let old = r#"{ "version": 1, "config": {}, "ids": { "vips": [] }, "macs": [], "down": [], "drained": false }"#;
        fs::write(&path, old).unwrap();
        let loaded = load(&path).unwrap().expect("a state");
        assert!(loaded.carried.is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
