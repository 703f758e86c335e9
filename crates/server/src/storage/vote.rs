//! The vote record: the term and vote of the hard state, also kept in their
//! own small file, written in two copies, so that WAL damage truncated as a
//! torn tail cannot take the vote with it (issue 20, ADR 0014).
//!
//! File `<data-dir>/member/vote`, [`FILE_BYTES`] long, created zero-filled.
//! Two slots, at offsets 0 and [`SLOT_STRIDE_BYTES`] (different sectors and
//! pages, so one torn write damages at most one):
//!
//! ```text
//! magic b"MRVOTE01" | counter: u64 | term: u64 | vote: u64 (0 = none) | crc32c(previous 32 bytes): u32
//! ```
//!
//! Each save writes the slot the newest valid copy is *not* in, with the
//! counter one higher, then `fdatasync`s. Reading takes the valid slot with
//! the higher counter. A slot of zeros was never written. Both slots
//! non-zero and invalid means the vote is lost: the member refuses to start.
//!
//! Only the term and the vote are here: they change at elections, so the
//! extra sync is rare, while the commit index changes with every batch and
//! can be relearnt from the leader.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use metalraft_core::MAX_TERM_OR_INDEX;

use super::error::StorageError;
use super::wal::{preallocate, sync_dir};

const MAGIC: &[u8; 8] = b"MRVOTE01";
/// Bytes of one encoded slot.
const SLOT_BYTES: usize = 8 + 8 + 8 + 8 + 4;
/// Distance between the two slots: a page, so they never share a sector.
const SLOT_STRIDE_BYTES: usize = 4096;
/// Size of the file.
pub(crate) const FILE_BYTES: usize = 2 * SLOT_STRIDE_BYTES;
const _: () = assert!(SLOT_BYTES <= 512, "a slot fits one sector");
/// Largest save counter accepted on read (one save per election: never reached).
const MAX_COUNTER: u64 = 1 << 62;

/// Term and vote, as the core's hard state holds them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TermVote {
    /// Current term.
    pub(crate) term: u64,
    /// Candidate voted for in `term`.
    pub(crate) vote: Option<u64>,
}

/// The open vote record.
pub(crate) struct VoteRecord {
    file: File,
    path: PathBuf,
    /// Counter of the newest valid slot (0 if none).
    counter: u64,
    /// Slot the newest valid copy is in.
    slot: usize,
    /// What the newest valid copy holds.
    current: Option<TermVote>,
}

