//! The write-ahead log: preallocated segment files of checksummed frames.
//!
//! Segment files are named `{seq:016x}-{first_index:016x}.wal` and live in
//! `<data-dir>/member/wal`. Each starts with a [`Record::SegmentStart`] frame,
//! so a segment is readable after every earlier one was purged. A new
//! segment is preallocated to [`WalOptions::segment_bytes`] and, when it
//! can be, filled with zeros ahead of use ([`super::zero_fill`], ADR
//! 0032), so appends within it never change the file size or its extents
//! and an `fdatasync` is enough to make them durable without a journal
//! commit. A group of frames is written with one `pwrite`.
//!
//! Every frame carries a [`FrameSeq`]: its number in the WAL and the
//! highest number a completed `fdatasync` had made durable when it was
//! written.
//!
//! Recovery rules (see `docs/adr/0014-torn-tail-recovery.md`, which holds the
//! argument, and `docs/adr/0008-server-storage.md`). Damage is a frame that
//! fails its checksum or length, a zeroed header followed by data, or a
//! valid frame out of sequence. Then:
//! - in a segment that is not the last it is mid-log damage (every frame
//!   there was synced before the next segment was created);
//! - in the last segment, if a later valid frame says the damaged frame was
//!   already durable when it was written (`synced` reaches it), it is
//!   **mid-log damage**: acknowledged data may be affected. [`Wal::open`]
//!   fails with [`StorageError::Corrupt`] naming the file and offset;
//!   [`Wal::open_repairing`] has the caller record a repair barrier, keeps
//!   the valid prefix and drops the rest (ADR 0021). Damage in a segment
//!   that is not the last is mid-log damage too;
//! - otherwise it is a **torn tail**: nothing from the damage on was ever
//!   durable, hence never acknowledged. It is zeroed, synced and logged
//!   (file, offset, bytes dropped), and appends continue there.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use metalraft_core::{Entry, HardState, MAX_TERM_OR_INDEX};

use super::codec::{self, FrameRead, FrameSeq, Record, FRAME_HEADER_BYTES, MAX_FRAME_BYTES};
use super::error::StorageError;
use super::zero_fill::{self, Preparer, PREPARED_NAME, PREPARE_AT_PERCENT};

/// Default segment size (etcd's is 64 MiB too).
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Smallest segment size accepted (tests use small segments).
pub const MIN_SEGMENT_BYTES: u64 = 4096;
/// Capacity the group-write buffer keeps between groups; a larger one is
/// freed after its write.
pub const GROUP_BUFFER_KEEP_BYTES: usize = 1024 * 1024;

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
    /// `(file, offset)` of a torn tail that was truncated.
    pub torn_tail: Option<(PathBuf, u64)>,
    /// Bytes of unsynced data the truncation dropped (0 if none).
    pub torn_bytes_dropped: u64,
    /// Mid-log damage that was cut off (only with [`Wal::open_repairing`]).
    pub repair: Option<MidLogDamage>,
}

/// Mid-log damage: a frame before the last valid one is damaged, so entries
/// this member acknowledged may be lost. [`Wal::open_repairing`] keeps the
/// valid prefix before it and drops the rest (ADR 0021).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MidLogDamage {
    /// The segment holding the damaged frame.
    pub path: PathBuf,
    /// Its offset there.
    pub offset: u64,
    /// What is wrong, and the later frame that proves it was durable.
    pub reason: String,
    /// The highest index this member may have acknowledged: the largest
    /// entry index and commit index of any valid frame after the damage (at
    /// any byte offset, in this segment and every later one), and the commit
    /// index of the prefix.
    pub barrier: u64,
    /// Last index of the prefix that is kept.
    pub kept_last_index: u64,
    /// Later segment files deleted (their content is after the damage).
    pub segments_dropped: usize,
}

struct Segment {
    seq: u64,
    first_index: u64,
    path: PathBuf,
    /// Its size on disk.
    len: u64,
}

/// Where the log's tail stands (what a failed write rolls back to).
#[derive(Clone, Copy)]
struct Tail {
    /// Write offset in the current segment.
    offset: u64,
    /// Index the next appended entry would have (for new segment names).
    next_index: u64,
    last_term: u64,
    hard_state: HardState,
    /// Number the next frame gets.
    next_seq: u64,
}

