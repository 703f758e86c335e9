//! The stateright model: three real nodes, a lossy network, disks that
//! lose unsynced writes on power loss, and ghost state for the properties.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use metalraft_core::{
    ConfChange, ConfChangeOp, ConfState, ConfTransition, Config, Index, LogStorage, MemStorage,
    Message, MessageBody, MessageKind, NodeId, ReadCtx, Role, Term,
};
use stateright::{Model, Property};

use crate::driver::{model_config, Batch, Driver, EntryId, Input, Outputs, Payload};

/// What the model explores beyond plain elections and replication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Elections, replication, reads, crashes.
    Basic,
    /// Plus one membership change at a leader: joint consensus from
    /// {1,2,3} to {1,2} (node 3 removed), left automatically.
    Membership,
    /// Plus the application snapshotting and compacting its log, so a
    /// follower that falls behind is sent the snapshot.
    Snapshot,
    /// Plus one replacement at a leader: joint consensus from {1,2,3} to
    /// {1,2,4} (node 4, a new member with an empty log, in; node 3 out),
    /// left automatically. Unlike [`Variant::Membership`], a leader that
    /// counted only one of the two configurations during the joint phase
    /// commits where the correct one does not: a majority of {1,2,4} is
    /// not always one of {1,2,3}.
    Replace,
}

impl Variant {
    /// The membership change this variant's leaders propose, if any.
    pub fn change(self) -> Option<Change> {
        match self {
            Variant::Membership => Some(Change::Remove3),
            Variant::Replace => Some(Change::Replace3With4),
            Variant::Basic | Variant::Snapshot => None,
        }
    }

    /// The node slots of the model: node 4 exists only to join.
    pub fn nodes(self) -> &'static [NodeId] {
        match self {
            Variant::Replace => &ALL_NODES,
            _ => &NODES,
        }
    }
}

/// A membership change the model proposes (once per run, at a leader
/// that has committed an entry of its own term).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Change {
    /// {1,2,3} → {1,2}.
    Remove3,
    /// {1,2,3} → {1,2,4}.
    Replace3With4,
}

impl Change {
    fn conf_change(self) -> ConfChange {
        let ops = match self {
            Change::Remove3 => vec![ConfChangeOp::Remove(3)],
            Change::Replace3With4 => vec![ConfChangeOp::AddVoter(4), ConfChangeOp::Remove(3)],
        };
        ConfChange {
            ops,
            transition: ConfTransition::JointAutoLeave,
            context: Vec::new(),
        }
    }
}

impl core::fmt::Display for Change {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Change::Remove3 => write!(f, "{{1,2,3}}→{{1,2}}"),
            Change::Replace3With4 => write!(f, "{{1,2,3}}→{{1,2,4}}"),
        }
    }
}

/// Bounds that make the state space finite. Every counter is global
/// (over all nodes) unless it says otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// No node campaigns beyond this term (the bootstrap term is 1).
    pub max_term: Term,
    /// Power losses (crash and restart from the durable disk).
    pub max_crashes: u8,
    /// Client commands proposed at leaders.
    pub max_proposals: u8,
    /// Read requests.
    pub max_reads: u8,
    /// Messages dropped by the network.
    pub max_drops: u8,
    /// Messages duplicated by the network (at most two copies of one).
    pub max_dups: u8,
    /// Leader heartbeat ticks.
    pub max_heartbeats: u8,
    /// No node's log grows beyond this index (states past it are not
    /// explored further).
    pub max_log: Index,
    /// Snapshots taken ([`Variant::Snapshot`]).
    pub max_snapshots: u8,
    /// Steps explored from the initial state (0: no limit). Message
    /// interleavings grow the state space about fourfold per five steps,
    /// so every practical bound has one.
    pub max_depth: usize,
}

impl Bounds {
    /// The quick bound that runs in `cargo test` (debug build).
    pub const QUICK: Bounds = Bounds {
        max_term: 2,
        max_crashes: 0,
        max_proposals: 1,
        max_reads: 0,
        max_drops: 0,
        max_dups: 0,
        max_heartbeats: 0,
        max_log: 3,
        max_snapshots: 0,
        max_depth: 16,
    };
    /// [`Bounds::QUICK`] with one power loss, to a smaller depth (also in
    /// `cargo test`; safety properties only).
    pub const QUICK_POWER_LOSS: Bounds = Bounds {
        max_crashes: 1,
        max_depth: 12,
        ..Bounds::QUICK
    };
    /// The deep bound (release build, documented command), searched from
    /// [`RaftModel::leader_prefix`] (`check --bound deep` starts there):
    /// every interleaving of a proposal, a read, a heartbeat, a power loss
    /// and elections up to term 3 around a leader that has committed.
    /// Measured: 1,267,946 unique states, 33-44 s of CPU, 2.3 GB (drops and
    /// duplicates make depth 9 exceed 4.5 GB; they are covered from the
    /// start, see `docs/model-checking.md`).
    pub const DEEP: Bounds = Bounds {
        max_term: 3,
        max_crashes: 1,
        max_proposals: 1,
        max_reads: 1,
        max_drops: 0,
        max_dups: 0,
        max_heartbeats: 1,
        max_log: 4,
        max_snapshots: 0,
        max_depth: 10,
    };
}

