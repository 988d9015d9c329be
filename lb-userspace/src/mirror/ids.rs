//! Handing out VIP and backend ids, each backend id with a new generation, and releasing them.

use super::*;

impl Mirror {
    pub(super) fn take_id(&mut self, vip: bool) -> Result<u32, MirrorError> {
        let (set, err) = if vip {
            (
                &mut self.free_vip_ids,
                MirrorError::TooManyVips {
                    wanted: self.vips.len() + 1,
                    max: self.max_vips,
                },
            )
        } else {
            (
                &mut self.free_backend_ids,
                MirrorError::TooManyBackends {
                    wanted: 0,
                    max: self.max_backends,
                },
            )
        };
        set.pop_first().ok_or(err)
    }

    /// Hands out a backend id for a new holder: a new generation (flows recorded for the last
    /// holder become stale), zeroed counters, and no adopted endpoint left naming it.
    pub(super) fn new_backend_id(&mut self, w: &mut dyn MapWriter) -> Result<u32, MirrorError> {
        let id = self.take_id(false)?;
        self.generations[id as usize] = self.generations[id as usize].wrapping_add(1);
        w.reset_counters(false, id)?;
        self.remove_adopted_endpoints_of(w, id)?;
        Ok(id)
    }

    pub(super) fn backend_info(&self, id: u32, t: &BackendTarget) -> BackendInfo {
        BackendInfo {
            addr: addr::to_words(t.addr),
            mac: t.mac.0,
            family: addr::family(t.addr),
            ifindex: t.ifindex,
            src_mac: t.src_mac.0,
            flags: BACKEND_F_VALID,
            generation: self.generations[id as usize],
            port: t.port.to_be(),
            ..BackendInfo::default()
        }
    }

    /// Marks a backend id free, after removing its endpoint: connection-table entries that
    /// still name it become stale and their flows are re-balanced by the data path.
    pub(super) fn release_backend(
        &mut self,
        w: &mut dyn MapWriter,
        vip: &VipAddr,
        id: u32,
        t: &BackendTarget,
    ) -> Result<(), MirrorError> {
        self.remove_endpoints(w, vip, id, t)?;
        let mut info = self.backend_info(id, t);
        info.flags = 0;
        w.put_backend(id, &info)?;
        self.free_backend_ids.insert(id);
        Ok(())
    }
}
