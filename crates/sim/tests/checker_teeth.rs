//! The node-state checkers catch issue 12's defect 1 with real `Node`s:
//! a candidate whose new term is not yet durable wins, crashes, restarts
//! and wins the same term again, and two different entries end up at one
//! committed (index, term). Client histories cannot see this; the
//! election checker (a leader per term *and incarnation*) and the
//! committed-entry checker (what each node reports committed) do.
//!
//! A tiny synchronous harness: messages are delivered in order, a link can
//! be cut, and one node has a slow disk: its writes reach its storage but
//! are acknowledged (and become durable) only when released; a crash
//! restarts it from what was durable.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use metalraft_core::{
    Config, EntryData, LogStorage, MemStorage, Message, MessageBody, Node, NodeId, PersistToken,
    Role,
};
use metalraft_sim::checkers::{CommittedChecker, ElectionChecker, Violation};
use metalraft_sim::digest::{fnv_bytes, FNV_OFFSET};

type N = Node<Vec<u8>, MemStorage<Vec<u8>>>;

fn digest(d: &EntryData<Vec<u8>>) -> u64 {
    fnv_bytes(FNV_OFFSET, format!("{d:?}").as_bytes())
}

fn cfg(id: NodeId) -> Config {
    let mut c = Config::new(id);
    c.pre_vote = false;
    c.check_quorum = false;
    c.rng_seed = id;
    c
}

struct Cluster {
    nodes: BTreeMap<NodeId, N>,
    incarnation: BTreeMap<NodeId, u32>,
    durable: BTreeMap<NodeId, MemStorage<Vec<u8>>>,
    slow: BTreeSet<NodeId>,
    held: Vec<PersistToken>,
    /// Links on which appends and heartbeats are lost.
    cut: BTreeSet<(NodeId, NodeId)>,
    inflight: VecDeque<Message<Vec<u8>>>,
    election: ElectionChecker,
    committed: CommittedChecker,
    violations: Vec<Violation>,
}

impl Cluster {
    fn new(voters: &[NodeId]) -> Self {
        let mut c = Cluster {
            nodes: BTreeMap::new(),
            incarnation: BTreeMap::new(),
            durable: BTreeMap::new(),
            slow: BTreeSet::new(),
            held: Vec::new(),
            cut: BTreeSet::new(),
            inflight: VecDeque::new(),
            election: ElectionChecker::default(),
            committed: CommittedChecker::default(),
            violations: Vec::new(),
        };
        for &id in voters {
            let s = MemStorage::bootstrap(voters);
            c.durable.insert(id, s.clone());
            c.nodes.insert(id, Node::new(cfg(id), s, 0).unwrap());
            c.incarnation.insert(id, 0);
        }
        c
    }

    fn observe(&mut self, r: Result<(), Violation>) {
        if let Err(v) = r {
            self.violations.push(v);
        }
    }

