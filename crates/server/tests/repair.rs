//! Issue 20 part 2 with real processes (ADR 0021): a bit flipped in an
//! acknowledged frame in the middle of one stopped member's WAL. The member
//! starts anyway, keeps the valid prefix, reports the repair (log line,
//! `metalraft_repair_pending`, `/health`), refuses serializable reads,
//! catches up from the leader, and becomes a voter again, while the cluster
//! keeps serving a writer throughout; at the end every acknowledged write is
//! readable from it.
//!
//! To hold the member in repair long enough to look at it, it first runs
//! listening for peers on a different port than the one the others dial,
//! so no leader reaches it; then it is restarted normally, which also shows
//! that the barrier survives a restart.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// `GET path` on `port`, or `None` while nothing listens there.
fn try_http_get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn metric(port: u16, name: &str) -> Option<f64> {
    try_http_get(port, "/metrics")?
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Flips one bit inside the payload of an acknowledged frame in the middle
/// of member `i`'s last WAL segment; returns (segment, frame offset).
fn flip_middle_frame(c: &Cluster, i: usize) -> (std::path::PathBuf, u64) {
    let seg = wal_segments(&c.wal_dir(i)).pop().expect("a segment");
    let (offsets, _) = frames(&seg);
    assert!(offsets.len() >= 8, "{offsets:?}");
    let target = offsets[offsets.len() / 2];
    let mut img = std::fs::read(&seg).unwrap();
    img[target as usize + 12] ^= 0x20;
    std::fs::write(&seg, &img).unwrap();
    (seg, target)
}

/// The number of acknowledged writes grows by `n` within the deadline.
fn writes_flow(acked: &Mutex<Vec<String>>, n: usize, what: &str) {
    let before = acked.lock().unwrap().len();
    eventually(what, || {
        (acked.lock().unwrap().len() >= before + n).then_some(())
    });
}

#[test]
fn a_flipped_bit_mid_log_is_repaired_from_the_leader_under_a_writer() {
    let mut c = Cluster::start(3);
    let eps = c.endpoints();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let (stop, acked, eps) = (stop.clone(), acked.clone(), eps.clone());
        std::thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w/{i:05}");
                let out = etcdctl_try(&["--endpoints", &eps, "put", &key, "v"]);
                if out.status.success() {
                    acked.lock().unwrap().push(key);
                }
                i += 1;
            }
        })
    };
    writes_flow(&acked, 20, "writes flow before the damage");
    let victim = (c.wait_for_leader() + 1) % 3;
    c.kill9(victim);
    let (seg, offset) = flip_middle_frame(&c, victim);
    writes_flow(&acked, 3, "writes flow while the member is down");

    // Phase 1: the damaged member starts, unreachable by the leader.
    let cut_off_peer = format!("--listen-peer-urls=http://127.0.0.1:{}", free_port());
    let mut flags = c.flags(victim);
    flags.retain(|f| !f.starts_with("--listen-peer-urls="));
    flags.push(cut_off_peer);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&c.members[victim].log)
        .unwrap();
    let child = std::process::Command::new(bin())
        .args(&flags)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn metalraft");
    c.children[victim] = Some(child);
    let port = c.members[victim].client_port;
    eventually("the damaged member starts and reports the repair", || {
        (metric(port, "metalraft_repair_pending")? == 1.0).then_some(())
    });
    let barrier = metric(port, "metalraft_repair_barrier_index").unwrap();
    assert!(barrier > 0.0, "barrier {barrier}");
    let health = try_http_get(port, "/health").unwrap();
    assert!(
        health.contains("503") && health.contains("LOG REPAIR IN PROGRESS"),
        "{health}"
    );
    let ep = c.endpoint(victim);
    let out = etcdctl_try(&[
        "--endpoints",
        &ep,
        "get",
        "w/",
        "--prefix",
        "--consistency=s",
    ]);
    assert!(!out.status.success(), "a serializable read must be refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("etcdserver: not capable"), "{err}");
    let text = std::fs::read_to_string(&c.members[victim].log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("mid-log WAL damage"))
        .unwrap_or_else(|| panic!("no repair log line:\n{text}"));
    assert!(line.contains(&seg.display().to_string()), "{line}");
    assert!(line.contains(&format!("offset={offset}")), "{line}");
    assert!(line.contains(&format!("barrier={barrier}")), "{line}");
    // The two healthy members keep serving meanwhile.
    writes_flow(&acked, 3, "writes flow while the member repairs");

    // Phase 2: restarted normally, it resumes the repair from its record,
    // catches up from the leader and votes again.
    c.terminate(victim);
    c.spawn(victim);
    eventually("the member finishes the repair", || {
        (metric(port, "metalraft_repair_pending")? == 0.0).then_some(())
    });
    eventually("the member is healthy again", || {
        try_http_get(port, "/health")?
            .contains("\"health\":\"true\"")
            .then_some(())
    });
    let text = std::fs::read_to_string(&c.members[victim].log).unwrap();
    assert!(
        text.contains("resuming the repair") && text.contains("log repair complete"),
        "{text}"
    );
    writes_flow(&acked, 3, "writes flow after the repair");
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    // A voter again: with one healthy member stopped, the repaired member
    // and the other one still form a majority (and elect a leader if the
    // stopped one led).
    let other = (0..3).find(|&i| i != victim).unwrap();
    c.kill9(other);
    put_ok(
        &c.live_endpoints(),
        "after/repair",
        "quorum with the repaired member",
    );
    c.spawn(other);

    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 30,
        "only {} writes acknowledged",
        acked.len()
    );
    let last = acked.last().unwrap().clone();
    let keys = eventually(
        "the repaired member serves every acknowledged write",
        || {
            let out = etcdctl_try(&[
                "--endpoints",
                &ep,
                "get",
                "w/",
                "--prefix",
                "--keys-only",
                "--consistency=s",
            ]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.status.success() && text.lines().any(|l| l == last)).then_some(text)
        },
    );
    for k in &acked {
        assert!(keys.lines().any(|l| l == k), "repaired member lacks {k}");
    }
}
