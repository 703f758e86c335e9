//! A leader commits only by counting replicas of an entry of its own term
//! (Raft §5.4.2, the "Figure 8" rule): entries of earlier terms become
//! committed only indirectly, when an entry of the current term after them
//! commits. Counting replicas of an older entry is unsafe: a leader of a
//! later term with a different entry at that index can still be elected and
//! overwrite it.
//!
//! A client history cannot see which term a commit was made in, and the
//! unsafe commit turns into a visible loss only under a rare schedule
//! (Figure 8 needs a specific run of terms and crashes). This checker sees
//! it at the moment it happens, from the node's own state: while a node
//! leads term T, every increase of the commit index it reports must land on
//! an entry of term T. (A node's commit index moves for other reasons only
//! while it follows or installs a snapshot.)

use metalraft_core::{Index, NodeId, Term};

use super::Violation;

/// `node`, leader of `term`, reports its commit index moving from `before`
/// to `after`, where its log holds an entry of `entry_term` (`None`:
/// compacted) at `after`.
pub fn check_leader_commit(
    node: NodeId,
    term: Term,
    before: Index,
    after: Index,
    entry_term: Option<Term>,
) -> Result<(), Violation> {
    match entry_term {
        Some(t) if after > before && t != term => Err(Violation::LeaderCommittedOldTerm {
            node,
            term,
            index: after,
            entry_term: t,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_in_the_leaders_term_pass() {
        check_leader_commit(1, 3, 4, 6, Some(3)).unwrap();
        check_leader_commit(1, 3, 6, 6, Some(2)).unwrap(); // no change
        check_leader_commit(1, 3, 4, 6, None).unwrap(); // compacted
    }

    /// The injected bug of issue 12: the Figure-8 rule removed, a leader
    /// commits an entry of an earlier term by counting its replicas.
    #[test]
    fn committing_an_older_terms_entry_is_reported() {
        assert_eq!(
            check_leader_commit(1, 4, 2, 3, Some(2)),
            Err(Violation::LeaderCommittedOldTerm {
                node: 1,
                term: 4,
                index: 3,
                entry_term: 2
            })
        );
    }
}
