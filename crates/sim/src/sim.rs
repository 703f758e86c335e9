//! The simulation loop: a priority queue of events in virtual time, the
//! nodes, the network, the disks and the clients, wired to the checkers.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap};

use metalraft_core::{EntryData, Index, Message, MessageBody, NodeId, Role, SoftState, StepError};
use metalraft_kv::RangeRequest;
use metalraft_replica::MvccEvent;
use metalraft_replica::{
    Completion, Event as ReplicaEvent, Outcome as ReplicaOutcome, ProposeError, ReqId,
    RequestFailure,
};

use crate::checkers::{
    check_batch_start, check_durability, check_leader_commit, check_linearizable, check_liveness,
    check_log_matching, check_node_event, check_node_revision, describe, CommittedChecker,
    DurableStateChecker, ElectionChecker, LeaderCompletenessChecker, LeaseChecker,
    LinearizabilityReport, LivenessSnapshot, LogEntrySummary, NodeProgress, ReferenceHistory,
    RepairChecker, StateMachineChecker, StepDownChecker, Violation, WatchChecker,
    LEASE_EXPIRY_SLACK_US,
};
use crate::config::{
    ReadPath, SimConfig, Time, CLIENT_ATTEMPTS_MAX, EVENTS_MAX, EVENTS_PER_NODE_TICK_MAX,
    EVENTS_SLACK, TICK_US_NOMINAL,
};
use crate::disk::{Disk, DiskFaults};
use crate::history::{ClientId, History, KeyId, OpId, OpKind, OpOutput, Outcome};
use crate::machine::{Applied, LeaseBug, SimMachine};
use crate::network::{Network, Route};
use crate::payload::{entry_digest, entry_op, sim_command, SimPayload};
use crate::replica::{Live, Replica, SimNode, SimReplica};
use crate::rng::Rng;
use crate::timeline::{NodeEvent, Timeline};
use crate::trace::{Actor, Trace, TraceKind};
use crate::workload::{self, ClientGen};

mod clients;
mod faults;
mod leases;
mod liveness;
mod targeted;
mod watch;

/// A client waits this long before retrying when no leader is known.
pub const NO_LEADER_BACKOFF_US: Time = TICK_US_NOMINAL;
/// A crashed node restarts after between this many ...
pub const DOWNTIME_TICKS_MIN: u64 = 5;
/// ... and this many ticks (exclusive).
pub const DOWNTIME_TICKS_MAX: u64 = 80;
/// How often the liveness phase polls for recovery.
pub const LIVENESS_POLL_US: Time = TICK_US_NOMINAL;

/// Deliberate defects for proving that the checkers catch real bugs
/// end to end (used by tests; a normal run has none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sabotage {
    /// No defect.
    #[default]
    None,
    /// The disk acknowledges a batch before it is durable (a lying fsync).
    AckBeforeSync,
    /// Reads are answered from the receiving node's local state machine
    /// without going through the log.
    LocalReads,
    /// The run panics at its start (for testing the swarm's handling of
    /// panics).
    Panic,
    /// Every delivered message is delivered again a microsecond later, and
    /// again, forever: traffic grows without bound and nothing finishes (a
    /// livelock, for testing that runs fail fast).
    Storm,
    /// Watchers drop the first event of every fifth non-empty response.
    WatchSkipsEvent,
    /// Watchers deliver the last event of every fifth non-empty response
    /// twice.
    WatchDuplicatesEvent,
    /// A watcher whose stream broke resumes at the last revision it reached
    /// instead of last + 1.
    WatchResumesAtLast,
    /// The stores' history replay (`changes`, what watchers read) drops the
    /// changes of `/sim/k0` and `/sim/t0`.
    HistoryDropsKey,
    /// The leaders' lease clocks run twice as fast: leases expire at half
    /// their TTL ([`LeaseBug::HalfTtl`]).
    LeaseHalfTtl,
    /// A new leader does not restart lease countdowns at its promotion
    /// ([`LeaseBug::PromoteFromEpoch`]).
    LeasePromoteFromEpoch,
    /// Leaders never find a lease expired ([`LeaseBug::NeverExpire`]).
    LeaseNeverExpires,
    /// A node that found mid-log damage restarts without
    /// `Config::vote_barrier` (it votes and campaigns at once, ADR 0021's
    /// unsafe alternative).
    NoVoteBarrier,
}

impl Sabotage {
    /// The lease defect this sabotage injects into every node's state
    /// machine.
    pub fn lease_bug(self) -> LeaseBug {
        match self {
            Sabotage::LeaseHalfTtl => LeaseBug::HalfTtl,
            Sabotage::LeasePromoteFromEpoch => LeaseBug::PromoteFromEpoch,
            Sabotage::LeaseNeverExpires => LeaseBug::NeverExpire,
            _ => LeaseBug::None,
        }
    }

    /// The sabotage `run --lease-bug NAME` selects (`half-ttl`,
    /// `promote-from-epoch`, `never-expire`), to replay a lease-teeth run.
    pub fn from_lease_bug_name(name: &str) -> Option<Sabotage> {
        match name {
            "half-ttl" => Some(Sabotage::LeaseHalfTtl),
            "promote-from-epoch" => Some(Sabotage::LeasePromoteFromEpoch),
            "never-expire" => Some(Sabotage::LeaseNeverExpires),
            _ => None,
        }
    }
}

/// What to record besides the fingerprint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Render the text trace.
    pub trace: bool,
    /// Record the timeline (for `--html`).
    pub timeline: bool,
    /// A deliberate defect (tests only).
    pub sabotage: Sabotage,
    /// Optional parts of the swarm.
    pub knobs: crate::config::Knobs,
}

