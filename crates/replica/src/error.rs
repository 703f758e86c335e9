//! One small `Copy` enum per operation. `Display` uses `write_str` only, so
//! the firmware links no formatting of numbers from this crate.

use core::fmt;

use metalraft_core::{Index, NodeId};

/// Why [`crate::Replica::new`] refused its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The core refused its configuration or could not read storage.
    Core(metalraft_core::ConfigError),
    /// A replica bound is 0.
    ZeroLimit(&'static str),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Core(e) => e.fmt(f),
            ConfigError::ZeroLimit(name) => {
                f.write_str("replica limit must be at least 1: ")?;
                f.write_str(name)
            }
        }
    }
}

/// Why [`crate::Replica::propose`] or [`crate::Replica::propose_conf_change`]
/// refused. Nothing was appended and no completion will come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProposeError {
    /// This node does not lead; `leader` is the leader it knows of.
    NotLeader {
        /// The current leader, if known.
        leader: Option<NodeId>,
    },
    /// A proposal with this request id is already waiting.
    DuplicateRequest,
    /// `max_pending_proposals` proposals are already waiting.
    TooManyPending,
    /// The leader's uncommitted bytes are at `max_uncommitted_bytes`.
    UncommittedLimit,
    /// A leadership transfer is in progress.
    TransferInProgress,
    /// The membership change is invalid or another one is pending.
    ConfChange(metalraft_core::ConfChangeError),
    /// The replica has stopped ([`crate::Replica::failure`]).
    Stopped,
}

impl From<metalraft_core::ProposeError> for ProposeError {
    fn from(e: metalraft_core::ProposeError) -> Self {
        use metalraft_core::ProposeError as P;
        match e {
            P::NotLeader { leader } => ProposeError::NotLeader { leader },
            P::UncommittedLimit => ProposeError::UncommittedLimit,
            P::TransferInProgress => ProposeError::TransferInProgress,
            _ => ProposeError::Stopped,
        }
    }
}

impl From<metalraft_core::ConfChangeError> for ProposeError {
    fn from(e: metalraft_core::ConfChangeError) -> Self {
        use metalraft_core::ConfChangeError as C;
        match e {
            C::NotLeader { leader } => ProposeError::NotLeader { leader },
            C::TransferInProgress => ProposeError::TransferInProgress,
            C::Failed => ProposeError::Stopped,
            other => ProposeError::ConfChange(other),
        }
    }
}

impl fmt::Display for ProposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProposeError::NotLeader { .. } => f.write_str("not the leader"),
            ProposeError::DuplicateRequest => f.write_str("request id already pending"),
            ProposeError::TooManyPending => f.write_str("too many pending proposals"),
            ProposeError::UncommittedLimit => f.write_str("too many uncommitted bytes"),
            ProposeError::TransferInProgress => f.write_str("leadership transfer in progress"),
            ProposeError::ConfChange(e) => e.fmt(f),
            ProposeError::Stopped => f.write_str("replica stopped"),
        }
    }
}

/// Why [`crate::Replica::read`] refused a read. No completion will come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadError {
    /// `max_pending_reads` reads are already waiting.
    TooManyPending,
    /// The core refused the read index request.
    Core(metalraft_core::ReadError),
    /// The replica has stopped.
    Stopped,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::TooManyPending => f.write_str("too many pending reads"),
            ReadError::Core(e) => e.fmt(f),
            ReadError::Stopped => f.write_str("replica stopped"),
        }
    }
}

