//! An in-process test network for `metalraft-core`: every node stores its log
//! in a `MemStorage`, persists each batch at once (so "durable" means "in the
//! MemStorage"), and messages travel through a queue that can drop,
//! duplicate, reorder and partition them. Deterministic from a seed.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use metalraft_core::{
    ConfState, Config, EntryData, MemStorage, Message, MessageKind, Node, NodeId, ReadState, Role,
    Term,
};

pub type TestNode = Node<Vec<u8>, MemStorage<Vec<u8>>>;
pub type Mutator = Box<dyn Fn(&mut Message<Vec<u8>>)>;
pub type Filter = Box<dyn Fn(&Message<Vec<u8>>) -> bool>;

/// Ticks after which a test gives up waiting for a condition.
pub const MAX_TICKS: u32 = 2_000;

pub fn config(id: NodeId, seed: u64) -> Config {
    let mut c = Config::new(id);
    c.rng_seed = seed;
    c
}

pub struct Network {
    pub nodes: BTreeMap<NodeId, TestNode>,
    /// Storage of crashed nodes (everything they persisted).
    pub down: BTreeMap<NodeId, MemStorage<Vec<u8>>>,
    /// Each node's state machine: the (index, payload) of every applied
    /// normal entry. Snapshots serialize it.
    pub applied: BTreeMap<NodeId, Vec<(u64, Vec<u8>)>>,
    /// Snapshot bytes being received, per node.
    pub incoming: BTreeMap<NodeId, Vec<u8>>,
    /// Read outcomes per node, in arrival order.
    pub reads: BTreeMap<NodeId, Vec<ReadState>>,
    /// Messages delivered so far.
    pub delivered: u64,
    pub queue: VecDeque<Message<Vec<u8>>>,
    /// Directed links that drop everything.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Message kinds dropped everywhere.
    pub drop_kinds: BTreeSet<MessageKind>,
    pub drop_percent: u64,
    pub dup_percent: u64,
    pub reorder: bool,
    rng: u64,
    pub configs: BTreeMap<NodeId, Config>,
    /// Rewrites messages in flight.
    pub mutate: Option<Mutator>,
    /// Drops every message for which it returns true.
    pub filter: Option<Filter>,
    /// (term, leader) pairs ever observed, to check Election Safety.
    pub leaders: BTreeMap<Term, NodeId>,
}

impl Network {
    pub fn new(n: u64, seed: u64) -> Self {
        Self::with_config(n, seed, |_| {})
    }

    pub fn with_config(n: u64, seed: u64, tweak: impl Fn(&mut Config)) -> Self {
        Self::with_storages(n, seed, BTreeMap::new(), tweak)
    }

    /// A network whose nodes start from the given storages (others empty).
    pub fn with_storages(
        n: u64,
        seed: u64,
        mut storages: BTreeMap<NodeId, MemStorage<Vec<u8>>>,
        tweak: impl Fn(&mut Config),
    ) -> Self {
        let ids: Vec<NodeId> = (1..=n).collect();
        let mut net = Network {
            nodes: BTreeMap::new(),
            down: BTreeMap::new(),
            applied: BTreeMap::new(),
            incoming: BTreeMap::new(),
            reads: BTreeMap::new(),
            delivered: 0,
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            drop_kinds: BTreeSet::new(),
            drop_percent: 0,
            dup_percent: 0,
            reorder: false,
            rng: seed ^ 0x5EED,
            configs: BTreeMap::new(),
            filter: None,
            mutate: None,
            leaders: BTreeMap::new(),
        };
        for &id in &ids {
            let mut cfg = config(id, seed);
            tweak(&mut cfg);
            let storage = storages
                .remove(&id)
                .unwrap_or_else(|| MemStorage::bootstrap(&ids));
            let node = Node::new(cfg.clone(), storage, 0).expect("valid config");
            net.configs.insert(id, cfg);
            net.nodes.insert(id, node);
            net.applied.insert(id, Vec::new());
        }
        net
    }

