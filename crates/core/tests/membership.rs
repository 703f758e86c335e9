//! Membership changes (thesis §4): single-server changes, joint consensus,
//! learners, removal of the leader, and safety rules around them.

mod common;

use common::Network;
use metalraft_core::{
    ConfChange, ConfChangeError, ConfChangeOp::*, ConfTransition, MessageKind, Role,
};

fn leader_conf(net: &mut Network) -> metalraft_core::ConfState {
    let l = net.wait_leader();
    net.nodes[&l].conf_state().clone()
}

/// §4.1: add a fourth voter that joins with an empty configuration; it
/// receives the whole log and counts in elections afterwards.
#[test]
fn add_voter_then_it_can_lead() {
    let mut net = Network::new(3, 1);
    let leader = net.wait_leader();
    let w = net.propose(leader, b"before");
    net.add_node(4, 1);
    net.change(ConfChange::new(&[AddVoter(4)]));
    net.tick_until("4 caught up", |n| n.nodes[&4].applied_index() >= w);
    assert_eq!(net.applied_data(4), vec![b"before".to_vec()]);
    assert_eq!(net.nodes[&4].conf_state().voters, [1, 2, 3, 4]);
    // Now only a 3-of-4 majority commits: with two down nothing commits.
    let others: Vec<u64> = (1..=4).filter(|&i| i != leader).collect();
    net.crash(others[0]);
    net.crash(others[1]);
    let idx = net
        .nodes
        .get_mut(&leader)
        .unwrap()
        .propose(b"x".to_vec())
        .unwrap();
    net.ticks(5);
    assert!(net.nodes[&leader].commit_index() < idx);
    net.restart(others[0]);
    net.tick_until("3 of 4 commit", |n| {
        n.nodes.values().any(|x| x.commit_index() >= idx)
    });
    net.restart(others[1]);
    let l = net.wait_leader();
    net.crash(l);
    let l = net.wait_leader();
    assert!(net.nodes[&l].conf_state().voters.contains(&4));
}

/// §4.2.1 learners receive the log but do not vote; promotion makes them
/// voters.
#[test]
fn learner_receives_log_and_is_promoted() {
    let mut net = Network::new(3, 2);
    net.add_node(4, 2);
    net.change(ConfChange::new(&[AddLearner(4)]));
    let leader = net.wait_leader();
    let w = net.propose(leader, b"for the learner");
    net.tick_until("learner applies", |n| n.nodes[&4].applied_index() >= w);
    assert_eq!(net.nodes[&4].conf_state().learners, [4]);
    // A learner never campaigns, even when the leader is gone.
    net.isolate(4);
    net.ticks(100);
    assert_eq!(net.nodes[&4].role(), Role::Follower);
    assert_eq!(net.nodes[&4].stats().campaigns, 0);
    net.heal();
    // Transfer to a learner is an error.
    let leader = net.wait_leader();
    assert_eq!(
        net.nodes.get_mut(&leader).unwrap().transfer_leader(4),
        Err(metalraft_core::TransferError::Learner(4))
    );
    net.change(ConfChange::new(&[AddVoter(4)]));
    net.tick_until("4 knows it is a voter", |n| {
        n.nodes[&4].conf_state().voters.contains(&4)
    });
    assert!(net.nodes[&4].conf_state().learners.is_empty());
}

/// §4.2.3: a removed server does not disrupt the cluster. It never hears of
/// its removal and keeps campaigning, but pre-vote and the lease on votes
/// keep its requests from raising anyone's term.
#[test]
fn removed_follower_cannot_disrupt() {
    let mut net = Network::new(3, 3);
    let leader = net.wait_leader();
    let victim = if leader == 3 { 2 } else { 3 };
    // The victim never hears of its removal (all appends to it lost).
    net.filter = Some(Box::new(move |m| {
        m.to == victim && m.body.kind() == MessageKind::Append
    }));
    net.change(ConfChange::new(&[Remove(victim)]));
    let term = net.nodes[&leader].term();
    net.ticks(300);
    assert!(
        net.nodes[&victim].stats().campaigns > 0,
        "the victim never tried"
    );
    assert_eq!(net.stable_leader(), Some(leader));
    assert_eq!(
        net.nodes[&leader].term(),
        term,
        "removed node bumped the term"
    );
    // Its requests are dropped: it is no voter there and its log lags.
    let refused: u64 = net
        .nodes
        .values()
        .map(|n| n.stats().dropped_not_member)
        .sum();
    assert!(refused > 0);
}

