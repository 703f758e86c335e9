//! Minimal reproductions of metalraft-core bugs found by the simulator
//! (see KNOWN_CORE_BUGS.md). They drive the core directly with a tiny
//! synchronous harness: persistence is immediate, messages are delivered
//! in order, a node can be isolated. Each test asserts what a correct core
//! must do. A test for a bug still open is `#[ignore]`d (run those with
//! `cargo test -p metalraft-sim --test core_bugs -- --ignored`); every bug
//! found so far is fixed, so all run by default.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use metalraft_core::{
    ConfChange, ConfChangeOp, ConfState, Config, MemStorage, Message, MessageBody, Node, NodeId,
    Role,
};

type N = Node<Vec<u8>, MemStorage<Vec<u8>>>;

/// Ticks a correct cluster needs at most to recover in these scenarios
/// (dozens of election timeouts of the default configuration).
const RECOVERY_TICKS: usize = 500;

struct Cluster {
    nodes: BTreeMap<NodeId, N>,
    inflight: VecDeque<Message<Vec<u8>>>,
    isolated: BTreeSet<NodeId>,
    /// Vote requests (not pre-votes) from these nodes are dropped: this
    /// stands for a node whose stale configuration does not list the
    /// receivers (as in the membership seeds), without the membership
    /// changes that lead there.
    votes_dropped_from: BTreeSet<NodeId>,
    cfg: fn(NodeId) -> Config,
}

impl Cluster {
    fn new(voters: &[NodeId], spares: &[NodeId], cfg: fn(NodeId) -> Config) -> Self {
        let mut nodes = BTreeMap::new();
        for &id in voters {
            nodes.insert(
                id,
                Node::new(cfg(id), MemStorage::bootstrap(voters), 0).unwrap(),
            );
        }
        for &id in spares {
            let s = MemStorage::new_with_conf(ConfState::default());
            nodes.insert(id, Node::new(cfg(id), s, 0).unwrap());
        }
        Cluster {
            nodes,
            inflight: VecDeque::new(),
            isolated: BTreeSet::new(),
            votes_dropped_from: BTreeSet::new(),
            cfg,
        }
    }

    fn drive(&mut self) {
        loop {
            let mut progress = false;
            for node in self.nodes.values_mut() {
                while node.has_ready() {
                    progress = true;
                    let mut rd = node.ready().unwrap();
                    for m in rd.take_messages() {
                        let vote = matches!(
                            m.body,
                            MessageBody::RequestVote {
                                pre_vote: false,
                                ..
                            }
                        );
                        if vote && self.votes_dropped_from.contains(&m.from) {
                            continue;
                        }
                        if !self.isolated.contains(&m.from) && !self.isolated.contains(&m.to) {
                            self.inflight.push_back(m);
                        }
                    }
                    if let Some(p) = rd.take_persist() {
                        node.storage_mut().apply_persist(&p);
                        node.on_persisted(p.into_token()).unwrap();
                    }
                    let _ = rd.take_committed_entries();
                }
            }
            while let Some(m) = self.inflight.pop_front() {
                progress = true;
                if let Some(n) = self.nodes.get_mut(&m.to) {
                    let _ = n.step(m); // drops are normal
                }
            }
            if !progress {
                return;
            }
        }
    }

    fn tick(&mut self, n: usize) {
        for _ in 0..n {
            for node in self.nodes.values_mut() {
                node.tick().unwrap();
            }
            self.drive();
        }
    }

    fn leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .filter(|n| n.role() == Role::Leader)
            .max_by_key(|n| n.term())
            .map(|n| n.id())
    }

    /// Ticks until `id` leads and has committed an entry of its term.
    fn elect(&mut self, id: NodeId) {
        self.nodes.get_mut(&id).unwrap().campaign().unwrap();
        self.drive();
        self.tick(3);
        assert_eq!(self.leader(), Some(id));
    }

    fn restart(&mut self, id: NodeId) {
        let storage = self.nodes[&id].storage().clone();
        self.nodes
            .insert(id, Node::new((self.cfg)(id), storage, 0).unwrap());
    }

    fn conf_change(&mut self, leader: NodeId, op: ConfChangeOp) {
        self.nodes
            .get_mut(&leader)
            .unwrap()
            .propose_conf_change(ConfChange::new(&[op]))
            .unwrap();
        self.drive();
    }
}

fn default_cfg(id: NodeId) -> Config {
    Config::new(id)
}

