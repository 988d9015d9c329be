//! A change request made into a whole new configuration (`edited`), which `Core::commit`
//! then checks in full: the request's own checks here, the configuration's rules in
//! `Config::validate`.

use super::*;

pub(super) fn not_found_vip(vip: &VipAddr) -> String {
    format!("no VIP {vip}; `xdplb vip list` shows the VIPs")
}

fn not_found_backend(vip: &VipAddr, addr: IpAddr) -> String {
    format!("VIP {vip} has no backend {addr}; `xdplb vip list` shows its backends")
}

/// The backend `addr` of VIP `vip` in a configuration being edited.
fn backend_mut<'a>(
    config: &'a mut Config,
    vip: &VipAddr,
    addr: IpAddr,
) -> Result<&'a mut BackendConfig, String> {
    let v = config.vip_mut(vip).ok_or_else(|| not_found_vip(vip))?;
    v.backends
        .iter_mut()
        .find(|b| b.addr == addr)
        .ok_or_else(|| not_found_backend(vip, addr))
}

/// The configuration a change request asks for, not yet checked (`Core::commit` does).
pub(super) fn edited(running: &Config, req: Request) -> Result<Config, String> {
    let mut new = running.clone();
    match req {
        Request::VipAdd { vip, mode, hash } => {
            if new.vip(&vip).is_some() {
                return Err(format!(
                    "VIP {vip} already exists; delete it first to change its mode or hash"
                ));
            }
            new.vips.push(VipConfig {
                addr: vip,
                mode,
                hash,
                health: None,
                backends: Vec::new(),
            });
        }
        Request::VipDel { vip } => {
            let before = new.vips.len();
            new.vips.retain(|v| v.addr != vip);
            if new.vips.len() == before {
                return Err(not_found_vip(&vip));
            }
        }
        Request::VipSet { vip, check } => {
            new.vip_mut(&vip).ok_or_else(|| not_found_vip(&vip))?.health = check.into_check();
        }
        Request::BackendAdd(BackendChange {
            vip,
            addr,
            weight,
            mac,
            via,
            check,
        }) => {
            let v = new.vip_mut(&vip).ok_or_else(|| not_found_vip(&vip))?;
            if v.backend(addr.ip).is_some() {
                return Err(format!(
                    "backend {} is already in VIP {vip}; `xdplb backend set` changes it",
                    addr.ip
                ));
            }
            v.backends.push(BackendConfig {
                addr: addr.ip,
                port: addr.port,
                weight: weight.unwrap_or(1),
                drained: false,
                mac,
                via,
                health: check.and_then(CheckSpec::into_check),
            });
        }
        Request::BackendSet(change) => {
            let BackendChange {
                vip,
                addr,
                weight,
                mac,
                via,
                check,
            } = change;
            if weight.is_none()
                && mac.is_none()
                && via.is_none()
                && check.is_none()
                && addr.port.is_none()
            {
                return Err(
                    "backend set needs at least one of ADDR:PORT, --weight, --mac, --via, --check"
                        .into(),
                );
            }
            let b = backend_mut(&mut new, &vip, addr.ip)?;
            // A drained backend keeps draining: the new weight is the one undrain restores.
            b.weight = weight.unwrap_or(b.weight);
            if let Some(c) = check {
                b.health = c.into_check();
            }
            b.port = addr.port.or(b.port);
            b.mac = mac.or(b.mac);
            b.via = via.or(b.via.take());
        }
        Request::BackendDel { vip, addr } => {
            backend_mut(&mut new, &vip, addr)?;
            new.vip_mut(&vip)
                .expect("checked above")
                .backends
                .retain(|b| b.addr != addr);
        }
        Request::BackendDrain { vip, addr } => backend_mut(&mut new, &vip, addr)?.drained = true,
        Request::BackendUndrain { vip, addr } => {
            let b = backend_mut(&mut new, &vip, addr)?;
            if !b.drained && b.weight == 0 {
                return Err(format!(
                    "backend {addr} of VIP {vip} has weight 0 and no kept weight to restore; `xdplb backend set {vip} {addr} --weight N` gives it one"
                ));
            }
            b.drained = false;
        }
        Request::Attach { iface, xdp_mode } => {
            if new.interfaces.iter().any(|i| i.name == iface) {
                return Err(format!("xdplb is already attached to {iface}"));
            }
            new.interfaces.push(InterfaceConfig {
                name: iface,
                xdp_mode,
            });
        }
        Request::Detach { iface } => {
            let before = new.interfaces.len();
            new.interfaces.retain(|i| i.name != iface);
            if new.interfaces.len() == before {
                return Err(format!("xdplb is not attached to {iface}"));
            }
        }
        Request::Apply { config, .. } => {
            new = config;
            // Fixed at start: a file that leaves them out keeps the running ones.
            if new.limits.is_none() {
                new.limits = running.limits.clone();
            }
            if new.metrics.is_none() {
                new.metrics = running.metrics.clone();
            }
        }
        query => return Err(format!("{query:?} is a query, not a change")),
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HashFields;

    fn l3_vip(vip: &str) -> Request {
        Request::VipAdd {
            vip: vip.parse().unwrap(),
            mode: Mode::L3,
            hash: HashFields::FiveTuple,
        }
    }

    fn backend(vip: &str, addr: &str) -> BackendChange {
        BackendChange {
            vip: vip.parse().unwrap(),
            addr: addr.parse().unwrap(),
            weight: None,
            mac: None,
            via: None,
            check: None,
        }
    }

    /// Runs CLI requests as the daemon does (each edit checked in full before it counts, see
    /// `Core::commit`): the configuration they leave, and the errors of the refused ones.
    fn run(requests: Vec<Request>) -> (Config, Vec<String>) {
        let mut running = Config::default();
        let mut errors = Vec::new();
        for r in requests {
            match edited(&running, r).and_then(|c| c.validate().map(|()| c)) {
                Ok(c) => running = c,
                Err(e) => errors.push(e),
            }
        }
        (running, errors)
    }

    const ALL: &str = "10.0.0.1:*/tcp";
    const WEB: &str = "10.0.0.2:80/tcp";

    #[test]
    fn cli_changes_cannot_put_an_all_ports_l3_vip_on_another_vips_backend() {
        let all_first = vec![
            l3_vip(ALL),
            Request::BackendAdd(backend(ALL, "10.0.1.1")),
            l3_vip(WEB),
            Request::BackendAdd(backend(WEB, "10.0.1.1:8080")),
        ];
        let web_first = vec![
            l3_vip(WEB),
            Request::BackendAdd(backend(WEB, "10.0.1.1:8080")),
            l3_vip(ALL),
            Request::BackendAdd(backend(ALL, "10.0.1.1")),
        ];
        for requests in [all_first, web_first] {
            let (running, errors) = run(requests);
            assert_eq!(errors.len(), 1, "{errors:?}");
            for name in [ALL, WEB, "backend 10.0.1.1 "] {
                assert!(errors[0].contains(name), "{:?} names {name}", errors[0]);
            }
            // The refused backend is not there; the rest is.
            let backends: usize = running.vips.iter().map(|v| v.backends.len()).sum();
            assert_eq!((running.vips.len(), backends), (2, 1));
        }
    }

    #[test]
    fn drain_keeps_the_weight_and_undrain_restores_it() {
        let b = |c: &Config| c.vips[0].backends[0].clone();
        let drain = || Request::BackendDrain {
            vip: WEB.parse().unwrap(),
            addr: "10.0.1.1".parse().unwrap(),
        };
        let undrain = || Request::BackendUndrain {
            vip: WEB.parse().unwrap(),
            addr: "10.0.1.1".parse().unwrap(),
        };
        let weight = |w| {
            Request::BackendSet(BackendChange {
                weight: Some(w),
                ..backend(WEB, "10.0.1.1")
            })
        };
        let (c, errors) = run(vec![
            l3_vip(WEB),
            Request::BackendAdd(BackendChange {
                weight: Some(3),
                ..backend(WEB, "10.0.1.1")
            }),
            drain(),
        ]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            (b(&c).weight, b(&c).drained, b(&c).ring_weight()),
            (3, true, 0)
        );
        // A new weight while drained is the one undrain restores.
        let after = |more: Vec<Request>| {
            let mut all = vec![
                l3_vip(WEB),
                Request::BackendAdd(backend(WEB, "10.0.1.1")),
                drain(),
            ];
            all.extend(more);
            run(all)
        };
        let (c, _) = after(vec![weight(5)]);
        assert_eq!((b(&c).weight, b(&c).ring_weight()), (5, 0));
        let (c, _) = after(vec![weight(5), undrain()]);
        assert_eq!(
            (b(&c).weight, b(&c).drained, b(&c).ring_weight()),
            (5, false, 5)
        );
        // Weight 0 (the old way to drain) has nothing to restore.
        let (c, errors) = after(vec![undrain(), weight(0), undrain()]);
        assert_eq!(b(&c).weight, 0);
        assert_eq!(
            errors,
            ["backend 10.0.1.1 of VIP 10.0.0.2:80/tcp has weight 0 and no kept weight to restore; `xdplb backend set 10.0.0.2:80/tcp 10.0.1.1 --weight N` gives it one"]
        );
    }

    #[test]
    fn health_checks_are_set_and_removed_per_backend_and_per_vip() {
        let check = |s: &str| Some(s.parse::<CheckSpec>().unwrap());
        let (c, errors) = run(vec![
            l3_vip(WEB),
            Request::BackendAdd(BackendChange {
                check: check("http:/healthz"),
                ..backend(WEB, "10.0.1.1")
            }),
            Request::VipSet {
                vip: WEB.parse().unwrap(),
                check: check("tcp:8081").unwrap(),
            },
        ]);
        assert!(errors.is_empty(), "{errors:?}");
        let v = &c.vips[0];
        assert_eq!(v.check_for(&v.backends[0]).unwrap().path, "/healthz");
        let (c, _) = run(vec![
            l3_vip(WEB),
            Request::BackendAdd(BackendChange {
                check: check("http:/healthz"),
                ..backend(WEB, "10.0.1.1")
            }),
            Request::BackendSet(BackendChange {
                check: check("none"),
                ..backend(WEB, "10.0.1.1")
            }),
        ]);
        assert_eq!(c.vips[0].backends[0].health, None);
        // An all-ports VIP's check needs a port: refused, nothing set.
        let (c, errors) = run(vec![
            l3_vip(ALL),
            Request::BackendAdd(backend(ALL, "10.0.1.1")),
            Request::VipSet {
                vip: ALL.parse().unwrap(),
                check: check("tcp").unwrap(),
            },
        ]);
        assert_eq!(
            errors,
            ["VIP 10.0.0.1:*/tcp serves all ports: its health check needs an explicit port"]
        );
        assert_eq!(c.vips[0].health, None);
    }

    #[test]
    fn backend_set_cannot_move_an_l3_backend_onto_another_vips_port() {
        let other = "10.0.0.3:80/tcp";
        let (running, errors) = run(vec![
            l3_vip(WEB),
            Request::BackendAdd(backend(WEB, "10.0.1.1:8080")),
            l3_vip(other),
            Request::BackendAdd(backend(other, "10.0.1.1:9090")),
            Request::BackendSet(backend(WEB, "10.0.1.1:9090")),
        ]);
        assert_eq!(
            errors,
            ["backend 10.0.1.1 cannot serve both L3 VIPs 10.0.0.2:80/tcp and 10.0.0.3:80/tcp: both send to its port 9090, so their replies could not be told apart"]
        );
        let web = running.vip(&WEB.parse().unwrap()).unwrap();
        assert_eq!(web.backends[0].port, Some(8080), "unchanged");
    }
}
