//! Faults under a running daemon in the L2 topology (needs root): the interface flapping, a
//! backend host vanishing, pins of another layout, a full state disk.

use std::{net::SocketAddr, time::Duration};

use aya::maps::{Array, Map, MapData};
use lb_common::maps as m;
use lb_tests::{
    l2env::{wait_for, L2Env as Env, PORT},
    peers::tcp_once,
    topology::VIP4,
};

#[test]
fn faults_interface_flap_and_a_backend_host_vanishing() {
    let mut e = Env::new(&[]);
    e.apply_with_health("tcp");
    assert_eq!(e.spread(60, 50000).values().sum::<u32>(), 60);

    // The LB's interface goes down and up: the attachment stays, traffic resumes.
    e.topo
        .lb
        .ns
        .exec(&["ip", "link", "set", "eth0", "down"])
        .unwrap();
    e.topo
        .lb
        .ns
        .exec(&["ip", "link", "set", "eth0", "up"])
        .unwrap();
    let target = SocketAddr::new(VIP4.parse().unwrap(), PORT);
    wait_for(
        "traffic after the interface came back",
        Duration::from_secs(10),
        || {
            e.topo
                .client
                .ns
                .run(|| tcp_once(target, 0).is_ok())
                .unwrap()
        },
    );
    assert_eq!(e.spread(60, 51000).values().sum::<u32>(), 60);
    let status = e.d.json(&["status"]).unwrap();
    assert_eq!(
        status["interfaces"][0]["name"], "eth0",
        "still attached after the flap"
    );

    // A backend's host disappears mid-traffic (its namespace is deleted): health checks take
    // it out, flows of the others stay.
    let mut held = e.hold(30, 52000);
    let b3 = e.b(2);
    // Its processes end with it (our server threads hold sockets in it), then the namespace
    // goes, taking its interface off the bridge.
    e.servers[2] = None;
    lb_tests::netns::sh(&["ip", "netns", "del", &e.topo.backends[2].ns.name]).unwrap();
    e.expect_failover(&mut held, "b3", &b3, 60, 53000);
}

#[test]
fn faults_incompatible_pins_and_a_full_disk() {
    let mut e = Env::new(&[]);
    let vip = e.vip();
    e.d.ok(&["attach", "eth0"]).unwrap();
    e.d.ok(&["vip", "add", &vip]).unwrap();
    e.d.ok(&["backend", "add", &vip, &e.b(0)]).unwrap();
    let target = SocketAddr::new(VIP4.parse().unwrap(), PORT);

    // A daemon that wants other limits refuses the pinned maps instead of misreading them,
    // naming the way out, and the running data path is untouched.
    e.d.stop().unwrap();
    let limits = e.d.dir.join("limits.toml");
    std::fs::write(&limits, "[limits]\nring_size = 1009\n").unwrap();
    let other = e.other_daemon(&["--config".as_ref(), limits.as_os_str()]);
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(
        !other.status.success()
            && err.contains("other limits or an older layout")
            && err.contains("--cleanup"),
        "{err}"
    );
    assert_eq!(
        e.topo
            .client
            .ns
            .run(|| tcp_once(target, 0).unwrap())
            .unwrap(),
        "b1",
        "traffic still flows"
    );

    // Pins of another layout version are refused even where every size matches (the same
    // bytes could mean something else), and left as they are.
    let set_layout = |version: u32| {
        let data = MapData::from_pin(e.d.pin_path.join(m::CONFIG)).unwrap();
        let mut config = Array::<_, u32>::try_from(Map::Array(data)).unwrap();
        config.set(m::CONFIG_LAYOUT, version, 0).unwrap();
    };
    set_layout(m::LAYOUT_VERSION + 1);
    let other = e.other_daemon(&[]);
    let err = String::from_utf8_lossy(&other.stderr);
    let newer = format!(
        "layout version {} (a newer daemon made them); this daemon reads version {}",
        m::LAYOUT_VERSION + 1,
        m::LAYOUT_VERSION
    );
    assert!(
        other.status.code() == Some(lb_userspace::daemon::EXIT_REFUSED)
            && err.contains(&newer)
            && err.contains("--cleanup"),
        "{err}"
    );
    let data = MapData::from_pin(e.d.pin_path.join(m::CONFIG)).unwrap();
    let config = Array::<_, u32>::try_from(Map::Array(data)).unwrap();
    assert_eq!(
        config.get(&m::CONFIG_LAYOUT, 0).unwrap(),
        m::LAYOUT_VERSION + 1,
        "the refused pins were touched"
    );
    assert!(e.d.pin_path.join(m::VIPS).exists());
    set_layout(m::LAYOUT_VERSION);

    // The state directory fills up: a change is applied and kept running, the error says the
    // state could not be saved; once there is room, the next change saves it all.
    let state_dir = e.d.state_file.parent().unwrap().to_path_buf();
    let saved = std::fs::read(&e.d.state_file).unwrap();
    lb_tests::netns::sh(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "size=64k",
        "tmpfs",
        state_dir.to_str().unwrap(),
    ])
    .unwrap();
    std::fs::write(&e.d.state_file, &saved).unwrap();
    e.d.spawn().unwrap();
    let filler = state_dir.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 64 * 1024]);
    let out = e.d.cli(&["backend", "add", &vip, &e.b(1)]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("applied and running")
            && err.contains("No space left"),
        "{err}"
    );
    let list = e.d.json(&["vip", "list"]).unwrap();
    assert_eq!(
        list["vips"][0]["backends"].as_array().unwrap().len(),
        2,
        "the running state keeps the change"
    );
    std::fs::remove_file(&filler).unwrap();
    e.d.ok(&["backend", "add", &vip, &e.b(2)]).unwrap();
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&e.d.state_file).unwrap()).unwrap();
    assert_eq!(
        saved["config"]["vip"][0]["backend"]
            .as_array()
            .unwrap()
            .len(),
        3,
        "saved once there was room"
    );
    let c = e.spread(90, 54000);
    assert_eq!(c.values().sum::<u32>(), 90);
}
