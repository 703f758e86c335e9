//! MVCC snapshots: the state at the compact revision plus every change
//! since, replayed through the write path on restore, so a restored store
//! equals the original by construction (same versions, log and sizes).
//!
//! Framing as [`KvStore`] snapshots (magic, [`FORMAT_VERSION`](crate::FORMAT_VERSION),
//! postcard body, CRC-32C) with the magic [`MVCC_SNAPSHOT_MAGIC`]. The body:
//! revision, compact revision, applied index; `base`, every key live at the
//! base revision (`max(compact revision, 1)`) in key order; `at_base`, the
//! log record of the base revision (kept for watches from the compact
//! revision; empty if none); `records`, one per later revision in order,
//! each change a key with its new value (put) or nothing (delete).

use super::change::ChangeKind;
use super::history::{change_size, key_size, version_size, Changes, Past, Record};
use super::lease::{Lease, Leases};
use super::MvccStore;
use crate::bytes::ByteBuf;
use crate::error::SnapshotError;
use crate::limits::LOG_RECORD_OVERHEAD_BYTES;
use crate::limits::{INITIAL_REVISION, MAX_KEY_BYTES, MAX_LEASE_TTL_SECS, MAX_VALUE_BYTES};
use crate::snapshot::{
    build_map, decode_framed, decode_framed_prefix, SnapKeyValue, SNAPSHOT_MAGIC,
};
use crate::store::{entry_size, Entry, KvStore};
use alloc::collections::{BTreeSet, VecDeque};
use alloc::vec::Vec;
use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};

/// The first bytes of an [`MvccStore`] snapshot written before leases
/// existed (still restored; [`KvStore`] snapshots start with
/// [`SNAPSHOT_MAGIC`]).
pub const MVCC_SNAPSHOT_MAGIC: [u8; 4] = *b"MRMV";

/// The first bytes of every [`MvccStore`] snapshot written now: the
/// [`MVCC_SNAPSHOT_MAGIC`] body followed by the leases, each its ID, TTL
/// and attached keys in key order, in ID order.
pub const MVCC_LEASE_SNAPSHOT_MAGIC: [u8; 4] = *b"MRML";

/// The leases as written: each its ID, TTL and attached keys, in ID order.
pub(super) struct LeasesRef<'a>(pub(super) &'a MvccStore);

/// One lease as written; field for field the layout of [`SnapLease`].
#[derive(Serialize)]
struct LeaseRef<'a> {
    id: i64,
    ttl: i64,
    keys: &'a BTreeSet<Vec<u8>>,
}

impl Serialize for LeasesRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.leases.by_id.iter().map(|(id, l)| LeaseRef {
            id: *id,
            ttl: l.ttl,
            keys: &l.keys,
        }))
    }
}

/// The body with leases as read.
#[derive(Deserialize)]
pub(super) struct LeaseBody {
    pub(super) body: Body,
    pub(super) leases: Vec<SnapLease>,
}

#[derive(Deserialize)]
pub(super) struct SnapLease {
    pub(super) id: i64,
    pub(super) ttl: i64,
    pub(super) keys: Vec<ByteBuf>,
}

/// One record as written.
#[derive(Serialize)]
pub(super) struct RecordRef<'a> {
    pub(super) revision: i64,
    pub(super) changes: ChangesRef<'a>,
}

/// A record's changes as written, each put with the value it wrote.
pub(super) struct ChangesRef<'a>(pub(super) &'a MvccStore, pub(super) &'a Record);

/// Field for field the serde layout of [`SnapChange`].
#[derive(Serialize)]
struct ChangeRef<'a> {
    #[serde(serialize_with = "crate::bytes::serialize")]
    key: &'a [u8],
    op: OpRef<'a>,
}

/// Variant for variant the serde layout of [`SnapOp`].
#[derive(Serialize)]
enum OpRef<'a> {
    #[serde(serialize_with = "crate::bytes::serialize")]
    Put(&'a [u8]),
    Delete,
}

impl Serialize for ChangesRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (store, record) = (self.0, self.1);
        let mut seq = s.serialize_seq(Some(record.changes.len()))?;
        for (key, kind) in &record.changes {
            let op = match kind {
                ChangeKind::Delete => OpRef::Delete,
                ChangeKind::Put => {
                    let live = store.current.map.get(key);
                    // The write path logs a put with the version it made.
                    let value = store
                        .past
                        .put_at(live, key, record.revision)
                        .map_or(&[][..], |e| &e.value[..]);
                    OpRef::Put(value)
                }
            };
            seq.serialize_element(&ChangeRef { key, op })?;
        }
        seq.end()
    }
}

