//! Address encoding used in map keys: an IPv4 or IPv6 address as four `u32` words holding the
//! network-order bytes exactly as they sit in the packet (an IPv4 address uses word 0 only).
//! The data path copies words straight from headers; user space converts with these helpers.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Address family tags used in keys (not the kernel's AF_* numbers: these are the IP versions).
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// Encodes an address as packet-order words.
pub fn to_words(ip: IpAddr) -> [u32; 4] {
    match ip {
        IpAddr::V4(v4) => [u32::from_ne_bytes(v4.octets()), 0, 0, 0],
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            [w(0), w(4), w(8), w(12)]
        }
    }
}

/// Decodes packet-order words of the given family back into an address.
pub fn from_words(family: u8, words: [u32; 4]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))
    } else {
        let mut o = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(o))
    }
}

/// The family tag of an address.
pub fn family(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => FAMILY_V4,
        IpAddr::V6(_) => FAMILY_V6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_keep_packet_byte_order() {
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        let w = to_words(v4);
        assert_eq!(w[0].to_ne_bytes(), [10, 1, 2, 3]);
        assert_eq!(&w[1..], &[0, 0, 0]);
        assert_eq!(from_words(FAMILY_V4, w), v4);

        let v6: IpAddr = "2001:db8::1:2".parse().unwrap();
        let w = to_words(v6);
        assert_eq!(w[0].to_ne_bytes(), [0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(from_words(FAMILY_V6, w), v6);
    }
}
