//! [`MvccStore`]: the key-value store with etcd's MVCC history, for the
//! server and the simulator (the firmware keeps the smaller [`KvStore`]).
//!
//! Layout (see `docs/adr/0013-mvcc-store.md`):
//! - the **current state**: a [`KvStore`], whose map holds each live key's
//!   newest version, and whose write path ([`crate::write`]) this store
//!   shares by plugging in its [`history::Past`];
//! - the **past versions**: per key, its superseded versions and
//!   tombstones, oldest first (the newest version is never stored twice);
//! - the **revision log**: one record per revision since the compaction,
//!   listing the keys it changed in sub-revision order, for watch replay and
//!   for compaction in O(history removed).

mod change;
mod compact;
mod history;
mod import;
mod lease;
mod read;
mod read_txn;
mod record_log;
#[cfg(test)]
mod restore_timing;
mod snapshot;
mod stream;

pub use change::{Change, ChangeBatch, ChangeKind, HashKv};
pub use compact::COMPACTION_CHANGES_PER_ENTRY;
pub use import::{Imported, ImportedChanges};
pub use lease::LeaseInfo;
pub use snapshot::{MVCC_LEASE_SNAPSHOT_MAGIC, MVCC_SNAPSHOT_MAGIC};
pub use stream::{padded_varint, Section, SnapshotStream, StreamError, PADDED_VARINT_BYTES};

use crate::error::{ApplyError, RequestError};
use crate::request::{Command, LeaseOption, RangeRequest};
use crate::response::{CommandResult, RangeResponse};
use crate::store::KvStore;
use history::Past;
use lease::{LeaseHook, Leases};

/// The replicated key-value state machine with etcd's MVCC history: every
/// revision since the last compaction can be read, hashed and replayed as
/// watch events.
///
/// Method map:
/// - **apply** (replicated, `&mut self`): [`apply`](Self::apply) a committed
///   [`Command`] at its log index (compaction is [`Command::Compact`]);
///   [`mark_applied`](Self::mark_applied) for entries without a command.
/// - **read** (local, `&self`): [`range`](Self::range) at the current or a
///   past revision; [`changes`](Self::changes) (watch catch-up) and
///   [`changes_at`](Self::changes_at) (live watch events of one revision);
///   [`hash_kv`](Self::hash_kv) (etcd `HashKV`).
/// - **snapshot**: [`snapshot`](Self::snapshot), [`restore`](Self::restore),
///   [`restore_prefix`](Self::restore_prefix) (both also take a [`KvStore`]
///   snapshot), [`rebase_applied_index`](Self::rebase_applied_index).
/// - **getters**: [`revision`](Self::revision),
///   [`compact_revision`](Self::compact_revision),
///   [`applied_index`](Self::applied_index), [`len`](Self::len),
///   [`is_empty`](Self::is_empty), [`size_bytes`](Self::size_bytes),
///   [`hash`](Self::hash).
///
/// Equal stores (`==`) hold the same current state, history and log.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MvccStore {
    /// The current state, revision, compact revision and applied index.
    pub(crate) current: KvStore,
    /// Superseded versions, tombstones and the revision log.
    pub(crate) past: Past,
    /// Leases and the live keys attached to them.
    pub(crate) leases: Leases,
}

impl MvccStore {
    /// An empty store at revision [`INITIAL_REVISION`](crate::INITIAL_REVISION)
    /// (1, as in etcd), never compacted, with applied index 0.
    pub fn new() -> Self {
        MvccStore::default()
    }

    /// Applies the committed command at log `index`; the same contract as
    /// [`KvStore::apply`]: `index <= applied_index()` is
    /// [`ApplyError::AlreadyApplied`] and changes nothing; otherwise the
    /// index is recorded and the command runs, or is refused
    /// ([`ApplyError::Rejected`]) without changing data or revision.
    ///
    /// Writes keep the versions they replace; a transaction's writes share
    /// one revision. [`Command::Compact`] makes history below its revision
    /// unreadable at once (see [`compact_revision`](Self::compact_revision));
    /// its memory is freed in bounded chunks, one per applied entry
    /// ([`COMPACTION_CHANGES_PER_ENTRY`] logged changes each).
    pub fn apply(&mut self, index: u64, cmd: &Command) -> Result<CommandResult, ApplyError> {
        self.current.mark_applied(index)?;
        self.prune_step();
        self.execute(cmd).map_err(ApplyError::Rejected)
    }

    /// Records that the log entry at `index` was applied although it carries
    /// no command. Same index rule as [`apply`](Self::apply). Like every
    /// applied entry, it frees one chunk of a pending compaction's history.
    pub fn mark_applied(&mut self, index: u64) -> Result<(), ApplyError> {
        self.current.mark_applied(index)?;
        self.prune_step();
        Ok(())
    }

