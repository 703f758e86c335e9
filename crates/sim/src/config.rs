//! Everything a run depends on, drawn from its seed by [`SimConfig::from_seed`].
//!
//! Time is virtual and counted in microseconds (`*_us`); Raft time is counted
//! in ticks (`*_ticks`). Probabilities are parts per million (`*_ppm`). Every
//! bound of the simulator is a named constant below or a field here.

use crate::rng::Rng;
use crate::schedule::Schedule;

/// Virtual microseconds.
pub type Time = u64;

/// Nominal length of one Raft tick in virtual time.
pub const TICK_US_NOMINAL: Time = 1_000;
/// A node's tick period differs from nominal by at most this much (clock skew).
pub const TICK_SKEW_US_MAX: Time = 50;
/// Largest cluster the swarm draws.
pub const VOTERS_MAX: usize = 7;
/// Most spare nodes (started outside the configuration, for membership
/// changes to add).
pub const SPARES_MAX: usize = 2;
/// Most concurrent clients the swarm draws.
pub const CLIENTS_MAX: usize = 6;
/// Most distinct keys the workload touches.
pub const KEYS_MAX: usize = 8;
/// Extra bytes appended to every written value (drawn up to this), so entry
/// sizes vary and byte limits are exercised.
pub const VALUE_PAD_BYTES_MAX: usize = 64;
/// Shortest safety phase (faults on).
pub const SAFETY_TICKS_MIN: u64 = 500;
/// Longest safety phase (exclusive).
pub const SAFETY_TICKS_MAX: u64 = 3_000;
/// Liveness budget: after faults stop, a leader must be elected, every
/// client must complete an operation and all replicas must converge within
/// this many election timeouts (max) ...
pub const LIVENESS_BUDGET_ELECTION_TIMEOUTS: u64 = 12;
/// ... plus this many ticks (plus catch-up time for the most lagging node,
/// computed when the faults stop: see `Simulation::liveness_budget_ticks`).
pub const LIVENESS_BUDGET_TICKS_EXTRA: u64 = 200;
/// Most attempts of one client operation after "not leader"/"busy" replies.
pub const CLIENT_ATTEMPTS_MAX: u32 = 6;
/// Hard cap on processed events per run: a run that reaches it is reported
/// as a liveness failure, never silently cut. The busiest of 400 default
/// seeds processed 354,000 events.
pub const EVENTS_MAX: u64 = 5_000_000;
/// Fail fast on a livelock (a broken core that keeps generating messages
/// without progress): a run may process at most this many events per node
/// and tick of virtual time so far ... (the busiest of 400 default seeds
/// averaged 33)
pub const EVENTS_PER_NODE_TICK_MAX: u64 = 500;
/// ... plus this many.
pub const EVENTS_SLACK: u64 = 100_000;

/// Most watchers a seed draws (a third of the seeds draw none).
pub const WATCHERS_MAX: usize = 4;
/// Keys only the background writer touches (`/sim/t0`, ...), next to the
/// clients' keys (`/sim/k0`, ...), so its multi-key transactions and range
/// deletes stay out of the clients' linearizability check.
pub const BACKGROUND_KEYS: usize = 4;
/// A watcher asks for at least one and at most this many events per
/// response (drawn per watcher; the store never splits a revision, so a
/// response may hold more).
pub const WATCH_BATCH_EVENTS_MAX: usize = 16;
/// A watcher polls its node every `TICK_US_NOMINAL / 2` up to this many
/// ticks (drawn per watcher).
pub const WATCH_POLL_TICKS_MAX: u64 = 5;
/// Most breaks per million polls of a watch stream, on top of crashes and
/// partitions (drawn per seed).
pub const WATCH_BREAK_PPM_MAX: u64 = 40_000;
/// The background writer compacts to at most this many revisions behind
/// the leader's (drawn per seed).
pub const COMPACT_RETENTION_REVISIONS_MAX: u64 = 60;

/// In seeds with snapshots, background writes (two in three of them compactions)
/// come on average at least every this many ticks ...
pub const SNAPSHOT_SEED_BACKGROUND_GAP_TICKS_MAX: u64 = 20;
/// ... and compact to at most this many revisions behind the leader.
pub const SNAPSHOT_SEED_RETENTION_REVISIONS_MAX: u64 = 20;

/// The slowest fsync the disk model draws, tail included: slow disks are
/// long enough that peers answer before a node's own write completes
/// (several network round trips), but stay below the shortest liveness
/// budget's catch-up assumptions.
pub const FSYNC_US_CAP: Time = 30 * TICK_US_NOMINAL;
/// A slow disk's typical fsync is up to this many worst-case network round
/// trips ...
pub const SLOW_DISK_ROUND_TRIPS_MAX: u64 = 4;
/// ... and its heavy tail up to this many more.
pub const DISK_TAIL_ROUND_TRIPS_MAX: u64 = 10;
/// Most fsyncs (parts per million) that fall in a disk's heavy tail.
pub const DISK_TAIL_PPM_MAX: u64 = 80_000;

