//! Durable Raft storage on the virtio-blk disk: hard state in two
//! alternating checksummed slots, log entries as checksummed records (layout
//! in [`metalraft_fw_proto::disk`]). [`DiskLog`] carries out the core's
//! `Persist` batches and is the core's read-only [`LogStorage`].
//!
//! Durability of one batch: entry records are written, then the hard state,
//! then one flush (when the core says `must_sync`); a second flush between
//! the two when the new commit index covers entries of the same batch. The caller acknowledges
//! the batch to the core only after [`DiskLog::persist`] returns, so
//! messages that promise this state leave the node only after the flush.
//!
//! Bounds: at most [`MAX_LOG_ENTRIES`] entries (the RAM index costs 16 bytes
//! per entry) and the disk size. Log compaction is not implemented yet, so
//! a full log stops writes with [`StoreError::LogFull`].

mod recovery;

use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;

use metalraft_core::{
    ConfState, Entry, EntryData, HardState, Index, InitialState, LogStorage, Persist, StorageError,
    Term,
};
use metalraft_fw_proto::disk::{record_sectors, HardStateRecord, RecordHeader, SECTOR_BYTES};

use crate::platform::disk::{Disk, DiskError};

pub use recovery::Recovered;

/// Most entries the log holds (bounds the RAM index).
pub const MAX_LOG_ENTRIES: usize = 2048;

/// Where one entry lives.
#[derive(Clone, Copy, Debug)]
struct Slot {
    term: Term,
    sector: u32,
}

/// Why a write failed. Every one of them stops the node: it cannot keep
/// promises it cannot make durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The disk failed.
    Disk(DiskError),
    /// The log reached [`MAX_LOG_ENTRIES`] or the end of the disk.
    LogFull,
    /// An entry is too large for one record.
    EntryTooLarge,
    /// The batch would leave a gap or rewrite below index 1 (a caller bug).
    NotContiguous,
    /// A snapshot install was requested (not implemented).
    SnapshotUnsupported,
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
            StoreError::LogFull => write!(f, "log full ({MAX_LOG_ENTRIES} entries or end of disk)"),
            StoreError::EntryTooLarge => f.write_str("entry too large for one record"),
            StoreError::NotContiguous => f.write_str("batch not contiguous with the log"),
            StoreError::SnapshotUnsupported => f.write_str("snapshot install not supported"),
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
pub struct DiskLog {
    disk: RefCell<Disk>,
    slots: Vec<Slot>,
    /// Where the next record goes.
    next_sector: u64,
    /// Epoch of records written now (see the disk layout doc).
    epoch: u32,
    hard: HardStateRecord,
}

fn encode_payload(data: &EntryData<Vec<u8>>) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(data).map_err(|_| StoreError::EntryTooLarge)
}

impl DiskLog {
    /// Recovers from `disk` (or bootstraps a fresh disk with `members` as
    /// the initial voters). See [`recovery`] for the rules.
    pub fn open(disk: Disk, members: &[u64]) -> Result<(DiskLog, Recovered), StoreError> {
        recovery::open(disk, members)
    }

    /// Index of the last entry.
    pub fn last(&self) -> Index {
        self.slots.len() as Index
    }

    /// Boots of this disk, this one included.
    pub fn boots(&self) -> u64 {
        self.hard.boots
    }

    fn write_hard_state(&mut self, hs: HardStateRecord, sync: bool) -> Result<(), StoreError> {
        let rec = HardStateRecord {
            seq: self.hard.seq + 1,
            ..hs
        };
        let mut disk = self.disk.borrow_mut();
        disk.write(rec.sector(), &rec.encode())?;
        if sync {
            disk.flush()?;
        }
        self.hard = rec;
        Ok(())
    }

    fn append_record(&mut self, e: &Entry<Vec<u8>>) -> Result<(), StoreError> {
        if self.slots.len() >= MAX_LOG_ENTRIES {
            return Err(StoreError::LogFull);
        }
        let payload = encode_payload(&e.data)?;
        let sectors = record_sectors(payload.len());
        let disk_sectors = self.disk.borrow().sectors();
        if self.next_sector + sectors > disk_sectors || self.next_sector > u64::from(u32::MAX) {
            return Err(StoreError::LogFull);
        }
        let mut rec = vec![0u8; sectors as usize * SECTOR_BYTES];
        RecordHeader::encode_record(self.epoch, e.index, e.term, &payload, &mut rec)
            .map_err(|_| StoreError::EntryTooLarge)?;
        self.disk.borrow_mut().write(self.next_sector, &rec)?;
        // Checked above: next_sector fits in u32.
        self.slots.push(Slot {
            term: e.term,
            sector: self.next_sector as u32,
        });
        self.next_sector += sectors;
        Ok(())
    }

    /// Carries out a persistence batch: overwrite/append the entries, store
    /// the hard state, flush as required. On error nothing may be
    /// acknowledged; the node must stop.
    pub fn persist(&mut self, p: &Persist<Vec<u8>>) -> Result<(), StoreError> {
        if p.snapshot().is_some() {
            return Err(StoreError::SnapshotUnsupported);
        }
        let durable_last = self.last();
        if let Some(first) = p.entries().first() {
            let first = first.index;
            if first == 0 || first > self.last() + 1 {
                return Err(StoreError::NotContiguous);
            }
            if first <= self.last() {
                // Overwrite: new records start where the old entry `first`
                // was; a new epoch marks everything after them as stale.
                let keep = (first - 1) as usize;
                self.next_sector = u64::from(self.slots[keep].sector);
                self.slots.truncate(keep);
                self.epoch = self.epoch.checked_add(1).ok_or(StoreError::LogFull)?;
            }
            for e in p.entries() {
                if e.index != self.last() + 1 {
                    return Err(StoreError::NotContiguous);
                }
                self.append_record(e)?;
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
                commit: hs.commit,
                ..self.hard
            };
            self.write_hard_state(rec, false)?;
        }
        // One flush for entries and hard state. If power fails before it
        // completes, either part may be lost: nothing was promised yet.
        if p.must_sync() {
            self.disk.borrow_mut().flush()?;
        }
        Ok(())
    }

    fn read_entry(&self, index: Index) -> Result<Entry<Vec<u8>>, StorageError> {
        let slot = *self
            .slots
            .get((index as usize).wrapping_sub(1))
            .ok_or(StorageError::Unavailable)?;
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

impl LogStorage<Vec<u8>> for DiskLog {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        Ok(InitialState {
            hard_state: HardState {
                term: self.hard.term,
                vote: (self.hard.vote != 0).then_some(self.hard.vote),
                commit: self.hard.commit,
            },
            // The initial voters come from the bootstrap entry at index 1.
            conf_state: ConfState::default(),
        })
    }

    fn entries(
        &self,
        lo: Index,
        hi: Index,
        max_bytes: usize,
    ) -> Result<Vec<Entry<Vec<u8>>>, StorageError> {
        if lo == 0 {
            return Err(StorageError::Compacted);
        }
        if hi > self.last() + 1 || lo > hi {
            return Err(StorageError::Unavailable);
        }
        let mut out = Vec::new();
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
        if index == 0 {
            return Ok(0);
        }
        self.slots
            .get(index as usize - 1)
            .map(|s| s.term)
            .ok_or(StorageError::Unavailable)
    }

    fn first_index(&self) -> Result<Index, StorageError> {
        Ok(1)
    }

    fn last_index(&self) -> Result<Index, StorageError> {
        Ok(self.last())
    }
}
