//! Regression tests for safety defects found by review (issue 12), each
//! named after the defect with a `postmortem:` note. They drive real nodes
//! through a hand-stepped "lab": per-node disks that can be slow (batches
//! written but not yet durable), crashes that lose everything not durable
//! (power loss), and explicit message delivery.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use metalraft_core::{
    Config, EntryData, MemStorage, Message, MessageKind, Node, NodeId, Persist, ReadMode,
    ReadState, Role, Term,
};

type N = Node<Vec<u8>, MemStorage<Vec<u8>>>;

/// A cluster stepped by hand.
struct Lab {
    cfg: fn(NodeId) -> Config,
    nodes: BTreeMap<NodeId, N>,
    /// What each node's disk holds durably (what a power loss keeps).
    durable: BTreeMap<NodeId, MemStorage<Vec<u8>>>,
    /// Nodes whose batches stay written-but-not-durable until `sync`.
    slow: BTreeSet<NodeId>,
    unsynced: BTreeMap<NodeId, VecDeque<Persist<Vec<u8>>>>,
    inflight: Vec<Message<Vec<u8>>>,
    /// Applied normal entries per node: (index, data).
    applied: BTreeMap<NodeId, Vec<(u64, Vec<u8>)>>,
    reads: BTreeMap<NodeId, Vec<ReadState>>,
    /// Every (term, leader) ever observed, across restarts.
    leaders: BTreeMap<Term, BTreeSet<NodeId>>,
    /// How many times each node became leader in each term.
    elections_won: BTreeMap<(NodeId, Term), u32>,
}

impl Lab {
    fn new(voters: &[NodeId], cfg: fn(NodeId) -> Config) -> Self {
        let mut lab = Lab {
            cfg,
            nodes: BTreeMap::new(),
            durable: BTreeMap::new(),
            slow: BTreeSet::new(),
            unsynced: BTreeMap::new(),
            inflight: Vec::new(),
            applied: BTreeMap::new(),
            reads: BTreeMap::new(),
            leaders: BTreeMap::new(),
            elections_won: BTreeMap::new(),
        };
        for &id in voters {
            let storage = MemStorage::bootstrap(voters);
            lab.durable.insert(id, storage.clone());
            lab.nodes
                .insert(id, Node::new(cfg(id), storage, 0).expect("valid"));
            lab.applied.insert(id, Vec::new());
        }
        lab
    }

    fn node(&mut self, id: NodeId) -> &mut N {
        self.nodes.get_mut(&id).expect("node exists")
    }

