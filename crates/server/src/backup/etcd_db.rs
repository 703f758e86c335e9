//! A backup as etcd 3.4 lays out its database (a bbolt file, see
//! [`crate::bolt`]), so `etcdctl snapshot status` and `etcdctl snapshot
//! restore` work on what `etcdctl snapshot save` fetched from metalraft —
//! and a cluster can move from metalraft to etcd through a backup.
//!
//! Buckets, as etcd names and fills them:
//! - `key`: every version kept, keyed by revision (8-byte big-endian main
//!   revision, `_`, 8-byte sub-revision; a deletion's tombstone adds `t`),
//!   each value an `mvccpb.KeyValue` (a tombstone's holds only the key);
//! - `meta`: `consistent_index` (the applied index) and, after a
//!   compaction, `finishedCompactRev` / `scheduledCompactRev`;
//! - `lease`: each lease (`leasepb.Lease`: ID and TTL);
//! - `cluster`: `clusterVersion`.
//!
//! Plus one bucket of metalraft's own, [`METALRAFT_BUCKET`]: the
//! `metalraft-kv` snapshot in [`CHUNK_BYTES`] values, which `metalraft
//! snapshot restore` reads (exact: leases' keys, history and revision as
//! the member had them). etcd carries an unknown bucket along untouched.
//!
//! With the chunks, [`DIGEST_KEY`] holds the SHA-256 of the `key` and
//! `lease` buckets as written: etcd keeps our bucket when it restores the
//! file and writes on, so a later backup of that etcd holds a stale copy,
//! which the digest exposes (and etcd's buckets are imported instead).
//!
//! A backup of etcd itself has no such bucket: [`import`] rebuilds the
//! store from etcd's `key`, `meta` and `lease` buckets (the way from etcd
//! to metalraft), through the checks a snapshot's restore runs
//! ([`kv::MvccStore::import`]).
//!
//! What etcd's view loses, and why it does not matter to etcd: a version
//! that was live at the compact revision keeps its main revision but gets a
//! sub-revision by key order (the store does not keep the original one; etcd
//! only orders by it); past versions carry lease 0 (the store records a
//! lease for live keys only, ADR 0015).

use std::io::{self, Seek, Write};

use metalraft_kv as kv;
use prost::Message;

use crate::bolt;
use crate::proto::mvccpb;

/// The bucket holding the `metalraft-kv` snapshot.
pub const METALRAFT_BUCKET: &[u8] = b"metalraft";
/// Bytes per value of [`METALRAFT_BUCKET`].
pub const CHUNK_BYTES: usize = 1 << 20;
/// The item of [`METALRAFT_BUCKET`] holding the SHA-256 of etcd's `key`
/// and `lease` buckets as written (after the chunks' 8-byte keys).
pub const DIGEST_KEY: &[u8] = b"etcd-sha256";
/// etcd's cluster version recorded in the `cluster` bucket.
pub const CLUSTER_VERSION: &str = "3.4.0";
/// Most changes read from the store per step while the `key` bucket is
/// built.
const CHANGES_PER_READ: usize = 4096;
/// Bytes of an etcd revision key: main, `_`, sub.
const REVISION_KEY_BYTES: usize = 17;

/// etcd's `leasepb.Lease`.
#[derive(Clone, PartialEq, Message)]
struct LeasePb {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

/// What `etcdctl snapshot status` reports for a database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DbStatus {
    /// CRC-32C over every bucket's name, then its keys and values.
    pub hash: u32,
    /// The main revision of the last key of the `key` bucket.
    pub revision: i64,
    /// Items in all buckets.
    pub total_keys: usize,
    /// Pages in use times the page size.
    pub total_size: u64,
}

/// Why a database cannot be read as a backup.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The file is not a readable bbolt database.
    #[error(transparent)]
    Bolt(#[from] bolt::BoltError),
    /// A bbolt database without [`METALRAFT_BUCKET`] (asked of
    /// [`snapshot_bytes`]; [`import`] reads etcd's buckets instead).
    #[error("a database without metalraft's bucket")]
    NoMetalraftBucket,
    /// metalraft's bucket no longer matches etcd's buckets: etcd wrote to
    /// the database after restoring it (asked of [`snapshot_bytes`];
    /// [`restore`] imports etcd's buckets instead).
    #[error("metalraft's bucket is older than etcd's data in the same database")]
    Diverged,
    /// etcd's database has no `key` bucket.
    #[error("not an etcd database: no `key` bucket")]
    NoKeyBucket,
    /// An item of etcd's buckets that does not decode.
    #[error("etcd's `{bucket}` bucket: {what}")]
    BadItem {
        /// The bucket.
        bucket: &'static str,
        /// What is wrong.
        what: String,
    },
    /// etcd's revisions do not make a consistent history (a gap, a version
    /// newer than the compaction where it should be older, ...).
    #[error("etcd's revisions are not a consistent history: {0}")]
    Inconsistent(kv::SnapshotError),
}

