//! Runtime membership changes with etcdctl: add a learner, promote it,
//! remove a member.

mod common;

use common::*;

/// The hex id of member `name` in `etcdctl member list` output.
fn member_id(list: &str, name: &str) -> Option<String> {
    list.lines()
        .find(|l| l.split(", ").nth(2) == Some(name))
        .map(|l| l.split(", ").next().unwrap_or_default().to_string())
}

fn is_learner(list: &str, name: &str) -> Option<bool> {
    list.lines()
        .find(|l| l.split(", ").nth(2) == Some(name))
        .map(|l| l.trim_end().ends_with("true"))
}

#[test]
fn add_learner_promote_it_and_remove_a_member() {
    let mut c = Cluster::start(3);
    let eps = c.endpoints();
    for i in 0..5 {
        put_ok(&eps, &format!("pre/{i}"), "v");
    }
    // Add a fourth member as a learner, then start it.
    let (new, out) = c.add_learner(&eps, "m3");
    assert!(
        out.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{out}"
    );
    c.spawn_with(new, &["--initial-cluster-state=existing"]);
    let ep = c.endpoint(new);
    eventually("the learner replicates the existing data", || {
        let o = etcdctl_try(&[
            "--endpoints",
            &ep,
            "get",
            "pre/",
            "--prefix",
            "--keys-only",
            "--consistency=s",
        ]);
        (String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .count()
            == 5)
            .then_some(())
    });
    let list = eventually("member list shows the started learner", || {
        let l = etcdctl(&["--endpoints", &eps, "member", "list"]);
        (l.lines().count() == 4 && is_learner(&l, "m3") == Some(true)).then_some(l)
    });
    let id = member_id(&list, "m3").expect("m3 listed");

    // Promote it to a voter.
    let out = etcdctl(&["--endpoints", &eps, "member", "promote", &id]);
    assert!(out.contains("promoted"), "{out}");
    let list = etcdctl(&["--endpoints", &eps, "member", "list"]);
    assert_eq!(is_learner(&list, "m3"), Some(false), "{list}");
    // Promoting a voter again is refused with etcd's error.
    let again = etcdctl_try(&["--endpoints", &eps, "member", "promote", &id]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("can only promote a learner member"));

    // Move the promoted member to another peer port: update, restart there.
    let new_peer_port = free_port();
    let new_peer = format!("http://127.0.0.1:{new_peer_port}");
    let out = etcdctl(&[
        "--endpoints",
        &eps,
        "member",
        "update",
        &id,
        &format!("--peer-urls={new_peer}"),
    ]);
    assert!(out.contains("updated"), "{out}");
    c.kill9(new);
    c.members[new].peer_port = new_peer_port;
    c.spawn(new);
    put_ok(&eps, "after-update", "1");
    eventually("the moved member serves new writes", || {
        let o = etcdctl_try(&[
            "--endpoints",
            &ep,
            "get",
            "after-update",
            "--consistency=s",
            "--print-value-only",
        ]);
        (String::from_utf8_lossy(&o.stdout).trim() == "1").then_some(())
    });
    let list = etcdctl(&["--endpoints", &eps, "member", "list"]);
    assert!(list.contains(&new_peer), "{list}");

    // Remove a follower that is not the new member; it stops.
    let leader = c.wait_for_leader();
    let victim = (0..3).find(|i| *i != leader).unwrap();
    let victim_id = member_id(&list, &c.members[victim].name).expect("victim listed");
    let out = etcdctl(&[
        "--endpoints",
        &c.endpoint(leader),
        "member",
        "remove",
        &victim_id,
    ]);
    assert!(out.contains("removed from cluster"), "{out}");
    let status = c
        .wait_member_exit(victim)
        .expect("removed member did not stop");
    assert!(!status.success());
    let log = std::fs::read_to_string(&c.members[victim].log).unwrap();
    assert!(log.contains("removed from the cluster"), "{log}");

    // The cluster of three (two original members and the promoted one) works.
    let live = c.live_endpoints();
    put_ok(&live, "after-remove", "ok");
    let list = etcdctl(&["--endpoints", &live, "member", "list"]);
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(member_id(&list, &c.members[victim].name).is_none());
    eventually("the promoted member serves the new write", || {
        let o = etcdctl_try(&[
            "--endpoints",
            &ep,
            "get",
            "after-remove",
            "--consistency=s",
            "--print-value-only",
        ]);
        (String::from_utf8_lossy(&o.stdout).trim() == "ok").then_some(())
    });

    // As with etcd, the removed member's peer URLs can be added again: the
    // new member gets a new id (the old one stays refused) and a fresh data
    // directory, joins and catches up.
    let peer = format!("http://127.0.0.1:{}", c.members[victim].peer_port);
    let out = etcdctl(&[
        "--endpoints",
        &live,
        "member",
        "add",
        "back",
        &format!("--peer-urls={peer}"),
    ]);
    assert!(out.contains("added to cluster"), "{out}");
    let back = &mut c.members[victim];
    back.name = "back".to_string();
    back.data_dir = c.dir.path().join("back");
    back.log = c.dir.path().join("back.log");
    back.client_port = free_port();
    c.spawn_with(victim, &["--initial-cluster-state=existing"]);
    let back_ep = c.endpoint(victim);
    eventually("the re-added member serves the data", || {
        let o = etcdctl_try(&[
            "--endpoints",
            &back_ep,
            "get",
            "after-remove",
            "--consistency=s",
            "--print-value-only",
        ]);
        (String::from_utf8_lossy(&o.stdout).trim() == "ok").then_some(())
    });
    let list = eventually("member list shows the re-added member", || {
        let l = etcdctl(&["--endpoints", &live, "member", "list"]);
        (l.lines().count() == 4 && member_id(&l, "back").is_some()).then_some(l)
    });
    assert_ne!(member_id(&list, "back"), Some(victim_id), "{list}");
    put_ok(&c.live_endpoints(), "after-readd", "4");
}

/// A member started with `--initial-cluster-state=existing` that was never
/// added asks every peer, keeps asking for `JOIN_NOT_LISTED_GRACE` (a peer
/// may not have applied a MemberAdd yet), then stops with an error that
/// names the fix; the cluster is not disturbed.
#[test]
fn a_member_never_added_stops_with_an_error_naming_member_add() {
    let mut c = Cluster::start(2);
    let eps = c.endpoints();
    put_ok(&eps, "before", "v");
    let stranger = c.add_spec("m9");
    c.spawn_with(stranger, &["--initial-cluster-state=existing"]);
    let status = c
        .wait_member_exit(stranger)
        .expect("the member stops by itself");
    assert!(!status.success(), "exit status {status}");
    let log = std::fs::read_to_string(&c.members[stranger].log).unwrap();
    assert!(
        log.contains("is not in the cluster's member list")
            && log.contains("etcdctl member add m9"),
        "{log}"
    );
    let list = etcdctl(&["--endpoints", &eps, "member", "list"]);
    assert_eq!(list.lines().count(), 2, "{list}");
    put_ok(&eps, "after", "v");
}
