//! The MVCC store against a trivially simple reference that keeps a full
//! copy of the state at every revision and every revision's events, under
//! random puts, deletes (single, prefix, from-key), transactions and
//! compactions. After each step: reads at every revision from the compact
//! revision to the current one agree (kvs, count, more, with limits, sorts
//! and filters), older ones are compacted, watch replays from every kept
//! start revision agree (in any batch size), and snapshot + restore gives an
//! equal store.
//!
//! Stateless request validation is `Command::validate`'s, tested against an
//! independent model in `model.rs`; this reference reuses it.

use metalraft_kv::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use std::collections::BTreeMap;

mod strategies;
use strategies::*;

type State = BTreeMap<Vec<u8>, KeyValue>;
type R<T> = Result<T, RequestError>;

/// Every revision's full state and events.
struct Reference {
    /// `states[r]`: the state at revision `r` (index 0 unused).
    states: Vec<State>,
    /// `events[r]`: the changes made at revision `r`, `prev_kv` as it was.
    events: Vec<Vec<Change>>,
    compacted: i64,
}

fn selects(key: &[u8], end: &[u8], k: &[u8]) -> bool {
    match end {
        [] => k == key,
        [0] => k >= key,
        _ => k >= key && k < end,
    }
}

fn matching(state: &State, key: &[u8], end: &[u8]) -> Vec<KeyValue> {
    state
        .values()
        .filter(|kv| selects(key, end, &kv.key))
        .cloned()
        .collect()
}

/// etcd's range semantics by brute force.
fn read(state: &State, r: &RangeRequest, header: i64) -> RangeResponse {
    let all = matching(state, &r.key, &r.range_end);
    let count = all.len() as i64;
    let header = ResponseHeader { revision: header };
    if r.count_only {
        return RangeResponse {
            header,
            kvs: vec![],
            more: false,
            count,
        };
    }
    let bound = |min: i64, max: i64, v: i64| (min == 0 || v >= min) && (max == 0 || v <= max);
    let mut kvs: Vec<KeyValue> = all
        .into_iter()
        .filter(|kv| {
            bound(r.min_mod_revision, r.max_mod_revision, kv.mod_revision)
                && bound(
                    r.min_create_revision,
                    r.max_create_revision,
                    kv.create_revision,
                )
        })
        .collect();
    let descending = r.sort_order == SortOrder::Descend;
    if r.sort_target != SortTarget::Key || descending {
        let field = |kv: &KeyValue| -> (i64, Vec<u8>) {
            match r.sort_target {
                SortTarget::Key => (0, kv.key.clone()),
                SortTarget::Version => (kv.version, vec![]),
                SortTarget::Create => (kv.create_revision, vec![]),
                SortTarget::Mod => (kv.mod_revision, vec![]),
                SortTarget::Value => (0, kv.value.clone()),
            }
        };
        kvs.sort_by(|a, b| {
            let ord = field(a).cmp(&field(b));
            let ord = if descending { ord.reverse() } else { ord };
            ord.then(a.key.cmp(&b.key))
        });
    }
    let mut more = false;
    if r.limit > 0 && kvs.len() > r.limit as usize {
        kvs.truncate(r.limit as usize);
        more = true;
    }
    if r.keys_only {
        kvs.iter_mut().for_each(|kv| kv.value.clear());
    }
    RangeResponse {
        header,
        kvs,
        more,
        count,
    }
}

fn compare(state: &State, c: &Compare) -> bool {
    let found = matching(state, &c.key, &c.range_end);
    let test = |kv: &KeyValue| {
        let ord = match &c.target {
            CompareTarget::Version(v) => kv.version.cmp(v),
            CompareTarget::CreateRevision(v) => kv.create_revision.cmp(v),
            CompareTarget::ModRevision(v) => kv.mod_revision.cmp(v),
            CompareTarget::Lease(v) => 0i64.cmp(v),
            CompareTarget::Value(v) => kv.value.cmp(v),
        };
        match c.result {
            CompareResult::Equal => ord.is_eq(),
            CompareResult::NotEqual => ord.is_ne(),
            CompareResult::Less => ord.is_lt(),
            CompareResult::Greater => ord.is_gt(),
        }
    };
    if found.is_empty() {
        return !matches!(c.target, CompareTarget::Value(_)) && test(&KeyValue::default());
    }
    found.iter().all(test)
}