/// Why a database could not be built in steps ([`write_in_steps`]).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The store was compacted or replaced between two steps: the history
    /// the database needs may be gone; start over.
    #[error("the store changed under the backup")]
    Changed,
    /// The store's lock is poisoned: the member is stopping.
    #[error("the store is unavailable (the member is stopping)")]
    Unavailable,
    /// Writing the database failed (a full disk, ...).
    #[error("writing the database: {0}")]
    Io(#[from] io::Error),
}

/// The store a database is built from, as frozen when the build began
/// (what a [`kv::SnapshotStream`] made at the same moment holds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frozen {
    /// The store's revision.
    pub revision: i64,
    /// Its compact revision.
    pub compact_revision: i64,
    /// Its applied index.
    pub applied_index: u64,
    /// Its leases with their keys ([`kv::SnapshotStream::leases`]).
    pub leases: Vec<kv::LeaseInfo>,
}

impl Frozen {
    /// What `stream` froze: its revision, compact revision, applied index
    /// and leases.
    ///
    /// # Errors
    /// The stream's frozen leases do not decode (a bug).
    pub fn of_stream(stream: &kv::SnapshotStream) -> Result<Frozen, kv::SnapshotError> {
        Ok(Frozen {
            revision: stream.revision(),
            compact_revision: stream.compact_revision(),
            applied_index: stream.applied_index(),
            leases: stream.leases()?,
        })
    }
}

/// The store as etcd's database (without the trailing digest), in memory.
pub fn encode(store: &kv::MvccStore) -> Vec<u8> {
    let mut stream = store.snapshot_stream();
    let frozen = Frozen::of_stream(&stream).expect("a stream's own lease section decodes");
    let db = write_in_steps(
        io::Cursor::new(Vec::new()),
        &frozen,
        |reader, items| reader.step(store, usize::MAX, items),
        |out| {
            stream
                .step(store, usize::MAX, out)
                .map_err(|_| BuildError::Changed)
        },
    );
    match db {
        Ok(db) => db.into_inner(),
        Err(e) => unreachable!("a store that does not change, written to memory: {e}"),
    }
}