/// One node's fsync latency distribution: uniform in
/// `fsync_us_min..fsync_us_max`, and with probability `tail_ppm` an extra
/// uniform delay up to `tail_us_max` (a heavy tail: a write stalled behind
/// garbage collection, a flush of the drive cache, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskProfile {
    /// Lower bound of an fsync.
    pub fsync_us_min: Time,
    /// Upper bound of an fsync (exclusive), outside the tail.
    pub fsync_us_max: Time,
    /// Probability that an fsync falls in the tail.
    pub tail_ppm: u32,
    /// Largest extra delay of a tail fsync.
    pub tail_us_max: Time,
}

impl DiskProfile {
    /// Draws one fsync latency.
    pub fn fsync_us(&self, rng: &mut Rng) -> Time {
        let mut t = rng.range(self.fsync_us_min, self.fsync_us_max);
        if self.tail_ppm > 0 && rng.chance_ppm(self.tail_ppm) {
            t += rng.range(0, self.tail_us_max + 1);
        }
        t
    }

    /// The slowest fsync this profile can draw.
    pub fn fsync_us_worst(&self) -> Time {
        self.fsync_us_max + self.tail_us_max
    }
}

/// Per-seed fault rates. All zero in a "calm" seed and in the liveness phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultConfig {
    /// Probability a message is dropped, per delivery attempt.
    pub drop_ppm: u32,
    /// Probability a message is delivered twice.
    pub duplicate_ppm: u32,
    /// Probability a message is held back by `reorder_delay_us_max` extra.
    pub reorder_ppm: u32,
    /// Extra delay of a reordered message (upper bound).
    pub reorder_delay_us_max: Time,
    /// Mean gap between two fault actions (crash, partition, pause, ...).
    pub fault_gap_us_mean: Time,
    /// Relative weight of crashing a node.
    pub crash_weight: u32,
    /// Relative weight of a crash that also tears the last unsynced write.
    pub torn_crash_weight: u32,
    /// Relative weight of restarting a crashed node.
    pub restart_weight: u32,
    /// Relative weight of a new partition (symmetric, asymmetric or bridge).
    pub partition_weight: u32,
    /// Relative weight of healing the network.
    pub heal_weight: u32,
    /// Relative weight of pausing a node (a slow node).
    pub pause_weight: u32,
    /// Relative weight of asking the leader to transfer leadership.
    pub transfer_weight: u32,
    /// Relative weight of asking the leader for a membership change (add
    /// or remove a voter or learner; sometimes two at once, via joint
    /// consensus). Zero in seeds without membership changes.
    pub conf_change_weight: u32,
    /// Longest pause.
    pub pause_us_max: Time,
    /// Most nodes down at once (may be all of them: safety must hold anyway).
    pub down_max: usize,
    /// Probability that a crash also damages one durable log frame of the
    /// crashed node at rest (bit rot, found at its restart: mid-log
    /// damage, repaired from its peers). Zero unless `--bit-rot`; only
    /// while no other node has damage pending or a repair in progress.
    pub rot_ppm: u32,
}

/// How a client read (`get`) is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadPath {
    /// Proposed as a `metalraft_kv::Command::Range` and answered when applied.
    Log,
    /// `Node::read_index` on the receiving node (followers forward to the
    /// leader; thesis §6.4), answered from the local store once applied.
    ReadIndex,
    /// As `ReadIndex` with `ReadMode::Lease` (thesis §6.4.1). Its clock
    /// assumption excludes process pauses, so these seeds do not pause nodes.
    Lease,
}

/// Workload shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadConfig {
    /// How reads are served.
    pub read_path: ReadPath,
    /// Concurrent clients, each with at most one operation outstanding.
    pub clients: usize,
    /// Distinct keys.
    pub keys: usize,
    /// Client think time between operations (upper bound).
    pub think_us_max: Time,
    /// One-way latency between a client and any node.
    pub client_latency_us: Time,
    /// A client gives up on an attempt after this long: outcome unknown.
    pub client_timeout_us: Time,
    /// Extra bytes per written value.
    pub value_pad_bytes: usize,
    /// Relative weights of the operation kinds.
    pub put_weight: u32,
    /// Reads (ordered through the log: see the crate docs).
    pub get_weight: u32,
    /// Single-key deletes.
    pub delete_weight: u32,
    /// Compare-and-set transactions.
    pub cas_weight: u32,
}

/// The keys a watcher watches (etcd's `key` and `range_end`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchRange {
    /// One key.
    Key(Vec<u8>),
    /// Every key with this prefix.
    Prefix(Vec<u8>),
    /// Every key from this one on (`range_end = "\0"`).
    FromKey(Vec<u8>),
}

impl WatchRange {
    /// etcd's (`key`, `range_end`).
    pub fn bounds(&self) -> (Vec<u8>, Vec<u8>) {
        match self {
            WatchRange::Key(k) => (k.clone(), Vec::new()),
            WatchRange::Prefix(p) => (p.clone(), metalraft_kv::prefix_end(p)),
            WatchRange::FromKey(k) => (k.clone(), vec![0]),
        }
    }
}