/// The model: node ids `1..=3`, all voters, bootstrapped.
#[derive(Clone, Debug)]
pub struct RaftModel {
    /// The bounds.
    pub bounds: Bounds,
    /// What else is explored.
    pub variant: Variant,
    /// Whether nodes run a pre-vote round before campaigning.
    pub pre_vote: bool,
    /// `Config::max_entries_per_msg`: 1 lets a leader replicate an old
    /// entry without its own (what the Figure-8 rule is about); larger
    /// batches give a smaller state space.
    pub entries_per_msg: usize,
    /// Steps taken before the exhaustive search starts (empty: from the
    /// bootstrapped cluster). See [`Script`].
    pub prefix: Vec<Script>,
}

/// A scripted step, resolved against the model's own actions: a prefix of
/// them leads to a reachable state from which the search starts, for
/// counterexamples deeper than an exhaustive search from the start can
/// reach in minutes (Figure 8 needs four elections).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Script {
    /// [`Action::Timeout`].
    Timeout(NodeId),
    /// [`Action::Persist`] until the node has nothing pending.
    Sync(NodeId),
    /// [`Action::Deliver`] of a message in flight from, to, of a kind (of
    /// the highest term if several).
    Deliver(NodeId, NodeId, MessageKind),
    /// [`Action::Deliver`] of the append in flight from, to that reaches
    /// furthest into the log (of the highest term if several): the
    /// leader's newest, where older retries are still in flight.
    DeliverNewestAppend(NodeId, NodeId),
    /// [`Action::Propose`].
    Propose(NodeId),
    /// [`Action::Snapshot`].
    Snapshot(NodeId),
    /// [`Action::Reconfigure`].
    Reconfigure(NodeId),
}

impl RaftModel {
    /// The Figure-8 set-up (Raft paper §5.4.2): node 1 led term 2 and
    /// holds its no-op (2, t2); node 3 led term 3 with node 2's vote and
    /// holds (2, t3); neither entry is replicated. Then node 1 wins term 4
    /// with node 2's vote (node 2 holds only the bootstrap entry) and
    /// replicates (2, t2) to node 2 before its own no-op (3, t4): a leader
    /// that counted replicas of an old-term entry would now commit (2, t2),
    /// which node 3 (last term 3) can still overwrite if it wins term 5.
    pub fn figure8_prefix() -> Vec<Script> {
        use MessageKind::{Append, AppendResponse, Vote, VoteResponse};
        use Script::{Deliver, Sync, Timeout};
        vec![
            Timeout(1),
            Sync(1),
            Deliver(1, 2, Vote),
            Sync(2),
            Deliver(2, 1, VoteResponse),
            Sync(1),
            // Node 3 hears of term 2 (and votes for node 1), then campaigns.
            Deliver(1, 3, Vote),
            Sync(3),
            Timeout(3),
            Sync(3),
            Deliver(3, 2, Vote),
            Sync(2),
            Deliver(2, 3, VoteResponse),
            Sync(3),
            // Node 1 hears of term 3 and wins term 4 with node 2's vote.
            Deliver(3, 1, Vote),
            Timeout(1),
            Sync(1),
            Deliver(1, 2, Vote),
            Sync(2),
            Deliver(2, 1, VoteResponse),
            // Node 1's first append (prev 2@t2) is rejected by node 2; the
            // retry carries (2, t2) alone, and node 2 acknowledges it.
            Sync(1),
            Deliver(1, 2, Append),
            Sync(2),
            Deliver(2, 1, AppendResponse),
            Sync(1),
            Deliver(1, 2, Append),
            Sync(2),
            Deliver(2, 1, AppendResponse),
        ]
    }

    /// Node 1 leads term 2 and has committed its no-op with node 2; node
    /// 3 has heard nothing yet. The membership and snapshot variants start
    /// here (a change needs a commit in the leader's term first, a
    /// snapshot an applied entry).
    pub fn leader_prefix() -> Vec<Script> {
        use MessageKind::{Append, AppendResponse, Vote, VoteResponse};
        use Script::{Deliver, Sync, Timeout};
        vec![
            Timeout(1),
            Sync(1),
            Deliver(1, 2, Vote),
            Sync(2),
            Deliver(2, 1, VoteResponse),
            Sync(1),
            Deliver(1, 2, Append),
            Sync(2),
            Deliver(2, 1, AppendResponse),
        ]
    }

