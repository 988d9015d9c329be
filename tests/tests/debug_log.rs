//! Verdict logging to the kernel trace pipe is off by default and switched at runtime, without
//! reloading the program (needs root; mounts its own tracefs view).

use lb_tests::{netns::sh, packet::Packet, xdp::test_run};
use lb_userspace::datapath::{DataPath, LoadOptions};

struct Tracefs(std::path::PathBuf);

impl Tracefs {
    fn mount() -> Tracefs {
        let dir = std::env::temp_dir().join(format!("xdplb-tracefs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        sh(&["mount", "-t", "tracefs", "nodev", dir.to_str().unwrap()]).expect("mount tracefs");
        Tracefs(dir)
    }

    fn clear(&self) {
        std::fs::write(self.0.join("trace"), "").unwrap();
    }

    fn lines(&self) -> usize {
        std::fs::read_to_string(self.0.join("trace"))
            .unwrap()
            .lines()
            .filter(|l| l.contains("xdplb verdict"))
            .count()
    }
}

impl Drop for Tracefs {
    fn drop(&mut self) {
        let _ = sh(&["umount", self.0.to_str().unwrap()]);
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn verdict_logging_switches_at_runtime() {
    let trace = Tracefs::mount();
    let mut dp = DataPath::load(&LoadOptions::minimal()).unwrap();
    let frame = Packet::tcp("10.0.0.1", 1000, "10.0.0.7", 80).build();
    let send = |dp: &mut DataPath| {
        assert_eq!(
            test_run(dp.program().unwrap(), &frame, None).0,
            2,
            "a non-VIP packet passes"
        );
    };
    trace.clear();
    assert!(!dp.debug().unwrap(), "off by default");
    send(&mut dp);
    assert_eq!(trace.lines(), 0, "nothing logged while off");
    dp.set_debug(true).unwrap();
    send(&mut dp);
    send(&mut dp);
    assert_eq!(trace.lines(), 2, "one line per verdict while on");
    dp.set_debug(false).unwrap();
    send(&mut dp);
    assert_eq!(trace.lines(), 2, "off again without a reload");
}