/// An open WAL positioned for appending.
pub struct Wal {
    dir: PathBuf,
    opts: WalOptions,
    segments: Vec<Segment>,
    file: File,
    /// Where appends continue (including `pending`).
    tail: Tail,
    /// Highest frame number made durable by a completed sync.
    synced_seq: u64,
    /// Frames encoded but not yet written, which end at `offset`. Empty
    /// between calls: every public method that appends writes them.
    pending: Vec<u8>,
    /// The tail as of the last successful write (`pending` empty).
    written: Tail,
    /// The next segment, being zero-filled.
    preparer: Option<Preparer>,
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

/// Creates `dir` and every missing parent, and makes each new name durable
/// by syncing the directory that holds it (issue 20's power-cut test found
/// this: `create_dir_all` alone leaves the new entries unsynced, and a power
/// cut then takes the whole member directory with its WAL and vote, though
/// every file in it was synced). The parent of `dir` is synced even when
/// `dir` existed, in case an earlier start was killed between the two.
pub(crate) fn create_dir_durable(dir: &Path) -> Result<(), StorageError> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty() && !d.is_dir()) {
        missing.push(d);
        at = d.parent();
    }
    for d in missing.iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(StorageError::from_io(d, e)),
        }
        sync_parent(d)?;
    }
    if missing.is_empty() {
        sync_parent(dir)?;
    }
    Ok(())
}

fn sync_parent(d: &Path) -> Result<(), StorageError> {
    match d.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => sync_dir(Path::new(".")),
    }
}

/// Preallocates `len` bytes of `file`, falling back to extending it with
/// `set_len` where the filesystem has no `fallocate` (the space is then not
/// reserved and a full disk shows up on write instead).
pub(crate) fn preallocate(file: &File, path: &Path, len: u64) -> Result<(), StorageError> {
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::NOSPC) => Err(StorageError::NoSpace {
            path: path.to_path_buf(),
        }),
        Err(rustix::io::Errno::OPNOTSUPP) => file.set_len(len).map_err(io_err(path)),
        Err(e) => Err(StorageError::from_io(path, e.into())),
    }
}

/// What [`Wal::open_with`] does on mid-log damage.
type OnDamage<'a> = Option<&'a mut dyn FnMut(&MidLogDamage) -> Result<(), StorageError>>;

