//! The committed MVCC history, computed independently of the store under
//! test, and the check that every node's history agrees with it.
//!
//! [`ReferenceHistory`] replays the committed log (each entry the first
//! time any node applies it; the state-machine checker guarantees every
//! node applies the same entry at every index) through its own small model
//! of etcd's MVCC semantics: a map of live keys, one revision per command
//! that changes something, a transaction's changes under one revision in
//! operation order, a range delete's in key order, and etcd's watch
//! `prev_kv` rule (the key at `revision - 1`, none for a creation). It
//! keeps every revision forever and never reads `metalraft_kv::MvccStore`,
//! so a store that loses, reorders or misreports history disagrees with it.
//! Leases are modeled too: which exist, which live key is attached to which
//! (a put attaches the key to its lease, or detaches it; a delete detaches
//! it), and a revoke deletes the attached keys in one revision, in key
//! order.
//!
//! [`check_node_event`] judges what one node's replica reported applying
//! (the live watch feed, `Event::Applied`), and [`check_node_revision`] the
//! node's revision and compact revision at its applied index.

use std::collections::{BTreeMap, BTreeSet};

use metalraft_core::{Index, NodeId};
use metalraft_kv::{
    Change, ChangeKind, Command, CompareResult, CompareTarget, DeleteRangeRequest, KeyValue,
    PutRequest, RequestOp, INITIAL_REVISION,
};

use super::Violation;

/// The first revision a write can have.
pub const FIRST_WRITE_REVISION: i64 = INITIAL_REVISION + 1;

/// Whether `key` is in the etcd key range `[start, end)`: `end` empty is the
/// single key `start`, `end == [0]` every key `>= start` (and `start ==
/// end == [0]` every key).
pub fn in_key_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    match end {
        [] => key == start,
        [0] => key >= start,
        _ => key >= start && key < end,
    }
}

/// The committed history: every revision's changes, and the revision and
/// compact revision after every applied index.
#[derive(Debug, Default)]
pub struct ReferenceHistory {
    /// Live keys at the newest revision.
    live: BTreeMap<Vec<u8>, KeyValue>,
    /// `revisions[r - FIRST_WRITE_REVISION]`: the changes of revision `r`
    /// and the index that made it.
    revisions: Vec<(Index, Vec<Change>)>,
    /// `after_index[i - 1]`: (revision, compact revision) after index `i`.
    after_index: Vec<(i64, i64)>,
    compact_revision: i64,
    /// Every accepted compaction's revision.
    compactions: BTreeSet<i64>,
    /// Lease → its attached live keys.
    leases: BTreeMap<i64, BTreeSet<Vec<u8>>>,
    /// Live key → its lease.
    attached: BTreeMap<Vec<u8>, i64>,
}

impl ReferenceHistory {
    /// The history of an empty store: revision 1, nothing applied.
    pub fn new() -> Self {
        ReferenceHistory::default()
    }

    /// The last applied index.
    pub fn applied_index(&self) -> Index {
        self.after_index.len() as Index
    }

    /// The newest revision.
    pub fn revision(&self) -> i64 {
        INITIAL_REVISION + self.revisions.len() as i64
    }

    /// The newest accepted compaction's revision (0 if none).
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// Whether a compaction to `revision` was committed and accepted.
    pub fn compacted_at(&self, revision: i64) -> bool {
        self.compactions.contains(&revision)
    }

    /// Accepted compactions so far.
    pub fn compactions(&self) -> usize {
        self.compactions.len()
    }

    /// (revision, compact revision) right after index `index` was applied
    /// (`(1, 0)` for index 0), if it was.
    pub fn after_index(&self, index: Index) -> Option<(i64, i64)> {
        match index {
            0 => Some((INITIAL_REVISION, 0)),
            i => self.after_index.get(usize::try_from(i - 1).ok()?).copied(),
        }
    }

    /// The changes of `revision`, if it exists.
    pub fn changes(&self, revision: i64) -> Option<&[Change]> {
        let i = usize::try_from(revision.checked_sub(FIRST_WRITE_REVISION)?).ok()?;
        self.revisions.get(i).map(|(_, c)| c.as_slice())
    }

