//! etcd's Watch service, served by every voting member (followers
//! included) from its own applied state; learners refuse it, as in etcd 3.4
//! (`member::learner_gate`).
//!
//! How events reach a watcher:
//! - The Raft loop publishes what each round of applying produced (one
//!   [`MvccEvent`] per revision, in revision order) on the member's
//!   [`WatchFeed`]: a bounded broadcast of [`WATCH_FEED_CAPACITY`] batches.
//!   The events are shared (`Arc`), never copied per watcher. While
//!   nothing is subscribed the store does not collect them at all
//!   (`ServerMachine` checks before each apply).
//! - One task per gRPC stream owns that stream's watchers. Each watcher keeps
//!   `next_revision`: every revision below it has been delivered (or did not
//!   concern it). Revisions are contiguous, so a batch whose first revision
//!   is above `next_revision` shows a gap (the stream lagged behind the
//!   feed, or the member installed a snapshot): the watcher then catches up
//!   from the store's MVCC history, [`CATCH_UP_BATCH_EVENTS`] at a time,
//!   and skips what it already has.
//! - A slow client blocks only its own stream task, on a send buffer of
//!   [`WATCH_SEND_BUFFER`] responses. Meanwhile the feed moves on without
//!   it; when the client reads again, the task catches up from history. So
//!   memory is bounded per stream and per member, whatever the clients do.
//!
//! The guarantees of etcd's API document hold: events arrive in revision
//! order, each at most once, with no gap from the start revision on; a
//! revision's events (a transaction) are never split across responses
//! unless the watcher asked for fragments and the response is too large;
//! a watch resumed at `last + 1` gets exactly what it missed, or is
//! canceled with `compact_revision` if history was compacted.

mod feed;
mod stream;

pub use feed::{FeedBatch, WatchFeed, WatchStats};
pub use metalraft_replica::MvccEvent;
pub use stream::{serve_stream, WatchService};

use std::time::Duration;

/// Applied batches the member's feed keeps for streams that have not read
/// them yet; a stream further behind catches up from history.
pub const WATCH_FEED_CAPACITY: usize = 1024;
/// Responses a stream buffers for its client before its task waits.
pub const WATCH_SEND_BUFFER: usize = 128;
/// Events read from history per catch-up step (whole revisions only).
pub const CATCH_UP_BATCH_EVENTS: usize = 1000;
/// Watchers one stream may hold (etcd has no limit; this bounds a stream's
/// state against a runaway client).
pub const MAX_WATCHERS_PER_STREAM: usize = 100_000;
/// etcd's default `--experimental-watch-progress-notify-interval`.
pub const DEFAULT_PROGRESS_NOTIFY_INTERVAL: Duration = Duration::from_secs(600);
/// The watch id etcd uses for responses that belong to no single watcher
/// (a `WatchProgressRequest`'s answer).
pub const NO_WATCH_ID: i64 = -1;
/// gRPC metadata key by which a client asks that its stream need a leader
/// (etcd's `WithRequireLeader`).
pub const REQUIRE_LEADER_KEY: &str = "hasleader";
