//! The node's view of its log: durable entries in [`LogStorage`] plus the
//! entries not yet acknowledged as durable, kept in memory ("unstable").
//!
//! Invariants (checked by `debug_check`):
//! `applied <= min(committed, persisted)`, `committed <= last_index()`,
//! `persisted <= last_index()`, `issued <= last_index()`,
//! `unstable_offset <= issued + 1`.

use alloc::vec::Vec;

use crate::error::StorageError;
use crate::storage::{take_within_bytes, LogStorage};
use crate::types::{Entry, Index, Payload, Term};

pub(crate) struct RaftLog<P, S> {
    pub(crate) storage: S,
    /// Entries at `unstable_offset..`, shadowing storage where they overlap.
    unstable: Vec<Entry<P>>,
    unstable_offset: Index,
    /// Highest index handed out in a persistence batch.
    issued: Index,
    /// Highest index known durable and part of this log.
    persisted: Index,
    /// Highest index known committed.
    committed: Index,
    /// Highest index handed to the application for applying.
    applied: Index,
    /// A snapshot installed in memory whose persistence is not yet
    /// acknowledged: it covers everything up to its index.
    pending_snapshot: Option<(Index, Term)>,
}

impl<P: Payload, S: LogStorage<P>> RaftLog<P, S> {
    pub(crate) fn new(storage: S, committed: Index, applied: Index) -> Result<Self, StorageError> {
        let first = storage.first_index()?;
        let last = storage.last_index()?;
        let applied = applied.max(first - 1).min(committed);
        Ok(RaftLog {
            storage,
            unstable: Vec::new(),
            unstable_offset: last + 1,
            issued: last,
            persisted: last,
            committed,
            applied,
            pending_snapshot: None,
        })
    }

    pub(crate) fn last_index(&self) -> Result<Index, StorageError> {
        match self.unstable.last() {
            Some(e) => Ok(e.index),
            None => {
                let stored = self.storage.last_index()?.min(self.unstable_offset - 1);
                Ok(stored.max(self.pending_snapshot.map_or(0, |(i, _)| i)))
            }
        }
    }

    pub(crate) fn last_term(&self) -> Result<Term, StorageError> {
        match self.unstable.last() {
            Some(e) => Ok(e.term),
            None => {
                let last = self.last_index()?;
                self.storage.term(last)
            }
        }
    }

    pub(crate) fn committed(&self) -> Index {
        self.committed
    }

    pub(crate) fn persisted(&self) -> Index {
        self.persisted
    }

    pub(crate) fn applied(&self) -> Index {
        self.applied
    }

    /// Term at `index`, or `None` when the index is past the end or compacted.
    pub(crate) fn term(&self, index: Index) -> Result<Option<Term>, StorageError> {
        if let Some((si, st)) = self.pending_snapshot {
            if index == si {
                return Ok(Some(st));
            }
            if index < si {
                return Ok(None);
            }
        }
        if index >= self.unstable_offset {
            let i = (index - self.unstable_offset) as usize;
            return Ok(self.unstable.get(i).map(|e| e.term));
        }
        let first = self.storage.first_index()?;
        if index + 1 < first {
            return Ok(None);
        }
        if index > self.storage.last_index()? {
            return Ok(None);
        }
        self.storage.term(index).map(Some)
    }

    pub(crate) fn matches(&self, index: Index, term: Term) -> Result<bool, StorageError> {
        Ok(self.term(index)? == Some(term))
    }

    /// Raft paper §5.4.1: is a log ending at (`last_index`, `last_term`) at
    /// least as up-to-date as ours?
    pub(crate) fn is_up_to_date(
        &self,
        last_index: Index,
        last_term: Term,
    ) -> Result<bool, StorageError> {
        Ok(self.compare_with_ours(last_index, last_term)?.is_ge())
    }

    /// Whether a log ending at (`last_index`, `last_term`) is strictly more
    /// up to date than ours (§5.4.1): we would grant it on log grounds, and
    /// it would never grant us.
    pub(crate) fn is_more_up_to_date(
        &self,
        last_index: Index,
        last_term: Term,
    ) -> Result<bool, StorageError> {
        Ok(self.compare_with_ours(last_index, last_term)?.is_gt())
    }

