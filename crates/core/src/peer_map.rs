//! A small map from peer id to a value, for the per-peer bookkeeping of a
//! node: followers' progress, votes received, read rounds acknowledged.
//!
//! Its entries are members of the configuration (callers check the sender
//! first), a handful in practice, so a vector sorted by id serves as well
//! as a `BTreeMap`: lookups are a binary search, an insertion moves at most
//! the few entries behind it, and iteration is in id order as a
//! `BTreeMap`'s. In the firmware each `BTreeMap` instantiation it replaces
//! was 1–5 KB of `.text` at `opt-level = "s"`.

use alloc::vec::Vec;

use crate::types::NodeId;

/// Values by peer id, sorted by id, at most one per id.
#[derive(Clone, Debug, Default)]
pub(crate) struct PeerMap<V> {
    entries: Vec<(NodeId, V)>,
}

impl<V> PeerMap<V> {
    /// An empty map.
    pub(crate) fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// Where `id` is, or where it would go.
    fn find(&self, id: NodeId) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&id, |e| e.0)
    }

    /// The value of `id`, if it has one.
    pub(crate) fn get(&self, id: NodeId) -> Option<&V> {
        let i = self.find(id).ok()?;
        self.entries.get(i).map(|e| &e.1)
    }

    /// The value of `id`, mutably, if it has one.
    pub(crate) fn get_mut(&mut self, id: NodeId) -> Option<&mut V> {
        let i = self.find(id).ok()?;
        self.entries.get_mut(i).map(|e| &mut e.1)
    }

    /// Whether `id` has a value.
    pub(crate) fn contains_key(&self, id: NodeId) -> bool {
        self.find(id).is_ok()
    }

    /// The value of `id`, inserting `make()` first if it has none (like
    /// `BTreeMap::entry(id).or_insert_with(make)`).
    pub(crate) fn get_or_insert_with(&mut self, id: NodeId, make: impl FnOnce() -> V) -> &mut V {
        let i = match self.find(id) {
            Ok(i) => i,
            Err(i) => {
                self.entries.insert(i, (id, make()));
                i
            }
        };
        &mut self.entries[i].1
    }

    /// The lowest id, if any.
    pub(crate) fn first_key(&self) -> Option<NodeId> {
        self.entries.first().map(|e| e.0)
    }

    /// The lowest id above `id`, if any.
    pub(crate) fn next_key_after(&self, id: NodeId) -> Option<NodeId> {
        let i = self.entries.partition_point(|e| e.0 <= id);
        self.entries.get(i).map(|e| e.0)
    }

    /// The entries in id order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (NodeId, &V)> {
        self.entries.iter().map(|(id, v)| (*id, v))
    }

    /// The values in id order, mutably.
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.entries.iter_mut().map(|(_, v)| v)
    }

    /// Keeps the entries for which `keep` holds (in id order).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(NodeId, &mut V) -> bool) {
        self.entries.retain_mut(|(id, v)| keep(*id, v));
    }

    /// Forgets every value.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }
}

impl<V: Copy> PeerMap<V> {
    /// The value of `id`, inserting `value` first if it has none (like
    /// `BTreeMap::entry(id).or_insert(value)`).
    pub(crate) fn get_or_insert(&mut self, id: NodeId, value: V) -> &mut V {
        self.get_or_insert_with(id, || value)
    }
}

#[cfg(test)]
mod tests {
    use super::PeerMap;
    use alloc::vec::Vec;

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
            (Some(&false), Some(&true), Some(&true), None)
        );
        assert!(m.contains_key(7) && !m.contains_key(5));
        if let Some(v) = m.get_mut(1) {
            *v = true;
        }
        assert_eq!(m.get(1), Some(&true));
        m.clear();
        assert_eq!(m.get(3), None);
    }

    #[test]
    fn keeps_ids_sorted_whatever_the_insertion_order() {
        let mut m = PeerMap::new();
        for id in [9u64, 2, 7, 4, 11, 1, 5] {
            *m.get_or_insert(id, 0u64) += id;
        }
        let ids: Vec<u64> = m.iter().map(|e| e.0).collect();
        assert_eq!(ids, [1, 2, 4, 5, 7, 9, 11]);
        for id in [9u64, 2, 7, 4, 11, 1, 5] {
            assert_eq!(m.get(id), Some(&id));
        }
    }

    #[test]
    fn walks_by_key_and_retains_in_order() {
        let mut m = PeerMap::new();
        for id in [5u64, 1, 3] {
            m.get_or_insert_with(id, || id * 10);
        }
        assert_eq!(m.first_key(), Some(1));
        assert_eq!(m.next_key_after(1), Some(3));
        assert_eq!(m.next_key_after(2), Some(3));
        assert_eq!(m.next_key_after(3), Some(5));
        assert_eq!(m.next_key_after(5), None);
        for v in m.values_mut() {
            *v += 1;
        }
        let mut seen = Vec::new();
        m.retain(|id, v| {
            seen.push(id);
            *v != 31
        });
        assert_eq!(seen, [1, 3, 5]);
        let left: Vec<(u64, u64)> = m.iter().map(|(id, v)| (id, *v)).collect();
        assert_eq!(left, [(1, 11), (5, 51)]);
        assert_eq!(PeerMap::<u8>::new().first_key(), None);
    }
}
