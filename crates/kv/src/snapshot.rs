//! Deterministic snapshots: `MAGIC`, [`FORMAT_VERSION`], a postcard body,
//! then a little-endian CRC-32C of everything before it.
//!
//! The body is the revision, the compact revision, the applied index and
//! every key in key order with its metadata and value. Nothing else (no
//! capacities, no hash-map order) enters it, so replicas that applied the
//! same entries produce byte-identical snapshots.

use crate::bytes::ByteBuf;
use crate::checksum::CRC32C;
use crate::codec::{decode_exact, FORMAT_VERSION};
use crate::error::SnapshotError;
use crate::limits::{INITIAL_REVISION, MAX_KEY_BYTES, MAX_VALUE_BYTES};
use crate::response::KeyValue;
use crate::store::{entry_size, Entry, KvStore};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize, Serializer};

/// The first bytes of every snapshot.
pub const SNAPSHOT_MAGIC: [u8; 4] = *b"MRKV";

const HEADER_BYTES: usize = SNAPSHOT_MAGIC.len() + 1;
const CHECKSUM_BYTES: usize = 4;

/// The body as written: borrows the store, so writing copies nothing twice.
#[derive(Serialize)]
struct BodyRef<'a> {
    revision: i64,
    compact_revision: i64,
    applied_index: u64,
    kvs: KvsRef<'a>,
}

struct KvsRef<'a>(&'a BTreeMap<Vec<u8>, Entry>);

/// Field for field the serde layout of [`KeyValue`], which the reader uses.
#[derive(Serialize)]
pub(crate) struct KeyValueRef<'a> {
    #[serde(serialize_with = "crate::bytes::serialize")]
    pub(crate) key: &'a [u8],
    pub(crate) create_revision: i64,
    pub(crate) mod_revision: i64,
    pub(crate) version: i64,
    #[serde(serialize_with = "crate::bytes::serialize")]
    pub(crate) value: &'a [u8],
}

impl Serialize for KvsRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|(k, e)| KeyValueRef {
            key: k,
            create_revision: e.create_revision,
            mod_revision: e.mod_revision,
            version: e.version,
            value: &e.value,
        }))
    }
}

/// The body as read.
#[derive(Deserialize)]
struct Body {
    revision: i64,
    compact_revision: i64,
    applied_index: u64,
    // Serde's element-wise `Vec<u8>` and one insert per key, not
    // `SnapKeyValue` and `build_map`: this store's snapshots are the
    // firmware's (small), and the bulk path's code (a byte-buffer visitor,
    // `BTreeMap::from_iter` with its stable sort) is ~5 KB of its `.text`.
    kvs: Vec<KeyValue>,
}

/// One key as read: field for field the serde layout of
/// [`KeyValue`](crate::KeyValue) (and [`KeyValueRef`]), its byte strings
/// read in one copy each.
#[derive(Deserialize)]
pub(crate) struct SnapKeyValue {
    pub(crate) key: ByteBuf,
    pub(crate) create_revision: i64,
    pub(crate) mod_revision: i64,
    pub(crate) version: i64,
    pub(crate) value: ByteBuf,
}

/// The map of `kvs`, which must be in strictly ascending key order and
/// each valid at `revision` ([`SnapKeyValue::valid`]), built in bulk (no
/// search per key); adds what [`KvStore::size_bytes`] counts for them to
/// `size_bytes`. `None` if a key is out of order or invalid. Needs no more
/// memory than inserting one by one: the checks borrow, and the entries
/// are made in place in `kvs`'s buffer, which the bulk build then reads.
pub(crate) fn build_map(
    kvs: Vec<SnapKeyValue>,
    revision: i64,
    size_bytes: &mut usize,
) -> Option<BTreeMap<Vec<u8>, Entry>> {
    let mut last: Option<&[u8]> = None;
    for kv in &kvs {
        let ascending = last.is_none_or(|last| last < kv.key.0.as_slice());
        if !ascending || !kv.valid(revision) {
            return None;
        }
        last = Some(&kv.key.0);
        *size_bytes = size_bytes.saturating_add(entry_size(&kv.key.0, &kv.value.0));
    }
    // Sorted and free of duplicates: `from_iter`'s stable sort is one
    // linear pass, then the tree is built bottom-up.
    Some(
        kvs.into_iter()
            .map(|kv| {
                let e = Entry {
                    value: kv.value.0,
                    create_revision: kv.create_revision,
                    mod_revision: kv.mod_revision,
                    version: kv.version,
                };
                (kv.key.0, e)
            })
            .collect(),
    )
}

