//! [`StateMachine`] for `metalraft_kv::KvStore` and `metalraft_kv::MvccStore`
//! (feature `kv`). The MVCC store, which the server and the simulator run,
//! handles commands, reads and refusals exactly as the `KvStore` does (the
//! two share the helpers below), serves past revisions, and reports one
//! [`MvccEvent`] per revision from its own revision log.
//!
//! Commands are `metalraft_kv::Command::encode` bytes; reads are
//! `RangeRequest`s. With apply events on (`Config::emit_apply_events`, and
//! the default feature `kv-events`, without which their code is left out),
//! every `KvStore` command that changes the revision reports one
//! [`KvEvent`]: the new revision and each key it put (with its new metadata) or deleted, in key order within each operation,
//! operations in order, as etcd's Watch delivers them.

use alloc::vec::Vec;

use metalraft_core::{Index, Term};
use metalraft_kv::{
    ApplyError, Change, Command, CommandResult, DecodeError, KeyValue, KvStore, MvccStore,
    RangeRequest, RangeResponse, RequestError, SnapshotError,
};
#[cfg(feature = "kv-events")]
use metalraft_kv::{DeleteRangeRequest, RequestOp, TxnRequest};

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
        let cmd = match decode(command, || self.mark_applied(index))? {
            Ok(cmd) => cmd,
            Err(refused) => return Ok(Err(refused)),
        };
        // Deletes report the keys they remove: read them before the write.
        #[cfg(feature = "kv-events")]
        let doomed = match &events {
            Some(_) => deleted_keys(self, &cmd),
            None => Vec::new(),
        };
        #[cfg(feature = "kv-events")]
        let before = self.revision();
        let out = match outcome(KvStore::apply(self, index, &cmd))? {
            Ok(r) => r,
            Err(refused) => return Ok(Err(refused)),
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
        *self = restored(KvStore::restore(data), index, KvStore::applied_index)?;
        Ok(())
    }

    fn hash(&self) -> Option<u64> {
        Some(u64::from(KvStore::hash(self)))
    }
}

/// What one applied command changed in an [`MvccStore`]: etcd's Watch unit,
/// with each change's previous version (if still kept) for `prev_kv`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MvccEvent {
    /// The store's revision after the command (all changes share it).
    pub revision: i64,
    /// The log index of the command.
    pub index: Index,
    /// The changes, in sub-revision (operation) order.
    pub changes: Vec<Change>,
}

/// The MVCC store: same commands, reads, refusals and snapshots handling as
/// the [`KvStore`] implementation; reads may name past revisions, and every
/// command that changes the revision reports one [`MvccEvent`] (when events
/// are asked for), taken from the store's own revision log.
impl StateMachine for MvccStore {
    type Output = Result<CommandResult, KvError>;
    type Query = RangeRequest;
    type ReadOutput = Result<RangeResponse, RequestError>;
    type Event = MvccEvent;

    fn applied_index(&self) -> Index {
        MvccStore::applied_index(self)
    }

