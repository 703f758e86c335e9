//! [`WatchFeed`]: the member's broadcast of applied events.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use metalraft_replica::MvccEvent;
use tokio::sync::broadcast;

use super::WATCH_FEED_CAPACITY;

/// The events of one round of applying, one per revision, in order.
pub type FeedBatch = Arc<Vec<MvccEvent>>;

/// Counters for etcd's watch metrics.
#[derive(Debug, Default)]
pub struct WatchStats {
    /// Open Watch streams (`etcd_debugging_mvcc_watch_stream_total`).
    pub streams: AtomicI64,
    /// Watchers (`etcd_debugging_mvcc_watcher_total`).
    pub watchers: AtomicI64,
    /// Events sent to watchers (`etcd_debugging_mvcc_events_total`).
    pub events: AtomicU64,
    /// Times a watcher fell behind the feed and read history
    /// (`etcd_debugging_mvcc_slow_watcher_total` counts such watchers).
    pub catch_ups: AtomicU64,
}

impl WatchStats {
    pub(super) fn add(counter: &AtomicI64, n: i64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The Raft loop's side publishes; every Watch stream subscribes.
#[derive(Clone, Debug)]
pub struct WatchFeed {
    tx: broadcast::Sender<FeedBatch>,
    /// Shared counters.
    pub stats: Arc<WatchStats>,
}

impl Default for WatchFeed {
    fn default() -> Self {
        Self::new()
    }
}

impl WatchFeed {
    /// A feed keeping at most [`WATCH_FEED_CAPACITY`] unread batches.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(WATCH_FEED_CAPACITY);
        WatchFeed {
            tx,
            stats: Arc::default(),
        }
    }

    /// Publishes `events` (nothing if empty). Never blocks: a subscriber that
    /// falls [`WATCH_FEED_CAPACITY`] batches behind is told it lagged.
    pub fn publish(&self, events: Vec<MvccEvent>) {
        if !events.is_empty() {
            // No subscriber is not an error: nobody watches.
            let _ = self.tx.send(Arc::new(events));
        }
    }

    /// A receiver of every batch published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<FeedBatch> {
        self.tx.subscribe()
    }

    /// Streams subscribed now.
    pub fn streams(&self) -> usize {
        self.tx.receiver_count()
    }
}
