//! One test per command and etcd edge case, through the public API only.

use metalraft_kv::*;

/// A store plus the next log index, so tests read as a list of commands.
struct Node {
    kv: KvStore,
    next_index: u64,
}

impl Node {
    fn new() -> Self {
        Node {
            kv: KvStore::new(),
            next_index: 1,
        }
    }

    fn apply(&mut self, cmd: Command) -> Result<CommandResult, RequestError> {
        let index = self.next_index;
        self.next_index += 1;
        match self.kv.apply(index, &cmd) {
            Ok(r) => Ok(r),
            Err(ApplyError::Rejected(e)) => Err(e),
            Err(e) => panic!("unexpected {e:?}"),
        }
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> PutResponse {
        match self.apply(put(key, value)) {
            Ok(CommandResult::Put(r)) => r,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn delete(&mut self, req: DeleteRangeRequest) -> DeleteRangeResponse {
        match self.apply(Command::DeleteRange(req)) {
            Ok(CommandResult::DeleteRange(r)) => r,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn txn(&mut self, txn: TxnRequest) -> TxnResponse {
        match self.apply(Command::Txn(txn)) {
            Ok(CommandResult::Txn(r)) => r,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn get(&self, key: &[u8]) -> Option<KeyValue> {
        let resp = self.kv.range(&RangeRequest::single(key)).unwrap();
        assert!(resp.kvs.len() <= 1);
        resp.kvs.into_iter().next()
    }

    fn keys(&self, req: RangeRequest) -> Vec<Vec<u8>> {
        let resp = self.kv.range(&req).unwrap();
        resp.kvs.into_iter().map(|kv| kv.key).collect()
    }
}

fn put(key: &[u8], value: &[u8]) -> Command {
    Command::Put(put_req(key, value))
}

fn put_req(key: &[u8], value: &[u8]) -> PutRequest {
    PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        ..Default::default()
    }
}

fn del_req(key: &[u8], range_end: &[u8]) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: key.to_vec(),
        range_end: range_end.to_vec(),
        prev_kv: false,
    }
}

fn range_req(key: &[u8], range_end: &[u8]) -> RangeRequest {
    RangeRequest {
        key: key.to_vec(),
        range_end: range_end.to_vec(),
        ..Default::default()
    }
}

fn with_abcde() -> Node {
    let mut n = Node::new();
    for k in [b"a", b"b", b"c", b"d", b"e"] {
        n.put(k, b"v");
    }
    n
}

fn keys(list: &[&[u8]]) -> Vec<Vec<u8>> {
    list.iter().map(|k| k.to_vec()).collect()
}

#[test]
fn empty_store_is_at_revision_one() {
    let n = Node::new();
    assert_eq!(n.kv.revision(), 1);
    assert_eq!(n.kv.applied_index(), 0);
    assert_eq!(n.kv.len(), 0);
    assert!(n.kv.is_empty());
    assert_eq!(n.kv.size_bytes(), 0);
    let r = n.kv.range(&RangeRequest::prefix(b"")).unwrap();
    assert_eq!((r.count, r.kvs.len(), r.header.revision), (0, 0, 1));
}

#[test]
fn put_sets_revisions_and_version() {
    let mut n = Node::new();
    let r = n.put(b"k", b"v1");
    assert_eq!(r.header.revision, 2);
    assert_eq!(r.prev_kv, None);
    n.put(b"other", b"x");
    n.put(b"k", b"v2");
    let kv = n.get(b"k").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 4, 2));
    assert_eq!(kv.value, b"v2");
    assert_eq!(n.kv.revision(), 4);
}

#[test]
fn put_with_same_value_still_bumps_revision_and_version() {
    let mut n = Node::new();
    n.put(b"k", b"v");
    n.put(b"k", b"v");
    assert_eq!(n.kv.revision(), 3);
    assert_eq!(n.get(b"k").unwrap().version, 2);
}

#[test]
fn put_prev_kv_returns_previous_pair() {
    let mut n = Node::new();
    let mut req = put_req(b"k", b"v1");
    req.prev_kv = true;
    let Ok(CommandResult::Put(first)) = n.apply(Command::Put(req.clone())) else {
        panic!()
    };
    assert_eq!(first.prev_kv, None, "no previous pair for a new key");
    req.value = b"v2".to_vec();
    let Ok(CommandResult::Put(second)) = n.apply(Command::Put(req)) else {
        panic!()
    };
    let prev = second.prev_kv.unwrap();
    assert_eq!(prev.value, b"v1");
    assert_eq!(
        (prev.create_revision, prev.mod_revision, prev.version),
        (2, 2, 1)
    );
}

#[test]
fn put_ignore_value_keeps_value_and_needs_existing_key() {
    let mut n = Node::new();
    let mut req = put_req(b"k", b"");
    req.ignore_value = true;
    assert_eq!(
        n.apply(Command::Put(req.clone())),
        Err(RequestError::KeyNotFound)
    );
    assert_eq!(n.kv.revision(), 1);
    n.put(b"k", b"keep");
    n.apply(Command::Put(req.clone())).unwrap();
    let kv = n.get(b"k").unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.version, kv.mod_revision),
        (&b"keep"[..], 2, 3)
    );
    req.value = b"x".to_vec();
    assert_eq!(n.apply(Command::Put(req)), Err(RequestError::ValueProvided));
}

