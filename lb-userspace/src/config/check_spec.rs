//! A health check written on one line, for the command line and the API:
//! `KIND[:PORT][PATH][,KEY=VALUE...]`, e.g. `tcp`, `tcp:8081`, `http:/healthz`,
//! `http:8081/ready,interval_ms=200,fall=2`, or `none` to remove a check. KEY is any other
//! field of a `health` table in the configuration file (docs/config.md), with the same
//! defaults and the same validation.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::health::{CheckKind, HealthCheck};

/// `--check`: a health check to set, or `none` to remove it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum CheckSpec {
    None,
    Check(HealthCheck),
}

impl CheckSpec {
    pub fn into_check(self) -> Option<HealthCheck> {
        match self {
            CheckSpec::None => None,
            CheckSpec::Check(c) => Some(c),
        }
    }
}

const FORMAT: &str = "KIND[:PORT][PATH][,KEY=VALUE...] (e.g. tcp, http:/healthz, http:8081/ready,interval_ms=200) or none";

impl FromStr for CheckSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "none" {
            return Ok(CheckSpec::None);
        }
        let bad = |why: String| format!("health check {s:?}: {why}; write {FORMAT}");
        let mut parts = s.split(',');
        let head = parts.next().unwrap_or_default();
        let (kind, target) = head.split_once(':').unwrap_or((head, ""));
        let mut check = HealthCheck::tcp();
        check.kind = match kind {
            "tcp" => CheckKind::Tcp,
            "http" => CheckKind::Http,
            other => return Err(bad(format!("kind {other:?} is not tcp or http"))),
        };
        let (port, path) = target.split_at(target.find('/').unwrap_or(target.len()));
        if !port.is_empty() {
            check.port = Some(
                port.parse()
                    .map_err(|_| bad(format!("port {port:?} is not a number 1 to 65535")))?,
            );
        }
        if !path.is_empty() {
            if check.kind == CheckKind::Tcp {
                return Err(bad("a tcp check has no path".into()));
            }
            check.path = path.to_string();
        }
        for option in parts {
            let (key, value) = option
                .split_once('=')
                .ok_or_else(|| bad(format!("{option:?} is not KEY=VALUE")))?;
            let number = |what: &str| bad(format!("{key} {value:?} is not {what}"));
            match key {
                "interval_ms" => {
                    check.interval_ms = value.parse().map_err(|_| number("a number"))?
                }
                "timeout_ms" => check.timeout_ms = value.parse().map_err(|_| number("a number"))?,
                "rise" => check.rise = value.parse().map_err(|_| number("a number"))?,
                "fall" => check.fall = value.parse().map_err(|_| number("a number"))?,
                "expect_status" => {
                    check.expect_status = value.parse().map_err(|_| number("a status code"))?
                }
                _ => {
                    return Err(bad(format!(
                        "unknown key {key:?} (interval_ms, timeout_ms, rise, fall, expect_status)"
                    )))
                }
            }
        }
        check.validate().map_err(bad)?;
        Ok(CheckSpec::Check(check))
    }
}

impl fmt::Display for CheckSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckSpec::None => f.write_str("none"),
            CheckSpec::Check(c) => fmt_check(c, f),
        }
    }
}

/// The notation of `c`: only what differs from the defaults, so it parses back to `c`.
fn fmt_check(c: &HealthCheck, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let d = HealthCheck::tcp();
    f.write_str(match c.kind {
        CheckKind::Tcp => "tcp",
        CheckKind::Http => "http",
    })?;
    let path = c.kind == CheckKind::Http && c.path != d.path;
    if c.port.is_some() || path {
        f.write_str(":")?;
    }
    if let Some(p) = c.port {
        write!(f, "{p}")?;
    }
    if path {
        f.write_str(&c.path)?;
    }
    for (key, value, default) in [
        ("interval_ms", c.interval_ms, d.interval_ms),
        ("timeout_ms", c.timeout_ms, d.timeout_ms),
        ("rise", c.rise.into(), d.rise.into()),
        ("fall", c.fall.into(), d.fall.into()),
        (
            "expect_status",
            c.expect_status.into(),
            d.expect_status.into(),
        ),
    ] {
        if value != default {
            write!(f, ",{key}={value}")?;
        }
    }
    Ok(())
}

/// A check in the command line's notation (`none` for no check).
pub fn check_text(c: Option<&HealthCheck>) -> String {
    c.cloned()
        .map_or(CheckSpec::None, CheckSpec::Check)
        .to_string()
}

impl TryFrom<String> for CheckSpec {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<CheckSpec> for String {
    fn from(c: CheckSpec) -> String {
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notations_parse_and_print_back() {
        for text in [
            "none",
            "tcp",
            "tcp:8081",
            "http",
            "http:/healthz",
            "http:8081/ready",
            "http:/healthz,interval_ms=200,timeout_ms=100,rise=1,fall=2,expect_status=204",
        ] {
            let spec: CheckSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
            let json = serde_json::to_string(&spec).unwrap();
            assert_eq!(serde_json::from_str::<CheckSpec>(&json).unwrap(), spec);
        }
        let CheckSpec::Check(c) = "http:/healthz".parse().unwrap() else {
            panic!("a check")
        };
        assert_eq!(
            (c.kind, c.path.as_str(), c.port, c.interval_ms),
            (CheckKind::Http, "/healthz", None, 1000)
        );
    }

    #[test]
    fn bad_notations_are_refused_with_a_sentence() {
        for (text, want) in [
            ("udp", "kind \"udp\" is not tcp or http"),
            ("", "kind \"\" is not tcp or http"),
            ("http:80x/", "port \"80x\""),
            ("tcp:/x", "a tcp check has no path"),
            ("http:/a,rise", "\"rise\" is not KEY=VALUE"),
            ("http:/a,rise=0", "rise 0 is out of range"),
            ("http:/a,colour=1", "unknown key \"colour\""),
            ("http:0/", "port 0 is not a usable port"),
            ("http:/a,timeout_ms=5000", "timeout_ms 5000 is out of range"),
        ] {
            let err = text.parse::<CheckSpec>().unwrap_err();
            assert!(
                err.contains(want),
                "{text:?}: {err:?} does not say {want:?}"
            );
            assert!(err.contains("http:/healthz"), "{err:?} shows the format");
        }
    }
}
