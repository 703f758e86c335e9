//! The replica: a Raft node, its state machine, and the bookkeeping that
//! turns committed entries into answers.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use metalraft_core::{
    ConfChange, EntryData, Index, LogStorage, Message, Node, NodeId, PersistToken, ReadCtx,
    ReadState, Role, SnapshotChunk, SoftState, StepError, Term,
};

use crate::awaiting::AwaitingReads;
use crate::config::{Config, MAX_TIMED_BACKLOG};
use crate::error::{ConfigError, Fatal, ProposeError, ReadError, RequestFailure, UnknownReason};
use crate::frame::{Frame, Origin};
use crate::machine::{Instant, StateMachine};
use crate::output::{
    Completion, Event, MembershipChange, Outcome, Output, PersistWork, ReqId, SnapshotDue,
    SnapshotToSave,
};
use crate::snapshot::SnapshotAssembler;

/// What a payload must offer the replica: the core's [`metalraft_core::Payload`]
/// plus access to its bytes (to read the envelope) and construction from
/// the envelope's bytes. `Vec<u8>` and `Box<[u8]>` qualify; so does a
/// reference-counted newtype such as the simulator's.
pub trait EntryPayload: metalraft_core::Payload + AsRef<[u8]> + From<Vec<u8>> {}

impl<T: metalraft_core::Payload + AsRef<[u8]> + From<Vec<u8>>> EntryPayload for T {}

/// The [`Output`] of a replica running state machine `M` with payload `P`.
pub type OutputOf<M, P> = Output<
    P,
    <M as StateMachine>::Output,
    <M as StateMachine>::ReadOutput,
    <M as StateMachine>::Event,
>;

/// The outcome type of a replica running `M`.
type OutcomeOf<M> = Outcome<<M as StateMachine>::Output, <M as StateMachine>::ReadOutput>;

/// Counters of what the replica did, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Proposals that completed with their output.
    pub proposals_applied: u64,
    /// Proposals that completed as superseded.
    pub proposals_superseded: u64,
    /// Proposals that completed as unknown.
    pub proposals_unknown: u64,
    /// Linearizable reads served.
    pub reads_served: u64,
    /// Reads that failed.
    pub reads_failed: u64,
    /// Snapshots taken at the threshold.
    pub snapshots_taken: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Committed entries that were not a replica envelope (skipped alike on
    /// every replica).
    pub unframed_entries: u64,
    /// Timed-action commands proposed by this node as leader.
    pub timed_proposals: u64,
}

/// A proposal waiting for its entry: keyed by (index, term) in the replica.
#[derive(Debug)]
struct Proposal {
    req_id: ReqId,
    conf_change: bool,
    deadline_tick: u64,
}

/// A read with its read index, waiting for apply.
struct ReadyRead<Q> {
    index: Index,
    req_id: ReqId,
    query: Q,
    deadline_tick: u64,
}

/// A replica of the replicated state machine: a [`Node`] driven for you.
///
/// # Method map
///
/// - **Inputs:** [`Replica::tick`] (one unit of logical time),
///   [`Replica::step`] (a peer message), [`Replica::propose`] (a command),
///   [`Replica::propose_conf_change`], [`Replica::read`] (a linearizable
///   read), [`Replica::on_persisted`] (a persistence batch is durable),
///   [`Replica::snapshot_saved`] (a snapshot is durable),
///   [`Replica::handle_timeout`] (wall time for timed actions),
///   [`Replica::transfer_leader`], [`Replica::campaign`].
/// - **Output:** [`Replica::poll`] returns an [`Output`] until there is
///   nothing to do; [`Replica::poll_timeout`] says when to call
///   `handle_timeout` next.
/// - **Getters:** [`Replica::id`], [`Replica::role`], [`Replica::leader`],
///   [`Replica::term`], [`Replica::applied_index`], [`Replica::state_machine`]
///   / [`Replica::state_machine_mut`], [`Replica::node`], [`Replica::storage`] / [`Replica::storage_mut`],
///   [`Replica::pending_proposals`], [`Replica::pending_reads`],
///   [`Replica::stats`], [`Replica::failure`].
///
/// No clock, no I/O, no global state: identical inputs give identical outputs.
pub struct Replica<M: StateMachine, S, P = Vec<u8>> {
    node: Node<P, S>,
    sm: M,
    cfg: Config,
    proposals: BTreeMap<(Index, Term), Proposal>,
    proposal_ids: BTreeMap<ReqId, (Index, Term)>,
    reads: AwaitingReads<M::Query>,
    reads_ready: Vec<ReadyRead<M::Query>>,
    next_ctx: ReadCtx,
    next_internal: u64,
    assembler: SnapshotAssembler,
    snapshot_index: Index,
    snapshot_pending: Option<Index>,
    /// Sequence number of the batch installing a received snapshot that is
    /// not durable yet: no snapshot of our own is taken until it is (see
    /// [`Replica::maybe_snapshot`]).
    install_unsynced: Option<u64>,
    /// Timed commands the core refused for a while, proposed again at the
    /// next [`Replica::handle_timeout`] (at most [`MAX_TIMED_BACKLOG`]).
    timed_backlog: Vec<Vec<u8>>,
    out: OutputOf<M, P>,
    scratch: Vec<M::Event>,
    ticks: u64,
    next_expiry_tick: u64,
    now: Instant,
    is_leader: bool,
    was_member: bool,
    failed: Option<Fatal>,
    stats: Stats,
}

