//! One simulated node: the shipped `metalraft-replica` [`Replica`] (the
//! core node, the kv state machine, proposal matching, reads, snapshots)
//! while it runs, and its disk, which outlives crashes.

use metalraft_core::{MemStorage, Node, NodeId, Role, Term};

use crate::config::Time;
use crate::disk::Disk;
use crate::machine::SimMachine;
use crate::payload::SimPayload;

/// The core node type inside a simulated replica.
pub type SimNode = Node<SimPayload, MemStorage<SimPayload>>;

/// The replica type the simulator runs: the one the server and the
/// firmware run, over the disk's "written" view of the log.
pub type SimReplica = metalraft_replica::Replica<SimMachine, MemStorage<SimPayload>, SimPayload>;

/// A running node's volatile state (lost on crash).
pub struct Live {
    /// The replica; its storage is the disk's "written" view.
    pub replica: SimReplica,
}

impl Live {
    /// The Raft node, read-only.
    pub fn node(&self) -> &SimNode {
        self.replica.node()
    }
}

/// A node slot: running or crashed, plus its disk.
pub struct Replica {
    /// Node id (`index + 1`).
    pub id: NodeId,
    /// Incremented at every crash: events of an earlier life are ignored.
    pub incarnation: u32,
    /// Present while running.
    pub live: Option<Live>,
    /// The disk.
    pub disk: Disk,
    /// Events for this node wait until then (a slow node).
    pub paused_until: Time,
    /// This node's tick period.
    pub tick_us: Time,
    /// Last role and term reported (for the timeline).
    pub last_role: Option<(Role, Term)>,
}

impl Replica {
    /// Whether the node is running as leader.
    pub fn is_leader(&self) -> bool {
        self.live
            .as_ref()
            .is_some_and(|l| l.node().role() == Role::Leader)
    }
}
