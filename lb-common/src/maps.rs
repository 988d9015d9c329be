//! Map names, default sizes and load-time globals, declared once for both sides.
//!
//! Names are the kernel object names (the kernel keeps the first 15 bytes) and also the file
//! names under the bpffs pin directory.

/// Every map's name, written once: `map_name!(VIPS)` is the literal `"XDPLB_VIPS"`. The eBPF
/// side names its maps with it (`lb_ebpf::map!`, which gives the static `VIPS` this name: a
/// symbol name must be a literal, a constant will not do), user space with the constants
/// below, which are its values. `LB_MAPS` and `TOOL_MAPS` list each object's maps:
/// tests/tests/object_names.rs checks them against the built objects both ways, so a map with
/// no name here, or a name with no map, fails the tests.
macro_rules! map_names {
    (lb: [$($lb:ident = $lb_name:literal,)*] tools: [$($t:ident = $t_name:literal,)*]) => {
        #[macro_export]
        macro_rules! map_name {
            $(($lb) => { $lb_name };)*
            $(($t) => { $t_name };)*
        }
        /// The load balancer's maps (lb-ebpf).
        pub const LB_MAPS: &[&str] = &[$($lb_name),*];
        /// The test and benchmark programs' maps (lb-ebpf-tools).
        pub const TOOL_MAPS: &[&str] = &[$($t_name),*];
    };
}

map_names! {
    lb: [
        VIPS = "XDPLB_VIPS",
        BACKENDS = "XDPLB_BACKENDS",
        RING = "XDPLB_RING",
        CONNTRACK = "XDPLB_CONNTRACK",
        CONNTRACK4 = "XDPLB_CT4",
        BACKEND_HOPS = "XDPLB_BE_HOPS",
        ENDPOINTS = "XDPLB_ENDPOINTS",
        JUMP = "XDPLB_JUMP",
        ADDR_FILTER = "XDPLB_ADDRS",
        CONFIG = "XDPLB_CONFIG",
        RECORD_WINDOW = "XDPLB_RECWIN",
        SCRATCH = "XDPLB_SCRATCH",
        IFACES = "XDPLB_IFACES",
        IFACE_MACS = "XDPLB_IFACE_MACS",
        TX_PORTS = "XDPLB_TX_PORTS",
        VIP_STATS = "XDPLB_VIP_STATS",
        BACKEND_STATS = "XDPLB_BE_STATS",
        STATS = "XDPLB_STATS",
        TRACE_RING = "XDPLB_TRACE",
        TRACE_NOW = "XDPLB_TRACE_NOW",
        TRACE_BUDGET = "XDPLB_TRACE_BUDGET",
        WATCH_JUMP = "XDPLB_WATCH_JUMP",
        // Declared by aya-log-ebpf (the data path's debug records), read by aya-log.
        AYA_LOGS = "AYA_LOGS",
    ]
    tools: [
        GEN = "XDPLB_GEN",
        GEN_SEQ = "XDPLB_GEN_SEQ",
        GEN_HDR = "XDPLB_GEN_HDR",
        SINK = "XDPLB_SINK",
        SINK_CFG = "XDPLB_SINK_CFG",
        FLOOR = "XDPLB_FLOOR",
        FLOOR_TX = "XDPLB_FLOOR_TX",
    ]
}

/// VIP lookup: `VipKey` -> `VipInfo`.
pub const VIPS: &str = map_name!(VIPS);
/// Entries of `VIPS` for `max_vips` VIPs: each VIP, plus an address entry per VIP address
/// (at most one per VIP).
pub const fn vip_entries(max_vips: u32) -> u32 {
    2 * max_vips
}
/// Backends by id: array of `BackendInfo`.
pub const BACKENDS: &str = map_name!(BACKENDS);
/// Maglev rings of all VIPs: array of `RingLine`, `ring_lines(ring_size)` lines per VIP; slot
/// i of VIP v is `RING[v * ring_lines(ring_size) + i / RING_LINE_SLOTS][i % RING_LINE_SLOTS]`,
/// a backend id.
pub const RING: &str = map_name!(RING);
/// Ring slots per `XDPLB_RING` value: one 64-byte cache line. The kernel pads array values to
/// 8 bytes, so a ring of one `u32` per value would take twice the memory and cache.
pub const RING_LINE_SLOTS: u32 = 16;
pub type RingLine = [u32; RING_LINE_SLOTS as usize];