#[test]
fn version_resets_when_key_is_deleted_and_recreated() {
    let mut n = Node::new();
    n.put(b"k", b"1");
    n.put(b"k", b"2");
    assert_eq!(n.get(b"k").unwrap().version, 2);
    n.delete(del_req(b"k", b""));
    assert_eq!(n.get(b"k"), None);
    n.put(b"k", b"3");
    let kv = n.get(b"k").unwrap();
    assert_eq!((kv.version, kv.create_revision, kv.mod_revision), (1, 5, 5));
}

#[test]
fn delete_of_missing_key_does_not_bump_revision() {
    let mut n = Node::new();
    n.put(b"a", b"1");
    let r = n.delete(del_req(b"zzz", b""));
    assert_eq!((r.deleted, r.header.revision), (0, 2));
    let r = n.delete(del_req(b"x", b"y"));
    assert_eq!((r.deleted, r.header.revision), (0, 2));
    assert_eq!(n.kv.revision(), 2);
}

#[test]
fn delete_range_half_open_with_prev_kvs() {
    let mut n = with_abcde();
    let mut req = del_req(b"b", b"d");
    req.prev_kv = true;
    let r = n.delete(req);
    assert_eq!(r.deleted, 2);
    assert_eq!(r.header.revision, 7, "one revision for the whole range");
    let prev: Vec<_> = r.prev_kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(prev, keys(&[b"b", b"c"]));
    assert_eq!(n.keys(RangeRequest::prefix(b"")), keys(&[b"a", b"d", b"e"]));
}

#[test]
fn delete_range_with_nul_end_deletes_every_key_from_key_on() {
    let mut n = with_abcde();
    let r = n.delete(del_req(b"c", b"\0"));
    assert_eq!(r.deleted, 3);
    assert_eq!(n.keys(RangeRequest::prefix(b"")), keys(&[b"a", b"b"]));
    // key "\0" with end "\0" is "everything".
    let r = n.delete(del_req(b"\0", b"\0"));
    assert_eq!(r.deleted, 2);
    assert!(n.kv.is_empty());
}

#[test]
fn delete_by_prefix() {
    let mut n = Node::new();
    for k in [&b"/a"[..], b"/a/1", b"/a/2", b"/ab", b"/b", b"/a\xff"] {
        n.put(k, b"v");
    }
    let r = n.delete(del_req(b"/a/", &prefix_end(b"/a/")));
    assert_eq!(r.deleted, 2);
    assert_eq!(
        n.keys(RangeRequest::prefix(b"/")),
        keys(&[b"/a", b"/ab", b"/a\xff", b"/b"])
    );
}

#[test]
fn prefix_end_matches_etcd_clients() {
    assert_eq!(prefix_end(b"abc"), b"abd");
    assert_eq!(prefix_end(b"ab\xff"), b"ac");
    assert_eq!(prefix_end(b"\xff"), b"\0");
    assert_eq!(prefix_end(b""), b"\0");
    assert_eq!(RangeRequest::prefix(b"").key, b"\0");
}

#[test]
fn range_limit_more_and_count() {
    let n = with_abcde();
    let mut req = RangeRequest::prefix(b"");
    req.limit = 2;
    let r = n.kv.range(&req).unwrap();
    assert_eq!(r.kvs.len(), 2);
    assert!(r.more);
    assert_eq!(r.count, 5, "count ignores the limit");
    req.limit = 5;
    let r = n.kv.range(&req).unwrap();
    assert!(!r.more, "exactly limit pairs is not more");
    req.limit = -3;
    let r = n.kv.range(&req).unwrap();
    assert_eq!(
        (r.kvs.len(), r.more),
        (5, false),
        "negative limit is no limit"
    );
}

#[test]
fn range_count_only_and_keys_only() {
    let n = with_abcde();
    let mut req = range_req(b"b", b"e");
    req.count_only = true;
    req.limit = 1;
    let r = n.kv.range(&req).unwrap();
    assert_eq!((r.count, r.kvs.len(), r.more), (3, 0, false));
    let mut req = range_req(b"b", b"e");
    req.keys_only = true;
    let r = n.kv.range(&req).unwrap();
    assert_eq!(r.kvs.len(), 3);
    assert!(r
        .kvs
        .iter()
        .all(|kv| kv.value.is_empty() && kv.version == 1));
}

