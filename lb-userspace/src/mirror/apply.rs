//! Writing one VIP: removing it, or adding or changing it with its backends, its ring (slot
//! by slot, each valid on its own) and, for an L3 VIP, its backends' endpoints.

use super::*;

impl Mirror {
    pub(super) fn remove_vip(
        &mut self,
        w: &mut dyn MapWriter,
        addr: &VipAddr,
        wanted: &BTreeSet<VipAddr>,
        report: &mut SyncReport,
    ) -> Result<(), MirrorError> {
        let Some(vip) = self.vips.remove(addr) else {
            return Ok(());
        };
        w.del_vip(&addr.key())?;
        let shared = self
            .vips
            .keys()
            .chain(wanted.iter())
            .any(|a| a.ip == addr.ip);
        if !shared {
            w.del_vip(&addr.address_key())?;
        }
        for (id, target) in vip.backends.values() {
            self.release_backend(w, addr, *id, target)?;
            report.backends_written += 1;
        }
        self.free_vip_ids.insert(vip.id);
        report.vips_removed += 1;
        Ok(())
    }

    pub(super) fn apply_vip(
        &mut self,
        w: &mut dyn MapWriter,
        state: &VipState,
        report: &mut SyncReport,
    ) -> Result<(), MirrorError> {
        let addr = state.spec.addr;
        let flags = state.spec.flags();
        if let Some(v) = self.vips.get(&addr) {
            if v.flags != UNKNOWN_FLAGS && (v.flags ^ flags) & VIP_F_MODE_L3 != 0 {
                // A mode change re-places every flow: connection-table entries made in the
                // other mode were not recorded for replies (or do not need them), and an L3
                // VIP's endpoints go before its backends leave.
                self.remove_vip(w, &addr, &BTreeSet::from([addr]), report)?;
            }
        }
        let is_new = !self.vips.contains_key(&addr);
        if is_new {
            let id = self.take_id(true)?;
            w.reset_counters(true, id)?;
            self.vips.insert(
                addr,
                MirroredVip {
                    id,
                    // Unknown until its entry is written: a failed first attempt is rewritten on retry.
                    flags: UNKNOWN_FLAGS,
                    backends: BTreeMap::new(),
                    ring: Vec::new(),
                    digest: None,
                },
            );
        }

        // 1. New and changed backends go in first.
        let mut replaced: Vec<(u32, BackendTarget)> = Vec::new();
        let desired: BTreeMap<IpAddr, &BackendTarget> =
            state.backends.iter().map(|b| (b.addr, b)).collect();
        for target in state.backends.iter() {
            let existing = self.vips[&addr].backends.get(&target.addr).cloned();
            let id = match existing {
                Some((_, old)) if old == *target => continue,
                // Every field but the weight compared (written so that a new field counts).
                Some((id, old))
                    if old
                        == (BackendTarget {
                            weight: old.weight,
                            ..target.clone()
                        }) =>
                {
                    // Only the weight changed: the ring changes, the backend entry does not.
                    self.vips
                        .get_mut(&addr)
                        .unwrap()
                        .backends
                        .insert(target.addr, (id, target.clone()));
                    continue;
                }
                // A new port is a new endpoint: a new id makes the flows' connection-table
                // entries stale, so they are placed again on the endpoint their replies come
                // from.
                Some((old_id, old)) if old.port != target.port => {
                    replaced.push((old_id, old));
                    self.new_backend_id(w)?
                }
                Some((id, _)) => id,
                None => self.new_backend_id(w)?,
            };
            w.put_backend(id, &self.backend_info(id, target))?;
            report.backends_written += 1;
            self.vips
                .get_mut(&addr)
                .unwrap()
                .backends
                .insert(target.addr, (id, target.clone()));
        }

        // 1b. Endpoints of an existing VIP before its ring names a new backend: the replies
        // of its first flows must be recognised.
        if !is_new {
            self.write_endpoints(w, state)?;
        }

        // 2. The ring, slot by slot where it changed (every slot of a new VIP).
        let vip = &self.vips[&addr];
        let members: Vec<RingMember> = vip
            .backends
            .iter()
            .filter(|(a, _)| desired.contains_key(a))
            .map(|(a, (id, t))| RingMember {
                identity: identity(*a),
                weight: t.weight,
                id: *id,
            })
            .collect();
        let ring = maglev::build_seeded(&members, self.ring_size, self.seed);
        let base = vip.id * ring_lines(self.ring_size);
        // A ring of unknown content (new, or restored after a restart) is written whole.
        let writes: Vec<(u32, u32)> = if is_new || vip.ring.len() != ring.len() {
            ring.iter()
                .enumerate()
                .map(|(i, &b)| (i as u32, b))
                .collect()
        } else {
            maglev::delta(&vip.ring, &ring)
        };
        // Whole lines (a map value holds RING_LINE_SLOTS slots), each line a changed slot is in.
        let changed: BTreeSet<u32> = writes.iter().map(|&(i, _)| i / RING_LINE_SLOTS).collect();
        let (lines, values): (Vec<u32>, Vec<RingLine>) = changed
            .into_iter()
            .map(|k| (base + k, ring_line(&ring, k)))
            .unzip();
        w.put_ring_lines(&lines, &values)?;
        report.ring_slots_written += writes.len();

        // 2b. A new VIP's endpoints once its ring is whole: none of its flows exists before
        // its entry appears, and until now its ring lines may hold a removed VIP's slots.
        if is_new {
            self.write_endpoints(w, state)?;
        }

        // 3. The VIP entry (new VIPs appear only now, fully built), flags when they changed.
        let vip = &self.vips[&addr];
        let vip_id = vip.id;
        if is_new || vip.flags != flags {
            w.put_vip(&addr.key(), &VipInfo { id: vip_id, flags })?;
            w.put_vip(
                &addr.address_key(),
                &VipInfo {
                    id: NO_BACKEND,
                    flags: VIP_F_ADDRESS,
                },
            )?;
        }
        if is_new {
            report.vips_added += 1;
        }

        // 4. Backends no ring slot points at any more leave last.
        let vip = self.vips.get_mut(&addr).unwrap();
        vip.ring = ring;
        vip.flags = flags;
        let removed: Vec<(u32, BackendTarget)> = vip
            .backends
            .iter()
            .filter(|(a, _)| !desired.contains_key(a))
            .map(|(_, v)| v.clone())
            .collect();
        vip.backends.retain(|a, _| desired.contains_key(a));
        vip.digest = Some(digest_of(&vip.ring, &vip.backends));
        for (id, target) in removed.into_iter().chain(replaced) {
            self.release_backend(w, &addr, id, &target)?;
            report.backends_written += 1;
        }
        Ok(())
    }

