//! Node configuration, validated once at construction.

use crate::error::ConfigError;
use crate::types::{NodeId, INVALID_ID};

/// Default: heartbeat every tick.
pub const DEFAULT_HEARTBEAT_INTERVAL_TICKS: u32 = 1;
/// Default lower bound of the randomized election timeout (thesis §9.3 suggests
/// an order of magnitude above the heartbeat interval).
pub const DEFAULT_ELECTION_TIMEOUT_TICKS_MIN: u32 = 10;
/// Default upper bound (exclusive) of the randomized election timeout.
pub const DEFAULT_ELECTION_TIMEOUT_TICKS_MAX: u32 = 20;
/// Default maximum entries in one AppendEntries.
pub const DEFAULT_MAX_ENTRIES_PER_MSG: usize = 256;
/// Default maximum entry bytes in one AppendEntries.
pub const DEFAULT_MAX_BYTES_PER_MSG: usize = 1024 * 1024;
/// Default maximum unacknowledged AppendEntries per follower.
pub const DEFAULT_MAX_INFLIGHT_MSGS: usize = 256;
/// Default maximum unacknowledged entry bytes per follower.
pub const DEFAULT_MAX_INFLIGHT_BYTES: usize = 32 * 1024 * 1024;
/// Default maximum bytes of proposed but uncommitted entries on a leader.
pub const DEFAULT_MAX_UNCOMMITTED_BYTES: usize = 64 * 1024 * 1024;
/// Default maximum entry bytes handed to the application in one [`crate::Ready`].
pub const DEFAULT_MAX_APPLY_BYTES: usize = 64 * 1024 * 1024;

/// Default maximum bytes of snapshot data in one InstallSnapshot message.
pub const DEFAULT_MAX_SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Default maximum unacknowledged snapshot chunks per follower.
pub const DEFAULT_MAX_SNAPSHOT_CHUNKS_INFLIGHT: usize = 4;

/// Default maximum read requests a node tracks at once.
pub const DEFAULT_MAX_PENDING_READS: usize = 4096;
/// Default clock-drift allowance of lease reads, in ticks.
pub const DEFAULT_LEASE_DRIFT_TICKS: u32 = 2;

/// How linearizable reads are confirmed (thesis §6.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// ReadIndex: every read batch is confirmed by a heartbeat round to a
    /// quorum. Safe under any clock behaviour.
    Safe,
    /// Leader lease: while a quorum acknowledged a heartbeat round sent less
    /// than `election_timeout_ticks_min - lease_drift_ticks` ticks ago, the
    /// leader answers at once. Assumes every node's tick rate differs by
    /// less than `lease_drift_ticks` per `election_timeout_ticks_min` ticks.
    /// Requires `check_quorum` (followers then refuse votes within the
    /// lease).
    Lease,
}

/// How a node behaves. Build with [`Config::new`] and adjust fields; the node
/// validates it with [`Config::validate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node's id (never [`INVALID_ID`]).
    pub id: NodeId,
    /// A leader sends heartbeats every this many ticks.
    pub heartbeat_interval_ticks: u32,
    /// A follower starts an election after a random timeout in
    /// `[election_timeout_ticks_min, election_timeout_ticks_max)` without
    /// hearing from a leader. Also the check-quorum period of a leader.
    pub election_timeout_ticks_min: u32,
    /// Exclusive upper bound of the randomized election timeout.
    pub election_timeout_ticks_max: u32,
    /// Run a pre-vote round before a real election (thesis §9.6), so a node
    /// rejoining after a partition does not disrupt a working leader.
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum within
    /// `election_timeout_ticks_min` steps down (thesis §6.2).
    ///
    /// Independent of this flag, a node that heard from a leader within
    /// that time ignores (non-transfer) vote requests, taking neither their
    /// term nor granting them (thesis §4.2.3, ADR 0036): removed servers
    /// cannot depose a working leader even through a member whose
    /// configuration still lists them. Without check-quorum, a leader that
    /// reaches followers but cannot hear them keeps those followers from
    /// voting until the link heals; turn it on (the server and firmware do).
    pub check_quorum: bool,
    /// Maximum entries in one AppendEntries (>= 1).
    pub max_entries_per_msg: usize,
    /// Maximum entry bytes in one AppendEntries; one entry is always sent even
    /// if larger, so a large entry cannot block replication.
    pub max_bytes_per_msg: usize,
    /// Maximum AppendEntries with entries outstanding per follower.
    pub max_inflight_msgs: usize,
    /// Maximum entry bytes outstanding per follower.
    pub max_inflight_bytes: usize,
    /// Maximum bytes of proposed but not yet committed entries on a leader;
    /// beyond it [`crate::Node::propose`] fails with
    /// [`crate::ProposeError::UncommittedLimit`].
    pub max_uncommitted_bytes: usize,
    /// Maximum entry bytes of committed entries returned by one `ready()`
    /// (at least one entry is always returned).
    pub max_apply_bytes: usize,
    /// Seed of the PRNG that draws election timeouts.
    pub rng_seed: u64,
    /// How reads are confirmed.
    pub read_mode: ReadMode,
    /// Clock-drift allowance of [`ReadMode::Lease`], in ticks
    /// (`1 <= lease_drift_ticks < election_timeout_ticks_min`).
    pub lease_drift_ticks: u32,
    /// Maximum read requests tracked at once (local, forwarded and, on a
    /// leader, received from followers).
    pub max_pending_reads: usize,
    /// Maximum snapshot bytes per InstallSnapshot message.
    pub max_snapshot_chunk_bytes: usize,
    /// Maximum unacknowledged snapshot chunks per follower.
    pub max_snapshot_chunks_inflight: usize,
    /// Restart option for a member whose log lost entries it may have
    /// acknowledged (the caller found mid-log damage and kept only the valid
    /// prefix): the highest index it may have acknowledged. While set the
    /// node grants no votes or pre-votes and never campaigns; it clears once
    /// a leader has confirmed this node's log up to that index (an accepted
    /// append or an installed snapshot reaching it), and the clearing is
    /// handed out in a [`crate::Persist`] batch
    /// ([`crate::Persist::clears_vote_barrier`]) for the caller to make
    /// durable. `None` (the default) for a whole log. See ADR 0021.
    pub vote_barrier: Option<crate::types::Index>,
}