/// Thesis §4.2.2: a leader that demotes itself while the rest of the
/// cluster cannot hear it is still needed until the change commits; the
/// cluster must not deadlock (regression: simulator seed 481).
#[test]
fn self_demotion_of_partitioned_leader_recovers() {
    let mut net = Network::new(2, 481);
    let leader = net.wait_leader();
    let other = 3 - leader;
    net.isolate(other);
    net.nodes
        .get_mut(&leader)
        .unwrap()
        .propose_conf_change(ConfChange::new(&[AddLearner(leader)]))
        .unwrap();
    net.deliver(1_000);
    net.ticks(50);
    net.heal();
    net.tick_until("demotion committed and a leader elected", |n| {
        n.stable_leader() == Some(other) && n.nodes[&other].committed_conf_state().voters == [other]
    });
    assert!(
        net.nodes[&leader]
            .committed_conf_state()
            .learners
            .contains(&leader)
            || net.nodes[&leader].conf_state().learners.contains(&leader)
    );
}

/// A voter added to a cluster whose only other member restarts before the
/// new voter received any log still votes (regression: simulator seed 70).
#[test]
fn new_voter_with_empty_configuration_votes() {
    let mut net = Network::new(1, 70);
    net.wait_leader();
    net.add_node(2, 70);
    // Node 2 hears nothing until the change is on node 1's disk.
    net.isolate(2);
    let idx = net
        .nodes
        .get_mut(&1)
        .unwrap()
        .propose_conf_change(ConfChange::new(&[AddVoter(2)]))
        .unwrap();
    net.deliver(1_000);
    assert!(net.nodes[&1].last_index().unwrap() >= idx);
    net.crash(1);
    net.restart(1);
    net.heal();
    net.tick_until("leader elected with the new voter", |n| {
        n.stable_leader().is_some()
    });
}

/// §4.2.2: a leader that removes itself keeps leading until the change
/// commits, then steps down; the others elect a new leader.
#[test]
fn removing_the_leader() {
    let mut net = Network::new(3, 4);
    let old = net.wait_leader();
    let idx = net
        .nodes
        .get_mut(&old)
        .unwrap()
        .propose_conf_change(ConfChange::new(&[Remove(old)]))
        .unwrap();
    net.deliver(100_000);
    net.tick_until("old leader steps down", |n| {
        n.nodes[&old].role() != Role::Leader
    });
    assert!(net.nodes[&old].commit_index() >= idx);
    let new = net.tick_until("new leader", |n| {
        n.stable_leader().is_some_and(|l| l != old)
    });
    let _ = new;
    let new = net.stable_leader().unwrap();
    let w = net.propose(new, b"after");
    net.tick_until("commits without old", |n| n.nodes[&new].commit_index() >= w);
    net.ticks(50);
    assert_ne!(net.nodes[&old].role(), Role::Leader);
}