impl Wal {
    /// Opens (creating if needed) the WAL in `dir` and recovers its content.
    /// Mid-log damage fails with [`StorageError::Corrupt`].
    pub fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, Recovered), StorageError> {
        Self::open_with(dir, opts, None)
    }

    /// Like [`Wal::open`], but on mid-log damage calls `record_barrier`
    /// with what was found (before anything is changed on disk: it must
    /// make the barrier durable), then keeps the valid prefix before the
    /// damage and drops the rest: the damaged segment is zeroed from the
    /// damage on and synced, later segments are deleted. The damage is
    /// reported in [`Recovered::repair`].
    pub fn open_repairing(
        dir: &Path,
        opts: WalOptions,
        record_barrier: &mut dyn FnMut(&MidLogDamage) -> Result<(), StorageError>,
    ) -> Result<(Wal, Recovered), StorageError> {
        Self::open_with(dir, opts, Some(record_barrier))
    }

    fn open_with(
        dir: &Path,
        opts: WalOptions,
        mut on_damage: OnDamage<'_>,
    ) -> Result<(Wal, Recovered), StorageError> {
        assert!(
            opts.segment_bytes >= MIN_SEGMENT_BYTES,
            "segment_bytes below MIN_SEGMENT_BYTES"
        );
        create_dir_durable(dir)?;
        let mut segments = Vec::new();
        for ent in fs::read_dir(dir).map_err(io_err(dir))? {
            let ent = ent.map_err(io_err(dir))?;
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            if name == PREPARED_NAME {
                // A segment being prepared when the member stopped.
                fs::remove_file(ent.path()).map_err(io_err(&ent.path()))?;
            } else if let Some((seq, first_index)) = parse_segment_name(name) {
                let len = ent.metadata().map_err(io_err(&ent.path()))?.len();
                segments.push(Segment {
                    seq,
                    first_index,
                    path: ent.path(),
                    len,
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
        let mut tail = SegmentEnd {
            offset: 0,
            sequenced: true,
        };
        let mut last_seq = 0u64;
        let n = segments.len();
        // One buffer for every segment: on a fresh buffer each 64 MiB read
        // first faults in and zeroes 64 MiB of new pages (issue 18: about
        // half of the start-up's WAL reading on this machine).
        let mut scratch = Vec::new();
        for i in 0..n {
            let seg = &segments[i];
            match replay_segment(
                seg,
                i + 1 == n,
                i == 0,
                &mut rec,
                &mut last_seq,
                &mut scratch,
            )? {
                Replayed::End(end) => tail = end,
                Replayed::MidLog(found) => {
                    let Some(record_barrier) = on_damage.as_mut() else {
                        return Err(StorageError::Corrupt {
                            path: seg.path.clone(),
                            offset: found.offset as u64,
                            reason: found.reason,
                        });
                    };
                    let sequenced = found.sequenced;
                    let damage = cut_mid_log(&segments, i, found, &rec, &mut **record_barrier)?;
                    tracing::error!(
                        file = %damage.path.display(),
                        offset = damage.offset,
                        barrier = damage.barrier,
                        kept_last_index = damage.kept_last_index,
                        segments_dropped = damage.segments_dropped,
                        reason = %damage.reason,
                        "mid-log WAL damage: kept the valid prefix, dropped the rest; repairing from the leader (no votes until the log reaches the barrier)"
                    );
                    segments.truncate(i + 1);
                    tail = SegmentEnd {
                        offset: damage.offset,
                        sequenced,
                    };
                    rec.repair = Some(damage);
                    break;
                }
            }
        }
        let tail_offset = tail.offset;
        let last_term = rec.entries.last().map_or(rec.prev_term, |e| e.term);
        let next_index = rec.first_index + rec.entries.len() as u64;
        let (file, log_tail, segments, created) = match segments.last() {
            Some(last) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&last.path)
                    .map_err(io_err(&last.path))?;
                let tail = Tail {
                    offset: tail_offset,
                    next_index,
                    last_term,
                    hard_state: rec.hard_state,
                    next_seq: last_seq + 1,
                };
                (file, tail, segments, false)
            }
            None => {
                // A new log: its first segment is zero-filled now (no
                // preparer has run yet).
                let (file, path, len) = Self::create_segment(dir, 0, 1, opts.segment_bytes, true)?;
                let tail = Tail {
                    offset: 0,
                    next_index: 1,
                    last_term: 0,
                    hard_state: HardState::default(),
                    next_seq: 1,
                };
                let first = Segment {
                    seq: 0,
                    first_index: 1,
                    path,
                    len,
                };
                (file, tail, vec![first], true)
            }
        };
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            opts,
            file,
            tail: log_tail,
            segments,
            synced_seq: 0,
            pending: Vec::new(),
            written: log_tail,
            preparer: None,
            #[cfg(test)]
            sync_gate: None,
        };
        if created {
            wal.write_segment_start()?;
        }
        // What was read may sit only in the page cache (a process crash, not
        // a power loss): make it durable before new frames call it durable.
        wal.sync()?;
        if wal.tail.offset == 0 {
            // The last segment was created but its start record never made
            // it (or was torn and truncated).
            wal.write_segment_start()?;
        } else if !tail.sequenced {
            // A format 1 segment (metalraft 0.1.x): new frames are sequenced,
            // and a segment never mixes the two.
            wal.rotate(0)?;
        }
        Ok((wal, rec))
    }

    /// Creates segment `seq`, `len` bytes, reserved with `fallocate` and,
    /// with `zeros`, filled with zeros (synchronously).
    fn create_segment(
        dir: &Path,
        seq: u64,
        first_index: u64,
        len: u64,
        zeros: bool,
    ) -> Result<(File, PathBuf, u64), StorageError> {
        let path = dir.join(segment_name(seq, first_index));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let made = if zeros {
            zero_fill::zero_fill(&file, &path, len, None)
        } else {
            preallocate(&file, &path, len).and_then(|()| file.sync_all().map_err(io_err(&path)))
        };
        if let Err(e) = made {
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
            first_index: self.tail.next_index,
            prev_term: self.tail.last_term,
            hard_state: self.tail.hard_state,
        };
        let len = self.push_frame(|at, out| codec::encode_sequenced(&rec, at, out))?;
        self.tail.offset += len as u64;
        self.tail.next_seq += 1;
        self.sync()
    }

    /// Encodes the next frame (numbered `next_seq`) at the end of
    /// `pending` with `encode`, and returns its length. Advances nothing:
    /// the caller does, once the frame is known to fit the segment.
    fn push_frame(
        &mut self,
        encode: impl FnOnce(FrameSeq, &mut Vec<u8>) -> Result<(), codec::EncodeError>,
    ) -> Result<usize, StorageError> {
        let at = FrameSeq {
            seq: self.tail.next_seq,
            synced: self.synced_seq,
        };
        let start = codec::begin_frame(&mut self.pending);
        let made = encode(at, &mut self.pending)
            .map_err(StorageError::from)
            .and_then(|()| {
                codec::finish_frame(&mut self.pending, start).map_err(|bytes| {
                    StorageError::TooLarge {
                        bytes,
                        max: MAX_FRAME_BYTES,
                    }
                })
            });
        match made {
            Ok(()) => Ok(self.pending.len() - start),
            Err(e) => {
                self.pending.truncate(start);
                Err(e)
            }
        }
    }

    /// Drops the pending frames: the tail goes back to the last write.
    fn roll_back(&mut self) {
        self.pending.clear();
        self.tail = self.written;
    }

    /// Allocated size of the current segment.
    fn capacity(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.len)
    }

    /// Writes the pending frames with one `pwrite`. On failure nothing of
    /// them counts: the tail is rolled back to before them (a retry
    /// overwrites whatever part reached the file, and a crash leaves a torn
    /// tail that recovery truncates).
    fn flush(&mut self) -> Result<(), StorageError> {
        if !self.pending.is_empty() {
            let at = self.tail.offset - self.pending.len() as u64;
            let res = self.file.write_all_at(&self.pending, at);
            if let Err(e) = res {
                self.roll_back();
                return Err(StorageError::from_io(self.current_path(), e));
            }
            self.pending.clear();
            if self.pending.capacity() > GROUP_BUFFER_KEEP_BYTES {
                // A rare huge group (a catch-up batch) does not pin its buffer.
                self.pending = Vec::new();
            }
        }
        self.written = self.tail;
        if self.preparer.is_none()
            && self.tail.offset.saturating_mul(100)
                >= self.capacity().saturating_mul(PREPARE_AT_PERCENT)
        {
            self.preparer = Preparer::start(&self.dir, self.opts.segment_bytes);
        }
        Ok(())
    }

    fn current_path(&self) -> &Path {
        match self.segments.last() {
            Some(s) => &s.path,
            None => &self.dir,
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
        self.flush()?;
        let path = self.current_path().to_path_buf();
        let failed = |source| StorageError::SyncFailed {
            path: path.clone(),
            source,
        };
        #[cfg(test)]
        let pending = super::sync_gate::Durable {
            hard_state: self.tail.hard_state,
            last_index: self.tail.next_index - 1,
        };
        #[cfg(test)]
        if let Some(gate) = &self.sync_gate {
            gate.before_sync(pending).map_err(failed)?;
        }
        self.file.sync_data().map_err(failed)?;
        // Earlier segments were synced before this one was created.
        self.synced_seq = self.tail.next_seq - 1;
        #[cfg(test)]
        if let Some(gate) = &self.sync_gate {
            gate.after_sync(pending);
        }
        Ok(())
    }

    /// Appends a batch of entries and/or a hard state (one frame, or more
    /// for a batch above [`MAX_FRAME_BYTES`]), rotating segments as needed,
    /// and writes it. Does not sync: call [`Wal::sync`] once after a group
    /// of appends.
    pub fn append(
        &mut self,
        entries: &[Entry<Vec<u8>>],
        hard_state: Option<HardState>,
    ) -> Result<(), StorageError> {
        self.append_group([(entries, hard_state)])
    }

    /// Appends several batches like [`Wal::append`], all written with one
    /// `pwrite` (per segment they fall in). On failure none of them counts
    /// and the caller may append them all again.
    pub fn append_group<'a>(
        &mut self,
        batches: impl IntoIterator<Item = (&'a [Entry<Vec<u8>>], Option<HardState>)>,
    ) -> Result<(), StorageError> {
        for (entries, hard_state) in batches {
            if let Err(e) = self.encode_batch(entries, hard_state) {
                self.roll_back();
                return Err(e);
            }
        }
        self.flush()
    }

    /// Encodes one batch into `pending` (writing what is pending first if
    /// the segment has to rotate).
    fn encode_batch(
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
            let chunk = &entries[start..end];
            let hs = if last_chunk { hard_state } else { None };
            let encode = |at, out: &mut Vec<u8>| codec::encode_batch_sequenced(chunk, hs, at, out);
            let mut len = self.push_frame(encode)?;
            if self.tail.offset + len as u64 > self.capacity() {
                self.pending.truncate(self.pending.len() - len);
                self.rotate(len as u64)?;
                // The segment start took this frame's number.
                len = self.push_frame(encode)?;
            }
            self.tail.offset += len as u64;
            self.tail.next_seq += 1;
            if let Some(last) = chunk.last() {
                self.tail.next_index = last.index + 1;
                self.tail.last_term = last.term;
            }
            if let Some(hs) = hs {
                self.tail.hard_state = hs;
            }
            start = end;
            if last_chunk {
                return Ok(());
            }
        }
    }

    /// Starts a new segment, named after the index the next entry would
    /// have. (A batch in it may still overwrite from a lower index: overwrites
    /// only happen above the commit index, and segments are only purged below
    /// a snapshot, which is at or below the commit index.)
    fn rotate(&mut self, need: u64) -> Result<(), StorageError> {
        self.sync()?;
        let seq = self.segments.last().map_or(0, |s| s.seq + 1);
        let first_index = self.tail.next_index;
        let len = self.opts.segment_bytes.max(need + 4096);
        let (file, path, capacity) = match self.take_prepared(seq, first_index, len) {
            Some(made) => made,
            None => Self::create_segment(&self.dir, seq, first_index, len, false)?,
        };
        self.file = file;
        self.tail.offset = 0;
        self.segments.push(Segment {
            seq,
            first_index,
            path,
            len: capacity,
        });
        self.written = self.tail;
        self.write_segment_start()
    }

    /// Whether no segment is being prepared right now (none started, or
    /// its thread finished): for tests that need the next rotation to take
    /// a prepared segment.
    #[cfg(test)]
    pub(crate) fn preparer_idle(&self) -> bool {
        self.preparer.as_ref().is_none_or(Preparer::is_finished)
    }

    /// The prepared segment as segment `seq`, if it is ready and large
    /// enough (its name made durable). Never waits for it; a failed
    /// preparation is logged and forgotten.
    fn take_prepared(
        &mut self,
        seq: u64,
        first_index: u64,
        len: u64,
    ) -> Option<(File, PathBuf, u64)> {
        if !self.preparer.as_ref()?.is_finished() {
            return None;
        }
        let path = self.dir.join(segment_name(seq, first_index));
        let taken = self
            .preparer
            .take()?
            .take(len, &path)
            .and_then(|made| match made {
                Some((file, capacity)) => sync_dir(&self.dir).map(|()| Some((file, capacity))),
                None => Ok(None),
            });
        match taken {
            Ok(Some((file, capacity))) => Some((file, path, capacity)),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "preparing a zero-filled WAL segment failed; creating it with fallocate");
                // A half-renamed file must not be mistaken for the log.
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// Restarts the log empty after a snapshot at `(index, term)`: a new
    /// segment starts at `index + 1` and every older segment is deleted.
    /// The snapshot must already be durable.
    pub fn reset_after_snapshot(&mut self, index: u64, term: u64) -> Result<(), StorageError> {
        self.tail.next_index = index + 1;
        self.tail.last_term = term;
        self.tail.hard_state.commit = self.tail.hard_state.commit.max(index);
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

    /// The WAL's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Bytes allocated by all segments (not the one being prepared).
    pub fn allocated_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }
}