/// Counters of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Events processed.
    pub events: u64,
    /// Messages delivered to a running node.
    pub deliveries: u64,
    /// Messages lost (dropped, partitioned or sent to a crashed node).
    pub lost: u64,
    /// Node ticks.
    pub ticks: u64,
    /// Virtual time simulated.
    pub sim_time_us: Time,
    /// Crashes (including torn ones).
    pub crashes: u64,
    /// Crashes with a torn final write.
    pub torn_writes: u64,
    /// Partitions installed.
    pub partitions: u64,
    /// Pauses.
    pub pauses: u64,
    /// Leadership transfers requested.
    pub transfers: u64,
    /// Membership changes the leader accepted.
    pub conf_changes: u64,
    /// Fsyncs completed.
    pub fsyncs: u64,
    /// Terms that had a leader.
    pub leader_terms: u64,
    /// Targeted faults carried out (`schedule.rs`; also counted as
    /// crashes, partitions or transfers).
    pub targeted: u64,
    /// Watch events delivered to watchers and checked.
    pub watch_events: u64,
    /// Watch streams broken (crash, partition, dropped connection) and resumed.
    pub watch_breaks: u64,
    /// Watch requests canceled because their revision was compacted.
    pub watch_cancels: u64,
    /// Background writes (compactions, transactions, range deletes) the
    /// leader accepted.
    pub background_writes: u64,
    /// Compactions committed and accepted by the store.
    pub compactions: u64,
    /// Keepalives a leader accepted.
    pub lease_keepalives: u64,
    /// Leases gone because a leader found them expired.
    pub lease_expiries: u64,
    /// Leases revoked by their clients.
    pub lease_revokes: u64,
    /// The largest time a lease outlived its deadline under a stable
    /// leader (liveness phase; bounded by `LEASE_EXPIRY_SLACK_US`).
    pub lease_lateness_max_us: Time,
    /// Sector tearing: whole frames a recovery dropped because an earlier
    /// frame was torn.
    pub torn_frames_after_gap: u64,
    /// Durable frames damaged at rest (bit rot).
    pub rot_damaged: u64,
    /// Mid-log damage found at a restart (a repair started or resumed
    /// with a higher barrier).
    pub repairs_found: u64,
    /// Repairs completed: every lost index was given back by a leader.
    pub repairs_done: u64,
}

impl RunStats {
    /// Faults injected (crashes, partitions, pauses, transfers, membership changes).
    pub fn faults(&self) -> u64 {
        self.crashes + self.partitions + self.pauses + self.transfers + self.conf_changes
    }
}

/// The result of one run.
#[derive(Debug)]
pub struct RunReport {
    /// The configuration drawn from the seed.
    pub config: SimConfig,
    /// The first violation found, if any.
    pub violation: Option<Violation>,
    /// Fingerprint of the whole event trace.
    pub fingerprint: u64,
    /// Counters.
    pub stats: RunStats,
    /// The client history.
    pub history: History,
    /// What the linearizability check covered (absent if it did not run).
    pub linearizability: Option<LinearizabilityReport>,
    /// The text trace, if requested.
    pub trace: Option<String>,
    /// The timeline, if requested.
    pub timeline: Option<Timeline>,
}

#[derive(Debug)]
enum Reply {
    Redirect(Option<NodeId>),
    Busy,
    Done(OpOutput),
    Failed,
    Unknown,
}

#[derive(Debug)]
enum Event {
    Tick {
        node: usize,
        inc: u32,
    },
    /// A message, the receiver's incarnation it was sent to, and the
    /// sender's incarnation.
    Deliver(Message<SimPayload>, u32, u32),
    DiskDone {
        node: usize,
        inc: u32,
    },
    Request {
        node: usize,
        client: ClientId,
        op: OpId,
        attempt: u32,
    },
    Reply {
        client: ClientId,
        op: OpId,
        attempt: u32,
        reply: Reply,
    },
    Timeout {
        client: ClientId,
        op: OpId,
        attempt: u32,
    },
    ClientWake {
        client: ClientId,
    },
    Fault,
    Restart {
        node: usize,
    },
    Liveness,
    Poll,
    Targeted(targeted::Action),
    WatchConnect {
        watcher: usize,
    },
    WatchPoll {
        watcher: usize,
        stream: u32,
    },
    WatchReply {
        watcher: usize,
        stream: u32,
        node: usize,
        reply: watch::WatchReply,
    },
    Background,
    LeaseClient {
        client: usize,
    },
    KeepAlive {
        node: usize,
        lease: i64,
        relayed: bool,
    },
}

struct Scheduled {
    time: Time,
    seq: u64,
    event: Event,
}
impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.time, self.seq) == (o.time, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.time, self.seq).cmp(&(o.time, o.seq))
    }
}

struct Current {
    pos: usize,
    id: OpId,
    key: KeyId,
    kind: OpKind,
    attempt: u32,
    /// The command proposed for it ([`sim_command`]).
    command: Vec<u8>,
}

struct Client {
    gen: ClientGen,
    current: Option<Current>,
    hint: Option<usize>,
    ok_since_calm: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Safety,
    Liveness { deadline: Time, start: Time },
}

