//! Keys → key groups → instances. A key's group is fixed for the job's life (a stable hash
//! modulo the job's key groups); each instance of a keyed operator owns one contiguous range of
//! groups, so rescaling moves whole groups, with their state, and nothing else.

use std::ops::Range;

/// FNV-1a 64: stable across processes, versions and machines (a key's group must never change),
/// and fast on the short keys streams have.
#[inline]
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV's low bits mix poorly for short keys; fold the high half in before the modulo.
    hash ^ (hash >> 32)
}

/// The key group of a key.
#[inline]
pub fn key_group(key: &[u8], key_groups: u32) -> u32 {
    (stable_hash(key) % u64::from(key_groups)) as u32
}

/// A contiguous range of key groups, `[start, end)`.
pub type KeyGroupRange = Range<u32>;

/// The range instance `index` of `parallelism` owns when groups are split evenly (Flink's
/// layout): the first `key_groups % parallelism` instances get one group more.
pub fn even_range(key_groups: u32, parallelism: u32, index: u32) -> KeyGroupRange {
    let base = key_groups / parallelism;
    let extra = key_groups % parallelism;
    let start = index * base + index.min(extra);
    let len = base + u32::from(index < extra);
    start..start + len
}

/// The even split of `key_groups` into `parallelism` ranges, in order.
pub fn even_ranges(key_groups: u32, parallelism: u32) -> Vec<KeyGroupRange> {
    (0..parallelism).map(|index| even_range(key_groups, parallelism, index)).collect()
}

/// Which instance owns a group, given the ranges in order.
pub fn owner(ranges: &[KeyGroupRange], group: u32) -> usize {
    ranges.partition_point(|range| range.end <= group)
}

/// Maps the new even split onto the current owners so that as few groups as possible move:
/// returns, for each new range (in key-group order), the index of the current instance that
/// keeps it, or `None` for a range that needs a new instance. Each current instance keeps at
/// most one range; ranges are matched by largest overlap first (ties: lower index).
pub fn assign_ranges(current: &[KeyGroupRange], new: &[KeyGroupRange]) -> Vec<Option<usize>> {
    let mut pairs: Vec<(u32, usize, usize)> = Vec::new();
    for (new_index, new_range) in new.iter().enumerate() {
        for (old_index, old_range) in current.iter().enumerate() {
            let overlap = new_range
                .end
                .min(old_range.end)
                .saturating_sub(new_range.start.max(old_range.start));
            if overlap > 0 {
                pairs.push((overlap, new_index, old_index));
            }
        }
    }
    pairs.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut keeper = vec![None; new.len()];
    let mut taken = vec![false; current.len()];
    for (_, new_index, old_index) in pairs {
        if keeper[new_index].is_none() && !taken[old_index] {
            keeper[new_index] = Some(old_index);
            taken[old_index] = true;
        }
    }
    keeper
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn even_ranges_cover_every_group_once() {
        assert_eq!(even_ranges(128, 3), vec![0..43, 43..86, 86..128]);
        assert_eq!(even_ranges(4, 4), vec![0..1, 1..2, 2..3, 3..4]);
        let ranges = even_ranges(128, 5);
        for group in 0..128 {
            assert!(ranges[owner(&ranges, group)].contains(&group));
        }
    }

    #[test]
    fn scaling_two_to_four_keeps_half_the_groups_in_place() {
        let keeper = assign_ranges(&even_ranges(128, 2), &even_ranges(128, 4));
        assert_eq!(keeper, vec![Some(0), None, Some(1), None]);
        let keeper = assign_ranges(&even_ranges(128, 4), &even_ranges(128, 1));
        assert_eq!(keeper, vec![Some(0)]);
    }

    #[test]
    fn the_hash_is_stable() {
        // Fixed forever: a changed hash would send keys to the wrong state after an upgrade.
        assert_eq!(key_group(b"k42", 128), key_group(b"k42", 128));
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325 ^ (0xcbf2_9ce4_8422_2325 >> 32));
    }

    proptest! {
        #[test]
        fn assignment_is_a_partial_injection(old in 1u32..20, new in 1u32..20, groups in 20u32..300) {
            let keeper = assign_ranges(&even_ranges(groups, old), &even_ranges(groups, new));
            prop_assert_eq!(keeper.len(), new as usize);
            let mut seen = std::collections::BTreeSet::new();
            for index in keeper.iter().flatten() {
                prop_assert!(seen.insert(*index));
                prop_assert!((*index as u32) < old);
            }
            prop_assert!(seen.len() <= old.min(new) as usize);
        }
    }
}
