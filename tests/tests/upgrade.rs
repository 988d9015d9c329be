//! Upgrades that keep every flow (needs root). A daemon of the previous map layout (this tree
//! built with the lb-userspace feature `layout-v1`: one connection table for both families)
//! balances long-lived L3 connections of both families; a backend joins, so only the
//! connection table keeps some of them where they are. Then that daemon stops and this tree's
//! daemon (layout 2: IPv4 flows in their compact table `XDPLB_CT4`) starts on its pins: it
//! migrates the flows while the old program forwards, swaps its program in, and every
//! connection still answers from its own backend. The IPv4 flows are read back from the
//! pinned `XDPLB_CT4` by key, and `XDPLB_CONNTRACK` is left with IPv6 flows only.
//! The old daemon then refuses the new pins, touching nothing; pins of a layout no daemon
//! migrates from are refused too.

use std::net::IpAddr;

use aya::maps::{Array, HashMap, Map, MapData};
use lb_common::{addr, maps as m, ConnValue, FlowKey, FlowKey4};
use lb_tests::{
    daemon::{layout_v1_bin, xdplb_bin},
    l3held::{
        add_b3, assert_all_answer, assert_pings, env, event, hold_both, vip, vip_list, HELD,
        VIP_PORT,
    },
};

/// The pinned connection tables' keys: (IPv4 keys of `XDPLB_CT4`, families of the entries of
/// `XDPLB_CONNTRACK`).
fn pinned_flows(pins: &std::path::Path) -> (Vec<FlowKey4>, Vec<u8>) {
    let open = |name: &str| MapData::from_pin(pins.join(name)).unwrap();
    let ct4: HashMap<_, FlowKey4, ConnValue> =
        HashMap::try_from(Map::LruHashMap(open(m::CONNTRACK4))).unwrap();
    let ct: HashMap<_, FlowKey, ConnValue> =
        HashMap::try_from(Map::LruHashMap(open(m::CONNTRACK))).unwrap();
    (
        ct4.keys().map(Result::unwrap).collect(),
        ct.keys().map(|k| k.unwrap().family).collect(),
    )
}

fn set_layout(pins: &std::path::Path, version: u32) {
    let data = MapData::from_pin(pins.join(m::CONFIG)).unwrap();
    let mut config = Array::<_, u32>::try_from(Map::Array(data)).unwrap();
    config.set(m::CONFIG_LAYOUT, version, 0).unwrap();
}

/// The pin directory's file names, sorted.
fn pins_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn an_upgrade_from_layout_1_keeps_every_connection() {
    let old = layout_v1_bin().unwrap();
    let new = xdplb_bin().unwrap();
    let mut e = env(old.clone());
    let status = e.d.json(&["status"]).unwrap();
    assert_eq!(status["program"]["layout"], 1, "the old daemon's layout");

    let mut held = hold_both(&e);
    add_b3(&e);
    assert_all_answer(&mut held, "layout 1, after adding b3");
    assert!(
        !e.d.pin_path.join(m::CONNTRACK4).exists(),
        "layout 1 pins no XDPLB_CT4"
    );
    let list = vip_list(&e);
    let stale = event(&e, "conntrack_stale");

    // The old daemon goes; its program forwards on its own until the new one swaps in.
    e.d.stop().unwrap();
    assert_all_answer(&mut held, "no daemon");
    e.d.set_bin(new.clone());
    e.d.spawn().unwrap();

    // Every connection kept its backend and goes on; nothing went stale; the VIPs are as
    // they were, and the new program's ICMP side answers pings.
    assert_all_answer(&mut held, "after the upgrade");
    assert_pings(&e, "after the upgrade");
    assert_eq!(vip_list(&e), list, "vip list --json changed");
    assert_eq!(event(&e, "conntrack_stale"), stale, "an entry went stale");

    let status = e.d.json(&["status"]).unwrap();
    let program = &status["program"];
    assert_eq!(program["layout"], m::LAYOUT_VERSION);
    let up = &program["upgraded"];
    assert_eq!((&up["from"], &up["to"]), (&1.into(), &2.into()), "{up}");
    // 24 held IPv4 connections, 60 closed ones to b3, and whatever health checks and pings
    // left: each IPv4 entry copied, and removed from the shared table.
    let copied = up["copied"].as_u64().unwrap();
    assert!(copied >= HELD as u64 + 60, "{up}");
    assert!(up["retired"].as_u64().unwrap() >= copied, "{up}");
    assert_eq!(up["not_swapped"], serde_json::json!([]), "{up}");
    assert!(e
        .d
        .log()
        .contains("upgraded the pinned maps from layout 1 to 2"));
    let human = e.d.ok(&["status"]).unwrap();
    assert!(
        human.contains("maps: upgraded at start from layout 1 to 2"),
        "{human}"
    );

    // The IPv4 flows are in XDPLB_CT4 under their compact keys; XDPLB_CONNTRACK keeps only
    // IPv6 flows (the held ones among them).
    let (ct4, families) = pinned_flows(&e.d.pin_path);
    let (client, vip4) = (e.topo.client.ip4, vip(false).1.ip());
    let words = |ip: IpAddr| addr::to_words(ip)[0];
    for port in 41000..41000 + HELD {
        let key = FlowKey4 {
            src: words(client),
            dst: words(vip4),
            sport: port.to_be(),
            dport: VIP_PORT.to_be(),
            proto: 6,
            _pad: [0; 3],
        };
        assert!(
            ct4.contains(&key),
            "held connection from port {port} is in XDPLB_CT4"
        );
    }
    assert!(
        families.iter().all(|f| *f == addr::FAMILY_V6),
        "XDPLB_CONNTRACK holds IPv6 flows only: {families:?}"
    );
    assert!(families.len() >= HELD as usize, "the IPv6 flows stayed");

    // A restart of the new daemon adopts its own layout: no second migration.
    e.d.kill9().unwrap();
    e.d.spawn().unwrap();
    let status = e.d.json(&["status"]).unwrap();
    assert!(status["program"]["upgraded"].is_null(), "{status}");
    assert_all_answer(&mut held, "after a restart of the new daemon");

    // The old daemon refuses the new pins and touches nothing: traffic flows on.
    e.d.stop().unwrap();
    let before = pins_in(&e.d.pin_path);
    let refused = e.d.refused_start(&old).unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        refused.status.code() == Some(lb_userspace::daemon::EXIT_REFUSED)
            && err.contains(
                "layout version 2 (a newer daemon made them); this daemon reads version 1"
            ),
        "{err}"
    );
    assert_eq!(
        pins_in(&e.d.pin_path),
        before,
        "the refused start changed the pins"
    );
    assert_all_answer(&mut held, "after the old daemon's refusal");

    // Pins of a layout no daemon migrates from are refused by the new one too, untouched.
    set_layout(&e.d.pin_path, 0);
    let refused = e.d.refused_start(&new).unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        refused.status.code() == Some(lb_userspace::daemon::EXIT_REFUSED)
            && err.contains("layout version 0 (none")
            && err.contains("migrates from version 1 only")
            && err.contains("--cleanup"),
        "{err}"
    );
    assert_eq!(pins_in(&e.d.pin_path), before);
    assert_all_answer(&mut held, "after the new daemon's refusal");
    set_layout(&e.d.pin_path, m::LAYOUT_VERSION);
    e.d.spawn().unwrap();
    assert_all_answer(&mut held, "restarted on its own pins");
}
