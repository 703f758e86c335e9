//! A FUSE file system that loses what was never synced when the power is cut.
//!
//! Tests mount one [`PowerCutFs`] per process under test, run the process
//! on it, kill it with SIGKILL and call [`Handle::cut`]: the file system then
//! looks exactly like a disk after a power loss, under this contract.
//!
//! # The contract
//!
//! * **File data** written with `write`/`truncate` is kept in memory (in
//!   512-byte sectors, [`SECTOR_BYTES`]) and visible to every reader at once.
//!   `fsync` or `fdatasync` of the file writes it, with the file's size,
//!   through to the backing directory: from then on it survives a cut.
//! * **Names** (create, mkdir, rename, unlink, rmdir) change the directory in
//!   memory. They become durable only when that directory itself is fsynced
//!   (`fsync` of a directory handle), as POSIX requires; a file whose name
//!   was never made durable is gone after a cut, however often its data was
//!   synced. A rename across two directories is durable in each directory
//!   separately, when that one is fsynced (so a cut may leave both names or
//!   neither; the processes under test rename within one directory).
//! * **A cut** drops every unsynced byte, size change and name. One
//!   exception: the *last* unsynced write of each file may land partially,
//!   as a random selection of the sectors it touched (none, a prefix, or any
//!   subset), each landing sector holding the file's in-memory content of
//!   that sector. The choice comes from a seeded generator, so a run is
//!   reproduced from [`Handle::seed`] (the tests print it).
//! * After a cut, file handles opened before it fail with `EIO`, so a
//!   request from a killed process can never change the new image.
//!   [`Handle::power_off`] cuts while the processes still run and fails
//!   every request until [`Handle::power_on`]; [`Handle::set_sync_delay`]
//!   makes each `fsync` wait first, like a disk's flush latency.
//!
//! Not modelled: metadata other than sizes and names (modes are kept in
//! memory, times are not kept), reordering of *synced* data (a completed
//! fsync is durable), writes larger than the kernel's FUSE request size being
//! torn as one write (each request is one write), hard links, symlinks,
//! extended attributes, `fallocate` (it fails with `EOPNOTSUPP`, so callers
//! fall back to `ftruncate`), and a failing disk (every sync succeeds). The
//! durable namespace lives in the daemon's memory: an image survives cuts,
//! not the unmount.
//!
//! The model itself, without mounting anything:
//!
//! ```
//! use powercut::Model;
//!
//! let backing = tempfile::tempdir().unwrap();
//! let mut m = Model::new(backing.path(), 7).unwrap();
//! let root = powercut::ROOT;
//! let f = m.create(root, "wal".as_ref(), 0o644).unwrap();
//! m.write(f, 0, b"synced").unwrap();
//! m.fsync(f).unwrap();
//! m.fsync_dir(root);
//! m.write(f, 0, b"SYNCED and more").unwrap();
//! let g = m.create(root, "tmp".as_ref(), 0o644).unwrap();
//! m.write(g, 0, b"never named durably").unwrap();
//! m.fsync(g).unwrap();
//! m.cut();
//! // The name of `tmp` was never made durable; `wal` keeps its synced bytes
//! // except that the last write may have landed (it is one sector here).
//! assert!(m.lookup(root, "tmp".as_ref()).is_none());
//! let f = m.lookup(root, "wal".as_ref()).unwrap();
//! let data = m.read(f, 0, 100).unwrap();
//! assert!(data == b"synced" || data == b"SYNCED and more", "{data:?}");
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
};

/// The unit a disk writes atomically; a torn write lands in whole sectors.
pub const SECTOR_BYTES: u64 = 512;
/// Inode number of the root directory.
pub const ROOT: u64 = fuser::FUSE_ROOT_ID;
/// How long the kernel may cache names and attributes: not at all, so every
/// lookup after a cut sees the new image.
const TTL: Duration = Duration::ZERO;
/// Block size reported to `stat`.
const BLKSIZE: u32 = 4096;

/// A small seeded generator (SplitMix64): the torn sectors of a run are a
/// function of the seed.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

