//! The order in which the firmware's Raft task carries out a
//! `metalraft-replica` [`Output`], kept here (host-testable) rather than in
//! the task. Two persistence batches may be outstanding at once (ADR 0002:
//! tokens are acknowledged strictly in order), but the disk only ever sees
//! one at a time:
//!
//! 1. [`Pump::poll`] takes the next output of the [`Replica`] — while no
//!    batch waits to be written, and so also while the previous batch is
//!    on the disk (its flush running) — and keeps its persistence batch
//!    and its snapshot. The caller sends its messages at once (the core
//!    has already held back every message that depends on a batch not yet
//!    acknowledged: vote grants, append acknowledgements, anything sent in
//!    a term not yet durable) and answers its completions;
//! 2. [`Pump::write`] writes the kept batch — the snapshot received from
//!    the leader first, if it installs one — and its flush, but only once
//!    the batch before it was acknowledged: batch N+1's records and hard
//!    state reach the device after batch N's flush completed, so every
//!    promise about the hard-state slots, the record chain and the commit
//!    claim of [`DiskLog::persist`] holds as with one batch at a time;
//! 3. [`Pump::acknowledge`], once the device completed the flush, hands the
//!    token to `Replica::on_persisted`, which is what lets the held
//!    messages into a later output. Then it stores the snapshot the
//!    replica took, if any, and compacts the log (the core applies only
//!    durable entries, so the log already holds everything the snapshot
//!    covers).
//!
//! So while batch N's flush runs, the replica's next output — the leader's
//! appends of new entries, answers of already applied entries — goes out,
//! and batch N+1 is written the moment N is acknowledged ([`Pump::sync`]
//! does write + acknowledge for a synchronous disk).
//!
//! A batch whose write or flush failed is never acknowledged, and the pump
//! stops for good: the node cannot keep the promises those messages make.

use alloc::vec::Vec;
use core::fmt;

use metalraft_core::{Index, PersistToken};
use metalraft_replica::{Fatal, OutputOf, PersistWork, Replica, SnapshotToSave, StateMachine};

use crate::{BlockDevice, DiskLog, StoreError};

/// A replica over the firmware's disk log.
pub type DiskReplica<M, D> = Replica<M, DiskLog<D>>;

/// Why the pump stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PumpError {
    /// The replica stopped (it says why).
    Replica(Fatal),
    /// Storage failed: the batch was not acknowledged.
    Store(StoreError),
}

impl fmt::Display for PumpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PumpError::Replica(e) => write!(f, "replica stopped: {e}"),
            PumpError::Store(e) => write!(f, "storage failed: {e}"),
        }
    }
}

/// What became of the snapshot the replica took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotSaved {
    /// Stored at `index` (`bytes` of state); the log is compacted up to it.
    Stored {
        /// The snapshot's index.
        index: Index,
        /// Its size.
        bytes: usize,
    },
    /// Not stored: a snapshot already covers its index.
    Covered,
    /// Not stored: `bytes` do not fit a snapshot slot; the log keeps growing
    /// until the replica's next threshold.
    TooLarge {
        /// Its size.
        bytes: usize,
    },
}

/// What one [`Pump::sync`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Synced {
    /// The batch installed the leader's snapshot at this index.
    pub installed: Option<Index>,
    /// The snapshot taken by the replica, if there was one.
    pub snapshot: Option<SnapshotSaved>,
}

/// Carries out outputs in the order of the module doc.
#[derive(Debug, Default)]
pub struct Pump {
    /// The batch of the last output, not yet durable.
    unsynced: Option<PersistWork<Vec<u8>>>,
    /// The batch written by [`Pump::write`], waiting for
    /// [`Pump::acknowledge`]: its token, and the snapshot it installed.
    written: Option<(PersistToken, Option<Index>)>,
    /// The snapshot of the last output, stored after its batch.
    snapshot: Option<SnapshotToSave>,
    /// A batch failed or the replica stopped: nothing is ever acknowledged
    /// again.
    stopped: bool,
}

impl Pump {
    /// A pump with nothing pending.
    pub const fn new() -> Pump {
        Pump {
            unsynced: None,
            written: None,
            snapshot: None,
            stopped: false,
        }
    }

    /// Whether a batch or a snapshot waits for [`Pump::sync`].
    pub fn syncing(&self) -> bool {
        self.unsynced.is_some() || self.written.is_some() || self.snapshot.is_some()
    }

    /// Whether a written batch waits for [`Pump::acknowledge`] (its flush
    /// may still be running on the device).
    pub fn on_disk(&self) -> bool {
        self.written.is_some()
    }

    /// Log entries in the batch waiting for [`Pump::sync`] (0: none).
    pub fn pending_entries(&self) -> usize {
        self.unsynced
            .as_ref()
            .map_or(0, |w| w.persist.entries().len())
    }

