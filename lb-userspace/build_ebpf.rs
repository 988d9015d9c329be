//! Builds one eBPF crate of this workspace for bpfel-unknown-none with the nightly toolchain
//! and bpf-linker (aya-build); its object lands in OUT_DIR under the crate's name. Shared by
//! lb-userspace's build.rs (lb-ebpf, the load balancer) and lb-tests' (lb-ebpf-tools, the test
//! and benchmark programs), so the two objects are built alike.
//!
//! `AYA_BUILD_SKIP=1` skips it (host-only checks such as clippy): an empty placeholder is
//! embedded instead and loading reports that the program was not built.
use std::{env, fs, path::Path};

/// `crate_dir`: the eBPF crate's directory, relative to the calling crate's; `features`: its
/// cargo features to enable.
pub fn build(name: &str, crate_dir: &str, features: &[&str]) -> anyhow::Result<()> {
    let root = Path::new(&env::var("CARGO_MANIFEST_DIR")?).join(crate_dir);
    let root = root.to_str().expect("workspace path is UTF-8").to_string();
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        let out = Path::new(&env::var("OUT_DIR")?).join(name);
        if !out.exists() {
            fs::write(out, [])?;
        }
    }
    // aya-build passes the nested cargo's stderr through as `cargo:warning` lines, so every
    // build printed ~35 "Compiling ..." warnings. Quiet cargo prints no status lines; the
    // eBPF crate's real warnings and errors still arrive as compiler messages.
    env::set_var("CARGO_TERM_QUIET", "true");
    aya_build::build_ebpf(
        [aya_build::Package {
            name,
            root_dir: &root,
            features,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
