//! Where a backup's database is laid out before the `Snapshot` RPC sends
//! it: an anonymous file in the member's data directory when its file
//! system has room to spare, else memory.
//!
//! A database of a million keys is ~600 MB: held in memory while a client
//! downloads it, it tripled the leader's resident memory (docs/benchmarks.md,
//! "big-backup"). In an anonymous file (`O_TMPFILE`, or a name removed at
//! once) it costs page cache the kernel can reclaim, and it disappears when
//! the RPC ends, even if the member is killed. The file system must keep
//! room for the WAL, though: a backup that filled the disk would stop the
//! cluster's writes (the `NOSPACE` alarm), so the file is used only while
//! [`SPOOL_HEADROOM_BYTES`] stay free beyond the database's expected size;
//! otherwise the database is built in memory, as before.

use std::fs::File;
use std::io::{self, Cursor, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Bytes the data directory's file system must keep free beyond the
/// expected database for a backup to be spooled there: two of the WAL's
/// preallocated segments and the writes of a few minutes.
pub const SPOOL_HEADROOM_BYTES: u64 = 256 * 1024 * 1024;

/// Expected database size per byte of the store
/// ([`metalraft_kv::MvccStore::size_bytes`]): etcd's `key` bucket (every
/// version with its key) plus our bucket (the store's snapshot), each
/// about the store's size. Measured: 618.8 MB of database for a
/// 1,000,000-key store (docs/benchmarks.md, "big-backup").
pub const DB_BYTES_PER_STORE_BYTE: u64 = 2;

/// A backup's database being written, then read back to be sent.
#[derive(Debug)]
pub enum Spool {
    /// An anonymous file (no name; freed when dropped).
    File(File),
    /// Memory (no room on disk, or the file could not be made).
    Memory(Cursor<Vec<u8>>),
}

impl Spool {
    /// A spool for the database of a store of `store_bytes`: a file in
    /// `dir` if its file system has room for the expected database plus
    /// [`SPOOL_HEADROOM_BYTES`], else memory.
    pub fn for_store(dir: &Path, store_bytes: u64) -> Spool {
        let expected = store_bytes.saturating_mul(DB_BYTES_PER_STORE_BYTE);
        let free = match rustix::fs::statvfs(dir) {
            Ok(st) => st.f_bavail.saturating_mul(st.f_frsize),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot see the data directory's free space; building the backup in memory");
                return Spool::memory();
            }
        };
        if free < expected.saturating_add(SPOOL_HEADROOM_BYTES) {
            tracing::info!(
                free,
                expected,
                headroom = SPOOL_HEADROOM_BYTES,
                "little free space in the data directory; building the backup in memory"
            );
            return Spool::memory();
        }
        match tempfile::tempfile_in(dir) {
            Ok(f) => Spool::File(f),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot create a file for the backup; building it in memory");
                Spool::memory()
            }
        }
    }

    /// An empty spool in memory.
    pub fn memory() -> Spool {
        Spool::Memory(Cursor::new(Vec::new()))
    }

    /// Whether the database goes to a file.
    pub fn is_file(&self) -> bool {
        matches!(self, Spool::File(_))
    }
}

impl Write for Spool {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Spool::File(f) => f.write(buf),
            Spool::Memory(m) => m.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Spool::File(f) => f.write_all(buf),
            Spool::Memory(m) => m.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Spool::File(f) => f.flush(),
            Spool::Memory(m) => m.flush(),
        }
    }
}

impl Read for Spool {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Spool::File(f) => f.read(buf),
            Spool::Memory(m) => m.read(buf),
        }
    }
}

impl Seek for Spool {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        match self {
            Spool::File(f) => f.seek(pos),
            Spool::Memory(m) => m.seek(pos),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_when_there_is_room_memory_when_there_is_not_and_both_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = Spool::for_store(dir.path(), 1000);
        assert!(file.is_file(), "a temp dir with room for 2 KB + headroom");
        // Nothing named appears in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // More than any file system here has free.
        let mut mem = Spool::for_store(dir.path(), u64::MAX / 4);
        assert!(!mem.is_file());
        let missing = Spool::for_store(&dir.path().join("gone"), 1000);
        assert!(!missing.is_file());
        for s in [&mut file, &mut mem] {
            s.write_all(b"0123456789").unwrap();
            s.seek(SeekFrom::Start(0)).unwrap();
            s.write_all(b"ab").unwrap();
            s.seek(SeekFrom::Start(0)).unwrap();
            let mut back = String::new();
            s.read_to_string(&mut back).unwrap();
            assert_eq!(back, "ab23456789");
        }
    }
}
