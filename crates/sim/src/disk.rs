//! The disk model of one node. Writes reach a volatile "written" state at
//! once; they become durable only when an fsync completes. A crash keeps
//! only durable data, or with a torn write also an in-order prefix of the
//! unsynced writes whose final record is cut short (a partially written
//! batch of entries). This is stricter than most real disks (which keep
//! unsynced data more often than not) and matches what a write-ahead log
//! with checksummed records recovers.
//!
//! Persist batches complete in the order they were issued; a batch that
//! does not require a sync (only the commit index changed) is acknowledged
//! without one and becomes durable with the next fsync.

use std::collections::VecDeque;

use metalraft_core::{
    Entry, HardState, Index, LogStorage, MemStorage, Persist, PersistToken, SnapshotInstall,
    SnapshotMeta, StorageError,
};

use crate::config::Time;
use crate::payload::SimPayload;
use crate::rng::Rng;

/// One record of the write-ahead stream, in write order.
#[derive(Debug)]
enum Record {
    Snapshot(SnapshotInstall, Vec<u8>),
    Entries(Vec<Entry<SimPayload>>),
    HardState(HardState),
}

#[derive(Debug)]
struct Pending {
    token: PersistToken,
    done_at: Time,
    must_sync: bool,
    /// Number of records written up to and including this batch.
    records_end: u64,
}

/// What survived a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashReport {
    /// Unsynced records lost.
    pub records_lost: u64,
    /// Unsynced records that survived a torn write (the last one possibly cut).
    pub records_kept: u64,
}

/// One node's disk.
#[derive(Debug)]
pub struct Disk {
    durable: MemStorage<SimPayload>,
    unsynced: VecDeque<Record>,
    /// Records ever written (durable or not).
    records_written: u64,
    /// Records made durable.
    records_durable: u64,
    pending: VecDeque<Pending>,
    last_done: Time,
    fsyncs: u64,
    /// A deliberately broken disk (tests only): a synced batch becomes
    /// durable only when the next one completes, so a crash loses the last
    /// acknowledged batch.
    lying: bool,
    /// `records_end` of the last completed batch (for `lying`).
    completed_end: u64,
}

impl Disk {
    /// A fresh disk holding the cluster's bootstrap state.
    /// `lying` makes it acknowledge synced batches one batch early (a
    /// deliberate defect for testing the checkers).
    pub fn bootstrap(voters: &[u64], lying: bool) -> Self {
        Self::with(MemStorage::bootstrap(voters), lying)
    }

    /// A fresh disk of a node outside the cluster: empty log, empty
    /// configuration (it learns everything from a leader once added).
    pub fn spare(lying: bool) -> Self {
        Self::with(
            MemStorage::new_with_conf(metalraft_core::ConfState::default()),
            lying,
        )
    }

    fn with(durable: MemStorage<SimPayload>, lying: bool) -> Self {
        Disk {
            durable,
            unsynced: VecDeque::new(),
            records_written: 0,
            records_durable: 0,
            pending: VecDeque::new(),
            last_done: 0,
            fsyncs: 0,
            lying,
            completed_end: 0,
        }
    }

    /// The durable contents, from which a node restarts.
    pub fn durable(&self) -> &MemStorage<SimPayload> {
        &self.durable
    }

    /// The durable hard state.
    pub fn durable_hard_state(&self) -> HardState {
        self.durable.hard_state()
    }

    /// Index of the last durable entry.
    pub fn durable_last_index(&self) -> Index {
        self.durable.last_index().unwrap_or(0)
    }

