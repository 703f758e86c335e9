//! [`StateMachine`] for `metalraft_kv::KvStore` (feature `kv`).
//!
//! Commands are `metalraft_kv::Command::encode` bytes; reads are
//! `RangeRequest`s. With apply events on (`Config::emit_apply_events`, and
//! the default feature `kv-events`, without which their code is left out),
//! every command that changes the revision reports one [`KvEvent`]: the new revision and each key it put
//! (with its new metadata) or deleted, in key order within each operation,
//! operations in order, as etcd's Watch delivers them.

use alloc::vec::Vec;

use metalraft_core::{Index, Term};
use metalraft_kv::{
    Command, CommandResult, DecodeError, KeyValue, KvStore, RangeRequest, RangeResponse,
    RequestError,
};
#[cfg(feature = "kv-events")]
use metalraft_kv::{DeleteRangeRequest, RequestOp};

use crate::error::StateMachineError;
use crate::machine::StateMachine;

/// Why a key-value command produced no result. Deterministic: every replica
/// refuses the same command alike, and the store is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvError {
    /// The bytes are not a valid command.
    Decode(DecodeError),
    /// The store refused the command.
    Rejected(RequestError),
}

/// A key changed at one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyChange {
    /// The key now holds `KeyValue` (create/mod revision and version after the write).
    Put(KeyValue),
    /// The key was deleted (`mod_revision` of the deletion in the event).
    Delete(Vec<u8>),
}

/// What one applied command changed: etcd's Watch unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvEvent {
    /// The store's revision after the command.
    pub revision: i64,
    /// The log index of the command.
    pub index: Index,
    /// The changes, in the order the command made them.
    pub changes: Vec<KeyChange>,
}

impl StateMachine for KvStore {
    type Output = Result<CommandResult, KvError>;
    type Query = RangeRequest;
    type ReadOutput = Result<RangeResponse, RequestError>;
    type Event = KvEvent;

    fn applied_index(&self) -> Index {
        KvStore::applied_index(self)
    }

    fn apply(
        &mut self,
        index: Index,
        _term: Term,
        command: &[u8],
        events: Option<&mut Vec<KvEvent>>,
    ) -> Result<Self::Output, StateMachineError> {
        let cmd = match Command::decode(command) {
            Ok(c) => c,
            Err(e) => {
                self.mark_applied(index)
                    .map_err(|_| StateMachineError::Inconsistent)?;
                return Ok(Err(KvError::Decode(e)));
            }
        };
        // Deletes report the keys they remove: read them before the write.
        #[cfg(feature = "kv-events")]
        let doomed = match &events {
            Some(_) => deleted_keys(self, &cmd),
            None => Vec::new(),
        };
        #[cfg(feature = "kv-events")]
        let before = self.revision();
        let out = match KvStore::apply(self, index, &cmd) {
            Ok(r) => r,
            Err(metalraft_kv::ApplyError::Rejected(e)) => return Ok(Err(KvError::Rejected(e))),
            Err(_) => return Err(StateMachineError::Inconsistent),
        };
        // Without the feature this build reports no apply events.
        #[cfg(not(feature = "kv-events"))]
        let _ = events;
        #[cfg(feature = "kv-events")]
        if let Some(events) = events {
            if self.revision() != before {
                let changes = changes(self, &cmd, &out, doomed);
                events.push(KvEvent {
                    revision: self.revision(),
                    index,
                    changes,
                });
            }
        }
        Ok(Ok(out))
    }

    fn apply_empty(&mut self, index: Index, _term: Term) -> Result<(), StateMachineError> {
        self.mark_applied(index)
            .map_err(|_| StateMachineError::Inconsistent)
    }

    fn query(&self, query: &RangeRequest) -> Self::ReadOutput {
        self.range(query)
    }

    fn snapshot(&self) -> Result<Vec<u8>, StateMachineError> {
        Ok(KvStore::snapshot(self))
    }

