//! One small error enum per operation.

use core::fmt;
use serde::{Deserialize, Serialize};

/// Why a request was refused. The store is unchanged whenever one is
/// returned. Each variant maps onto one etcd error (in parentheses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RequestError {
    /// A key is empty (`ErrGRPCEmptyKey`).
    EmptyKey,
    /// A key or `range_end` is longer than [`MAX_KEY_BYTES`](crate::MAX_KEY_BYTES)
    /// (`ErrGRPCRequestTooLarge`).
    KeyTooLarge {
        /// Its length.
        len: usize,
    },
    /// A value is longer than [`MAX_VALUE_BYTES`](crate::MAX_VALUE_BYTES)
    /// (`ErrGRPCRequestTooLarge`).
    ValueTooLarge {
        /// Its length.
        len: usize,
    },
    /// The keys, range ends and values of one command add up to more than
    /// [`MAX_REQUEST_BYTES`](crate::MAX_REQUEST_BYTES) (`ErrGRPCRequestTooLarge`).
    RequestTooLarge {
        /// The sum.
        len: usize,
    },
    /// A transaction list is longer than [`MAX_TXN_OPS`](crate::MAX_TXN_OPS)
    /// (`ErrGRPCTooManyOps`).
    TooManyOps {
        /// Its length.
        len: usize,
    },
    /// A put with `ignore_value` also carries a value (`ErrGRPCValueProvided`).
    ValueProvided,
    /// A transaction writes one key twice, or puts a key it also deletes
    /// (`ErrGRPCDuplicateKey`).
    DuplicateKey,
    /// A put with `ignore_value` names a missing key (`ErrGRPCKeyNotFound`).
    KeyNotFound,
    /// The requested revision is older than the current one, or (for
    /// compaction) not newer than the last compaction (`ErrCompacted`).
    Compacted {
        /// The revision asked for.
        requested: i64,
        /// The oldest revision that can be asked for.
        oldest: i64,
    },
    /// The requested revision is in the future (`ErrFutureRev`).
    FutureRevision {
        /// The revision asked for.
        requested: i64,
        /// The current revision.
        current: i64,
    },
    /// The revision counter would overflow `i64` (unreachable in practice).
    RevisionExhausted,
    /// A put names a lease that does not exist, or a revoke a missing lease
    /// (`ErrGRPCLeaseNotFound`). A [`KvStore`](crate::KvStore) refuses every
    /// lease command with it.
    #[cfg(feature = "leases")]
    LeaseNotFound,
    /// A grant names a lease ID that exists (`ErrGRPCLeaseExist`).
    #[cfg(feature = "leases")]
    LeaseExists,
    /// A grant's TTL is above [`MAX_LEASE_TTL_SECS`](crate::MAX_LEASE_TTL_SECS)
    /// (`ErrGRPCLeaseTTLTooLarge`).
    #[cfg(feature = "leases")]
    LeaseTtlTooLarge,
    /// A put with `ignore_lease` also names a lease (`ErrGRPCLeaseProvided`).
    #[cfg(feature = "leases")]
    LeaseProvided,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::EmptyKey => f.write_str("key is not provided"),
            RequestError::KeyTooLarge { len } => {
                write!(
                    f,
                    "key of {len} bytes exceeds {} bytes",
                    crate::MAX_KEY_BYTES
                )
            }
            RequestError::ValueTooLarge { len } => {
                write!(
                    f,
                    "value of {len} bytes exceeds {} bytes",
                    crate::MAX_VALUE_BYTES
                )
            }
            RequestError::RequestTooLarge { len } => {
                write!(
                    f,
                    "request of {len} bytes exceeds {} bytes",
                    crate::MAX_REQUEST_BYTES
                )
            }
            RequestError::TooManyOps { len } => {
                write!(
                    f,
                    "too many operations in txn request ({len} > {})",
                    crate::MAX_TXN_OPS
                )
            }
            RequestError::ValueProvided => f.write_str("value is provided"),
            RequestError::DuplicateKey => f.write_str("duplicate key given in txn request"),
            RequestError::KeyNotFound => f.write_str("key not found"),
            RequestError::Compacted { requested, oldest } => write!(
                f,
                "required revision {requested} has been compacted (oldest available {oldest})"
            ),
            RequestError::FutureRevision { requested, current } => write!(
                f,
                "required revision {requested} is a future revision (current {current})"
            ),
            RequestError::RevisionExhausted => f.write_str("revision counter exhausted"),
            #[cfg(feature = "leases")]
            RequestError::LeaseNotFound => f.write_str("requested lease not found"),
            #[cfg(feature = "leases")]
            RequestError::LeaseExists => f.write_str("lease already exists"),
            #[cfg(feature = "leases")]
            RequestError::LeaseTtlTooLarge => f.write_str("too large lease TTL"),
            #[cfg(feature = "leases")]
            RequestError::LeaseProvided => f.write_str("lease is provided"),
        }
    }
}

