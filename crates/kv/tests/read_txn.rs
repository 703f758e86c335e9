//! `MvccStore::read_txn` (a read-only transaction served without the log)
//! against the log path: on random stores with history, compactions and
//! leases, serving a random read-only transaction (nested ones included)
//! gives exactly what applying it as `Command::Txn` gives — the same
//! responses, the same header revision (which applying does not move), or
//! the same refusal.

use metalraft_kv::*;
use proptest::prelude::*;

mod strategies;
use strategies::*;

/// A lease the stores grant, so lease compares see attached keys.
const LEASE: i64 = 1;

fn build_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        6 => command(),
        1 => (put()).prop_map(|p| Command::LeasePut(
            p,
            LeaseOption { lease: LEASE, ignore_lease: false }
        )),
    ]
}

fn read_op(depth: u32) -> BoxedStrategy<RequestOp> {
    if depth == 0 {
        return range().prop_map(RequestOp::Range).boxed();
    }
    prop_oneof![
        4 => range().prop_map(RequestOp::Range),
        1 => read_txn_request(depth - 1).prop_map(RequestOp::Txn),
    ]
    .boxed()
}

fn read_txn_request(depth: u32) -> BoxedStrategy<TxnRequest> {
    (
        prop::collection::vec(compare(), 0..3),
        prop::collection::vec(read_op(depth), 0..4),
        prop::collection::vec(read_op(depth), 0..4),
    )
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        })
        .boxed()
}

/// A store after `cmds` (refused ones count as applied, as on a replica).
fn store_after(cmds: &[Command]) -> (MvccStore, u64) {
    let mut s = MvccStore::new();
    let grant = Command::LeaseGrant(LeaseGrantRequest { id: LEASE, ttl: 60 });
    s.apply(1, &grant).expect("grant");
    let mut index = 1;
    for c in cmds {
        index += 1;
        let _ = s.apply(index, c);
    }
    (s, index)
}

fn through_log(s: &MvccStore, index: u64, t: &TxnRequest) -> Result<TxnResponse, RequestError> {
    let mut copy = s.clone();
    match copy.apply(index + 1, &Command::Txn(t.clone())) {
        Ok(CommandResult::Txn(r)) => {
            assert_eq!(
                copy.revision(),
                s.revision(),
                "a read-only txn moved the revision"
            );
            Ok(r)
        }
        Ok(other) => panic!("a txn gave {other:?}"),
        Err(ApplyError::Rejected(e)) => Err(e),
        Err(e) => panic!("apply failed: {e}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn read_txn_answers_as_the_log_does(
        cmds in prop::collection::vec(build_command(), 0..24),
        txns in prop::collection::vec(read_txn_request(2), 1..6),
    ) {
        let (s, index) = store_after(&cmds);
        for t in &txns {
            prop_assert!(t.is_read_only());
            let direct = s.read_txn(t).map_err(|e| match e {
                ReadTxnError::Refused(e) => e,
                other => panic!("unexpected {other:?}"),
            });
            prop_assert_eq!(direct, through_log(&s, index, t));
        }
    }

    #[test]
    fn a_txn_with_a_write_is_not_served(
        cmds in prop::collection::vec(build_command(), 0..8),
        t in txn(),
    ) {
        let (s, _) = store_after(&cmds);
        let writes = t.success.iter().chain(&t.failure)
            .any(|op| !matches!(op, RequestOp::Range(_)));
        prop_assert_eq!(t.is_read_only(), !writes);
        if writes {
            prop_assert_eq!(s.read_txn(&t), Err(ReadTxnError::Writes));
        }
    }
}

#[test]
fn a_nested_write_makes_a_txn_not_read_only() {
    let inner = TxnRequest {
        compare: vec![],
        success: vec![RequestOp::Range(RangeRequest::single(b"a"))],
        failure: vec![RequestOp::DeleteRange(DeleteRangeRequest {
            key: b"a".to_vec(),
            range_end: vec![],
            prev_kv: false,
        })],
    };
    let outer = TxnRequest {
        compare: vec![],
        success: vec![RequestOp::Txn(inner)],
        failure: vec![],
    };
    assert!(!outer.is_read_only());
    assert_eq!(MvccStore::new().read_txn(&outer), Err(ReadTxnError::Writes));
}

#[test]
fn too_many_ops_is_refused_as_through_the_log() {
    let t = TxnRequest {
        compare: vec![],
        success: vec![RequestOp::Range(RangeRequest::single(b"a")); MAX_TXN_OPS + 1],
        failure: vec![],
    };
    let s = MvccStore::new();
    let got = s.read_txn(&t);
    assert_eq!(
        got,
        Err(ReadTxnError::Refused(RequestError::TooManyOps {
            len: MAX_TXN_OPS + 1
        }))
    );
    assert_eq!(
        through_log(&s, 0, &t),
        Err(RequestError::TooManyOps {
            len: MAX_TXN_OPS + 1
        })
    );
}
