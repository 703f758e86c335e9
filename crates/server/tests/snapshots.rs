//! Snapshots and log compaction with real processes: a member that is far
//! behind catches up through a snapshot, and every member restarts from its
//! snapshot plus the log tail.

mod common;

use common::*;

#[test]
fn far_behind_member_catches_up_via_snapshot_and_all_restart_from_snapshots() {
    let mut c = Cluster::start_with(3, &["--snapshot-count=20"]);
    let leader = c.wait_for_leader();
    let victim = (leader + 1) % 3;
    c.kill9(victim);
    let live = c.live_endpoints();
    for i in 0..150 {
        put_ok(&live, &format!("s/{i:03}"), &i.to_string());
    }
    c.spawn(victim);
    let ep = c.endpoint(victim);
    eventually("the restarted member has every key", || {
        let o = etcdctl_try(&[
            "--endpoints",
            &ep,
            "get",
            "s/",
            "--prefix",
            "--keys-only",
            "--consistency=s",
        ]);
        (String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .count()
            == 150)
            .then_some(())
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
