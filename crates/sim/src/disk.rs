//! The disk model of one node. Writes reach a volatile "written" state at
//! once; they become durable only when an fsync completes. A crash keeps
//! only durable data, or with a torn write also an in-order prefix of the
//! unsynced writes whose final record is cut short (a partially written
//! batch of entries). This is stricter than most real disks (which keep
//! unsynced data more often than not) and matches what a write-ahead log
//! with checksummed records recovers.
//!
//! Two optional fault models ([`DiskFaults`], swarm flags `--torn-sectors`
//! and `--bit-rot`) make the disk lose data the ways a real one does:
//!
//! - **Sector tearing**: a torn crash keeps an arbitrary subset of the
//!   512-byte sectors of the unsynced region (the drive's cache writes them
//!   back in any order), not only a prefix. The unsynced records are laid
//!   out as log frames (one per entry, hard state or snapshot) from a random
//!   offset inside the first sector; a frame survives only if every sector
//!   it touches does. Recovery keeps the frames before the first damaged
//!   one and drops the rest, including later frames that survived whole
//!   (the server's WAL reader does the same for a torn tail, ADR 0014).
//! - **Bit rot**: a frame that was already durable is damaged at rest
//!   ([`Disk::rot`]) and found when the node next starts ([`Disk::open`]):
//!   mid-log damage. As the server does (ADR 0021), the node keeps the valid
//!   prefix of its log (replayed from the frames before the damage, so an
//!   entry that a later frame had overwritten comes back), keeps its term and
//!   vote (the server keeps them in a separate record), makes a repair
//!   barrier durable (the highest index named by the damaged frame or any
//!   frame after it, or the commit index) and restarts with
//!   `Config::vote_barrier` set; the barrier record is removed when a batch
//!   that the core marks `Persist::clears_vote_barrier` becomes durable.
//!
//! Persist batches complete in the order they were issued; a batch that
//! does not require a sync (only the commit index changed) is acknowledged
//! without one and becomes durable with the next fsync.

use std::collections::VecDeque;

use metalraft_core::{
    ConfState, Entry, HardState, Index, LogStorage, MemStorage, Persist, PersistToken,
    SnapshotInstall, SnapshotMeta, StorageError,
};

use crate::config::Time;
use crate::payload::SimPayload;
use crate::rng::Rng;

/// Bytes of a disk sector: a power loss keeps or loses whole sectors.
pub const SECTOR_BYTES: u64 = 512;
/// Header bytes of one log frame (length, checksum, sequence number).
pub const FRAME_HEADER_BYTES: u64 = 24;
/// Bytes of a hard-state frame's body (term, vote, commit).
pub const HARD_STATE_FRAME_BYTES: u64 = 24;
/// Bytes of a snapshot frame's body on top of the snapshot's data.
pub const SNAPSHOT_FRAME_META_BYTES: u64 = 64;

/// The optional fault models of a disk (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskFaults {
    /// A torn crash keeps an arbitrary subset of the unsynced sectors.
    pub torn_sectors: bool,
    /// Durable frames can be damaged at rest ([`Disk::rot`]); the disk keeps
    /// the history of durable entry frames for that.
    pub bit_rot: bool,
}

/// Which sectors of the unsynced region a torn crash keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SectorLoss {
    /// Those before a random sector (written in order, cut at the crash).
    Prefix,
    /// Each with probability 1/2 (the drive cache wrote back some of them).
    Random,
    /// All but one: a later sector kept while an earlier one is lost.
    Hole,
    /// Those from a random sector on: the earlier ones are lost.
    Suffix,
}

