//! Telling a removed node that it was removed. The leader stops replicating
//! to a node the moment it appends the change that removes it (a
//! configuration takes effect when appended, ADR 0006), so a removed node
//! usually never receives that change and cannot learn of its removal
//! through Raft: it goes on campaigning into the void. As etcd's peers
//! answer a removed member with "410 Gone", a member that has *applied* the
//! removal (so it is committed) answers a message from the removed node
//! with a removal notice naming the change's index ([`Departures`]), and
//! the removed node stops.
//!
//! The rules, host-tested here and carried out by the firmware's shell:
//! - a member remembers, per node id, the index at which its applied
//!   configuration dropped that node (forgotten when a later applied change
//!   adds it again);
//! - it sends a notice only for a node that is also absent from its latest
//!   configuration (so not while a change adding it back is appended);
//! - the removed node believes a notice only if its own log ends before
//!   that index ([`believe_notice`]): a node that was added back has the
//!   removal (and the re-addition) in its log, so a stale notice from a
//!   member that has not applied the re-addition yet cannot stop it.

use metalraft_core::{apply_conf_change, ConfChange, ConfState, Index, NodeId};
use metalraft_fw_proto::addr::MAX_NODE_ID;

/// Which nodes the applied configuration dropped, and at which index.
#[derive(Clone, Debug)]
pub struct Departures {
    /// The configuration as of the applied index.
    applied: ConfState,
    /// Per node id (`1..=MAX_NODE_ID`): the index of the applied change that
    /// dropped it.
    removed_at: [Option<Index>; MAX_NODE_ID as usize + 1],
}

impl Departures {
    /// Starting from the configuration of the snapshot the node restored
    /// (empty without one); the replica replays the committed changes after
    /// it as membership events.
    pub fn new(applied: ConfState) -> Self {
        Departures {
            applied,
            removed_at: [None; MAX_NODE_ID as usize + 1],
        }
    }

    /// The change at `index` was applied (a membership event). An invalid
    /// change, which the core ignores, changes nothing.
    pub fn applied(&mut self, index: Index, change: &ConfChange) {
        let Ok(next) = apply_conf_change(&self.applied, change) else {
            return;
        };
        for id in 1..=MAX_NODE_ID {
            let n = NodeId::from(id);
            let slot = &mut self.removed_at[usize::from(id)];
            if next.contains(n) {
                *slot = None;
            } else if self.applied.contains(n) {
                *slot = Some(index);
            }
        }
        self.applied = next;
    }

    /// A message from node `from` arrived; `latest` is this node's latest
    /// configuration. The index to put in a removal notice to it, if it
    /// was removed.
    pub fn notice_for(&self, from: u8, latest: &ConfState) -> Option<Index> {
        let removed = *self.removed_at.get(usize::from(from))?;
        match latest.contains(NodeId::from(from)) {
            true => None,
            false => removed,
        }
    }
}

/// Whether a node whose log ends at `last_index` believes a notice that the
/// change at `index` removed it.
pub fn believe_notice(index: Index, last_index: Index) -> bool {
    last_index < index
}
