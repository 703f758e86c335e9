//! State-machine snapshots: one checksummed file per snapshot in
//! `<data-dir>/member/snap`, named `{term:016x}-{index:016x}.snap`.
//!
//! Layout: `b"MRSNAP01" | crc32c(payload): u32 LE | len: u64 LE | payload`,
//! payload = `index: u64 | term: u64 | conf_len: u64 | conf_state (postcard,
//! the core's serde form) | data`. Files are written to a temporary name, synced, renamed
//! and the directory synced, so a crash leaves either the old or the new
//! snapshot, never a partial one under a snapshot name.
//!
//! [`save_streamed`] writes the same file from a source that produces the
//! data in pieces (the state machine's snapshot, serialized step by step on
//! a snapshot thread), so the data is never held in memory whole; the
//! result, [`SnapshotFile`], serves followers from the file.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use metalraft_core::{ConfState, MAX_TERM_OR_INDEX};

use super::codec::EncodeError;
use super::delta::Extent;
use super::error::StorageError;
use super::wal::{create_dir_durable, sync_dir};

const MAGIC: &[u8; 8] = b"MRSNAP01";
const HEADER_BYTES: usize = 8 + 4 + 8;
/// Snapshots kept on disk (the newest plus older ones as a fallback for
/// operators; only the newest is loaded).
pub const SNAPSHOTS_KEPT: usize = 2;
/// A streamed snapshot is synced every this many bytes as it is written, so
/// the device never has a whole snapshot's dirty pages to flush at once:
/// the WAL's `fdatasync`s queue behind one such slice at most. 4 MiB slices
/// took 13–100 ms to sync under the put-64 benchmark and the WAL's group
/// commits during snapshots reached 51–205 ms at p99.9
/// (docs/latency-budget.md); 1 MiB makes the wait behind one a quarter.
pub const SNAPSHOT_SYNC_BYTES: u64 = 1024 * 1024;
/// Write rate of a paced snapshot ([`SnapshotWriter::pace`]): the snapshot
/// thread sleeps after a synced slice that got ahead of it, so the WAL
/// shares the disk with at most this much snapshot traffic per member.
/// Snapshots then take longer (a 40 MB store: about 1.7 s), and fewer of
/// them fit in a busy period (the replica takes one at a time; the WAL
/// keeps the entries meanwhile).
pub const SNAPSHOT_WRITE_BYTES_PER_SEC: u64 = 24 * 1024 * 1024;
/// Largest encoded membership record a snapshot may hold.
const MAX_CONF_BYTES: u64 = 64 * 1024;

/// A state-machine snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Last log index the state reflects.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// Membership at `index`.
    pub conf_state: ConfState,
    /// The state machine's own serialization.
    pub data: Vec<u8>,
}

fn name(term: u64, index: u64) -> String {
    format!("{term:016x}-{index:016x}.snap")
}

/// Whether `n` is a full snapshot file's name.
pub(super) fn is_full_name(n: &str) -> bool {
    parse_name(n).is_some()
}

fn parse_name(n: &str) -> Option<(u64, u64)> {
    let stem = n.strip_suffix(".snap")?;
    let (t, i) = stem.split_once('-')?;
    Some((
        u64::from_str_radix(t, 16).ok()?,
        u64::from_str_radix(i, 16).ok()?,
    ))
}

/// Why snapshot file bytes were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The file does not start with the snapshot magic.
    #[error("not a metalraft snapshot (bad magic)")]
    BadMagic,
    /// The payload length differs from the header's.
    #[error("length {actual} does not match header {header}")]
    Length {
        /// Payload bytes present.
        actual: u64,
        /// Payload bytes the header claims.
        header: u64,
    },
    /// The payload's checksum does not match.
    #[error("checksum mismatch")]
    Checksum,
    /// The payload ends inside a field.
    #[error("truncated")]
    Truncated,
    /// The membership record is larger than a snapshot may hold.
    #[error("membership record of {0} bytes")]
    ConfTooLarge(u64),
    /// The membership record does not decode.
    #[error("membership record: {0}")]
    Conf(postcard::Error),
    /// The index or term is beyond what the core accepts.
    #[error("index {index} or term {term} out of range")]
    OutOfRange {
        /// The snapshot's index.
        index: u64,
        /// The snapshot's term.
        term: u64,
    },
}

