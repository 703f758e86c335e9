//! Read-only txns (every operation a range) are served without the Raft
//! log, as etcd serves them: with Debian's `etcdctl` (etcd 3.4) on a
//! follower and on the leader while a writer runs, every read-only txn sees
//! one consistent view; many of them leave the Raft index where it was
//! (a txn with a put moves it); one asked on a member right after a write
//! acknowledged by another member sees that write (linearizable); auth
//! checks every range and compare key; the gateway's `/v3/kv/txn` takes the
//! same path.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::*;

/// `etcdctl txn` on `ep` with the interactive-mode script `script` (one
/// line each: compares, then a blank line, success ops, a blank line,
/// failure ops, a blank line; so no compares is a leading blank line),
/// extra flags before `txn`; returns stdout, asserting success.
fn txn(ep: &str, extra: &[&str], script: &str) -> String {
    let mut args = vec!["--endpoints", ep];
    args.extend_from_slice(extra);
    args.push("txn");
    let out = etcdctl_stdin(&args, script.as_bytes());
    assert!(
        out.status.success(),
        "etcdctl txn on {ep} failed: {}\nscript:\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The Raft index (`raftIndex`, the commit index) `etcdctl endpoint
/// status` reports for `ep`.
fn raft_index(ep: &str) -> u64 {
    let out = etcdctl(&["--endpoints", ep, "endpoint", "status", "-w", "json"]);
    json_u64(&out, "raftIndex").unwrap_or_else(|| panic!("no raftIndex in {out}"))
}

/// Waits until every member of `c` has published its attributes (an entry
/// of its own in the log), so the Raft index moves only for client writes.
fn wait_published(c: &Cluster) {
    let eps = c.endpoints();
    eventually("every member published", || {
        let out = etcdctl(&["--endpoints", &eps, "member", "list"]);
        (out.lines().count() == c.members.len() && !out.contains("unstarted")).then_some(())
    });
}

/// The header revision `etcdctl endpoint status` reports for `ep`.
fn revision(ep: &str) -> u64 {
    let out = etcdctl(&["--endpoints", ep, "endpoint", "status", "-w", "json"]);
    json_u64(&out, "revision").unwrap_or_else(|| panic!("no revision in {out}"))
}

/// The values in etcdctl's simple txn output (`SUCCESS`/`FAILURE`, then
/// key and value lines of every get).
fn txn_lines(out: &str) -> Vec<&str> {
    out.lines().filter(|l| !l.is_empty()).collect()
}

#[test]
fn read_only_txns_with_etcdctl_consistent_without_the_log_and_linearizable() {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let eps = c.endpoints();
    wait_published(&c);
    put_ok(&eps, "a", "0");
    put_ok(&eps, "b", "0");

    // A writer moves `a` and `b` together, in one txn (one revision each),
    // through the leader, while read-only txns run on every member.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written) = (stop.clone(), written.clone());
        let ep = c.endpoint(leader);
        std::thread::spawn(move || {
            let mut i = 1u64;
            while !stop.load(Ordering::Relaxed) {
                let script = format!("\nput a {i}\nput b {i}\n\n\n");
                let out = txn(&ep, &[], &script);
                assert!(out.starts_with("SUCCESS"), "{out}");
                written.store(i, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    let mut seen_moving = std::collections::BTreeSet::new();
    for round in 0..12 {
        for (m, serializable) in [
            (follower, false),
            (leader, false),
            (other, true),
            (leader, true),
        ] {
            let flag = if serializable { " --consistency=s" } else { "" };
            // A compare on `a`, gets of both in the success branch.
            let script =
                format!("mod(\"a\") > \"0\"\n\nget a{flag}\nget b{flag}\n\nget a{flag}\n\n");
            let before = written.load(Ordering::Relaxed);
            let out = txn(&c.endpoint(m), &[], &script);
            let l = txn_lines(&out);
            assert_eq!(l.len(), 5, "member {m} round {round}: {out}");
            assert_eq!(l[0], "SUCCESS", "{out}");
            assert_eq!((l[1], l[3]), ("a", "b"), "{out}");
            // One view: the writer's two puts are seen together or not at all.
            assert_eq!(l[2], l[4], "member {m} saw a torn write: {out}");
            let v: u64 = l[2].parse().expect("a number");
            if !serializable {
                // Linearizable: at least what was acknowledged before asking.
                assert!(
                    v >= before,
                    "member {m} read {v} after {before} was acknowledged"
                );
            }
            seen_moving.insert(v);
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    assert!(
        seen_moving.len() > 1,
        "the writer did not run during the reads: {seen_moving:?}"
    );

    // No log entries for read-only txns: the Raft index and the revision
    // stay put over many of them (linearizable and serializable, on every
    // member, with nested txns), while a txn with a put moves both.
    let ep_leader = c.endpoint(leader);
    eventually("every member applied the writer's last txn", || {
        let i = raft_index(&ep_leader);
        (0..3)
            .all(|m| raft_index(&c.endpoint(m)) == i)
            .then_some(())
    });
    let index_before = raft_index(&ep_leader);
    let rev_before = revision(&ep_leader);
    for round in 0..10 {
        for m in 0..3 {
            let flag = if round % 2 == 0 {
                ""
            } else {
                " --consistency=s"
            };
            let script = format!(
                "value(\"a\") = \"nope\"\n\nget a{flag}\n\nget b{flag}\nget a --prefix{flag}\n\n"
            );
            let out = txn(&c.endpoint(m), &["-w", "json"], &script);
            // etcd's answer: the current revision in the header.
            assert_eq!(json_u64(&out, "revision"), Some(rev_before), "{out}");
            // The compare fails (etcdctl omits a false `succeeded`).
            assert!(!out.contains("\"succeeded\":true"), "{out}");
        }
    }
    for m in 0..3 {
        assert_eq!(
            raft_index(&c.endpoint(m)),
            index_before,
            "member {m}: read-only txns went through the log"
        );
    }
    assert_eq!(revision(&ep_leader), rev_before);
    let out = txn(&ep_leader, &[], "\nget a\nput c 1\n\n\n");
    assert!(out.starts_with("SUCCESS"), "{out}");
    assert!(
        raft_index(&ep_leader) > index_before,
        "a txn with a put did not move the Raft index"
    );
    assert_eq!(revision(&ep_leader), rev_before + 1);

    // Linearizable: a write acknowledged by one member is seen at once by a
    // read-only txn on another (each write through a different member).
    for i in 0..12u32 {
        let writer = (i as usize) % 3;
        let reader = (writer + 1 + (i as usize / 3) % 2) % 3;
        let value = format!("lin-{i}");
        put_ok(&c.endpoint(writer), "lin", &value);
        let out = txn(&c.endpoint(reader), &[], "\nget lin\n\n\n");
        assert_eq!(
            txn_lines(&out),
            vec!["SUCCESS", "lin", value.as_str()],
            "member {reader} missed the write acknowledged by member {writer}"
        );
    }

    // Serializable means served from local state without a ReadIndex: with
    // the other two members gone, a serializable read-only txn is still
    // answered, a linearizable one is not.
    let survivor = follower;
    for m in [leader, other] {
        c.kill9(m);
    }
    let ep = c.endpoint(survivor);
    let out = txn(&ep, &[], "\nget lin --consistency=s\n\n\n");
    assert_eq!(txn_lines(&out), vec!["SUCCESS", "lin", "lin-11"], "{out}");
    let out = etcdctl_stdin(
        &["--endpoints", &ep, "txn"],
        b"\nget lin --consistency=s\nget lin\n\n\n",
    );
    assert!(
        !out.status.success(),
        "a linearizable read-only txn was served without a quorum"
    );
}

#[test]
fn read_only_txn_refusals_match_the_log_path_and_auth_checks_every_key() {
    let c = Cluster::start_with(1, &["--bcrypt-cost=4"]);
    let ep = c.endpoint(0);
    wait_published(&c);
    put_ok(&ep, "foo1", "x");
    put_ok(&ep, "secret", "s");
    let index = raft_index(&ep);

    // A future revision in a read-only txn: etcd's error, as through the log.
    let out = etcdctl_stdin(&["--endpoints", &ep, "txn"], b"\nget foo1 --rev=999\n\n\n");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mvcc: required revision is a future revision"),
        "{err}"
    );
    // More than --max-txn-ops (128) operations.
    let many: String = (0..129).map(|i| format!("get k{i}\n")).collect();
    let out = etcdctl_stdin(
        &["--endpoints", &ep, "txn"],
        format!("\n{many}\n\n").as_bytes(),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("too many operations in txn request"), "{err}");
    assert_eq!(
        raft_index(&ep),
        index,
        "refused read-only txns reached the log"
    );

    // Auth: alice may read `foo*` only. A read-only txn is allowed when
    // every range and compare key is readable, refused otherwise.
    for args in [
        &["user", "add", "root:pw"][..],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "alice:apw"],
        &["role", "add", "r"],
        &[
            "role",
            "grant-permission",
            "r",
            "--prefix=true",
            "read",
            "foo",
        ],
        &["user", "grant-role", "alice", "r"],
        &["auth", "enable"],
    ] {
        let mut all = vec!["--endpoints", ep.as_str()];
        all.extend_from_slice(args);
        etcdctl(&all);
    }
    let alice = ["--user", "alice:apw"];
    let out = txn(&ep, &alice, "value(\"foo1\") = \"x\"\n\nget foo1\n\n\n");
    assert_eq!(txn_lines(&out), vec!["SUCCESS", "foo1", "x"]);
    for script in [
        // A range on a key she may not read, in either branch.
        "\nget secret\n\n\n",
        "\nget foo1\n\nget secret\n\n",
        // A compare on a key she may not read.
        "value(\"secret\") = \"s\"\n\nget foo1\n\n\n",
    ] {
        let mut args = vec!["--endpoints", ep.as_str()];
        args.extend_from_slice(&alice);
        args.push("txn");
        let out = etcdctl_stdin(&args, script.as_bytes());
        assert!(!out.status.success(), "alice's {script:?} was served");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("etcdserver: permission denied"),
            "{script:?}: {err}"
        );
    }
    // Read permission is enough for a read-only txn (a write needs more).
    let mut args = vec!["--endpoints", ep.as_str()];
    args.extend_from_slice(&alice);
    args.push("txn");
    let out = etcdctl_stdin(&args, b"\nput foo2 y\n\n\n");
    assert!(
        !out.status.success(),
        "alice wrote without write permission"
    );
}

#[test]
fn gateway_read_only_txn_is_served_without_the_log() {
    let c = Cluster::start(3);
    let leader = c.wait_for_leader();
    let follower = (leader + 1) % 3;
    wait_published(&c);
    put_ok(&c.endpoints(), "g", "v");
    let ep = c.endpoint(follower);
    eventually("the follower applied the put", || {
        (raft_index(&ep) == raft_index(&c.endpoint(leader))).then_some(())
    });
    let index = raft_index(&ep);
    let rev = revision(&ep);
    // {"compare":[{"key":"g","value":"v","target":"VALUE"}],"success":[{"request_range":{"key":"g"}}]}
    let body = r#"{"compare":[{"key":"Zw==","value":"dg==","target":"VALUE","result":"EQUAL"}],"success":[{"request_range":{"key":"Zw=="}}]}"#;
    let port = c.members[follower].client_port;
    for _ in 0..5 {
        let out = Command::new("curl")
            .args(["-sS", "-X", "POST", "-d", body])
            .arg(format!("http://127.0.0.1:{port}/v3/kv/txn"))
            .output()
            .expect("run curl");
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("the gateway answers JSON");
        assert_eq!(v["succeeded"], serde_json::Value::Bool(true), "{v}");
        assert_eq!(v["header"]["revision"], rev.to_string(), "{v}");
        assert_eq!(
            v["responses"][0]["response_range"]["kvs"][0]["value"], "dg==",
            "{v}"
        );
    }
    assert_eq!(
        raft_index(&ep),
        index,
        "gateway read-only txns reached the log"
    );
    assert_eq!(raft_index(&c.endpoint(leader)), index);
}
