//! Error enums: one small `Copy` enum per operation (see
//! `docs/adr/0004-error-policy.md`). None of them carries a `String`.

use core::fmt;

use crate::types::{Index, NodeId};

/// An invalid [`crate::Config`] or initial state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `id` is [`crate::INVALID_ID`].
    InvalidId,
    /// `heartbeat_interval_ticks` is zero.
    ZeroHeartbeatInterval,
    /// `heartbeat_interval_ticks >= election_timeout_ticks_min`: followers
    /// would time out between heartbeats.
    HeartbeatNotBelowElectionTimeout,
    /// `election_timeout_ticks_min >= election_timeout_ticks_max`.
    EmptyElectionTimeoutRange,
    /// The named limit is zero.
    ZeroLimit(&'static str),
    /// The initial configuration contains [`crate::INVALID_ID`].
    InvalidConfState,
    /// The stored hard state is inconsistent with the stored log
    /// (commit beyond the last index).
    InconsistentHardState,
    /// [`crate::ReadMode::Lease`] without `check_quorum`.
    LeaseWithoutCheckQuorum,
    /// `lease_drift_ticks` is 0 or not below `election_timeout_ticks_min`.
    BadLeaseDrift,
    /// Reading the initial state failed.
    Storage(StorageError),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::InvalidId => f.write_str("node id must not be 0"),
            ConfigError::ZeroHeartbeatInterval => {
                f.write_str("heartbeat interval must be at least 1 tick")
            }
            ConfigError::HeartbeatNotBelowElectionTimeout => {
                f.write_str("heartbeat interval must be shorter than the minimum election timeout")
            }
            ConfigError::EmptyElectionTimeoutRange => {
                f.write_str("election timeout min must be below election timeout max")
            }
            ConfigError::ZeroLimit(name) => write!(f, "limit {name} must be at least 1"),
            ConfigError::InvalidConfState => {
                f.write_str("initial configuration has no valid voters")
            }
            ConfigError::InconsistentHardState => {
                f.write_str("stored commit index is beyond the stored log")
            }
            ConfigError::LeaseWithoutCheckQuorum => f.write_str("lease reads require check_quorum"),
            ConfigError::BadLeaseDrift => f.write_str(
                "lease drift must be at least 1 tick and below the minimum election timeout",
            ),
            ConfigError::Storage(e) => write!(f, "reading initial state: {e}"),
        }
    }
}

/// A failure of the application's [`crate::LogStorage`].
///
/// Contract: when a storage call fails, the node stops (see
/// [`crate::Node::failure`]): every later call returns [`Error::Failed`]. The
/// caller rebuilds the node from durable state, exactly as after a crash.
/// Nothing was promised to peers that was not durable, so this is safe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageError {
    /// The requested index is below the first available index (compacted).
    Compacted,
    /// The requested index is beyond the last stored index.
    Unavailable,
    /// The storage backend failed to read (I/O error, corruption).
    Io,
    /// The snapshot asked for was replaced by a newer one. Not fatal: the
    /// leader restarts the transfer with the current snapshot.
    SnapshotOutOfDate,
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StorageError::Compacted => "log index compacted",
            StorageError::Unavailable => "log index not available",
            StorageError::Io => "storage read failed",
            StorageError::SnapshotOutOfDate => "snapshot replaced by a newer one",
        })
    }
}

/// Why [`crate::Node::propose`] refused a proposal. Nothing was appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProposeError {
    /// This node is not the leader; `leader` is the leader it knows of.
    NotLeader {
        /// The current leader, if known.
        leader: Option<NodeId>,
    },
    /// Accepting the proposal would exceed `max_uncommitted_bytes`.
    UncommittedLimit,
    /// A leadership transfer is in progress (thesis §3.10: the leader stops
    /// accepting proposals meanwhile).
    TransferInProgress,
    /// The node has stopped after a storage failure.
    Failed,
}

impl fmt::Display for ProposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProposeError::NotLeader { leader: Some(l) } => {
                write!(f, "not the leader (leader is {l})")
            }
            ProposeError::NotLeader { leader: None } => {
                f.write_str("not the leader (no leader known)")
            }
            ProposeError::UncommittedLimit => f.write_str("too many uncommitted bytes"),
            ProposeError::TransferInProgress => f.write_str("leadership transfer in progress"),
            ProposeError::Failed => f.write_str("node stopped after a storage failure"),
        }
    }
}

/// Why a message given to [`crate::Node::step`] was dropped. Dropping is
/// normal in an asynchronous network (stale terms, duplicates); every drop is
/// also counted in [`crate::Stats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StepError {
    /// Addressed to another node, or sent by this node or by [`crate::INVALID_ID`].
    Misaddressed,
    /// From an older term; answered or ignored as the protocol says.
    StaleTerm,
    /// A vote request ignored because this node heard from a leader within
    /// the minimum election timeout (check-quorum / pre-vote lease, thesis §4.2.3).
    InLease,
    /// A vote request from a node that is not a voter in this node's
    /// configuration and whose log is behind (thesis §4.2.3: a removed
    /// server must not disrupt the cluster).
    NotMember,
    /// Internally inconsistent (e.g. non-contiguous entries, entry term above
    /// the message term, index overflow).
    Malformed,
    /// Not meaningful for this node's role in this term (e.g. a response to a
    /// request it never sent, from a node it does not track).
    Unexpected,
    /// The node has stopped after a storage failure.
    Failed,
    /// A storage read failed while handling the message; the node has stopped.
    Storage(StorageError),
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepError::Misaddressed => f.write_str("message misaddressed"),
            StepError::StaleTerm => f.write_str("message from a stale term"),
            StepError::InLease => f.write_str("vote request ignored: leader lease holds"),
            StepError::NotMember => {
                f.write_str("vote request ignored: sender is not a voter and its log is behind")
            }
            StepError::Malformed => f.write_str("malformed message"),
            StepError::Unexpected => f.write_str("unexpected message for this role"),
            StepError::Failed => f.write_str("node stopped after a storage failure"),
            StepError::Storage(e) => write!(f, "storage failure: {e}"),
        }
    }
}