#[test]
fn range_conventions() {
    let n = with_abcde();
    assert_eq!(n.keys(range_req(b"c", b"\0")), keys(&[b"c", b"d", b"e"]));
    assert_eq!(n.keys(range_req(b"c", b"")), keys(&[b"c"]));
    assert_eq!(n.keys(range_req(b"cc", b"")), keys(&[]));
    assert_eq!(
        n.keys(range_req(b"d", b"b")),
        keys(&[]),
        "inverted range is empty"
    );
    assert_eq!(n.keys(range_req(b"b", b"b")), keys(&[]));
    assert_eq!(n.keys(range_req(b"\0", b"\0")).len(), 5);
}

#[test]
fn range_revision_rules() {
    let n = with_abcde();
    let current = n.kv.revision();
    for ok in [0, -1, current] {
        let mut req = RangeRequest::single(b"a");
        req.revision = ok;
        assert_eq!(n.kv.range(&req).unwrap().kvs.len(), 1, "revision {ok}");
    }
    let mut req = RangeRequest::single(b"a");
    req.revision = current - 1;
    assert_eq!(
        n.kv.range(&req),
        Err(RequestError::Compacted {
            requested: current - 1,
            oldest: current
        })
    );
    req.revision = current + 1;
    assert_eq!(
        n.kv.range(&req),
        Err(RequestError::FutureRevision {
            requested: current + 1,
            current
        })
    );
}

#[test]
fn range_rejects_empty_and_oversized_keys() {
    let n = Node::new();
    assert_eq!(
        n.kv.range(&RangeRequest::default()),
        Err(RequestError::EmptyKey)
    );
    let big = vec![b'k'; MAX_KEY_BYTES + 1];
    assert_eq!(
        n.kv.range(&RangeRequest::single(&big)),
        Err(RequestError::KeyTooLarge { len: big.len() })
    );
    assert_eq!(
        n.kv.range(&range_req(b"a", &big)),
        Err(RequestError::KeyTooLarge { len: big.len() })
    );
}

#[test]
fn range_sorting_matches_etcd() {
    let mut n = Node::new();
    n.put(b"a", b"3");
    n.put(b"b", b"1");
    n.put(b"c", b"2");
    n.put(b"b", b"1"); // b: version 2, highest mod revision
    let sorted = |order, target| {
        let mut req = RangeRequest::prefix(b"");
        req.sort_order = order;
        req.sort_target = target;
        n.keys(req)
    };
    use SortOrder::*;
    use SortTarget::*;
    assert_eq!(sorted(None, Key), keys(&[b"a", b"b", b"c"]));
    assert_eq!(sorted(Descend, Key), keys(&[b"c", b"b", b"a"]));
    assert_eq!(
        sorted(None, Value),
        keys(&[b"b", b"c", b"a"]),
        "non-key target defaults to ascend"
    );
    assert_eq!(sorted(Descend, Mod), keys(&[b"b", b"c", b"a"]));
    assert_eq!(sorted(Ascend, Create), keys(&[b"a", b"b", b"c"]));
    assert_eq!(
        sorted(Descend, Version),
        keys(&[b"b", b"a", b"c"]),
        "ties stay in key order"
    );
    // etcd sorts the whole range before applying the limit.
    let mut req = RangeRequest::prefix(b"");
    req.sort_order = Descend;
    req.sort_target = Value;
    req.limit = 1;
    let r = n.kv.range(&req).unwrap();
    assert_eq!(
        (r.kvs[0].key.as_slice(), r.more, r.count),
        (&b"a"[..], true, 3)
    );
}

#[test]
fn range_revision_filters_prune_but_do_not_change_count() {
    let n = with_abcde(); // a..e at mod revisions 2..6
    let mut req = RangeRequest::prefix(b"");
    req.min_mod_revision = 3;
    req.max_mod_revision = 5;
    let r = n.kv.range(&req).unwrap();
    let got: Vec<_> = r.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(got, keys(&[b"b", b"c", b"d"]));
    assert_eq!(r.count, 5);
    let mut req = RangeRequest::prefix(b"");
    req.min_create_revision = 6;
    assert_eq!(n.keys(req), keys(&[b"e"]));
    let mut req = RangeRequest::prefix(b"");
    req.max_create_revision = 2;
    assert_eq!(n.keys(req), keys(&[b"a"]));
}

fn cmp(key: &[u8], result: CompareResult, target: CompareTarget) -> Compare {
    Compare::new(key, result, target)
}

fn cmp_holds(n: &mut Node, c: Compare) -> bool {
    let before = n.kv.revision();
    let r = n.txn(TxnRequest {
        compare: vec![c],
        ..Default::default()
    });
    assert_eq!(n.kv.revision(), before, "an empty txn writes nothing");
    r.succeeded
}

