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

/// A one-member etcd 3.4 on free ports, on `data` (new or restored).
struct Etcd {
    child: std::process::Child,
    ep: String,
}

impl Etcd {
    fn start(data: &Path, peer: u16) -> Etcd {
        let client = free_port();
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(etcd_path())
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
        let ep = format!("127.0.0.1:{client}");
        eventually("etcd up", || {
            etcdctl_try(&["--endpoints", &ep, "endpoint", "health"])
                .status
                .success()
                .then_some(())
        });
        Etcd { child, ep }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes history through `ep`: overwrites, a delete, a compaction, a
/// leased key and a transaction. Returns the lease's ID (hex).
fn write_history(ep: &str) -> String {
    for i in 1..=3 {
        put_ok(ep, "foo", &format!("v{i}"));
    }
    put_ok(ep, "bar", "b1");
    etcdctl(&["--endpoints", ep, "del", "bar"]);
    put_ok(ep, "baz", "z1");
    etcdctl(&["--endpoints", ep, "compact", "3"]);
    put_ok(ep, "foo", "v4");
    let grant = etcdctl(&["--endpoints", ep, "lease", "grant", "600"]);
    let lease = grant
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    etcdctl(&["--endpoints", ep, "put", "leased", "x", "--lease", &lease]);
    let txn = etcdctl_stdin(
        &["--endpoints", ep, "txn"],
        b"\nput t1 a\nput t2 b\ndel baz\n\n\n",
    );
    assert!(txn.status.success(), "{txn:?}");
    lease
}

/// What the reads of [`write_history`]'s keys return (the `kvs` of each
/// JSON answer: keys, values, create/mod revisions, versions, leases), now
/// and at past revisions since the compaction; and whether a read below the
/// compaction is refused as compacted.
fn read_history(ep: &str) -> (Vec<String>, bool) {
    let reads: [&[&str]; 4] = [
        &["get", "", "--prefix"],
        &["get", "foo", "--rev", "3"],
        &["get", "", "--prefix", "--rev", "5"],
        &["get", "baz", "--rev", "8"],
    ];
    let kvs = reads
        .iter()
        .map(|r| {
            let mut args = vec!["--endpoints", ep, "-w", "json"];
            args.extend_from_slice(r);
            let json = etcdctl(&args);
            json.split_once("\"kvs\":")
                .map_or(String::new(), |(_, rest)| rest.to_string())
        })
        .collect();
    let old = etcdctl_try(&["--endpoints", ep, "get", "foo", "--rev", "2"]);
    let compacted = String::from_utf8_lossy(&old.stderr).contains("compacted");
    (kvs, compacted)
}

/// `metalraft snapshot status` prints what `etcdctl snapshot status` does.
fn same_status(file: &Path) {
    let path = file.to_str().unwrap();
    for w in ["json", "table"] {
        let ours = metalraft(&["snapshot", "status", path, "-w", w]);
        assert!(ours.status.success(), "{}", text(&ours));
        assert_eq!(
            String::from_utf8_lossy(&ours.stdout).trim(),
            etcdctl(&["snapshot", "status", path, "-w", w]).trim(),
            "-w {w}"
        );
    }
}

/// A metalraft backup restored by etcd 3.4's own tool into an etcd member:
/// the same keys, versions, revisions, history since the compaction and
/// leases (the way from metalraft back to etcd).
#[test]
fn a_backup_restores_into_etcd_3_4() {
    let mut c = Cluster::start(1);
    let ep = c.endpoint(0);
    let lease = write_history(&ep);
    let file = c.dir.path().join("backup.db");
    etcdctl(&[
        "--endpoints",
        &ep,
        "snapshot",
        "save",
        file.to_str().unwrap(),
    ]);
    let ours = read_history(&ep);
    assert!(
        ours.0[0].contains("\"lease\""),
        "the leased key: {:?}",
        ours.0
    );
    assert!(ours.1, "a read below the compaction is refused");
    c.kill9(0);
    same_status(&file);

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("e1");
    let peer = free_port();
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
    let etcd = Etcd::start(&data, peer);
    assert_eq!(
        read_history(&etcd.ep),
        ours,
        "etcd after restore vs metalraft"
    );
    let leases = etcdctl(&["--endpoints", &etcd.ep, "lease", "list"]);
    assert!(leases.contains(&lease), "{leases}");
}

/// A backup of etcd 3.4 itself restored into a metalraft cluster: the same
/// keys, versions, revisions, history since the compaction and leases (the
/// way from etcd to metalraft).
#[test]
fn an_etcd_3_4_backup_restores_into_metalraft() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(&dir.path().join("e1"), free_port());
    let lease = write_history(&etcd.ep);
    let file = dir.path().join("etcd-backup.db");
    etcdctl(&[
        "--endpoints",
        &etcd.ep,
        "snapshot",
        "save",
        file.to_str().unwrap(),
    ]);
    let theirs = read_history(&etcd.ep);
    assert!(theirs.1, "etcd refuses a read below the compaction");
    drop(etcd);
    same_status(&file);

    let mut c = Cluster::prepare(1, &[]);
    let out = restore(&c, 0, &file, &[]);
    assert!(out.status.success(), "{}", text(&out));
    c.spawn(0);
    c.wait_for_leader();
    let ep = c.endpoint(0);
    assert_eq!(read_history(&ep), theirs, "metalraft after restore vs etcd");
    let leases = etcdctl(&["--endpoints", &ep, "lease", "list"]);
    assert!(leases.contains(&lease), "{leases}");
    // And it takes writes at the next revision.
    let before = etcdctl(&["--endpoints", &ep, "get", "foo", "-w", "json"]);
    put_ok(&ep, "after", "1");
    let after = etcdctl(&["--endpoints", &ep, "get", "after", "-w", "json"]);
    assert_eq!(
        json_u64(&after, "revision"),
        json_u64(&before, "revision").map(|r| r + 1)
    );
}