/// One simulated cluster run. Build with [`Simulation::new`], consume with
/// [`Simulation::run`].
pub struct Simulation {
    cfg: SimConfig,
    opts: RunOptions,
    now: Time,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    replicas: Vec<Replica>,
    net: Network,
    clients: Vec<Client>,
    history: History,
    rng_net: Rng,
    rng_fault: Rng,
    rng_client: Rng,
    rng_disk: Rng,
    rng_sched: Rng,
    rng_watch: Rng,
    rng_lease: Rng,
    /// Bit rot (`--bit-rot`): which crashes damage a frame, and which.
    rng_rot: Rng,
    targeted: targeted::TargetedState,
    election: ElectionChecker,
    completeness: LeaderCompletenessChecker,
    state_machine: StateMachineChecker,
    durable: DurableStateChecker,
    committed: CommittedChecker,
    step_down: StepDownChecker,
    repair: RepairChecker,
    committed_at: BTreeMap<OpId, Index>,
    /// The committed MVCC history, replayed independently of the stores.
    reference: ReferenceHistory,
    /// Its applied index, shared with every node's `SimMachine`.
    history_end: std::rc::Rc<std::cell::Cell<Index>>,
    watch: WatchChecker,
    watchers: Vec<watch::Watcher>,
    lease: LeaseChecker,
    lease_clients: Vec<leases::LeaseClient>,
    /// In the liveness phase: the leader, its term, and when it was first
    /// seen with its whole log committed (stable: from then on it commits
    /// new entries within a round trip and an fsync).
    lease_stable: Option<(NodeId, metalraft_core::Term, Option<Time>)>,
    /// Background writes proposed so far (their op ids, below any client's).
    background: OpId,
    /// Request id of the last membership change proposed.
    conf_req: ReqId,
    trace: Trace,
    timeline: Timeline,
    stats: RunStats,
    phase: Phase,
    finished: bool,
}

type Step = Result<(), Violation>;

/// A node's whole log: its first index (after any compacted prefix) and
/// its entries from there, durable or not.
fn full_log(
    id: NodeId,
    node: &SimNode,
) -> Result<(Index, Vec<metalraft_core::Entry<SimPayload>>), Violation> {
    use metalraft_core::LogStorage as _;
    let first = node.storage().first_index().map_err(|e| core_err(id, e))?;
    let last = node.last_index().map_err(|e| core_err(id, e))?;
    if first > last {
        return Ok((first, Vec::new()));
    }
    let entries = node
        .entries(first, last + 1, usize::MAX)
        .map_err(|e| core_err(id, e))?;
    Ok((first, entries))
}

/// (term, digest) of `storage`'s entry at `index`, if it holds it.
fn stored_entry(
    storage: &metalraft_core::MemStorage<SimPayload>,
    index: Index,
) -> Option<(metalraft_core::Term, u64)> {
    use metalraft_core::LogStorage as _;
    let first = storage.first_index().ok()?;
    let e = storage
        .all_entries()
        .get(usize::try_from(index.checked_sub(first)?).ok()?)?;
    Some((e.term, entry_digest(e)))
}

/// `node` reports commit index `commit` over the log in `storage`.
fn observe_commit(
    checker: &mut CommittedChecker,
    node: NodeId,
    storage: &metalraft_core::MemStorage<SimPayload>,
    commit: Index,
) -> Result<(), Violation> {
    use metalraft_core::LogStorage as _;
    let last = storage.last_index().map_err(|e| core_err(node, e))?;
    checker.observe_commit(node, commit, last, |i| stored_entry(storage, i))
}

/// Judges a Persist batch before it is written: it must not start on a
/// stored entry of the same term (truncating matching entries), nor write
/// a different entry at or below the node's reported commit index.
fn check_persist_entries(
    node: NodeId,
    n: &SimNode,
    p: &metalraft_core::Persist<SimPayload>,
    committed: &CommittedChecker,
) -> Result<(), Violation> {
    let Some(head) = p.entries().first() else {
        return Ok(());
    };
    let stored = stored_entry(n.storage(), head.index).map(|(t, _)| t);
    check_batch_start(node, head.index, head.term, stored)?;
    for e in p.entries() {
        committed.observe_write(node, e.index, (e.term, entry_digest(e)))?;
    }
    Ok(())
}

/// The positions a message carries, for the text trace.
fn brief(body: &MessageBody<SimPayload>) -> String {
    match body {
        MessageBody::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
        } => format!(
            " prev={prev_log_index}/{prev_log_term} n={} commit={leader_commit}",
            entries.len()
        ),
        MessageBody::AppendEntriesResponse { index, reject } => match reject {
            None => format!(" ack={index}"),
            Some(h) => format!(
                " reject={index} hint={}/{}{}",
                h.hint_index,
                h.hint_term,
                if h.is_lost_entries() { " lost" } else { "" }
            ),
        },
        MessageBody::Heartbeat { commit, .. } => format!(" commit={commit}"),
        _ => String::new(),
    }
}

fn core_err(node: NodeId, e: impl std::fmt::Display) -> Violation {
    Violation::CoreError {
        node,
        error: e.to_string(),
    }
}

