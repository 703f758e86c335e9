//! Snapshots and log compaction with real processes: a member that is far
//! behind catches up through a snapshot, and every member restarts from its
//! snapshot plus the log tail.

mod common;

use common::*;

/// A 3-member cluster snapshotting every 20 entries where one member was
/// down while 150 keys under `prefix` were written, then restarted: it
/// needs a snapshot to catch up. Returns the cluster and that member.
fn member_far_behind(prefix: &str) -> (Cluster, usize) {
    let mut c = Cluster::start_with(3, &["--snapshot-count=20"]);
    let leader = c.wait_for_leader();
    let victim = (leader + 1) % 3;
    c.kill9(victim);
    let live = c.live_endpoints();
    for i in 0..150 {
        put_ok(&live, &format!("{prefix}{i:03}"), &i.to_string());
    }
    wait_out_catch_up_floor();
    c.spawn(victim);
    (c, victim)
}

/// The leader keeps its log for a follower heard from in the last two
/// check-quorum periods (one election timeout each; the catch-up floor).
/// Waiting them out with a member down lets the leader compact beyond that
/// member's log, so it needs a snapshot however fast it and the leader's
/// redial come back.
fn wait_out_catch_up_floor() {
    std::thread::sleep(std::time::Duration::from_millis(3 * ELECTION_MS));
}

#[test]
fn far_behind_member_catches_up_via_snapshot_and_all_restart_from_snapshots() {
    let (mut c, victim) = member_far_behind("s/");
    let ep = c.endpoint(victim);
    eventually("the restarted member has every key", || {
        (local_key_count(&ep, "s/") == 150).then_some(())
    });
    let log = std::fs::read_to_string(&c.members[victim].log).unwrap();
    assert!(
        log.contains("restored state machine from the leader's snapshot"),
        "caught up without a snapshot:\n{log}"
    );
    // The transfer shows in the metrics: sent by a leader, installed here.
    let installed = metric_value(
        c.members[victim].client_port,
        "metalraft_snapshots_installed_total",
    );
    assert!(installed >= Some(1.0), "{installed:?}");
    let sent: f64 = (0..3)
        .filter(|i| *i != victim)
        .filter_map(|i| metric_value(c.members[i].client_port, "metalraft_snapshot_sends_total"))
        .sum();
    assert!(sent >= 1.0, "no snapshot send counted");
    assert!(
        c.members[victim]
            .data_dir
            .join("member/snap")
            .read_dir()
            .unwrap()
            .count()
            >= 1
    );

    // Restart everyone: state comes back from snapshots plus log tails.
    for i in 0..3 {
        c.kill9(i);
    }
    for i in 0..3 {
        c.spawn(i);
    }
    c.wait_for_leader();
    let all = c.endpoints();
    let keys = eventually("reads after the restart", || {
        let o = etcdctl_try(&["--endpoints", &all, "get", "s/", "--prefix", "--keys-only"]);
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    });
    assert_eq!(keys.lines().filter(|l| !l.is_empty()).count(), 150);
    put_ok(&all, "after", "restart");
    for i in 0..3 {
        let log = std::fs::read_to_string(&c.members[i].log).unwrap();
        assert!(
            log.contains("restored state machine from snapshot"),
            "member {i} did not restore from its snapshot"
        );
    }
}

