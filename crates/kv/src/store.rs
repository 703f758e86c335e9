//! [`KvStore`]: the state, the apply path and the read path.

use crate::error::{ApplyError, RequestError};
use crate::keys::KeyRange;
use crate::limits::{ENTRY_OVERHEAD_BYTES, INITIAL_REVISION};
use crate::request::{
    Command, CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use crate::response::{
    CommandResult, CompactionResponse, DeleteRangeResponse, PutResponse, RangeResponse,
    ResponseHeader, ResponseOp, TxnResponse,
};
use crate::{range, txn};
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
            Command::Put(r) => CommandResult::Put(self.put_command(r)?),
            Command::DeleteRange(r) => CommandResult::DeleteRange(self.delete_command(r)?),
            Command::Txn(r) => CommandResult::Txn(self.txn(r)?),
            Command::Compact(r) => CommandResult::Compact(self.compact(r)?),
            Command::Range(r) => CommandResult::Range(self.range(r)?),
        })
    }

    fn next_revision(&self) -> Result<i64, RequestError> {
        self.revision
            .checked_add(1)
            .ok_or(RequestError::RevisionExhausted)
    }

    fn put_command(&mut self, r: &PutRequest) -> Result<PutResponse, RequestError> {
        if r.ignore_value && !self.map.contains_key(&r.key) {
            return Err(RequestError::KeyNotFound);
        }
        let rev = self.next_revision()?;
        let resp = self.put_at(rev, r);
        self.revision = rev;
        Ok(resp)
    }

    fn delete_command(
        &mut self,
        r: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, RequestError> {
        let rev = self.next_revision()?;
        let mut resp = self.delete_at(rev, r);
        if resp.deleted > 0 {
            self.revision = rev;
        }
        resp.header.revision = self.revision;
        Ok(resp)
    }

    /// Writes one key at revision `rev`; the caller checked `ignore_value`
    /// and sets `self.revision`.
    fn put_at(&mut self, rev: i64, r: &PutRequest) -> PutResponse {
        let header = ResponseHeader { revision: rev };
        match self.map.get_mut(r.key.as_slice()) {
            Some(e) => {
                let prev_kv = r.prev_kv.then(|| e.to_key_value(&r.key, true));
                if !r.ignore_value {
                    self.size_bytes = self.size_bytes.saturating_sub(e.value.len());
                    self.size_bytes = self.size_bytes.saturating_add(r.value.len());
                    e.value = r.value.clone();
                }
                e.mod_revision = rev;
                e.version = e.version.saturating_add(1);
                PutResponse { header, prev_kv }
            }
            None => {
                self.size_bytes = self.size_bytes.saturating_add(entry_size(&r.key, &r.value));
                let e = Entry {
                    value: r.value.clone(),
                    create_revision: rev,
                    mod_revision: rev,
                    version: 1,
                };
                self.map.insert(r.key.clone(), e);
                PutResponse {
                    header,
                    prev_kv: None,
                }
            }
        }
    }

    /// Deletes a range; the caller sets `self.revision` to `rev` if anything
    /// was deleted.
    fn delete_at(&mut self, rev: i64, r: &DeleteRangeRequest) -> DeleteRangeResponse {
        let keys: Vec<Vec<u8>> = KeyRange::new(&r.key, &r.range_end)
            .iter(&self.map)
            .map(|(k, _)| k.clone())
            .collect();
        let mut prev_kvs = Vec::new();
        for k in &keys {
            if let Some(e) = self.map.remove(k.as_slice()) {
                self.size_bytes = self.size_bytes.saturating_sub(entry_size(k, &e.value));
                if r.prev_kv {
                    prev_kvs.push(e.to_key_value(k, true));
                }
            }
        }
        DeleteRangeResponse {
            header: ResponseHeader { revision: rev },
            deleted: i64::try_from(keys.len()).unwrap_or(i64::MAX),
            prev_kvs,
        }
    }

    fn txn(&mut self, t: &TxnRequest) -> Result<TxnResponse, RequestError> {
        let succeeded = t.compare.iter().all(|c| txn::holds(&self.map, c));
        let ops = if succeeded { &t.success } else { &t.failure };
        let start = self.revision;
        txn::check_branch(&self.map, ops, start)?;
        // check_branch refused the branch if it writes and start == i64::MAX.
        let rev = start.saturating_add(1);
        let mut changed = false;
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                RequestOp::Range(r) => ResponseOp::Range(range::read(&self.map, r, start)),
                RequestOp::Put(p) => {
                    changed = true;
                    ResponseOp::Put(self.put_at(rev, p))
                }
                RequestOp::DeleteRange(d) => {
                    let resp = self.delete_at(rev, d);
                    changed |= resp.deleted > 0;
                    ResponseOp::DeleteRange(resp)
                }
            });
        }
        if changed {
            self.revision = rev;
        }
        let header = ResponseHeader {
            revision: self.revision,
        };
        for resp in &mut responses {
            match resp {
                ResponseOp::Range(r) => r.header = header,
                ResponseOp::Put(r) => r.header = header,
                ResponseOp::DeleteRange(r) => r.header = header,
            }
        }
        Ok(TxnResponse {
            header,
            succeeded,
            responses,
        })
    }

    fn compact(&mut self, r: &CompactionRequest) -> Result<CompactionResponse, RequestError> {
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
