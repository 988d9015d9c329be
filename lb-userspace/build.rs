//! Builds the XDP program (lb-ebpf) for bpfel-unknown-none with the nightly toolchain and
//! bpf-linker; the object lands in OUT_DIR and is embedded by `datapath`.
//! `AYA_BUILD_SKIP=1` skips it (host-only checks such as clippy): an empty placeholder is
//! embedded instead and loading reports that the program was not built.
use std::{env, fs, path::Path};

/// `xdplb --version` carries the git revision it was built from.
fn git_revision() {
    let rev = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=XDPLB_GIT_REV={rev}");
    for p in ["../.git/HEAD", "../.git/refs/heads"] {
        println!("cargo:rerun-if-changed={p}");
    }
}

fn main() -> anyhow::Result<()> {
    git_revision();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lb-ebpf");
    let root = root.to_str().expect("workspace path is UTF-8");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        let out = Path::new(&env::var("OUT_DIR")?).join("lb-ebpf");
        if !out.exists() {
            fs::write(out, [])?;
        }
    }
    // aya-build passes the nested cargo's stderr through as `cargo:warning` lines, so every
    // build printed ~35 "Compiling ..." warnings. Quiet cargo prints no status lines; the
    // eBPF crate's real warnings and errors still arrive as compiler messages.
    env::set_var("CARGO_TERM_QUIET", "true");
    // `--features layout-v1` builds the previous map layout on both sides (the upgrade test's
    // old daemon); the program must then be built with it too.
    let features: &[&str] = if env::var_os("CARGO_FEATURE_LAYOUT_V1").is_some() {
        &["layout-v1"]
    } else {
        &[]
    };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir: root,
            features,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