/// A member killed with SIGKILL right as it writes the file of a snapshot
/// received from its leader (ADR 0029: written during the restore, renamed
/// at the install) restarts from what it had made durable and catches up.
#[test]
fn member_killed_while_saving_a_received_snapshot_restarts_and_catches_up() {
    let (mut c, victim) = member_far_behind("k/");
    let snap_dir = c.members[victim].data_dir.join("member/snap");
    let log_path = c.members[victim].log.clone();
    // Kill as soon as the received file appears (mid-write or just
    // written), or at the latest when the restore says it wrote it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let received = std::fs::read_dir(&snap_dir).ok().is_some_and(|rd| {
            rd.filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().ends_with(".received.tmp"))
        });
        let logged = std::fs::read_to_string(&log_path)
            .is_ok_and(|l| l.contains("wrote and synced the received snapshot's file"));
        if received || logged {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no received snapshot file:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    c.kill9(victim);
    c.spawn(victim);
    let ep = c.endpoint(victim);
    eventually("the restarted member has every key", || {
        (local_key_count(&ep, "k/") == 150).then_some(())
    });
    put_ok(&c.endpoints(), "after", "crash");
    let names: Vec<String> = std::fs::read_dir(&snap_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.ends_with(".snap")),
        "no snapshot after catching up: {names:?}"
    );
    assert!(
        !names.iter().any(|n| n.ends_with(".received.tmp")),
        "a received file left after the restart: {names:?}"
    );
}

/// Names of the snapshot files in member `i`'s snapshot directory, oldest
/// first (the names sort by term, then index).
fn snapshot_names(c: &Cluster, i: usize) -> Vec<String> {
    let dir = c.members[i].data_dir.join("member/snap");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".snap") || n.ends_with(".delta"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn get_args<'a>(eps: &'a str, key: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--endpoints", eps, "get", key, "-w", "json"];
    args.extend_from_slice(extra);
    args
}

fn get_json(eps: &str, key: &str, extra: &[&str]) -> String {
    etcdctl(&get_args(eps, key, extra))
}

