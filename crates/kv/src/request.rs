//! Requests, named and shaped after etcd's `etcdserverpb` messages.

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// A command applied through the Raft log with
/// [`KvStore::apply`](crate::KvStore::apply).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set one key (etcd `Put`).
    Put(PutRequest),
    /// Delete one key or a range (etcd `DeleteRange`).
    DeleteRange(DeleteRangeRequest),
    /// Compares, then one branch of operations, atomically (etcd `Txn`).
    Txn(TxnRequest),
    /// Record a compaction (etcd `Compact`); see the crate docs.
    Compact(CompactionRequest),
    /// A read ordered through the log (etcd serves reads outside the log;
    /// this exists for callers that want log-ordered reads).
    Range(RangeRequest),
    // Variants below were appended for leases; existing encodings are
    // unchanged, so logs written before them still decode. Only the
    // MvccStore serves them: a KvStore refuses them as `LeaseNotFound`.
    /// Create a lease (etcd `LeaseGrant`).
    #[cfg(feature = "leases")]
    LeaseGrant(LeaseGrantRequest),
    /// Delete a lease and every key attached to it, in one revision (etcd
    /// `LeaseRevoke`, and the leader's revoke of an expired lease).
    #[cfg(feature = "leases")]
    LeaseRevoke(LeaseRevokeRequest),
    /// A put with etcd's `lease`/`ignore_lease` fields.
    #[cfg(feature = "leases")]
    LeasePut(PutRequest, LeaseOption),
    /// A transaction with lease fields on its puts.
    #[cfg(feature = "leases")]
    LeaseTxn(TxnRequest, TxnLeases),
}

/// etcd `PutRequest`'s lease fields (kept out of [`PutRequest`], whose
/// encoding is fixed by existing logs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseOption {
    /// Attach the key to this lease (0: to none; the key leaves its old one).
    pub lease: i64,
    /// Keep the key's current lease (`lease` must be 0; the key must exist).
    pub ignore_lease: bool,
}

/// The lease fields of a [`TxnRequest`]'s puts: one [`LeaseOption`] per
/// [`RequestOp::Put`] of each branch, in order, the puts of a nested
/// [`RequestOp::Txn`] counted where it stands (its `success` puts, then its
/// `failure` puts, each in this same order).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnLeases {
    /// For the puts of `success`.
    pub success: Vec<LeaseOption>,
    /// For the puts of `failure`.
    pub failure: Vec<LeaseOption>,
}

/// etcd `LeaseGrantRequest`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrantRequest {
    /// The lease's ID; 0 lets the store choose one (deterministically, from
    /// the log index, so every replica chooses the same).
    pub id: i64,
    /// Time to live in seconds, at most [`MAX_LEASE_TTL_SECS`](crate::MAX_LEASE_TTL_SECS).
    /// The store keeps it as given: raising it to a minimum is the server's
    /// business (it knows the election timeout).
    pub ttl: i64,
}

/// etcd `LeaseRevokeRequest`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRevokeRequest {
    /// The lease to revoke.
    pub id: i64,
}

/// etcd `PutRequest` without its lease fields (see [`Command::LeasePut`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    /// The key; must not be empty.
    pub key: Vec<u8>,
    /// The new value.
    pub value: Vec<u8>,
    /// Return the previous key-value pair, if any.
    pub prev_kv: bool,
    /// Keep the current value (`value` must be empty; the key must exist).
    pub ignore_value: bool,
}

/// etcd `DeleteRangeRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeRequest {
    /// The first key; must not be empty.
    pub key: Vec<u8>,
    /// Empty: just `key`. `b"\0"`: every key `>= key`. Otherwise the
    /// half-open range `[key, range_end)`; see [`prefix_end`](crate::prefix_end).
    pub range_end: Vec<u8>,
    /// Return the deleted pairs.
    pub prev_kv: bool,
}

/// etcd `RangeRequest`'s sort order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortOrder {
    /// Key order (etcd's default).
    #[default]
    None,
    /// Ascending by the sort target.
    Ascend,
    /// Descending by the sort target.
    Descend,
}

/// etcd `RangeRequest`'s sort target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortTarget {
    /// The key.
    #[default]
    Key,
    /// The version.
    Version,
    /// The create revision.
    Create,
    /// The mod revision.
    Mod,
    /// The value.
    Value,
}

