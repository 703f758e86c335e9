//! A backup of a running member's store (the Maintenance `Snapshot` RPC,
//! `etcdctl snapshot save`) that never makes applies wait for it and never
//! holds a copy of the store.
//!
//! etcd serves a backup from a bbolt read transaction, which writers do not
//! wait for. Ours used to build the whole database under the store's read
//! lock, so every apply (and so every write of the cluster, on the leader)
//! waited for it: seconds at a million keys; then from a snapshot restored
//! into a private store, which doubled the member's memory. Now the
//! database is read from the live store in steps, each under the store's
//! read lock for a bounded amount of work, with the lock released for
//! [`BACKUP_STEP_PAUSE`] after each so applies go on, and written page by
//! page into the caller's sink (the RPC's is an anonymous file in the data
//! directory, [`super::spool`]):
//!
//! 1. etcd's `key` bucket by a [`super::etcd_db::KeyBucketReader`]
//!    ([`BACKUP_STEP_ITEMS`] versions per step), bounded by the revision
//!    frozen at the start;
//! 2. our bucket from a [`kv::SnapshotStream`] made at the same moment
//!    ([`BACKUP_STEP_ITEMS`] keys or [`BACKUP_STEP_RECORDS`] log records
//!    per step), whose contract makes the bytes exactly the snapshot of the
//!    store as it was then.
//!
//! Both read only what applies after the freeze leave in place; a
//! compaction accepted (or a snapshot installed) mid-backup can remove it,
//! so the backup starts over, at most [`BACKUP_ATTEMPTS`] times.

use std::cell::{Cell, RefCell};
use std::io::{Seek, Write};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use metalraft_kv as kv;

use super::etcd_db::{self, BuildError, Frozen};

/// Keys (or versions of etcd's `key` bucket) read per hold of the store's
/// read lock: ~0.1 ms of snapshot at 1,000,000 keys of 256 bytes on the
/// 2-core CI machine (release build).
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
pub const BACKUP_STEP_PAUSE: Duration = Duration::from_micros(100);
/// Fresh starts after the store was compacted or replaced mid-backup, before
/// the backup is refused.
pub const BACKUP_ATTEMPTS: usize = 3;

/// Why a backup failed.
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
    /// The frozen leases do not decode (a bug).
    #[error("the backup's snapshot does not decode: {0}")]
    Snapshot(kv::SnapshotError),
    /// Writing the database failed (a full disk, ...).
    #[error("writing the backup: {0}")]
    Io(std::io::Error),
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

/// A backup of `store` as it is at the call, written from offset 0 into
/// the sink `sink` makes from the store's size in bytes (see
/// [`super::spool::Spool::for_store`]). Blocking (CPU-bound, O(data +
/// history)): run it off the async runtime.
pub fn backup<W: Write + Seek>(
    store: &RwLock<kv::MvccStore>,
    sink: impl FnOnce(u64) -> W,
) -> Result<LiveBackup<W>, LiveBackupError> {
    backup_with(store, sink, || {})
}