impl Simulation {
    /// A cluster in its initial state: every node bootstrapped with the
    /// same configuration, every client idle.
    pub fn new(cfg: SimConfig, opts: RunOptions) -> Self {
        let mut root = Rng::new(cfg.seed);
        let mut rng_net = root.fork(1);
        let net = Network::new(&cfg, &mut rng_net);
        let voters: Vec<NodeId> = (1..=cfg.voters as NodeId).collect();
        let lying = opts.sabotage == Sabotage::AckBeforeSync;
        let disk_faults = DiskFaults {
            torn_sectors: opts.knobs.torn_sectors,
            bit_rot: opts.knobs.bit_rot,
        };
        let replicas = (0..cfg.nodes())
            .map(|i| Replica {
                id: i as NodeId + 1,
                incarnation: 0,
                live: None,
                disk: if i < cfg.voters {
                    Disk::bootstrap(&voters, lying)
                } else {
                    Disk::spare(lying)
                }
                .with_faults(disk_faults),
                paused_until: 0,
                tick_us: cfg.tick_us[i],
                last_role: None,
            })
            .collect();
        let clients = (0..cfg.workload.clients)
            .map(|c| Client {
                gen: ClientGen::new(c),
                current: None,
                hint: None,
                ok_since_calm: false,
            })
            .collect();
        Simulation {
            opts,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            replicas,
            net,
            clients,
            history: History::default(),
            rng_net,
            rng_fault: root.fork(2),
            rng_client: root.fork(3),
            rng_disk: root.fork(4),
            rng_sched: root.fork(5),
            rng_watch: root.fork(6),
            rng_lease: root.fork(7),
            rng_rot: root.fork(8),
            targeted: targeted::TargetedState::default(),
            election: ElectionChecker::default(),
            completeness: LeaderCompletenessChecker::default(),
            state_machine: StateMachineChecker::default(),
            durable: DurableStateChecker::default(),
            committed: CommittedChecker::default(),
            step_down: StepDownChecker::default(),
            repair: RepairChecker::default(),
            committed_at: BTreeMap::new(),
            reference: ReferenceHistory::new(),
            history_end: Default::default(),
            watch: WatchChecker::new(cfg.watch.watchers.len()),
            watchers: cfg.watch.watchers.iter().map(watch::Watcher::new).collect(),
            lease: LeaseChecker::new(),
            lease_clients: (0..cfg.leases.clients)
                .map(|_| leases::LeaseClient::default())
                .collect(),
            lease_stable: None,
            background: 0,
            conf_req: 0,
            trace: Trace::new(opts.trace),
            timeline: Timeline::default(),
            stats: RunStats::default(),
            phase: Phase::Safety,
            finished: false,
            cfg,
        }
    }

    fn at(&mut self, time: Time, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            time,
            seq: self.seq,
            event,
        }));
    }

    /// Runs the safety phase, the liveness phase and the final checks.
    pub fn run(mut self) -> RunReport {
        let (violation, linearizability) = match self.run_inner() {
            Ok(lin) => (None, Some(lin)),
            Err(v) => (Some(v), None),
        };
        self.stats.sim_time_us = self.now;
        self.stats.leader_terms = self.election.terms_with_leader() as u64;
        self.stats.fsyncs = self.replicas.iter().map(|r| r.disk.fsyncs()).sum();
        self.stats.targeted = self.targeted.fired;
        self.stats.compactions = self.reference.compactions() as u64;
        self.stats.lease_keepalives = self.lease.keepalives;
        self.stats.lease_expiries = self.lease.expired;
        self.stats.lease_revokes = self.lease.revoked_by_clients;
        self.stats.lease_lateness_max_us = self.lease.lateness_max_us;
        self.stats.repairs_done = self.repair.repaired;
        self.timeline.end = self.now;
        RunReport {
            violation,
            fingerprint: self.trace.fingerprint(),
            stats: self.stats,
            linearizability,
            trace: self.trace.text().map(str::to_string),
            timeline: self
                .opts
                .timeline
                .then(|| std::mem::take(&mut self.timeline)),
            history: std::mem::take(&mut self.history),
            config: self.cfg,
        }
    }
}

impl Simulation {
    fn run_inner(&mut self) -> Result<LinearizabilityReport, Violation> {
        assert!(
            self.opts.sabotage != Sabotage::Panic,
            "sabotage: a deliberate panic in seed {}",
            self.cfg.seed
        );
        self.trace
            .record(0, Actor::Sim, TraceKind::Phase, 0, 0, || {
                "safety phase".into()
            });
        for i in 0..self.replicas.len() {
            self.restart(i)?;
        }
        for c in 0..self.clients.len() {
            let t = workload::think(&self.cfg.workload, &mut self.rng_client);
            self.at(t, Event::ClientWake { client: c });
        }
        let first_fault = self.fault_gap();
        self.at(first_fault, Event::Fault);
        for w in 0..self.watchers.len() {
            let t = self.cfg.watch.watchers[w].created_us;
            self.at(t, Event::WatchConnect { watcher: w });
        }
        let mean = self.cfg.watch.background_gap_us_mean;
        if mean > 0 {
            let t = 1 + self.rng_watch.range(0, 2 * mean);
            self.at(t, Event::Background);
        }
        for c in 0..self.lease_clients.len() {
            let t = 1 + self.rng_lease.range(0, leases::LEASE_CLIENT_START_US_MAX);
            self.at(t, Event::LeaseClient { client: c });
        }
        self.at(self.cfg.safety_ticks * TICK_US_NOMINAL, Event::Liveness);
        while let Some(Reverse(s)) = self.queue.pop() {
            self.now = s.time;
            self.stats.events += 1;
            if let Some(v) = self.event_cap_reached() {
                return Err(v);
            }
            if let Err(v) = self.handle(s.event) {
                if matches!(v, Violation::Liveness { .. }) {
                    // A stuck cluster may hide a safety bug: judge what
                    // happened so far, and report a safety violation first.
                    self.final_checks(false)?;
                }
                return Err(v);
            }
            if self.finished {
                return self.final_checks(true);
            }
        }
        Err(Violation::Liveness {
            what: "event queue ran dry".into(),
        })
    }

    /// A livelock verdict once the run has processed far more events than
    /// a healthy cluster does in its virtual time, or `EVENTS_MAX`.
    fn event_cap_reached(&self) -> Option<Violation> {
        let events = self.stats.events;
        let ticks = self.now / TICK_US_NOMINAL;
        let rate_cap = EVENTS_PER_NODE_TICK_MAX * self.replicas.len() as u64 * ticks + EVENTS_SLACK;
        if events <= rate_cap.min(EVENTS_MAX) {
            return None;
        }
        Some(Violation::Liveness {
            what: format!(
                "livelock: {events} events in {ticks} ticks (cap {} per node and tick, {EVENTS_MAX} in all): \
                 the cluster keeps working without finishing",
                EVENTS_PER_NODE_TICK_MAX
            ),
        })
    }