/// Builds etcd's database of the store `frozen` describes into `out`
/// (from its offset 0; returned positioned at the database's end), page by
/// page, from steps the caller runs — each with whatever lock it needs,
/// and with the store free to apply in between ([`super::live`]):
/// `key_step` runs one step of a [`KeyBucketReader`] over the store,
/// `snapshot_step` appends the next bytes of the store's `metalraft-kv`
/// snapshot (a [`kv::SnapshotStream`] made with the freeze) and says
/// whether it is complete. Nothing is held in memory but one step's items
/// and one of our bucket's values.
///
/// # Errors
/// A step found the store changed ([`BuildError::Changed`]); writing to
/// `out` failed.
pub fn write_in_steps<W: Write + Seek>(
    out: W,
    frozen: &Frozen,
    mut key_step: impl FnMut(
        &mut KeyBucketReader,
        &mut Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<bool, BuildError>,
    mut snapshot_step: impl FnMut(&mut Vec<u8>) -> Result<bool, BuildError>,
) -> Result<W, BuildError> {
    let mut db = bolt::DbWriter::new(out)?;
    let mut b = db.bucket(b"cluster");
    b.push(b"clusterVersion", CLUSTER_VERSION.as_bytes())?;
    b.finish()?;
    let mut digest = EtcdDigest::default();
    digest.bucket(b"key");
    let mut b = db.bucket(b"key");
    let mut reader = KeyBucketReader::new(frozen);
    let mut items = Vec::new();
    loop {
        let done = key_step(&mut reader, &mut items)?;
        for (k, v) in items.drain(..) {
            digest.item(&k, &v);
            b.push(&k, &v)?;
        }
        if done {
            break;
        }
    }
    b.finish()?;
    digest.bucket(b"lease");
    let mut leases: Vec<_> = frozen
        .leases
        .iter()
        .map(|l| {
            let v = LeasePb {
                id: l.id,
                ttl: l.ttl,
                remaining_ttl: 0,
            };
            ((l.id as u64).to_be_bytes(), v.encode_to_vec())
        })
        .collect();
    leases.sort();
    let mut b = db.bucket(b"lease");
    for (k, v) in &leases {
        digest.item(k, v);
        b.push(k, v)?;
    }
    b.finish()?;
    let mut meta = vec![(
        b"consistent_index".to_vec(),
        frozen.applied_index.to_be_bytes().to_vec(),
    )];
    if frozen.compact_revision > 0 {
        let rev = revision_key(frozen.compact_revision, 0, false);
        meta.push((b"finishedCompactRev".to_vec(), rev.clone()));
        meta.push((b"scheduledCompactRev".to_vec(), rev));
    }
    meta.sort();
    let mut b = db.bucket(b"meta");
    for (k, v) in &meta {
        b.push(k, v)?;
    }
    b.finish()?;
    // Our bucket: the snapshot in CHUNK_BYTES values, then the digest.
    let mut b = db.bucket(METALRAFT_BUCKET);
    let mut chunk = Vec::with_capacity(CHUNK_BYTES);
    let mut n = 0u64;
    loop {
        let done = snapshot_step(&mut chunk)?;
        while chunk.len() >= CHUNK_BYTES || (done && !chunk.is_empty()) {
            let take = chunk.len().min(CHUNK_BYTES);
            b.push(&n.to_be_bytes(), &chunk[..take])?;
            chunk.drain(..take);
            n += 1;
        }
        if done {
            break;
        }
    }
    b.push(DIGEST_KEY, &digest.finish())?;
    b.finish()?;
    Ok(db.finish()?)
}

/// The `metalraft-kv` snapshot a database written by [`encode`] holds.
///
/// Only while etcd's `key` and `lease` buckets are still the ones written
/// with it ([`DIGEST_KEY`]): etcd carries the bucket along, so a backup
/// taken from an etcd restored from ours and written to since holds a
/// stale copy — that is [`DbError::Diverged`].
pub fn snapshot_bytes(db: &[u8]) -> Result<Vec<u8>, DbError> {
    let db = bolt::Db::open(db)?;
    let items = db
        .bucket(METALRAFT_BUCKET)?
        .ok_or(DbError::NoMetalraftBucket)?;
    let (digest, chunks): (bolt::Items<'_>, bolt::Items<'_>) =
        items.into_iter().partition(|(k, _)| *k == DIGEST_KEY);
    let keys = db.bucket(b"key")?.unwrap_or_default();
    let leases = db.bucket(b"lease")?.unwrap_or_default();
    let now = etcd_digest(keys.into_iter(), leases.into_iter());
    if digest.first().map(|(_, v)| *v) != Some(&now[..]) {
        return Err(DbError::Diverged);
    }
    Ok(chunks.iter().flat_map(|(_, v)| v.iter().copied()).collect())
}

/// SHA-256 of etcd's `key` and `lease` items, each length-prefixed.
fn etcd_digest<'a>(
    keys: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    leases: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> [u8; 32] {
    let mut d = EtcdDigest::default();
    d.bucket(b"key");
    keys.for_each(|(k, v)| d.item(k, v));
    d.bucket(b"lease");
    leases.for_each(|(k, v)| d.item(k, v));
    d.finish()
}

/// [`etcd_digest`], fed one bucket and item at a time as they are written.
#[derive(Default)]
struct EtcdDigest(sha2::Sha256);

impl EtcdDigest {
    fn bucket(&mut self, name: &[u8]) {
        use sha2::Digest;
        self.0.update((name.len() as u64).to_le_bytes());
        self.0.update(name);
    }

    fn item(&mut self, k: &[u8], v: &[u8]) {
        use sha2::Digest;
        self.0.update((k.len() as u64).to_le_bytes());
        self.0.update(k);
        self.0.update((v.len() as u64).to_le_bytes());
        self.0.update(v);
    }

    fn finish(self) -> [u8; 32] {
        use sha2::Digest;
        self.0.finalize().into()
    }
}

/// The store a backup holds: metalraft's own snapshot if the database has
/// [`METALRAFT_BUCKET`], else (a backup of etcd itself) the store rebuilt
/// from etcd's `key`, `meta` and `lease` buckets — every revision since the
/// compaction, the versions live at it, the leases with their keys.
pub fn restore(db: &[u8]) -> Result<kv::MvccStore, RestoreError> {
    match snapshot_bytes(db) {
        Ok(bytes) => kv::MvccStore::restore(&bytes).map_err(RestoreError::Snapshot),
        Err(DbError::NoMetalraftBucket | DbError::Diverged) => import(db).map_err(RestoreError::Db),
        Err(e) => Err(RestoreError::Db(e)),
    }
}

/// Why [`restore`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// metalraft's snapshot in the database is damaged.
    #[error("not a metalraft snapshot: {0}")]
    Snapshot(kv::SnapshotError),
    /// The database, or etcd's buckets in it.
    #[error(transparent)]
    Db(DbError),
}

/// One item of etcd's `key` bucket.
struct Version {
    main: i64,
    tombstone: bool,
    kv: mvccpb::KeyValue,
}

fn bad(bucket: &'static str, what: impl Into<String>) -> DbError {
    DbError::BadItem {
        bucket,
        what: what.into(),
    }
}

