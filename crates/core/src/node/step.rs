//! Message dispatch: term rules and validation (Raft paper §5.1, Figure 2).

use alloc::vec::Vec;

use super::*;

impl<P: Payload, S: LogStorage<P>> Node<P, S> {
    // ----- internals: messages -------------------------------------------

    pub(super) fn step_inner(&mut self, m: Message<P>) -> Result<(), StepError> {
        let id = self.id();
        if m.to != id || m.from == id || m.from == INVALID_ID {
            return Err(StepError::Misaddressed);
        }
        validate(&m)?;
        if let MessageBody::RequestVote {
            pre_vote,
            last_log_index,
            last_log_term,
            ..
        } = m.body
        {
            self.check_vote_request_sender(
                m.from,
                m.term,
                pre_vote,
                last_log_index,
                last_log_term,
            )?;
        }
        if m.term > self.term {
            if let MessageBody::RequestVote {
                transfer: false, ..
            } = m.body
            {
                // Thesis §4.2.3: a node that heard from a current leader
                // within the minimum election timeout neither takes the
                // term nor votes, with or without check-quorum.
                let heard_leader = self.leader.is_some()
                    && self.election_elapsed < self.cfg.election_timeout_ticks_min;
                if heard_leader || self.in_restart_lease() {
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
                MessageBody::RequestVote { .. } if self.role != Role::Leader => {
                    // Figure 2 resets the election timer only when granting
                    // a vote (handle_vote_request does) or hearing from the
                    // leader. Resetting it for a request we may refuse lets a
                    // candidate with a stale log keep the only node that
                    // could win from ever timing out.
                    let elapsed = self.election_elapsed;
                    self.become_follower(m.term, None);
                    self.election_elapsed = elapsed;
                }
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match m.body {
                MessageBody::AppendEntries { .. } | MessageBody::Heartbeat { .. } => {
                    // A leader from an older term that we never told about
                    // our term (Figure 2: the reply carries currentTerm):
                    // tell it, so it steps down. Campaigning would not tell
                    // it: pre-vote holds us back, and our vote requests are
                    // dropped if we are not a voter there and lag behind.
                    self.send(
                        m.from,
                        self.term,
                        MessageBody::HeartbeatResponse { read_seq: 0 },
                    );
                }
                MessageBody::RequestVote {
                    pre_vote,
                    last_log_index,
                    last_log_term,
                    ..
                } => {
                    // Figure 2: refuse with our term, so the candidate
                    // learns it. Otherwise a candidate that we never ask
                    // (our configurations differ) can chase our term
                    // forever without hearing of it.
                    self.send(
                        m.from,
                        self.term,
                        MessageBody::RequestVoteResponse {
                            pre_vote,
                            granted: false,
                        },
                    );
                    if !pre_vote {
                        self.yield_to_better_candidate(last_log_index, last_log_term)?;
                    }
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
                ..
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
            MessageBody::Heartbeat { commit, read_seq } => {
                self.follow(from)?;
                // The leader's match index for a repairing node may predate
                // the damage, and this log may hold entries the leader does
                // not (stale ones the lost part had overwritten): commit
                // only through appends, which check the log (ADR 0021).
                let last = self.log.last_index()?;
                if self.vote_barrier.is_none() {
                    self.commit_to(commit.min(last));
                } else if commit > last {
                    // The leader counts on entries we lost; its back-off
                    // never goes below what we acknowledged, and an idle
                    // leader would send no append at all. Reject at that
                    // index with our last as the hint: it probes from there.
                    let hint = RejectHint::lost_entries(last);
                    let body = MessageBody::AppendEntriesResponse {
                        index: commit,
                        reject: Some(hint),
                    };
                    self.send(from, self.term, body);
                }
                self.send(from, self.term, MessageBody::HeartbeatResponse { read_seq });
                Ok(())
            }
            MessageBody::ReadIndex { ctx } => {
                if self.role != Role::Leader || !self.conf.contains(from) {
                    self.send(
                        from,
                        self.term,
                        MessageBody::ReadIndexResponse { ctx, index: None },
                    );
                    return Err(StepError::Unexpected);
                }
                if let Err(e) = self.leader_read(ctx, from) {
                    if let crate::ReadError::Failed = e {
                        return Err(StepError::Failed);
                    }
                    self.send(
                        from,
                        self.term,
                        MessageBody::ReadIndexResponse { ctx, index: None },
                    );
                }
                Ok(())
            }
            MessageBody::ReadIndexResponse { ctx, index } => {
                if self.leader != Some(from) {
                    return Err(StepError::Unexpected);
                }
                self.on_read_index_response(ctx, index)
            }
            MessageBody::InstallSnapshot {
                meta,
                offset,
                data,
                done,
            } => {
                self.follow(from)?;
                self.handle_install_snapshot(from, *meta, offset, data, done)
            }
            MessageBody::SnapshotResponse { index, received } => {
                if self.role != Role::Leader {
                    return Err(StepError::Unexpected);
                }
                self.on_snapshot_response(from, index, received)
            }
            MessageBody::TimeoutNow => {
                if self.role == Role::Leader {
                    return Err(StepError::Unexpected);
                }
                if !self.promotable() || self.vote_barrier.is_some() {
                    return Err(StepError::Unexpected);
                }
                // Thesis §3.10: campaign at once, skipping pre-vote.
                self.stats.campaigns += 1;
                self.become_candidate(true)?;
                Ok(())
            }
            MessageBody::AppendEntriesResponse { index, reject } => {
                self.handle_append_response(from, index, reject)
            }
            MessageBody::HeartbeatResponse { read_seq } => {
                if self.role != Role::Leader {
                    return Ok(());
                }
                if !self.progress.contains_key(from) || !self.read_round_sent(read_seq) {
                    return Err(StepError::Unexpected);
                }
                if read_seq > 0 {
                    self.on_read_ack(from, read_seq);
                }
                let Some(pr) = self.progress.get_mut(from) else {
                    return Err(StepError::Unexpected);
                };
                pr.recent_active = true;
                pr.probe_sent = false;
                // Appends or their acks may have been lost: free one slot
                // so a full window cannot stall the follower forever.
                if pr.state == ProgressState::Replicate && pr.inflights.full() {
                    pr.inflights.free_first_one();
                }
                if pr.state == ProgressState::Snapshot {
                    self.snapshot_heartbeat(from)?;
                    return Ok(());
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

    /// Thesis §4.2.3 (disruptive servers): a vote request from a node that
    /// is not a voter in our configuration, whose log is not at least as
    /// up to date as ours, is dropped before it can raise our term. We
    /// would refuse the vote anyway, so dropping it is always safe; what it
    /// saves is a removed server (whose log stops growing once it is cut
    /// off) forcing term after term on the cluster.
    ///
    /// A member we do not know was added yet is not hurt: if its addition
    /// is committed, its log holds that entry and we lack it, so its log is
    /// more up to date than ours and the request is handled normally. A node
    /// with an empty configuration (a new member) handles every request
    /// normally for the same reason.
    ///
    /// A real vote request is still refused in the candidate's own term
    /// (without taking that term): the candidate loses at once instead of
    /// staying a candidate, voting for itself in term after term, which
    /// would keep a lagging node from ever granting the up-to-date one.
    pub(super) fn check_vote_request_sender(
        &mut self,
        from: NodeId,
        term: Term,
        pre_vote: bool,
        last_log_index: Index,
        last_log_term: Term,
    ) -> Result<(), StepError> {
        if self.conf.is_voter(from) || self.log.is_up_to_date(last_log_index, last_log_term)? {
            return Ok(());
        }
        if !pre_vote {
            let body = MessageBody::RequestVoteResponse {
                pre_vote: false,
                granted: false,
            };
            self.send(from, term.max(self.term), body);
        }
        Err(StepError::NotMember)
    }

    /// With [`ReadMode::Lease`](crate::ReadMode::Lease), a node that has
    /// just started may have acknowledged a heartbeat before it went down,
    /// and the leader's lease counts on it refusing votes for
    /// `election_timeout_ticks_min` ticks after that. The node forgot when,
    /// so it refuses (non-transfer) votes for that long after starting.
    pub(super) fn in_restart_lease(&self) -> bool {
        self.cfg.read_mode == crate::ReadMode::Lease
            && self.now < u64::from(self.cfg.election_timeout_ticks_min)
    }

    /// A message from the leader of our current term arrived.
    pub(super) fn follow(&mut self, from: NodeId) -> Result<(), StepError> {
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

    pub(super) fn handle_vote_request(
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
        // A repairing node may lack entries it acknowledged: its log says
        // nothing about what the candidate must hold (ADR 0021).
        let grant = can_vote
            && self.vote_barrier.is_none()
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
            if !pre_vote {
                self.yield_to_better_candidate(last_log_index, last_log_term)?;
            }
        }
        Ok(())
    }

    /// A real vote request that we refused for its term (stale, or we
    /// already voted in it) came from a candidate whose log is strictly more
    /// up to date than ours: it could win where we cannot win against it,
    /// so we hold our own campaign back for a full election timeout, as if
    /// we had granted it (Figure 2 resets the timer on a grant).
    ///
    /// Without this, a node with a stale log that campaigns alone (its
    /// configuration is stale, pre-vote is off) raises its term every
    /// timeout; the up-to-date candidate learns each term only from our
    /// refusal, one timeout behind, and wins only when its randomized
    /// timeout beats ours by that lag (simulator, `--snapshots --leases`
    /// seed 56: 55 terms without a leader). Only liveness changes: no vote
    /// is granted and no term taken here. A candidate whose log is behind
    /// ours leaves the timer alone (known core bug 5).
    fn yield_to_better_candidate(
        &mut self,
        last_log_index: Index,
        last_log_term: Term,
    ) -> Result<(), StepError> {
        if self.role != Role::Leader
            && self.vote_barrier.is_none()
            && self.log.is_more_up_to_date(last_log_index, last_log_term)?
        {
            self.election_elapsed = 0;
        }
        Ok(())
    }

    pub(super) fn handle_append(
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
        // Entries move into the log; membership changes among them (rare)
        // are kept aside to take effect once appended.
        let confs: Vec<Entry<P>> = entries
            .iter()
            .filter(|e| matches!(e.data, EntryData::ConfChange(_)))
            .cloned()
            .collect();
        match self
            .log
            .maybe_append(prev_log_index, prev_log_term, entries)
        {
            Ok(Some((last_new, appended_from))) => {
                if let Some(from) = appended_from {
                    self.apply_appended_confs(&confs, from);
                }
                self.commit_to(leader_commit.min(last_new));
                self.confirm_log_to(last_new);
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
                // A repairing node says it may lack what it acknowledged, so
                // the leader backs off below its old match index (ADR 0021).
                let hint = if self.vote_barrier.is_some() {
                    RejectHint::lost_entries(hint_index)
                } else {
                    RejectHint {
                        hint_index,
                        hint_term,
                    }
                };
                let body = MessageBody::AppendEntriesResponse {
                    index: prev_log_index,
                    reject: Some(hint),
                };
                self.send_durable(from, self.term, body);
                Ok(())
            }
            Err(AppendError::ConflictsWithCommitted) => Err(StepError::Malformed),
            Err(AppendError::Storage(e)) => Err(StepError::Storage(e)),
        }
    }

    pub(super) fn handle_append_response(
        &mut self,
        from: NodeId,
        index: Index,
        reject: Option<RejectHint>,
    ) -> Result<(), StepError> {
        if self.role != Role::Leader {
            return Err(StepError::Unexpected);
        }
        let last = self.log.last_index()?;
        let Some(pr) = self.progress.get_mut(from) else {
            return Err(StepError::Unexpected);
        };
        pr.recent_active = true;
        match reject {
            Some(hint) => {
                let mut probe = hint.hint_index;
                let lost = hint.is_lost_entries();
                if hint.hint_term > 0 && !lost {
                    // Skip every entry of ours whose term exceeds the
                    // follower's term at the hint (fast back-off).
                    probe = self
                        .log
                        .find_conflict_by_term(hint.hint_index, hint.hint_term)?
                        .0;
                }
                let Some(pr) = self.progress.get_mut(from) else {
                    return Err(StepError::Unexpected);
                };
                if pr.maybe_decr_to(index, probe, lost) {
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
                    ProgressState::Snapshot => {
                        // The snapshot (or a later append) arrived.
                        let target = pr.snapshot.as_ref().map_or(0, |s| s.meta.index);
                        if pr.matched >= target {
                            pr.become_probe();
                        }
                    }
                }
                if self.maybe_commit()? {
                    self.bcast_append()?;
                } else {
                    self.send_append_loop(from)?;
                }
                self.maybe_send_timeout_now(from)?;
                Ok(())
            }
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
            MessageBody::Heartbeat { commit, .. } => ok(*commit),
            MessageBody::ReadIndexResponse { index, .. } => index.is_none_or(ok),
            MessageBody::InstallSnapshot {
                meta, offset, data, ..
            } => {
                ok(meta.index)
                    && meta.index > 0
                    && meta.term <= m.term
                    && offset.checked_add(data.len() as u64).is_some()
            }
            MessageBody::SnapshotResponse { index, .. } => ok(*index),
            MessageBody::RequestVoteResponse { .. }
            | MessageBody::HeartbeatResponse { .. }
            | MessageBody::ReadIndex { .. }
            | MessageBody::TimeoutNow => true,
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
