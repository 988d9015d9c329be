//! The configuration reference (docs/config.md), the annotated example
//! (scripts/xdplb.example.toml) and the parser must know the same keys.

use std::{collections::BTreeSet, path::Path};

use lb_userspace::{
    config::{
        AnnounceConfig, BackendConfig, Config, ConntrackConfig, InterfaceConfig, Limits,
        MaglevConfig, MetricsConfig, VipConfig, XdpModeName,
    },
    health::HealthCheck,
    model::{HashFields, Mac, Mode},
};

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Dotted key paths of a TOML document; arrays of tables count as their key.
fn keys(v: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    let toml::Value::Table(t) = v else {
        unreachable!("documents are tables")
    };
    for (k, v) in t {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(_) => keys(v, &path, out),
            toml::Value::Array(items)
                if !items.is_empty() && items.iter().all(toml::Value::is_table) =>
            {
                for item in items {
                    keys(item, &path, out);
                }
            }
            _ => {
                out.insert(path);
            }
        }
    }
}

/// A configuration with every optional value set, as the parser would write it.
fn everything() -> Config {
    let health = HealthCheck {
        port: Some(8081),
        ..HealthCheck::tcp()
    };
    Config {
        limits: Some(Limits {
            conntrack6_size: Some(262_144),
            ..Limits::default()
        }),
        metrics: Some(MetricsConfig {
            listen: "127.0.0.1:9100".parse().unwrap(),
            allow_remote: false,
        }),
        interfaces: vec![InterfaceConfig {
            name: "eth0".into(),
            xdp_mode: XdpModeName::Native,
        }],
        conntrack: Some(ConntrackConfig {
            record_limit: 125_000,
        }),
        maglev: Some(MaglevConfig { seed: 7 }),
        announce: Some(AnnounceConfig {
            table: 4200,
            protocol: 201,
        }),
        vips: vec![VipConfig {
            addr: "10.0.0.1:80/tcp".parse().unwrap(),
            mode: Mode::L3,
            hash: HashFields::SrcIp,
            health: Some(health.clone()),
            backends: vec![BackendConfig {
                addr: "10.0.1.1".parse().unwrap(),
                port: Some(8080),
                weight: 2,
                drained: true,
                mac: Some(Mac([2, 0, 0, 0, 0, 1])),
                via: Some("eth1".into()),
                health: Some(health),
            }],
        }],
    }
}

fn documented() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("docs/config.md")).unwrap();
    text.lines()
        .filter_map(|l| {
            l.strip_prefix("| `")?
                .split_once('`')
                .map(|(k, _)| k.to_string())
        })
        .collect()
}

#[test]
fn the_reference_documents_exactly_the_parsers_keys() {
    let mut parser = BTreeSet::new();
    keys(
        &toml::Value::try_from(everything()).unwrap(),
        "",
        &mut parser,
    );
    let docs = documented();
    assert_eq!(
        docs,
        parser,
        "docs/config.md and the parser disagree:\nonly documented: {:?}\nonly parsed: {:?}",
        docs.difference(&parser).collect::<Vec<_>>(),
        parser.difference(&docs).collect::<Vec<_>>()
    );
}

#[test]
fn the_annotated_example_loads_and_uses_every_key() {
    let text = std::fs::read_to_string(root().join("scripts/xdplb.example.toml")).unwrap();
    let config = Config::from_toml(&text).expect("the example parses");
    config.validate().expect("the example is valid");
    let mut used = BTreeSet::new();
    keys(
        &toml::from_str::<toml::Value>(&text).unwrap(),
        "",
        &mut used,
    );
    let missing: Vec<_> = documented().difference(&used).cloned().collect();
    assert!(
        missing.is_empty(),
        "keys the example does not show: {missing:?}"
    );
}