/// A regular file: durable bytes in `backing/<ino>`, unsynced ones here.
#[derive(Debug, Default)]
struct FileNode {
    /// Size as readers see it.
    size: u64,
    /// Size of the backing file (the durable size).
    durable_size: u64,
    /// Lowest size a truncation set since the last sync, when below
    /// `durable_size`: backing bytes from there on read as zeros.
    truncated_to: Option<u64>,
    /// Current content of every sector written since the last sync.
    dirty: BTreeMap<u64, Box<[u8]>>,
    /// Byte range of the last write since the last sync.
    last_write: Option<(u64, u64)>,
}

#[derive(Debug, Default)]
struct DirNode {
    entries: BTreeMap<OsString, u64>,
    durable_entries: BTreeMap<OsString, u64>,
}

#[derive(Debug)]
enum Kind {
    File(FileNode),
    Dir(DirNode),
}

#[derive(Debug)]
struct Inode {
    kind: Kind,
    perm: u16,
    uid: u32,
    gid: u32,
}

/// What one [`Model::cut`] did, for the test's log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Unsynced bytes (in whole sectors) that were dropped.
    pub sectors_dropped: u64,
    /// Files whose last unsynced write landed partially: (path from the
    /// root, sectors that landed, sectors the write touched).
    pub torn: Vec<(PathBuf, u64, u64)>,
    /// Inodes whose name was never durable, now gone.
    pub inodes_lost: u64,
}

/// Errors of the model, as the errno FUSE returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsError {
    /// No such name or inode.
    NotFound,
    /// The name exists.
    Exists,
    /// A directory where a file is needed.
    IsDir,
    /// A file where a directory is needed.
    NotDir,
    /// A directory that is not empty.
    NotEmpty,
    /// An unsupported request or argument.
    Invalid,
    /// The backing directory failed, or a handle from before a cut.
    Io,
}

impl FsError {
    /// The errno FUSE replies with.
    pub fn errno(self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::IsDir => libc::EISDIR,
            FsError::NotDir => libc::ENOTDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::Invalid => libc::EINVAL,
            FsError::Io => libc::EIO,
        }
    }
}

impl From<io::Error> for FsError {
    fn from(_: io::Error) -> Self {
        FsError::Io
    }
}

/// The file system's state: inodes, the durable image, and the seeded
/// generator that picks torn sectors. Every method is one FUSE request.
#[derive(Debug)]
pub struct Model {
    backing: PathBuf,
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    rng: Rng,
    seed: u64,
    /// Bumped by every cut; file handles carry it in their top 32 bits.
    generation: u64,
    next_fh: u64,
    /// Power is off (see [`Handle::power_off`]): every request fails.
    off: bool,
    /// How long every file `fsync` takes before it syncs (see
    /// [`Model::set_sync_delay`]).
    sync_delay: Duration,
}

impl Model {
    /// An empty file system whose durable bytes live in `backing` (created
    /// if missing; it should be empty). `seed` drives the torn sectors.
    pub fn new(backing: &Path, seed: u64) -> io::Result<Model> {
        std::fs::create_dir_all(backing)?;
        let mut inodes = HashMap::new();
        inodes.insert(
            ROOT,
            Inode {
                kind: Kind::Dir(DirNode::default()),
                perm: 0o755,
                uid: 0,
                gid: 0,
            },
        );
        Ok(Model {
            backing: backing.to_path_buf(),
            inodes,
            next_ino: ROOT + 1,
            rng: Rng(seed),
            seed,
            generation: 0,
            next_fh: 0,
            off: false,
            sync_delay: Duration::ZERO,
        })
    }

    /// Makes every file `fsync` wait `d` before it syncs, like a disk's
    /// flush latency, so unsynced data is around when a cut comes.
    pub fn set_sync_delay(&mut self, d: Duration) {
        self.sync_delay = d;
    }

