//! `#[repr(C)]` keys and values of the maps. Field order is chosen so no implicit padding exists;
//! explicit `_pad` fields keep it that way and are always zero.

/// Forwarding mode of a VIP (`VipInfo::flags`).
pub const VIP_F_MODE_L3: u32 = 1 << 0;
/// Hash only the source address (all flows of a client share a backend) instead of the 5-tuple.
pub const VIP_F_HASH_SRC_IP: u32 = 1 << 1;

/// Marks an *address entry*: key `{addr, port 0, proto 0}` exists while any VIP uses `addr`.
/// The data path consults it only for packets without usable ports (fragments, ICMP), to tell
/// "for a VIP address" from "not ours".
pub const VIP_F_ADDRESS: u32 = 1 << 2;

/// Set by the data path (never in the VIP map) on a VIP it found through its all-ports entry:
/// such an L3 VIP's flows are always recorded, since its backends' replies can only be
/// matched by their connection-table entry (docs/datapath.md, "One flow state").
pub const VIP_F_ALL_PORTS: u32 = 1 << 3;

/// Key of the VIP map. `port == 0` declares the VIP for all ports of `proto`; `proto == 0`
/// is an address entry (see `VIP_F_ADDRESS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    /// Packet-order address words (see `addr`).
    pub addr: [u32; 4],
    /// Destination port in network byte order; 0 for an all-ports VIP.
    pub port: u16,
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
}

/// Value of the VIP map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipInfo {
    /// Index of this VIP's ring and counters, `< max_vips`.
    pub id: u32,
    /// `VIP_F_*` bits.
    pub flags: u32,
}

/// Ring slot value of a VIP without backends that take new flows.
pub const NO_BACKEND: u32 = u32::MAX;

/// The backend slot holds a live backend (unset: the slot is free and flows pointing at it are
/// re-balanced).
pub const BACKEND_F_VALID: u32 = 1 << 0;

/// A backend, in the backend array at its id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendInfo {
    /// Packet-order address words.
    pub addr: [u32; 4],
    /// MAC address the L2 mode sends to.
    pub mac: [u8; 6],
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    pub _pad0: u8,
    /// Interface to send out of; 0 means the interface the packet came in on (XDP_TX).
    pub ifindex: u32,
    /// `BACKEND_F_*` bits.
    pub flags: u32,
    /// Bumped each time the id is given to a different backend, so connection-table entries
    /// recorded for the previous holder of the id are recognised as stale.
    pub generation: u32,
    /// Destination port in network byte order for L3 port rewrite; 0 keeps the port.
    pub port: u16,
    /// L2 mode, `ifindex` set: that interface's MAC, the frame's new source (zero: looked up
    /// in `XDPLB_IFACES` per packet).
    pub src_mac: [u8; 6],
}

/// Key of the connection table: the flow as the client sent it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Ports in network byte order (0 for protocols without ports).
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Key of the IPv4 connection table (`CONNTRACK4`): the flow as the client sent it, in 16
/// bytes where `FlowKey` takes 40, so the kernel hashes and compares less per lookup and each
/// entry is 24 bytes smaller.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey4 {
    /// Packet-order address words (`FlowKey::src[0]`, `FlowKey::dst[0]`).
    pub src: u32,
    pub dst: u32,
    /// Ports in network byte order (0 for protocols without ports).
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl FlowKey4 {
    /// The compact key of an IPv4 `FlowKey`.
    #[inline(always)]
    pub fn of(key: &FlowKey) -> FlowKey4 {
        // Built as four words: written field by field, the 3-byte `_pad` became a BPF call to
        // `memset` on the data path's hit path (about 6 ns of an L2 hit's 75).
        let (s, d) = (key.sport.to_ne_bytes(), key.dport.to_ne_bytes());
        let words = [
            key.src[0],
            key.dst[0],
            u32::from_ne_bytes([s[0], s[1], d[0], d[1]]),
            u32::from_ne_bytes([key.proto, 0, 0, 0]),
        ];
        // SAFETY: `FlowKey4` is `repr(C)`, 16 bytes of four 4-byte-aligned words in field
        // order with no padding bytes (`_pad` is a field), so every `[u32; 4]` is a valid one.
        unsafe { core::mem::transmute::<[u32; 4], FlowKey4>(words) }
    }

    /// The full key it stands for.
    pub fn widen(&self) -> FlowKey {
        FlowKey {
            src: [self.src, 0, 0, 0],
            dst: [self.dst, 0, 0, 0],
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            family: crate::addr::FAMILY_V4,
            _pad: [0; 2],
        }
    }
}