/// The body as read.
#[derive(Deserialize)]
pub(super) struct Body {
    pub(super) revision: i64,
    pub(super) compact_revision: i64,
    pub(super) applied_index: u64,
    pub(super) base: Vec<SnapKeyValue>,
    pub(super) at_base: Vec<(ByteBuf, ChangeKind)>,
    pub(super) records: Vec<SnapRecord>,
}

#[derive(Deserialize)]
pub(super) struct SnapRecord {
    pub(super) revision: i64,
    pub(super) changes: Vec<SnapChange>,
}

#[derive(Deserialize)]
pub(super) struct SnapChange {
    pub(super) key: ByteBuf,
    pub(super) op: SnapOp,
}

#[derive(Deserialize)]
pub(super) enum SnapOp {
    Put(ByteBuf),
    Delete,
}

/// The revision whose state a snapshot carries whole.
pub(super) fn base_revision(compact_revision: i64) -> i64 {
    compact_revision.max(INITIAL_REVISION)
}

impl MvccStore {
    /// Serializes the whole store, history since the compaction included,
    /// so a restored member serves the same past reads, hashes and watch
    /// replays. Deterministic: equal stores give equal bytes. O(data +
    /// history).
    pub fn snapshot(&self) -> Vec<u8> {
        // One code path for both: the stream, in a single pass.
        let mut stream = self.snapshot_stream();
        let mut out = Vec::with_capacity(self.size_bytes());
        while !stream
            .step(self, usize::MAX, &mut out)
            .expect("a store does not change while it is borrowed")
        {}
        out
    }

    /// Rebuilds a store from [`snapshot`](Self::snapshot) bytes; the result
    /// equals the original. Also accepts a [`KvStore`] snapshot: its data
    /// becomes the current state, with no history and the compact revision
    /// at its revision. Damaged or foreign bytes are refused, never trusted.
    pub fn restore(bytes: &[u8]) -> Result<MvccStore, SnapshotError> {
        if bytes.starts_with(&SNAPSHOT_MAGIC) {
            return KvStore::restore(bytes).map(from_kv_store);
        }
        if bytes.starts_with(&MVCC_SNAPSHOT_MAGIC) {
            let body: Body = decode_framed(bytes, MVCC_SNAPSHOT_MAGIC)?;
            return from_body(body).ok_or(SnapshotError::Inconsistent);
        }
        let body: LeaseBody = decode_framed(bytes, MVCC_LEASE_SNAPSHOT_MAGIC)?;
        from_lease_body(body).ok_or(SnapshotError::Inconsistent)
    }

    /// Like [`restore`](Self::restore), for a snapshot followed by other
    /// bytes (a backup file's padding): the store and the snapshot's length.
    pub fn restore_prefix(bytes: &[u8]) -> Result<(MvccStore, usize), SnapshotError> {
        if bytes.starts_with(&SNAPSHOT_MAGIC) {
            return KvStore::restore_prefix(bytes).map(|(kv, len)| (from_kv_store(kv), len));
        }
        if bytes.starts_with(&MVCC_SNAPSHOT_MAGIC) {
            let (body, len): (Body, usize) = decode_framed_prefix(bytes, MVCC_SNAPSHOT_MAGIC)?;
            let store = from_body(body).ok_or(SnapshotError::Inconsistent)?;
            return Ok((store, len));
        }
        let (body, len): (LeaseBody, usize) =
            decode_framed_prefix(bytes, MVCC_LEASE_SNAPSHOT_MAGIC)?;
        let store = from_lease_body(body).ok_or(SnapshotError::Inconsistent)?;
        Ok((store, len))
    }

    /// Starts the applied index over at `index` (see
    /// [`KvStore::rebase_applied_index`]). Data and revisions are unchanged.
    pub fn rebase_applied_index(&mut self, index: u64) {
        self.current.rebase_applied_index(index);
    }
}

/// A store of `kv`'s data whose history starts at its revision.
fn from_kv_store(mut kv: KvStore) -> MvccStore {
    kv.compact_revision = kv.revision;
    MvccStore {
        current: kv,
        past: Past::default(),
        leases: Leases::default(),
    }
}

