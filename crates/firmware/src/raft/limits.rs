//! Every bound of the Raft node, in one place, with the relationships that
//! must hold between them checked at compile time.

use metalraft_fw_proto::addr::MAX_DATAGRAM_BYTES;
use metalraft_fw_proto::client::{MAX_KEY_BYTES, MAX_VALUE_BYTES};

/// Entry bytes (core accounting: payload + 24) per AppendEntries; keeps
/// every message within one datagram.
pub const MAX_APPEND_BYTES: usize = 1024;
/// Entries per AppendEntries.
pub const MAX_ENTRIES_PER_APPEND: usize = 32;
/// Unacknowledged AppendEntries per follower.
pub const MAX_INFLIGHT_MSGS: usize = 16;
/// Unacknowledged entry bytes per follower.
pub const MAX_INFLIGHT_BYTES: usize = 16 * 1024;
/// Proposed but uncommitted bytes on the leader (beyond: `Busy`).
pub const MAX_UNCOMMITTED_BYTES: usize = 32 * 1024;
/// Committed entry bytes applied per `ready()`.
pub const MAX_APPLY_BYTES: usize = 8 * 1024;
/// Reads the core tracks at once.
pub const MAX_CORE_PENDING_READS: usize = 32;
/// Client writes waiting for their entry to apply.
pub const MAX_PENDING_WRITES: usize = 64;
/// Client reads waiting for a read index or for apply.
pub const MAX_PENDING_READS: usize = 32;
/// A client request (write or read) still waiting after this long
/// completes as unknown (`LeadershipLost`) or failed (`ReadFailed`): what a
/// leader cut off from the majority answers, and what bounds how long a
/// waiter slot stays taken.
pub const REQUEST_TIMEOUT_MS: u64 = 5_000;
/// Requests waiting at once: each has a slot in the shell's waiter table.
pub const MAX_WAITERS: usize = MAX_PENDING_WRITES + MAX_PENDING_READS;
/// Headroom for the non-entry fields of an AppendEntries (ids, term,
/// indexes as varints, enum tags, version byte).
pub const APPEND_HEADER_BYTES_MAX: usize = 80;
/// Largest encoded kv command a client can cause (key + value + framing).
pub const MAX_COMMAND_BYTES: usize = MAX_KEY_BYTES + MAX_VALUE_BYTES + 32;

// One AppendEntries (a full batch, or a single entry of any size a client can
// produce) always fits one datagram: postcard encodes an entry in at most
// its core size (24-byte overhead >= varint term + index + tags + length).
const _: () = assert!(MAX_APPEND_BYTES + APPEND_HEADER_BYTES_MAX <= MAX_DATAGRAM_BYTES);
const _: () = assert!(MAX_COMMAND_BYTES + 24 <= MAX_APPEND_BYTES);
const _: () = assert!(MAX_PENDING_READS <= MAX_CORE_PENDING_READS);