fn encode(counter: u64, tv: TermVote) -> [u8; SLOT_BYTES] {
    let mut b = [0u8; SLOT_BYTES];
    b[..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&counter.to_le_bytes());
    b[16..24].copy_from_slice(&tv.term.to_le_bytes());
    b[24..32].copy_from_slice(&tv.vote.unwrap_or(0).to_le_bytes());
    let crc = crc32c::crc32c(&b[..32]);
    b[32..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// A slot's content: never written, valid, or damaged.
#[derive(Debug, PartialEq, Eq)]
enum Slot {
    Empty,
    Valid(u64, TermVote),
    Damaged,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn decode(b: &[u8]) -> Slot {
    assert_eq!(b.len(), SLOT_BYTES, "decode takes one slot");
    if b.iter().all(|x| *x == 0) {
        return Slot::Empty;
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&b[32..]);
    if &b[..8] != MAGIC || crc32c::crc32c(&b[..32]) != u32::from_le_bytes(crc) {
        return Slot::Damaged;
    }
    let counter = u64_at(b, 8);
    // Written counters start at 1 and grow by one per save; one from disk
    // must leave room for the next save's `+ 1`.
    if counter == 0 || counter > MAX_COUNTER {
        return Slot::Damaged;
    }
    let term = u64_at(b, 16);
    // The core refuses terms above MAX_TERM_OR_INDEX.
    if term > MAX_TERM_OR_INDEX {
        return Slot::Damaged;
    }
    let vote = u64_at(b, 24);
    Slot::Valid(
        counter,
        TermVote {
            term,
            vote: (vote != 0).then_some(vote),
        },
    )
}

impl VoteRecord {
    /// Opens (creating if needed) the record at `path` and returns what it
    /// holds (`None` if never written, or written but torn before its first
    /// sync completed).
    pub(crate) fn open(path: &Path) -> Result<VoteRecord, StorageError> {
        let io = |e| StorageError::from_io(path, e);
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        if created || file.metadata().map_err(io)?.len() < FILE_BYTES as u64 {
            // Allocated, not sparse: a later save on a full disk must not
            // fail for want of a block.
            preallocate(&file, path, FILE_BYTES as u64)?;
            file.sync_all().map_err(io)?;
            if let Some(dir) = path.parent() {
                sync_dir(dir)?;
            }
        }
        let mut buf = vec![0u8; FILE_BYTES];
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.read_exact(&mut buf).map_err(io)?;
        let slots = [
            decode(&buf[..SLOT_BYTES]),
            decode(&buf[SLOT_STRIDE_BYTES..SLOT_STRIDE_BYTES + SLOT_BYTES]),
        ];
        if slots.iter().all(|s| *s == Slot::Damaged) {
            return Err(StorageError::Corrupt {
                path: path.to_path_buf(),
                offset: 0,
                reason: "the vote record is unreadable in both copies, so the term and vote this member promised are unknown".into(),
            });
        }
        let mut rec = VoteRecord {
            file,
            path: path.to_path_buf(),
            counter: 0,
            slot: 1,
            current: None,
        };
        for (i, s) in slots.iter().enumerate() {
            if let Slot::Valid(counter, tv) = s {
                if rec.current.is_none() || *counter > rec.counter {
                    rec.counter = *counter;
                    rec.slot = i;
                    rec.current = Some(*tv);
                }
            }
        }
        Ok(rec)
    }

    /// What the newest valid copy holds.
    pub(crate) fn current(&self) -> Option<TermVote> {
        self.current
    }

    /// Makes `tv` durable in the slot not holding the newest copy.
    pub(crate) fn save(&mut self, tv: TermVote) -> Result<(), StorageError> {
        let slot = 1 - self.slot;
        let counter = self.counter + 1;
        let bytes = encode(counter, tv);
        let path = self.path.clone();
        let res = self
            .file
            .seek(SeekFrom::Start((slot * SLOT_STRIDE_BYTES) as u64))
            .and_then(|_| self.file.write_all(&bytes));
        res.map_err(|e| StorageError::from_io(&path, e))?;
        // As for the WAL, a failed sync is never retried (ADR 0008).
        self.file
            .sync_data()
            .map_err(|source| StorageError::SyncFailed { path, source })?;
        self.slot = slot;
        self.counter = counter;
        self.current = Some(tv);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip_and_every_flip_is_damage() {
        let tv = TermVote {
            term: 7,
            vote: Some(3),
        };
        let b = encode(5, tv);
        assert_eq!(decode(&b), Slot::Valid(5, tv));
        assert_eq!(decode(&[0u8; SLOT_BYTES]), Slot::Empty);
        for bit in 0..SLOT_BYTES * 8 {
            let mut f = b;
            f[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(decode(&f), Slot::Damaged, "bit {bit}");
        }
    }

    #[test]
    fn saves_alternate_and_a_torn_newest_copy_falls_back_to_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vote");
        let mut r = VoteRecord::open(&path).unwrap();
        assert_eq!(r.current(), None);
        let a = TermVote {
            term: 2,
            vote: Some(1),
        };
        let b = TermVote {
            term: 3,
            vote: None,
        };
        r.save(a).unwrap();
        r.save(b).unwrap();
        drop(r);
        assert_eq!(VoteRecord::open(&path).unwrap().current(), Some(b));
        // b went to slot 1 (a to slot 0): tear it.
        let mut img = std::fs::read(&path).unwrap();
        img[SLOT_STRIDE_BYTES + 20] ^= 0xFF;
        std::fs::write(&path, &img).unwrap();
        let mut r = VoteRecord::open(&path).unwrap();
        assert_eq!(r.current(), Some(a));
        // The next save overwrites the damaged slot, not the good one.
        r.save(b).unwrap();
        drop(r);
        let img = std::fs::read(&path).unwrap();
        assert!(matches!(decode(&img[..SLOT_BYTES]), Slot::Valid(1, t) if t == a));
        // Both copies damaged: the vote is lost, refuse.
        let mut img = img;
        img[3] ^= 1;
        img[SLOT_STRIDE_BYTES + 3] ^= 1;
        std::fs::write(&path, &img).unwrap();
        assert!(matches!(
            VoteRecord::open(&path),
            Err(StorageError::Corrupt { .. })
        ));
    }
}