/// Where replaying one segment stopped.
struct SegmentEnd {
    /// Offset after its last valid frame.
    offset: u64,
    /// Whether its frames are sequenced (format 2); an empty segment counts
    /// as sequenced.
    sequenced: bool,
}

/// How replaying a segment ended.
enum Replayed {
    /// At the end of its data (after truncating a torn tail, if any).
    End(SegmentEnd),
    /// At mid-log damage; nothing was changed on disk.
    MidLog(Found),
}

/// Mid-log damage as the replay found it.
struct Found {
    offset: usize,
    reason: String,
    /// Whether the segment's frames are sequenced.
    sequenced: bool,
}

/// Whether a frame numbered `at` may follow: `start` is `Some(sequenced)`
/// once the segment's start frame was read, `last_seq` the number of the
/// last valid frame (0 if none or unsequenced).
fn in_sequence(at: Option<FrameSeq>, start: Option<bool>, last_seq: u64) -> bool {
    match (start, at) {
        // A segment start after purged or unsequenced segments may have any
        // number; after a sequenced one it continues the numbering.
        (None, Some(a)) => last_seq == 0 || a.seq == last_seq + 1,
        (None, None) => last_seq == 0,
        (Some(true), Some(a)) => a.seq == last_seq + 1,
        (Some(false), None) => true,
        // A segment never mixes the two formats.
        (Some(true), None) | (Some(false), Some(_)) => false,
    }
}

