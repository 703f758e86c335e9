//! Boot-time recovery: the newest valid hard-state slot, the newest valid
//! snapshot slot, then the valid chain of log records from where that
//! snapshot says the log continues. A torn tail (a record started but not
//! completed, beyond the durable commit index) is discarded and counted;
//! damage at or below the commit index stops the node
//! ([`StoreError::CorruptBelowCommit`]). Every boot is recorded.

use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

use metalraft_core::{bootstrap_entry, bootstrap_hard_state, Entry, MAX_TERM_OR_INDEX};
use metalraft_fw_proto::disk::{
    ring_position, Chain, HardStateRecord, RecordError, RecordHeader, HARD_STATE_SECTORS,
    LOG_START_SECTOR, SECTOR_BYTES,
};

use super::snapshot::{load_slot, SnapshotState};
use super::{BlockDevice, DiskLog, Slot, StoreError, MAX_LOG_ENTRIES, RENUMBER_HARD_STATE_SEQ_AT};

/// What recovery found.
#[derive(Clone, Copy, Debug, Default)]
pub struct Recovered {
    /// Entries recovered after the snapshot.
    pub entries: u64,
    /// Index covered by the recovered snapshot (0: none).
    pub snapshot_index: u64,
    /// Records discarded after the valid chain (0 or 1: a torn tail).
    pub torn_records: u64,
    /// Whether the disk was fresh and got the bootstrap entry (a fresh disk
    /// of a joiner gets none).
    pub bootstrapped: bool,
}

fn read_hard_state<D: BlockDevice>(disk: &mut D) -> Result<Option<HardStateRecord>, StoreError> {
    let mut slots = [[0u8; SECTOR_BYTES]; 2];
    for (buf, sector) in slots.iter_mut().zip(HARD_STATE_SECTORS) {
        disk.read(sector, buf)?;
    }
    // A checksummed slot whose term or commit index the core refuses
    // (above `MAX_TERM_OR_INDEX`) is damage, as a bad checksum is: the core
    // would start in that term, pass the limit at its next election and
    // write records the next recovery must end the chain at (found by the
    // `fw_disk` fuzz target; regression test bug 08).
    let [a, b] = slots.map(|s| {
        HardStateRecord::decode(&s)
            .ok()
            .filter(|h| h.term <= MAX_TERM_OR_INDEX && h.commit <= MAX_TERM_OR_INDEX)
    });
    Ok(HardStateRecord::newest(a, b))
}

/// The end of the scan.
struct Scanned {
    slots: Vec<Slot>,
    next_sector: u64,
    epoch: u32,
    torn: bool,
}

/// Follows the record chain from `start`.
fn scan<D: BlockDevice>(disk: &mut D, start: u64, mut chain: Chain) -> Result<Scanned, StoreError> {
    let mut slots: Vec<Slot> = Vec::new();
    let total = disk.sectors();
    let mut sector = start;
    let mut first = [0u8; SECTOR_BYTES];
    let end = |slots, sector, chain: Chain, torn| {
        Ok(Scanned {
            slots,
            next_sector: sector,
            epoch: chain.epoch,
            torn,
        })
    };
    // The ring holds at most this many records: a bound on the walk even if
    // a damaged disk held a cycle.
    let max_records = (total.saturating_sub(LOG_START_SECTOR) as usize).min(MAX_LOG_ENTRIES);
    while slots.len() < max_records {
        let at = ring_position(sector, total);
        disk.read(at, &mut first)?;
        let h = match RecordHeader::decode(&first) {
            Ok(h) => h,
            Err(RecordError::Empty) => return end(slots, sector, chain, false),
            Err(_) => return end(slots, sector, chain, true),
        };
        let mut rec = vec![0u8; h.sectors() as usize * SECTOR_BYTES];
        disk.read(at, &mut rec)?;
        if h.verify(&rec).is_err() {
            // Started but not completed: a torn write (or damage).
            return end(slots, sector, chain, true);
        }
        // Terms and indices the core refuses are damage, whatever the
        // checksum says.
        if h.index > MAX_TERM_OR_INDEX || h.term > MAX_TERM_OR_INDEX {
            return end(slots, sector, chain, true);
        }
        // An intact record from before an overwrite or from an earlier
        // boot's discarded tail: the chain ends here. Not torn: expected.
        if !chain.accepts(&h) {
            return end(slots, sector, chain, false);
        }
        slots.push(Slot {
            term: h.term,
            sector: at as u32,
        });
        chain.push(&h);
        sector = at + h.sectors();
    }
    end(slots, sector, chain, false)
}