impl Config {
    /// A configuration with the defaults above for node `id`.
    pub fn new(id: NodeId) -> Self {
        Config {
            id,
            heartbeat_interval_ticks: DEFAULT_HEARTBEAT_INTERVAL_TICKS,
            election_timeout_ticks_min: DEFAULT_ELECTION_TIMEOUT_TICKS_MIN,
            election_timeout_ticks_max: DEFAULT_ELECTION_TIMEOUT_TICKS_MAX,
            pre_vote: true,
            check_quorum: true,
            max_entries_per_msg: DEFAULT_MAX_ENTRIES_PER_MSG,
            max_bytes_per_msg: DEFAULT_MAX_BYTES_PER_MSG,
            max_inflight_msgs: DEFAULT_MAX_INFLIGHT_MSGS,
            max_inflight_bytes: DEFAULT_MAX_INFLIGHT_BYTES,
            max_uncommitted_bytes: DEFAULT_MAX_UNCOMMITTED_BYTES,
            max_apply_bytes: DEFAULT_MAX_APPLY_BYTES,
            rng_seed: 0,
            read_mode: ReadMode::Safe,
            lease_drift_ticks: DEFAULT_LEASE_DRIFT_TICKS,
            max_pending_reads: DEFAULT_MAX_PENDING_READS,
            max_snapshot_chunk_bytes: DEFAULT_MAX_SNAPSHOT_CHUNK_BYTES,
            max_snapshot_chunks_inflight: DEFAULT_MAX_SNAPSHOT_CHUNKS_INFLIGHT,
            vote_barrier: None,
        }
    }

    /// Checks every field and every relationship between fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == INVALID_ID {
            return Err(ConfigError::InvalidId);
        }
        if self.heartbeat_interval_ticks == 0 {
            return Err(ConfigError::ZeroHeartbeatInterval);
        }
        if self.heartbeat_interval_ticks >= self.election_timeout_ticks_min {
            return Err(ConfigError::HeartbeatNotBelowElectionTimeout);
        }
        if self.election_timeout_ticks_min >= self.election_timeout_ticks_max {
            return Err(ConfigError::EmptyElectionTimeoutRange);
        }
        let limits = [
            ("max_entries_per_msg", self.max_entries_per_msg),
            ("max_bytes_per_msg", self.max_bytes_per_msg),
            ("max_inflight_msgs", self.max_inflight_msgs),
            ("max_inflight_bytes", self.max_inflight_bytes),
            ("max_uncommitted_bytes", self.max_uncommitted_bytes),
            ("max_apply_bytes", self.max_apply_bytes),
            ("max_pending_reads", self.max_pending_reads),
            ("max_snapshot_chunk_bytes", self.max_snapshot_chunk_bytes),
            (
                "max_snapshot_chunks_inflight",
                self.max_snapshot_chunks_inflight,
            ),
        ];
        if self.read_mode == ReadMode::Lease {
            if !self.check_quorum {
                return Err(ConfigError::LeaseWithoutCheckQuorum);
            }
            if self.lease_drift_ticks == 0
                || self.lease_drift_ticks >= self.election_timeout_ticks_min
            {
                return Err(ConfigError::BadLeaseDrift);
            }
        }
        if let Some((name, _)) = limits.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::ZeroLimit(name));
        }
        Ok(())
    }
}