/// Replays one segment into `rec`, advancing `last_seq` past its valid
/// frames, and classifies damage (see the module doc). `buf` is scratch
/// space for the segment's bytes, reused across segments.
fn replay_segment(
    seg: &Segment,
    is_last: bool,
    is_first: bool,
    rec: &mut Recovered,
    last_seq: &mut u64,
    buf: &mut Vec<u8>,
) -> Result<Replayed, StorageError> {
    buf.clear();
    File::open(&seg.path)
        .and_then(|mut f| f.read_to_end(buf))
        .map_err(io_err(&seg.path))?;
    let buf = &buf[..];
    let corrupt = |offset: usize, reason: String| StorageError::Corrupt {
        path: seg.path.clone(),
        offset: offset as u64,
        reason,
    };
    let mut pos = 0usize;
    let mut start: Option<bool> = None;
    let (pos, reason) = loop {
        match codec::read_frame(&buf[pos..]) {
            FrameRead::Frame(payload, len) => {
                let (record, at) =
                    codec::decode_sequenced(payload).map_err(|e| corrupt(pos, e.to_string()))?;
                if !in_sequence(at, start, *last_seq) {
                    break (pos, "valid frame out of sequence");
                }
                apply_record(record, seg, pos, is_first && start.is_none(), rec)?;
                start.get_or_insert(at.is_some());
                if let Some(a) = at {
                    *last_seq = a.seq;
                }
                pos += len;
            }
            FrameRead::End => {
                if buf[pos..].iter().all(|b| *b == 0) {
                    return Ok(Replayed::End(SegmentEnd {
                        offset: pos as u64,
                        sequenced: start.unwrap_or(true),
                    }));
                }
                break (pos, "zeroed frame header followed by data");
            }
            FrameRead::Bad { reason, .. } => break (pos, reason),
        }
    };
    let sequenced = start.unwrap_or(true);
    if !is_last {
        return Ok(Replayed::MidLog(Found {
            offset: pos,
            reason: format!("{reason} in a segment that is not the last (it was synced before the next segment was created)"),
            sequenced,
        }));
    }
    if let Some((later, at)) = find_durable_witness(buf, pos, *last_seq, start == Some(true)) {
        let witness = match at {
            Some(a) => format!(
                "frame {} at offset {later} was written after frame {} was durable",
                a.seq,
                *last_seq + 1
            ),
            None => format!("an unsequenced (format 1) frame at offset {later} follows it"),
        };
        return Ok(Replayed::MidLog(Found {
            offset: pos,
            reason: format!(
                "mid-log damage ({reason}): {witness}, so acknowledged entries may be damaged"
            ),
            sequenced,
        }));
    }
    let data_end = buf.iter().rposition(|b| *b != 0).map_or(pos, |i| i + 1);
    let dropped = (data_end - pos) as u64;
    zero_range(&seg.path, pos as u64, data_end as u64)?;
    tracing::warn!(
        file = %seg.path.display(),
        offset = pos,
        bytes_dropped = dropped,
        reason,
        "truncated a torn WAL tail: no later frame shows it was ever durable, so it was never acknowledged"
    );
    rec.torn_tail = Some((seg.path.clone(), pos as u64));
    rec.torn_bytes_dropped = dropped;
    Ok(Replayed::End(SegmentEnd {
        offset: pos as u64,
        sequenced,
    }))
}