    /// The seed this model was made with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn backing_path(&self, ino: u64) -> PathBuf {
        self.backing.join(ino.to_string())
    }

    fn dir(&self, ino: u64) -> Result<&DirNode, FsError> {
        match &self.inodes.get(&ino).ok_or(FsError::NotFound)?.kind {
            Kind::Dir(d) => Ok(d),
            Kind::File(_) => Err(FsError::NotDir),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut DirNode, FsError> {
        match &mut self.inodes.get_mut(&ino).ok_or(FsError::NotFound)?.kind {
            Kind::Dir(d) => Ok(d),
            Kind::File(_) => Err(FsError::NotDir),
        }
    }

    fn file_mut(&mut self, ino: u64) -> Result<&mut FileNode, FsError> {
        match &mut self.inodes.get_mut(&ino).ok_or(FsError::NotFound)?.kind {
            Kind::File(f) => Ok(f),
            Kind::Dir(_) => Err(FsError::IsDir),
        }
    }

    /// A new file handle, valid until the next cut.
    pub fn new_handle(&mut self) -> u64 {
        self.next_fh += 1;
        (self.generation << 32) | (self.next_fh & 0xFFFF_FFFF)
    }

    /// `Err(Io)` for a handle opened before the last cut.
    pub fn check_handle(&self, fh: u64) -> Result<(), FsError> {
        if fh >> 32 == self.generation {
            Ok(())
        } else {
            Err(FsError::Io)
        }
    }

    /// The inode `name` in directory `parent` names now.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Option<u64> {
        self.dir(parent).ok()?.entries.get(name).copied()
    }

    fn add(&mut self, parent: u64, name: &OsStr, kind: Kind, perm: u16) -> Result<u64, FsError> {
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(FsError::Exists);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        if matches!(kind, Kind::File(_)) {
            File::create(self.backing_path(ino))?;
        }
        self.inodes.insert(
            ino,
            Inode {
                kind,
                perm,
                uid: 0,
                gid: 0,
            },
        );
        self.dir_mut(parent)?.entries.insert(name.to_owned(), ino);
        Ok(ino)
    }

    /// Creates an empty file (its name is not durable yet).
    pub fn create(&mut self, parent: u64, name: &OsStr, perm: u16) -> Result<u64, FsError> {
        self.add(parent, name, Kind::File(FileNode::default()), perm)
    }

    /// Creates an empty directory (its name is not durable yet).
    pub fn mkdir(&mut self, parent: u64, name: &OsStr, perm: u16) -> Result<u64, FsError> {
        self.add(parent, name, Kind::Dir(DirNode::default()), perm)
    }

    /// Removes a file's name (`dir = false`) or an empty directory.
    pub fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> Result<(), FsError> {
        let ino = self.lookup(parent, name).ok_or(FsError::NotFound)?;
        match (&self.inodes[&ino].kind, dir) {
            (Kind::Dir(d), true) if !d.entries.is_empty() => return Err(FsError::NotEmpty),
            (Kind::Dir(_), false) => return Err(FsError::IsDir),
            (Kind::File(_), true) => return Err(FsError::NotDir),
            _ => {}
        }
        self.dir_mut(parent)?.entries.remove(name);
        Ok(())
    }

    /// Renames, replacing a file or an empty directory at the target.
    /// `noreplace` is `RENAME_NOREPLACE`.
    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        noreplace: bool,
    ) -> Result<(), FsError> {
        let ino = self.lookup(parent, name).ok_or(FsError::NotFound)?;
        self.dir(newparent)?;
        if let Some(old) = self.lookup(newparent, newname) {
            if old == ino {
                return Ok(());
            }
            if noreplace {
                return Err(FsError::Exists);
            }
            match (&self.inodes[&old].kind, &self.inodes[&ino].kind) {
                (Kind::Dir(d), Kind::Dir(_)) if !d.entries.is_empty() => {
                    return Err(FsError::NotEmpty)
                }
                (Kind::Dir(_), Kind::File(_)) => return Err(FsError::IsDir),
                (Kind::File(_), Kind::Dir(_)) => return Err(FsError::NotDir),
                _ => {}
            }
        }
        self.dir_mut(parent)?.entries.remove(name);
        self.dir_mut(newparent)?
            .entries
            .insert(newname.to_owned(), ino);
        Ok(())
    }

    /// The entries of a directory now, in name order.
    pub fn list(&self, dir: u64) -> Result<Vec<(OsString, u64)>, FsError> {
        Ok(self
            .dir(dir)?
            .entries
            .iter()
            .map(|(n, i)| (n.clone(), *i))
            .collect())
    }

    /// The current content of sector `s` of `ino` (as a reader sees it,
    /// ignoring the size).
    fn sector(&self, ino: u64, f: &FileNode, s: u64) -> Result<Box<[u8]>, FsError> {
        if let Some(d) = f.dirty.get(&s) {
            return Ok(d.clone());
        }
        let mut buf = vec![0u8; SECTOR_BYTES as usize].into_boxed_slice();
        let visible = f.truncated_to.unwrap_or(u64::MAX).min(f.durable_size);
        let start = s * SECTOR_BYTES;
        if start < visible {
            let n = (visible - start).min(SECTOR_BYTES) as usize;
            let file = File::open(self.backing_path(ino))?;
            file.read_exact_at(&mut buf[..n], start)?;
        }
        Ok(buf)
    }

    /// Reads up to `len` bytes at `offset`.
    pub fn read(&self, ino: u64, offset: u64, len: u64) -> Result<Vec<u8>, FsError> {
        let Kind::File(f) = &self.inodes.get(&ino).ok_or(FsError::NotFound)?.kind else {
            return Err(FsError::IsDir);
        };
        let end = (offset.saturating_add(len)).min(f.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut pos = offset;
        while pos < end {
            let s = pos / SECTOR_BYTES;
            let within = (pos % SECTOR_BYTES) as usize;
            let take = ((SECTOR_BYTES - pos % SECTOR_BYTES).min(end - pos)) as usize;
            let sec = self.sector(ino, f, s)?;
            out.extend_from_slice(&sec[within..within + take]);
            pos += take as u64;
        }
        Ok(out)
    }

    /// Writes `data` at `offset` (in memory until [`Model::fsync`]).
    pub fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<(), FsError> {
        let mut pos = offset;
        let end = offset + data.len() as u64;
        while pos < end {
            let s = pos / SECTOR_BYTES;
            let within = (pos % SECTOR_BYTES) as usize;
            let take = ((SECTOR_BYTES - pos % SECTOR_BYTES).min(end - pos)) as usize;
            let mut sec = {
                let Kind::File(f) = &self.inodes.get(&ino).ok_or(FsError::NotFound)?.kind else {
                    return Err(FsError::IsDir);
                };
                self.sector(ino, f, s)?
            };
            let from = (pos - offset) as usize;
            sec[within..within + take].copy_from_slice(&data[from..from + take]);
            self.file_mut(ino)?.dirty.insert(s, sec);
            pos += take as u64;
        }
        let f = self.file_mut(ino)?;
        f.size = f.size.max(end);
        if !data.is_empty() {
            f.last_write = Some((offset, data.len() as u64));
        }
        Ok(())
    }

    /// Sets the size (truncate or extend with zeros), in memory.
    pub fn set_size(&mut self, ino: u64, size: u64) -> Result<(), FsError> {
        let tail = {
            let Kind::File(f) = &self.inodes.get(&ino).ok_or(FsError::NotFound)?.kind else {
                return Err(FsError::IsDir);
            };
            if size < f.size && size % SECTOR_BYTES != 0 {
                let s = size / SECTOR_BYTES;
                let mut sec = self.sector(ino, f, s)?;
                sec[(size % SECTOR_BYTES) as usize..].fill(0);
                Some((s, sec))
            } else {
                None
            }
        };
        let f = self.file_mut(ino)?;
        if size < f.size {
            let first_gone = size.div_ceil(SECTOR_BYTES);
            f.dirty.split_off(&first_gone);
            if let Some((s, sec)) = tail {
                f.dirty.insert(s, sec);
            }
            if size < f.durable_size {
                f.truncated_to = Some(f.truncated_to.unwrap_or(u64::MAX).min(size));
            }
        }
        f.size = size;
        Ok(())
    }

    /// Makes a file's data and size durable (`fsync`/`fdatasync`).
    pub fn fsync(&mut self, ino: u64) -> Result<(), FsError> {
        let path = self.backing_path(ino);
        let f = self.file_mut(ino)?;
        let backing = OpenOptions::new().write(true).open(&path)?;
        if let Some(t) = f.truncated_to.take() {
            backing.set_len(t)?;
        }
        backing.set_len(f.size)?;
        for (s, sec) in std::mem::take(&mut f.dirty) {
            let start = s * SECTOR_BYTES;
            if start < f.size {
                let n = (f.size - start).min(SECTOR_BYTES) as usize;
                backing.write_all_at(&sec[..n], start)?;
            }
        }
        f.durable_size = f.size;
        f.last_write = None;
        Ok(())
    }

    /// Makes a directory's current names durable (`fsync` of a directory).
    pub fn fsync_dir(&mut self, ino: u64) {
        if let Ok(d) = self.dir_mut(ino) {
            d.durable_entries = d.entries.clone();
        }
    }

    /// Attributes of an inode, for FUSE.
    pub fn attr(&self, ino: u64) -> Result<FileAttr, FsError> {
        let node = self.inodes.get(&ino).ok_or(FsError::NotFound)?;
        let (kind, size, nlink) = match &node.kind {
            Kind::File(f) => (FileType::RegularFile, f.size, 1),
            Kind::Dir(_) => (FileType::Directory, 0, 2),
        };
        Ok(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(SECTOR_BYTES),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm: node.perm,
            nlink,
            uid: node.uid,
            gid: node.gid,
            rdev: 0,
            blksize: BLKSIZE,
            flags: 0,
        })
    }

    fn set_owner(&mut self, ino: u64, uid: u32, gid: u32) {
        if let Some(n) = self.inodes.get_mut(&ino) {
            n.uid = uid;
            n.gid = gid;
        }
    }

    /// The power cut: drops everything unsynced, except that the last
    /// unsynced write of each file may land partially (in whole sectors).
    pub fn cut(&mut self) -> CutReport {
        let mut report = CutReport::default();
        let mut torn = Vec::new();
        let mut inos: Vec<u64> = self.inodes.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            let path = self.backing_path(ino);
            let mut rng = self.rng.clone();
            let Some(Inode {
                kind: Kind::File(f),
                ..
            }) = self.inodes.get_mut(&ino)
            else {
                if let Some(Inode {
                    kind: Kind::Dir(d), ..
                }) = self.inodes.get_mut(&ino)
                {
                    d.entries = d.durable_entries.clone();
                }
                continue;
            };
            if let Some((off, len)) = f.last_write.take() {
                let first = off / SECTOR_BYTES;
                let last = (off + len).div_ceil(SECTOR_BYTES);
                let touched: Vec<u64> = (first..last).filter(|s| f.dirty.contains_key(s)).collect();
                let n = touched.len() as u64;
                let landing: Vec<u64> = match rng.below(3) {
                    0 => Vec::new(),
                    1 => touched[..rng.below(n + 1) as usize].to_vec(),
                    _ => touched.into_iter().filter(|_| rng.below(2) == 1).collect(),
                };
                if !landing.is_empty() {
                    torn.push((ino, landing.len() as u64, n));
                    if let Ok(backing) = OpenOptions::new().write(true).open(&path) {
                        for s in &landing {
                            let start = s * SECTOR_BYTES;
                            let n = f.size.saturating_sub(start).min(SECTOR_BYTES);
                            if backing
                                .write_all_at(&f.dirty[s][..n as usize], start)
                                .is_ok()
                            {
                                f.durable_size = f.durable_size.max(start + n);
                                f.dirty.remove(s);
                            }
                        }
                    }
                }
            }
            self.rng = rng;
            report.sectors_dropped += f.dirty.len() as u64;
            f.dirty.clear();
            f.truncated_to = None;
            f.size = f.durable_size;
        }
        // Inodes no durable name reaches are gone.
        let mut reachable = BTreeSet::from([ROOT]);
        let mut stack = vec![ROOT];
        while let Some(d) = stack.pop() {
            if let Ok(dir) = self.dir(d) {
                for &child in dir.entries.values() {
                    if reachable.insert(child) {
                        stack.push(child);
                    }
                }
            }
        }
        let lost: Vec<u64> = self
            .inodes
            .keys()
            .copied()
            .filter(|i| !reachable.contains(i))
            .collect();
        for ino in lost {
            if let Some(Inode {
                kind: Kind::File(_),
                ..
            }) = self.inodes.remove(&ino)
            {
                let _ = std::fs::remove_file(self.backing_path(ino));
            }
            report.inodes_lost += 1;
        }
        self.generation += 1;
        report.torn = torn
            .into_iter()
            .map(|(ino, landed, of)| {
                let p = self
                    .path_of(ino)
                    .unwrap_or_else(|| PathBuf::from(format!("#{ino}")));
                (p, landed, of)
            })
            .collect();
        report
    }

    /// A path from the root that names `ino` now.
    pub fn path_of(&self, ino: u64) -> Option<PathBuf> {
        let mut stack = vec![(ROOT, PathBuf::new())];
        while let Some((d, at)) = stack.pop() {
            for (name, &child) in &self.dir(d).ok()?.entries {
                let p = at.join(name);
                if child == ino {
                    return Some(p);
                }
                if self.dir(child).is_ok() {
                    stack.push((child, p));
                }
            }
        }
        None
    }
}

