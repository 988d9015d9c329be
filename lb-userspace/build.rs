//! Builds the XDP program (lb-ebpf) for bpfel-unknown-none (see `build_ebpf`); the object is
//! embedded by `datapath`. The test and benchmark programs (lb-ebpf-tools) are built by
//! lb-tests' build.rs instead, so this binary never carries them.
#[path = "build_ebpf.rs"]
mod build_ebpf;

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
    // `--features layout-v1` builds the previous map layout on both sides (the upgrade test's
    // old daemon); the program must then be built with it too.
    let features: &[&str] = if std::env::var_os("CARGO_FEATURE_LAYOUT_V1").is_some() {
        &["layout-v1"]
    } else {
        &[]
    };
    build_ebpf::build("lb-ebpf", "../lb-ebpf", features)
}
