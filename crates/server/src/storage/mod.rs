//! Durable storage of one member: the write-ahead log ([`wal`]), snapshots
//! ([`snapshot`]) and the in-memory view the Raft core reads ([`log`]).
//!
//! Layout of a data directory:
//!
//! ```text
//! <data-dir>/member/LOCK          flock'ed while a process uses the directory
//! <data-dir>/member/wal/*.wal     WAL segments
//! <data-dir>/member/snap/*.snap   state-machine snapshots
//! <data-dir>/member/vote          term and vote, two checksummed copies
//! <data-dir>/member/repair        repair barrier, only while repairing (ADR 0021)
//! ```
//!
//! The design and its crash analysis are in `docs/adr/0008-server-storage.md`.

pub mod codec;
pub mod delta;
pub mod error;
pub mod log;
pub(crate) mod repair;
pub mod snapshot;
#[cfg(test)]
pub(crate) mod sync_gate;
pub(crate) mod vote;
pub mod wal;
pub mod zero_fill;

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use metalraft_core::{ConfState, Entry, HardState};

pub use error::StorageError;
pub use log::SharedLog;
pub use snapshot::Snapshot;
pub use wal::{MidLogDamage, Recovered, Wal, WalOptions};

/// One persistence batch: entries (overwriting from the first one's index)
/// and the hard state after them.
#[derive(Debug, Default)]
pub struct WriteBatch {
    /// Entries to write.
    pub entries: Vec<Entry<Vec<u8>>>,
    /// Hard state to write, if it changed.
    pub hard_state: Option<HardState>,
    /// The core cleared its vote barrier with this batch
    /// (`Persist::clears_vote_barrier`): once the group is synced, the
    /// repair record is removed.
    pub clears_repair: bool,
}

/// A member's open storage.
pub struct Storage {
    wal: Wal,
    vote: vote::VoteRecord,
    repair: repair::RepairRecord,
    log: SharedLog,
    snap_dir: PathBuf,
    _lock: File,
}

/// What [`Storage::open`] found on disk.
pub struct Opened {
    /// The storage, ready for appends.
    pub storage: Storage,
    /// The newest snapshot, if any.
    pub snapshot: Option<Snapshot>,
    /// Its data as extents, if it is a delta snapshot (ADR 0033).
    pub snapshot_extents: Option<Vec<delta::Extent>>,
    /// `(file, offset)` of a torn WAL tail that was truncated (already
    /// logged as a warning with the bytes dropped).
    pub torn_tail: Option<(PathBuf, u64)>,
    /// Bytes of never-acknowledged data the truncation dropped.
    pub torn_bytes_dropped: u64,
    /// Mid-log damage found and cut off by this open (already logged).
    pub repair: Option<MidLogDamage>,
    /// The repair barrier in force (from this open's damage or an earlier
    /// one not yet repaired): start the core with it as
    /// `Config::vote_barrier`.
    pub repair_barrier: Option<u64>,
}

/// How long opening a data directory waits for its `LOCK` before saying
/// another process uses it. A process that just forked (any thread of this
/// one starting a child) holds a copy of every descriptor, the lock's
/// included, until the child execs; a directory closed a moment ago can
/// still look locked for that long.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Pause between attempts while waiting for the `LOCK`.
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(10);

/// Takes the exclusive `flock` on `lock`, retrying for [`LOCK_WAIT`].
fn lock_exclusive(lock: &fs::File) -> rustix::io::Result<()> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match rustix::fs::flock(lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(()),
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(LOCK_RETRY),
        }
    }
}