/// [`backup`], running `between_steps` after every step, with the lock
/// free (tests apply writes and compactions there).
fn backup_with<W: Write + Seek>(
    store: &RwLock<kv::MvccStore>,
    sink: impl FnOnce(u64) -> W,
    between_steps: impl FnMut(),
) -> Result<LiveBackup<W>, LiveBackupError> {
    let start = Instant::now();
    let size = store
        .read()
        .map_err(|_| LiveBackupError::Stopped)?
        .size_bytes();
    let mut out = sink(size as u64);
    let between = RefCell::new(between_steps);
    for _ in 0..BACKUP_ATTEMPTS {
        let (mut stream, frozen) = {
            let s = store.read().map_err(|_| LiveBackupError::Stopped)?;
            let stream = s.snapshot_stream();
            drop(s);
            let frozen = Frozen::of_stream(&stream).map_err(LiveBackupError::Snapshot)?;
            (stream, frozen)
        };
        let steps = Cell::new(0usize);
        let longest_hold = Cell::new(Duration::ZERO);
        // One step under the read lock, then the pause and the hook.
        let locked = |f: &mut dyn FnMut(&kv::MvccStore) -> Result<bool, BuildError>| {
            let done = {
                let s = store.read().map_err(|_| BuildError::Unavailable)?;
                let held = Instant::now();
                let done = f(&s);
                longest_hold.set(longest_hold.get().max(held.elapsed()));
                done
            }?;
            steps.set(steps.get() + 1);
            if !done {
                std::thread::sleep(BACKUP_STEP_PAUSE);
                (between.borrow_mut())();
            }
            Ok(done)
        };
        let mut piece = Vec::new();
        let built = etcd_db::write_in_steps(
            &mut out,
            &frozen,
            |reader, items| locked(&mut |s| reader.step(s, BACKUP_STEP_ITEMS, items)),
            |chunk| {
                let items = match stream.section() {
                    Some(kv::Section::Records) => BACKUP_STEP_RECORDS,
                    _ => BACKUP_STEP_ITEMS,
                };
                // Into a buffer of its own, appended with the lock free:
                // growing a large buffer under the lock held it 135 ms.
                let done = locked(&mut |s| {
                    // `Changed` (the only kind): the history it needs may
                    // be gone.
                    stream
                        .step(s, items, &mut piece)
                        .map_err(|_| BuildError::Changed)
                })?;
                chunk.extend_from_slice(&piece);
                piece.clear();
                Ok(done)
            },
        );
        match built {
            Ok(db) => {
                let len = db.stream_position().map_err(LiveBackupError::Io)?;
                tracing::info!(
                    revision = frozen.revision,
                    db_bytes = len,
                    steps = steps.get(),
                    longest_lock_hold_us = longest_hold.get().as_micros() as u64,
                    ms = start.elapsed().as_millis() as u64,
                    "backup built"
                );
                return Ok(LiveBackup {
                    db: out,
                    len,
                    revision: frozen.revision,
                });
            }
            Err(BuildError::Changed) => {
                tracing::info!(
                    "the store was compacted or replaced during a backup; starting over"
                );
            }
            Err(BuildError::Unavailable) => return Err(LiveBackupError::Stopped),
            Err(BuildError::Io(e)) => return Err(LiveBackupError::Io(e)),
        }
    }
    Err(LiveBackupError::KeptChanging {
        attempts: BACKUP_ATTEMPTS,
    })
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

    fn apply(s: &mut kv::MvccStore, cmd: &kv::Command) {
        let index = s.applied_index() + 1;
        s.apply(index, cmd).unwrap();
    }

    fn leased_put(s: &mut kv::MvccStore, key: &str, lease: i64) {
        let cmd = kv::Command::LeasePut(
            kv::PutRequest {
                key: key.as_bytes().to_vec(),
                value: b"leased".to_vec(),
                ..Default::default()
            },
            kv::LeaseOption {
                lease,
                ignore_lease: false,
            },
        );
        apply(s, &cmd);
    }

    fn memory(_: u64) -> std::io::Cursor<Vec<u8>> {
        std::io::Cursor::new(Vec::new())
    }

    #[test]
    fn writes_between_steps_are_not_in_the_backup() {
        for compacted in [false, true] {
            let keys = 3 * BACKUP_STEP_ITEMS;
            let mut s = store_with(keys);
            if compacted {
                compact(&mut s, keys as i64);
            }
            // Two leases with keys: one keeps its keys, one is revoked
            // mid-backup; and leased keys overwritten mid-backup, whose
            // versions in the backup must keep the lease they had.
            for id in [7, 8] {
                apply(
                    &mut s,
                    &kv::Command::LeaseGrant(kv::LeaseGrantRequest { id, ttl: 60 }),
                );
                for k in 0..3 {
                    leased_put(&mut s, &format!("l{id}-{k}"), id);
                }
            }
            let expected = super::super::etcd_db::encode(&s);
            let frozen_revision = s.revision();
            let lock = RwLock::new(s);
            let mut steps = 0;
            let b = backup_with(&lock, memory, || {
                steps += 1;
                let mut s = lock.write().unwrap();
                match steps {
                    1 => apply(
                        &mut s,
                        &kv::Command::LeaseRevoke(kv::LeaseRevokeRequest { id: 8 }),
                    ),
                    2 => put(&mut s, "l7-0", "no lease now"),
                    3 => leased_put(&mut s, "l7-1", 7),
                    _ => {}
                }
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
            assert!(steps >= 6, "only {steps} steps: the lock was not released");
            assert_eq!(b.revision, frozen_revision);
            let db = b.db.into_inner();
            assert_eq!(b.len, db.len() as u64);
            assert!(
                db == expected,
                "the backup is not the store at its start (compacted: {compacted})"
            );
        }
    }

    #[test]
    fn a_compaction_mid_backup_starts_it_over_and_then_gives_up() {
        let lock = RwLock::new(store_with(2 * BACKUP_STEP_ITEMS));
        // One compaction during the first attempt: the second attempt
        // holds the compacted store.
        let mut compactions = 0;
        let b = backup_with(&lock, memory, || {
            if compactions == 0 {
                compactions += 1;
                compact(&mut lock.write().unwrap(), 5);
            }
        })
        .unwrap();
        let now = lock.read().unwrap();
        assert_eq!(now.compact_revision(), 5);
        assert!(b.db.into_inner() == super::super::etcd_db::encode(&now));
        drop(now);
        // A compaction during every attempt: refused, not a wrong backup.
        let mut rev = 5;
        let err = backup_with(&lock, memory, || {
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
        let b = backup(&lock, memory).unwrap();
        let s = lock.read().unwrap();
        assert_eq!(b.revision, s.revision());
        let db = b.db.into_inner();
        assert_eq!(b.len, db.len() as u64);
        assert_eq!(db, super::super::etcd_db::encode(&s));
    }
}