/// The FUSE side of a [`Model`], shared with a [`Handle`].
pub struct PowerCutFs {
    model: Arc<Mutex<Model>>,
}

/// Controls a mounted [`PowerCutFs`]: cut the power, read the seed.
#[derive(Clone)]
pub struct Handle {
    model: Arc<Mutex<Model>>,
}

fn lock(m: &Mutex<Model>) -> MutexGuard<'_, Model> {
    // A panic inside a request must not stop the cuts of a test.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Handle {
    /// Cuts the power: see [`Model::cut`]. Kill (and reap) every process
    /// using the mount first.
    pub fn cut(&self) -> CutReport {
        lock(&self.model).cut()
    }

    /// Cuts the power while processes still run: the image is cut at once
    /// (see [`Model::cut`]) and every request fails with `EIO` until
    /// [`Handle::power_on`]. Kill the processes in between. This catches
    /// writes in flight, which a kill first would let finish (the kernel
    /// waits for a FUSE request it has handed to the daemon).
    pub fn power_off(&self) -> CutReport {
        let mut m = lock(&self.model);
        m.off = true;
        m.cut()
    }

    /// Power is back: requests are served again.
    pub fn power_on(&self) {
        lock(&self.model).off = false;
    }

    /// See [`Model::set_sync_delay`].
    pub fn set_sync_delay(&self, d: Duration) {
        lock(&self.model).set_sync_delay(d);
    }

    /// The seed of the torn-sector choices.
    pub fn seed(&self) -> u64 {
        lock(&self.model).seed()
    }
}