/// `XDPLB_RING` values per VIP (the last line's slots past the ring are unused).
pub const fn ring_lines(ring_size: u32) -> u32 {
    ring_size.div_ceil(RING_LINE_SLOTS)
}
/// Connection table of IPv6 flows (LRU): `FlowKey` -> `ConnValue`. Layout 1 kept every flow
/// here; layout 2 keeps IPv4 flows in `CONNTRACK4`, whose key is 16 bytes instead of 40.
pub const CONNTRACK: &str = map_name!(CONNTRACK);
/// Connection table of IPv4 flows (LRU, layout 2 on): `FlowKey4` -> `ConnValue`.
/// (A literal until the data path declares the map: then it joins `map_names!`.)
pub const CONNTRACK4: &str = map_name!(CONNTRACK4);
/// Per-CPU next hop of each backend (array by backend id, `max_backends`): the FIB's answer
/// for the backend's last new L3 flow, which new flows start with (`Hop`, tag = the
/// backend's generation). A cache: not pinned, a restarted daemon's program starts empty.
pub const BACKEND_HOPS: &str = map_name!(BACKEND_HOPS);
/// L3 backend endpoints (hash, `max_backends` entries): `EndpointKey` -> `Endpoint`. A reply is
/// matched by its source endpoint; its flow's state is the connection-table entry.
pub const ENDPOINTS: &str = map_name!(ENDPOINTS);
/// Runtime switches the control plane sets: slot `CONFIG_DEBUG` is reserved and unused (it
/// switched verdict logging before the `trace::GLOBAL_WATCH` word took over; the pinned layout
/// keeps its place, and a daemon that finds it set moves it to its own state); slot
/// `CONFIG_RECORD_LIMIT` the new flows each CPU records in the connection table per second
/// (0: no limit); slot `CONFIG_LAYOUT` the `LAYOUT_VERSION` of the pinned maps (written by
/// the daemon, never read by the data path).
pub const CONFIG: &str = map_name!(CONFIG);
pub const CONFIG_DEBUG: u32 = 0;
pub const CONFIG_RECORD_LIMIT: u32 = 1;
pub const CONFIG_LAYOUT: u32 = 2;
pub const CONFIG_SLOTS: u32 = 3;
/// Version of the pinned maps' layout: their keys, values and what they mean. Bump it with any
/// such change, also one that keeps every size: a daemon refuses pins of another version
/// rather than reading them with another meaning.
#[cfg(not(feature = "layout-v1"))]
pub const LAYOUT_VERSION: u32 = 2;
#[cfg(feature = "layout-v1")]
pub const LAYOUT_VERSION: u32 = 1;
/// Per-CPU `[u64; 2]` rate windows: start of the current one-second window (coarse clock, ns)
/// and the events counted in it. Slot `WINDOW_RECORD`: new flows recorded; slot
/// `WINDOW_ICMP`: ICMP errors the data path generated.
pub const RECORD_WINDOW: &str = map_name!(RECORD_WINDOW);
pub const WINDOW_RECORD: u32 = 0;
pub const WINDOW_ICMP: u32 = 1;
pub const WINDOWS: u32 = 2;
/// ICMP errors ("fragmentation needed", "packet too big") each CPU generates per second at
/// most, as the kernel's `icmp_msgs_per_sec`; beyond it the packet is dropped unanswered.
pub const ICMP_LIMIT: u64 = 1000;
/// Default of `CONFIG_RECORD_LIMIT`: beyond this many new flows per CPU per second (a flood),
/// flows are balanced by the ring alone, so the flood cannot evict established flows' entries.
pub const DEFAULT_RECORD_LIMIT: u32 = 125_000;
/// Address filters: array of `u64` words, `FILTER_WORDS` per kind, bit `hash::addr_bit(addr)`
/// set for every address of the kind (and, rarely, for others that share the bit). A clear
/// bit lets a packet skip the hash lookups: most packets are for no VIP and from no backend.
pub const ADDR_FILTER: &str = map_name!(ADDR_FILTER);
pub const FILTER_WORDS: u32 = 1024;
/// Kind: VIP addresses (destinations worth a VIP lookup).
pub const FILTER_VIP: u32 = 0;
/// Kind: addresses of L3 backends (sources worth an endpoint lookup: maybe a reply).
pub const FILTER_REPLY: u32 = 1;
pub const FILTER_KINDS: u32 = 2;
/// Interfaces the program forwards out of: ifindex -> `IfaceInfo` (their MAC).
pub const IFACES: &str = map_name!(IFACES);
/// Devmap (hash) for XDP_REDIRECT to another interface: ifindex -> ifindex.
pub const TX_PORTS: &str = map_name!(TX_PORTS);
/// Per-CPU `TrafficCounters` per VIP id.
pub const VIP_STATS: &str = map_name!(VIP_STATS);
/// Per-CPU `TrafficCounters` per backend id.
pub const BACKEND_STATS: &str = map_name!(BACKEND_STATS);
/// Per-CPU `u64` per verdict reason and event (see `stats`).
pub const STATS: &str = map_name!(STATS);

