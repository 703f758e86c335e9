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
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use metalraft_core::{ConfState, MAX_TERM_OR_INDEX};

use super::codec::EncodeError;
use super::error::StorageError;
use super::wal::{create_dir_durable, sync_dir};

const MAGIC: &[u8; 8] = b"MRSNAP01";
const HEADER_BYTES: usize = 8 + 4 + 8;
/// Snapshots kept on disk (the newest plus older ones as a fallback for
/// operators; only the newest is loaded).
pub const SNAPSHOTS_KEPT: usize = 2;
/// A streamed snapshot is synced every this many bytes as it is written, so
/// the device never has a whole snapshot's dirty pages to flush at once:
/// the WAL's `fdatasync`s queue behind one such slice at most.
pub const SNAPSHOT_SYNC_BYTES: u64 = 4 * 1024 * 1024;
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

/// Encodes a snapshot file's bytes.
pub fn encode(s: &Snapshot) -> Result<Vec<u8>, EncodeError> {
    let mut p = Vec::with_capacity(s.data.len() + 64);
    p.extend_from_slice(&s.index.to_le_bytes());
    p.extend_from_slice(&s.term.to_le_bytes());
    let conf = postcard::to_allocvec(&s.conf_state).map_err(EncodeError::ConfState)?;
    p.extend_from_slice(&(conf.len() as u64).to_le_bytes());
    p.extend_from_slice(&conf);
    p.extend_from_slice(&s.data);
    let mut out = Vec::with_capacity(p.len() + HEADER_BYTES);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&crc32c::crc32c(&p).to_le_bytes());
    out.extend_from_slice(&(p.len() as u64).to_le_bytes());
    out.extend_from_slice(&p);
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
    pos = conf_end;
    Ok(Snapshot {
        index,
        term,
        conf_state,
        data: p[pos..].to_vec(),
    })
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

/// Removes all but the newest [`SNAPSHOTS_KEPT`] snapshots in `dir`.
fn keep_newest(dir: &Path) -> Result<(), StorageError> {
    let mut all = list(dir)?;
    while all.len() > SNAPSHOTS_KEPT {
        let (_, _, old) = all.remove(0);
        fs::remove_file(&old).map_err(|e| StorageError::from_io(&old, e))?;
    }
    Ok(())
}

/// The data of a saved snapshot, read from its file when a follower needs
/// it (an open handle: it stays readable if a newer snapshot deletes the
/// file).
#[derive(Clone, Debug)]
pub struct SnapshotFile {
    /// The snapshot file, open for reading.
    file: Arc<File>,
    /// Where the data starts in it.
    data_offset: u64,
    /// The data's length.
    data_len: u64,
}

impl SnapshotFile {
    /// The data's length in bytes.
    pub fn len(&self) -> u64 {
        self.data_len
    }

    /// Whether the data is empty.
    pub fn is_empty(&self) -> bool {
        self.data_len == 0
    }

    /// Up to `max_len` bytes of the data from `offset`.
    pub fn read_at(&self, offset: u64, max_len: usize) -> std::io::Result<Vec<u8>> {
        let start = offset.min(self.data_len);
        let len = (self.data_len - start).min(max_len as u64) as usize;
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, self.data_offset + start)?;
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
/// a time. The checksum in the header is written last, before the sync, so
/// the file has the layout of [`encode`] exactly.
pub fn save_streamed<E: std::error::Error + 'static>(
    dir: &Path,
    index: u64,
    term: u64,
    conf_state: &ConfState,
    data_len: u64,
    mut fill: impl FnMut(&mut Vec<u8>) -> Result<bool, E>,
) -> Result<SnapshotFile, StreamedSaveError<E>> {
    create_dir_durable(dir)?;
    let path = dir.join(name(term, index));
    let tmp = dir.join(format!("{}.tmp", name(term, index)));
    let conf = postcard::to_allocvec(conf_state)
        .map_err(|e| StorageError::from(EncodeError::ConfState(e)))?;
    let mut head = Vec::with_capacity(3 * 8 + conf.len());
    head.extend_from_slice(&index.to_le_bytes());
    head.extend_from_slice(&term.to_le_bytes());
    head.extend_from_slice(&(conf.len() as u64).to_le_bytes());
    head.extend_from_slice(&conf);
    let payload_len = head.len() as u64 + data_len;
    let data_offset = (HEADER_BYTES + head.len()) as u64;
    let io = |e: std::io::Error| StreamedSaveError::Storage(StorageError::from_io(&tmp, e));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(io)?;
        let mut header = Vec::with_capacity(HEADER_BYTES);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&payload_len.to_le_bytes());
        f.write_all(&header).map_err(io)?;
        f.write_all(&head).map_err(io)?;
        let mut crc = crc32c::crc32c(&head);
        let mut written = 0u64;
        let mut synced = 0u64;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let last = fill(&mut buf).map_err(StreamedSaveError::Source)?;
            crc = crc32c::crc32c_append(crc, &buf);
            written += buf.len() as u64;
            f.write_all(&buf).map_err(io)?;
            if written - synced >= SNAPSHOT_SYNC_BYTES {
                f.sync_data().map_err(io)?;
                synced = written;
            }
            if last {
                break;
            }
        }
        if written != data_len {
            return Err(StreamedSaveError::Length {
                actual: written,
                announced: data_len,
            });
        }
        f.seek(SeekFrom::Start(MAGIC.len() as u64)).map_err(io)?;
        f.write_all(&crc.to_le_bytes()).map_err(io)?;
        f.sync_all().map_err(io)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, &path).map_err(|e| StorageError::from_io(&path, e))?;
    sync_dir(dir)?;
    let file = File::open(&path).map_err(|e| StorageError::from_io(&path, e))?;
    keep_newest(dir)?;
    Ok(SnapshotFile {
        file: Arc::new(file),
        data_offset,
        data_len,
    })
}

/// Snapshot files in `dir` as `(index, term, path)`, oldest first.
fn list(dir: &Path) -> Result<Vec<(u64, u64, PathBuf)>, StorageError> {
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
            let _ = fs::remove_file(ent.path());
            continue;
        }
        if let Some((term, index)) = parse_name(n) {
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
    /// The newest snapshot that verifies, if any.
    pub snapshot: Option<Snapshot>,
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
    let mut all = list(dir)?;
    let mut out = Loaded::default();
    while let Some((_, _, path)) = all.pop() {
        let mut buf = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut buf))
            .map_err(|e| StorageError::from_io(&path, e))?;
        match decode(&buf) {
            Ok(s) => {
                out.snapshot = Some(s);
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
        assert_eq!(load_latest(dir.path()).unwrap().snapshot, Some(snap));
        assert_eq!(file.len(), data.len() as u64);
        assert_eq!(file.read_at(1000, 10).unwrap(), data[1000..1010]);
        assert_eq!(file.read_at(99_995, 10).unwrap(), data[99_995..]);
        assert!(file.read_at(200_000, 10).unwrap().is_empty());
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