    /// Takes the replica's next output, if there is one and no batch or
    /// snapshot waits to be written (a written batch waiting for
    /// [`Pump::acknowledge`] does not hold it back: its token is
    /// acknowledged before this one's), and hands it to `carry_out`, whose
    /// result it returns. Its persistence batch and snapshot are kept (the
    /// output `carry_out` sees has neither); `carry_out` sends its messages
    /// and answers its completions, best by draining them (the vectors keep
    /// their capacity for the next output); whatever it leaves is dropped.
    /// An output with a `failure` stops the pump: its batch is dropped,
    /// never written nor acknowledged.
    ///
    /// The output stays in the replica (`Replica::poll_mut`) and is worked
    /// on there: moving it by value cost a ~370-byte copy per move, four to
    /// five per output (README, "Where the emulated CPU goes").
    pub fn poll<M: StateMachine, D: BlockDevice, R>(
        &mut self,
        replica: &mut DiskReplica<M, D>,
        carry_out: impl FnOnce(&mut OutputOf<M, Vec<u8>>) -> R,
    ) -> Option<R> {
        if self.stopped || self.unsynced.is_some() || self.snapshot.is_some() {
            return None;
        }
        let out = replica.poll_mut()?;
        if out.failure.is_some() {
            self.stopped = true;
            out.persist = None;
            out.snapshot = None;
        } else {
            // Swapped in place (both of ours are `None` here).
            core::mem::swap(&mut self.unsynced, &mut out.persist);
            core::mem::swap(&mut self.snapshot, &mut out.snapshot);
        }
        let done = carry_out(out);
        // What the caller left is dropped, as with an output by value; the
        // replica builds its next output into this one.
        out.messages.clear();
        out.completions.clear();
        out.events.clear();
        out.snapshot_due = None;
        out.failure = None;
        Some(done)
    }

    /// Writes and flushes the kept batch, then acknowledges it; then stores
    /// the kept snapshot and tells the replica (`snapshot_saved`, also when
    /// it was not stored, so the next one may be taken). The disk log
    /// compacts up to the snapshot's index: the firmware keeps no entries
    /// behind a snapshot (`snapshot_catch_up_entries` = 0, so that is the
    /// snapshot's `compact_through`). On a storage error nothing is
    /// acknowledged and the pump stops.
    pub fn sync<M: StateMachine, D: BlockDevice>(
        &mut self,
        replica: &mut DiskReplica<M, D>,
    ) -> Result<Synced, PumpError> {
        self.write(replica)?;
        self.acknowledge(replica)
    }

    /// The first half of [`Pump::sync`]: writes the kept batch (its last
    /// request, typically the flush, may still be under way in a device
    /// that completes requests asynchronously) and keeps its token. The
    /// caller waits until the device completed every request, then calls
    /// [`Pump::acknowledge`] — or never, if the device reported a failure.
    /// Does nothing while the batch before is not acknowledged (the disk
    /// sees one batch at a time).
    pub fn write<M: StateMachine, D: BlockDevice>(
        &mut self,
        replica: &mut DiskReplica<M, D>,
    ) -> Result<(), PumpError> {
        if self.stopped || self.written.is_some() {
            return Ok(());
        }
        if let Some(work) = self.unsynced.take() {
            let installed = replica
                .storage_mut()
                .persist(&work.persist, work.snapshot_data.as_deref())
                .map_err(|e| self.stop(PumpError::Store(e)))?;
            let installed = if installed {
                work.persist.snapshot().map(|s| s.meta.index)
            } else {
                None
            };
            self.written = Some((work.persist.into_token(), installed));
        }
        Ok(())
    }

    /// The second half of [`Pump::sync`], once everything [`Pump::write`]
    /// wrote is durable: acknowledges the batch, then stores the kept
    /// snapshot (see [`Pump::sync`]).
    pub fn acknowledge<M: StateMachine, D: BlockDevice>(
        &mut self,
        replica: &mut DiskReplica<M, D>,
    ) -> Result<Synced, PumpError> {
        let mut done = Synced::default();
        if self.stopped {
            return Ok(done);
        }
        if let Some((token, installed)) = self.written.take() {
            done.installed = installed;
            replica
                .on_persisted(token)
                .map_err(|e| self.stop(PumpError::Replica(e)))?;
        }
        if let Some(s) = self.snapshot.take() {
            let bytes = s.data.len();
            let saved = replica.storage_mut().create_snapshot(&s.meta, &s.data);
            replica.snapshot_saved(s.meta.index);
            done.snapshot = Some(match saved {
                Ok(true) => SnapshotSaved::Stored {
                    index: s.meta.index,
                    bytes,
                },
                Ok(false) => SnapshotSaved::Covered,
                Err(StoreError::SnapshotTooLarge) => SnapshotSaved::TooLarge { bytes },
                Err(e) => return Err(self.stop(PumpError::Store(e))),
            });
        }
        Ok(done)
    }

    /// Stops the pump for good: a request the caller waited for after
    /// [`Pump::write`] failed, so the batch is never acknowledged.
    pub fn fail(&mut self, e: StoreError) -> PumpError {
        self.stop(PumpError::Store(e))
    }

    fn stop(&mut self, e: PumpError) -> PumpError {
        self.stopped = true;
        self.unsynced = None;
        self.written = None;
        self.snapshot = None;
        e
    }
}