impl SnapKeyValue {
    /// Whether a store at `revision` can hold this key and version.
    fn valid(&self, revision: i64) -> bool {
        let revs = [self.create_revision, self.mod_revision, self.version];
        valid_version(&self.key.0, &self.value.0, revs, revision)
    }
}

impl KvStore {
    /// Serializes the whole state. Deterministic: equal stores give equal
    /// bytes. Cost: O(data).
    pub fn snapshot(&self) -> Vec<u8> {
        let body = BodyRef {
            revision: self.revision,
            compact_revision: self.compact_revision,
            applied_index: self.applied_index,
            kvs: KvsRef(&self.map),
        };
        encode_framed(SNAPSHOT_MAGIC, &body, self.size_bytes)
    }

    /// Rebuilds a store from [`snapshot`](Self::snapshot) bytes. The result
    /// equals the store that was snapshotted and behaves identically from
    /// then on. Damaged or foreign bytes are refused, never trusted.
    pub fn restore(bytes: &[u8]) -> Result<KvStore, SnapshotError> {
        let body: Body = decode_framed(bytes, SNAPSHOT_MAGIC)?;
        from_body(body).ok_or(SnapshotError::Inconsistent)
    }

    /// Like [`restore`](Self::restore), for a snapshot followed by other
    /// bytes (e.g. the zero padding of a backup file): returns the store
    /// and the snapshot's length. The snapshot delimits itself, so this
    /// checksums it once, whatever follows.
    pub fn restore_prefix(bytes: &[u8]) -> Result<(KvStore, usize), SnapshotError> {
        let (body, len): (Body, usize) = decode_framed_prefix(bytes, SNAPSHOT_MAGIC)?;
        let store = from_body(body).ok_or(SnapshotError::Inconsistent)?;
        Ok((store, len))
    }

    /// Starts the store's applied index over at `index`, for a store
    /// restored from a backup into a new cluster whose log starts again
    /// (`metalraft snapshot restore`). Keys and revisions are unchanged.
    pub fn rebase_applied_index(&mut self, index: u64) {
        self.applied_index = index;
    }
}

/// `magic`, [`FORMAT_VERSION`], the postcard `body`, then the CRC-32C of
/// all of it. `size_hint` is the expected body size in bytes.
pub(crate) fn encode_framed<B: Serialize>(magic: [u8; 4], body: &B, size_hint: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + size_hint + CHECKSUM_BYTES);
    out.extend_from_slice(&magic);
    out.push(FORMAT_VERSION);
    let mut out = postcard::to_extend(body, out)
        .expect("postcard cannot fail to encode a snapshot body into a Vec");
    let crc = CRC32C.checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The body of a framed snapshot that fills `bytes` exactly.
pub(crate) fn decode_framed<B: DeserializeOwned>(
    bytes: &[u8],
    magic: [u8; 4],
) -> Result<B, SnapshotError> {
    check_header(bytes, magic)?;
    let (covered, crc) = bytes.split_at(bytes.len() - CHECKSUM_BYTES);
    let mut crc_le = [0u8; CHECKSUM_BYTES];
    crc_le.copy_from_slice(crc);
    if CRC32C.checksum(covered) != u32::from_le_bytes(crc_le) {
        return Err(SnapshotError::ChecksumMismatch);
    }
    decode_exact(&covered[HEADER_BYTES..]).map_err(|_| SnapshotError::Malformed)
}