    /// The index whose command made `revision`.
    pub fn index_of(&self, revision: i64) -> Option<Index> {
        let i = usize::try_from(revision.checked_sub(FIRST_WRITE_REVISION)?).ok()?;
        self.revisions.get(i).map(|&(i, _)| i)
    }

    /// Every change with a revision in `from..to` whose key is in
    /// `[key, range_end)`, in revision and sub-revision order.
    pub fn filtered<'a>(
        &'a self,
        key: &'a [u8],
        range_end: &'a [u8],
        from: i64,
        to: i64,
    ) -> impl Iterator<Item = &'a Change> + 'a {
        let end = self.revision() + 1;
        let lo = from.clamp(FIRST_WRITE_REVISION, end);
        let hi = to.clamp(lo, end);
        let (lo, hi) = (
            (lo - FIRST_WRITE_REVISION) as usize,
            (hi - FIRST_WRITE_REVISION) as usize,
        );
        self.revisions[lo..hi]
            .iter()
            .flat_map(|(_, c)| c.iter())
            .filter(move |c| in_key_range(&c.kv.key, key, range_end))
    }

    /// Whether `got` is the reference change `want`. `prev_kv` may be
    /// missing where the store no longer keeps the previous version
    /// (`revision - 1` below the newest compaction, which is never lower
    /// than the serving node's).
    pub fn same_change(&self, got: &Change, want: &Change) -> bool {
        if got.kind != want.kind || got.kv != want.kv {
            return false;
        }
        got.prev_kv == want.prev_kv
            || (got.prev_kv.is_none() && want.kv.mod_revision - 1 < self.compact_revision)
    }

    /// Applies the committed entry at `index`: `command` is its kv command
    /// (`None` for an entry without one: a no-op, a membership change). A
    /// command that does not decode changes nothing, as in the store.
    ///
    /// # Panics
    ///
    /// If `index` is not the next index (the caller feeds the committed log
    /// in order), or the command uses something the model does not know
    /// (the simulator's workload never does).
    pub fn apply(&mut self, index: Index, command: Option<&[u8]>) {
        assert_eq!(index, self.applied_index() + 1, "the log is fed in order");
        if let Some(cmd) = command.and_then(|c| Command::decode(c).ok()) {
            self.execute(index, &cmd);
        }
        self.after_index
            .push((self.revision(), self.compact_revision));
    }

    fn detach(&mut self, key: &[u8]) {
        if let Some(id) = self.attached.remove(key) {
            if let Some(keys) = self.leases.get_mut(&id) {
                keys.remove(key);
            }
        }
    }

    /// Whether lease `id` exists at the newest applied index.
    pub fn has_lease(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// Number of leases at the newest applied index.
    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }

    fn execute(&mut self, index: Index, cmd: &Command) {
        let mut w = Write::new(self.revision() + 1);
        match cmd {
            Command::Put(p) => w.put(&mut self.live, p),
            Command::DeleteRange(d) => w.delete(&mut self.live, d),
            Command::Txn(t) => {
                let ok = t.compare.iter().all(|c| {
                    assert!(c.range_end.is_empty(), "model: single-key compares only");
                    compare(self.live.get(&c.key), c.result, &c.target)
                });
                for op in if ok { &t.success } else { &t.failure } {
                    match op {
                        RequestOp::Put(p) => w.put(&mut self.live, p),
                        RequestOp::DeleteRange(d) => w.delete(&mut self.live, d),
                        RequestOp::Range(_) => {}
                        RequestOp::Txn(_) => panic!("model: the workload sends no nested txns"),
                    }
                }
            }
            Command::Compact(c) => {
                if c.revision <= self.revision() && c.revision > self.compact_revision {
                    self.compact_revision = c.revision;
                    self.compactions.insert(c.revision);
                }
            }
            Command::Range(_) => {}
            Command::LeaseGrant(g) => {
                assert!(g.id != 0, "model: the simulator chooses lease IDs");
                self.leases.entry(g.id).or_default();
            }
            Command::LeaseRevoke(r) => {
                for key in self.leases.remove(&r.id).unwrap_or_default() {
                    self.attached.remove(&key);
                    w.delete(
                        &mut self.live,
                        &DeleteRangeRequest {
                            key,
                            ..DeleteRangeRequest::default()
                        },
                    );
                }
            }
            Command::LeasePut(p, l) => {
                assert!(!l.ignore_lease, "model: ignore_lease is not used");
                if l.lease == 0 || self.leases.contains_key(&l.lease) {
                    w.put(&mut self.live, p);
                    self.detach(&p.key);
                    if l.lease != 0 {
                        self.attached.insert(p.key.clone(), l.lease);
                        self.leases
                            .entry(l.lease)
                            .or_default()
                            .insert(p.key.clone());
                    }
                }
            }
            Command::LeaseTxn(..) => panic!("model: the simulator's workload sends no lease txns"),
        }
        // A plain put or a delete detaches the key from its lease.
        if !matches!(cmd, Command::LeasePut(..) | Command::LeaseRevoke(_)) {
            for c in &w.changes {
                self.detach(&c.kv.key);
            }
        }
        if !w.changes.is_empty() {
            self.revisions.push((index, w.changes));
        }
    }
}