#[test]
fn txn_compares_on_missing_key_match_etcd() {
    use CompareResult::*;
    use CompareTarget::*;
    let mut n = Node::new();
    n.put(b"present", b"v");
    assert!(cmp_holds(&mut n, cmp(b"missing", Equal, Version(0))));
    assert!(cmp_holds(&mut n, cmp(b"missing", Equal, CreateRevision(0))));
    assert!(cmp_holds(&mut n, cmp(b"missing", Equal, ModRevision(0))));
    assert!(cmp_holds(&mut n, cmp(b"missing", Equal, Lease(0))));
    assert!(cmp_holds(&mut n, cmp(b"missing", Less, Version(1))));
    assert!(!cmp_holds(&mut n, cmp(b"missing", Greater, Version(0))));
    // A value compare on a missing key fails whatever the operator.
    for result in [Equal, NotEqual, Less, Greater] {
        assert!(!cmp_holds(&mut n, cmp(b"missing", result, Value(vec![]))));
        assert!(!cmp_holds(
            &mut n,
            cmp(b"missing", result, Value(b"v".to_vec()))
        ));
    }
    assert!(
        !cmp_holds(&mut n, cmp(b"", Equal, Value(vec![]))),
        "empty compare key is missing"
    );
}

#[test]
fn txn_compares_on_present_key() {
    use CompareResult::*;
    use CompareTarget::*;
    let mut n = Node::new();
    n.put(b"k", b"m");
    n.put(b"k", b"m"); // version 2, create 2, mod 3
    assert!(cmp_holds(&mut n, cmp(b"k", Equal, Version(2))));
    assert!(cmp_holds(&mut n, cmp(b"k", NotEqual, Version(1))));
    assert!(cmp_holds(&mut n, cmp(b"k", Greater, CreateRevision(1))));
    assert!(cmp_holds(&mut n, cmp(b"k", Equal, ModRevision(3))));
    assert!(cmp_holds(&mut n, cmp(b"k", Less, Value(b"n".to_vec()))));
    assert!(cmp_holds(&mut n, cmp(b"k", Greater, Value(b"l".to_vec()))));
    assert!(cmp_holds(&mut n, cmp(b"k", Greater, Value(vec![]))));
    assert!(!cmp_holds(&mut n, cmp(b"k", Equal, Value(b"x".to_vec()))));
    assert!(cmp_holds(&mut n, cmp(b"k", Equal, Lease(0))));
}

#[test]
fn txn_compare_over_range_must_hold_for_every_key() {
    use CompareResult::*;
    use CompareTarget::*;
    let mut n = with_abcde();
    n.put(b"c", b"v"); // c at version 2
    let over = |key: &[u8], end: &[u8], result, target| Compare {
        range_end: end.to_vec(),
        ..cmp(key, result, target)
    };
    assert!(cmp_holds(&mut n, over(b"a", b"c", Equal, Version(1))));
    assert!(!cmp_holds(&mut n, over(b"a", b"d", Equal, Version(1))));
    assert!(cmp_holds(&mut n, over(b"a", b"\0", Greater, Version(0))));
    assert!(cmp_holds(
        &mut n,
        over(b"a", b"\0", Equal, Value(b"v".to_vec()))
    ));
    // An empty range compares like a missing key.
    assert!(cmp_holds(&mut n, over(b"x", b"z", Equal, Version(0))));
    assert!(!cmp_holds(
        &mut n,
        over(b"x", b"z", NotEqual, Value(b"q".to_vec()))
    ));
}

#[test]
fn txn_is_one_revision_and_picks_a_branch() {
    use CompareResult::*;
    use CompareTarget::*;
    let mut n = Node::new();
    n.put(b"gone", b"x");
    let txn = |expect_version| TxnRequest {
        compare: vec![cmp(b"a", Equal, Version(expect_version))],
        success: vec![
            RequestOp::Put(put_req(b"a", b"1")),
            RequestOp::Put(put_req(b"b", b"2")),
            RequestOp::DeleteRange(del_req(b"gone", b"")),
            RequestOp::Range(RangeRequest::prefix(b"")),
        ],
        failure: vec![RequestOp::Range(RangeRequest::single(b"a"))],
    };
    let r = n.txn(txn(0));
    assert!(r.succeeded);
    assert_eq!(r.header.revision, 3);
    assert_eq!(n.kv.revision(), 3);
    for k in [b"a", b"b"] {
        let kv = n.get(k).unwrap();
        assert_eq!((kv.mod_revision, kv.create_revision), (3, 3));
    }
    assert_eq!(r.responses.len(), 4);
    let ResponseOp::Range(read) = &r.responses[3] else {
        panic!()
    };
    let seen: Vec<_> = read.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(
        seen,
        keys(&[b"a", b"b"]),
        "a read sees the txn's earlier writes"
    );
    assert!(read.kvs.iter().all(|kv| kv.mod_revision == 3));
    let ResponseOp::DeleteRange(d) = &r.responses[2] else {
        panic!()
    };
    assert_eq!(d.deleted, 1);
    assert!(r.responses.iter().all(|op| match op {
        ResponseOp::Range(x) => x.header.revision == 3,
        ResponseOp::Put(x) => x.header.revision == 3,
        ResponseOp::DeleteRange(x) => x.header.revision == 3,
        ResponseOp::Txn(_) => false,
    }));
    // Now the compare fails: the read-only failure branch bumps nothing.
    let r = n.txn(txn(0));
    assert!(!r.succeeded);
    assert_eq!(r.responses.len(), 1);
    assert_eq!(n.kv.revision(), 3);
}