/// At most one change may be pending, and a new leader waits for its first
/// commit (Ongaro, raft-dev 2015).
#[test]
fn one_pending_change_and_leader_readiness() {
    let mut net = Network::new(3, 5);
    let leader = net.wait_leader();
    let others: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();
    net.isolate(others[0]);
    net.isolate(others[1]);
    let n = net.nodes.get_mut(&leader).unwrap();
    n.propose_conf_change(ConfChange::new(&[AddLearner(7)]))
        .unwrap();
    assert_eq!(
        n.propose_conf_change(ConfChange::new(&[AddLearner(8)])),
        Err(ConfChangeError::ChangePending)
    );
    net.heal();
    net.tick_until("committed", |n| {
        n.nodes
            .values()
            .all(|x| x.committed_conf_state().learners == [7])
    });
    // A brand-new leader refuses changes until its no-op commits.
    net.drop_kinds.insert(MessageKind::AppendResponse);
    let old = net.wait_leader();
    net.crash(old);
    let new = net.wait_leader();
    assert_eq!(
        net.nodes
            .get_mut(&new)
            .unwrap()
            .propose_conf_change(ConfChange::new(&[AddLearner(9)])),
        Err(ConfChangeError::LeaderNotReady)
    );
}

/// §4.3: joint consensus from {1,2,3} to {3,4,5}: while joint, commitment
/// needs a majority of BOTH configurations; the joint state is then left
/// automatically.
#[test]
fn joint_consensus_needs_both_majorities() {
    let mut net = Network::new(3, 6);
    net.add_node(4, 6);
    net.add_node(5, 6);
    let leader = net.wait_leader();
    let cc = ConfChange {
        ops: vec![AddVoter(4), AddVoter(5), Remove(1), Remove(2)],
        transition: ConfTransition::JointExplicit,
        context: Vec::new(),
    };
    let at = net
        .nodes
        .get_mut(&leader)
        .unwrap()
        .propose_conf_change(cc)
        .unwrap();
    net.tick_until("joint committed", |n| {
        n.nodes
            .values()
            .all(|x| x.committed_conf_state().is_joint() && x.commit_index() >= at)
    });
    let conf = leader_conf(&mut net);
    assert_eq!(
        (conf.voters.clone(), conf.voters_outgoing.clone()),
        (vec![3, 4, 5], vec![1, 2, 3])
    );
    // Cut off the new majority's {4,5}: the old majority {1,2,3} alone
    // cannot commit.
    let leader = net.wait_leader();
    net.isolate(4);
    net.isolate(5);
    let idx = net
        .nodes
        .get_mut(&leader)
        .unwrap()
        .propose(b"needs both".to_vec())
        .unwrap();
    net.deliver(100_000);
    for _ in 0..5 {
        net.tick();
        assert!(
            net.nodes[&leader].commit_index() < idx,
            "committed with one majority only"
        );
    }
    net.heal();
    let leader = net.wait_leader();
    net.tick_until("commits with both", |n| {
        n.nodes[&leader].commit_index() >= idx || n.stable_leader() != Some(leader)
    });
    // Leave explicitly.
    net.change(ConfChange::leave_joint());
    net.tick_until("left joint everywhere", |n| {
        [3, 4, 5].iter().all(|i| {
            n.nodes[i].committed_conf_state() == &metalraft_core::ConfState::with_voters(&[3, 4, 5])
        })
    });
    // 1 and 2 are gone: a 3-node {3,4,5} cluster keeps working without them.
    net.crash(1);
    net.crash(2);
    let l = net.wait_leader();
    assert!([3, 4, 5].contains(&l));
    let w = net.propose(l, b"new config");
    net.tick_until("commit in new config", |n| n.nodes[&l].commit_index() >= w);
}

/// Auto-leave: a joint change with automatic transition leaves by itself.
#[test]
fn joint_consensus_auto_leave() {
    let mut net = Network::new(3, 7);
    net.add_node(4, 7);
    net.add_node(5, 7);
    net.change(ConfChange::new(&[AddVoter(4), AddVoter(5), Remove(1)]));
    net.tick_until("auto left", |n| {
        n.nodes.values().filter(|x| x.id() != 1).all(|x| {
            let c = x.committed_conf_state();
            !c.is_joint() && c.voters == [2, 3, 4, 5]
        })
    });
}

