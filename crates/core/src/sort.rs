//! One small, non-generic sort for the crate's `u64` lists (voter ids,
//! acknowledged indexes).
//!
//! `slice::sort_unstable` is a pattern-defeating quicksort of several KB per
//! instantiation; the lists sorted here hold a configuration's members, a
//! handful in practice. A heapsort keeps the `O(n log n)` worst case for
//! any length (a configuration decoded from a peer's snapshot is not
//! trusted to be short) in a few hundred bytes of code, and needs no
//! allocation. Sorting `u64`s gives the same result with any correct sort,
//! so the order is exactly `sort_unstable`'s.

/// Sorts `v` ascending, in place.
pub(crate) fn sort_u64(v: &mut [u64]) {
    let len = v.len();
    // Build a max-heap: sift down every inner node, the last first.
    for start in (0..len / 2).rev() {
        sift_down(v, start, len);
    }
    // Move the maximum behind the shrinking heap, one at a time.
    for end in (1..len).rev() {
        v.swap(0, end);
        sift_down(v, 0, end);
    }
}

/// Restores the max-heap property of `v[..end]` below `node`.
fn sift_down(v: &mut [u64], mut node: usize, end: usize) {
    loop {
        let mut child = 2 * node + 1;
        if child >= end {
            return;
        }
        if child + 1 < end && v[child] < v[child + 1] {
            child += 1;
        }
        if v[node] >= v[child] {
            return;
        }
        v.swap(node, child);
        node = child;
    }
}

#[cfg(test)]
mod tests {
    use super::sort_u64;
    use alloc::vec::Vec;

    /// Every length up to 40, with duplicates, against the library sort.
    #[test]
    fn sorts_like_the_library() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for len in 0..40 {
            for round in 0..20 {
                let v: Vec<u64> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        // Small values on even rounds, so duplicates occur.
                        if round % 2 == 0 {
                            seed % 5
                        } else {
                            seed
                        }
                    })
                    .collect();
                let mut want = v.clone();
                want.sort_unstable();
                let mut got = v;
                sort_u64(&mut got);
                assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn sorts_extremes_and_descending_input() {
        let mut v: Vec<u64> = (0..100).rev().collect();
        v.push(u64::MAX);
        v.push(0);
        sort_u64(&mut v);
        let mut want: Vec<u64> = (0..100).collect();
        want.insert(0, 0);
        want.push(u64::MAX);
        assert_eq!(v, want);
    }
}
