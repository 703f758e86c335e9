//! Membership changes (thesis §4): single-server changes, joint consensus
//! and learners, as pure functions from one configuration to the next.

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::error::ConfChangeError;
use crate::types::{sorted, ConfState, Entry, EntryData, HardState, NodeId, Term, INVALID_ID};

/// One operation of a membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ConfChangeOp {
    /// Add a voter, or promote a learner to voter.
    AddVoter(NodeId),
    /// Add a learner, or demote a voter to learner.
    AddLearner(NodeId),
    /// Remove a member in any role.
    Remove(NodeId),
}

/// How a change moves between configurations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ConfTransition {
    /// A single-server change if at most one voter changes (thesis §4.1),
    /// otherwise joint consensus left automatically.
    Auto,
    /// Joint consensus (thesis §4.3), left automatically once committed.
    JointAutoLeave,
    /// Joint consensus, left only by an explicit [`ConfChange::leave_joint`].
    JointExplicit,
}

/// A membership change: a set of operations, or (no operations) leaving
/// the current joint configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ConfChange {
    /// The operations, applied in order.
    pub ops: Vec<ConfChangeOp>,
    /// How to get there.
    pub transition: ConfTransition,
    /// Opaque bytes replicated with the change and handed back in the
    /// committed entry (etcd's `ConfChange.Context`): an application puts
    /// there what must change atomically with the configuration, e.g. a
    /// new member's address. The core never reads them; they count
    /// against the uncommitted-bytes bound like a payload.
    pub context: Vec<u8>,
}

impl ConfChange {
    /// A change with [`ConfTransition::Auto`].
    pub fn new(ops: &[ConfChangeOp]) -> Self {
        ConfChange {
            ops: ops.to_vec(),
            transition: ConfTransition::Auto,
            context: Vec::new(),
        }
    }

    /// This change carrying `context` (see [`ConfChange::context`]).
    pub fn with_context(mut self, context: Vec<u8>) -> Self {
        self.context = context;
        self
    }

    /// The change that leaves a joint configuration.
    pub fn leave_joint() -> Self {
        ConfChange {
            ops: Vec::new(),
            transition: ConfTransition::Auto,
            context: Vec::new(),
        }
    }

    /// Whether this leaves a joint configuration.
    pub fn is_leave_joint(&self) -> bool {
        self.ops.is_empty()
    }
}

/// The configuration after `cc` is applied to `conf`.
pub fn apply_conf_change(conf: &ConfState, cc: &ConfChange) -> Result<ConfState, ConfChangeError> {
    if cc.is_leave_joint() {
        if !conf.is_joint() {
            return Err(ConfChangeError::NotJoint);
        }
        let mut next = conf.clone();
        next.voters_outgoing.clear();
        next.learners.append(&mut next.learners_next);
        next.learners = sorted(core::mem::take(&mut next.learners));
        next.auto_leave = false;
        return Ok(next);
    }
    if conf.is_joint() {
        return Err(ConfChangeError::InJoint);
    }
    let mut voters = conf.voters.clone();
    let mut learners = conf.learners.clone();
    for op in &cc.ops {
        let id = match *op {
            ConfChangeOp::AddVoter(id)
            | ConfChangeOp::AddLearner(id)
            | ConfChangeOp::Remove(id) => id,
        };
        if id == INVALID_ID {
            return Err(ConfChangeError::InvalidId);
        }
        voters.retain(|&v| v != id);
        learners.retain(|&l| l != id);
        match *op {
            ConfChangeOp::AddVoter(_) => voters.push(id),
            ConfChangeOp::AddLearner(_) => learners.push(id),
            ConfChangeOp::Remove(_) => {}
        }
    }
    let voters = sorted(voters);
    let learners = sorted(learners);
    if voters.is_empty() {
        return Err(ConfChangeError::NoVoters);
    }
    let changed = symmetric_difference(&conf.voters, &voters);
    // From an empty configuration (bootstrap) there is no old majority to
    // keep: the change is always simple.
    let joint = !conf.voters.is_empty()
        && match cc.transition {
            ConfTransition::Auto => changed > 1,
            ConfTransition::JointAutoLeave | ConfTransition::JointExplicit => true,
        };
    if !joint {
        return Ok(ConfState {
            voters,
            learners,
            ..ConfState::default()
        });
    }
    // Joint: outgoing voters keep voting until we leave; a voter demoted to
    // learner waits in learners_next (a node cannot be both a voter and a
    // learner).
    let outgoing = conf.voters.clone();
    let (learners_next, learners): (Vec<NodeId>, Vec<NodeId>) = learners
        .into_iter()
        .partition(|l| outgoing.binary_search(l).is_ok());
    Ok(ConfState {
        voters,
        voters_outgoing: outgoing,
        learners,
        learners_next,
        auto_leave: cc.transition != ConfTransition::JointExplicit,
    })
}

