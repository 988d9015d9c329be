//! Internet checksum arithmetic (RFC 1071, incremental update per RFC 1624).
//!
//! Values are 16-bit words and 32-bit fields *as loaded from packet memory* (network-order
//! bytes read natively). The one's-complement sum is byte-order independent, so the result can
//! be stored back the same way without swapping.

/// One's-complement addition of a 32-bit field into a running 32-bit sum.
#[inline(always)]
pub fn add32(sum: u32, value: u32) -> u32 {
    let s = (sum as u64) + ((value & 0xffff) as u64) + ((value >> 16) as u64);
    fold64(s)
}

#[inline(always)]
fn fold64(mut s: u64) -> u32 {
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    s as u32
}

/// Folds a 32-bit sum to 16 bits with end-around carry (not complemented).
#[inline(always)]
pub fn fold(sum: u32) -> u16 {
    let s = (sum & 0xffff) + (sum >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// New checksum after a 16-bit word of the covered data changed from `old` to `new`
/// (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')).
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check as u32) + (!old as u32) + (new as u32);
    !fold(sum)
}

/// New checksum after a 32-bit field (an IPv4 address, half a port pair) changed.
#[inline(always)]
pub fn replace32(check: u16, old: u32, new: u32) -> u16 {
    let sum = (!check as u32) + (!old & 0xffff) + (!old >> 16) + (new & 0xffff) + (new >> 16);
    !fold(sum)
}

/// New checksum after four 32-bit words (an IPv6 address) changed.
#[inline(always)]
pub fn replace128(check: u16, old: &[u32; 4], new: &[u32; 4]) -> u16 {
    let mut c = check;
    let mut i = 0;
    while i < 4 {
        c = replace32(c, old[i], new[i]);
        i += 1;
    }
    c
}

/// Full checksum of a byte string (for building packets and in tests).
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial as u64;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_ne_bytes([c[0], c[1]]) as u64;
    }
    if let [b] = chunks.remainder() {
        sum += u16::from_ne_bytes([*b, 0]) as u64;
    }
    !fold(fold64(sum))
}

#[cfg(test)]
mod tests {
    use super::*;

    // A 20-byte IPv4 header (RFC 1071 style example) with its checksum field zeroed.
    fn header() -> [u8; 20] {
        [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ]
    }

    #[test]
    fn full_checksum_of_known_header() {
        let h = header();
        assert_eq!(u16::from_be(checksum(&h, 0)), 0xb861);
    }

    #[test]
    fn incremental_update_equals_recomputation() {
        let mut h = header();
        let c = checksum(&h, 0);
        h[10..12].copy_from_slice(&c.to_ne_bytes());
        // Rewrite the destination address 192.168.0.199 -> 10.9.8.7.
        let old = u32::from_ne_bytes([h[16], h[17], h[18], h[19]]);
        let new = u32::from_ne_bytes([10, 9, 8, 7]);
        let updated = replace32(c, old, new);
        h[16..20].copy_from_slice(&new.to_ne_bytes());
        h[10..12].fill(0);
        assert_eq!(updated, checksum(&h, 0));
        // And a 16-bit field: TTL/protocol word.
        h[10..12].copy_from_slice(&updated.to_ne_bytes());
        let old16 = u16::from_ne_bytes([h[8], h[9]]);
        h[8] -= 1;
        let new16 = u16::from_ne_bytes([h[8], h[9]]);
        let updated = replace16(updated, old16, new16);
        h[10..12].fill(0);
        assert_eq!(updated, checksum(&h, 0));
    }

    #[test]
    fn replace128_equals_recomputation_for_many_values() {
        let mut data = [0u8; 40];
        for round in 0u32..200 {
            for (i, b) in data.iter_mut().enumerate() {
                *b = (round.wrapping_mul(31).wrapping_add(i as u32 * 7)) as u8;
            }
            let c = checksum(&data, 0);
            let old: [u32; 4] = core::array::from_fn(|i| {
                u32::from_ne_bytes(data[8 + 4 * i..12 + 4 * i].try_into().unwrap())
            });
            let new: [u32; 4] =
                core::array::from_fn(|i| round.wrapping_mul(0x0101_0101).wrapping_add(i as u32));
            for i in 0..4 {
                data[8 + 4 * i..12 + 4 * i].copy_from_slice(&new[i].to_ne_bytes());
            }
            assert_eq!(
                replace128(c, &old, &new),
                checksum(&data, 0),
                "round {round}"
            );
        }
    }

    #[test]
    fn add32_carries() {
        assert_eq!(fold(add32(0xffff, 0x0001_0001)), 0x0002);
    }
}
