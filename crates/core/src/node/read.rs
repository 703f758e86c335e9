//! Linearizable reads (thesis §6.4): ReadIndex confirmed by a heartbeat
//! round, optional leader lease, and forwarding from followers.
//!
//! A read is assigned the leader's commit index and the number of the next
//! heartbeat round. Once a quorum has answered a round at least that new, no
//! other leader can have existed when the index was recorded, so serving the
//! read at any applied index >= the read index is linearizable. Rounds are
//! shared: one heartbeat broadcast confirms every read queued before it.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use super::*;
use crate::config::ReadMode;
use crate::error::ReadError;
use crate::types::{ReadCtx, ReadState};

/// Heartbeat rounds remembered for lease computation; older ones are
/// forgotten (which only shortens the lease).
pub(super) const MAX_READ_ROUNDS_TRACKED: usize = 1024;
/// A follower fails a forwarded read after this many maximum election
/// timeouts without an answer.
pub(super) const READ_FORWARD_TIMEOUT_ELECTIONS: u64 = 2;

#[derive(Debug)]
struct PendingRead {
    ctx: ReadCtx,
    /// Who asked: this node or a follower.
    from: NodeId,
    index: Index,
    seq: u64,
}

/// A heartbeat round sent by the leader.
#[derive(Clone, Copy, Debug)]
struct SentRound {
    seq: u64,
    /// Tick it was sent.
    at: u64,
    /// Whether its confirmation may extend the lease: not if it was sent
    /// while a leadership transfer was pending (voters ignore their lease
    /// for the transfer target, so answering the round promises nothing).
    lease_ok: bool,
}

#[derive(Debug, Default)]
pub(super) struct ReadOnly {
    /// Number of the latest heartbeat round of this leadership.
    seq: u64,
    /// A new round must be broadcast for reads queued since the last one.
    round_needed: bool,
    /// Highest round each follower answered.
    acked: crate::peer_map::PeerMap<u64>,
    /// Unconfirmed rounds, for the lease.
    sent_at: VecDeque<SentRound>,
    /// Reads waiting for a round to be confirmed, in round order.
    pending: VecDeque<PendingRead>,
    /// Reads waiting for the leader's first commit in its term.
    before_commit: VecDeque<(ReadCtx, NodeId)>,
    /// Follower: reads forwarded to the leader, with their deadline tick.
    forwarded: VecDeque<(ReadCtx, u64)>,
    /// Tick before which the lease holds (0: no lease).
    pub(super) lease_until: u64,
    /// Outcomes for the next Ready.
    pub(super) results: Vec<ReadState>,
}

impl ReadOnly {
    fn tracked(&self) -> usize {
        self.pending.len() + self.before_commit.len() + self.forwarded.len()
    }
}

impl<P: Payload, S: LogStorage<P>> Node<P, S> {
    /// Asks for a linearizable read index for request `ctx` (thesis §6.4).
    /// The outcome arrives in [`Ready::read_states`]; serve the read once
    /// the applied index reaches it. A follower forwards the request to its
    /// leader. Every request gets exactly one outcome, unless this call
    /// returns an error.
    pub fn read_index(&mut self, ctx: ReadCtx) -> Result<(), ReadError> {
        if self.failed.is_some() {
            return Err(ReadError::Failed);
        }
        if self.read.tracked() >= self.cfg.max_pending_reads {
            return Err(ReadError::TooManyPending);
        }
        if self.role == Role::Leader {
            let id = self.id();
            return self.leader_read(ctx, id);
        }
        let Some(leader) = self.leader else {
            return Err(ReadError::NoLeader);
        };
        let timeout =
            READ_FORWARD_TIMEOUT_ELECTIONS * u64::from(self.cfg.election_timeout_ticks_max);
        self.read.forwarded.push_back((ctx, self.now + timeout));
        self.send(leader, self.term, MessageBody::ReadIndex { ctx });
        Ok(())
    }

    /// Registers a read on the leader.
    pub(super) fn leader_read(&mut self, ctx: ReadCtx, from: NodeId) -> Result<(), ReadError> {
        if self.read.tracked() >= self.cfg.max_pending_reads {
            return Err(ReadError::TooManyPending);
        }
        let committed = self.log.committed();
        let in_term = self.log.term(committed).map_err(|e| {
            self.fail(e);
            ReadError::Failed
        })? == Some(self.term);
        if !in_term {
            // Thesis §6.4 step 1: until the no-op of this term commits, the
            // leader's commit index may be stale.
            self.read.before_commit.push_back((ctx, from));
            return Ok(());
        }
        let alone = self.conf.all_voters() == [self.id()];
        // No lease read during a transfer: the target may already have won
        // with votes that ignored our lease (thesis §3.10, §6.4.1).
        let leased = self.cfg.read_mode == ReadMode::Lease
            && self.lead_transferee.is_none()
            && self.now < self.read.lease_until;
        if alone || leased {
            self.finish_read(ctx, from, Ok(committed));
            return Ok(());
        }
        self.read.pending.push_back(PendingRead {
            ctx,
            from,
            index: committed,
            seq: self.read.seq + 1,
        });
        self.read.round_needed = true;
        Ok(())
    }

