//! The read-only view of durable log storage the core needs, and an
//! in-memory implementation for tests and the simulator.
//!
//! The core never writes storage. Writes are instructions in a
//! [`crate::Persist`] batch that the application carries out, makes durable
//! and acknowledges with [`crate::Node::on_persisted`]. Until then the core
//! serves the new entries from memory, so storage only ever has to answer
//! for what was acknowledged (plus whatever the application wrote early).

use alloc::vec::Vec;

use crate::error::StorageError;
use crate::types::{ConfState, Entry, HardState, Index, InitialState, Payload, SnapshotMeta, Term};

/// Read access to the durable log.
///
/// Indices: entries `first_index()..=last_index()` are readable, and
/// `term(first_index() - 1)` must also answer (the term of the last compacted
/// entry, or 0 for an empty log with `first_index() == 1`).
///
/// # Errors
///
/// Any error stops the node (see [`StorageError`]): the core does not retry,
/// because a read failure of durable data cannot be fixed by asking again.
/// [`StorageError::Compacted`] and [`StorageError::Unavailable`] signal
/// contract violations by the caller, [`StorageError::Io`] a failed medium.
pub trait LogStorage<P> {
    /// The durable hard state and configuration, read once at start.
    fn initial_state(&self) -> Result<InitialState, StorageError>;
    /// Entries `[lo, hi)`, stopping early once their total
    /// [`Entry::size_bytes`] exceeds `max_bytes` (at least one entry is
    /// returned when `lo < hi`).
    fn entries(
        &self,
        lo: Index,
        hi: Index,
        max_bytes: usize,
    ) -> Result<Vec<Entry<P>>, StorageError>;
    /// Term of the entry at `index` (`first_index() - 1 ..= last_index()`).
    fn term(&self, index: Index) -> Result<Term, StorageError>;
    /// Index of the first available entry.
    fn first_index(&self) -> Result<Index, StorageError>;
    /// Index of the last stored entry (`first_index() - 1` when empty).
    fn last_index(&self) -> Result<Index, StorageError>;
    /// The latest durable snapshot, if any. The leader sends it to followers
    /// that need entries it has compacted.
    fn snapshot_meta(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        Ok(None)
    }
    /// Up to `max_len` bytes of the snapshot covering `index`, from
    /// `offset`, and whether they reach its end. If that snapshot has been
    /// replaced, return [`StorageError::SnapshotOutOfDate`].
    fn snapshot_chunk(
        &self,
        index: Index,
        offset: u64,
        max_len: usize,
    ) -> Result<(Vec<u8>, bool), StorageError> {
        let _ = (index, offset, max_len);
        Err(StorageError::SnapshotOutOfDate)
    }
}

/// A [`LogStorage`] in memory, for tests and the simulator. It is "durable"
/// for as long as the value lives: the simulator models crashes by keeping
/// a separate copy of what was synced.
#[derive(Clone, Debug)]
pub struct MemStorage<P> {
    hard_state: HardState,
    conf_state: ConfState,
    /// Index of `entries[0]`.
    first: Index,
    /// Term of entry `first - 1`.
    prev_term: Term,
    entries: Vec<Entry<P>>,
    snapshot: Option<(SnapshotMeta, Vec<u8>)>,
}

impl<P: Payload> MemStorage<P> {
    /// A new cluster member's log: the bootstrap entry adding `voters`
    /// (see [`crate::bootstrap_entry`]).
    pub fn bootstrap(voters: &[crate::NodeId]) -> Self {
        let mut s = Self::new_with_conf(ConfState::default());
        s.append(&[crate::bootstrap_entry(voters)]);
        s.hard_state = crate::bootstrap_hard_state();
        s
    }

    /// An empty log whose base configuration is `conf_state` (as if a
    /// snapshot with that configuration had been installed). Members that
    /// join an existing cluster use `ConfState::default()`.
    pub fn new_with_conf(conf_state: ConfState) -> Self {
        MemStorage {
            hard_state: HardState::default(),
            conf_state,
            first: 1,
            prev_term: 0,
            entries: Vec::new(),
            snapshot: None,
        }
    }