fn read_all(path: &Path) -> Result<Vec<u8>, StorageError> {
    let mut buf = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .map_err(io_err(path))?;
    Ok(buf)
}

/// The highest entry index or commit index named by any valid frame at any
/// byte offset from `from` on (0 if none). Frames after damage sit at
/// unknown boundaries, so every offset is tried (filtered by the record tag
/// before the checksum). A stale frame can only raise the result, which is
/// the safe direction for a barrier.
fn highest_index_after(buf: &[u8], from: usize) -> u64 {
    let mut highest = 0u64;
    let mut q = from;
    while q + FRAME_HEADER_BYTES < buf.len() {
        if codec::is_record_tag(buf[q + FRAME_HEADER_BYTES]) {
            if let FrameRead::Frame(payload, _) = codec::read_frame(&buf[q..]) {
                if let Ok((record, _)) = codec::decode_sequenced(payload) {
                    let named = match record {
                        Record::SegmentStart {
                            first_index,
                            hard_state,
                            ..
                        } => first_index.saturating_sub(1).max(hard_state.commit),
                        Record::Batch {
                            entries,
                            hard_state,
                        } => entries
                            .last()
                            .map_or(0, |e| e.index)
                            .max(hard_state.map_or(0, |h| h.commit)),
                    };
                    if named <= MAX_TERM_OR_INDEX {
                        highest = highest.max(named);
                    }
                }
            }
        }
        q += 1;
    }
    highest
}