fn plain_cfg(id: NodeId) -> Config {
    let mut c = Config::new(id);
    c.pre_vote = false;
    c.check_quorum = false;
    c
}

/// core bug 1 (swarm seed 70 with --membership): a node added as a voter
/// before it has received any log has an empty configuration, so it drops
/// every vote request as coming from a "non-member" (StepError::NotMember).
/// If the leader restarts (or steps down) before the new voter caught up,
/// no leader can ever be elected again: the old node needs the new node's
/// vote, and the new node refuses to give it. etcd-raft grants votes
/// whatever its own configuration says.
#[test]
fn core_bug_01_new_voter_with_empty_config_refuses_votes() {
    let mut c = Cluster::new(&[1], &[2], default_cfg);
    c.elect(1);
    c.isolated.insert(2); // node 2 is not reachable yet
    c.conf_change(1, ConfChangeOp::AddVoter(2));
    c.restart(1); // the leader restarts before node 2 caught up
    c.isolated.clear();
    c.tick(RECOVERY_TICKS);
    assert!(c.leader().is_some(), "no leader after the network healed");
}

/// core bug 2 (swarm seeds 528, 190, 778, 919, 492 with --membership): a
/// voter that is cut off, campaigns (raising its term) and is demoted to
/// learner meanwhile can never catch up: the leader drops its higher-term
/// vote requests as coming from a non-voter, so it never learns the higher
/// term, and the learner ignores the leader's lower-term appends. etcd-raft
/// steps down on any higher-term vote request (outside a check-quorum
/// lease), and the next leader replicates to the learner.
#[test]
fn core_bug_02_demoted_node_with_higher_term_never_catches_up() {
    let mut c = Cluster::new(&[1, 2, 3], &[], plain_cfg);
    c.elect(1);
    c.isolated.insert(3);
    c.tick(100); // node 3 campaigns alone, its term rises
    assert!(c.nodes[&3].term() > c.nodes[&1].term());
    c.conf_change(1, ConfChangeOp::AddLearner(3));
    c.tick(5);
    c.isolated.clear();
    c.tick(RECOVERY_TICKS);
    let leader = c.leader().expect("a leader");
    let commit = c.nodes[&leader].commit_index();
    assert_eq!(
        c.nodes[&3].commit_index(),
        commit,
        "the learner never caught up"
    );
}

/// core bug 3 (swarm seeds 481, 157, 215, 396, ... with --membership): a
/// leader demotes itself (AddLearner(self)); the change takes effect when
/// appended, so it no longer counts itself as a voter. If it loses
/// leadership before the remaining voter has the entry, that voter needs
/// its vote (its configuration still has both), the demoted node refuses
/// (its log is longer) and never campaigns itself (it is a learner in its
/// own view): no leader, forever.
#[test]
fn core_bug_03_self_demotion_deadlocks() {
    let mut c = Cluster::new(&[1, 2], &[], plain_cfg);
    c.elect(2);
    c.isolated.insert(1);
    c.conf_change(2, ConfChangeOp::AddLearner(2));
    c.tick(60); // node 1 campaigns alone; its higher term deposes node 2 on heal
    c.isolated.clear();
    c.tick(RECOVERY_TICKS);
    assert!(c.leader().is_some(), "no leader after the network healed");
}

/// core bug 4 (swarm seed 400 with --snapshots, before the simulator's
/// workaround): the commit index is persisted lazily (a Persist batch that
/// only moves it needs no sync), so a node can crash with a durable
/// snapshot at index S and a durable commit index below S. On restart
/// `Node::new` takes `committed = hard_state.commit < S` (and clamps
/// `applied` down to it), so the node later asks storage for compacted
/// entries and stops with `StorageError::Compacted`. Everything in a
/// snapshot is committed: the core should start from
/// `max(hard_state.commit, first_index - 1)` (or the contract should say
/// that the commit index must be made durable with the snapshot; the
/// simulator now does that, like `MemStorage::install_snapshot` does for
/// received snapshots).
#[test]
fn core_bug_04_restart_with_commit_below_snapshot_fails() {
    let mut c = Cluster::new(&[1], &[], default_cfg);
    c.elect(1);
    for i in 0..5u8 {
        c.nodes.get_mut(&1).unwrap().propose(vec![i]).unwrap();
        c.drive();
    }
    let n = c.nodes.get_mut(&1).unwrap();
    let applied = n.applied_index();
    assert!(applied >= 6);
    let meta = n.snapshot_created(applied).unwrap();
    n.storage_mut()
        .create_snapshot(meta, vec![1, 2, 3])
        .unwrap();
    // What a crash leaves when the last commit-only batch was not synced.
    let mut durable = n.storage().clone();
    let mut hs = durable.hard_state();
    hs.commit = applied - 1;
    durable.set_hard_state(hs);
    let mut node = Node::new(default_cfg(1), durable, applied).unwrap();
    node.campaign().unwrap();
    for _ in 0..50 {
        while node.has_ready() {
            let Ok(mut rd) = node.ready() else { break };
            if let Some(p) = rd.take_persist() {
                node.storage_mut().apply_persist(&p);
                let _ = node.on_persisted(p.into_token());
            }
        }
        let _ = node.tick();
    }
    assert_eq!(node.failure(), None, "the restarted node stopped");
    assert_eq!(node.role(), Role::Leader);
}