/// Why a request completed without a result ([`crate::Outcome::Failed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestFailure {
    /// Definite: another entry was committed at the proposal's index, so the
    /// proposal was not and never will be applied. Safe to retry.
    Superseded {
        /// The index the proposal had been appended at.
        index: Index,
    },
    /// Not known whether the proposal was applied: the replica can no longer
    /// tell (a snapshot covered its index, it waited longer than
    /// `request_timeout_ticks`, or the replica stopped). Retrying may apply
    /// it twice; etcd answers "leader changed" or "timed out" here.
    Unknown(UnknownReason),
    /// A read failed before it got a read index (leader change, timeout,
    /// leader refused); it was not served. Safe to retry.
    Read(metalraft_core::ReadError),
    /// A read got its read index but the state machine did not reach it
    /// within `request_timeout_ticks`. Safe to retry.
    TimedOut,
    /// The replica stopped before the read was served. Safe to retry elsewhere.
    Stopped,
}

/// Why the outcome of a proposal is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnknownReason {
    /// A snapshot from the leader covered the proposal's index.
    SnapshotInstalled,
    /// It waited longer than `request_timeout_ticks`.
    TimedOut,
    /// The replica stopped.
    Stopped,
}

impl fmt::Display for RequestFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RequestFailure::Superseded { .. } => "another entry was committed in its place",
            RequestFailure::Unknown(UnknownReason::SnapshotInstalled) => {
                "outcome unknown: a snapshot covered the proposal"
            }
            RequestFailure::Unknown(UnknownReason::TimedOut) => "outcome unknown: timed out",
            RequestFailure::Unknown(UnknownReason::Stopped) => {
                "outcome unknown: the replica stopped"
            }
            RequestFailure::Read(_) => "read failed before it got a read index",
            RequestFailure::TimedOut => "read timed out waiting for apply",
            RequestFailure::Stopped => "replica stopped",
        })
    }
}

/// A defect in an incoming snapshot's chunks ([`crate::SnapshotAssembler`]).
/// The partial data is dropped; the state machine and the log are untouched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChunkError {
    /// A chunk at a non-zero offset without a transfer started at offset 0.
    NoStart,
    /// A chunk of a different snapshot than the one being received.
    OtherSnapshot,
    /// A chunk does not start where the previous one ended.
    Gap {
        /// Bytes received so far (the offset expected).
        expected: u64,
        /// The chunk's offset.
        got: u64,
    },
    /// The snapshot would exceed `max_snapshot_bytes`.
    TooLarge {
        /// The cap.
        max: u64,
    },
    /// Asked to install a snapshot that was not (completely) received.
    Missing,
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChunkError::NoStart => "snapshot chunk without its start",
            ChunkError::OtherSnapshot => "snapshot chunk of another snapshot",
            ChunkError::Gap { .. } => "snapshot chunk leaves a gap",
            ChunkError::TooLarge { .. } => "incoming snapshot exceeds max_snapshot_bytes",
            ChunkError::Missing => "snapshot to install was not received",
        })
    }
}

/// A failure of the state machine ([`crate::StateMachine`]). It stops the
/// replica: rebuild it from durable state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateMachineError {
    /// Snapshot bytes do not restore (damaged or of another format).
    BadSnapshot,
    /// The state machine disagrees with the log (e.g. restored to another
    /// index than the snapshot's, or asked to apply an index it has). A bug.
    Inconsistent,
    /// The state machine cannot be reached (e.g. a poisoned lock).
    Unavailable,
}

impl fmt::Display for StateMachineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StateMachineError::BadSnapshot => "snapshot does not restore",
            StateMachineError::Inconsistent => "state machine disagrees with the log",
            StateMachineError::Unavailable => "state machine unavailable",
        })
    }
}

/// Why a replica stopped ([`crate::Replica::failure`]). Nothing was promised
/// that was not durable: rebuild the replica from durable state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fatal {
    /// The core stopped (storage read failure, or an acknowledgement out of
    /// order).
    Core(metalraft_core::Error),
    /// The state machine failed.
    StateMachine(StateMachineError),
    /// An incoming snapshot was refused.
    Snapshot(ChunkError),
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fatal::Core(e) => e.fmt(f),
            Fatal::StateMachine(e) => e.fmt(f),
            Fatal::Snapshot(e) => e.fmt(f),
        }
    }
}