/// A mounted file system; unmounted when dropped.
pub struct Mount {
    /// Cuts the power of this mount.
    pub handle: Handle,
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            s.join();
        }
    }
}

/// Mounts a new file system at `mountpoint` (an existing empty directory)
/// with its durable bytes in `backing`, serving requests on a background
/// thread. Needs `/dev/fuse` and `fusermount3` (or root).
pub fn mount(backing: &Path, mountpoint: &Path, seed: u64) -> io::Result<Mount> {
    let model = Arc::new(Mutex::new(Model::new(backing, seed)?));
    let fs = PowerCutFs {
        model: model.clone(),
    };
    let session = fuser::spawn_mount2(fs, mountpoint, &mount_options())?;
    Ok(Mount {
        handle: Handle { model },
        mountpoint: mountpoint.to_path_buf(),
        session: Some(session),
    })
}

/// The mount options: a name for `mount`'s listing, and the caller's
/// permissions (root in CI).
pub fn mount_options() -> Vec<MountOption> {
    vec![
        MountOption::FSName("powercut".to_string()),
        MountOption::Subtype("powercut".to_string()),
    ]
}

impl PowerCutFs {
    /// A file system over `model` (see [`mount`] for the usual way).
    pub fn new(model: Model) -> (PowerCutFs, Handle) {
        let model = Arc::new(Mutex::new(model));
        (
            PowerCutFs {
                model: model.clone(),
            },
            Handle { model },
        )
    }
}