/// What [`Disk::open`] found and repaired: mid-log damage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repair {
    /// Index of the entry the damaged frame held.
    pub damaged_index: Index,
    /// The lowest index at which the kept log no longer holds what the
    /// node held before the damage (the damaged index, or lower where a
    /// replayed frame is an entry a later frame had overwritten).
    pub lost_from: Index,
    /// The repair barrier now in force (highest index the node may have
    /// acknowledged).
    pub barrier: Index,
    /// Last index of the log kept (the valid prefix, replayed).
    pub kept_last: Index,
    /// Last durable index before the damage was found.
    pub last_before: Index,
    /// Frames dropped (the damaged one and every later one).
    pub frames_dropped: u64,
}

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
    /// The batch reaches the vote barrier: the repair record is removed
    /// once it is durable.
    clears_barrier: bool,
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
    /// With sector tearing: frames that survived whole after an earlier
    /// damaged frame, dropped by the recovery (it stops at the first gap).
    pub frames_after_gap: u64,
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
    /// The optional fault models.
    faults: DiskFaults,
    /// With bit rot: every durable entry frame in write order since the
    /// last snapshot (an overwrite is a later frame with a lower index).
    wal: Vec<Entry<SimPayload>>,
    /// The durable repair barrier record (ADR 0021), if a repair is
    /// pending.
    repair_barrier: Option<Index>,
    /// Position in `wal` of a frame damaged at rest, not yet found.
    rotten: Option<usize>,
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
            faults: DiskFaults::default(),
            wal: Vec::new(),
            repair_barrier: None,
            rotten: None,
        }
    }

    /// This disk with the optional fault models `faults`.
    pub fn with_faults(mut self, faults: DiskFaults) -> Self {
        self.faults = faults;
        self.reset_wal();
        self
    }

    /// The repair barrier record, if a repair is pending.
    pub fn repair_barrier(&self) -> Option<Index> {
        self.repair_barrier
    }

    /// Whether a frame was damaged at rest and not yet found.
    pub fn is_rotten(&self) -> bool {
        self.rotten.is_some()
    }

    /// The frame history restarts from the durable log (after a snapshot
    /// replaced the log's start).
    fn reset_wal(&mut self) {
        if self.faults.bit_rot {
            self.wal = self.durable.all_entries().to_vec();
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
        let clears_barrier = p.clears_vote_barrier();
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
            clears_barrier,
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
            if p.clears_barrier && self.records_durable >= end {
                // The server removes `member/repair` after this group's
                // fdatasync, before the token goes back to the core.
                self.repair_barrier = None;
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
        self.reset_wal();
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
            Record::Snapshot(install, data) => {
                self.durable.install_snapshot(&install, data);
                self.reset_wal();
            }
            Record::Entries(e) => {
                self.durable.append(&e);
                if self.faults.bit_rot {
                    self.wal.extend(e);
                }
            }
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
        let mut frames_after_gap = 0;
        if torn && total > 0 && self.faults.torn_sectors {
            let loss = match rng.range(0, 4) {
                0 => SectorLoss::Prefix,
                1 => SectorLoss::Random,
                2 => SectorLoss::Hole,
                _ => SectorLoss::Suffix,
            };
            (kept, frames_after_gap) = self.tear_sectors(loss, rng);
        } else if torn && total > 0 {
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
            frames_after_gap,
        }
    }

    /// A torn crash at sector granularity: lays the unsynced records out as
    /// frames, keeps the sectors `loss` says, and recovers as a WAL reader
    /// does: the frames before the first damaged one are kept, the rest
    /// dropped. Returns the records kept (the last possibly cut) and the
    /// whole frames dropped after the first gap.
    fn tear_sectors(&mut self, loss: SectorLoss, rng: &mut Rng) -> (u64, u64) {
        // (record, frame bytes), in write order.
        let mut frames: Vec<(usize, u64)> = Vec::new();
        for (ri, r) in self.unsynced.iter().enumerate() {
            match r {
                Record::Entries(e) => frames.extend(
                    e.iter()
                        .map(|e| (ri, FRAME_HEADER_BYTES + e.size_bytes() as u64)),
                ),
                Record::HardState(_) => {
                    frames.push((ri, FRAME_HEADER_BYTES + HARD_STATE_FRAME_BYTES))
                }
                Record::Snapshot(_, d) => frames.push((
                    ri,
                    FRAME_HEADER_BYTES + SNAPSHOT_FRAME_META_BYTES + d.len() as u64,
                )),
            }
        }
        // The durable data ends anywhere inside a sector; the unsynced
        // region starts there.
        let start = rng.range(0, SECTOR_BYTES);
        let end = start + frames.iter().map(|f| f.1).sum::<u64>();
        let sectors = end.div_ceil(SECTOR_BYTES);
        let written: Vec<bool> = match loss {
            SectorLoss::Prefix => {
                let cut = rng.range(0, sectors + 1);
                (0..sectors).map(|s| s < cut).collect()
            }
            SectorLoss::Random => (0..sectors).map(|_| rng.coin()).collect(),
            SectorLoss::Hole => {
                let hole = rng.range(0, sectors);
                (0..sectors).map(|s| s != hole).collect()
            }
            SectorLoss::Suffix => {
                let cut = rng.range(0, sectors + 1);
                (0..sectors).map(|s| s >= cut).collect()
            }
        };
        let mut valid = frames.len();
        let mut after_gap = 0u64;
        let mut off = start;
        for (i, &(_, bytes)) in frames.iter().enumerate() {
            let (first, last) = (off / SECTOR_BYTES, (off + bytes - 1) / SECTOR_BYTES);
            off += bytes;
            let whole = (first..=last).all(|s| written[s as usize]);
            if valid == frames.len() {
                if !whole {
                    valid = i;
                }
            } else if whole {
                after_gap += 1;
            }
        }
        // Keep the first `valid` frames, record by record.
        let mut budget = valid;
        let mut kept = 0u64;
        while budget > 0 {
            let Some(r) = self.unsynced.pop_front() else {
                break;
            };
            let r = match r {
                Record::Entries(mut e) => {
                    let n = budget.min(e.len());
                    e.truncate(n);
                    budget -= n;
                    Record::Entries(e)
                }
                r => {
                    budget -= 1;
                    r
                }
            };
            self.make_durable(r);
            kept += 1;
        }
        (kept, after_gap)
    }

    /// Damages one durable entry frame at rest (bit rot), to be found at the
    /// next [`Disk::open`]. Returns the index of the entry it held; `None`
    /// without the bit-rot model, without durable entry frames, or while
    /// earlier damage is not yet found.
    pub fn rot(&mut self, rng: &mut Rng) -> Option<Index> {
        if !self.faults.bit_rot || self.wal.is_empty() || self.rotten.is_some() {
            return None;
        }
        let f = rng.index(self.wal.len());
        Some(self.rot_frame(f))
    }

    /// Damages the durable entry frame at position `f` of the history.
    fn rot_frame(&mut self, f: usize) -> Index {
        self.rotten = Some(f);
        self.wal[f].index
    }

    /// Opens the disk for a restart. Mid-log damage left by [`Disk::rot`]
    /// is handled as the server's `Wal::open_repairing` does (ADR 0021):
    /// the barrier (the highest index named by the damaged frame or any
    /// later one, or the durable commit index, or an older barrier) is
    /// made durable first; then the damaged frame and everything after it
    /// are dropped, the log is the replay of the frames before it, the term
    /// and vote are kept, and the commit index is lowered to where the
    /// replayed log still agrees with the log before the damage.
    pub fn open(&mut self) -> Option<Repair> {
        let f = self.rotten.take()?;
        let damaged_index = self.wal[f].index;
        let hs = self.durable.hard_state();
        let named = self.wal[f..].iter().map(|e| e.index).max().unwrap_or(0);
        let barrier = named.max(hs.commit).max(self.repair_barrier.unwrap_or(0));
        self.repair_barrier = Some(barrier);
        let last_before = self.durable_last_index();
        let frames_dropped = (self.wal.len() - f) as u64;
        self.wal.truncate(f);
        let first = self.durable.first_index().unwrap_or(1);
        let mut entries: Vec<Entry<SimPayload>> = Vec::new();
        for e in &self.wal {
            entries.truncate(usize::try_from(e.index - first).unwrap_or(usize::MAX));
            entries.push(e.clone());
        }
        let common = entries
            .iter()
            .zip(self.durable.all_entries())
            .take_while(|(a, b)| a == b)
            .count() as u64;
        let mut log = MemStorage::new_with_conf(ConfState::default());
        if let Some((meta, data)) = self.durable.snapshot() {
            let install = SnapshotInstall {
                meta: meta.clone(),
                keep_entries_after: false,
            };
            log.install_snapshot(&install, data.clone());
        }
        log.append(&entries);
        log.set_hard_state(HardState {
            commit: hs.commit.min(first - 1 + common).max(first - 1),
            ..hs
        });
        self.durable = log;
        Some(Repair {
            damaged_index,
            lost_from: first + common,
            barrier,
            kept_last: self.durable_last_index(),
            last_before,
            frames_dropped,
        })
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
    use std::collections::BTreeSet;

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

    fn torn_sectors() -> DiskFaults {
        DiskFaults {
            torn_sectors: true,
            bit_rot: false,
        }
    }

    #[test]
    fn sector_tearing_keeps_a_contiguous_prefix_and_drops_frames_after_a_gap() {
        let (mut lengths, mut after_gap, mut lost_all) = (BTreeSet::new(), 0, 0);
        for seed in 0..200 {
            let mut rig = Rig::new(false);
            rig.disk = Disk::bootstrap(&[1], false).with_faults(torn_sectors());
            rig.pump(true);
            let synced = rig.disk.durable_last_index();
            let synced_hs = rig.disk.durable_hard_state();
            for op in 0..8 {
                rig.propose(op);
                rig.pump(false);
            }
            let r = rig.disk.crash(true, &mut Rng::new(seed));
            after_gap += r.frames_after_gap;
            lost_all += u64::from(r.records_kept == 0);
            let idx: Vec<u64> = rig
                .disk
                .durable()
                .all_entries()
                .iter()
                .map(|e| e.index)
                .collect();
            // Recovery stops at the first damaged frame: no gap, ever.
            assert!(idx.windows(2).all(|w| w[1] == w[0] + 1), "{idx:?}");
            let last = rig.disk.durable_last_index();
            assert!(last >= synced && last <= *rig.written.iter().max().unwrap());
            let hs = rig.disk.durable_hard_state();
            assert!(hs.term >= synced_hs.term && hs.commit <= last, "{hs:?}");
            lengths.insert(last);
        }
        assert!(lengths.len() > 3, "prefixes of varying length: {lengths:?}");
        assert!(
            after_gap > 0,
            "some crashes keep a later frame whole while an earlier one is torn"
        );
        assert!(lost_all > 0, "some crashes lose every unsynced frame");
    }

    fn entry(index: Index, term: u64) -> Entry<SimPayload> {
        Entry {
            index,
            term,
            data: metalraft_core::EntryData::Normal(SimPayload::from(vec![index as u8; 3])),
        }
    }

    fn rotting_disk() -> Disk {
        Disk::bootstrap(&[1, 2, 3], false).with_faults(DiskFaults {
            torn_sectors: false,
            bit_rot: true,
        })
    }

    #[test]
    fn rot_keeps_the_valid_prefix_and_records_a_barrier() {
        let mut d = rotting_disk();
        d.make_durable(Record::Entries((2..=9).map(|i| entry(i, 2)).collect()));
        d.make_durable(Record::HardState(HardState {
            term: 3,
            vote: Some(2),
            commit: 7,
        }));
        assert_eq!(d.open(), None, "nothing damaged");
        // Frame 5 holds entry 6 (frame 0 is the bootstrap entry).
        assert_eq!(d.rot_frame(5), 6);
        assert!(d.is_rotten());
        let r = d.open().unwrap();
        assert_eq!(
            r,
            Repair {
                damaged_index: 6,
                lost_from: 6,
                barrier: 9,
                kept_last: 5,
                last_before: 9,
                frames_dropped: 4,
            }
        );
        assert_eq!(d.repair_barrier(), Some(9));
        assert_eq!(d.durable_last_index(), 5);
        let hs = d.durable_hard_state();
        assert_eq!((hs.term, hs.vote, hs.commit), (3, Some(2), 5));
        assert_eq!(d.open(), None, "found once");
    }

    #[test]
    fn rot_replays_the_frames_before_the_damage_so_overwritten_entries_return() {
        let mut d = rotting_disk();
        d.make_durable(Record::Entries((2..=5).map(|i| entry(i, 2)).collect()));
        // A new leader overwrote 3..=5 with entries of term 3.
        d.make_durable(Record::Entries((3..=5).map(|i| entry(i, 3)).collect()));
        d.make_durable(Record::HardState(HardState {
            term: 3,
            vote: None,
            commit: 4,
        }));
        // Damage the first overwriting frame, entry 3 of term 3 (frames:
        // 1, 2..=5 of term 2, 3..=5 of term 3).
        assert_eq!(d.rot_frame(5), 3);
        let r = d.open().unwrap();
        // The log is 1, 2 and the stale 3..=5 of term 2 again: it no
        // longer holds what it held from index 3 on.
        let terms: Vec<u64> = d.durable().all_entries().iter().map(|e| e.term).collect();
        assert_eq!(terms, [1, 2, 2, 2, 2]);
        assert_eq!((r.lost_from, r.barrier, r.kept_last), (3, 5, 5));
        assert_eq!(
            d.durable_hard_state().commit,
            2,
            "commit only where the logs agree"
        );
    }

    #[test]
    fn the_barrier_record_survives_crashes_and_only_grows() {
        let mut rig = Rig::new(false);
        rig.disk = Disk::bootstrap(&[1], false).with_faults(DiskFaults {
            torn_sectors: false,
            bit_rot: true,
        });
        rig.pump(true);
        let last = rig.disk.durable_last_index();
        rig.disk.rot_frame(0);
        rig.disk.open().unwrap();
        assert_eq!(rig.disk.repair_barrier(), Some(last));
        // A crash keeps it, and damage found again never lowers it.
        rig.disk.crash(true, &mut Rng::new(3));
        assert_eq!(rig.disk.repair_barrier(), Some(last));
        rig.disk.make_durable(Record::Entries(vec![entry(1, 1)]));
        rig.disk.rot_frame(0);
        let r = rig.disk.open().unwrap();
        assert_eq!((r.barrier, rig.disk.repair_barrier()), (last, Some(last)));
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
