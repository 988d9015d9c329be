//! Weighted Maglev consistent hashing (Eisenbud et al., NSDI 2016), computed in user space and
//! written to the data path's ring map, slot by slot where it changed.
//!
//! * **Deterministic**: backends are sorted by their identity (address and port) before the
//!   ring is populated, and each backend's permutation depends only on that identity. Two LB
//!   nodes with the same backends build the same ring, whatever order they learned them in.
//! * **Weighted**: each population round gives every backend `weight` credit; a backend places
//!   one slot per `max_weight` credit, so slot shares follow weights. With equal weights every
//!   round places one slot per backend and each owns `floor(M/N)` or `ceil(M/N)` slots.
//! * **Seeded**: a configurable seed (`[maglev] seed`, default 0) is mixed into every
//!   permutation, so operators can pick another ring layout; nodes that share VIPs must share it.
//! * **Minimal disruption**: removing a backend mostly re-assigns only its own slots (figures
//!   in the tests and docs/maglev.md).

use lb_common::{hash::murmur3, NO_BACKEND};

const OFFSET_SEED: u32 = 0x5eed_0ff5;
const SKIP_SEED: u32 = 0x5eed_5c1b;

/// One backend as the ring builder sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingMember {
    /// Stable identity (the backend's address and port bytes): decides its permutation.
    pub identity: Vec<u8>,
    /// Relative weight; 0 takes no slots (draining).
    pub weight: u32,
    /// Value written into the slots it owns (the data path's backend id).
    pub id: u32,
}

/// Whether `m` is prime (ring sizes must be).
pub fn is_prime(m: u32) -> bool {
    if m < 2 {
        return false;
    }
    let mut d = 2u64;
    while d * d <= m as u64 {
        if (m as u64).is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// Builds a ring of `size` slots (a prime) with seed 0 (see `build_seeded`).
pub fn build(members: &[RingMember], size: u32) -> Vec<u32> {
    build_seeded(members, size, 0)
}

/// Builds a ring of `size` slots (a prime). Slots hold member ids; a ring without any member
/// of non-zero weight holds `NO_BACKEND` everywhere. The owner of every slot depends only on
/// the members' identities and weights, `size` and `seed`. Seed 0 gives the rings of releases
/// without a seed, so upgrading moves no flow.
pub fn build_seeded(members: &[RingMember], size: u32, seed: u32) -> Vec<u32> {
    assert!(is_prime(size), "Maglev ring size {size} is not prime");
    let m = size as u64;
    let mut active: Vec<&RingMember> = members.iter().filter(|b| b.weight > 0).collect();
    let mut ring = vec![NO_BACKEND; size as usize];
    if active.is_empty() {
        return ring;
    }
    active.sort_by(|a, b| a.identity.cmp(&b.identity));
    let max_weight = active.iter().map(|b| b.weight as u64).max().unwrap_or(1);

    // Permutation of member i: slot(j) = (offset_i + j * skip_i) mod M. skip in [1, M-1] is
    // coprime with the prime M, so the permutation visits every slot.
    let perms: Vec<(u64, u64)> = active
        .iter()
        .map(|b| {
            let offset = murmur3(&b.identity, OFFSET_SEED ^ seed) as u64 % m;
            let skip = murmur3(&b.identity, SKIP_SEED ^ seed) as u64 % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    // Member i's next candidate slot: stepping by `skip` with a conditional subtraction
    // walks the same permutation as `(offset + j * skip) mod M` without a division per step.
    let mut next: Vec<u64> = perms.iter().map(|&(offset, _)| offset).collect();
    let mut credit = vec![0u64; active.len()];
    let mut filled = 0u64;
    let step = |slot: u64, skip: u64| {
        let s = slot + skip;
        if s >= m {
            s - m
        } else {
            s
        }
    };
    'rounds: loop {
        for i in 0..active.len() {
            credit[i] += active[i].weight as u64;
            while credit[i] >= max_weight {
                credit[i] -= max_weight;
                let skip = perms[i].1;
                // Walk member i's permutation to its next free slot.
                let mut slot = next[i];
                while ring[slot as usize] != NO_BACKEND {
                    slot = step(slot, skip);
                }
                ring[slot as usize] = active[i].id;
                next[i] = step(slot, skip);
                filled += 1;
                if filled == m {
                    break 'rounds;
                }
            }
        }
    }
    ring
}

/// A digest of a ring's content by owner identity (FNV-1a, 64 bits): equal on two nodes iff
/// (with overwhelming probability) every slot has the same owner, whatever ids each node
/// handed out. `owner` maps a slot value to the member's identity (None: empty slot).
pub fn digest<'a>(ring: &[u32], owner: impl Fn(u32) -> Option<&'a [u8]>) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= b as u64;
        h = h.wrapping_mul(PRIME);
    };
    for &slot in ring {
        match owner(slot) {
            // Length first, so slot boundaries are unambiguous.
            Some(id) => {
                eat(id.len() as u8);
                id.iter().for_each(|b| eat(*b));
            }
            None => eat(0xff),
        }
    }
    h
}