/// A partition during a joint change: whatever side the leader is on, the
/// cluster converges on one configuration and one history after healing.
#[test]
fn partition_during_joint_change() {
    for seed in 0..6 {
        let mut net = Network::new(5, 10 + seed);
        net.add_node(6, seed);
        net.add_node(7, seed);
        let leader = net.wait_leader();
        let cc = ConfChange::new(&[AddVoter(6), AddVoter(7), Remove(1), Remove(2)]);
        net.nodes
            .get_mut(&leader)
            .unwrap()
            .propose_conf_change(cc)
            .unwrap();
        net.deliver(50);
        net.partition(&[1, 2, 6], &[3, 4, 5, 7]);
        net.ticks(100);
        net.heal();
        net.ticks(300);
        let l = net.wait_leader();
        let w = net.propose(l, b"converged");
        net.tick_until("converge", |n| {
            let c = n.nodes[&l].committed_conf_state().clone();
            c.all_voters()
                .iter()
                .all(|v| n.nodes.get(v).is_some_and(|x| x.applied_index() >= w))
        });
        net.check_applied_prefixes();
    }
}

/// Add-then-remove sequences keep a working cluster at every step.
#[test]
fn add_then_remove_sequence() {
    let mut net = Network::new(3, 8);
    for new in 4..=6u64 {
        net.add_node(new, 8);
        net.change(ConfChange::new(&[AddVoter(new)]));
        let old = new - 3;
        net.change(ConfChange::new(&[Remove(old)]));
        let l = net.wait_leader();
        let w = net.propose(l, &[new as u8]);
        net.tick_until("commit", |n| n.nodes[&l].commit_index() >= w);
    }
    let conf = leader_conf(&mut net);
    assert_eq!(conf.voters, [4, 5, 6]);
    net.check_applied_prefixes();
}

/// A voter cut off while it is demoted to learner, whose term rose while
/// it campaigned alone (no pre-vote, no check-quorum), still catches up
/// after healing (regression: simulator seed 528).
#[test]
fn demoted_node_with_higher_term_catches_up() {
    let mut net = Network::with_config(3, 528, |c| {
        c.pre_vote = false;
        c.check_quorum = false;
    });
    let leader = net.wait_leader();
    let lone = if leader == 3 { 2 } else { 3 };
    net.isolate(lone);
    net.ticks(100);
    assert!(net.nodes[&lone].term() > net.nodes[&leader].term());
    net.nodes
        .get_mut(&leader)
        .unwrap()
        .propose_conf_change(ConfChange::new(&[AddLearner(lone)]))
        .unwrap();
    net.ticks(5);
    net.heal();
    net.tick_until("the learner catches up", |n| {
        n.stable_leader()
            .is_some_and(|l| n.nodes[&lone].commit_index() == n.nodes[&l].commit_index())
            && n.nodes[&lone].conf_state().learners == [lone]
    });
}

/// postmortem: the committed-configuration history kept for snapshot
/// metadata grew by one `ConfState` per membership change until the
/// application snapshotted, unbounded for an application that never does,
/// though the README says every history is bounded. Fix: at most
/// `MAX_CONF_HISTORY` (64) are kept; a snapshot older than all of them is
/// refused with `Error::BadIndex`, one at the applied index still works.
#[test]
fn conf_history_is_bounded_without_snapshots() {
    let mut net = Network::new(3, 11);
    let leader = net.wait_leader();
    let first = net.change(ConfChange::new(&[AddLearner(4)]));
    for i in 0..70 {
        let op = if i % 2 == 0 { Remove(4) } else { AddLearner(4) };
        net.change(ConfChange::new(&[op]));
    }
    net.ticks(3);
    let node = net.nodes.get_mut(&leader).unwrap();
    assert_eq!(
        node.snapshot_created(first),
        Err(metalraft_core::Error::BadIndex(first)),
        "the oldest configurations were forgotten"
    );
    let applied = node.applied_index();
    let meta = node.snapshot_created(applied).expect("snapshot at applied");
    assert_eq!(meta.conf_state, *node.conf_state());
}
