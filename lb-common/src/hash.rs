//! The flow hash: which Maglev slot a new flow lands in. The XDP program and `xdplb simulate`
//! both call `flow_hash`, so they cannot disagree. It is MurmurHash3's 32-bit block and
//! finalisation steps over fixed-size words: no loops over packet data, cheap in BPF, and
//! well mixed so consecutive source ports spread over the whole ring.

use crate::types::{FlowKey, VIP_F_HASH_SRC_IP};

const SEED: u32 = 0x9e37_79b9;

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(mut h: u32, len: u32) -> u32 {
    h ^= len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hashes the fields of a flow that the VIP's flags select: the whole 5-tuple, or only the
/// source address with `VIP_F_HASH_SRC_IP`.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, vip_flags: u32) -> u32 {
    let mut h = mix(SEED, (key.family as u32) | ((key.proto as u32) << 8));
    h = mix(h, key.src[0]);
    h = mix(h, key.src[1]);
    h = mix(h, key.src[2]);
    h = mix(h, key.src[3]);
    if vip_flags & VIP_F_HASH_SRC_IP != 0 {
        return finish(h, 20);
    }
    h = mix(h, key.dst[0]);
    h = mix(h, key.dst[1]);
    h = mix(h, key.dst[2]);
    h = mix(h, key.dst[3]);
    h = mix(h, (key.sport as u32) | ((key.dport as u32) << 16));
    finish(h, 40)
}

/// MurmurHash3 (32-bit) of a byte string, used by user space to derive a backend's Maglev
/// offset and skip from its identity. Kept here beside `flow_hash` so both share one mixer.
pub fn murmur3(data: &[u8], seed: u32) -> u32 {
    let mut h = seed;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        h = mix(h, u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut k = 0u32;
        for (i, b) in rest.iter().enumerate() {
            k |= (*b as u32) << (8 * i);
        }
        h ^= k
            .wrapping_mul(0xcc9e_2d51)
            .rotate_left(15)
            .wrapping_mul(0x1b87_3593);
    }
    finish(h, data.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{addr::FAMILY_V4, types::VIP_F_HASH_SRC_IP};

    fn key(sport: u16) -> FlowKey {
        FlowKey {
            src: [u32::from_ne_bytes([10, 0, 0, 1]), 0, 0, 0],
            dst: [u32::from_ne_bytes([10, 0, 0, 100]), 0, 0, 0],
            sport: sport.to_be(),
            dport: 80u16.to_be(),
            proto: 6,
            family: FAMILY_V4,
            _pad: [0; 2],
        }
    }

    #[test]
    fn murmur3_matches_reference_vectors() {
        // Published MurmurHash3_x86_32 test vectors.
        assert_eq!(murmur3(b"", 0), 0);
        assert_eq!(murmur3(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3(b"hello", 0), 0x248b_fa47);
        assert_eq!(murmur3(b"Hello, world!", 1234), 0xfaf6_cdb3);
        assert_eq!(
            murmur3(b"The quick brown fox jumps over the lazy dog", 0x9747_b28c),
            0x2fa8_26cd
        );
    }

    #[test]
    fn source_ip_hash_ignores_ports_and_destination() {
        let a = key(1000);
        let mut b = key(2000);
        b.dst[0] = 7;
        assert_eq!(
            flow_hash(&a, VIP_F_HASH_SRC_IP),
            flow_hash(&b, VIP_F_HASH_SRC_IP)
        );
        assert_ne!(flow_hash(&a, 0), flow_hash(&b, 0));
    }

    #[test]
    fn consecutive_ports_spread_evenly_over_buckets() {
        // 64 000 consecutive source ports into 16 buckets: each within 5% of the mean.
        let mut buckets = [0u32; 16];
        for p in 1..=64_000u16 {
            buckets[(flow_hash(&key(p), 0) % 16) as usize] += 1;
        }
        for b in buckets {
            assert!((3800..=4200).contains(&b), "bucket count {b} far from 4000");
        }
    }
}

/// The bit of `addr` in an address filter (`maps::ADDR_FILTER`): one of 64 Ki. A multiplicative
/// hash of the folded words; user space and the data path both call this.
#[inline(always)]
pub fn addr_bit(addr: &[u32; 4]) -> u32 {
    let x = addr[0] ^ addr[1].rotate_left(8) ^ addr[2].rotate_left(16) ^ addr[3].rotate_left(24);
    x.wrapping_mul(0x9e37_79b1) >> 16
}
