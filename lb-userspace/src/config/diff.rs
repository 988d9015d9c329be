//! What a change did: the differences between two configurations, one line each in the
//! command line's notation (`changed backend 10.0.0.100:80/tcp 10.0.1.1: weight 1 -> 3`).
//! Every change request answers with this list, and `apply --dry-run` with nothing else.

use std::fmt;

use serde::Serialize;
use serde_json::{json, Value};

use super::{check_text, BackendConfig, Config, VipConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Added,
    Removed,
    Changed,
}

/// One difference. `subject` names the thing as the CLI does (`VIP 10.0.0.100:80/tcp`,
/// `backend 10.0.0.100:80/tcp 10.0.1.1`, `interface eth0`, `[announce]`); a `changed` one
/// names the `field` and its `old` and `new` values; an added or removed one may describe the
/// thing in `new` or `old`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub action: Action,
    pub subject: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<String>,
}

impl Change {
    fn added(subject: String, what: String) -> Change {
        Change {
            action: Action::Added,
            subject,
            field: None,
            old: None,
            new: Some(what).filter(|w| !w.is_empty()),
        }
    }

    fn removed(subject: String, what: String) -> Change {
        Change {
            action: Action::Removed,
            subject,
            field: None,
            old: Some(what).filter(|w| !w.is_empty()),
            new: None,
        }
    }

    /// The API's form: the fields and the line the CLI prints (`text`).
    pub fn to_json(&self) -> Value {
        let mut v = json!(self);
        v["text"] = json!(self.to_string());
        v
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.subject;
        match (self.action, &self.field, &self.old, &self.new) {
            (Action::Changed, Some(field), Some(old), Some(new)) => {
                write!(f, "changed {s}: {field} {old} -> {new}")
            }
            (Action::Added, _, _, Some(what)) => write!(f, "added {s} ({what})"),
            (Action::Removed, _, Some(what), _) => write!(f, "removed {s} ({what})"),
            (action, ..) => write!(f, "{} {s}", json!(action).as_str().unwrap_or_default()),
        }
    }
}

/// The changes that turn `old` into `new`: sections, interfaces, VIPs, then backends, each in
/// configuration order (removals before additions).
pub fn diff(old: &Config, new: &Config) -> Vec<Change> {
    let mut out = Vec::new();
    let sections = |c: &Config| {
        [
            ("limits", json!(c.limits)),
            ("metrics", json!(c.metrics)),
            ("conntrack", json!(c.conntrack)),
            ("maglev", json!(c.maglev)),
            ("announce", json!(c.announce)),
        ]
    };
    for ((name, a), (_, b)) in sections(old).into_iter().zip(sections(new)) {
        section(&mut out, &format!("[{name}]"), &a, &b);
    }
    for i in &old.interfaces {
        if !new.interfaces.iter().any(|n| n.name == i.name) {
            out.push(Change::removed(
                format!("interface {}", i.name),
                String::new(),
            ));
        }
    }
    for i in &new.interfaces {
        let subject = format!("interface {}", i.name);
        let mode = |m| text(&json!(m));
        match old.interfaces.iter().find(|o| o.name == i.name) {
            None => out.push(Change::added(
                subject,
                format!("xdp_mode {}", mode(i.xdp_mode)),
            )),
            Some(o) => field(
                &mut out,
                &subject,
                "xdp_mode",
                mode(o.xdp_mode),
                mode(i.xdp_mode),
            ),
        }
    }
    for v in &old.vips {
        if new.vip(&v.addr).is_none() {
            let n = v.backends.len();
            let what = format!("{n} backend{}", if n == 1 { "" } else { "s" });
            out.push(Change::removed(format!("VIP {}", v.addr), what));
        }
    }
    for v in &new.vips {
        match old.vip(&v.addr) {
            None => {
                out.push(Change::added(format!("VIP {}", v.addr), vip_settings(v)));
                for b in &v.backends {
                    out.push(Change::added(backend_subject(v, b), backend_settings(b)));
                }
            }
            Some(o) => vip(&mut out, o, v),
        }
    }
    out
}

