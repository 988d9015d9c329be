//! What the daemon shows of itself: `vip list`, `stats` (and the rates behind it), `status`,
//! `simulate` and the metrics snapshot, read from the running configuration and the maps.

use super::*;
use crate::datapath::conntrack::{self, Table};

impl Core {
    fn backend_state(&self, vip: &VipAddr, b: &BackendConfig) -> &'static str {
        if self.down.contains(&(*vip, b.addr)) {
            "down"
        } else if self.unresolved.contains(&(*vip, b.addr)) {
            "unresolved"
        } else if b.is_draining() {
            "draining"
        } else {
            "active"
        }
    }

    /// `vip list --json`: the configuration with data-path ids and backend states. Stable
    /// across restarts (no counters, no timestamps).
    pub fn vip_list(&self) -> Value {
        let vips: Vec<Value> = self
            .config
            .vips
            .iter()
            .map(|v| {
                let backends: Vec<Value> = v
                    .backends
                    .iter()
                    .map(|b| {
                        json!({
                            "addr": b.addr,
                            "port": b.port,
                            "weight": b.weight,
                            "drained": b.drained,
                            "mac": b.mac.or_else(|| self.macs.get(&(b.addr, b.via.clone())).copied()),
                            "via": b.via,
                            "state": self.backend_state(&v.addr, b),
                            "health_check": v.check_for(b).is_some(),
                            "id": self.mirror.backend_id(&v.addr, b.addr),
                        })
                    })
                    .collect();
                json!({
                    "vip": v.addr,
                    "mode": v.mode,
                    "hash": v.hash,
                    "id": self.mirror.vip_id(&v.addr),
                    "ring_digest": self.mirror.ring_digest(&v.addr).map(|d| format!("{d:016x}")),
                    "health": v.health,
                    "backends": backends,
                })
            })
            .collect();
        json!({ "vips": vips })
    }

    /// Reads the counters and updates the rates (called once a second, and by `stats`).
    pub fn sample_rates(&mut self) {
        let now = Instant::now();
        let mut next = HashMap::new();
        let keys = self.config.vips.iter().flat_map(|v| {
            std::iter::once((v.addr, None)).chain(v.backends.iter().map(|b| (v.addr, Some(b.addr))))
        });
        for k in keys {
            let prev = self.rates.get(&k).copied().unwrap_or_default();
            // A failed read keeps the last sample (`stats` reports the error).
            let Ok(c) = self.counters(&k) else {
                next.insert(k, prev);
                continue;
            };
            let mut s = Sample {
                at: Some(now),
                packets: c.packets,
                bytes: c.bytes,
                ..prev
            };
            if let Some(at) = prev.at {
                let dt = now.duration_since(at).as_secs_f64();
                // Keep the last rate for calls that come too soon after a sample.
                if dt >= 0.2 {
                    s.pps = c.packets.saturating_sub(prev.packets) as f64 / dt;
                    s.bps = c.bytes.saturating_sub(prev.bytes) as f64 * 8.0 / dt;
                } else {
                    s.at = prev.at;
                    s.packets = prev.packets;
                    s.bytes = prev.bytes;
                }
            }
            next.insert(k, s);
        }
        self.rates = next;
    }

    /// A VIP's or backend's counters since it was configured (whatever ids it held).
    fn counters(&self, key: &RateKey) -> Result<TrafficCounters, String> {
        self.carried.total(&self.dp, &self.mirror, key)
    }

    fn counters_json(&self, c: TrafficCounters, key: RateKey) -> Value {
        let r = self.rates.get(&key).copied().unwrap_or_default();
        json!({
            "packets": c.packets, "bytes": c.bytes, "new_flows": c.new_flows,
            "reply_packets": c.reply_packets, "reply_bytes": c.reply_bytes,
            "pps": r.pps, "bps": r.bps,
        })
    }

    /// `stats --json`. A counter that cannot be read makes it an error, not a zero.
    pub fn stats(&mut self) -> Result<Value, String> {
        self.sample_rates();
        let mut vips = Vec::new();
        for v in &self.config.vips {
            let vc = self.counters(&(v.addr, None))?;
            let mut entry = self.counters_json(vc, (v.addr, None));
            let mut backends = Vec::new();
            for b in &v.backends {
                let c = self.counters(&(v.addr, Some(b.addr)))?;
                let mut e = self.counters_json(c, (v.addr, Some(b.addr)));
                e["addr"] = json!(b.addr);
                e["state"] = json!(self.backend_state(&v.addr, b));
                backends.push(e);
            }
            entry["vip"] = json!(v.addr);
            entry["mode"] = json!(v.mode);
            entry["backends"] = json!(backends);
            vips.push(entry);
        }
        let counters = self
            .dp
            .stats()
            .map_err(|e| format!("reading the verdict counters failed: {e}"))?;
        let named = |range: std::ops::Range<u32>| -> serde_json::Map<String, Value> {
            range
                .filter_map(|i| {
                    Some((
                        stats::name(i)?.to_string(),
                        json!(counters.get(i as usize).copied().unwrap_or(0)),
                    ))
                })
                .collect()
        };
        Ok(json!({
            "vips": vips,
            "verdicts": named(0..stats::VERDICT_COUNT),
            "events": named(stats::EVENT_BASE..stats::EVENT_BASE + stats::EVENT_COUNT),
        }))
    }

    /// `status --json`.
    pub fn status(&mut self) -> Value {
        let o = self.dp.options().clone();
        let backends_used = self.mirror.backend_ids().len();
        let ring_lines = u64::from(lb_common::maps::ring_lines(o.ring_size));
        let mut maps = vec![
            json!({ "name": lb_common::maps::VIPS, "used": self.dp.vip_entries().ok(), "max": lb_common::maps::vip_entries(o.max_vips) }),
            json!({ "name": lb_common::maps::BACKENDS, "used": backends_used, "max": o.max_backends }),
            json!({ "name": lb_common::maps::RING, "used": self.config.vips.len() as u64 * ring_lines, "max": o.max_vips as u64 * ring_lines }),
        ];
        // Counted by `complete_status`, outside the lock: a walk of each table.
        maps.extend(
            conntrack::tables(&o)
                .map(|t| json!({ "name": t.name, "used": null, "max": t.max_entries })),
        );
        maps.push(json!({ "name": lb_common::maps::ENDPOINTS, "used": self.dp.endpoint_entries().ok(), "max": o.max_backends }));
        let ifaces: Vec<Value> = self
            .dp
            .attachments()
            .into_iter()
            .map(|(name, mode, adopted)| {
                let configured = self
                    .config
                    .interfaces
                    .iter()
                    .find(|i| i.name == name)
                    .map(|i| i.xdp_mode);
                json!({
                    "name": name,
                    "mode": mode.map(|m| m.to_string()).unwrap_or_else(|| "adopted".into()),
                    "configured_mode": configured,
                    "adopted": adopted,
                    // Filled by `complete_status`, outside the lock (netlink, ethtool).
                    "veth_peer": null,
                })
            })
            .collect();
        let mut checks = self.health.status();
        checks.sort_by_key(|(k, _)| *k);
        let health: Vec<Value> = checks
            .into_iter()
            .map(|((vip, addr), s)| json!({ "vip": vip, "backend": addr, "status": s }))
            .collect();
        json!({
            "daemon": {
                "pid": std::process::id(),
                "uptime_seconds": self.started.elapsed().as_secs_f64(),
                "socket": self.paths.socket,
                "pin_path": self.paths.pin_path,
                "state_file": self.paths.state_file,
                "metrics": self.config.metrics.as_ref().map(|m| m.listen),
                "adopted_attachments": self.adopted,
            },
            "program": {
                "name": lb_common::maps::PROG_LB,
                "verified_insns": self.dp.verified_insns(),
                "ring_size": o.ring_size,
                "debug_logging": self.dp.debug().ok(),
                "tracing": self.dp.tracing().ok(),
                "trace_dropped": self.dp.trace_dropped().ok(),
                "record_limit": self.dp.record_limit().ok(),
                "layout": lb_common::maps::LAYOUT_VERSION,
                "upgraded": self.dp.upgraded(),
            },
            "interfaces": ifaces,
            "maps": maps,
            "health": health,
            "node": self.node_status(),
            "sync": self.sync.status(),
        })
    }

    /// Which backend a flow gets: the ring's answer (same hash and ring as the data path) and
    /// the connection table's entry, if any.
    pub(super) fn simulate(&self, src: IpAddr, sport: u16, dst: VipAddr) -> Result<Value, String> {
        if src.is_ipv4() != dst.ip.is_ipv4() {
            return Err(format!(
                "source {src} and VIP {dst} are of different IP families"
            ));
        }
        let all_ports = VipAddr { port: 0, ..dst };
        let vip = [dst, all_ports]
            .into_iter()
            .find(|a| self.config.vip(a).is_some())
            .ok_or_else(|| not_found_vip(&dst))?;
        let cfg = self.config.vip(&vip).expect("found above");
        let key = flow_key(src, sport, &vip, dst.port);
        let hash = flow_hash(
            &key,
            VipSpec {
                addr: vip,
                mode: cfg.mode,
                hash: cfg.hash,
            }
            .flags(),
        );
        let ring_size = self.mirror.ring_size();
        let by_id = |id: u32| {
            cfg.backends
                .iter()
                .find(|b| self.mirror.backend_id(&vip, b.addr) == Some(id))
                .map(|b| b.addr)
        };
        let conn = self.dp.conntrack(&key).map_err(|e| e.to_string())?;
        Ok(json!({
            "vip": vip,
            "src": src,
            "sport": sport,
            "dport": dst.port,
            "hash": hash,
            "slot": hash % ring_size,
            "ring_backend": self.mirror.ring_choice(&vip, &key),
            "conntrack_backend": conn.and_then(|c| by_id(c.backend)),
            "conntrack_entry": conn.is_some(),
        }))
    }

    /// What the metrics endpoint shows.
    pub fn metrics(&mut self) -> Result<MetricsSnapshot, String> {
        let stats = self.stats()?;
        let mut snap = MetricsSnapshot {
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            maps_in_sync: self.sync.in_sync(),
            node: self.announced_prefixes().map(|announced| NodeMetrics {
                drained: self.node.drained,
                announced,
            }),
            ..Default::default()
        };
        let num = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
        for (v, cfg) in stats["vips"]
            .as_array()
            .into_iter()
            .flatten()
            .zip(&self.config.vips)
        {
            let vip = cfg.addr.to_string();
            snap.vips.push(VipMetrics {
                vip: vip.clone(),
                mode: cfg.mode.to_string(),
                packets: num(v, "packets"),
                bytes: num(v, "bytes"),
                new_flows: num(v, "new_flows"),
                reply_packets: num(v, "reply_packets"),
                reply_bytes: num(v, "reply_bytes"),
            });
            for (b, bc) in v["backends"]
                .as_array()
                .into_iter()
                .flatten()
                .zip(&cfg.backends)
            {
                snap.backends.push(BackendMetrics {
                    vip: vip.clone(),
                    backend: bc.addr.to_string(),
                    weight: bc.weight,
                    up: !self.down.contains(&(cfg.addr, bc.addr)),
                    draining: bc.is_draining(),
                    packets: num(b, "packets"),
                    bytes: num(b, "bytes"),
                    new_flows: num(b, "new_flows"),
                    reply_packets: num(b, "reply_packets"),
                    reply_bytes: num(b, "reply_bytes"),
                });
            }
        }
        for (section, out) in [
            ("verdicts", &mut snap.verdicts),
            ("events", &mut snap.events),
        ] {
            if let Some(m) = stats[section].as_object() {
                out.extend(m.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))));
            }
        }
        Ok(snap)
    }
}

/// The parts of `status` that take time, filled in without the core's lock so that health
/// checks, metrics and other requests do not wait: the connection tables' entries (a batched
/// walk of each pinned map, ~0.15 s for a full default table) and each interface's veth peer
/// (netlink and `ethtool`). A count that cannot be read stays null.
pub fn complete_status(status: &mut Value, pin_path: &std::path::Path, tables: &[Table]) {
    for t in tables {
        let used = aya::maps::MapData::from_pin(pin_path.join(t.name))
            .map_err(|e| e.to_string())
            .and_then(|map| conntrack::walk(t, &map, 4096, |_, _| true).map_err(|e| e.to_string()));
        match used {
            Ok(n) => {
                for m in status["maps"].as_array_mut().into_iter().flatten() {
                    if m["name"] == t.name {
                        m["used"] = json!(n);
                    }
                }
            }
            Err(e) => log::warn!("status: counting {}: {e}", t.name),
        }
    }
    for i in status["interfaces"].as_array_mut().into_iter().flatten() {
        if let Some(name) = i["name"].as_str().map(str::to_owned) {
            i["veth_peer"] = veth::status(&name);
        }
    }
}
