//! Random command sequences against an independent reference model: a plain
//! `BTreeMap` and linear scans, written from etcd's documented behaviour
//! rather than from the crate's code. Every result and the whole state are
//! compared after every step.

use metalraft_kv::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use std::collections::BTreeMap;

mod strategies;
use strategies::*;

#[derive(Clone, Debug, PartialEq)]
struct ModelKv {
    value: Vec<u8>,
    create: i64,
    modified: i64,
    version: i64,
}

#[derive(Clone, Debug)]
struct Model {
    kvs: BTreeMap<Vec<u8>, ModelKv>,
    rev: i64,
    compacted: i64,
}

/// etcd's range convention, by linear test.
fn selects(key: &[u8], end: &[u8], k: &[u8]) -> bool {
    match end {
        [] => k == key,
        [0] => k >= key,
        _ => k >= key && k < end,
    }
}

fn to_kv(k: &[u8], m: &ModelKv) -> KeyValue {
    KeyValue {
        key: k.to_vec(),
        create_revision: m.create,
        mod_revision: m.modified,
        version: m.version,
        value: m.value.clone(),
    }
}

type R<T> = Result<T, RequestError>;

impl Model {
    fn new() -> Self {
        Model {
            kvs: BTreeMap::new(),
            rev: 1,
            compacted: 0,
        }
    }

    fn all(&self) -> Vec<KeyValue> {
        self.kvs.iter().map(|(k, m)| to_kv(k, m)).collect()
    }

    fn matching(&self, key: &[u8], end: &[u8]) -> Vec<KeyValue> {
        self.all()
            .into_iter()
            .filter(|kv| selects(key, end, &kv.key))
            .collect()
    }

    fn size(&self) -> usize {
        self.kvs
            .iter()
            .map(|(k, m)| k.len() + m.value.len() + ENTRY_OVERHEAD_BYTES)
            .sum()
    }

    fn range(&self, r: &RangeRequest) -> R<RangeResponse> {
        if r.key.is_empty() {
            return Err(RequestError::EmptyKey);
        }
        if r.revision > self.rev {
            return Err(RequestError::FutureRevision {
                requested: r.revision,
                current: self.rev,
            });
        }
        if r.revision > 0 && r.revision < self.rev {
            return Err(RequestError::Compacted {
                requested: r.revision,
                oldest: self.rev,
            });
        }
        Ok(self.read(r))
    }

