//! Election safety (Raft §5.2): at most one leader per term, where a node
//! that crashed and restarted counts as a new leader. A node that leads
//! term T, crashes, restarts and leads T again did not keep its term and
//! vote durable (it campaigned at T twice): its two leaderships may have
//! appended different entries at the same (index, term), which Log
//! Matching cannot tell apart.
//!
//! The simulator reports leadership twice: on every role change to leader
//! and on every message only a leader sends (append, heartbeat, snapshot,
//! timeout-now), so a leader that never reports its role still gets judged.

use std::collections::BTreeMap;

use metalraft_core::{NodeId, Term};

use super::Violation;

/// Remembers the leader of every term seen, with its incarnation.
#[derive(Debug, Default)]
pub struct ElectionChecker {
    /// term -> (leader, incarnation of that leader).
    leaders: BTreeMap<Term, (NodeId, u32)>,
}

impl ElectionChecker {
    /// Incarnation `incarnation` of `node` acted as leader of `term`.
    pub fn observe_leader(
        &mut self,
        node: NodeId,
        incarnation: u32,
        term: Term,
    ) -> Result<(), Violation> {
        match self.leaders.get(&term) {
            Some(&(first, _)) if first != node => Err(Violation::ElectionSafety {
                term,
                first,
                second: node,
            }),
            Some(&(_, first_incarnation)) if first_incarnation != incarnation => {
                Err(Violation::LeaderAgainAfterRestart {
                    node,
                    term,
                    first_incarnation,
                    second_incarnation: incarnation,
                })
            }
            Some(_) => Ok(()),
            None => {
                self.leaders.insert(term, (node, incarnation));
                Ok(())
            }
        }
    }

    /// Number of terms that had a leader.
    pub fn terms_with_leader(&self) -> usize {
        self.leaders.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_leaders_in_one_term_is_reported() {
        let mut c = ElectionChecker::default();
        assert!(c.observe_leader(1, 0, 2).is_ok());
        assert!(
            c.observe_leader(1, 0, 2).is_ok(),
            "same leader again is fine"
        );
        assert!(
            c.observe_leader(2, 0, 3).is_ok(),
            "another term, another leader"
        );
        assert_eq!(
            c.observe_leader(3, 0, 2),
            Err(Violation::ElectionSafety {
                term: 2,
                first: 1,
                second: 3
            })
        );
        assert_eq!(c.terms_with_leader(), 2);
    }

    /// Core defect 1 of issue 12: the candidate's new term was not durable,
    /// so after a crash it campaigned for the same term again and won.
    #[test]
    fn same_node_leading_a_term_again_after_a_restart_is_reported() {
        let mut c = ElectionChecker::default();
        assert!(c.observe_leader(1, 0, 2).is_ok());
        assert!(
            c.observe_leader(1, 1, 3).is_ok(),
            "a new term after a restart"
        );
        assert_eq!(
            c.observe_leader(1, 1, 2),
            Err(Violation::LeaderAgainAfterRestart {
                node: 1,
                term: 2,
                first_incarnation: 0,
                second_incarnation: 1
            })
        );
    }
}
