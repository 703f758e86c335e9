//! What the MVCC store keeps besides the current state: each key's past
//! versions and the revision log, fed by the shared write path.

use super::change::ChangeKind;
use super::record_log::RecordLog;
use crate::error::RequestError;
use crate::limits::{
    HISTORY_KEY_OVERHEAD_BYTES, HISTORY_VERSION_OVERHEAD_BYTES, LOG_CHANGE_OVERHEAD_BYTES,
    LOG_RECORD_OVERHEAD_BYTES,
};
use crate::request::RangeRequest;
use crate::response::RangeResponse;
use crate::store::Entry;
use crate::write::History;
use crate::{keys::KeyRange, range};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use core::cmp::Ordering;
use core::iter::Peekable;

/// The keys one revision changed, in sub-revision (operation) order. A key
/// usually appears once, but can appear more: etcd compares a transaction's
/// delete intervals literally, so a `"\0"`-ended delete may delete a key the
/// same branch puts (before or after it), each change its own sub-revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    /// The main revision.
    pub(crate) revision: i64,
    /// Each changed key and what happened to it.
    pub(crate) changes: Changes,
}

/// A revision's changes packed into one buffer (issue 18: a change costs
/// its key bytes plus one to four bytes, not a 32-byte slot and a heap
/// allocation for a copy of the key): per change, a LEB128 varint of
/// `key length * 2 + kind` (0 put, 1 delete), then the key bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes(Vec<u8>);

impl Changes {
    /// Room for changes of `key_bytes` key bytes in all, `n` changes.
    pub(crate) fn with_capacity(n: usize, key_bytes: usize) -> Changes {
        Changes(Vec::with_capacity(
            key_bytes.saturating_add(n.saturating_mul(2)),
        ))
    }

    /// Appends a change of `key`.
    pub(crate) fn push(&mut self, key: &[u8], kind: ChangeKind) {
        let tag = match kind {
            ChangeKind::Put => 0,
            ChangeKind::Delete => 1,
        };
        let mut head = (key.len() as u64).saturating_mul(2) | tag;
        loop {
            // Seven bits a byte, the high bit set on all but the last.
            let low = (head & 0x7f) as u8;
            head >>= 7;
            if head == 0 {
                self.0.push(low);
                break;
            }
            self.0.push(low | 0x80);
        }
        self.0.extend_from_slice(key);
    }

    /// Number of changes. O(changes).
    pub(crate) fn len(&self) -> usize {
        self.iter().count()
    }

    /// Gives back spare capacity once the revision is complete.
    pub(crate) fn shrink_to_fit(&mut self) {
        self.0.shrink_to_fit();
    }

    /// The changes in sub-revision order.
    pub(crate) fn iter(&self) -> ChangesIter<'_> {
        ChangesIter(&self.0)
    }
}

/// The changes of a [`Changes`], each its key and kind.
#[derive(Clone)]
pub(crate) struct ChangesIter<'a>(&'a [u8]);

impl<'a> Iterator for ChangesIter<'a> {
    type Item = (&'a [u8], ChangeKind);

    fn next(&mut self) -> Option<Self::Item> {
        let mut head: u64 = 0;
        let mut shift = 0;
        loop {
            let (&b, rest) = self.0.split_first()?;
            self.0 = rest;
            head |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        let kind = if head & 1 == 0 {
            ChangeKind::Put
        } else {
            ChangeKind::Delete
        };
        // Only `push` writes the buffer: the length fits.
        let len = usize::try_from(head >> 1).unwrap_or(usize::MAX);
        let (key, rest) = self.0.split_at_checked(len)?;
        self.0 = rest;
        Some((key, kind))
    }
}

impl<'a> IntoIterator for &'a Changes {
    type Item = (&'a [u8], ChangeKind);
    type IntoIter = ChangesIter<'a>;

    fn into_iter(self) -> ChangesIter<'a> {
        self.iter()
    }
}

/// Written as serde writes a `[(Vec<u8>, ChangeKind)]`: a sequence of
/// (byte string, kind), the same postcard bytes as before the packing.
impl serde::Serialize for Changes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct ChangeRef<'a>(
            #[serde(serialize_with = "crate::bytes::serialize")] &'a [u8],
            ChangeKind,
        );
        use serde::ser::SerializeSeq;
        // The length first (postcard needs it): one pass to count.
        let mut seq = s.serialize_seq(Some(self.len()))?;
        for (k, kind) in self {
            seq.serialize_element(&ChangeRef(k, kind))?;
        }
        seq.end()
    }
}