/// The changes of one write revision, and the live keys as they were before it.
struct Write {
    revision: i64,
    changes: Vec<Change>,
    /// The version of each key this revision changed, at `revision - 1`.
    before: BTreeMap<Vec<u8>, Option<KeyValue>>,
}

impl Write {
    fn new(revision: i64) -> Self {
        Write {
            revision,
            changes: Vec::new(),
            before: BTreeMap::new(),
        }
    }

    fn remember(&mut self, live: &BTreeMap<Vec<u8>, KeyValue>, key: &[u8]) -> Option<KeyValue> {
        self.before
            .entry(key.to_vec())
            .or_insert_with(|| live.get(key).cloned())
            .clone()
    }

    fn put(&mut self, live: &mut BTreeMap<Vec<u8>, KeyValue>, p: &PutRequest) {
        assert!(!p.ignore_value, "model: ignore_value is not used");
        let before = self.remember(live, &p.key);
        let kv = match live.get(&p.key) {
            Some(old) => KeyValue {
                key: p.key.clone(),
                create_revision: old.create_revision,
                mod_revision: self.revision,
                version: old.version + 1,
                value: p.value.clone(),
            },
            None => KeyValue {
                key: p.key.clone(),
                create_revision: self.revision,
                mod_revision: self.revision,
                version: 1,
                value: p.value.clone(),
            },
        };
        // etcd's prev_kv: the key at revision - 1, none for a creation.
        let prev_kv = if kv.create_revision == self.revision {
            None
        } else {
            before
        };
        live.insert(p.key.clone(), kv.clone());
        self.changes.push(Change {
            kind: ChangeKind::Put,
            kv,
            prev_kv,
            // The simulator's workload attaches no leases.
            lease: 0,
        });
    }

    fn delete(&mut self, live: &mut BTreeMap<Vec<u8>, KeyValue>, d: &DeleteRangeRequest) {
        let doomed: Vec<Vec<u8>> = live
            .keys()
            .filter(|k| in_key_range(k, &d.key, &d.range_end))
            .cloned()
            .collect();
        for key in doomed {
            let prev_kv = self.remember(live, &key);
            live.remove(&key);
            self.changes.push(Change {
                kind: ChangeKind::Delete,
                kv: KeyValue {
                    key,
                    mod_revision: self.revision,
                    ..KeyValue::default()
                },
                prev_kv,
                lease: 0,
            });
        }
    }
}

