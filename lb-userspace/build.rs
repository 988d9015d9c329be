//! Builds the XDP program (lb-ebpf) for bpfel-unknown-none with the nightly toolchain and
//! bpf-linker; the object lands in OUT_DIR and is embedded by `loader`.
//! `AYA_BUILD_SKIP=1` skips it (host-only checks such as clippy).
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lb-ebpf");
    let root = root.to_str().expect("workspace path is UTF-8");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
