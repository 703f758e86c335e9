//! Log replication and commitment (Raft paper §5.3, §5.4).

use alloc::vec::Vec;

use super::*;

impl<P: Payload, S: LogStorage<P>> Node<P, S> {
    // ----- internals: replication ----------------------------------------

    pub(super) fn bcast_append(&mut self) -> Result<(), StorageError> {
        // Walk the peers by key so the map can be borrowed mutably meanwhile.
        let mut cursor = self.progress.first_key();
        while let Some(to) = cursor {
            self.send_append(to, true)?;
            self.send_append_loop(to)?;
            cursor = self.progress.next_key_after(to);
        }
        Ok(())
    }

    /// Pipelines appends to `to` until it is paused or caught up.
    pub(super) fn send_append_loop(&mut self, to: NodeId) -> Result<(), StorageError> {
        while self.send_append(to, false)? {}
        Ok(())
    }

    /// Sends one AppendEntries to `to` if its progress allows. With
    /// `send_if_empty`, sends even without new entries (to carry the commit
    /// index). Returns whether a message with entries was sent.
    pub(super) fn send_append(
        &mut self,
        to: NodeId,
        send_if_empty: bool,
    ) -> Result<bool, StorageError> {
        let last = self.log.last_index()?;
        let committed = self.log.committed();
        let Some(pr) = self.progress.get(to) else {
            return Ok(false);
        };
        if pr.is_paused() {
            return Ok(false);
        }
        let next = pr.next;
        let prev = next - 1;
        let prev_term = match self.log.term(prev)? {
            Some(t) if next >= self.log.first_index()? => t,
            // Compacted: the follower needs a snapshot.
            _ => {
                self.start_snapshot(to)?;
                return Ok(false);
            }
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
        if let Some(pr) = self.progress.get_mut(to) {
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

    pub(super) fn bcast_heartbeat(&mut self) {
        let committed = self.log.committed();
        let term = self.term;
        let read_seq = self.next_read_round();
        let beats: Vec<(NodeId, Index)> = self
            .progress
            .iter()
            .map(|(id, pr)| (id, pr.matched.min(committed)))
            .collect();
        for (to, commit) in beats {
            self.send(to, term, MessageBody::Heartbeat { commit, read_seq });
        }
    }

    /// Advances the commit index to the highest index a quorum has durably
    /// acknowledged, if that entry is from the current term (§5.4.2).
    pub(super) fn maybe_commit(&mut self) -> Result<bool, StorageError> {
        let id = self.id();
        let persisted = self.log.persisted();
        let progress = &self.progress;
        let mci = quorum::joint_committed_index(&self.conf, |v| {
            if v == id {
                persisted
            } else {
                progress.get(v).map_or(0, |p| p.matched)
            }
        });
        if mci <= self.log.committed() || self.log.term(mci)? != Some(self.term) {
            return Ok(false);
        }
        let first_in_term = self.log.term(self.log.committed())? != Some(self.term);
        self.commit_to(mci);
        if first_in_term {
            self.on_first_commit_in_term();
        }
        while let Some(&(index, bytes)) = self.uncommitted.front() {
            if index > mci {
                break;
            }
            self.uncommitted.pop_front();
            self.uncommitted_bytes -= bytes;
        }
        Ok(true)
    }

    pub(super) fn quorum_active(&self) -> bool {
        let id = self.id();
        quorum::joint_active(&self.conf, |v| {
            v == id || self.progress.get(v).is_some_and(|p| p.recent_active)
        })
    }

    // ----- internals: sending ---------------------------------------------

    /// Sends a message. If this node's current term is not durable yet, the
    /// message waits for the batch that makes it durable: a peer that sees
    /// a term from us must never see us forget it in a crash (otherwise a
    /// candidate could win the same term twice, and a leader's entries of
    /// that term could be confused with another leader's).
    pub(super) fn send(&mut self, to: NodeId, term: Term, body: MessageBody<P>) {
        let m = Message {
            from: self.id(),
            to,
            term,
            body,
        };
        if self.term > self.durable_term {
            self.defer(Deferred::Send(m));
        } else {
            self.msgs.push(m);
        }
    }

    /// Sends a message that promises durable state: it waits for every
    /// persistence batch covering state that exists now.
    pub(super) fn send_durable(&mut self, to: NodeId, term: Term, body: MessageBody<P>) {
        let m = Message {
            from: self.id(),
            to,
            term,
            body,
        };
        self.defer(Deferred::Send(m));
    }

    pub(super) fn defer(&mut self, d: Deferred<P>) {
        let dirty = self.pending_install.is_some()
            || self.log.has_unissued()
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

    pub(super) fn check_failed(&self) -> Result<(), Error> {
        match self.failed {
            Some(_) => Err(Error::Failed),
            None => Ok(()),
        }
    }

    pub(super) fn fail(&mut self, e: StorageError) -> Error {
        self.failed = Some(e);
        Error::Storage(e)
    }

    pub(super) fn count_drop(&mut self, e: StepError) {
        let s = &mut self.stats;
        match e {
            StepError::Misaddressed => s.dropped_misaddressed += 1,
            StepError::StaleTerm => s.dropped_stale_term += 1,
            StepError::InLease => s.dropped_in_lease += 1,
            StepError::NotMember => s.dropped_not_member += 1,
            StepError::Malformed => s.dropped_malformed += 1,
            StepError::Unexpected => s.dropped_unexpected += 1,
            StepError::Failed | StepError::Storage(_) => {}
        }
    }
}