impl std::fmt::Display for WatchRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WatchRange::Key(k) => write!(f, "{}", String::from_utf8_lossy(k)),
            WatchRange::Prefix(p) => write!(f, "{}*", String::from_utf8_lossy(p)),
            WatchRange::FromKey(k) => write!(f, "{}..", String::from_utf8_lossy(k)),
        }
    }
}

/// Where a watcher starts, resolved against its first node's revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchStart {
    /// etcd's `start_revision = 0`: the node's revision + 1.
    Now,
    /// This many revisions before the node's revision (at least 1): past
    /// events replayed from history (possibly compacted).
    Past(i64),
    /// This many revisions after the node's revision + 1: waits.
    Future(i64),
}

/// One simulated watch client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatcherSpec {
    /// What it watches.
    pub range: WatchRange,
    /// Where it starts.
    pub start: WatchStart,
    /// Most events it asks for per response.
    pub batch_max: usize,
    /// How often it polls its node when caught up.
    pub poll_us: Time,
    /// When it is created.
    pub created_us: Time,
}

/// Watchers and the background writer (compactions, multi-key
/// transactions and range deletes) of one seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchConfig {
    /// The watchers.
    pub watchers: Vec<WatcherSpec>,
    /// Probability a poll finds its stream broken (a dropped connection).
    pub break_ppm: u32,
    /// Mean gap between background writes (0: none).
    pub background_gap_us_mean: Time,
    /// Relative weight of a compaction among background writes.
    pub compact_weight: u32,
    /// Relative weight of a multi-key transaction.
    pub txn_weight: u32,
    /// Relative weight of a range delete of every background key.
    pub delete_range_weight: u32,
    /// A compaction goes to the leader's revision minus up to this many.
    pub compact_retention_revisions_max: u64,
}

impl WatchConfig {
    /// Draws the watch workload of a seed with `keys` client keys and a
    /// safety phase of `safety_ticks`.
    pub fn draw(r: &mut Rng, keys: usize, safety_ticks: u64) -> Self {
        let n = if r.range(0, 3) == 0 {
            0
        } else {
            1 + r.index(WATCHERS_MAX)
        };
        let key = |r: &mut Rng| -> Vec<u8> {
            if r.coin() {
                format!("/sim/k{}", r.index(keys)).into_bytes()
            } else {
                format!("/sim/t{}", r.index(BACKGROUND_KEYS)).into_bytes()
            }
        };
        let watchers = (0..n)
            .map(|_| {
                let range = match r.range(0, 6) {
                    0 | 1 => WatchRange::Key(key(r)),
                    2 => WatchRange::Prefix(b"/sim/".to_vec()),
                    3 => WatchRange::Prefix(if r.coin() { b"/sim/k" } else { b"/sim/t" }.to_vec()),
                    _ => WatchRange::FromKey(key(r)),
                };
                let start = match r.range(0, 4) {
                    0 | 1 => WatchStart::Now,
                    2 => WatchStart::Past(r.range(0, 80) as i64),
                    _ => WatchStart::Future(1 + r.range(0, 20) as i64),
                };
                WatcherSpec {
                    range,
                    start,
                    batch_max: 1 + r.index(WATCH_BATCH_EVENTS_MAX),
                    poll_us: TICK_US_NOMINAL / 2
                        + r.range(0, WATCH_POLL_TICKS_MAX * TICK_US_NOMINAL),
                    created_us: r.range(0, safety_ticks * TICK_US_NOMINAL / 2),
                }
            })
            .collect();
        let background = r.range(0, 4) != 0;
        WatchConfig {
            watchers,
            break_ppm: r.range(0, WATCH_BREAK_PPM_MAX + 1) as u32,
            background_gap_us_mean: if background {
                TICK_US_NOMINAL * (5 + r.range(0, 80))
            } else {
                0
            },
            compact_weight: 1 + r.range(0, 3) as u32,
            txn_weight: 1 + r.range(0, 4) as u32,
            delete_range_weight: r.range(0, 2) as u32,
            compact_retention_revisions_max: r.range(0, COMPACT_RETENTION_REVISIONS_MAX + 1),
        }
    }

    /// Seeds that snapshot also compact, often and close behind: a
    /// snapshot carries the history since the last compaction, so without
    /// compaction a lagging follower's catch-up (by chunks as small as 64
    /// bytes) grows with the whole run and overruns the liveness budget,
    /// which no deployment that snapshots would run (etcd's
    /// auto-compaction). At least two background writes in three are
    /// compactions, on average every [`SNAPSHOT_SEED_BACKGROUND_GAP_TICKS_MAX`]
    /// ticks at most, to at most [`SNAPSHOT_SEED_RETENTION_REVISIONS_MAX`]
    /// revisions behind.
    pub fn compact_for_snapshots(&mut self) {
        let gap_max = SNAPSHOT_SEED_BACKGROUND_GAP_TICKS_MAX * TICK_US_NOMINAL;
        if self.background_gap_us_mean == 0 || self.background_gap_us_mean > gap_max {
            self.background_gap_us_mean = gap_max;
        }
        self.compact_weight = self
            .compact_weight
            .max(2 * (self.txn_weight + self.delete_range_weight));
        self.compact_retention_revisions_max = self
            .compact_retention_revisions_max
            .min(SNAPSHOT_SEED_RETENTION_REVISIONS_MAX);
    }

