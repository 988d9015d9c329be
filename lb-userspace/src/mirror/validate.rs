//! The check of a desired state against the limits and itself, before any write: a refused
//! change leaves the maps exactly as they were.

use super::*;

impl Mirror {
    /// Checks `desired` against the limits and itself without writing (`sync` does it first).
    pub fn validate(&self, desired: &[VipState]) -> Result<(), MirrorError> {
        let mut seen = BTreeSet::new();
        // One owner per endpoint key: the mirror would otherwise overwrite one VIP's endpoint
        // with another's.
        let mut endpoints = ReplyEndpoints::default();
        for state in desired {
            let vip = state.spec.addr;
            if !seen.insert(vip) {
                return Err(MirrorError::DuplicateVip(vip));
            }
            if state.spec.mode == Mode::L3 {
                for b in &state.backends {
                    endpoints.claim(vip, b.addr, Some(b.port).filter(|p| *p != 0))?;
                }
            }
            if let Some(b) = state
                .backends
                .iter()
                .find(|b| b.port != 0 && state.spec.mode != Mode::L3)
            {
                return Err(MirrorError::PortNeedsL3 {
                    vip,
                    backend: b.addr,
                });
            }
            let mut addrs = BTreeSet::new();
            for b in &state.backends {
                if !addrs.insert(b.addr) {
                    return Err(MirrorError::DuplicateBackend {
                        vip,
                        backend: b.addr,
                    });
                }
                if b.addr.is_ipv4() != vip.ip.is_ipv4() {
                    return Err(MirrorError::FamilyMismatch {
                        vip,
                        backend: b.addr,
                        got: addr::family(b.addr),
                        want: addr::family(vip.ip),
                    });
                }
            }
        }
        if seen.len() > self.max_vips as usize {
            return Err(MirrorError::TooManyVips {
                wanted: seen.len(),
                max: self.max_vips,
            });
        }
        // Within a VIP, new backends take ids before removed ones give theirs back, so the peak
        // is what the kept VIPs hold now plus every backend that is new.
        let held: usize = self
            .vips
            .iter()
            .filter(|(a, _)| seen.contains(a))
            .map(|(_, v)| v.backends.len())
            .sum();
        let new: usize = desired
            .iter()
            .map(|s| {
                let current = self.vips.get(&s.spec.addr);
                s.backends
                    .iter()
                    .filter(|b| current.is_none_or(|v| !v.backends.contains_key(&b.addr)))
                    .count()
            })
            .sum();
        if held + new > self.max_backends as usize {
            return Err(MirrorError::TooManyBackends {
                wanted: held + new,
                max: self.max_backends,
            });
        }
        Ok(())
    }
}