/// A revision being built: the working state and its events.
struct Draft {
    state: State,
    events: Vec<Change>,
}

impl Draft {
    fn put(&mut self, p: &PutRequest, rev: i64) -> PutResponse {
        let prev = self.state.get(&p.key).cloned();
        let next = match &prev {
            Some(old) => KeyValue {
                value: if p.ignore_value {
                    old.value.clone()
                } else {
                    p.value.clone()
                },
                mod_revision: rev,
                version: old.version + 1,
                ..old.clone()
            },
            None => KeyValue {
                key: p.key.clone(),
                create_revision: rev,
                mod_revision: rev,
                version: 1,
                value: p.value.clone(),
            },
        };
        self.state.insert(p.key.clone(), next.clone());
        self.events.push(Change {
            kind: ChangeKind::Put,
            kv: next,
            prev_kv: None,
            lease: 0,
        });
        PutResponse {
            header: ResponseHeader { revision: rev },
            prev_kv: if p.prev_kv { prev } else { None },
        }
    }

    fn delete(&mut self, d: &DeleteRangeRequest, rev: i64) -> DeleteRangeResponse {
        let gone = matching(&self.state, &d.key, &d.range_end);
        for kv in &gone {
            self.state.remove(&kv.key);
            self.events.push(Change {
                kind: ChangeKind::Delete,
                kv: KeyValue {
                    key: kv.key.clone(),
                    mod_revision: rev,
                    ..KeyValue::default()
                },
                prev_kv: None,
                lease: 0,
            });
        }
        DeleteRangeResponse {
            header: ResponseHeader { revision: rev },
            deleted: gone.len() as i64,
            prev_kvs: if d.prev_kv { gone } else { vec![] },
        }
    }
}

impl Reference {
    fn new() -> Self {
        Reference {
            states: vec![State::new(), State::new()],
            events: vec![vec![], vec![]],
            compacted: 0,
        }
    }

    fn rev(&self) -> i64 {
        self.states.len() as i64 - 1
    }

    fn draft(&self) -> Draft {
        Draft {
            state: self.states[self.states.len() - 1].clone(),
            events: vec![],
        }
    }

    /// Records the draft as the next revision if it changed anything. Each
    /// event's `prev_kv` is what etcd's watch server reports: the key at the
    /// revision before, none for a creation.
    fn commit(&mut self, mut d: Draft) {
        if d.events.is_empty() {
            return;
        }
        let before = &self.states[self.states.len() - 1];
        for e in &mut d.events {
            let created = e.kind == ChangeKind::Put && e.kv.version == 1;
            e.prev_kv = if created {
                None
            } else {
                before.get(&e.kv.key).cloned()
            };
        }
        self.states.push(d.state);
        self.events.push(d.events);
    }

    fn readable(&self, requested: i64, current: i64) -> R<i64> {
        if requested <= 0 {
            return Ok(current);
        }
        if requested > current {
            return Err(RequestError::FutureRevision { requested, current });
        }
        if requested < self.compacted {
            return Err(RequestError::Compacted {
                requested,
                oldest: self.compacted,
            });
        }
        Ok(requested)
    }

    fn range(&self, r: &RangeRequest) -> R<RangeResponse> {
        Command::Range(r.clone()).validate()?;
        let at = self.readable(r.revision, self.rev())?;
        Ok(read(&self.states[at as usize], r, self.rev()))
    }