impl Storage {
    /// Opens (creating if needed) the storage under `data_dir`. `conf_state`
    /// is the static membership from the command line.
    pub fn open(
        data_dir: &Path,
        conf_state: ConfState,
        opts: WalOptions,
    ) -> Result<Opened, StorageError> {
        let member = data_dir.join("member");
        wal::create_dir_durable(&member)?;
        let lock_path = member.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StorageError::from_io(&lock_path, e))?;
        lock_exclusive(&lock).map_err(|_| StorageError::Locked {
            path: lock_path.clone(),
        })?;
        let snap_dir = member.join("snap");
        // The vote record first: if it is unreadable in both copies the
        // member refuses to start before anything on disk is changed.
        let mut vote = vote::VoteRecord::open(&member.join("vote"))?;
        let mut repair = repair::RepairRecord::open(&member)?;
        // The newest snapshot is read on a second thread while this one
        // reads the WAL (issue 18: a restarted member with a million keys
        // spent 0.3–0.7 s on each, one after the other, from a cold cache).
        // Loading changes nothing on disk; a snapshot error is still the
        // one reported when both fail, as when it was read first.
        let (loaded, wal) = std::thread::scope(|scope| {
            let loading = scope.spawn(|| {
                let started = std::time::Instant::now();
                let loaded = snapshot::load_latest(&snap_dir);
                if let Ok(snapshot::Loaded {
                    snapshot: Some((s, _)),
                    ..
                }) = &loaded
                {
                    // Read, checksum and split off the header.
                    tracing::info!(
                        index = s.index,
                        bytes = s.data.len(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "loaded the newest snapshot"
                    );
                }
                loaded
            });
            let started = std::time::Instant::now();
            let wal = Wal::open_repairing(&member.join("wal"), opts, &mut |d: &MidLogDamage| {
                repair.raise(d.barrier).map(|_| ())
            });
            if let Ok((_, rec)) = &wal {
                tracing::info!(
                    entries = rec.entries.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "read the WAL"
                );
            }
            let loaded = loading
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (loaded, wal)
        });
        let snapshot::Loaded {
            snapshot: loaded_snapshot,
            extents: snapshot_extents,
            damaged,
        } = loaded?;
        let (snapshot, snapshot_file) = loaded_snapshot.unzip();
        let (mut wal, rec) = wal?;
        let Recovered {
            first_index,
            prev_term,
            hard_state,
            entries,
            torn_tail,
            torn_bytes_dropped,
            repair: damage,
        } = rec;
        if let (None, Some(barrier)) = (&damage, repair.barrier()) {
            tracing::warn!(
                file = %member.join(repair::FILE_NAME).display(),
                barrier,
                "resuming the repair of an earlier mid-log WAL damage: no votes until the log reaches the barrier"
            );
        }
        if first_index > 1 {
            // Entries below first_index were purged: a snapshot must cover them.
            let covered = snapshot
                .as_ref()
                .is_some_and(|s| s.index + 1 >= first_index);
            if !covered {
                // A damaged newer snapshot that the log no longer backs up is
                // the real cause: name it.
                if let Some(d) = damaged.first() {
                    return Err(StorageError::Corrupt {
                        path: d.path.clone(),
                        offset: 0,
                        reason: format!(
                            "{}; the WAL starts at index {first_index} and no older snapshot covers the entries before it",
                            d.reason
                        ),
                    });
                }
                return Err(StorageError::Corrupt {
                    path: member.join("wal"),
                    offset: 0,
                    reason: format!("the WAL starts at index {first_index} but no snapshot covers the entries before it"),
                });
            }
        }
        snapshot::set_aside(&snap_dir, &damaged)?;
        let hard_state = reconcile_vote(&mut wal, &mut vote, hard_state)?;
        let log = SharedLog::new(hard_state, conf_state, first_index, prev_term, entries);
        if let (Some(s), Some(file)) = (&snapshot, snapshot_file) {
            // The log the core sees starts right after the snapshot, so its
            // configuration is the snapshot's.
            log.start_after_snapshot(s.index, s.term, s.conf_state.clone())?;
            let meta = metalraft_core::SnapshotMeta {
                index: s.index,
                term: s.term,
                conf_state: s.conf_state.clone(),
            };
            // Followers are served from the file(s): no second copy of the
            // data in memory (hundreds of MB with a million keys).
            log.set_snapshot_file(meta, file)?;
        }
        let repair_barrier = repair.barrier();
        Ok(Opened {
            storage: Storage {
                wal,
                vote,
                repair,
                log,
                snap_dir,
                _lock: lock,
            },
            snapshot,
            snapshot_extents,
            torn_tail,
            torn_bytes_dropped,
            repair: damage,
            repair_barrier,
        })
    }

    /// Whether the WAL prepares no segment right now (tests).
    #[cfg(test)]
    pub(crate) fn wal_preparer_idle(&self) -> bool {
        self.wal.preparer_idle()
    }

    /// The shared log view for the Raft core.
    pub fn log(&self) -> SharedLog {
        self.log.clone()
    }

    /// Group commit: writes every batch, syncs once if `sync`, then makes
    /// the batches visible in the shared log. On error nothing is visible and
    /// the batches may be retried.
    pub fn write(&mut self, batches: &[WriteBatch], sync: bool) -> Result<(), StorageError> {
        self.wal
            .append_group(batches.iter().map(|b| (b.entries.as_slice(), b.hard_state)))?;
        if sync {
            self.wal.sync()?;
        }
        // The WAL holds the hard state first; the vote record follows once
        // it is durable there, so the record is never behind anything
        // promised and never ahead of what the WAL made durable (it is ahead
        // only if the WAL's tail is later lost). A group the core did not
        // ask to sync changes only the commit index.
        let last_hs = batches.iter().rev().find_map(|b| b.hard_state);
        if let Some(hs) = last_hs.filter(|_| sync) {
            let tv = vote::TermVote {
                term: hs.term,
                vote: hs.vote,
            };
            if self.vote.current() != Some(tv) {
                self.vote.save(tv)?;
            }
        }
        // The batch that reached the barrier is durable now (a group that
        // clears it is always synced: the core marks it must_sync).
        if sync && batches.iter().any(|b| b.clears_repair) {
            self.repair.clear()?;
            tracing::info!("log repair complete: the leader confirmed the log up to the barrier; this member votes again");
        }
        for b in batches {
            self.log.apply_durable(&b.entries, b.hard_state)?;
        }
        Ok(())
    }

