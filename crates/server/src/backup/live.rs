//! A backup of a running member's store (the Maintenance `Snapshot` RPC,
//! `etcdctl snapshot save`) that never makes applies wait for it.
//!
//! etcd serves a backup from a bbolt read transaction, which writers do not
//! wait for. Ours used to build the whole database under the store's read
//! lock, so every apply (and so every write of the cluster, on the leader)
//! waited for it: seconds at a million keys. Now:
//!
//! 1. the store's lock is held for one [`kv::SnapshotStream`] step at a
//!    time ([`BACKUP_STEP_ITEMS`] keys or [`BACKUP_STEP_RECORDS`] log
//!    records), and released for [`BACKUP_STEP_PAUSE`] after each, so
//!    applies go on between steps; the stream's contract makes the bytes
//!    exactly the snapshot of the store as it was when the backup began;
//! 2. the database is built from those bytes with no lock at all and
//!    written page by page into the caller's sink — the RPC's is an
//!    anonymous file in the data directory, so the database is never whole
//!    in memory ([`super::etcd_db::write_snapshot_db`]).
//!
//! A compaction accepted (or a snapshot installed) mid-backup invalidates
//! the stream; the backup starts over, at most [`BACKUP_ATTEMPTS`] times.

use std::io::{Seek, Write};
use std::sync::RwLock;

use metalraft_kv as kv;

/// Keys serialized per hold of the store's read lock: ~0.1 ms at 1,000,000
/// keys of 256 bytes on the 2-core CI machine (release build).
pub const BACKUP_STEP_ITEMS: usize = 1024;
/// Log records serialized per hold of the lock: a record holds every change
/// of one revision (a txn of 100 puts: 100), so fewer per step than keys:
/// 1,024 records of 100 puts held the lock 84 ms, 64 hold it ~5 ms.
pub const BACKUP_STEP_RECORDS: usize = 64;
/// Pause after every step, with the lock free. Without it the apply thread
/// starves: releasing a read lock wakes the waiting writer, but the backup
/// thread takes the lock again before the writer runs, and the writer goes
/// back to sleep for another step — a put waited 1.28 s, most of the
/// backup's stepping, at 1,000,000 keys (`big-backup`, see
/// docs/benchmarks.md). Paused, the woken writer always gets the lock
/// first. ~2,100 steps at 1,000,000 keys: ~0.3 s added to the backup.
pub const BACKUP_STEP_PAUSE: std::time::Duration = std::time::Duration::from_micros(100);
/// Fresh starts after the store was compacted or replaced mid-backup, before
/// the backup is refused.
pub const BACKUP_ATTEMPTS: usize = 3;

/// Why a backup of the live store failed.
#[derive(Debug, thiserror::Error)]
pub enum LiveBackupError {
    /// The store's lock is poisoned: the member is stopping.
    #[error("the member's store is unavailable (stopping)")]
    Stopped,
    /// The store was compacted or replaced during every attempt.
    #[error("the store was compacted or replaced during each of {attempts} backup attempts")]
    KeptChanging {
        /// Attempts made ([`BACKUP_ATTEMPTS`]).
        attempts: usize,
    },
    /// The snapshot just taken does not restore (a bug).
    #[error("the backup's snapshot does not restore: {0}")]
    Snapshot(kv::SnapshotError),
    /// Writing the database failed (a full disk, ...).
    #[error("writing the backup: {0}")]
    Io(std::io::Error),
}

impl From<super::etcd_db::EncodeError> for LiveBackupError {
    fn from(e: super::etcd_db::EncodeError) -> Self {
        match e {
            super::etcd_db::EncodeError::Snapshot(e) => LiveBackupError::Snapshot(e),
            super::etcd_db::EncodeError::Io(e) => LiveBackupError::Io(e),
        }
    }
}

/// A backup taken from the live store.
#[derive(Debug)]
pub struct LiveBackup<W> {
    /// The sink, holding etcd's database ([`super::etcd_db::encode`]) from
    /// offset 0, without the trailing SHA-256, and positioned at its end.
    pub db: W,
    /// The database's length in bytes (whole pages).
    pub len: u64,
    /// The store's revision the backup holds.
    pub revision: i64,
}

/// A snapshot taken by [`snapshot_in_steps`].
#[derive(Debug)]
pub struct Stepped {
    /// The `metalraft-kv` snapshot.
    pub bytes: Vec<u8>,
    /// The store's revision it holds.
    pub revision: i64,
    /// Steps taken (the last attempt).
    pub steps: usize,
    /// The longest the lock was held for one step.
    pub longest_hold: std::time::Duration,
}

/// The `metalraft-kv` snapshot of `store` as it is at the call, taken in
/// steps: between two steps the lock is free, and `between_steps` runs
/// (tests apply writes and compactions there).
pub fn snapshot_in_steps(
    store: &RwLock<kv::MvccStore>,
    mut between_steps: impl FnMut(),
) -> Result<Stepped, LiveBackupError> {
    for _ in 0..BACKUP_ATTEMPTS {
        let mut steps = 0;
        let mut longest_hold = std::time::Duration::ZERO;
        let mut stream = store
            .read()
            .map_err(|_| LiveBackupError::Stopped)?
            .snapshot_stream();
        let mut out = Vec::new();
        let mut piece = Vec::new();
        loop {
            let items = match stream.section() {
                Some(kv::Section::Records) => BACKUP_STEP_RECORDS,
                _ => BACKUP_STEP_ITEMS,
            };
            // Into a buffer of its own, appended with the lock free: growing
            // `out` (a copy of up to all of it, into fresh pages) under the
            // lock held it 135 ms at 1,000,000 keys.
            let step = {
                let s = store.read().map_err(|_| LiveBackupError::Stopped)?;
                let held = std::time::Instant::now();
                let step = stream.step(&s, items, &mut piece);
                longest_hold = longest_hold.max(held.elapsed());
                step
            };
            out.extend_from_slice(&piece);
            piece.clear();
            steps += 1;
            match step {
                Ok(true) => {
                    return Ok(Stepped {
                        bytes: out,
                        revision: stream.revision(),
                        steps,
                        longest_hold,
                    })
                }
                Ok(false) => {
                    std::thread::sleep(BACKUP_STEP_PAUSE);
                    between_steps();
                }
                // `Changed` (the only kind): the history it needs may be gone.
                Err(_) => break,
            }
        }
        tracing::info!("the store was compacted or replaced during a backup; starting over");
    }
    Err(LiveBackupError::KeptChanging {
        attempts: BACKUP_ATTEMPTS,
    })
}

