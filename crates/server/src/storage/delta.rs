//! Delta snapshots (issue 18, ADR 0033): a snapshot whose data is mostly
//! bytes already on disk in earlier snapshot files of the same chain, so a
//! snapshot writes only what changed since the previous one instead of the
//! whole store.
//!
//! A delta file `<data-dir>/member/snap/{term:016x}-{index:016x}.delta`
//! holds its own bytes (the log records since the previous snapshot, and
//! the small parts that change every time: the envelope's head and tail,
//! the key-value header, record count, leases and checksum), then a
//! **manifest**: the snapshot's membership and its data as an ordered list
//! of [`Extent`]s, each a run of this file or of an earlier `.snap` or
//! `.delta` file in the same directory, with its CRC-32C. Layout:
//!
//! `MAGIC | own bytes … | manifest (postcard) | manifest len: u64 LE |
//! crc32c(manifest): u32 LE | MAGIC`
//!
//! The data the extents spell out is byte for byte what a full snapshot
//! file's data would be (the key-value part's own checksum covers it end
//! to end), so loading a delta gives the same [`Snapshot`] a `.snap` would,
//! and followers are sent the same bytes ([`SnapshotFile`] reads the
//! extents in order). Every extent's checksum is verified when a delta is
//! loaded; a missing or damaged file makes the delta damaged, like a
//! `.snap` that fails its checksum.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use metalraft_core::ConfState;
use serde::{Deserialize, Serialize};

use super::error::StorageError;
use super::snapshot::{FilePart, Snapshot, SnapshotFile};

/// The first and last bytes of a delta file.
pub const MAGIC: &[u8; 8] = b"MRDELT01";
/// Bytes after the manifest: its length, its checksum and [`MAGIC`].
const TRAILER_BYTES: usize = 8 + 4 + MAGIC.len();
/// Largest manifest accepted: a chain has at most
/// `raft_loop::MAX_DELTAS_PER_CHAIN` deltas of a few extents each.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// The file name of the delta snapshot at `index`/`term`.
pub fn name(term: u64, index: u64) -> String {
    format!("{term:016x}-{index:016x}.delta")
}

/// The term and index a delta file's name carries.
pub fn parse_name(n: &str) -> Option<(u64, u64)> {
    let stem = n.strip_suffix(".delta")?;
    let (t, i) = stem.split_once('-')?;
    if t.len() != 16 || i.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(t, 16).ok()?,
        u64::from_str_radix(i, 16).ok()?,
    ))
}

/// A run of bytes of a snapshot file in the same directory, with its
/// CRC-32C.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    /// The file's name (no directory).
    pub file: String,
    /// Where the run starts in the file.
    pub offset: u64,
    /// Its length.
    pub len: u64,
    /// CRC-32C of its bytes.
    pub crc: u32,
}

/// What a delta file's manifest says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Manifest {
    /// Membership at the snapshot's index.
    pub(super) conf_state: ConfState,
    /// The snapshot's data, in order.
    pub(super) data: Vec<Extent>,
}

/// Why a delta file was refused (it is then treated like a damaged `.snap`).
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// The file does not end with a delta trailer.
    #[error("no delta trailer (bad magic or truncated)")]
    BadTrailer,
    /// The manifest's length is beyond [`MAX_MANIFEST_BYTES`] or the file.
    #[error("manifest of {0} bytes")]
    ManifestLength(u64),
    /// The manifest's checksum does not match.
    #[error("manifest checksum mismatch")]
    ManifestChecksum,
    /// The manifest does not decode.
    #[error("manifest: {0}")]
    Manifest(postcard::Error),
    /// An extent names something that is not a snapshot file.
    #[error("extent in {0:?}, not a snapshot file")]
    ExtentName(String),
    /// An extent's file is gone.
    #[error("extent file {0} is missing")]
    Missing(String),
    /// An extent lies beyond the end of its file.
    #[error("extent at {offset}+{len} beyond the end of {file}")]
    Beyond {
        /// The file.
        file: String,
        /// The extent's start.
        offset: u64,
        /// Its length.
        len: u64,
    },
    /// An extent's bytes do not match its checksum.
    #[error("extent at {offset} of {file}: checksum mismatch")]
    ExtentChecksum {
        /// The file.
        file: String,
        /// The extent's start.
        offset: u64,
    },
}

/// The manifest and its trailer, as appended to a delta file.
pub(super) fn encode_manifest(m: &Manifest) -> Result<Vec<u8>, StorageError> {
    let mut out = postcard::to_allocvec(m)
        .map_err(|e| StorageError::from(super::codec::EncodeError::DeltaManifest(e)))?;
    let crc = crc32c::crc32c(&out);
    let len = out.len() as u64;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(MAGIC);
    Ok(out)
}

