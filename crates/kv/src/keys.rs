//! etcd's key-range conventions: an empty `range_end` means one key, `"\0"`
//! means every key from `key` on, anything else the half-open `[key, range_end)`.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::ops::Bound;

/// The `range_end` that selects every key starting with `prefix`: `prefix`
/// with its last byte below `0xff` incremented and the bytes after it
/// dropped. When no such byte exists (`prefix` is empty or all `0xff`) it is
/// `b"\0"`, "every key from `key` on", exactly as etcd's clients compute it.
///
/// ```
/// assert_eq!(metalraft_kv::prefix_end(b"foo"), b"fop".to_vec());
/// assert_eq!(metalraft_kv::prefix_end(b"a\xff"), b"b".to_vec());
/// assert_eq!(metalraft_kv::prefix_end(b"\xff\xff"), b"\0".to_vec());
/// ```
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    alloc::vec![0]
}

/// Whether `k` falls in the range `(key, range_end)` by etcd's rules (the
/// same test the store's reads and watch replay use).
///
/// ```
/// use metalraft_kv::{key_in_range, prefix_end};
/// assert!(key_in_range(b"a", b"a", b""));
/// assert!(key_in_range(b"foo/1", b"foo/", &prefix_end(b"foo/")));
/// assert!(key_in_range(b"z", b"b", b"\0"));
/// assert!(!key_in_range(b"a", b"b", b"\0"));
/// ```
pub fn key_in_range(k: &[u8], key: &[u8], range_end: &[u8]) -> bool {
    KeyRange::new(key, range_end).contains(k)
}

/// Start and end bounds for `BTreeMap::range`.
type KeyBounds<'k> = (Bound<&'k [u8]>, Bound<&'k [u8]>);

/// The keys a `(key, range_end)` pair selects.
#[derive(Clone, Copy, Debug)]
pub(crate) enum KeyRange<'a> {
    /// Exactly this key.
    Single(&'a [u8]),
    /// Every key `>= key`.
    From(&'a [u8]),
    /// Every key in `[key, end)`; empty when `end <= key`.
    Between(&'a [u8], &'a [u8]),
}

impl<'a> KeyRange<'a> {
    pub(crate) fn new(key: &'a [u8], range_end: &'a [u8]) -> Self {
        match range_end {
            [] => KeyRange::Single(key),
            [0] => KeyRange::From(key),
            end => KeyRange::Between(key, end),
        }
    }

    /// The map entries in range, in key order.
    pub(crate) fn iter<'m, V>(
        self,
        map: &'m BTreeMap<Vec<u8>, V>,
    ) -> impl Iterator<Item = (&'m Vec<u8>, &'m V)> + 'm
    where
        'a: 'm,
    {
        let bounds: Option<KeyBounds<'_>> = match self {
            KeyRange::Single(k) => Some((Bound::Included(k), Bound::Included(k))),
            KeyRange::From(k) => Some((Bound::Included(k), Bound::Unbounded)),
            // BTreeMap::range panics on an inverted range; etcd returns nothing.
            KeyRange::Between(k, e) if k < e => Some((Bound::Included(k), Bound::Excluded(e))),
            KeyRange::Between(..) => None,
        };
        bounds
            .into_iter()
            .flat_map(move |b| map.range::<[u8], _>(b))
    }

    /// Whether `k` is in the range.
    pub(crate) fn contains(self, k: &[u8]) -> bool {
        match self {
            KeyRange::Single(key) => k == key,
            KeyRange::From(key) => k >= key,
            KeyRange::Between(key, end) => key <= k && k < end,
        }
    }
}