    fn drive(&mut self) {
        loop {
            let mut progress = false;
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                while self.nodes[&id].has_ready() {
                    progress = true;
                    let inc = self.incarnation[&id];
                    let node = self.nodes.get_mut(&id).unwrap();
                    let mut rd = node.ready().unwrap();
                    let mut seen = Vec::new();
                    if let Some(ss) = rd.soft_state() {
                        if ss.role == Role::Leader {
                            seen.push(self.election.observe_leader(id, inc, ss.term));
                        }
                    }
                    if let Some(p) = rd.take_persist() {
                        node.storage_mut().apply_persist(&p);
                        if let Some(hs) = p.hard_state() {
                            let s = node.storage();
                            let last = s.last_index().unwrap();
                            let at = |i| {
                                let e = s.entries(i, i + 1, usize::MAX).ok()?;
                                e.first().map(|e| (e.term, digest(&e.data)))
                            };
                            seen.push(self.committed.observe_commit(id, hs.commit, last, at));
                        }
                        if self.slow.contains(&id) {
                            self.held.push(p.into_token());
                        } else {
                            self.durable.insert(id, node.storage().clone());
                            node.on_persisted(p.into_token()).unwrap();
                        }
                    }
                    for m in rd.take_messages() {
                        if matches!(m.body, MessageBody::AppendEntries { .. }) {
                            seen.push(self.election.observe_leader(id, inc, m.term));
                        }
                        let replication = matches!(
                            m.body,
                            MessageBody::AppendEntries { .. } | MessageBody::Heartbeat { .. }
                        );
                        if !(replication && self.cut.contains(&(m.from, m.to))) {
                            self.inflight.push_back(m);
                        }
                    }
                    let _ = rd.take_committed_entries();
                    for r in seen {
                        self.observe(r);
                    }
                }
            }
            while let Some(m) = self.inflight.pop_front() {
                progress = true;
                if let Some(n) = self.nodes.get_mut(&m.to) {
                    let _ = n.step(m);
                }
            }
            if !progress {
                return;
            }
        }
    }

    /// The slow disk completes every write it holds.
    fn release(&mut self, id: NodeId) {
        self.slow.remove(&id);
        let node = self.nodes.get_mut(&id).unwrap();
        self.durable.insert(id, node.storage().clone());
        for t in std::mem::take(&mut self.held) {
            node.on_persisted(t).unwrap();
        }
        self.drive();
    }

    /// `id` loses everything not durable and restarts from its disk.
    fn crash(&mut self, id: NodeId) {
        self.held.clear();
        self.inflight.retain(|m| m.from != id && m.to != id);
        let s = self.durable[&id].clone();
        self.nodes.insert(id, Node::new(cfg(id), s, 0).unwrap());
        *self.incarnation.get_mut(&id).unwrap() += 1;
        self.committed.forget(id);
    }
}

/// Issue 12, defect 1, step by step (3 nodes, node 1's disk slow).
#[test]
fn defect_1_same_term_twice_is_caught_by_the_node_state_checkers() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.slow.insert(1);
    // Node 1's appends reach only node 2 (its no-op, then "a").
    c.cut.insert((1, 3));
    // 1. Node 1 campaigns for term 2; nodes 2 and 3 grant.
    c.nodes.get_mut(&1).unwrap().campaign().unwrap();
    c.drive();
    let won_before_durable =
        c.nodes[&1].role() == Role::Leader && c.durable[&1].hard_state().term < 2;
    if !won_before_durable {
        // The core holds vote requests (or leadership) until the term is
        // durable: defect 1 is fixed and the scenario cannot unfold.
        assert!(c.violations.is_empty(), "{:?}", c.violations);
        return;
    }
    let term = c.nodes[&1].term();
    // 2. "a" reaches only node 2, as (3, term 2).
    c.nodes.get_mut(&1).unwrap().propose(b"a".to_vec()).unwrap();
    c.drive();
    // 3. Node 1 crashes before any of its writes are durable.
    c.crash(1);
    c.cut.clear();
    assert!(c.nodes[&1].term() < term);
    // 4. It campaigns for the same term again; node 3 re-grants (its vote
    // in that term is for node 1 already), node 2 refuses (its log is
    // longer), node 1's own vote becomes durable.
    c.slow.insert(1);
    c.nodes.get_mut(&1).unwrap().campaign().unwrap();
    c.drive();
    c.release(1);
    assert_eq!(c.nodes[&1].term(), term, "the scenario needs the same term");
    assert!(
        c.violations
            .iter()
            .any(|v| matches!(v, Violation::LeaderAgainAfterRestart { node: 1, .. })),
        "a leader of the same term in two incarnations went unnoticed: {:?}",
        c.violations
    );
    // 5. "b" at the same (index, term) as node 2's "a"; it commits on
    // nodes 1 and 3, and node 2 learns the commit index holding "a".
    c.nodes.get_mut(&1).unwrap().propose(b"b".to_vec()).unwrap();
    c.drive();
    for _ in 0..5 {
        for n in c.nodes.values_mut() {
            n.tick().unwrap();
        }
        c.drive();
    }
    assert!(
        c.violations
            .iter()
            .any(|v| matches!(v, Violation::CommittedEntryChanged { .. })),
        "two different entries committed at one index went unnoticed: {:?}",
        c.violations
    );
}
