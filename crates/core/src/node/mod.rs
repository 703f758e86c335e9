//! The Raft node: a deterministic state machine driven by its caller.

mod election;
mod membership;
mod read;
mod replication;
mod snapshot;
mod step;
mod transfer;

pub use step::MAX_TERM_OR_INDEX;

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::config::Config;
use crate::error::{ConfigError, Error, ProposeError, StepError, StorageError};
use crate::log::{AppendError, RaftLog};
use crate::message::{Message, MessageBody, RejectHint};
use crate::progress::{Progress, ProgressState};
use crate::quorum::{self, VoteResult};
use crate::ready::{Persist, PersistToken, Ready};
use crate::rng::Rng;
use crate::storage::LogStorage;
use crate::types::{
    ConfState, Entry, EntryData, HardState, Index, NodeId, Payload, Role, SoftState, Term,
    INVALID_ID,
};

/// Counters of what a node did and dropped, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages dropped because they were misaddressed.
    pub dropped_misaddressed: u64,
    /// Messages dropped because they came from an older term.
    pub dropped_stale_term: u64,
    /// Vote requests ignored because a leader lease held.
    pub dropped_in_lease: u64,
    /// Vote requests dropped because the sender is not a voter here and
    /// its log is behind.
    pub dropped_not_member: u64,
    /// Messages dropped as malformed.
    pub dropped_malformed: u64,
    /// Messages dropped as unexpected for the role.
    pub dropped_unexpected: u64,
    /// Elections (including pre-vote rounds) this node started.
    pub campaigns: u64,
    /// Times this node became leader.
    pub became_leader: u64,
    /// Leadership transfers abandoned after an election timeout.
    pub transfers_aborted: u64,
    /// Invalid membership changes found in the log and ignored.
    pub conf_changes_ignored: u64,
    /// Snapshot transfers this leader started.
    pub snapshots_started: u64,
    /// Snapshots this follower received completely and installed.
    pub snapshots_installed: u64,
}

/// Something to do once a persistence batch is durable.
#[derive(Debug)]
enum Deferred<P> {
    /// A message that promises durable state (vote grant, append ack).
    Send(Message<P>),
    /// The candidate's vote for itself in `term` (Raft paper §5.2: it may
    /// only count once the vote is durable).
    SelfVote(Term),
}

/// A Raft node (Raft paper §5, thesis §3, §6, §9) as a sans-IO state
/// machine. `P` is the proposal payload type, `S` the read-only view of the
/// durable log the caller maintains.
///
/// # Method map
///
/// - **Construction:** [`Node::new`] (from a [`Config`] and durable storage).
/// - **Inputs:** [`Node::tick`] (one unit of logical time),
///   [`Node::step`] (a message from a peer), [`Node::propose`] (a command, on
///   the leader), [`Node::propose_conf_change`] (a membership change),
///   [`Node::read_index`] (a linearizable read), [`Node::transfer_leader`],
///   [`Node::campaign`] (start an election now), [`Node::on_persisted`] (a
///   persistence batch is durable) and [`Node::snapshot_created`] (the
///   application snapshotted its state machine).
/// - **Output:** [`Node::ready`] returns a [`Ready`] with messages to send,
///   storage work, committed entries to apply and role changes;
///   [`Node::has_ready`] tells whether calling it would return anything.
/// - **Getters:** [`Node::id`], [`Node::role`], [`Node::term`],
///   [`Node::vote`], [`Node::leader`], [`Node::soft_state`],
///   [`Node::hard_state`], [`Node::commit_index`], [`Node::applied_index`],
///   [`Node::persisted_index`], [`Node::last_index`], [`Node::entries`],
///   [`Node::conf_state`], [`Node::committed_conf_state`],
///   [`Node::promotable`], [`Node::vote_barrier`],
///   [`Node::lead_transferee`], [`Node::stats`],
///   [`Node::failure`], [`Node::storage`] / [`Node::storage_mut`].
///
/// The node reads no clock, owns no socket or file and draws randomness only
/// from [`Config::rng_seed`]: identical inputs give identical outputs.
///
/// # Failures
///
/// Peer input never panics the node: bad messages are dropped, counted in
/// [`Stats`] and reported as a [`StepError`]. A [`StorageError`] stops the
/// node for good ([`Node::failure`]); rebuild it from durable state.
pub struct Node<P, S> {
    cfg: Config,
    term: Term,
    vote: Option<NodeId>,
    role: Role,
    leader: Option<NodeId>,
    log: RaftLog<P, S>,
    /// The configuration in effect (latest in the log).
    conf: ConfState,
    /// The configuration as of the commit index.
    conf_base: ConfState,
    /// Uncommitted conf-change entries: (index, configuration after it).
    conf_pending: VecDeque<(Index, ConfState)>,
    /// Committed configurations since the last snapshot, for snapshot
    /// metadata: (index of the change, configuration after it).
    conf_history: VecDeque<(Index, ConfState)>,
    /// Follower: a snapshot being received.
    incoming: Option<snapshot::Incoming>,
    /// Follower: received chunks for the next Ready.
    snapshot_chunks: Vec<crate::types::SnapshotChunk>,
    /// Follower: a complete snapshot to hand out in the next Persist batch.
    pending_install: Option<crate::types::SnapshotInstall>,
    /// Followers' progress (leader only; never contains this node).
    progress: crate::peer_map::PeerMap<Progress>,
    votes: crate::peer_map::PeerMap<bool>,
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_election_timeout: u32,
    rng: Rng,
    msgs: Vec<Message<P>>,
    deferred: VecDeque<(u64, Deferred<P>)>,
    issued_seq: u64,
    acked_seq: u64,
    /// Hard state of the latest issued batch (what storage will hold).
    issued_hs: HardState,
    /// Highest term known durable (from storage at start, then from
    /// acknowledged batches). Nothing is sent in a term above it.
    durable_term: Term,
    /// New entries on the leader wait for the next `ready()` to be sent, so
    /// proposals made in a burst share messages.
    pending_bcast: bool,
    /// (index, bytes) of this leader's proposals not yet committed.
    uncommitted: VecDeque<(Index, usize)>,
    uncommitted_bytes: usize,
    last_soft: SoftState,
    failed: Option<StorageError>,
    stats: Stats,
    /// Ticks since this node was created (for read deadlines and leases).
    now: u64,
    read: read::ReadOnly,
    lead_transferee: Option<NodeId>,
    transfer_elapsed: u32,
    /// Repair mode ([`Config::vote_barrier`]): no votes, no campaigns,
    /// until a leader confirms the log up to this index.
    vote_barrier: Option<Index>,
    /// The barrier cleared in memory; the next Persist batch says so.
    barrier_clear_unissued: bool,
}