/// Term of the bootstrap entry.
pub const BOOTSTRAP_TERM: Term = 1;

/// The first log entry of a new cluster: a membership change adding the
/// initial voters (index 1, term [`BOOTSTRAP_TERM`]).
///
/// Every initial member stores this same entry and
/// [`bootstrap_hard_state`] before starting, with an empty base
/// configuration. A member that joins later starts with an empty log and
/// an empty configuration and learns everything, this entry included, from
/// the leader. (etcd-raft bootstraps the same way.)
pub fn bootstrap_entry<P>(voters: &[NodeId]) -> Entry<P> {
    let ops: Vec<ConfChangeOp> = sorted(voters.to_vec())
        .into_iter()
        .map(ConfChangeOp::AddVoter)
        .collect();
    Entry {
        term: BOOTSTRAP_TERM,
        index: 1,
        data: EntryData::ConfChange(Box::new(ConfChange {
            ops,
            transition: ConfTransition::Auto,
            context: Vec::new(),
        })),
    }
}

/// The hard state stored with [`bootstrap_entry`]: the bootstrap entry is
/// committed by construction, since every initial member has it.
pub fn bootstrap_hard_state() -> HardState {
    HardState {
        term: BOOTSTRAP_TERM,
        vote: None,
        commit: 1,
    }
}

fn symmetric_difference(a: &[NodeId], b: &[NodeId]) -> usize {
    a.iter().filter(|x| b.binary_search(x).is_err()).count()
        + b.iter().filter(|x| a.binary_search(x).is_err()).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConfChangeOp::*;

    #[test]
    fn single_server_changes_are_simple() {
        let c = ConfState::with_voters(&[1, 2, 3]);
        let n = apply_conf_change(&c, &ConfChange::new(&[AddVoter(4)])).unwrap();
        assert_eq!(n.voters, [1, 2, 3, 4]);
        assert!(!n.is_joint());
        let n = apply_conf_change(&n, &ConfChange::new(&[Remove(1)])).unwrap();
        assert_eq!(n.voters, [2, 3, 4]);
        let n = apply_conf_change(&n, &ConfChange::new(&[AddLearner(5)])).unwrap();
        assert_eq!(
            (n.voters.clone(), n.learners.clone()),
            (vec![2, 3, 4], vec![5])
        );
        // Promotion of a learner is a single voter change.
        let n = apply_conf_change(&n, &ConfChange::new(&[AddVoter(5)])).unwrap();
        assert_eq!(
            (n.voters.clone(), n.learners.is_empty()),
            (vec![2, 3, 4, 5], true)
        );
    }

    #[test]
    fn multi_voter_change_enters_joint_and_leaves() {
        let c = ConfState::with_voters(&[1, 2, 3]);
        let cc = ConfChange::new(&[AddVoter(4), AddVoter(5), Remove(1), AddLearner(2)]);
        let j = apply_conf_change(&c, &cc).unwrap();
        assert!(j.is_joint() && j.auto_leave);
        assert_eq!(j.voters, [3, 4, 5]);
        assert_eq!(j.voters_outgoing, [1, 2, 3]);
        assert_eq!(j.learners_next, [2]);
        assert!(j.is_voter(1) && j.is_voter(2));
        assert_eq!(
            apply_conf_change(&j, &ConfChange::new(&[AddVoter(9)])),
            Err(ConfChangeError::InJoint)
        );
        let l = apply_conf_change(&j, &ConfChange::leave_joint()).unwrap();
        assert_eq!(l.voters, [3, 4, 5]);
        assert_eq!(l.learners, [2]);
        assert!(!l.is_joint() && !l.is_voter(1) && !l.contains(1));
    }

    #[test]
    fn bootstrap_is_a_simple_change_from_empty() {
        let e = bootstrap_entry::<Vec<u8>>(&[3, 1, 2]);
        let EntryData::ConfChange(cc) = &e.data else {
            panic!("not a conf change")
        };
        let c = apply_conf_change(&ConfState::default(), cc).unwrap();
        assert_eq!(c, ConfState::with_voters(&[1, 2, 3]));
    }

    #[test]
    fn invalid_changes_are_refused() {
        let c = ConfState::with_voters(&[1]);
        assert_eq!(
            apply_conf_change(&c, &ConfChange::new(&[Remove(1)])),
            Err(ConfChangeError::NoVoters)
        );
        assert_eq!(
            apply_conf_change(&c, &ConfChange::new(&[AddVoter(0)])),
            Err(ConfChangeError::InvalidId)
        );
        assert_eq!(
            apply_conf_change(&c, &ConfChange::leave_joint()),
            Err(ConfChangeError::NotJoint)
        );
    }
}
