//! WAL segments written full of zeros before the log uses them, the next
//! one prepared on a thread of its own (ADR 0032).
//!
//! A segment reserved with `fallocate` alone is made of *unwritten*
//! extents: the first write into each block converts it, and the
//! `fdatasync` after that write must commit the conversion through the
//! filesystem's journal, which every member on the disk shares. Into blocks
//! that already hold written zeros, an append changes no metadata and its
//! `fdatasync` only flushes data. Measured on the benchmark machine (three
//! processes, each appending 8 KiB and calling `fdatasync` in a loop into
//! its own 64 MiB file): p50 0.34 ms into fallocated files, 0.20–0.23 ms
//! into zero-filled ones; p99 0.56–1.3 ms against 0.42–0.52 ms. PostgreSQL
//! fills its WAL segments with zeros for the same reason (`wal_init_zero`).
//!
//! The cost is writing each segment twice (zeros, then the log). The first
//! segment of a new WAL is filled when it is created (64 MiB took ~50 ms
//! here); later ones by a [`Preparer`] that starts once the current segment
//! is half full ([`PREPARE_AT_PERCENT`]), paced so that its flushes never
//! hold the disk for long ([`ZERO_FILL_CHUNK_BYTES`], [`ZERO_FILL_PAUSE`]).
//! The WAL writer never waits for it: a segment that is not ready when the
//! log needs it is created with `fallocate` alone, as before, and the
//! prepared one serves the rotation after.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::error::StorageError;
use super::wal::preallocate;

/// Zeros are written and, when paced, synced this many bytes at a time.
pub const ZERO_FILL_CHUNK_BYTES: usize = 1024 * 1024;
/// A preparer's pause after each synced chunk, so that the WAL's own
/// `fdatasync`s never queue behind more than one chunk's flush (64 MiB in
/// about 0.4 s on the benchmark machine's disk).
pub const ZERO_FILL_PAUSE: Duration = Duration::from_millis(5);
/// The next segment is prepared once the current one is this full.
pub const PREPARE_AT_PERCENT: u64 = 50;
/// Name of the segment being prepared in the WAL directory (never a
/// segment name, so recovery ignores it; a leftover is deleted at open).
pub const PREPARED_NAME: &str = "next-segment.zeroing";

/// Reserves `len` bytes of `file` and writes zeros over all of them, then
/// syncs the file (data and size). With `pace`, every chunk is synced and
/// followed by that pause, and `cancel` is checked between chunks.
pub(crate) fn zero_fill(
    file: &File,
    path: &Path,
    len: u64,
    pace: Option<(Duration, &AtomicBool)>,
) -> Result<(), StorageError> {
    let io = |e| StorageError::from_io(path, e);
    preallocate(file, path, len)?;
    let zeros = vec![0u8; ZERO_FILL_CHUNK_BYTES];
    let mut at = 0u64;
    while at < len {
        if let Some((_, cancel)) = pace {
            if cancel.load(Ordering::Relaxed) {
                return Err(StorageError::Io {
                    path: path.to_path_buf(),
                    source: std::io::Error::other("zero fill cancelled"),
                });
            }
        }
        let n = (len - at).min(ZERO_FILL_CHUNK_BYTES as u64) as usize;
        file.write_all_at(&zeros[..n], at).map_err(io)?;
        at += n as u64;
        if let Some((pause, _)) = pace {
            file.sync_data().map_err(io)?;
            std::thread::sleep(pause);
        }
    }
    file.sync_all().map_err(io)
}

/// The next segment, being zero-filled on its own thread.
pub(crate) struct Preparer {
    path: PathBuf,
    len: u64,
    cancel: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<File, StorageError>>>,
}

impl Preparer {
    /// Starts preparing a segment of `len` bytes in `dir`. `None` if no
    /// thread could be started (the log then creates its segments as it
    /// needs them).
    pub(crate) fn start(dir: &Path, len: u64) -> Option<Preparer> {
        let path = dir.join(PREPARED_NAME);
        let cancel = Arc::new(AtomicBool::new(false));
        let (p, c) = (path.clone(), cancel.clone());
        let thread = std::thread::Builder::new()
            .name("wal-zero-fill".into())
            .spawn(move || {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&p)
                    .map_err(|e| StorageError::from_io(&p, e))?;
                zero_fill(&file, &p, len, Some((ZERO_FILL_PAUSE, &c)))?;
                Ok(file)
            })
            .map_err(|e| tracing::warn!(error = %e, "could not start the WAL segment preparer"))
            .ok()?;
        Some(Preparer {
            path,
            len,
            cancel,
            thread: Some(thread),
        })
    }

    /// Whether the preparation has ended (successfully or not).
    pub(crate) fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// The prepared file, renamed to `to` (the directory entry not yet
    /// synced), if it is ready and holds at least `need` bytes. `Err` (and
    /// the file gone) if preparing it failed: the caller carries on without
    /// it. Call only once [`Preparer::is_finished`].
    pub(crate) fn take(
        mut self,
        need: u64,
        to: &Path,
    ) -> Result<Option<(File, u64)>, StorageError> {
        let Some(thread) = self.thread.take() else {
            return Ok(None);
        };
        let file = match thread.join() {
            Ok(Ok(file)) => file,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(StorageError::Io {
                    path: self.path.clone(),
                    source: std::io::Error::other("the WAL segment preparer panicked"),
                })
            }
        };
        if self.len < need {
            return Ok(None);
        }
        fs::rename(&self.path, to).map_err(|e| StorageError::from_io(to, e))?;
        Ok(Some((file, self.len)))
    }
}

impl Drop for Preparer {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Gone already if it was taken; otherwise not needed any more.
        let _ = fs::remove_file(&self.path);
    }
}
