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

use metalraft_kv as kv;
use prost::Message;

use crate::bolt::{self, Bucket};
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
/// Changes read from the store per call while the `key` bucket is built.
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

/// The store as etcd's database (without the trailing digest).
pub fn encode(store: &kv::MvccStore) -> Vec<u8> {
    assemble(EtcdBuckets::of(store), store.snapshot())
}

/// [`encode`] of the store a `metalraft-kv` snapshot holds (made by
/// [`kv::MvccStore::snapshot`] or a [`kv::SnapshotStream`]): it is restored
/// into a store of its own, so no lock on a live store is held while the
/// database is built ([`super::live`]). The private store is dropped once
/// etcd's buckets are read from it, and the snapshot once it is cut into
/// the bucket's values, before the file is laid out: the peak holds the
/// buckets and the file, not the store and the snapshot too.
///
/// # Errors
/// The snapshot does not decode or is inconsistent.
pub fn encode_snapshot(snapshot: Vec<u8>) -> Result<Vec<u8>, kv::SnapshotError> {
    let etcd = EtcdBuckets::of(&kv::MvccStore::restore(&snapshot)?);
    Ok(assemble(etcd, snapshot))
}

/// etcd's `key`, `lease` and `meta` items of a store.
struct EtcdBuckets {
    keys: Vec<(Vec<u8>, Vec<u8>)>,
    leases: Vec<(Vec<u8>, Vec<u8>)>,
    meta: Vec<(Vec<u8>, Vec<u8>)>,
}

impl EtcdBuckets {
    fn of(store: &kv::MvccStore) -> EtcdBuckets {
        let mut meta = vec![(
            b"consistent_index".to_vec(),
            store.applied_index().to_be_bytes().to_vec(),
        )];
        let compacted = store.compact_revision();
        if compacted > 0 {
            let rev = revision_key(compacted, 0, false);
            meta.push((b"finishedCompactRev".to_vec(), rev.clone()));
            meta.push((b"scheduledCompactRev".to_vec(), rev));
        }
        meta.sort();
        let leases = store
            .leases()
            .map(|(id, ttl)| {
                let v = LeasePb {
                    id,
                    ttl,
                    remaining_ttl: 0,
                };
                ((id as u64).to_be_bytes().to_vec(), v.encode_to_vec())
            })
            .collect();
        EtcdBuckets {
            keys: key_bucket(store),
            leases,
            meta,
        }
    }
}

/// The database: etcd's buckets and ours holding `snapshot`, the
/// `metalraft-kv` snapshot of the same store.
fn assemble(etcd: EtcdBuckets, snapshot: Vec<u8>) -> Vec<u8> {
    let EtcdBuckets { keys, leases, meta } = etcd;
    let digest = etcd_digest(
        keys.iter().map(|(k, v)| (&k[..], &v[..])),
        leases.iter().map(|(k, v)| (&k[..], &v[..])),
    );
    let mut ours: Vec<(Vec<u8>, Vec<u8>)> = snapshot
        .chunks(CHUNK_BYTES)
        .enumerate()
        .map(|(i, c)| ((i as u64).to_be_bytes().to_vec(), c.to_vec()))
        .collect();
    drop(snapshot);
    ours.push((DIGEST_KEY.to_vec(), digest.to_vec()));
    bolt::write_db(&[
        Bucket {
            name: b"cluster".to_vec(),
            items: vec![(
                b"clusterVersion".to_vec(),
                CLUSTER_VERSION.as_bytes().to_vec(),
            )],
        },
        Bucket {
            name: b"key".to_vec(),
            items: keys,
        },
        Bucket {
            name: b"lease".to_vec(),
            items: leases,
        },
        Bucket {
            name: b"meta".to_vec(),
            items: meta,
        },
        Bucket {
            name: METALRAFT_BUCKET.to_vec(),
            items: ours,
        },
    ])
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
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for (bucket, items) in [
        (&b"key"[..], keys.collect::<Vec<_>>()),
        (b"lease", leases.collect()),
    ] {
        h.update((bucket.len() as u64).to_le_bytes());
        h.update(bucket);
        for (k, v) in items {
            h.update((k.len() as u64).to_le_bytes());
            h.update(k);
            h.update((v.len() as u64).to_le_bytes());
            h.update(v);
        }
    }
    h.finalize().into()
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

/// The `key` bucket: the versions live at the compact revision that are
/// older than it, then every change from the compact revision on.
fn key_bucket(store: &kv::MvccStore) -> Vec<(Vec<u8>, Vec<u8>)> {
    let compacted = store.compact_revision();
    let mut items = Vec::new();
    if compacted > 1 {
        let req = kv::RangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision: compacted,
            max_mod_revision: compacted - 1,
            ..kv::RangeRequest::default()
        };
        // The compact revision is always readable.
        if let Ok(resp) = store.range(&req) {
            let mut kvs = resp.kvs;
            kvs.sort_by(|a, b| (a.mod_revision, &a.key).cmp(&(b.mod_revision, &b.key)));
            let mut sub = 0;
            let mut last = 0;
            for kv in &kvs {
                sub = if kv.mod_revision == last { sub + 1 } else { 0 };
                last = kv.mod_revision;
                let lease = store.key_lease(&kv.key, kv.mod_revision);
                items.push((
                    revision_key(kv.mod_revision, sub, false),
                    key_value(kv, lease),
                ));
            }
        }
    }
    let mut next = compacted.max(1);
    let mut sub = 0;
    let mut last = 0;
    while next <= store.revision() {
        let Ok(batch) = store.changes(next, &[0], &[0], CHANGES_PER_READ) else {
            break;
        };
        for c in &batch.changes {
            let rev = c.kv.mod_revision;
            sub = if rev == last { sub + 1 } else { 0 };
            last = rev;
            let (key, value) = match c.kind {
                // A deletion at the compact revision is gone in etcd too.
                kv::ChangeKind::Delete if rev <= compacted => continue,
                kv::ChangeKind::Delete => (
                    revision_key(rev, sub, true),
                    mvccpb::KeyValue {
                        key: c.kv.key.clone(),
                        ..Default::default()
                    }
                    .encode_to_vec(),
                ),
                kv::ChangeKind::Put => (revision_key(rev, sub, false), key_value(&c.kv, c.lease)),
            };
            items.push((key, value));
        }
        if batch.next_revision <= next {
            break;
        }
        next = batch.next_revision;
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

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
