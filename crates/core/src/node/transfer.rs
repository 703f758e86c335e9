//! Leadership transfer (thesis §3.10).

use super::*;
use crate::error::TransferError;

impl<P: Payload, S: LogStorage<P>> Node<P, S> {
    /// Hands leadership to voter `to`: the leader stops accepting proposals,
    /// brings `to` up to date, then tells it to campaign at once
    /// (TimeoutNow). The transfer is abandoned after
    /// `election_timeout_ticks_min` ticks. Transferring to itself is a no-op.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), TransferError> {
        if self.failed.is_some() {
            return Err(TransferError::Failed);
        }
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader {
                leader: self.leader,
            });
        }
        if to == self.id() {
            return Ok(());
        }
        if !self.conf.contains(to) {
            return Err(TransferError::UnknownNode(to));
        }
        if self.conf.is_learner(to) {
            return Err(TransferError::Learner(to));
        }
        if self.conf.voters.binary_search(&to).is_err() {
            return Err(TransferError::BeingRemoved(to));
        }
        if self.lead_transferee == Some(to) {
            return Ok(());
        }
        self.lead_transferee = Some(to);
        self.transfer_elapsed = 0;
        // The target will campaign ignoring leases: ours ends now.
        self.read.lease_until = 0;
        self.maybe_send_timeout_now(to).map_err(|e| {
            self.fail(e);
            TransferError::Failed
        })
    }

    /// The leadership transfer target, if a transfer is in progress.
    pub fn lead_transferee(&self) -> Option<NodeId> {
        self.lead_transferee
    }

    /// Sends TimeoutNow if `to` is the transfer target and caught up;
    /// otherwise keeps replicating to it.
    pub(super) fn maybe_send_timeout_now(&mut self, to: NodeId) -> Result<(), StorageError> {
        if self.lead_transferee != Some(to) {
            return Ok(());
        }
        let last = self.log.last_index()?;
        let caught_up = self.progress.get(to).is_some_and(|p| p.matched == last);
        if caught_up {
            self.send(to, self.term, MessageBody::TimeoutNow);
        } else {
            self.send_append_loop(to)?;
        }
        Ok(())
    }

    /// Leader tick: abandon a transfer that takes longer than an election.
    pub(super) fn tick_transfer(&mut self) {
        if self.lead_transferee.is_some() {
            self.transfer_elapsed = self.transfer_elapsed.saturating_add(1);
            if self.transfer_elapsed >= self.cfg.election_timeout_ticks_min {
                self.lead_transferee = None;
                self.stats.transfers_aborted += 1;
            }
        }
    }
}
