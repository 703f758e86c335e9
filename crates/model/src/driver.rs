//! Drives one real [`metalraft_core::Node`] through a sequence of inputs,
//! exactly like a realization would: after every input its `Ready` is
//! drained, messages go to the network, persistence batches are written to
//! the node's (volatile) disk at once and made durable only by an explicit
//! [`Input::Persisted`].
//!
//! `Node` is neither `Clone` nor `Hash`, so a model state cannot hold one.
//! It holds the node's inputs since its last restart instead, and
//! [`Driver::replay`] rebuilds the node from them: the core is
//! deterministic, so the rebuilt node is the same node.

use std::collections::VecDeque;

use metalraft_core::{
    ConfChange, Config, Entry, EntryData, HardState, Index, LogStorage, MemStorage, Message, Node,
    NodeId, Persist, ReadCtx, ReadState, Role, SnapshotInstall, SnapshotMeta, Term,
};

/// The payload type of the model's commands.
pub type Payload = Vec<u8>;
/// The node type under test: the real core over the in-memory storage.
pub type CoreNode = Node<Payload, MemStorage<Payload>>;

/// One input to a node incarnation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A message from the network.
    Step(Message<Payload>),
    /// One tick of logical time.
    Tick,
    /// The election timeout fires.
    Campaign,
    /// A client command at the leader.
    Propose(Payload),
    /// A linearizable read request.
    ReadIndex(ReadCtx),
    /// A membership change at the leader.
    ConfChange(ConfChange),
    /// The oldest unacknowledged persistence batch is durable.
    Persisted,
    /// The application snapshots its state machine at its applied index
    /// and compacts the log.
    Snapshot,
}

/// A persistence batch as the disk sees it (the node keeps the token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// A received snapshot to install first, with its data.
    pub install: Option<(SnapshotInstall, Vec<u8>)>,
    /// Entries to write (overwriting from the first one's index).
    pub entries: Vec<Entry<Payload>>,
    /// The hard state to store.
    pub hard_state: Option<HardState>,
}

impl Batch {
    /// Writes the batch to `disk`.
    pub fn apply_to(&self, disk: &mut MemStorage<Payload>) {
        if let Some((install, data)) = &self.install {
            disk.install_snapshot(install, data.clone());
        }
        disk.append(&self.entries);
        if let Some(hs) = self.hard_state {
            disk.set_hard_state(hs);
        }
    }
}

/// What a node did in response to an input.
#[derive(Debug, Default)]
pub struct Outputs {
    /// Messages sent.
    pub messages: Vec<Message<Payload>>,
    /// Persistence batches issued (already written, not durable).
    pub batches: Vec<Batch>,
    /// Committed entries handed out for applying.
    pub committed: Vec<Entry<Payload>>,
    /// Read outcomes.
    pub reads: Vec<ReadState>,
    /// Terms in which this node became leader.
    pub became_leader: Vec<Term>,
    /// A snapshot the application took, with its state machine bytes.
    pub snapshot: Option<(SnapshotMeta, Vec<u8>)>,
}

/// A node incarnation plus the tokens of its batches not yet durable.
pub struct Driver {
    node: CoreNode,
    unacked: VecDeque<Persist<Payload>>,
    /// Snapshot bytes being received.
    incoming: Vec<u8>,
    /// The state machine: every applied entry, from the snapshot on. It is
    /// what a snapshot serializes.
    sm: Vec<EntryId>,
}

impl Driver {
    /// Starts an incarnation from durable storage and drains its first
    /// `Ready` (re-applying committed entries) into `out`.
    pub fn start(cfg: Config, disk: MemStorage<Payload>, out: &mut Outputs) -> Driver {
        let (sm, applied) = match disk.snapshot() {
            Some((meta, data)) => (decode_sm(data), meta.index),
            None => (Vec::new(), 0),
        };
        let node = Node::new(cfg, disk, applied).expect("a valid configuration and disk");
        let mut d = Driver {
            node,
            unacked: VecDeque::new(),
            incoming: Vec::new(),
            sm,
        };
        d.drain(out);
        d
    }

