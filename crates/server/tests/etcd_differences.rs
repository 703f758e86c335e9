//! The smaller differences from etcd 3.4 of issue 17 item 4, each checked
//! over gRPC with the server's own proto types (what etcdctl cannot send)
//! against real `metalraft` processes. The same checks run against a real
//! etcd 3.4.23 with `cargo test -p metalraft --test etcd_differences --
//! --ignored` when `etcd` is on PATH (Debian's `etcd-server`).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{etcdctl, free_port, Cluster, WAIT};
use metalraft::proto::etcdserverpb as pb;
use pb::cluster_client::ClusterClient;
use pb::kv_client::KvClient;
use pb::maintenance_client::MaintenanceClient;
use tonic::transport::Channel;
use tonic::Code;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn channel(endpoint: &str) -> Channel {
    Channel::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(WAIT)
        .connect()
        .await
        .unwrap()
}

/// A unary call of `path` with an empty request message, as a client
/// built for another etcd version would make it.
async fn raw_call(ch: Channel, path: &'static str) -> tonic::Status {
    let mut g = tonic::client::Grpc::new(ch);
    g.ready().await.unwrap();
    let codec = tonic::codec::ProstCodec::<pb::StatusRequest, pb::StatusResponse>::default();
    g.unary(
        tonic::Request::new(pb::StatusRequest {}),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        codec,
    )
    .await
    .expect_err("no such method")
}