/// [`from_body`], then the leases, each key attached at most once and live.
pub(super) fn from_lease_body(body: LeaseBody) -> Option<MvccStore> {
    let mut store = from_body(body.body)?;
    for l in body.leases {
        if l.ttl > MAX_LEASE_TTL_SECS {
            return None;
        }
        let lease = Lease {
            ttl: l.ttl,
            keys: BTreeSet::new(),
        };
        if store.leases.by_id.insert(l.id, lease).is_some() {
            return None;
        }
        for ByteBuf(key) in l.keys {
            let fresh = !store.leases.attached.contains_key(&key);
            if !fresh || !store.current.map.contains_key(&key) {
                return None;
            }
            store.leases.attached.insert(key.clone(), l.id);
            store.leases.by_id.get_mut(&l.id)?.keys.insert(key);
        }
    }
    Some(store)
}

/// Rebuilds the store: the base state built in bulk, then the records
/// replayed in order with the write path's effects (see [`replay_put`] and
/// [`replay_delete`]), checking every invariant that path relies on.
pub(super) fn from_body(body: Body) -> Option<MvccStore> {
    let valid_header =
        body.revision >= INITIAL_REVISION && (0..=body.revision).contains(&body.compact_revision);
    if !valid_header {
        return None;
    }
    let base = base_revision(body.compact_revision);
    let mut store = MvccStore::new();
    let MvccStore { current, past, .. } = &mut store;
    current.revision = base;
    current.compact_revision = body.compact_revision;
    current.applied_index = body.applied_index;
    current.map = build_map(body.base, base, &mut current.size_bytes)?;
    if !body.at_base.is_empty() && body.compact_revision == 0 {
        return None;
    }
    for (ByteBuf(key), kind) in &body.at_base {
        // Its puts are versions of the base state (unless the same revision
        // deleted them again); nothing else can be checked without history.
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return None;
        }
        past.log_change(key, *kind, base);
    }
    replay(current, past, body.records)?;
    (current.revision == body.revision).then_some(store)
}

/// Replays `records` over `current` and `past`, each the next revision,
/// with the effects the write path (a [`KvStore`] with [`Past`] as history)
/// has for a plain put (no `prev_kv`, no `ignore_value`) and a delete of
/// one key, logging included.
///
/// In bulk (issue 18, "Restore time" in the crate README): the records
/// are logged in order, their changes sorted by key (stably, so each key's
/// changes stay in revision and sub-revision order), and then every key's
/// changes are run over its base version in one merge with the base map,
/// which gives the current map and the past versions in key order, each
/// built bottom-up, instead of one tree search per change. Keys and values
/// are moved in, never copied (except the key of a key both live and with
/// history).
pub(super) fn replay(
    current: &mut KvStore,
    past: &mut Past,
    records: Vec<SnapRecord>,
) -> Option<()> {
    let total = records.iter().map(|r| r.changes.len()).sum();
    let mut changes: Vec<Replayed> = Vec::with_capacity(total);
    for record in records {
        let next = current.revision.checked_add(1)?;
        if record.revision != next || record.changes.is_empty() {
            return None;
        }
        // The log record, made at its final size (the write path grows it
        // and shrinks it when the next revision starts: equal contents).
        let key_bytes = record.changes.iter().map(|c| c.key.0.len()).sum();
        let mut logged = Changes::with_capacity(record.changes.len(), key_bytes);
        past.size_bytes = past.size_bytes.saturating_add(LOG_RECORD_OVERHEAD_BYTES);
        for SnapChange {
            key: ByteBuf(key),
            op,
        } in record.changes
        {
            if key.is_empty() || key.len() > MAX_KEY_BYTES {
                return None;
            }
            past.size_bytes = past.size_bytes.saturating_add(change_size(&key));
            let value = match op {
                SnapOp::Put(ByteBuf(value)) => {
                    if value.len() > MAX_VALUE_BYTES {
                        return None;
                    }
                    logged.push(&key, ChangeKind::Put);
                    Some(value)
                }
                SnapOp::Delete => {
                    logged.push(&key, ChangeKind::Delete);
                    None
                }
            };
            changes.push(Replayed {
                prefix: 0,
                key,
                revision: next,
                value,
            });
        }
        past.log.push_back(Record {
            revision: next,
            changes: logged,
        });
        current.revision = next;
    }
    if changes.is_empty() {
        return Some(());
    }
    // Comparing keys means reading them where they lie on the heap, one
    // cache miss each; the bytes after the prefix every key shares, kept
    // inline, decide almost every comparison without that.
    let shared = changes.iter().fold(changes[0].key.len(), |shared, c| {
        let same = changes[0].key.iter().zip(&c.key).take(shared);
        same.take_while(|(a, b)| a == b).count()
    });
    for c in &mut changes {
        c.prefix = sort_prefix(&c.key, shared);
    }
    changes.sort_by(Replayed::order);

    let base = core::mem::take(&mut current.map);
    let mut live: Vec<(Vec<u8>, Entry)> = Vec::with_capacity(base.len());
    let mut versions: Vec<(Vec<u8>, VecDeque<Entry>)> = Vec::new();
    let mut base = base.into_iter().peekable();
    let mut changes = changes.into_iter().peekable();
    while let Some(first) = changes.next() {
        while let Some(kv) = base.next_if(|(k, _)| *k < first.key) {
            live.push(kv);
        }
        let mut version = base.next_if(|(k, _)| *k == first.key).map(|(_, e)| e);
        let mut list = VecDeque::new();
        let (key, prefix) = (first.key, first.prefix);
        replay_change(&mut version, &mut list, first.revision, first.value)?;
        while let Some(c) = changes.next_if(|c| c.prefix == prefix && c.key == key) {
            replay_change(&mut version, &mut list, c.revision, c.value)?;
        }
        match (version, list.is_empty()) {
            (Some(e), true) => live.push((key, e)),
            (Some(e), false) => {
                live.push((key.clone(), e));
                versions.push((key, list));
            }
            (None, false) => versions.push((key, list)),
            (None, true) => return None,
        }
    }
    live.extend(base);

    current.size_bytes = live.iter().fold(0usize, |sum, (k, e)| {
        sum.saturating_add(entry_size(k, &e.value))
    });
    for (key, list) in &versions {
        let listed = list
            .iter()
            .fold(key_size(key), |sum, e| sum.saturating_add(version_size(e)));
        past.size_bytes = past.size_bytes.saturating_add(listed);
    }
    // Both in key order without duplicates: built bottom-up.
    current.map = live.into_iter().collect();
    past.versions = versions.into_iter().collect();
    Some(())
}