    /// §5.4.1's order of logs: by last term, then by last index.
    fn compare_with_ours(
        &self,
        last_index: Index,
        last_term: Term,
    ) -> Result<core::cmp::Ordering, StorageError> {
        let ours = (self.last_term()?, self.last_index()?);
        Ok((last_term, last_index).cmp(&ours))
    }

    /// Leader append: `entries` continue the log.
    pub(crate) fn append(&mut self, entry: Entry<P>) {
        debug_assert_eq!(Some(entry.index), self.last_index().ok().map(|l| l + 1));
        if self.unstable.is_empty() {
            self.unstable_offset = entry.index;
        }
        self.unstable.push(entry);
    }

    /// Follower append (Raft paper §5.3, AppendEntries receiver steps 2–5).
    /// `entries` are validated contiguous from `prev_index + 1`.
    /// Returns the index of the last entry now known to match the leader and
    /// the index from which entries were (over)written, if any; or `None`
    /// if the log does not contain (`prev_index`, `prev_term`).
    pub(crate) fn maybe_append(
        &mut self,
        prev_index: Index,
        prev_term: Term,
        mut entries: Vec<Entry<P>>,
    ) -> Result<Option<(Index, Option<Index>)>, AppendError> {
        if !self.matches(prev_index, prev_term)? {
            return Ok(None);
        }
        let last_new = prev_index + entries.len() as u64;
        // Find the first entry that is not already in the log.
        let mut conflict = None;
        for (i, e) in entries.iter().enumerate() {
            if !self.matches(e.index, e.term)? {
                conflict = Some(i);
                break;
            }
        }
        if let Some(i) = conflict {
            let from = entries[i].index;
            if from <= self.committed {
                // A correct leader never contradicts a committed entry
                // (Leader Completeness, §5.4); refuse rather than lose it.
                return Err(AppendError::ConflictsWithCommitted);
            }
            self.truncate_and_append(entries.split_off(i));
            return Ok(Some((last_new, Some(from))));
        }
        Ok(Some((last_new, None)))
    }

    fn truncate_and_append(&mut self, entries: Vec<Entry<P>>) {
        let from = entries[0].index;
        let end = self.unstable_offset + self.unstable.len() as u64;
        if from == end && !self.unstable.is_empty() {
            // plain append
        } else if from <= self.unstable_offset || self.unstable.is_empty() {
            self.unstable.clear();
            self.unstable_offset = from;
        } else {
            self.unstable
                .truncate((from - self.unstable_offset) as usize);
        }
        self.unstable.extend(entries);
        self.issued = self.issued.min(from - 1);
        self.persisted = self.persisted.min(from - 1);
    }

