//! Crashes, restarts and damaged WALs, with real processes and real files.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

fn get(eps: &str, key: &str) -> String {
    etcdctl(&["--endpoints", eps, "get", key, "--print-value-only"])
        .trim()
        .to_string()
}

fn put_eventually(eps: &str, key: &str, value: &str) {
    eventually(&format!("put {key}"), || {
        let out = etcdctl_try(&["--endpoints", eps, "put", key, value]);
        out.status.success().then_some(())
    });
}

#[test]
fn kill_9_leader_then_writes_continue_and_the_member_catches_up() {
    let mut c = Cluster::start(3);
    let eps = c.endpoints();
    put_ok(&eps, "before", "1");
    let old = c.wait_for_leader();
    c.kill9(old);
    let live = c.live_endpoints();
    // A new leader is elected and writes continue.
    let new = c.wait_for_leader();
    assert_ne!(new, old);
    for i in 0..20 {
        put_eventually(&live, &format!("after/{i}"), &i.to_string());
    }
    assert_eq!(get(&live, "before"), "1");
    // The killed member restarts and catches up.
    c.spawn(old);
    let ep = c.endpoint(old);
    eventually("restarted member serves the new writes", || {
        let out = etcdctl_try(&[
            "--endpoints",
            &ep,
            "get",
            "after/19",
            "--consistency=s",
            "--print-value-only",
        ]);
        (String::from_utf8_lossy(&out.stdout).trim() == "19").then_some(())
    });
    let all = etcdctl(&[
        "--endpoints",
        &ep,
        "get",
        "after/",
        "--prefix",
        "--keys-only",
        "--consistency=s",
    ]);
    assert_eq!(all.lines().filter(|l| !l.is_empty()).count(), 20);
}

#[test]
fn kill_9_all_members_keeps_every_acknowledged_write() {
    let mut c = Cluster::start(3);
    let eps: Vec<String> = (0..3)
        .map(|i| format!("http://{}", c.endpoint(i)))
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Write as fast as possible from 4 clients; record what was acknowledged.
    let acked = rt.block_on(async {
        let client = etcd_client::Client::connect(eps.clone(), None)
            .await
            .expect("connect");
        let mut tasks = Vec::new();
        for w in 0..4 {
            let mut cl = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut ok = Vec::new();
                for i in 0..40 {
                    let key = format!("w{w}/{i:03}");
                    if cl.put(key.clone(), format!("v{i}"), None).await.is_ok() {
                        ok.push(key);
                    }
                }
                ok
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    assert!(
        acked.len() >= 100,
        "only {} writes acknowledged",
        acked.len()
    );
    for i in 0..3 {
        c.kill9(i);
    }
    for i in 0..3 {
        c.spawn(i);
    }
    c.wait_for_leader();
    let all = c.endpoints();
    let keys = eventually("cluster serves reads after restart", || {
        let out = etcdctl_try(&["--endpoints", &all, "get", "w", "--prefix", "--keys-only"]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    for k in &acked {
        assert!(
            keys.lines().any(|l| l == k),
            "acknowledged write {k} lost after kill -9 of every member"
        );
    }
}

#[test]
fn torn_final_wal_record_is_truncated_and_the_member_rejoins() {
    let mut c = Cluster::start(3);
    let eps = c.endpoints();
    for i in 0..10 {
        put_ok(&eps, &format!("k{i}"), "v");
    }
    let victim = (c.wait_for_leader() + 1) % 3;
    c.kill9(victim);
    // Garble the tail of the last frame, as a write torn by power loss would.
    let seg = wal_segments(&c.wal_dir(victim)).pop().expect("a segment");
    let (_, end) = frames(&seg);
    let mut f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(end - 5)).unwrap();
    f.write_all(&[0xA5; 5]).unwrap();
    drop(f);
    put_ok(&c.live_endpoints(), "while-down", "x");
    c.spawn(victim);
    let ep = c.endpoint(victim);
    eventually("repaired member catches up", || {
        let out = etcdctl_try(&[
            "--endpoints",
            &ep,
            "get",
            "while-down",
            "--consistency=s",
            "--print-value-only",
        ]);
        (String::from_utf8_lossy(&out.stdout).trim() == "x").then_some(())
    });
    let log = std::fs::read_to_string(&c.members[victim].log).unwrap();
    assert!(
        log.contains("torn final WAL record"),
        "the truncation is logged:\n{log}"
    );
    assert!(
        log.contains(&seg.display().to_string()),
        "the log names the file"
    );
}

/// A flipped bit in a middle WAL record: the member no longer refuses to
/// start (ADR 0021). It names file and offset, keeps the valid prefix and
/// repairs the rest from the leader; the others keep serving.
/// `tests/repair.rs` checks the repair under a writer in detail.
#[test]
fn corrupted_middle_wal_record_is_named_and_repaired_from_the_leader() {
    let mut c = Cluster::start(3);
    let eps = c.endpoints();
    for i in 0..10 {
        put_ok(&eps, &format!("k{i}"), "some value");
    }
    let victim = (c.wait_for_leader() + 1) % 3;
    c.kill9(victim);
    let seg = wal_segments(&c.wal_dir(victim)).pop().expect("a segment");
    let (offsets, _) = frames(&seg);
    assert!(offsets.len() >= 4, "{offsets:?}");
    let target = offsets[offsets.len() / 2];
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[target as usize + 9] ^= 0x10;
    std::fs::write(&seg, &bytes).unwrap();
    // The rest of the cluster keeps working.
    put_ok(&c.live_endpoints(), "still", "works");
    c.spawn(victim);
    eventually("the member repairs itself", || {
        let log = std::fs::read_to_string(&c.members[victim].log).ok()?;
        log.contains("log repair complete").then_some(())
    });
    let log = std::fs::read_to_string(&c.members[victim].log).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("mid-log WAL damage"))
        .unwrap_or_else(|| panic!("no repair line:\n{log}"));
    assert!(
        line.contains(&seg.display().to_string()),
        "names the file: {line}"
    );
    assert!(
        line.contains(&format!("offset={target}")),
        "names the offset: {line}"
    );
    let ep = c.endpoint(victim);
    eventually(
        "the repaired member serves the write made while it was down",
        || {
            let out = etcdctl_try(&[
                "--endpoints",
                &ep,
                "get",
                "still",
                "--consistency=s",
                "--print-value-only",
            ]);
            (String::from_utf8_lossy(&out.stdout).trim() == "works").then_some(())
        },
    );
}

#[test]
fn garbage_on_the_peer_port_does_not_crash_a_member() {
    let c = Cluster::start(3);
    let port = c.members[0].peer_port;
    let payloads: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        &[0xff; 4096],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x01\x00\x00\x00\x00\x00garbage-frame",
        &[0u8; 10],
    ];
    for p in payloads {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let _ = s.write_all(p);
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf);
        }
    }
    // A well-formed call from another cluster (wrong token) is rejected, and
    // so is a batch of undecodable messages.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use metalraft::proto::peer::{peer_client::PeerClient, Envelope, RaftBatch};
        let mut cl = PeerClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .expect("connect to peer port");
        let stranger = RaftBatch {
            envelope: Some(Envelope {
                cluster_id: 1,
                from: 2,
                to: 3,
            }),
            messages: vec![vec![1, 2, 3]],
        };
        let err = cl.deliver(stranger).await.expect_err("stranger accepted");
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    });
    // Member 0 is still alive and the cluster still works through it.
    let ep = c.endpoint(0);
    put_ok(&ep, "alive", "yes");
    assert_eq!(get(&ep, "alive"), "yes");
}