    /// [`RaftModel::leader_prefix`], then node 1 proposes the joint change
    /// {1,2,3}→{1,2} (entry 3; leaving the joint configuration follows
    /// automatically once it commits). The membership variant starts here:
    /// every interleaving of its replication, the automatic leave, crashes
    /// and elections in later terms.
    pub fn joint_prefix() -> Vec<Script> {
        let mut v = RaftModel::leader_prefix();
        v.extend([Script::Sync(1), Script::Reconfigure(1)]);
        v
    }

    /// [`RaftModel::leader_prefix`], then node 1 proposes the joint change
    /// {1,2,3}→{1,2,4} (entry 3) and brings node 4, which joins with an
    /// empty log, up to it: node 4 holds entries 1–3 durably and its
    /// acknowledgement of entry 3 is in flight. Nodes 2 and 3 have not
    /// received entry 3. The replace variant starts here: every
    /// interleaving of committing the joint entry (which needs node 2, or
    /// nodes 3 and 4), the automatic leave, crashes and elections.
    pub fn replace_prefix() -> Vec<Script> {
        use MessageKind::AppendResponse;
        use Script::{Deliver, DeliverNewestAppend, Reconfigure, Sync};
        let mut v = RaftModel::leader_prefix();
        v.extend([Sync(1), Reconfigure(1), Sync(1)]);
        // The probe (prev 2@t2, rejected by the empty log), then entries 1
        // and 2 one per message (`entries_per_msg` 1), acknowledged (a
        // retry of entry 2 stays in flight).
        for _ in 0..4 {
            v.extend([
                DeliverNewestAppend(1, 4),
                Sync(4),
                Deliver(4, 1, AppendResponse),
                Sync(1),
            ]);
        }
        // Entry 3, written durably; the acknowledgement stays in flight.
        v.extend([DeliverNewestAppend(1, 4), Sync(4)]);
        v
    }

    /// [`RaftModel::leader_prefix`], then node 1 commits a client entry
    /// (3, t2) with node 2, applies it and snapshots at index 3,
    /// compacting its log. Node 3 has still heard nothing (node 1's first
    /// append to it, entry 2, is in flight), so the leader can only bring
    /// it up to date with the snapshot. The snapshot variant starts here.
    pub fn snapshot_prefix() -> Vec<Script> {
        use MessageKind::{Append, AppendResponse};
        use Script::{Deliver, Propose, Snapshot, Sync};
        let mut v = RaftModel::leader_prefix();
        v.extend([
            Sync(1),
            Propose(1),
            Sync(1),
            // In flight to node 2: the commit notice for entry 2, then (3, t2).
            Deliver(1, 2, Append),
            Sync(2),
            Deliver(2, 1, AppendResponse),
            Deliver(1, 2, Append),
            Sync(2),
            Deliver(2, 1, AppendResponse),
            Sync(1),
            Snapshot(1),
        ]);
        v
    }

    /// The actions a script resolves to in `s`.
    ///
    /// # Panics
    ///
    /// If a step has no matching action: the script is wrong.
    pub fn resolve(&self, s: &State, step: Script) -> Vec<Action> {
        match step {
            Script::Timeout(id) => vec![Action::Timeout(id)],
            Script::Propose(id) => vec![Action::Propose(id)],
            Script::Snapshot(id) => vec![Action::Snapshot(id)],
            Script::Reconfigure(id) => {
                let change = self.variant.change().expect("a variant with a change");
                vec![Action::Reconfigure(id, change)]
            }
            Script::Sync(id) => vec![Action::Persist(id); s.node(id).unsynced.len()],
            Script::Deliver(from, to, kind) => {
                let m = s
                    .net
                    .values()
                    .map(|(m, _)| m)
                    .filter(|m| m.from == from && m.to == to && m.body.kind() == kind)
                    .max_by_key(|m| m.term)
                    .unwrap_or_else(|| {
                        panic!("no {kind:?} n{from}→n{to} in flight: {:?}", s.net.keys())
                    });
                vec![Action::Deliver(Message::clone(m))]
            }
            Script::DeliverNewestAppend(from, to) => {
                let reach = |m: &Message<Payload>| match &m.body {
                    MessageBody::AppendEntries {
                        prev_log_index,
                        entries,
                        ..
                    } => Some((m.term, *prev_log_index + entries.len() as Index)),
                    _ => None,
                };
                let m = s
                    .net
                    .values()
                    .map(|(m, _)| m)
                    .filter(|m| m.from == from && m.to == to)
                    .filter_map(|m| Some((reach(m)?, m)))
                    .max_by_key(|(r, _)| *r)
                    .map(|(_, m)| m)
                    .unwrap_or_else(|| panic!("no append n{from}→n{to} in flight"));
                vec![Action::Deliver(Message::clone(m))]
            }
        }
    }
}

/// The ids of the model's bootstrapped nodes (the initial voters).
pub const NODES: [NodeId; 3] = [1, 2, 3];
/// Every node slot of [`Variant::Replace`]: node 4 starts with an empty
/// log and no configuration, as a member added to a running cluster does.
pub const ALL_NODES: [NodeId; 4] = [1, 2, 3, 4];
/// A quorum of every configuration the model reaches (3 voters, {1,2}
/// after removing node 3, {1,2,4} after replacing it) needs at least this
/// many nodes.
pub const QUORUM: usize = 2;

