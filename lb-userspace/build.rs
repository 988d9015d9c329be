//! Builds the XDP program (lb-ebpf) for bpfel-unknown-none with the nightly toolchain and
//! bpf-linker; the object lands in OUT_DIR and is embedded by `datapath`.
//! `AYA_BUILD_SKIP=1` skips it (host-only checks such as clippy): an empty placeholder is
//! embedded instead and loading reports that the program was not built.
use std::{env, fs, path::Path};

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lb-ebpf");
    let root = root.to_str().expect("workspace path is UTF-8");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        let out = Path::new(&env::var("OUT_DIR")?).join("lb-ebpf");
        if !out.exists() {
            fs::write(out, [])?;
        }
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
