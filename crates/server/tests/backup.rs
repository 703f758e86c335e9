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

    // Status: etcdctl's columns, or JSON with its field names.
    let st = metalraft(&["snapshot", "status", file.to_str().unwrap(), "-w", "json"]);
    assert!(st.status.success(), "{}", text(&st));
    let json = String::from_utf8_lossy(&st.stdout).to_string();
    assert_eq!(json_u64(&json, "revision"), Some(revision), "{json}");
    assert_eq!(json_u64(&json, "totalKey"), Some(19), "{json}");
    let table = metalraft(&["snapshot", "status", file.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("TOTAL KEYS"),
        "{}",
        text(&table)
    );

    // Restore every member of a new cluster (new ports and ids), start it.
    let mut new = Cluster::prepare(3, &[]);
    for i in 0..3 {
        let out = restore(&new, i, &file, &[]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains(&format!("restored revision {revision}")));
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
    let mut flipped = bytes.clone();
    flipped[40] ^= 0x01;
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