    fn txn(&mut self, t: &TxnRequest) -> R<TxnResponse> {
        let start = self.rev();
        let now = &self.states[start as usize];
        let succeeded = t.compare.iter().all(|c| compare(now, c));
        let ops = if succeeded { &t.success } else { &t.failure };
        for op in ops {
            match op {
                RequestOp::Range(r) => {
                    self.readable(r.revision, start)?;
                }
                RequestOp::Put(p) if p.ignore_value && !now.contains_key(&p.key) => {
                    return Err(RequestError::KeyNotFound)
                }
                _ => {}
            }
        }
        let mut draft = self.draft();
        let rev = start + 1;
        let mut responses: Vec<ResponseOp> = ops
            .iter()
            .map(|op| match op {
                RequestOp::Range(r) if r.revision > 0 => {
                    ResponseOp::Range(read(&self.states[r.revision as usize], r, 0))
                }
                RequestOp::Range(r) => ResponseOp::Range(read(&draft.state, r, 0)),
                RequestOp::Put(p) => ResponseOp::Put(draft.put(p, rev)),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(draft.delete(d, rev)),
                RequestOp::Txn(_) => unreachable!("the strategies make no nested txns"),
            })
            .collect();
        // etcd counts changes, not net effect.
        let changed = !draft.events.is_empty();
        self.commit(draft);
        let header = ResponseHeader {
            revision: if changed { rev } else { start },
        };
        for r in &mut responses {
            match r {
                ResponseOp::Range(x) => x.header = header,
                ResponseOp::Put(x) => x.header = header,
                ResponseOp::DeleteRange(x) => x.header = header,
                ResponseOp::Txn(_) => unreachable!("the strategies make no nested txns"),
            }
        }
        Ok(TxnResponse {
            header,
            succeeded,
            responses,
        })
    }

    fn apply(&mut self, cmd: &Command) -> R<CommandResult> {
        cmd.validate()?;
        let rev = self.rev() + 1;
        match cmd {
            Command::Put(p) => {
                let mut draft = self.draft();
                if p.ignore_value && !draft.state.contains_key(&p.key) {
                    return Err(RequestError::KeyNotFound);
                }
                let resp = draft.put(p, rev);
                self.commit(draft);
                Ok(CommandResult::Put(resp))
            }
            Command::DeleteRange(d) => {
                let mut draft = self.draft();
                let mut resp = draft.delete(d, rev);
                self.commit(draft);
                resp.header.revision = self.rev();
                Ok(CommandResult::DeleteRange(resp))
            }
            Command::Txn(t) => self.txn(t).map(CommandResult::Txn),
            Command::Range(r) => self.range(r).map(CommandResult::Range),
            #[cfg(feature = "leases")]
            Command::LeaseGrant(_)
            | Command::LeaseRevoke(_)
            | Command::LeasePut(..)
            | Command::LeaseTxn(..) => unreachable!("lease commands are modelled in leases.rs"),
            Command::Compact(c) => {
                if c.revision > self.rev() {
                    return Err(RequestError::FutureRevision {
                        requested: c.revision,
                        current: self.rev(),
                    });
                }
                if c.revision <= self.compacted {
                    return Err(RequestError::Compacted {
                        requested: c.revision,
                        oldest: self.compacted,
                    });
                }
                self.compacted = c.revision;
                Ok(CommandResult::Compact(CompactionResponse {
                    header: ResponseHeader {
                        revision: self.rev(),
                    },
                }))
            }
        }
    }

    /// The watch events from `start` in `[key, end)`. The revision before
    /// the compact revision is gone, so events at the compact revision
    /// itself have no `prev_kv`.
    fn changes(&self, start: i64, key: &[u8], end: &[u8]) -> Vec<Change> {
        let mut out = vec![];
        for rev in start.max(1)..=self.rev() {
            for c in &self.events[rev as usize] {
                if selects(key, end, &c.kv.key) {
                    let mut c = c.clone();
                    if rev <= self.compacted {
                        c.prev_kv = None;
                    }
                    out.push(c);
                }
            }
        }
        out
    }
}

/// Reads checked at every kept revision after every step.
fn probes(extra: &RangeRequest) -> Vec<RangeRequest> {
    let all = RangeRequest::prefix(b"");
    vec![
        all.clone(),
        RangeRequest {
            limit: 1,
            ..all.clone()
        },
        RangeRequest {
            limit: 2,
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Mod,
            ..all.clone()
        },
        RangeRequest {
            count_only: true,
            ..all.clone()
        },
        RangeRequest::single(b"a"),
        RangeRequest::prefix(b"b"),
        extra.clone(),
    ]
}

