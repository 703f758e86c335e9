//! Storage errors. Each names the file (and offset) it concerns.

use std::path::{Path, PathBuf};

/// A storage operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The device is full. Writes are refused until space is freed; reads and
    /// everything already acknowledged are unaffected.
    #[error("no space left on device writing {}", path.display())]
    NoSpace {
        /// The file being written.
        path: PathBuf,
    },
    /// An I/O error other than a full disk.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `fdatasync` failed. Whatever was written since the last successful
    /// sync may be lost even if a later sync succeeds, so nothing written
    /// since is acknowledged and the member stops (no retry, even for a
    /// full disk).
    #[error("fdatasync failed on {}: {source}; data written since the last successful sync may be lost, so nothing is acknowledged and the member stops", path.display())]
    SyncFailed {
        /// The file being synced.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Stored data failed its checksum or is inconsistent somewhere other
    /// than a torn final write. The member must not start on it: data that
    /// was acknowledged may be damaged.
    #[error("corrupt data in {} at offset {offset}: {reason}; refusing to start (restore this member from a healthy peer or a backup)", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the damaged record.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A record is larger than the WAL accepts.
    #[error("record of {bytes} bytes exceeds the WAL's limit of {max} bytes")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A record could not be encoded; nothing was written.
    #[error("{0}")]
    Encode(#[from] super::codec::EncodeError),
    /// The in-memory log's lock is poisoned: a thread panicked while
    /// changing it, so it may be half-changed. The member stops.
    #[error("the in-memory log's lock is poisoned (a thread panicked while changing it)")]
    LogPoisoned,
    /// A snapshot file was written against [`super::snapshot::SnapshotWriter`]'s
    /// contract (a bug in its caller); nothing was saved.
    #[error("snapshot writer: {0}")]
    SnapshotWriter(#[from] super::snapshot::WriterMisuse),
    /// A delta snapshot just written does not read back (its extents'
    /// files are gone or shorter than recorded); nothing was saved.
    #[error("delta snapshot {} does not read back: {source}", path.display())]
    Delta {
        /// The delta file.
        path: PathBuf,
        /// What is wrong.
        source: super::delta::DeltaError,
    },
    /// Another process holds the data directory.
    #[error("data directory {} is in use by another process", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
}

impl StorageError {
    /// Classifies an I/O error, mapping ENOSPC/EDQUOT to [`StorageError::NoSpace`].
    pub fn from_io(path: &Path, source: std::io::Error) -> Self {
        let no_space = matches!(source.raw_os_error(), Some(code) if code == rustix::io::Errno::NOSPC.raw_os_error() || code == rustix::io::Errno::DQUOT.raw_os_error())
            || source.kind() == std::io::ErrorKind::StorageFull;
        if no_space {
            StorageError::NoSpace {
                path: path.to_path_buf(),
            }
        } else {
            StorageError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }

    /// Whether this is a full disk (a condition that can clear).
    pub fn is_no_space(&self) -> bool {
        matches!(self, StorageError::NoSpace { .. })
    }
}