/// Mid-log damage in `segments[i]`: works out the barrier, has it recorded
/// durably, then drops everything from the damage on (zeroes the rest of the
/// segment and syncs it, deletes later segments and syncs the directory).
fn cut_mid_log(
    segments: &[Segment],
    i: usize,
    found: Found,
    rec: &Recovered,
    record_barrier: &mut dyn FnMut(&MidLogDamage) -> Result<(), StorageError>,
) -> Result<MidLogDamage, StorageError> {
    let seg = &segments[i];
    let buf = read_all(&seg.path)?;
    let mut barrier = rec
        .hard_state
        .commit
        .max(highest_index_after(&buf, found.offset));
    for later in &segments[i + 1..] {
        barrier = barrier.max(highest_index_after(&read_all(&later.path)?, 0));
    }
    let damage = MidLogDamage {
        path: seg.path.clone(),
        offset: found.offset as u64,
        reason: found.reason,
        barrier,
        kept_last_index: (rec.first_index + rec.entries.len() as u64).saturating_sub(1),
        segments_dropped: segments.len() - i - 1,
    };
    // The evidence is about to be dropped: the barrier must be durable first.
    record_barrier(&damage)?;
    let data_end = buf
        .iter()
        .rposition(|b| *b != 0)
        .map_or(found.offset, |e| e + 1)
        .max(found.offset);
    zero_range(&seg.path, found.offset as u64, data_end as u64)?;
    for later in &segments[i + 1..] {
        fs::remove_file(&later.path).map_err(io_err(&later.path))?;
    }
    if damage.segments_dropped > 0 {
        if let Some(dir) = seg.path.parent() {
            sync_dir(dir)?;
        }
    }
    Ok(damage)
}

/// Looks for a valid frame at any byte offset from `from` on that proves the
/// frame numbered `last_seq + 1` had been durable: a sequenced frame whose
/// `synced` reaches it, or (unless the segment is known sequenced) any
/// unsequenced frame, which carries no proof either way. Frames numbered at
/// or below `last_seq` are stale (an earlier use of the space) and frames
/// with a lower `synced` were written in the same unsynced window as the
/// damage: neither is a witness.
fn find_durable_witness(
    buf: &[u8],
    from: usize,
    last_seq: u64,
    sequenced: bool,
) -> Option<(usize, Option<FrameSeq>)> {
    let mut q = from;
    while q + FRAME_HEADER_BYTES < buf.len() {
        // Cheap filter first: a frame's payload starts with a record tag.
        if codec::is_record_tag(buf[q + FRAME_HEADER_BYTES]) {
            if let FrameRead::Frame(payload, _) = codec::read_frame(&buf[q..]) {
                if let Ok((_, at)) = codec::decode_sequenced(payload) {
                    let proves = match at {
                        Some(a) => a.synced > last_seq,
                        None => !sequenced,
                    };
                    if proves {
                        return Some((q, at));
                    }
                }
            }
        }
        q += 1;
    }
    None
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

/// Zeroes `[from, to)` of a file and syncs it.
fn zero_range(path: &Path, from: u64, to: u64) -> Result<(), StorageError> {
    assert!(from <= to, "zero_range: from {from} after to {to}");
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    f.seek(SeekFrom::Start(from)).map_err(io_err(path))?;
    let zeros = vec![0u8; 64 * 1024];
    let mut left = to - from;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n]).map_err(io_err(path))?;
        left -= n as u64;
    }
    f.sync_data().map_err(io_err(path))
}
