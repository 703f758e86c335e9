//! Elections: timeouts, pre-vote, votes, becoming leader (Raft paper §5.2, thesis §9.6).

use super::*;

impl<P: Payload, S: LogStorage<P>> Node<P, S> {
    // ----- internals: time ----------------------------------------------

    pub(super) fn tick_election(&mut self) -> Result<(), StorageError> {
        self.expire_forwarded_reads();
        self.election_elapsed = self.election_elapsed.saturating_add(1);
        // A repairing node (vote barrier set) never starts an election: it
        // may lack entries it acknowledged (ADR 0021).
        if self.election_elapsed >= self.randomized_election_timeout
            && self.promotable()
            && self.vote_barrier.is_none()
        {
            self.election_elapsed = 0;
            self.hup()?;
        }
        Ok(())
    }

    pub(super) fn tick_leader(&mut self) -> Result<(), StorageError> {
        self.tick_transfer();
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

    /// Out of line: five callers, each inlining the random draw at
    /// `opt-level = "s"` cost the firmware `.text`.
    #[inline(never)]
    pub(super) fn reset_timers(&mut self) {
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.randomized_election_timeout = self.rng.range(
            u64::from(self.cfg.election_timeout_ticks_min),
            u64::from(self.cfg.election_timeout_ticks_max),
        ) as u32;
    }

    // ----- internals: roles ---------------------------------------------

    pub(super) fn hup(&mut self) -> Result<(), StorageError> {
        self.stats.campaigns += 1;
        if self.cfg.pre_vote {
            self.become_pre_candidate()
        } else {
            self.become_candidate(false)
        }
    }

    /// A leader confirmed this node's log up to `confirmed` (an accepted
    /// append or an installed snapshot): the vote barrier clears once that
    /// reaches it. The node's own entries never clear it, only a leader's
    /// confirmation does (ADR 0021).
    pub(super) fn confirm_log_to(&mut self, confirmed: Index) {
        if self.vote_barrier.is_some_and(|b| confirmed >= b) {
            self.vote_barrier = None;
            self.barrier_clear_unissued = true;
        }
    }

    pub(super) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.term {
            self.term = term;
            self.vote = None;
            // A partial snapshot from an older leader is useless now.
            self.incoming = None;
        }
        self.fail_pending_reads();
        self.lead_transferee = None;
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
    pub(super) fn become_pre_candidate(&mut self) -> Result<(), StorageError> {
        self.fail_pending_reads();
        self.role = Role::PreCandidate;
        self.leader = None;
        self.votes.clear();
        self.reset_timers();
        let term = self.term + 1;
        self.send_vote_requests(term, true, false)?;
        let id = self.id();
        self.record_vote(id, true)
    }

    /// Raft paper §5.2: increment the term, vote for self, request votes.
    /// `transfer`: on the leader's request (TimeoutNow), so voters ignore
    /// their lease.
    pub(super) fn become_candidate(&mut self, transfer: bool) -> Result<(), StorageError> {
        self.fail_pending_reads();
        self.term += 1;
        self.vote = Some(self.id());
        self.role = Role::Candidate;
        self.leader = None;
        self.votes.clear();
        self.reset_timers();
        let term = self.term;
        self.send_vote_requests(term, false, transfer)?;
        // The self-vote counts only once term and vote are durable.
        self.defer(Deferred::SelfVote(term));
        Ok(())
    }

    pub(super) fn send_vote_requests(
        &mut self,
        term: Term,
        pre_vote: bool,
        transfer: bool,
    ) -> Result<(), StorageError> {
        let last_log_index = self.log.last_index()?;
        let last_log_term = self.log.last_term()?;
        let id = self.id();
        // `send` holds real vote requests until the new term and the
        // self-vote are durable (a pre-vote changes nothing durable).
        for to in self.conf.all_voters().into_iter().filter(|&v| v != id) {
            let body = MessageBody::RequestVote {
                pre_vote,
                transfer,
                last_log_index,
                last_log_term,
            };
            self.send(to, term, body);
        }
        Ok(())
    }

    pub(super) fn record_vote(&mut self, from: NodeId, granted: bool) -> Result<(), StorageError> {
        self.votes.get_or_insert(from, granted);
        match quorum::joint_vote_result(&self.conf, |v| self.votes.get(v).copied()) {
            VoteResult::Won if self.role == Role::PreCandidate => self.become_candidate(false),
            VoteResult::Won => self.become_leader(),
            VoteResult::Lost => {
                let term = self.term;
                self.become_follower(term, None);
                Ok(())
            }
            VoteResult::Pending => Ok(()),
        }
    }

    pub(super) fn become_leader(&mut self) -> Result<(), StorageError> {
        // Only a candidate that won its own term may lead it (§5.2). Checked
        // in release builds too: leading from any other role would break
        // Election Safety, so refuse rather than trust the caller.
        if self.role != Role::Candidate {
            return Ok(());
        }
        self.fail_pending_reads();
        self.lead_transferee = None;
        self.role = Role::Leader;
        self.leader = Some(self.id());
        self.votes.clear();
        self.reset_timers();
        self.stats.became_leader += 1;
        let last = self.log.last_index()?;
        self.progress.clear();
        // Every follower gets a full period before check-quorum counts it.
        self.sync_progress();
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
}