#[test]
fn txn_whose_deletes_delete_nothing_does_not_bump_revision() {
    let mut n = Node::new();
    n.put(b"a", b"1");
    let r = n.txn(TxnRequest {
        success: vec![RequestOp::DeleteRange(del_req(b"x", b"\0"))],
        ..Default::default()
    });
    assert!(r.succeeded);
    assert_eq!(r.header.revision, 2);
    assert_eq!(n.kv.revision(), 2);
}

#[test]
fn txn_rejects_duplicate_keys_like_etcd() {
    let mut n = Node::new();
    let branch = |ops: Vec<RequestOp>| {
        Command::Txn(TxnRequest {
            success: ops,
            ..Default::default()
        })
    };
    let p = |k: &[u8]| RequestOp::Put(put_req(k, b"v"));
    let d = |k: &[u8], e: &[u8]| RequestOp::DeleteRange(del_req(k, e));
    for ops in [
        vec![p(b"a"), p(b"a")],
        vec![p(b"b"), d(b"b", b"")],
        vec![d(b"a", b"c"), p(b"b")],
    ] {
        assert_eq!(n.apply(branch(ops)), Err(RequestError::DuplicateKey));
    }
    // Allowed: distinct keys, a put outside the deleted interval, overlapping
    // deletes, and (etcd quirk) a put under a "\0"-ended delete.
    for ops in [
        vec![p(b"a"), p(b"b")],
        vec![d(b"a", b"c"), p(b"c")],
        vec![d(b"a", b"c"), d(b"b", b"d")],
        vec![d(b"a", b"\0"), p(b"b")],
    ] {
        assert!(n.apply(branch(ops)).is_ok());
    }
    assert_eq!(
        n.get(b"b").unwrap().value,
        b"v",
        "the put after the delete wins"
    );
}

#[test]
fn refused_txn_changes_nothing_but_consumes_its_index() {
    let mut n = with_abcde();
    let before = n.kv.clone();
    let mut ignore = put_req(b"missing", b"");
    ignore.ignore_value = true;
    let cmd = Command::Txn(TxnRequest {
        success: vec![
            RequestOp::Put(put_req(b"a", b"new")),
            RequestOp::Put(ignore),
        ],
        ..Default::default()
    });
    assert_eq!(n.apply(cmd), Err(RequestError::KeyNotFound));
    assert_eq!(n.kv.applied_index(), before.applied_index() + 1);
    assert_eq!(
        n.kv.snapshot()[..],
        {
            let mut b = before.clone();
            b.mark_applied(n.kv.applied_index()).unwrap();
            b.snapshot()
        }[..]
    );
}

#[test]
fn txn_range_revisions() {
    let mut n = with_abcde();
    let start = n.kv.revision();
    let read_at = |rev| {
        let mut r = RangeRequest::single(b"a");
        r.revision = rev;
        RequestOp::Range(r)
    };
    let run = |n: &mut Node, ops| {
        n.apply(Command::Txn(TxnRequest {
            success: ops,
            ..Default::default()
        }))
    };
    assert!(run(&mut n, vec![read_at(start)]).is_ok());
    assert!(run(
        &mut n,
        vec![read_at(0), RequestOp::Put(put_req(b"z", b"1")), read_at(0)]
    )
    .is_ok());
    let start = n.kv.revision();
    assert_eq!(
        run(&mut n, vec![read_at(start + 1)]),
        Err(RequestError::FutureRevision {
            requested: start + 1,
            current: start
        })
    );
    assert_eq!(
        run(&mut n, vec![read_at(-1)]),
        Err(RequestError::Compacted {
            requested: -1,
            oldest: start
        })
    );
    // Reading the start revision after a write would need history.
    assert_eq!(
        run(
            &mut n,
            vec![RequestOp::Put(put_req(b"y", b"1")), read_at(start)]
        ),
        Err(RequestError::Compacted {
            requested: start,
            oldest: start + 1
        })
    );
    assert_eq!(n.kv.revision(), start);
    assert_eq!(n.get(b"y"), None);
}