fn narrow_timeout_cfg(id: NodeId) -> Config {
    // Swarm seeds 3556 and 16111: et=19..20 (no randomisation left),
    // pre-vote off, check-quorum on.
    let mut c = Config::new(id);
    c.pre_vote = false;
    c.election_timeout_ticks_min = 19;
    c.election_timeout_ticks_max = 20;
    c
}

/// core bug 5 (issue 12; default swarm seeds 3556 and 16111, "no leader
/// elected"): a node resets its election timer when a vote request with a
/// higher term arrives, even though it then rejects the vote (the
/// candidate's log is behind). `step_inner` (node/step.rs) calls
/// `become_follower` for any higher-term message, and `become_follower`
/// (node/election.rs) calls `reset_timers`. A candidate with a stale log
/// whose clock runs slightly faster (or whose timeout is shorter) so keeps
/// pushing back the timer of the only node that could win, forever: in
/// seed 3556 node 1 (last index 167) campaigns every 18.2 ms, node 2 (last
/// index 169, timeout 19 of its slower ticks) never times out. Raft's
/// Figure 2 resets the timer only on granting a vote or hearing from the
/// current leader ("If election timeout elapses without receiving
/// AppendEntries RPC from current leader or granting vote to candidate:
/// convert to candidate"). Expected: adopting a higher term from a vote
/// request that is not granted leaves `election_elapsed` alone. (etcd-raft
/// resets here too, but its timeouts are drawn from [T, 2T), never from a
/// range one tick wide as the simulator may draw.)
#[test]

fn core_bug_05_rejected_vote_request_resets_election_timer() {
    let mut c = Cluster::new(&[1, 2], &[], narrow_timeout_cfg);
    c.elect(2);
    // Node 2's log gets ahead of node 1's (uncommitted is enough: the
    // up-to-date rule compares logs).
    c.isolated.insert(1);
    for i in 0..3u8 {
        c.nodes.get_mut(&2).unwrap().propose(vec![i]).unwrap();
        c.drive();
    }
    // Both restart as followers that know no leader; the network heals.
    c.restart(1);
    c.restart(2);
    c.isolated.clear();
    assert!(c.nodes[&2].last_index().unwrap() > c.nodes[&1].last_index().unwrap());
    // Node 2's clock is 5% slower: it misses every 20th tick.
    for round in 0..RECOVERY_TICKS {
        for (&id, node) in c.nodes.iter_mut() {
            if id == 2 && round % 20 == 19 {
                continue;
            }
            node.tick().unwrap();
        }
        c.drive();
        if c.leader().is_some() {
            return;
        }
    }
    panic!(
        "no leader after {RECOVERY_TICKS} ticks: node 1 (stale log) keeps resetting node 2's election timer (terms {} and {})",
        c.nodes[&1].term(),
        c.nodes[&2].term()
    );
}

/// core bug 6 (issue 12; `--membership` swarm seeds 4604 and 5755, "a
/// member never catches up"): with pre-vote and check-quorum both off, a
/// node with a higher term drops a lower-term AppendEntries or Heartbeat
/// without answering (`step_inner`, node/step.rs, the `m.term < self.term`
/// branch answers only `if self.cfg.check_quorum || self.cfg.pre_vote`).
/// The old leader never learns the higher term. In the seeds the
/// higher-term node is a member of the leader's configuration but its own
/// stale configuration does not list the leader, so its vote requests
/// never reach the leader either (modelled here by dropping them); seed
/// 4604: leader 3 (term 31, configuration {2, 3}) heartbeats node 2 (term
/// 41+, log 487 < 597, configuration {1, 2}) for the whole liveness phase.
/// Expected (Raft Figure 2, AppendEntries: "Reply false if term <
/// currentTerm"): always answer a stale append or heartbeat with the
/// current term, so the leader steps down and a leader of a newer term
/// (the old one, re-elected) replicates to the node.
#[test]