/// Encodes a snapshot file's bytes, copying the data once.
pub fn encode(s: &Snapshot) -> Result<Vec<u8>, EncodeError> {
    let conf = postcard::to_allocvec(&s.conf_state).map_err(EncodeError::ConfState)?;
    let mut out = Vec::with_capacity(HEADER_BYTES + 24 + conf.len() + s.data.len());
    out.extend_from_slice(MAGIC);
    // The checksum and length, filled in once the payload is written.
    out.extend_from_slice(&[0u8; HEADER_BYTES - 8]);
    out.extend_from_slice(&s.index.to_le_bytes());
    out.extend_from_slice(&s.term.to_le_bytes());
    out.extend_from_slice(&(conf.len() as u64).to_le_bytes());
    out.extend_from_slice(&conf);
    out.extend_from_slice(&s.data);
    let (head, p) = out.split_at_mut(HEADER_BYTES);
    head[8..12].copy_from_slice(&crc32c::crc32c(p).to_le_bytes());
    head[12..20].copy_from_slice(&(p.len() as u64).to_le_bytes());
    Ok(out)
}

fn u64_at(p: &[u8], pos: &mut usize) -> Result<u64, DecodeError> {
    let b = p.get(*pos..*pos + 8).ok_or(DecodeError::Truncated)?;
    *pos += 8;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Ok(u64::from_le_bytes(a))
}

/// Decodes and verifies a snapshot file's bytes.
pub fn decode(buf: &[u8]) -> Result<Snapshot, DecodeError> {
    let (head, at) = verify(buf)?;
    Ok(head.with_data(buf[at..].to_vec()))
}

/// [`decode`] of a buffer it may keep: the data is the buffer itself with
/// the header moved off its front, not a copy (a snapshot of a million
/// keys is hundreds of MB).
pub fn decode_owned(mut buf: Vec<u8>) -> Result<Snapshot, DecodeError> {
    let (head, at) = verify(&buf)?;
    buf.drain(..at);
    Ok(head.with_data(buf))
}

/// A snapshot without its data.
struct Head {
    index: u64,
    term: u64,
    conf_state: ConfState,
}

impl Head {
    fn with_data(self, data: Vec<u8>) -> Snapshot {
        Snapshot {
            index: self.index,
            term: self.term,
            conf_state: self.conf_state,
            data,
        }
    }
}

/// Verifies a snapshot file's bytes: its head, and where its data starts.
fn verify(buf: &[u8]) -> Result<(Head, usize), DecodeError> {
    if buf.len() < HEADER_BYTES || &buf[..8] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&buf[8..12]);
    let crc = u32::from_le_bytes(crc);
    let len = u64_at(buf, &mut 12)?;
    let p = &buf[HEADER_BYTES..];
    if p.len() as u64 != len {
        return Err(DecodeError::Length {
            actual: p.len() as u64,
            header: len,
        });
    }
    if crc32c::crc32c(p) != crc {
        return Err(DecodeError::Checksum);
    }
    let mut pos = 0usize;
    let index = u64_at(p, &mut pos)?;
    let term = u64_at(p, &mut pos)?;
    // The core refuses indices and terms above MAX_TERM_OR_INDEX; the log
    // that starts after the snapshot computes `index + 1`.
    if index > MAX_TERM_OR_INDEX || term > MAX_TERM_OR_INDEX {
        return Err(DecodeError::OutOfRange { index, term });
    }
    let conf_len = u64_at(p, &mut pos)?;
    if conf_len > MAX_CONF_BYTES {
        return Err(DecodeError::ConfTooLarge(conf_len));
    }
    let conf_end = pos + conf_len as usize;
    let conf_bytes = p.get(pos..conf_end).ok_or(DecodeError::Truncated)?;
    let conf_state: ConfState = postcard::from_bytes(conf_bytes).map_err(DecodeError::Conf)?;
    let head = Head {
        index,
        term,
        conf_state,
    };
    Ok((head, HEADER_BYTES + conf_end))
}

/// Writes `s` durably into `dir` and removes all but the newest
/// [`SNAPSHOTS_KEPT`] snapshots.
pub fn save(dir: &Path, s: &Snapshot) -> Result<PathBuf, StorageError> {
    create_dir_durable(dir)?;
    let path = dir.join(name(s.term, s.index));
    let tmp = dir.join(format!("{}.tmp", name(s.term, s.index)));
    let bytes = encode(s)?;
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(StorageError::from_io(&tmp, e));
    }
    fs::rename(&tmp, &path).map_err(|e| StorageError::from_io(&path, e))?;
    sync_dir(dir)?;
    keep_newest(dir)?;
    Ok(path)
}

/// Removes all but the newest [`SNAPSHOTS_KEPT`] snapshots in `dir`, and
/// the files the kept delta snapshots read from ([`super::delta`]).
fn keep_newest(dir: &Path) -> Result<(), StorageError> {
    // Temporary files are left alone: one may be a snapshot being written
    // or a received one waiting for its install (`PreparedSnapshot`).
    let mut all = list(dir, false)?;
    let old = all.len().saturating_sub(SNAPSHOTS_KEPT);
    let mut needed = std::collections::BTreeSet::new();
    for (_, _, kept) in &all[old..] {
        let Some(n) = kept.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if super::delta::parse_name(n).is_none() {
            continue;
        }
        match super::delta::read_manifest(kept)? {
            Ok(m) => needed.extend(m.data.into_iter().map(|e| e.file)),
            Err(e) => {
                // Which files it needs is unknown: remove nothing.
                tracing::warn!(file = %kept.display(), reason = %e, "delta snapshot's manifest unreadable; keeping every older snapshot");
                return Ok(());
            }
        }
    }
    all.truncate(old);
    for (_, _, path) in all {
        let n = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !needed.contains(n) {
            fs::remove_file(&path).map_err(|e| StorageError::from_io(&path, e))?;
        }
    }
    Ok(())
}