    fn handle(&mut self, ev: Event) -> Step {
        match ev {
            Event::Tick { node, inc } => self.on_tick(node, inc),
            Event::Deliver(m, to_inc, from_inc) => self.on_deliver(m, to_inc, from_inc),
            Event::DiskDone { node, inc } => self.on_disk_done(node, inc),
            Event::Request {
                node,
                client,
                op,
                attempt,
            } => self.on_request(node, client, op, attempt),
            Event::Reply {
                client,
                op,
                attempt,
                reply,
            } => self.on_reply(client, op, attempt, reply),
            Event::Timeout {
                client,
                op,
                attempt,
            } => {
                let matches = self.clients[client]
                    .current
                    .as_ref()
                    .is_some_and(|c| c.id == op && c.attempt == attempt);
                if matches {
                    self.clients[client].hint = None;
                    self.complete(client, Outcome::Unknown);
                }
                Ok(())
            }
            Event::ClientWake { client } => {
                self.invoke(client);
                Ok(())
            }
            Event::Fault => self.on_fault(),
            Event::Restart { node } => self.restart(node),
            Event::Liveness => self.on_liveness_start(),
            Event::Poll => self.on_poll(),
            Event::Targeted(a) => self.on_targeted(a),
            Event::WatchConnect { watcher } => self.on_watch_connect(watcher),
            Event::WatchPoll { watcher, stream } => self.on_watch_poll(watcher, stream),
            Event::WatchReply {
                watcher,
                stream,
                node,
                reply,
            } => self.on_watch_reply(watcher, stream, node, reply),
            Event::Background => self.on_background(),
            Event::LeaseClient { client } => self.on_lease_client(client),
            Event::KeepAlive {
                node,
                lease,
                relayed,
            } => self.on_keepalive(node, lease, relayed),
        }
    }

    /// Defers `ev` if `node` is paused; returns whether it was deferred.
    fn defer_if_paused(&mut self, node: usize, ev: impl FnOnce() -> Event) -> bool {
        let until = self.replicas[node].paused_until;
        if until > self.now {
            let e = ev();
            self.at(until, e);
            true
        } else {
            false
        }
    }

    fn on_tick(&mut self, node: usize, inc: u32) -> Step {
        let r = &self.replicas[node];
        if r.incarnation != inc || r.live.is_none() {
            return Ok(());
        }
        if self.defer_if_paused(node, || Event::Tick { node, inc }) {
            return Ok(());
        }
        self.stats.ticks += 1;
        let r = &mut self.replicas[node];
        let id = r.id;
        if let Some((Role::Leader, term)) = r.last_role {
            self.step_down.observe_leader_action(id, term, self.now)?;
        }
        let next = self.now + r.tick_us;
        if let Some(live) = r.live.as_mut() {
            live.replica.tick().map_err(|e| core_err(id, e))?;
        }
        self.at(next, Event::Tick { node, inc });
        self.drive(node)
    }

    fn on_deliver(&mut self, m: Message<SimPayload>, to_inc: u32, from_inc: u32) -> Step {
        let node = (m.to - 1) as usize;
        if self.replicas[node].live.is_none() {
            self.stats.lost += 1;
            return Ok(());
        }
        let inc = self.replicas[node].incarnation;
        if inc != to_inc && self.lost_to_restart(node) {
            // The connection died with an earlier incarnation: the sender
            // sees it fail and reconnects.
            self.net.heard_from(m.from, m.to, inc);
            self.stats.lost += 1;
            return Ok(());
        }
        if self.replicas[node].paused_until > self.now {
            let until = self.replicas[node].paused_until;
            self.at(until, Event::Deliver(m, to_inc, from_inc));
            return Ok(());
        }
        self.net.heard_from(m.to, m.from, from_inc);
        if self.opts.sabotage == Sabotage::Storm {
            self.at(self.now + 1, Event::Deliver(m.clone(), to_inc, from_inc));
        }
        self.stats.deliveries += 1;
        let (from, to, term, kind) = (m.from, m.to, m.term, m.body.kind());
        let body = &m.body;
        self.trace.record(
            self.now,
            Actor::Node(to),
            TraceKind::Deliver,
            from,
            term,
            || format!("n{from}->n{to} {kind:?} t{term}{}", brief(body)),
        );
        let id = self.replicas[node].id;
        self.observe_higher_term(node, &m);
        if let Some(live) = self.replicas[node].live.as_mut() {
            match live.replica.step(m) {
                Ok(()) => {}
                Err(e @ (StepError::Storage(_) | StepError::Failed)) => {
                    return Err(core_err(id, e))
                }
                Err(_) => {} // stale, duplicate, unexpected: dropped and counted by the core
            }
        }
        self.drive(node)
    }

    fn on_disk_done(&mut self, node: usize, inc: u32) -> Step {
        let r = &self.replicas[node];
        if r.incarnation != inc || r.live.is_none() {
            return Ok(());
        }
        if self.defer_if_paused(node, || Event::DiskDone { node, inc }) {
            return Ok(());
        }
        loop {
            let r = &mut self.replicas[node];
            let id = r.id;
            let Some((token, changed)) = r.disk.complete_next(self.now) else {
                return Ok(());
            };
            if changed {
                let hs = r.disk.durable_hard_state();
                let last = r.disk.durable_last_index();
                self.durable.observe_durable(id, hs)?;
                self.trace.record(
                    self.now,
                    Actor::Node(id),
                    TraceKind::Synced,
                    hs.term,
                    last,
                    || {
                        format!(
                            "durable term={} vote={:?} commit={} last={last}",
                            hs.term, hs.vote, hs.commit
                        )
                    },
                );
            }
            if let Some(live) = self.replicas[node].live.as_mut() {
                live.replica
                    .on_persisted(token)
                    .map_err(|e| core_err(id, e))?;
            }
            // Release what the batch unblocked before the next one completes.
            self.drive(node)?;
        }
    }

