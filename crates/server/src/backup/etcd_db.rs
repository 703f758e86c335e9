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

/// Why a database holds no metalraft snapshot.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The file is not a readable bbolt database.
    #[error(transparent)]
    Bolt(#[from] bolt::BoltError),
    /// A bbolt database without [`METALRAFT_BUCKET`]: etcd's own backup.
    #[error(
        "a database without metalraft's bucket (an etcd backup?): \
         restoring etcd's own database is not supported"
    )]
    NoMetalraftBucket,
}

/// The store as etcd's database (without the trailing digest).
pub fn encode(store: &kv::MvccStore) -> Vec<u8> {
    let snapshot = store.snapshot();
    let chunks = snapshot
        .chunks(CHUNK_BYTES)
        .enumerate()
        .map(|(i, c)| ((i as u64).to_be_bytes().to_vec(), c.to_vec()))
        .collect();
    drop(snapshot);
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
            items: key_bucket(store),
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
            items: chunks,
        },
    ])
}

/// The `metalraft-kv` snapshot a database written by [`encode`] holds.
pub fn snapshot_bytes(db: &[u8]) -> Result<Vec<u8>, DbError> {
    let db = bolt::Db::open(db)?;
    let chunks = db
        .bucket(METALRAFT_BUCKET)?
        .ok_or(DbError::NoMetalraftBucket)?;
    Ok(chunks.concat_values())
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

/// Concatenation of a bucket's values in key order.
trait ConcatValues {
    fn concat_values(&self) -> Vec<u8>;
}

impl ConcatValues for bolt::Items<'_> {
    fn concat_values(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.iter().map(|(_, v)| v.len()).sum());
        for (_, v) in self {
            out.extend_from_slice(v);
        }
        out
    }
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

    #[test]
    fn a_database_without_metalrafts_bucket_is_refused_clearly() {
        let db = bolt::write_db(&[Bucket {
            name: b"key".to_vec(),
            items: vec![],
        }]);
        assert!(matches!(
            snapshot_bytes(&db),
            Err(DbError::NoMetalraftBucket)
        ));
        assert!(matches!(snapshot_bytes(b"junk"), Err(DbError::Bolt(_))));
    }
}
