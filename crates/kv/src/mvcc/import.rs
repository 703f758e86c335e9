//! Building a store from another system's history (an etcd database's
//! revisions), through the same checks a snapshot's restore runs.

use super::change::ChangeKind;
use super::snapshot::{
    from_lease_body, Body, LeaseBody, SnapChange, SnapLease, SnapOp, SnapRecord,
};
use super::MvccStore;
use crate::bytes::ByteBuf;
use crate::error::SnapshotError;
use crate::response::KeyValue;
use alloc::vec::Vec;

/// One revision's changes in sub-revision order: each a key and its new
/// value (`None`: deleted).
pub type ImportedChanges = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// A store's content as revisions, the shape an etcd database has
/// (its `key` bucket read in revision order). See [`MvccStore::import`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Imported {
    /// The store's revision (the newest change's).
    pub revision: i64,
    /// The compact revision (0 if never compacted).
    pub compact_revision: i64,
    /// The applied index to record.
    pub applied_index: u64,
    /// Every key live at `max(compact_revision, 1)`, in key order, with
    /// its version's numbers.
    pub base: Vec<KeyValue>,
    /// The changes made at that revision itself, in sub-revision order
    /// (empty if never compacted).
    pub at_base: Vec<(Vec<u8>, ChangeKind)>,
    /// Each later revision, in order and without gaps: its changes in
    /// sub-revision order, each a key and its new value (`None`: deleted).
    pub records: Vec<(i64, ImportedChanges)>,
    /// Each lease: ID, granted TTL, attached (live) keys.
    pub leases: Vec<(i64, i64, Vec<Vec<u8>>)>,
}

impl MvccStore {
    /// A store holding `h`, built as a snapshot's restore builds one: the
    /// base state, then every later revision replayed through the write
    /// path's effects (so versions and create revisions follow from the
    /// changes), then the leases. Anything inconsistent — keys out of order,
    /// a gap between revisions, a base version newer than the base, a lease
    /// on a key that is not live — is [`SnapshotError::Inconsistent`].
    pub fn import(h: Imported) -> Result<MvccStore, SnapshotError> {
        let body = Body {
            revision: h.revision,
            compact_revision: h.compact_revision,
            applied_index: h.applied_index,
            base: h
                .base
                .into_iter()
                .map(|kv| crate::snapshot::SnapKeyValue {
                    key: ByteBuf(kv.key),
                    create_revision: kv.create_revision,
                    mod_revision: kv.mod_revision,
                    version: kv.version,
                    value: ByteBuf(kv.value),
                })
                .collect(),
            at_base: h
                .at_base
                .into_iter()
                .map(|(k, kind)| (ByteBuf(k), kind))
                .collect(),
            records: h
                .records
                .into_iter()
                .map(|(revision, changes)| SnapRecord {
                    revision,
                    changes: changes
                        .into_iter()
                        .map(|(key, value)| SnapChange {
                            key: ByteBuf(key),
                            op: value.map_or(SnapOp::Delete, |v| SnapOp::Put(ByteBuf(v))),
                        })
                        .collect(),
                })
                .collect(),
        };
        let leases = h
            .leases
            .into_iter()
            .map(|(id, ttl, keys)| SnapLease {
                id,
                ttl,
                keys: keys.into_iter().map(ByteBuf).collect(),
            })
            .collect();
        from_lease_body(LeaseBody { body, leases }).ok_or(SnapshotError::Inconsistent)
    }
}
