//! Builds the test and benchmark XDP programs (lb-ebpf-tools: generator, sink, floor) for the
//! tests and the `bench` binary (`lb_tests::tools` embeds the object). Only this crate carries
//! them; the `xdplb` binary holds the load balancer's object alone.
#[path = "../lb-userspace/build_ebpf.rs"]
mod build_ebpf;

fn main() -> anyhow::Result<()> {
    // aya-build watches the tools crate; it also compiles the parsing it shares with the load
    // balancer and the names in lb-common.
    for dep in ["../lb-ebpf/src", "../lb-common/src"] {
        println!("cargo:rerun-if-changed={dep}");
    }
    build_ebpf::build("lb-ebpf-tools", "../lb-ebpf-tools", &[])
}
