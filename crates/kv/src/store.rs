//! [`KvStore`]: the state, the apply path and the read path.

use crate::error::{ApplyError, RequestError};
use crate::limits::{ENTRY_OVERHEAD_BYTES, INITIAL_REVISION};
use crate::range;
use crate::request::{Command, CompactionRequest, RangeRequest};
use crate::response::{CommandResult, CompactionResponse, RangeResponse, ResponseHeader};
use crate::write::NoHistory;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// What the store keeps per key: only the current version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) value: Vec<u8>,
    pub(crate) create_revision: i64,
    pub(crate) mod_revision: i64,
    pub(crate) version: i64,
}

/// The replicated key-value state machine.
///
/// Method map:
/// - **apply** (replicated, `&mut self`): [`apply`](Self::apply) a committed
///   [`Command`] at its log index; [`mark_applied`](Self::mark_applied) for
///   log entries that carry no command.
/// - **read** (local, `&self`): [`range`](Self::range).
/// - **snapshot**: [`snapshot`](Self::snapshot), [`restore`](Self::restore).
/// - **getters**: [`revision`](Self::revision),
///   [`compact_revision`](Self::compact_revision),
///   [`applied_index`](Self::applied_index), [`len`](Self::len),
///   [`size_bytes`](Self::size_bytes), [`hash`](Self::hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvStore {
    pub(crate) map: BTreeMap<Vec<u8>, Entry>,
    pub(crate) revision: i64,
    pub(crate) compact_revision: i64,
    pub(crate) applied_index: u64,
    pub(crate) size_bytes: usize,
}

impl Default for KvStore {
    fn default() -> Self {
        Self::new()
    }
}

impl KvStore {
    /// An empty store at revision [`INITIAL_REVISION`] (1, as in etcd) with
    /// applied index 0.
    pub fn new() -> Self {
        KvStore {
            map: BTreeMap::new(),
            revision: INITIAL_REVISION,
            compact_revision: 0,
            applied_index: 0,
            size_bytes: 0,
        }
    }

    /// Applies the committed command at log `index`.
    ///
    /// - `index <= applied_index()`: [`ApplyError::AlreadyApplied`], nothing
    ///   changes, so replaying a log tail over a snapshot is idempotent.
    /// - Otherwise `applied_index()` becomes `index` (gaps are fine: entries
    ///   without a command need not be applied), then the command runs. If it
    ///   is refused ([`ApplyError::Rejected`]) the data and revision are
    ///   unchanged; refusal is deterministic, so every replica agrees.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> Result<CommandResult, ApplyError> {
        self.mark_applied(index)?;
        self.execute(cmd).map_err(ApplyError::Rejected)
    }

    /// Records that the log entry at `index` was applied although it carries
    /// no command (a leader's no-op, a membership change), so a snapshot
    /// taken now covers it. Same index rule as [`apply`](Self::apply).
    pub fn mark_applied(&mut self, index: u64) -> Result<(), ApplyError> {
        if index <= self.applied_index {
            return Err(ApplyError::AlreadyApplied {
                index,
                applied_index: self.applied_index,
            });
        }
        self.applied_index = index;
        Ok(())
    }

    /// Serves a read from local state (etcd `Range`). `revision` must be
    /// `<= 0` or the current revision: older ones are
    /// [`RequestError::Compacted`], newer ones [`RequestError::FutureRevision`].
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, RequestError> {
        crate::validate::check_range(req)?;
        range::check_revision(req.revision, self.revision)?;
        Ok(range::read(&self.map, req, self.revision))
    }

    /// The revision of the last change (etcd's header revision).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The revision of the last accepted [`Command::Compact`] (0 if none).
    /// Reads of any revision older than [`revision`](Self::revision) are
    /// refused as compacted regardless, since no history is kept.
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// The log index of the last applied entry (0 for a new store).
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Approximate memory held by the data, for etcd's `Status.dbSize` and a
    /// quota: key and value bytes plus [`ENTRY_OVERHEAD_BYTES`] per key.
    /// Maintained incrementally, so O(1).
    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    fn execute(&mut self, cmd: &Command) -> Result<CommandResult, RequestError> {
        cmd.validate()?;
        Ok(match cmd {
            Command::Put(r) => CommandResult::Put(self.put_command(r, &mut NoHistory)?),
            Command::DeleteRange(r) => {
                CommandResult::DeleteRange(self.delete_command(r, &mut NoHistory)?)
            }
            Command::Txn(r) => CommandResult::Txn(self.txn(r, &mut NoHistory)?),
            Command::Compact(r) => CommandResult::Compact(self.compact(r)?),
            Command::Range(r) => CommandResult::Range(self.range(r)?),
            // No leases here: the firmware's store stays small (ADR 0015).
            Command::LeaseGrant(_)
            | Command::LeaseRevoke(_)
            | Command::LeasePut(..)
            | Command::LeaseTxn(..) => return Err(RequestError::LeaseNotFound),
        })
    }

    /// etcd's compaction checks: `compact_revision() < revision <= revision()`.
    pub(crate) fn check_compact(&self, r: &CompactionRequest) -> Result<(), RequestError> {
        if r.revision > self.revision {
            return Err(RequestError::FutureRevision {
                requested: r.revision,
                current: self.revision,
            });
        }
        if r.revision <= self.compact_revision {
            return Err(RequestError::Compacted {
                requested: r.revision,
                oldest: self.compact_revision,
            });
        }
        Ok(())
    }

    fn compact(&mut self, r: &CompactionRequest) -> Result<CompactionResponse, RequestError> {
        self.check_compact(r)?;
        self.compact_revision = r.revision;
        Ok(CompactionResponse {
            header: ResponseHeader {
                revision: self.revision,
            },
        })
    }
}

pub(crate) fn entry_size(key: &[u8], value: &[u8]) -> usize {
    key.len()
        .saturating_add(value.len())
        .saturating_add(ENTRY_OVERHEAD_BYTES)
}