    fn finish_read(&mut self, ctx: ReadCtx, from: NodeId, result: Result<Index, ReadError>) {
        if from == self.id() {
            self.read.results.push(ReadState { ctx, result });
        } else {
            let index = result.ok();
            self.send(
                from,
                self.term,
                MessageBody::ReadIndexResponse { ctx, index },
            );
        }
    }

    /// The number for the next heartbeat round (recording when it is sent).
    pub(super) fn next_read_round(&mut self) -> u64 {
        self.read.seq += 1;
        self.read.round_needed = false;
        if self.read.sent_at.len() >= MAX_READ_ROUNDS_TRACKED {
            self.read.sent_at.pop_front();
        }
        self.read.sent_at.push_back(SentRound {
            seq: self.read.seq,
            at: self.now,
            lease_ok: self.lead_transferee.is_none(),
        });
        self.read.seq
    }

    /// Broadcasts a heartbeat round if reads are waiting for one.
    pub(super) fn flush_read_round(&mut self) {
        if self.read.round_needed && self.role == Role::Leader {
            self.bcast_heartbeat();
        }
    }

    /// Whether `seq` names a heartbeat round this leader has sent: a peer
    /// answering a round that was never sent is confused or lying, and must
    /// not confirm reads queued for future rounds.
    pub(super) fn read_round_sent(&self, seq: u64) -> bool {
        seq <= self.read.seq
    }

    /// A follower answered heartbeat round `seq`.
    pub(super) fn on_read_ack(&mut self, from: NodeId, seq: u64) {
        let acked = self.read.acked.get_or_insert(from, 0);
        *acked = (*acked).max(seq);
        let id = self.id();
        let (own, acks) = (self.read.seq, &self.read.acked);
        let confirmed = quorum::joint_committed_index(&self.conf, |v| {
            if v == id {
                own
            } else {
                acks.get(v).copied().unwrap_or(0)
            }
        });
        // The lease runs from when the confirmed round was sent: followers
        // that answered it refuse votes for election_timeout_min ticks
        // after receiving it (thesis §6.4.1).
        // No extension while a transfer is pending, nor from a round sent
        // during one (see `SentRound::lease_ok`).
        let transferring = self.lead_transferee.is_some();
        while let Some(&round) = self.read.sent_at.front() {
            if round.seq > confirmed {
                break;
            }
            self.read.sent_at.pop_front();
            if round.lease_ok && !transferring {
                let span =
                    u64::from(self.cfg.election_timeout_ticks_min - self.cfg.lease_drift_ticks);
                self.read.lease_until = self.read.lease_until.max(round.at + span);
            }
        }
        while let Some(r) = self.read.pending.front() {
            if r.seq > confirmed {
                break;
            }
            let Some(r) = self.read.pending.pop_front() else {
                break;
            };
            self.finish_read(r.ctx, r.from, Ok(r.index));
        }
    }

    /// The leader's commit index reached its own term: start the reads that
    /// waited for that.
    pub(super) fn on_first_commit_in_term(&mut self) {
        let waiting = core::mem::take(&mut self.read.before_commit);
        for (ctx, from) in waiting {
            if let Err(e) = self.leader_read(ctx, from) {
                self.finish_read(ctx, from, Err(e));
            }
        }
    }

    /// A follower got the leader's answer to a forwarded read.
    pub(super) fn on_read_index_response(
        &mut self,
        ctx: ReadCtx,
        index: Option<Index>,
    ) -> Result<(), StepError> {
        let Some(pos) = self.read.forwarded.iter().position(|&(c, _)| c == ctx) else {
            return Err(StepError::Unexpected);
        };
        self.read.forwarded.remove(pos);
        let result = index.ok_or(ReadError::Rejected);
        self.read.results.push(ReadState { ctx, result });
        Ok(())
    }

    /// Fails forwarded reads whose deadline passed.
    pub(super) fn expire_forwarded_reads(&mut self) {
        let now = self.now;
        while let Some(&(ctx, deadline)) = self.read.forwarded.front() {
            if deadline > now {
                break;
            }
            self.read.forwarded.pop_front();
            self.read.results.push(ReadState {
                ctx,
                result: Err(ReadError::TimedOut),
            });
        }
    }

    /// Leadership changed: every read not yet confirmed fails, so no caller
    /// waits forever and none is served by a deposed leader.
    pub(super) fn fail_pending_reads(&mut self) {
        let pending = core::mem::take(&mut self.read.pending);
        let before = core::mem::take(&mut self.read.before_commit);
        let was_leader_reads = pending.into_iter().map(|r| (r.ctx, r.from)).chain(before);
        let id = self.id();
        let mut remote = Vec::new();
        for (ctx, from) in was_leader_reads {
            if from == id {
                self.read.results.push(ReadState {
                    ctx,
                    result: Err(ReadError::LeaderChanged),
                });
            } else {
                remote.push((ctx, from));
            }
        }
        for (ctx, from) in remote {
            self.send(
                from,
                self.term,
                MessageBody::ReadIndexResponse { ctx, index: None },
            );
        }
        for (ctx, _) in core::mem::take(&mut self.read.forwarded) {
            self.read.results.push(ReadState {
                ctx,
                result: Err(ReadError::LeaderChanged),
            });
        }
        let results = core::mem::take(&mut self.read.results);
        self.read = ReadOnly {
            results,
            ..ReadOnly::default()
        };
    }

    pub(super) fn has_read_results(&self) -> bool {
        !self.read.results.is_empty() || self.read.round_needed
    }
}
