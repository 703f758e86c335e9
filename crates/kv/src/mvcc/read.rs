//! Reads of the history: past ranges, watch changes and `HashKV`.

use super::change::{Change, ChangeBatch, ChangeKind, HashKv};
use super::compact::kept_from;
use super::history::{merged_keys, read_past, Record};
use super::MvccStore;
use crate::checksum::CRC32C;
use crate::error::RequestError;
use crate::keys::KeyRange;
use crate::limits::MAX_CHANGES_SCANNED_REVISIONS;
use crate::range;
use crate::request::RangeRequest;
use crate::response::{KeyValue, RangeResponse};
use alloc::vec::Vec;

impl MvccStore {
    /// `req` at `revision` (checked by the caller), `header_revision` in the
    /// header. The current revision reads the map directly.
    pub(crate) fn read_at(
        &self,
        req: &RangeRequest,
        revision: i64,
        header_revision: i64,
    ) -> RangeResponse {
        if revision >= self.revision() {
            return range::read(&self.current.map, req, header_revision);
        }
        read_past(
            &self.current.map,
            &self.past,
            req,
            revision,
            header_revision,
        )
    }

    /// Watch catch-up: the changes with revision `>= start_revision` whose
    /// key is in `[key, range_end)` (etcd's range rules: an empty
    /// `range_end` is `key` alone, `[0]` every key from `key` on), in
    /// revision order and sub-revision order within a revision, each with
    /// its key's previous version if still kept.
    ///
    /// Stops once it holds at least `max_events` changes (at least one), but
    /// never inside a revision, so a transaction's changes stay together;
    /// and after scanning `max(max_events, MAX_CHANGES_SCANNED_REVISIONS)`
    /// revisions ([`MAX_CHANGES_SCANNED_REVISIONS`]), so one call does
    /// bounded work even when few changes match. Continue from
    /// `next_revision` until it exceeds [`revision`](Self::revision).
    ///
    /// `start_revision <= 0` means `revision() + 1` (only future changes);
    /// a start below [`compact_revision`](Self::compact_revision) is
    /// [`RequestError::Compacted`]; a start after the current revision gives
    /// an empty batch with `next_revision = start_revision`.
    pub fn changes(
        &self,
        start_revision: i64,
        key: &[u8],
        range_end: &[u8],
        max_events: usize,
    ) -> Result<ChangeBatch, RequestError> {
        let current = self.revision();
        let start = if start_revision <= 0 {
            current.saturating_add(1)
        } else {
            start_revision
        };
        let oldest = self.compact_revision();
        if start < oldest {
            return Err(RequestError::Compacted {
                requested: start,
                oldest,
            });
        }
        let mut batch = ChangeBatch {
            changes: Vec::new(),
            next_revision: start,
        };
        if start > current {
            return Ok(batch);
        }
        let keys = KeyRange::new(key, range_end);
        let first = self.past.log_position(start);
        let max_events = max_events.max(1);
        let max_scanned = max_events.max(MAX_CHANGES_SCANNED_REVISIONS);
        batch.next_revision = current.saturating_add(1);
        for (scanned, record) in self.past.log.iter_from(first).enumerate() {
            if batch.changes.len() >= max_events || scanned >= max_scanned {
                batch.next_revision = record.revision;
                break;
            }
            self.push_changes(record, keys, &mut batch.changes);
        }
        Ok(batch)
    }

    /// Every change of `revision`, in sub-revision order, for emitting live
    /// watch events right after [`apply`](Self::apply). Empty if nothing
    /// changed at `revision` or it is no longer kept.
    pub fn changes_at(&self, revision: i64) -> Vec<Change> {
        let mut changes = Vec::new();
        let at = self.past.log_position(revision);
        if let Some(record) = self.past.log.get(at).filter(|r| r.revision == revision) {
            self.push_changes(record, KeyRange::From(&[]), &mut changes);
        }
        changes
    }

    /// Appends the changes of `record` whose key is in `keys`.
    fn push_changes(&self, record: &Record, keys: KeyRange<'_>, out: &mut Vec<Change>) {
        let revision = record.revision;
        for (key, kind) in &record.changes {
            if keys.contains(key) {
                out.push(self.change(revision, key, kind));
            }
        }
    }

    /// The watch event for `key` changing at `revision`. Its `prev_kv` is
    /// what etcd's watch server reports: the key at `revision - 1`, none for
    /// a creation (even when the same transaction deleted an older version
    /// first) and none once `revision - 1` is compacted.
    fn change(&self, revision: i64, key: &[u8], kind: ChangeKind) -> Change {
        let live = self.current.map.get(key);
        let deleted = KeyValue {
            key: key.to_vec(),
            mod_revision: revision,
            ..KeyValue::default()
        };
        let kv = match kind {
            ChangeKind::Delete => deleted,
            // The write path logs a put only with the version it made.
            ChangeKind::Put => self
                .past
                .put_at(live, key, revision)
                .map_or(deleted, |e| e.to_key_value(key, true)),
        };
        let created = kind == ChangeKind::Put && kv.create_revision == revision;
        let before = revision.saturating_sub(1);
        let prev_kv = if created || before < self.compact_revision() {
            None
        } else {
            self.past
                .value_at(live, key, before)
                .map(|e| e.to_key_value(key, true))
        };
        let lease = match kind {
            ChangeKind::Put => self.key_lease(key, kv.mod_revision),
            ChangeKind::Delete => 0,
        };
        Change {
            kind,
            kv,
            prev_kv,
            lease,
        }
    }

    /// etcd `HashKV`: a CRC-32C of every kept version (tombstones included)
    /// with `mod_revision <= revision` (`<= 0`: the current revision), by
    /// key, then revision. Members that applied the same log agree on it,
    /// whether they compacted or were restored from a snapshot, since
    /// compaction keeps exactly the newest version at or below the compact
    /// revision. Errors as [`range`](Self::range). O(data + history).
    ///
    /// Each version enters as its length-prefixed key, mod revision, create
    /// revision, version (0 for a tombstone) and length-prefixed value
    /// (lengths as `u64`, numbers as `i64`, little-endian).
    pub fn hash_kv(&self, revision: i64) -> Result<HashKv, RequestError> {
        let at = self.readable_revision(revision)?;
        let mut digest = CRC32C.digest();
        let all = KeyRange::From(&[]);
        let compacted = self.compact_revision();
        for (key, live) in merged_keys(all, &self.current.map, &self.past.versions) {
            // Versions a pending compaction has not freed yet are gone all
            // the same (`super::compact`).
            let history = self.past.versions.get(key).into_iter().flat_map(|list| {
                let first = kept_from(list, live.map(|e| e.mod_revision), compacted);
                list.range(first..)
            });
            for e in history.chain(live).filter(|e| e.mod_revision <= at) {
                digest.update(&(key.len() as u64).to_le_bytes());
                digest.update(key);
                digest.update(&e.mod_revision.to_le_bytes());
                digest.update(&e.create_revision.to_le_bytes());
                digest.update(&e.version.to_le_bytes());
                digest.update(&(e.value.len() as u64).to_le_bytes());
                digest.update(&e.value);
            }
        }
        Ok(HashKv {
            hash: digest.finalize(),
            compact_revision: self.compact_revision(),
            revision: self.revision(),
        })
    }
}