    /// Carries out everything the replica asks for until it has nothing to
    /// do: its persistence batch goes to the simulated disk, its messages to
    /// the network, its completions to the clients, its snapshot to the disk;
    /// what its state machine applied goes to the checkers.
    fn drive(&mut self, node: usize) -> Step {
        // The replica's clock, as the server's loop gives it before every
        // poll: a promotion in this poll restarts the lease countdowns now,
        // and a leader's due leases are revoked through the log.
        if let Some(live) = self.replicas[node].live.as_mut() {
            live.replica
                .handle_timeout(metalraft_replica::Instant(self.now));
            let notes = live.replica.state_machine().take_lease_notes();
            if !notes.is_empty() {
                self.observe_lease_notes(node, notes)?;
            }
        }
        loop {
            let r = &mut self.replicas[node];
            let id = r.id;
            let Some(live) = r.live.as_mut() else {
                return Ok(());
            };
            let Some(out) = live.replica.poll() else {
                // A poll that applied entries but had nothing to hand out
                // (no apply events: no-ops, reads, refusals) still applied
                // them: judge them now, before anything reads the store.
                let applied = live.replica.state_machine().take_applied();
                let notes = live.replica.state_machine().take_lease_notes();
                if !applied.is_empty() {
                    self.observe_applied(node, applied, Vec::new())?;
                }
                if !notes.is_empty() {
                    self.observe_lease_notes(node, notes)?;
                }
                return Ok(());
            };
            if let Some(e) = out.failure {
                return Err(core_err(id, format!("replica stopped: {e}")));
            }
            let applied = live.replica.state_machine().take_applied();
            let notes = live.replica.state_machine().take_lease_notes();
            if let Some(w) = &out.persist {
                let p = &w.persist;
                if let (Some(install), Some(data)) = (p.snapshot(), &w.snapshot_data) {
                    // Install first (the replica restored the store), then
                    // the entries.
                    live.replica
                        .storage_mut()
                        .install_snapshot(install, data.clone());
                }
                check_persist_entries(id, live.node(), p, &self.committed)?;
                if let Some(install) = p.snapshot() {
                    self.repair.observe_snapshot(id, install.meta.index);
                }
                if let (Some(a), Some(b)) = (p.entries().first(), p.entries().last()) {
                    self.repair.observe_write(id, a.index, b.index);
                }
                let commit_before = live.replica.storage().hard_state().commit;
                live.replica.storage_mut().apply_persist(p);
                if let Some(hs) = p.hard_state() {
                    let (role, term) = (live.node().role(), live.node().term());
                    if role == Role::Leader && term == hs.term {
                        let entry_term =
                            stored_entry(live.replica.storage(), hs.commit).map(|e| e.0);
                        check_leader_commit(id, hs.term, commit_before, hs.commit, entry_term)?;
                    }
                    observe_commit(&mut self.committed, id, live.replica.storage(), hs.commit)?;
                }
            }
            let mut apply_events = Vec::new();
            for ev in out.events {
                match ev {
                    ReplicaEvent::Role(ss) => self.on_soft_state(node, ss)?,
                    ReplicaEvent::Applied { index, event } => apply_events.push((index, event)),
                    _ => {}
                }
            }
            for m in out.messages {
                self.send(node, m)?;
            }
            if let Some(w) = out.persist {
                self.write_batch(node, w.persist, w.snapshot_data);
            }
            self.observe_applied(node, applied, apply_events)?;
            if !notes.is_empty() {
                self.observe_lease_notes(node, notes)?;
            }
            if let Some(s) = out.snapshot {
                self.save_snapshot(node, s)?;
            }
            for c in out.completions {
                self.on_completion(node, c)?;
            }
        }
    }

    /// Writes a batch to `node`'s disk; it completes after an fsync time.
    fn write_batch(
        &mut self,
        node: usize,
        p: metalraft_core::Persist<SimPayload>,
        snapshot_data: Option<Vec<u8>>,
    ) {
        let sync = p.must_sync();
        let fsync = self.cfg.disks[node].fsync_us(&mut self.rng_disk)
            + if sync {
                self.targeted_stall_us(node)
            } else {
                0
            };
        let (n, seq) = (p.entries().len() as u64, p.seq());
        let r = &mut self.replicas[node];
        let id = r.id;
        let done = r.disk.write(p, snapshot_data, self.now, fsync);
        let inc = r.incarnation;
        self.trace.record(
            self.now,
            Actor::Node(id),
            TraceKind::Persist,
            seq,
            n,
            || format!("batch {seq}: {n} entries sync={sync} done@{done}"),
        );
        self.at(done, Event::DiskDone { node, inc });
        self.targeted_on_write(node, sync, done);
    }

    /// Stores the snapshot the replica took and compacts the log up to it;
    /// the snapshot and the compaction are durable at once (a snapshot file
    /// written, synced and renamed before the log is truncated).
    fn save_snapshot(&mut self, node: usize, s: metalraft_replica::SnapshotToSave) -> Step {
        let r = &mut self.replicas[node];
        let id = r.id;
        let Some(live) = r.live.as_mut() else {
            return Ok(());
        };
        let index = s.meta.index;
        live.replica
            .storage_mut()
            .create_snapshot(s.meta.clone(), s.data.clone())
            .map_err(|e| core_err(id, e))?;
        r.disk
            .create_snapshot(s.meta, s.data)
            .map_err(|e| core_err(id, e))?;
        live.replica.snapshot_saved(index);
        let hs = r.disk.durable_hard_state();
        self.durable.observe_durable(id, hs)?;
        self.trace.record(
            self.now,
            Actor::Node(id),
            TraceKind::Apply,
            index,
            2,
            || format!("snapshot taken at index {index}, log compacted"),
        );
        Ok(())
    }

