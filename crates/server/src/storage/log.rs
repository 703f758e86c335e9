//! The in-memory copy of the durable log that the Raft core reads through
//! [`LogStorage`]. It only ever holds what the WAL holds: the writer updates
//! it after each `fdatasync`.

use std::sync::{Arc, RwLock};

use metalraft_core::{
    ConfState, Entry, HardState, InitialState, LogStorage, SnapshotInstall, SnapshotMeta,
    StorageError,
};

use super::error::StorageError as LogError;

/// The lock is poisoned: a thread panicked while changing the log, which
/// may be half-changed. Every method reports it; the member stops.
fn poisoned<T>(_: T) -> LogError {
    LogError::LogPoisoned
}

/// What the log holds.
#[derive(Debug, Default)]
struct LogState {
    hard_state: HardState,
    conf_state: ConfState,
    /// Index of `entries[0]`.
    first_index: u64,
    /// Term of entry `first_index - 1`.
    prev_term: u64,
    entries: Vec<Entry<Vec<u8>>>,
    /// The latest durable snapshot, for sending to followers.
    snapshot: Option<(SnapshotMeta, SnapshotBytes)>,
    /// The snapshot file `snapshot` replaced, still served to a follower
    /// whose transfer of it began before (its open file outlives the
    /// file's removal): without it, a new snapshot saved while a new member
    /// receives or restores the previous one restarts the transfer from
    /// byte 0 with the new one (issue 18: a second 200 MB transfer and
    /// restore). Only a file is kept, never a second snapshot in memory.
    previous: Option<(SnapshotMeta, super::snapshot::SnapshotFile)>,
}

/// Where the latest snapshot's data is read from when a follower needs it.
#[derive(Clone, Debug)]
enum SnapshotBytes {
    /// In memory (loaded at start-up, or received from the leader).
    Memory(Arc<Vec<u8>>),
    /// In its file (taken here: never held in memory whole).
    File(super::snapshot::SnapshotFile),
}

/// A cheaply clonable handle on the durable log, shared between the Raft
/// loop (reads) and the WAL writer (writes after sync).
#[derive(Clone, Debug)]
pub struct SharedLog {
    inner: Arc<RwLock<LogState>>,
}

impl SharedLog {
    /// A log holding `entries` from `first_index` on.
    pub fn new(
        hard_state: HardState,
        conf_state: ConfState,
        first_index: u64,
        prev_term: u64,
        entries: Vec<Entry<Vec<u8>>>,
    ) -> Self {
        SharedLog {
            inner: Arc::new(RwLock::new(LogState {
                hard_state,
                conf_state,
                first_index,
                prev_term,
                entries,
                snapshot: None,
                previous: None,
            })),
        }
    }

    /// Records the latest durable snapshot (its bytes are what followers
    /// receive).
    pub fn set_snapshot(&self, meta: SnapshotMeta, data: Arc<Vec<u8>>) -> Result<(), LogError> {
        let mut s = self.inner.write().map_err(poisoned)?;
        s.snapshot = Some((meta, SnapshotBytes::Memory(data)));
        s.previous = None;
        Ok(())
    }

    /// Records the latest durable snapshot, whose data followers receive
    /// from its file.
    pub fn set_snapshot_file(
        &self,
        meta: SnapshotMeta,
        file: super::snapshot::SnapshotFile,
    ) -> Result<(), LogError> {
        let mut s = self.inner.write().map_err(poisoned)?;
        let replaced = s.snapshot.replace((meta, SnapshotBytes::File(file)));
        s.previous = match replaced {
            Some((m, SnapshotBytes::File(f))) => Some((m, f)),
            _ => None,
        };
        Ok(())
    }