    /// Entries `[lo, hi)` limited to `max_bytes` (at least one).
    pub(crate) fn entries(
        &self,
        lo: Index,
        hi: Index,
        max_bytes: usize,
    ) -> Result<Vec<Entry<P>>, StorageError> {
        if lo >= hi {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        if lo < self.unstable_offset {
            let stop = hi.min(self.unstable_offset);
            out = self.storage.entries(lo, stop, max_bytes)?;
            let got = out.len() as u64;
            if got == 0 || lo + got < stop || stop == hi {
                return Ok(out);
            }
        }
        let used: usize = out.iter().map(Entry::size_bytes).sum();
        let start = lo.max(self.unstable_offset);
        let (a, b) = (
            (start - self.unstable_offset) as usize,
            (hi - self.unstable_offset) as usize,
        );
        let Some(slice) = self.unstable.get(a..b.min(self.unstable.len())) else {
            return Err(StorageError::Unavailable);
        };
        if out.is_empty() {
            return Ok(take_within_bytes(slice, max_bytes));
        }
        let mut total = used;
        for e in slice {
            total = total.saturating_add(e.size_bytes());
            if total > max_bytes {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    /// The largest index `<= index` whose term is `<= term`, and its term
    /// (for the fast back-off hint, Raft paper §5.3).
    pub(crate) fn find_conflict_by_term(
        &self,
        index: Index,
        term: Term,
    ) -> Result<(Index, Term), StorageError> {
        let mut i = index.min(self.last_index()?);
        loop {
            match self.term(i)? {
                Some(t) if t > term => {
                    if i == 0 {
                        return Ok((0, 0));
                    }
                    i -= 1;
                }
                Some(t) => return Ok((i, t)),
                None => return Ok((i, 0)),
            }
        }
    }

    pub(crate) fn commit_to(&mut self, index: Index) {
        if index > self.committed {
            debug_assert!(Some(index) <= self.last_index().ok());
            self.committed = index;
        }
    }

    /// Entries not yet handed out for persistence; marks them handed out.
    pub(crate) fn take_unissued(&mut self) -> Vec<Entry<P>> {
        let Some(last) = self.unstable.last().map(|e| e.index) else {
            return Vec::new();
        };
        if self.issued >= last {
            return Vec::new();
        }
        let from = (self.issued + 1).max(self.unstable_offset);
        let out = self.unstable[(from - self.unstable_offset) as usize..].to_vec();
        self.issued = last;
        out
    }

    pub(crate) fn has_unissued(&self) -> bool {
        self.unstable.last().is_some_and(|e| e.index > self.issued)
    }

    /// The application made entries up to (`index`, `term`) durable.
    /// Returns whether `persisted` advanced.
    pub(crate) fn stable_to(&mut self, index: Index, term: Term) -> Result<bool, StorageError> {
        if self.term(index)? != Some(term) || index > self.issued {
            // Overwritten since the batch was issued; a later batch covers it.
            return Ok(false);
        }
        let advanced = index > self.persisted;
        self.persisted = self.persisted.max(index);
        if index >= self.unstable_offset {
            let n = (index - self.unstable_offset + 1) as usize;
            self.unstable.drain(..n);
            self.unstable_offset = index + 1;
        }
        Ok(advanced)
    }

    /// Committed, durable entries after `applied`, marked as handed out.
    pub(crate) fn take_committed(
        &mut self,
        max_bytes: usize,
    ) -> Result<Vec<Entry<P>>, StorageError> {
        let hi = self.committed.min(self.persisted);
        if hi <= self.applied {
            return Ok(Vec::new());
        }
        let out = self.entries(self.applied + 1, hi + 1, max_bytes)?;
        if let Some(e) = out.last() {
            self.applied = e.index;
        }
        Ok(out)
    }

    /// Installs a received snapshot in memory (thesis §5.3): keeps the
    /// entries after it if the log contains its last entry, else drops the
    /// log. Returns whether entries were kept.
    pub(crate) fn install_snapshot(
        &mut self,
        index: Index,
        term: Term,
    ) -> Result<bool, StorageError> {
        let keep = self.term(index)? == Some(term);
        if keep {
            if self.unstable_offset <= index {
                let n = ((index + 1 - self.unstable_offset) as usize).min(self.unstable.len());
                self.unstable.drain(..n);
                self.unstable_offset = index + 1;
            }
            self.issued = self.issued.max(index);
        } else {
            self.unstable.clear();
            self.unstable_offset = index + 1;
            self.issued = index;
            self.persisted = self.persisted.min(index);
        }
        self.pending_snapshot = Some((index, term));
        self.committed = self.committed.max(index);
        self.applied = self.applied.max(index);
        Ok(keep)
    }

    /// The application made the installed snapshot durable: storage now
    /// starts after it.
    pub(crate) fn snapshot_persisted(&mut self, index: Index) {
        if self.pending_snapshot.is_some_and(|(i, _)| i == index) {
            self.pending_snapshot = None;
        }
        self.persisted = self.persisted.max(index);
    }

    /// The first index that can still be read (entries before it are in a
    /// snapshot).
    pub(crate) fn first_index(&self) -> Result<Index, StorageError> {
        let stored = self.storage.first_index()?.min(self.unstable_offset);
        Ok(match self.pending_snapshot {
            Some((i, _)) => stored.max(i + 1),
            None => stored,
        })
    }

    pub(crate) fn has_committed_to_apply(&self) -> bool {
        self.committed.min(self.persisted) > self.applied
    }
}

/// Why a follower refused entries.
pub(crate) enum AppendError {
    Storage(StorageError),
    ConflictsWithCommitted,
}

impl From<StorageError> for AppendError {
    fn from(e: StorageError) -> Self {
        AppendError::Storage(e)
    }
}
