//! Repair after mid-log damage (ADR 0021): a node that lost part of its
//! durable log to damage at rest (bit rot) must not vote, and must not
//! acknowledge an index it lost, until a leader has given it those entries
//! again. Otherwise a candidate lacking a committed entry the node had
//! acknowledged could win with its vote (Leader Completeness, Raft §5.4.1).
//!
//! The checker sees only what an observer outside the core could: the
//! range the disk lost (from the first index where the kept log differs
//! from the log before the damage, up to the repair barrier), the entries
//! and snapshots the node writes afterwards (each accepted from a leader:
//! a repairing node never leads), crashes, and the vote grants and append
//! acknowledgements it sends.

use std::collections::BTreeMap;

use metalraft_core::{Index, NodeId, Term};

use super::Violation;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lost {
    /// The lowest index not yet given back.
    from: Index,
    /// The highest index the node may have acknowledged before the damage.
    barrier: Index,
    /// Tracked since damage was found (not re-armed from a barrier record
    /// at a restart): its completion counts in [`RepairChecker::repaired`].
    found: bool,
}

/// Tracks, per node, the indices lost to damage and not yet given back.
#[derive(Debug, Default)]
pub struct RepairChecker {
    lost: BTreeMap<NodeId, Lost>,
    /// Damaged nodes whose lost range was given back in full (for the
    /// stats).
    pub repaired: u64,
}

impl RepairChecker {
    /// `node` found mid-log damage at restart: it no longer holds what it
    /// held from `lost_from` on, and may have acknowledged up to `barrier`.
    pub fn observe_damage(&mut self, node: NodeId, lost_from: Index, barrier: Index) {
        let l = self.lost.entry(node).or_insert(Lost {
            from: lost_from,
            barrier,
            found: true,
        });
        l.from = l.from.min(lost_from);
        l.barrier = l.barrier.max(barrier);
        l.found = true;
        self.settle(node);
    }

    /// `node` restarts with a repair barrier record `barrier` on its disk
    /// and a durable log ending at `durable_last`: what it gave back but
    /// did not make durable before a crash is lost again.
    pub fn observe_restart(&mut self, node: NodeId, barrier: Option<Index>, durable_last: Index) {
        if let Some(barrier) = barrier {
            if !self.lost.contains_key(&node) && durable_last < barrier {
                self.lost.insert(
                    node,
                    Lost {
                        from: durable_last + 1,
                        barrier,
                        found: false,
                    },
                );
            }
        }
    }

    /// `node` crashed with its durable log ending at `durable_last`.
    pub fn observe_crash(&mut self, node: NodeId, durable_last: Index) {
        if let Some(l) = self.lost.get_mut(&node) {
            l.from = l.from.min(durable_last + 1);
        }
    }

    /// `node` writes entries `first..=last` (accepted from a leader, or
    /// its own as leader): its log now ends at `last` and matches the
    /// writer's through it.
    pub fn observe_write(&mut self, node: NodeId, first: Index, last: Index) {
        if let Some(l) = self.lost.get_mut(&node) {
            if first <= l.from {
                l.from = last + 1;
            }
            self.settle(node);
        }
    }

    /// `node` installs a leader's snapshot up to `index`.
    pub fn observe_snapshot(&mut self, node: NodeId, index: Index) {
        if let Some(l) = self.lost.get_mut(&node) {
            l.from = l.from.max(index + 1);
            self.settle(node);
        }
    }

    fn settle(&mut self, node: NodeId) {
        if let Some(l) = self.lost.get(&node).copied().filter(|l| l.from > l.barrier) {
            self.lost.remove(&node);
            self.repaired += u64::from(l.found);
        }
    }

    /// Whether `node` still lacks entries it lost.
    pub fn is_repairing(&self, node: NodeId) -> bool {
        self.lost.contains_key(&node)
    }

    /// `node` grants its vote (or pre-vote) in `term` to `candidate`.
    pub fn check_vote(
        &self,
        node: NodeId,
        candidate: NodeId,
        term: Term,
        pre_vote: bool,
    ) -> Result<(), Violation> {
        match self.lost.get(&node) {
            None => Ok(()),
            Some(l) => Err(Violation::VoteWhileRepairing {
                node,
                candidate,
                term,
                pre_vote,
                lost_from: l.from,
                barrier: l.barrier,
            }),
        }
    }

    /// `node` acknowledges entries up to `index`.
    pub fn check_ack(&self, node: NodeId, index: Index) -> Result<(), Violation> {
        match self.lost.get(&node) {
            Some(l) if (l.from..=l.barrier).contains(&index) => Err(Violation::AckOfLostEntry {
                node,
                index,
                lost_from: l.from,
                barrier: l.barrier,
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn votes_and_acks_of_lost_indices_fail_until_given_back() {
        let mut c = RepairChecker::default();
        c.observe_damage(1, 5, 9);
        assert!(c.check_vote(2, 3, 4, false).is_ok(), "other nodes are free");
        assert!(matches!(
            c.check_vote(1, 3, 4, false),
            Err(Violation::VoteWhileRepairing {
                node: 1,
                lost_from: 5,
                barrier: 9,
                ..
            })
        ));
        assert!(c.check_vote(1, 3, 4, true).is_err());
        assert!(
            c.check_ack(1, 4).is_ok(),
            "the kept prefix may be acknowledged"
        );
        assert!(c.check_ack(1, 5).is_err());
        assert!(c.check_ack(1, 9).is_err());
        assert!(c.check_ack(1, 10).is_ok(), "beyond the barrier: not lost");
        // A leader gives back 5..=7: acknowledging them is fine now.
        c.observe_write(1, 5, 7);
        assert!(c.check_ack(1, 7).is_ok());
        assert!(c.check_ack(1, 8).is_err());
        // A write that does not reach the gap gives nothing back.
        c.observe_write(1, 9, 9);
        assert!(c.check_ack(1, 8).is_err());
        // A crash loses what was not durable.
        c.observe_crash(1, 5);
        assert!(c.check_ack(1, 6).is_err());
        c.observe_write(1, 6, 9);
        assert!(!c.is_repairing(1) && c.repaired == 1);
        assert!(c.check_vote(1, 3, 5, false).is_ok());
    }

    #[test]
    fn a_snapshot_gives_back_what_it_covers_and_a_restart_rearms() {
        let mut c = RepairChecker::default();
        c.observe_damage(2, 3, 20);
        c.observe_snapshot(2, 12);
        assert!(c.check_ack(2, 12).is_ok() && c.check_ack(2, 13).is_err());
        c.observe_snapshot(2, 20);
        assert!(!c.is_repairing(2));
        // The barrier record survived a crash that lost the entries.
        c.observe_restart(2, Some(20), 15);
        assert!(c.check_ack(2, 16).is_err() && c.check_ack(2, 15).is_ok());
        c.observe_restart(3, Some(7), 7);
        assert!(
            !c.is_repairing(3),
            "everything up to the barrier is durable"
        );
    }
}
