//! The write-ahead log: preallocated segment files of checksummed frames.
//!
//! Segment files are named `{seq:016x}-{first_index:016x}.wal` and live in
//! `<data-dir>/member/wal`. Each starts with a [`Record::SegmentStart`] frame,
//! so a segment is readable after every earlier one was purged. A new
//! segment is preallocated to [`WalOptions::segment_bytes`] with
//! `fallocate`, so appends within it never change the file size and an
//! `fdatasync` is enough to make them durable.
//!
//! Recovery rules (see `docs/adr/0008-server-storage.md`):
//! - a bad frame in the **last** segment followed only by zero bytes is a
//!   torn write from a crash: it is zeroed, synced and logged;
//! - any other bad frame is corruption: opening fails with
//!   [`StorageError::Corrupt`] naming the file and offset.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use metalraft_core::{Entry, HardState, MAX_TERM_OR_INDEX};

use super::codec::{self, FrameRead, Record, FRAME_HEADER_BYTES, MAX_FRAME_BYTES};
use super::error::StorageError;

/// Default segment size (etcd's is 64 MiB too).
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Smallest segment size accepted (tests use small segments).
pub const MIN_SEGMENT_BYTES: u64 = 4096;

/// WAL tuning.
#[derive(Clone, Copy, Debug)]
pub struct WalOptions {
    /// Size each segment is preallocated to.
    pub segment_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Index of the first entry held (after the last purge).
    pub first_index: u64,
    /// Term of entry `first_index - 1`.
    pub prev_term: u64,
    /// The last hard state written.
    pub hard_state: HardState,
    /// The log, contiguous from `first_index`.
    pub entries: Vec<Entry<Vec<u8>>>,
    /// `(file, offset)` of a torn final frame that was truncated.
    pub torn_tail: Option<(PathBuf, u64)>,
}

struct Segment {
    seq: u64,
    first_index: u64,
    path: PathBuf,
}

/// An open WAL positioned for appending.
pub struct Wal {
    dir: PathBuf,
    opts: WalOptions,
    segments: Vec<Segment>,
    file: File,
    /// Write offset in the current segment.
    offset: u64,
    /// Allocated size of the current segment.
    capacity: u64,
    /// Index the next appended entry would have (for new segment names).
    next_index: u64,
    last_term: u64,
    hard_state: HardState,
    /// Test-only hold/failure of `fdatasync` (see [`super::sync_gate`]).
    #[cfg(test)]
    pub(super) sync_gate: Option<std::sync::Arc<super::sync_gate::SyncGate>>,
}

fn segment_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}.wal")
}

fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (a, b) = stem.split_once('-')?;
    if a.len() != 16 || b.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    ))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::from_io(path, source)
}

/// Makes a directory entry (a created, renamed or deleted file) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Preallocates `len` bytes of `file`, falling back to extending it with
/// `set_len` where the filesystem has no `fallocate` (the space is then not
/// reserved and a full disk shows up on write instead).
fn preallocate(file: &File, path: &Path, len: u64) -> Result<(), StorageError> {
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::NOSPC) => Err(StorageError::NoSpace {
            path: path.to_path_buf(),
        }),
        Err(rustix::io::Errno::OPNOTSUPP) => file.set_len(len).map_err(io_err(path)),
        Err(e) => Err(StorageError::from_io(path, e.into())),
    }
}

