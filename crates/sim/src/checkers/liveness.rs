//! Liveness after faults stop: with every node up and connected, within the
//! tick budget a leader is elected, every node commits and applies
//! everything the leader committed, and every client completes an
//! operation successfully.

use metalraft_core::{Index, NodeId, Term};

use super::Violation;
use crate::history::ClientId;

/// One node's progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeProgress {
    /// Its id.
    pub id: NodeId,
    /// Whether it is running.
    pub up: bool,
    /// Whether it is a member (voter or learner) of the leader's
    /// configuration; non-members need not converge.
    pub member: bool,
    /// Whether it is leader.
    pub leader: bool,
    /// Its term.
    pub term: Term,
    /// Its commit index.
    pub commit: Index,
    /// Its applied index.
    pub applied: Index,
}

/// The state of the cluster and the clients at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LivenessSnapshot {
    /// Every node.
    pub nodes: Vec<NodeProgress>,
    /// Clients that have not completed an operation successfully since the
    /// faults stopped, or still have one pending.
    pub clients_waiting: Vec<ClientId>,
    /// Ticks since the faults stopped.
    pub elapsed_ticks: u64,
}

/// `Ok` if the cluster has recovered.
pub fn check_liveness(s: &LivenessSnapshot) -> Result<(), Violation> {
    let fail = |what: String| {
        Err(Violation::Liveness {
            what: format!("after {} ticks without faults: {what}", s.elapsed_ticks),
        })
    };
    if let Some(n) = s.nodes.iter().find(|n| !n.up) {
        return fail(format!("node {} is not running", n.id));
    }
    let Some(leader) = s.nodes.iter().filter(|n| n.leader).max_by_key(|n| n.term) else {
        return fail("no leader elected".into());
    };
    if let Some(n) = s
        .nodes
        .iter()
        .filter(|n| n.member)
        .find(|n| n.commit != leader.commit || n.applied != leader.commit)
    {
        return fail(format!(
            "node {} has commit {} applied {}, leader {} (term {}) has commit {}",
            n.id, n.commit, n.applied, leader.id, leader.term, leader.commit
        ));
    }
    if !s.clients_waiting.is_empty() {
        return fail(format!(
            "clients {:?} completed no operation",
            s.clients_waiting
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: NodeId, leader: bool, commit: Index, applied: Index) -> NodeProgress {
        NodeProgress {
            id,
            up: true,
            member: true,
            leader,
            term: 3,
            commit,
            applied,
        }
    }

    #[test]
    fn recovered_cluster_passes() {
        let s = LivenessSnapshot {
            nodes: vec![
                node(1, true, 9, 9),
                node(2, false, 9, 9),
                node(3, false, 9, 9),
            ],
            clients_waiting: vec![],
            elapsed_ticks: 40,
        };
        assert!(check_liveness(&s).is_ok());
    }

    #[test]
    fn no_leader_lagging_node_stuck_client_and_down_node_are_reported() {
        let ok = vec![node(1, true, 9, 9), node(2, false, 9, 9)];
        let mut s = LivenessSnapshot {
            nodes: ok.clone(),
            clients_waiting: vec![],
            elapsed_ticks: 1,
        };
        s.nodes[0].leader = false;
        assert!(
            matches!(check_liveness(&s), Err(Violation::Liveness { what }) if what.contains("no leader"))
        );
        s.nodes = ok.clone();
        s.nodes[1].applied = 8;
        assert!(
            matches!(check_liveness(&s), Err(Violation::Liveness { what }) if what.contains("node 2"))
        );
        s.nodes[1].member = false;
        assert!(
            check_liveness(&s).is_ok(),
            "a node removed from the configuration need not catch up"
        );
        s.nodes = ok.clone();
        s.clients_waiting = vec![4];
        assert!(
            matches!(check_liveness(&s), Err(Violation::Liveness { what }) if what.contains("[4]"))
        );
        s.clients_waiting.clear();
        s.nodes[1].up = false;
        assert!(check_liveness(&s).is_err());
    }
}
