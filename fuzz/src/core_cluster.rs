//! A small cluster of real `metalraft_core::Node`s over `MemStorage`, driven
//! by an arbitrary sequence of inputs: ticks, elections, proposals, reads,
//! membership changes, leadership transfers, message delivery / drop /
//! duplication, persistence acknowledgements on slow disks, power loss and
//! restarts, and forged peer messages.
//!
//! Checked after every input (the invariants of `crates/sim`'s checkers):
//! - no panic, and no storage batch the core issues breaks `MemStorage`'s
//!   contract (gaps, non-contiguous entries);
//! - election safety: at most one leader per term, across restarts, and no
//!   node wins the same term twice;
//! - durability: nothing is sent in a term that is not durable; a vote is
//!   granted only once it is durable; an append is acknowledged only once
//!   the entries are durable;
//! - log matching over the durable logs;
//! - state-machine safety: nodes (and one node across restarts) apply the
//!   same entry at each index, each node in index order without gaps;
//! - committed entries never change, and every new leader holds them all.
//!
//! A forged message is Byzantine: after the first one, the run checks only
//! that nothing panics (Raft tolerates crashes, not lies; but no peer input
//! may ever trip an assertion).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use arbitrary::Arbitrary;
use metalraft_core::{
    ConfChange, ConfChangeOp, ConfState, Config, Entry, EntryData, MemStorage, Message,
    MessageBody, Node, NodeId, Persist, ReadMode, RejectHint, Role, SnapshotMeta, Term,
    MAX_TERM_OR_INDEX,
};

type N = Node<Vec<u8>, MemStorage<Vec<u8>>>;

/// Voters of the initial configuration; node `SPARE` starts outside it
/// (empty configuration) and can be added by a membership change.
const VOTERS: [NodeId; 3] = [1, 2, 3];
const SPARE: NodeId = 4;
const NODES: u64 = 4;
/// Bounds on one run, so an input cannot make a run slow.
const MAX_OPS: usize = 400;
const MAX_INFLIGHT: usize = 256;
const MAX_SETTLE_DELIVERIES: usize = 400;
const MAX_TICKS_PER_OP: u8 = 24;

/// One run: the cluster's options, then the inputs fed to it in order.
#[derive(Arbitrary, Debug)]
pub struct Input {
    pre_vote: bool,
    check_quorum: bool,
    lease: bool,
    /// Small message/flow-control limits exercise the paging code paths.
    small_limits: bool,
    seed: u64,
    /// Bit `i` set: node `i + 1` starts with a slow disk.
    slow: u8,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Tick {
        node: u8,
        times: u8,
    },
    Campaign {
        node: u8,
    },
    Propose {
        node: u8,
        data: u8,
    },
    ReadIndex {
        node: u8,
        ctx: u8,
    },
    ConfChange {
        node: u8,
        ops: Vec<(u8, u8)>,
        explicit_joint: bool,
    },
    LeaveJoint {
        node: u8,
    },
    Transfer {
        node: u8,
        to: u8,
    },
    Deliver {
        pick: u16,
    },
    Drop {
        pick: u16,
    },
    Duplicate {
        pick: u16,
    },
    /// Completes the oldest outstanding write of the node's disk.
    Sync {
        node: u8,
    },
    SetSlow {
        node: u8,
        slow: bool,
    },
    /// Power loss: what was not durable is lost; the node restarts.
    Crash {
        node: u8,
    },
    /// Delivers everything and completes every write, a bounded number of
    /// times: lets short inputs make progress.
    Settle,
    Forge {
        to: u8,
        from: u8,
        term: Num,
        body: ForgedBody,
    },
}

/// A number from a small range, or an extreme one (to find overflows).
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Num {
    Small(u8),
    Max,
    AboveLimit,
    Huge(u64),
}