/// The data of a saved snapshot, read from its file when a follower needs
/// it (open handles: it stays readable if a newer snapshot deletes the
/// file). A delta snapshot's data lies in several files
/// ([`super::delta`]): the parts, in order.
#[derive(Clone, Debug)]
pub struct SnapshotFile {
    parts: Arc<[FilePart]>,
    /// The data's length (the parts' lengths added up).
    data_len: u64,
}

/// A run of a snapshot's data in one open file.
#[derive(Clone, Debug)]
pub(super) struct FilePart {
    pub(super) file: Arc<File>,
    /// Where the run starts in the file.
    pub(super) offset: u64,
    pub(super) len: u64,
}

impl SnapshotFile {
    /// The data made of `parts`, in order.
    pub(super) fn from_parts(parts: Vec<FilePart>) -> SnapshotFile {
        let data_len = parts.iter().map(|p| p.len).sum();
        SnapshotFile {
            parts: parts.into(),
            data_len,
        }
    }

    /// The data's length in bytes.
    pub fn len(&self) -> u64 {
        self.data_len
    }

    /// Whether the data is empty.
    pub fn is_empty(&self) -> bool {
        self.data_len == 0
    }

    /// Whether the data lies in several files (a delta snapshot's).
    pub fn is_delta(&self) -> bool {
        self.parts.len() > 1
    }

    /// Up to `max_len` bytes of the data from `offset`.
    pub fn read_at(&self, offset: u64, max_len: usize) -> std::io::Result<Vec<u8>> {
        let start = offset.min(self.data_len);
        let len = (self.data_len - start).min(max_len as u64) as usize;
        let mut buf = vec![0u8; len];
        let (mut filled, mut part_start) = (0usize, 0u64);
        for p in self.parts.iter() {
            let part_end = part_start + p.len;
            let at = start + filled as u64;
            if filled < len && at < part_end {
                let within = at - part_start;
                let n = ((p.len - within) as usize).min(len - filled);
                p.file
                    .read_exact_at(&mut buf[filled..filled + n], p.offset + within)?;
                filled += n;
            }
            part_start = part_end;
        }
        Ok(buf)
    }
}

/// Why [`save_streamed`] did not save a snapshot (nothing was saved: at
/// most a `.tmp` file is left, which [`load_latest`] removes).
#[derive(Debug, thiserror::Error)]
pub enum StreamedSaveError<E: std::error::Error + 'static> {
    /// Writing, syncing or renaming failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The data source failed (e.g. the state changed under it).
    #[error("snapshot data: {0}")]
    Source(#[source] E),
    /// The source produced another length than it announced (a bug).
    #[error("snapshot data of {actual} bytes, {announced} announced")]
    Length {
        /// Bytes produced.
        actual: u64,
        /// Bytes announced.
        announced: u64,
    },
}

/// Saves a snapshot like [`save`], its `data_len` bytes of data produced by
/// `fill`: each call appends the next piece to the (empty) buffer it is
/// given and says whether that was the last. Only one piece is in memory at
/// a time. The file has the layout of [`encode`] exactly ([`SnapshotWriter`]).
pub fn save_streamed<E: std::error::Error + 'static>(
    dir: &Path,
    index: u64,
    term: u64,
    conf_state: &ConfState,
    data_len: u64,
    mut fill: impl FnMut(&mut Vec<u8>) -> Result<bool, E>,
) -> Result<SnapshotFile, StreamedSaveError<E>> {
    let mut w = SnapshotWriter::create(dir, index, term, conf_state)?;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let last = fill(&mut buf).map_err(StreamedSaveError::Source)?;
        w.write(&buf)?;
        if last {
            break;
        }
    }
    if w.data_len() != data_len {
        return Err(StreamedSaveError::Length {
            actual: w.data_len(),
            announced: data_len,
        });
    }
    Ok(w.finish(&[])?)
}

/// A [`SnapshotWriter`] used against its contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WriterMisuse {
    /// A second slot was reserved.
    #[error("a second slot reserved")]
    SecondSlot,
    /// The slot was filled with another length than reserved (0: none
    /// reserved).
    #[error("a slot of {reserved} bytes filled with {given}")]
    SlotLength {
        /// Bytes reserved.
        reserved: usize,
        /// Bytes given.
        given: usize,
    },
    /// Written after a failure closed the file.
    #[error("written after the file was closed")]
    Closed,
}

