//! The WAL writer thread: group commit between the Raft loop and the disk.
//!
//! It blocks for one job, then takes every job already queued, appends
//! them, issues a single `fdatasync` (if any batch needs one), and only then
//! hands the tokens back to the Raft loop, in the order the core issued
//! them. That order is what keeps held messages in: the core releases a
//! message that depends on a batch only when that batch's token comes back
//! through `Node::on_persisted`, and a token comes back only after the
//! `fdatasync` that covers its batch and every batch before it returned
//! success. A batch that needs no sync is never acknowledged ahead of an
//! earlier one that does: a group is synced if any batch in it needs it,
//! and a failed group stays queued, in order, with everything after it.
//!
//! A full disk at write time keeps the jobs and retries (see
//! `docs/adr/0008-server-storage.md`). A failed `fdatasync` is fatal whatever its
//! `errno` (see [`crate::storage::Wal::sync`]): a retried sync can succeed
//! without the lost pages, so nothing written since the last good sync is
//! ever acknowledged. Any other I/O error is fatal too.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metalraft_core::{PersistToken, SnapshotInstall, SnapshotMeta};
use tokio::sync::mpsc::UnboundedSender;

use crate::batch_sizes::Batch;
use crate::latency::{Latency, Stage};
use crate::storage::snapshot::{PreparedSnapshot, SnapshotFile};
use crate::storage::{Snapshot, Storage, StorageError, WriteBatch};

/// Most jobs merged into one group commit.
pub const MAX_JOBS_PER_GROUP: usize = 1024;
/// How often a write refused for lack of space is retried.
pub const NO_SPACE_RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// Work for the writer.
pub enum WriteJob {
    /// A persistence batch from the core.
    Persist {
        /// What to write.
        batch: WriteBatch,
        /// Whether it must be synced before acknowledgement.
        sync: bool,
        /// The core's token, returned once durable.
        token: PersistToken,
        /// A snapshot received from the leader, to install before the batch.
        /// Its file, when already written while the state machine restored
        /// ([`crate::storage::snapshot::prepare`]); committed here.
        install: Option<Box<(Snapshot, SnapshotInstall, Option<PreparedSnapshot>)>>,
        /// When the loop queued it (the `wal_handoff` stage).
        queued: Instant,
    },
    /// A state-machine snapshot taken here was saved (by the snapshot
    /// thread, `crate::raft_loop`; the writer never waits on its I/O): WAL
    /// segments below `purge_below` may go.
    SnapshotSaved {
        /// Its metadata from the core.
        meta: SnapshotMeta,
        /// Its data, in its file.
        file: SnapshotFile,
        /// Delete WAL segments whose entries are all below this index.
        purge_below: u64,
    },
    /// Taking a snapshot failed; passed on, in order, to the loop.
    SnapshotFailed {
        /// The snapshot's index.
        index: u64,
    },
}

/// What the writer reports back.
pub enum WriterEvent {
    /// These batches are durable, in order; sent at the instant given
    /// (the `wal_ack` stage).
    Persisted(Vec<PersistToken>, Instant),
    /// A snapshot taken here is durable; the loop may compact the log.
    SnapshotSaved {
        /// Its metadata.
        meta: SnapshotMeta,
        /// Its data, for sending to followers.
        file: SnapshotFile,
        /// Compact the in-memory log up to here.
        compact_to: u64,
    },
    /// Saving a snapshot taken here failed (nothing is lost: the WAL keeps
    /// every entry); the loop tells the replica, which tries again later.
    SnapshotFailed {
        /// The snapshot's index.
        index: u64,
    },
    /// Storage failed for good; the member must stop.
    Fatal(StorageError),
}

/// Shared gauges the writer maintains.
#[derive(Default)]
pub struct WriterGauges {
    /// The disk is full: writes are refused until this clears.
    pub no_space: AtomicBool,
    /// Bytes the WAL occupies.
    pub wal_bytes: AtomicU64,
    /// Number of fdatasyncs issued.
    pub syncs: AtomicU64,
    /// Total time spent in write + fdatasync, in microseconds.
    pub sync_micros: AtomicU64,
    /// Histogram of write + fdatasync durations: count per bucket of
    /// [`FSYNC_BUCKETS_SECONDS`] (non-cumulative; the last slot is +Inf).
    pub sync_buckets: [AtomicU64; FSYNC_BUCKETS_SECONDS.len() + 1],
    /// The write path's stage histograms (`crate::latency`), shared with
    /// the Raft loop and the state machine.
    pub latency: Arc<Latency>,
}

/// Upper bounds of the WAL fsync histogram (etcd's: 1 ms doubling to 8 s).
pub const FSYNC_BUCKETS_SECONDS: [f64; 14] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192,
];

/// A latency histogram over [`FSYNC_BUCKETS_SECONDS`] (etcd's disk
/// buckets), for `/metrics`.
#[derive(Debug, Default)]
pub struct DurationHistogram {
    /// Observations.
    pub count: AtomicU64,
    /// Their total, in microseconds.
    pub micros: AtomicU64,
    /// Count per bucket (non-cumulative; the last slot is +Inf).
    pub buckets: [AtomicU64; FSYNC_BUCKETS_SECONDS.len() + 1],
}