    /// Rebuilds an incarnation from the disk it started with and its inputs.
    pub fn replay<'a>(
        cfg: Config,
        start: &MemStorage<Payload>,
        inputs: impl IntoIterator<Item = &'a Input>,
    ) -> Driver {
        let mut d = Driver::start(cfg, start.clone(), &mut Outputs::default());
        for input in inputs {
            d.apply(input.clone(), &mut Outputs::default());
        }
        d
    }

    /// The node.
    pub fn node(&self) -> &CoreNode {
        &self.node
    }

    /// The state machine's entries, from its snapshot on.
    pub fn state_machine(&self) -> &[EntryId] {
        &self.sm
    }

    /// Feeds one input, then drains the node's `Ready` into `out`.
    ///
    /// # Panics
    ///
    /// If the node fails (a storage error) or refuses an acknowledgement:
    /// the model's driver keeps the core's contract, so either is a bug.
    pub fn apply(&mut self, input: Input, out: &mut Outputs) {
        match input {
            Input::Step(m) => {
                // A dropped message is fine: the core says why and moves on.
                let _reason = self.node.step(m);
            }
            Input::Tick => self.node.tick().expect("tick"),
            Input::Campaign => {
                // Refused (not promotable) is fine: the model only offers it
                // to promotable nodes, but replay must not depend on that.
                let _refused = self.node.campaign();
            }
            Input::Propose(data) => {
                let _refused = self.node.propose(data);
            }
            Input::ReadIndex(ctx) => {
                let _refused = self.node.read_index(ctx);
            }
            Input::ConfChange(cc) => {
                let _refused = self.node.propose_conf_change(cc);
            }
            Input::Persisted => {
                let p = self.unacked.pop_front().expect("a batch to acknowledge");
                self.node.on_persisted(p.into_token()).expect("in order");
            }
            Input::Snapshot => self.snapshot(out),
        }
        assert!(self.node.failure().is_none(), "node failed");
        self.drain(out);
    }

    fn snapshot(&mut self, out: &mut Outputs) {
        let index = self.node.applied_index();
        let first = self.node.storage().first_index().expect("first index");
        if index < first {
            return;
        }
        let Ok(meta) = self.node.snapshot_created(index) else {
            return;
        };
        let data = encode_sm(&self.sm);
        self.node
            .storage_mut()
            .create_snapshot(meta.clone(), data.clone())
            .expect("compaction within the durable log");
        out.snapshot = Some((meta, data));
    }

    fn drain(&mut self, out: &mut Outputs) {
        while self.node.has_ready() {
            let mut rd = self.node.ready().expect("ready");
            out.messages.extend(rd.take_messages());
            for chunk in rd.take_snapshot_chunks() {
                if chunk.offset == 0 {
                    self.incoming.clear();
                }
                assert_eq!(self.incoming.len() as u64, chunk.offset, "chunk order");
                self.incoming.extend_from_slice(&chunk.data);
            }
            if let Some(p) = rd.take_persist() {
                let install = p.snapshot().map(|i| {
                    let data = core::mem::take(&mut self.incoming);
                    self.sm = decode_sm(&data);
                    (i.clone(), data)
                });
                let batch = Batch {
                    install,
                    entries: p.entries().to_vec(),
                    hard_state: p.hard_state(),
                };
                batch.apply_to(self.node.storage_mut());
                out.batches.push(batch);
                self.unacked.push_back(p);
            }
            out.reads.extend(rd.take_read_states());
            let committed = rd.take_committed_entries();
            self.sm.extend(committed.iter().map(EntryId::of));
            out.committed.extend(committed);
            if let Some(soft) = rd.soft_state() {
                if soft.role == Role::Leader {
                    out.became_leader.push(soft.term);
                }
            }
        }
    }
}

/// A node's configuration in the model: no pre-vote and no check-quorum
/// unless asked (a smaller state space; both only add refusals), one entry
/// per AppendEntries (so a leader can replicate an old entry without its
/// own, which the Figure-8 rule is about).
pub fn model_config(id: NodeId, pre_vote: bool) -> Config {
    let mut c = Config::new(id);
    c.pre_vote = pre_vote;
    c.check_quorum = false;
    c.max_entries_per_msg = 1;
    c.max_snapshot_chunk_bytes = 1024;
    c
}

/// What identifies an entry for the properties: index, term and content
/// (a configuration change by its kind only: index and term identify it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    /// Log index.
    pub index: Index,
    /// Term.
    pub term: Term,
    /// Content.
    pub tag: Tag,
}

/// The content of an entry, in short.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tag {
    /// A leader's no-op.
    Noop,
    /// A client command.
    Normal(Payload),
    /// A membership change.
    Conf,
}

impl EntryId {
    /// The id of `e`.
    pub fn of(e: &Entry<Payload>) -> EntryId {
        let tag = match &e.data {
            EntryData::Noop => Tag::Noop,
            EntryData::Normal(p) => Tag::Normal(p.clone()),
            EntryData::ConfChange(_) => Tag::Conf,
        };
        EntryId {
            index: e.index,
            term: e.term,
            tag,
        }
    }
}

impl core::fmt::Display for EntryId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match &self.tag {
            Tag::Noop => write!(f, "{}@t{}", self.index, self.term),
            Tag::Normal(p) => write!(
                f,
                "{}@t{}:{}",
                self.index,
                self.term,
                String::from_utf8_lossy(p)
            ),
            Tag::Conf => write!(f, "{}@t{}:conf", self.index, self.term),
        }
    }
}

/// Serializes the state machine: (index, term, kind, payload)*.
pub fn encode_sm(sm: &[EntryId]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in sm {
        out.extend_from_slice(&e.index.to_be_bytes());
        out.extend_from_slice(&e.term.to_be_bytes());
        match &e.tag {
            Tag::Noop => out.push(0),
            Tag::Normal(p) => {
                out.push(1);
                out.push(u8::try_from(p.len()).expect("short payloads"));
                out.extend_from_slice(p);
            }
            Tag::Conf => out.push(2),
        }
    }
    out
}

/// Inverse of [`encode_sm`].
pub fn decode_sm(mut b: &[u8]) -> Vec<EntryId> {
    let mut sm = Vec::new();
    while b.len() >= 17 {
        let index = u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
        let term = u64::from_be_bytes(b[8..16].try_into().expect("8 bytes"));
        let (tag, rest) = match b[16] {
            0 => (Tag::Noop, &b[17..]),
            1 => {
                let n = usize::from(b[17]);
                (Tag::Normal(b[18..18 + n].to_vec()), &b[18 + n..])
            }
            _ => (Tag::Conf, &b[17..]),
        };
        sm.push(EntryId { index, term, tag });
        b = rest;
    }
    sm
}