    /// Drains every node's Ready: messages go in flight, batches are
    /// written (and made durable at once unless the node's disk is slow).
    fn process(&mut self) {
        loop {
            let mut any = false;
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                let node = self.nodes.get_mut(&id).expect("node");
                if !node.has_ready() {
                    continue;
                }
                any = true;
                let mut rd = node.ready().expect("ready");
                self.inflight.extend(rd.take_messages());
                if let Some(p) = rd.take_persist() {
                    node.storage_mut().apply_persist(&p);
                    if self.slow.contains(&id) {
                        self.unsynced.entry(id).or_default().push_back(p);
                    } else {
                        let d = self.durable.get_mut(&id).expect("disk");
                        d.apply_persist(&p);
                        node.on_persisted(p.into_token()).expect("in order");
                    }
                }
                self.reads
                    .entry(id)
                    .or_default()
                    .extend(rd.take_read_states());
                let sm = self.applied.get_mut(&id).expect("sm");
                for e in rd.take_committed_entries() {
                    if let EntryData::Normal(d) = e.data {
                        sm.push((e.index, d));
                    }
                }
                if let Some(soft) = rd.soft_state() {
                    if soft.role == Role::Leader {
                        self.leaders.entry(soft.term).or_default().insert(id);
                        *self.elections_won.entry((id, soft.term)).or_default() += 1;
                    }
                }
            }
            if !any {
                return;
            }
        }
    }

    /// Completes every outstanding write of `id`'s disk.
    fn sync(&mut self, id: NodeId) {
        let pending = self.unsynced.remove(&id).unwrap_or_default();
        for p in pending {
            self.durable.get_mut(&id).expect("disk").apply_persist(&p);
            self.node(id)
                .on_persisted(p.into_token())
                .expect("in order");
        }
        self.process();
    }

    /// Power loss on `id`: everything not durable is gone; the node
    /// restarts from its durable disk with an empty state machine.
    fn crash_restart(&mut self, id: NodeId) {
        self.unsynced.remove(&id);
        self.inflight.retain(|m| m.to != id && m.from != id);
        let storage = self.durable[&id].clone();
        self.nodes
            .insert(id, Node::new((self.cfg)(id), storage, 0).expect("valid"));
        self.applied.insert(id, Vec::new());
    }

    /// Delivers in-flight messages matching `pick` (and what they cause,
    /// also matching `pick`), dropping nothing else.
    fn deliver(&mut self, pick: impl Fn(&Message<Vec<u8>>) -> bool) {
        self.process();
        loop {
            let (now, later): (Vec<_>, Vec<_>) = self.inflight.drain(..).partition(&pick);
            self.inflight = later;
            if now.is_empty() {
                return;
            }
            for m in now {
                if let Some(n) = self.nodes.get_mut(&m.to) {
                    let _dropped_is_fine = n.step(m);
                }
                self.process();
            }
        }
    }

    fn deliver_all(&mut self) {
        self.deliver(|_| true);
    }

    fn ticks(&mut self, id: NodeId, n: u32) {
        for _ in 0..n {
            self.node(id).tick().expect("tick");
            self.process();
        }
    }

    fn in_flight(&self, kind: MessageKind) -> usize {
        self.inflight
            .iter()
            .filter(|m| m.body.kind() == kind)
            .count()
    }

    /// State Machine Safety (§5.4.3): every pair of applied sequences
    /// agrees at every index both applied.
    fn assert_applied_agree(&self) {
        let mut at: BTreeMap<u64, (NodeId, &Vec<u8>)> = BTreeMap::new();
        for (&id, sm) in &self.applied {
            for (i, d) in sm {
                if let Some((other, od)) = at.insert(*i, (id, d)) {
                    assert_eq!(
                        od, d,
                        "n{other} and n{id} applied different entries at index {i}"
                    );
                }
            }
        }
    }

    fn assert_one_leader_per_term(&self) {
        for (term, ids) in &self.leaders {
            assert!(ids.len() <= 1, "term {term} had leaders {ids:?}");
        }
        for ((id, term), won) in &self.elections_won {
            assert_eq!(*won, 1, "n{id} won term {term} {won} times");
        }
    }
}

fn no_prevote(id: NodeId) -> Config {
    let mut c = Config::new(id);
    c.pre_vote = false;
    c.check_quorum = false;
    c
}

