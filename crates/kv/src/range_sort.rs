//! The range read's sort: a bottom-up merge sort written for the one
//! element type it sorts.
//!
//! `slice::sort_unstable_by` is a pattern-defeating quicksort whose
//! instantiation for this element type was about 6.7 KB of the firmware's
//! `.text` at `opt-level = "s"`. This merge sort is a fraction of that and
//! keeps the library sort's `O(n log n)` bound for ranges of any size (the
//! server sorts ranges of millions of keys): short runs are sorted by
//! insertion, then merged pairwise between the slice and one scratch copy.
//! The caller's order is total (ties are broken by the unique key), so any
//! correct sort gives the same result as the library's. With the
//! `fast-sort` feature (the server) range reads use the library's sort
//! instead, 1.5–2× faster on a million entries; this one is then only
//! compiled for its test.
#![cfg_attr(feature = "fast-sort", allow(dead_code))]

use crate::store::Entry;
use alloc::vec::Vec;
use core::cmp::Ordering;

/// One entry of a range read: its key and the version shown.
pub(crate) type Found<'m> = (&'m Vec<u8>, &'m Entry);

/// Length of the runs sorted by insertion before merging.
const RUN: usize = 16;

/// Sorts `v` by `cmp`, which must be a total order (stable, though with a
/// total order on distinct elements that does not matter).
pub(crate) fn sort_by<'m>(v: &mut [Found<'m>], cmp: &dyn Fn(&Found<'m>, &Found<'m>) -> Ordering) {
    for run in v.chunks_mut(RUN) {
        insertion_sort(run, cmp);
    }
    if v.len() <= RUN {
        return;
    }
    // Entries are two references: copying them is cheap.
    let mut scratch = v.to_vec();
    // Merge runs of `width` from `v` into `scratch`, or back: `in_v` tells
    // which of the two holds the sorted runs.
    let mut in_v = true;
    let mut width = RUN;
    while width < v.len() {
        if in_v {
            merge_pass(v, &mut scratch, width, cmp);
        } else {
            merge_pass(&scratch, v, width, cmp);
        }
        in_v = !in_v;
        width = width.saturating_mul(2);
    }
    if !in_v {
        v.copy_from_slice(&scratch);
    }
}

/// Sorts a short run in place.
fn insertion_sort<'m>(run: &mut [Found<'m>], cmp: &dyn Fn(&Found<'m>, &Found<'m>) -> Ordering) {
    for i in 1..run.len() {
        let mut j = i;
        while j > 0 && cmp(&run[j - 1], &run[j]) == Ordering::Greater {
            run.swap(j - 1, j);
            j -= 1;
        }
    }
}

/// Merges each pair of adjacent sorted runs of `width` in `src` into the
/// same positions of `dst` (a lone last run is copied).
fn merge_pass<'m>(
    src: &[Found<'m>],
    dst: &mut [Found<'m>],
    width: usize,
    cmp: &dyn Fn(&Found<'m>, &Found<'m>) -> Ordering,
) {
    let pair = width.saturating_mul(2);
    for (s, d) in src.chunks(pair).zip(dst.chunks_mut(pair)) {
        let (left, right) = s.split_at(width.min(s.len()));
        merge(left, right, d, cmp);
    }
}

/// Merges the sorted `left` and `right` into `out` (their total length),
/// taking from `left` on ties.
fn merge<'m>(
    left: &[Found<'m>],
    right: &[Found<'m>],
    out: &mut [Found<'m>],
    cmp: &dyn Fn(&Found<'m>, &Found<'m>) -> Ordering,
) {
    let (mut l, mut r) = (0, 0);
    for slot in out.iter_mut() {
        let take_left = match (left.get(l), right.get(r)) {
            (Some(a), Some(b)) => cmp(a, b) != Ordering::Greater,
            (Some(_), None) => true,
            _ => false,
        };
        if take_left {
            *slot = left[l];
            l += 1;
        } else {
            *slot = right[r];
            r += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{sort_by, Found};
    use crate::store::Entry;
    use alloc::vec::Vec;
    use core::cmp::Ordering;

    fn entry(version: i64) -> Entry {
        Entry {
            value: Vec::new(),
            create_revision: 0,
            mod_revision: 0,
            version,
        }
    }

    /// Versions with many ties, broken by key as the range read does; every
    /// length around the run and merge boundaries against the library sort.
    #[test]
    fn sorts_like_the_library() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for len in (0..80).chain([127, 128, 129, 255, 256, 257, 1000]) {
            let keys: Vec<Vec<u8>> = (0..len as u32).map(|i| i.to_be_bytes().to_vec()).collect();
            let entries: Vec<Entry> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    entry((seed % 7) as i64)
                })
                .collect();
            let found: Vec<Found<'_>> = keys.iter().zip(&entries).collect();
            for descend in [false, true] {
                let cmp = |a: &Found<'_>, b: &Found<'_>| -> Ordering {
                    let o = a.1.version.cmp(&b.1.version);
                    let o = if descend { o.reverse() } else { o };
                    o.then_with(|| a.0.cmp(b.0))
                };
                let mut want = found.clone();
                want.sort_unstable_by(cmp);
                let mut got = found.clone();
                sort_by(&mut got, &cmp);
                assert!(got == want, "len {len}, descend {descend}");
            }
        }
    }
}
