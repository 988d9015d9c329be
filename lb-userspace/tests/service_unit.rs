//! The systemd unit in scripts/ passes `systemd-analyze verify` (man pages aside: they are
//! installed with the binary), pointed at the binary this build made (verify checks that
//! ExecStart exists).

use std::process::Command;

#[test]
fn the_systemd_unit_verifies() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let unit = std::fs::read_to_string(format!("{root}/scripts/xdplb.service")).unwrap();
    let bin = env!("CARGO_BIN_EXE_xdplb");
    assert!(
        unit.contains("ExecStart=/usr/local/bin/xdplb daemon"),
        "the unit starts the daemon"
    );
    let refused = format!(
        "RestartPreventExitStatus={}",
        lb_userspace::daemon::EXIT_REFUSED
    );
    assert!(
        unit.contains(&refused),
        "a refused start is not restarted in a loop ({refused})"
    );
    let dir = std::env::temp_dir().join(format!("xdplb-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("xdplb.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/xdplb", bin)).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (package systemd; scripts/setup.sh installs it)");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Only lines about our unit count: verify also reports on unrelated units of the host.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("xdplb.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}
