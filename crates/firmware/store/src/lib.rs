//! Durable Raft storage of the firmware on a block device: hard state in two
//! alternating checksummed slots, snapshots in two alternating slots, log
//! entries as checksummed records in a ring (layout in
//! [`metalraft_fw_proto::disk`]). [`DiskLog`] carries out the core's
//! `Persist` batches and is the core's read-only [`LogStorage`].
//!
//! Durability of one batch: entry records are written, then the hard state,
//! then one flush (when the core says `must_sync`); a second flush between
//! the two when the new commit index covers entries of the same batch, and
//! one after the first record of an overwrite of more than one entry (it
//! replaces a record in place; see [`DiskLog::persist`]). The
//! caller acknowledges the batch to the core only after [`DiskLog::persist`]
//! returns, so messages that promise this state leave the node only after
//! the flush.
//!
//! Bounds: the ring (disk size minus the fixed areas) and
//! [`MAX_LOG_ENTRIES`] entries after the snapshot (the RAM index costs 16
//! bytes per entry). Snapshots ([`snapshot`]) compact the log, so both stay
//! bounded while the state machine fits [`MAX_SNAPSHOT_BYTES`].

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

extern crate alloc;

mod block;
mod departures;
mod pump;
mod recovery;
mod snapshot;

use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;

use metalraft_core::{
    Entry, EntryData, HardState, Index, InitialState, LogStorage, Persist, SnapshotMeta,
    StorageError, Term,
};
use metalraft_fw_proto::disk::{
    record_sectors, ring_position, HardStateRecord, RecordHeader, LOG_START_SECTOR,
    MAX_RECORD_PAYLOAD_BYTES, MAX_SNAPSHOT_BYTES, RECORD_HEADER_BYTES, SECTOR_BYTES,
};

pub use block::{BlockDevice, DiskError};
pub use departures::{believe_notice, Departures};
pub use pump::{DiskReplica, Pump, PumpError, SnapshotSaved, Synced};
pub use recovery::{Opened, Recovered};

/// Most entries the log holds after the snapshot (bounds the RAM index).
pub const MAX_LOG_ENTRIES: usize = 2048;
/// Highest epoch a record or a snapshot header is written in. Every boot
/// takes an epoch above every one on the disk, so a disk holding a record
/// of epoch `u32::MAX` could never boot again; at this bound writes are
/// refused (`LogFull`) instead. (Four billion boots or overwrites; reached
/// only by a disk whose epochs were damaged or crafted, which the fuzz
/// target `fw_disk` found.)
pub const LAST_WRITABLE_EPOCH: u32 = u32::MAX - 1;

/// A recovered hard-state sequence number at or above this one is
/// renumbered by the boot (written again under small numbers). Only a
/// damaged or crafted slot holds one (2^63 writes do not happen), and
/// without it such a disk would run out of numbers: every boot writes the
/// hard state once more, so a disk near `u64::MAX` would boot a last time
/// and then never again. (Found by the fuzz target `fw_disk`.)
pub const RENUMBER_HARD_STATE_SEQ_AT: u64 = 1 << 63;

/// Entries [`LogStorage::entries`] makes room for at once (a typical
/// append or apply batch holds fewer; a larger one grows from there).
const ENTRIES_PRESIZE: usize = 16;

/// Where one entry lives.
#[derive(Clone, Copy, Debug)]
struct Slot {
    term: Term,
    sector: u32,
}

