//! The properties checked in every state. Each is a plain function of the
//! model state, so tests and the report can call them directly.

use crate::driver::Tag;
use crate::model::{State, QUORUM};
use metalraft_core::{LogStorage, Role};

/// Election safety (Raft paper §5.2), across restarts: at most one
/// election won per term, counting a node that wins the same term twice
/// (after a power loss) as two leaders.
pub fn election_safety(s: &State) -> bool {
    s.ghost.leaders.values().all(|won| won.len() <= 1)
}

/// Log matching (§5.3): if two logs hold an entry with the same index and
/// term, they are identical up to it.
pub fn log_matching(s: &State) -> bool {
    for a in &s.nodes {
        for b in &s.nodes {
            if a.id >= b.id {
                continue;
            }
            let (va, vb) = (&a.view, &b.view);
            for ea in &va.log {
                let Some(eb) = vb.entry(ea.index) else {
                    continue;
                };
                if ea.term != eb.term {
                    continue;
                }
                let lo = va.first().max(vb.first());
                let same = (lo..=ea.index).all(|i| va.entry(i) == vb.entry(i));
                if !same {
                    return false;
                }
            }
        }
    }
    true
}

/// Leader completeness (§5.4): an entry committed in term `t` is in the
/// log of every leader of a later term (or compacted into its snapshot).
pub fn leader_completeness(s: &State) -> bool {
    s.nodes
        .iter()
        .filter(|n| n.view.role == Role::Leader)
        .all(|n| {
            let v = &n.view;
            s.ghost
                .committed
                .values()
                .filter(|(_, t)| *t < v.term)
                .all(|(e, _)| e.index < v.first() || v.entry(e.index) == Some(e))
        })
}

/// State-machine safety (§5.4.3): no two nodes (or one node before and
/// after a restart) apply different entries at one index, and no index is
/// ever seen committed with two different entries.
pub fn state_machine_safety(s: &State) -> bool {
    s.ghost.commit_conflicts.is_empty() && s.ghost.applied.values().all(|es| es.len() <= 1)
}

/// Every entry seen committed is on the durable disk of a quorum (or
/// covered by its durable snapshot), so no power loss can lose it.
pub fn committed_durable_on_quorum(s: &State) -> bool {
    s.ghost.committed.values().all(|(e, _)| {
        let holding = s
            .nodes
            .iter()
            .filter(|n| {
                let d = &n.durable;
                let covered = d.snapshot().is_some_and(|(m, _)| m.index >= e.index);
                covered || d.term(e.index).ok() == Some(e.term)
            })
            .count();
        holding >= QUORUM
    })
}

/// Read-index safety (thesis §6.4): a read served at index `i` sees every
/// write committed before the read was asked: `i` is at least the highest
/// index any node knew committed at that moment.
pub fn read_index_safety(s: &State) -> bool {
    s.ghost.reads_served.iter().all(|r| r.index >= r.required)
}

/// Reachability: some client command was committed (so the check is not
/// vacuous).
pub fn client_entry_committed(s: &State) -> bool {
    s.ghost
        .committed
        .values()
        .any(|(e, _)| matches!(e.tag, Tag::Normal(_)))
}

/// Reachability ([`crate::Variant::Membership`]): both entries of the
/// joint change (entering and leaving) were committed.
pub fn reconfigured(s: &State) -> bool {
    s.ghost
        .committed
        .values()
        .filter(|(e, _)| e.tag == Tag::Conf && e.index > 1)
        .count()
        >= 2
}