impl core::error::Error for RequestError {}

/// Why [`MvccStore::read_txn`](crate::MvccStore::read_txn) did not serve a
/// transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadTxnError {
    /// An operation of the transaction (in either branch, nested ones
    /// included) writes: it must go through the log.
    Writes,
    /// The transaction was refused, with the error applying it through the
    /// log would give.
    Refused(RequestError),
}

impl fmt::Display for ReadTxnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadTxnError::Writes => f.write_str("transaction is not read-only"),
            ReadTxnError::Refused(e) => write!(f, "transaction refused: {e}"),
        }
    }
}

impl core::error::Error for ReadTxnError {}

/// Why [`KvStore::apply`](crate::KvStore::apply) did not produce a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApplyError {
    /// `index <= applied_index`: the entry was applied before (for example it
    /// is covered by the snapshot the store was restored from). Nothing
    /// changed; callers replaying a log tail skip such entries.
    AlreadyApplied {
        /// The index passed in.
        index: u64,
        /// The store's applied index.
        applied_index: u64,
    },
    /// The command was refused. The entry still counts as applied
    /// (`applied_index` moved to its index) because every replica refuses it
    /// alike; the data and revision are unchanged.
    Rejected(RequestError),
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyError::AlreadyApplied {
                index,
                applied_index,
            } => write!(
                f,
                "entry {index} already applied (applied index {applied_index})"
            ),
            ApplyError::Rejected(e) => write!(f, "command rejected: {e}"),
        }
    }
}

impl core::error::Error for ApplyError {}

/// Why bytes did not decode into a [`Command`](crate::Command) or
/// [`CommandResult`](crate::CommandResult).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// No bytes at all.
    Empty,
    /// The leading format byte is not [`FORMAT_VERSION`](crate::FORMAT_VERSION).
    UnknownVersion(u8),
    /// More bytes than the named limit for this kind of message.
    TooLarge {
        /// Bytes given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body is not a valid encoding (truncated, bad tag, bad varint...).
    Malformed,
    /// Bytes left over after a complete message.
    TrailingBytes {
        /// How many.
        len: usize,
    },
    /// Well-formed, but a key, value or list breaks a limit or rule.
    Invalid(RequestError),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Empty => f.write_str("empty input"),
            DecodeError::UnknownVersion(v) => write!(f, "unknown format version {v}"),
            DecodeError::TooLarge { len, max } => {
                write!(f, "input of {len} bytes exceeds {max} bytes")
            }
            DecodeError::Malformed => f.write_str("malformed input"),
            DecodeError::TrailingBytes { len } => write!(f, "{len} trailing bytes"),
            DecodeError::Invalid(e) => write!(f, "invalid request: {e}"),
        }
    }
}

impl core::error::Error for DecodeError {}

/// Why [`KvStore::restore`](crate::KvStore::restore) refused a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Shorter than the fixed header and checksum.
    Truncated,
    /// The leading magic bytes are wrong: not a snapshot of this crate.
    BadMagic,
    /// The format byte is not [`FORMAT_VERSION`](crate::FORMAT_VERSION).
    UnknownVersion(u8),
    /// The checksum does not match: the bytes were damaged.
    ChecksumMismatch,
    /// The checksum matches but the body does not decode.
    Malformed,
    /// The body decodes but breaks an invariant (keys out of order, a
    /// revision ahead of the store's, a limit exceeded...).
    Inconsistent,
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::Truncated => f.write_str("snapshot truncated"),
            SnapshotError::BadMagic => f.write_str("not a metalraft-kv snapshot"),
            SnapshotError::UnknownVersion(v) => write!(f, "unknown snapshot version {v}"),
            SnapshotError::ChecksumMismatch => f.write_str("snapshot checksum mismatch"),
            SnapshotError::Malformed => f.write_str("malformed snapshot body"),
            SnapshotError::Inconsistent => f.write_str("snapshot breaks a store invariant"),
        }
    }
}

impl core::error::Error for SnapshotError {}
