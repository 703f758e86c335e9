//! Compaction in O(history removed): the revision log says which keys have
//! versions to drop, so the rest of the store is never visited.

use super::history::{change_size, key_size, version_size, Past};
use super::MvccStore;
use crate::error::RequestError;
use crate::limits::LOG_RECORD_OVERHEAD_BYTES;
use crate::request::CompactionRequest;
use crate::response::{CompactionResponse, ResponseHeader};
use crate::store::Entry;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

impl MvccStore {
    /// etcd `Compact`: accepted if `compact_revision() < revision <=
    /// revision()`. Drops every version superseded at or before `revision`
    /// and every tombstone at or before it that is its key's newest version
    /// there, so each key keeps its newest version at or below `revision`
    /// (reads at `revision` still work). Drops the log records below
    /// `revision`; the record of `revision` itself stays, so a watch from
    /// the compact revision replays it.
    ///
    /// Only keys named in the dropped records (and in the record of
    /// `revision`) are visited: O(history removed), never O(store).
    pub(crate) fn compact(
        &mut self,
        r: &CompactionRequest,
    ) -> Result<CompactionResponse, RequestError> {
        self.current.check_compact(r)?;
        let target = r.revision;
        let map = &self.current.map;
        let Past {
            versions,
            log,
            size_bytes,
        } = &mut self.past;
        while let Some(record) = log.front() {
            if record.revision > target {
                break;
            }
            for (key, _) in &record.changes {
                prune(versions, size_bytes, map, key, target);
            }
            if record.revision == target {
                break;
            }
            if let Some(record) = log.pop_front() {
                let logged: usize = record.changes.iter().map(|(k, _)| change_size(k)).sum();
                *size_bytes = size_bytes
                    .saturating_sub(logged)
                    .saturating_sub(LOG_RECORD_OVERHEAD_BYTES);
            }
        }
        release_spare(log);
        self.current.compact_revision = target;
        Ok(CompactionResponse {
            header: ResponseHeader {
                revision: self.revision(),
            },
        })
    }
}

/// Drops `key`'s past versions that a read at `target` or later can no
/// longer see: those superseded at or before `target`, then the remaining
/// oldest if it is a tombstone at or before `target`.
fn prune(
    versions: &mut BTreeMap<Vec<u8>, VecDeque<Entry>>,
    size_bytes: &mut usize,
    map: &BTreeMap<Vec<u8>, Entry>,
    key: &[u8],
    target: i64,
) {
    let Some(list) = versions.get_mut(key) else {
        return;
    };
    let live_revision = map.get(key).map(|e| e.mod_revision);
    loop {
        let successor = list.get(1).map(|e| e.mod_revision).or(live_revision);
        if successor.is_none_or(|s| s > target) {
            break;
        }
        let Some(gone) = list.pop_front() else { break };
        *size_bytes = size_bytes.saturating_sub(version_size(&gone));
    }
    let dead = list
        .front()
        .is_some_and(|e| e.is_tombstone() && e.mod_revision <= target);
    if dead {
        if let Some(gone) = list.pop_front() {
            *size_bytes = size_bytes.saturating_sub(version_size(&gone));
        }
    }
    if list.is_empty() {
        versions.remove(key);
        *size_bytes = size_bytes.saturating_sub(key_size(key));
    } else {
        release_spare(list);
    }
}

/// Gives memory back once a list uses under a quarter of its capacity
/// (keeping room to grow twice its length): compaction frees the history,
/// not just its contents. The copy is O(length), at most what was removed.
fn release_spare<T>(list: &mut VecDeque<T>) {
    if list.len() < list.capacity() / SPARE_CAPACITY_FACTOR {
        list.shrink_to(list.len().saturating_mul(2));
    }
}

/// How many times its length a list may hold in capacity before
/// compaction shrinks it.
const SPARE_CAPACITY_FACTOR: usize = 4;