/// postmortem: a candidate's RequestVotes were released at once; only its
/// own vote waited for `on_persisted`. With a slow disk it won on its
/// peers' votes alone and replicated in term 2 while term 2 was not yet
/// durable. A power loss took it back to term 1; it campaigned for term 2
/// again, node 3 re-granted (its recorded vote was already for node 1), and
/// its new entry (3, term 2) "matched" node 2's old one by term, so nodes
/// applied different commands at index 3. Fix: nothing is sent in a term
/// that is not durable (`Node::send` defers it to the batch that makes the
/// term durable).
#[test]
fn defect1_candidate_wins_same_term_twice_after_power_loss() {
    let mut lab = Lab::new(&[1, 2, 3], no_prevote);
    lab.slow.insert(1);
    // 1. Node 1 campaigns for term 2 on a slow disk.
    lab.node(1).campaign().expect("campaign");
    lab.process();
    assert_eq!(
        lab.in_flight(MessageKind::Vote),
        0,
        "vote requests must wait for the term to be durable"
    );
    let vote_kinds = [MessageKind::Vote, MessageKind::VoteResponse];
    lab.deliver(|m| vote_kinds.contains(&m.body.kind()));
    // 2. If it leads already, its no-op and "a" reach node 2 only.
    if lab.nodes[&1].role() == Role::Leader {
        let _ = lab.node(1).propose(b"a".to_vec());
    }
    lab.deliver(|m| m.from != 1 || m.to == 2);
    // 3. Power loss before anything of node 1 is durable.
    lab.crash_restart(1);
    lab.slow.remove(&1);
    lab.inflight.clear();
    // 4–5. It campaigns again and proposes "b".
    lab.node(1).campaign().expect("campaign");
    lab.deliver(|m| m.to != 2 && m.from != 2);
    assert_eq!(lab.nodes[&1].role(), Role::Leader);
    lab.node(1).propose(b"b".to_vec()).expect("leader");
    // 6. Everyone catches up.
    lab.deliver_all();
    lab.ticks(1, 5);
    lab.deliver_all();
    lab.assert_one_leader_per_term();
    lab.assert_applied_agree();
    let all_b = lab
        .applied
        .values()
        .all(|sm| sm.iter().any(|(_, d)| d == b"b"));
    assert!(all_b, "every node applies b: {:?}", lab.applied);
}

/// The same rule with the default configuration (pre-vote, check-quorum):
/// the real vote requests after a won pre-vote round wait for durability
/// too, and a leader sends nothing before its term is durable.
#[test]
fn defect1_vote_requests_wait_for_durable_term_with_prevote() {
    let mut lab = Lab::new(&[1, 2, 3], Config::new);
    lab.slow.insert(1);
    lab.node(1).campaign().expect("campaign");
    // The pre-vote round changes nothing durable and goes at once.
    lab.deliver(|m| m.body.kind() != MessageKind::Vote);
    assert_eq!(lab.nodes[&1].role(), Role::Candidate);
    assert_eq!(lab.nodes[&1].term(), 2);
    assert!(
        lab.inflight.iter().all(|m| m.from != 1),
        "a candidate sends nothing in a term that is not durable: {:?}",
        lab.inflight
    );
    lab.sync(1);
    assert_eq!(lab.in_flight(MessageKind::Vote), 2);
    lab.deliver_all();
    lab.sync(1);
    assert_eq!(lab.nodes[&1].role(), Role::Leader);
}

/// Raft paper §5.1: a follower that adopts a higher term answers only once
/// that term is durable (else a crash could let it act in a term it had
/// already told others about, e.g. vote twice).
#[test]
fn defect1_follower_answers_only_in_a_durable_term() {
    let mut lab = Lab::new(&[1, 2, 3], no_prevote);
    lab.slow.insert(2);
    lab.node(1).campaign().expect("campaign");
    lab.deliver(|m| m.to == 2 || m.from == 1);
    assert_eq!(lab.nodes[&2].term(), 2);
    assert!(
        lab.inflight.iter().all(|m| m.from != 2),
        "node 2 answered before term 2 was durable: {:?}",
        lab.inflight
    );
    lab.sync(2);
    assert!(lab.inflight.iter().any(|m| m.from == 2));
}

fn lease(id: NodeId) -> Config {
    let mut c = Config::new(id);
    c.read_mode = ReadMode::Lease;
    c
}

