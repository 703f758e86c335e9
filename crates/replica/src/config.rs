//! Replica configuration: the core's [`metalraft_core::Config`] plus every
//! bound of the replica layer, validated once at construction.

use metalraft_core::Config as CoreConfig;

use crate::error::ConfigError;

/// Default: take a snapshot every 10,000 applied entries (etcd's
/// `--snapshot-count` default is 10,000 since v3.6).
pub const DEFAULT_SNAPSHOT_THRESHOLD_ENTRIES: u64 = 10_000;
/// Default: keep 5,000 entries behind a snapshot so a follower that lags a
/// little catches up from the log (etcd's `SnapshotCatchUpEntries`).
pub const DEFAULT_SNAPSHOT_CATCH_UP_ENTRIES: u64 = 5_000;
/// Default: refuse an incoming snapshot above 4 GiB (the server's cap).
pub const DEFAULT_MAX_SNAPSHOT_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Default: at most 64 Ki proposals wait for their entry to apply (the
/// server's `MAX_PENDING_PROPOSALS`).
pub const DEFAULT_MAX_PENDING_PROPOSALS: usize = 64 * 1024;
/// Default: at most 4 Ki linearizable reads wait (the core's default
/// `max_pending_reads`; the replica also counts reads waiting for apply).
pub const DEFAULT_MAX_PENDING_READS: usize = 4096;
/// Default: a proposal or a read still waiting after 600 ticks (a minute at
/// the server's 100 ms tick) completes as unknown / timed out.
pub const DEFAULT_REQUEST_TIMEOUT_TICKS: u64 = 600;
/// Most commands of the state machine's timed actions (lease revokes) that
/// the core refused for a while (a leadership transfer pending, the
/// uncommitted-bytes limit) and that the replica keeps to propose again at
/// the next [`crate::Replica::handle_timeout`]; beyond it they are dropped
/// and the state machine's own retry brings them back (the lessor's
/// `revoke_retry_us`). etcd's lessor revokes at most 1,000 leases a second.
pub const MAX_TIMED_BACKLOG: usize = 4096;

/// How a replica behaves. Build with [`Config::new`], adjust fields; the
/// replica checks it with [`Config::validate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The Raft node's configuration.
    pub core: CoreConfig,
    /// Take a snapshot of the state machine once this many entries were
    /// applied since the last snapshot (taken or installed). The one name for
    /// the snapshot trigger in every realization.
    pub snapshot_threshold_entries: u64,
    /// Entries to keep in the log behind a new snapshot
    /// ([`crate::SnapshotToSave::compact_through`]); capped by
    /// `snapshot_threshold_entries`.
    pub snapshot_catch_up_entries: u64,
    /// Largest snapshot accepted from a leader; a bigger one stops the
    /// replica with [`crate::ChunkError::TooLarge`] before it uses the memory.
    pub max_snapshot_bytes: u64,
    /// Proposals (commands and membership changes) waiting for their entry.
    pub max_pending_proposals: usize,
    /// Linearizable reads waiting for a read index or for apply.
    pub max_pending_reads: usize,
    /// A proposal or read still waiting after this many ticks completes with
    /// [`crate::RequestFailure::Unknown`] / [`crate::RequestFailure::TimedOut`].
    pub request_timeout_ticks: u64,
    /// Report the state machine's apply events ([`crate::Event::Applied`], the
    /// hook for Watch). Off saves the work of collecting them. (The kv store
    /// reports them only with the default feature `kv-events`.)
    pub emit_apply_events: bool,
}

impl Config {
    /// The defaults above for node `id`.
    pub fn new(id: u64) -> Self {
        Config {
            core: CoreConfig::new(id),
            snapshot_threshold_entries: DEFAULT_SNAPSHOT_THRESHOLD_ENTRIES,
            snapshot_catch_up_entries: DEFAULT_SNAPSHOT_CATCH_UP_ENTRIES,
            max_snapshot_bytes: DEFAULT_MAX_SNAPSHOT_BYTES,
            max_pending_proposals: DEFAULT_MAX_PENDING_PROPOSALS,
            max_pending_reads: DEFAULT_MAX_PENDING_READS,
            request_timeout_ticks: DEFAULT_REQUEST_TIMEOUT_TICKS,
            emit_apply_events: true,
        }
    }

    /// Checks the core's configuration and every replica bound (none may be 0).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.core.validate().map_err(ConfigError::Core)?;
        let limits: [(&'static str, u64); 5] = [
            (
                "snapshot_threshold_entries",
                self.snapshot_threshold_entries,
            ),
            ("max_snapshot_bytes", self.max_snapshot_bytes),
            ("max_pending_proposals", self.max_pending_proposals as u64),
            ("max_pending_reads", self.max_pending_reads as u64),
            ("request_timeout_ticks", self.request_timeout_ticks),
        ];
        match limits.iter().find(|(_, v)| *v == 0) {
            Some((name, _)) => Err(ConfigError::ZeroLimit(name)),
            None => Ok(()),
        }
    }
}