/// Decodes a `key` bucket item.
fn version(k: &[u8], v: &[u8]) -> Result<Version, DbError> {
    let tombstone = match k.len() {
        REVISION_KEY_BYTES => false,
        n if n == REVISION_KEY_BYTES + 1 && k[REVISION_KEY_BYTES] == b't' => true,
        n => return Err(bad("key", format!("a revision key of {n} bytes"))),
    };
    let main = i64::from_be_bytes(k[..8].try_into().unwrap_or_default());
    if main < 1 || k[8] != b'_' {
        return Err(bad("key", format!("revision key {k:02x?}")));
    }
    let kv =
        mvccpb::KeyValue::decode(v).map_err(|e| bad("key", format!("revision {main}: {e}")))?;
    if kv.key.is_empty() {
        return Err(bad("key", format!("revision {main}: empty key")));
    }
    Ok(Version {
        main,
        tombstone,
        kv,
    })
}

/// Rebuilds the store from etcd's buckets (see [`restore`]).
pub fn import(db: &[u8]) -> Result<kv::MvccStore, DbError> {
    use std::collections::BTreeMap;
    let db = bolt::Db::open(db)?;
    let keys = db.bucket(b"key")?.ok_or(DbError::NoKeyBucket)?;
    let meta: BTreeMap<&[u8], &[u8]> = db
        .bucket(b"meta")?
        .unwrap_or_default()
        .into_iter()
        .collect();
    let compacted = match meta.get(&b"finishedCompactRev"[..]) {
        Some(v) if v.len() >= 8 => i64::from_be_bytes(v[..8].try_into().unwrap_or_default()),
        Some(_) => return Err(bad("meta", "finishedCompactRev is not a revision")),
        None => 0,
    };
    let applied_index = match meta.get(&b"consistent_index"[..]) {
        Some(v) if v.len() == 8 => u64::from_be_bytes((*v).try_into().unwrap_or_default()),
        Some(_) => return Err(bad("meta", "consistent_index is not 8 bytes")),
        None => 0,
    };
    let base_rev = compacted.max(kv::INITIAL_REVISION);
    // Each key's newest version so far, walking revisions in order.
    let mut live: BTreeMap<Vec<u8>, mvccpb::KeyValue> = BTreeMap::new();
    let mut at_base = Vec::new();
    let mut records: Vec<(i64, kv::ImportedChanges)> = Vec::new();
    let mut base: Option<Vec<kv::KeyValue>> = None;
    let mut revision = base_rev;
    for (k, v) in keys {
        let Version {
            main,
            tombstone,
            kv,
        } = version(k, v)?;
        if main > base_rev && base.is_none() {
            base = Some(base_state(&live));
        }
        if main == base_rev && compacted > 0 {
            let kind = if tombstone {
                kv::ChangeKind::Delete
            } else {
                kv::ChangeKind::Put
            };
            at_base.push((kv.key.clone(), kind));
        }
        if main > base_rev {
            if records.last().is_none_or(|(r, _)| *r != main) {
                records.push((main, Vec::new()));
            }
            let value = (!tombstone).then(|| kv.value.clone());
            if let Some((_, changes)) = records.last_mut() {
                changes.push((kv.key.clone(), value));
            }
        }
        revision = revision.max(main);
        if tombstone {
            live.remove(&kv.key);
        } else {
            live.insert(kv.key.clone(), kv);
        }
    }
    let base = base.unwrap_or_else(|| base_state(&live));
    // Each lease with the live keys whose newest version names it.
    let mut leases: BTreeMap<i64, (i64, Vec<Vec<u8>>)> = BTreeMap::new();
    for (_, v) in db.bucket(b"lease")?.unwrap_or_default() {
        let l = LeasePb::decode(v).map_err(|e| bad("lease", e.to_string()))?;
        leases.insert(l.id, (l.ttl, Vec::new()));
    }
    for (key, kv) in &live {
        // etcd drops the attachment of a lease it no longer has, too.
        if let Some((_, keys)) = leases.get_mut(&kv.lease) {
            keys.push(key.clone());
        }
    }
    kv::MvccStore::import(kv::Imported {
        revision,
        compact_revision: compacted,
        applied_index,
        base,
        at_base,
        records,
        leases: leases
            .into_iter()
            .map(|(id, (ttl, keys))| (id, ttl, keys))
            .collect(),
    })
    .map_err(DbError::Inconsistent)
}

/// The live versions, in key order.
fn base_state(live: &std::collections::BTreeMap<Vec<u8>, mvccpb::KeyValue>) -> Vec<kv::KeyValue> {
    live.values()
        .map(|kv| kv::KeyValue {
            key: kv.key.clone(),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            value: kv.value.clone(),
        })
        .collect()
}