/// Budget used so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Used {
    /// Crashes.
    pub crashes: u8,
    /// Proposals.
    pub proposals: u8,
    /// Reads.
    pub reads: u8,
    /// Drops.
    pub drops: u8,
    /// Duplications.
    pub dups: u8,
    /// Heartbeat ticks.
    pub heartbeats: u8,
    /// Snapshots.
    pub snapshots: u8,
    /// Membership changes proposed.
    pub conf_changes: u8,
}

/// A node's observable state after its last input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// Role.
    pub role: Role,
    /// Current term.
    pub term: Term,
    /// Vote in the current term.
    pub vote: Option<NodeId>,
    /// Known leader.
    pub leader: Option<NodeId>,
    /// Commit index.
    pub commit: Index,
    /// Applied index.
    pub applied: Index,
    /// Persisted (acknowledged durable) index.
    pub persisted: Index,
    /// The log from its first available entry on (durable or not).
    pub log: Vec<EntryId>,
    /// Voters of the configuration in effect (incoming, outgoing).
    pub conf: (Vec<NodeId>, Vec<NodeId>),
}

impl View {
    fn of(d: &Driver) -> View {
        let n = d.node();
        let first = n.storage().first_index().expect("first index");
        let last = n.last_index().expect("last index");
        let log = n
            .entries(first, last + 1, usize::MAX)
            .expect("the log")
            .iter()
            .map(EntryId::of)
            .collect();
        let ConfState {
            voters,
            voters_outgoing,
            ..
        } = n.conf_state().clone();
        View {
            role: n.role(),
            term: n.term(),
            vote: n.vote(),
            leader: n.leader(),
            commit: n.commit_index(),
            applied: n.applied_index(),
            persisted: n.persisted_index(),
            log,
            conf: (voters, voters_outgoing),
        }
    }

    /// The entry at `index`, if the log holds it.
    pub fn entry(&self, index: Index) -> Option<&EntryId> {
        let first = self.log.first()?.index;
        let i = usize::try_from(index.checked_sub(first)?).ok()?;
        self.log.get(i)
    }

    /// Index of the first entry held (compacted entries come before it).
    pub fn first(&self) -> Index {
        self.log.first().map_or(Index::MAX, |e| e.index)
    }
}

impl Hash for View {
    fn hash<H: Hasher>(&self, h: &mut H) {
        role_code(self.role).hash(h);
        (self.term, self.vote, self.leader).hash(h);
        (self.commit, self.applied, self.persisted).hash(h);
        self.log.hash(h);
        self.conf.hash(h);
    }
}

fn role_code(r: Role) -> u8 {
    match r {
        Role::Follower => 0,
        Role::PreCandidate => 1,
        Role::Candidate => 2,
        Role::Leader => 3,
    }
}

/// What a disk holds, for hashing and comparing.
#[derive(Debug, PartialEq, Eq, Hash)]
struct DiskKey {
    hard_state: (Term, Option<NodeId>, Index),
    snapshot: Option<(Index, Term)>,
    entries: Vec<EntryId>,
}

fn disk_key(d: &MemStorage<Payload>) -> DiskKey {
    let hs = d.hard_state();
    DiskKey {
        hard_state: (hs.term, hs.vote, hs.commit),
        snapshot: d.snapshot().map(|(m, _)| (m.index, m.term)),
        entries: d.all_entries().iter().map(EntryId::of).collect(),
    }
}

/// A batch for hashing: (snapshot index, entries, hard state).
type BatchKey = (
    Option<Index>,
    Vec<EntryId>,
    Option<(Term, Option<NodeId>, Index)>,
);

fn batch_key(b: &Arc<Batch>) -> BatchKey {
    (
        b.install.as_ref().map(|(i, _)| i.meta.index),
        b.entries.iter().map(EntryId::of).collect(),
        b.hard_state.map(|hs| (hs.term, hs.vote, hs.commit)),
    )
}

/// One node: its current incarnation (as the disk it started from plus
/// its inputs since) and its disk.
#[derive(Clone, Debug)]
pub struct Slot {
    /// The node's id.
    pub id: NodeId,
    /// The durable disk this incarnation started from.
    start: Arc<MemStorage<Payload>>,
    /// Inputs since the start (not part of the state's identity).
    inputs: Inputs,
    /// What survives a power loss.
    pub durable: Arc<MemStorage<Payload>>,
    /// Batches written but not yet durable, oldest first.
    pub unsynced: VecDeque<Arc<Batch>>,
    /// Observable state.
    pub view: View,
}

impl Slot {
    /// The number of inputs this incarnation has had.
    pub fn inputs(&self) -> usize {
        self.inputs.len
    }
}