fn member_id_hex(c: &Cluster, i: usize) -> String {
    let out = etcdctl(&[
        "--endpoints",
        &c.endpoint(i),
        "endpoint",
        "status",
        "-w",
        "json",
    ]);
    format!("{:x}", json_u64(&out, "member_id").expect("member_id"))
}

#[test]
fn move_leader_and_graceful_shutdown_hand_over_leadership() {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();
    let target = (leader + 1) % 3;
    let target_id = member_id_hex(&c, target);
    let out = etcdctl(&["--endpoints", &c.endpoints(), "move-leader", &target_id]);
    assert!(out.contains("Leadership transferred"), "{out}");
    eventually("target leads", || {
        (c.leader() == Some(target)).then_some(())
    });
    // SIGTERM on the leader: it hands leadership over and exits cleanly.
    let status = c.terminate(target);
    assert!(status.success(), "{status}");
    let log = std::fs::read_to_string(&c.members[target].log).unwrap();
    assert!(log.contains("handed leadership over"), "{log}");
    let next = c.wait_for_leader();
    assert_ne!(next, target);
    etcdctl(&[
        "--endpoints",
        &c.live_endpoints(),
        "put",
        "after-shutdown",
        "ok",
    ]);
}

/// A WAL entry in the server's format before the replica layer (`proposer |
/// seq | kind | body`, no replica envelope) would be skipped on apply,
/// losing its write: the member refuses to start on it, naming the entry.
#[test]
fn a_wal_entry_of_the_old_format_stops_the_member() {
    use metalraft::storage::{Storage, WalOptions, WriteBatch};
    use metalraft_core::{ConfState, Entry, EntryData};

    let mut c = Cluster::start(3);
    put_ok(&c.endpoints(), "k", "v");
    let victim = (c.wait_for_leader() + 1) % 3;
    c.kill9(victim);
    let data_dir = c
        .wal_dir(victim)
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let index = {
        let opened = Storage::open(&data_dir, ConfState::default(), WalOptions::default())
            .expect("open the stopped member's storage");
        let mut storage = opened.storage;
        let log = storage.log();
        let (_, last) = log.bounds().unwrap();
        let term = log.term_of(last).unwrap();
        // proposer 0x0102030405060708 (low byte 0x08: not an envelope kind),
        // seq 1, kind 0 (kv), a body.
        let mut old = 0x0102_0304_0506_0708u64.to_le_bytes().to_vec();
        old.extend_from_slice(&1u64.to_le_bytes());
        old.push(0);
        old.extend_from_slice(b"body");
        let entry = Entry {
            index: last + 1,
            term,
            data: EntryData::Normal(old),
        };
        storage
            .write(
                &[WriteBatch {
                    entries: vec![entry],
                    hard_state: None,
                    clears_repair: false,
                }],
                true,
            )
            .expect("append");
        last + 1
    };
    let out = std::process::Command::new(bin())
        .args(c.flags(victim))
        .output()
        .expect("run metalraft");
    assert!(
        !out.status.success(),
        "an old-format WAL must stop the member"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "entry {index} is not in the replica envelope format"
        )),
        "{err}"
    );
}