impl Num {
    fn get(self) -> u64 {
        match self {
            Num::Small(n) => u64::from(n % 16),
            Num::Max => u64::MAX,
            Num::AboveLimit => MAX_TERM_OR_INDEX + 1,
            Num::Huge(n) => n,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum ForgedBody {
    RequestVote {
        pre_vote: bool,
        transfer: bool,
        index: Num,
        term: Num,
    },
    RequestVoteResponse {
        pre_vote: bool,
        granted: bool,
    },
    AppendEntries {
        prev_index: Num,
        prev_term: Num,
        entries: Vec<(Num, Num, u8)>,
        commit: Num,
    },
    AppendEntriesResponse {
        index: Num,
        reject: Option<(Num, Num)>,
    },
    Heartbeat {
        commit: Num,
        read_seq: Num,
    },
    HeartbeatResponse {
        read_seq: Num,
    },
    ReadIndex {
        ctx: Num,
    },
    ReadIndexResponse {
        ctx: Num,
        index: Option<Num>,
    },
    TimeoutNow,
    InstallSnapshot {
        index: Num,
        term: Num,
        voters: Vec<u8>,
        offset: Num,
        data: Vec<u8>,
        done: bool,
    },
    SnapshotResponse {
        index: Num,
        received: Num,
    },
}

impl ForgedBody {
    fn into_body(self) -> MessageBody<Vec<u8>> {
        match self {
            ForgedBody::RequestVote {
                pre_vote,
                transfer,
                index,
                term,
            } => MessageBody::RequestVote {
                pre_vote,
                transfer,
                last_log_index: index.get(),
                last_log_term: term.get(),
            },
            ForgedBody::RequestVoteResponse { pre_vote, granted } => {
                MessageBody::RequestVoteResponse { pre_vote, granted }
            }
            ForgedBody::AppendEntries {
                prev_index,
                prev_term,
                entries,
                commit,
            } => MessageBody::AppendEntries {
                prev_log_index: prev_index.get(),
                prev_log_term: prev_term.get(),
                entries: entries
                    .into_iter()
                    .take(8)
                    .map(|(index, term, d)| Entry {
                        term: term.get(),
                        index: index.get(),
                        data: match d % 3 {
                            0 => EntryData::Noop,
                            1 => EntryData::Normal(vec![d]),
                            _ => EntryData::ConfChange(Box::new(ConfChange::new(&[conf_op(
                                d,
                                d / 3,
                            )]))),
                        },
                    })
                    .collect(),
                leader_commit: commit.get(),
            },
            ForgedBody::AppendEntriesResponse { index, reject } => {
                MessageBody::AppendEntriesResponse {
                    index: index.get(),
                    reject: reject.map(|(i, t)| RejectHint {
                        hint_index: i.get(),
                        hint_term: t.get(),
                    }),
                }
            }
            ForgedBody::Heartbeat { commit, read_seq } => MessageBody::Heartbeat {
                commit: commit.get(),
                read_seq: read_seq.get(),
            },
            ForgedBody::HeartbeatResponse { read_seq } => MessageBody::HeartbeatResponse {
                read_seq: read_seq.get(),
            },
            ForgedBody::ReadIndex { ctx } => MessageBody::ReadIndex { ctx: ctx.get() },
            ForgedBody::ReadIndexResponse { ctx, index } => MessageBody::ReadIndexResponse {
                ctx: ctx.get(),
                index: index.map(Num::get),
            },
            ForgedBody::TimeoutNow => MessageBody::TimeoutNow,
            ForgedBody::InstallSnapshot {
                index,
                term,
                voters,
                offset,
                data,
                done,
            } => MessageBody::InstallSnapshot {
                meta: Box::new(SnapshotMeta {
                    index: index.get(),
                    term: term.get(),
                    conf_state: ConfState::with_voters(
                        &voters
                            .iter()
                            .take(6)
                            .map(|v| u64::from(v % 6))
                            .collect::<Vec<_>>(),
                    ),
                }),
                offset: offset.get(),
                data: data.into_iter().take(64).collect(),
                done,
            },
            ForgedBody::SnapshotResponse { index, received } => MessageBody::SnapshotResponse {
                index: index.get(),
                received: received.get(),
            },
        }
    }
}

fn conf_op(kind: u8, id: u8) -> ConfChangeOp {
    let id = u64::from(id) % NODES + 1;
    match kind % 3 {
        0 => ConfChangeOp::AddVoter(id),
        1 => ConfChangeOp::AddLearner(id),
        _ => ConfChangeOp::Remove(id),
    }
}

fn node_id(n: u8) -> NodeId {
    u64::from(n) % NODES + 1
}

/// A write handed to a disk, not yet durable.
struct Pending {
    persist: Persist<Vec<u8>>,
    snapshot: Option<Vec<u8>>,
}

/// What one entry is, for comparisons: term and a summary of its data.
type Summary = (Term, Vec<u8>);

fn summary(e: &Entry<Vec<u8>>) -> Summary {
    let data = match &e.data {
        EntryData::Noop => vec![0],
        EntryData::Normal(d) => [&[1][..], d].concat(),
        EntryData::ConfChange(cc) => format!("{cc:?}").into_bytes(),
    };
    (e.term, data)
}

struct Cluster {
    cfg: Box<dyn Fn(NodeId) -> Config>,
    nodes: BTreeMap<NodeId, N>,
    durable: BTreeMap<NodeId, MemStorage<Vec<u8>>>,
    slow: BTreeSet<NodeId>,
    unsynced: BTreeMap<NodeId, VecDeque<Pending>>,
    /// Snapshot bytes received by each node, in order.
    incoming: BTreeMap<NodeId, Vec<u8>>,
    inflight: VecDeque<Message<Vec<u8>>>,
    /// Last index each node handed out for applying (since its restart).
    applied: BTreeMap<NodeId, u64>,
    /// What was first applied (or committed) at each index, by anyone.
    committed: BTreeMap<u64, Summary>,
    leaders: BTreeMap<Term, NodeId>,
    won: BTreeSet<(NodeId, Term)>,
    byzantine: bool,
}

impl Cluster {
    fn new(input: &Input) -> Self {
        let (pre_vote, check_quorum, lease, small, seed) = (
            input.pre_vote,
            input.check_quorum,
            input.lease,
            input.small_limits,
            input.seed,
        );
        let cfg = move |id: NodeId| {
            let mut c = Config::new(id);
            c.pre_vote = pre_vote;
            c.check_quorum = check_quorum || lease;
            c.rng_seed = seed;
            if lease {
                c.read_mode = ReadMode::Lease;
            }
            if small {
                c.max_entries_per_msg = 2;
                c.max_inflight_msgs = 2;
                c.max_pending_reads = 4;
                c.max_uncommitted_bytes = 256;
            }
            c
        };
        let mut cl = Cluster {
            cfg: Box::new(cfg),
            nodes: BTreeMap::new(),
            durable: BTreeMap::new(),
            slow: BTreeSet::new(),
            unsynced: BTreeMap::new(),
            incoming: BTreeMap::new(),
            inflight: VecDeque::new(),
            applied: BTreeMap::new(),
            committed: BTreeMap::new(),
            leaders: BTreeMap::new(),
            won: BTreeSet::new(),
            byzantine: false,
        };
        for id in 1..=NODES {
            let storage = if VOTERS.contains(&id) {
                MemStorage::bootstrap(&VOTERS)
            } else {
                MemStorage::new_with_conf(ConfState::default())
            };
            cl.durable.insert(id, storage.clone());
            let node = Node::new((cl.cfg)(id), storage, 0).expect("valid config");
            cl.nodes.insert(id, node);
            cl.applied.insert(id, 0);
            if input.slow & (1 << (id - 1)) != 0 {
                cl.slow.insert(id);
            }
        }
        assert!(cl.nodes.contains_key(&SPARE));
        cl
    }

    fn node(&mut self, id: NodeId) -> &mut N {
        self.nodes.get_mut(&id).expect("node exists")
    }

    /// Drains every node's `Ready`.
    fn process(&mut self) {
        for _ in 0..64 {
            let mut any = false;
            for id in 1..=NODES {
                if self.nodes[&id].has_ready() {
                    any = true;
                    self.process_one(id);
                }
            }
            if !any {
                return;
            }
        }
        panic!("Ready never drains");
    }

    fn process_one(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node");
        let mut rd = node.ready().expect("ready on a running node");
        if let Some(soft) = rd.soft_state() {
            if soft.role == Role::Leader {
                self.on_leader(id, soft.term);
            }
        }
        for m in rd.take_messages() {
            self.check_send(id, &m);
            if self.inflight.len() >= MAX_INFLIGHT {
                self.inflight.pop_front();
            }
            self.inflight.push_back(m);
        }
        for c in rd.take_snapshot_chunks() {
            let buf = self.incoming.entry(id).or_default();
            if c.offset == 0 {
                buf.clear();
            }
            if c.offset == buf.len() as u64 {
                buf.extend_from_slice(&c.data);
            }
        }
        if let Some(p) = rd.take_persist() {
            let snapshot = p
                .snapshot()
                .map(|_| self.incoming.remove(&id).unwrap_or_default());
            let node = self.nodes.get_mut(&id).expect("node");
            if let (Some(install), Some(data)) = (p.snapshot(), &snapshot) {
                node.storage_mut().install_snapshot(install, data.clone());
            }
            node.storage_mut().apply_persist(&p);
            let pending = Pending {
                persist: p,
                snapshot,
            };
            if self.slow.contains(&id) {
                self.unsynced.entry(id).or_default().push_back(pending);
            } else {
                self.make_durable(id, pending);
            }
        }
        let _reads = rd.take_read_states();
        let committed = rd.take_committed_entries();
        self.on_applied(id, &committed);
    }

    fn make_durable(&mut self, id: NodeId, p: Pending) {
        let d = self.durable.get_mut(&id).expect("disk");
        if let (Some(install), Some(data)) = (p.persist.snapshot(), p.snapshot) {
            d.install_snapshot(install, data);
        }
        d.apply_persist(&p.persist);
        self.node(id)
            .on_persisted(p.persist.into_token())
            .expect("acknowledged in order");
    }

    fn sync_one(&mut self, id: NodeId) {
        if let Some(p) = self.unsynced.get_mut(&id).and_then(VecDeque::pop_front) {
            self.make_durable(id, p);
        }
    }

    fn crash(&mut self, id: NodeId) {
        self.unsynced.remove(&id);
        self.incoming.remove(&id);
        let storage = self.durable[&id].clone();
        let node = Node::new((self.cfg)(id), storage, 0).expect("restart from durable state");
        self.nodes.insert(id, node);
        self.applied.insert(id, 0);
    }

    fn deliver(&mut self, m: Message<Vec<u8>>) {
        if let Some(n) = self.nodes.get_mut(&m.to) {
            // Refusals are normal (stale, unexpected, malformed input).
            let _refused_is_fine = n.step(m);
        }
    }

    fn pick(&self, pick: u16) -> Option<usize> {
        (!self.inflight.is_empty()).then(|| usize::from(pick) % self.inflight.len())
    }

    fn settle(&mut self) {
        for _ in 0..MAX_SETTLE_DELIVERIES {
            self.process();
            let ids: Vec<NodeId> = self.unsynced.keys().copied().collect();
            for id in ids {
                while self.unsynced.get(&id).is_some_and(|q| !q.is_empty()) {
                    self.sync_one(id);
                }
            }
            self.process();
            match self.inflight.pop_front() {
                Some(m) => self.deliver(m),
                None => return,
            }
        }
    }

    fn run(&mut self, op: Op) {
        match op {
            Op::Tick { node, times } => {
                for _ in 0..times % MAX_TICKS_PER_OP + 1 {
                    self.node(node_id(node)).tick().expect("tick");
                    self.process();
                }
            }
            Op::Campaign { node } => {
                let _not_promotable_is_fine = self.node(node_id(node)).campaign();
            }
            Op::Propose { node, data } => {
                let _not_leader_is_fine = self.node(node_id(node)).propose(vec![data]);
            }
            Op::ReadIndex { node, ctx } => {
                let _refused_is_fine = self.node(node_id(node)).read_index(u64::from(ctx));
            }
            Op::ConfChange {
                node,
                ops,
                explicit_joint,
            } => {
                let ops: Vec<ConfChangeOp> =
                    ops.iter().take(3).map(|&(k, id)| conf_op(k, id)).collect();
                let mut cc = ConfChange::new(&ops);
                if explicit_joint {
                    cc.transition = metalraft_core::ConfTransition::JointExplicit;
                }
                let _refused_is_fine = self.node(node_id(node)).propose_conf_change(cc);
            }
            Op::LeaveJoint { node } => {
                let cc = ConfChange::leave_joint();
                let _refused_is_fine = self.node(node_id(node)).propose_conf_change(cc);
            }
            Op::Transfer { node, to } => {
                let _refused_is_fine = self.node(node_id(node)).transfer_leader(node_id(to));
            }
            Op::Deliver { pick } => {
                if let Some(i) = self.pick(pick) {
                    let m = self.inflight.remove(i).expect("in range");
                    self.deliver(m);
                }
            }
            Op::Drop { pick } => {
                if let Some(i) = self.pick(pick) {
                    self.inflight.remove(i);
                }
            }
            Op::Duplicate { pick } => {
                if let Some(i) = self.pick(pick) {
                    let m = self.inflight[i].clone();
                    self.deliver(m);
                }
            }
            Op::Sync { node } => self.sync_one(node_id(node)),
            Op::SetSlow { node, slow } => {
                let id = node_id(node);
                if slow {
                    self.slow.insert(id);
                } else {
                    self.slow.remove(&id);
                    while self.unsynced.get(&id).is_some_and(|q| !q.is_empty()) {
                        self.sync_one(id);
                    }
                }
            }
            Op::Crash { node } => self.crash(node_id(node)),
            Op::Settle => self.settle(),
            Op::Forge {
                to,
                from,
                term,
                body,
            } => {
                self.byzantine = true;
                let m = Message {
                    from: u64::from(from) % (NODES + 2),
                    to: node_id(to),
                    term: term.get(),
                    body: body.into_body(),
                };
                self.deliver(m);
            }
        }
        self.process();
        self.check();
    }

    // ----- checks ---------------------------------------------------------

    fn on_leader(&mut self, id: NodeId, term: Term) {
        if self.byzantine {
            return;
        }
        if let Some(other) = self.leaders.insert(term, id) {
            assert_eq!(other, id, "two leaders in term {term}");
        }
        assert!(self.won.insert((id, term)), "n{id} won term {term} twice");
        // Leader completeness: the new leader holds every committed entry.
        let node = &self.nodes[&id];
        for (&i, s) in &self.committed {
            if let Ok(es) = node.entries(i, i + 1, usize::MAX) {
                let e = es.first().expect("one entry");
                assert_eq!(
                    &summary(e),
                    s,
                    "leader n{id} of term {term} lacks committed {i}"
                );
            }
        }
    }

    /// A message leaves `id` now: it may promise only durable state.
    fn check_send(&self, id: NodeId, m: &Message<Vec<u8>>) {
        if self.byzantine {
            return;
        }
        let disk = &self.durable[&id];
        let hs = disk.hard_state();
        let pre_vote = matches!(
            m.body,
            MessageBody::RequestVote { pre_vote: true, .. }
                | MessageBody::RequestVoteResponse { pre_vote: true, .. }
        );
        // A vote rejection promises nothing. One from a node that refuses
        // a non-member candidate with a stale log carries the candidate's
        // term without the node adopting it (so the candidate can count
        // the refusal; "non-members cannot disrupt"): that term is never
        // this node's, durable or not.
        let rejection = matches!(
            m.body,
            MessageBody::RequestVoteResponse { granted: false, .. }
        );
        if !pre_vote && !rejection {
            assert!(
                m.term <= hs.term,
                "n{id} sent {:?} in term {} with durable term {}",
                m.body.kind(),
                m.term,
                hs.term
            );
        }
        match &m.body {
            MessageBody::RequestVoteResponse {
                pre_vote: false,
                granted: true,
            } => {
                // (A later batch may already be durable too, in a higher
                // term: the grant was durable when it was released.)
                assert!(
                    hs.term > m.term || hs.vote == Some(m.to),
                    "n{id} granted its vote to n{} in term {} before it was durable ({hs:?})",
                    m.to,
                    m.term
                );
            }
            // (Only while no later term's batch may have rewritten the log.)
            MessageBody::AppendEntriesResponse {
                index,
                reject: None,
            } if hs.term == m.term => {
                let last = disk.all_entries().last().map_or(0, |e| e.index);
                assert!(
                    *index <= last.max(disk.snapshot().map_or(0, |s| s.0.index)),
                    "n{id} acknowledged index {index} with durable last index {last}"
                );
            }
            _ => {}
        }
    }

    fn on_applied(&mut self, id: NodeId, entries: &[Entry<Vec<u8>>]) {
        let Some(first) = entries.first() else { return };
        let applied = self.applied.get_mut(&id).expect("node");
        if !self.byzantine {
            // After a snapshot install the node resumes after it.
            let snap = self.nodes[&id]
                .storage()
                .snapshot()
                .map_or(0, |s| s.0.index);
            assert!(
                first.index == *applied + 1 || first.index == snap + 1,
                "n{id} applies {} after {applied}",
                first.index
            );
        }
        for e in entries {
            *applied = e.index;
            if self.byzantine {
                continue;
            }
            let s = summary(e);
            match self.committed.get(&e.index) {
                Some(prev) => {
                    assert_eq!(prev, &s, "n{id} applied a different entry at {}", e.index)
                }
                None => {
                    self.committed.insert(e.index, s);
                }
            }
        }
    }

    fn check(&self) {
        if self.byzantine {
            return;
        }
        // Log matching over the durable logs: if two logs hold an entry with
        // the same index and term, they agree on everything up to it.
        let logs: Vec<(NodeId, &[Entry<Vec<u8>>])> = self
            .durable
            .iter()
            .map(|(&id, d)| (id, d.all_entries()))
            .collect();
        for (i, (a, la)) in logs.iter().enumerate() {
            for (b, lb) in &logs[i + 1..] {
                let by_index: BTreeMap<u64, &Entry<Vec<u8>>> =
                    lb.iter().map(|e| (e.index, e)).collect();
                let mut matched = false;
                for e in la.iter().rev() {
                    let Some(o) = by_index.get(&e.index) else {
                        continue;
                    };
                    if o.term == e.term {
                        matched = true;
                    }
                    if matched {
                        assert_eq!(
                            summary(e),
                            summary(o),
                            "durable logs of n{a} and n{b} differ at {} below a matching entry",
                            e.index
                        );
                    }
                }
            }
        }
        // Committed entries never change: every durable log holding an entry
        // at a committed index with the committed term holds the same data.
        for (id, log) in &logs {
            for e in log.iter() {
                if let Some(c) = self.committed.get(&e.index) {
                    if c.0 == e.term {
                        assert_eq!(&summary(e), c, "n{id} holds a changed committed entry");
                    }
                }
            }
        }
    }
}

/// The target: one structured input, checked.
pub fn check(input: Input) {
    let mut cl = Cluster::new(&input);
    cl.process();
    for op in input.ops.into_iter().take(MAX_OPS) {
        cl.run(op);
    }
    cl.settle();
    cl.check();
}

/// [`check`] on the input `bytes` decode to, as `cargo fuzz` runs it.
pub fn run(bytes: &[u8]) {
    if let Some(input) = crate::structured::<Input>(bytes) {
        check(input);
    }
}
