//! The revision log as fixed-size chunks ([`RecordLog`]), so growing it
//! never copies it: one `VecDeque` of a million records doubled its buffer
//! at 2^k records, a 40 ms copy inside one apply at 524,288 (measured with
//! the server's allocator, issue 18's p99.9), and the stall grows with the
//! history.

use super::history::Record;
use alloc::collections::VecDeque;
use core::fmt;

/// Records per chunk: a chunk is allocated whole (tens to hundreds of KB)
/// and freed when compaction empties it.
pub(crate) const RECORDS_PER_CHUNK: usize = 4096;

/// One record per revision since the compact revision, oldest first, in
/// chunks of [`RECORDS_PER_CHUNK`]: every chunk but the first (which
/// compaction empties from the front) and the last (which applies fill) is
/// full, so the `i`-th record is found by arithmetic.
#[derive(Clone, Default)]
pub(crate) struct RecordLog {
    chunks: VecDeque<VecDeque<Record>>,
    len: usize,
}

impl RecordLog {
    /// Records held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The oldest record.
    pub(crate) fn front(&self) -> Option<&Record> {
        self.chunks.front().and_then(|c| c.front())
    }

    /// The newest record.
    pub(crate) fn back(&self) -> Option<&Record> {
        self.chunks.back().and_then(|c| c.back())
    }

    /// The newest record, to add changes to.
    pub(crate) fn back_mut(&mut self) -> Option<&mut Record> {
        self.chunks.back_mut().and_then(|c| c.back_mut())
    }

    /// Appends a record (a new chunk when the last is full).
    pub(crate) fn push_back(&mut self, r: Record) {
        match self.chunks.back_mut() {
            Some(c) if c.len() < RECORDS_PER_CHUNK => c.push_back(r),
            _ => {
                let mut c = VecDeque::with_capacity(RECORDS_PER_CHUNK);
                c.push_back(r);
                self.chunks.push_back(c);
            }
        }
        self.len += 1;
    }

    /// Removes the oldest record (its chunk too once empty).
    pub(crate) fn pop_front(&mut self) -> Option<Record> {
        let first = self.chunks.front_mut()?;
        let r = first.pop_front();
        if first.is_empty() {
            self.chunks.pop_front();
        }
        if r.is_some() {
            self.len -= 1;
        }
        r
    }

    /// The chunk and the position in it of the `i`-th record.
    fn locate(&self, i: usize) -> Option<(usize, usize)> {
        if i >= self.len {
            return None;
        }
        let first = self.chunks.front().map_or(0, |c| c.len());
        if i < first {
            return Some((0, i));
        }
        let rest = i - first;
        Some((1 + rest / RECORDS_PER_CHUNK, rest % RECORDS_PER_CHUNK))
    }

    /// The `i`-th record, oldest first.
    pub(crate) fn get(&self, i: usize) -> Option<&Record> {
        let (c, at) = self.locate(i)?;
        self.chunks.get(c).and_then(|c| c.get(at))
    }

    /// The records from the `i`-th on, oldest first.
    pub(crate) fn iter_from(&self, i: usize) -> impl Iterator<Item = &Record> + '_ {
        let (c, at) = self.locate(i).unwrap_or((self.chunks.len(), 0));
        self.chunks
            .range(c.min(self.chunks.len())..)
            .enumerate()
            .flat_map(move |(n, chunk)| chunk.range(if n == 0 { at } else { 0 }..))
    }

    /// All records, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Record> + '_ {
        self.chunks.iter().flatten()
    }

    /// The index of the first record for which `pred` is false (`pred`
    /// true for a prefix of the log, as `VecDeque::partition_point`).
    pub(crate) fn partition_point(&self, mut pred: impl FnMut(&Record) -> bool) -> usize {
        let (mut lo, mut hi) = (0, self.len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.get(mid) {
                Some(r) if pred(r) => lo = mid + 1,
                _ => hi = mid,
            }
        }
        lo
    }

    /// Gives back the chunk list's spare room (chunks themselves are freed
    /// as they empty).
    pub(crate) fn release_spare(&mut self) {
        if self.chunks.len() < self.chunks.capacity() / 4 {
            self.chunks.shrink_to(self.chunks.len().saturating_mul(2));
        }
    }
}

impl PartialEq for RecordLog {
    /// The same records in the same order, however they are chunked.
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for RecordLog {}

impl fmt::Debug for RecordLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::history::Changes;

    fn record(revision: i64) -> Record {
        Record {
            revision,
            changes: Changes::default(),
        }
    }

    #[test]
    fn records_are_found_by_position_across_chunks_after_pops() {
        let n = 3 * RECORDS_PER_CHUNK + 17;
        let mut log = RecordLog::default();
        let mut model = VecDeque::new();
        for r in 1..=n as i64 {
            log.push_back(record(r));
            model.push_back(r);
        }
        for pops in [0, 1, RECORDS_PER_CHUNK - 1, 1, RECORDS_PER_CHUNK + 5] {
            for _ in 0..pops {
                assert_eq!(log.pop_front().map(|r| r.revision), model.pop_front());
            }
            assert_eq!(log.len(), model.len());
            for i in [0, 1, model.len() / 2, model.len() - 1, model.len()] {
                assert_eq!(
                    log.get(i).map(|r| r.revision),
                    model.get(i).copied(),
                    "get {i}"
                );
                let got: Vec<i64> = log.iter_from(i).map(|r| r.revision).collect();
                let want: Vec<i64> = model.range(i.min(model.len())..).copied().collect();
                assert_eq!(got, want, "iter_from {i}");
            }
            for target in [0, model[0], model[model.len() / 3], n as i64, n as i64 + 5] {
                let want = model.partition_point(|r| *r < target);
                assert_eq!(log.partition_point(|r| r.revision < target), want);
            }
            assert_eq!(log.front().map(|r| r.revision), model.front().copied());
            assert_eq!(log.back().map(|r| r.revision), model.back().copied());
        }
        // Equal whatever the chunking.
        let mut other = RecordLog::default();
        for r in &model {
            other.push_back(record(*r));
        }
        assert_eq!(log, other);
        while log.pop_front().is_some() {}
        assert_eq!(log.len(), 0);
        assert_eq!(log.get(0), None);
        assert_eq!(log.iter_from(0).count(), 0);
        log.release_spare();
    }
}