/// A backup of `store` as it is at the call, written from offset 0 into
/// the sink `sink` makes once the size of the store's snapshot is known
/// (see [`super::spool::Spool::for_snapshot`]). Blocking (CPU-bound, O(data
/// + history)): run it off the async runtime.
pub fn backup<W: Write + Seek>(
    store: &RwLock<kv::MvccStore>,
    sink: impl FnOnce(u64) -> W,
) -> Result<LiveBackup<W>, LiveBackupError> {
    let start = std::time::Instant::now();
    let Stepped {
        bytes,
        revision,
        steps,
        longest_hold,
    } = snapshot_in_steps(store, || {})?;
    let stepped = start.elapsed();
    let snapshot_bytes = bytes.len();
    let out = sink(snapshot_bytes as u64);
    let mut db = super::etcd_db::write_snapshot_db(bytes, out)?;
    let len = db.stream_position().map_err(LiveBackupError::Io)?;
    tracing::info!(
        revision,
        snapshot_bytes,
        db_bytes = len,
        snapshot_ms = stepped.as_millis() as u64,
        steps,
        longest_lock_hold_us = longest_hold.as_micros() as u64,
        db_ms = (start.elapsed() - stepped).as_millis() as u64,
        "backup built"
    );
    Ok(LiveBackup { db, len, revision })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(s: &mut kv::MvccStore, key: &str, value: &str) {
        let index = s.applied_index() + 1;
        let cmd = kv::Command::Put(kv::PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        });
        s.apply(index, &cmd).unwrap();
    }

    fn compact(s: &mut kv::MvccStore, revision: i64) {
        let index = s.applied_index() + 1;
        let cmd = kv::Command::Compact(kv::CompactionRequest { revision });
        s.apply(index, &cmd).unwrap();
    }

    fn store_with(keys: usize) -> kv::MvccStore {
        let mut s = kv::MvccStore::new();
        for i in 0..keys {
            put(&mut s, &format!("k{i:06}"), &format!("v{i}"));
            put(&mut s, &format!("k{i:06}"), &format!("w{i}"));
        }
        s
    }

    #[test]
    fn writes_between_steps_are_not_in_the_backup() {
        let keys = 3 * BACKUP_STEP_ITEMS;
        let lock = RwLock::new(store_with(keys));
        let expected = lock.read().unwrap().snapshot();
        let mut steps = 0;
        let got = snapshot_in_steps(&lock, || {
            steps += 1;
            let mut s = lock.write().unwrap();
            // Overwrites, deletes and new keys, all above the frozen
            // revision.
            put(&mut s, &format!("k{steps:06}"), "later");
            put(&mut s, &format!("new{steps}"), "later");
            let index = s.applied_index() + 1;
            let del = kv::Command::DeleteRange(kv::DeleteRangeRequest {
                key: format!("k{:06}", keys - steps).into_bytes(),
                ..Default::default()
            });
            s.apply(index, &del).unwrap();
        })
        .unwrap();
        assert!(steps >= 3, "only {steps} steps: the lock was not released");
        assert_eq!(got.steps, steps + 1);
        assert_eq!(got.revision, 1 + 2 * keys as i64);
        assert!(
            got.bytes == expected,
            "the backup is not the store at its start"
        );
        // And it restores into a store that reads as the original did.
        let restored = kv::MvccStore::restore(&got.bytes).unwrap();
        assert_eq!(restored.revision(), got.revision);
        assert_eq!(restored.len(), keys);
    }

    #[test]
    fn a_compaction_mid_backup_starts_it_over_and_then_gives_up() {
        let lock = RwLock::new(store_with(2 * BACKUP_STEP_ITEMS));
        // One compaction during the first attempt: the second attempt
        // holds the compacted store.
        let mut compactions = 0;
        let got = snapshot_in_steps(&lock, || {
            if compactions == 0 {
                compactions += 1;
                compact(&mut lock.write().unwrap(), 5);
            }
        })
        .unwrap();
        let now = lock.read().unwrap();
        assert_eq!(now.compact_revision(), 5);
        assert!(got.bytes == now.snapshot());
        drop(now);
        // A compaction during every attempt: refused, not a wrong backup.
        let mut rev = 5;
        let err = snapshot_in_steps(&lock, || {
            rev += 1;
            compact(&mut lock.write().unwrap(), rev);
        })
        .unwrap_err();
        assert!(matches!(
            err,
            LiveBackupError::KeptChanging {
                attempts: BACKUP_ATTEMPTS
            }
        ));
    }

    #[test]
    fn the_backup_is_the_database_of_the_store() {
        let lock = RwLock::new(store_with(100));
        let b = backup(&lock, |_| std::io::Cursor::new(Vec::new())).unwrap();
        let s = lock.read().unwrap();
        assert_eq!(b.revision, s.revision());
        let db = b.db.into_inner();
        assert_eq!(b.len, db.len() as u64);
        assert_eq!(db, super::super::etcd_db::encode(&s));
    }
}
