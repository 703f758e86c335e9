//! bbolt's file format (version 2, the one etcd 3.4 uses for its backend
//! and for the file `etcdctl snapshot save` writes): enough to write a
//! database that etcd's tools open, check and restore, and to read one
//! back without trusting it.
//!
//! A database is a sequence of pages of [`PAGE_BYTES`]: two meta pages
//! (0 and 1; the valid one with the higher transaction id wins), a
//! freelist page, then B+trees of branch and leaf pages. The root tree's
//! leaf elements name the buckets; each bucket's value is its own tree's
//! root page (or, for a small bucket, the page inline). Page structures are
//! little-endian; a node bigger than a page spans `overflow` further pages.
//!
//! [`write_db`] lays out sorted buckets in one pass, each page full, no
//! free pages (so `tx.Check()` — which `etcdctl snapshot status` runs —
//! finds every page reachable). [`Db`] reads any valid version-2 file,
//! bounds-checking every offset: a malformed file is a [`BoltError`],
//! never a panic.

mod read;
mod write;

pub use read::{Db, Items, MAX_DEPTH};
pub use write::{write_db, Bucket, BucketWriter, DbWriter};

/// Page size of the databases written here (etcd's on Linux/x86-64).
pub const PAGE_BYTES: usize = 4096;
/// bbolt's meta magic.
pub const MAGIC: u32 = 0xED0C_DAED;
/// bbolt's file format version.
pub const VERSION: u32 = 2;

/// Bytes of a page header: id u64, flags u16, count u16, overflow u32.
const PAGE_HEADER_BYTES: usize = 16;
/// Bytes of a leaf element (flags, pos, ksize, vsize: u32 each) and of a
/// branch element (pos u32, ksize u32, pgid u64).
const ELEMENT_BYTES: usize = 16;
/// Bytes of a bucket's header in its parent's value: root pgid, sequence.
const BUCKET_HEADER_BYTES: usize = 16;
/// Bytes of the meta fields the checksum covers (magic … txid).
const META_SUMMED_BYTES: usize = 56;

/// Page flags.
const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const META_PAGE: u16 = 0x04;
const FREELIST_PAGE: u16 = 0x10;
/// Leaf element flag: the value is a bucket header.
const BUCKET_LEAF: u32 = 0x01;

/// Why a file is not a readable bbolt database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoltError {
    /// Neither meta page has bbolt's magic, version 2 and a valid checksum.
    #[error("not a bbolt database (no valid meta page)")]
    NoValidMeta,
    /// The meta page's page size is not a power of two of at least 1 KiB.
    #[error("unsupported page size {0}")]
    PageSize(u32),
    /// A page or element lies outside the file or its page.
    #[error("page {page}: {what} out of bounds")]
    OutOfBounds {
        /// The page.
        page: u64,
        /// What did not fit.
        what: &'static str,
    },
    /// A page of the wrong type where a tree page was expected.
    #[error("page {page}: flags {flags:#x} where a branch or leaf page was expected")]
    PageType {
        /// The page.
        page: u64,
        /// Its flags.
        flags: u16,
    },
    /// A tree deeper than [`MAX_DEPTH`] (a cycle, or garbage).
    #[error("page {page}: tree deeper than {depth} levels")]
    TooDeep {
        /// The page.
        page: u64,
        /// The limit.
        depth: usize,
    },
    /// A tree visits more pages than the file holds: some page is
    /// referenced twice.
    #[error("page {page}: referenced more than once")]
    SharedPage {
        /// The page reached once too often.
        page: u64,
    },
    /// A bucket's value is shorter than a bucket header.
    #[error("bucket {name:?}: value of {len} bytes is not a bucket header")]
    BadBucket {
        /// The bucket's name, lossily decoded.
        name: String,
        /// Its value's length.
        len: usize,
    },
}

/// bbolt's meta checksum: 64-bit FNV-1a.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests;