/// `etcdctl snapshot status` of a database.
pub fn status(db: &[u8]) -> Result<DbStatus, DbError> {
    let db = bolt::Db::open(db)?;
    let mut h = crc32c::crc32c(&[]);
    let mut revision = 0;
    let mut total_keys = 0;
    for (name, items) in db.buckets()? {
        h = crc32c::crc32c_append(h, name);
        for (k, v) in &items {
            h = crc32c::crc32c_append(h, k);
            h = crc32c::crc32c_append(h, v);
            if name == b"key" {
                if let Some(main) = k.get(..8) {
                    revision = i64::from_be_bytes(main.try_into().unwrap_or_default());
                }
            }
        }
        total_keys += items.len();
    }
    Ok(DbStatus {
        hash: h,
        revision,
        total_keys,
        total_size: db.size(),
    })
}

/// Whether `bytes` starts like a bbolt database (page 0's meta magic).
pub fn looks_like_bolt(bytes: &[u8]) -> bool {
    bytes.get(16..20) == Some(&bolt::MAGIC.to_le_bytes()[..])
}

/// etcd's key of a version: main and sub revision, `t` for a tombstone.
fn revision_key(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(REVISION_KEY_BYTES + 1);
    k.extend_from_slice(&main.to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&sub.to_be_bytes());
    if tombstone {
        k.push(b't');
    }
    k
}