/// postmortem: heartbeat rounds answered after `transfer_leader` extended
/// `lease_until` again, and `leader_read` never looked at the transfer in
/// progress, while voters ignore their lease for the transfer target. So a
/// leader whose target had already won and committed new writes could
/// serve a stale read from its lease. Fix: no lease read and no lease
/// extension while a transfer is pending, nor from rounds sent during one.
#[test]
fn defect2_lease_not_renewed_during_leadership_transfer() {
    let mut lab = Lab::new(&[1, 2, 3], lease);
    // Freshly started nodes refuse votes for one minimum election timeout
    // in lease mode (they may have answered a heartbeat before starting).
    let wait = lease(1).election_timeout_ticks_min;
    lab.ticks(2, wait);
    lab.ticks(3, wait);
    lab.inflight.clear();
    lab.node(1).campaign().expect("campaign");
    lab.deliver_all();
    assert_eq!(lab.nodes[&1].role(), Role::Leader);
    lab.ticks(1, 3);
    lab.deliver_all();
    // A lease read works before the transfer.
    lab.node(1).read_index(1).expect("read");
    lab.process();
    let r = lab.reads[&1].last().expect("served from the lease");
    assert_eq!(r.ctx, 1);
    assert!(r.result.is_ok());
    // Transfer to node 3, but hold the TimeoutNow and keep heartbeats going.
    lab.node(1).transfer_leader(3).expect("transfer");
    lab.process();
    for _ in 0..3 {
        lab.ticks(1, 1);
        lab.deliver(|m| m.body.kind() != MessageKind::TimeoutNow);
    }
    // A read now must not be served from the lease: it waits for a round.
    lab.node(1).read_index(2).expect("read");
    lab.process();
    assert!(
        lab.reads[&1].iter().all(|r| r.ctx != 2),
        "read served from a lease during a transfer"
    );
    // The target wins (voters skip their lease for it) and commits a write.
    lab.deliver(|m| m.body.kind() == MessageKind::TimeoutNow);
    lab.deliver(|m| m.from != 1 && m.to != 1);
    assert_eq!(lab.nodes[&3].role(), Role::Leader);
    lab.node(3).propose(b"new".to_vec()).expect("leader");
    lab.deliver(|m| m.from != 1 && m.to != 1);
    // Node 1 still thinks it leads (it heard nothing): no lease read.
    assert_eq!(lab.nodes[&1].role(), Role::Leader);
    lab.node(1).read_index(3).expect("read");
    lab.process();
    assert!(
        lab.reads[&1]
            .iter()
            .all(|r| r.ctx != 3 || r.result.is_err()),
        "stale read served from a lease after the transfer target won"
    );
}

/// postmortem: the read-round number in a heartbeat response was trusted
/// as is, so one confused or lying peer answering a round the leader never
/// sent counted as a confirmation of every future round: with one more
/// honest answer, reads queued later would be confirmed without a quorum
/// having heard from the leader after they arrived. Fix: an answer to a
/// round that was never sent is dropped as unexpected.
#[test]
fn defect4_read_round_from_the_future_is_dropped() {
    use metalraft_core::{MessageBody, StepError};
    let mut lab = Lab::new(&[1, 2, 3, 4, 5], Config::new);
    lab.node(1).campaign().expect("campaign");
    lab.deliver_all();
    assert_eq!(lab.nodes[&1].role(), Role::Leader);
    let term = lab.nodes[&1].term();
    let forged = |from| Message {
        from,
        to: 1,
        term,
        body: MessageBody::HeartbeatResponse { read_seq: 1 << 40 },
    };
    assert_eq!(lab.node(1).step(forged(2)), Err(StepError::Unexpected));
    assert_eq!(lab.node(1).step(forged(3)), Err(StepError::Unexpected));
    // A read now needs real answers: with nodes 2..5 silent it waits.
    lab.node(1).read_index(7).expect("read");
    lab.process();
    lab.inflight.clear();
    assert!(
        lab.reads
            .get(&1)
            .is_none_or(|r| r.iter().all(|r| r.ctx != 7)),
        "read confirmed by answers to rounds never sent"
    );
    // Honest answers confirm it.
    lab.ticks(1, 2);
    lab.deliver_all();
    assert!(lab.reads[&1].iter().any(|r| r.ctx == 7 && r.result.is_ok()));
}