/// One logged change being replayed: its key, revision, and the value a
/// put wrote (`None`: a delete).
struct Replayed {
    /// [`sort_prefix`] of the key.
    prefix: u128,
    key: Vec<u8>,
    revision: i64,
    value: Option<Vec<u8>>,
}

impl Replayed {
    /// Key order (the prefixes order keys as the keys do, see
    /// [`sort_prefix`]; equal prefixes need the keys).
    fn order(&self, other: &Replayed) -> core::cmp::Ordering {
        self.prefix
            .cmp(&other.prefix)
            .then_with(|| self.key.cmp(&other.key))
    }
}

/// The 16 bytes of `key` after its first `shared` (zero-padded), big
/// endian. For keys that all share their first `shared` bytes, a smaller
/// prefix means a smaller key: where two prefixes first differ, either
/// both keys have that byte, or the one whose padding shows there ended
/// before it and is the smaller. Equal prefixes say nothing.
fn sort_prefix(key: &[u8], shared: usize) -> u128 {
    let mut bytes = [0u8; 16];
    let rest = key.get(shared..).unwrap_or(&[]);
    let n = rest.len().min(bytes.len());
    bytes[..n].copy_from_slice(&rest[..n]);
    u128::from_be_bytes(bytes)
}

/// Runs one change of a key over `version` (its live version, if any),
/// appending what it supersedes to `list` (the key's past versions), as the
/// write path does; `None` for a delete of a key not live (the write path
/// would have deleted nothing and logged no change).
fn replay_change(
    version: &mut Option<Entry>,
    list: &mut VecDeque<Entry>,
    rev: i64,
    value: Option<Vec<u8>>,
) -> Option<()> {
    let old = version.take();
    match value {
        Some(value) => {
            let (create_revision, version_number) = match &old {
                Some(e) => (e.create_revision, e.version.saturating_add(1)),
                None => (rev, 1),
            };
            list.extend(old);
            *version = Some(Entry {
                value,
                create_revision,
                mod_revision: rev,
                version: version_number,
            });
        }
        None => {
            list.push_back(old?);
            list.push_back(Entry::tombstone(rev));
        }
    }
    Some(())
}