    /// A message with a higher term is about to be delivered to a node that
    /// last reported itself leader: it must step down within a round trip.
    /// Pre-vote requests and grants and vote requests are exempt (see
    /// `checkers::StepDownChecker`).
    fn observe_higher_term(&mut self, node: usize, m: &Message<SimPayload>) {
        let r = &self.replicas[node];
        let Some((Role::Leader, term)) = r.last_role else {
            return;
        };
        let exempt = matches!(
            m.body,
            MessageBody::RequestVote { .. }
                | MessageBody::RequestVoteResponse { pre_vote: true, .. }
        );
        if m.term > term && !exempt {
            let round_trip = 2 * self.cfg.latency_us_max;
            self.step_down
                .observe_higher_term(r.id, term, m.term, self.now, round_trip);
        }
    }

    fn on_soft_state(&mut self, node: usize, ss: SoftState) -> Step {
        let r = &mut self.replicas[node];
        let id = r.id;
        if r.last_role != Some((ss.role, ss.term)) {
            r.last_role = Some((ss.role, ss.term));
            if ss.role == Role::Leader {
                self.targeted_on_leader(node, ss.term);
            }
            if self.opts.timeline {
                self.timeline.roles.push((self.now, id, ss.role, ss.term));
            }
            self.trace.record(
                self.now,
                Actor::Node(id),
                TraceKind::Role,
                ss.term,
                ss.role as u64,
                || format!("{:?} term {} leader {:?}", ss.role, ss.term, ss.leader),
            );
        }
        self.step_down.observe_role(id, ss.role, ss.term);
        self.lease
            .observe_role(id, ss.role == Role::Leader, self.now);
        if ss.role == Role::Leader {
            let inc = self.replicas[node].incarnation;
            self.election.observe_leader(id, inc, ss.term)?;
            let Some(live) = self.replicas[node].live.as_ref() else {
                return Ok(());
            };
            let (first, log) = full_log(id, live.node())?;
            self.completeness
                .check_leader(id, ss.term, first - 1, |i| {
                    log.get(usize::try_from(i.checked_sub(first)?).ok()?)
                        .map(|e| (e.term, entry_digest(e)))
                })?;
        }
        Ok(())
    }

    fn send(&mut self, node: usize, m: Message<SimPayload>) -> Step {
        let r = &self.replicas[node];
        let id = r.id;
        match m.body {
            MessageBody::RequestVoteResponse {
                pre_vote,
                granted: true,
            } => {
                self.repair.check_vote(id, m.to, m.term, pre_vote)?;
                if !pre_vote {
                    DurableStateChecker::check_vote_grant(
                        id,
                        m.to,
                        m.term,
                        r.disk.durable_hard_state(),
                    )?
                }
            }
            MessageBody::AppendEntriesResponse {
                index,
                reject: None,
            } => {
                self.repair.check_ack(id, index)?;
                DurableStateChecker::check_append_ack(
                    id,
                    index,
                    m.term,
                    r.disk.durable_last_index(),
                    r.disk.durable_hard_state().term,
                )?
            }
            // Only a leader sends these: judge its leadership here too, so
            // a leader is judged even if it never reports its role.
            MessageBody::AppendEntries { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. }
            | MessageBody::TimeoutNow => {
                self.election.observe_leader(id, r.incarnation, m.term)?;
                // A message held until a write completed (the durability
                // rule) may leave after its sender stepped down; only a
                // node that still reports itself leader acts as one.
                if r.last_role == Some((Role::Leader, m.term)) {
                    self.step_down.observe_leader_action(id, m.term, self.now)?;
                }
                let client_entry = matches!(
                    &m.body,
                    MessageBody::AppendEntries { entries, .. }
                        if entries.iter().any(|e| matches!(e.data, EntryData::Normal(_)))
                );
                if client_entry && self.targeted.armed.is_some() {
                    self.targeted_on_send_entry(node);
                }
            }
            _ => {}
        }
        if m.to == 0 || m.to as usize > self.replicas.len() {
            return Err(core_err(id, format!("message to unknown node {}", m.to)));
        }
        let route = if self.targeted.deaf.is_some() && self.targeted_drops(&m) {
            Route::Lost { blocked: true }
        } else {
            self.net.route(&mut self.rng_net, m.from, m.to, self.now)
        };
        match route {
            Route::Lost { blocked } => {
                self.stats.lost += 1;
                let (from, to, kind) = (m.from, m.to, m.body.kind());
                self.trace.record(
                    self.now,
                    Actor::Node(from),
                    TraceKind::Lost,
                    to,
                    u64::from(blocked),
                    || {
                        format!(
                            "n{from}->n{to} {kind:?} {}",
                            if blocked { "partitioned" } else { "dropped" }
                        )
                    },
                );
            }
            Route::Deliver(t, dup) => {
                let to_inc = self.net.known_incarnation(m.from, m.to);
                let from_inc = self.replicas[node].incarnation;
                if let Some(t2) = dup {
                    self.at(t2, Event::Deliver(m.clone(), to_inc, from_inc));
                }
                self.at(t, Event::Deliver(m, to_inc, from_inc));
            }
        }
        Ok(())
    }