    fn rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Collects every node's Ready: persists, acknowledges, applies, and
    /// queues messages. Repeats until no node has anything to do.
    pub fn process_ready(&mut self) {
        loop {
            let mut any = false;
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                let node = self.nodes.get_mut(&id).unwrap();
                if !node.has_ready() {
                    continue;
                }
                any = true;
                let mut rd = node.ready().expect("ready");
                let msgs = rd.take_messages();
                for chunk in rd.take_snapshot_chunks() {
                    let buf = self.incoming.entry(id).or_default();
                    if chunk.offset == 0 {
                        buf.clear();
                    }
                    assert_eq!(buf.len() as u64, chunk.offset, "chunks out of order");
                    buf.extend_from_slice(&chunk.data);
                }
                if let Some(p) = rd.take_persist() {
                    if let Some(install) = p.snapshot() {
                        let data = self.incoming.remove(&id).expect("snapshot data");
                        self.applied.insert(id, decode_sm(&data));
                        node.storage_mut().install_snapshot(install, data);
                    }
                    node.storage_mut().apply_persist(&p);
                    node.on_persisted(p.into_token()).expect("in-order ack");
                }
                self.reads
                    .entry(id)
                    .or_default()
                    .extend(rd.take_read_states());
                let committed = rd.take_committed_entries();
                let sm = self.applied.get_mut(&id).unwrap();
                for e in committed {
                    if let EntryData::Normal(d) = e.data {
                        sm.push((e.index, d));
                    }
                }
                if node.role() == Role::Leader {
                    let term = node.term();
                    if let Some(prev) = self.leaders.insert(term, id) {
                        assert_eq!(prev, id, "two leaders in term {term}");
                    }
                }
                for m in msgs {
                    self.enqueue(m);
                }
            }
            if !any {
                break;
            }
        }
    }

    fn enqueue(&mut self, mut m: Message<Vec<u8>>) {
        if let Some(f) = &self.mutate {
            f(&mut m);
        }
        if self.cut.contains(&(m.from, m.to))
            || self.drop_kinds.contains(&m.body.kind())
            || self.filter.as_ref().is_some_and(|f| f(&m))
        {
            return;
        }
        if self.drop_percent > 0 && self.rand() % 100 < self.drop_percent {
            return;
        }
        if self.dup_percent > 0 && self.rand() % 100 < self.dup_percent {
            self.queue.push_back(m.clone());
        }
        self.queue.push_back(m);
    }

    /// Delivers queued messages (and everything they cause) until quiet or
    /// `limit` deliveries.
    pub fn deliver(&mut self, limit: usize) {
        let mut n = 0;
        self.process_ready();
        while n < limit {
            if self.reorder && self.queue.len() > 1 {
                let i = (self.rand() % self.queue.len() as u64) as usize;
                self.queue.swap(0, i);
            }
            let Some(m) = self.queue.pop_front() else {
                break;
            };
            n += 1;
            self.delivered += 1;
            if let Some(node) = self.nodes.get_mut(&m.to) {
                let _ignored_drop_reason = node.step(m);
                assert!(node.failure().is_none());
            }
            self.process_ready();
        }
    }

    /// One tick on every live node, then delivery until quiet.
    pub fn tick(&mut self) {
        for node in self.nodes.values_mut() {
            node.tick().expect("tick");
        }
        self.deliver(100_000);
    }

    pub fn ticks(&mut self, n: u32) {
        for _ in 0..n {
            self.tick();
        }
    }

    /// Ticks until `cond` holds; panics after [`MAX_TICKS`].
    pub fn tick_until(&mut self, what: &str, mut cond: impl FnMut(&Network) -> bool) -> u32 {
        for t in 0..MAX_TICKS {
            if cond(self) {
                return t;
            }
            self.tick();
        }
        for n in self.nodes.values() {
            eprintln!(
                "node {} {:?} term {} leader {:?} last {:?} commit {} persisted {} applied {} {:?}",
                n.id(),
                n.role(),
                n.term(),
                n.leader(),
                n.last_index(),
                n.commit_index(),
                n.persisted_index(),
                n.applied_index(),
                n.stats()
            );
        }
        panic!("condition never held: {what}");
    }

    pub fn leader(&self) -> Option<NodeId> {
        let mut leaders: Vec<(Term, NodeId)> = self
            .nodes
            .values()
            .filter(|n| n.role() == Role::Leader)
            .map(|n| (n.term(), n.id()))
            .collect();
        leaders.sort();
        leaders.last().map(|&(_, id)| id)
    }

    /// A leader acknowledged by a majority of the voters of its
    /// configuration in its term.
    pub fn stable_leader(&self) -> Option<NodeId> {
        let l = self.leader()?;
        let term = self.nodes[&l].term();
        let voters = self.nodes[&l].conf_state().all_voters();
        let agree = voters
            .iter()
            .filter(|v| {
                self.nodes
                    .get(v)
                    .is_some_and(|n| n.term() == term && n.leader() == Some(l))
            })
            .count();
        (agree > voters.len() / 2).then_some(l)
    }

    pub fn wait_leader(&mut self) -> NodeId {
        self.tick_until("a stable leader", |n| n.stable_leader().is_some());
        self.stable_leader().unwrap()
    }

    /// Proposes on `id` and returns the index.
    pub fn propose(&mut self, id: NodeId, data: &[u8]) -> u64 {
        let idx = self
            .nodes
            .get_mut(&id)
            .unwrap()
            .propose(data.to_vec())
            .expect("propose");
        self.deliver(100_000);
        idx
    }

    pub fn applied_data(&self, id: NodeId) -> Vec<Vec<u8>> {
        self.applied[&id].iter().map(|(_, d)| d.clone()).collect()
    }

    pub fn isolate(&mut self, id: NodeId) {
        let all: Vec<NodeId> = self.nodes.keys().chain(self.down.keys()).copied().collect();
        for other in all {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    /// Splits the cluster into two sides that cannot talk.
    pub fn partition(&mut self, a: &[NodeId], b: &[NodeId]) {
        for &x in a {
            for &y in b {
                self.cut.insert((x, y));
                self.cut.insert((y, x));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Stops a node, keeping what it persisted.
    pub fn crash(&mut self, id: NodeId) {
        let node = self.nodes.remove(&id).expect("node up");
        self.down.insert(id, node.storage().clone());
        self.queue.retain(|m| m.to != id);
    }

    /// Restarts a crashed node from its persisted storage; its state machine
    /// restarts empty and re-applies the committed log.
    pub fn restart(&mut self, id: NodeId) {
        let storage = self.down.remove(&id).expect("node down");
        // The state machine restarts from the snapshot, if any.
        let (sm, applied) = match storage.snapshot() {
            Some((meta, data)) => (decode_sm(data), meta.index),
            None => (Vec::new(), 0),
        };
        let node = Node::new(self.configs[&id].clone(), storage, applied).expect("restart");
        self.applied.insert(id, sm);
        self.nodes.insert(id, node);
    }

    /// State Machine Safety (§5.4.3): applied sequences are prefixes of one another.
    pub fn check_applied_prefixes(&self) {
        let logs: Vec<&Vec<(u64, Vec<u8>)>> = self.applied.values().collect();
        for a in &logs {
            for b in &logs {
                let n = a.len().min(b.len());
                assert_eq!(&a[..n], &b[..n], "applied logs diverge");
            }
        }
    }
}

impl Network {
    /// The outcome of read `ctx` on node `id`, if it arrived.
    pub fn read_result(
        &self,
        id: NodeId,
        ctx: u64,
    ) -> Option<Result<u64, metalraft_core::ReadError>> {
        self.reads
            .get(&id)?
            .iter()
            .find(|r| r.ctx == ctx)
            .map(|r| r.result)
    }
}

impl Network {
    /// Starts a new node with an empty configuration: it learns the
    /// membership from the leader's log (after a conf change adds it).
    pub fn add_node(&mut self, id: NodeId, seed: u64) {
        let cfg = config(id, seed);
        let node = Node::new(
            cfg.clone(),
            MemStorage::new_with_conf(ConfState::default()),
            0,
        )
        .expect("join");
        self.configs.insert(id, cfg);
        self.nodes.insert(id, node);
        self.applied.insert(id, Vec::new());
    }

    /// Proposes a membership change on the leader and waits until every
    /// live member has applied it.
    pub fn change(&mut self, cc: metalraft_core::ConfChange) -> u64 {
        let leader = self.wait_leader();
        let idx = self
            .nodes
            .get_mut(&leader)
            .unwrap()
            .propose_conf_change(cc)
            .expect("conf change accepted");
        self.deliver(100_000);
        self.tick_until("change committed", |n| {
            n.stable_leader()
                .is_some_and(|l| n.nodes[&l].commit_index() >= idx)
        });
        idx
    }
}

/// Serializes a test state machine: (index u64, len u32, payload)*.
pub fn encode_sm(sm: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, d) in sm {
        out.extend_from_slice(&i.to_be_bytes());
        out.extend_from_slice(&(d.len() as u32).to_be_bytes());
        out.extend_from_slice(d);
    }
    out
}

pub fn decode_sm(mut b: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut sm = Vec::new();
    while !b.is_empty() {
        let i = u64::from_be_bytes(b[..8].try_into().unwrap());
        let n = u32::from_be_bytes(b[8..12].try_into().unwrap()) as usize;
        sm.push((i, b[12..12 + n].to_vec()));
        b = &b[12 + n..];
    }
    sm
}

impl Network {
    /// Node `id` snapshots its state machine at its applied index and
    /// compacts its log.
    pub fn snapshot(&mut self, id: NodeId) -> u64 {
        let node = self.nodes.get_mut(&id).unwrap();
        let index = node.applied_index();
        let meta = node.snapshot_created(index).expect("snapshot meta");
        let data = encode_sm(&self.applied[&id]);
        node.storage_mut()
            .create_snapshot(meta, data)
            .expect("compact");
        index
    }
}