/// Why a write failed. Except [`StoreError::SnapshotTooLarge`] (a snapshot
/// is then simply not taken) every one stops the node: it cannot keep
/// promises it cannot make durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The disk failed.
    Disk(DiskError),
    /// The log reached [`MAX_LOG_ENTRIES`] or filled the ring.
    LogFull,
    /// An entry is too large for one record.
    EntryTooLarge,
    /// The batch would leave a gap or rewrite compacted entries (a caller bug).
    NotContiguous,
    /// A snapshot above [`MAX_SNAPSHOT_BYTES`], or its metadata too large.
    SnapshotTooLarge,
    /// A snapshot install without its data, or stored snapshot data that
    /// does not verify.
    SnapshotMismatch,
    /// The core refused to go on (it reported why in the log).
    Core,
    /// Recovery found the log damaged at `index`, at or below the durable
    /// commit index `commit`: data this node acknowledged is gone.
    CorruptBelowCommit {
        /// First missing or damaged index.
        index: u64,
        /// The durable commit index.
        commit: u64,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Disk(e) => write!(f, "disk: {e}"),
            StoreError::LogFull => write!(f, "log full ({MAX_LOG_ENTRIES} entries or the ring)"),
            StoreError::EntryTooLarge => f.write_str("entry too large for one record"),
            StoreError::NotContiguous => f.write_str("batch not contiguous with the log"),
            StoreError::SnapshotTooLarge => {
                write!(f, "snapshot above {MAX_SNAPSHOT_BYTES} bytes")
            }
            StoreError::SnapshotMismatch => f.write_str("snapshot data missing or damaged"),
            StoreError::Core => f.write_str("the Raft core stopped"),
            StoreError::CorruptBelowCommit { index, commit } => write!(
                f,
                "log damaged at index {index}, at or below the commit index {commit}: \
                 acknowledged data lost; refusing to serve (replace this node's disk)"
            ),
        }
    }
}

impl From<DiskError> for StoreError {
    fn from(e: DiskError) -> Self {
        StoreError::Disk(e)
    }
}

/// The log and hard state on disk, with an index of the log in RAM.
pub struct DiskLog<D> {
    disk: RefCell<D>,
    /// Index and term of the last entry covered by the snapshot (0, 0 without).
    base: (Index, Term),
    /// Entries `base.0 + 1 ..`.
    slots: Vec<Slot>,
    /// Where the next record goes (before [`ring_position`]).
    next_sector: u64,
    /// Epoch of records written now (see the disk layout doc).
    epoch: u32,
    hard: HardStateRecord,
    snap: snapshot::SnapshotState,
    /// Reused for every record appended: the entry is encoded straight
    /// into it, after the header. Allocating a payload and a record anew
    /// per entry cost a handful of heap round trips each (the encoding
    /// grew by doubling) and a copy, on the hot path of every write
    /// (README, "Where the emulated CPU goes"). Holds
    /// [`RECORD_BUFFER_BYTES`] once the first entry was written.
    record: Vec<u8>,
}

/// The largest record: header and the largest payload (whole sectors).
const RECORD_BUFFER_BYTES: usize = RECORD_HEADER_BYTES + MAX_RECORD_PAYLOAD_BYTES;

impl<D: BlockDevice> DiskLog<D> {
    /// Recovers from `disk`. A fresh disk gets the bootstrap entry with
    /// `members` as the initial voters, or, if `members` is empty (a node
    /// joining a running cluster), an empty log. `members` is read only for
    /// a fresh disk: a used one has its membership in its log and snapshot.
    /// See [`recovery`] for the rules. Also returns the data of the current
    /// snapshot, if any, to restore the state machine.
    pub fn open(disk: D, members: &[u64]) -> Result<Opened<D>, StoreError> {
        recovery::open(disk, members)
    }

    /// Index of the last entry.
    pub fn last(&self) -> Index {
        self.base.0 + self.slots.len() as Index
    }

    /// Index covered by the current snapshot (0: none).
    pub fn snapshot_index(&self) -> Index {
        self.base.0
    }

    /// Boots of this disk, this one included.
    pub fn boots(&self) -> u64 {
        self.hard.boots
    }

    fn slot(&self, index: Index) -> Option<Slot> {
        let i = index.checked_sub(self.base.0 + 1)?;
        self.slots.get(usize::try_from(i).ok()?).copied()
    }

    /// Sector of the first live record (the write head when the log is empty).
    fn first_live_sector(&self) -> u64 {
        self.slots
            .first()
            .map_or(self.next_sector, |s| u64::from(s.sector))
    }

    fn write_hard_state(&mut self, hs: HardStateRecord, sync: bool) -> Result<(), StoreError> {
        // A damaged but checksummed slot may hold any sequence number; a
        // wrapped one would make the older slot win at the next boot.
        let seq = self.hard.seq.checked_add(1).ok_or(StoreError::LogFull)?;
        self.write_hard_state_as(hs, seq, sync)
    }

