//! Backup and restore: `etcdctl snapshot save` from a running cluster,
//! `metalraft snapshot status`, `metalraft snapshot restore` into a new
//! 3-member cluster that serves every key at its revision; damaged files and
//! existing data directories are refused without creating anything.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn metalraft(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run metalraft")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn restore(c: &Cluster, i: usize, file: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["snapshot".to_string(), "restore".to_string()];
    args.push(file.to_str().unwrap().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(c.flags(i));
    Command::new(bin())
        .args(&args)
        .output()
        .expect("run restore")
}

#[test]
fn save_status_restore_into_a_new_cluster_and_refuse_bad_input() {
    // The old cluster: 20 keys, some overwritten, one deleted.
    let mut old = Cluster::start(3);
    let eps = old.endpoints();
    for i in 0..20 {
        put_ok(&eps, &format!("b/{i:02}"), &format!("v{i}"));
    }
    put_ok(&eps, "b/03", "rewritten");
    etcdctl(&["--endpoints", &eps, "del", "b/19"]);
    let header = etcdctl(&["--endpoints", &eps, "get", "b/03", "-w", "json"]);
    let revision = json_u64(&header, "revision").expect("revision");
    let file = old.dir.path().join("backup.db");
    etcdctl(&[
        "--endpoints",
        &old.endpoint(0),
        "snapshot",
        "save",
        file.to_str().unwrap(),
    ]);
    for i in 0..3 {
        old.kill9(i);
    }

    // Status: the file is etcd's database, so etcdctl reads it too, and
    // both tools print the same numbers (JSON with etcdctl's field names,
    // or etcdctl's table).
    let path = file.to_str().unwrap();
    let st = metalraft(&["snapshot", "status", path, "-w", "json"]);
    assert!(st.status.success(), "{}", text(&st));
    let json = String::from_utf8_lossy(&st.stdout).to_string();
    assert_eq!(json_u64(&json, "revision"), Some(revision), "{json}");
    let theirs = etcdctl(&["snapshot", "status", path, "-w", "json"]);
    for field in ["hash", "revision", "totalKey", "totalSize"] {
        assert_eq!(
            json_u64(&json, field),
            json_u64(&theirs, field),
            "{field}: {json} vs etcdctl {theirs}"
        );
    }
    // etcd's key bucket holds every version: 20 puts, 1 rewrite, 1 tombstone.
    assert!(json_u64(&json, "totalKey").unwrap() >= 22, "{json}");
    let table = metalraft(&["snapshot", "status", path]);
    assert_eq!(
        String::from_utf8_lossy(&table.stdout),
        etcdctl(&["snapshot", "status", path, "-w", "table"]),
        "{}",
        text(&table)
    );

    // Restore every member of a new cluster (new ports and ids), start it.
    let mut new = Cluster::prepare(3, &[]);
    for i in 0..3 {
        let out = restore(&new, i, &file, &[]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains(&format!("restored revision {revision} (19 keys)")),
            "{}",
            text(&out)
        );
    }
    // A second restore into the same directory is refused.
    let again = restore(&new, 0, &file, &[]);
    assert!(!again.status.success());
    assert!(text(&again).contains("already exists"), "{}", text(&again));
    for i in 0..3 {
        new.spawn(i);
    }
    new.wait_for_leader();
    let eps = new.endpoints();
    let all = etcdctl(&[
        "--endpoints",
        &eps,
        "get",
        "b/",
        "--prefix",
        "--print-value-only",
    ]);
    let values: Vec<&str> = all.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(values.len(), 19, "{all}");
    assert_eq!(values[3], "rewritten");
    assert!(!all.contains("v19"));
    // Revisions continue from the backup's.
    let h = etcdctl(&["--endpoints", &eps, "get", "b/00", "-w", "json"]);
    assert_eq!(json_u64(&h, "revision"), Some(revision), "{h}");
    put_ok(&eps, "after-restore", "1");
    let h = etcdctl(&["--endpoints", &eps, "get", "after-restore", "-w", "json"]);
    assert_eq!(json_u64(&h, "revision"), Some(revision + 1), "{h}");
    let list = etcdctl(&["--endpoints", &eps, "member", "list"]);
    assert_eq!(list.lines().count(), 3, "{list}");
    for m in &new.members {
        assert!(
            list.contains(&format!("http://127.0.0.1:{}", m.peer_port)),
            "{list}"
        );
    }

    // Damaged files: nothing is created.
    let bytes = std::fs::read(&file).unwrap();
    let spare = Cluster::prepare(1, &[]);
    let bad = spare.dir.path().join("bad.db");
    // A byte of the metalraft snapshot inside the database (its bucket's
    // first value, located through the reader).
    let at = {
        let db = metalraft::bolt::Db::open(&bytes).expect("a bbolt database");
        let chunks = db
            .bucket(metalraft::backup::etcd_db::METALRAFT_BUCKET)
            .unwrap()
            .expect("metalraft's bucket");
        chunks[0].1.as_ptr() as usize - bytes.as_ptr() as usize
    };
    let mut flipped = bytes.clone();
    flipped[at + 8] ^= 0x01;
    std::fs::write(&bad, &flipped).unwrap();
    let out = restore(&spare, 0, &bad, &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("SHA-256 mismatch"), "{}", text(&out));
    let out = restore(&spare, 0, &bad, &["--skip-hash-check"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("not a metalraft snapshot"),
        "{}",
        text(&out)
    );
    std::fs::write(&bad, &bytes[..bytes.len() - 1]).unwrap();
    let out = restore(&spare, 0, &bad, &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("is not a snapshot file"),
        "{}",
        text(&out)
    );
    let out = metalraft(&["snapshot", "status", "/nonexistent/backup.db"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("cannot read /nonexistent/backup.db"),
        "{}",
        text(&out)
    );
    assert!(!spare.members[0].data_dir.exists());
}

/// `etcd` from Debian's etcd-server (setup.sh installs it).
fn etcd_path() -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|p| p.join("etcd"))
        .find(|c| c.is_file())
        .expect("etcd not found: install Debian's etcd-server (scripts/setup.sh does)")
}