    /// What `node`'s state machine applied (or restored), as the replica did
    /// it: the state-machine and leader-completeness checkers judge this.
    /// The first application of each index extends the committed MVCC
    /// history; the replica's watch feed (`events`) and the store's
    /// revisions are judged against it.
    fn observe_applied(
        &mut self,
        node: usize,
        applied: Vec<Applied>,
        events: Vec<(Index, MvccEvent)>,
    ) -> Step {
        let r = &self.replicas[node];
        let id = r.id;
        let Some(live) = r.live.as_ref() else {
            return Ok(());
        };
        let term = live.node().term();
        let leader = live.node().role() == Role::Leader;
        let mut committed = false;
        let mut events = events.into_iter().peekable();
        for a in applied {
            match a {
                Applied::Entry {
                    index,
                    term: e_term,
                    digest,
                    op,
                    command,
                } => {
                    committed = true;
                    self.state_machine
                        .observe_applied(id, index, e_term, digest)?;
                    if index == self.reference.applied_index() + 1 {
                        self.reference.apply(index, command.as_deref());
                        self.history_end.set(index);
                    }
                    let event = events.next_if(|(i, _)| *i == index);
                    let event = event
                        .as_ref()
                        .map(|(_, e)| (e.revision, e.changes.as_slice()));
                    check_node_event(id, &self.reference, index, event)?;
                    self.completeness
                        .observe_committed(index, e_term, digest, term);
                    if let Some(op) = op {
                        self.committed_at.entry(op).or_insert(index);
                    }
                    self.trace.record(
                        self.now,
                        Actor::Node(id),
                        TraceKind::Apply,
                        index,
                        digest,
                        || format!("index {index} term {e_term} op {op:?}"),
                    );
                }
                Applied::Restored { index } => {
                    self.state_machine.restore(id, index)?;
                    self.trace.record(
                        self.now,
                        Actor::Node(id),
                        TraceKind::Apply,
                        index,
                        1,
                        || format!("installed snapshot at index {index}"),
                    );
                }
            }
        }
        if let Some((index, e)) = events.next() {
            return Err(Violation::NodeHistory {
                node: id,
                index,
                revision: e.revision,
                what: "a watch event for an index the state machine did not apply".into(),
            });
        }
        if let Some(live) = self.replicas[node].live.as_ref() {
            let kv = live.replica.state_machine().kv();
            let (index, rev, compact) = (kv.applied_index(), kv.revision(), kv.compact_revision());
            check_node_revision(id, &self.reference, index, rev, compact)?;
        }
        // A leader's commits, of whatever term (a correct leader's first
        // commit in a term includes an entry of that term).
        if leader && committed {
            self.targeted_on_commit(node, term);
        }
        Ok(())
    }
}

impl Simulation {
    /// The end-of-run checks; `recovered`: the liveness phase succeeded.
    fn final_checks(&mut self, recovered: bool) -> Result<LinearizabilityReport, Violation> {
        // Log matching over every node's full log and its durable log.
        let mut logs = Vec::new();
        let mut final_log: BTreeMap<Index, OpId> = BTreeMap::new();
        let mut best_commit = 0;
        let mut compacted = 0;
        for r in &self.replicas {
            let Some(live) = r.live.as_ref() else {
                continue;
            };
            let (first, entries) = full_log(r.id, live.node())?;
            let summary = |e: &metalraft_core::Entry<SimPayload>| LogEntrySummary {
                index: e.index,
                term: e.term,
                digest: entry_digest(e),
            };
            logs.push((r.id, entries.iter().map(summary).collect::<Vec<_>>()));
            logs.push((
                r.id,
                r.disk.durable().all_entries().iter().map(summary).collect(),
            ));
            let commit = live.node().commit_index();
            if commit > best_commit {
                best_commit = commit;
                compacted = first - 1;
                final_log = entries
                    .iter()
                    .take_while(|e| e.index <= commit)
                    .filter_map(|e| Some((e.index, entry_op(e)?)))
                    .collect();
            }
        }
        check_log_matching(&logs)?;
        // Replicas at the same applied index hold the same data, and the
        // same history (etcd's HashKV).
        let mut kv_hash: BTreeMap<Index, (NodeId, u32, u32)> = BTreeMap::new();
        for r in &self.replicas {
            let Some(live) = r.live.as_ref() else {
                continue;
            };
            let kv = live.replica.state_machine().kv();
            let h = kv.hash();
            let hk = kv.hash_kv(0).map_err(|e| core_err(r.id, e))?.hash;
            let (n0, h0, hk0) = *kv_hash.entry(kv.applied_index()).or_insert((r.id, h, hk));
            if h0 != h {
                return Err(Violation::StateMachineSafety {
                    node: r.id,
                    index: kv.applied_index(),
                    got: (0, u64::from(h)),
                    expected: (n0, u64::from(h0)),
                });
            }
            if hk0 != hk {
                return Err(Violation::NodeHistory {
                    node: r.id,
                    index: kv.applied_index(),
                    revision: kv.revision(),
                    what: format!(
                        "HashKV {hk:08x} differs from node {n0}'s {hk0:08x} at the same applied index"
                    ),
                });
            }
        }
        self.drain_watchers(recovered)?;
        // Writes in the compacted prefix live on in the snapshot; their
        // effect is checked through the state (stores, linearizability).
        let committed_at = &self.committed_at;
        let acked = self.history.ops.iter().filter_map(|o| match o.completion {
            Some((_, Outcome::Ok(_)))
                if o.is_write() && committed_at.get(&o.id).is_none_or(|&i| i > compacted) =>
            {
                Some(o.id)
            }
            _ => None,
        });
        check_durability(acked, &self.committed_at, &final_log)?;
        check_linearizable(&self.history)
    }
}
