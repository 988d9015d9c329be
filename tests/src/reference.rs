//! Reference implementations of the documented balancing algorithm, written from
//! docs/maglev.md and the published MurmurHash3 and Maglev descriptions, not from the code
//! under test: nothing here calls `lb_common::hash` or `lb_userspace::maglev`. Fixtures and the
//! fuzz oracle predict backends with it, so a data path and control plane that agree with each
//! other but not with the documentation fail.

use std::net::IpAddr;

/// `flow_hash`'s seed (docs/maglev.md, "Flow hash").
pub const FLOW_SEED: u32 = 0x9e37_79b9;
/// Seeds of a backend's Maglev offset and skip (`s1`, `s2` in docs/maglev.md).
pub const OFFSET_SEED: u32 = 0x5eed_0ff5;
pub const SKIP_SEED: u32 = 0x5eed_5c1b;

/// MurmurHash3_x86_32 (Austin Appleby's reference, little-endian blocks).
pub fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let scramble = |k: u32| k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    let mut h = seed;
    let blocks = data.len() / 4;
    for i in 0..blocks {
        let k = u32::from_le_bytes(data[i * 4..i * 4 + 4].try_into().unwrap());
        h ^= scramble(k);
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = &data[blocks * 4..];
    if !tail.is_empty() {
        let k = tail.iter().rev().fold(0u32, |k, b| (k << 8) | *b as u32);
        h ^= scramble(k);
    }
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// An address as 16 bytes: IPv6 as is, IPv4 in the first 4 (then zeros).
fn addr16(a: IpAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match a {
        IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => b = v6.octets(),
    }
    b
}

/// The flow hash of docs/maglev.md: MurmurHash3 of `[family, proto, 0, 0]`, the source and
/// destination addresses (16 bytes each), source and destination ports (network order);
/// with `src_ip_only` only the first 20 bytes.
pub fn flow_hash(
    proto: u8,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    src_ip_only: bool,
) -> u32 {
    let family = if src.is_ipv4() { 4 } else { 6 };
    let mut b = vec![family, proto, 0, 0];
    b.extend_from_slice(&addr16(src));
    if !src_ip_only {
        b.extend_from_slice(&addr16(dst));
        b.extend_from_slice(&sport.to_be_bytes());
        b.extend_from_slice(&dport.to_be_bytes());
    }
    murmur3_32(&b, FLOW_SEED)
}

/// A weighted Maglev ring of `m` slots (a prime) over `backends` (address, weight), seed 0 as
/// docs/maglev.md describes it: identities (address bytes) sorted, permutation slot j of a
/// backend `(offset + j * skip) % m`, and in every round each backend gains `weight` credit
/// and takes its next free slot once per `max_weight` credit. Slots hold indices into
/// `backends`; None only when no backend has weight.
pub fn maglev(backends: &[(IpAddr, u32)], m: u64) -> Vec<Option<usize>> {
    let mut order: Vec<usize> = (0..backends.len()).filter(|i| backends[*i].1 > 0).collect();
    let identity = |i: usize| match backends[i].0 {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    order.sort_by_key(|i| identity(*i));
    let mut ring = vec![None; m as usize];
    let Some(max_weight) = order.iter().map(|i| backends[*i].1 as u64).max() else {
        return ring;
    };
    let perm: Vec<(u64, u64)> = order
        .iter()
        .map(|i| {
            let id = identity(*i);
            let offset = murmur3_32(&id, OFFSET_SEED) as u64 % m;
            let skip = murmur3_32(&id, SKIP_SEED) as u64 % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut j = vec![0u64; order.len()];
    let mut credit = vec![0u64; order.len()];
    let mut filled = 0;
    while filled < m {
        for (n, i) in order.iter().enumerate() {
            credit[n] += backends[*i].1 as u64;
            while credit[n] >= max_weight && filled < m {
                credit[n] -= max_weight;
                let (offset, skip) = perm[n];
                let slot = loop {
                    let s = ((offset + j[n] * skip) % m) as usize;
                    j[n] += 1;
                    if ring[s].is_none() {
                        break s;
                    }
                };
                ring[slot] = Some(*i);
                filled += 1;
            }
        }
    }
    ring
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur3_matches_published_vectors() {
        assert_eq!(murmur3_32(b"", 0), 0);
        assert_eq!(murmur3_32(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3_32(b"hello", 0), 0x248b_fa47);
        assert_eq!(murmur3_32(b"Hello, world!", 1234), 0xfaf6_cdb3);
        assert_eq!(
            murmur3_32(b"The quick brown fox jumps over the lazy dog", 0x9747_b28c),
            0x2fa8_26cd
        );
    }

    #[test]
    fn maglev_fills_every_slot_evenly() {
        let b: Vec<(IpAddr, u32)> = ["10.0.1.1", "10.0.1.2", "10.0.1.3"]
            .iter()
            .map(|a| (a.parse().unwrap(), 1))
            .collect();
        let ring = maglev(&b, 65537);
        for i in 0..3 {
            let owned = ring.iter().filter(|s| **s == Some(i)).count();
            assert!((21845..=21846).contains(&owned), "backend {i}: {owned}");
        }
    }
}