/// Follows `changes` batch by batch from `start` to the end, checking each
/// batch's bounds.
fn replay(kv: &MvccStore, start: i64, key: &[u8], end: &[u8], max: usize) -> Vec<Change> {
    let mut out = vec![];
    let mut next = start;
    loop {
        let batch = kv
            .changes(next, key, end, max)
            .expect("kept start revision");
        let done = batch.next_revision > kv.revision();
        if !done {
            assert!(batch.changes.len() >= max.max(1), "short batch {batch:?}");
        }
        for c in &batch.changes {
            let rev = c.kv.mod_revision;
            assert!(
                rev >= next && rev < batch.next_revision,
                "{c:?} outside batch"
            );
        }
        // A batch never splits a revision.
        let after = kv.changes(batch.next_revision, key, end, usize::MAX);
        if let (Some(last), Ok(after)) = (batch.changes.last(), after) {
            assert!(after
                .changes
                .iter()
                .all(|c| c.kv.mod_revision > last.kv.mod_revision));
        }
        out.extend(batch.changes);
        if done {
            return out;
        }
        assert!(batch.next_revision > next, "no progress");
        next = batch.next_revision;
    }
}

fn check(kv: &MvccStore, reference: &Reference, extra: &RangeRequest, max: usize) {
    let current = reference.rev();
    let oldest = reference.compacted;
    assert_eq!(kv.revision(), current);
    assert_eq!(kv.compact_revision(), oldest);
    for rev in 1..=current {
        for probe in probes(extra) {
            let req = RangeRequest {
                revision: rev,
                ..probe
            };
            assert_eq!(kv.range(&req), reference.range(&req), "read {req:?}");
        }
    }
    for start in oldest.max(1)..=current + 1 {
        let got = replay(kv, start, b"\0", b"\0", max);
        assert_eq!(got, reference.changes(start, b"\0", b"\0"), "from {start}");
        let got = replay(kv, start, &extra.key, &extra.range_end, max);
        let want = reference.changes(start, &extra.key, &extra.range_end);
        assert_eq!(got, want, "from {start} in {extra:?}");
        let at = kv.changes_at(start);
        assert_eq!(
            at,
            reference
                .changes(start, b"\0", b"\0")
                .into_iter()
                .filter(|c| c.kv.mod_revision == start)
                .collect::<Vec<_>>()
        );
    }
    for start in 1..oldest {
        assert_eq!(
            kv.changes(start, b"\0", b"\0", max),
            Err(RequestError::Compacted {
                requested: start,
                oldest
            })
        );
    }
    let bytes = kv.snapshot();
    let restored = MvccStore::restore(&bytes).expect("own snapshot restores");
    assert_eq!(&restored, kv);
    assert_eq!(restored.snapshot(), bytes);
    for rev in oldest.max(1)..=current {
        assert_eq!(restored.hash_kv(rev), kv.hash_kv(rev));
    }
}

fn config(cases: u32) -> Config {
    Config {
        rng_seed: RngSeed::Fixed(0x6d76_6363),
        failure_persistence: None,
        ..Config::with_cases(cases)
    }
}

/// One step: a random command, or a compaction a few revisions behind the
/// current one (random compactions mostly miss the short history).
#[derive(Clone, Debug)]
enum Step {
    Run(Command),
    CompactBack(i64),
}

fn mvcc_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => command().prop_map(Step::Run),
        2 => put().prop_map(|p| Step::Run(Command::Put(p))),
        2 => (0i64..4).prop_map(Step::CompactBack),
    ]
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn mvcc_store_matches_reference(
        steps in prop::collection::vec((mvcc_step(), range(), 0usize..4), 1..30)
    ) {
        let mut kv = MvccStore::new();
        let mut reference = Reference::new();
        for (index, (step, extra, max)) in steps.iter().enumerate() {
            let cmd = &match step {
                Step::Run(cmd) => cmd.clone(),
                Step::CompactBack(back) => Command::Compact(CompactionRequest {
                    revision: kv.revision() - back,
                }),
            };
            let got = kv.apply(index as u64 + 1, cmd);
            let want = reference.apply(cmd).map_err(ApplyError::Rejected);
            prop_assert_eq!(got, want, "command {:?}", cmd);
            check(&kv, &reference, extra, *max);
        }
    }
}