#[test]
fn txn_rejects_too_many_ops() {
    let mut n = Node::new();
    let ops: Vec<_> = (0..=MAX_TXN_OPS)
        .map(|i| RequestOp::Range(RangeRequest::single(format!("k{i}").as_bytes())))
        .collect();
    let cmd = Command::Txn(TxnRequest {
        success: ops.clone(),
        ..Default::default()
    });
    assert_eq!(
        n.apply(cmd),
        Err(RequestError::TooManyOps {
            len: MAX_TXN_OPS + 1
        })
    );
    let cmd = Command::Txn(TxnRequest {
        success: ops[..MAX_TXN_OPS].to_vec(),
        ..Default::default()
    });
    assert!(n.apply(cmd).is_ok());
}

#[test]
fn request_limits_are_enforced() {
    let mut n = Node::new();
    assert_eq!(n.apply(put(b"", b"v")), Err(RequestError::EmptyKey));
    let big_key = vec![1u8; MAX_KEY_BYTES + 1];
    assert_eq!(
        n.apply(put(&big_key, b"v")),
        Err(RequestError::KeyTooLarge {
            len: MAX_KEY_BYTES + 1
        })
    );
    let big_value = vec![1u8; MAX_VALUE_BYTES + 1];
    assert_eq!(
        n.apply(put(b"k", &big_value)),
        Err(RequestError::ValueTooLarge {
            len: MAX_VALUE_BYTES + 1
        })
    );
    let half = vec![1u8; MAX_REQUEST_BYTES / 2 + 1];
    let cmd = Command::Txn(TxnRequest {
        success: vec![
            RequestOp::Put(put_req(b"a", &half)),
            RequestOp::Put(put_req(b"b", &half)),
        ],
        ..Default::default()
    });
    assert!(matches!(
        n.apply(cmd),
        Err(RequestError::RequestTooLarge { .. })
    ));
    assert_eq!(
        n.apply(Command::DeleteRange(del_req(b"", b""))),
        Err(RequestError::EmptyKey)
    );
    assert_eq!(n.kv.revision(), 1);
    assert!(n.kv.is_empty());
}

#[test]
fn compact_is_recorded_and_checked_like_etcd() {
    let mut n = with_abcde();
    let current = n.kv.revision();
    let compact = |rev| Command::Compact(CompactionRequest { revision: rev });
    assert_eq!(
        n.apply(compact(current + 1)),
        Err(RequestError::FutureRevision {
            requested: current + 1,
            current
        })
    );
    let Ok(CommandResult::Compact(r)) = n.apply(compact(3)) else {
        panic!()
    };
    assert_eq!(r.header.revision, current);
    assert_eq!(n.kv.compact_revision(), 3);
    assert_eq!(
        n.apply(compact(3)),
        Err(RequestError::Compacted {
            requested: 3,
            oldest: 3
        })
    );
    assert!(n.apply(compact(current)).is_ok());
    assert_eq!(n.kv.revision(), current, "compaction is not a write");
    assert_eq!(n.kv.len(), 5, "no data is dropped");
}

#[test]
fn range_command_through_the_log_reads_without_writing() {
    let mut n = with_abcde();
    let Ok(CommandResult::Range(r)) = n.apply(Command::Range(RangeRequest::prefix(b""))) else {
        panic!()
    };
    assert_eq!((r.count, r.header.revision), (5, 6));
    assert_eq!(n.kv.revision(), 6);
}

#[test]
fn applied_index_rules() {
    let mut kv = KvStore::new();
    let cmd = put(b"k", b"v");
    assert_eq!(
        kv.apply(0, &cmd),
        Err(ApplyError::AlreadyApplied {
            index: 0,
            applied_index: 0
        })
    );
    kv.apply(5, &cmd).unwrap();
    assert_eq!(kv.applied_index(), 5);
    let before = kv.clone();
    assert_eq!(
        kv.apply(5, &cmd),
        Err(ApplyError::AlreadyApplied {
            index: 5,
            applied_index: 5
        })
    );
    assert_eq!(
        kv.apply(3, &cmd),
        Err(ApplyError::AlreadyApplied {
            index: 3,
            applied_index: 5
        })
    );
    assert_eq!(kv, before, "a stale entry changes nothing");
    kv.mark_applied(9).unwrap();
    assert_eq!(kv.applied_index(), 9);
    assert_eq!(kv.revision(), before.revision());
    assert!(kv.mark_applied(9).is_err());
    // A rejected command still consumes its index.
    assert_eq!(
        kv.apply(10, &put(b"", b"")),
        Err(ApplyError::Rejected(RequestError::EmptyKey))
    );
    assert_eq!(kv.applied_index(), 10);
}