fn vip(out: &mut Vec<Change>, old: &VipConfig, new: &VipConfig) {
    let subject = format!("VIP {}", new.addr);
    field(
        out,
        &subject,
        "mode",
        old.mode.to_string(),
        new.mode.to_string(),
    );
    field(
        out,
        &subject,
        "hash",
        old.hash.to_string(),
        new.hash.to_string(),
    );
    let check = |v: &VipConfig| check_text(v.health.as_ref());
    field(out, &subject, "check", check(old), check(new));
    for b in &old.backends {
        if new.backend(b.addr).is_none() {
            out.push(Change::removed(backend_subject(old, b), String::new()));
        }
    }
    for b in &new.backends {
        let subject = backend_subject(new, b);
        let Some(o) = old.backend(b.addr) else {
            out.push(Change::added(subject, backend_settings(b)));
            continue;
        };
        let opt = |v: Option<String>| v.unwrap_or_else(|| "none".into());
        let yes_no = |d: bool| if d { "yes" } else { "no" }.to_string();
        field(
            out,
            &subject,
            "port",
            opt(o.port.map(|p| p.to_string())),
            opt(b.port.map(|p| p.to_string())),
        );
        field(
            out,
            &subject,
            "weight",
            o.weight.to_string(),
            b.weight.to_string(),
        );
        field(
            out,
            &subject,
            "drained",
            yes_no(o.drained),
            yes_no(b.drained),
        );
        field(
            out,
            &subject,
            "mac",
            opt(o.mac.map(|m| m.to_string())),
            opt(b.mac.map(|m| m.to_string())),
        );
        field(out, &subject, "via", opt(o.via.clone()), opt(b.via.clone()));
        let check = |b: &BackendConfig| check_text(b.health.as_ref());
        field(out, &subject, "check", check(o), check(b));
    }
}

fn backend_subject(v: &VipConfig, b: &BackendConfig) -> String {
    format!("backend {} {}", v.addr, b.addr)
}

fn vip_settings(v: &VipConfig) -> String {
    let mut s = format!("mode {}, hash {}", v.mode, v.hash);
    if let Some(c) = &v.health {
        s += &format!(", check {}", check_text(Some(c)));
    }
    s
}

fn backend_settings(b: &BackendConfig) -> String {
    let mut s = format!("weight {}", b.weight);
    if let Some(p) = b.port {
        s += &format!(", port {p}");
    }
    if let Some(m) = b.mac {
        s += &format!(", mac {m}");
    }
    if let Some(v) = &b.via {
        s += &format!(", via {v}");
    }
    if let Some(c) = &b.health {
        s += &format!(", check {}", check_text(Some(c)));
    }
    if b.drained {
        s += ", drained";
    }
    s
}

fn field(out: &mut Vec<Change>, subject: &str, name: &str, old: String, new: String) {
    if old != new {
        out.push(Change {
            action: Action::Changed,
            subject: subject.to_string(),
            field: Some(name.to_string()),
            old: Some(old),
            new: Some(new),
        });
    }
}

/// A top-level section (`[limits]`, `[announce]`, ...), compared key by key.
fn section(out: &mut Vec<Change>, subject: &str, old: &Value, new: &Value) {
    let settings = |v: &Value| {
        let pairs: Vec<String> = v
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k} {}", text(v)))
            .collect();
        pairs.join(", ")
    };
    match (old.as_object(), new.as_object()) {
        (None, Some(_)) => out.push(Change::added(subject.into(), settings(new))),
        (Some(_), None) => out.push(Change::removed(subject.into(), String::new())),
        (Some(o), Some(n)) => {
            let keys = o.keys().chain(n.keys().filter(|k| !o.contains_key(*k)));
            for k in keys {
                let get =
                    |m: &serde_json::Map<String, Value>| text(m.get(k).unwrap_or(&Value::Null));
                field(out, subject, k, get(o), get(n));
            }
        }
        (None, None) => {}
    }
}