    /// The watchers in short: `/sim/k1@now,/sim/*@-5`.
    pub fn summary(&self) -> String {
        if self.watchers.is_empty() {
            return "none".into();
        }
        let w: Vec<String> = self
            .watchers
            .iter()
            .map(|w| {
                let start = match w.start {
                    WatchStart::Now => "now".to_string(),
                    WatchStart::Past(n) => format!("-{n}"),
                    WatchStart::Future(n) => format!("+{n}"),
                };
                format!("{}@{start}", w.range)
            })
            .collect();
        w.join(",")
    }
}

/// Simulated microseconds per second of lease time. Lease TTLs are whole
/// seconds (etcd's unit), and a run lasts a few simulated seconds: the
/// simulator's lease clock runs [`LEASE_CLOCK_SCALE`] times faster than its
/// Raft clock, so a lease second is 20 ticks and a TTL a few election
/// timeouts, as in a deployment (etcd's minimum TTL is 1.5 election
/// timeouts).
pub const LEASE_SECOND_US: Time = 20 * TICK_US_NOMINAL;
/// Lease-clock microseconds per simulated microsecond.
pub const LEASE_CLOCK_SCALE: u64 = 1_000_000 / LEASE_SECOND_US;
const _: () = assert!(LEASE_CLOCK_SCALE * LEASE_SECOND_US == 1_000_000);
/// Lease clients per seed.
pub const LEASE_CLIENTS: usize = 2;
/// TTLs are drawn from the minimum up to this many seconds above it.
pub const LEASE_TTL_SPREAD_SECS: i64 = 3;
/// A client keeps a lease alive for up to this many TTLs, then stops.
pub const LEASE_KEEPALIVE_TTLS_MAX: u64 = 3;
/// Keepalives per TTL (etcd's clients send one every TTL/3).
pub const LEASE_KEEPALIVES_PER_TTL: u64 = 3;
/// Chance that a client revokes its lease when it stops keeping it alive
/// (otherwise it lets it expire).
pub const LEASE_REVOKE_PPM: u32 = 250_000;
/// With `--bit-rot`, the chance that a crash damages a durable frame is
/// drawn per seed from this ...
pub const ROT_PPM_MIN: u64 = 50_000;
/// ... to this (parts per million of crashes).
pub const ROT_PPM_MAX: u64 = 400_000;
/// Mid-log damage is injected only in clusters with at least this many
/// initial voters: with fewer, the other voters are no quorum without the
/// damaged one, which abstains until repaired, so no leader could repair it.
pub const ROT_VOTERS_MIN: usize = 3;
/// The RNG stream the bit-rot rate is drawn from.
const ROT_RNG_STREAM: u64 = 0xB17_207;
/// The RNG stream the lease configuration is drawn from.
const LEASE_RNG_STREAM: u64 = 0x1ea5e;

/// Lease clients of one seed (`sim/leases.rs`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Number of lease clients.
    pub clients: usize,
    /// Smallest TTL granted (seconds of lease time): etcd's minimum,
    /// `ceil(1.5 × election timeout)`, with the largest election timeout.
    pub ttl_secs_min: i64,
    /// Largest TTL granted.
    pub ttl_secs_max: i64,
}

impl LeaseConfig {
    /// The lease clients for a cluster whose election timeout is below
    /// `election_timeout_ticks_max`.
    pub fn draw(r: &mut Rng, election_timeout_ticks_max: u32) -> Self {
        let election_us = u64::from(election_timeout_ticks_max) * TICK_US_NOMINAL;
        let min = (3 * election_us / 2).div_ceil(LEASE_SECOND_US).max(1) as i64;
        LeaseConfig {
            clients: LEASE_CLIENTS,
            ttl_secs_min: min,
            ttl_secs_max: min + r.range(0, LEASE_TTL_SPREAD_SECS as u64 + 1) as i64,
        }
    }
}