/// Where the slot reserved by [`SnapshotWriter::reserve`] is.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// Its offset in the data.
    at: u64,
    /// Its length.
    len: usize,
    /// The checksum of the payload before it.
    crc_before: u32,
}

/// A snapshot file written in one pass, piece by piece, in the layout of
/// [`encode`]: the header's checksum and length are written last, and one
/// slot of the data may be reserved on the way and filled at the end (the
/// state machine's snapshot announces its key-value part's length before
/// that part, which is known only once it is written).
///
/// Written to a temporary name; [`finish`](Self::finish) syncs, renames and
/// syncs the directory. Dropped unfinished, it removes the temporary file.
/// The data is synced every [`SNAPSHOT_SYNC_BYTES`] as it is written.
pub struct SnapshotWriter {
    file: Option<File>,
    dir: PathBuf,
    tmp: PathBuf,
    path: PathBuf,
    /// Where the data starts in the file.
    data_offset: u64,
    /// Payload bytes before the data (index, term, conf).
    head_len: u64,
    /// Data bytes written so far.
    written: u64,
    synced: u64,
    /// The checksum of the payload since the slot (or since the start, if
    /// none was reserved).
    crc: u32,
    slot: Option<Slot>,
    /// Where the syncs' durations go (`snapshot_sync`).
    latency: Option<Arc<crate::latency::Latency>>,
    /// With [`pace`](Self::pace): when writing started, and the rate.
    pace: Option<(std::time::Instant, u64)>,
    /// The extent being recorded ([`begin_extent`](Self::begin_extent)):
    /// where it starts in the file, and the checksum of its bytes so far.
    extent: Option<(u64, u32)>,
}

