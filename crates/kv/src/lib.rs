#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

extern crate alloc;

pub mod bytes;
mod checksum;
mod codec;
mod error;
mod keys;
mod limits;
mod mvcc;
mod nesting;
mod range;
mod range_sort;
mod request;
mod response;
mod snapshot;
mod store;
mod txn;
mod validate;
mod write;

pub use codec::FORMAT_VERSION;
pub use error::{ApplyError, DecodeError, ReadTxnError, RequestError, SnapshotError};
pub use keys::{key_in_range, prefix_end};
pub use limits::{
    ENTRY_OVERHEAD_BYTES, HISTORY_KEY_OVERHEAD_BYTES, HISTORY_VERSION_OVERHEAD_BYTES,
    INITIAL_REVISION, LOG_CHANGE_OVERHEAD_BYTES, LOG_RECORD_OVERHEAD_BYTES,
    MAX_CHANGES_SCANNED_REVISIONS, MAX_ENCODED_COMMAND_BYTES, MAX_ENCODED_RESULT_BYTES,
    MAX_FRAMING_BYTES, MAX_KEY_BYTES, MAX_LEASE_TTL_SECS, MAX_REQUEST_BYTES, MAX_TXN_DEPTH,
    MAX_TXN_OPS, MAX_VALUE_BYTES,
};
pub use mvcc::{
    padded_varint, Change, ChangeBatch, ChangeKind, HashKv, Imported, ImportedChanges, LeaseInfo,
    MvccStore, Section, SnapshotStream, StreamError, COMPACTION_CHANGES_PER_ENTRY,
    MVCC_LEASE_SNAPSHOT_MAGIC, MVCC_SNAPSHOT_MAGIC, PADDED_VARINT_BYTES,
};
pub use request::{
    Command, CompactionRequest, Compare, CompareResult, CompareTarget, DeleteRangeRequest,
    LeaseGrantRequest, LeaseOption, LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp,
    SortOrder, SortTarget, TxnLeases, TxnRequest,
};
pub use response::{
    CommandResult, CompactionResponse, DeleteRangeResponse, KeyValue, LeaseGrantResponse,
    LeaseRevokeResponse, PutResponse, RangeResponse, ResponseHeader, ResponseOp, TxnResponse,
};
pub use snapshot::SNAPSHOT_MAGIC;
pub use store::KvStore;