    fn apply(
        &mut self,
        index: Index,
        _term: Term,
        command: &[u8],
        events: Option<&mut Vec<MvccEvent>>,
    ) -> Result<Self::Output, StateMachineError> {
        let cmd = match decode(command, || self.mark_applied(index))? {
            Ok(cmd) => cmd,
            Err(refused) => return Ok(Err(refused)),
        };
        let before = self.revision();
        let out = match outcome(MvccStore::apply(self, index, &cmd))? {
            Ok(r) => r,
            Err(refused) => return Ok(Err(refused)),
        };
        if let Some(events) = events {
            let revision = self.revision();
            if revision != before {
                events.push(MvccEvent {
                    revision,
                    index,
                    changes: self.changes_at(revision),
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
        Ok(MvccStore::snapshot(self))
    }

    fn restore(&mut self, index: Index, data: &[u8]) -> Result<(), StateMachineError> {
        *self = restored(MvccStore::restore(data), index, MvccStore::applied_index)?;
        Ok(())
    }

    fn hash(&self) -> Option<u64> {
        Some(u64::from(MvccStore::hash(self)))
    }
}

/// Decodes a command entry. Bytes that are not a valid command are still
/// applied (`mark_applied`), as a refusal every replica makes alike.
fn decode(
    command: &[u8],
    mark_applied: impl FnOnce() -> Result<(), ApplyError>,
) -> Result<Result<Command, KvError>, StateMachineError> {
    match Command::decode(command) {
        Ok(c) => Ok(Ok(c)),
        Err(e) => {
            mark_applied().map_err(|_| StateMachineError::Inconsistent)?;
            Ok(Err(KvError::Decode(e)))
        }
    }
}

/// A store's apply result as the state machine reports it: a refusal is an
/// ordinary output; an index already applied means the replica broke the
/// apply order.
fn outcome(
    result: Result<CommandResult, ApplyError>,
) -> Result<Result<CommandResult, KvError>, StateMachineError> {
    match result {
        Ok(r) => Ok(Ok(r)),
        Err(ApplyError::Rejected(e)) => Ok(Err(KvError::Rejected(e))),
        Err(_) => Err(StateMachineError::Inconsistent),
    }
}

/// A store restored from a snapshot of index `index`, or why not.
fn restored<S>(
    store: Result<S, SnapshotError>,
    index: Index,
    applied_index: fn(&S) -> u64,
) -> Result<S, StateMachineError> {
    let store = store.map_err(|_| StateMachineError::BadSnapshot)?;
    if applied_index(&store) != index {
        return Err(StateMachineError::Inconsistent);
    }
    Ok(store)
}

#[cfg(feature = "kv-events")]
/// Every operation of both branches of a transaction, nested transactions'
/// included (before the write, the branches are not known: all are
/// candidates).
fn all_ops<'a>(ops: &'a [RequestOp], out: &mut Vec<&'a RequestOp>) {
    for op in ops {
        match op {
            #[cfg(feature = "nested-txn")]
            RequestOp::Txn(t) => {
                all_ops(&t.success, out);
                all_ops(&t.failure, out);
            }
            op => out.push(op),
        }
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
        Command::Txn(t) => {
            let mut ops = Vec::new();
            all_ops(&t.success, &mut ops);
            all_ops(&t.failure, &mut ops);
            for op in ops {
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
/// Calls `f` on every write that ran, in order: each branch's ops beside
/// their responses, a nested txn's by its own verdict.
fn ran(
    t: &TxnRequest,
    r: &metalraft_kv::TxnResponse,
    f: &mut dyn FnMut(&RequestOp, &mut Vec<KeyChange>),
    changes: &mut Vec<KeyChange>,
) {
    let ops = if r.succeeded { &t.success } else { &t.failure };
    for (op, resp) in ops.iter().zip(&r.responses) {
        match (op, resp) {
            #[cfg(feature = "nested-txn")]
            (RequestOp::Txn(t), metalraft_kv::ResponseOp::Txn(r)) => ran(t, r, f, changes),
            (op, _) => f(op, changes),
        }
    }
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
            if metalraft_kv::key_in_range(key, &probe.key, &probe.range_end)
                && !changes.iter().any(|c| c == &KeyChange::Delete(key.clone()))
            {
                changes.push(KeyChange::Delete(key.clone()));
            }
        }
    };
    match (cmd, out) {
        (Command::Put(p), _) => put(&p.key, &mut changes),
        (Command::DeleteRange(d), _) => delete(d, &mut changes),
        (Command::Txn(t), CommandResult::Txn(r)) => {
            ran(
                t,
                r,
                &mut |op, changes| match op {
                    RequestOp::Put(p) => put(&p.key, changes),
                    RequestOp::DeleteRange(d) => delete(d, changes),
                    _ => {}
                },
                &mut changes,
            );
        }
        _ => {}
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use metalraft_kv::{ChangeKind, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest};

    fn put(key: &[u8], value: &[u8]) -> Vec<u8> {
        Command::Put(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ..PutRequest::default()
        })
        .encode()
    }

    #[test]
    fn mvcc_store_reports_one_event_per_revision_with_prev_kv() {
        let mut kv = MvccStore::new();
        let mut events = Vec::new();
        let out = StateMachine::apply(&mut kv, 1, 1, &put(b"a", b"1"), Some(&mut events));
        assert!(matches!(out, Ok(Ok(CommandResult::Put(_)))));
        let txn = Command::Txn(TxnRequest {
            success: alloc::vec![
                RequestOp::Put(PutRequest {
                    key: b"b".to_vec(),
                    ..PutRequest::default()
                }),
                RequestOp::DeleteRange(DeleteRangeRequest {
                    key: b"a".to_vec(),
                    ..DeleteRangeRequest::default()
                }),
            ],
            ..TxnRequest::default()
        });
        StateMachine::apply(&mut kv, 2, 1, &txn.encode(), Some(&mut events))
            .unwrap()
            .unwrap();
        // A delete of nothing changes no revision: no event.
        let nothing = Command::DeleteRange(DeleteRangeRequest {
            key: b"zz".to_vec(),
            ..DeleteRangeRequest::default()
        });
        StateMachine::apply(&mut kv, 3, 1, &nothing.encode(), Some(&mut events))
            .unwrap()
            .unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!((events[1].revision, events[1].index), (3, 2));
        let kinds: Vec<_> = events[1].changes.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, [ChangeKind::Put, ChangeKind::Delete]);
        let prev = events[1].changes[1].prev_kv.as_ref().unwrap();
        assert_eq!(prev.value, b"1");
        // Past reads through the query path.
        let at2 = StateMachine::query(
            &kv,
            &RangeRequest {
                revision: 2,
                ..RangeRequest::single(b"a")
            },
        )
        .unwrap();
        assert_eq!(at2.kvs[0].value, b"1");
    }

    #[cfg(all(feature = "kv-events", feature = "nested-txn"))]
    #[test]
    fn kv_store_events_follow_nested_txns_in_order() {
        let mut kv = KvStore::new();
        let mut events = Vec::new();
        StateMachine::apply(&mut kv, 1, 1, &put(b"a", b"1"), Some(&mut events))
            .unwrap()
            .unwrap();
        let p = |k: &[u8]| {
            RequestOp::Put(PutRequest {
                key: k.to_vec(),
                ..PutRequest::default()
            })
        };
        let nested = |success, failure| {
            RequestOp::Txn(TxnRequest {
                compare: alloc::vec![],
                success,
                failure,
            })
        };
        // Outer put b, then a nested txn whose success branch deletes a and
        // puts c; the failure branch's put d never runs.
        let txn = Command::Txn(TxnRequest {
            success: alloc::vec![
                p(b"b"),
                nested(
                    alloc::vec![
                        RequestOp::DeleteRange(DeleteRangeRequest {
                            key: b"a".to_vec(),
                            ..DeleteRangeRequest::default()
                        }),
                        p(b"c"),
                    ],
                    alloc::vec![p(b"d")],
                ),
            ],
            ..TxnRequest::default()
        });
        StateMachine::apply(&mut kv, 2, 1, &txn.encode(), Some(&mut events))
            .unwrap()
            .unwrap();
        assert_eq!(events.len(), 2);
        let keys: Vec<_> = events[1]
            .changes
            .iter()
            .map(|c| match c {
                KeyChange::Put(kv) => (b'P', kv.key.clone()),
                KeyChange::Delete(k) => (b'D', k.clone()),
            })
            .collect();
        assert_eq!(
            keys,
            [
                (b'P', b"b".to_vec()),
                (b'D', b"a".to_vec()),
                (b'P', b"c".to_vec())
            ]
        );
    }

    #[test]
    fn mvcc_store_refuses_like_the_kv_store() {
        let mut mvcc = MvccStore::new();
        let mut plain = KvStore::new();
        let garbage = [0xffu8, 1, 2];
        let a = StateMachine::apply(&mut mvcc, 1, 1, &garbage, None).unwrap();
        let b = StateMachine::apply(&mut plain, 1, 1, &garbage, None).unwrap();
        assert_eq!(a, b);
        assert!(matches!(a, Err(KvError::Decode(_))));
        assert_eq!(StateMachine::applied_index(&mvcc), 1);
        let ignore = Command::Put(PutRequest {
            key: b"x".to_vec(),
            ignore_value: true,
            ..PutRequest::default()
        })
        .encode();
        let a = StateMachine::apply(&mut mvcc, 2, 1, &ignore, None).unwrap();
        let b = StateMachine::apply(&mut plain, 2, 1, &ignore, None).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, Err(KvError::Rejected(RequestError::KeyNotFound)));
        // Applying an index twice is the replica's bug, not a refusal.
        assert_eq!(
            StateMachine::apply(&mut mvcc, 2, 1, &put(b"a", b"1"), None),
            Err(StateMachineError::Inconsistent)
        );
        assert_eq!(
            StateMachine::hash(&mvcc),
            StateMachine::hash(&plain),
            "equal current data hashes alike"
        );
    }

    #[test]
    fn mvcc_store_restores_its_own_and_kv_store_snapshots() {
        let mut kv = MvccStore::new();
        StateMachine::apply(&mut kv, 1, 1, &put(b"a", b"1"), None)
            .unwrap()
            .unwrap();
        StateMachine::apply(&mut kv, 2, 1, &put(b"a", b"2"), None)
            .unwrap()
            .unwrap();
        let snap = StateMachine::snapshot(&kv).unwrap();
        let mut other = MvccStore::new();
        assert_eq!(
            StateMachine::restore(&mut other, 3, &snap),
            Err(StateMachineError::Inconsistent)
        );
        assert_eq!(other, MvccStore::new(), "unchanged on error");
        assert_eq!(
            StateMachine::restore(&mut other, 2, &snap[..snap.len() - 1]),
            Err(StateMachineError::BadSnapshot)
        );
        StateMachine::restore(&mut other, 2, &snap).unwrap();
        assert_eq!(other, kv);
        let mut plain = KvStore::new();
        StateMachine::apply(&mut plain, 1, 1, &put(b"a", b"1"), None)
            .unwrap()
            .unwrap();
        let old = StateMachine::snapshot(&plain).unwrap();
        StateMachine::restore(&mut other, 1, &old).unwrap();
        assert_eq!(other.compact_revision(), 2);
    }
}