/// The whole configuration of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// The seed everything was drawn from (and the run's RNG seed).
    pub seed: u64,
    /// Number of initial voters (node ids `1..=voters`).
    pub voters: usize,
    /// Spare nodes (ids `voters + 1..=voters + spares`): running, with an
    /// empty log and configuration, until a membership change adds them.
    pub spares: usize,
    /// Per node tick period (index = id - 1).
    pub tick_us: Vec<Time>,
    /// Raft heartbeat interval.
    pub heartbeat_interval_ticks: u32,
    /// Raft election timeout lower bound.
    pub election_timeout_ticks_min: u32,
    /// Raft election timeout upper bound (exclusive).
    pub election_timeout_ticks_max: u32,
    /// Raft pre-vote.
    pub pre_vote: bool,
    /// Raft check-quorum.
    pub check_quorum: bool,
    /// Raft limit: entries per AppendEntries.
    pub max_entries_per_msg: usize,
    /// Raft limit: unacknowledged appends per follower.
    pub max_inflight_msgs: usize,
    /// Raft limit: committed entry bytes per Ready.
    pub max_apply_bytes: usize,
    /// A node snapshots its store and compacts its log every this many
    /// applied entries (0: never).
    pub snapshot_threshold_entries: u64,
    /// Raft limit: snapshot bytes per InstallSnapshot message.
    pub max_snapshot_chunk_bytes: usize,
    /// Lower bound of one-way network latency on a link.
    pub latency_us_min: Time,
    /// Upper bound of the per-link base latency.
    pub latency_us_max: Time,
    /// Lower bound of an fsync.
    pub fsync_us_min: Time,
    /// Upper bound of an fsync (exclusive).
    pub fsync_us_max: Time,
    /// Per node fsync latency (index = id - 1), drawn around
    /// `fsync_us_min..fsync_us_max`; on many seeds some or all disks are
    /// slow, with a heavy tail (see [`SimConfig::draw_disks`]).
    pub disks: Vec<DiskProfile>,
    /// The targeted fault schedule of this seed, on top of the random
    /// faults (see `schedule.rs`).
    pub schedule: Schedule,
    /// Fault rates of the safety phase.
    pub faults: FaultConfig,
    /// Client workload.
    pub workload: WorkloadConfig,
    /// Watchers and background writes.
    pub watch: WatchConfig,
    /// Lease clients (grants, attached keys, keepalives, revokes).
    pub leases: LeaseConfig,
    /// Length of the safety phase.
    pub safety_ticks: u64,
    /// Tick budget of the liveness phase.
    pub liveness_budget_ticks: u64,
}

/// Optional parts of the swarm, chosen on the command line. A seed names a
/// run only together with its knobs (the replay command carries them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Knobs {
    /// Drive membership changes (spare nodes, add/remove voters and
    /// learners, joint consensus). On by default (`--no-membership` turns
    /// it off): the core's membership bugs of `KNOWN_CORE_BUGS.md` are
    /// fixed, and the `--membership` swarms over seeds `0..2000` pass.
    pub membership: bool,
    /// Take snapshots and compact logs; lagging followers then catch up by
    /// chunked InstallSnapshot.
    pub snapshots: bool,
    /// Run lease clients and the lease checker (`--leases`). Off by
    /// default: their traffic changes every seed's schedule, and with it
    /// `--snapshots` seed 56 runs into an open core liveness bug
    /// (`KNOWN_CORE_BUGS.md`); CI runs a fixed `--leases` range.
    pub leases: bool,
    /// A torn crash keeps an arbitrary subset of the unsynced 512-byte
    /// sectors, not only a prefix (`--torn-sectors`; `disk.rs`).
    pub torn_sectors: bool,
    /// A crash may damage a durable log frame at rest; the node repairs it
    /// from its peers behind a vote barrier (`--bit-rot`; `disk.rs`,
    /// ADR 0021).
    pub bit_rot: bool,
}

impl Default for Knobs {
    /// Membership changes on; snapshots, lease clients and the extra disk
    /// faults off.
    fn default() -> Self {
        Knobs {
            membership: true,
            snapshots: false,
            leases: false,
            torn_sectors: false,
            bit_rot: false,
        }
    }
}

impl Knobs {
    /// The command-line flags that select these knobs (for replay commands).
    pub fn flags(&self) -> String {
        let mut f = String::new();
        if !self.membership {
            f.push_str(" --no-membership");
        }
        if self.snapshots {
            f.push_str(" --snapshots");
        }
        if self.leases {
            f.push_str(" --leases");
        }
        if self.torn_sectors {
            f.push_str(" --torn-sectors");
        }
        if self.bit_rot {
            f.push_str(" --bit-rot");
        }
        f
    }
}

impl SimConfig {
    /// The configuration of `seed` with `knobs` (see [`SimConfig::from_seed`]).
    /// Turning a knob off changes only what it governs: the other draws of
    /// the seed stay the same.
    pub fn from_seed_with(seed: u64, knobs: Knobs) -> Self {
        let mut c = Self::from_seed(seed);
        if !knobs.membership {
            c.spares = 0;
            c.tick_us.truncate(c.voters);
            c.disks.truncate(c.voters);
            c.faults.conf_change_weight = 0;
            c.faults.down_max = c.faults.down_max.min(c.voters);
        }
        if !knobs.leases {
            c.leases.clients = 0;
        }
        if !knobs.snapshots {
            c.snapshot_threshold_entries = 0;
        } else {
            c.watch.compact_for_snapshots();
        }
        if knobs.bit_rot {
            // From a stream of its own, so the other draws stay as they were.
            c.faults.rot_ppm = Rng::new(seed)
                .fork(ROT_RNG_STREAM)
                .range(ROT_PPM_MIN, ROT_PPM_MAX + 1) as u32;
        }
        c
    }