/// A node incarnation's inputs, newest first, as a list shared between
/// states: a successor state adds one input to its parent's list instead
/// of copying it. (The search keeps a whole BFS frontier in memory; copied
/// input lists were most of a state's size.)
#[derive(Clone, Debug, Default)]
struct Inputs {
    newest: Option<Arc<InputLink>>,
    len: usize,
}

#[derive(Debug)]
struct InputLink {
    input: Input,
    older: Option<Arc<InputLink>>,
}

impl Inputs {
    fn push(&mut self, input: Input) {
        let older = self.newest.take();
        self.newest = Some(Arc::new(InputLink { input, older }));
        self.len += 1;
    }

    /// Oldest first.
    fn in_order(&self) -> Vec<&Input> {
        let mut v = Vec::with_capacity(self.len);
        let mut at = self.newest.as_deref();
        while let Some(link) = at {
            v.push(&link.input);
            at = link.older.as_deref();
        }
        v.reverse();
        v
    }
}

impl Hash for Slot {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.id.hash(h);
        self.view.hash(h);
        disk_key(&self.durable).hash(h);
        for b in &self.unsynced {
            batch_key(b).hash(h);
        }
    }
}

impl PartialEq for Slot {
    fn eq(&self, o: &Slot) -> bool {
        self.id == o.id
            && self.view == o.view
            && disk_key(&self.durable) == disk_key(&o.durable)
            && self
                .unsynced
                .iter()
                .map(batch_key)
                .eq(o.unsynced.iter().map(batch_key))
    }
}

/// A read that was served.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServedRead {
    /// Where it was asked.
    pub node: NodeId,
    /// Its id.
    pub ctx: ReadCtx,
    /// The highest index known committed anywhere when it was asked.
    pub required: Index,
    /// The read index it got.
    pub index: Index,
}

/// History the properties need, kept across crashes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ghost {
    /// Every election won: term → winners (one entry per win, so a node
    /// winning the same term twice after a restart shows up twice).
    pub leaders: BTreeMap<Term, Vec<NodeId>>,
    /// Entries observed committed on any node, with the lowest term of a
    /// node that saw them committed.
    pub committed: BTreeMap<Index, (EntryId, Term)>,
    /// A different entry observed committed at an index already recorded.
    pub commit_conflicts: BTreeSet<(EntryId, EntryId)>,
    /// Every entry applied at each index, on any node, ever.
    pub applied: BTreeMap<Index, BTreeSet<EntryId>>,
    /// Reads asked and not answered: ctx → (node, required index).
    pub reads_pending: BTreeMap<ReadCtx, (NodeId, Index)>,
    /// Reads served.
    pub reads_served: Vec<ServedRead>,
    /// Snapshots installed by followers.
    pub installs: u8,
}

impl Ghost {
    fn observe_commits(&mut self, v: &View) {
        for e in v.log.iter().filter(|e| e.index <= v.commit) {
            match self.committed.get_mut(&e.index) {
                None => {
                    self.committed.insert(e.index, (e.clone(), v.term));
                }
                Some((seen, _)) if seen != e => {
                    self.commit_conflicts.insert((seen.clone(), e.clone()));
                }
                Some((_, term)) => *term = (*term).min(v.term),
            }
        }
    }

    /// Whether [`Ghost::observe_commits`] would change anything.
    fn would_observe(&self, v: &View) -> bool {
        v.log
            .iter()
            .filter(|e| e.index <= v.commit)
            .any(|e| match self.committed.get(&e.index) {
                None => true,
                Some((seen, _)) if seen != e => {
                    !self.commit_conflicts.contains(&(seen.clone(), e.clone()))
                }
                Some((_, term)) => *term > v.term,
            })
    }

    fn max_committed(&self) -> Index {
        self.committed.keys().next_back().copied().unwrap_or(0)
    }
}

/// A state of the cluster.
#[derive(Clone, Debug)]
pub struct State {
    /// Nodes 1..=3. Shared between states: a transition changes one node,
    /// and a successor copies only that one ([`State::node_mut`]).
    pub nodes: Vec<Arc<Slot>>,
    /// Messages in flight, keyed by their rendering: (message, copies).
    /// Shared between states (a successor changes only a few).
    pub net: BTreeMap<Arc<str>, (Arc<Message<Payload>>, u8)>,
    /// History for the properties. Shared between states: most
    /// transitions do not change it.
    pub ghost: Arc<Ghost>,
    /// Budget used.
    pub used: Used,
}

impl Hash for State {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.nodes.hash(h);
        for (k, (_, n)) in &self.net {
            (k, n).hash(h);
        }
        self.ghost.hash(h);
        self.used.hash(h);
    }
}

impl PartialEq for State {
    fn eq(&self, o: &State) -> bool {
        self.nodes == o.nodes
            && self.net.len() == o.net.len()
            && self
                .net
                .iter()
                .zip(&o.net)
                .all(|(a, b)| a.0 == b.0 && a.1 .1 == b.1 .1)
            && self.ghost == o.ghost
            && self.used == o.used
    }
}

