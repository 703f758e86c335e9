//! Committed entries never change (State Machine Safety, Raft §5.4.3, seen
//! from the logs rather than from the state machines): once any node
//! reports commit index c while holding entry (i, t, digest) at i <= c,
//! every node that reports a commit index >= i holds that same entry at i,
//! and no node overwrites an entry at or below its own reported commit
//! index with a different one.
//!
//! The commit index is what each node reports in its Persist batches (and
//! its durable hard state at restart); the entries are read from the same
//! node's log. This fires when a node *reports* a wrong commit, earlier
//! than the state-machine checker (which waits until the entry is applied),
//! and it fires for entries that no node applies before the run ends.

use std::collections::BTreeMap;

use metalraft_core::{Index, NodeId, Term};

use super::Violation;

/// The committed prefix as first reported, and how far each node's
/// reported commit index has been checked against it.
#[derive(Debug, Default)]
pub struct CommittedChecker {
    /// `committed[i - 1]`: (term, digest) of the entry committed at `i`,
    /// if some node reported it (a compacted entry may be unknown).
    committed: Vec<Option<(Term, u64)>>,
    /// Per node (this incarnation): the commit index checked so far.
    checked: BTreeMap<NodeId, Index>,
}

impl CommittedChecker {
    /// `node` reports commit index `commit` over its log ending at `last`;
    /// `entry_at(i)` is its entry at `i` as (term, digest), `None` if
    /// compacted into a snapshot. A commit index beyond the log is a
    /// violation of its own (the core checks that only with a
    /// `debug_assert!` in `RaftLog::commit_to`; this check also runs in
    /// release builds).
    pub fn observe_commit(
        &mut self,
        node: NodeId,
        commit: Index,
        last: Index,
        entry_at: impl Fn(Index) -> Option<(Term, u64)>,
    ) -> Result<(), Violation> {
        if commit > last {
            return Err(Violation::CommitBeyondLog { node, commit, last });
        }
        let from = self.checked.get(&node).copied().unwrap_or(0) + 1;
        if commit < from {
            return Ok(());
        }
        let needed = usize::try_from(commit).unwrap_or(usize::MAX);
        if self.committed.len() < needed {
            self.committed.resize(needed, None);
        }
        for i in from..=commit {
            let Some(got) = entry_at(i) else { continue };
            let slot = &mut self.committed[(i - 1) as usize];
            match *slot {
                Some(expected) if expected != got => {
                    return Err(Violation::CommittedEntryChanged {
                        node,
                        index: i,
                        got,
                        expected,
                    })
                }
                Some(_) => {}
                None => *slot = Some(got),
            }
        }
        self.checked.insert(node, commit);
        Ok(())
    }

    /// `node` writes (term, digest) at `index` (a Persist batch). Writing a
    /// different entry at or below the commit index it reported is
    /// overwriting a committed entry.
    pub fn observe_write(
        &self,
        node: NodeId,
        index: Index,
        got: (Term, u64),
    ) -> Result<(), Violation> {
        if index > self.checked.get(&node).copied().unwrap_or(0) {
            return Ok(());
        }
        match self.committed_at(index) {
            Some(expected) if expected != got => Err(Violation::CommittedEntryChanged {
                node,
                index,
                got,
                expected,
            }),
            _ => Ok(()),
        }
    }

    /// `node` crashed: its next incarnation reports its commit index anew
    /// (from its durable hard state), and its log is checked again.
    pub fn forget(&mut self, node: NodeId) {
        self.checked.remove(&node);
    }

    /// (term, digest) of the entry known committed at `index`.
    pub fn committed_at(&self, index: Index) -> Option<(Term, u64)> {
        let i = usize::try_from(index.checked_sub(1)?).ok()?;
        self.committed.get(i).copied().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(entries: &[(Term, u64)]) -> impl Fn(Index) -> Option<(Term, u64)> + '_ {
        move |i| {
            entries
                .get(usize::try_from(i).ok()?.checked_sub(1)?)
                .copied()
        }
    }

    #[test]
    fn agreeing_commits_pass() {
        let mut c = CommittedChecker::default();
        let a = [(1, 10), (2, 20), (2, 21)];
        c.observe_commit(1, 2, 3, log(&a)).unwrap();
        c.observe_commit(2, 3, 3, log(&a)).unwrap();
        c.observe_commit(1, 3, 3, log(&a)).unwrap();
        assert_eq!(c.committed_at(3), Some((2, 21)));
        c.observe_write(1, 4, (3, 30)).unwrap();
        c.observe_write(1, 3, (2, 21)).unwrap();
    }

    /// Issue 12, defect 1: node 2 holds "a" at (3, t2), nodes 1 and 3
    /// committed "b" at (3, t2); node 2 learns commit index 3.
    #[test]
    fn a_node_committing_a_different_entry_is_reported() {
        let mut c = CommittedChecker::default();
        c.observe_commit(1, 3, 3, log(&[(1, 10), (2, 20), (2, 0xb)]))
            .unwrap();
        assert_eq!(
            c.observe_commit(2, 3, 3, log(&[(1, 10), (2, 20), (2, 0xa)])),
            Err(Violation::CommittedEntryChanged {
                node: 2,
                index: 3,
                got: (2, 0xa),
                expected: (2, 0xb)
            })
        );
    }

    #[test]
    fn overwriting_below_the_own_commit_index_is_reported() {
        let mut c = CommittedChecker::default();
        c.observe_commit(1, 2, 2, log(&[(1, 10), (2, 20)])).unwrap();
        assert!(matches!(
            c.observe_write(1, 2, (3, 30)),
            Err(Violation::CommittedEntryChanged { index: 2, .. })
        ));
        // Another node that has not reported commit 2 may still hold (and
        // be overwritten to) anything there: it is only a lagging follower.
        c.observe_write(2, 2, (3, 30)).unwrap();
        // After a crash the node's commit index is unknown until reported.
        c.forget(1);
        c.observe_write(1, 2, (3, 30)).unwrap();
    }

    #[test]
    fn a_commit_index_beyond_the_log_is_reported() {
        let mut c = CommittedChecker::default();
        assert_eq!(
            c.observe_commit(1, 4, 3, log(&[(1, 10), (2, 20), (2, 21)])),
            Err(Violation::CommitBeyondLog {
                node: 1,
                commit: 4,
                last: 3
            })
        );
    }

    #[test]
    fn compacted_entries_are_skipped() {
        let mut c = CommittedChecker::default();
        c.observe_commit(1, 3, 3, |i| (i > 2).then_some((2, i)))
            .unwrap();
        assert_eq!(c.committed_at(1), None);
        c.observe_commit(2, 3, 3, log(&[(1, 10), (2, 20), (2, 3)]))
            .unwrap();
        assert_eq!(c.committed_at(1), Some((1, 10)));
    }
}