/// The fields of every key etcdctl prints with `-w json`, header aside.
fn kvs(json: &str) -> String {
    json.split_once("\"kvs\":")
        .map_or(String::new(), |(_, rest)| rest.to_string())
}

/// A metalraft backup restored by etcd 3.4's own tool into an etcd member:
/// the same keys, versions, revisions, history since the compaction and
/// leases (the way from metalraft back to etcd).
#[test]
fn a_backup_restores_into_etcd_3_4() {
    let mut c = Cluster::start(1);
    let ep = c.endpoint(0);
    for i in 1..=3 {
        put_ok(&ep, "foo", &format!("v{i}"));
    }
    put_ok(&ep, "bar", "b1");
    etcdctl(&["--endpoints", &ep, "del", "bar"]);
    put_ok(&ep, "baz", "z1");
    etcdctl(&["--endpoints", &ep, "compact", "3"]);
    put_ok(&ep, "foo", "v4");
    let grant = etcdctl(&["--endpoints", &ep, "lease", "grant", "600"]);
    let lease = grant
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    etcdctl(&["--endpoints", &ep, "put", "leased", "x", "--lease", &lease]);
    let txn = etcdctl_stdin(
        &["--endpoints", &ep, "txn"],
        b"\nput t1 a\nput t2 b\ndel baz\n\n\n",
    );
    assert!(txn.status.success(), "{txn:?}");
    let file = c.dir.path().join("backup.db");
    etcdctl(&[
        "--endpoints",
        &ep,
        "snapshot",
        "save",
        file.to_str().unwrap(),
    ]);
    let reads: Vec<Vec<String>> = vec![
        vec!["get".into(), "".into(), "--prefix".into()],
        vec!["get".into(), "foo".into(), "--rev".into(), "3".into()],
        vec![
            "get".into(),
            "".into(),
            "--prefix".into(),
            "--rev".into(),
            "5".into(),
        ],
        vec!["get".into(), "baz".into(), "--rev".into(), "8".into()],
    ];
    let read_all = |ep: &str| -> Vec<String> {
        reads
            .iter()
            .map(|r| {
                let mut args = vec!["--endpoints", ep, "-w", "json"];
                args.extend(r.iter().map(String::as_str));
                kvs(&etcdctl(&args))
            })
            .collect()
    };
    let ours = read_all(&ep);
    assert!(ours[0].contains("\"lease\""), "the leased key: {}", ours[0]);
    let compacted = etcdctl_try(&["--endpoints", &ep, "get", "foo", "--rev", "2"]);
    assert!(!compacted.status.success());
    c.kill9(0);

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("e1");
    let (client, peer) = (free_port(), free_port());
    let peer_url = format!("http://127.0.0.1:{peer}");
    let restore = etcdctl_try(&[
        "snapshot",
        "restore",
        file.to_str().unwrap(),
        "--name=e1",
        &format!("--data-dir={}", data.display()),
        &format!("--initial-cluster=e1={peer_url}"),
        &format!("--initial-advertise-peer-urls={peer_url}"),
    ]);
    assert!(restore.status.success(), "{restore:?}");
    let mut etcd = Command::new(etcd_path())
        .args([
            "--name=e1".to_string(),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls=http://127.0.0.1:{client}"),
            format!("--advertise-client-urls=http://127.0.0.1:{client}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=e1={peer_url}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run etcd");
    let eep = format!("127.0.0.1:{client}");
    eventually("etcd up", || {
        etcdctl_try(&["--endpoints", &eep, "endpoint", "health"])
            .status
            .success()
            .then_some(())
    });
    let theirs = read_all(&eep);
    let leases = etcdctl(&["--endpoints", &eep, "lease", "list"]);
    let compacted = etcdctl_try(&["--endpoints", &eep, "get", "foo", "--rev", "2"]);
    let _ = etcd.kill();
    let _ = etcd.wait();
    for (r, (a, b)) in reads.iter().zip(ours.iter().zip(&theirs)) {
        assert_eq!(a, b, "etcdctl {r:?}: metalraft vs etcd after restore");
    }
    assert!(leases.contains(&lease), "{leases}");
    assert!(
        String::from_utf8_lossy(&compacted.stderr).contains("compacted"),
        "{compacted:?}"
    );
}