    /// The repair barrier in force (`None` once the repair is complete).
    pub fn repair_barrier(&self) -> Option<u64> {
        self.repair.barrier()
    }

    /// Saves a snapshot and, if `purge_below` is given, deletes the WAL
    /// segments whose entries are all below that index. The in-memory log is
    /// compacted by the caller (on the thread that drives the core).
    pub fn save_snapshot(
        &mut self,
        snap: &Snapshot,
        purge_below: Option<u64>,
    ) -> Result<(), StorageError> {
        snapshot::save(&self.snap_dir, snap)?;
        if let Some(index) = purge_below {
            self.wal.purge_below(index)?;
        }
        Ok(())
    }

    /// Deletes the WAL segments whose entries are all below `index` (a
    /// snapshot saved elsewhere covers them, see
    /// [`snapshot::save_streamed`]).
    pub fn purge_wal_below(&mut self, index: u64) -> Result<(), StorageError> {
        self.wal.purge_below(index).map(|_| ())
    }

    /// Where this member's snapshots live.
    pub fn snap_dir(&self) -> &Path {
        &self.snap_dir
    }

    /// Makes a snapshot received from the leader durable and fixes the WAL:
    /// entries after it stay if `keep_entries_after`, otherwise the log
    /// restarts empty after it. Then updates the shared log.
    pub fn install_snapshot(
        &mut self,
        snap: &Snapshot,
        install: &metalraft_core::SnapshotInstall,
    ) -> Result<(), StorageError> {
        self.install_received_snapshot(snap, install, None)
    }

    /// [`Self::install_snapshot`] with the snapshot's file already written
    /// and synced under its temporary name ([`snapshot::prepare`], while
    /// the state machine restored): it is only renamed here, at the same
    /// point of the install as [`snapshot::save`] (before the log is reset;
    /// the caller acknowledges the install after this returns). A file of
    /// another snapshot is discarded and `snap` saved as before.
    pub fn install_received_snapshot(
        &mut self,
        snap: &Snapshot,
        install: &metalraft_core::SnapshotInstall,
        prepared: Option<snapshot::PreparedSnapshot>,
    ) -> Result<(), StorageError> {
        match prepared {
            Some(p) if p.is_of(snap) => {
                p.commit()?;
            }
            other => {
                drop(other);
                snapshot::save(&self.snap_dir, snap)?;
            }
        }
        if install.keep_entries_after {
            self.wal.purge_below(snap.index + 1)?;
        } else {
            self.wal.reset_after_snapshot(snap.index, snap.term)?;
        }
        self.log
            .install(install, std::sync::Arc::new(snap.data.clone()))
    }

    /// Puts `gate` in front of every `fdatasync` of the WAL (tests only).
    #[cfg(test)]
    pub(crate) fn set_sync_gate(&mut self, gate: std::sync::Arc<sync_gate::SyncGate>) {
        self.wal.sync_gate = Some(gate);
    }

    /// Bytes the WAL occupies on disk.
    pub fn wal_bytes(&self) -> u64 {
        self.wal.allocated_bytes()
    }
}

/// Takes the term and vote from the vote record where it is ahead of the
/// WAL's hard state (the WAL's tail held them and was truncated), and brings
/// whichever is behind up to date.
fn reconcile_vote(
    wal: &mut Wal,
    vote: &mut vote::VoteRecord,
    mut hs: HardState,
) -> Result<HardState, StorageError> {
    let from_wal = vote::TermVote {
        term: hs.term,
        vote: hs.vote,
    };
    match vote.current() {
        Some(saved)
            if saved.term > hs.term
                || (saved.term == hs.term && hs.vote.is_none() && saved.vote.is_some()) =>
        {
            tracing::warn!(
                wal_term = hs.term,
                wal_vote = ?hs.vote,
                term = saved.term,
                vote = ?saved.vote,
                "the vote record is ahead of the WAL (its tail was lost): keeping the recorded term and vote"
            );
            hs.term = saved.term;
            hs.vote = saved.vote;
            wal.append(&[], Some(hs))?;
            wal.sync()?;
        }
        Some(saved)
            if saved.term == hs.term
                && saved.vote.is_some()
                && hs.vote.is_some()
                && saved.vote != hs.vote =>
        {
            return Err(StorageError::Corrupt {
                path: wal.dir().to_path_buf(),
                offset: 0,
                reason: format!(
                    "the WAL says this member voted for {:?} in term {} but the vote record says {:?}",
                    hs.vote, hs.term, saved.vote
                ),
            });
        }
        Some(saved) if saved == from_wal => {}
        // Behind (a crash between the WAL sync and the record's), or never
        // written (a new member, or a data directory from before the record).
        _ => vote.save(from_wal)?,
    }
    Ok(hs)
}

#[cfg(test)]
mod power_loss_tests;
#[cfg(test)]
mod tests;
