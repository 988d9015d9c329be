//! The daemon's side of MAC resolution that must not hold the core's lock: probing for
//! unknown backend MACs (up to 1.5 s each) before a change takes the lock, and a thread that
//! follows the kernel's neighbour and link changes (`Core::follow`).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use super::{
    core::{Core, MacKey},
    lock,
};
use crate::{model::Mac, neigh};

/// Probes run side by side, this many at a time.
const PARALLEL: usize = 32;

/// Probes for `keys` without any lock, side by side; what no probe found is left out (the
/// change that needs it is then refused, or at start-up the backend waits outside the ring).
pub fn resolve(keys: Vec<MacKey>) -> Vec<(MacKey, Mac)> {
    let mut found = Vec::new();
    for chunk in keys.chunks(PARALLEL) {
        std::thread::scope(|s| {
            let probes: Vec<_> = chunk
                .iter()
                .map(|k| s.spawn(move || neigh::resolve(k.0, k.1.as_deref()).ok()))
                .collect();
            for (k, p) in chunk.iter().zip(probes) {
                if let Ok(Some(mac)) = p.join() {
                    found.push((k.clone(), mac));
                }
            }
        });
    }
    found
}

/// Follows the kernel's neighbour and link changes in a thread of its own, for the life of
/// the daemon. A socket that cannot be opened is logged: MACs are then still retried every
/// second while unknown, but a changed one is not followed.
pub fn watch(core: Arc<Mutex<Core>>) {
    let changes = match neigh::Changes::subscribe() {
        Ok(c) => c,
        Err(e) => {
            log::error!("cannot follow neighbour and interface changes ({e}); a backend's or interface's new MAC will not be noticed until the daemon restarts");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("xdplb-neigh".into())
        .spawn(move || loop {
            match changes.next() {
                Ok(batch) if batch.is_empty() => {}
                Ok(batch) => lock(&core).follow(&batch),
                // The kernel dropped messages for a full socket buffer: read everything again.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    log::warn!("missed some neighbour changes; reading the neighbour table again");
                    lock(&core).recheck_macs();
                }
                Err(e) => {
                    log::error!("reading neighbour changes: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start following neighbour changes: {e}");
    }
}
