//! A follower never truncates entries that match the leader's (Raft Figure
//! 2, AppendEntries receiver step 3: "If an existing entry conflicts with a
//! new one (same index but different terms), delete the existing entry and
//! all that follow it"; step 4: "Append any new entries *not already* in
//! the log"). A stale or duplicated append that overlaps the log must not
//! cut off the entries after it: the follower may already have
//! acknowledged them, and the leader counts them towards a commit.
//!
//! Persist batches overwrite from their first entry on (everything stored
//! at or after `Persist::entries()[0].index` is deleted first), so a batch
//! whose first entry lands on a stored entry of the same term truncates a
//! matching entry (Log Matching, §5.3: same index and term means the same
//! entry and the same prefix).

use metalraft_core::{Index, NodeId, Term};

use super::Violation;

/// `node` writes a batch starting at (`index`, `term`); `stored_term` is
/// the term of the entry it already stores at `index` (`None`: none, or
/// compacted into a snapshot).
pub fn check_batch_start(
    node: NodeId,
    index: Index,
    term: Term,
    stored_term: Option<Term>,
) -> Result<(), Violation> {
    if stored_term == Some(term) {
        return Err(Violation::TruncatedMatchingEntry { node, index, term });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_and_conflicting_overwrites_pass() {
        check_batch_start(1, 5, 2, None).unwrap(); // a plain append
        check_batch_start(1, 5, 3, Some(2)).unwrap(); // a real conflict
    }

    /// The injected bug of issue 12: a follower truncates from the first
    /// entry of an append even when it already holds it.
    #[test]
    fn overwriting_a_matching_entry_is_reported() {
        assert_eq!(
            check_batch_start(1, 5, 2, Some(2)),
            Err(Violation::TruncatedMatchingEntry {
                node: 1,
                index: 5,
                term: 2
            })
        );
    }
}