    /// Fsyncs completed.
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs
    }

    /// Writes a batch at `now` (the caller has already applied it to the
    /// node's own view of storage) and returns when it will complete.
    /// `snapshot` is the received snapshot's data when the batch installs
    /// one.
    pub fn write(
        &mut self,
        mut p: Persist<SimPayload>,
        snapshot: Option<Vec<u8>>,
        now: Time,
        fsync_us: Time,
    ) -> Time {
        let must_sync = p.must_sync();
        if let (Some(install), Some(data)) = (p.snapshot().cloned(), snapshot) {
            self.unsynced.push_back(Record::Snapshot(install, data));
            self.records_written += 1;
        }
        let hs = p.hard_state();
        let entries = p.take_entries();
        if !entries.is_empty() {
            self.unsynced.push_back(Record::Entries(entries));
            self.records_written += 1;
        }
        if let Some(hs) = hs {
            self.unsynced.push_back(Record::HardState(hs));
            self.records_written += 1;
        }
        let done_at = self
            .last_done
            .max(if must_sync { now + fsync_us } else { now });
        self.last_done = done_at;
        self.pending.push_back(Pending {
            token: p.into_token(),
            done_at,
            must_sync,
            records_end: self.records_written,
        });
        done_at
    }

    /// Completes the oldest batch if it is due at `now`: makes it (and, for
    /// a synced batch, everything written before it) durable and returns its
    /// token and whether the durable state changed.
    pub fn complete_next(&mut self, now: Time) -> Option<(PersistToken, bool)> {
        if self.pending.front()?.done_at > now {
            return None;
        }
        let p = self.pending.pop_front()?;
        let mut changed = false;
        let end = if self.lying {
            self.completed_end
        } else {
            p.records_end
        };
        self.completed_end = p.records_end;
        if p.must_sync {
            self.fsyncs += 1;
            while self.records_durable < end {
                let Some(r) = self.unsynced.pop_front() else {
                    break;
                };
                self.make_durable(r);
                self.records_durable += 1;
                changed = true;
            }
        }
        Some((p.token, changed))
    }

    /// Stores a snapshot the node took and compacts the durable log up to
    /// it, atomically and durably (a snapshot file written, synced and
    /// renamed before the log is truncated).
    ///
    /// The durable commit index is raised to the snapshot's index with it:
    /// everything in a snapshot is committed, and the core does not yet
    /// restart correctly from a snapshot above its durable commit index
    /// (core bug 4 in KNOWN_CORE_BUGS.md).
    pub fn create_snapshot(
        &mut self,
        meta: SnapshotMeta,
        data: Vec<u8>,
    ) -> Result<(), StorageError> {
        let index = meta.index;
        self.durable.create_snapshot(meta, data)?;
        let mut hs = self.durable.hard_state();
        hs.commit = hs.commit.max(index);
        self.durable.set_hard_state(hs);
        Ok(())
    }

    /// Index and data of the durable snapshot, if any.
    pub fn snapshot(&self) -> Option<(Index, &[u8])> {
        self.durable
            .snapshot()
            .map(|(m, d)| (m.index, d.as_slice()))
    }

    fn make_durable(&mut self, r: Record) {
        match r {
            Record::Snapshot(install, data) => self.durable.install_snapshot(&install, data),
            Record::Entries(e) => self.durable.append(&e),
            Record::HardState(mut hs) => {
                // Never below the durable snapshot (see `create_snapshot`).
                let snap = self.durable.snapshot().map_or(0, |(m, _)| m.index);
                hs.commit = hs.commit.max(snap);
                self.durable.set_hard_state(hs)
            }
        }
    }

    /// A crash at `now`: unsynced writes are lost, except with `torn` an
    /// in-order prefix of them, the last record cut short. Pending
    /// acknowledgements are forgotten.
    pub fn crash(&mut self, torn: bool, rng: &mut Rng) -> CrashReport {
        self.pending.clear();
        let total = self.unsynced.len() as u64;
        let mut kept = 0u64;
        if torn && total > 0 {
            let keep = rng.range(1, total + 1);
            for i in 0..keep {
                let Some(r) = self.unsynced.pop_front() else {
                    break;
                };
                let r = match r {
                    // The final record is torn: only a prefix of its entries
                    // passes the log's checksums.
                    Record::Entries(mut e) if i + 1 == keep => {
                        let n = rng.index(e.len());
                        e.truncate(n);
                        Record::Entries(e)
                    }
                    // A torn hard-state or snapshot record fails its
                    // checksum: lost.
                    Record::HardState(_) | Record::Snapshot(..) if i + 1 == keep => continue,
                    r => r,
                };
                self.make_durable(r);
                kept += 1;
            }
        }
        self.unsynced.clear();
        self.records_written = 0;
        self.records_durable = 0;
        self.completed_end = 0;
        self.last_done = 0;
        CrashReport {
            records_lost: total - kept,
            records_kept: kept,
        }
    }

    /// When the oldest pending synced batch completes: until then nothing
    /// more becomes durable, and a crash loses everything written since
    /// the last fsync (the "power loss" window). `None` if no synced batch
    /// is pending.
    pub fn next_sync_at(&self) -> Option<Time> {
        self.pending.iter().find(|p| p.must_sync).map(|p| p.done_at)
    }

    /// Whether batches are waiting for completion.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metalraft_core::{Config, Node, Role};

    use crate::payload::SimPayload;

    /// A single-voter node persisting through the disk under test.
    struct Rig {
        node: Node<SimPayload, MemStorage<SimPayload>>,
        disk: Disk,
        now: Time,
        written: Vec<Index>,
    }

    impl Rig {
        fn new(lying: bool) -> Self {
            let mut node = Node::new(Config::new(1), MemStorage::bootstrap(&[1]), 0).unwrap();
            node.campaign().unwrap();
            Rig {
                node,
                disk: Disk::bootstrap(&[1], lying),
                now: 0,
                written: Vec::new(),
            }
        }

        /// Hands out ready batches; acknowledges those that complete if `sync`.
        fn pump(&mut self, sync: bool) {
            for _ in 0..10 {
                while self.node.has_ready() {
                    let mut rd = self.node.ready().unwrap();
                    if let Some(p) = rd.take_persist() {
                        self.node.storage_mut().apply_persist(&p);
                        self.written.extend(p.entries().iter().map(|e| e.index));
                        self.disk.write(p, None, self.now, 100);
                    }
                }
                if !sync {
                    return;
                }
                self.now += 100;
                while let Some((token, _)) = self.disk.complete_next(self.now) {
                    self.node.on_persisted(token).unwrap();
                }
            }
        }

        fn propose(&mut self, op: u64) {
            assert_eq!(self.node.role(), Role::Leader);
            let p = SimPayload::from(op.to_le_bytes().to_vec());
            self.node.propose(p).unwrap();
        }
    }

    #[test]
    fn unsynced_writes_are_lost_on_crash_and_synced_ones_survive() {
        let mut rig = Rig::new(false);
        rig.pump(true);
        rig.propose(1);
        rig.pump(true);
        let synced = rig.disk.durable_last_index();
        let synced_hs = rig.disk.durable_hard_state();
        assert_eq!(synced, rig.node.persisted_index());
        assert!(
            synced_hs.term >= 2 && synced_hs.vote == Some(1),
            "{synced_hs:?}"
        );
        for op in 2..6 {
            rig.propose(op);
        }
        rig.pump(false);
        assert!(rig.disk.has_pending());
        assert!(
            rig.disk.complete_next(rig.now + 99).is_none(),
            "not before the fsync completes"
        );
        let r = rig.disk.crash(false, &mut Rng::new(1));
        assert_eq!(r.records_kept, 0);
        assert!(r.records_lost > 0);
        assert_eq!(rig.disk.durable_last_index(), synced);
        assert_eq!(rig.disk.durable_hard_state(), synced_hs);
        assert!(!rig.disk.has_pending());
    }

    #[test]
    fn torn_crash_keeps_an_in_order_prefix_only() {
        let mut lengths = std::collections::BTreeSet::new();
        for seed in 0..40 {
            let mut rig = Rig::new(false);
            rig.pump(true);
            let synced = rig.disk.durable_last_index();
            for op in 0..5 {
                rig.propose(op);
                rig.pump(false);
            }
            rig.disk.crash(true, &mut Rng::new(seed));
            let idx: Vec<u64> = rig
                .disk
                .durable()
                .all_entries()
                .iter()
                .map(|e| e.index)
                .collect();
            assert!(idx.windows(2).all(|w| w[1] == w[0] + 1), "{idx:?}");
            let last = rig.disk.durable_last_index();
            assert!(last >= synced && last <= *rig.written.iter().max().unwrap());
            lengths.insert(last);
        }
        assert!(
            lengths.len() > 2,
            "torn crashes keep prefixes of varying length: {lengths:?}"
        );
    }

    #[test]
    fn lying_disk_acknowledges_before_data_is_durable() {
        let mut rig = Rig::new(true);
        rig.pump(true);
        rig.propose(1);
        rig.pump(true);
        // Acknowledged as persisted, but the last batch is not durable.
        assert!(rig.disk.durable_last_index() < rig.node.persisted_index());
        let mut honest = Rig::new(false);
        honest.pump(true);
        honest.propose(1);
        honest.pump(true);
        assert_eq!(
            honest.disk.durable_last_index(),
            honest.node.persisted_index()
        );
    }
}
