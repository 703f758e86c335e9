#![cfg(feature = "nested-txn")]
//! Nested transactions (`RequestOp::Txn`, etcd's `request_txn`) with etcd
//! 3.4's semantics: one revision for the whole transaction, nested compares
//! decided against the store before any write, etcd's duplicate-key and
//! op-budget rules across levels, all-or-nothing checks on nested branches,
//! leases on nested puts, and encodings written before the variant existed
//! still decoding to the same command.

use metalraft_kv::*;

fn put(key: &[u8], value: &[u8]) -> RequestOp {
    RequestOp::Put(PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        ..Default::default()
    })
}

fn get(key: &[u8]) -> RequestOp {
    RequestOp::Range(RangeRequest::single(key))
}

fn del(key: &[u8], range_end: &[u8]) -> RequestOp {
    RequestOp::DeleteRange(DeleteRangeRequest {
        key: key.to_vec(),
        range_end: range_end.to_vec(),
        prev_kv: false,
    })
}

fn nested(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
    RequestOp::Txn(TxnRequest {
        compare,
        success,
        failure,
    })
}

fn txn(success: Vec<RequestOp>) -> Command {
    Command::Txn(TxnRequest {
        compare: vec![],
        success,
        failure: vec![],
    })
}

fn version_is(key: &[u8], v: i64) -> Compare {
    Compare::new(key, CompareResult::Equal, CompareTarget::Version(v))
}

fn apply(kv: &mut MvccStore, cmd: &Command) -> Result<CommandResult, RequestError> {
    let index = kv.applied_index() + 1;
    kv.apply(index, cmd).map_err(|e| match e {
        ApplyError::Rejected(r) => r,
        other => panic!("{other}"),
    })
}

fn value(kv: &MvccStore, key: &[u8]) -> Option<Vec<u8>> {
    let kvs = kv.range(&RangeRequest::single(key)).unwrap().kvs;
    kvs.into_iter().next().map(|e| e.value)
}

#[test]
fn one_revision_and_nested_compares_see_the_store_before_the_txn() {
    let mut kv = MvccStore::new();
    apply(&mut kv, &txn(vec![put(b"a", b"1")])).unwrap();
    let cmd = txn(vec![
        put(b"b", b"1"),
        // b has version 0 before the txn, though the outer branch puts it.
        nested(
            vec![version_is(b"b", 0)],
            vec![put(b"c", b"2"), get(b"b")],
            vec![put(b"d", b"3")],
        ),
        nested(vec![version_is(b"a", 5)], vec![], vec![del(b"a", b"")]),
    ]);
    let CommandResult::Txn(t) = apply(&mut kv, &cmd).unwrap() else {
        panic!()
    };
    assert_eq!(kv.revision(), 3);
    assert_eq!(t.header.revision, 3);
    let ResponseOp::Txn(inner) = &t.responses[1] else {
        panic!("{t:?}")
    };
    assert!(inner.succeeded);
    assert_eq!(
        inner.header.revision, 0,
        "a nested header is empty, as in etcd"
    );
    let ResponseOp::Range(r) = &inner.responses[1] else {
        panic!("{t:?}")
    };
    assert_eq!(r.header.revision, 3);
    assert_eq!(r.kvs[0].value, b"1", "a later op sees an earlier write");
    let ResponseOp::Txn(second) = &t.responses[2] else {
        panic!("{t:?}")
    };
    assert!(!second.succeeded);
    let ResponseOp::DeleteRange(d) = &second.responses[0] else {
        panic!("{t:?}")
    };
    assert_eq!((d.deleted, d.header.revision), (1, 3));
    assert_eq!(value(&kv, b"c"), Some(b"2".to_vec()));
    assert_eq!(value(&kv, b"d"), None);
    assert_eq!(value(&kv, b"a"), None);
    // Every write of the txn is one revision of the change log, in order.
    let kinds: Vec<(Vec<u8>, ChangeKind)> = kv
        .changes_at(3)
        .into_iter()
        .map(|c| (c.kv.key, c.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (b"b".to_vec(), ChangeKind::Put),
            (b"c".to_vec(), ChangeKind::Put),
            (b"a".to_vec(), ChangeKind::Delete),
        ]
    );
}

#[test]
fn duplicate_keys_across_levels_follow_etcd() {
    let dup = |success: Vec<RequestOp>| txn(success).validate();
    let refused = Err(RequestError::DuplicateKey);
    assert_eq!(
        dup(vec![
            put(b"x", b""),
            nested(vec![], vec![put(b"x", b"")], vec![])
        ]),
        refused
    );
    assert_eq!(
        dup(vec![
            nested(vec![], vec![put(b"x", b"")], vec![]),
            nested(vec![], vec![], vec![put(b"x", b"")]),
        ]),
        refused
    );
    assert_eq!(
        dup(vec![
            del(b"a", b"z"),
            nested(vec![], vec![put(b"x", b"")], vec![])
        ]),
        refused
    );
    assert_eq!(
        dup(vec![
            put(b"x", b""),
            nested(vec![], vec![], vec![del(b"x", b"")])
        ]),
        refused
    );
    assert_eq!(
        dup(vec![
            nested(
                vec![],
                vec![nested(vec![], vec![put(b"x", b"")], vec![])],
                vec![put(b"y", b"")],
            ),
            put(b"x", b"")
        ]),
        refused,
        "two levels down"
    );
    // Only one branch of a nested txn runs: both may put the same key.
    assert_eq!(
        dup(vec![nested(
            vec![],
            vec![put(b"x", b"")],
            vec![put(b"x", b"")]
        )]),
        Ok(())
    );
    // A put in one nested txn and a delete in a later sibling: etcd only
    // checks puts against earlier deletes, so this passes there too.
    assert_eq!(
        dup(vec![
            nested(vec![], vec![put(b"x", b"")], vec![]),
            nested(vec![], vec![del(b"x", b"")], vec![]),
        ]),
        Ok(())
    );
}

