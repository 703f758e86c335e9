//! Results, named and shaped after etcd's `etcdserverpb` messages.

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// etcd `mvccpb.KeyValue` (without `lease`, which would always be 0).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// Revision of the write that created the key (since it last did not exist).
    pub create_revision: i64,
    /// Revision of the last write to the key.
    pub mod_revision: i64,
    /// Writes since creation, starting at 1; back to 1 after delete + re-create.
    pub version: i64,
    /// The value (empty in `keys_only` reads).
    pub value: Vec<u8>,
}

/// The part of etcd's `ResponseHeader` this crate knows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseHeader {
    /// The store's revision after the operation (for an operation inside a
    /// transaction: after the whole transaction).
    pub revision: i64,
}

/// etcd `PutResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    /// Revision after the put.
    pub header: ResponseHeader,
    /// The pair before the put, if requested and the key existed.
    pub prev_kv: Option<KeyValue>,
}

/// etcd `DeleteRangeResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeResponse {
    /// Revision after the delete (unchanged when nothing was deleted).
    pub header: ResponseHeader,
    /// Number of keys deleted.
    pub deleted: i64,
    /// The deleted pairs in key order, if requested.
    pub prev_kvs: Vec<KeyValue>,
}

/// etcd `RangeResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    /// The revision the read saw.
    pub header: ResponseHeader,
    /// The pairs, in key order unless a sort was requested.
    pub kvs: Vec<KeyValue>,
    /// Whether `limit` cut off more pairs.
    pub more: bool,
    /// Number of keys in the range, ignoring `limit` and the min/max filters.
    pub count: i64,
}

/// etcd `ResponseOp`: the result of one [`RequestOp`](crate::RequestOp).
/// (`Deserialize` by hand, depth-limited as for
/// [`RequestOp`](crate::RequestOp): results come from the leader.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum ResponseOp {
    /// Result of a read.
    Range(RangeResponse),
    /// Result of a put.
    Put(PutResponse),
    /// Result of a delete.
    DeleteRange(DeleteRangeResponse),
    /// Result of a nested transaction. As in etcd, its header is empty
    /// (revision 0): only the outer transaction's header carries one.
    /// (Feature `nested-txn`, on by default.)
    #[cfg(feature = "nested-txn")]
    Txn(TxnResponse),
}

/// etcd `TxnResponse`. (`Deserialize` by hand, as for [`ResponseOp`].)
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TxnResponse {
    /// Revision after the transaction (one more than before if it wrote).
    pub header: ResponseHeader,
    /// Whether every compare held (and `success` ran).
    pub succeeded: bool,
    /// One response per operation of the branch that ran, in order.
    pub responses: Vec<ResponseOp>,
}

/// etcd `CompactionResponse`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionResponse {
    /// The current revision (compaction does not change it).
    pub header: ResponseHeader,
}

/// The result of applying a [`Command`](crate::Command): one variant per
/// command variant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Result of [`Command::Put`](crate::Command::Put).
    Put(PutResponse),
    /// Result of [`Command::DeleteRange`](crate::Command::DeleteRange).
    DeleteRange(DeleteRangeResponse),
    /// Result of [`Command::Txn`](crate::Command::Txn).
    Txn(TxnResponse),
    /// Result of [`Command::Compact`](crate::Command::Compact).
    Compact(CompactionResponse),
    /// Result of [`Command::Range`](crate::Command::Range).
    Range(RangeResponse),
    /// Result of `Command::LeaseGrant` (feature `leases`).
    #[cfg(feature = "leases")]
    LeaseGrant(LeaseGrantResponse),
    /// Result of `Command::LeaseRevoke` (feature `leases`).
    #[cfg(feature = "leases")]
    LeaseRevoke(LeaseRevokeResponse),
}

/// etcd `LeaseGrantResponse`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrantResponse {
    /// The store's revision (a grant does not change it).
    pub header: ResponseHeader,
    /// The lease's ID (the store's choice if the request's was 0).
    pub id: i64,
    /// Its time to live in seconds.
    pub ttl: i64,
}

/// etcd `LeaseRevokeResponse`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRevokeResponse {
    /// The revision after the revoke (one more if it deleted keys).
    pub header: ResponseHeader,
}

impl CommandResult {
    /// The response header: the store's revision after the command.
    pub fn header(&self) -> ResponseHeader {
        match self {
            CommandResult::Put(r) => r.header,
            CommandResult::DeleteRange(r) => r.header,
            CommandResult::Txn(r) => r.header,
            CommandResult::Compact(r) => r.header,
            CommandResult::Range(r) => r.header,
            #[cfg(feature = "leases")]
            CommandResult::LeaseGrant(r) => r.header,
            #[cfg(feature = "leases")]
            CommandResult::LeaseRevoke(r) => r.header,
        }
    }
}
