//! What the load balancer's programs share with the test and benchmark programs
//! (`lb-ebpf-tools`), written once for both objects: header parsing, protocol numbers, the
//! declaration of a map under its name in `lb_common`, and what every object needs once.
#![no_std]

// The load balancer's binary compiles these two files as its own modules (main.rs), not
// through this library: as another crate's code they changed LLVM's block layout of
// xdplb_icmp (24 more instructions, 41 more verified). Same files, no copy.
pub mod parse;
pub mod proto;

/// Declares a map named as its static, through `lb_common::map_name!`: `VIPS` is the map
/// `XDPLB_VIPS`, the name user space knows as `lb_common::maps::VIPS`. What aya-ebpf's
/// `#[map(name = "...")]` expands to, which takes only a literal: a second copy of the name.
/// (The caller depends on lb_common, as every eBPF crate here does.)
#[macro_export]
macro_rules! map {
    ($(#[$attr:meta])* $vis:vis static $id:ident: $ty:ty = $init:expr;) => {
        $(#[$attr])*
        #[unsafe(link_section = "maps")]
        #[unsafe(export_name = lb_common::map_name!($id))]
        $vis static $id: $ty = $init;
    };
}

/// What each eBPF binary (object) needs once: a panic handler (`no_std`; the verifier proves
/// that no path reaches it) and the license the kernel checks before it allows GPL helpers.
#[macro_export]
macro_rules! binary_items {
    () => {
        #[cfg(not(test))]
        #[panic_handler]
        fn panic(_info: &core::panic::PanicInfo) -> ! {
            loop {}
        }

        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
    };
}
