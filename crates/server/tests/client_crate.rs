//! The `etcd-client` crate (a Rust etcd client library) against a cluster.

mod common;

use common::*;
use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};

/// Retries while the cluster answers UNAVAILABLE (no leader yet, leader
/// changed, timeout), as etcd's own clients do; any other error is returned.
async fn retry<T, F, Fut>(mut f: F) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match f().await {
            Err(etcd_client::Error::GRpcStatus(s))
                if s.code() == tonic::Code::Unavailable && std::time::Instant::now() < deadline =>
            {
                eprintln!("retrying after: {s}");
                tokio::time::sleep(POLL).await;
            }
            other => return other,
        }
    }
}

#[test]
fn etcd_client_crate_put_get_txn_delete_status_and_unimplemented_services() {
    let c = Cluster::start(3);
    let eps: Vec<String> = (0..3)
        .map(|i| format!("http://{}", c.endpoint(i)))
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cl = Client::connect(eps, None).await.expect("connect");
        let put = retry(|| {
            let mut c = cl.clone();
            async move { c.put("a", "1", None).await }
        })
        .await
        .expect("put");
        let mut cl = cl;
        let header = put.header().expect("header");
        assert!(header.revision() >= 2);
        assert_ne!(header.cluster_id(), 0);
        assert_ne!(header.member_id(), 0);
        assert!(header.raft_term() >= 2);

        let prev = cl
            .put("a", "2", Some(PutOptions::new().with_prev_key()))
            .await
            .unwrap();
        assert_eq!(prev.prev_key().unwrap().value(), b"1");

        cl.put("p/1", "x", None).await.unwrap();
        cl.put("p/2", "y", None).await.unwrap();
        let got = cl
            .get("p/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        assert_eq!(got.kvs().len(), 2);
        assert_eq!(got.count(), 2);
        let limited = cl
            .get("p/", Some(GetOptions::new().with_prefix().with_limit(1)))
            .await
            .unwrap();
        assert_eq!(limited.kvs().len(), 1);
        assert!(limited.more());
        let count = cl
            .get(
                "p/",
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .unwrap();
        assert_eq!(count.count(), 2);
        assert!(count.kvs().is_empty());

        // Past revisions read as they were; after a compaction, older ones
        // are refused as etcd refuses them.
        let first = header.revision();
        let old = cl
            .get("a", Some(GetOptions::new().with_revision(first)))
            .await
            .unwrap();
        assert_eq!(old.kvs()[0].value(), b"1");
        let before = cl
            .get("a", Some(GetOptions::new().with_revision(1)))
            .await
            .unwrap();
        assert!(before.kvs().is_empty(), "no key at revision 1");
        cl.compact(first + 1, None).await.unwrap();
        let err = cl
            .get("a", Some(GetOptions::new().with_revision(first)))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("required revision has been compacted"),
            "{err}"
        );

        let txn = Txn::new()
            .when([Compare::value("a", CompareOp::Equal, "2")])
            .and_then([TxnOp::put("t", "yes", None)])
            .or_else([TxnOp::put("t", "no", None)]);
        let r = cl.txn(txn).await.unwrap();
        assert!(r.succeeded());
        let t = cl.get("t", None).await.unwrap();
        assert_eq!(t.kvs()[0].value(), b"yes");

        let d = cl
            .delete("p/", Some(etcd_client::DeleteOptions::new().with_prefix()))
            .await
            .unwrap();
        assert_eq!(d.deleted(), 2);

        let st = cl.status().await.unwrap();
        assert_ne!(st.leader(), 0);
        assert!(st.raft_index() >= st.raft_applied_index() || st.raft_applied_index() > 0);

        let members = cl.member_list().await.unwrap();
        assert_eq!(members.members().len(), 3);

        // Leases are served (crates/server/tests/lease.rs tests them in depth).
        let lease = cl.lease_grant(10, None).await.expect("lease grant");
        assert_eq!(lease.ttl(), 10);
        assert_ne!(lease.id(), 0);
        // A lease that does not exist is refused on put with etcd's error.
        let err = cl
            .put("l", "v", Some(PutOptions::new().with_lease(7)))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("requested lease not found"),
            "{err}"
        );
    });
}