impl Wal {
    /// Opens (creating if needed) the WAL in `dir` and recovers its content.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, Recovered), StorageError> {
        assert!(
            opts.segment_bytes >= MIN_SEGMENT_BYTES,
            "segment_bytes below MIN_SEGMENT_BYTES"
        );
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut segments = Vec::new();
        for ent in fs::read_dir(dir).map_err(io_err(dir))? {
            let ent = ent.map_err(io_err(dir))?;
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some((seq, first_index)) = parse_segment_name(name) {
                segments.push(Segment {
                    seq,
                    first_index,
                    path: ent.path(),
                });
            }
        }
        segments.sort_by_key(|s| s.seq);
        for w in segments.windows(2) {
            if w[1].seq != w[0].seq + 1 {
                return Err(StorageError::Corrupt {
                    path: w[1].path.clone(),
                    offset: 0,
                    reason: format!("segment sequence gap after {}", w[0].path.display()),
                });
            }
        }
        let mut rec = Recovered {
            first_index: 1,
            ..Recovered::default()
        };
        let mut tail_offset = 0u64;
        let n = segments.len();
        for (i, seg) in segments.iter().enumerate() {
            tail_offset = replay_segment(seg, i + 1 == n, i == 0, &mut rec)?;
        }
        let last_term = rec.entries.last().map_or(rec.prev_term, |e| e.term);
        let next_index = rec.first_index + rec.entries.len() as u64;
        let mut wal = match segments.last() {
            Some(last) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&last.path)
                    .map_err(io_err(&last.path))?;
                let capacity = file.metadata().map_err(io_err(&last.path))?.len();
                Wal {
                    dir: dir.to_path_buf(),
                    opts,
                    file,
                    offset: tail_offset,
                    capacity,
                    segments,
                    next_index,
                    last_term,
                    hard_state: rec.hard_state,
                    #[cfg(test)]
                    sync_gate: None,
                }
            }
            None => {
                let (file, path, capacity) = Self::create_segment(dir, 0, 1, opts.segment_bytes)?;
                let mut wal = Wal {
                    dir: dir.to_path_buf(),
                    opts,
                    file,
                    offset: 0,
                    capacity,
                    segments: vec![Segment {
                        seq: 0,
                        first_index: 1,
                        path,
                    }],
                    next_index: 1,
                    last_term: 0,
                    hard_state: HardState::default(),
                    #[cfg(test)]
                    sync_gate: None,
                };
                wal.write_segment_start()?;
                wal
            }
        };
        if wal.offset == 0 {
            // The last segment was created but its start record never made it.
            wal.write_segment_start()?;
        }
        Ok((wal, rec))
    }

    fn create_segment(
        dir: &Path,
        seq: u64,
        first_index: u64,
        len: u64,
    ) -> Result<(File, PathBuf, u64), StorageError> {
        let path = dir.join(segment_name(seq, first_index));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        if let Err(e) =
            preallocate(&file, &path, len).and_then(|()| file.sync_all().map_err(io_err(&path)))
        {
            drop(file);
            // A half-created segment must not be mistaken for a log later.
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        sync_dir(dir)?;
        Ok((file, path, len))
    }

    fn write_segment_start(&mut self) -> Result<(), StorageError> {
        let rec = Record::SegmentStart {
            first_index: self.next_index,
            prev_term: self.last_term,
            hard_state: self.hard_state,
        };
        let mut payload = Vec::new();
        codec::encode_record(&rec, &mut payload)?;
        let mut frame = Vec::new();
        codec::encode_frame(&payload, &mut frame);
        self.write_at_tail(&frame)?;
        self.sync()
    }

    fn current_path(&self) -> &Path {
        match self.segments.last() {
            Some(s) => &s.path,
            None => &self.dir,
        }
    }

    fn write_at_tail(&mut self, frame: &[u8]) -> Result<(), StorageError> {
        let path = self.current_path().to_path_buf();
        let res = self
            .file
            .seek(SeekFrom::Start(self.offset))
            .and_then(|_| self.file.write_all(frame));
        match res {
            Ok(()) => {
                self.offset += frame.len() as u64;
                Ok(())
            }
            // The offset is not advanced: a retry overwrites the partial frame,
            // and a crash leaves a torn tail that recovery truncates.
            Err(e) => Err(StorageError::from_io(&path, e)),
        }
    }

    /// Makes everything written so far durable (`fdatasync`).
    ///
    /// A failure is always [`StorageError::SyncFailed`], never
    /// [`StorageError::NoSpace`], even for `ENOSPC`: after a failed
    /// `fdatasync` the kernel may have dropped the dirty pages and a second
    /// `fdatasync` can succeed without them ever reaching the disk, so
    /// retrying and then acknowledging would release messages that promise
    /// lost state. The writer treats it as fatal.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        let path = self.current_path().to_path_buf();
        let failed = |source| StorageError::SyncFailed {
            path: path.clone(),
            source,
        };
        #[cfg(test)]
        let pending = super::sync_gate::Durable {
            hard_state: self.hard_state,
            last_index: self.next_index - 1,
        };
        #[cfg(test)]
        if let Some(gate) = &self.sync_gate {
            gate.before_sync(pending).map_err(failed)?;
        }
        self.file.sync_data().map_err(failed)?;
        #[cfg(test)]
        if let Some(gate) = &self.sync_gate {
            gate.after_sync(pending);
        }
        Ok(())
    }

    /// Appends records (one frame each), rotating segments as needed. Does
    /// not sync: call [`Wal::sync`] once after a group of appends.
    pub fn append(
        &mut self,
        entries: &[Entry<Vec<u8>>],
        hard_state: Option<HardState>,
    ) -> Result<(), StorageError> {
        // Split so that no frame exceeds MAX_FRAME_BYTES (and fits a segment
        // when possible); a single entry larger than that was refused earlier.
        let mut start = 0;
        loop {
            let mut end = start;
            let mut bytes = 64usize;
            while end < entries.len() {
                let b = codec::entry_encoded_bytes(&entries[end])?;
                if end > start && bytes + b > MAX_FRAME_BYTES {
                    break;
                }
                bytes += b;
                end += 1;
            }
            let last_chunk = end == entries.len();
            let rec = Record::Batch {
                entries: entries[start..end].to_vec(),
                hard_state: if last_chunk { hard_state } else { None },
            };
            self.append_record(&rec)?;
            if let Record::Batch { entries: chunk, .. } = &rec {
                if let Some(last) = chunk.last() {
                    self.next_index = last.index + 1;
                    self.last_term = last.term;
                }
            }
            if let Some(hs) = hard_state.filter(|_| last_chunk) {
                self.hard_state = hs;
            }
            start = end;
            if last_chunk {
                return Ok(());
            }
        }
    }

    fn append_record(&mut self, rec: &Record) -> Result<(), StorageError> {
        let mut payload = Vec::new();
        codec::encode_record(rec, &mut payload)?;
        if payload.len() > MAX_FRAME_BYTES {
            return Err(StorageError::TooLarge {
                bytes: payload.len(),
                max: MAX_FRAME_BYTES,
            });
        }
        let mut frame = Vec::with_capacity(payload.len() + FRAME_HEADER_BYTES);
        codec::encode_frame(&payload, &mut frame);
        if self.offset + frame.len() as u64 > self.capacity {
            self.rotate(frame.len() as u64)?;
        }
        self.write_at_tail(&frame)
    }

    /// Starts a new segment, named after the index the next entry would
    /// have. (A batch in it may still overwrite from a lower index: overwrites
    /// only happen above the commit index, and segments are only purged below
    /// a snapshot, which is at or below the commit index.)
    fn rotate(&mut self, need: u64) -> Result<(), StorageError> {
        self.sync()?;
        let seq = self.segments.last().map_or(0, |s| s.seq + 1);
        let first_index = self.next_index;
        let len = self.opts.segment_bytes.max(need + 4096);
        let (file, path, capacity) = Self::create_segment(&self.dir, seq, first_index, len)?;
        self.file = file;
        self.offset = 0;
        self.capacity = capacity;
        self.segments.push(Segment {
            seq,
            first_index,
            path,
        });
        self.write_segment_start()
    }

    /// Restarts the log empty after a snapshot at `(index, term)`: a new
    /// segment starts at `index + 1` and every older segment is deleted.
    /// The snapshot must already be durable.
    pub fn reset_after_snapshot(&mut self, index: u64, term: u64) -> Result<(), StorageError> {
        self.next_index = index + 1;
        self.last_term = term;
        self.hard_state.commit = self.hard_state.commit.max(index);
        self.rotate(0)?;
        self.sync()?;
        while self.segments.len() >= 2 {
            let seg = self.segments.remove(0);
            fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
        }
        sync_dir(&self.dir)
    }

    /// Deletes every segment all of whose entries are below `index` (they are
    /// covered by a snapshot). The current segment is never deleted.
    pub fn purge_below(&mut self, index: u64) -> Result<usize, StorageError> {
        let mut removed = 0;
        while self.segments.len() >= 2 && self.segments[1].first_index <= index {
            let seg = self.segments.remove(0);
            fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
            removed += 1;
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Bytes allocated by all segments.
    pub fn allocated_bytes(&self) -> u64 {
        self.segments
            .iter()
            .filter_map(|s| fs::metadata(&s.path).ok())
            .map(|m| m.len())
            .sum()
    }
}

/// Replays one segment into `rec`, returning the offset after its last
/// valid frame.
fn replay_segment(
    seg: &Segment,
    is_last: bool,
    is_first: bool,
    rec: &mut Recovered,
) -> Result<u64, StorageError> {
    let mut buf = Vec::new();
    File::open(&seg.path)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .map_err(io_err(&seg.path))?;
    let mut pos = 0usize;
    let mut saw_start = false;
    loop {
        match codec::read_frame(&buf[pos..]) {
            FrameRead::Frame(payload, len) => {
                let record = codec::decode_record(payload).map_err(|e| StorageError::Corrupt {
                    path: seg.path.clone(),
                    offset: pos as u64,
                    reason: e.to_string(),
                })?;
                apply_record(record, seg, pos, is_first && !saw_start, rec)?;
                saw_start = true;
                pos += len;
            }
            FrameRead::End => {
                if buf[pos..].iter().any(|b| *b != 0) {
                    return Err(StorageError::Corrupt {
                        path: seg.path.clone(),
                        offset: pos as u64,
                        reason: "zeroed frame followed by data".to_string(),
                    });
                }
                return Ok(pos as u64);
            }
            FrameRead::Bad {
                reason,
                claimed_end,
            } => {
                let after = (pos + claimed_end).min(buf.len());
                let rest_zero = buf[after..].iter().all(|b| *b == 0);
                if is_last && rest_zero {
                    truncate_tail(&seg.path, pos as u64, buf.len() as u64)?;
                    tracing::warn!(
                        file = %seg.path.display(),
                        offset = pos,
                        reason,
                        "truncated a torn final WAL record (an unacknowledged write interrupted by a crash)"
                    );
                    rec.torn_tail = Some((seg.path.clone(), pos as u64));
                    return Ok(pos as u64);
                }
                return Err(StorageError::Corrupt {
                    path: seg.path.clone(),
                    offset: pos as u64,
                    reason: reason.to_string(),
                });
            }
        }
    }
}

fn apply_record(
    record: Record,
    seg: &Segment,
    pos: usize,
    first: bool,
    rec: &mut Recovered,
) -> Result<(), StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt {
        path: seg.path.clone(),
        offset: pos as u64,
        reason,
    };
    match record {
        Record::SegmentStart {
            first_index,
            prev_term,
            hard_state,
        } => {
            // Index 0 is the empty prefix, and the core refuses indices
            // above MAX_TERM_OR_INDEX: either is damage, and would make the
            // log's bounds underflow or overflow.
            if !(1..=MAX_TERM_OR_INDEX).contains(&first_index) {
                return Err(corrupt(format!("segment starts at index {first_index}")));
            }
            // A segment normally starts where the log ends; one that starts
            // elsewhere marks a reset after an installed snapshot.
            let next = rec.first_index + rec.entries.len() as u64;
            if first || first_index != next {
                rec.first_index = first_index;
                rec.prev_term = prev_term;
                rec.entries.clear();
                rec.hard_state = hard_state;
            }
        }
        Record::Batch {
            entries,
            hard_state,
        } => {
            if let Some(last) = entries.last() {
                if last.index > MAX_TERM_OR_INDEX {
                    return Err(corrupt(format!("entry index {}", last.index)));
                }
            }
            if let Some(head) = entries.first() {
                let next = rec.first_index + rec.entries.len() as u64;
                if head.index < rec.first_index || head.index > next {
                    return Err(corrupt(format!(
                        "batch starts at index {} but the log holds {}..{}",
                        head.index, rec.first_index, next
                    )));
                }
                rec.entries
                    .truncate((head.index - rec.first_index) as usize);
                rec.entries.extend(entries);
            }
            if let Some(hs) = hard_state {
                rec.hard_state = hs;
            }
        }
    }
    Ok(())
}

/// Zeroes `[from, len)` of a file and syncs it.
fn truncate_tail(path: &Path, from: u64, len: u64) -> Result<(), StorageError> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    f.seek(SeekFrom::Start(from)).map_err(io_err(path))?;
    let zeros = vec![0u8; 64 * 1024];
    let mut left = len - from;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n]).map_err(io_err(path))?;
        left -= n as u64;
    }
    f.sync_data().map_err(io_err(path))
}