/// [`get_json`], `None` while etcdctl fails (a member still starting).
fn try_get_json(eps: &str, key: &str, extra: &[&str]) -> Option<String> {
    let o = etcdctl_try(&get_args(eps, key, extra));
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// ADR 0033: with a snapshot every 30 entries, a member writes delta
/// snapshots on a full one. A member far behind is sent the leader's
/// newest snapshot while it is a delta (its data read from several
/// files), and every member restarts from its newest snapshot, delta or
/// not, with the history since the compaction (reads at old revisions)
/// intact; a compaction starts a new chain.
#[test]
fn delta_snapshots_serve_catch_up_and_restarts_with_history() {
    let mut c = Cluster::start_with(3, &["--snapshot-count=30"]);
    let leader = c.wait_for_leader();
    let victim = (leader + 1) % 3;
    c.kill9(victim);
    let live = c.live_endpoints();
    let value = "v".repeat(300);
    // Writes until the leader's newest snapshot is a delta (the snapshot
    // after a full one always is).
    let mut written = 0;
    loop {
        for _ in 0..10 {
            put_ok(
                &live,
                &format!("d/{:02}", written % 40),
                &format!("{written}-{value}"),
            );
            written += 1;
        }
        let names = snapshot_names(&c, leader);
        if names.len() >= 2 && names.last().is_some_and(|n| n.ends_with(".delta")) {
            break;
        }
        assert!(written < 1000, "no delta snapshot on the leader: {names:?}");
    }
    let log = std::fs::read_to_string(&c.members[leader].log).unwrap();
    assert!(log.contains("delta=true"), "no delta saved:\n{log}");
    wait_out_catch_up_floor();

    c.spawn(victim);
    let ep = c.endpoint(victim);
    eventually("the restarted member has every key", || {
        (local_key_count(&ep, "d/") == 40).then_some(())
    });
    let vlog = std::fs::read_to_string(&c.members[victim].log).unwrap();
    assert!(
        vlog.contains("restored state machine from the leader's snapshot"),
        "caught up without a snapshot:\n{vlog}"
    );
    let newest = get_json(&ep, "d/00", &["--consistency=s"]);
    assert!(
        newest.contains(&format!("\"mod_revision\":{}", {
            json_u64(&get_json(&c.endpoint(leader), "d/00", &[]), "mod_revision").unwrap()
        })),
        "{newest}"
    );

    // A compaction, then more writes: a new chain on a new full snapshot.
    let all = c.endpoints();
    let rev = json_u64(&get_json(&all, "d/00", &[]), "revision").unwrap();
    etcdctl(&["--endpoints", &all, "compact", &(rev / 2).to_string()]);
    for i in 0..90 {
        put_ok(
            &all,
            &format!("d/{:02}", i % 40),
            &format!("late{i}-{value}"),
        );
    }
    let before = get_json(&all, "d/", &["--prefix"]);
    let past_rev = (rev / 2 + rev) / 2;
    let past = get_json(&all, "d/", &["--prefix", &format!("--rev={past_rev}")]);
    assert!(past.contains("\"kvs\""), "{past}");

    for i in 0..3 {
        c.kill9(i);
    }
    // Which members restart on a delta (their next snapshot extends it).
    let on_delta: Vec<usize> = (0..3)
        .filter(|&i| {
            snapshot_names(&c, i)
                .last()
                .is_some_and(|n| n.ends_with(".delta"))
        })
        .collect();
    let log_len: Vec<usize> = (0..3)
        .map(|i| std::fs::read_to_string(&c.members[i].log).unwrap().len())
        .collect();
    for i in 0..3 {
        c.spawn(i);
    }
    c.wait_for_leader();
    let after = eventually("reads after the restart", || {
        try_get_json(&all, "d/", &["--prefix"])
    });
    let kvs = |s: &str| s[s.find("\"kvs\"").unwrap()..].to_string();
    assert_eq!(kvs(&after), kvs(&before));
    for i in 0..3 {
        let ep = c.endpoint(i);
        let rev = format!("--rev={past_rev}");
        let past_here = eventually("a past read on each member", || {
            try_get_json(&ep, "d/", &["--prefix", "--consistency=s", &rev])
        });
        assert_eq!(kvs(&past_here), kvs(&past), "member {i}");
        let log = std::fs::read_to_string(&c.members[i].log).unwrap();
        assert!(
            log.contains("restored state machine from snapshot"),
            "member {i} did not restore from its snapshot"
        );
    }

    // A new member right after the restart is sent the snapshot each
    // member loaded at start, read from its file(s).
    let (new, _) = c.add_learner(&all, "m3");
    c.spawn_with(new, &["--initial-cluster-state=existing"]);
    let ep = c.endpoint(new);
    eventually("the new member has every key", || {
        (local_key_count(&ep, "d/") == 40).then_some(())
    });
    let nlog = std::fs::read_to_string(&c.members[new].log).unwrap();
    assert!(
        nlog.contains("restored state machine from the leader's snapshot"),
        "the new member caught up without a snapshot:\n{nlog}"
    );
    let here = get_json(&ep, "d/", &["--prefix", "--consistency=s"]);
    assert_eq!(kvs(&here), kvs(&before));

    // More writes: a member that restarted on a delta extends its chain
    // (its first snapshot since is a delta), and what it wrote restores.
    assert!(!on_delta.is_empty(), "no member restarted on a delta");
    // `all` names the three voters (the learner refuses writes).
    for i in 0..70 {
        put_ok(
            &all,
            &format!("d/{:02}", i % 40),
            &format!("again{i}-{value}"),
        );
    }
    for &i in &on_delta {
        let first_save = eventually("a snapshot after the restart", || {
            let log = std::fs::read_to_string(&c.members[i].log).unwrap();
            let since = &log[log_len[i]..];
            since
                .lines()
                .find(|l| l.contains("saved snapshot"))
                .map(str::to_string)
        });
        assert!(
            first_save.contains("delta=true"),
            "member {i}: {first_save}"
        );
    }
    let before = get_json(&all, "d/", &["--prefix"]);
    for i in 0..4 {
        c.kill9(i);
    }
    for i in 0..4 {
        c.spawn(i);
    }
    c.wait_for_leader();
    for i in 0..4 {
        let ep = c.endpoint(i);
        let here = eventually("serializable reads after the second restart", || {
            try_get_json(&ep, "d/", &["--prefix", "--consistency=s"])
                .filter(|out| kvs(out) == kvs(&before))
        });
        assert_eq!(kvs(&here), kvs(&before), "member {i}");
    }
}