    /// Stores `hs`.
    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    /// The stored hard state.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// Appends `entries`, first deleting any stored entries at or after
    /// `entries[0].index` (the overwrite rule of [`crate::Persist::entries`]).
    ///
    /// # Panics
    ///
    /// If the entries are not contiguous or would leave a gap after the
    /// stored log: that is a bug in the caller, not an operating condition.
    pub fn append(&mut self, entries: &[Entry<P>]) {
        let Some(head) = entries.first() else { return };
        assert!(head.index >= self.first, "append below the first index");
        let last = self.first + self.entries.len() as u64;
        assert!(head.index <= last, "append would leave a gap");
        self.entries.truncate((head.index - self.first) as usize);
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.index, head.index + i as u64, "entries not contiguous");
            self.entries.push(e.clone());
        }
    }

    /// Carries out a persistence batch: overwrites/appends its entries and
    /// stores its hard state. The caller then acknowledges it. A batch that
    /// carries a snapshot ([`crate::Persist::snapshot`]) needs
    /// [`install_snapshot`](Self::install_snapshot) with the received chunks'
    /// data first: this method does not install it.
    pub fn apply_persist(&mut self, persist: &crate::Persist<P>) {
        self.append(persist.entries());
        if let Some(hs) = persist.hard_state() {
            self.hard_state = hs;
        }
    }

    /// Discards entries up to and including `index` (log compaction).
    pub fn compact(&mut self, index: Index) -> Result<(), StorageError> {
        if index < self.first {
            return Err(StorageError::Compacted);
        }
        let last = self.first + self.entries.len() as u64 - 1;
        if index > last {
            return Err(StorageError::Unavailable);
        }
        let drop = (index - self.first + 1) as usize;
        self.prev_term = self.entries[drop - 1].term;
        self.entries.drain(..drop);
        self.first = index + 1;
        Ok(())
    }

    /// Stores a snapshot taken by the application (with the meta returned by
    /// [`crate::Node::snapshot_created`]) and compacts the log up to it.
    pub fn create_snapshot(
        &mut self,
        meta: SnapshotMeta,
        data: Vec<u8>,
    ) -> Result<(), StorageError> {
        self.compact(meta.index)?;
        self.conf_state = meta.conf_state.clone();
        self.snapshot = Some((meta, data));
        Ok(())
    }

    /// Carries out a [`crate::SnapshotInstall`] with the received `data`.
    pub fn install_snapshot(&mut self, install: &crate::SnapshotInstall, data: Vec<u8>) {
        let meta = &install.meta;
        let keep_from = (meta.index + 1).max(self.first);
        let kept: Vec<Entry<P>> = if install.keep_entries_after {
            self.entries
                .iter()
                .filter(|e| e.index >= keep_from)
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        self.entries = kept;
        self.first = meta.index + 1;
        self.prev_term = meta.term;
        self.conf_state = meta.conf_state.clone();
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.snapshot = Some((meta.clone(), data));
    }

    /// The stored snapshot and its data.
    pub fn snapshot(&self) -> Option<&(SnapshotMeta, Vec<u8>)> {
        self.snapshot.as_ref()
    }

    /// All stored entries.
    pub fn all_entries(&self) -> &[Entry<P>] {
        &self.entries
    }
}

impl<P: Payload> LogStorage<P> for MemStorage<P> {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        Ok(InitialState {
            hard_state: self.hard_state,
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        lo: Index,
        hi: Index,
        max_bytes: usize,
    ) -> Result<Vec<Entry<P>>, StorageError> {
        if lo < self.first {
            return Err(StorageError::Compacted);
        }
        let end = self.first + self.entries.len() as u64;
        if hi > end || lo > hi {
            return Err(StorageError::Unavailable);
        }
        let slice = &self.entries[(lo - self.first) as usize..(hi - self.first) as usize];
        Ok(take_within_bytes(slice, max_bytes))
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        if index + 1 == self.first {
            return Ok(self.prev_term);
        }
        if index < self.first {
            return Err(StorageError::Compacted);
        }
        self.entries
            .get((index - self.first) as usize)
            .map(|e| e.term)
            .ok_or(StorageError::Unavailable)
    }

    fn first_index(&self) -> Result<Index, StorageError> {
        Ok(self.first)
    }

    fn last_index(&self) -> Result<Index, StorageError> {
        Ok(self.first + self.entries.len() as u64 - 1)
    }

    fn snapshot_meta(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        Ok(self.snapshot.as_ref().map(|(m, _)| m.clone()))
    }

    fn snapshot_chunk(
        &self,
        index: Index,
        offset: u64,
        max_len: usize,
    ) -> Result<(Vec<u8>, bool), StorageError> {
        match &self.snapshot {
            Some((m, data)) if m.index == index => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                let end = start.saturating_add(max_len).min(data.len());
                Ok((data[start..end].to_vec(), end == data.len()))
            }
            _ => Err(StorageError::SnapshotOutOfDate),
        }
    }
}

/// Clones the longest prefix of `slice` whose total size stays within
/// `max_bytes`, but always at least one entry.
pub(crate) fn take_within_bytes<P: Payload>(slice: &[Entry<P>], max_bytes: usize) -> Vec<Entry<P>> {
    let mut total = 0usize;
    let mut n = 0usize;
    for e in slice {
        total = total.saturating_add(e.size_bytes());
        if n > 0 && total > max_bytes {
            break;
        }
        n += 1;
    }
    slice[..n].to_vec()
}
