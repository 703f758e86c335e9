//! Majority arithmetic over the voters of a configuration (Raft paper §5.2,
//! §5.3). Kept separate so joint configurations can combine two majorities.

use alloc::vec::Vec;

use crate::types::{Index, NodeId};

/// Outcome of an election count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VoteResult {
    Won,
    Lost,
    Pending,
}

/// Number of votes that make a majority of `n` voters.
pub(crate) fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// The highest index acknowledged by a majority of `voters`, given each
/// voter's acknowledged index (`acked(id)`; unknown voters count as 0).
pub(crate) fn committed_index(voters: &[NodeId], mut acked: impl FnMut(NodeId) -> Index) -> Index {
    if voters.is_empty() {
        return 0;
    }
    let mut idx: Vec<Index> = voters.iter().map(|&v| acked(v)).collect();
    idx.sort_unstable_by(|a, b| b.cmp(a));
    idx[majority(voters.len()) - 1]
}

/// Tallies votes: `vote(id)` is `Some(granted)` for voters that answered.
pub(crate) fn vote_result(
    voters: &[NodeId],
    mut vote: impl FnMut(NodeId) -> Option<bool>,
) -> VoteResult {
    let (mut yes, mut missing) = (0usize, 0usize);
    for &v in voters {
        match vote(v) {
            Some(true) => yes += 1,
            Some(false) => {}
            None => missing += 1,
        }
    }
    let q = majority(voters.len());
    if yes >= q {
        VoteResult::Won
    } else if yes + missing >= q {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_index_is_the_majority_minimum() {
        let voters = [1, 2, 3, 4, 5];
        let acks = [0, 9, 7, 5, 3, 1];
        assert_eq!(committed_index(&voters, |v| acks[v as usize]), 5);
        assert_eq!(committed_index(&[1], |_| 4), 4);
        assert_eq!(committed_index(&[1, 2], |v| if v == 1 { 4 } else { 2 }), 2);
    }

    #[test]
    fn vote_result_counts_majorities() {
        let voters = [1, 2, 3];
        assert_eq!(
            vote_result(&voters, |v| (v <= 2).then_some(true)),
            VoteResult::Won
        );
        assert_eq!(
            vote_result(&voters, |v| (v == 1).then_some(true)),
            VoteResult::Pending
        );
        assert_eq!(vote_result(&voters, |v| Some(v == 1)), VoteResult::Lost);
    }
}