/// Value of the connection table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnValue {
    pub backend: u32,
    /// `BackendInfo::generation` of the backend when the flow was recorded.
    pub generation: u32,
    /// The flow's VIP (`VipInfo` id and flags): a hit needs no VIP lookup. Valid while the
    /// backend is (a VIP that goes, or changes mode, releases its backends).
    pub vip: u32,
    pub vip_flags: u32,
    /// L3 flows: where their packets to the backend leave.
    pub hop: Hop,
    /// L3 flows: where the backend's replies leave, towards the client. Replies find this entry
    /// through their backend's `Endpoint`, so one entry is the whole state of both directions.
    pub reply_hop: Hop,
}

/// An L3 flow's next hop as the FIB gave it, reused until `HOP_TTL_MS` old so that packets of
/// a known flow skip `bpf_fib_lookup` (the largest part of an L3 packet's cost). Written by
/// the data path only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hop {
    pub ifindex: u32,
    /// When the FIB answered: coarse clock in units of 2^20 ns (about 1 ms), 0 = never.
    pub checked: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// The route's MTU: larger packets take the FIB path (which refuses them).
    pub mtu: u16,
    /// A 16-bit digest of the flow the hop was written for. An LRU entry can be recycled for
    /// another flow between the lookup and the write; that flow then ignores this hop.
    pub tag: u16,
}

/// How long a `Hop` is trusted, in its clock's units (about 1 s): a route or neighbour change
/// reaches flows that are already known within this time.
pub const HOP_TTL: u32 = 1 << 10;

/// Key of the endpoint map: an L3 backend endpoint as its replies show it (source address,
/// source port, protocol). Port 0: every port (the backend of an all-ports VIP).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    /// Packet-order address words.
    pub addr: [u32; 4],
    /// Network byte order; 0 for every port.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// Value of the endpoint map: the one L3 VIP a backend endpoint serves (the control plane
/// refuses two), from which a reply's flow is derived and its connection-table entry found.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// The VIP's address words: the source the replies get back.
    pub vip_addr: [u32; 4],
    /// The VIP's port in network byte order; 0 (an all-ports VIP): the reply's own port.
    pub vip_port: u16,
    pub _pad: u16,
    /// `VipInfo` of the VIP: its id (counters, ring) and flags (hash fields).
    pub vip: u32,
    pub vip_flags: u32,
    /// The backend's id and its generation when the endpoint was written: a connection-table
    /// entry confirms a reply only if it names both.
    pub backend: u32,
    pub generation: u32,
}

/// Interface the program forwards out of.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceInfo {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Per-CPU traffic counters of a VIP or a backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub packets: u64,
    pub bytes: u64,
    /// Flows that were assigned here from the Maglev ring (connection-table misses).
    pub new_flows: u64,
    /// L3 mode: the backends' replies, sent back to the clients from the VIP.
    pub reply_packets: u64,
    pub reply_bytes: u64,
}

impl TrafficCounters {
    /// Adds another CPU's counters (user space sums per-CPU values).
    pub fn add(&mut self, other: &TrafficCounters) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.new_flows += other.new_flows;
        self.reply_packets += other.reply_packets;
        self.reply_bytes += other.reply_bytes;
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are #[repr(C)] plain integers/arrays with no implicit padding (asserted below).
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for VipInfo {}
    unsafe impl aya::Pod for BackendInfo {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowKey4 {}
    unsafe impl aya::Pod for ConnValue {}
    unsafe impl aya::Pod for Hop {}
    unsafe impl aya::Pod for IfaceInfo {}
    unsafe impl aya::Pod for EndpointKey {}
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for TrafficCounters {}
}

// The sizes are the sums of the fields: any implicit padding would break these.
const _: () = assert!(core::mem::size_of::<VipKey>() == 20);
const _: () = assert!(core::mem::size_of::<VipInfo>() == 8);
const _: () = assert!(core::mem::size_of::<BackendInfo>() == 44);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<FlowKey4>() == 16);
const _: () = assert!(core::mem::size_of::<ConnValue>() == 64);
const _: () = assert!(core::mem::size_of::<Hop>() == 24);
const _: () = assert!(core::mem::size_of::<IfaceInfo>() == 8);
const _: () = assert!(core::mem::size_of::<EndpointKey>() == 20);
const _: () = assert!(core::mem::size_of::<Endpoint>() == 36);
const _: () = assert!(core::mem::size_of::<TrafficCounters>() == 40);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compact_key_widens_to_the_flow_it_was_made_of() {
        let key = FlowKey {
            src: [0x0a00_0001, 0, 0, 0],
            dst: [0x0a00_0064, 0, 0, 0],
            sport: 0x3930,
            dport: 0x5000,
            proto: 6,
            family: crate::addr::FAMILY_V4,
            _pad: [0; 2],
        };
        assert_eq!(FlowKey4::of(&key).widen(), key);
    }
}