/// postmortem: the README and ADR 0006 said vote requests from non-voters
/// are dropped, but the core let any sender raise the receiver's term (and
/// win its vote): without pre-vote and check-quorum, a removed server that
/// never heard of its removal forced a new election on the cluster every
/// election timeout. Fix: a vote request from a node that is not a voter
/// here and whose log is behind ours is dropped before it touches the term
/// (`StepError::NotMember`); a member we do not know was added yet has the
/// entry adding it, so its log is ahead of ours and it is still heard.
#[test]
fn defect3_vote_request_from_removed_node_cannot_raise_the_term() {
    use metalraft_core::{ConfChange, ConfChangeOp, MessageBody, StepError};
    let mut lab = Lab::new(&[1, 2, 3], no_prevote);
    lab.node(1).campaign().expect("campaign");
    lab.deliver_all();
    lab.node(1)
        .propose_conf_change(ConfChange::new(&[ConfChangeOp::Remove(3)]))
        .expect("change");
    // Node 3 never hears of its removal.
    lab.deliver(|m| m.to != 3);
    lab.ticks(1, 3);
    lab.deliver(|m| m.to != 3);
    lab.inflight.clear();
    let term = lab.nodes[&2].term();
    // Node 3 campaigns again and again with a log that lacks its removal.
    for _ in 0..5 {
        lab.node(3)
            .campaign()
            .expect("still a voter in its own view");
        lab.deliver(|m| m.from == 3 || m.to == 3);
        // Refused in its own term, it stops being a candidate at once.
        assert_eq!(lab.nodes[&3].role(), Role::Follower);
    }
    assert!(lab.nodes[&3].term() > term);
    assert_eq!(lab.nodes[&2].term(), term, "removed node raised the term");
    assert_eq!(lab.nodes[&1].role(), Role::Leader);
    assert!(lab.nodes[&2].stats().dropped_not_member > 0);
    // A member this node does not know was added yet is still heard: its
    // log holds the entry that added it, so it is ahead of ours.
    let mut fresh = Lab::new(&[1, 2, 3], no_prevote);
    let req = |from, last_log_index, last_log_term| Message {
        from,
        to: 3,
        term: 5,
        body: MessageBody::RequestVote {
            pre_vote: false,
            transfer: false,
            last_log_index,
            last_log_term,
        },
    };
    assert_eq!(fresh.node(3).step(req(9, 0, 0)), Err(StepError::NotMember));
    assert_eq!(fresh.nodes[&3].term(), 1);
    assert_eq!(fresh.node(3).step(req(4, 2, 2)), Ok(()));
    assert_eq!(fresh.nodes[&3].term(), 5);
    fresh.process();
    let granted = fresh.inflight.iter().any(|m| {
        m.to == 4
            && matches!(
                m.body,
                MessageBody::RequestVoteResponse { granted: true, .. }
            )
    });
    assert!(granted, "a newly added member gets the vote");
}

/// A follower's lease state does not survive a restart: it forgets when it
/// last heard from the leader, whose lease counts on its refusing votes for
/// a minimum election timeout after that. So in lease mode a node refuses
/// vote requests for one minimum election timeout after it starts.
#[test]
fn defect4_restarted_follower_keeps_the_lease_promise() {
    use metalraft_core::{MessageBody, StepError};
    let mut lab = Lab::new(&[1, 2, 3], lease);
    let req = Message {
        from: 3,
        to: 2,
        term: 7,
        body: MessageBody::RequestVote {
            pre_vote: false,
            transfer: false,
            last_log_index: 1,
            last_log_term: 1,
        },
    };
    assert_eq!(lab.node(2).step(req.clone()), Err(StepError::InLease));
    lab.ticks(2, lease(2).election_timeout_ticks_min);
    lab.inflight.clear();
    assert_eq!(lab.node(2).step(req), Ok(()));
    assert_eq!(lab.nodes[&2].term(), 7);
}
