//! The public result types of the MVCC store's history reads.

use crate::response::KeyValue;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// What a change did to its key (etcd `mvccpb.Event.EventType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ChangeKind {
    /// The key was written (created or updated).
    Put,
    /// The key was deleted.
    Delete,
}

/// One watch event (etcd `mvccpb.Event`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Put or delete.
    pub kind: ChangeKind,
    /// For a put, the new version. For a delete, the key with
    /// `mod_revision` = the deleting revision, other numbers 0 and an empty
    /// value, as etcd reports it.
    pub kv: KeyValue,
    /// The key's previous version, if it existed and is still kept (it is
    /// gone for changes at the compact revision itself).
    pub prev_kv: Option<KeyValue>,
    /// The lease of `kv` (etcd `KeyValue.lease`): for a put whose version
    /// is still the live one, the key's lease; otherwise 0 (past versions
    /// do not record their lease, see [`MvccStore::key_lease`](crate::MvccStore::key_lease)).
    /// Exact for the events of the revision just applied.
    pub lease: i64,
}

/// A bounded run of changes from [`MvccStore::changes`](crate::MvccStore::changes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeBatch {
    /// The changes, in revision order, sub-revision order within a revision.
    pub changes: Vec<Change>,
    /// The revision to ask for next: every change below it in the range has
    /// been returned. `> revision()` means the caller has caught up.
    pub next_revision: i64,
}

/// etcd `HashKV`'s answer: [`MvccStore::hash_kv`](crate::MvccStore::hash_kv).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashKv {
    /// CRC-32C of every kept version up to the requested revision.
    pub hash: u32,
    /// The store's compact revision.
    pub compact_revision: i64,
    /// The store's current revision (etcd's header revision).
    pub revision: i64,
}
