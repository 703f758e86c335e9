//! A leader that has seen a higher term steps down within one round trip
//! (Raft Figure 2, "Rules for Servers": if an RPC request or response
//! contains a term T > currentTerm, set currentTerm = T and convert to
//! follower).
//!
//! The simulator reports every message with a higher term delivered to a
//! node whose last reported role is leader, except the ones a leader may
//! rightly ignore: pre-vote requests and grants (they carry a term nobody
//! is in yet, thesis §9.6) and vote requests (a leader inside its
//! lease on votes disregards them, thesis §4.2.3, ADR 0036; a vote request from
//! outside the configuration may be dropped, issue 12 defect 3). From one
//! round trip after the delivery on, the node must not act as leader of
//! the old term: no tick, and no append, heartbeat, snapshot or
//! timeout-now in that term, while it still reports itself leader of it.
//! (A message the core held back until a write completed may leave after
//! the node stepped down: that is not acting as leader.)

use std::collections::BTreeMap;

use metalraft_core::{NodeId, Role, Term};

use super::Violation;
use crate::config::Time;

#[derive(Clone, Copy, Debug)]
struct Pending {
    /// The term it leads.
    term: Term,
    /// The higher term it was told about.
    seen: Term,
    /// When it was told.
    since: Time,
    /// From when on acting as leader of `term` is a violation.
    deadline: Time,
}

/// Leaders that were told about a higher term and have not stepped down.
#[derive(Debug, Default)]
pub struct StepDownChecker {
    pending: BTreeMap<NodeId, Pending>,
}

impl StepDownChecker {
    /// A message of term `seen` was delivered at `now` to `node`, which
    /// leads `term < seen`; it must step down before `now + round_trip`.
    pub fn observe_higher_term(
        &mut self,
        node: NodeId,
        term: Term,
        seen: Term,
        now: Time,
        round_trip: Time,
    ) {
        if seen <= term {
            return;
        }
        // The earliest obligation counts.
        self.pending.entry(node).or_insert(Pending {
            term,
            seen,
            since: now,
            deadline: now.saturating_add(round_trip),
        });
    }

    /// `node` reports `role` in `term`: a follower or candidate, or any
    /// role in a newer term, has stepped down.
    pub fn observe_role(&mut self, node: NodeId, role: Role, term: Term) {
        if let Some(p) = self.pending.get(&node) {
            if role != Role::Leader || term > p.term {
                self.pending.remove(&node);
            }
        }
    }

    /// `node` acts as leader of `term` at `now` (sends a leader's message,
    /// or ticks while it reports itself leader).
    pub fn observe_leader_action(
        &self,
        node: NodeId,
        term: Term,
        now: Time,
    ) -> Result<(), Violation> {
        match self.pending.get(&node) {
            Some(p) if p.term == term && now >= p.deadline => Err(Violation::StaleLeader {
                node,
                term,
                seen: p.seen,
                since_us: p.since,
            }),
            _ => Ok(()),
        }
    }

    /// `node` crashed: it leads nothing any more.
    pub fn forget(&mut self, node: NodeId) {
        self.pending.remove(&node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_that_steps_down_passes() {
        let mut c = StepDownChecker::default();
        c.observe_higher_term(1, 3, 5, 100, 50);
        c.observe_leader_action(1, 3, 120).unwrap(); // within the round trip
        c.observe_role(1, Role::Follower, 5);
        c.observe_leader_action(1, 3, 1000).unwrap();
        // Leading a newer term later is fine too.
        c.observe_higher_term(2, 3, 5, 100, 50);
        c.observe_role(2, Role::Leader, 6);
        c.observe_leader_action(2, 6, 1000).unwrap();
        // A lower or equal term is no obligation.
        c.observe_higher_term(3, 5, 5, 100, 50);
        c.observe_leader_action(3, 5, 1000).unwrap();
    }

    /// The injected bug of issue 12: a leader ignores a higher term in
    /// the responses to its appends.
    #[test]
    fn a_leader_that_keeps_leading_the_old_term_is_reported() {
        let mut c = StepDownChecker::default();
        c.observe_higher_term(1, 3, 5, 100, 50);
        c.observe_higher_term(1, 3, 6, 110, 50); // the first obligation counts
        c.observe_role(1, Role::Leader, 3); // still leader, same term
        assert_eq!(
            c.observe_leader_action(1, 3, 150),
            Err(Violation::StaleLeader {
                node: 1,
                term: 3,
                seen: 5,
                since_us: 100
            })
        );
        c.forget(1);
        c.observe_leader_action(1, 3, 200).unwrap();
    }
}