    /// Applies a received snapshot to the log (after it was made durable):
    /// keep the entries after it only if `keep_entries_after`.
    pub fn install(&self, install: &SnapshotInstall, data: Arc<Vec<u8>>) -> Result<(), LogError> {
        let mut s = self.inner.write().map_err(poisoned)?;
        let meta = &install.meta;
        let keep_from = (meta.index + 1).max(s.first_index);
        let kept: Vec<Entry<Vec<u8>>> = if install.keep_entries_after {
            let first = s.first_index;
            s.entries
                .iter()
                .filter(|e| e.index >= keep_from && e.index >= first)
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        s.entries = kept;
        s.first_index = meta.index + 1;
        s.prev_term = meta.term;
        s.conf_state = meta.conf_state.clone();
        s.hard_state.commit = s.hard_state.commit.max(meta.index);
        s.snapshot = Some((meta.clone(), SnapshotBytes::Memory(data)));
        s.previous = None;
        Ok(())
    }

    fn read(&self) -> Result<std::sync::RwLockReadGuard<'_, LogState>, StorageError> {
        self.inner.read().map_err(|_| StorageError::Io)
    }

    /// Records durable entries (overwriting from the first one's index) and
    /// hard state. Refuses entries that would leave a gap (a bug in the
    /// caller; nothing is changed then).
    pub fn apply_durable(
        &self,
        entries: &[Entry<Vec<u8>>],
        hard_state: Option<HardState>,
    ) -> Result<(), LogError> {
        let mut s = self.inner.write().map_err(poisoned)?;
        if let Some(head) = entries.first() {
            let next = s.first_index + s.entries.len() as u64;
            if head.index < s.first_index || head.index > next {
                return Err(LogError::Corrupt {
                    path: std::path::PathBuf::from("<memory>"),
                    offset: 0,
                    reason: format!(
                        "persistence batch starting at index {} leaves a gap in the log [{}, {next})",
                        head.index, s.first_index
                    ),
                });
            }
            let keep = (head.index - s.first_index) as usize;
            s.entries.truncate(keep);
            s.entries.extend_from_slice(entries);
        }
        if let Some(hs) = hard_state {
            s.hard_state = hs;
        }
        Ok(())
    }

    /// Drops entries up to and including `index` (covered by a snapshot).
    pub fn compact_to(&self, index: u64) -> Result<(), LogError> {
        let mut s = self.inner.write().map_err(poisoned)?;
        if index < s.first_index {
            return Ok(());
        }
        let n = ((index - s.first_index + 1) as usize).min(s.entries.len());
        if n == 0 {
            return Ok(());
        }
        s.prev_term = s.entries[n - 1].term;
        s.entries.drain(..n);
        s.first_index += n as u64;
        Ok(())
    }

    /// Bytes ([`Entry::size_bytes`]) of the entries in memory from the
    /// first one through `index`: what compacting to `index` would free.
    pub fn bytes_through(&self, index: u64) -> Result<u64, LogError> {
        let s = self.inner.read().map_err(poisoned)?;
        let n = index.saturating_add(1).saturating_sub(s.first_index);
        let n = usize::try_from(n)
            .unwrap_or(usize::MAX)
            .min(s.entries.len());
        Ok(s.entries[..n].iter().map(|e| e.size_bytes() as u64).sum())
    }

    /// Makes the log start right after a snapshot at `(index, term)`:
    /// entries up to `index` are dropped; if the log does not reach `index`
    /// (a crash between saving a received snapshot and resetting the WAL),
    /// it restarts empty after it. The commit index is raised to `index`.
    pub fn start_after_snapshot(
        &self,
        index: u64,
        term: u64,
        conf_state: ConfState,
    ) -> Result<(), LogError> {
        let mut s = self.inner.write().map_err(poisoned)?;
        let last = s.first_index + s.entries.len() as u64 - 1;
        let matches = index >= s.first_index
            && index <= last
            && s.entries[(index - s.first_index) as usize].term == term;
        if matches {
            let n = (index - s.first_index + 1) as usize;
            s.entries.drain(..n);
        } else if index + 1 != s.first_index || s.prev_term != term {
            s.entries.clear();
        }
        s.first_index = index + 1;
        s.prev_term = term;
        s.conf_state = conf_state;
        s.hard_state.commit = s.hard_state.commit.max(index);
        Ok(())
    }