#[test]
fn the_op_budget_is_shared_across_levels() {
    let ranges = |n: usize| (0..n).map(|_| get(b"k")).collect::<Vec<_>>();
    let with_nested = |outer: usize, inner: usize| {
        let mut ops = ranges(outer);
        ops.push(nested(vec![], ranges(inner), vec![]));
        txn(ops)
    };
    assert_eq!(with_nested(100, 27).validate(), Ok(()));
    assert_eq!(
        with_nested(100, 28).validate(),
        Err(RequestError::TooManyOps { len: 28 })
    );
    // Nesting deeper than the budget allows is refused, not recursed into.
    let mut deep = TxnRequest::default();
    for _ in 0..MAX_TXN_OPS + 1 {
        deep = TxnRequest {
            success: vec![RequestOp::Txn(deep)],
            ..Default::default()
        };
    }
    assert!(matches!(
        Command::Txn(deep).validate(),
        Err(RequestError::TooManyOps { .. })
    ));
}

#[test]
fn a_failing_nested_check_changes_nothing() {
    let mut kv = MvccStore::new();
    apply(&mut kv, &txn(vec![put(b"a", b"1")])).unwrap();
    let missing = RequestOp::Put(PutRequest {
        key: b"nope".to_vec(),
        ignore_value: true,
        ..Default::default()
    });
    let cmd = txn(vec![
        put(b"b", b"1"),
        nested(vec![], vec![missing.clone()], vec![]),
    ]);
    assert_eq!(apply(&mut kv, &cmd), Err(RequestError::KeyNotFound));
    assert_eq!((kv.revision(), value(&kv, b"b")), (2, None));
    // In a branch that does not run, the same op is not checked.
    let cmd = txn(vec![put(b"b", b"1"), nested(vec![], vec![], vec![missing])]);
    apply(&mut kv, &cmd).unwrap();
    assert_eq!(kv.revision(), 3);
}

#[cfg(feature = "leases")]
#[test]
fn leases_on_nested_puts_follow_the_branch_that_runs() {
    let mut kv = MvccStore::new();
    let CommandResult::LeaseGrant(g) = apply(
        &mut kv,
        &Command::LeaseGrant(LeaseGrantRequest { id: 7, ttl: 60 }),
    )
    .unwrap() else {
        panic!()
    };
    let with = |lease: i64| LeaseOption {
        lease,
        ignore_lease: false,
    };
    // Options in TxnLeases order: the outer put, then the nested success
    // put, then the nested failure put (lease 99 does not exist, but its
    // branch does not run).
    let t = TxnRequest {
        compare: vec![],
        success: vec![
            put(b"o", b""),
            nested(vec![], vec![put(b"s", b"")], vec![put(b"f", b"")]),
        ],
        failure: vec![],
    };
    let leases = TxnLeases {
        success: vec![with(0), with(g.id), with(99)],
        failure: vec![],
    };
    let cmd = Command::LeaseTxn(t.clone(), leases);
    assert_eq!(Command::decode(&cmd.encode()), Ok(cmd.clone()));
    apply(&mut kv, &cmd).unwrap();
    let lease_of = |kv: &MvccStore, k: &[u8]| {
        let e = kv.range(&RangeRequest::single(k)).unwrap().kvs;
        kv.key_lease(k, e[0].mod_revision)
    };
    assert_eq!(lease_of(&kv, b"o"), 0);
    assert_eq!(lease_of(&kv, b"s"), g.id);
    assert_eq!(value(&kv, b"f"), None);
    // The missing lease on the branch that runs is refused, changing nothing.
    let cmd = Command::LeaseTxn(
        t,
        TxnLeases {
            success: vec![with(0), with(99), with(g.id)],
            failure: vec![],
        },
    );
    let rev = kv.revision();
    assert_eq!(apply(&mut kv, &cmd), Err(RequestError::LeaseNotFound));
    assert_eq!(kv.revision(), rev);
}

#[test]
fn nested_commands_round_trip_and_older_encodings_are_unchanged() {
    let cmd = txn(vec![nested(
        vec![version_is(b"a", 1)],
        vec![put(b"b", b"2")],
        vec![del(b"c", b"")],
    )]);
    assert_eq!(Command::decode(&cmd.encode()), Ok(cmd));
    // A txn without nesting encodes as before the variant was appended:
    // format 1, Command::Txn (2), no compares, one success op
    // (RequestOp::Put = 1, key "k", value "v", two false flags), no failure.
    let plain = txn(vec![put(b"k", b"v")]);
    assert_eq!(
        plain.encode(),
        vec![1, 2, 0, 1, 1, 1, b'k', 1, b'v', 0, 0, 0]
    );
    // And a nested txn is RequestOp variant 3.
    let one = txn(vec![nested(vec![], vec![], vec![])]);
    assert_eq!(one.encode(), vec![1, 2, 0, 1, 3, 0, 0, 0, 0]);
}

#[test]
fn a_plain_kv_store_runs_nested_txns_too() {
    let mut kv = KvStore::new();
    let cmd = txn(vec![
        put(b"a", b"1"),
        nested(vec![version_is(b"a", 0)], vec![put(b"b", b"2")], vec![]),
    ]);
    let CommandResult::Txn(t) = kv.apply(1, &cmd).unwrap() else {
        panic!()
    };
    assert_eq!((t.header.revision, kv.revision()), (2, 2));
    let r = kv.range(&RangeRequest::single(b"b")).unwrap();
    assert_eq!(r.kvs[0].mod_revision, 2);
}