impl State {
    /// Node `id`.
    pub fn node(&self, id: NodeId) -> &Slot {
        &self.nodes[slot_index(id)]
    }

    /// Node `id`, to change (copied first if another state shares it).
    fn node_mut(&mut self, id: NodeId) -> &mut Slot {
        Arc::make_mut(&mut self.nodes[slot_index(id)])
    }
}

fn slot_index(id: NodeId) -> usize {
    usize::try_from(id - 1).expect("small ids")
}

/// A step of the model.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// The network delivers one copy of a message.
    Deliver(Message<Payload>),
    /// The network loses one copy of a message.
    Drop(Message<Payload>),
    /// The network duplicates a message.
    Duplicate(Message<Payload>),
    /// A node's election timeout fires (`campaign`).
    Timeout(NodeId),
    /// A leader's heartbeat timer fires (`tick`).
    Heartbeat(NodeId),
    /// A node's oldest pending write becomes durable.
    Persist(NodeId),
    /// Power loss: the node restarts from its durable disk.
    Crash(NodeId),
    /// A client command at a leader.
    Propose(NodeId),
    /// A read request at a node.
    Read(NodeId),
    /// A leader proposes a membership change (joint consensus).
    Reconfigure(NodeId, Change),
    /// The application snapshots its state machine and compacts its log.
    Snapshot(NodeId),
}

/// A message in short: `n1→n2 Vote t2 last=1@t1`.
pub fn show_message(m: &Message<Payload>) -> String {
    let body = match &m.body {
        MessageBody::RequestVote {
            pre_vote,
            last_log_index,
            last_log_term,
            ..
        } => format!(
            "{} last={last_log_index}@t{last_log_term}",
            if *pre_vote { "PreVote" } else { "Vote" }
        ),
        MessageBody::RequestVoteResponse { pre_vote, granted } => format!(
            "{}{}",
            if *pre_vote { "PreVote" } else { "Vote" },
            if *granted { "Granted" } else { "Rejected" }
        ),
        MessageBody::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
        } => {
            let es: Vec<String> = entries.iter().map(|e| EntryId::of(e).to_string()).collect();
            format!(
                "Append prev={prev_log_index}@t{prev_log_term} [{}] commit={leader_commit}",
                es.join(",")
            )
        }
        MessageBody::AppendEntriesResponse { index, reject } => match reject {
            None => format!("AppendOk {index}"),
            Some(_) => format!("AppendReject {index}"),
        },
        MessageBody::Heartbeat { commit, read_seq } => {
            format!("Heartbeat commit={commit} round={read_seq}")
        }
        MessageBody::HeartbeatResponse { read_seq } => format!("HeartbeatOk round={read_seq}"),
        MessageBody::ReadIndex { ctx } => format!("ReadIndex ctx={ctx}"),
        MessageBody::ReadIndexResponse { ctx, index } => {
            format!("ReadIndexResp ctx={ctx} index={index:?}")
        }
        MessageBody::TimeoutNow => "TimeoutNow".into(),
        MessageBody::InstallSnapshot {
            meta, offset, done, ..
        } => format!(
            "Snapshot {}@t{} offset={offset} done={done}",
            meta.index, meta.term
        ),
        MessageBody::SnapshotResponse { index, received } => {
            format!("SnapshotResp {index} received={received}")
        }
    };
    format!("n{}→n{} t{} {body}", m.from, m.to, m.term)
}

impl core::fmt::Display for Action {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Action::Deliver(m) => write!(f, "deliver {}", show_message(m)),
            Action::Drop(m) => write!(f, "drop {}", show_message(m)),
            Action::Duplicate(m) => write!(f, "duplicate {}", show_message(m)),
            Action::Timeout(n) => write!(f, "n{n} election timeout"),
            Action::Heartbeat(n) => write!(f, "n{n} heartbeat tick"),
            Action::Persist(n) => write!(f, "n{n} disk sync"),
            Action::Crash(n) => write!(f, "n{n} power loss + restart"),
            Action::Propose(n) => write!(f, "n{n} propose"),
            Action::Read(n) => write!(f, "n{n} read_index"),
            Action::Reconfigure(n, c) => write!(f, "n{n} propose joint {c}"),
            Action::Snapshot(n) => write!(f, "n{n} snapshot + compact"),
        }
    }
}

impl RaftModel {
    /// A model of the given variant and bounds, without pre-vote.
    pub fn new(variant: Variant, bounds: Bounds) -> RaftModel {
        RaftModel {
            bounds,
            variant,
            pre_vote: false,
            entries_per_msg: 1,
            prefix: Vec::new(),
        }
    }

    /// A checker builder with the bounds' depth applied.
    pub fn checker_at_bound(self) -> stateright::CheckerBuilder<RaftModel> {
        let depth = self.bounds.max_depth;
        let b = self.checker();
        if depth > 0 {
            b.target_max_depth(depth)
        } else {
            b
        }
    }

