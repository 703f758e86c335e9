//! A 3-member cluster of real processes serves Debian's `etcdctl` (etcd 3.4).

mod common;

use common::*;

#[test]
fn put_get_del_txn_member_list_status_and_snapshot() {
    let c = Cluster::start(3);
    let eps = c.endpoints();
    let e = ["--endpoints", eps.as_str()];

    assert_eq!(
        etcdctl(&[e[0], e[1], "put", "greeting", "hello"]).trim(),
        "OK"
    );
    // Read from every member, linearizable (default) and serializable.
    for i in 0..3 {
        let ep = c.endpoint(i);
        assert_eq!(
            etcdctl(&["--endpoints", &ep, "get", "greeting"]),
            "greeting\nhello\n"
        );
        let out = etcdctl(&[
            "--endpoints",
            &ep,
            "get",
            "greeting",
            "--consistency=s",
            "--print-value-only",
        ]);
        // A serializable read on a follower may lag, but not by much.
        if out.trim() != "hello" {
            eventually("follower catches up", || {
                let o = etcdctl(&[
                    "--endpoints",
                    &ep,
                    "get",
                    "greeting",
                    "--consistency=s",
                    "--print-value-only",
                ]);
                (o.trim() == "hello").then_some(())
            });
        }
    }
    // Writes through a follower are forwarded to the leader.
    let leader = c.wait_for_leader();
    let follower = (leader + 1) % 3;
    assert_eq!(
        etcdctl(&[
            "--endpoints",
            &c.endpoint(follower),
            "put",
            "via-follower",
            "1"
        ])
        .trim(),
        "OK"
    );
    assert_eq!(
        etcdctl(&[e[0], e[1], "get", "via-follower", "--print-value-only"]).trim(),
        "1"
    );

    // Prefix reads, prev-kv, delete.
    etcdctl(&[e[0], e[1], "put", "dir/a", "1"]);
    etcdctl(&[e[0], e[1], "put", "dir/b", "2"]);
    assert_eq!(
        etcdctl(&[e[0], e[1], "get", "dir/", "--prefix", "--keys-only"]),
        "dir/a\n\ndir/b\n\n"
    );
    let prev = etcdctl(&[e[0], e[1], "put", "dir/a", "3", "--prev-kv"]);
    assert_eq!(prev, "OK\ndir/a\n1\n");
    assert_eq!(
        etcdctl(&[e[0], e[1], "del", "dir/", "--prefix"]).trim(),
        "2"
    );
    assert_eq!(etcdctl(&[e[0], e[1], "get", "dir/", "--prefix"]), "");

    // Transactions: both branches.
    let txn = "value(\"greeting\") = \"hello\"\n\nput txn-result yes\n\nput txn-result no\n\n";
    let out = etcdctl_stdin(&[e[0], e[1], "txn"], txn.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "SUCCESS\n\nOK\n");
    let txn = "value(\"greeting\") = \"nope\"\n\nput txn-result yes\n\nput txn-result no\n\n";
    let out = etcdctl_stdin(&[e[0], e[1], "txn"], txn.as_bytes());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "FAILURE\n\nOK\n");
    assert_eq!(
        etcdctl(&[e[0], e[1], "get", "txn-result", "--print-value-only"]).trim(),
        "no"
    );

    // A branch that puts one key twice is refused up front, as by etcd,
    // and changes nothing.
    // (In the branch that runs, and in the one that does not.)
    for txn in [
        "\nput dup 1\nput dup 2\n\n\n",
        "\n\nput dup 1\nput dup 2\n\n",
    ] {
        let out = etcdctl_stdin(&[e[0], e[1], "txn"], txn.as_bytes());
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("duplicate key given in txn request"), "{err}");
    }
    assert_eq!(etcdctl(&[e[0], e[1], "get", "dup"]), "");

    // Member list: three started members with their URLs.
    let list = etcdctl(&[e[0], e[1], "member", "list"]);
    assert_eq!(list.lines().count(), 3, "{list}");
    for m in &c.members {
        assert!(
            list.contains(&format!(
                "{}, http://127.0.0.1:{}, http://127.0.0.1:{}",
                m.name, m.peer_port, m.client_port
            )),
            "{list}"
        );
    }

    // Endpoint status: one leader, the same term and index everywhere eventually.
    let status = etcdctl(&[e[0], e[1], "endpoint", "status", "-w", "json"]);
    assert_eq!(status.matches("\"leader\":").count(), 3, "{status}");
    let health = etcdctl_try(&[e[0], e[1], "endpoint", "health"]);
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );

    // Snapshot save writes a file with etcd's framing (body + sha256).
    let snap = c.dir.path().join("backup.db");
    let ep0 = c.endpoint(0);
    etcdctl(&[
        "--endpoints",
        &ep0,
        "snapshot",
        "save",
        snap.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&snap).expect("snapshot file");
    assert_eq!(bytes.len() % 512, 32, "etcd snapshot shape: pages + sha256");
}

#[test]
fn oversized_request_gets_etcds_error_and_nothing_changes() {
    let c = Cluster::start_with(3, &["--max-request-bytes=65536"]);
    let eps = c.endpoints();
    let big = vec![b'x'; 100_000];
    let out = etcdctl_stdin(&["--endpoints", &eps, "put", "big"], &big);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("etcdserver: request is too large"), "{err}");
    assert_eq!(etcdctl(&["--endpoints", &eps, "get", "big"]), "");
    // Just under the limit is fine.
    let ok = vec![b'y'; 60_000];
    let out = etcdctl_stdin(&["--endpoints", &eps, "put", "big"], &ok);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn quota_backend_bytes_refuses_puts_with_etcds_error_and_allows_deletes() {
    let c = Cluster::start_with(3, &["--quota-backend-bytes=20000"]);
    let eps = c.endpoints();
    let value = vec![b'q'; 1000];
    let mut refused = None;
    for i in 0..100 {
        let out = etcdctl_stdin(&["--endpoints", &eps, "put", &format!("q/{i:03}")], &value);
        if !out.status.success() {
            refused = Some(String::from_utf8_lossy(&out.stderr).into_owned());
            break;
        }
    }
    let err = refused.expect("the quota never refused a put");
    assert!(
        err.contains("etcdserver: mvcc: database space exceeded"),
        "{err}"
    );
    let alarms = etcdctl(&["--endpoints", &eps, "alarm", "list"]);
    assert!(alarms.contains("NOSPACE"), "{alarms}");
    // Reads and deletes still work. History counts toward the quota, so
    // as with etcd the deleted versions must be compacted away before
    // there is room again (etcd's procedure: compact, defrag, disarm).
    assert!(!etcdctl(&["--endpoints", &eps, "get", "q/000"]).is_empty());
    let del = etcdctl(&["--endpoints", &eps, "del", "q/", "--prefix", "-w", "json"]);
    let rev = json_u64(&del, "revision").expect("revision");
    let still = etcdctl_try(&["--endpoints", &eps, "put", "fits", "again"]);
    assert!(!still.status.success(), "history still holds the data");
    etcdctl(&["--endpoints", &eps, "compaction", &rev.to_string()]);
    etcdctl(&["--endpoints", &eps, "defrag"]);
    etcdctl(&["--endpoints", &eps, "alarm", "disarm"]);
    put_ok(&eps, "fits", "again");
    assert_eq!(etcdctl(&["--endpoints", &eps, "alarm", "list"]).trim(), "");
}