fn key_value(kv: &kv::KeyValue, lease: i64) -> Vec<u8> {
    mvccpb::KeyValue {
        key: kv.key.clone(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value.clone(),
        lease,
    }
    .encode_to_vec()
}

/// etcd's `key` bucket of a store frozen at a revision ([`Frozen`]), read
/// in bounded steps while the store keeps applying: first the versions live
/// at the compact revision that are older than it (listed keys only, then
/// sorted by revision and read one by one), then every change from the
/// compact revision to the frozen revision. Everything it reads at a
/// revision at or below the frozen one stays readable as long as the store
/// accepted no compaction and was not replaced by an older state since the
/// freeze (the rule of [`kv::SnapshotStream`]), which every step checks.
///
/// A version's lease is the one its key had at the frozen revision, if it
/// was the key's live version then (past versions record none, ADR 0015):
/// the store's own answer would be wrong for a key replaced since.
#[derive(Debug)]
pub struct KeyBucketReader {
    frozen_revision: i64,
    compacted: i64,
    applied_index: u64,
    /// Each key attached to a lease at the frozen revision, with the lease.
    lease_of: std::collections::HashMap<Vec<u8>, i64>,
    phase: Phase,
}

#[derive(Debug)]
enum Phase {
    /// Listing keys from `from` on: (mod revision, key) of each version
    /// older than the compaction.
    List {
        from: Vec<u8>,
        found: Vec<(i64, Vec<u8>)>,
    },
    /// Emitting the listed versions from `at` on.
    Older {
        list: Vec<(i64, Vec<u8>)>,
        at: usize,
        sub: i64,
        last: i64,
    },
    /// Emitting the changes from revision `next` on.
    Changes {
        next: i64,
        sub: i64,
        last: i64,
    },
    Done,
}

impl KeyBucketReader {
    /// A reader of the store `frozen` describes.
    pub fn new(frozen: &Frozen) -> KeyBucketReader {
        let phase = if frozen.compact_revision > 1 {
            Phase::List {
                from: vec![0],
                found: Vec::new(),
            }
        } else {
            Phase::Changes {
                next: frozen.compact_revision.max(1),
                sub: 0,
                last: 0,
            }
        };
        KeyBucketReader {
            frozen_revision: frozen.revision,
            compacted: frozen.compact_revision,
            applied_index: frozen.applied_index,
            lease_of: frozen
                .leases
                .iter()
                .flat_map(|l| l.keys.iter().map(|k| (k.clone(), l.id)))
                .collect(),
            phase,
        }
    }

    /// Reads about `max` items' worth from `store` (at least one read),
    /// appending the bucket's next items to `items`; returns whether the
    /// bucket is complete.
    ///
    /// # Errors
    /// [`BuildError::Changed`]: `store` was compacted or replaced since the
    /// freeze.
    pub fn step(
        &mut self,
        store: &kv::MvccStore,
        max: usize,
        items: &mut Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<bool, BuildError> {
        if !store.holds_history_of(self.frozen_revision, self.compacted, self.applied_index) {
            return Err(BuildError::Changed);
        }
        let max = max.max(1);
        self.phase = match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::List { from, mut found } => {
                let req = kv::RangeRequest {
                    key: from,
                    range_end: vec![0],
                    revision: self.compacted,
                    keys_only: true,
                    limit: i64::try_from(max).unwrap_or(i64::MAX),
                    ..kv::RangeRequest::default()
                };
                // The compact revision is always readable.
                let resp = store.range(&req).map_err(|_| BuildError::Changed)?;
                let next = resp.kvs.last().map(|l| [&l.key[..], &[0]].concat());
                found.extend(
                    resp.kvs
                        .into_iter()
                        .filter(|kv| kv.mod_revision < self.compacted)
                        .map(|kv| (kv.mod_revision, kv.key)),
                );
                match next {
                    Some(from) if resp.more => Phase::List { from, found },
                    _ => {
                        found.sort_unstable();
                        Phase::Older {
                            list: found,
                            at: 0,
                            sub: 0,
                            last: 0,
                        }
                    }
                }
            }
            Phase::Older {
                list,
                mut at,
                mut sub,
                mut last,
            } => {
                let end = list.len().min(at.saturating_add(max));
                for (rev, key) in &list[at..end] {
                    sub = if *rev == last { sub + 1 } else { 0 };
                    last = *rev;
                    let req = kv::RangeRequest {
                        revision: self.compacted,
                        ..kv::RangeRequest::single(key)
                    };
                    let kv = store
                        .range(&req)
                        .map_err(|_| BuildError::Changed)?
                        .kvs
                        .into_iter()
                        .next()
                        .ok_or(BuildError::Changed)?;
                    let lease = self.lease_at_freeze(store, &kv.key, kv.mod_revision);
                    items.push((revision_key(*rev, sub, false), key_value(&kv, lease)));
                }
                at = end;
                if at < list.len() {
                    Phase::Older {
                        list,
                        at,
                        sub,
                        last,
                    }
                } else {
                    Phase::Changes {
                        next: self.compacted.max(1),
                        sub: 0,
                        last: 0,
                    }
                }
            }
            Phase::Changes {
                next,
                mut sub,
                mut last,
            } => {
                if next > self.frozen_revision {
                    return Ok(true);
                }
                let batch = store
                    .changes(next, &[0], &[0], max.min(CHANGES_PER_READ))
                    .map_err(|_| BuildError::Changed)?;
                for c in &batch.changes {
                    let rev = c.kv.mod_revision;
                    if rev > self.frozen_revision {
                        break;
                    }
                    sub = if rev == last { sub + 1 } else { 0 };
                    last = rev;
                    match c.kind {
                        // A deletion at the compact revision is gone in etcd too.
                        kv::ChangeKind::Delete if rev <= self.compacted => {}
                        kv::ChangeKind::Delete => items.push((
                            revision_key(rev, sub, true),
                            mvccpb::KeyValue {
                                key: c.kv.key.clone(),
                                ..Default::default()
                            }
                            .encode_to_vec(),
                        )),
                        kv::ChangeKind::Put => {
                            let lease = self.lease_at_freeze(store, &c.kv.key, rev);
                            items.push((revision_key(rev, sub, false), key_value(&c.kv, lease)));
                        }
                    }
                }
                if batch.next_revision <= next || batch.next_revision > self.frozen_revision {
                    Phase::Done
                } else {
                    Phase::Changes {
                        next: batch.next_revision,
                        sub,
                        last,
                    }
                }
            }
            Phase::Done => Phase::Done,
        };
        Ok(matches!(self.phase, Phase::Done))
    }

    /// The lease of `key`'s version `mod_revision` at the freeze: the key's
    /// lease then, if that version was its live one then, else 0.
    fn lease_at_freeze(&self, store: &kv::MvccStore, key: &[u8], mod_revision: i64) -> i64 {
        let Some(lease) = self.lease_of.get(key) else {
            return 0;
        };
        let req = kv::RangeRequest {
            revision: self.frozen_revision,
            keys_only: true,
            ..kv::RangeRequest::single(key)
        };
        let live = store
            .range(&req)
            .ok()
            .and_then(|r| r.kvs.first().map(|kv| kv.mod_revision));
        if live == Some(mod_revision) {
            *lease
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bolt::Bucket;

    fn put(s: &mut kv::MvccStore, index: u64, key: &str, value: &str) {
        let cmd = kv::Command::Put(kv::PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        });
        s.apply(index, &cmd).unwrap();
    }

    #[test]
    fn the_snapshot_comes_back_whole_and_the_key_bucket_holds_each_version() {
        let mut s = kv::MvccStore::new();
        put(&mut s, 1, "a", "1"); // revision 2
        put(&mut s, 2, "b", "1"); // 3
        put(&mut s, 3, "a", "2"); // 4
        let del = kv::Command::DeleteRange(kv::DeleteRangeRequest {
            key: b"b".to_vec(),
            ..Default::default()
        });
        s.apply(4, &del).unwrap(); // 5
        s.apply(
            5,
            &kv::Command::Compact(kv::CompactionRequest { revision: 4 }),
        )
        .unwrap();
        put(&mut s, 6, "c", "big"); // 6
        let db = encode(&s);
        let back = kv::MvccStore::restore(&snapshot_bytes(&db).unwrap()).unwrap();
        assert_eq!(back, s);

        let st = status(&db).unwrap();
        assert_eq!(st.revision, 6);
        assert_eq!(st.total_size, db.len() as u64);
        let bolt = bolt::Db::open(&db).unwrap();
        let keys: Vec<Vec<u8>> = bolt
            .bucket(b"key")
            .unwrap()
            .unwrap()
            .iter()
            .map(|(k, _)| k.to_vec())
            .collect();
        // b@3 and a@4 (live at the compaction), the tombstone of b@5, c@6;
        // a@2 was compacted away (as etcd's compaction keeps the newest
        // version at or below the compact revision).
        assert_eq!(
            keys,
            vec![
                revision_key(3, 0, false),
                revision_key(4, 0, false),
                revision_key(5, 0, true),
                revision_key(6, 0, false)
            ]
        );
        let meta = bolt.bucket(b"meta").unwrap().unwrap();
        assert!(meta
            .iter()
            .any(|(k, v)| *k == b"finishedCompactRev" && *v == revision_key(4, 0, false)));
        assert!(meta
            .iter()
            .any(|(k, v)| *k == b"consistent_index" && *v == 6u64.to_be_bytes()));
    }

    /// Every bucket of `db`, owned, to change and write again.
    fn buckets_of(db: &[u8]) -> Vec<Bucket> {
        let d = bolt::Db::open(db).unwrap();
        d.buckets()
            .unwrap()
            .into_iter()
            .map(|(name, items)| Bucket {
                name: name.to_vec(),
                items: items
                    .into_iter()
                    .map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .collect(),
            })
            .collect()
    }

    /// etcd's buckets alone (what a backup of etcd itself holds).
    fn etcd_only(db: &[u8]) -> Vec<u8> {
        let mut buckets = buckets_of(db);
        buckets.retain(|b| b.name != METALRAFT_BUCKET);
        bolt::write_db(&buckets)
    }

    fn read_at(s: &kv::MvccStore, revision: i64) -> kv::RangeResponse {
        s.range(&kv::RangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn etcds_buckets_alone_rebuild_a_store_that_reads_the_same() {
        let mut s = kv::MvccStore::new();
        let mut i = 0;
        let mut next = || {
            i += 1;
            i
        };
        for round in 0..5 {
            for k in ["a", "b", "c", "d"] {
                put(&mut s, next(), k, &format!("{k}{round}"));
            }
            let del = kv::Command::DeleteRange(kv::DeleteRangeRequest {
                key: ["a", "b", "c", "d"][round % 4].as_bytes().to_vec(),
                ..Default::default()
            });
            s.apply(next(), &del).unwrap();
            if round == 2 {
                let rev = s.revision() - 3;
                s.apply(
                    next(),
                    &kv::Command::Compact(kv::CompactionRequest { revision: rev }),
                )
                .unwrap();
            }
        }
        let grant = kv::Command::LeaseGrant(kv::LeaseGrantRequest { id: 7, ttl: 60 });
        s.apply(next(), &grant).unwrap();
        let leased = kv::Command::LeasePut(
            kv::PutRequest {
                key: b"l".to_vec(),
                value: b"x".to_vec(),
                ..Default::default()
            },
            kv::LeaseOption {
                lease: 7,
                ignore_lease: false,
            },
        );
        s.apply(next(), &leased).unwrap();

        let db = etcd_only(&encode(&s));
        assert!(matches!(
            snapshot_bytes(&db),
            Err(DbError::NoMetalraftBucket)
        ));
        let back = import(&db).unwrap();
        assert_eq!(back.revision(), s.revision());
        assert_eq!(back.compact_revision(), s.compact_revision());
        for rev in s.compact_revision()..=s.revision() {
            assert_eq!(read_at(&back, rev), read_at(&s, rev), "at revision {rev}");
        }
        assert_eq!(back.lease(7), s.lease(7));
        // The same through restore(), which picks the path by the bucket.
        assert_eq!(read_at(&restore(&db).unwrap(), 0), read_at(&s, 0));
    }

    #[test]
    fn small_steps_into_a_file_write_the_same_database_as_one_pass_in_memory() {
        // Keys older than the compaction over many list steps, their
        // revisions not in key order (written z..a, then every third
        // overwritten); changes after the compaction; values enough for
        // our bucket to take two chunks.
        let mut s = kv::MvccStore::new();
        let keys = 1300;
        let value = "v".repeat(1500);
        let mut index = 0;
        for i in (0..keys).rev() {
            index += 1;
            put(&mut s, index, &format!("k{i:05}"), &value);
        }
        for i in (0..keys).step_by(3) {
            index += 1;
            put(&mut s, index, &format!("k{i:05}"), "again");
        }
        let compact_at = s.revision() - 5;
        index += 1;
        let compact = kv::Command::Compact(kv::CompactionRequest {
            revision: compact_at,
        });
        s.apply(index, &compact).unwrap();
        for i in 0..3 {
            index += 1;
            put(&mut s, index, &format!("k{i:05}"), "after");
        }
        let snapshot = s.snapshot();
        assert!(snapshot.len() > CHUNK_BYTES, "two chunks");
        let db = encode(&s);
        let d = bolt::Db::open(&db).unwrap();
        let items = d.bucket(b"key").unwrap().unwrap();
        // Every key's version live at the compaction, plus the 5 versions
        // written after it before the compaction was applied, plus the 3
        // puts since.
        assert_eq!(items.len(), keys + 5 + 3);
        assert!(items.windows(2).all(|w| w[0].0 < w[1].0));
        let back = import(&etcd_only(&db)).unwrap();
        for rev in [compact_at, s.revision()] {
            assert_eq!(read_at(&back, rev), read_at(&s, rev), "at revision {rev}");
        }
        assert_eq!(snapshot_bytes(&db).unwrap(), snapshot);
        // In steps of 7 versions and 1,000 snapshot bytes, into a file.
        let frozen = Frozen::of_stream(&s.snapshot_stream()).unwrap();
        let mut at = 0;
        let mut file = write_in_steps(
            tempfile::tempfile().unwrap(),
            &frozen,
            |reader, items| reader.step(&s, 7, items),
            |out| {
                let end = (at + 1000).min(snapshot.len());
                out.extend_from_slice(&snapshot[at..end]);
                at = end;
                Ok(at == snapshot.len())
            },
        )
        .unwrap();
        let len = file.stream_position().unwrap();
        let mut stepped = Vec::new();
        file.seek(io::SeekFrom::Start(0)).unwrap();
        io::Read::read_to_end(&mut file, &mut stepped).unwrap();
        assert_eq!(len, stepped.len() as u64);
        assert!(
            stepped == db,
            "the stepped file differs from the database in memory"
        );
        // A store compacted further is refused by the next step.
        let mut later = s.clone();
        index += 1;
        let compact = kv::Command::Compact(kv::CompactionRequest {
            revision: compact_at + 2,
        });
        later.apply(index, &compact).unwrap();
        let mut reader = KeyBucketReader::new(&frozen);
        assert!(matches!(
            reader.step(&later, 7, &mut Vec::new()),
            Err(BuildError::Changed)
        ));
    }

    #[test]
    fn a_database_etcd_wrote_to_after_our_backup_is_imported_not_our_stale_copy() {
        let mut s = kv::MvccStore::new();
        put(&mut s, 1, "a", "old");
        let ours = encode(&s);
        assert_eq!(restore(&ours).unwrap(), s, "untouched: our exact copy");
        // etcd restored it and wrote a@3 (revision 3, sub 0).
        let mut buckets = buckets_of(&ours);
        let key = buckets.iter_mut().find(|b| b.name == b"key").unwrap();
        let newer = mvccpb::KeyValue {
            key: b"a".to_vec(),
            create_revision: 2,
            mod_revision: 3,
            version: 2,
            value: b"new".to_vec(),
            lease: 0,
        };
        key.items
            .push((revision_key(3, 0, false), newer.encode_to_vec()));
        let theirs = bolt::write_db(&buckets);
        assert!(matches!(snapshot_bytes(&theirs), Err(DbError::Diverged)));
        let back = restore(&theirs).unwrap();
        assert_eq!(back.revision(), 3);
        assert_eq!(read_at(&back, 0).kvs[0].value, b"new");
    }

    #[test]
    fn garbage_in_etcds_buckets_is_an_error() {
        assert!(matches!(snapshot_bytes(b"junk"), Err(DbError::Bolt(_))));
        let no_key = bolt::write_db(&[Bucket {
            name: b"meta".to_vec(),
            items: vec![],
        }]);
        assert!(matches!(import(&no_key), Err(DbError::NoKeyBucket)));
        let with_key = |k: Vec<u8>, v: Vec<u8>| {
            bolt::write_db(&[Bucket {
                name: b"key".to_vec(),
                items: vec![(k, v)],
            }])
        };
        let kv = mvccpb::KeyValue {
            key: b"k".to_vec(),
            create_revision: 2,
            mod_revision: 2,
            version: 1,
            ..Default::default()
        }
        .encode_to_vec();
        assert!(import(&with_key(revision_key(2, 0, false), kv.clone())).is_ok());
        for (k, v) in [
            (b"short".to_vec(), kv.clone()),
            (revision_key(0, 0, false), kv.clone()),
            (revision_key(2, 0, false), vec![0xff, 0xff]),
            (revision_key(2, 0, false), Vec::new()),
        ] {
            assert!(
                matches!(
                    import(&with_key(k.clone(), v)),
                    Err(DbError::BadItem { .. })
                ),
                "{k:?}"
            );
        }
        // A gap: revision 3 missing before 4.
        let gap = bolt::write_db(&[Bucket {
            name: b"key".to_vec(),
            items: vec![
                (revision_key(2, 0, false), kv.clone()),
                (revision_key(4, 0, false), kv),
            ],
        }]);
        assert!(matches!(import(&gap), Err(DbError::Inconsistent(_))));
    }
}
