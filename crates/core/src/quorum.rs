//! Majority arithmetic over the voters of a configuration (Raft paper §5.2,
//! §5.3). Kept separate so joint configurations can combine two majorities.

use alloc::vec::Vec;

use crate::types::{ConfState, Index, NodeId};

/// Outcome of an election count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VoteResult {
    Won,
    Lost,
    Pending,
}

/// Configurations up to this many voters are counted without allocating.
const STACK_VOTERS: usize = 16;

/// Number of votes that make a majority of `n` voters.
pub(crate) fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// The highest index acknowledged by a majority of `voters`, given each
/// voter's acknowledged index (`acked(id)`; unknown voters count as 0).
/// Takes `dyn`: one copy in the firmware image for every caller and both
/// halves of a joint configuration, instead of one per closure type.
pub(crate) fn committed_index(voters: &[NodeId], acked: &mut dyn FnMut(NodeId) -> Index) -> Index {
    if voters.is_empty() {
        // An empty configuration agrees on everything (so that a joint
        // minimum ignores it); callers never commit with no voters at all.
        return Index::MAX;
    }
    let q = majority(voters.len());
    if voters.len() <= STACK_VOTERS {
        let mut buf = [0 as Index; STACK_VOTERS];
        let idx = &mut buf[..voters.len()];
        for (slot, &v) in idx.iter_mut().zip(voters) {
            *slot = acked(v);
        }
        crate::sort::sort_u64(idx);
        return idx[idx.len() - q];
    }
    let mut idx: Vec<Index> = voters.iter().map(|&v| acked(v)).collect();
    crate::sort::sort_u64(&mut idx);
    idx[idx.len() - q]
}

/// Tallies votes: `vote(id)` is `Some(granted)` for voters that answered.
/// Takes `dyn` for the reason given at [`committed_index`].
pub(crate) fn vote_result(
    voters: &[NodeId],
    vote: &mut dyn FnMut(NodeId) -> Option<bool>,
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

/// Thesis §4.3: in a joint configuration an index is committed only when
/// both majorities have it.
pub(crate) fn joint_committed_index(
    conf: &ConfState,
    mut acked: impl FnMut(NodeId) -> Index,
) -> Index {
    let incoming = committed_index(&conf.voters, &mut acked);
    if conf.voters_outgoing.is_empty() {
        return incoming;
    }
    incoming.min(committed_index(&conf.voters_outgoing, &mut acked))
}

/// Thesis §4.3: an election is won with both majorities, lost if either
/// majority is out of reach.
pub(crate) fn joint_vote_result(
    conf: &ConfState,
    mut vote: impl FnMut(NodeId) -> Option<bool>,
) -> VoteResult {
    let a = vote_result(&conf.voters, &mut vote);
    if conf.voters_outgoing.is_empty() {
        return a;
    }
    let b = vote_result(&conf.voters_outgoing, &mut vote);
    match (a, b) {
        (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
        (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
        _ => VoteResult::Pending,
    }
}

/// Whether `active` holds for a majority of each configuration.
pub(crate) fn joint_active(conf: &ConfState, mut active: impl FnMut(NodeId) -> bool) -> bool {
    let mut ok = |voters: &[NodeId]| {
        voters.is_empty() || voters.iter().filter(|&&v| active(v)).count() >= majority(voters.len())
    };
    ok(&conf.voters) && ok(&conf.voters_outgoing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_index_is_the_majority_minimum() {
        let voters = [1, 2, 3, 4, 5];
        let acks = [0, 9, 7, 5, 3, 1];
        assert_eq!(committed_index(&voters, &mut |v| acks[v as usize]), 5);
        assert_eq!(committed_index(&[1], &mut |_| 4), 4);
        assert_eq!(
            committed_index(&[1, 2], &mut |v| if v == 1 { 4 } else { 2 }),
            2
        );
    }

    #[test]
    fn joint_majorities_must_both_agree() {
        let mut conf = ConfState::with_voters(&[1, 2, 3]);
        conf.voters_outgoing = [1, 4, 5].to_vec();
        let acks = [0, 9, 9, 9, 1, 1];
        // Incoming majority has 9, outgoing only 1 (node 1 alone).
        assert_eq!(joint_committed_index(&conf, |v| acks[v as usize]), 1);
        let votes = |v: NodeId| Some(v <= 3);
        assert_eq!(joint_vote_result(&conf, votes), VoteResult::Lost);
        assert_eq!(joint_vote_result(&conf, |v| Some(v != 3)), VoteResult::Won);
        assert!(!joint_active(&conf, |v| v <= 3));
        assert!(joint_active(&conf, |v| v != 2));
    }

    #[test]
    fn vote_result_counts_majorities() {
        let voters = [1, 2, 3];
        assert_eq!(
            vote_result(&voters, &mut |v| (v <= 2).then_some(true)),
            VoteResult::Won
        );
        assert_eq!(
            vote_result(&voters, &mut |v| (v == 1).then_some(true)),
            VoteResult::Pending
        );
        assert_eq!(
            vote_result(&voters, &mut |v| Some(v == 1)),
            VoteResult::Lost
        );
    }
}