/// Every check that must hold on etcd 3.4.23 and on metalraft alike, on a
/// fresh single-member cluster at `endpoint`. Returns the answer to a txn
/// whose only put is nested while NOSPACE is raised, where the two differ.
async fn check_fresh_member(endpoint: &str) -> Result<(), tonic::Status> {
    let ch = channel(endpoint).await;

    // grpc.health.v1: the server's overall status is SERVING.
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("grpc.health.v1 Check")
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // dbSize on an empty cluster is the backend's, not a preallocated WAL.
    let mut m = MaintenanceClient::new(ch.clone());
    let st = m.status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert!(
        st.db_size < 1 << 20,
        "dbSize {} on an empty cluster",
        st.db_size
    );
    assert!(st.db_size >= st.db_size_in_use, "{st:?}");

    // UNIMPLEMENTED carries grpc-go's message.
    let s = raw_call(ch.clone(), "/etcdserverpb.Maintenance/Downgrade").await;
    assert_eq!(s.code(), Code::Unimplemented);
    assert_eq!(
        s.message(),
        "unknown method Downgrade for service etcdserverpb.Maintenance"
    );
    let s = raw_call(ch.clone(), "/etcdserverpb.Nope/Status").await;
    assert_eq!(s.code(), Code::Unimplemented);
    assert_eq!(s.message(), "unknown service etcdserverpb.Nope");

    // Above the gRPC receive limit (--max-request-bytes + 512 KiB):
    // RESOURCE_EXHAUSTED; between the two limits: etcd's own error.
    let mut kv = KvClient::new(ch.clone()).max_encoding_message_size(usize::MAX);
    let put = |n: usize| pb::PutRequest {
        key: b"big".to_vec(),
        value: vec![b'a'; n],
        ..Default::default()
    };
    let s = kv.put(put(2_200_000)).await.unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(
        s.message()
            .starts_with("grpc: received message larger than max ("),
        "{s:?}"
    );
    let s = kv.put(put(1_600_000)).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert_eq!(s.message(), "etcdserver: request is too large");

    // HashKV reports the compacted revision; Hash is served; Defragment and
    // MoveLeader (to itself) answer without a header.
    for i in 0..3 {
        kv.put(pb::PutRequest {
            key: b"h".to_vec(),
            value: vec![i],
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let rev = kv
        .range(pb::RangeRequest {
            key: b"h".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    kv.compact(pb::CompactionRequest {
        revision: rev - 1,
        physical: true,
    })
    .await
    .unwrap();
    let hk = m
        .hash_kv(pb::HashKvRequest { revision: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hk.compact_revision, rev - 1);
    m.hash(pb::HashRequest {}).await.expect("Maintenance.Hash");
    let d = m
        .defragment(pb::DefragmentRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(d.header.is_none(), "{d:?}");
    let me = st.header.unwrap().member_id;
    let ml = m
        .move_leader(pb::MoveLeaderRequest { target_id: me })
        .await
        .unwrap()
        .into_inner();
    assert!(ml.header.is_none(), "{ml:?}");

    // ignore_lease keeps the key's lease.
    let mut lease = pb::lease_client::LeaseClient::new(ch.clone());
    let id = lease
        .lease_grant(pb::LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    kv.put(pb::PutRequest {
        key: b"l".to_vec(),
        value: b"1".to_vec(),
        lease: id,
        ..Default::default()
    })
    .await
    .unwrap();
    kv.put(pb::PutRequest {
        key: b"l".to_vec(),
        value: b"2".to_vec(),
        ignore_lease: true,
        ..Default::default()
    })
    .await
    .expect("ignore_lease");
    let got = kv
        .range(pb::RangeRequest {
            key: b"l".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.kvs[0].lease, id);
    assert_eq!(got.kvs[0].value, b"2");

    check_nested_txn(&ch, id).await;
    check_read_only_txn(&ch).await;
    check_large_key(&ch).await;
    let nested_put = check_alarm_activate(&ch, endpoint, me).await;
    nested_put.map(|_| ())
}

fn nospace(member_id: u64) -> pb::AlarmMember {
    pb::AlarmMember {
        member_id,
        alarm: pb::AlarmType::Nospace as i32,
    }
}

async fn alarm(
    ch: &Channel,
    action: pb::alarm_request::AlarmAction,
    member_id: u64,
) -> Vec<pb::AlarmMember> {
    MaintenanceClient::new(ch.clone())
        .alarm(pb::AlarmRequest {
            action: action as i32,
            member_id,
            alarm: pb::AlarmType::Nospace as i32,
        })
        .await
        .expect("alarm")
        .into_inner()
        .alarms
}

/// What a NOSPACE alarm refuses (puts, txns that put, lease grants) and
/// lets through (reads, deletes, read-only txns), with etcd's error.
async fn check_nospace_refusals(ch: &Channel) {
    let mut kv = KvClient::new(ch.clone());
    let refused = |r: Result<_, tonic::Status>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(
            (e.code(), e.message()),
            (
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded"
            ),
            "{what}"
        );
    };
    refused(
        kv.put(pb::PutRequest {
            key: b"a/k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .await
        .map(|_| ()),
        "put",
    );
    refused(
        kv.txn(txn_of(vec![range_op(b"a/k"), put_op(b"a/k", b"", 0)]))
            .await
            .map(|_| ()),
        // etcd 3.4 lets a put inside a nested txn through (its quota cost
        // counts only top-level puts); metalraft refuses it too (below).
        "txn with a put",
    );
    refused(
        pb::lease_client::LeaseClient::new(ch.clone())
            .lease_grant(pb::LeaseGrantRequest { ttl: 60, id: 0 })
            .await
            .map(|_| ()),
        "lease grant",
    );
    kv.delete_range(pb::DeleteRangeRequest {
        key: b"a/gone".to_vec(),
        ..Default::default()
    })
    .await
    .expect("a delete passes");
    kv.txn(txn_of(vec![range_op(b"a/k"), delete_op(b"a/gone", b"")]))
        .await
        .expect("a txn without puts passes");
}

/// Alarm ACTIVATE and DEACTIVATE, and etcdctl's `alarm list`/`disarm`;
/// returns the answer to a txn whose only put is nested, sent while the
/// alarm was raised.
async fn check_alarm_activate(
    ch: &Channel,
    endpoint: &str,
    me: u64,
) -> Result<tonic::Response<pb::TxnResponse>, tonic::Status> {
    use pb::alarm_request::AlarmAction;
    assert_eq!(
        alarm(ch, AlarmAction::Activate, me).await,
        vec![nospace(me)]
    );
    assert_eq!(alarm(ch, AlarmAction::Get, 0).await, vec![nospace(me)]);
    check_nospace_refusals(ch).await;
    let nested = KvClient::new(ch.clone())
        .txn(txn_of(vec![txn_op(
            vec![],
            vec![put_op(b"a/k", b"", 0)],
            vec![],
        )]))
        .await;
    let list = etcdctl(&["--endpoints", endpoint, "alarm", "list"]);
    assert_eq!(list, format!("memberID:{me} alarm:NOSPACE \n"));
    let disarm = etcdctl(&["--endpoints", endpoint, "alarm", "disarm"]);
    assert_eq!(disarm, list);
    assert_eq!(alarm(ch, AlarmAction::Get, 0).await, vec![]);
    assert_eq!(
        alarm(ch, AlarmAction::Deactivate, me).await,
        vec![],
        "not raised"
    );
    KvClient::new(ch.clone())
        .put(pb::PutRequest {
            key: b"a/k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .await
        .expect("writes pass again");
    nested
}

/// An alarm raised through a follower holds on every member, through a
/// snapshot and a restart of every member, until `alarm disarm`.
#[test]
fn alarms_are_replicated_and_survive_snapshots_and_restarts() {
    use pb::alarm_request::AlarmAction;
    let mut c = Cluster::start_with(3, &["--snapshot-count=5"]);
    // A follower relays the alarm to the leader's published client URL
    // (until the leader has published it: "no leader", which clients
    // retry), so wait for every member's publish.
    let eps = c.endpoints();
    common::eventually("every member published its name", || {
        let out = etcdctl(&["--endpoints", &eps, "member", "list"]);
        let named = (0..3)
            .filter(|&i| out.contains(&format!(", {}, ", c.members[i].name)))
            .count();
        (named == 3).then_some(())
    });
    let leader = c.wait_for_leader();
    let follower = (leader + 1) % 3;
    let rt = runtime();
    let ch = rt.block_on(channel(&c.endpoint(follower)));
    // ACTIVATE is idempotent: tried again if the leader changes meanwhile.
    let raised = common::eventually("NOSPACE raised through a follower", || {
        rt.block_on(MaintenanceClient::new(ch.clone()).alarm(pb::AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: 77,
            alarm: pb::AlarmType::Nospace as i32,
        }))
        .ok()
    });
    assert_eq!(raised.into_inner().alarms, vec![nospace(77)]);
    rt.block_on(async {
        // Past the snapshot threshold with writes the alarm lets through.
        let mut kv = KvClient::new(ch.clone());
        for i in 0..12 {
            kv.delete_range(pb::DeleteRangeRequest {
                key: format!("d{i}").into_bytes(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
    });
    for i in 0..3 {
        c.kill9(i);
    }
    for i in 0..3 {
        c.spawn(i);
    }
    c.wait_for_leader();
    for i in 0..3 {
        let ep = c.endpoint(i);
        let list = common::eventually("the alarm after a restart", || {
            let out = common::etcdctl_try(&["--endpoints", &ep, "alarm", "list"]);
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        });
        assert_eq!(list, "memberID:77 alarm:NOSPACE \n", "member {i}");
        rt.block_on(async {
            let ch = channel(&ep).await;
            check_nospace_refusals(&ch).await;
        });
    }
    let ep = c.endpoints();
    assert_eq!(
        etcdctl(&["--endpoints", &ep, "alarm", "disarm"]),
        "memberID:77 alarm:NOSPACE \n"
    );
    for i in 0..3 {
        let ep = c.endpoint(i);
        common::eventually("the alarm cleared everywhere", || {
            let out = common::etcdctl_try(&["--endpoints", &ep, "alarm", "list"]);
            (out.status.success() && out.stdout.is_empty()).then_some(())
        });
    }
    common::put_ok(&ep, "after", "disarm");
}

/// A 100 KiB key (etcd's only bound on a key is the request size): put,
/// get, watched, deleted; and a request over `--max-request-bytes` is
/// still refused with etcd's error.
async fn check_large_key(ch: &Channel) {
    use pb::watch_request::RequestUnion;
    let key: Vec<u8> = (0..100 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let mut kv = KvClient::new(ch.clone());
    let mut w = pb::watch_client::WatchClient::new(ch.clone());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(pb::WatchCreateRequest {
            key: key.clone(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut events = w
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("watch a large key")
        .into_inner();
    let created = events.message().await.unwrap().expect("created");
    assert!(created.created, "{created:?}");

    let put = kv
        .put(pb::PutRequest {
            key: key.clone(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .await
        .expect("put a 100 KiB key")
        .into_inner();
    let rev = put.header.unwrap().revision;
    let got = kv
        .range(pb::RangeRequest {
            key: key.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.kvs.len(), 1);
    assert_eq!((&got.kvs[0].key, got.kvs[0].mod_revision), (&key, rev));
    let del = kv
        .delete_range(pb::DeleteRangeRequest {
            key: key.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(del.deleted, 1);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let m = tokio::time::timeout(WAIT, events.message())
            .await
            .expect("watch events in time")
            .unwrap()
            .expect("stream open");
        for e in m.events {
            let kv = e.kv.unwrap();
            assert_eq!(kv.key, key);
            seen.push((e.r#type, kv.mod_revision));
        }
    }
    assert_eq!(seen, vec![(0, rev), (1, rev + 1)], "PUT then DELETE");
    drop(tx);

    // Over --max-request-bytes (1.5 MiB), under the gRPC limit.
    let e = kv
        .put(pb::PutRequest {
            key,
            value: vec![b'v'; 1536 * 1024],
            ..Default::default()
        })
        .await
        .expect_err("over the request limit");
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "etcdserver: request is too large")
    );
}

fn put_op(key: &[u8], value: &[u8], lease: i64) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })),
    }
}

fn range_op(key: &[u8]) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    }
}

fn delete_op(key: &[u8], range_end: &[u8]) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestDeleteRange(
            pb::DeleteRangeRequest {
                key: key.to_vec(),
                range_end: range_end.to_vec(),
                ..Default::default()
            },
        )),
    }
}

fn txn_op(
    compare: Vec<pb::Compare>,
    success: Vec<pb::RequestOp>,
    failure: Vec<pb::RequestOp>,
) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestTxn(pb::TxnRequest {
            compare,
            success,
            failure,
        })),
    }
}

fn version_is(key: &[u8], version: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Version as i32,
        key: key.to_vec(),
        target_union: Some(pb::compare::TargetUnion::Version(version)),
        ..Default::default()
    }
}

fn txn_of(success: Vec<pb::RequestOp>) -> pb::TxnRequest {
    pb::TxnRequest {
        success,
        ..Default::default()
    }
}

/// A txn that only reads (metalraft serves it without the log, etcd 3.4
/// too unless it nests a txn): the current revision in every header, the
/// revision unchanged, the same answers linearizable and serializable, and
/// etcd's error for a future revision.
async fn check_read_only_txn(ch: &Channel) {
    use pb::response_op::Response;
    let mut kv = KvClient::new(ch.clone());
    let rev = kv
        .put(pb::PutRequest {
            key: b"ro/a".to_vec(),
            value: b"1".to_vec(),
            ..Default::default()
        })
        .await
        .expect("put")
        .into_inner()
        .header
        .expect("header")
        .revision;
    for serializable in [false, true] {
        let range = |key: &[u8], revision: i64| pb::RequestOp {
            request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                key: key.to_vec(),
                revision,
                serializable,
                ..Default::default()
            })),
        };
        let t = pb::TxnRequest {
            compare: vec![version_is(b"ro/a", 1)],
            success: vec![
                range(b"ro/a", 0),
                range(b"ro/a", rev),
                txn_op(vec![], vec![range(b"ro/a", 0)], vec![]),
            ],
            failure: vec![range(b"ro/b", 0)],
        };
        let r = kv.txn(t).await.expect("read-only txn").into_inner();
        assert!(r.succeeded, "{r:?}");
        assert_eq!(r.header.as_ref().map(|h| h.revision), Some(rev), "{r:?}");
        assert_eq!(r.responses.len(), 3, "{r:?}");
        for op in &r.responses[..2] {
            let Some(Response::ResponseRange(g)) = &op.response else {
                panic!("not a range response: {op:?}");
            };
            assert_eq!(g.header.as_ref().map(|h| h.revision), Some(rev));
            assert_eq!(g.kvs.len(), 1, "{g:?}");
            assert_eq!(g.kvs[0].value, b"1");
            assert_eq!(g.kvs[0].mod_revision, rev);
        }
        let Some(Response::ResponseTxn(n)) = &r.responses[2].response else {
            panic!("not a txn response: {:?}", r.responses[2]);
        };
        let Some(Response::ResponseRange(g)) = &n.responses[0].response else {
            panic!("not a range response: {n:?}");
        };
        assert_eq!(g.kvs[0].value, b"1");
        // The failure branch, with a future revision: etcd's error.
        let e = kv
            .txn(pb::TxnRequest {
                compare: vec![version_is(b"ro/a", 7)],
                success: vec![],
                failure: vec![range(b"ro/a", rev + 5)],
            })
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision"
            )
        );
    }
    // Nothing was written.
    let after = kv
        .range(pb::RangeRequest {
            key: b"ro/a".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    assert_eq!(after.header.map(|h| h.revision), Some(rev));
}

/// Nested `request_txn`, as etcd 3.4 serves it: the whole txn is one
/// revision, a nested compare sees the store as it was before the txn, a
/// nested txn's own header is empty, etcd's duplicate-key rules across
/// levels, its op budget across levels, and leases on nested puts.
async fn check_nested_txn(ch: &Channel, lease: i64) {
    use pb::response_op::Response;
    let mut kv = KvClient::new(ch.clone());
    let before = kv
        .range(pb::RangeRequest {
            key: b"n".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    // n/b is put by the outer branch, but the nested compare (version of
    // n/b is 0) still holds: compares are decided before any write.
    let t = kv
        .txn(txn_of(vec![
            put_op(b"n/b", b"1", 0),
            txn_op(
                vec![version_is(b"n/b", 0)],
                vec![put_op(b"n/c", b"2", lease), range_op(b"n/b")],
                vec![put_op(b"n/d", b"3", 0)],
            ),
            range_op(b"n/c"),
        ]))
        .await
        .expect("nested txn")
        .into_inner();
    let rev = before + 1;
    assert!(t.succeeded);
    assert_eq!(t.header.as_ref().unwrap().revision, rev, "{t:?}");
    let Some(Response::ResponseTxn(inner)) = &t.responses[1].response else {
        panic!("{t:?}")
    };
    assert!(inner.succeeded, "{t:?}");
    assert_eq!(inner.header, Some(pb::ResponseHeader::default()), "{t:?}");
    let Some(Response::ResponsePut(p)) = &inner.responses[0].response else {
        panic!("{t:?}")
    };
    assert_eq!(p.header.as_ref().unwrap().revision, rev);
    let Some(Response::ResponseRange(r)) = &inner.responses[1].response else {
        panic!("{t:?}")
    };
    assert_eq!(r.kvs[0].value, b"1", "a later op sees an earlier write");
    let Some(Response::ResponseRange(r)) = &t.responses[2].response else {
        panic!("{t:?}")
    };
    assert_eq!((r.kvs[0].mod_revision, r.kvs[0].lease), (rev, lease));
    let d = kv
        .range(pb::RangeRequest {
            key: b"n/d".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.count, 0, "the nested failure branch did not run");

    // etcd's duplicate-key rules across levels.
    let dup = |t: pb::TxnRequest| {
        let mut kv = kv.clone();
        async move { kv.txn(t).await }
    };
    for (what, success) in [
        (
            "a key put by the outer branch and a nested one",
            vec![
                put_op(b"n/x", b"", 0),
                txn_op(vec![], vec![put_op(b"n/x", b"", 0)], vec![]),
            ],
        ),
        (
            "a key put by two nested txns",
            vec![
                txn_op(vec![], vec![put_op(b"n/x", b"", 0)], vec![]),
                txn_op(vec![], vec![], vec![put_op(b"n/x", b"", 0)]),
            ],
        ),
        (
            "a nested put in an outer delete range",
            vec![
                delete_op(b"n/", b"n0"),
                txn_op(vec![], vec![put_op(b"n/x", b"", 0)], vec![]),
            ],
        ),
        (
            "an outer put in a nested delete",
            vec![
                put_op(b"n/x", b"", 0),
                txn_op(vec![], vec![], vec![delete_op(b"n/x", b"")]),
            ],
        ),
    ] {
        let e = dup(txn_of(success)).await.expect_err(what);
        assert_eq!(e.code(), Code::InvalidArgument, "{what}");
        assert_eq!(
            e.message(),
            "etcdserver: duplicate key given in txn request",
            "{what}"
        );
    }
    // Both branches of one nested txn may put the same key.
    dup(txn_of(vec![txn_op(
        vec![],
        vec![put_op(b"n/x", b"", 0)],
        vec![put_op(b"n/x", b"", 0)],
    )]))
    .await
    .expect("then and else never both run");

    // The op budget is shared: 100 outer ops leave 28 for a nested txn.
    let ranges = |n: usize| (0..n).map(|_| range_op(b"n/b")).collect::<Vec<_>>();
    let with_nested = |n: usize| {
        let mut ops = ranges(100);
        ops.push(txn_op(vec![], ranges(n), vec![]));
        txn_of(ops)
    };
    dup(with_nested(27)).await.expect("within the budget");
    let e = dup(with_nested(30)).await.expect_err("over the budget");
    assert_eq!(
        e.message(),
        "etcdserver: too many operations in txn request"
    );

    // An empty op, a missing lease and a missing ignore_value key inside a
    // nested txn are refused as at the top level.
    let e = dup(txn_of(vec![txn_op(
        vec![],
        vec![pb::RequestOp::default()],
        vec![],
    )]))
    .await
    .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "etcdserver: key not found")
    );
    let e = dup(txn_of(vec![txn_op(
        vec![],
        vec![put_op(b"n/l", b"", 12345)],
        vec![],
    )]))
    .await
    .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );
}

#[test]
fn metalraft_answers_as_etcd_3_4_does() {
    let c = Cluster::start(1);
    let e = runtime()
        .block_on(check_fresh_member(&c.endpoint(0)))
        .expect_err("a nested put under NOSPACE is refused");
    assert_eq!(e.message(), "etcdserver: mvcc: database space exceeded");
}

/// The same checks against a real etcd 3.4.23 (the reference).
#[test]
#[ignore = "needs etcd 3.4 on PATH (apt-get install -y etcd-server)"]
fn etcd_3_4_answers_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let mut etcd: Child = Command::new("etcd")
        .args([
            "--name=e1".to_string(),
            format!("--data-dir={}", dir.path().join("e1").display()),
            format!("--listen-client-urls=http://127.0.0.1:{client}"),
            format!("--advertise-client-urls=http://127.0.0.1:{client}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-cluster=e1=http://127.0.0.1:{peer}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run etcd");
    let ep = format!("127.0.0.1:{client}");
    common::eventually("etcd up", || {
        common::etcdctl_try(&["--endpoints", &ep, "endpoint", "health"])
            .status
            .success()
            .then_some(())
    });
    runtime()
        .block_on(check_fresh_member(&ep))
        .expect("etcd 3.4 lets a nested put through under NOSPACE");
    etcd.kill().unwrap();
    etcd.wait().unwrap();
}

/// After a full restart, MemberAdd's answer lists every started member
/// with its name, so the `ETCD_INITIAL_CLUSTER` etcdctl prints is usable.
#[test]
fn member_add_after_a_restart_names_every_member() {
    let mut c = Cluster::start(3);
    let eps = c.endpoints();
    etcdctl(&["--endpoints", &eps, "put", "k", "v"]);
    // Every member publishes its name through the log once after it starts
    // (as etcd does); until its entry is applied it is listed unnamed, in
    // etcd too. Wait for the three entries, so that what follows checks
    // that the names survive the restart, not whether a re-publish after
    // it wins a race with MemberAdd.
    common::eventually("every member published its name", || {
        let out = etcdctl(&["--endpoints", &eps, "member", "list"]);
        let named = (0..3)
            .filter(|&i| out.contains(&format!(", {}, ", c.members[i].name)))
            .count();
        (named == 3).then_some(())
    });
    for i in 0..3 {
        c.kill9(i);
    }
    for i in 0..3 {
        c.spawn(i);
    }
    c.wait_for_leader();
    let peer = free_port();
    let out = etcdctl(&[
        "--endpoints",
        &eps,
        "member",
        "add",
        "newbie",
        &format!("--peer-urls=http://127.0.0.1:{peer}"),
    ]);
    let line = out
        .lines()
        .find(|l| l.starts_with("ETCD_INITIAL_CLUSTER="))
        .unwrap_or_else(|| panic!("{out}"));
    for i in 0..3 {
        let m = &c.members[i];
        assert!(
            line.contains(&format!("{}=http://127.0.0.1:{}", m.name, m.peer_port)),
            "{line}"
        );
    }
    assert!(
        line.contains(&format!("newbie=http://127.0.0.1:{peer}")),
        "{line}"
    );
    // And through the proto: every started member has its name.
    runtime().block_on(async {
        let mut cl = ClusterClient::new(channel(&c.endpoint(0)).await);
        let list = cl
            .member_list(pb::MemberListRequest { linearizable: true })
            .await
            .unwrap()
            .into_inner();
        let named = list.members.iter().filter(|m| !m.name.is_empty()).count();
        assert_eq!(named, 3, "{list:?}");
    });
}