    /// The configuration of node `id`.
    pub fn config(&self, id: NodeId) -> Config {
        let mut c = model_config(id, self.pre_vote);
        c.max_entries_per_msg = self.entries_per_msg;
        c
    }

    fn driver(&self, slot: &Slot) -> Driver {
        Driver::replay(self.config(slot.id), &slot.start, slot.inputs.in_order())
    }

    /// Rebuilds node `id` of `s` (to look at hidden state in tests).
    pub fn rebuild(&self, s: &State, id: NodeId) -> Driver {
        self.driver(s.node(id))
    }

    /// Feeds `input` to node `id`, recording what it does.
    fn feed(&self, s: &mut State, id: NodeId, input: Input) {
        let mut d = self.driver(s.node(id));
        let mut out = Outputs::default();
        d.apply(input.clone(), &mut out);
        s.node_mut(id).inputs.push(input);
        absorb(s, id, &d, out);
    }

    fn crash(&self, s: &mut State, id: NodeId) {
        let slot = s.node_mut(id);
        slot.start = Arc::clone(&slot.durable);
        slot.inputs = Inputs::default();
        slot.unsynced.clear();
        let mut out = Outputs::default();
        let d = Driver::start(self.config(id), MemStorage::clone(&slot.durable), &mut out);
        absorb(s, id, &d, out);
    }
}

/// Records what node `id` did: messages into the network, batches onto
/// its disk's pending list, ghost observations.
fn absorb(s: &mut State, id: NodeId, d: &Driver, out: Outputs) {
    for m in out.messages {
        let key: Arc<str> = Arc::from(format!("{m:?}"));
        let e = s.net.entry(key).or_insert((Arc::new(m), 0));
        e.1 = e.1.saturating_add(1);
    }
    let installs = out.batches.iter().filter(|b| b.install.is_some()).count();
    let slot = s.node_mut(id);
    slot.unsynced.extend(out.batches.into_iter().map(Arc::new));
    if let Some((meta, data)) = out.snapshot {
        // Taking a snapshot is synchronous: it is durable before the log
        // is compacted (everything it covers is applied, hence durable).
        Arc::make_mut(&mut slot.durable)
            .create_snapshot(meta, data)
            .expect("the durable log covers what was applied");
    }
    slot.view = View::of(d);
    let view = slot.view.clone();
    let changes = installs > 0
        || !out.committed.is_empty()
        || !out.became_leader.is_empty()
        || !out.reads.is_empty()
        || s.ghost.would_observe(&view);
    if !changes {
        return;
    }
    let g = Arc::make_mut(&mut s.ghost);
    g.installs = g.installs.saturating_add(installs as u8);
    for e in &out.committed {
        g.applied.entry(e.index).or_default().insert(EntryId::of(e));
    }
    for t in out.became_leader {
        g.leaders.entry(t).or_default().push(id);
    }
    for r in out.reads {
        let Some((node, required)) = g.reads_pending.remove(&r.ctx) else {
            continue;
        };
        if let Ok(index) = r.result {
            g.reads_served.push(ServedRead {
                node,
                ctx: r.ctx,
                required,
                index,
            });
        }
    }
    g.observe_commits(&view);
}

fn take_one(net: &mut BTreeMap<Arc<str>, (Arc<Message<Payload>>, u8)>, m: &Message<Payload>) {
    let key = format!("{m:?}");
    let gone = match net.get_mut(key.as_str()) {
        Some(e) => {
            e.1 -= 1;
            e.1 == 0
        }
        None => panic!("no such message in flight: {key}"),
    };
    if gone {
        net.remove(key.as_str());
    }
}

