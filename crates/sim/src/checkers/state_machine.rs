//! State-machine safety (Raft §5.4.3): every node applies the same entry at
//! every index, in order, without gaps. Each node's applied sequence is
//! folded into a hash chain; the chain value after each index must equal
//! the one of the first node that applied that index.

use std::collections::BTreeMap;

use metalraft_core::{Index, NodeId, Term};

use super::Violation;
use crate::digest::fnv_u64;

#[derive(Clone, Copy, Debug)]
struct NodeChain {
    last: Index,
    chain: u64,
}

/// The applied history of the cluster and of each node.
#[derive(Debug, Default)]
pub struct StateMachineChecker {
    /// (term, digest, chain) of the entry first applied at index i + 1.
    applied: Vec<(Term, u64, u64)>,
    nodes: BTreeMap<NodeId, NodeChain>,
}

impl StateMachineChecker {
    /// `node` restarted with an empty state machine: it applies again from
    /// index 1.
    pub fn reset(&mut self, node: NodeId) {
        self.nodes.remove(&node);
    }

    /// `node` restored its state machine from a snapshot covering entries
    /// up to `index`: it continues from the cluster's chain at `index`.
    /// Fails if no node ever applied `index` (a snapshot of state that was
    /// never applied anywhere).
    pub fn restore(&mut self, node: NodeId, index: Index) -> Result<(), Violation> {
        if index == 0 {
            self.reset(node);
            return Ok(());
        }
        let Some(&(term, digest, chain)) = self.applied.get((index - 1) as usize) else {
            return Err(Violation::StateMachineSafety {
                node,
                index,
                got: (0, 0),
                expected: (0, self.applied_len()),
            });
        };
        let _ = (term, digest);
        self.nodes.insert(node, NodeChain { last: index, chain });
        Ok(())
    }

    /// `node` applied entry (`index`, `term`) with content `digest`.
    pub fn observe_applied(
        &mut self,
        node: NodeId,
        index: Index,
        term: Term,
        digest: u64,
    ) -> Result<(), Violation> {
        let nc = self
            .nodes
            .entry(node)
            .or_insert(NodeChain { last: 0, chain: 0 });
        if index != nc.last + 1 {
            return Err(Violation::StateMachineSafety {
                node,
                index,
                got: (term, digest),
                expected: (0, nc.last + 1),
            });
        }
        let chain = fnv_u64(fnv_u64(fnv_u64(nc.chain, index), term), digest);
        nc.last = index;
        nc.chain = chain;
        let i = (index - 1) as usize;
        if let Some(&(t, d, c)) = self.applied.get(i) {
            if (t, d, c) != (term, digest, chain) {
                return Err(Violation::StateMachineSafety {
                    node,
                    index,
                    got: (term, digest),
                    expected: (t, d),
                });
            }
        } else if i == self.applied.len() {
            self.applied.push((term, digest, chain));
        } else {
            // Nobody applied the entries between: this node's chain starts
            // beyond what the cluster applied (checked in release builds
            // too, not by a debug assertion).
            return Err(Violation::StateMachineSafety {
                node,
                index,
                got: (term, digest),
                expected: (0, self.applied.len() as Index + 1),
            });
        }
        Ok(())
    }

    /// Highest index applied anywhere.
    pub fn applied_len(&self) -> Index {
        self.applied.len() as Index
    }

    /// (term, digest) of the entry applied at `index`, if any node applied it.
    pub fn applied_at(&self, index: Index) -> Option<(Term, u64)> {
        let i = usize::try_from(index.checked_sub(1)?).ok()?;
        self.applied.get(i).map(|&(t, d, _)| (t, d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_sequence_on_every_node_passes() {
        let mut c = StateMachineChecker::default();
        for node in 1..=3 {
            for i in 1..=5 {
                c.observe_applied(node, i, 1, i * 10).unwrap();
            }
        }
        c.reset(2);
        c.observe_applied(2, 1, 1, 10).unwrap();
        c.restore(3, 4).unwrap();
        c.observe_applied(3, 5, 1, 50).unwrap();
        assert!(
            c.restore(3, 9).is_err(),
            "a snapshot beyond anything applied"
        );
        assert_eq!(c.applied_len(), 5);
        assert_eq!(c.applied_at(3), Some((1, 30)));
    }

    #[test]
    fn divergent_applied_logs_are_reported() {
        let mut c = StateMachineChecker::default();
        c.observe_applied(1, 1, 1, 10).unwrap();
        c.observe_applied(1, 2, 1, 20).unwrap();
        c.observe_applied(2, 1, 1, 10).unwrap();
        assert_eq!(
            c.observe_applied(2, 2, 2, 21),
            Err(Violation::StateMachineSafety {
                node: 2,
                index: 2,
                got: (2, 21),
                expected: (1, 20)
            })
        );
    }

    #[test]
    fn skipped_index_is_reported() {
        let mut c = StateMachineChecker::default();
        c.observe_applied(1, 1, 1, 10).unwrap();
        assert!(matches!(
            c.observe_applied(1, 3, 1, 30),
            Err(Violation::StateMachineSafety {
                node: 1,
                index: 3,
                ..
            })
        ));
    }
}
