//! Durable state: the hard state on stable storage never goes backwards
//! (term, vote within a term, commit) across writes, fsyncs, torn writes
//! and crashes; and every promise a node sends (a vote grant, an append
//! acknowledgement) is backed by what is already durable (Raft Figure 2:
//! "updated on stable storage before responding to RPCs").

use std::collections::BTreeMap;

use metalraft_core::{HardState, Index, NodeId, Term};

use super::Violation;

/// Remembers each node's last durable hard state.
#[derive(Debug, Default)]
pub struct DurableStateChecker {
    last: BTreeMap<NodeId, HardState>,
}

impl DurableStateChecker {
    /// `node`'s durable hard state is now `hs` (after an fsync or a crash).
    pub fn observe_durable(&mut self, node: NodeId, hs: HardState) -> Result<(), Violation> {
        if let Some(prev) = self.last.get(&node).copied() {
            let regressed = |field, before: u64, after: u64| Violation::DurableStateRegressed {
                node,
                field,
                before,
                after,
            };
            if hs.term < prev.term {
                return Err(regressed("term", prev.term, hs.term));
            }
            if hs.term == prev.term && prev.vote.is_some() && hs.vote != prev.vote {
                return Err(regressed(
                    "vote",
                    prev.vote.unwrap_or(0),
                    hs.vote.unwrap_or(0),
                ));
            }
            if hs.commit < prev.commit {
                return Err(regressed("commit", prev.commit, hs.commit));
            }
        }
        self.last.insert(node, hs);
        Ok(())
    }

    /// `node` found mid-log damage at restart and kept the valid prefix of
    /// its log: its durable commit index may drop to what that prefix
    /// holds (ADR 0021); the term and vote must not.
    pub fn observe_repaired(&mut self, node: NodeId, hs: HardState) -> Result<(), Violation> {
        if let Some(prev) = self.last.get_mut(&node) {
            prev.commit = prev.commit.min(hs.commit);
        }
        self.observe_durable(node, hs)
    }

    /// `node` sends a vote for `candidate` in `term`; `durable` is its
    /// durable hard state.
    pub fn check_vote_grant(
        node: NodeId,
        candidate: NodeId,
        term: Term,
        durable: HardState,
    ) -> Result<(), Violation> {
        let backed =
            durable.term > term || (durable.term == term && durable.vote == Some(candidate));
        if backed {
            Ok(())
        } else {
            Err(Violation::VoteNotDurable {
                node,
                candidate,
                term,
                durable_term: durable.term,
                durable_vote: durable.vote,
            })
        }
    }

    /// `node` acknowledges entries up to `index` in `term`; its durable log
    /// ends at `durable_last` and its durable term is `durable_term`.
    pub fn check_append_ack(
        node: NodeId,
        index: Index,
        term: Term,
        durable_last: Index,
        durable_term: Term,
    ) -> Result<(), Violation> {
        if durable_last < index {
            return Err(Violation::PromiseNotDurable {
                node,
                what: "entries up to index",
                promised: index,
                durable: durable_last,
            });
        }
        if durable_term < term {
            return Err(Violation::PromiseNotDurable {
                node,
                what: "an append acknowledgement in term",
                promised: term,
                durable: durable_term,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(term: Term, vote: Option<NodeId>, commit: Index) -> HardState {
        HardState { term, vote, commit }
    }

    #[test]
    fn forward_progress_passes() {
        let mut c = DurableStateChecker::default();
        c.observe_durable(1, hs(1, None, 0)).unwrap();
        c.observe_durable(1, hs(1, Some(2), 0)).unwrap();
        c.observe_durable(1, hs(1, Some(2), 3)).unwrap();
        c.observe_durable(1, hs(2, None, 3)).unwrap();
        c.observe_durable(2, hs(1, None, 0)).unwrap();
    }

    #[test]
    fn term_vote_and_commit_regressions_are_reported() {
        let mut c = DurableStateChecker::default();
        c.observe_durable(1, hs(3, Some(1), 5)).unwrap();
        assert!(matches!(
            c.observe_durable(1, hs(2, Some(1), 5)),
            Err(Violation::DurableStateRegressed {
                field: "term",
                before: 3,
                after: 2,
                ..
            })
        ));
        assert!(matches!(
            c.observe_durable(1, hs(3, Some(2), 5)),
            Err(Violation::DurableStateRegressed {
                field: "vote",
                before: 1,
                after: 2,
                ..
            })
        ));
        assert!(matches!(
            c.observe_durable(1, hs(3, None, 5)),
            Err(Violation::DurableStateRegressed { field: "vote", .. })
        ));
        assert!(matches!(
            c.observe_durable(1, hs(3, Some(1), 4)),
            Err(Violation::DurableStateRegressed {
                field: "commit",
                ..
            })
        ));
    }

    #[test]
    fn promises_ahead_of_durable_state_are_reported() {
        assert!(DurableStateChecker::check_vote_grant(1, 2, 4, hs(4, Some(2), 0)).is_ok());
        assert!(DurableStateChecker::check_vote_grant(1, 2, 4, hs(5, None, 0)).is_ok());
        assert!(DurableStateChecker::check_vote_grant(1, 2, 4, hs(4, None, 0)).is_err());
        assert!(DurableStateChecker::check_vote_grant(1, 2, 4, hs(3, Some(2), 0)).is_err());
        assert!(DurableStateChecker::check_vote_grant(1, 2, 4, hs(4, Some(3), 0)).is_err());
        // The message names the vote, not only the term (issue 12).
        let v = DurableStateChecker::check_vote_grant(1, 2, 4, hs(4, None, 0)).unwrap_err();
        assert_eq!(
            v,
            Violation::VoteNotDurable {
                node: 1,
                candidate: 2,
                term: 4,
                durable_term: 4,
                durable_vote: None
            }
        );
        assert_eq!(
            v.to_string(),
            "node 1 granted its vote in term 4 to node 2 but its durable term was 4 with vote none"
        );
        assert!(DurableStateChecker::check_append_ack(1, 7, 2, 7, 2).is_ok());
        assert!(DurableStateChecker::check_append_ack(1, 7, 2, 6, 2).is_err());
        assert!(DurableStateChecker::check_append_ack(1, 7, 3, 9, 2).is_err());
    }
}
