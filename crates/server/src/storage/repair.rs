//! The repair barrier record: the highest log index this member may have
//! acknowledged before mid-log WAL damage cost it part of its log (issue 20
//! part 2, ADR 0021). While the record exists the member starts in repair
//! mode: the Raft core's `Config::vote_barrier` is set from it, so the
//! member neither votes nor campaigns until a leader has confirmed its log
//! up to the barrier.
//!
//! File `<data-dir>/member/repair`, [`RECORD_BYTES`] long:
//!
//! ```text
//! magic b"MRREPR01" | barrier: u64 LE | crc32c(previous 16 bytes): u32 LE
//! ```
//!
//! It is written to `repair.tmp`, synced, renamed and the directory synced,
//! so a crash leaves the old record or the new one, never a torn one; it
//! is removed (and the directory synced) when the core clears the barrier.
//! A record that fails its checksum was damaged at rest: opening refuses to
//! start rather than guess a barrier (the safe direction).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use metalraft_core::MAX_TERM_OR_INDEX;

use super::error::StorageError;
use super::wal::sync_dir;

const MAGIC: &[u8; 8] = b"MRREPR01";
/// Bytes of the encoded record.
pub(crate) const RECORD_BYTES: usize = 8 + 8 + 4;
/// Name of the record inside `member/`.
pub(crate) const FILE_NAME: &str = "repair";
const TMP_NAME: &str = "repair.tmp";

fn encode(barrier: u64) -> [u8; RECORD_BYTES] {
    let mut b = [0u8; RECORD_BYTES];
    b[..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&barrier.to_le_bytes());
    let crc = crc32c::crc32c(&b[..16]);
    b[16..].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Option<u64> {
    if b.len() != RECORD_BYTES || &b[..8] != MAGIC {
        return None;
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&b[16..]);
    if crc32c::crc32c(&b[..16]) != u32::from_le_bytes(crc) {
        return None;
    }
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[8..16]);
    let barrier = u64::from_le_bytes(v);
    (barrier <= MAX_TERM_OR_INDEX).then_some(barrier)
}

/// The repair record of one member directory.
#[derive(Debug)]
pub(crate) struct RepairRecord {
    dir: PathBuf,
    barrier: Option<u64>,
}

impl RepairRecord {
    /// Reads the record in `member_dir` (none if absent). A leftover
    /// `repair.tmp` is an interrupted save whose rename never happened: it
    /// is deleted.
    pub(crate) fn open(member_dir: &Path) -> Result<RepairRecord, StorageError> {
        let path = member_dir.join(FILE_NAME);
        let tmp = member_dir.join(TMP_NAME);
        if tmp.exists() {
            fs::remove_file(&tmp).map_err(|e| StorageError::from_io(&tmp, e))?;
        }
        let barrier = match fs::read(&path) {
            Ok(b) => Some(decode(&b).ok_or_else(|| StorageError::Corrupt {
                path: path.clone(),
                offset: 0,
                reason: "the repair barrier record fails its checksum, so the highest index this member may have acknowledged is unknown".into(),
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(StorageError::from_io(&path, e)),
        };
        Ok(RepairRecord {
            dir: member_dir.to_path_buf(),
            barrier,
        })
    }

    /// The barrier in force, if any.
    pub(crate) fn barrier(&self) -> Option<u64> {
        self.barrier
    }

    /// Raises the barrier to at least `barrier` and makes it durable before
    /// returning (a barrier only ever grows until it is cleared).
    pub(crate) fn raise(&mut self, barrier: u64) -> Result<u64, StorageError> {
        let barrier = self.barrier.map_or(barrier, |b| b.max(barrier));
        let tmp = self.dir.join(TMP_NAME);
        let path = self.dir.join(FILE_NAME);
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e| StorageError::from_io(&p, e)
        };
        let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&encode(barrier)).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&self.dir)?;
        self.barrier = Some(barrier);
        Ok(barrier)
    }

    /// Removes the record durably: the core cleared the barrier and the
    /// batch that reached it is durable.
    pub(crate) fn clear(&mut self) -> Result<(), StorageError> {
        if self.barrier.is_none() {
            return Ok(());
        }
        let path = self.dir.join(FILE_NAME);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::from_io(&path, e)),
        }
        sync_dir(&self.dir)?;
        self.barrier = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_persists_and_only_grows_and_clear_removes() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = RepairRecord::open(dir.path()).unwrap();
        assert_eq!(r.barrier(), None);
        assert_eq!(r.raise(40).unwrap(), 40);
        assert_eq!(r.raise(10).unwrap(), 40);
        assert_eq!(RepairRecord::open(dir.path()).unwrap().barrier(), Some(40));
        r.clear().unwrap();
        assert_eq!(RepairRecord::open(dir.path()).unwrap().barrier(), None);
    }

    #[test]
    fn damaged_record_refuses_and_leftover_tmp_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(TMP_NAME), b"half").unwrap();
        assert_eq!(RepairRecord::open(dir.path()).unwrap().barrier(), None);
        assert!(!dir.path().join(TMP_NAME).exists());
        let mut b = encode(7);
        b[9] ^= 1;
        fs::write(dir.path().join(FILE_NAME), b).unwrap();
        let e = RepairRecord::open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("repair barrier record"), "{e}");
    }
}