/// Past versions and the revision log.
///
/// Invariants (kept by the write path and compaction, checked on restore):
/// - `versions[k]` is non-empty, ascending by `mod_revision` (several
///   entries may share one, see [`Record`]), and no entry is newer than
///   `k`'s live version in the current map;
/// - a tombstone ([`Entry::is_tombstone`]) is followed by nothing or by a
///   version of a re-created key; a key not live has a tombstone last;
/// - `log` is ascending by revision, one record per revision from the first
///   kept one to the current revision;
/// - with `prune_to` set, versions and records below it may remain that no
///   read can see any more (freed in chunks, see [`super::compact`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Past {
    /// Per key, its superseded versions and tombstones, oldest first.
    pub(crate) versions: BTreeMap<Vec<u8>, VecDeque<Entry>>,
    /// One record per revision since the compact revision, oldest first.
    pub(crate) log: RecordLog,
    /// What [`MvccStore::size_bytes`](crate::MvccStore::size_bytes) counts
    /// for all of the above.
    pub(crate) size_bytes: usize,
    /// The revision an accepted compaction is still pruning to (see
    /// [`super::compact`]); `None` once its history is freed.
    pub(crate) prune_to: Option<i64>,
}

impl Entry {
    /// The marker of a deletion at `revision`.
    pub(crate) fn tombstone(revision: i64) -> Entry {
        Entry {
            value: Vec::new(),
            create_revision: 0,
            mod_revision: revision,
            version: 0,
        }
    }

    /// Whether this marks a deletion (a live version has version `>= 1`).
    pub(crate) fn is_tombstone(&self) -> bool {
        self.version == 0
    }
}

/// What [`Past::size_bytes`] counts for one past version.
pub(crate) fn version_size(e: &Entry) -> usize {
    e.value.len().saturating_add(HISTORY_VERSION_OVERHEAD_BYTES)
}

/// What [`Past::size_bytes`] counts for a key's version list.
pub(crate) fn key_size(key: &[u8]) -> usize {
    key.len().saturating_add(HISTORY_KEY_OVERHEAD_BYTES)
}

/// What [`Past::size_bytes`] counts for one logged change.
pub(crate) fn change_size(key: &[u8]) -> usize {
    key.len().saturating_add(LOG_CHANGE_OVERHEAD_BYTES)
}

impl Past {
    /// Appends `e` to `key`'s past versions.
    pub(crate) fn push_version(&mut self, key: &[u8], e: Entry) {
        self.size_bytes = self.size_bytes.saturating_add(version_size(&e));
        match self.versions.get_mut(key) {
            Some(list) => list.push_back(e),
            None => {
                self.size_bytes = self.size_bytes.saturating_add(key_size(key));
                self.versions.insert(key.to_vec(), VecDeque::from([e]));
            }
        }
    }

    /// Appends a change of `key` at `revision` to the log.
    pub(crate) fn log_change(&mut self, key: &[u8], kind: ChangeKind, revision: i64) {
        let fresh = self.log.back().is_none_or(|r| r.revision != revision);
        if fresh {
            // Give back what a finished multi-key revision over-allocated.
            if let Some(done) = self.log.back_mut() {
                done.changes.shrink_to_fit();
            }
            self.size_bytes = self.size_bytes.saturating_add(LOG_RECORD_OVERHEAD_BYTES);
            // Most revisions change one key: room for exactly that.
            self.log.push_back(Record {
                revision,
                changes: Changes::with_capacity(1, key.len()),
            });
        }
        if let Some(record) = self.log.back_mut() {
            self.size_bytes = self.size_bytes.saturating_add(change_size(key));
            record.changes.push(key, kind);
        }
    }

    /// The newest version of `key` with `mod_revision <= revision` that is
    /// kept, tombstones included; `live` is the key's entry in the current map.
    pub(crate) fn version_at<'a>(
        &'a self,
        live: Option<&'a Entry>,
        key: &[u8],
        revision: i64,
    ) -> Option<&'a Entry> {
        if let Some(e) = live.filter(|e| e.mod_revision <= revision) {
            return Some(e);
        }
        let list = self.versions.get(key)?;
        let newer = list.partition_point(|e| e.mod_revision <= revision);
        newer.checked_sub(1).and_then(|i| list.get(i))
    }

    /// Like [`version_at`](Self::version_at), but `None` for a tombstone:
    /// the version a read at `revision` shows, if the key existed then.
    pub(crate) fn value_at<'a>(
        &'a self,
        live: Option<&'a Entry>,
        key: &[u8],
        revision: i64,
    ) -> Option<&'a Entry> {
        self.version_at(live, key, revision)
            .filter(|e| !e.is_tombstone())
    }

    /// The version `key` was given by a put at `revision`, if still kept.
    /// Not simply [`version_at`](Self::version_at): the same transaction may
    /// have deleted the key after putting it.
    pub(crate) fn put_at<'a>(
        &'a self,
        live: Option<&'a Entry>,
        key: &[u8],
        revision: i64,
    ) -> Option<&'a Entry> {
        if let Some(e) = live.filter(|e| e.mod_revision == revision) {
            return Some(e);
        }
        let list = self.versions.get(key)?;
        let first = list.partition_point(|e| e.mod_revision < revision);
        list.range(first..)
            .take_while(|e| e.mod_revision == revision)
            .find(|e| !e.is_tombstone())
    }

    /// The index in `log` of the first record at or after `revision`.
    pub(crate) fn log_position(&self, revision: i64) -> usize {
        self.log.partition_point(|r| r.revision < revision)
    }
}