/// The highest epoch of any intact record anywhere in the log ring, in the
/// chain or not (0 if there is none).
///
/// A boot writes in an epoch above it, so no record from before the boot
/// can ever continue a chain of this boot's records (`Chain::accepts`
/// wants an epoch no lower than its predecessor's). The chain's own epoch
/// is not enough: an intact record can lie beyond the chain's end with a
/// higher epoch, when a power cut kept it but lost the record before it
/// (sectors of one unsynced write land in any order), or on a disk
/// written by anything else. Found by the `fw_disk` fuzz target.
fn highest_epoch<D: BlockDevice>(disk: &mut D) -> Result<u32, StoreError> {
    let total = disk.sectors();
    let mut best = 0u32;
    let mut first = [0u8; SECTOR_BYTES];
    for at in LOG_START_SECTOR..total {
        disk.read(at, &mut first)?;
        let Ok(h) = RecordHeader::decode(&first) else {
            continue;
        };
        // Only a higher epoch matters, and only if the record is intact
        // (a record never runs past the end of the disk).
        if h.epoch <= best || at + h.sectors() > total {
            continue;
        }
        let mut rec = vec![0u8; h.sectors() as usize * SECTOR_BYTES];
        disk.read(at, &mut rec)?;
        if h.verify(&rec).is_ok() {
            best = h.epoch;
        }
    }
    Ok(best)
}

/// What [`DiskLog::open`] returns: the log, what recovery found, and the
/// data of the current snapshot, if any.
pub type Opened<D> = (DiskLog<D>, Recovered, Option<Vec<u8>>);

pub(super) fn open<D: BlockDevice>(mut disk: D, members: &[u64]) -> Result<Opened<D>, StoreError> {
    let hard = read_hard_state(&mut disk)?;
    let a = load_slot(&mut disk, 0);
    let b = load_slot(&mut disk, 1);
    let snap = match (a, b) {
        (Some(a), Some(b)) => Some(if a.0.header.seq >= b.0.header.seq {
            a
        } else {
            b
        }),
        (a, b) => a.or(b),
    };
    let (base, start, chain, snap_epoch) = match &snap {
        Some((c, epoch, _)) => (
            (c.header.index, c.header.term),
            c.header.log_start_sector,
            Chain {
                epoch: *epoch,
                ..Chain::after(c.header.index, c.header.term)
            },
            *epoch,
        ),
        None => ((0, 0), LOG_START_SECTOR, Chain::default(), 0),
    };
    let scanned = scan(&mut disk, start, chain)?;
    let stale_epoch = highest_epoch(&mut disk)?;
    let mut rec = Recovered {
        entries: scanned.slots.len() as u64,
        snapshot_index: base.0,
        torn_records: u64::from(scanned.torn),
        ..Recovered::default()
    };
    let (current, data) = match snap {
        Some((c, _, data)) => (Some(c), Some(data)),
        None => (None, None),
    };
    let mut log = DiskLog {
        disk: RefCell::new(disk),
        base,
        slots: scanned.slots,
        next_sector: scanned.next_sector,
        // Every boot writes in a new epoch, above every intact record on
        // the disk, so nothing written before this boot (a torn tail
        // included) can extend the chain later.
        epoch: scanned
            .epoch
            .max(snap_epoch)
            .max(stale_epoch)
            .checked_add(1)
            .ok_or(StoreError::LogFull)?,
        hard: hard.unwrap_or_default(),
        snap: SnapshotState::recovered(current),
        record: Vec::new(),
    };
    // A fresh disk: a bootstrap voter stores the first configuration as
    // the entry at index 1; a joiner (no bootstrap voters given) keeps an
    // empty log, to be filled by the leader that adds it. Either way the
    // hard state written below marks the disk as no longer fresh, so the
    // bootstrap voters are read once.
    if hard.is_none() && log.slots.is_empty() && log.base.0 == 0 && !members.is_empty() {
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
    next.commit = next.commit.max(log.base.0);
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
    // Entries are written before the hard state of their batch and both are
    // flushed once: a disk that kept the records but lost the hard-state
    // sector leaves a log whose last term is above the stored term. The
    // node has seen that term (a leader of it wrote the entries), so it
    // resumes in it, without a vote (a vote that was not durable was never
    // sent). Otherwise it could lead an older term and append entries of
    // that term after newer ones, which the next recovery would cut off.
    let last_term = log.slots.last().map_or(log.base.1, |s| s.term);
    if last_term > next.term {
        next.term = last_term;
        next.vote = 0;
    }
    next.boots = next.boots.saturating_add(1);
    log.disk.borrow_mut().flush()?;
    if log.hard.seq >= RENUMBER_HARD_STATE_SEQ_AT {
        log.renumber_hard_state(next)?;
    } else {
        log.write_hard_state(next, true)?;
    }
    Ok((log, rec, data))
}
