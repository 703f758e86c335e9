//! A data directory written before member names and client URLs were
//! replicated (issue 21) starts, publishes them, and keeps them.
//!
//! `fixtures/pre-publish-data-dir.tar.gz` is member `m0` of a one-member
//! cluster (token `upgrade-fixture`, `--snapshot-count=20`) written by the
//! server as of commit b8004f0: keys `k00`..`k54` (`v00`..), snapshots at
//! indexes 40 and 60 in the earlier snapshot layout, a learner `l1` added
//! at peer URL `http://127.0.0.1:1` and never started, and a learner at
//! `http://127.0.0.1:2` added and removed.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::*;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/pre-publish-data-dir.tar.gz"
);
/// `m0`'s peer URL as recorded in the fixture's registry.
const FIXTURE_PEER_URL: &str = "http://127.0.0.1:33380";

fn start(dir: &Path, client_port: u16, peer_port: u16) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("m0.log"))
        .expect("open log");
    Command::new(bin())
        .args([
            "--name=m0".to_string(),
            format!("--data-dir={}", dir.join("m0").display()),
            format!("--listen-client-urls=http://127.0.0.1:{client_port}"),
            format!("--advertise-client-urls=http://127.0.0.1:{client_port}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-cluster=m0=http://127.0.0.1:{peer_port}"),
            "--initial-cluster-token=upgrade-fixture".to_string(),
            // Low, so the run below writes a snapshot in the current layout.
            "--snapshot-count=5".to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn metalraft")
}

/// `name, peer URL, client URL, learner` rows of `member list`.
fn rows(ep: &str) -> Option<Vec<String>> {
    let o = etcdctl_try(&["--endpoints", ep, "member", "list"]);
    if !o.status.success() {
        return None;
    }
    let mut v: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.splitn(3, ", ").nth(2).unwrap_or_default().to_string())
        .collect();
    v.sort();
    Some(v)
}

fn expected(client_port: u16) -> Vec<String> {
    let mut v = vec![
        format!("m0, {FIXTURE_PEER_URL}, http://127.0.0.1:{client_port}, false"),
        ", http://127.0.0.1:1, , true".to_string(),
    ];
    v.sort();
    v
}

fn stop(mut child: Child) {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    wait_exit(&mut child, WAIT).expect("member did not stop after SIGTERM");
}

#[test]
fn a_data_dir_from_before_publish_starts_publishes_and_keeps_attributes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let untar = Command::new("tar")
        .args(["xzf", FIXTURE, "-C"])
        .arg(dir.path())
        .status()
        .expect("run tar");
    assert!(untar.success());
    let dump = || std::fs::read_to_string(dir.path().join("m0.log")).unwrap_or_default();
    let publishes = || dump().matches("published this member's attributes").count();

    // First start on the old directory: the data is there, and the member
    // publishes its name and client URL.
    let (client, peer) = (free_port(), free_port());
    let child = start(dir.path(), client, peer);
    let ep = format!("127.0.0.1:{client}");
    eventually("the upgraded member lists itself by name", || {
        (rows(&ep)? == expected(client)).then_some(())
    });
    let out = etcdctl(&[
        "--endpoints",
        &ep,
        "get",
        "k",
        "--prefix",
        "--print-value-only",
    ]);
    let values: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    let want: Vec<String> = (0..55).map(|i| format!("v{i:02}")).collect();
    assert_eq!(values, want, "{}", dump());
    // Enough writes for a snapshot in the current layout.
    for i in 0..12 {
        put_ok(&ep, &format!("new{i:02}"), "x");
    }
    stop(child);
    assert_eq!(publishes(), 1, "{}", dump());

    // Restart with the same flags: the attributes come back from the
    // snapshot and the WAL, without a new publish.
    let child = start(dir.path(), client, peer);
    eventually("the restarted member lists itself by name", || {
        (rows(&ep)? == expected(client)).then_some(())
    });
    stop(child);
    assert_eq!(
        publishes(),
        1,
        "a restart with the same flags published again"
    );

    // Restart with another client URL: the member publishes the change.
    let client2 = free_port();
    let child = start(dir.path(), client2, peer);
    let ep2 = format!("127.0.0.1:{client2}");
    eventually("the member publishes its new client URL", || {
        (rows(&ep2)? == expected(client2)).then_some(())
    });
    stop(child);
    assert_eq!(publishes(), 2, "{}", dump());
}