/// Reads and verifies the manifest of the delta file `path`. `Ok(Err)`:
/// the file is damaged; `Err`: it could not be read.
pub(super) fn read_manifest(path: &Path) -> Result<Result<Manifest, DeltaError>, StorageError> {
    let io = |e| StorageError::from_io(path, e);
    let f = File::open(path).map_err(io)?;
    let file_len = f.metadata().map_err(io)?.len();
    if file_len < (MAGIC.len() + TRAILER_BYTES) as u64 {
        return Ok(Err(DeltaError::BadTrailer));
    }
    let mut trailer = [0u8; TRAILER_BYTES];
    f.read_exact_at(&mut trailer, file_len - TRAILER_BYTES as u64)
        .map_err(io)?;
    let mut head = [0u8; MAGIC.len()];
    f.read_exact_at(&mut head, 0).map_err(io)?;
    if &trailer[12..] != MAGIC || &head != MAGIC {
        return Ok(Err(DeltaError::BadTrailer));
    }
    let len = u64::from_le_bytes(trailer[..8].try_into().unwrap_or_default());
    let crc = u32::from_le_bytes(trailer[8..12].try_into().unwrap_or_default());
    let room = file_len - (MAGIC.len() + TRAILER_BYTES) as u64;
    if len > MAX_MANIFEST_BYTES || len > room {
        return Ok(Err(DeltaError::ManifestLength(len)));
    }
    let mut bytes = vec![0u8; len as usize];
    f.read_exact_at(&mut bytes, file_len - TRAILER_BYTES as u64 - len)
        .map_err(io)?;
    if crc32c::crc32c(&bytes) != crc {
        return Ok(Err(DeltaError::ManifestChecksum));
    }
    Ok(postcard::from_bytes(&bytes).map_err(DeltaError::Manifest))
}

/// Whether `name` is a snapshot file's name (`.snap` or `.delta`, no
/// directory).
fn is_snapshot_name(name: &str) -> bool {
    !name.contains('/') && (parse_name(name).is_some() || super::snapshot::is_full_name(name))
}

/// Opens the files of `extents` (each once) and checks each extent lies
/// within its file. `Ok(Err)`: a file is missing or an extent is outside.
fn open_checked(
    dir: &Path,
    extents: &[Extent],
) -> Result<Result<Vec<FilePart>, DeltaError>, StorageError> {
    let mut files: BTreeMap<&str, (Arc<File>, u64)> = BTreeMap::new();
    let mut parts = Vec::with_capacity(extents.len());
    for e in extents {
        if !is_snapshot_name(&e.file) {
            return Ok(Err(DeltaError::ExtentName(e.file.clone())));
        }
        let (file, len) = match files.get(e.file.as_str()) {
            Some(f) => f.clone(),
            None => {
                let path = dir.join(&e.file);
                let f = match File::open(&path) {
                    Ok(f) => f,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                        return Ok(Err(DeltaError::Missing(e.file.clone())))
                    }
                    Err(err) => return Err(StorageError::from_io(&path, err)),
                };
                let len = f
                    .metadata()
                    .map_err(|err| StorageError::from_io(&path, err))?
                    .len();
                let entry = (Arc::new(f), len);
                files.insert(&e.file, entry.clone());
                entry
            }
        };
        if e.offset.checked_add(e.len).is_none_or(|end| end > len) {
            return Ok(Err(DeltaError::Beyond {
                file: e.file.clone(),
                offset: e.offset,
                len: e.len,
            }));
        }
        parts.push(FilePart {
            file,
            offset: e.offset,
            len: e.len,
        });
    }
    Ok(Ok(parts))
}

/// The data of the delta file `path`'s `extents`, open for followers
/// (checked to exist and lie within their files; their checksums are
/// checked when a delta is loaded).
pub(super) fn open_extents(
    dir: &Path,
    path: &Path,
    extents: &[Extent],
) -> Result<SnapshotFile, StorageError> {
    match open_checked(dir, extents)? {
        Ok(parts) => Ok(SnapshotFile::from_parts(parts)),
        Err(source) => Err(StorageError::Delta {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Loads the delta snapshot `path` (`index`/`term` from its name): reads
/// every extent, verifies its checksum, and returns the snapshot its data
/// spells out. `Ok(Err)`: damaged.
pub(super) fn load(
    dir: &Path,
    path: &Path,
    index: u64,
    term: u64,
) -> Result<Result<Snapshot, DeltaError>, StorageError> {
    let manifest = match read_manifest(path)? {
        Ok(m) => m,
        Err(e) => return Ok(Err(e)),
    };
    let parts = match open_checked(dir, &manifest.data)? {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    let total: u64 = parts.iter().map(|p| p.len).sum();
    let mut data = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for (p, e) in parts.iter().zip(&manifest.data) {
        let at = data.len();
        data.resize(at + p.len as usize, 0);
        p.file
            .read_exact_at(&mut data[at..], p.offset)
            .map_err(|err| StorageError::from_io(&dir.join(&e.file), err))?;
        if crc32c::crc32c(&data[at..]) != e.crc {
            return Ok(Err(DeltaError::ExtentChecksum {
                file: e.file.clone(),
                offset: e.offset,
            }));
        }
    }
    Ok(Ok(Snapshot {
        index,
        term,
        conf_state: manifest.conf_state,
        data,
    }))
}