    /// A read without revision checks (inside a transaction).
    fn read(&self, r: &RangeRequest) -> RangeResponse {
        let all = self.matching(&r.key, &r.range_end);
        let count = all.len() as i64;
        let header = ResponseHeader { revision: self.rev };
        if r.count_only {
            return RangeResponse {
                header,
                kvs: vec![],
                more: false,
                count,
            };
        }
        let mut kvs: Vec<KeyValue> = all
            .into_iter()
            .filter(|kv| {
                (r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
                    && (r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
                    && (r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
                    && (r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
            })
            .collect();
        let descending = r.sort_order == SortOrder::Descend;
        let sorts = r.sort_target != SortTarget::Key || descending;
        if sorts {
            // Sort key: the target as bytes-comparable value, then the key.
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
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        RangeResponse {
            header,
            kvs,
            more,
            count,
        }
    }

    fn compare(&self, c: &Compare) -> bool {
        let found = self.matching(&c.key, &c.range_end);
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
            if matches!(c.target, CompareTarget::Value(_)) {
                return false;
            }
            return test(&KeyValue::default());
        }
        found.iter().all(test)
    }

    fn write(&mut self, p: &PutRequest, rev: i64) -> PutResponse {
        let prev = self.kvs.get(&p.key).cloned();
        let next = match &prev {
            Some(old) => ModelKv {
                value: if p.ignore_value {
                    old.value.clone()
                } else {
                    p.value.clone()
                },
                create: old.create,
                modified: rev,
                version: old.version + 1,
            },
            None => ModelKv {
                value: p.value.clone(),
                create: rev,
                modified: rev,
                version: 1,
            },
        };
        self.kvs.insert(p.key.clone(), next);
        PutResponse {
            header: ResponseHeader { revision: rev },
            prev_kv: if p.prev_kv {
                prev.map(|m| to_kv(&p.key, &m))
            } else {
                None
            },
        }
    }

    fn remove(&mut self, d: &DeleteRangeRequest) -> DeleteRangeResponse {
        let gone = self.matching(&d.key, &d.range_end);
        for kv in &gone {
            self.kvs.remove(&kv.key);
        }
        DeleteRangeResponse {
            header: ResponseHeader { revision: self.rev },
            deleted: gone.len() as i64,
            prev_kvs: if d.prev_kv { gone } else { vec![] },
        }
    }

    fn check_op(op: &RequestOp) -> R<()> {
        match op {
            RequestOp::Range(r) if r.key.is_empty() => Err(RequestError::EmptyKey),
            RequestOp::DeleteRange(d) if d.key.is_empty() => Err(RequestError::EmptyKey),
            RequestOp::Put(p) if p.key.is_empty() => Err(RequestError::EmptyKey),
            RequestOp::Put(p) if p.ignore_value && !p.value.is_empty() => {
                Err(RequestError::ValueProvided)
            }
            _ => Ok(()),
        }
    }

    fn check_duplicates(ops: &[RequestOp]) -> R<()> {
        let puts: Vec<&[u8]> = ops
            .iter()
            .filter_map(|op| match op {
                RequestOp::Put(p) => Some(p.key.as_slice()),
                _ => None,
            })
            .collect();
        for (i, k) in puts.iter().enumerate() {
            if puts[..i].contains(k) {
                return Err(RequestError::DuplicateKey);
            }
            for op in ops {
                if let RequestOp::DeleteRange(d) = op {
                    // etcd compares the interval literally: "\0" is just a byte.
                    let hit = if d.range_end.is_empty() {
                        d.key.as_slice() == *k
                    } else {
                        d.key.as_slice() <= *k && *k < d.range_end.as_slice()
                    };
                    if hit {
                        return Err(RequestError::DuplicateKey);
                    }
                }
            }
        }
        Ok(())
    }

    fn txn(&mut self, t: &TxnRequest) -> R<TxnResponse> {
        for op in t.success.iter().chain(&t.failure) {
            Self::check_op(op)?;
        }
        Self::check_duplicates(&t.success)?;
        Self::check_duplicates(&t.failure)?;
        let succeeded = t.compare.iter().all(|c| self.compare(c));
        let ops = if succeeded { &t.success } else { &t.failure };
        let start = self.rev;
        let mut wrote = false;
        for op in ops {
            match op {
                RequestOp::Range(r) if r.revision != 0 => {
                    if r.revision > start {
                        return Err(RequestError::FutureRevision {
                            requested: r.revision,
                            current: start,
                        });
                    }
                    if r.revision < start || wrote {
                        return Err(RequestError::Compacted {
                            requested: r.revision,
                            oldest: if wrote { start + 1 } else { start },
                        });
                    }
                }
                RequestOp::Put(p) => {
                    if p.ignore_value && !self.kvs.contains_key(&p.key) {
                        return Err(RequestError::KeyNotFound);
                    }
                    wrote = true;
                }
                RequestOp::DeleteRange(_) => wrote = true,
                RequestOp::Range(_) => {}
                RequestOp::Txn(_) => unreachable!("the strategies make no nested txns"),
            }
        }
        // etcd counts changes, not net effect: a put later deleted in the
        // same transaction still makes it a write.
        let mut responses: Vec<ResponseOp> = ops
            .iter()
            .map(|op| match op {
                RequestOp::Range(r) => ResponseOp::Range(self.read(r)),
                RequestOp::Put(p) => ResponseOp::Put(self.write(p, start + 1)),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.remove(d)),
                RequestOp::Txn(_) => unreachable!("the strategies make no nested txns"),
            })
            .collect();
        let changed = responses.iter().any(|r| match r {
            ResponseOp::Put(_) => true,
            ResponseOp::DeleteRange(d) => d.deleted > 0,
            ResponseOp::Range(_) | ResponseOp::Txn(_) => false,
        });
        if changed {
            self.rev = start + 1;
        }
        let header = ResponseHeader { revision: self.rev };
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
        match cmd {
            Command::Put(p) => {
                Self::check_op(&RequestOp::Put(p.clone()))?;
                if p.ignore_value && !self.kvs.contains_key(&p.key) {
                    return Err(RequestError::KeyNotFound);
                }
                let resp = self.write(p, self.rev + 1);
                self.rev += 1;
                Ok(CommandResult::Put(resp))
            }
            Command::DeleteRange(d) => {
                if d.key.is_empty() {
                    return Err(RequestError::EmptyKey);
                }
                let mut resp = self.remove(d);
                if resp.deleted > 0 {
                    self.rev += 1;
                }
                resp.header.revision = self.rev;
                Ok(CommandResult::DeleteRange(resp))
            }
            Command::Txn(t) => self.txn(t).map(CommandResult::Txn),
            Command::Range(r) => self.range(r).map(CommandResult::Range),
            // A KvStore has no leases.
            #[cfg(feature = "leases")]
            Command::LeaseGrant(_)
            | Command::LeaseRevoke(_)
            | Command::LeasePut(..)
            | Command::LeaseTxn(..) => Err(RequestError::LeaseNotFound),
            Command::Compact(c) => {
                if c.revision > self.rev {
                    return Err(RequestError::FutureRevision {
                        requested: c.revision,
                        current: self.rev,
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
                    header: ResponseHeader { revision: self.rev },
                }))
            }
        }
    }
}

fn assert_same_state(kv: &KvStore, model: &Model) {
    let everything = RangeRequest::prefix(b"");
    assert_eq!(kv.range(&everything).unwrap().kvs, model.all());
    assert_eq!(kv.revision(), model.rev);
    assert_eq!(kv.compact_revision(), model.compacted);
    assert_eq!(kv.len(), model.kvs.len());
    assert_eq!(kv.size_bytes(), model.size());
}

fn config(cases: u32) -> Config {
    Config {
        rng_seed: RngSeed::Fixed(0x6d72_6b76),
        failure_persistence: None,
        ..Config::with_cases(cases)
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn store_matches_model(steps in prop::collection::vec(step(), 1..40)) {
        let mut kv = KvStore::new();
        let mut model = Model::new();
        let mut index = 0u64;
        for s in &steps {
            if s.replay_stale && index > 0 {
                let before = kv.clone();
                prop_assert_eq!(
                    kv.apply(index, &s.cmd),
                    Err(ApplyError::AlreadyApplied { index, applied_index: index })
                );
                prop_assert_eq!(&kv, &before);
            }
            index += s.index_gap;
            let got = kv.apply(index, &s.cmd);
            let want = model.apply(&s.cmd).map_err(ApplyError::Rejected);
            prop_assert_eq!(got, want, "command {:?}", s.cmd);
            prop_assert_eq!(kv.applied_index(), index);
            prop_assert_eq!(kv.range(&s.read), model.range(&s.read), "read {:?}", s.read);
            assert_same_state(&kv, &model);
        }
    }
}