/// etcd's compare on one key (`None`: missing; a missing key's numbers are
/// 0 and any compare of its value fails).
fn compare(kv: Option<&KeyValue>, result: CompareResult, target: &CompareTarget) -> bool {
    use std::cmp::Ordering;
    let ord = match (target, kv) {
        (CompareTarget::Value(_), None) => return false,
        (CompareTarget::Value(v), Some(kv)) => kv.value.as_slice().cmp(v.as_slice()),
        (CompareTarget::Version(n), kv) => kv.map_or(0, |kv| kv.version).cmp(n),
        (CompareTarget::CreateRevision(n), kv) => kv.map_or(0, |kv| kv.create_revision).cmp(n),
        (CompareTarget::ModRevision(n), kv) => kv.map_or(0, |kv| kv.mod_revision).cmp(n),
        (CompareTarget::Lease(n), _) => 0.cmp(n),
    };
    match result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
        CompareResult::NotEqual => ord != Ordering::Equal,
    }
}

/// What a node's replica reported applying the entry at `index`: `event` is
/// `Some((revision, changes))` if it reported a watch event. It must report
/// one exactly when the committed entry made a revision, with that
/// revision's changes. `reference` must have applied `index`.
pub fn check_node_event(
    node: NodeId,
    reference: &ReferenceHistory,
    index: Index,
    event: Option<(i64, &[Change])>,
) -> Result<(), Violation> {
    let before = reference.after_index(index - 1).map(|(r, _)| r);
    let after = reference.after_index(index).map(|(r, _)| r);
    let made = (after != before).then_some(after).flatten();
    let fail = |what: String| {
        Err(Violation::NodeHistory {
            node,
            index,
            revision: made.or(event.map(|e| e.0)).unwrap_or(0),
            what,
        })
    };
    match (made, event) {
        (None, None) => Ok(()),
        (Some(r), None) => fail(format!(
            "no watch event for revision {r}, which this entry made"
        )),
        (None, Some((r, _))) => fail(format!(
            "a watch event for revision {r}, but the committed entry changed nothing"
        )),
        (Some(r), Some((got, _))) if got != r => fail(format!(
            "watch event for revision {got}, the committed entry made revision {r}"
        )),
        (Some(r), Some((_, changes))) => {
            let want = reference.changes(r).unwrap_or(&[]);
            let same = changes.len() == want.len()
                && changes
                    .iter()
                    .zip(want)
                    .all(|(g, w)| reference.same_change(g, w));
            if same {
                Ok(())
            } else {
                fail(format!(
                    "watch event changes {} differ from the committed {}",
                    describe(changes),
                    describe(want)
                ))
            }
        }
    }
}

/// A node's store is at `revision` with compact revision `compact` after
/// applying `index`: both must be the committed history's.
pub fn check_node_revision(
    node: NodeId,
    reference: &ReferenceHistory,
    index: Index,
    revision: i64,
    compact: i64,
) -> Result<(), Violation> {
    match reference.after_index(index) {
        Some(want) if want == (revision, compact) => Ok(()),
        want => Err(Violation::NodeHistory {
            node,
            index,
            revision,
            what: format!(
                "store at (revision {revision}, compact revision {compact}) after index {index}, committed history at {want:?}"
            ),
        }),
    }
}

/// Changes in short, for violation reports: `put k@rev v3` / `del k@rev`.
pub fn describe(changes: &[Change]) -> String {
    let items: Vec<String> = changes.iter().map(describe_one).collect();
    format!("[{}]", items.join(", "))
}

