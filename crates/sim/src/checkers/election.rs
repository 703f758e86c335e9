//! Election safety (Raft §5.2): at most one leader per term.

use std::collections::BTreeMap;

use metalraft_core::{NodeId, Term};

use super::Violation;

/// Remembers the leader of every term seen.
#[derive(Debug, Default)]
pub struct ElectionChecker {
    leaders: BTreeMap<Term, NodeId>,
}

impl ElectionChecker {
    /// A node reported itself leader of `term`.
    pub fn observe_leader(&mut self, node: NodeId, term: Term) -> Result<(), Violation> {
        match self.leaders.get(&term) {
            Some(&first) if first != node => Err(Violation::ElectionSafety {
                term,
                first,
                second: node,
            }),
            Some(_) => Ok(()),
            None => {
                self.leaders.insert(term, node);
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
        assert!(c.observe_leader(1, 2).is_ok());
        assert!(c.observe_leader(1, 2).is_ok(), "same leader again is fine");
        assert!(
            c.observe_leader(2, 3).is_ok(),
            "another term, another leader"
        );
        assert_eq!(
            c.observe_leader(3, 2),
            Err(Violation::ElectionSafety {
                term: 2,
                first: 1,
                second: 3
            })
        );
        assert_eq!(c.terms_with_leader(), 2);
    }
}