fn entry_reply(m: &Model, r: Result<u64, FsError>, reply: ReplyEntry) {
    match r.and_then(|ino| m.attr(ino)) {
        Ok(a) => reply.entry(&TTL, &a, 0),
        Err(e) => reply.error(e.errno()),
    }
}

fn empty_reply(r: Result<(), FsError>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e.errno()),
    }
}

/// Locks the model for a request, or fails the request with `EIO` while
/// the power is off.
macro_rules! live {
    ($s:expr, $reply:expr) => {{
        let m = lock(&$s.model);
        if m.off {
            return $reply.error(libc::EIO);
        }
        m
    }};
}

impl Filesystem for PowerCutFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let m = live!(self, reply);
        let r = m.lookup(parent, name).ok_or(FsError::NotFound);
        entry_reply(&m, r, reply);
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match live!(self, reply).attr(ino) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<u64>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let mut m = live!(self, reply);
        let mut r = fh.map_or(Ok(()), |fh| m.check_handle(fh));
        if let (Ok(()), Some(size)) = (r, size) {
            r = m.set_size(ino, size);
        }
        if let (Ok(()), Some(mode)) = (r, mode) {
            if let Some(n) = m.inodes.get_mut(&ino) {
                n.perm = (mode & 0o7777) as u16;
            }
        }
        match r.and_then(|()| m.attr(ino)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn mkdir(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut m = live!(self, reply);
        let r = m.mkdir(parent, name, (mode & !umask & 0o7777) as u16);
        if let Ok(ino) = r {
            m.set_owner(ino, req.uid(), req.gid());
        }
        entry_reply(&m, r, reply);
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        empty_reply(live!(self, reply).remove(parent, name, false), reply);
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        empty_reply(live!(self, reply).remove(parent, name, true), reply);
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let r = if flags & !(libc::RENAME_NOREPLACE) != 0 {
            Err(FsError::Invalid)
        } else {
            live!(self, reply).rename(
                parent,
                name,
                newparent,
                newname,
                flags & libc::RENAME_NOREPLACE != 0,
            )
        };
        empty_reply(r, reply);
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        let mut m = live!(self, reply);
        if !m.inodes.contains_key(&ino) {
            return reply.error(libc::ENOENT);
        }
        let fh = m.new_handle();
        // Direct I/O: no page cache in the kernel, so what a reader sees
        // after a cut is the image, never a cached unsynced page.
        reply.opened(fh, fuser::consts::FOPEN_DIRECT_IO);
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut m = live!(self, reply);
        let r = m
            .create(parent, name, (mode & !umask & 0o7777) as u16)
            .and_then(|ino| {
                m.set_owner(ino, req.uid(), req.gid());
                m.attr(ino)
            });
        match r {
            Ok(a) => {
                let fh = m.new_handle();
                reply.created(&TTL, &a, 0, fh, fuser::consts::FOPEN_DIRECT_IO);
            }
            Err(e) => reply.error(e.errno()),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let m = live!(self, reply);
        let r = m
            .check_handle(fh)
            .and_then(|()| m.read(ino, offset.max(0) as u64, size as u64));
        match r {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let mut m = live!(self, reply);
        let r = m
            .check_handle(fh)
            .and_then(|()| m.write(ino, offset.max(0) as u64, data));
        match r {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, fh: u64, _datasync: bool, reply: ReplyEmpty) {
        let delay = live!(self, reply).sync_delay;
        if !delay.is_zero() {
            // A slow disk: the data stays unsynced (and a cut meanwhile
            // drops it; the handle is then stale and the sync fails).
            std::thread::sleep(delay);
        }
        let mut m = live!(self, reply);
        let r = m.check_handle(fh).and_then(|()| m.fsync(ino));
        empty_reply(r, reply);
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        let mut m = live!(self, reply);
        match m.dir(ino) {
            Ok(_) => {
                let fh = m.new_handle();
                reply.opened(fh, 0)
            }
            Err(e) => reply.error(e.errno()),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let m = live!(self, reply);
        let list = match m.list(ino) {
            Ok(l) => l,
            Err(e) => return reply.error(e.errno()),
        };
        let mut all = vec![
            (OsString::from("."), ino, FileType::Directory),
            (OsString::from(".."), ino, FileType::Directory),
        ];
        for (name, child) in list {
            let kind = match m.inodes.get(&child).map(|n| &n.kind) {
                Some(Kind::Dir(_)) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            all.push((name, child, kind));
        }
        for (i, (name, child, kind)) in all.into_iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(child, (i + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut m = live!(self, reply);
        let r = m.check_handle(fh).map(|()| m.fsync_dir(ino));
        empty_reply(r, reply);
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let backing = live!(self, reply).backing.clone();
        match rustix::fs::statvfs(&backing) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                255,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(e.raw_os_error()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(seed: u64) -> (tempfile::TempDir, Model) {
        let dir = tempfile::tempdir().unwrap();
        let m = Model::new(dir.path(), seed).unwrap();
        (dir, m)
    }

    fn n(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn a_synced_file_whose_name_was_never_synced_is_gone() {
        let (_d, mut m) = model(1);
        let f = m.create(ROOT, n("f"), 0o644).unwrap();
        m.write(f, 0, b"data").unwrap();
        m.fsync(f).unwrap();
        m.cut();
        assert_eq!(m.lookup(ROOT, n("f")), None);
        let f = m.create(ROOT, n("f"), 0o644).unwrap();
        m.write(f, 0, b"data").unwrap();
        m.fsync(f).unwrap();
        m.fsync_dir(ROOT);
        let report = m.cut();
        assert_eq!(report.inodes_lost, 0);
        let f = m.lookup(ROOT, n("f")).unwrap();
        assert_eq!(m.read(f, 0, 10).unwrap(), b"data");
    }

    #[test]
    fn a_rename_and_an_unlink_are_undone_until_the_directory_is_synced() {
        let (_d, mut m) = model(2);
        let a = m.create(ROOT, n("a"), 0o644).unwrap();
        let gone = m.create(ROOT, n("gone"), 0o644).unwrap();
        m.fsync(a).unwrap();
        m.fsync_dir(ROOT);
        m.rename(ROOT, n("a"), ROOT, n("b"), false).unwrap();
        m.remove(ROOT, n("gone"), false).unwrap();
        m.cut();
        assert_eq!(m.lookup(ROOT, n("a")), Some(a));
        assert_eq!(m.lookup(ROOT, n("b")), None);
        assert_eq!(m.lookup(ROOT, n("gone")), Some(gone));
        m.rename(ROOT, n("a"), ROOT, n("b"), false).unwrap();
        m.fsync_dir(ROOT);
        m.cut();
        assert_eq!(m.lookup(ROOT, n("b")), Some(a));
        assert_eq!(m.lookup(ROOT, n("a")), None);
    }

    /// Over many seeds: each sector of the last unsynced write is old or new
    /// as a whole, earlier unsynced writes never land, the size never grows
    /// past a landed sector, and every outcome (none, all, some) happens.
    #[test]
    fn only_whole_sectors_of_the_last_unsynced_write_land() {
        const SECTORS: usize = 4;
        let (mut none, mut all, mut some) = (0, 0, 0);
        for seed in 0..200 {
            let (_d, mut m) = model(seed);
            let f = m.create(ROOT, n("wal"), 0o644).unwrap();
            m.write(f, 0, &[b'o'; SECTORS * 512]).unwrap();
            m.fsync(f).unwrap();
            m.fsync_dir(ROOT);
            m.write(f, 0, &[b'e'; 512]).unwrap(); // earlier unsynced write
            m.write(f, 512, &[b'n'; (SECTORS - 1) * 512]).unwrap(); // the last one
            m.cut();
            let f = m.lookup(ROOT, n("wal")).unwrap();
            let data = m.read(f, 0, 1 << 20).unwrap();
            assert_eq!(data.len(), SECTORS * 512, "seed {seed}");
            assert!(data[..512].iter().all(|&b| b == b'o'), "seed {seed}");
            let mut landed = 0;
            for sector in data[512..].chunks(512) {
                assert!(
                    sector.iter().all(|&b| b == b'o') || sector.iter().all(|&b| b == b'n'),
                    "seed {seed}: a torn sector"
                );
                landed += usize::from(sector[0] == b'n');
            }
            match landed {
                0 => none += 1,
                l if l == SECTORS - 1 => all += 1,
                _ => some += 1,
            }
        }
        assert!(none > 0 && all > 0 && some > 0, "{none} {all} {some}");
    }

    #[test]
    fn a_truncation_and_an_extension_are_undone_by_a_cut() {
        let (_d, mut m) = model(3);
        let f = m.create(ROOT, n("f"), 0o644).unwrap();
        m.write(f, 0, &[7u8; 1000]).unwrap();
        m.fsync(f).unwrap();
        m.fsync_dir(ROOT);
        m.set_size(f, 100).unwrap();
        m.set_size(f, 4000).unwrap();
        assert_eq!(m.read(f, 0, 5000).unwrap()[100..1000], [0u8; 900]);
        m.cut();
        assert_eq!(m.read(f, 0, 5000).unwrap(), vec![7u8; 1000]);
        m.set_size(f, 10).unwrap();
        m.fsync(f).unwrap();
        m.cut();
        assert_eq!(m.read(f, 0, 5000).unwrap(), vec![7u8; 10]);
    }

    #[test]
    fn a_handle_from_before_a_cut_fails() {
        let (_d, mut m) = model(4);
        let h = m.new_handle();
        assert_eq!(m.check_handle(h), Ok(()));
        m.cut();
        assert_eq!(m.check_handle(h), Err(FsError::Io));
        let h = m.new_handle();
        assert_eq!(m.check_handle(h), Ok(()));
    }
}
