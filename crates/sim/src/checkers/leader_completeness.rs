//! Leader completeness (Raft §5.4): a leader of term T holds every entry
//! committed in a term below T.
//!
//! The checker learns what is committed from applied entries. The term in
//! which an entry was committed is not observable, so it records the
//! applying node's current term, an upper bound of the committing term (a
//! node learns a commit index only from a leader of its term or earlier, or
//! from its own durable hard state), and checks only leaders of a higher
//! term. That never blames a correct system and still catches a leader that
//! lost a committed entry.

use std::collections::BTreeMap;

use metalraft_core::{Index, NodeId, Term};

use super::Violation;

#[derive(Clone, Copy, Debug)]
struct Committed {
    term: Term,
    digest: u64,
    /// Lowest current term of a node seen applying it.
    seen_in_term: Term,
}

/// Remembers every entry seen committed.
#[derive(Debug, Default)]
pub struct LeaderCompletenessChecker {
    committed: BTreeMap<Index, Committed>,
}

impl LeaderCompletenessChecker {
    /// A node whose current term is `observer_term` applied entry
    /// (`index`, `term`) with content `digest`.
    pub fn observe_committed(
        &mut self,
        index: Index,
        term: Term,
        digest: u64,
        observer_term: Term,
    ) {
        let c = self.committed.entry(index).or_insert(Committed {
            term,
            digest,
            seen_in_term: observer_term,
        });
        c.seen_in_term = c.seen_in_term.min(observer_term);
    }

    /// `leader` became leader of `term`; `log(index)` answers (term, digest)
    /// of its log entry at `index`, if it has one. Entries up to
    /// `compacted` are covered by the leader's snapshot and not judged here
    /// (the state machine checker vouches for snapshots).
    pub fn check_leader(
        &self,
        leader: NodeId,
        term: Term,
        compacted: Index,
        log: impl Fn(Index) -> Option<(Term, u64)>,
    ) -> Result<(), Violation> {
        for (&index, c) in self.committed.range(compacted + 1..) {
            if c.seen_in_term >= term {
                continue;
            }
            if log(index) != Some((c.term, c.digest)) {
                return Err(Violation::LeaderCompleteness {
                    leader,
                    term,
                    index,
                });
            }
        }
        Ok(())
    }

    /// Number of distinct committed indices seen.
    pub fn committed_len(&self) -> usize {
        self.committed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_missing_a_committed_entry_is_reported() {
        let mut c = LeaderCompletenessChecker::default();
        c.observe_committed(1, 1, 100, 2);
        c.observe_committed(2, 2, 200, 2);
        let full = |i: Index| [(1, 100), (2, 200)].get(i as usize - 1).copied();
        assert!(c.check_leader(3, 3, 0, full).is_ok());
        // Leader of term 3 lacks entry 2.
        let short = |i: Index| [(1, 100)].get(i as usize - 1).copied();
        assert_eq!(
            c.check_leader(3, 3, 0, short),
            Err(Violation::LeaderCompleteness {
                leader: 3,
                term: 3,
                index: 2
            })
        );
        // Leader of term 3 holds a different entry at index 2.
        let other = |i: Index| [(1, 100), (2, 201)].get(i as usize - 1).copied();
        assert!(c.check_leader(3, 3, 0, other).is_err());
    }

    #[test]
    fn leaders_of_terms_not_above_the_commit_observation_are_not_judged() {
        let mut c = LeaderCompletenessChecker::default();
        c.observe_committed(1, 5, 1, 5);
        // A late leader of term 4 (elected after the commit in real time)
        // may lack an entry committed in term 5.
        assert!(c.check_leader(2, 4, 0, |_| None).is_ok());
        assert!(c.check_leader(2, 5, 0, |_| None).is_ok());
        assert!(c.check_leader(2, 6, 0, |_| None).is_err());
        assert!(
            c.check_leader(2, 6, 1, |_| None).is_ok(),
            "compacted into a snapshot"
        );
    }
}
