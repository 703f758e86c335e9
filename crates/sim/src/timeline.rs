//! What the HTML rendering needs: role changes, node faults, partitions and
//! phases over virtual time (client operations come from the history).

use metalraft_core::{NodeId, Role, Term};

use crate::config::Time;

/// A fault or recovery of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    /// Crashed (torn: a torn final write).
    Crash {
        /// Whether the last write was torn.
        torn: bool,
    },
    /// Restarted from durable state.
    Restart,
    /// Paused until the given time.
    Pause(Time),
}

/// The recorded timeline of a run.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    /// (time, node, role, term) at every role or term change.
    pub roles: Vec<(Time, NodeId, Role, Term)>,
    /// Crashes, restarts, pauses.
    pub node_events: Vec<(Time, NodeId, NodeEvent)>,
    /// (time, description) of each partition; `None` heals.
    pub partitions: Vec<(Time, Option<String>)>,
    /// When the faults stopped (the liveness phase began).
    pub liveness_start: Option<Time>,
    /// When the run ended.
    pub end: Time,
}
