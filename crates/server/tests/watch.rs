//! MVCC history and Watch against real processes: `etcdctl get --rev`,
//! `watch`, `compaction`; the `etcd-client` crate's watch API with
//! watchers on followers that resume across kill -9; and Kubernetes'
//! access pattern (paginated list at a fixed revision, watch from the list
//! revision + 1, optimistic updates, compaction).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};

/// Runs `etcdctl watch ...` until `want` lines (in order) were printed on
/// stdout or stderr, or [`WAIT`] passes; returns everything it printed.
fn etcdctl_watch_until(args: &[&str], want: &[&str]) -> Vec<String> {
    let mut child = Command::new(etcdctl_path())
        .env("ETCDCTL_API", "3")
        .arg("watch")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run etcdctl watch");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().expect("stdout"));
    let stderr: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().expect("stderr"));
    for pipe in [stdout, stderr] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let deadline = Instant::now() + WAIT;
    let mut lines = Vec::new();
    let mut next = 0;
    while next < want.len() && Instant::now() < deadline {
        match rx.recv_timeout(POLL) {
            Ok(line) => {
                if line == want[next] {
                    next += 1;
                }
                lines.push(line);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        next,
        want.len(),
        "etcdctl watch {args:?} printed {lines:?}, wanted {want:?}"
    );
    lines
}

fn revision_of(json: &str) -> i64 {
    json_u64(json, "revision").expect("revision in json") as i64
}

#[test]
fn etcdctl_reads_past_revisions_watches_history_and_compacts() {
    let c = Cluster::start(3);
    let eps = c.endpoints();
    let e = eps.as_str();
    let r1 = revision_of(&etcdctl(&[
        "--endpoints",
        e,
        "put",
        "k",
        "v1",
        "-w",
        "json",
    ]));
    let r2 = revision_of(&etcdctl(&[
        "--endpoints",
        e,
        "put",
        "k",
        "v2",
        "-w",
        "json",
    ]));
    etcdctl(&["--endpoints", e, "put", "k2", "x"]);
    etcdctl(&["--endpoints", e, "del", "k"]);

    // Past revisions read as they were.
    let old = etcdctl(&["--endpoints", e, "get", "k", &format!("--rev={r1}")]);
    assert_eq!(old, "k\nv1\n");
    let old = etcdctl(&["--endpoints", e, "get", "k", &format!("--rev={r2}")]);
    assert_eq!(old, "k\nv2\n");
    assert_eq!(etcdctl(&["--endpoints", e, "get", "k"]), "", "deleted now");
    let future = etcdctl_try(&["--endpoints", e, "get", "k", "--rev=1000000"]);
    assert!(!future.status.success());
    assert!(String::from_utf8_lossy(&future.stderr).contains("future revision"));

    // A watch from the first revision replays the history, from a follower.
    let follower = (0..3).find(|i| Some(*i) != c.leader()).unwrap();
    let ep = c.endpoint(follower);
    etcdctl_watch_until(
        &[
            "--endpoints",
            &ep,
            "--prefix",
            "k",
            &format!("--rev={r1}"),
            "--prev-kv",
        ],
        &[
            "PUT", "k", "v1", "PUT", "k", "v1", "k", "v2", "PUT", "k2", "x", "DELETE", "k", "v2",
        ],
    );

    // Live events reach a watcher on a follower.
    let watcher = std::thread::spawn({
        let ep = ep.clone();
        move || etcdctl_watch_until(&["--endpoints", &ep, "live"], &["PUT", "live", "now"])
    });
    std::thread::sleep(Duration::from_millis(500));
    etcdctl(&["--endpoints", e, "put", "live", "now"]);
    watcher.join().expect("watcher");

    // Compaction: older revisions are gone, the compacted one still reads.
    let out = etcdctl(&[
        "--endpoints",
        e,
        "compaction",
        &r2.to_string(),
        "--physical",
    ]);
    assert!(out.contains(&format!("compacted revision {r2}")), "{out}");
    let gone = etcdctl_try(&["--endpoints", e, "get", "k", &format!("--rev={r1}")]);
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("required revision has been compacted"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
    assert_eq!(
        etcdctl(&["--endpoints", e, "get", "k", &format!("--rev={r2}")]),
        "k\nv2\n"
    );
    // A watch from below the compaction is canceled with etcd's message.
    let lines = etcdctl_watch_until(
        &["--endpoints", e, "k", &format!("--rev={r1}")],
        &["watch was canceled (etcdserver: mvcc: required revision has been compacted)"],
    );
    assert!(!lines.iter().any(|l| l == "PUT"), "{lines:?}");

    // Every member hashes the same history.
    let hashes: Vec<u64> = (0..3)
        .map(|i| {
            let out = etcdctl(&[
                "--endpoints",
                &c.endpoint(i),
                "endpoint",
                "hashkv",
                "-w",
                "json",
            ]);
            json_u64(&out, "hash").expect("hash")
        })
        .collect();
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
}

/// One event as a watcher saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    key: String,
    mod_revision: i64,
    value: Vec<u8>,
}

/// Watches prefix `w/` from `start`, on `endpoints[0]` first, moving to the
/// next endpoint and resuming at last revision + 1 whenever a stream breaks,
/// until it has seen `until` or `stop` is set and it is caught up.
async fn resuming_watcher(
    endpoints: Vec<String>,
    start: i64,
    until: Arc<Mutex<Option<i64>>>,
) -> Vec<Seen> {
    let mut seen: Vec<Seen> = Vec::new();
    let mut next = start;
    let mut turn = 0usize;
    let deadline = Instant::now() + WAIT * 2;
    loop {
        assert!(
            Instant::now() < deadline,
            "watcher did not finish; saw {}",
            seen.len()
        );
        if let Some(end) = *until.lock().unwrap() {
            if next > end {
                return seen;
            }
        }
        let ep = endpoints[turn % endpoints.len()].clone();
        turn += 1;
        let Ok(Ok(mut client)) = tokio::time::timeout(
            Duration::from_secs(2),
            Client::connect([format!("http://{ep}")], None),
        )
        .await
        else {
            tokio::time::sleep(POLL).await;
            continue;
        };
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(next)
            .with_prev_key();
        let Ok(Ok((_w, mut stream))) =
            tokio::time::timeout(Duration::from_secs(2), client.watch("w/", Some(opts))).await
        else {
            tokio::time::sleep(POLL).await;
            continue;
        };
        loop {
            if let Some(end) = *until.lock().unwrap() {
                if next > end {
                    return seen;
                }
            }
            let msg = match tokio::time::timeout(Duration::from_secs(1), stream.message()).await {
                Err(_) => continue, // quiet: check `until` again
                Ok(Ok(Some(m))) => m,
                Ok(_) => break, // broken stream: resume elsewhere
            };
            assert_eq!(msg.compact_revision(), 0, "nothing is compacted here");
            if msg.canceled() {
                break;
            }
            for ev in msg.events() {
                let kv = ev.kv().expect("kv");
                assert_eq!(ev.event_type(), EventType::Put);
                assert!(
                    kv.mod_revision() >= next,
                    "duplicate or reordered event {kv:?}"
                );
                next = kv.mod_revision() + 1;
                seen.push(Seen {
                    key: kv.key_str().unwrap().to_string(),
                    mod_revision: kv.mod_revision(),
                    value: kv.value().to_vec(),
                });
            }
        }
    }
}

#[test]
fn watchers_on_followers_resume_across_kill9_and_see_exactly_the_history() {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let all: Vec<String> = (0..3).map(|i| c.endpoint(i)).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let start = revision_of(&etcdctl(&[
        "--endpoints",
        &c.endpoints(),
        "put",
        "start",
        "x",
        "-w",
        "json",
    ])) + 1;
    let until = Arc::new(Mutex::new(None));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // Each watcher starts on a follower and may move to any member.
    let watchers: Vec<_> = followers
        .iter()
        .map(|f| {
            let mut eps = vec![all[*f].clone()];
            eps.extend(all.iter().filter(|e| **e != all[*f]).cloned());
            rt.spawn(resuming_watcher(eps, start, until.clone()))
        })
        .collect();
    // Writers on every member, each key written once.
    let acked = Arc::new(Mutex::new(Vec::<(String, i64)>::new()));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let ep = all[w].clone();
            let acked = acked.clone();
            let stop = stop.clone();
            rt.spawn(async move {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("w/{w}/{n:06}");
                    n += 1;
                    let put = async {
                        let mut cl = Client::connect([format!("http://{ep}")], None).await?;
                        cl.put(key.clone(), format!("v{n}"), None).await
                    };
                    match tokio::time::timeout(Duration::from_secs(3), put).await {
                        Ok(Ok(r)) => acked
                            .lock()
                            .unwrap()
                            .push((key, r.header().unwrap().revision())),
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
        })
        .collect();

    let wait_acked = |n: usize| {
        eventually("writes acknowledged", || {
            (acked.lock().unwrap().len() >= n).then_some(())
        })
    };
    wait_acked(30);
    c.kill9(leader);
    std::thread::sleep(Duration::from_millis(1500));
    c.spawn(leader);
    c.wait_for_leader();
    let n = acked.lock().unwrap().len();
    wait_acked(n + 30);
    // Now kill the member the first watcher started on.
    c.kill9(followers[0]);
    std::thread::sleep(Duration::from_millis(1500));
    c.spawn(followers[0]);
    c.wait_for_leader();
    let n = acked.lock().unwrap().len();
    wait_acked(n + 30);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        rt.block_on(w).unwrap();
    }

    // What the cluster holds now is the history (each key written once).
    let out = rt.block_on(async {
        let mut cl = Client::connect(
            all.iter()
                .map(|e| format!("http://{e}"))
                .collect::<Vec<_>>(),
            None,
        )
        .await
        .unwrap();
        cl.get("w/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap()
    });
    let mut history: Vec<Seen> = out
        .kvs()
        .iter()
        .map(|kv| Seen {
            key: kv.key_str().unwrap().to_string(),
            mod_revision: kv.mod_revision(),
            value: kv.value().to_vec(),
        })
        .collect();
    history.sort_by_key(|s| s.mod_revision);
    let last = out.header().unwrap().revision();
    *until.lock().unwrap() = Some(last);
    let by_key: BTreeMap<&str, i64> = history
        .iter()
        .map(|s| (s.key.as_str(), s.mod_revision))
        .collect();
    for (key, rev) in acked.lock().unwrap().iter() {
        assert_eq!(
            by_key.get(key.as_str()),
            Some(rev),
            "acknowledged write {key} lost"
        );
    }
    for (i, w) in watchers.into_iter().enumerate() {
        let seen = rt.block_on(w).unwrap();
        assert_eq!(seen.len(), history.len(), "watcher {i}: count");
        assert_eq!(seen, history, "watcher {i} saw a different history");
    }
}

#[test]
fn kubernetes_access_pattern() {
    let c = Cluster::start_with(3, &["--experimental-watch-progress-notify-interval=1s"]);
    let eps: Vec<String> = (0..3)
        .map(|i| format!("http://{}", c.endpoint(i)))
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cl = Client::connect(eps.clone(), None).await.unwrap();
        for i in 0..10 {
            cl.put(format!("/registry/pods/p{i}"), format!("spec{i}"), None)
                .await
                .unwrap();
        }
        // Paginated list at a fixed revision: the first page's revision.
        let page = GetOptions::new()
            .with_range("/registry/pods0")
            .with_limit(3);
        let first = cl.get("/registry/pods/", Some(page.clone())).await.unwrap();
        assert!(first.more());
        assert_eq!(first.count(), 10);
        let list_rev = first.header().unwrap().revision();
        // A write between pages must not show in later pages.
        cl.put("/registry/pods/p5", "changed", None).await.unwrap();
        let mut keys: Vec<String> = first
            .kvs()
            .iter()
            .map(|kv| kv.key_str().unwrap().into())
            .collect();
        let mut values: Vec<Vec<u8>> = first.kvs().iter().map(|kv| kv.value().to_vec()).collect();
        let mut more = first.more();
        while more {
            let mut from = keys.last().unwrap().clone().into_bytes();
            from.push(0);
            let next = cl
                .get(from, Some(page.clone().with_revision(list_rev)))
                .await
                .unwrap();
            keys.extend(
                next.kvs()
                    .iter()
                    .map(|kv| kv.key_str().unwrap().to_string()),
            );
            values.extend(next.kvs().iter().map(|kv| kv.value().to_vec()));
            more = next.more();
        }
        assert_eq!(keys.len(), 10);
        assert_eq!(values[5], b"spec5", "page read at the list revision");

        // Watch from list revision + 1 with prev_kv and progress notifications.
        let (_w, mut stream) = cl
            .watch(
                "/registry/pods/",
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(list_rev + 1)
                        .with_prev_key()
                        .with_progress_notify(),
                ),
            )
            .await
            .unwrap();
        let ev = loop {
            let m = stream.message().await.unwrap().expect("watch response");
            if let Some(ev) = m.events().first() {
                break ev.clone();
            }
        };
        assert_eq!(ev.kv().unwrap().key(), b"/registry/pods/p5");
        assert_eq!(ev.kv().unwrap().value(), b"changed");
        assert_eq!(ev.prev_kv().unwrap().value(), b"spec5");
        let p5_rev = ev.kv().unwrap().mod_revision();

        // Optimistic update by txn on mod_revision: the current one wins,
        // a stale one fails.
        let update = |rev: i64, value: &str| {
            Txn::new()
                .when([Compare::mod_revision(
                    "/registry/pods/p5",
                    CompareOp::Equal,
                    rev,
                )])
                .and_then([TxnOp::put("/registry/pods/p5", value, None)])
        };
        assert!(cl.txn(update(p5_rev, "v2")).await.unwrap().succeeded());
        assert!(!cl.txn(update(p5_rev, "v3")).await.unwrap().succeeded());

        // A progress notification (no events) arrives while idle, with a
        // revision covering everything delivered.
        let deadline = Instant::now() + WAIT;
        let mut delivered = p5_rev;
        loop {
            assert!(Instant::now() < deadline, "no progress notification");
            let m = stream.message().await.unwrap().expect("watch response");
            if let Some(last) = m.events().last() {
                delivered = last.kv().unwrap().mod_revision();
                continue;
            }
            let rev = m.header().unwrap().revision();
            assert!(
                rev >= delivered,
                "bookmark {rev} behind delivered {delivered}"
            );
            break;
        }

        // Compact as the apiserver does; the list revision is gone.
        cl.compact(list_rev + 1, None).await.unwrap();
        let err = cl
            .get(
                "/registry/pods/",
                Some(page.clone().with_revision(list_rev)),
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("compacted"), "{err}");
        let put = cl
            .put(
                "/registry/pods/p0",
                "x",
                Some(PutOptions::new().with_prev_key()),
            )
            .await
            .unwrap();
        assert_eq!(put.prev_key().unwrap().value(), b"spec0");
    });
}