impl DurationHistogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = FSYNC_BUCKETS_SECONDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(FSYNC_BUCKETS_SECONDS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

impl WriterGauges {
    fn observe_sync(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = FSYNC_BUCKETS_SECONDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(FSYNC_BUCKETS_SECONDS.len());
        self.sync_buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.sync_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.latency.observe_wal_write(d);
    }
}

/// Runs the writer until `jobs` is closed (all senders dropped).
pub fn run(
    mut storage: Storage,
    jobs: Receiver<WriteJob>,
    events: UnboundedSender<WriterEvent>,
    gauges: Arc<WriterGauges>,
) {
    gauges
        .wal_bytes
        .store(storage.wal_bytes(), Ordering::Relaxed);
    let mut pending: Vec<WriteJob> = Vec::new();
    loop {
        if pending.is_empty() {
            match jobs.recv() {
                Ok(j) => pending.push(j),
                Err(_) => return,
            }
        }
        while pending.len() < MAX_JOBS_PER_GROUP {
            match jobs.try_recv() {
                Ok(j) => pending.push(j),
                Err(_) => break,
            }
        }
        let (tokens, saved, result) = write_group(&mut storage, &mut pending, &gauges);
        if !tokens.is_empty()
            && events
                .send(WriterEvent::Persisted(tokens, Instant::now()))
                .is_err()
        {
            return;
        }
        for ev in saved {
            if events.send(ev).is_err() {
                return;
            }
        }
        match result {
            Ok(()) => {
                gauges.no_space.store(false, Ordering::Relaxed);
            }
            Err(e) if e.is_no_space() => {
                if !gauges.no_space.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, "disk full: refusing writes (NOSPACE alarm) until space is freed");
                }
                // Keep the jobs; wait, but stop promptly if the member exits.
                match jobs.recv_timeout(NO_SPACE_RETRY_INTERVAL) {
                    Ok(j) => pending.push(j),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            Err(e) => {
                let _ = events.send(WriterEvent::Fatal(e));
                return;
            }
        }
    }
}

type GroupOutcome = (
    Vec<PersistToken>,
    Vec<WriterEvent>,
    Result<(), StorageError>,
);

/// Works through `pending` in order: each run of plain persist batches is
/// written with one sync (group commit); an install or a snapshot is handled
/// on its own. Returns the tokens of what became durable, snapshot events,
/// and the first error (the failed job and those after it stay in
/// `pending` for a retry).
fn write_group(
    storage: &mut Storage,
    pending: &mut Vec<WriteJob>,
    gauges: &WriterGauges,
) -> GroupOutcome {
    let mut tokens = Vec::new();
    let mut events = Vec::new();
    while !pending.is_empty() {
        let run = pending
            .iter()
            .position(|j| !matches!(j, WriteJob::Persist { install: None, .. }))
            .unwrap_or(pending.len());
        if run > 0 {
            let start = Instant::now();
            let mut batches = Vec::with_capacity(run);
            let mut sync = false;
            for j in &mut pending[..run] {
                if let WriteJob::Persist {
                    batch,
                    sync: s,
                    queued,
                    ..
                } = j
                {
                    if !batch.entries.is_empty() || batch.hard_state.is_some() {
                        gauges
                            .latency
                            .observe(Stage::WalHandoff, start.saturating_duration_since(*queued));
                    }
                    batches.push(std::mem::take(batch));
                    sync |= *s;
                }
            }
            let entries: usize = batches.iter().map(|b| b.entries.len()).sum();
            if let Err(e) = storage.write(&batches, sync) {
                for (j, b) in pending[..run].iter_mut().zip(batches) {
                    if let WriteJob::Persist { batch, .. } = j {
                        *batch = b;
                    }
                }
                return (tokens, events, Err(e));
            }
            if sync {
                gauges.observe_sync(start.elapsed());
                gauges.latency.batches.observe(Batch::WalSync, entries);
            }
            for j in pending.drain(..run) {
                if let WriteJob::Persist { token, .. } = j {
                    tokens.push(token);
                }
            }
            continue;
        }
        match pending.remove(0) {
            WriteJob::Persist {
                batch,
                sync,
                token,
                install: Some(mut inst),
                queued,
            } => {
                let (snap, install, prepared) = &mut *inst;
                let res = storage
                    .install_received_snapshot(snap, install, prepared.take())
                    .and_then(|()| storage.write(std::slice::from_ref(&batch), true));
                match res {
                    Ok(()) => {
                        tracing::info!(
                            index = snap.index,
                            term = snap.term,
                            "installed a snapshot from the leader"
                        );
                        tokens.push(token);
                    }
                    Err(e) => {
                        pending.insert(
                            0,
                            WriteJob::Persist {
                                batch,
                                sync,
                                token,
                                install: Some(inst),
                                queued,
                            },
                        );
                        return (tokens, events, Err(e));
                    }
                }
            }
            WriteJob::SnapshotSaved {
                meta,
                file,
                purge_below,
            } => {
                let started = Instant::now();
                let purged = storage.purge_wal_below(purge_below);
                gauges.latency.since(Stage::WalPurge, started);
                match purged {
                    Ok(()) => {
                        events.push(WriterEvent::SnapshotSaved {
                            meta,
                            file,
                            compact_to: purge_below.saturating_sub(1),
                        });
                    }
                    // A failed purge loses nothing (the WAL still has every
                    // entry); report it and carry on.
                    Err(e) => {
                        tracing::error!(error = %e, index = meta.index, "purging the WAL behind a snapshot failed");
                        events.push(WriterEvent::SnapshotFailed { index: meta.index });
                    }
                }
            }
            WriteJob::SnapshotFailed { index } => {
                events.push(WriterEvent::SnapshotFailed { index });
            }
            WriteJob::Persist { install: None, .. } => unreachable!("handled as a run above"),
        }
    }
    gauges
        .wal_bytes
        .store(storage.wal_bytes(), Ordering::Relaxed);
    (tokens, events, Ok(()))
}