#[test]
fn size_bytes_tracks_keys_and_values() {
    let mut n = Node::new();
    n.put(b"ab", b"cde");
    assert_eq!(n.kv.size_bytes(), 5 + ENTRY_OVERHEAD_BYTES);
    n.put(b"ab", b"c");
    assert_eq!(n.kv.size_bytes(), 3 + ENTRY_OVERHEAD_BYTES);
    n.put(b"x", b"");
    assert_eq!(n.kv.size_bytes(), 4 + 2 * ENTRY_OVERHEAD_BYTES);
    n.delete(del_req(b"\0", b"\0"));
    assert_eq!(n.kv.size_bytes(), 0);
}

#[test]
fn hash_covers_data_not_bookkeeping() {
    let mut a = Node::new();
    let mut b = Node::new();
    assert_eq!(a.kv.hash(), b.kv.hash());
    a.put(b"k", b"v");
    assert_ne!(a.kv.hash(), b.kv.hash());
    b.put(b"k", b"v");
    assert_eq!(a.kv.hash(), b.kv.hash());
    b.kv.mark_applied(100).unwrap();
    assert_eq!(a.kv.hash(), b.kv.hash(), "applied index is not hashed");
    a.put(b"k", b"v");
    assert_ne!(
        a.kv.hash(),
        b.kv.hash(),
        "version and mod revision are hashed"
    );
    // Boundaries between key and value are hashed (length prefixes).
    let mut c = Node::new();
    let mut d = Node::new();
    c.put(b"ab", b"c");
    d.put(b"a", b"bc");
    assert_ne!(c.kv.hash(), d.kv.hash());
}

#[test]
fn command_encoding_round_trips_and_rejects_bad_framing() {
    let cmd = Command::Txn(TxnRequest {
        compare: vec![cmp(
            b"k",
            CompareResult::Greater,
            CompareTarget::ModRevision(-7),
        )],
        success: vec![RequestOp::Put(put_req(b"k", b"v"))],
        failure: vec![RequestOp::Range(range_req(b"a", b"\0"))],
    });
    let bytes = cmd.encode();
    assert_eq!(bytes[0], FORMAT_VERSION);
    assert_eq!(Command::decode(&bytes), Ok(cmd.clone()));
    assert_eq!(Command::decode(&[]), Err(DecodeError::Empty));
    let mut other_version = bytes.clone();
    other_version[0] = FORMAT_VERSION + 1;
    assert_eq!(
        Command::decode(&other_version),
        Err(DecodeError::UnknownVersion(FORMAT_VERSION + 1))
    );
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert_eq!(
        Command::decode(&trailing),
        Err(DecodeError::TrailingBytes { len: 1 })
    );
    assert_eq!(
        Command::decode(&bytes[..bytes.len() - 1]),
        Err(DecodeError::Malformed)
    );
    let huge = vec![FORMAT_VERSION; MAX_ENCODED_COMMAND_BYTES + 1];
    assert_eq!(
        Command::decode(&huge),
        Err(DecodeError::TooLarge {
            len: huge.len(),
            max: MAX_ENCODED_COMMAND_BYTES
        })
    );
    assert_eq!(
        Command::decode(&put(b"", b"v").encode()),
        Err(DecodeError::Invalid(RequestError::EmptyKey))
    );
    // Results too.
    let mut n = Node::new();
    let result = n.apply(cmd).unwrap();
    let bytes = result.encode();
    assert_eq!(CommandResult::decode(&bytes), Ok(result));
    assert_eq!(
        CommandResult::decode(&bytes[..1]),
        Err(DecodeError::Malformed)
    );
}

#[test]
fn largest_valid_command_fits_the_encoded_limit() {
    // Worst framing: every list full, every integer a 10-byte varint, and the
    // rest of the payload budget in one value.
    let wide_range = RangeRequest {
        key: b"k".to_vec(),
        range_end: b"\0".to_vec(),
        limit: i64::MIN,
        revision: i64::MIN,
        sort_order: SortOrder::Descend,
        sort_target: SortTarget::Value,
        keys_only: true,
        count_only: true,
        min_mod_revision: i64::MIN,
        max_mod_revision: i64::MIN,
        min_create_revision: i64::MIN,
        max_create_revision: i64::MIN,
    };
    let compare = cmp(
        b"k",
        CompareResult::NotEqual,
        CompareTarget::CreateRevision(i64::MIN),
    );
    let mut success = vec![RequestOp::Range(wide_range.clone()); MAX_TXN_OPS - 1];
    let used = 3 * MAX_TXN_OPS * 3 - 2;
    success.push(RequestOp::Put(put_req(
        b"v",
        &vec![7; MAX_REQUEST_BYTES - used],
    )));
    let cmd = Command::Txn(TxnRequest {
        compare: vec![compare; MAX_TXN_OPS],
        success,
        failure: vec![RequestOp::Range(wide_range); MAX_TXN_OPS],
    });
    assert_eq!(cmd.validate(), Ok(()));
    let bytes = cmd.encode();
    assert!(
        bytes.len() <= MAX_ENCODED_COMMAND_BYTES,
        "{} bytes",
        bytes.len()
    );
    assert_eq!(Command::decode(&bytes), Ok(cmd));
}