impl<M: StateMachine, S: LogStorage<P>, P: EntryPayload> Replica<M, S, P> {
    /// A replica over durable `storage` and a state machine already restored
    /// from the latest durable snapshot (or empty). The core hands out the
    /// committed entries after `sm.applied_index()` for applying.
    pub fn new(cfg: Config, storage: S, sm: M) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let applied = sm.applied_index();
        let node = Node::new(cfg.core.clone(), storage, applied).map_err(ConfigError::Core)?;
        let me = node.id();
        let was_member = node.conf_state().contains(me);
        Ok(Replica {
            node,
            sm,
            proposals: BTreeMap::new(),
            proposal_ids: BTreeMap::new(),
            reads: AwaitingReads::new(),
            reads_ready: Vec::new(),
            next_ctx: 1,
            next_internal: 1,
            assembler: SnapshotAssembler::new(cfg.max_snapshot_bytes),
            snapshot_index: applied,
            snapshot_pending: None,
            install_unsynced: None,
            timed_backlog: Vec::new(),
            out: Output::new(),
            scratch: Vec::new(),
            ticks: 0,
            next_expiry_tick: u64::MAX,
            now: Instant::default(),
            is_leader: false,
            was_member,
            failed: None,
            stats: Stats::default(),
            cfg,
        })
    }

    // ----- getters -------------------------------------------------------

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.node.id()
    }
    /// Current role.
    pub fn role(&self) -> Role {
        self.node.role()
    }
    /// The leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.node.leader()
    }
    /// Current term.
    pub fn term(&self) -> Term {
        self.node.term()
    }
    /// The configuration it was built with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    /// The state machine's applied index.
    pub fn applied_index(&self) -> Index {
        self.sm.applied_index()
    }
    /// The state machine, for local (serializable) reads and status.
    pub fn state_machine(&self) -> &M {
        &self.sm
    }
    /// The state machine, for state outside the replicated state (a lease
    /// clock's keepalives, e.g. `LeasedMvccStore::lessor_mut`). Changing
    /// replicated state through it breaks determinism: propose instead.
    pub fn state_machine_mut(&mut self) -> &mut M {
        &mut self.sm
    }
    /// The Raft node, read-only (its getters: commit index, configuration,
    /// stats...). Inputs go through the replica.
    pub fn node(&self) -> &Node<P, S> {
        &self.node
    }
    /// The durable log storage.
    pub fn storage(&self) -> &S {
        self.node.storage()
    }
    /// The durable log storage, for carrying out [`PersistWork`] and
    /// [`SnapshotToSave`].
    pub fn storage_mut(&mut self) -> &mut S {
        self.node.storage_mut()
    }
    /// Proposals waiting for their entry.
    pub fn pending_proposals(&self) -> usize {
        self.proposals.len()
    }
    /// Reads waiting for a read index or for apply.
    pub fn pending_reads(&self) -> usize {
        self.reads.len() + self.reads_ready.len()
    }
    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }
    /// Why the replica stopped, if it did.
    pub fn failure(&self) -> Option<Fatal> {
        self.failed
    }

    // ----- inputs --------------------------------------------------------

    /// One unit of logical time: the core's timers, and request timeouts.
    pub fn tick(&mut self) -> Result<(), Fatal> {
        self.check_failed()?;
        self.ticks += 1;
        if let Err(e) = self.node.tick() {
            return Err(self.fail(Fatal::Core(e)));
        }
        if self.ticks >= self.next_expiry_tick {
            self.expire_requests();
        }
        Ok(())
    }

    /// A message from a peer. An `Err` says why it was dropped (normal in an
    /// asynchronous network); only `StepError::Storage`/`Failed` stop the
    /// replica.
    pub fn step(&mut self, m: Message<P>) -> Result<(), StepError> {
        if self.failed.is_some() {
            return Err(StepError::Failed);
        }
        let r = self.node.step(m);
        if let Err(StepError::Storage(e)) = r {
            self.fail(Fatal::Core(metalraft_core::Error::Storage(e)));
        }
        r
    }

    /// Proposes `command` for request `req_id` (unique among this replica's
    /// pending proposals). On `Ok(index)` exactly one [`Completion`] for
    /// `req_id` will follow: the output once applied, `Superseded` if
    /// another entry commits at `index`, or `Unknown`.
    pub fn propose(&mut self, req_id: ReqId, command: &[u8]) -> Result<Index, ProposeError> {
        self.admit_proposal(req_id)?;
        let origin = Origin::Client {
            node: self.id(),
            req_id,
        };
        let index = self.node.propose(P::from(Frame::encode(origin, command)))?;
        self.track_proposal(req_id, index, false);
        Ok(index)
    }

    /// Proposes a membership change for request `req_id`; it completes with
    /// [`Outcome::ConfChanged`] when applied (or fails like a proposal).
    pub fn propose_conf_change(
        &mut self,
        req_id: ReqId,
        cc: ConfChange,
    ) -> Result<Index, ProposeError> {
        self.admit_proposal(req_id)?;
        let index = self.node.propose_conf_change(cc)?;
        self.track_proposal(req_id, index, true);
        Ok(index)
    }

    /// A linearizable read for request `req_id`: the core confirms a read
    /// index (a follower asks its leader), the replica waits until the state
    /// machine has applied it, then answers `query` in a [`Completion`]
    /// ([`Outcome::Read`]). On `Ok` exactly one completion follows.
    pub fn read(&mut self, req_id: ReqId, query: M::Query) -> Result<(), ReadError> {
        if self.failed.is_some() {
            return Err(ReadError::Stopped);
        }
        if self.pending_reads() >= self.cfg.max_pending_reads {
            return Err(ReadError::TooManyPending);
        }
        let ctx = self.next_ctx;
        self.node.read_index(ctx).map_err(ReadError::Core)?;
        self.next_ctx += 1;
        let queued = self.reads.push(ctx, req_id, query);
        debug_assert!(queued, "read contexts only grow");
        Ok(())
    }

    /// The [`PersistWork`] whose token this is is durable.
    pub fn on_persisted(&mut self, token: PersistToken) -> Result<(), Fatal> {
        self.check_failed()?;
        if self.install_unsynced.is_some_and(|seq| token.seq() >= seq) {
            self.install_unsynced = None;
        }
        self.node
            .on_persisted(token)
            .map_err(|e| self.fail(Fatal::Core(e)))
    }

    /// The [`SnapshotToSave`] at `index` is durable (or was given up: pass
    /// its index anyway). The next snapshot may then be taken.
    pub fn snapshot_saved(&mut self, index: Index) {
        if self.snapshot_pending == Some(index) {
            self.snapshot_pending = None;
        }
    }

    /// Wall time for leader-driven timed actions: at or after
    /// [`Replica::poll_timeout`], the state machine's
    /// [`StateMachine::on_timeout`] runs on the leader and its commands are
    /// proposed. Proposals the core refuses for a while (a leadership
    /// transfer pending, the uncommitted limit) are kept and proposed again
    /// at the next call, whatever the deadline (callers call it at least
    /// once per tick); they are dropped if this node stops leading. Without
    /// that, a lease that expired during a transfer waited for the lessor's
    /// retry, 3 s (etcd's `expiredLeaseRetryInterval`).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if self.failed.is_some() || !self.is_leader {
            return;
        }
        let due = self.sm.next_deadline().is_some_and(|d| d <= now);
        if !due && self.timed_backlog.is_empty() {
            return;
        }
        let mut commands = core::mem::take(&mut self.timed_backlog);
        if due {
            self.sm.on_timeout(now, &mut commands);
        }
        for c in commands {
            let origin = Origin::Internal {
                node: self.id(),
                seq: self.next_internal,
            };
            match self.node.propose(P::from(Frame::encode(origin, &c))) {
                Ok(_) => {
                    self.next_internal += 1;
                    self.stats.timed_proposals += 1;
                }
                Err(
                    metalraft_core::ProposeError::TransferInProgress
                    | metalraft_core::ProposeError::UncommittedLimit,
                ) if self.timed_backlog.len() < MAX_TIMED_BACKLOG => {
                    self.timed_backlog.push(c);
                }
                Err(_) => {}
            }
        }
    }

    /// When [`Replica::handle_timeout`] should next be called (the state
    /// machine's next deadline, on the leader only). Timed commands the
    /// core refused are retried at the next call whatever this says: call
    /// `handle_timeout` at least once per tick as well.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.failed.is_some() || !self.is_leader {
            return None;
        }
        self.sm.next_deadline()
    }

    /// Asks the core to transfer leadership to `to` (thesis §3.10).
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), metalraft_core::TransferError> {
        self.node.transfer_leader(to)
    }

    /// Starts an election now.
    pub fn campaign(&mut self) -> Result<(), Fatal> {
        self.check_failed()?;
        match self.node.campaign() {
            Err(metalraft_core::Error::NotPromotable) | Ok(()) => Ok(()),
            Err(e) => Err(self.fail(Fatal::Core(e))),
        }
    }

    // ----- output --------------------------------------------------------

    /// Everything to do now, or `None` when there is nothing. Call it until
    /// it returns `None` after every input. One call handles at most one
    /// batch of the core: messages, persistence, applied entries (their
    /// completions and events), read answers, and the snapshot trigger.
    pub fn poll(&mut self) -> Option<OutputOf<M, P>> {
        if self.prepare_output() {
            Some(core::mem::replace(&mut self.out, Output::new()))
        } else {
            None
        }
    }

    /// [`Replica::poll`] without moving the output: the replica's own
    /// output, which the caller empties in place before any other call on
    /// the replica (take `persist`, `snapshot`, `snapshot_due` and
    /// `failure`, drain the vectors): the next output is built into it, and
    /// its batch or snapshot would replace one left there. For a
    /// caller on a small CPU: the output is a few hundred bytes, and each
    /// move of it by value is a `memcpy` (the firmware moved it four to
    /// five times per output); its vectors also keep their capacity, so a
    /// steady stream of outputs reuses them instead of allocating anew.
    pub fn poll_mut(&mut self) -> Option<&mut OutputOf<M, P>> {
        if self.prepare_output() {
            Some(&mut self.out)
        } else {
            None
        }
    }

    /// The work of [`Replica::poll`]: returns whether `self.out` holds
    /// something to hand out.
    fn prepare_output(&mut self) -> bool {
        loop {
            let ready = self.failed.is_none() && self.node.has_ready();
            if ready {
                if let Err(e) = self.handle_ready() {
                    self.fail(e);
                }
            }
            if self.failed.is_none() {
                self.serve_reads();
                if let Err(e) = self.maybe_snapshot() {
                    self.fail(e);
                }
            }
            if !self.out.is_empty() {
                return true;
            }
            if !ready || self.failed.is_some() {
                return false;
            }
            // The batch only applied entries and produced nothing to hand
            // out (a follower without apply events): the core may have the
            // next batch of committed entries ready (`max_apply_bytes`).
            // Returning `None` now would leave it until the next input.
        }
    }

    fn handle_ready(&mut self) -> Result<(), Fatal> {
        let mut rd = self.node.ready().map_err(Fatal::Core)?;
        if let Some(ss) = rd.soft_state() {
            self.on_soft_state(ss);
        }
        self.out.messages.extend(rd.take_messages());
        for chunk in rd.take_snapshot_chunks() {
            self.receive_chunk(chunk)?;
        }
        if let Some(persist) = rd.take_persist() {
            let snapshot_data = match persist.snapshot() {
                Some(install) => {
                    let meta = install.meta.clone();
                    self.install_unsynced = Some(persist.seq());
                    Some(self.install(&meta)?)
                }
                None => None,
            };
            self.out.persist = Some(PersistWork {
                persist,
                snapshot_data,
            });
        }
        for e in rd.take_committed_entries() {
            self.apply(e.index, e.term, e.data)?;
        }
        for rs in rd.take_read_states() {
            self.on_read_state(rs);
        }
        Ok(())
    }

    fn on_soft_state(&mut self, ss: SoftState) {
        let leader = ss.role == Role::Leader;
        if leader != self.is_leader {
            self.is_leader = leader;
            self.timed_backlog.clear();
            self.sm.on_leader_change(leader, self.now);
        }
        self.out.events.push(Event::Role(ss));
    }

    fn receive_chunk(&mut self, chunk: SnapshotChunk) -> Result<(), Fatal> {
        // The core already acknowledged these bytes to the leader: a chunk we
        // cannot keep means the install that follows cannot be carried out,
        // so the replica stops before anything is changed or promised.
        self.assembler.push(chunk).map_err(Fatal::Snapshot)
    }

    /// Restores the state machine from the received snapshot `meta`.
    fn install(&mut self, meta: &metalraft_core::SnapshotMeta) -> Result<Vec<u8>, Fatal> {
        let data = self.assembler.finish(meta).map_err(Fatal::Snapshot)?;
        self.sm
            .restore(meta.index, &data)
            .map_err(Fatal::StateMachine)?;
        // Whether a proposal at or below the snapshot was applied is now
        // unknowable: the snapshot does not say which entries it holds.
        let covered: Vec<(Index, Term)> = self
            .proposals
            .range(..=(meta.index, Term::MAX))
            .map(|(k, _)| *k)
            .collect();
        for key in covered {
            self.settle(
                key,
                Outcome::Failed(RequestFailure::Unknown(UnknownReason::SnapshotInstalled)),
            );
        }
        self.snapshot_index = meta.index;
        self.snapshot_pending = None;
        self.was_member = meta.conf_state.contains(self.id()) || self.was_member;
        self.stats.snapshots_installed += 1;
        self.out.events.push(Event::SnapshotInstalled {
            index: meta.index,
            term: meta.term,
        });
        Ok(data)
    }

    fn apply(&mut self, index: Index, term: Term, data: EntryData<P>) -> Result<(), Fatal> {
        if index <= self.sm.applied_index() {
            // Already in the snapshot the state machine was restored from.
            return Ok(());
        }
        // Proposals below this index that were never settled cannot be
        // matched any more (defensive: entries are applied in order).
        while let Some((&key, _)) = self.proposals.first_key_value() {
            if key.0 >= index {
                break;
            }
            self.settle(
                key,
                Outcome::Failed(RequestFailure::Unknown(UnknownReason::Stopped)),
            );
        }
        match data {
            EntryData::Normal(p) => {
                let Some(frame) = Frame::decode(p.as_ref()) else {
                    self.stats.unframed_entries += 1;
                    self.sm
                        .apply_empty(index, term)
                        .map_err(Fatal::StateMachine)?;
                    self.settle_index(index, term, None);
                    return Ok(());
                };
                let events = if self.cfg.emit_apply_events {
                    Some(&mut self.scratch)
                } else {
                    None
                };
                let output = self
                    .sm
                    .apply(index, term, frame.command, events)
                    .map_err(Fatal::StateMachine)?;
                for event in self.scratch.drain(..) {
                    self.out.events.push(Event::Applied { index, event });
                }
                let me = self.id();
                let mine = match frame.origin {
                    Origin::Client { node, req_id } if node == me => Some(req_id),
                    _ => None,
                };
                self.settle_index(
                    index,
                    term,
                    mine.map(|r| (r, Outcome::Applied { index, output })),
                );
            }
            EntryData::ConfChange(cc) => {
                self.sm
                    .apply_conf_change(index, term, &cc)
                    .map_err(Fatal::StateMachine)?;
                let conf_state = self.node.conf_state().clone();
                let me = self.id();
                let member = conf_state.contains(me);
                let self_removed = self.was_member && !member;
                self.was_member |= member;
                let outcome = Outcome::ConfChanged {
                    index,
                    conf_state: conf_state.clone(),
                };
                self.settle_conf(index, term, outcome);
                self.out.events.push(Event::Membership(MembershipChange {
                    index,
                    change: *cc,
                    conf_state,
                    self_removed,
                }));
            }
            EntryData::Noop => {
                self.sm
                    .apply_empty(index, term)
                    .map_err(Fatal::StateMachine)?;
                self.settle_index(index, term, None);
            }
        }
        Ok(())
    }

    /// The entry (index, term) was applied; `ours` is the request id in its
    /// envelope if this node proposed it, with its outcome. Every proposal
    /// at `index` completes: the one appended as (index, term) with the
    /// outcome, any other as superseded (a different entry is committed
    /// there for good).
    fn settle_index(&mut self, index: Index, term: Term, ours: Option<(ReqId, OutcomeOf<M>)>) {
        let mut ours = ours;
        let keys: Vec<(Index, Term)> = self
            .proposals
            .range((index, 0)..=(index, Term::MAX))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let matches = key.1 == term
                && ours
                    .as_ref()
                    .zip(self.proposals.get(&key))
                    .is_some_and(|((r, _), p)| *r == p.req_id && !p.conf_change);
            let outcome = match (matches, ours.take()) {
                (true, Some((_, o))) => o,
                (_, back) => {
                    ours = back;
                    Outcome::Failed(RequestFailure::Superseded { index })
                }
            };
            self.settle(key, outcome);
        }
    }

    fn settle_conf(&mut self, index: Index, term: Term, outcome: OutcomeOf<M>) {
        let mut outcome = Some(outcome);
        let keys: Vec<(Index, Term)> = self
            .proposals
            .range((index, 0)..=(index, Term::MAX))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let conf = self.proposals.get(&key).is_some_and(|p| p.conf_change);
            let o = match outcome.take() {
                Some(o) if key.1 == term && conf => o,
                back => {
                    outcome = back;
                    Outcome::Failed(RequestFailure::Superseded { index })
                }
            };
            self.settle(key, o);
        }
    }

    /// Completes the proposal at `key` with `outcome`.
    fn settle(&mut self, key: (Index, Term), outcome: OutcomeOf<M>) {
        let Some(p) = self.proposals.remove(&key) else {
            return;
        };
        self.proposal_ids.remove(&p.req_id);
        match &outcome {
            Outcome::Failed(RequestFailure::Superseded { .. }) => {
                self.stats.proposals_superseded += 1
            }
            Outcome::Failed(_) => self.stats.proposals_unknown += 1,
            _ => self.stats.proposals_applied += 1,
        }
        self.out.completions.push(Completion {
            req_id: p.req_id,
            outcome,
        });
    }

    fn on_read_state(&mut self, rs: ReadState) {
        let Some((req_id, query)) = self.reads.take(rs.ctx) else {
            return;
        };
        match rs.result {
            Ok(index) => {
                let deadline_tick = self.deadline();
                self.reads_ready.push(ReadyRead {
                    index,
                    req_id,
                    query,
                    deadline_tick,
                });
            }
            Err(e) => self.fail_read(req_id, RequestFailure::Read(e)),
        }
    }

    fn fail_read(&mut self, req_id: ReqId, why: RequestFailure) {
        self.stats.reads_failed += 1;
        self.out.completions.push(Completion {
            req_id,
            outcome: Outcome::Failed(why),
        });
    }

    /// Answers the reads whose read index the state machine has applied.
    fn serve_reads(&mut self) {
        let applied = self.sm.applied_index();
        let mut i = 0;
        while i < self.reads_ready.len() {
            if self.reads_ready[i].index > applied {
                i += 1;
                continue;
            }
            let r = self.reads_ready.remove(i);
            let output = self.sm.query(&r.query);
            self.stats.reads_served += 1;
            self.out.completions.push(Completion {
                req_id: r.req_id,
                outcome: Outcome::Read {
                    index: r.index,
                    output,
                },
            });
        }
    }

    /// Takes a snapshot once `snapshot_threshold_entries` entries were
    /// applied since the last one (taken or installed), one at a time, and
    /// never while a received snapshot's install is not durable: the caller
    /// makes its own snapshots durable at once (a file written, synced and
    /// renamed) while the install waits in the write queue, and an older
    /// install landing after a newer snapshot would take the durable state
    /// back below entries this node acknowledged (simulator, `--snapshots
    /// --leases` seed 19). The next poll after `on_persisted` takes it.
    fn maybe_snapshot(&mut self) -> Result<(), Fatal> {
        let applied = self.sm.applied_index();
        let threshold = self.cfg.snapshot_threshold_entries;
        if self.snapshot_pending.is_some()
            || self.install_unsynced.is_some()
            || applied < self.snapshot_index.saturating_add(threshold)
        {
            return Ok(());
        }
        // Whatever happens, do not retry at every poll.
        self.snapshot_index = applied;
        let meta = match self.node.snapshot_created(applied) {
            Ok(m) => m,
            // The core keeps a bounded history of configurations; it may
            // refuse an index it cannot describe. Try at the next threshold.
            Err(metalraft_core::Error::BadIndex(_)) => return Ok(()),
            Err(e) => return Err(Fatal::Core(e)),
        };
        let keep = self.cfg.snapshot_catch_up_entries.min(threshold);
        if self.sm.defers_snapshots() {
            // `poll` returns this output before applying anything else, so
            // the caller finds the state machine at `applied`.
            self.snapshot_pending = Some(applied);
            self.stats.snapshots_taken += 1;
            self.out.snapshot_due = Some(SnapshotDue {
                meta,
                compact_through: applied.saturating_sub(keep),
            });
            return Ok(());
        }
        let data = self.sm.snapshot().map_err(Fatal::StateMachine)?;
        self.snapshot_pending = Some(applied);
        self.stats.snapshots_taken += 1;
        self.out.snapshot = Some(SnapshotToSave {
            meta,
            data,
            compact_through: applied.saturating_sub(keep),
        });
        Ok(())
    }

    // ----- bookkeeping ---------------------------------------------------

    fn admit_proposal(&mut self, req_id: ReqId) -> Result<(), ProposeError> {
        if self.failed.is_some() {
            return Err(ProposeError::Stopped);
        }
        if self.proposal_ids.contains_key(&req_id) {
            return Err(ProposeError::DuplicateRequest);
        }
        if self.proposals.len() >= self.cfg.max_pending_proposals {
            return Err(ProposeError::TooManyPending);
        }
        Ok(())
    }

    fn track_proposal(&mut self, req_id: ReqId, index: Index, conf_change: bool) {
        let key = (index, self.node.term());
        let deadline_tick = self.deadline();
        self.proposal_ids.insert(req_id, key);
        self.proposals.insert(
            key,
            Proposal {
                req_id,
                conf_change,
                deadline_tick,
            },
        );
    }

    fn deadline(&mut self) -> u64 {
        let d = self.ticks.saturating_add(self.cfg.request_timeout_ticks);
        self.next_expiry_tick = self.next_expiry_tick.min(d);
        d
    }

    /// Completes every request past its deadline; finds the next deadline.
    fn expire_requests(&mut self) {
        let now = self.ticks;
        let expired: Vec<(Index, Term)> = self
            .proposals
            .iter()
            .filter(|(_, p)| p.deadline_tick <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            self.settle(
                key,
                Outcome::Failed(RequestFailure::Unknown(UnknownReason::TimedOut)),
            );
        }
        let mut i = 0;
        while i < self.reads_ready.len() {
            if self.reads_ready[i].deadline_tick <= now {
                let r = self.reads_ready.remove(i);
                self.fail_read(r.req_id, RequestFailure::TimedOut);
            } else {
                i += 1;
            }
        }
        let next_p = self.proposals.values().map(|p| p.deadline_tick).min();
        let next_r = self.reads_ready.iter().map(|r| r.deadline_tick).min();
        self.next_expiry_tick = next_p.into_iter().chain(next_r).min().unwrap_or(u64::MAX);
    }

    fn check_failed(&self) -> Result<(), Fatal> {
        match self.failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Stops the replica: every pending request completes now.
    fn fail(&mut self, e: Fatal) -> Fatal {
        if self.failed.is_some() {
            return e;
        }
        self.failed = Some(e);
        self.out.failure = Some(e);
        // A batch whose snapshot could not be installed must not be written.
        if self
            .out
            .persist
            .as_ref()
            .is_some_and(|p| p.persist.snapshot().is_some() && p.snapshot_data.is_none())
        {
            self.out.persist = None;
        }
        let keys: Vec<(Index, Term)> = self.proposals.keys().copied().collect();
        for key in keys {
            self.settle(
                key,
                Outcome::Failed(RequestFailure::Unknown(UnknownReason::Stopped)),
            );
        }
        for (req_id, _) in core::mem::replace(&mut self.reads, AwaitingReads::new()).drain() {
            self.fail_read(req_id, RequestFailure::Stopped);
        }
        for r in core::mem::take(&mut self.reads_ready) {
            self.fail_read(r.req_id, RequestFailure::Stopped);
        }
        e
    }
}