    /// Draws a configuration from `seed`, with every knob on. Roughly a quarter of the seeds are
    /// "calm" (no message loss), the rest draw fault rates up to harsh.
    pub fn from_seed(seed: u64) -> Self {
        let mut r = Rng::new(seed).fork(0xC0F1);
        let voters = 1 + r.index(VOTERS_MAX);
        let membership = r.coin();
        let spares = if membership {
            r.index(SPARES_MAX + 1)
        } else {
            0
        };
        let tick_us = (0..voters + spares)
            .map(|_| TICK_US_NOMINAL - TICK_SKEW_US_MAX + r.range(0, 2 * TICK_SKEW_US_MAX + 1))
            .collect();
        let heartbeat_interval_ticks = 1 + r.range(0, 3) as u32;
        let election_timeout_ticks_min =
            (heartbeat_interval_ticks * 5).max(8) + r.range(0, 12) as u32;
        let election_timeout_ticks_max = election_timeout_ticks_min + 1 + r.range(0, 15) as u32;
        let latency_us_min = 20 + r.range(0, 200);
        let latency_us_max = latency_us_min + 1 + r.range(0, 3_000);
        let calm = r.range(0, 4) == 0;
        let harsh = |r: &mut Rng, max: u64| if calm { 0 } else { r.range(0, max) as u32 };
        let faults = FaultConfig {
            drop_ppm: harsh(&mut r, 150_000),
            duplicate_ppm: harsh(&mut r, 50_000),
            reorder_ppm: harsh(&mut r, 100_000),
            reorder_delay_us_max: 1 + r.range(0, 5 * TICK_US_NOMINAL),
            fault_gap_us_mean: TICK_US_NOMINAL * (5 + r.range(0, 60)),
            crash_weight: harsh(&mut r, 10),
            torn_crash_weight: harsh(&mut r, 5),
            restart_weight: 10,
            partition_weight: harsh(&mut r, 10),
            heal_weight: 6,
            pause_weight: harsh(&mut r, 6),
            transfer_weight: harsh(&mut r, 4),
            conf_change_weight: if membership {
                1 + r.range(0, 6) as u32
            } else {
                0
            },
            pause_us_max: TICK_US_NOMINAL * (1 + r.range(0, 40)),
            down_max: 1 + r.index(voters + spares),
            rot_ppm: 0,
        };
        let clients = 1 + r.index(CLIENTS_MAX);
        let read_path = match r.range(0, 5) {
            0 | 1 => ReadPath::Log,
            2 | 3 => ReadPath::ReadIndex,
            _ => ReadPath::Lease,
        };
        let mut faults = faults;
        if read_path == ReadPath::Lease {
            faults.pause_weight = 0;
        }
        let workload = WorkloadConfig {
            read_path,
            clients,
            keys: 1 + r.index(KEYS_MAX),
            think_us_max: r.range(0, 3 * TICK_US_NOMINAL),
            client_latency_us: 10 + r.range(0, 500),
            client_timeout_us: u64::from(election_timeout_ticks_max)
                * TICK_US_NOMINAL
                * (2 + r.range(0, 4)),
            value_pad_bytes: r.index(VALUE_PAD_BYTES_MAX + 1),
            put_weight: 4,
            get_weight: 4,
            delete_weight: 1 + r.range(0, 2) as u32,
            cas_weight: 1 + r.range(0, 3) as u32,
        };
        let fsync_us_min = 20 + r.range(0, 300);
        let fsync_us_max = 400 + r.range(0, 3_000);
        let safety_ticks = r.range(SAFETY_TICKS_MIN, SAFETY_TICKS_MAX);
        // New draws come from streams of their own, so that the draws above
        // (and what seeds were chosen for in tests) stay as they were.
        let disks = Self::draw_disks(
            &mut Rng::new(seed).fork(0xD15C),
            voters + spares,
            (fsync_us_min, fsync_us_max),
            latency_us_max,
            u64::from(election_timeout_ticks_min) * TICK_US_NOMINAL,
        );
        let schedule = Schedule::draw(&mut Rng::new(seed).fork(0x5C4E));
        let watch = WatchConfig::draw(
            &mut Rng::new(seed).fork(0x3A7C),
            workload.keys,
            safety_ticks,
        );
        let mut cfg = SimConfig {
            seed,
            voters,
            spares,
            tick_us,
            heartbeat_interval_ticks,
            election_timeout_ticks_min,
            election_timeout_ticks_max,
            pre_vote: r.range(0, 4) != 0,
            // Lease reads require check-quorum.
            check_quorum: r.coin() || read_path == ReadPath::Lease,
            max_entries_per_msg: [1, 4, 64, 256][r.index(4)],
            max_inflight_msgs: [1, 4, 256][r.index(3)],
            max_apply_bytes: [1, 4096, 1 << 20][r.index(3)],
            snapshot_threshold_entries: [10, 50, 200][r.index(3)],
            max_snapshot_chunk_bytes: [64, 1024, 1 << 20][r.index(3)],
            latency_us_min,
            latency_us_max,
            fsync_us_min,
            fsync_us_max,
            disks,
            schedule,
            faults,
            workload,
            watch,
            // Follows the election timeout: set below.
            leases: LeaseConfig::default(),
            safety_ticks,
            // Follows the election timeout: set by meet_election_timing.
            liveness_budget_ticks: 0,
        };
        cfg.meet_election_timing();
        // From a stream of its own, so the draws above stay as they were.
        cfg.leases = LeaseConfig::draw(
            &mut Rng::new(seed).fork(LEASE_RNG_STREAM),
            cfg.election_timeout_ticks_max,
        );
        cfg
    }