/// One change in short.
pub fn describe_one(c: &Change) -> String {
    let key = String::from_utf8_lossy(&c.kv.key);
    let prev = c
        .prev_kv
        .as_ref()
        .map_or(String::new(), |p| format!(" prev@{}", p.mod_revision));
    match c.kind {
        ChangeKind::Put => format!(
            "put {key}@{} v{} c{}{prev}",
            c.kv.mod_revision, c.kv.version, c.kv.create_revision
        ),
        ChangeKind::Delete => format!("del {key}@{}{prev}", c.kv.mod_revision),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metalraft_kv::{CompactionRequest, Compare, MvccStore, TxnRequest};

    fn put(k: &str, v: &str) -> Command {
        Command::Put(PutRequest {
            key: k.into(),
            value: v.into(),
            ..PutRequest::default()
        })
    }

    fn del(k: &str, end: &[u8]) -> Command {
        Command::DeleteRange(DeleteRangeRequest {
            key: k.into(),
            range_end: end.to_vec(),
            ..DeleteRangeRequest::default()
        })
    }

    /// The model agrees with the store on a mixed sequence: each
    /// revision's changes equal the store's `changes_at`.
    #[test]
    fn the_model_agrees_with_the_store() {
        let cmds = vec![
            put("a", "1"),
            put("b", "1"),
            put("a", "2"),
            del("a", b""),
            del("x", b""), // nothing deleted: no revision
            Command::Txn(TxnRequest {
                compare: vec![Compare::new(
                    b"b",
                    CompareResult::Equal,
                    CompareTarget::Version(1),
                )],
                success: vec![
                    RequestOp::Put(PutRequest {
                        key: b"a".to_vec(),
                        value: b"3".to_vec(),
                        ..PutRequest::default()
                    }),
                    RequestOp::Put(PutRequest {
                        key: b"c".to_vec(),
                        value: b"1".to_vec(),
                        ..PutRequest::default()
                    }),
                ],
                failure: vec![],
            }),
            Command::Compact(CompactionRequest { revision: 3 }),
            Command::Compact(CompactionRequest { revision: 2 }), // refused
            put("b", "2"),
            del("a", &[0]),
            Command::Compact(CompactionRequest { revision: 99 }), // future: refused
        ];
        let mut store = MvccStore::new();
        let mut model = ReferenceHistory::new();
        for (i, c) in cmds.iter().enumerate() {
            let index = i as Index + 1;
            let _ = store.apply(index, c);
            model.apply(index, Some(&c.encode()));
            assert_eq!(
                model.after_index(index),
                Some((store.revision(), store.compact_revision())),
                "after {c:?}"
            );
        }
        model.apply(cmds.len() as Index + 1, None);
        assert_eq!(model.revision(), store.revision());
        assert_eq!(model.compactions(), 1);
        assert!(model.compacted_at(3));
        for r in FIRST_WRITE_REVISION..=model.revision() {
            let want = model.changes(r).unwrap();
            let got = store.changes_at(r);
            if r < store.compact_revision() {
                continue;
            }
            assert_eq!(got.len(), want.len(), "revision {r}");
            for (g, w) in got.iter().zip(want) {
                assert!(model.same_change(g, w), "revision {r}: {g:?} vs {w:?}");
            }
        }
        // The range delete at the end removed b and c in key order.
        let last = model.changes(model.revision()).unwrap();
        assert_eq!(
            describe(last),
            "[del a@8 prev@6, del b@8 prev@7, del c@8 prev@6]"
        );
        let all: Vec<_> = model.filtered(b"a", &[0], 0, i64::MAX).collect();
        assert_eq!(all.len(), 10);
        let only_a: Vec<Change> = model.filtered(b"a", b"", 4, 7).cloned().collect();
        assert_eq!(
            describe(&only_a),
            "[put a@4 v2 c2 prev@2, del a@5 prev@4, put a@6 v1 c6]"
        );
    }

    #[test]
    fn node_events_are_judged_against_the_reference() {
        let mut model = ReferenceHistory::new();
        model.apply(1, Some(&put("a", "1").encode()));
        model.apply(2, None);
        let rev2 = model.changes(2).unwrap().to_vec();
        assert_eq!(check_node_event(1, &model, 1, Some((2, &rev2))), Ok(()));
        assert_eq!(check_node_event(1, &model, 2, None), Ok(()));
        assert!(
            check_node_event(1, &model, 1, None).is_err(),
            "missed event"
        );
        assert!(check_node_event(1, &model, 2, Some((2, &rev2))).is_err());
        let mut wrong = rev2.clone();
        wrong[0].kv.version = 2;
        assert!(check_node_event(1, &model, 1, Some((2, &wrong))).is_err());
        assert_eq!(check_node_revision(1, &model, 2, 2, 0), Ok(()));
        assert!(check_node_revision(1, &model, 2, 1, 0).is_err());
    }
}