impl History for Past {
    fn record_put(&mut self, key: &[u8], old: Option<Entry>, rev: i64) {
        self.log_change(key, ChangeKind::Put, rev);
        if let Some(old) = old {
            self.push_version(key, old);
        }
    }

    fn record_delete(&mut self, key: &[u8], old: Entry, rev: i64) {
        self.log_change(key, ChangeKind::Delete, rev);
        self.push_version(key, old);
        self.push_version(key, Entry::tombstone(rev));
    }

    fn keeps_versions(&self) -> bool {
        true
    }

    /// The history knows no leases ([`super::lease::LeaseHook`] does).
    fn lease_of(&self, _key: &[u8]) -> i64 {
        0
    }

    /// etcd `checkRequestRange` against the transaction's read view: any
    /// revision from the compact revision to the start is served from
    /// history, even after a write of the same branch.
    fn check_txn_range(
        &self,
        requested: i64,
        start: i64,
        _wrote: bool,
        compact_revision: i64,
    ) -> Result<(), RequestError> {
        if requested <= 0 {
            return Ok(());
        }
        if requested > start {
            return Err(RequestError::FutureRevision {
                requested,
                current: start,
            });
        }
        if requested < compact_revision {
            return Err(RequestError::Compacted {
                requested,
                oldest: compact_revision,
            });
        }
        Ok(())
    }

    fn txn_range(
        &self,
        map: &BTreeMap<Vec<u8>, Entry>,
        r: &RangeRequest,
        start: i64,
    ) -> RangeResponse {
        if r.revision <= 0 {
            return range::read(map, r, start);
        }
        read_past(map, self, r, r.revision, start)
    }
}

/// `req` as the store was at `revision` (checked by the caller), with
/// `header_revision` in the header.
pub(crate) fn read_past(
    map: &BTreeMap<Vec<u8>, Entry>,
    past: &Past,
    req: &RangeRequest,
    revision: i64,
    header_revision: i64,
) -> RangeResponse {
    let keys = KeyRange::new(&req.key, &req.range_end);
    let found = merged_keys(keys, map, &past.versions)
        .filter_map(|(key, live)| past.value_at(live, key, revision).map(|e| (key, e)));
    range::read_from(found, req, header_revision)
}

/// Every key in `keys` that is live in `map` or has past versions, once
/// each, in key order, with its live entry if any.
pub(crate) fn merged_keys<'m>(
    keys: KeyRange<'m>,
    map: &'m BTreeMap<Vec<u8>, Entry>,
    versions: &'m BTreeMap<Vec<u8>, VecDeque<Entry>>,
) -> impl Iterator<Item = (&'m Vec<u8>, Option<&'m Entry>)> + 'm {
    MergedKeys {
        live: keys.iter(map).peekable(),
        past: keys.iter(versions).map(|(k, _)| k).peekable(),
    }
}

struct MergedKeys<L: Iterator, P: Iterator> {
    live: Peekable<L>,
    past: Peekable<P>,
}

impl<'m, L, P> Iterator for MergedKeys<L, P>
where
    L: Iterator<Item = (&'m Vec<u8>, &'m Entry)>,
    P: Iterator<Item = &'m Vec<u8>>,
{
    type Item = (&'m Vec<u8>, Option<&'m Entry>);

    fn next(&mut self) -> Option<Self::Item> {
        let order = match (self.live.peek(), self.past.peek()) {
            (None, None) => return None,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((l, _)), Some(p)) => (*l).cmp(*p),
        };
        match order {
            Ordering::Less => self.live.next().map(|(k, e)| (k, Some(e))),
            Ordering::Greater => self.past.next().map(|k| (k, None)),
            Ordering::Equal => {
                self.past.next();
                self.live.next().map(|(k, e)| (k, Some(e)))
            }
        }
    }
}
