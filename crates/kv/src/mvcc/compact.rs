//! Compaction: accepted at once, its memory freed in bounded chunks.
//!
//! `Compact(r)` sets the compact revision when it is applied, so from that
//! entry on every read, watch and `HashKV` below `r` is refused, as in etcd.
//! Freeing the history it covers ("pruning") is O(history removed), which
//! for a large history is too long for one apply (0.26 s for 500,000
//! revisions). So the compaction itself prunes at most
//! [`COMPACTION_CHANGES_PER_ENTRY`] logged changes, and every later applied
//! entry ([`MvccStore::apply`], [`MvccStore::mark_applied`]) prunes as many
//! more, until the log starts at `r`. Chunks are counted in log entries,
//! never in time, so every replica holds the same history at the same
//! applied index.
//!
//! Versions not yet pruned are invisible: reads at `>= r` pick the newest
//! version at or below their revision, watches start at `>= r`, and
//! [`MvccStore::hash_kv`] and snapshots skip what pruning will drop
//! ([`kept_from`]). Only [`MvccStore::size_bytes`] counts them until they
//! are freed (so a store restored from a snapshot, which holds no such
//! versions, reports less until the original finished pruning).

use super::history::{change_size, key_size, version_size, Past};
use super::MvccStore;
use crate::error::RequestError;
use crate::limits::LOG_RECORD_OVERHEAD_BYTES;
use crate::request::CompactionRequest;
use crate::response::{CompactionResponse, ResponseHeader};
use crate::store::Entry;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

/// Most logged changes whose keys one applied entry prunes (a log record
/// is pruned whole, so one entry may go past it by one record's changes).
/// About 0.5 µs each: ~0.13 ms per entry, and 500,000 revisions are freed
/// within 2,000 entries. At least 2, so pruning outpaces any write rate
/// (an entry adds at most one revision).
pub const COMPACTION_CHANGES_PER_ENTRY: usize = 256;

const _: () = assert!(COMPACTION_CHANGES_PER_ENTRY >= 2);

impl MvccStore {
    /// etcd `Compact`: accepted if `compact_revision() < revision <=
    /// revision()`. From now on reads, watches and hashes below `revision`
    /// are refused; the history they would need is freed in chunks (module
    /// doc): every version superseded at or before `revision`, every
    /// tombstone at or before it that is its key's newest version there, and
    /// the log records below `revision` (the record of `revision` itself
    /// stays, so a watch from the compact revision replays it).
    pub(crate) fn compact(
        &mut self,
        r: &CompactionRequest,
    ) -> Result<CompactionResponse, RequestError> {
        self.current.check_compact(r)?;
        self.current.compact_revision = r.revision;
        self.past.prune_to = Some(r.revision);
        self.prune_step();
        Ok(CompactionResponse {
            header: ResponseHeader {
                revision: self.revision(),
            },
        })
    }

    /// Whether an accepted compaction still has history to free.
    pub fn is_pruning(&self) -> bool {
        self.past.prune_to.is_some()
    }

    /// Frees one chunk of the pending compaction's history, if any: the keys
    /// of the oldest log records, up to [`COMPACTION_CHANGES_PER_ENTRY`]
    /// changes. Called once per applied entry.
    pub(crate) fn prune_step(&mut self) {
        let Some(target) = self.past.prune_to else {
            return;
        };
        let map = &self.current.map;
        let Past {
            versions,
            log,
            size_bytes,
            prune_to,
        } = &mut self.past;
        let mut budget = COMPACTION_CHANGES_PER_ENTRY;
        loop {
            let Some(record) = log.front() else {
                *prune_to = None;
                break;
            };
            if record.revision > target {
                *prune_to = None;
                break;
            }
            if budget == 0 {
                break;
            }
            let mut changes = 0;
            for (key, _) in &record.changes {
                prune(versions, size_bytes, map, key, target);
                changes += 1;
            }
            budget = budget.saturating_sub(changes.max(1));
            if record.revision == target {
                *prune_to = None;
                break;
            }
            if let Some(record) = log.pop_front() {
                let logged: usize = record.changes.iter().map(|(k, _)| change_size(k)).sum();
                *size_bytes = size_bytes
                    .saturating_sub(logged)
                    .saturating_sub(LOG_RECORD_OVERHEAD_BYTES);
            }
        }
        if prune_to.is_none() {
            log.release_spare();
        }
    }
}

/// How many of the oldest entries of a key's past versions `list` a
/// compaction to `target` drops: those superseded at or before `target`
/// (by the next version, or by the live version at `live_revision`), then
/// the remaining oldest if it is a tombstone at or before `target`. A read
/// at `target` or later can see none of them.
pub(crate) fn kept_from(list: &VecDeque<Entry>, live_revision: Option<i64>, target: i64) -> usize {
    let mut first = 0;
    while first < list.len() {
        let successor = list
            .get(first + 1)
            .map(|e| e.mod_revision)
            .or(live_revision);
        if successor.is_none_or(|s| s > target) {
            break;
        }
        first += 1;
    }
    let dead = list
        .get(first)
        .is_some_and(|e| e.is_tombstone() && e.mod_revision <= target);
    first + usize::from(dead)
}

/// Drops `key`'s past versions that a read at `target` or later can no
/// longer see ([`kept_from`]).
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
    let gone = kept_from(list, live_revision, target);
    for e in list.drain(..gone) {
        *size_bytes = size_bytes.saturating_sub(version_size(&e));
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