    /// The boot's hard-state write when the recovered sequence number is at
    /// or above [`RENUMBER_HARD_STATE_SEQ_AT`]: `hs` goes under a small
    /// number into the other slot first, then under the next one into the
    /// current slot, each flushed. Until the second write lands the current
    /// slot keeps the highest number, so a crash in between recovers the
    /// state from before this boot (as a crash before the boot's write
    /// would); a torn second write leaves the first, which holds `hs`.
    fn renumber_hard_state(&mut self, hs: HardStateRecord) -> Result<(), StoreError> {
        // The first number's parity differs from the current one's: the
        // other slot.
        let first = 2 + (self.hard.seq.wrapping_add(1) % 2);
        self.write_hard_state_as(hs, first, true)?;
        self.write_hard_state_as(hs, first + 1, true)
    }

    fn write_hard_state_as(
        &mut self,
        hs: HardStateRecord,
        seq: u64,
        sync: bool,
    ) -> Result<(), StoreError> {
        let rec = HardStateRecord { seq, ..hs };
        let mut disk = self.disk.borrow_mut();
        disk.write(rec.sector(), &rec.encode())?;
        if sync {
            disk.flush()?;
        }
        self.hard = rec;
        Ok(())
    }

    fn append_record(&mut self, e: &Entry<Vec<u8>>) -> Result<(), StoreError> {
        if self.slots.len() >= MAX_LOG_ENTRIES || self.epoch > LAST_WRITABLE_EPOCH {
            return Err(StoreError::LogFull);
        }
        if self.record.len() != RECORD_BUFFER_BYTES {
            self.record.resize(RECORD_BUFFER_BYTES, 0);
        }
        let payload_len = postcard::to_slice(&e.data, &mut self.record[RECORD_HEADER_BYTES..])
            .map_err(|_| StoreError::EntryTooLarge)?
            .len();
        let sectors = record_sectors(payload_len);
        let disk_sectors = self.disk.borrow().sectors();
        let at = ring_position(self.next_sector, disk_sectors);
        // The ring is full if the record would run into the first live one.
        // Writing at `start` itself (the ring wrapped right onto it) is that
        // too: live records always lie ahead of the write head otherwise.
        let start = self.first_live_sector();
        let wrapped_behind_start = !self.slots.is_empty() && at <= start;
        if (wrapped_behind_start && at + sectors > start) || at > u64::from(u32::MAX) {
            return Err(StoreError::LogFull);
        }
        let record = &mut self.record[..sectors as usize * SECTOR_BYTES];
        RecordHeader::seal_record(self.epoch, e.index, e.term, payload_len, record)
            .map_err(|_| StoreError::EntryTooLarge)?;
        self.disk.borrow_mut().write(at, record)?;
        // Checked above: `at` fits in u32.
        self.slots.push(Slot {
            term: e.term,
            sector: at as u32,
        });
        self.next_sector = at + sectors;
        Ok(())
    }

    /// Carries out a persistence batch: install a received snapshot (its
    /// reassembled bytes are `snapshot_data`), overwrite/append the
    /// entries, store the hard state, flush as required. On error nothing
    /// may be acknowledged; the node must stop. Returns whether a snapshot
    /// was installed.
    pub fn persist(
        &mut self,
        p: &Persist<Vec<u8>>,
        snapshot_data: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let installed = match p.snapshot() {
            Some(install) => {
                let data = snapshot_data.ok_or(StoreError::SnapshotMismatch)?;
                self.install_snapshot(install, data)?;
                true
            }
            None => false,
        };
        let durable_last = self.last();
        if let Some(first) = p.entries().first() {
            let first = first.index;
            if first <= self.base.0 || first > self.last() + 1 {
                return Err(StoreError::NotContiguous);
            }
            let overwrite = first <= self.last();
            if overwrite {
                // Overwrite: new records start where the old entry `first`
                // was; a new epoch marks everything after them as stale.
                let keep = (first - self.base.0 - 1) as usize;
                self.next_sector = u64::from(self.slots[keep].sector);
                self.slots.truncate(keep);
                self.epoch = self.epoch.checked_add(1).ok_or(StoreError::LogFull)?;
            }
            for (i, e) in p.entries().iter().enumerate() {
                if e.index != self.last() + 1 {
                    return Err(StoreError::NotContiguous);
                }
                self.append_record(e)?;
                if overwrite && i == 0 && p.entries().len() > 1 {
                    // The first record of an overwrite lies where the
                    // replaced entry's record was. If power failed with it
                    // lost (the sector still holding the replaced record,
                    // intact and in the chain) but a later new record kept,
                    // recovery would chain the later record (newer epoch,
                    // next index) after the replaced entry: a log this node
                    // never had, breaking Log Matching. So it is durable
                    // before any record that could follow it
                    // (`tests/power_loss.rs`).
                    self.disk.borrow_mut().flush()?;
                }
            }
        }
        if let Some(hs) = p.hard_state() {
            if !p.entries().is_empty() && hs.commit > durable_last {
                // The commit index covers entries of this very batch: make
                // them durable first, so a disk that reorders writes cannot
                // keep the commit claim without the entries.
                self.disk.borrow_mut().flush()?;
            }
            let rec = HardStateRecord {
                term: hs.term,
                vote: hs.vote.unwrap_or(0),
                commit: hs.commit.max(self.base.0),
                ..self.hard
            };
            self.write_hard_state(rec, false)?;
        }
        // One flush for entries and hard state. If power fails before it
        // completes, either part may be lost: nothing was promised yet.
        if p.must_sync() || installed {
            self.disk.borrow_mut().flush()?;
        }
        Ok(installed)
    }