    /// The stored hard state.
    pub fn hard_state(&self) -> Result<HardState, LogError> {
        Ok(self.inner.read().map_err(poisoned)?.hard_state)
    }

    /// `(first_index, last_index)` of the stored entries.
    pub fn bounds(&self) -> Result<(u64, u64), LogError> {
        let s = self.inner.read().map_err(poisoned)?;
        Ok((s.first_index, s.first_index + s.entries.len() as u64 - 1))
    }

    /// The index of the first held entry for which `pred` holds.
    pub fn find_entry(
        &self,
        pred: impl Fn(&Entry<Vec<u8>>) -> bool,
    ) -> Result<Option<u64>, LogError> {
        let s = self.inner.read().map_err(poisoned)?;
        Ok(s.entries.iter().find(|e| pred(e)).map(|e| e.index))
    }

    /// Term of entry `index`, if held.
    pub fn term_of(&self, index: u64) -> Option<u64> {
        LogStorage::<Vec<u8>>::term(self, index).ok()
    }
}

impl LogStorage<Vec<u8>> for SharedLog {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        let s = self.read()?;
        Ok(InitialState {
            hard_state: s.hard_state,
            conf_state: s.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        lo: u64,
        hi: u64,
        max_bytes: usize,
    ) -> Result<Vec<Entry<Vec<u8>>>, StorageError> {
        let s = self.read()?;
        if lo < s.first_index {
            return Err(StorageError::Compacted);
        }
        let last = s.first_index + s.entries.len() as u64;
        if hi > last || lo > hi {
            return Err(StorageError::Unavailable);
        }
        let from = (lo - s.first_index) as usize;
        let to = (hi - s.first_index) as usize;
        let mut out = Vec::new();
        let mut total = 0usize;
        for e in &s.entries[from..to] {
            total = total.saturating_add(e.size_bytes());
            if !out.is_empty() && total > max_bytes {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        let s = self.read()?;
        if index + 1 == s.first_index {
            return Ok(s.prev_term);
        }
        if index < s.first_index {
            return Err(StorageError::Compacted);
        }
        s.entries
            .get((index - s.first_index) as usize)
            .map(|e| e.term)
            .ok_or(StorageError::Unavailable)
    }

    fn first_index(&self) -> Result<u64, StorageError> {
        Ok(self.read()?.first_index)
    }

    fn last_index(&self) -> Result<u64, StorageError> {
        let s = self.read()?;
        Ok(s.first_index + s.entries.len() as u64 - 1)
    }

    fn snapshot_meta(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        Ok(self.read()?.snapshot.as_ref().map(|(m, _)| m.clone()))
    }

    fn snapshot_chunk(
        &self,
        index: u64,
        offset: u64,
        max_len: usize,
    ) -> Result<(Vec<u8>, bool), StorageError> {
        // A cheap clone (an `Arc`), so the file is read without the lock the
        // WAL writer takes to append.
        let data = {
            let s = self.read()?;
            match (s.snapshot.as_ref(), s.previous.as_ref()) {
                (Some((meta, data)), _) if meta.index == index => data.clone(),
                (_, Some((meta, file))) if meta.index == index => SnapshotBytes::File(file.clone()),
                _ => return Err(StorageError::SnapshotOutOfDate),
            }
        };
        match &data {
            SnapshotBytes::Memory(data) => {
                let start = usize::try_from(offset)
                    .map_err(|_| StorageError::Unavailable)?
                    .min(data.len());
                let end = start.saturating_add(max_len).min(data.len());
                Ok((data[start..end].to_vec(), end == data.len()))
            }
            SnapshotBytes::File(file) => {
                let chunk = file.read_at(offset, max_len).map_err(|e| {
                    tracing::error!(error = %e, index, "reading the snapshot file for a follower");
                    StorageError::Unavailable
                })?;
                let last = offset.saturating_add(chunk.len() as u64) >= file.len();
                Ok((chunk, last))
            }
        }
    }
}
