//! One simulated node: the real `metalraft-core` node and `metalraft-kv`
//! store while it runs, and its disk, which outlives crashes.

use std::collections::BTreeMap;

use metalraft_core::{Index, MemStorage, Node, NodeId, ReadCtx, Role, Term};
use metalraft_kv::KvStore;

use crate::config::Time;
use crate::disk::Disk;
use crate::history::{ClientId, KeyId, OpId};
use crate::payload::SimPayload;

/// The core node type the simulator runs.
pub type SimNode = Node<SimPayload, MemStorage<SimPayload>>;

/// A client operation proposed on this node: (client, op, attempt).
pub type ProposalRef = (ClientId, OpId, u32);

/// A running node's volatile state (lost on crash).
pub struct Live {
    /// The Raft node; its storage is the disk's "written" view.
    pub node: SimNode,
    /// The state machine, rebuilt after a restart by re-applying the log.
    pub kv: KvStore,
    /// Client proposals waiting to be applied, by log index.
    pub proposals: BTreeMap<Index, ProposalRef>,
    /// Client reads waiting for their read index, by read context.
    pub reads: BTreeMap<ReadCtx, (ProposalRef, KeyId)>,
    /// Client reads with a read index, waiting for the store to apply it.
    pub reads_ready: Vec<(Index, ProposalRef, KeyId)>,
    /// Snapshot bytes received so far (InstallSnapshot chunks).
    pub incoming_snapshot: Vec<u8>,
    /// Index of this node's latest snapshot (taken or installed).
    pub snapshot_index: Index,
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
            .is_some_and(|l| l.node.role() == Role::Leader)
    }
}