impl SnapshotWriter {
    /// Creates the temporary file of the snapshot at `index`/`term` and
    /// writes its header (checksum and length zero until
    /// [`finish`](Self::finish)).
    pub fn create(
        dir: &Path,
        index: u64,
        term: u64,
        conf_state: &ConfState,
    ) -> Result<SnapshotWriter, StorageError> {
        create_dir_durable(dir)?;
        let path = dir.join(name(term, index));
        let tmp = dir.join(format!("{}.tmp", name(term, index)));
        let conf = postcard::to_allocvec(conf_state)
            .map_err(|e| StorageError::from(EncodeError::ConfState(e)))?;
        let mut head = Vec::with_capacity(HEADER_BYTES + 3 * 8 + conf.len());
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&[0u8; 12]);
        head.extend_from_slice(&index.to_le_bytes());
        head.extend_from_slice(&term.to_le_bytes());
        head.extend_from_slice(&(conf.len() as u64).to_le_bytes());
        head.extend_from_slice(&conf);
        let mut w = SnapshotWriter {
            file: None,
            dir: dir.to_path_buf(),
            crc: crc32c::crc32c(&head[HEADER_BYTES..]),
            head_len: (head.len() - HEADER_BYTES) as u64,
            data_offset: head.len() as u64,
            tmp,
            path,
            written: 0,
            synced: 0,
            slot: None,
            latency: None,
            pace: None,
            extent: None,
        };
        let mut f = File::create(&w.tmp).map_err(|e| StorageError::from_io(&w.tmp, e))?;
        f.write_all(&head)
            .map_err(|e| StorageError::from_io(&w.tmp, e))?;
        w.file = Some(f);
        Ok(w)
    }

    /// Creates the temporary file of the delta snapshot at `index`/`term`
    /// ([`super::delta`]): its magic, then whatever is written, then the
    /// manifest [`finish_delta`](Self::finish_delta) appends.
    pub fn create_delta(dir: &Path, index: u64, term: u64) -> Result<SnapshotWriter, StorageError> {
        create_dir_durable(dir)?;
        let final_name = super::delta::name(term, index);
        let path = dir.join(&final_name);
        let tmp = dir.join(format!("{final_name}.tmp"));
        let mut f = File::create(&tmp).map_err(|e| StorageError::from_io(&tmp, e))?;
        f.write_all(super::delta::MAGIC)
            .map_err(|e| StorageError::from_io(&tmp, e))?;
        Ok(SnapshotWriter {
            file: Some(f),
            dir: dir.to_path_buf(),
            tmp,
            path,
            data_offset: super::delta::MAGIC.len() as u64,
            head_len: 0,
            written: 0,
            synced: 0,
            crc: 0,
            slot: None,
            latency: None,
            pace: None,
            extent: None,
        })
    }

    /// Starts recording the bytes written from now on as one [`Extent`]
    /// of this file (ending a recording under way).
    pub fn begin_extent(&mut self) {
        self.extent = Some((self.data_offset + self.written, 0));
    }

    /// Ends the recording [`begin_extent`](Self::begin_extent) started:
    /// the bytes written since, by name, offset, length and checksum
    /// (empty if none was started).
    pub fn end_extent(&mut self) -> Extent {
        let end = self.data_offset + self.written;
        let (offset, crc) = self.extent.take().unwrap_or((end, 0));
        Extent {
            file: self
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            offset,
            len: end - offset,
            crc,
        }
    }

    /// Ends a delta file: appends the manifest (`data`, the snapshot's data
    /// as extents of this and earlier snapshot files, in order), syncs,
    /// renames, syncs the directory and removes the snapshots no longer
    /// kept. Returns the data, open for followers.
    pub fn finish_delta(
        mut self,
        conf_state: &ConfState,
        data: Vec<Extent>,
    ) -> Result<SnapshotFile, StorageError> {
        let manifest = super::delta::Manifest {
            conf_state: conf_state.clone(),
            data,
        };
        // The manifest is not part of any extent.
        self.extent = None;
        let trailer = super::delta::encode_manifest(&manifest)?;
        self.raw_write(&trailer)?;
        let f = self
            .file
            .take()
            .ok_or(StorageError::from(WriterMisuse::Closed))?;
        self.timed_sync(&f, true)?;
        drop(f);
        // Checked before it becomes a snapshot: dropped on error, the
        // temporary file is removed.
        let file = super::delta::open_extents(&self.dir, &self.path, &self.tmp, &manifest.data)?;
        fs::rename(&self.tmp, &self.path).map_err(|e| StorageError::from_io(&self.path, e))?;
        self.tmp = PathBuf::new();
        sync_dir(&self.dir)?;
        keep_newest(&self.dir)?;
        Ok(file)
    }

    /// Records every sync's duration in `latency` (`snapshot_sync`).
    pub fn observe_syncs(&mut self, latency: Arc<crate::latency::Latency>) {
        self.latency = Some(latency);
    }

    fn timed_sync(&self, f: &File, all: bool) -> Result<(), StorageError> {
        let started = std::time::Instant::now();
        let r = if all { f.sync_all() } else { f.sync_data() };
        r.map_err(|e| self.io(e))?;
        if let Some(l) = &self.latency {
            l.since(crate::latency::Stage::SnapshotSync, started);
        }
        Ok(())
    }

    /// Keeps the data's write rate at or below `bytes_per_sec` (from now
    /// on; checked at every synced slice, so bursts are at most
    /// [`SNAPSHOT_SYNC_BYTES`]).
    pub fn pace(&mut self, bytes_per_sec: u64) {
        self.pace = Some((std::time::Instant::now(), bytes_per_sec.max(1)));
    }

    /// Data bytes written so far (the slot included).
    pub fn data_len(&self) -> u64 {
        self.written
    }

    fn io(&self, e: std::io::Error) -> StorageError {
        StorageError::from_io(&self.tmp, e)
    }

    fn raw_write(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        let f = self
            .file
            .as_mut()
            .ok_or(StorageError::from(WriterMisuse::Closed))?;
        let r = f.write_all(bytes);
        r.map_err(|e| self.io(e))?;
        self.written += bytes.len() as u64;
        if self.written - self.synced >= SNAPSHOT_SYNC_BYTES {
            let f = self
                .file
                .as_ref()
                .ok_or(StorageError::from(WriterMisuse::Closed))?;
            self.timed_sync(f, false)?;
            self.synced = self.written;
            if let Some((since, rate)) = self.pace {
                let due = Duration::from_secs_f64(self.written as f64 / rate as f64);
                if let Some(ahead) = due.checked_sub(since.elapsed()) {
                    std::thread::sleep(ahead);
                }
            }
        }
        Ok(())
    }

    /// Appends `bytes` to the data.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        if let Some((_, crc)) = &mut self.extent {
            *crc = crc32c::crc32c_append(*crc, bytes);
        }
        self.raw_write(bytes)
    }

    /// Reserves the next `len` bytes of the data (zeros until
    /// [`finish`](Self::finish) fills them). At most one slot.
    pub fn reserve(&mut self, len: usize) -> Result<(), StorageError> {
        if self.slot.is_some() {
            return Err(WriterMisuse::SecondSlot.into());
        }
        self.slot = Some(Slot {
            at: self.written,
            len,
            crc_before: self.crc,
        });
        self.crc = 0;
        self.raw_write(&vec![0u8; len])
    }

    /// Fills the reserved slot with `slot` (empty if none was reserved),
    /// writes the header's checksum and length, syncs, renames the file to
    /// its snapshot name, syncs the directory and removes all but the
    /// newest [`SNAPSHOTS_KEPT`] snapshots.
    pub fn finish(mut self, slot: &[u8]) -> Result<SnapshotFile, StorageError> {
        let payload_len = self.head_len + self.written;
        let crc = match self.slot {
            None if slot.is_empty() => self.crc,
            Some(s) if s.len == slot.len() => {
                let with_slot = crc32c::crc32c_append(s.crc_before, slot);
                let after = payload_len - self.head_len - s.at - s.len as u64;
                crc32c::crc32c_combine(with_slot, self.crc, after as usize)
            }
            s => {
                return Err(WriterMisuse::SlotLength {
                    reserved: s.map_or(0, |s| s.len),
                    given: slot.len(),
                }
                .into())
            }
        };
        let f = self
            .file
            .take()
            .ok_or(StorageError::from(WriterMisuse::Closed))?;
        let mut header = [0u8; 12];
        header[..4].copy_from_slice(&crc.to_le_bytes());
        header[4..].copy_from_slice(&payload_len.to_le_bytes());
        let r = (|| {
            if let Some(s) = self.slot {
                f.write_all_at(slot, self.data_offset + s.at)?;
            }
            f.write_all_at(&header, MAGIC.len() as u64)
        })();
        r.map_err(|e| self.io(e))?;
        self.timed_sync(&f, true)?;
        drop(f);
        fs::rename(&self.tmp, &self.path).map_err(|e| StorageError::from_io(&self.path, e))?;
        // Renamed: nothing for `Drop` to remove.
        self.tmp = PathBuf::new();
        sync_dir(&self.dir)?;
        let file = File::open(&self.path).map_err(|e| StorageError::from_io(&self.path, e))?;
        keep_newest(&self.dir)?;
        Ok(SnapshotFile::from_parts(vec![FilePart {
            file: Arc::new(file),
            offset: self.data_offset,
            len: self.written,
        }]))
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            self.file = None;
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// A received snapshot's file, written and synced under a temporary name
/// while the state machine restores from the same bytes ([`prepare`]).
/// [`commit`](Self::commit) makes it the current snapshot (rename,
/// directory sync) where the install's order puts the save: before the log
/// is reset and the install is acknowledged. Until then it is not a
/// snapshot: dropped uncommitted it removes its file, and a crash leaves a
/// `.tmp` that [`load_latest`] removes, so the previous state stays the one
/// a restart uses.
#[derive(Debug)]
pub struct PreparedSnapshot {
    dir: PathBuf,
    tmp: PathBuf,
    path: PathBuf,
    index: u64,
    term: u64,
    conf_state: ConfState,
    data_len: u64,
}

/// Suffix of a received snapshot's file until it is committed (ends in
/// `.tmp`, so a crash leaves nothing [`load_latest`] would use).
const PREPARED_SUFFIX: &str = "received.tmp";

/// Writes the file of the snapshot `index`/`term`/`conf_state` holding
/// `data` (the layout of [`encode`], without its copy of the data) under a
/// temporary name, and syncs it. Not yet a snapshot: see
/// [`PreparedSnapshot::commit`].
pub fn prepare(
    dir: &Path,
    index: u64,
    term: u64,
    conf_state: &ConfState,
    data: &[u8],
) -> Result<PreparedSnapshot, StorageError> {
    create_dir_durable(dir)?;
    let conf = postcard::to_allocvec(conf_state)
        .map_err(|e| StorageError::from(EncodeError::ConfState(e)))?;
    let mut head = Vec::with_capacity(HEADER_BYTES + 3 * 8 + conf.len());
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&[0u8; HEADER_BYTES - 8]);
    head.extend_from_slice(&index.to_le_bytes());
    head.extend_from_slice(&term.to_le_bytes());
    head.extend_from_slice(&(conf.len() as u64).to_le_bytes());
    head.extend_from_slice(&conf);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&head[HEADER_BYTES..]), data);
    let payload_len = (head.len() - HEADER_BYTES + data.len()) as u64;
    head[8..12].copy_from_slice(&crc.to_le_bytes());
    head[12..20].copy_from_slice(&payload_len.to_le_bytes());
    let p = PreparedSnapshot {
        dir: dir.to_path_buf(),
        tmp: dir.join(format!("{}.{PREPARED_SUFFIX}", name(term, index))),
        path: dir.join(name(term, index)),
        index,
        term,
        conf_state: conf_state.clone(),
        data_len: data.len() as u64,
    };
    // On error `p` is dropped and removes what was written.
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&p.tmp)?;
        f.write_all(&head)?;
        f.write_all(data)?;
        f.sync_all()
    };
    write().map_err(|e| StorageError::from_io(&p.tmp, e))?;
    Ok(p)
}