    /// Raft's timing requirement (paper §5.6): the spread of randomized
    /// election timeouts must exceed the time a candidate needs to reach
    /// its voters — its own fsync (vote requests wait until its term is
    /// durable) plus a one-way latency — or two candidates that time out
    /// within that window split the vote, round after round (a 2-voter
    /// cluster with a 1-tick spread never elects anyone). The spread is
    /// widened to twice that broadcast time, so that a round fails with
    /// roughly even odds at worst; the liveness budget follows.
    fn meet_election_timing(&mut self) {
        // The slowest disk's usual fsync (its rare tail is left out: a
        // round lost to it is retried).
        let fsync_us_max = self
            .disks
            .iter()
            .map(|d| d.fsync_us_max)
            .chain([self.fsync_us_max])
            .max()
            .unwrap_or(self.fsync_us_max);
        let broadcast_us = fsync_us_max + self.latency_us_max;
        let spread_ticks_min = (2 * broadcast_us).div_ceil(TICK_US_NOMINAL) as u32 + 1;
        let max = self.election_timeout_ticks_min + spread_ticks_min;
        self.election_timeout_ticks_max = self.election_timeout_ticks_max.max(max);
        self.liveness_budget_ticks = LIVENESS_BUDGET_ELECTION_TIMEOUTS
            * u64::from(self.election_timeout_ticks_max)
            + LIVENESS_BUDGET_TICKS_EXTRA;
    }

    /// Per node disks. A fifth of the seeds keep every disk fast (`fsync`
    /// uniform in the seed's base range); the others make one node, a
    /// random minority or every node slow: slower than any fast disk plus a
    /// network round trip, a typical fsync of up to
    /// [`SLOW_DISK_ROUND_TRIPS_MAX`] worst-case network round trips, so
    /// that votes and acknowledgements from peers arrive while a node's own
    /// write is still in flight (the window in which a crash loses what a
    /// node has already told others), and a heavy tail of up to
    /// [`DISK_TAIL_ROUND_TRIPS_MAX`] more round trips. A typical slow fsync
    /// stays below half the minimum election timeout and every fsync below
    /// the timeout (and [`FSYNC_US_CAP`]): with slower disks no election
    /// could finish in time.
    pub fn draw_disks(
        r: &mut Rng,
        nodes: usize,
        (base_min, base_max): (Time, Time),
        latency_us_max: Time,
        election_timeout_us_min: Time,
    ) -> Vec<DiskProfile> {
        let rtt = 2 * latency_us_max;
        // An election needs a vote round trip with an fsync on each side
        // well within an election timeout, or no leader may ever win: no
        // deployment runs disks that slow, so neither do we.
        let typical_max = (election_timeout_us_min / 2).min(FSYNC_US_CAP / 2);
        let worst = election_timeout_us_min.min(FSYNC_US_CAP);
        let fast = DiskProfile {
            fsync_us_min: base_min,
            fsync_us_max: base_max,
            tail_ppm: 0,
            tail_us_max: 0,
        };
        // Which nodes are slow: none, one, a minority, or all.
        let slow: Vec<bool> = match r.range(0, 5) {
            0 => vec![false; nodes],
            1 | 2 => {
                let one = r.index(nodes);
                (0..nodes).map(|i| i == one).collect()
            }
            3 => (0..nodes).map(|_| r.range(0, 3) == 0).collect(),
            _ => vec![true; nodes],
        };
        slow.into_iter()
            .map(|slow| {
                if !slow {
                    return fast;
                }
                // Slower than any fast disk plus a network round trip.
                let max = typical_max.max(base_max + 2);
                let min = (base_max + r.range(rtt / 2, 2 * rtt + 1))
                    .min(max / 2)
                    .max(base_min);
                let max =
                    (min + 1 + r.range(rtt / 2, SLOW_DISK_ROUND_TRIPS_MAX * rtt + 1)).min(max);
                let min = min.min(max - 1);
                let tail_ppm = r.range(0, DISK_TAIL_PPM_MAX + 1) as u32;
                let tail_us_max = r
                    .range(rtt, DISK_TAIL_ROUND_TRIPS_MAX * rtt + 1)
                    .min(worst.saturating_sub(max));
                DiskProfile {
                    fsync_us_min: min,
                    fsync_us_max: max,
                    tail_ppm,
                    tail_us_max,
                }
            })
            .collect()
    }

    /// The slowest fsync of any node.
    pub fn fsync_us_worst(&self) -> Time {
        self.disks
            .iter()
            .map(DiskProfile::fsync_us_worst)
            .max()
            .unwrap_or(self.fsync_us_max)
    }

    /// Number of node slots: initial voters and spares.
    pub fn nodes(&self) -> usize {
        self.voters + self.spares
    }