/// Programs the load balancer tail-calls (program array, filled by the loader at every load,
/// pinned like the other maps: the kernel empties a program array when its last user-space
/// reference goes, and the attached program must keep its ICMP program while no daemon runs).
/// Slot `JUMP_ICMP`: `PROG_ICMP`.
pub const JUMP: &str = map_name!(JUMP);
pub const JUMP_ICMP: u32 = 0;
pub const JUMP_SLOTS: u32 = 1;

/// The live trace's and debug log's maps (not pinned; `trace` says what each holds).
/// (`trace` re-exports them.)
pub const TRACE_RING: &str = map_name!(TRACE_RING);
pub const TRACE_NOW: &str = map_name!(TRACE_NOW);
pub const TRACE_BUDGET: &str = map_name!(TRACE_BUDGET);
pub const WATCH_JUMP: &str = map_name!(WATCH_JUMP);

/// Program names inside the objects: `LB_PROGRAMS` (lb-ebpf) and `TOOL_PROGRAMS`
/// (lb-ebpf-tools) list them, checked against the built objects like the maps. The eBPF side
/// names a program by its function, so these are written twice, there and here.
pub const PROG_LB: &str = "xdplb";
/// ICMP errors about VIP flows, tail-called by `PROG_LB` (never attached).
pub const PROG_ICMP: &str = "xdplb_icmp";
/// An XDP program that passes everything: the peer end of a veth must have one attached for
/// XDP_TX/XDP_REDIRECT into that veth to deliver, and it is the empty baseline in benchmarks.
pub const PROG_PASS: &str = "xdplb_pass";

pub const LB_PROGRAMS: &[&str] = &[PROG_LB, PROG_ICMP, PROG_PASS, crate::trace::PROG_WATCH];

/// The test and benchmark programs, an object of their own (lb-ebpf-tools) that only the
/// tests and the `bench` binary load.
pub const TOOL_PROGRAMS: &[&str] = &[PROG_GEN, PROG_SINK, PROG_FLOOR];

/// The test traffic generator (BPF_PROG_RUN live frames).
pub const PROG_GEN: &str = "xdplb_gen";
/// Its settings: `[flows, first source address (host order), 0, 0]`.
pub const GEN: &str = map_name!(GEN);
/// Its template: the frame's first `GEN_HDR_LEN` bytes (Ethernet, IPv4, UDP or the start of
/// TCP), as `[u64; 6]`.
pub const GEN_HDR: &str = map_name!(GEN_HDR);
pub const GEN_HDR_LEN: usize = 42;
/// Generated flow f comes from source address `first + f / GEN_FLOWS_PER_ADDR`.
pub const GEN_FLOWS_PER_ADDR: u32 = 16384;

/// Benchmark programs: a sink that counts and drops IPv4 UDP, and the floor forwarder (MAC
/// rewrite + devmap redirect).
pub const PROG_SINK: &str = "xdplb_sink";
pub const PROG_FLOOR: &str = "xdplb_floor";
/// The sink's per-CPU counters (slots `SINK_ALL`, `SINK_PORT`) and its expected UDP port.
pub const SINK: &str = map_name!(SINK);
pub const SINK_CFG: &str = map_name!(SINK_CFG);
pub const SINK_ALL: u32 = 0;
pub const SINK_PORT: u32 = 1;
/// The floor forwarder's MACs (`[dst 6, src 6, pad 4]`) and its one-slot devmap.
pub const FLOOR: &str = map_name!(FLOOR);
pub const FLOOR_TX: &str = map_name!(FLOOR_TX);

/// Load-time global (read-only data) holding the Maglev ring size of every VIP.
pub const GLOBAL_RING_SIZE: &str = "RING_SIZE";

/// Default Maglev ring size: a prime, so every skip value is coprime with it and each
/// backend's permutation visits every slot. 65537 keeps each backend's share within about 1%
/// of its ideal up to a few hundred backends per VIP (see docs/maglev.md), at 256 KiB per VIP.
pub const DEFAULT_RING_SIZE: u32 = 65_537;
/// Default number of VIPs (the ring array is `max_vips * ring_lines(ring_size)` lines of 64 B).
pub const DEFAULT_MAX_VIPS: u32 = 128;
/// Default number of backend slots over all VIPs.
pub const DEFAULT_MAX_BACKENDS: u32 = 4096;
/// Default connection-table size (entries; LRU-evicted beyond it).
pub const DEFAULT_CONNTRACK_SIZE: u32 = 262_144;
/// Maximum interfaces the program can forward out of.
pub const MAX_IFACES: u32 = 64;
/// `IFACES`' MACs again, in an array indexed by ifindex (below `IFACE_MAC_SLOTS`): the
/// per-packet "sent to this host?" check costs an array read the verifier inlines, where the
/// hash lookup cost 25-38 ns per steered packet. Larger ifindexes use `IFACES`.
pub const IFACE_MACS: &str = map_name!(IFACE_MACS);
pub const IFACE_MAC_SLOTS: u32 = 4096;
