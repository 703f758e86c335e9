//! Every bound the state machine enforces, in one place.
//!
//! These are constants rather than configuration because validation happens
//! inside `apply`: every replica must reach the same verdict on the same log
//! entry, so the bounds are part of the replicated protocol, not of one node.

/// Largest sum of the lengths of every key, `range_end` and value in one
/// command: etcd's default `--max-request-bytes` (1.5 MiB).
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// Largest key (and `range_end`) in bytes: the request limit, as in etcd,
/// whose only bound on a key is the request's size (bbolt's 32 KiB key
/// limit does not apply: etcd's bbolt keys are revisions, the user's key is
/// in the value). It was 32 KiB before; lifting it changed no encoding
/// (postcard lengths are varints) and no verdict on any logged entry (the
/// server checks commands before proposing them); see ADR 0024 (`docs/adr/0024-large-keys.md`).
pub const MAX_KEY_BYTES: usize = MAX_REQUEST_BYTES;

/// Largest value in bytes (a value must also fit [`MAX_REQUEST_BYTES`]
/// together with the rest of its command).
pub const MAX_VALUE_BYTES: usize = MAX_REQUEST_BYTES;

/// Most entries in each of a transaction's `compare`, `success` and
/// `failure` lists: etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;

/// Most levels of transactions nested in one another (the outer one is
/// level 1). [`MAX_TXN_OPS`] bounds it already for a valid command (a
/// nested transaction gets what its parent's longest list leaves); decoding
/// enforces it before recursing, so no input, valid or not, nests deeper.
pub const MAX_TXN_DEPTH: usize = MAX_TXN_OPS;

/// Bytes of framing (tags, varint lengths and integers) an encoded command
/// may carry on top of its payload. A maximal transaction (3 lists of
/// [`MAX_TXN_OPS`] items) needs under 100 bytes per item.
pub const MAX_FRAMING_BYTES: usize = 64 * 1024;

/// Largest encoded [`Command`](crate::Command), in bytes. Every command that
/// passes [`Command::validate`](crate::Command::validate) encodes within it.
pub const MAX_ENCODED_COMMAND_BYTES: usize = MAX_REQUEST_BYTES + MAX_FRAMING_BYTES;

/// Largest encoded [`CommandResult`](crate::CommandResult), in bytes. A
/// range result can carry many keys, so this is larger than a command.
pub const MAX_ENCODED_RESULT_BYTES: usize = 64 * 1024 * 1024;

/// Bytes [`KvStore::size_bytes`](crate::KvStore::size_bytes) counts for each
/// key on top of its key and value bytes: three `i64` fields and a rough
/// allowance for the map node and two heap allocations.
pub const ENTRY_OVERHEAD_BYTES: usize = 64;

/// Bytes [`MvccStore::size_bytes`](crate::MvccStore::size_bytes) counts for
/// each superseded version or tombstone on top of its value bytes: the
/// 48-byte slot (value vector and three `i64`) in the key's version list,
/// plus that list's spare capacity (it grows by doubling), on average.
pub const HISTORY_VERSION_OVERHEAD_BYTES: usize = 64;

/// Bytes [`MvccStore::size_bytes`](crate::MvccStore::size_bytes) counts for
/// each key that has history, on top of the key bytes: its map node share
/// and the version list's header.
pub const HISTORY_KEY_OVERHEAD_BYTES: usize = 64;

/// Bytes [`MvccStore::size_bytes`](crate::MvccStore::size_bytes) counts for
/// each change in the revision log, on top of the key bytes it copies. The
/// log once held a key vector and the kind per change; it now packs them
/// (a 1–4 byte varint each), so this over-counts, and is kept so that
/// `size_bytes` (etcd's `dbSize`, the quota) means what it meant.
pub const LOG_CHANGE_OVERHEAD_BYTES: usize = 32;

/// Bytes [`MvccStore::size_bytes`](crate::MvccStore::size_bytes) counts for
/// each revision in the revision log: its 32-byte slot (revision and
/// change list) and the log's spare capacity (it grows by doubling).
pub const LOG_RECORD_OVERHEAD_BYTES: usize = 48;

/// Most revision records one [`MvccStore::changes`](crate::MvccStore::changes)
/// call scans, whatever its key range matches, so one watch catch-up step
/// does bounded work; the caller continues from the batch's `next_revision`.
pub const MAX_CHANGES_SCANNED_REVISIONS: usize = 4096;

/// The longest lease TTL a grant may ask for, in seconds (etcd's
/// `MaxLeaseTTL`, about 285 years).
pub const MAX_LEASE_TTL_SECS: i64 = 9_000_000_000;

/// The revision of an empty store, as in etcd (the first write gets 2).
pub const INITIAL_REVISION: i64 = 1;

const _: () = assert!(MAX_VALUE_BYTES <= MAX_REQUEST_BYTES);
const _: () = assert!(MAX_KEY_BYTES <= MAX_REQUEST_BYTES);
const _: () = assert!(3 * MAX_TXN_OPS * 128 < MAX_FRAMING_BYTES);
const _: () = assert!(MAX_ENCODED_RESULT_BYTES >= MAX_ENCODED_COMMAND_BYTES);