fn core_bug_06_stale_leader_never_told_about_higher_term() {
    let mut c = Cluster::new(&[1, 2, 3], &[], plain_cfg);
    c.elect(1);
    c.isolated.insert(3);
    c.tick(100); // node 3 campaigns alone, its term rises
    for i in 0..3u8 {
        c.nodes.get_mut(&1).unwrap().propose(vec![i]).unwrap();
        c.drive();
    }
    assert!(c.nodes[&3].term() > c.nodes[&1].term());
    c.votes_dropped_from.insert(3); // node 3's configuration lacks 1 and 2
    c.isolated.clear();
    c.tick(RECOVERY_TICKS);
    let leader = c.leader().expect("a leader");
    let commit = c.nodes[&leader].commit_index();
    assert_eq!(
        c.nodes[&3].commit_index(),
        commit,
        "node 3 never caught up: terms {:?}",
        c.nodes.values().map(|n| n.term()).collect::<Vec<_>>()
    );
}

fn no_prevote_cfg(id: NodeId) -> Config {
    let mut c = Config::new(id);
    c.pre_vote = false;
    c.rng_seed = id;
    c
}

/// core bug 7 (issue 12; `--membership` swarm seed 4854, "no leader
/// elected"): a vote request with a term below the receiver's is dropped
/// without an answer (`step_inner`, node/step.rs: the `m.term < self.term`
/// branch answers only pre-vote requests and, with check-quorum or
/// pre-vote, appends). A candidate whose term is behind never learns the
/// higher term and never catches up with it. In seed 4854 node 3 (the
/// most up-to-date log, configuration {1, 3}) campaigns at terms 79, 80,
/// ... and node 1 (configuration {1, 2}, so it never asks node 3) at 82,
/// 83, ...: node 1 drops every request of node 3 as stale, both terms rise
/// in step, no leader ever. Expected (Raft Figure 2, RequestVote: "Reply
/// false if term < currentTerm", and "if an RPC response contains a term
/// above currentTerm: adopt it"): answer a stale vote request with
/// a rejection in the current term, so the candidate adopts it and its
/// next campaign outbids the stale node.
#[test]

fn core_bug_07_stale_vote_request_is_not_answered() {
    let mut c = Cluster::new(&[1, 3], &[], no_prevote_cfg);
    c.elect(3);
    c.isolated.insert(1);
    for i in 0..3u8 {
        c.nodes.get_mut(&3).unwrap().propose(vec![i]).unwrap();
        c.drive();
    }
    for _ in 0..100 {
        // Only node 1 ticks: it campaigns alone and its term rises.
        c.nodes.get_mut(&1).unwrap().tick().unwrap();
        c.drive();
    }
    c.restart(3); // node 3 no longer leads; its log is ahead
    assert!(c.nodes[&1].term() > c.nodes[&3].term() + 2);
    c.votes_dropped_from.insert(1); // node 1's configuration lacks node 3
    c.isolated.clear();
    c.tick(RECOVERY_TICKS);
    assert!(
        c.leader().is_some(),
        "no leader: terms {:?}",
        c.nodes.values().map(|n| n.term()).collect::<Vec<_>>()
    );
}

/// The harness itself works: without membership changes a partitioned
/// cluster recovers (so the tests above fail for the bug, not the harness).
#[test]
fn harness_recovers_from_a_partition_without_membership_changes() {
    let mut c = Cluster::new(&[1, 2, 3], &[], plain_cfg);
    c.elect(1);
    c.isolated.insert(3);
    c.tick(100);
    c.isolated.clear();
    c.tick(RECOVERY_TICKS);
    let leader = c.leader().expect("a leader");
    let commit = c.nodes[&leader].commit_index();
    assert!(c.nodes.values().all(|n| n.commit_index() == commit));
    let mut c = Cluster::new(&[1], &[2], default_cfg);
    c.elect(1);
    c.conf_change(1, ConfChangeOp::AddVoter(2));
    c.tick(50);
    c.restart(1);
    c.tick(RECOVERY_TICKS);
    assert!(c.leader().is_some());
}