impl<P: Payload, S: LogStorage<P>> Node<P, S> {
    /// Creates a node from its configuration and its durable storage,
    /// resuming from the stored hard state. `applied` is the index the
    /// application's state machine already reflects (0 for a fresh one):
    /// committed entries after it will be handed out for applying.
    pub fn new(cfg: Config, storage: S, applied: Index) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let init = storage.initial_state().map_err(ConfigError::Storage)?;
        let conf = init.conf_state;
        // An empty configuration is allowed: a joining node learns its
        // configuration from the leader's log and never campaigns before.
        if conf.contains(INVALID_ID) {
            return Err(ConfigError::InvalidConfState);
        }
        let hs = init.hard_state;
        let last = storage.last_index().map_err(ConfigError::Storage)?;
        if hs.commit > last {
            return Err(ConfigError::InconsistentHardState);
        }
        // Everything in a snapshot is committed, even if the lazily written
        // commit index on disk is older than the snapshot.
        let first = storage.first_index().map_err(ConfigError::Storage)?;
        let commit = hs.commit.max(first - 1);
        let log = RaftLog::new(storage, commit, applied).map_err(ConfigError::Storage)?;
        let rng = Rng::new(cfg.rng_seed, cfg.id);
        let mut node = Node {
            term: hs.term,
            vote: hs.vote,
            role: Role::Follower,
            leader: None,
            log,
            conf_base: conf.clone(),
            conf_pending: VecDeque::new(),
            conf_history: VecDeque::new(),
            incoming: None,
            snapshot_chunks: Vec::new(),
            pending_install: None,
            conf,
            progress: crate::peer_map::PeerMap::new(),
            votes: crate::peer_map::PeerMap::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: cfg.election_timeout_ticks_min,
            rng,
            msgs: Vec::new(),
            deferred: VecDeque::new(),
            issued_seq: 0,
            acked_seq: 0,
            issued_hs: hs,
            durable_term: hs.term,
            pending_bcast: false,
            uncommitted: VecDeque::new(),
            uncommitted_bytes: 0,
            last_soft: SoftState {
                role: Role::Follower,
                leader: None,
                term: hs.term,
            },
            failed: None,
            stats: Stats::default(),
            now: 0,
            read: read::ReadOnly::default(),
            lead_transferee: None,
            transfer_elapsed: 0,
            vote_barrier: cfg.vote_barrier,
            barrier_clear_unissued: false,
            cfg,
        };
        node.reset_timers();
        node.load_confs().map_err(ConfigError::Storage)?;
        Ok(node)
    }

    // ----- getters -------------------------------------------------------

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }
    /// Current term.
    pub fn term(&self) -> Term {
        self.term
    }
    /// Vote cast in the current term.
    pub fn vote(&self) -> Option<NodeId> {
        self.vote
    }
    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }
    /// The leader this node knows of in the current term.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    /// Highest committed index known.
    pub fn commit_index(&self) -> Index {
        self.log.committed()
    }
    /// Highest index handed out for applying.
    pub fn applied_index(&self) -> Index {
        self.log.applied()
    }
    /// Highest index acknowledged durable.
    pub fn persisted_index(&self) -> Index {
        self.log.persisted()
    }
    /// Last index in the log (durable or not).
    pub fn last_index(&self) -> Result<Index, Error> {
        self.log.last_index().map_err(Error::from)
    }
    /// Current hard state (may not be durable yet).
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed(),
        }
    }
    /// Current role, leader and term.
    pub fn soft_state(&self) -> SoftState {
        SoftState {
            role: self.role,
            leader: self.leader,
            term: self.term,
        }
    }
    /// The vote barrier still in force ([`Config::vote_barrier`]): while
    /// `Some`, this node is repairing its log and neither votes nor
    /// campaigns.
    pub fn vote_barrier(&self) -> Option<Index> {
        self.vote_barrier
    }
    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }
    /// The storage error that stopped this node, if any.
    pub fn failure(&self) -> Option<StorageError> {
        self.failed
    }
    /// The durable log storage.
    pub fn storage(&self) -> &S {
        &self.log.storage
    }
    /// The durable log storage, for carrying out [`Persist`] batches.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.log.storage
    }
    /// Entries `[lo, hi)` of the log, limited to `max_bytes` (at least one).
    pub fn entries(&self, lo: Index, hi: Index, max_bytes: usize) -> Result<Vec<Entry<P>>, Error> {
        self.log.entries(lo, hi, max_bytes).map_err(Error::from)
    }

    // ----- inputs --------------------------------------------------------

    /// Advances logical time by one tick: followers and candidates count
    /// towards an election timeout, leaders towards heartbeats and the
    /// check-quorum deadline.
    pub fn tick(&mut self) -> Result<(), Error> {
        self.check_failed()?;
        self.now += 1;
        let r = match self.role {
            Role::Leader => self.tick_leader(),
            _ => self.tick_election(),
        };
        r.map_err(|e| self.fail(e))
    }

    /// Starts an election now (a pre-vote round first if configured).
    /// A no-op on a leader.
    pub fn campaign(&mut self) -> Result<(), Error> {
        self.check_failed()?;
        if self.role == Role::Leader {
            return Ok(());
        }
        if !self.promotable() {
            return Err(Error::NotPromotable);
        }
        if let Some(barrier) = self.vote_barrier {
            return Err(Error::Repairing { barrier });
        }
        self.hup().map_err(|e| self.fail(e))
    }

    /// Appends a command to the leader's log and returns its index. It is
    /// replicated at the next [`Node::ready`]; once it appears in
    /// [`Ready::committed_entries`] with the same index and this term, it is
    /// committed.
    pub fn propose(&mut self, data: P) -> Result<Index, ProposeError> {
        if self.failed.is_some() {
            return Err(ProposeError::Failed);
        }
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if self.lead_transferee.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        let size = crate::types::ENTRY_OVERHEAD_BYTES + data.payload_len();
        if self.uncommitted_bytes > 0
            && self.uncommitted_bytes + size > self.cfg.max_uncommitted_bytes
        {
            return Err(ProposeError::UncommittedLimit);
        }
        let index = match self.log.last_index() {
            Ok(l) => l + 1,
            Err(e) => {
                self.fail(e);
                return Err(ProposeError::Failed);
            }
        };
        self.log.append(Entry {
            term: self.term,
            index,
            data: EntryData::Normal(data),
        });
        self.uncommitted.push_back((index, size));
        self.uncommitted_bytes += size;
        self.pending_bcast = true;
        Ok(index)
    }

    /// Handles a message from a peer. An `Err` says why the message was
    /// dropped; only [`StepError::Storage`] and [`StepError::Failed`] mean the
    /// node has stopped.
    pub fn step(&mut self, m: Message<P>) -> Result<(), StepError> {
        if self.failed.is_some() {
            return Err(StepError::Failed);
        }
        let r = self.step_inner(m);
        match r {
            Ok(()) => Ok(()),
            Err(StepError::Storage(e)) => {
                self.fail(e);
                Err(StepError::Storage(e))
            }
            Err(e) => {
                self.count_drop(e);
                Err(e)
            }
        }
    }

    /// Acknowledges that the [`Persist`] batch `token` came from is durable.
    /// Batches must be acknowledged in the order they were issued.
    pub fn on_persisted(&mut self, token: PersistToken) -> Result<(), Error> {
        self.check_failed()?;
        if token.seq != self.acked_seq + 1 {
            return Err(Error::PersistOutOfOrder {
                expected: self.acked_seq + 1,
                got: token.seq,
            });
        }
        self.acked_seq = token.seq;
        self.durable_term = self.durable_term.max(token.term);
        if let Some(index) = token.snapshot {
            self.log.snapshot_persisted(index);
        }
        if let Some((index, term)) = token.last {
            let advanced = self.log.stable_to(index, term).map_err(|e| self.fail(e))?;
            if advanced
                && self.role == Role::Leader
                && self.maybe_commit().map_err(|e| self.fail(e))?
            {
                self.pending_bcast = true;
            }
        }
        self.release_deferred().map_err(|e| self.fail(e))
    }

    /// Carries out deferred actions whose batch has been acknowledged.
    fn release_deferred(&mut self) -> Result<(), StorageError> {
        while let Some((seq, _)) = self.deferred.front() {
            if *seq > self.acked_seq {
                break;
            }
            let Some((_, d)) = self.deferred.pop_front() else {
                break;
            };
            match d {
                Deferred::Send(m) => self.msgs.push(m),
                Deferred::SelfVote(term) => {
                    if self.role == Role::Candidate && self.term == term {
                        let id = self.id();
                        self.record_vote(id, true)?;
                    }
                }
            }
        }
        Ok(())
    }

    // ----- output --------------------------------------------------------

    /// Whether [`Node::ready`] would return a non-empty batch.
    pub fn has_ready(&self) -> bool {
        self.failed.is_none()
            && (!self.msgs.is_empty()
                || self.pending_bcast
                || self.log.has_unissued()
                || self.hard_state() != self.issued_hs
                || self.log.has_committed_to_apply()
                || self.soft_state() != self.last_soft
                || self.has_read_results()
                || !self.snapshot_chunks.is_empty()
                || self.pending_install.is_some()
                || self.barrier_clear_unissued)
    }

    /// Collects everything the caller must do now (see [`Ready`]).
    pub fn ready(&mut self) -> Result<Ready<P>, Error> {
        self.check_failed()?;
        self.ready_inner().map_err(|e| self.fail(e))
    }

    fn ready_inner(&mut self) -> Result<Ready<P>, StorageError> {
        self.maybe_auto_leave()?;
        if self.pending_bcast {
            self.pending_bcast = false;
            if self.role == Role::Leader {
                self.bcast_append()?;
            }
        }
        self.flush_read_round();
        let hs = self.hard_state();
        let entries = self.log.take_unissued();
        let snapshot = self.pending_install.take();
        let clears_vote_barrier = core::mem::take(&mut self.barrier_clear_unissued);
        let persist = if !entries.is_empty()
            || hs != self.issued_hs
            || snapshot.is_some()
            || clears_vote_barrier
        {
            let must_sync = !entries.is_empty()
                || snapshot.is_some()
                || clears_vote_barrier
                || hs.term != self.issued_hs.term
                || hs.vote != self.issued_hs.vote;
            self.issued_seq += 1;
            self.issued_hs = hs;
            Some(Persist {
                token: PersistToken {
                    seq: self.issued_seq,
                    last: entries.last().map(|e| (e.index, e.term)),
                    snapshot: snapshot.as_ref().map(|s| s.meta.index),
                    term: hs.term,
                },
                snapshot,
                entries,
                hard_state: Some(hs),
                must_sync,
                clears_vote_barrier,
            })
        } else {
            None
        };
        // Anything deferred to a batch that was not issued waits for the
        // latest issued one instead (or goes now if all are acknowledged).
        let issued = self.issued_seq;
        for (seq, _) in self.deferred.iter_mut() {
            if *seq > issued {
                *seq = issued;
            }
        }
        self.release_deferred()?;
        let committed_entries = self.log.take_committed(self.cfg.max_apply_bytes)?;
        let soft = self.soft_state();
        let soft_state = (soft != self.last_soft).then_some(soft);
        // Keep room for a similar batch next time instead of regrowing.
        let room = self.msgs.len();
        let messages = core::mem::replace(&mut self.msgs, Vec::with_capacity(room));
        self.last_soft = soft;
        Ok(Ready {
            messages,
            persist,
            committed_entries,
            soft_state,
            read_states: core::mem::take(&mut self.read.results),
            snapshot_chunks: core::mem::take(&mut self.snapshot_chunks),
        })
    }
}
