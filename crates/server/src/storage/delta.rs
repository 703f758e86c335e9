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
use std::io::{Read, Seek, SeekFrom};
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

/// Opens the files of `extents` (each once; the one named `alias.0` at
/// `alias.1`) and checks each extent lies within its file. `Ok(Err)`: a
/// file is missing or an extent is outside.
fn open_checked(
    dir: &Path,
    extents: &[Extent],
    alias: Option<(&str, &Path)>,
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
                let path = match alias {
                    Some((name, at)) if name == e.file => at.to_path_buf(),
                    _ => dir.join(&e.file),
                };
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
/// checked when a delta is loaded). The delta itself is still at `tmp`
/// (opened there: the handle stays valid across the rename).
pub(super) fn open_extents(
    dir: &Path,
    path: &Path,
    tmp: &Path,
    extents: &[Extent],
) -> Result<SnapshotFile, StorageError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    match open_checked(dir, extents, Some((name, tmp)))? {
        Ok(parts) => Ok(SnapshotFile::from_parts(parts)),
        Err(source) => Err(StorageError::Delta {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A loaded delta: the snapshot, its data open in its files, its extents.
pub(super) type LoadedDelta = (Snapshot, SnapshotFile, Vec<Extent>);

/// Loads the delta snapshot `path` (`index`/`term` from its name): reads
/// every extent, verifies its checksum, and returns the snapshot its data
/// spells out, that data open in its files, and the extents. `Ok(Err)`:
/// damaged.
pub(super) fn load(
    dir: &Path,
    path: &Path,
    index: u64,
    term: u64,
) -> Result<Result<LoadedDelta, DeltaError>, StorageError> {
    let manifest = match read_manifest(path)? {
        Ok(m) => m,
        Err(e) => return Ok(Err(e)),
    };
    let parts = match open_checked(dir, &manifest.data, None)? {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    let total: u64 = parts.iter().map(|p| p.len).sum();
    let mut data = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for (p, e) in parts.iter().zip(&manifest.data) {
        let at = data.len();
        // Read into the spare capacity (no zero fill of hundreds of MB).
        let read = (|| {
            let mut f = &*p.file;
            f.seek(SeekFrom::Start(p.offset))?;
            let n = f.take(p.len).read_to_end(&mut data)?;
            match n as u64 == p.len {
                true => Ok(()),
                false => Err(std::io::ErrorKind::UnexpectedEof.into()),
            }
        })();
        read.map_err(|err| StorageError::from_io(&dir.join(&e.file), err))?;
        if crc32c::crc32c(&data[at..]) != e.crc {
            return Ok(Err(DeltaError::ExtentChecksum {
                file: e.file.clone(),
                offset: e.offset,
            }));
        }
    }
    let snapshot = Snapshot {
        index,
        term,
        conf_state: manifest.conf_state,
        data,
    };
    Ok(Ok((
        snapshot,
        SnapshotFile::from_parts(parts),
        manifest.data,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::snapshot::{load_latest, SnapshotWriter};

    fn conf() -> ConfState {
        ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        }
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// A full snapshot at `index` whose data is `a | b | c`; returns the
    /// extent of `b`.
    fn full(dir: &Path, index: u64, a: &[u8], b: &[u8], c: &[u8]) -> Extent {
        let mut w = SnapshotWriter::create(dir, index, 1, &conf()).unwrap();
        w.write(a).unwrap();
        w.begin_extent();
        w.write(b).unwrap();
        let e = w.end_extent();
        w.write(c).unwrap();
        w.finish(&[]).unwrap();
        e
    }

    /// A delta at `index` whose data is `earlier` extents, then `own`.
    fn delta(dir: &Path, index: u64, earlier: &[Extent], own: &[u8]) -> (SnapshotFile, Extent) {
        let mut w = SnapshotWriter::create_delta(dir, index, 1).unwrap();
        w.begin_extent();
        w.write(own).unwrap();
        let mine = w.end_extent();
        let mut data = earlier.to_vec();
        data.push(mine.clone());
        (w.finish_delta(&conf(), data).unwrap(), mine)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    }

    #[test]
    fn a_delta_reads_back_its_extents_in_order_and_keeps_the_files_it_needs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (a, b, c) = (bytes(100, 1), bytes(70_000, 2), bytes(50, 3));
        let base = full(dir, 10, &a, &b, &c);
        assert_eq!(base.len, b.len() as u64);
        let (own1, own2, own3) = (bytes(5_000, 4), bytes(1, 5), bytes(9_000, 6));
        let (_, d1) = delta(dir, 20, std::slice::from_ref(&base), &own1);
        let (_, d2) = delta(dir, 30, &[base.clone(), d1.clone()], &own2);
        let (file, _) = delta(dir, 40, &[base.clone(), d1.clone(), d2.clone()], &own3);
        let expected: Vec<u8> = [&b[..], &own1, &own2, &own3].concat();

        // Loaded at restart: the newest, its data spelled out.
        let loaded = load_latest(dir).unwrap();
        assert!(loaded.damaged.is_empty());
        let (s, served) = loaded.snapshot.unwrap();
        assert_eq!((s.index, s.term, &s.conf_state), (40, 1, &conf()));
        assert_eq!(s.data, expected);
        // Followers of a restarted member are served from the files.
        assert_eq!(served.read_at(0, usize::MAX).unwrap(), expected);
        // Served to followers: any window across the parts.
        assert!(file.is_delta());
        assert_eq!(file.len(), expected.len() as u64);
        for (at, len) in [
            (0, 10),
            (69_990, 20),
            (69_999, 5_003),
            (75_000, 100_000),
            (0, 200_000),
        ] {
            let got = file.read_at(at, len).unwrap();
            let end = (at as usize + len).min(expected.len());
            assert_eq!(got, expected[at as usize..end], "{at}+{len}");
        }
        // Kept: the two newest and everything they read from (the full
        // one and the first delta); nothing was removed.
        assert_eq!(
            names(dir),
            [
                "0000000000000001-000000000000000a.snap",
                "0000000000000001-0000000000000014.delta",
                "0000000000000001-000000000000001e.delta",
                "0000000000000001-0000000000000028.delta",
            ]
        );
        // A new full snapshot and one delta on it: the old chain goes.
        let base2 = full(dir, 50, &a, &b, &c);
        delta(dir, 60, &[base2], &own1);
        assert_eq!(
            names(dir),
            [
                "0000000000000001-0000000000000032.snap",
                "0000000000000001-000000000000003c.delta",
            ]
        );
    }

    #[test]
    fn a_delta_whose_files_are_damaged_or_gone_is_refused_and_an_older_snapshot_used() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (a, b, c) = (bytes(10, 1), bytes(4_000, 2), bytes(10, 3));
        let base = full(dir, 10, &a, &b, &c);
        let (_, d1) = delta(dir, 20, std::slice::from_ref(&base), &bytes(300, 4));
        delta(dir, 30, &[base.clone(), d1.clone()], &bytes(300, 5));

        // One flipped bit in the first delta's records: both deltas that
        // read it are refused, the full snapshot is used.
        let d1_path = dir.join(&d1.file);
        let mut raw = std::fs::read(&d1_path).unwrap();
        raw[d1.offset as usize + 7] ^= 0x10;
        std::fs::write(&d1_path, &raw).unwrap();
        let loaded = load_latest(dir).unwrap();
        let (s, served) = loaded.snapshot.unwrap();
        assert_eq!(s.index, 10);
        let whole: Vec<u8> = [&a[..], &b, &c].concat();
        assert_eq!(served.read_at(0, usize::MAX).unwrap(), whole);
        assert_eq!(loaded.damaged.len(), 2);
        assert!(
            loaded.damaged[0].reason.contains("checksum"),
            "{:?}",
            loaded.damaged
        );

        // The full snapshot gone: nothing loads, each delta says why.
        std::fs::remove_file(dir.join(&base.file)).unwrap();
        let loaded = load_latest(dir).unwrap();
        assert!(loaded.snapshot.is_none());
        assert!(
            loaded.damaged.iter().all(|d| d.reason.contains("missing")),
            "{:?}",
            loaded.damaged
        );

        // A truncated trailer, a manifest naming a path outside the
        // directory, an extent past the end of its file.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let base = full(dir, 10, &a, &b, &c);
        let (_, d1) = delta(dir, 20, std::slice::from_ref(&base), &bytes(30, 4));
        let p = dir.join(&d1.file);
        let raw = std::fs::read(&p).unwrap();
        std::fs::write(&p, &raw[..raw.len() - 3]).unwrap();
        assert!(matches!(
            read_manifest(&p).unwrap(),
            Err(DeltaError::BadTrailer)
        ));
        for bad in [
            Extent {
                file: "../etc/passwd".into(),
                ..base.clone()
            },
            Extent {
                len: 1 << 40,
                ..base.clone()
            },
        ] {
            let mut w = SnapshotWriter::create_delta(dir, 30, 1).unwrap();
            w.write(b"x").unwrap();
            let err = w.finish_delta(&conf(), vec![bad]).unwrap_err();
            assert!(matches!(err, StorageError::Delta { .. }), "{err}");
        }
        // Neither became a snapshot, nor left a temporary file.
        assert!(
            !names(dir).iter().any(|n| n.contains("1e.delta")),
            "{:?}",
            names(dir)
        );
    }

    #[test]
    fn garbage_delta_files_are_damaged_never_a_panic_or_a_huge_allocation() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (a, b, c) = (bytes(10, 1), bytes(2_000, 2), bytes(10, 3));
        let base = full(dir, 10, &a, &b, &c);
        let (_, own) = delta(dir, 20, std::slice::from_ref(&base), &bytes(100, 4));
        let good = std::fs::read(dir.join(&own.file)).unwrap();
        let path = dir.join(name(1, 30));
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..500 {
            // A good delta with bytes flipped, cut or replaced, or noise
            // between two magics.
            let mut raw = good.clone();
            match round % 3 {
                0 => {
                    for _ in 0..1 + next() % 4 {
                        let at = (next() % raw.len() as u64) as usize;
                        raw[at] ^= 1 << (next() % 8);
                    }
                }
                1 => raw.truncate((next() % raw.len() as u64) as usize),
                _ => {
                    raw = MAGIC.to_vec();
                    raw.extend((0..next() % 200).map(|_| next() as u8));
                    raw.extend_from_slice(&(next() % 300).to_le_bytes());
                    raw.extend_from_slice(&(next() as u32).to_le_bytes());
                    raw.extend_from_slice(MAGIC);
                }
            }
            std::fs::write(&path, &raw).unwrap();
            let loaded = load_latest(dir).unwrap();
            let (s, _) = loaded.snapshot.expect("the good delta or the full one");
            if loaded.damaged.is_empty() {
                // A flip inside an unused byte of the manifest's varints
                // may leave an equivalent manifest; it must spell out the
                // same data.
                assert_eq!(s.data[..], [&b[..], &bytes(100, 4)].concat()[..]);
            } else {
                assert_eq!(s.index, 20, "round {round}");
            }
        }
    }
}