    fn restore(&mut self, index: Index, data: &[u8]) -> Result<(), StateMachineError> {
        let store = KvStore::restore(data).map_err(|_| StateMachineError::BadSnapshot)?;
        if store.applied_index() != index {
            return Err(StateMachineError::Inconsistent);
        }
        *self = store;
        Ok(())
    }

    fn hash(&self) -> Option<u64> {
        Some(u64::from(KvStore::hash(self)))
    }
}

#[cfg(feature = "kv-events")]
/// The write operations a command runs: (puts, deletes), for the branch of a
/// transaction given by `succeeded`.
fn writes(cmd: &Command, succeeded: Option<bool>) -> Vec<&RequestOp> {
    match (cmd, succeeded) {
        (Command::Txn(t), Some(true)) => t.success.iter().collect(),
        (Command::Txn(t), Some(false)) => t.failure.iter().collect(),
        // Before the write, the branch is not known: both are candidates.
        (Command::Txn(t), None) => t.success.iter().chain(&t.failure).collect(),
        _ => Vec::new(),
    }
}

#[cfg(feature = "kv-events")]
fn range_of(d: &DeleteRangeRequest) -> RangeRequest {
    RangeRequest {
        key: d.key.clone(),
        range_end: d.range_end.clone(),
        keys_only: true,
        ..RangeRequest::default()
    }
}

#[cfg(feature = "kv-events")]
/// Keys present now in any delete range of `cmd`.
fn deleted_keys(kv: &KvStore, cmd: &Command) -> Vec<Vec<u8>> {
    let mut ranges: Vec<&DeleteRangeRequest> = Vec::new();
    match cmd {
        Command::DeleteRange(d) => ranges.push(d),
        Command::Txn(_) => {
            for op in writes(cmd, None) {
                if let RequestOp::DeleteRange(d) = op {
                    ranges.push(d);
                }
            }
        }
        _ => {}
    }
    let mut keys = Vec::new();
    for d in ranges {
        if let Ok(r) = kv.range(&range_of(d)) {
            keys.extend(r.kvs.into_iter().map(|kv| kv.key));
        }
    }
    keys
}

#[cfg(feature = "kv-events")]
fn changes(
    kv: &KvStore,
    cmd: &Command,
    out: &CommandResult,
    doomed: Vec<Vec<u8>>,
) -> Vec<KeyChange> {
    let mut changes = Vec::new();
    let put = |key: &[u8], changes: &mut Vec<KeyChange>| {
        if let Ok(r) = kv.range(&RangeRequest::single(key)) {
            changes.extend(r.kvs.into_iter().map(KeyChange::Put));
        }
    };
    let delete = |d: &DeleteRangeRequest, changes: &mut Vec<KeyChange>| {
        let probe = range_of(d);
        for key in &doomed {
            // A key deleted by this range is one that was there before and is
            // in the range (a branch never puts a key it deletes).
            if in_range(key, &probe)
                && !changes.iter().any(|c| c == &KeyChange::Delete(key.clone()))
            {
                changes.push(KeyChange::Delete(key.clone()));
            }
        }
    };
    match (cmd, out) {
        (Command::Put(p), _) => put(&p.key, &mut changes),
        (Command::DeleteRange(d), _) => delete(d, &mut changes),
        (Command::Txn(_), CommandResult::Txn(t)) => {
            for op in writes(cmd, Some(t.succeeded)) {
                match op {
                    RequestOp::Put(p) => put(&p.key, &mut changes),
                    RequestOp::DeleteRange(d) => delete(d, &mut changes),
                    RequestOp::Range(_) => {}
                }
            }
        }
        _ => {}
    }
    changes
}

#[cfg(feature = "kv-events")]
/// Whether `key` falls in the key range of `r` (etcd's range rules).
fn in_range(key: &[u8], r: &RangeRequest) -> bool {
    if r.range_end.is_empty() {
        return key == r.key.as_slice();
    }
    if r.range_end.as_slice() == [0] {
        return key >= r.key.as_slice();
    }
    key >= r.key.as_slice() && key < r.range_end.as_slice()
}