/// A failure of an operation other than `step`/`propose`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The node has stopped after a storage failure.
    Failed,
    /// A storage read failed; the node has stopped.
    Storage(StorageError),
    /// [`crate::Node::on_persisted`] was given a token out of order.
    PersistOutOfOrder {
        /// The sequence number the node expected next.
        expected: u64,
        /// The one it got.
        got: u64,
    },
    /// This node cannot campaign (it is a learner or not a member).
    NotPromotable,
    /// This node is repairing its log and may not campaign until a leader
    /// has confirmed it up to `barrier` ([`crate::Config::vote_barrier`]).
    Repairing {
        /// The index the log must reach.
        barrier: Index,
    },
    /// A log index that is not available.
    BadIndex(Index),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Failed => f.write_str("node stopped after a storage failure"),
            Error::Storage(e) => write!(f, "storage failure: {e}"),
            Error::PersistOutOfOrder { expected, got } => {
                write!(
                    f,
                    "persistence acknowledged out of order (expected batch {expected}, got {got})"
                )
            }
            Error::NotPromotable => f.write_str("node is not a voter"),
            Error::Repairing { barrier } => write!(
                f,
                "node is repairing its log (no votes or campaigns until a leader confirms it up to index {barrier})"
            ),
            Error::BadIndex(i) => write!(f, "log index {i} not available"),
        }
    }
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        Error::Storage(e)
    }
}

/// Why a read request failed ([`crate::ReadState::result`] or
/// [`crate::Node::read_index`]). The read was not served; retry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadError {
    /// No leader is known to forward the read to.
    NoLeader,
    /// `max_pending_reads` reads are already pending.
    TooManyPending,
    /// Leadership changed before the read was confirmed.
    LeaderChanged,
    /// A forwarded read got no answer within its deadline.
    TimedOut,
    /// The leader refused the forwarded read (busy or no longer leader).
    Rejected,
    /// The node has stopped after a storage failure.
    Failed,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReadError::NoLeader => "no leader",
            ReadError::TooManyPending => "too many pending reads",
            ReadError::LeaderChanged => "leadership changed before the read was confirmed",
            ReadError::TimedOut => "read index request timed out",
            ReadError::Rejected => "leader refused the read",
            ReadError::Failed => "node stopped after a storage failure",
        })
    }
}

/// Why [`crate::Node::transfer_leader`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransferError {
    /// Only the leader can transfer leadership.
    NotLeader {
        /// The current leader, if known.
        leader: Option<NodeId>,
    },
    /// The target is not a member.
    UnknownNode(NodeId),
    /// The target is a learner and cannot lead.
    Learner(NodeId),
    /// The target is leaving the configuration (outgoing voter only).
    BeingRemoved(NodeId),
    /// The node has stopped after a storage failure.
    Failed,
}

impl fmt::Display for TransferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransferError::NotLeader { .. } => f.write_str("not the leader"),
            TransferError::UnknownNode(id) => write!(f, "node {id} is not a member"),
            TransferError::Learner(id) => write!(f, "node {id} is a learner"),
            TransferError::BeingRemoved(id) => write!(f, "node {id} is being removed"),
            TransferError::Failed => f.write_str("node stopped after a storage failure"),
        }
    }
}

/// Why a membership change was refused. Nothing was appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfChangeError {
    /// Only the leader can propose changes.
    NotLeader {
        /// The current leader, if known.
        leader: Option<NodeId>,
    },
    /// Another change is not yet committed (at most one may be pending).
    ChangePending,
    /// The leader has not yet committed an entry of its own term: until it
    /// has, an earlier leader's uncommitted change may still take effect
    /// (Ongaro, raft-dev 2015, single-server change bug).
    LeaderNotReady,
    /// A joint configuration must be left before the next change.
    InJoint,
    /// Asked to leave a joint configuration, but the configuration is simple.
    NotJoint,
    /// The change would leave no voters.
    NoVoters,
    /// An operation names [`crate::INVALID_ID`].
    InvalidId,
    /// A leadership transfer is in progress.
    TransferInProgress,
    /// The node has stopped after a storage failure.
    Failed,
}

impl fmt::Display for ConfChangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConfChangeError::NotLeader { .. } => "not the leader",
            ConfChangeError::ChangePending => "another membership change is pending",
            ConfChangeError::LeaderNotReady => "leader has not committed an entry of its term yet",
            ConfChangeError::InJoint => "leave the joint configuration first",
            ConfChangeError::NotJoint => "configuration is not joint",
            ConfChangeError::NoVoters => "change would leave no voters",
            ConfChangeError::InvalidId => "invalid node id",
            ConfChangeError::TransferInProgress => "leadership transfer in progress",
            ConfChangeError::Failed => "node stopped after a storage failure",
        })
    }
}