    /// Serves a read (etcd `Range`) at `req.revision`: `<= 0` is the current
    /// revision; a revision below [`compact_revision`](Self::compact_revision)
    /// is [`RequestError::Compacted`], one above [`revision`](Self::revision)
    /// [`RequestError::FutureRevision`]. A past read returns the keys,
    /// versions, `count` and `more` the store had at that revision; the
    /// header carries the current revision, as etcd's does.
    ///
    /// Cost: O(keys in range) for a current read; a past read also visits
    /// every key in range that has history (O(log versions) each).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, RequestError> {
        crate::validate::check_range(req)?;
        let at = self.readable_revision(req.revision)?;
        Ok(self.read_at(req, at, self.revision()))
    }

    /// The revision of the last change (etcd's header revision).
    pub fn revision(&self) -> i64 {
        self.current.revision()
    }

    /// The revision of the last accepted compaction (0 if none). Revisions
    /// from it to [`revision`](Self::revision) can be read and replayed.
    pub fn compact_revision(&self) -> i64 {
        self.current.compact_revision()
    }

    /// The log index of the last applied entry (0 for a new store).
    pub fn applied_index(&self) -> u64 {
        self.current.applied_index()
    }

    /// Whether a reader that froze this store at `revision`,
    /// `compact_revision` and `applied_index` still finds here everything
    /// at or below `revision` it could read then: no compaction accepted
    /// since and not replaced by an older state (applies only add above
    /// the frozen revision; see [`SnapshotStream`]). Readers working in
    /// steps across applies check it at every step.
    pub fn holds_history_of(
        &self,
        revision: i64,
        compact_revision: i64,
        applied_index: u64,
    ) -> bool {
        self.compact_revision() == compact_revision
            && self.revision() >= revision
            && self.applied_index() >= applied_index
    }

    /// Number of live keys at the current revision.
    pub fn len(&self) -> usize {
        self.current.len()
    }

    /// Whether no key is live at the current revision.
    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }

    /// Approximate memory held by the current data and the history, for
    /// etcd's `Status.dbSize` and the backend quota: the current data as
    /// [`KvStore::size_bytes`] counts it, plus per past version its value
    /// and [`HISTORY_VERSION_OVERHEAD_BYTES`](crate::HISTORY_VERSION_OVERHEAD_BYTES),
    /// per key with history its key and
    /// [`HISTORY_KEY_OVERHEAD_BYTES`](crate::HISTORY_KEY_OVERHEAD_BYTES),
    /// per logged change its key and
    /// [`LOG_CHANGE_OVERHEAD_BYTES`](crate::LOG_CHANGE_OVERHEAD_BYTES), and per
    /// logged revision [`LOG_RECORD_OVERHEAD_BYTES`](crate::LOG_RECORD_OVERHEAD_BYTES).
    /// Maintained incrementally, so O(1).
    pub fn size_bytes(&self) -> usize {
        self.current
            .size_bytes()
            .saturating_add(self.past.size_bytes)
    }

    /// A digest of the current state only, equal to [`KvStore::hash`] of a
    /// store with the same current data (so checkers can compare both kinds
    /// of store). O(live data).
    pub fn hash(&self) -> u32 {
        self.current.hash()
    }

    fn execute(&mut self, cmd: &Command) -> Result<CommandResult, RequestError> {
        cmd.validate()?;
        // Writes run through the shared path with a hook that also keeps
        // lease attachments (a put without a lease detaches its key).
        #[cfg(feature = "leases")]
        let txn_puts: alloc::vec::Vec<LeaseOption>;
        let puts: &[LeaseOption] = match cmd {
            Command::Compact(r) => return Ok(CommandResult::Compact(self.compact(r)?)),
            Command::Range(r) => return Ok(CommandResult::Range(self.range(r)?)),
            #[cfg(feature = "leases")]
            Command::LeaseGrant(g) => return Ok(CommandResult::LeaseGrant(self.grant(g)?)),
            #[cfg(feature = "leases")]
            Command::LeaseRevoke(r) => return Ok(CommandResult::LeaseRevoke(self.revoke(r)?)),
            #[cfg(feature = "leases")]
            Command::LeasePut(p, l) => {
                self.check_lease_put(p, l)?;
                core::slice::from_ref(l)
            }
            #[cfg(feature = "leases")]
            Command::LeaseTxn(t, l) => {
                txn_puts = self.check_lease_txn(t, l)?;
                &txn_puts
            }
            Command::Put(_) | Command::DeleteRange(_) | Command::Txn(_) => &[],
        };
        let MvccStore {
            current,
            past,
            leases,
        } = self;
        let mut hook = LeaseHook::new(past, leases, puts);
        Ok(match cmd {
            Command::Put(r) => CommandResult::Put(current.put_command(r, &mut hook)?),
            #[cfg(feature = "leases")]
            Command::LeasePut(r, _) => CommandResult::Put(current.put_command(r, &mut hook)?),
            Command::DeleteRange(r) => {
                CommandResult::DeleteRange(current.delete_command(r, &mut hook)?)
            }
            Command::Txn(r) => CommandResult::Txn(current.txn(r, &mut hook)?),
            #[cfg(feature = "leases")]
            Command::LeaseTxn(r, _) => CommandResult::Txn(current.txn(r, &mut hook)?),
            Command::Compact(_) | Command::Range(_) => unreachable!("answered above"),
            #[cfg(feature = "leases")]
            Command::LeaseGrant(_) | Command::LeaseRevoke(_) => unreachable!("answered above"),
        })
    }

    /// etcd `rangeKeys`'s revision rule: the revision a read of `requested`
    /// sees, or why it cannot be served.
    fn readable_revision(&self, requested: i64) -> Result<i64, RequestError> {
        let current = self.revision();
        if requested <= 0 {
            return Ok(current);
        }
        if requested > current {
            return Err(RequestError::FutureRevision { requested, current });
        }
        let oldest = self.compact_revision();
        if requested < oldest {
            return Err(RequestError::Compacted { requested, oldest });
        }
        Ok(requested)
    }
}