    /// A Raft [`metalraft_core::Config`] for node `id` in incarnation `incarnation`.
    pub fn core_config(&self, id: u64, incarnation: u32) -> metalraft_core::Config {
        let mut c = metalraft_core::Config::new(id);
        c.heartbeat_interval_ticks = self.heartbeat_interval_ticks;
        c.election_timeout_ticks_min = self.election_timeout_ticks_min;
        c.election_timeout_ticks_max = self.election_timeout_ticks_max;
        c.pre_vote = self.pre_vote;
        c.check_quorum = self.check_quorum;
        c.max_entries_per_msg = self.max_entries_per_msg;
        c.max_inflight_msgs = self.max_inflight_msgs;
        c.max_apply_bytes = self.max_apply_bytes;
        c.max_snapshot_chunk_bytes = self.max_snapshot_chunk_bytes;
        c.rng_seed = self.seed ^ (u64::from(incarnation) << 48);
        if self.workload.read_path == ReadPath::Lease {
            c.read_mode = metalraft_core::ReadMode::Lease;
        }
        c
    }

    /// The replica configuration of node `id` in incarnation `incarnation`:
    /// the core's ([`SimConfig::core_config`]) and the snapshot threshold
    /// (none without snapshots); a snapshot compacts the whole log behind it.
    pub fn replica_config(&self, id: u64, incarnation: u32) -> metalraft_replica::Config {
        let mut c = metalraft_replica::Config::new(id);
        c.core = self.core_config(id, incarnation);
        c.snapshot_threshold_entries = match self.snapshot_threshold_entries {
            0 => u64::MAX,
            n => n,
        };
        c.snapshot_catch_up_entries = 0;
        c.max_pending_reads = c.core.max_pending_reads;
        // The replica's watch feed: judged against the committed history.
        c.emit_apply_events = true;
        c
    }

    /// One line describing the run, printed by `run` and in failure reports.
    pub fn summary(&self) -> String {
        format!(
            "seed={} voters={} spares={} conf_changes={} snapshot_threshold={} clients={} keys={} reads={:?} hb={} et={}..{} prevote={} checkquorum={} \
             drop={}ppm dup={}ppm reorder={}ppm latency={}..{}us fsync={}..{}us disks={} schedule={} watchers={} background={}us safety={}ticks",
            self.seed,
            self.voters,
            self.spares,
            self.faults.conf_change_weight > 0,
            self.snapshot_threshold_entries,
            self.workload.clients,
            self.workload.keys,
            self.workload.read_path,
            self.heartbeat_interval_ticks,
            self.election_timeout_ticks_min,
            self.election_timeout_ticks_max,
            self.pre_vote,
            self.check_quorum,
            self.faults.drop_ppm,
            self.faults.duplicate_ppm,
            self.faults.reorder_ppm,
            self.latency_us_min,
            self.latency_us_max,
            self.fsync_us_min,
            self.fsync_us_max,
            self.disks_summary(),
            self.schedule,
            self.watch.summary(),
            self.watch.background_gap_us_mean,
            self.safety_ticks,
        ) + &if self.faults.rot_ppm > 0 {
            format!(" rot={}ppm", self.faults.rot_ppm)
        } else {
            String::new()
        }
    }
}

impl SimConfig {
    /// The disks in short: `fast`, or per slow node
    /// `n<id>:<min>..<max>us+tail<ppm>ppm/<max>us`.
    fn disks_summary(&self) -> String {
        let slow: Vec<String> = self
            .disks
            .iter()
            .enumerate()
            .filter(|(_, d)| d.fsync_us_min > self.fsync_us_max || d.tail_ppm > 0)
            .map(|(i, d)| {
                format!(
                    "n{}:{}..{}us+tail{}ppm/{}us",
                    i + 1,
                    d.fsync_us_min,
                    d.fsync_us_max,
                    d.tail_ppm,
                    d.tail_us_max
                )
            })
            .collect();
        if slow.is_empty() {
            "fast".into()
        } else {
            slow.join(",")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_deterministic_valid_and_varied() {
        let mut sizes = [0usize; VOTERS_MAX + 1];
        for seed in 0..500 {
            let c = SimConfig::from_seed(seed);
            assert_eq!(c, SimConfig::from_seed(seed));
            assert!((1..=VOTERS_MAX).contains(&c.voters));
            assert!(c.core_config(1, 0).validate().is_ok(), "seed {seed}");
            assert!(c.fsync_us_min < c.fsync_us_max);
            assert_eq!(c.disks.len(), c.nodes());
            for d in &c.disks {
                assert!(d.fsync_us_min < d.fsync_us_max, "seed {seed}: {d:?}");
                assert!(d.fsync_us_worst() <= FSYNC_US_CAP.max(c.fsync_us_max));
            }
            assert!(c.workload.clients >= 1 && c.workload.keys >= 1);
            sizes[c.voters] += 1;
        }
        assert!(
            sizes[1..].iter().all(|&n| n > 0),
            "every size drawn: {sizes:?}"
        );
    }
}