impl PreparedSnapshot {
    /// Whether this is the file of `s` (same index, term, membership and
    /// data length; the data is the bytes it was prepared from).
    pub fn is_of(&self, s: &Snapshot) -> bool {
        self.index == s.index
            && self.term == s.term
            && self.conf_state == s.conf_state
            && self.data_len == s.data.len() as u64
    }

    /// The snapshot's index.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Makes the file the current snapshot: renames it to its snapshot
    /// name, syncs the directory and removes all but the newest
    /// [`SNAPSHOTS_KEPT`] snapshots (what [`save`] does after its write).
    pub fn commit(mut self) -> Result<PathBuf, StorageError> {
        fs::rename(&self.tmp, &self.path).map_err(|e| StorageError::from_io(&self.path, e))?;
        // Renamed: nothing for `Drop` to remove.
        self.tmp = PathBuf::new();
        sync_dir(&self.dir)?;
        keep_newest(&self.dir)?;
        Ok(std::mem::take(&mut self.path))
    }
}

impl Drop for PreparedSnapshot {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Snapshot files in `dir` as `(index, term, path)`, oldest first; with
/// `remove_tmp` (at startup only) the temporary files of saves a crash
/// interrupted are removed.
fn list(dir: &Path, remove_tmp: bool) -> Result<Vec<(u64, u64, PathBuf)>, StorageError> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(StorageError::from_io(dir, e)),
    };
    for ent in rd {
        let ent = ent.map_err(|e| StorageError::from_io(dir, e))?;
        let n = ent.file_name();
        let Some(n) = n.to_str() else { continue };
        if n.ends_with(".tmp") {
            // A save interrupted by a crash: never renamed, never used.
            if remove_tmp {
                let _ = fs::remove_file(ent.path());
            }
            continue;
        }
        if let Some((term, index)) = parse_name(n).or_else(|| super::delta::parse_name(n)) {
            out.push((index, term, ent.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// A snapshot file that failed to read or verify and was set aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damaged {
    /// The file.
    pub path: PathBuf,
    /// Why it was refused.
    pub reason: String,
}

/// What [`load_latest`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The newest snapshot that verifies, if any, and its data open in its
    /// file(s) for followers (so the log need not keep a second copy in
    /// memory).
    pub snapshot: Option<(Snapshot, SnapshotFile)>,
    /// If it is a delta, its data as extents (the chain a later delta may
    /// extend, [`crate::snapshot_chain::Chain::loaded`]).
    pub extents: Option<Vec<Extent>>,
    /// Newer snapshot files that did not verify, newest first (logged; see
    /// [`set_aside`]).
    pub damaged: Vec<Damaged>,
}

/// Loads the newest snapshot in `dir` that verifies.
///
/// A newer snapshot that fails its checksum (a save whose data or rename
/// did not become durable, or damage at rest) is set aside and the next
/// older one is used. That is safe only if the WAL still holds every entry
/// after the older snapshot; `Storage::open` checks exactly that and
/// refuses to start otherwise, naming the damaged file.
pub fn load_latest(dir: &Path) -> Result<Loaded, StorageError> {
    let mut all = list(dir, true)?;
    let mut out = Loaded::default();
    while let Some((index, term, path)) = all.pop() {
        if path.extension().is_some_and(|e| e == "delta") {
            match super::delta::load(dir, &path, index, term)? {
                Ok((s, file, extents)) => {
                    out.snapshot = Some((s, file));
                    out.extents = Some(extents);
                    break;
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), reason = %e, "delta snapshot failed to verify; trying an older one");
                    out.damaged.push(Damaged {
                        path,
                        reason: e.to_string(),
                    });
                    continue;
                }
            }
        }
        // Sized once from the file's length: no regrowing copies.
        let mut buf = Vec::new();
        let file = File::open(&path)
            .and_then(|mut f| {
                let len = f.metadata()?.len();
                buf.reserve_exact(usize::try_from(len).unwrap_or(0));
                f.read_to_end(&mut buf)?;
                Ok(f)
            })
            .map_err(|e| StorageError::from_io(&path, e))?;
        let file_len = buf.len() as u64;
        match decode_owned(buf) {
            Ok(s) => {
                let len = s.data.len() as u64;
                let file = SnapshotFile::from_parts(vec![FilePart {
                    file: Arc::new(file),
                    offset: file_len - len,
                    len,
                }]);
                out.snapshot = Some((s, file));
                break;
            }
            Err(e) => {
                tracing::warn!(
                    file = %path.display(),
                    reason = %e,
                    "snapshot failed to verify; trying an older one"
                );
                out.damaged.push(Damaged {
                    path,
                    reason: e.to_string(),
                });
            }
        }
    }
    Ok(out)
}

