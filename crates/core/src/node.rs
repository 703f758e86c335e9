//! The Raft node: a deterministic state machine driven by its caller.

use alloc::collections::{BTreeMap, VecDeque};
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
    /// Messages dropped as malformed.
    pub dropped_malformed: u64,
    /// Messages dropped as unexpected for the role.
    pub dropped_unexpected: u64,
    /// Elections (including pre-vote rounds) this node started.
    pub campaigns: u64,
    /// Times this node became leader.
    pub became_leader: u64,
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
/// - **Inputs:** [`Node::tick`] (one unit of logical time),
///   [`Node::step`] (a message from a peer), [`Node::propose`] (a command, on
///   the leader), [`Node::campaign`] (start an election now), and
///   [`Node::on_persisted`] (a persistence batch is durable).
/// - **Output:** [`Node::ready`] returns a [`Ready`] with messages to send,
///   storage work, committed entries to apply and role changes;
///   [`Node::has_ready`] tells whether calling it would return anything.
/// - **Getters:** [`Node::id`], [`Node::role`], [`Node::term`],
///   [`Node::leader`], [`Node::hard_state`], [`Node::commit_index`],
///   [`Node::stats`], [`Node::storage`] / [`Node::storage_mut`].
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
    conf: ConfState,
    /// Followers' progress (leader only; never contains this node).
    progress: BTreeMap<NodeId, Progress>,
    votes: BTreeMap<NodeId, bool>,
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
    /// New entries on the leader wait for the next `ready()` to be sent, so
    /// proposals made in a burst share messages.
    pending_bcast: bool,
    /// (index, bytes) of this leader's proposals not yet committed.
    uncommitted: VecDeque<(Index, usize)>,
    uncommitted_bytes: usize,
    last_soft: SoftState,
    failed: Option<StorageError>,
    stats: Stats,
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
        if conf.voters.is_empty() || conf.contains(INVALID_ID) {
            return Err(ConfigError::InvalidConfState);
        }
        let hs = init.hard_state;
        let last = storage.last_index().map_err(ConfigError::Storage)?;
        if hs.commit > last {
            return Err(ConfigError::InconsistentHardState);
        }
        let log = RaftLog::new(storage, hs.commit, applied).map_err(ConfigError::Storage)?;
        let rng = Rng::new(cfg.rng_seed, cfg.id);
        let mut node = Node {
            term: hs.term,
            vote: hs.vote,
            role: Role::Follower,
            leader: None,
            log,
            conf,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: cfg.election_timeout_ticks_min,
            rng,
            msgs: Vec::new(),
            deferred: VecDeque::new(),
            issued_seq: 0,
            acked_seq: 0,
            issued_hs: hs,
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
            cfg,
        };
        node.reset_timers();
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
    /// The membership configuration.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf
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
        if !self.conf.is_voter(self.id()) {
            return Err(Error::NotPromotable);
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
                || self.soft_state() != self.last_soft)
    }

    /// Collects everything the caller must do now (see [`Ready`]).
    pub fn ready(&mut self) -> Result<Ready<P>, Error> {
        self.check_failed()?;
        self.ready_inner().map_err(|e| self.fail(e))
    }

    fn ready_inner(&mut self) -> Result<Ready<P>, StorageError> {
        if self.pending_bcast {
            self.pending_bcast = false;
            if self.role == Role::Leader {
                self.bcast_append()?;
            }
        }
        let hs = self.hard_state();
        let entries = self.log.take_unissued();
        let persist = if !entries.is_empty() || hs != self.issued_hs {
            let must_sync = !entries.is_empty()
                || hs.term != self.issued_hs.term
                || hs.vote != self.issued_hs.vote;
            self.issued_seq += 1;
            self.issued_hs = hs;
            Some(Persist {
                token: PersistToken {
                    seq: self.issued_seq,
                    last: entries.last().map(|e| (e.index, e.term)),
                },
                entries,
                hard_state: Some(hs),
                must_sync,
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
        self.last_soft = soft;
        Ok(Ready {
            messages: core::mem::take(&mut self.msgs),
            persist,
            committed_entries,
            soft_state,
        })
    }

    // ----- internals: time ----------------------------------------------

    fn tick_election(&mut self) -> Result<(), StorageError> {
        self.election_elapsed = self.election_elapsed.saturating_add(1);
        if self.election_elapsed >= self.randomized_election_timeout
            && self.conf.is_voter(self.id())
        {
            self.election_elapsed = 0;
            self.hup()?;
        }
        Ok(())
    }

    fn tick_leader(&mut self) -> Result<(), StorageError> {
        self.heartbeat_elapsed = self.heartbeat_elapsed.saturating_add(1);
        self.election_elapsed = self.election_elapsed.saturating_add(1);
        if self.election_elapsed >= self.cfg.election_timeout_ticks_min {
            self.election_elapsed = 0;
            if self.cfg.check_quorum {
                // Thesis §6.2: a leader that cannot reach a quorum steps down,
                // so clients can find the real leader.
                if !self.quorum_active() {
                    let term = self.term;
                    self.become_follower(term, None);
                    return Ok(());
                }
                for pr in self.progress.values_mut() {
                    pr.recent_active = false;
                }
            }
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_interval_ticks {
            self.heartbeat_elapsed = 0;
            self.bcast_heartbeat();
        }
        Ok(())
    }

    fn reset_timers(&mut self) {
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.randomized_election_timeout = self.rng.range(
            u64::from(self.cfg.election_timeout_ticks_min),
            u64::from(self.cfg.election_timeout_ticks_max),
        ) as u32;
    }

    // ----- internals: roles ---------------------------------------------

    fn hup(&mut self) -> Result<(), StorageError> {
        self.stats.campaigns += 1;
        if self.cfg.pre_vote {
            self.become_pre_candidate()
        } else {
            self.become_candidate()
        }
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.votes.clear();
        self.progress.clear();
        self.uncommitted.clear();
        self.uncommitted_bytes = 0;
        self.pending_bcast = false;
        self.reset_timers();
    }

    /// Thesis §9.6: ask whether we could win before disturbing anyone.
    fn become_pre_candidate(&mut self) -> Result<(), StorageError> {
        self.role = Role::PreCandidate;
        self.leader = None;
        self.votes.clear();
        self.reset_timers();
        let term = self.term + 1;
        self.send_vote_requests(term, true)?;
        let id = self.id();
        self.record_vote(id, true)
    }

    /// Raft paper §5.2: increment the term, vote for self, request votes.
    fn become_candidate(&mut self) -> Result<(), StorageError> {
        self.term += 1;
        self.vote = Some(self.id());
        self.role = Role::Candidate;
        self.leader = None;
        self.votes.clear();
        self.reset_timers();
        let term = self.term;
        self.send_vote_requests(term, false)?;
        // The self-vote counts only once term and vote are durable.
        self.defer(Deferred::SelfVote(term));
        Ok(())
    }

    fn send_vote_requests(&mut self, term: Term, pre_vote: bool) -> Result<(), StorageError> {
        let last_log_index = self.log.last_index()?;
        let last_log_term = self.log.last_term()?;
        let id = self.id();
        for &to in self.conf.voters.iter().filter(|&&v| v != id) {
            self.msgs.push(Message {
                from: id,
                to,
                term,
                body: MessageBody::RequestVote {
                    pre_vote,
                    last_log_index,
                    last_log_term,
                },
            });
        }
        Ok(())
    }

    fn record_vote(&mut self, from: NodeId, granted: bool) -> Result<(), StorageError> {
        self.votes.entry(from).or_insert(granted);
        match quorum::vote_result(&self.conf.voters, |v| self.votes.get(&v).copied()) {
            VoteResult::Won if self.role == Role::PreCandidate => self.become_candidate(),
            VoteResult::Won => self.become_leader(),
            VoteResult::Lost => {
                let term = self.term;
                self.become_follower(term, None);
                Ok(())
            }
            VoteResult::Pending => Ok(()),
        }
    }

    fn become_leader(&mut self) -> Result<(), StorageError> {
        debug_assert_eq!(self.role, Role::Candidate);
        self.role = Role::Leader;
        self.leader = Some(self.id());
        self.votes.clear();
        self.reset_timers();
        self.stats.became_leader += 1;
        let last = self.log.last_index()?;
        let id = self.id();
        self.progress.clear();
        let peers = self.conf.voters.iter().chain(self.conf.learners.iter());
        for &p in peers.filter(|&&p| p != id) {
            let mut pr = Progress::new(
                last + 1,
                self.cfg.max_inflight_msgs,
                self.cfg.max_inflight_bytes,
            );
            // Give every follower a full period before check-quorum counts it.
            pr.recent_active = true;
            self.progress.insert(p, pr);
        }
        self.uncommitted.clear();
        self.uncommitted_bytes = 0;
        // Thesis §6.4 / paper §8: commit an entry of our own term at once,
        // which also commits everything before it (§5.4.2).
        self.log.append(Entry {
            term: self.term,
            index: last + 1,
            data: EntryData::Noop,
        });
        self.pending_bcast = true;
        Ok(())
    }

    // ----- internals: messages -------------------------------------------

    fn step_inner(&mut self, m: Message<P>) -> Result<(), StepError> {
        let id = self.id();
        if m.to != id || m.from == id || m.from == INVALID_ID {
            return Err(StepError::Misaddressed);
        }
        validate(&m)?;
        if m.term > self.term {
            if let MessageBody::RequestVote { .. } = m.body {
                let in_lease = self.cfg.check_quorum
                    && self.leader.is_some()
                    && self.election_elapsed < self.cfg.election_timeout_ticks_min;
                if in_lease {
                    return Err(StepError::InLease);
                }
            }
            match m.body {
                MessageBody::RequestVote { pre_vote: true, .. } => {}
                MessageBody::RequestVoteResponse {
                    pre_vote: true,
                    granted: true,
                } => {}
                MessageBody::AppendEntries { .. } | MessageBody::Heartbeat { .. } => {
                    self.become_follower(m.term, Some(m.from));
                }
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match m.body {
                MessageBody::AppendEntries { .. } | MessageBody::Heartbeat { .. }
                    if self.cfg.check_quorum || self.cfg.pre_vote =>
                {
                    // A leader from an older term that we never told about
                    // our term (pre-vote keeps us from campaigning at it):
                    // tell it, so it steps down.
                    self.send(m.from, self.term, MessageBody::HeartbeatResponse);
                }
                MessageBody::RequestVote { pre_vote: true, .. } => {
                    self.send(
                        m.from,
                        self.term,
                        MessageBody::RequestVoteResponse {
                            pre_vote: true,
                            granted: false,
                        },
                    );
                }
                _ => {}
            }
            return Err(StepError::StaleTerm);
        }
        let (from, term) = (m.from, m.term);
        match m.body {
            MessageBody::RequestVote {
                pre_vote,
                last_log_index,
                last_log_term,
            } => self.handle_vote_request(from, term, pre_vote, last_log_index, last_log_term),
            MessageBody::RequestVoteResponse { pre_vote, granted } => {
                let expected = match (self.role, pre_vote) {
                    (Role::PreCandidate, true) => {
                        (granted && term == self.term + 1) || (!granted && term == self.term)
                    }
                    (Role::Candidate, false) => term == self.term,
                    _ => false,
                };
                if !expected || !self.conf.is_voter(from) {
                    return Err(StepError::Unexpected);
                }
                self.record_vote(from, granted)?;
                Ok(())
            }
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            } => {
                self.follow(from)?;
                self.handle_append(from, prev_log_index, prev_log_term, entries, leader_commit)
            }
            MessageBody::Heartbeat { commit } => {
                self.follow(from)?;
                let last = self.log.last_index()?;
                self.log.commit_to(commit.min(last));
                self.send(from, self.term, MessageBody::HeartbeatResponse);
                Ok(())
            }
            MessageBody::AppendEntriesResponse { index, reject } => {
                self.handle_append_response(from, index, reject)
            }
            MessageBody::HeartbeatResponse => {
                if self.role != Role::Leader {
                    return Ok(());
                }
                let Some(pr) = self.progress.get_mut(&from) else {
                    return Err(StepError::Unexpected);
                };
                pr.recent_active = true;
                pr.probe_sent = false;
                // Appends or their acks may have been lost: free one slot
                // so a full window cannot stall the follower forever.
                if pr.state == ProgressState::Replicate && pr.inflights.full() {
                    pr.inflights.free_first_one();
                }
                let behind = pr.matched < self.log.last_index()?;
                if behind {
                    // An empty append probes the follower's log: if what we
                    // sent was lost, the rejection sends us back to Probe.
                    self.send_append(from, true)?;
                    self.send_append_loop(from)?;
                }
                Ok(())
            }
        }
    }

    /// A message from the leader of our current term arrived.
    fn follow(&mut self, from: NodeId) -> Result<(), StepError> {
        match self.role {
            // Election Safety (§5.2): two leaders in one term is impossible
            // for correct peers; drop rather than trust it.
            Role::Leader => Err(StepError::Unexpected),
            Role::Candidate | Role::PreCandidate => {
                let term = self.term;
                self.become_follower(term, Some(from));
                Ok(())
            }
            Role::Follower => {
                self.leader = Some(from);
                self.election_elapsed = 0;
                Ok(())
            }
        }
    }

    fn handle_vote_request(
        &mut self,
        from: NodeId,
        msg_term: Term,
        pre_vote: bool,
        last_log_index: Index,
        last_log_term: Term,
    ) -> Result<(), StepError> {
        let can_vote = self.vote == Some(from)
            || (self.vote.is_none() && self.leader.is_none())
            || (pre_vote && msg_term > self.term);
        // Thesis §9.6: no pre-vote while we hear from a leader.
        let leader_recent = self.leader.is_some()
            && self.leader != Some(self.id())
            && self.election_elapsed < self.cfg.election_timeout_ticks_min;
        let grant = can_vote
            && !(pre_vote && leader_recent)
            && self.role != Role::Leader
            && self.log.is_up_to_date(last_log_index, last_log_term)?;
        let body = MessageBody::RequestVoteResponse {
            pre_vote,
            granted: grant,
        };
        if grant {
            if !pre_vote {
                self.election_elapsed = 0;
                self.vote = Some(from);
            }
            // A pre-vote grant is answered in the term asked about.
            let term = if pre_vote { msg_term } else { self.term };
            self.send_durable(from, term, body);
        } else {
            self.send_durable(from, self.term, body);
        }
        Ok(())
    }

    fn handle_append(
        &mut self,
        from: NodeId,
        prev_log_index: Index,
        prev_log_term: Term,
        entries: Vec<Entry<P>>,
        leader_commit: Index,
    ) -> Result<(), StepError> {
        let committed = self.log.committed();
        if prev_log_index < committed {
            // Everything up to our commit index is already in place.
            let body = MessageBody::AppendEntriesResponse {
                index: committed,
                reject: None,
            };
            self.send_durable(from, self.term, body);
            return Ok(());
        }
        match self
            .log
            .maybe_append(prev_log_index, prev_log_term, &entries)
        {
            Ok(Some(last_new)) => {
                self.log.commit_to(leader_commit.min(last_new));
                let body = MessageBody::AppendEntriesResponse {
                    index: last_new,
                    reject: None,
                };
                self.send_durable(from, self.term, body);
                Ok(())
            }
            Ok(None) => {
                let last = self.log.last_index()?;
                let (hint_index, hint_term) = self
                    .log
                    .find_conflict_by_term(prev_log_index.min(last), prev_log_term)?;
                let body = MessageBody::AppendEntriesResponse {
                    index: prev_log_index,
                    reject: Some(RejectHint {
                        hint_index,
                        hint_term,
                    }),
                };
                self.send_durable(from, self.term, body);
                Ok(())
            }
            Err(AppendError::ConflictsWithCommitted) => Err(StepError::Malformed),
            Err(AppendError::Storage(e)) => Err(StepError::Storage(e)),
        }
    }

    fn handle_append_response(
        &mut self,
        from: NodeId,
        index: Index,
        reject: Option<RejectHint>,
    ) -> Result<(), StepError> {
        if self.role != Role::Leader {
            return Err(StepError::Unexpected);
        }
        let last = self.log.last_index()?;
        let Some(pr) = self.progress.get_mut(&from) else {
            return Err(StepError::Unexpected);
        };
        pr.recent_active = true;
        match reject {
            Some(hint) => {
                let mut probe = hint.hint_index;
                if hint.hint_term > 0 {
                    // Skip every entry of ours whose term exceeds the
                    // follower's term at the hint (fast back-off).
                    probe = self
                        .log
                        .find_conflict_by_term(hint.hint_index, hint.hint_term)?
                        .0;
                }
                let Some(pr) = self.progress.get_mut(&from) else {
                    return Err(StepError::Unexpected);
                };
                if pr.maybe_decr_to(index, probe) {
                    if pr.state == ProgressState::Replicate {
                        pr.become_probe();
                    }
                    self.send_append_loop(from)?;
                }
                Ok(())
            }
            None => {
                if index > last {
                    return Err(StepError::Malformed);
                }
                if !pr.maybe_update(index) {
                    return Ok(()); // stale or duplicate
                }
                match pr.state {
                    ProgressState::Probe => pr.become_replicate(),
                    ProgressState::Replicate => pr.inflights.free_to(index),
                }
                if self.maybe_commit()? {
                    self.bcast_append()?;
                } else {
                    self.send_append_loop(from)?;
                }
                Ok(())
            }
        }
    }

    // ----- internals: replication ----------------------------------------

    fn bcast_append(&mut self) -> Result<(), StorageError> {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for to in peers {
            self.send_append(to, true)?;
            self.send_append_loop(to)?;
        }
        Ok(())
    }

    /// Pipelines appends to `to` until it is paused or caught up.
    fn send_append_loop(&mut self, to: NodeId) -> Result<(), StorageError> {
        while self.send_append(to, false)? {}
        Ok(())
    }

    /// Sends one AppendEntries to `to` if its progress allows. With
    /// `send_if_empty`, sends even without new entries (to carry the commit
    /// index). Returns whether a message with entries was sent.
    fn send_append(&mut self, to: NodeId, send_if_empty: bool) -> Result<bool, StorageError> {
        let last = self.log.last_index()?;
        let committed = self.log.committed();
        let Some(pr) = self.progress.get(&to) else {
            return Ok(false);
        };
        if pr.is_paused() {
            return Ok(false);
        }
        let next = pr.next;
        let prev = next - 1;
        let Some(prev_term) = self.log.term(prev)? else {
            // Compacted: the follower needs a snapshot (not yet supported).
            return Ok(false);
        };
        let entries = if next <= last {
            let hi = last.min(next + self.cfg.max_entries_per_msg as u64 - 1) + 1;
            self.log.entries(next, hi, self.cfg.max_bytes_per_msg)?
        } else {
            Vec::new()
        };
        if entries.is_empty() && !send_if_empty {
            return Ok(false);
        }
        let sent = !entries.is_empty();
        if let Some(pr) = self.progress.get_mut(&to) {
            match entries.last() {
                Some(e) => {
                    let bytes = entries.iter().map(Entry::size_bytes).sum();
                    pr.sent_entries(e.index, bytes);
                }
                None if pr.state == ProgressState::Probe => pr.probe_sent = true,
                None => {}
            }
        }
        let body = MessageBody::AppendEntries {
            prev_log_index: prev,
            prev_log_term: prev_term,
            entries,
            leader_commit: committed,
        };
        self.send(to, self.term, body);
        Ok(sent)
    }

    fn bcast_heartbeat(&mut self) {
        let committed = self.log.committed();
        let term = self.term;
        let beats: Vec<(NodeId, Index)> = self
            .progress
            .iter()
            .map(|(&id, pr)| (id, pr.matched.min(committed)))
            .collect();
        for (to, commit) in beats {
            self.send(to, term, MessageBody::Heartbeat { commit });
        }
    }

    /// Advances the commit index to the highest index a quorum has durably
    /// acknowledged, if that entry is from the current term (§5.4.2).
    fn maybe_commit(&mut self) -> Result<bool, StorageError> {
        let id = self.id();
        let persisted = self.log.persisted();
        let progress = &self.progress;
        let mci = quorum::committed_index(&self.conf.voters, |v| {
            if v == id {
                persisted
            } else {
                progress.get(&v).map_or(0, |p| p.matched)
            }
        });
        if mci <= self.log.committed() || self.log.term(mci)? != Some(self.term) {
            return Ok(false);
        }
        self.log.commit_to(mci);
        while let Some(&(index, bytes)) = self.uncommitted.front() {
            if index > mci {
                break;
            }
            self.uncommitted.pop_front();
            self.uncommitted_bytes -= bytes;
        }
        Ok(true)
    }

    fn quorum_active(&self) -> bool {
        let id = self.id();
        let active = self
            .conf
            .voters
            .iter()
            .filter(|&&v| v == id || self.progress.get(&v).is_some_and(|p| p.recent_active))
            .count();
        active >= quorum::majority(self.conf.voters.len())
    }

    // ----- internals: sending ---------------------------------------------

    fn send(&mut self, to: NodeId, term: Term, body: MessageBody<P>) {
        self.msgs.push(Message {
            from: self.id(),
            to,
            term,
            body,
        });
    }

    /// Sends a message that promises durable state: it waits for every
    /// persistence batch covering state that exists now.
    fn send_durable(&mut self, to: NodeId, term: Term, body: MessageBody<P>) {
        let m = Message {
            from: self.id(),
            to,
            term,
            body,
        };
        self.defer(Deferred::Send(m));
    }

    fn defer(&mut self, d: Deferred<P>) {
        let dirty = self.log.has_unissued()
            || self.term != self.issued_hs.term
            || self.vote != self.issued_hs.vote;
        let seq = if dirty {
            self.issued_seq + 1
        } else {
            self.issued_seq
        };
        match d {
            Deferred::Send(m) if seq <= self.acked_seq && self.deferred.is_empty() => {
                self.msgs.push(m)
            }
            d => self.deferred.push_back((seq, d)),
        }
    }

    // ----- internals: failure ---------------------------------------------

    fn check_failed(&self) -> Result<(), Error> {
        match self.failed {
            Some(_) => Err(Error::Failed),
            None => Ok(()),
        }
    }

    fn fail(&mut self, e: StorageError) -> Error {
        self.failed = Some(e);
        Error::Storage(e)
    }

    fn count_drop(&mut self, e: StepError) {
        let s = &mut self.stats;
        match e {
            StepError::Misaddressed => s.dropped_misaddressed += 1,
            StepError::StaleTerm => s.dropped_stale_term += 1,
            StepError::InLease => s.dropped_in_lease += 1,
            StepError::Malformed => s.dropped_malformed += 1,
            StepError::Unexpected => s.dropped_unexpected += 1,
            StepError::Failed | StepError::Storage(_) => {}
        }
    }
}

/// Terms and indices above this are rejected as malformed, so that no
/// `+ 1` on a received value can overflow (2^63 terms or entries will not
/// be reached by a real cluster).
pub const MAX_TERM_OR_INDEX: u64 = u64::MAX >> 1;

impl From<StorageError> for StepError {
    fn from(e: StorageError) -> Self {
        StepError::Storage(e)
    }
}

/// Structural checks on a message, independent of the node's state, so that
/// no later arithmetic on its fields can overflow or contradict itself.
fn validate<P>(m: &Message<P>) -> Result<(), StepError> {
    let ok = |v: u64| v <= MAX_TERM_OR_INDEX;
    let fields_ok = ok(m.term)
        && match &m.body {
            MessageBody::RequestVote {
                last_log_index,
                last_log_term,
                ..
            } => ok(*last_log_index) && ok(*last_log_term),
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            } => {
                ok(*prev_log_index)
                    && ok(*prev_log_term)
                    && ok(*leader_commit)
                    && ok(prev_log_index.saturating_add(entries.len() as u64))
            }
            MessageBody::AppendEntriesResponse { index, reject } => {
                ok(*index) && reject.is_none_or(|h| ok(h.hint_index) && ok(h.hint_term))
            }
            MessageBody::Heartbeat { commit } => ok(*commit),
            MessageBody::RequestVoteResponse { .. } | MessageBody::HeartbeatResponse => true,
        };
    if !fields_ok {
        return Err(StepError::Malformed);
    }
    if let MessageBody::AppendEntries {
        prev_log_index,
        prev_log_term,
        entries,
        ..
    } = &m.body
    {
        if *prev_log_term > m.term || (*prev_log_index == 0 && *prev_log_term != 0) {
            return Err(StepError::Malformed);
        }
        let mut expect = prev_log_index.checked_add(1).ok_or(StepError::Malformed)?;
        let mut term = *prev_log_term;
        for e in entries {
            if e.index != expect || e.term < term || e.term > m.term {
                return Err(StepError::Malformed);
            }
            term = e.term;
            expect = expect.checked_add(1).ok_or(StepError::Malformed)?;
        }
    }
    if let MessageBody::RequestVote {
        last_log_index,
        last_log_term,
        ..
    } = &m.body
    {
        if *last_log_term > m.term || (*last_log_index == 0 && *last_log_term != 0) {
            return Err(StepError::Malformed);
        }
    }
    Ok(())
}
