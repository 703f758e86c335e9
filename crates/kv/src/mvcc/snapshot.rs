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
use super::history::{change_size, Past, Record};
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
use alloc::collections::BTreeSet;
use alloc::vec::Vec;
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
    body: Body,
    leases: Vec<SnapLease>,
}

#[derive(Deserialize)]
struct SnapLease {
    id: i64,
    ttl: i64,
    keys: Vec<ByteBuf>,
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
        s.collect_seq(record.changes.iter().map(|(key, kind)| {
            let op = match kind {
                ChangeKind::Delete => OpRef::Delete,
                ChangeKind::Put => {
                    let live = store.current.map.get(key.as_slice());
                    // The write path logs a put with the version it made.
                    let value = store
                        .past
                        .put_at(live, key, record.revision)
                        .map_or(&[][..], |e| &e.value[..]);
                    OpRef::Put(value)
                }
            };
            ChangeRef { key, op }
        }))
    }
}

/// The body as read.
#[derive(Deserialize)]
pub(super) struct Body {
    revision: i64,
    compact_revision: i64,
    applied_index: u64,
    base: Vec<SnapKeyValue>,
    at_base: Vec<(ByteBuf, ChangeKind)>,
    records: Vec<SnapRecord>,
}

#[derive(Deserialize)]
pub(super) struct SnapRecord {
    revision: i64,
    changes: Vec<SnapChange>,
}

#[derive(Deserialize)]
struct SnapChange {
    key: ByteBuf,
    op: SnapOp,
}

#[derive(Deserialize)]
enum SnapOp {
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

/// Replays `records` over `current` and `past`, each the next revision.
pub(super) fn replay(
    current: &mut KvStore,
    past: &mut Past,
    records: Vec<SnapRecord>,
) -> Option<()> {
    for record in records {
        let next = current.revision.checked_add(1)?;
        if record.revision != next || record.changes.is_empty() {
            return None;
        }
        // The log record, made at its final size (the write path grows it
        // and shrinks it when the next revision starts: equal contents).
        let mut logged = Vec::with_capacity(record.changes.len());
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
            let change = match op {
                SnapOp::Put(ByteBuf(value)) => {
                    if value.len() > MAX_VALUE_BYTES {
                        return None;
                    }
                    (replay_put(current, past, next, key, value), ChangeKind::Put)
                }
                SnapOp::Delete => (replay_delete(current, past, next, key)?, ChangeKind::Delete),
            };
            logged.push(change);
        }
        past.log.push_back(Record {
            revision: next,
            changes: logged,
        });
        current.revision = next;
    }
    Some(())
}

/// What [`KvStore::put_at`] with [`Past`] as history does for a plain put
/// (no `prev_kv`, no `ignore_value`) of `key` at `rev`, except logging:
/// moves `key` and `value` in rather than copying them, and returns the
/// key for the log record.
fn replay_put(
    current: &mut KvStore,
    past: &mut Past,
    rev: i64,
    key: Vec<u8>,
    value: Vec<u8>,
) -> Vec<u8> {
    use alloc::collections::btree_map::Entry as Slot;
    match current.map.entry(key) {
        Slot::Occupied(mut slot) => {
            let key = slot.key().clone();
            let e = slot.get_mut();
            current.size_bytes = current.size_bytes.saturating_sub(e.value.len());
            current.size_bytes = current.size_bytes.saturating_add(value.len());
            let old = Entry {
                value: core::mem::replace(&mut e.value, value),
                create_revision: e.create_revision,
                mod_revision: e.mod_revision,
                version: e.version,
            };
            e.mod_revision = rev;
            e.version = e.version.saturating_add(1);
            past.push_version(&key, old);
            key
        }
        Slot::Vacant(slot) => {
            let key = slot.key().clone();
            current.size_bytes = current.size_bytes.saturating_add(entry_size(&key, &value));
            slot.insert(Entry {
                value,
                create_revision: rev,
                mod_revision: rev,
                version: 1,
            });
            key
        }
    }
}

/// What [`KvStore::delete_at`] with [`Past`] as history does for a delete
/// of the single key `key` at `rev`, except logging; `None` if the key is
/// not live (the write path would have deleted nothing and logged no
/// change), else the key for the log record.
fn replay_delete(
    current: &mut KvStore,
    past: &mut Past,
    rev: i64,
    key: Vec<u8>,
) -> Option<Vec<u8>> {
    let e = current.map.remove(key.as_slice())?;
    current.size_bytes = current
        .size_bytes
        .saturating_sub(entry_size(&key, &e.value));
    past.push_version(&key, e);
    past.push_version(&key, Entry::tombstone(rev));
    Some(key)
}
