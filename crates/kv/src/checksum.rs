//! CRC-32C (Castagnoli, the CRC etcd uses for `HashKV`): snapshot checksums
//! and the state hash.

use crate::store::{Entry, KvStore};
use alloc::vec::Vec;
use crc::{Crc, CRC_32_ISCSI};

/// The lookup table: 16 KiB, slicing 16 bytes at a time, with the feature
/// `fast-checksum` (the server: a snapshot of a million keys is 300 MB,
/// checked in about a quarter of the time); one 1 KiB table, a byte at a
/// time, without it (the firmware's flash).
#[cfg(feature = "fast-checksum")]
pub(crate) type Table = crc::Table<16>;
/// See above.
#[cfg(not(feature = "fast-checksum"))]
pub(crate) type Table = crc::Table<1>;

pub(crate) const CRC32C: Crc<u32, Table> = Crc::<u32, Table>::new(&CRC_32_ISCSI);

impl KvStore {
    /// A deterministic hash of the data, for etcd's `HashKV` and for
    /// comparing replicas: CRC-32C over every key in key order, each as its
    /// length-prefixed key, length-prefixed value, create revision, mod
    /// revision and version (lengths as `u64`, numbers as `i64`, all
    /// little-endian). It does not cover the revision, compact revision or
    /// applied index, so compare those alongside it. Cost: O(data).
    pub fn hash(&self) -> u32 {
        hash_entries(self.map.iter())
    }
}

/// CRC-32C over `(key, entry)` pairs in the order given, in the layout
/// [`KvStore::hash`] documents.
pub(crate) fn hash_entries<'m>(entries: impl Iterator<Item = (&'m Vec<u8>, &'m Entry)>) -> u32 {
    let mut digest = CRC32C.digest();
    for (key, e) in entries {
        digest.update(&(key.len() as u64).to_le_bytes());
        digest.update(key);
        digest.update(&(e.value.len() as u64).to_le_bytes());
        digest.update(&e.value);
        digest.update(&e.create_revision.to_le_bytes());
        digest.update(&e.mod_revision.to_le_bytes());
        digest.update(&e.version.to_le_bytes());
    }
    digest.finalize()
}