#[test]
fn snapshot_round_trip_keeps_everything() {
    let mut n = with_abcde();
    n.apply(Command::Compact(CompactionRequest { revision: 4 }))
        .unwrap();
    n.delete(del_req(b"b", b""));
    n.kv.mark_applied(42).unwrap();
    let bytes = n.kv.snapshot();
    assert_eq!(bytes[..4], SNAPSHOT_MAGIC);
    let restored = KvStore::restore(&bytes).unwrap();
    assert_eq!(restored, n.kv);
    assert_eq!(
        (
            restored.revision(),
            restored.compact_revision(),
            restored.applied_index()
        ),
        (7, 4, 42)
    );
    assert_eq!(restored.size_bytes(), n.kv.size_bytes());
    assert_eq!(restored.hash(), n.kv.hash());
    assert_eq!(restored.snapshot(), bytes);
    let empty = KvStore::new();
    assert_eq!(KvStore::restore(&empty.snapshot()), Ok(empty));
}

#[test]
fn damaged_snapshots_are_refused() {
    let bytes = with_abcde().kv.snapshot();
    assert_eq!(KvStore::restore(&[]), Err(SnapshotError::Truncated));
    assert_eq!(KvStore::restore(&bytes[..8]), Err(SnapshotError::Truncated));
    let mut magic = bytes.clone();
    magic[0] ^= 1;
    assert_eq!(KvStore::restore(&magic), Err(SnapshotError::BadMagic));
    let mut version = bytes.clone();
    version[4] = 99;
    assert_eq!(
        KvStore::restore(&version),
        Err(SnapshotError::UnknownVersion(99))
    );
    for i in 5..bytes.len() {
        let mut flipped = bytes.clone();
        flipped[i] ^= 0x40;
        assert_eq!(
            KvStore::restore(&flipped),
            Err(SnapshotError::ChecksumMismatch),
            "byte {i}"
        );
    }
    assert_eq!(
        KvStore::restore(&bytes[..bytes.len() - 1]),
        Err(SnapshotError::ChecksumMismatch)
    );
}

#[test]
fn txn_put_then_delete_of_same_key_is_still_a_write() {
    // etcd counts changes, not their net effect. (The "\0"-ended delete
    // escapes the duplicate-key check, as in etcd.)
    let mut n = Node::new();
    let r = n.txn(TxnRequest {
        success: vec![
            RequestOp::Put(put_req(b"k", b"v")),
            RequestOp::DeleteRange(del_req(b"a", b"\0")),
        ],
        ..Default::default()
    });
    assert_eq!(r.header.revision, 2);
    assert!(n.kv.is_empty());
    assert_eq!(n.kv.size_bytes(), 0);
}

#[test]
fn snapshot_followed_by_padding_restores_with_its_length() {
    let mut s = KvStore::new();
    for (i, k) in [&b"a"[..], b"b", b"c"].iter().enumerate() {
        s.apply(i as u64 + 1, &put(k, b"value")).unwrap();
    }
    let snap = s.snapshot();
    for pad in [0usize, 1, 511] {
        let mut file = snap.clone();
        file.resize(snap.len() + pad, 0);
        let (mut restored, len) = KvStore::restore_prefix(&file).unwrap();
        assert_eq!(len, snap.len());
        assert_eq!(restored.snapshot(), snap);
        // A backup restored into a new cluster starts its log over.
        restored.rebase_applied_index(1);
        assert_eq!(restored.applied_index(), 1);
        assert_eq!(restored.revision(), s.revision());
        restored.apply(2, &put(b"d", b"new")).unwrap();
    }
    // Damage anywhere in the snapshot part is refused.
    let mut file = snap.clone();
    file.resize(snap.len() + 100, 0);
    for i in 5..snap.len() {
        let mut f = file.clone();
        f[i] ^= 0x40;
        assert!(KvStore::restore_prefix(&f).is_err(), "byte {i}");
    }
    assert!(KvStore::restore_prefix(&snap[..snap.len() - 1]).is_err());
    assert_eq!(
        KvStore::restore_prefix(&[0u8; 64]).map(|_| ()),
        Err(SnapshotError::BadMagic)
    );
}