/// etcd `RangeRequest` (without `serializable`, which is the server's
/// business: this crate always reads local state).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    /// The first key; must not be empty.
    pub key: Vec<u8>,
    /// As in [`DeleteRangeRequest::range_end`].
    pub range_end: Vec<u8>,
    /// At most this many pairs when `> 0`; `<= 0` means no limit.
    pub limit: i64,
    /// `<= 0` or the current revision; older revisions are compacted.
    pub revision: i64,
    /// Sort order.
    pub sort_order: SortOrder,
    /// Sort target.
    pub sort_target: SortTarget,
    /// Return keys and metadata with empty values.
    pub keys_only: bool,
    /// Return only `count`, no pairs.
    pub count_only: bool,
    /// Drop pairs with `mod_revision` below this (0: no bound).
    pub min_mod_revision: i64,
    /// Drop pairs with `mod_revision` above this (0: no bound).
    pub max_mod_revision: i64,
    /// Drop pairs with `create_revision` below this (0: no bound).
    pub min_create_revision: i64,
    /// Drop pairs with `create_revision` above this (0: no bound).
    pub max_create_revision: i64,
}

impl RangeRequest {
    /// A read of the single key `key`.
    pub fn single(key: &[u8]) -> Self {
        RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        }
    }

    /// A read of every key starting with `prefix`, the way etcd clients
    /// build it (an empty prefix reads every key).
    pub fn prefix(prefix: &[u8]) -> Self {
        if prefix.is_empty() {
            return RangeRequest {
                key: alloc::vec![0],
                range_end: alloc::vec![0],
                ..Default::default()
            };
        }
        RangeRequest {
            key: prefix.to_vec(),
            range_end: crate::prefix_end(prefix),
            ..Default::default()
        }
    }
}

/// etcd `Compare.CompareResult`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    /// The key's field equals the operand.
    Equal,
    /// The key's field is greater than the operand.
    Greater,
    /// The key's field is less than the operand.
    Less,
    /// The key's field differs from the operand.
    NotEqual,
}

/// etcd `Compare.CompareTarget` together with its operand (etcd's
/// `target_union`), so a target can never carry the wrong kind of operand.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The key's version (0 when missing).
    Version(i64),
    /// The key's create revision (0 when missing).
    CreateRevision(i64),
    /// The key's mod revision (0 when missing).
    ModRevision(i64),
    /// The key's value; any compare on a missing key's value is false.
    Value(Vec<u8>),
    /// The key's lease (0 when missing or without a lease; always 0 in a
    /// [`KvStore`](crate::KvStore), which has no leases).
    Lease(i64),
}

/// etcd `Compare`: one condition of a [`TxnRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// How the key's field relates to the operand.
    pub result: CompareResult,
    /// Which field, and the operand.
    pub target: CompareTarget,
    /// The key; must not be empty.
    pub key: Vec<u8>,
    /// As in [`DeleteRangeRequest::range_end`]; over a range the compare
    /// must hold for every key in it (etcd 3.4+).
    pub range_end: Vec<u8>,
}

impl Compare {
    /// A compare on the single key `key`.
    pub fn new(key: &[u8], result: CompareResult, target: CompareTarget) -> Self {
        Compare {
            result,
            target,
            key: key.to_vec(),
            range_end: Vec::new(),
        }
    }
}

/// etcd `RequestOp`: one operation in a transaction branch.
///
/// `Deserialize` is written by hand ([`crate::nesting`]): decoding counts
/// how deep transactions nest and refuses more than
/// [`MAX_TXN_DEPTH`](crate::MAX_TXN_DEPTH) levels before recursing, so
/// bytes from a peer or a damaged log cannot exhaust the stack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum RequestOp {
    /// A read.
    Range(RangeRequest),
    /// A write of one key.
    Put(PutRequest),
    /// A delete of one key or a range.
    DeleteRange(DeleteRangeRequest),
    /// A nested transaction (etcd `request_txn`). Its compares are decided
    /// against the store as it was before the outer transaction, as etcd
    /// does, and the whole outer transaction is one revision. Appended
    /// after the other variants, so earlier encodings are unchanged.
    /// (Feature `nested-txn`, on by default.)
    #[cfg(feature = "nested-txn")]
    Txn(TxnRequest),
}

/// etcd `TxnRequest`: if every compare holds, run `success`, else `failure`.
/// (`Deserialize` by hand, as for [`RequestOp`].)
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TxnRequest {
    /// Conditions, all of which must hold.
    pub compare: Vec<Compare>,
    /// Operations run, in order, when every compare holds.
    pub success: Vec<RequestOp>,
    /// Operations run, in order, otherwise.
    pub failure: Vec<RequestOp>,
}

/// etcd `CompactionRequest`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionRequest {
    /// Compact everything below this revision.
    pub revision: i64,
}
