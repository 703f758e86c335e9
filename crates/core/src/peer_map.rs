//! A small map from peer id to a `Copy` value, for per-election and
//! per-leadership bookkeeping (votes received, read rounds acknowledged).
//!
//! Its entries are members of the configuration (callers check the sender
//! first), a handful in practice, so a vector sorted by id serves as well
//! as a `BTreeMap`: lookups are a binary search, and an insertion moves at
//! most the few entries behind it. In the firmware each `BTreeMap`
//! instantiation it replaces was about 1 KB of `.text` at
//! `opt-level = "s"`.

use alloc::vec::Vec;

use crate::types::NodeId;

/// Values by peer id, sorted by id, at most one per id.
#[derive(Clone, Debug, Default)]
pub(crate) struct PeerMap<V> {
    entries: Vec<(NodeId, V)>,
}

impl<V: Copy> PeerMap<V> {
    /// An empty map.
    pub(crate) fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// The value of `id`, if it has one.
    pub(crate) fn get(&self, id: NodeId) -> Option<V> {
        let i = self.entries.binary_search_by_key(&id, |e| e.0).ok()?;
        self.entries.get(i).map(|e| e.1)
    }

    /// The value of `id`, inserting `value` first if it has none (like
    /// `BTreeMap::entry(id).or_insert(value)`).
    pub(crate) fn get_or_insert(&mut self, id: NodeId, value: V) -> &mut V {
        let i = match self.entries.binary_search_by_key(&id, |e| e.0) {
            Ok(i) => i,
            Err(i) => {
                self.entries.insert(i, (id, value));
                i
            }
        };
        &mut self.entries[i].1
    }

    /// Forgets every value.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::PeerMap;

    #[test]
    fn behaves_like_a_map_with_or_insert() {
        let mut m = PeerMap::new();
        assert_eq!(m.get(3), None);
        assert!(*m.get_or_insert(3, true));
        assert!(!*m.get_or_insert(1, false));
        // An existing value is kept, as with `entry().or_insert()`.
        assert!(*m.get_or_insert(3, false));
        *m.get_or_insert(7, false) = true;
        assert_eq!(
            (m.get(1), m.get(3), m.get(7), m.get(5)),
            (Some(false), Some(true), Some(true), None)
        );
        m.clear();
        assert_eq!(m.get(3), None);
    }

    #[test]
    fn keeps_ids_sorted_whatever_the_insertion_order() {
        let mut m = PeerMap::new();
        for id in [9u64, 2, 7, 4, 11, 1, 5] {
            *m.get_or_insert(id, 0u64) += id;
        }
        let ids: alloc::vec::Vec<u64> = m.entries.iter().map(|e| e.0).collect();
        assert_eq!(ids, [1, 2, 4, 5, 7, 9, 11]);
        for id in [9u64, 2, 7, 4, 11, 1, 5] {
            assert_eq!(m.get(id), Some(id));
        }
    }
}