/// The slots that differ between two rings of the same size, as `(index, new value)`.
pub fn delta(old: &[u32], new: &[u32]) -> Vec<(u32, u32)> {
    assert_eq!(old.len(), new.len(), "rings of different sizes");
    old.iter()
        .zip(new)
        .enumerate()
        .filter(|(_, (o, n))| o != n)
        .map(|(i, (_, n))| (i as u32, *n))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const M: u32 = 65_537;
    const RING_FNV: u64 = 0x14d2_9d2d_05b1_f312;

    fn member(i: u32, weight: u32) -> RingMember {
        // Distinct IPv4 addresses 10.x.y.z, port 80.
        let mut identity = vec![10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        identity.extend_from_slice(&80u16.to_be_bytes());
        RingMember {
            identity,
            weight,
            id: i,
        }
    }

    fn shares(ring: &[u32]) -> HashMap<u32, u32> {
        let mut s = HashMap::new();
        for &id in ring {
            *s.entry(id).or_insert(0) += 1;
        }
        s
    }

    #[test]
    fn prime_check() {
        assert!(is_prime(65_537) && is_prime(13) && is_prime(2));
        assert!(!is_prime(65_536) && !is_prime(1) && !is_prime(0) && !is_prime(65_535));
    }

    #[test]
    fn same_backends_in_any_order_build_the_same_ring() {
        let a: Vec<_> = (0..50).map(|i| member(i, 1 + i % 3)).collect();
        let mut b = a.clone();
        b.reverse();
        b.swap(3, 17);
        assert_eq!(build(&a, M), build(&b, M));
    }

    #[test]
    fn equal_weights_own_floor_or_ceil_of_m_over_n() {
        for n in [1u32, 3, 10, 100, 1000] {
            let members: Vec<_> = (0..n).map(|i| member(i, 1)).collect();
            let s = shares(&build(&members, M));
            assert_eq!(s.len() as u32, n, "every backend owns slots (n = {n})");
            let (lo, hi) = (M / n, M.div_ceil(n));
            for (id, count) in s {
                assert!(
                    (lo..=hi).contains(&count),
                    "n = {n}: backend {id} owns {count}, not in [{lo}, {hi}]"
                );
            }
        }
    }

    #[test]
    fn weighted_shares_follow_weights() {
        let weights = [1u32, 2, 1, 5, 3];
        let total: u32 = weights.iter().sum();
        let members: Vec<_> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| member(i as u32, w))
            .collect();
        let s = shares(&build(&members, M));
        for (i, &w) in weights.iter().enumerate() {
            let want = M as f64 * w as f64 / total as f64;
            let got = s[&(i as u32)] as f64;
            println!("weight {w}: {got} slots, ideal {want:.1}");
            assert!(
                (got - want).abs() <= 2.0 + want * 0.001,
                "weight {w}: {got} slots, ideal {want:.1}"
            );
        }
    }

    #[test]
    fn zero_weight_takes_no_slots_and_no_members_means_no_backend() {
        let members = vec![member(0, 0), member(1, 1)];
        assert!(build(&members, 13).iter().all(|&id| id == 1));
        assert!(build(&[member(0, 0)], 13)
            .iter()
            .all(|&id| id == NO_BACKEND));
        assert!(build(&[], 13).iter().all(|&id| id == NO_BACKEND));
    }

    /// Share of the slots that did not belong to the removed backend and still changed owner.
    fn disruption(n: u32) -> f64 {
        let members: Vec<_> = (0..n).map(|i| member(i, 1)).collect();
        let before = build(&members, M);
        let removed = n / 2;
        let rest: Vec<_> = members
            .iter()
            .filter(|b| b.id != removed)
            .cloned()
            .collect();
        let after = build(&rest, M);
        let (mut kept_owner, mut moved) = (0u32, 0u32);
        for (b, a) in before.iter().zip(&after) {
            if *b != removed {
                kept_owner += 1;
                if a != b {
                    moved += 1;
                }
            }
        }
        moved as f64 / kept_owner as f64
    }

    #[test]
    fn removing_one_backend_moves_few_other_slots() {
        for (n, bound) in [(10u32, 0.01), (100, 0.01), (1000, 0.01)] {
            let d = disruption(n);
            println!(
                "maglev disruption M={M} N={n}: {:.4}% of other slots moved",
                d * 100.0
            );
            assert!(d < bound, "N = {n}: {:.3}% of other slots moved", d * 100.0);
        }
    }

    #[test]
    fn the_seed_alone_changes_the_ring_and_seed_zero_is_the_unseeded_ring() {
        let members: Vec<_> = (0..5).map(|i| member(i, 1)).collect();
        let mut reversed = members.clone();
        reversed.reverse();
        assert_eq!(build(&members, M), build_seeded(&members, M, 0));
        assert_eq!(
            build_seeded(&members, M, 7),
            build_seeded(&reversed, M, 7),
            "same seed, same set: same ring in any order"
        );
        let moved = delta(&build_seeded(&members, M, 0), &build_seeded(&members, M, 7)).len();
        // Another seed is another layout: about (N-1)/N of the slots change owner.
        assert!(moved > M as usize / 2, "only {moved} slots moved");
        // Balance holds for any seed.
        let s = shares(&build_seeded(&members, M, 0xdead_beef));
        assert!(
            s.values().all(|&c| (M / 5..=M.div_ceil(5)).contains(&c)),
            "{s:?}"
        );
    }

    #[test]
    fn digest_depends_on_owners_not_on_ids() {
        let a: Vec<_> = (0..3).map(|i| member(i, 1)).collect();
        // The same backends under other ids (another node handed them out in another order).
        let b: Vec<_> = a
            .iter()
            .map(|m| RingMember {
                id: m.id + 100,
                ..m.clone()
            })
            .collect();
        let (ra, rb) = (build(&a, 13), build(&b, 13));
        assert_ne!(ra, rb);
        let da = digest(&ra, |id| {
            a.iter().find(|m| m.id == id).map(|m| m.identity.as_slice())
        });
        let db = digest(&rb, |id| {
            b.iter().find(|m| m.id == id).map(|m| m.identity.as_slice())
        });
        assert_eq!(da, db);
        let rc = build_seeded(&a, 13, 1);
        let dc = digest(&rc, |id| {
            a.iter().find(|m| m.id == id).map(|m| m.identity.as_slice())
        });
        assert_ne!(da, dc, "another seed, another digest");
    }

    #[test]
    fn delta_lists_only_changed_slots() {
        assert_eq!(delta(&[1, 2, 3, 4], &[1, 5, 3, 6]), vec![(1, 5), (3, 6)]);
        assert!(delta(&[1, 2], &[1, 2]).is_empty());
    }

    /// Nodes running different xdplb versions must build the same ring: its content is pinned
    /// (FNV-1a of the slots, for 100 weighted members; computed with the first release).
    #[test]
    fn ring_content_is_stable_across_versions() {
        let members: Vec<_> = (0..100).map(|i| member(i, 1 + i % 4)).collect();
        let ring = build(&members, M);
        let fnv = ring.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &id| {
            (h ^ id as u64).wrapping_mul(0x100_0000_01b3)
        });
        assert_eq!(fnv, RING_FNV, "ring content changed: {fnv:#x}");
    }
}
