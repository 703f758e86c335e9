//! Boot-time recovery: newest valid hard-state slot, then the valid chain
//! of log records. A torn tail (a record started but not completed, beyond
//! the durable commit index) is discarded and counted; damage at or below
//! the commit index stops the node ([`StoreError::CorruptBelowCommit`]).
//! Every boot is recorded.

use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

use metalraft_core::{bootstrap_entry, bootstrap_hard_state, Entry};
use metalraft_fw_proto::disk::{
    Chain, HardStateRecord, RecordHeader, HARD_STATE_SECTORS, LOG_START_SECTOR, SECTOR_BYTES,
};

use super::{DiskLog, Slot, StoreError, MAX_LOG_ENTRIES};
use crate::platform::disk::Disk;

/// What recovery found.
#[derive(Clone, Copy, Debug, Default)]
pub struct Recovered {
    /// Entries recovered.
    pub entries: u64,
    /// Records discarded after the valid chain (0 or 1: a torn tail).
    pub torn_records: u64,
    /// Whether the disk was fresh and got the bootstrap entry.
    pub bootstrapped: bool,
}

fn read_hard_state(disk: &mut Disk) -> Result<Option<HardStateRecord>, StoreError> {
    let mut slots = [[0u8; SECTOR_BYTES]; 2];
    for (buf, sector) in slots.iter_mut().zip(HARD_STATE_SECTORS) {
        disk.read(sector, buf)?;
    }
    Ok(HardStateRecord::newest(
        HardStateRecord::decode(&slots[0]),
        HardStateRecord::decode(&slots[1]),
    ))
}

/// Scans the record chain. Returns the slots, the next free sector, the
/// highest epoch seen and whether something non-empty ended the chain.
fn scan(disk: &mut Disk) -> Result<(Vec<Slot>, u64, u32, bool), StoreError> {
    let mut slots: Vec<Slot> = Vec::new();
    let (mut sector, mut chain) = (LOG_START_SECTOR, Chain::default());
    let mut first = [0u8; SECTOR_BYTES];
    loop {
        if sector >= disk.sectors() || slots.len() >= MAX_LOG_ENTRIES {
            return Ok((slots, sector, chain.epoch, false));
        }
        disk.read(sector, &mut first)?;
        let h = match RecordHeader::decode(&first) {
            Ok(h) => h,
            Err(metalraft_fw_proto::disk::RecordError::Empty) => {
                return Ok((slots, sector, chain.epoch, false))
            }
            Err(_) => return Ok((slots, sector, chain.epoch, true)),
        };
        if sector + h.sectors() > disk.sectors() {
            return Ok((slots, sector, chain.epoch, true));
        }
        let mut rec = vec![0u8; h.sectors() as usize * SECTOR_BYTES];
        disk.read(sector, &mut rec)?;
        if h.verify(&rec).is_err() {
            // Started but not completed: a torn write (or damage).
            return Ok((slots, sector, chain.epoch, true));
        }
        // An intact record from before an overwrite or from an earlier
        // boot's discarded tail: the chain ends here. Not torn: expected.
        if !chain.accepts(&h) {
            return Ok((slots, sector, chain.epoch, false));
        }
        slots.push(Slot {
            term: h.term,
            sector: sector as u32,
        });
        chain.push(&h);
        sector += h.sectors();
    }
}

pub(super) fn open(mut disk: Disk, members: &[u64]) -> Result<(DiskLog, Recovered), StoreError> {
    let hard = read_hard_state(&mut disk)?;
    let (slots, next_sector, epoch, torn) = scan(&mut disk)?;
    let mut rec = Recovered {
        entries: slots.len() as u64,
        torn_records: u64::from(torn),
        ..Recovered::default()
    };
    let mut log = DiskLog {
        disk: RefCell::new(disk),
        slots,
        next_sector,
        // Every boot writes in a new epoch, so nothing written before this
        // boot (a torn tail included) can extend the chain later.
        epoch: epoch.checked_add(1).ok_or(StoreError::LogFull)?,
        hard: hard.unwrap_or_default(),
    };
    if hard.is_none() && log.slots.is_empty() {
        let entry: Entry<Vec<u8>> = bootstrap_entry(members);
        log.append_record(&entry)?;
        let hs = bootstrap_hard_state();
        log.hard = HardStateRecord {
            seq: 0,
            term: hs.term,
            vote: 0,
            commit: hs.commit,
            boots: 0,
        };
        rec.bootstrapped = true;
    }
    let mut next = log.hard;
    if next.commit > log.last() {
        // Entries this node flushed and reported committed are gone: that is
        // damage, not a torn write (a torn write only loses what was never
        // flushed, hence never acknowledged). Serving on would let this node
        // vote or ack without data it promised to keep, so stop instead.
        return Err(StoreError::CorruptBelowCommit {
            index: log.last() + 1,
            commit: next.commit,
        });
    }
    next.boots += 1;
    log.disk.borrow_mut().flush()?;
    log.write_hard_state(next, true)?;
    Ok((log, rec))
}