impl Model for RaftModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let mut s = State {
            nodes: Vec::new(),
            net: BTreeMap::new(),
            ghost: Arc::new(Ghost::default()),
            used: Used::default(),
        };
        for &id in self.variant.nodes() {
            let disk = if NODES.contains(&id) {
                MemStorage::bootstrap(&NODES)
            } else {
                MemStorage::new_with_conf(ConfState::default())
            };
            let mut out = Outputs::default();
            let d = Driver::start(self.config(id), disk.clone(), &mut out);
            s.nodes.push(Arc::new(Slot {
                id,
                start: Arc::new(disk.clone()),
                inputs: Inputs::default(),
                durable: Arc::new(disk),
                unsynced: VecDeque::new(),
                view: View::of(&d),
            }));
            absorb(&mut s, id, &d, out);
        }
        for &step in &self.prefix {
            for a in self.resolve(&s, step) {
                s = self.next_state(&s, a).expect("a scripted step");
            }
        }
        vec![s]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        let b = &self.bounds;
        for (m, n) in s.net.values() {
            actions.push(Action::Deliver(Message::clone(m)));
            if s.used.drops < b.max_drops {
                actions.push(Action::Drop(Message::clone(m)));
            }
            if s.used.dups < b.max_dups && *n < 2 {
                actions.push(Action::Duplicate(Message::clone(m)));
            }
        }
        for slot in &s.nodes {
            let id = slot.id;
            let v = &slot.view;
            let leader = v.role == Role::Leader;
            let voter = v.conf.0.contains(&id) || v.conf.1.contains(&id);
            if !leader && voter && v.term < b.max_term {
                actions.push(Action::Timeout(id));
            }
            if leader && s.used.heartbeats < b.max_heartbeats {
                actions.push(Action::Heartbeat(id));
            }
            if !slot.unsynced.is_empty() {
                actions.push(Action::Persist(id));
            }
            if s.used.crashes < b.max_crashes {
                actions.push(Action::Crash(id));
            }
            if leader && s.used.proposals < b.max_proposals {
                actions.push(Action::Propose(id));
            }
            if s.used.reads < b.max_reads && (leader || v.leader.is_some()) {
                actions.push(Action::Read(id));
            }
            if let Some(change) = self.variant.change().filter(|_| {
                leader
                    && s.used.conf_changes == 0
                    && v.commit > 0
                    && v.entry(v.commit).is_some_and(|e| e.term == v.term)
            }) {
                actions.push(Action::Reconfigure(id, change));
            }
            if self.variant == Variant::Snapshot
                && s.used.snapshots < b.max_snapshots
                && v.applied >= v.first()
                && v.applied > 1
            {
                actions.push(Action::Snapshot(id));
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Deliver(m) => {
                take_one(&mut s.net, &m);
                let to = m.to;
                self.feed(&mut s, to, Input::Step(m));
            }
            Action::Drop(m) => {
                take_one(&mut s.net, &m);
                s.used.drops += 1;
            }
            Action::Duplicate(m) => {
                let e = s.net.get_mut(format!("{m:?}").as_str()).expect("in flight");
                e.1 += 1;
                s.used.dups += 1;
            }
            Action::Timeout(id) => self.feed(&mut s, id, Input::Campaign),
            Action::Heartbeat(id) => {
                s.used.heartbeats += 1;
                self.feed(&mut s, id, Input::Tick);
            }
            Action::Persist(id) => {
                let slot = s.node_mut(id);
                let batch = slot.unsynced.pop_front().expect("a pending write");
                batch.apply_to(Arc::make_mut(&mut slot.durable));
                self.feed(&mut s, id, Input::Persisted);
            }
            Action::Crash(id) => {
                s.used.crashes += 1;
                self.crash(&mut s, id);
            }
            Action::Propose(id) => {
                s.used.proposals += 1;
                let data = vec![b'a' + s.used.proposals - 1];
                self.feed(&mut s, id, Input::Propose(data));
            }
            Action::Read(id) => {
                s.used.reads += 1;
                let ctx = ReadCtx::from(s.used.reads);
                let required = s.ghost.max_committed();
                Arc::make_mut(&mut s.ghost)
                    .reads_pending
                    .insert(ctx, (id, required));
                self.feed(&mut s, id, Input::ReadIndex(ctx));
            }
            Action::Reconfigure(id, change) => {
                s.used.conf_changes += 1;
                self.feed(&mut s, id, Input::ConfChange(change.conf_change()));
            }
            Action::Snapshot(id) => {
                s.used.snapshots += 1;
                self.feed(&mut s, id, Input::Snapshot);
            }
        }
        Some(s)
    }

    fn within_boundary(&self, s: &State) -> bool {
        s.nodes.iter().all(|n| {
            n.view
                .log
                .last()
                .is_none_or(|e| e.index <= self.bounds.max_log)
        })
    }

    fn format_action(&self, action: &Action) -> String {
        action.to_string()
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut v = vec![
            Property::always("election safety", |_, s| crate::props::election_safety(s)),
            Property::always("log matching", |_, s| crate::props::log_matching(s)),
            Property::always("leader completeness", |_, s| {
                crate::props::leader_completeness(s)
            }),
            Property::always("state machine safety", |_, s| {
                crate::props::state_machine_safety(s)
            }),
            Property::always("committed entries durable on a quorum", |_, s| {
                crate::props::committed_durable_on_quorum(s)
            }),
            Property::always("read index safety", |_, s| {
                crate::props::read_index_safety(s)
            }),
        ];
        match self.variant {
            Variant::Basic | Variant::Snapshot => v.push(Property::sometimes(
                "a leader commits a client entry",
                |_, s| crate::props::client_entry_committed(s),
            )),
            // The joint entry and the leave entry fill the log bound: the
            // leave committed under {1,2} is this variant's "a leader
            // commits an entry".
            Variant::Membership | Variant::Replace => v.push(Property::sometimes(
                "the joint change commits and is left",
                |_, s| crate::props::reconfigured(s),
            )),
        }
        match self.variant {
            Variant::Basic | Variant::Membership | Variant::Replace => {}
            Variant::Snapshot => v.push(Property::sometimes(
                "a follower installs a snapshot",
                |_, s: &State| s.ghost.installs > 0,
            )),
        }
        v
    }
}