/// Renames damaged snapshot files to `*.broken` (kept for operators, no
/// longer listed, so a later save cannot delete the good older snapshot in
/// their favour). Called once the older snapshot was found to suffice.
pub fn set_aside(dir: &Path, damaged: &[Damaged]) -> Result<(), StorageError> {
    for d in damaged {
        let mut broken = d.path.clone().into_os_string();
        broken.push(".broken");
        fs::rename(&d.path, &broken).map_err(|e| StorageError::from_io(&d.path, e))?;
        tracing::warn!(file = %d.path.display(), reason = %d.reason, "set a damaged snapshot aside as .broken; an older snapshot and the WAL cover it");
    }
    if !damaged.is_empty() {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streamed_snapshot_is_the_file_save_writes_and_serves_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let snap = Snapshot {
            index: 42,
            term: 7,
            conf_state: ConfState::default(),
            data: data.clone(),
        };
        let mut pieces = data.chunks(4096);
        let file = save_streamed::<std::io::Error>(
            dir.path(),
            snap.index,
            snap.term,
            &snap.conf_state,
            data.len() as u64,
            |out| {
                out.extend_from_slice(pieces.next().unwrap_or(&[]));
                Ok(pieces.len() == 0)
            },
        )
        .unwrap();
        let on_disk = fs::read(dir.path().join(name(7, 42))).unwrap();
        assert_eq!(on_disk, encode(&snap).unwrap());
        assert_eq!(
            load_latest(dir.path()).unwrap().snapshot.map(|(s, _)| s),
            Some(snap)
        );
        assert_eq!(file.len(), data.len() as u64);
        assert_eq!(file.read_at(1000, 10).unwrap(), data[1000..1010]);
        assert_eq!(file.read_at(99_995, 10).unwrap(), data[99_995..]);
        assert!(file.read_at(200_000, 10).unwrap().is_empty());
    }

    #[test]
    fn a_slot_filled_at_the_end_gives_the_file_save_writes() {
        let dir = tempfile::tempdir().unwrap();
        let conf = ConfState::default();
        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let mut data = b"head".to_vec();
        data.extend_from_slice(&[7, 8, 9]);
        data.extend_from_slice(&body);
        let mut w = SnapshotWriter::create(dir.path(), 9, 2, &conf).unwrap();
        w.write(b"head").unwrap();
        w.reserve(3).unwrap();
        assert!(matches!(
            w.reserve(1),
            Err(StorageError::SnapshotWriter(WriterMisuse::SecondSlot))
        ));
        for piece in body.chunks(100_000) {
            w.write(piece).unwrap();
        }
        let file = w.finish(&[7, 8, 9]).unwrap();
        let snap = Snapshot {
            index: 9,
            term: 2,
            conf_state: conf.clone(),
            data: data.clone(),
        };
        assert_eq!(
            fs::read(dir.path().join(name(2, 9))).unwrap(),
            encode(&snap).unwrap()
        );
        assert_eq!(file.len(), data.len() as u64);
        assert_eq!(file.read_at(4, 3).unwrap(), [7, 8, 9]);

        // A slot filled with the wrong length, or a writer dropped
        // unfinished, saves nothing.
        let mut w = SnapshotWriter::create(dir.path(), 10, 2, &conf).unwrap();
        w.reserve(3).unwrap();
        assert!(matches!(
            w.finish(&[1]),
            Err(StorageError::SnapshotWriter(WriterMisuse::SlotLength {
                reserved: 3,
                given: 1
            }))
        ));
        let mut w = SnapshotWriter::create(dir.path(), 11, 2, &conf).unwrap();
        w.write(b"partial").unwrap();
        drop(w);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![name(2, 9)], "no .tmp left");
        assert_eq!(
            load_latest(dir.path()).unwrap().snapshot.map(|(s, _)| s),
            Some(snap)
        );
    }

    #[test]
    fn a_paced_writer_keeps_to_its_rate() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SnapshotWriter::create(dir.path(), 1, 1, &ConfState::default()).unwrap();
        let rate = 16 * 1024 * 1024;
        w.pace(rate);
        let started = std::time::Instant::now();
        let piece = vec![1u8; 64 * 1024];
        // 4 MiB at 16 MiB/s: at least 0.25 s (the last slice's sleep is
        // after its sync, so the whole takes no less).
        for _ in 0..64 {
            w.write(&piece).unwrap();
        }
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "{:?}",
            started.elapsed()
        );
        w.finish(&[]).unwrap();
    }

    #[test]
    fn a_failed_or_short_source_saves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let conf = ConfState::default();
        let err = save_streamed(dir.path(), 1, 1, &conf, 10, |_| {
            Err(std::io::Error::other("the state changed"))
        });
        assert!(matches!(err, Err(StreamedSaveError::Source(_))));
        let err = save_streamed::<std::io::Error>(dir.path(), 1, 1, &conf, 10, |out| {
            out.extend_from_slice(b"short");
            Ok(true)
        });
        assert!(matches!(
            err,
            Err(StreamedSaveError::Length {
                actual: 5,
                announced: 10
            })
        ));
        let loaded = load_latest(dir.path()).unwrap();
        assert!(loaded.snapshot.is_none() && loaded.damaged.is_empty());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "no .tmp left");
    }
}