/// A JSON value as a word: strings unquoted, nothing as `none`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "none".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(old: &str, new: &str) -> Vec<String> {
        let old = Config::from_toml(old).unwrap();
        let new = Config::from_toml(new).unwrap();
        diff(&old, &new).iter().map(|c| c.to_string()).collect()
    }

    const BASE: &str = r#"
[[interface]]
name = "eth0"

[[vip]]
addr = "10.0.0.100:80/tcp"

[[vip.backend]]
addr = "10.0.1.1"

[[vip.backend]]
addr = "10.0.1.2"
weight = 2
"#;

    #[test]
    fn the_same_configuration_changes_nothing() {
        assert!(lines(BASE, BASE).is_empty());
        assert!(lines("", "").is_empty());
    }

    #[test]
    fn every_kind_of_change_is_one_line() {
        let new = r#"
[announce]
table = 4200

[[interface]]
name = "eth0"
xdp_mode = "native"

[[interface]]
name = "eth1"

[[vip]]
addr = "10.0.0.100:80/tcp"
hash = "src-ip"
health = { kind = "http", path = "/healthz" }

[[vip.backend]]
addr = "10.0.1.1"
weight = 3
drained = true
mac = "02:00:00:00:00:01"
health = { kind = "tcp", port = 8081, fall = 1 }

[[vip.backend]]
addr = "10.0.1.3"
via = "eth1"

[[vip]]
addr = "10.0.0.200:443/tcp"
mode = "l3"

[[vip.backend]]
addr = "10.0.2.1"
port = 8443
"#;
        assert_eq!(
            lines(BASE, new),
            [
                "added [announce] (protocol 201, table 4200)",
                "changed interface eth0: xdp_mode auto -> native",
                "added interface eth1 (xdp_mode auto)",
                "changed VIP 10.0.0.100:80/tcp: hash 5tuple -> src-ip",
                "changed VIP 10.0.0.100:80/tcp: check none -> http:/healthz",
                "removed backend 10.0.0.100:80/tcp 10.0.1.2",
                "changed backend 10.0.0.100:80/tcp 10.0.1.1: weight 1 -> 3",
                "changed backend 10.0.0.100:80/tcp 10.0.1.1: drained no -> yes",
                "changed backend 10.0.0.100:80/tcp 10.0.1.1: mac none -> 02:00:00:00:00:01",
                "changed backend 10.0.0.100:80/tcp 10.0.1.1: check none -> tcp:8081,fall=1",
                "added backend 10.0.0.100:80/tcp 10.0.1.3 (weight 1, via eth1)",
                "added VIP 10.0.0.200:443/tcp (mode l3, hash 5tuple)",
                "added backend 10.0.0.200:443/tcp 10.0.2.1 (weight 1, port 8443)",
            ]
        );
        assert_eq!(
            lines(new, BASE)[..3],
            [
                "removed [announce]",
                "removed interface eth1",
                "changed interface eth0: xdp_mode native -> auto",
            ]
        );
        assert_eq!(
            lines(new, "")[3..],
            [
                "removed VIP 10.0.0.100:80/tcp (2 backends)",
                "removed VIP 10.0.0.200:443/tcp (1 backend)"
            ]
        );
    }

    #[test]
    fn changes_carry_their_fields_in_json() {
        let old = Config::from_toml("[maglev]\nseed = 1").unwrap();
        let new = Config::from_toml("[maglev]\nseed = 2").unwrap();
        let c = diff(&old, &new);
        assert_eq!(
            c[0].to_json(),
            json!({ "action": "changed", "subject": "[maglev]", "field": "seed", "old": "1", "new": "2", "text": "changed [maglev]: seed 1 -> 2" })
        );
    }
}