    fn read_entry(&self, index: Index) -> Result<Entry<Vec<u8>>, StorageError> {
        let slot = self.slot(index).ok_or(StorageError::Unavailable)?;
        let mut disk = self.disk.borrow_mut();
        let mut first = [0u8; SECTOR_BYTES];
        disk.read(u64::from(slot.sector), &mut first)
            .map_err(|_| StorageError::Io)?;
        let h = RecordHeader::decode(&first).map_err(|_| StorageError::Io)?;
        if h.index != index || h.term != slot.term {
            return Err(StorageError::Io);
        }
        let mut rec = vec![0u8; h.sectors() as usize * SECTOR_BYTES];
        disk.read(u64::from(slot.sector), &mut rec)
            .map_err(|_| StorageError::Io)?;
        let payload = h.verify(&rec).map_err(|_| StorageError::Io)?;
        let data: EntryData<Vec<u8>> =
            postcard::from_bytes(payload).map_err(|_| StorageError::Io)?;
        Ok(Entry {
            term: h.term,
            index,
            data,
        })
    }
}

impl<D: BlockDevice> LogStorage<Vec<u8>> for DiskLog<D> {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        Ok(InitialState {
            hard_state: HardState {
                term: self.hard.term,
                vote: (self.hard.vote != 0).then_some(self.hard.vote),
                commit: self.hard.commit,
            },
            // Without a snapshot the initial voters come from the bootstrap
            // entry at index 1.
            conf_state: self
                .snap
                .meta()
                .map(|m| m.conf_state.clone())
                .unwrap_or_default(),
        })
    }

    fn entries(
        &self,
        lo: Index,
        hi: Index,
        max_bytes: usize,
    ) -> Result<Vec<Entry<Vec<u8>>>, StorageError> {
        if lo <= self.base.0 {
            return Err(StorageError::Compacted);
        }
        if hi > self.last() + 1 || lo > hi {
            return Err(StorageError::Unavailable);
        }
        // Sized for the usual range up front (growing by doubling
        // reallocates and copies); `max_bytes` may cut it shorter.
        let mut out = Vec::with_capacity(((hi - lo) as usize).min(ENTRIES_PRESIZE));
        let mut total = 0usize;
        for i in lo..hi {
            let e = self.read_entry(i)?;
            total = total.saturating_add(e.size_bytes());
            if !out.is_empty() && total > max_bytes {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        if index == self.base.0 {
            return Ok(self.base.1);
        }
        if index < self.base.0 {
            return Err(StorageError::Compacted);
        }
        self.slot(index)
            .map(|s| s.term)
            .ok_or(StorageError::Unavailable)
    }

    fn first_index(&self) -> Result<Index, StorageError> {
        Ok(self.base.0 + 1)
    }

    fn last_index(&self) -> Result<Index, StorageError> {
        Ok(self.last())
    }

    fn snapshot_meta(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        Ok(self.snap.meta().cloned())
    }

    fn snapshot_chunk(
        &self,
        index: Index,
        offset: u64,
        max_len: usize,
    ) -> Result<(Vec<u8>, bool), StorageError> {
        self.read_snapshot_chunk(index, offset, max_len)
    }
}

const _: () = assert!(LOG_START_SECTOR > 0);