/// The body of a framed snapshot at the start of `bytes`, and the
/// snapshot's length.
pub(crate) fn decode_framed_prefix<B: DeserializeOwned>(
    bytes: &[u8],
    magic: [u8; 4],
) -> Result<(B, usize), SnapshotError> {
    check_header(bytes, magic)?;
    // Decoding is bounded and never panics, so it may come before the
    // checksum: it is what finds where the checksum is.
    let (body, rest) = postcard::take_from_bytes::<B>(&bytes[HEADER_BYTES..])
        .map_err(|_| SnapshotError::ChecksumMismatch)?;
    let covered_len = bytes.len() - rest.len();
    if rest.len() < CHECKSUM_BYTES {
        // Long enough for a header and a checksum: damaged, not short.
        return Err(SnapshotError::ChecksumMismatch);
    }
    let mut crc_le = [0u8; CHECKSUM_BYTES];
    crc_le.copy_from_slice(&rest[..CHECKSUM_BYTES]);
    if CRC32C.checksum(&bytes[..covered_len]) != u32::from_le_bytes(crc_le) {
        return Err(SnapshotError::ChecksumMismatch);
    }
    Ok((body, covered_len + CHECKSUM_BYTES))
}

/// Length, magic and format version.
fn check_header(bytes: &[u8], magic: [u8; 4]) -> Result<(), SnapshotError> {
    if bytes.len() < HEADER_BYTES + CHECKSUM_BYTES {
        return Err(SnapshotError::Truncated);
    }
    if bytes[..magic.len()] != magic {
        return Err(SnapshotError::BadMagic);
    }
    let version = bytes[magic.len()];
    if version != FORMAT_VERSION {
        return Err(SnapshotError::UnknownVersion(version));
    }
    Ok(())
}

/// Checks every invariant `apply` maintains, so a restored store can never
/// hold a state `apply` could not have produced.
fn from_body(body: Body) -> Option<KvStore> {
    let revision = body.revision;
    let valid_header =
        revision >= INITIAL_REVISION && (0..=revision).contains(&body.compact_revision);
    if !valid_header {
        return None;
    }
    let mut store = KvStore::new();
    store.revision = revision;
    store.compact_revision = body.compact_revision;
    store.applied_index = body.applied_index;
    for kv in body.kvs {
        if !valid_key_value(&kv, revision) {
            return None;
        }
        let ascending = store
            .map
            .last_key_value()
            .is_none_or(|(last, _)| *last < kv.key);
        if !ascending {
            return None;
        }
        store.size_bytes = store
            .size_bytes
            .saturating_add(entry_size(&kv.key, &kv.value));
        let e = Entry {
            value: kv.value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
        };
        store.map.insert(kv.key, e);
    }
    Some(store)
}

fn valid_key_value(kv: &KeyValue, revision: i64) -> bool {
    valid_version(
        &kv.key,
        &kv.value,
        [kv.create_revision, kv.mod_revision, kv.version],
        revision,
    )
}

/// Whether a store at `revision` can hold `key` = `value` with
/// `[create_revision, mod_revision, version]`.
fn valid_version(key: &[u8], value: &[u8], revs: [i64; 3], revision: i64) -> bool {
    let [create_revision, mod_revision, version] = revs;
    let sizes = !key.is_empty() && key.len() <= MAX_KEY_BYTES && value.len() <= MAX_VALUE_BYTES;
    let revisions = INITIAL_REVISION < create_revision
        && create_revision <= mod_revision
        && mod_revision <= revision;
    // At most one write per revision from creation to the last write.
    let max_version = mod_revision
        .saturating_sub(create_revision)
        .saturating_add(1);
    sizes && revisions && (1..=max_version).contains(&version)
}