    /// Writes the endpoint of each backend of an L3 VIP where the map holds another value
    /// (new backend, new port or generation, new flags, or an entry adopted from an earlier
    /// daemon). Every backend of `state` holds its id and a valid entry by now.
    fn write_endpoints(
        &mut self,
        w: &mut dyn MapWriter,
        state: &VipState,
    ) -> Result<(), MirrorError> {
        if state.spec.mode != Mode::L3 {
            return Ok(());
        }
        let addr = state.spec.addr;
        let vip = &self.vips[&addr];
        let wanted: Vec<(EndpointKey, Endpoint)> = state
            .backends
            .iter()
            .map(|t| {
                let id = vip.backends[&t.addr].0;
                let value = Endpoint {
                    vip_addr: addr::to_words(addr.ip),
                    vip_port: addr.port.to_be(),
                    _pad: 0,
                    vip: vip.id,
                    vip_flags: state.spec.flags(),
                    backend: id,
                    generation: self.generations[id as usize],
                };
                (endpoint_key(&addr, t), value)
            })
            .collect();
        for (key, value) in wanted {
            if self.endpoints.get(&key) == Some(&value) {
                continue;
            }
            w.put_endpoint(&key, &value)?;
            self.adopted_endpoints.remove(&key);
            self.endpoints.insert(key, value);
        }
        Ok(())
    }

    /// Removes the endpoints that name backend `id` of `vip` (its own, and any an adopted map
    /// had), so none names it once it is released. An endpoint another backend took over in
    /// this sync (a port moved between VIPs) is that backend's and stays.
    pub(super) fn remove_endpoints(
        &mut self,
        w: &mut dyn MapWriter,
        vip: &VipAddr,
        id: u32,
        t: &BackendTarget,
    ) -> Result<(), MirrorError> {
        let own = endpoint_key(vip, t);
        if self.endpoints.get(&own).is_some_and(|e| e.backend == id) {
            w.del_endpoint(&own)?;
            self.endpoints.remove(&own);
        }
        self.remove_adopted_endpoints_of(w, id)
    }

    /// Removes the entries of adopted maps that name backend `id` (only right after a
    /// restart are there any).
    pub(super) fn remove_adopted_endpoints_of(
        &mut self,
        w: &mut dyn MapWriter,
        id: u32,
    ) -> Result<(), MirrorError> {
        let naming: Vec<EndpointKey> = self
            .adopted_endpoints
            .iter()
            .filter(|(_, e)| e.backend == id)
            .map(|(k, _)| *k)
            .collect();
        for key in naming {
            w.del_endpoint(&key)?;
            self.adopted_endpoints.remove(&key);
        }
        Ok(())
    }
}
