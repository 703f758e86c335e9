//! The task that owns the replica and drives it with real time: an I/O
//! shell around [`metalraft_replica::Replica`].
//!
//! Every decision — which client an applied entry answers, when a read may
//! be served, when to snapshot, how a received snapshot is reassembled and
//! installed, what a membership change means for this member — is the
//! replica's. The loop only feeds it inputs (ticks, peer messages,
//! proposals, reads, persistence acknowledgements, saved snapshots) and
//! carries out each [`Output`](metalraft_replica::Output) of `poll()`: sends
//! its messages, hands its persistence batch and snapshot to the WAL writer
//! thread (which acknowledges a batch only after `fdatasync`), answers the
//! clients whose requests completed, and publishes its events.
//!
//! A snapshot the replica says is due is frozen here ([`ServerMachine::snapshot_job`],
//! cheap) and serialized by this loop, one bounded step between rounds,
//! in one pass; its own thread writes the pieces to the snapshot file and
//! hands the buffers back ([`SNAPSHOT_PIECES_IN_FLIGHT`]). No other thread
//! touches the store for it, and neither this loop nor the WAL writer waits
//! for its I/O (issue 18). When the file is durable the writer purges the
//! WAL behind it, in order with its batches, and the loop compacts the
//! in-memory log.
//!
//! Client-facing code talks to the loop through a [`RaftHandle`] and
//! observes it through a [`watch`] of [`NodeStatus`].

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use metalraft_core::{ConfChange, ConfState, Message, ReadError, Role, SoftState, TransferError};
use metalraft_kv as kv;
use metalraft_replica::{
    Completion, Event, Fatal, Outcome, PersistWork, ProposeError, ReqId, RequestFailure,
    SnapshotDue, SnapshotToSave, UnknownReason,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::api::REQUEST_TIMEOUT;
use crate::batch_sizes::Batch;
use crate::catch_up::FloorWindow;
use crate::command::{self, Payload};
use crate::errors::EtcdError;
use crate::latency::{Latency, Stage};
use crate::machine::{
    kv_len_slot, Applied, Refused, ServerMachine, SnapshotJob, SnapshotJobError, KV_LEN_SLOT_BYTES,
};
use crate::registry::{Registry, RegistryOp};
use crate::snapshot_chain::{self, Plan, SectionTracker, SharedChain};
use crate::storage::snapshot::{
    save_streamed, SnapshotFile, SnapshotWriter, StreamedSaveError, SNAPSHOT_WRITE_BYTES_PER_SEC,
};
use crate::storage::{SharedLog, Snapshot, StorageError, WriteBatch};
use crate::transport::Transport;
use crate::watch::{MvccEvent, WatchFeed};
use crate::writer::{WriteJob, WriterEvent, WriterGauges};

/// Capacity of the loop's input queue; beyond it clients get "too many requests".
pub const INPUT_QUEUE_CAPACITY: usize = 16 * 1024;
/// Most inputs handled before the replica's output is carried out.
pub const MAX_INPUTS_PER_ROUND: usize = 4096;
/// Most proposals waiting for their entry to apply.
pub const MAX_PENDING_PROPOSALS: usize = metalraft_replica::DEFAULT_MAX_PENDING_PROPOSALS;
/// Log entries kept behind a snapshot for followers that lag a little
/// (etcd's `SnapshotCatchUpEntries`), capped by `--snapshot-count`.
pub const SNAPSHOT_CATCH_UP_ENTRIES: u64 = metalraft_replica::DEFAULT_SNAPSHOT_CATCH_UP_ENTRIES;
/// Nice value of the snapshot thread: it yields the cores to the Raft loop,
/// the WAL writer and the gRPC tasks. It only writes and syncs the pieces
/// the loop serialized, and holds no lock the loop needs.
pub const SNAPSHOT_THREAD_NICE: i32 = 10;
/// Pieces of a snapshot (one [`SnapshotJob::step`] each) serialized by the
/// loop and not yet written by the snapshot thread: the loop steps the job
/// only when the thread hands a written piece's buffer back, so memory is
/// bounded and a slow disk slows the snapshot, never the loop.
pub const SNAPSHOT_PIECES_IN_FLIGHT: usize = 4;
/// Rounds in a row the loop may put off a snapshot step because client
/// inputs are waiting: a step (`snapshot_step`, ~0.2 ms at p50) runs when
/// the input queue is empty, or after this many rounds that served inputs
/// instead, so a busy leader still finishes its snapshot (at least one
/// round in `SNAPSHOT_MAX_DEFERRED_ROUNDS + 1`) and the log behind it is
/// still purged.
pub const SNAPSHOT_MAX_DEFERRED_ROUNDS: u32 = 8;
/// Most bytes of log entries ([`metalraft_core::Entry::size_bytes`]) the
/// leader keeps beyond a snapshot's compaction point for followers being
/// caught up ([`metalraft_core::Node::catch_up_floor`]): a new member that
/// received a snapshot needs the entries after it, and compacting them
/// while it restores would send it a second whole snapshot (issue 18:
/// 1,000,000 keys, two 200–260 MB transfers and restores). Beyond this the
/// log is compacted anyway and a follower that still lags gets a newer
/// snapshot, so a dead follower cannot grow the log without bound.
pub const LOG_HOLD_MAX_BYTES: u64 = 128 * 1024 * 1024;
/// Largest snapshot accepted from a leader.
pub const MAX_INCOMING_SNAPSHOT_BYTES: u64 = metalraft_replica::DEFAULT_MAX_SNAPSHOT_BYTES;

/// The replica as the server instantiates it.
pub type ServerReplica = metalraft_replica::Replica<ServerMachine, SharedLog>;

/// The result a proposer gets: the state machine's answer, or why not.
pub type ProposeResult = Result<kv::CommandResult, EtcdError>;

/// The replica's configuration for this server: the core's `core`,
/// `--snapshot-count`, and request timeouts in ticks of `tick` matching
/// the gRPC services' [`REQUEST_TIMEOUT`] (so the replica forgets a request about when its
/// client gives up).
pub fn replica_config(
    core: metalraft_core::Config,
    snapshot_count: u64,
    tick: Duration,
) -> metalraft_replica::Config {
    let mut cfg = metalraft_replica::Config::new(core.id);
    cfg.core = core;
    cfg.snapshot_threshold_entries = snapshot_count.max(1);
    cfg.snapshot_catch_up_entries = SNAPSHOT_CATCH_UP_ENTRIES;
    cfg.max_snapshot_bytes = MAX_INCOMING_SNAPSHOT_BYTES;
    cfg.max_pending_proposals = MAX_PENDING_PROPOSALS;
    let tick_ms = tick.as_millis().max(1);
    cfg.request_timeout_ticks = (REQUEST_TIMEOUT.as_millis().div_ceil(tick_ms) + 1) as u64;
    // Every revision's changes feed Watch (`crate::watch`).
    cfg.emit_apply_events = true;
    cfg
}

/// Why the loop stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// The replica stopped (a storage read failed, a snapshot from the
    /// leader was refused, the state machine failed).
    #[error("raft replica stopped: {0}")]
    Replica(Fatal),
    /// This member was removed from the cluster (by a committed
    /// configuration change, or a peer said so).
    #[error("this member was removed from the cluster")]
    Removed,
    /// The WAL writer failed for good.
    #[error("storage failed: {0}")]
    Storage(StorageError),
    /// The WAL writer thread is gone.
    #[error("the WAL writer stopped")]
    WriterStopped,
    /// The replica handed out a snapshot install without its bytes (a bug).
    #[error("snapshot install at index {0} without its data")]
    InstallWithoutData(u64),
}

/// Requests to the loop.
pub enum Input {
    /// A message from a peer (already validated by the transport).
    Step(Message<Vec<u8>>),
    /// A write to propose; answered when applied.
    Propose {
        /// The command.
        cmd: kv::Command,
        /// Where the result goes, with the instant it was sent (the
        /// `reply` stage).
        reply: oneshot::Sender<(ProposeResult, Instant)>,
        /// When it was queued (the `queue` stage).
        at: Instant,
    },
    /// A linearizable read barrier: answered once this member has applied
    /// everything committed when it was asked (ReadIndex).
    Read {
        /// Where the answer goes.
        reply: oneshot::Sender<Result<(), EtcdError>>,
    },
    /// A member-registry change to replicate; answered when applied.
    ProposeRegistry {
        /// The change.
        op: RegistryOp,
        /// Applied, or why not.
        reply: oneshot::Sender<Result<(), EtcdError>>,
    },
    /// An auth change to replicate; answered when applied.
    ProposeAuth {
        /// The change.
        op: crate::auth::AuthOp,
        /// Applied, or why not (etcd's auth errors).
        reply: oneshot::Sender<Result<(), EtcdError>>,
    },
    /// A membership change of the core; answered when its entry is applied.
    ConfChange {
        /// The change.
        cc: ConfChange,
        /// Applied, or why not.
        reply: oneshot::Sender<Result<(), EtcdError>>,
    },
    /// Leadership transfer (MoveLeader or graceful shutdown).
    Transfer {
        /// Target member.
        to: u64,
        /// Accepted or refused (completion is observed through the status).
        reply: oneshot::Sender<Result<(), EtcdError>>,
    },
}

/// What the loop publishes after every round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStatus {
    /// Current term.
    pub term: u64,
    /// Known leader.
    pub leader: Option<u64>,
    /// Whether this member leads.
    pub is_leader: bool,
    /// Whether this member is a learner.
    pub is_learner: bool,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Times this member saw the leader change.
    pub leader_changes: u64,
    /// The loop stopped (shutdown or fatal error).
    pub stopped: bool,
    /// Repairing after mid-log WAL damage: the core's vote barrier (ADR
    /// 0021). Serializable reads are refused and `/health` is unhealthy
    /// until it clears.
    pub repair_barrier: Option<u64>,
}

/// Counters for metrics.
#[derive(Default, Debug)]
pub struct LoopStats {
    /// Proposals applied.
    pub proposals_committed: AtomicU64,
    /// Proposals refused or failed.
    pub proposals_failed: AtomicU64,
    /// Proposals waiting.
    pub proposals_pending: AtomicU64,
    /// Snapshots taken.
    pub snapshots: AtomicU64,
    /// Snapshots received from a leader and installed.
    pub snapshots_installed: AtomicU64,
    /// The write path's stage histograms (the WAL writer's, shared).
    pub latency: Arc<Latency>,
}

/// A cheap handle for client-facing code.
#[derive(Clone)]
pub struct RaftHandle {
    inputs: mpsc::Sender<Input>,
    /// Status updates.
    pub status: watch::Receiver<NodeStatus>,
    /// The state machine (read under the lock for serializable reads).
    pub kv: Arc<RwLock<kv::MvccStore>>,
    /// The store's commit latencies.
    pub backend_commits: Arc<crate::writer::DurationHistogram>,
    /// The leader's lease deadlines (keepalives renew them).
    pub leases: crate::lease::LeaseClock,
    /// Applied events, for Watch streams.
    pub watch_feed: WatchFeed,
    /// Loop counters.
    pub stats: Arc<LoopStats>,
    /// The member registry.
    pub registry: Registry,
    /// The core's configuration in effect.
    pub conf: Arc<RwLock<ConfState>>,
    /// The auth state and this member's tokens.
    pub auth: crate::auth::Auth,
}

impl RaftHandle {
    /// Sends an input without waiting for queue space.
    pub fn try_send(&self, input: Input) -> Result<(), EtcdError> {
        self.inputs.try_send(input).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => EtcdError::TooManyRequests,
            mpsc::error::TrySendError::Closed(_) => EtcdError::Stopped,
        })
    }

    /// Proposes a command on this member (which must lead) and waits until
    /// it is applied, or `timeout`.
    pub async fn propose(&self, cmd: kv::Command, timeout: Duration) -> ProposeResult {
        let (reply, rx) = oneshot::channel();
        let at = Instant::now();
        self.try_send(Input::Propose { cmd, reply, at })?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok((r, sent))) => {
                let latency = &self.stats.latency;
                latency.since(Stage::Reply, sent);
                latency.since(Stage::Total, at);
                r
            }
            Ok(Err(_)) => Err(EtcdError::Stopped),
            Err(_) => Err(EtcdError::Timeout),
        }
    }

    /// Waits until this member has applied everything committed when the
    /// call started (ReadIndex), so a local read is linearizable.
    pub async fn linearizable_barrier(&self, timeout: Duration) -> Result<(), EtcdError> {
        self.ask(|reply| Input::Read { reply }, timeout).await
    }

    /// Replicates a registry change and waits until it is applied.
    pub async fn propose_registry(
        &self,
        op: RegistryOp,
        timeout: Duration,
    ) -> Result<(), EtcdError> {
        self.ask(|reply| Input::ProposeRegistry { op, reply }, timeout)
            .await
    }

    /// Replicates an auth change and waits until it is applied.
    pub async fn propose_auth(
        &self,
        op: crate::auth::AuthOp,
        timeout: Duration,
    ) -> Result<(), EtcdError> {
        self.ask(|reply| Input::ProposeAuth { op, reply }, timeout)
            .await
    }

    /// Proposes a membership change and waits until it is applied.
    pub async fn conf_change(&self, cc: ConfChange, timeout: Duration) -> Result<(), EtcdError> {
        self.ask(|reply| Input::ConfChange { cc, reply }, timeout)
            .await
    }

    /// Asks the core to transfer leadership.
    pub async fn transfer(&self, to: u64) -> Result<(), EtcdError> {
        let (reply, rx) = oneshot::channel();
        self.try_send(Input::Transfer { to, reply })?;
        rx.await.map_err(|_| EtcdError::Stopped)?
    }

    async fn ask(
        &self,
        input: impl FnOnce(oneshot::Sender<Result<(), EtcdError>>) -> Input,
        timeout: Duration,
    ) -> Result<(), EtcdError> {
        let (reply, rx) = oneshot::channel();
        self.try_send(input(reply))?;
        tokio::time::timeout(timeout, rx)
            .await
            .map_err(|_| EtcdError::Timeout)?
            .map_err(|_| EtcdError::Stopped)?
    }
}

/// A client waiting for its request to complete (the only request state
/// the shell keeps: the channel is I/O).
enum Waiter {
    /// A key-value proposal and when it was proposed (the `commit_apply`
    /// stage).
    Kv(oneshot::Sender<(ProposeResult, Instant)>, Instant),
    Done(oneshot::Sender<Result<(), EtcdError>>),
}

impl Waiter {
    fn send(self, r: Result<Option<kv::CommandResult>, EtcdError>) {
        match (self, r) {
            (Waiter::Kv(tx, _), Ok(Some(out))) => {
                let _ = tx.send((Ok(out), Instant::now()));
            }
            (Waiter::Kv(tx, _), Ok(None)) => {
                let _ = tx.send((
                    Err(EtcdError::Internal(
                        "a write completed without a key-value result".into(),
                    )),
                    Instant::now(),
                ));
            }
            (Waiter::Kv(tx, _), Err(e)) => {
                let _ = tx.send((Err(e), Instant::now()));
            }
            (Waiter::Done(tx), r) => {
                let _ = tx.send(r.map(|_| ()));
            }
        }
    }
}

/// Parameters of [`RaftLoop::new`].
pub struct LoopParts {
    /// The replica, over the durable log and the restored state machine.
    pub replica: ServerReplica,
    /// Outgoing peer messages (started with the registry's members).
    pub transport: Transport,
    /// The WAL writer's job queue.
    pub writer: std::sync::mpsc::Sender<WriteJob>,
    /// The WAL writer's events.
    pub writer_events: mpsc::UnboundedReceiver<WriterEvent>,
    /// The WAL writer's gauges.
    pub gauges: Arc<WriterGauges>,
    /// Tick period (`--heartbeat-interval`).
    pub tick: Duration,
    /// Where snapshots taken here are written (the storage's).
    pub snap_dir: PathBuf,
    /// The chain of the delta snapshot loaded at start, if any, so the
    /// next snapshot may extend it (ADR 0033).
    pub chain: Option<crate::snapshot_chain::Chain>,
}

/// Everything the loop owns.
pub struct RaftLoop {
    replica: ServerReplica,
    me: u64,
    log: SharedLog,
    transport: Transport,
    /// Peer URL of every member the transport has a lane to.
    lanes: BTreeMap<u64, String>,
    registry: Registry,
    registry_generation: u64,
    writer: std::sync::mpsc::Sender<WriteJob>,
    writer_events: mpsc::UnboundedReceiver<WriterEvent>,
    gauges: Arc<WriterGauges>,
    inputs: mpsc::Receiver<Input>,
    status_tx: watch::Sender<NodeStatus>,
    stats: Arc<LoopStats>,
    conf: Arc<RwLock<ConfState>>,
    waiters: HashMap<ReqId, Waiter>,
    next_req: ReqId,
    tick: Duration,
    status: NodeStatus,
    /// Where applied events go, and what one drive round collected.
    watch_feed: WatchFeed,
    applied_events: Vec<MvccEvent>,
    /// Where snapshot threads write.
    snap_dir: PathBuf,
    /// The snapshot being serialized by this loop, if any.
    snapshot: Option<ActiveSnapshot>,
    /// The chain the next snapshot may extend with a delta (ADR 0033).
    chain: SharedChain,
    /// Where a saved snapshot lets the log be compacted to, while entries
    /// before it are kept for a follower being caught up.
    compaction_due: Option<u64>,
    /// The core's catch-up floor over the last check-quorum periods.
    floors: FloorWindow,
}

/// What the loop sends the thread writing a snapshot it serializes.
enum Piece {
    /// Data to append, and the key-value section it belongs to (`None`:
    /// the envelope); the buffer comes back when written.
    Data(Vec<u8>, Option<kv::Section>),
    /// Reserve the slot of the key-value part's length.
    KvLenSlot,
    /// Every piece was sent: fill the slot with this and save the file.
    Finish([u8; KV_LEN_SLOT_BYTES]),
}

/// A snapshot the loop serializes step by step for its writing thread.
struct ActiveSnapshot {
    index: u64,
    job: Box<SnapshotJob>,
    /// To the snapshot thread (dropped: it abandons the file).
    pieces: std::sync::mpsc::Sender<Piece>,
    /// Buffers the thread has written, to fill with the next step.
    free: mpsc::UnboundedReceiver<Vec<u8>>,
    /// Every piece was sent; the thread's result comes from the writer.
    sent_all: bool,
    /// Rounds since the last step while inputs were waiting
    /// ([`SNAPSHOT_MAX_DEFERRED_ROUNDS`]).
    deferred_rounds: u32,
}

impl ActiveSnapshot {
    /// Whether this round may step: nothing from clients is waiting, or
    /// the snapshot was put off for [`SNAPSHOT_MAX_DEFERRED_ROUNDS`].
    fn may_step(&self, inputs_waiting: bool) -> bool {
        snapshot_may_step(inputs_waiting, self.deferred_rounds)
    }
}

/// [`ActiveSnapshot::may_step`] on its two inputs.
fn snapshot_may_step(inputs_waiting: bool, deferred_rounds: u32) -> bool {
    !inputs_waiting || deferred_rounds >= SNAPSHOT_MAX_DEFERRED_ROUNDS
}

/// The deferral counter after a round ([`SNAPSHOT_MAX_DEFERRED_ROUNDS`]):
/// reset by a step, raised by a round that was not allowed one, kept by a
/// round that was allowed one but had no written buffer to fill (so an
/// overdue step stays due).
fn deferred_after_round(deferred_rounds: u32, may_step: bool, stepped: bool) -> u32 {
    if stepped {
        0
    } else if may_step {
        deferred_rounds
    } else {
        deferred_rounds.saturating_add(1)
    }
}

/// The next written buffer of the active snapshot; never ready when there
/// is nothing to serialize. `None`: the thread stopped (it reports why).
async fn next_free_piece(s: &mut Option<ActiveSnapshot>) -> Option<Vec<u8>> {
    match s {
        Some(a) if !a.sent_all => a.free.recv().await,
        _ => std::future::pending().await,
    }
}

impl RaftLoop {
    /// Builds the loop and its handle.
    pub fn new(mut p: LoopParts) -> (RaftLoop, RaftHandle) {
        let (tx, rx) = mpsc::channel(INPUT_QUEUE_CAPACITY);
        p.replica
            .state_machine_mut()
            .set_latency(p.gauges.latency.clone());
        p.replica
            .state_machine_mut()
            .set_snapshot_dir(p.snap_dir.clone());
        let r = &p.replica;
        let status = NodeStatus {
            term: r.term(),
            applied: r.applied_index(),
            commit: r.node().commit_index(),
            ..NodeStatus::default()
        };
        let (status_tx, status_rx) = watch::channel(status);
        let stats = Arc::new(LoopStats {
            latency: p.gauges.latency.clone(),
            ..LoopStats::default()
        });
        let me = r.id();
        let floor_period_ticks = r.config().core.election_timeout_ticks_min;
        let conf = Arc::new(RwLock::new(r.node().conf_state().clone()));
        let registry = r.state_machine().registry().clone();
        let watch_feed = r.state_machine().watch_feed();
        let handle = RaftHandle {
            watch_feed: watch_feed.clone(),
            inputs: tx,
            status: status_rx,
            kv: r.state_machine().kv(),
            backend_commits: r.state_machine().backend_commits(),
            leases: r.state_machine().leases(),
            stats: stats.clone(),
            registry: registry.clone(),
            conf: conf.clone(),
            auth: r.state_machine().auth().clone(),
        };
        let lanes = registry
            .members()
            .into_iter()
            .filter(|(id, _)| *id != me)
            .filter_map(|(id, urls)| urls.first().map(|u| (id, u.clone())))
            .collect();
        let lp = RaftLoop {
            me,
            log: r.storage().clone(),
            registry_generation: registry.generation(),
            registry,
            lanes,
            replica: p.replica,
            transport: p.transport,
            writer: p.writer,
            writer_events: p.writer_events,
            gauges: p.gauges,
            inputs: rx,
            status_tx,
            stats,
            conf,
            waiters: HashMap::new(),
            next_req: 1,
            tick: p.tick,
            status,
            watch_feed,
            applied_events: Vec::new(),
            snap_dir: p.snap_dir,
            snapshot: None,
            chain: Arc::new(std::sync::Mutex::new(p.chain)),
            compaction_due: None,
            floors: FloorWindow::new(floor_period_ticks.into()),
        };
        (lp, handle)
    }

    /// Runs until `shutdown` fires or something fatal happens, which it
    /// returns. Every waiting client is answered before it returns.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), LoopError> {
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            // Set when the round starts (after the wait), for `loop_round`.
            let mut round = Instant::now();
            // A snapshot step waits while client inputs do (bounded).
            let may_step = self
                .snapshot
                .as_ref()
                .is_some_and(|a| a.may_step(!self.inputs.is_empty()));
            let mut stepped = false;
            let step = tokio::select! {
                _ = ticker.tick() => self.on_tick(),
                Some(input) = self.inputs.recv() => {
                    round = Instant::now();
                    self.handle(input);
                    for _ in 0..MAX_INPUTS_PER_ROUND {
                        match self.inputs.try_recv() {
                            Ok(i) => self.handle(i),
                            Err(_) => break,
                        }
                    }
                    Ok(())
                }
                ev = self.writer_events.recv() => self.on_writer_event(ev),
                buf = next_free_piece(&mut self.snapshot), if may_step => {
                    round = Instant::now();
                    stepped = true;
                    self.snapshot_step(buf);
                    Ok(())
                }
                _ = shutdown.changed() => break Ok(()),
            };
            if let Some(a) = self.snapshot.as_mut() {
                a.deferred_rounds = deferred_after_round(a.deferred_rounds, may_step, stepped);
            }
            // Wall time for lease expiry (leader only; also dates a
            // leadership change, which restarts every lease countdown).
            let now = self.replica.state_machine().leases().now();
            self.replica.handle_timeout(now);
            if let Err(e) = step.and_then(|()| self.drive()) {
                break Err(e);
            }
            self.publish();
            self.stats.latency.since(Stage::LoopRound, round);
        };
        // Its thread abandons the file.
        self.snapshot = None;
        // A replica that stopped completed its requests in its last output.
        while let Some(out) = self.replica.poll() {
            for c in out.completions {
                self.complete(c);
            }
        }
        self.status.stopped = true;
        self.status_tx.send_replace(self.status);
        for (_, w) in self.waiters.drain() {
            w.send(Err(EtcdError::Stopped));
        }
        result
    }

    fn on_tick(&mut self) -> Result<(), LoopError> {
        self.replica.tick().map_err(LoopError::Replica)?;
        self.floors.push(self.replica.node().catch_up_floor());
        self.compact_log()?;
        if self.transport.removed() {
            return Err(LoopError::Removed);
        }
        Ok(())
    }

    /// Compacts the in-memory log to the saved snapshot's point, or only
    /// to the core's [`catch_up_floor`](metalraft_core::Node::catch_up_floor)
    /// while a follower being caught up needs the entries after it (and
    /// they stay within [`LOG_HOLD_MAX_BYTES`]); retried every tick. The WAL
    /// behind the snapshot is purged regardless: the entries kept here are
    /// only for sending.
    fn compact_log(&mut self) -> Result<(), LoopError> {
        let Some(due) = self.compaction_due else {
            return Ok(());
        };
        let floor = self.floors.floor(self.replica.node().catch_up_floor());
        let to = match floor {
            Some(floor) if floor < due => {
                let held = self.log.bytes_through(due).map_err(LoopError::Storage)?;
                if held <= LOG_HOLD_MAX_BYTES {
                    floor
                } else {
                    tracing::info!(
                        floor,
                        due,
                        held,
                        "compacting the log past a lagging follower (hold limit)"
                    );
                    due
                }
            }
            _ => due,
        };
        self.log.compact_to(to).map_err(LoopError::Storage)?;
        if to >= due {
            self.compaction_due = None;
        }
        Ok(())
    }

    fn on_writer_event(&mut self, ev: Option<WriterEvent>) -> Result<(), LoopError> {
        match ev {
            Some(WriterEvent::Persisted(tokens, sent)) => {
                self.stats.latency.since(Stage::WalAck, sent);
                for t in tokens {
                    self.replica.on_persisted(t).map_err(LoopError::Replica)?;
                }
                Ok(())
            }
            Some(WriterEvent::SnapshotSaved {
                meta,
                file,
                compact_to,
            }) => {
                let index = meta.index;
                self.snapshot_finished(index);
                self.log
                    .set_snapshot_file(meta, file)
                    .map_err(LoopError::Storage)?;
                self.compaction_due = Some(self.compaction_due.unwrap_or(0).max(compact_to));
                self.compact_log()?;
                self.replica.snapshot_saved(index);
                Ok(())
            }
            Some(WriterEvent::SnapshotFailed { index }) => {
                // Nothing is lost (the WAL keeps every entry); the replica
                // tries again at the next threshold.
                self.snapshot_finished(index);
                self.replica.snapshot_saved(index);
                Ok(())
            }
            Some(WriterEvent::Fatal(e)) => Err(LoopError::Storage(e)),
            None => Err(LoopError::WriterStopped),
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Step(m) => {
                if let metalraft_core::MessageBody::InstallSnapshot { meta, .. } = &m.body {
                    // So the restore of this snapshot writes its file too.
                    self.replica.state_machine_mut().expect_snapshot(meta);
                }
                // Drops are normal (stale terms etc.) and counted by the core;
                // a storage failure stops the replica and shows in its output.
                if let Err(e) = self.replica.step(m) {
                    tracing::trace!(error = %e, "message dropped");
                }
            }
            Input::Propose { cmd, reply, at } => {
                let now = Instant::now();
                self.stats
                    .latency
                    .observe(Stage::Queue, now.saturating_duration_since(at));
                self.propose(&Payload::Kv(cmd), Waiter::Kv(reply, now));
                self.stats.latency.since(Stage::Propose, now);
            }
            Input::ProposeRegistry { op, reply } => {
                self.propose(&Payload::Registry(op), Waiter::Done(reply));
            }
            Input::ProposeAuth { op, reply } => {
                self.propose(&Payload::Auth(op), Waiter::Done(reply));
            }
            Input::ConfChange { cc, reply } => {
                let id = self.req_id();
                match self.replica.propose_conf_change(id, cc) {
                    Ok(_) => {
                        self.waiters.insert(id, Waiter::Done(reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(propose_error(e)));
                    }
                }
            }
            Input::Read { reply } => {
                let id = self.req_id();
                match self.replica.read(id, ()) {
                    Ok(()) => {
                        self.waiters.insert(id, Waiter::Done(reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(match e {
                            metalraft_replica::ReadError::TooManyPending => {
                                EtcdError::TooManyRequests
                            }
                            metalraft_replica::ReadError::Core(e) => read_error(e),
                            _ => EtcdError::Stopped,
                        }));
                    }
                }
            }
            Input::Transfer { to, reply } => {
                let r = self.replica.transfer_leader(to).map_err(|e| match e {
                    TransferError::NotLeader { .. } => EtcdError::NotLeader,
                    TransferError::Failed => EtcdError::Stopped,
                    _ => EtcdError::BadLeaderTransferee,
                });
                let _ = reply.send(r);
            }
        }
    }

    fn req_id(&mut self) -> ReqId {
        let id = self.next_req;
        self.next_req += 1;
        id
    }

    fn propose(&mut self, payload: &Payload, waiter: Waiter) {
        if self.gauges.no_space.load(Ordering::Relaxed) {
            waiter.send(Err(EtcdError::NoSpace));
            return;
        }
        let cmd = match command::encode_command(payload) {
            Ok(c) => c,
            Err(e) => {
                waiter.send(Err(EtcdError::Internal(format!("encoding a command: {e}"))));
                return;
            }
        };
        let id = self.req_id();
        match self.replica.propose(id, &cmd) {
            Ok(_) => {
                self.waiters.insert(id, waiter);
            }
            Err(e) => {
                self.stats.proposals_failed.fetch_add(1, Ordering::Relaxed);
                waiter.send(Err(propose_error(e)));
            }
        }
    }

    /// Carries out everything the replica asks for, until it has nothing.
    fn drive(&mut self) -> Result<(), LoopError> {
        while let Some(out) = self.replica.poll() {
            // Messages first: the replica only hands out what may leave now
            // (the core holds back anything that promises state not yet
            // durable until its batch is acknowledged).
            for m in &out.messages {
                if let metalraft_core::MessageBody::AppendEntries { entries, .. } = &m.body {
                    if !entries.is_empty() {
                        self.stats
                            .latency
                            .batches
                            .observe(Batch::AppendEntries, entries.len());
                    }
                }
            }
            self.transport.send(out.messages);
            if let Some(work) = out.persist {
                self.persist(work)?;
            }
            for c in out.completions {
                self.complete(c);
            }
            if let Some(snap) = out.snapshot {
                self.save_snapshot(snap);
            }
            if let Some(due) = out.snapshot_due {
                // Before the next poll: the state machine is at its index.
                self.start_snapshot(due);
            }
            for e in out.events {
                self.on_event(e)?;
            }
            if let Some(f) = out.failure {
                return Err(LoopError::Replica(f));
            }
        }
        // One feed batch per round: watchers wake once, however many
        // revisions were applied.
        self.watch_feed
            .publish(std::mem::take(&mut self.applied_events));
        let generation = self.registry.generation();
        if generation != self.registry_generation {
            self.registry_generation = generation;
            self.reconcile_peers();
        }
        Ok(())
    }

    /// Hands a persistence batch (and the snapshot it installs) to the WAL
    /// writer; the writer acknowledges it after `fdatasync`.
    fn persist(&mut self, work: PersistWork<Vec<u8>>) -> Result<(), LoopError> {
        let PersistWork {
            mut persist,
            snapshot_data,
        } = work;
        let install = match (persist.snapshot(), snapshot_data) {
            (None, _) => None,
            (Some(inst), Some(data)) => {
                let meta = &inst.meta;
                let snap = Snapshot {
                    index: meta.index,
                    term: meta.term,
                    conf_state: meta.conf_state.clone(),
                    data,
                };
                // Written and synced while the state machine restored from
                // the same bytes: the writer only renames it.
                let prepared = self.replica.state_machine_mut().take_prepared(meta.index);
                Some(Box::new((snap, inst.clone(), prepared)))
            }
            (Some(inst), None) => return Err(LoopError::InstallWithoutData(inst.meta.index)),
        };
        let job = WriteJob::Persist {
            batch: WriteBatch {
                entries: persist.take_entries(),
                hard_state: persist.hard_state(),
                clears_repair: persist.clears_vote_barrier(),
            },
            sync: persist.must_sync(),
            token: persist.into_token(),
            install,
            queued: Instant::now(),
        };
        self.writer.send(job).map_err(|_| LoopError::WriterStopped)
    }

    /// A snapshot the replica serialized itself (a state machine that does
    /// not defer them): written by a snapshot thread all the same.
    fn save_snapshot(&mut self, s: SnapshotToSave) {
        let due = SnapshotDue {
            meta: s.meta,
            compact_through: s.compact_through,
        };
        let index = due.meta.index;
        let data = s.data;
        // Not chainable: the next snapshot starts a chain of its own.
        if let Ok(mut c) = self.chain.lock() {
            *c = None;
        }
        self.spawn_snapshot(index, move |dir, writer| {
            let mut data = Some(data);
            let len = data.as_ref().map_or(0, |d| d.len() as u64);
            let meta = &due.meta;
            let saved = save_streamed::<SnapshotJobError>(
                dir,
                index,
                meta.term,
                &meta.conf_state,
                len,
                |out| {
                    out.extend(data.take().unwrap_or_default());
                    Ok(true)
                },
            );
            report_snapshot(due, saved, std::time::Instant::now(), writer);
        });
    }

    /// Freezes the state machine for the due snapshot; this loop
    /// serializes it ([`Self::snapshot_step`]) and a thread writes it.
    fn start_snapshot(&mut self, due: SnapshotDue) {
        let sm = self.replica.state_machine();
        debug_assert_eq!(
            metalraft_replica::StateMachine::applied_index(sm),
            due.meta.index
        );
        // A delta on the chain if it may grow and still matches the store
        // (same compact revision and generation), else a full snapshot.
        let chain = self.chain.lock().ok().and_then(|c| c.clone());
        let job = match chain.as_ref().filter(|c| c.may_grow()) {
            Some(c) => sm.chained_snapshot_job(Some(c.revision)).and_then(|job| {
                if c.may_extend(&job) {
                    Ok(job)
                } else {
                    sm.chained_snapshot_job(None)
                }
            }),
            None => sm.chained_snapshot_job(None),
        };
        let job = match job {
            Ok(job) => Box::new(job),
            Err(e) => {
                tracing::error!(error = %e, index = due.meta.index, "freezing a snapshot failed; the next threshold tries again");
                self.replica.snapshot_saved(due.meta.index);
                return;
            }
        };
        let plan = Plan::of(&job, chain);
        let (pieces, from_loop) = std::sync::mpsc::channel();
        let (to_loop, free) = mpsc::unbounded_channel();
        // A full snapshot: the envelope's head and the slot first (a
        // delta's thread writes them at the end); then one step per buffer
        // handed back.
        if !job.is_delta() {
            let _ = pieces.send(Piece::Data(job.head().to_vec(), None));
            let _ = pieces.send(Piece::KvLenSlot);
        }
        for _ in 0..SNAPSHOT_PIECES_IN_FLIGHT {
            let _ = to_loop.send(Vec::new());
        }
        let index = due.meta.index;
        let latency = self.stats.latency.clone();
        let chain = self.chain.clone();
        if self.spawn_snapshot(index, move |dir, writer| {
            let to = SnapshotTarget {
                dir,
                plan,
                chain: &chain,
            };
            write_snapshot_pieces(to, due, &from_loop, &to_loop, writer, latency)
        }) {
            self.snapshot = Some(ActiveSnapshot {
                index,
                job,
                pieces,
                free,
                sent_all: false,
                deferred_rounds: 0,
            });
        }
    }

    /// Serializes the active snapshot's next step into `buf` (a buffer its
    /// thread has written) and sends it; after the last, the tail and the
    /// key-value length. A failed step (the store was compacted or
    /// replaced) abandons the snapshot.
    fn snapshot_step(&mut self, buf: Option<Vec<u8>>) {
        let Some(a) = self.snapshot.as_mut() else {
            return;
        };
        let Some(mut buf) = buf else {
            // The thread stopped on its own (an I/O error); it reports it.
            a.sent_all = true;
            return;
        };
        buf.clear();
        let section = a.job.section();
        match a.job.step(&mut buf) {
            Ok(done) => {
                let _ = a.pieces.send(Piece::Data(buf, section));
                if done {
                    if !a.job.is_delta() {
                        let _ = a.pieces.send(Piece::Data(a.job.tail().to_vec(), None));
                    }
                    let _ = a.pieces.send(Piece::Finish(kv_len_slot(a.job.kv_len())));
                    a.sent_all = true;
                }
            }
            Err(e) => {
                tracing::warn!(index = a.index, error = %e, "snapshot abandoned; the next threshold tries again");
                // Its thread sees the channel closed, removes the file and
                // reports the failure through the writer.
                self.snapshot = None;
            }
        }
    }

    /// The writer reported the snapshot at `index` saved or failed.
    fn snapshot_finished(&mut self, index: u64) {
        if self.snapshot.as_ref().is_some_and(|a| a.index == index) {
            self.snapshot = None;
        }
    }

    /// Starts a snapshot thread running `body`; `false` (and the replica
    /// told) if it could not start.
    fn spawn_snapshot(
        &mut self,
        index: u64,
        body: impl FnOnce(&std::path::Path, &std::sync::mpsc::Sender<WriteJob>) + Send + 'static,
    ) -> bool {
        self.stats.snapshots.fetch_add(1, Ordering::Relaxed);
        let writer = self.writer.clone();
        let dir = self.snap_dir.clone();
        let spawned = std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || {
                // Below the loop and the WAL writer when the cores are busy
                // (on Linux this sets the calling thread's nice value only).
                if let Err(e) = rustix::process::setpriority_process(None, SNAPSHOT_THREAD_NICE) {
                    tracing::debug!(error = %e, "could not lower the snapshot thread's priority");
                }
                body(&dir, &writer)
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, index, "starting the snapshot thread failed; the next threshold tries again");
            self.replica.snapshot_saved(index);
            return false;
        }
        true
    }

    /// Answers the client waiting for `c`, if it still waits.
    fn complete(&mut self, c: Completion<Result<Applied, Refused>, ()>) {
        let Some(waiter) = self.waiters.remove(&c.req_id) else {
            return;
        };
        let r = match c.outcome {
            Outcome::Applied { output, .. } => match output {
                Ok(Applied::Kv(out)) => Ok(Some(out)),
                Ok(Applied::Registry | Applied::Auth) => Ok(None),
                Err(Refused::Auth(e)) => Err(EtcdError::Auth(e)),
                Err(Refused::NoSpace) => Err(EtcdError::NoSpace),
                Err(Refused::Kv(e)) => Err(command::request_error(e)),
                Err(Refused::Undecodable(e)) => {
                    Err(EtcdError::Internal(format!("etcdserver: {e}")))
                }
            },
            Outcome::ConfChanged { .. } | Outcome::Read { .. } => Ok(None),
            Outcome::Failed(f) => Err(request_failure(f)),
        };
        if let Waiter::Kv(_, proposed) = waiter {
            self.stats.latency.since(Stage::Commit, proposed);
            let counter = match &r {
                Ok(_) => &self.stats.proposals_committed,
                Err(_) => &self.stats.proposals_failed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        waiter.send(r);
    }

    fn on_event(&mut self, e: Event<MvccEvent>) -> Result<(), LoopError> {
        match e {
            Event::Role(ss) => self.on_role(ss),
            Event::Membership(m) => {
                tracing::info!(index = m.index, conf = ?m.conf_state, "membership changed");
                if m.self_removed {
                    return Err(LoopError::Removed);
                }
            }
            Event::SnapshotInstalled { index, term } => {
                self.stats
                    .snapshots_installed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    index,
                    term,
                    "restored state machine from the leader's snapshot"
                );
            }
            Event::Applied { event, .. } => self.applied_events.push(event),
        }
        Ok(())
    }

    fn on_role(&mut self, ss: SoftState) {
        if ss.leader != self.status.leader {
            self.status.leader_changes += 1;
            tracing::info!(term = ss.term, leader = ?ss.leader.map(|l| format!("{l:x}")), role = ?ss.role, "leadership changed");
        }
        self.status.leader = ss.leader;
        self.status.is_leader = ss.role == Role::Leader;
        self.status.term = ss.term;
    }

    /// Gives the transport a lane to every registered member and none to
    /// the others; a member whose URL changed (MemberUpdate) gets a new lane.
    fn reconcile_peers(&mut self) {
        let members = self.registry.members();
        let gone: Vec<u64> = self
            .lanes
            .keys()
            .filter(|id| !members.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            tracing::info!(member = %format!("{id:x}"), "member removed from the registry");
            self.transport.remove_peer(id);
            self.lanes.remove(&id);
        }
        for (id, urls) in members {
            if id == self.me {
                continue;
            }
            let Some(first) = urls.first() else {
                tracing::error!(member = %format!("{id:x}"), "registered member has no peer URL");
                continue;
            };
            if self.lanes.get(&id) == Some(first) {
                continue;
            }
            match url::Url::parse(first) {
                Ok(url) => {
                    tracing::info!(member = %format!("{id:x}"), urls = ?urls, "member added to the registry");
                    self.transport.remove_peer(id);
                    self.transport.add_peer(id, url);
                    self.lanes.insert(id, first.clone());
                }
                Err(e) => {
                    tracing::error!(member = %format!("{id:x}"), error = %e, "registered member has no usable peer URL")
                }
            }
        }
    }

    fn publish(&mut self) {
        let node = self.replica.node();
        self.status.applied = self.replica.applied_index();
        self.status.commit = node.commit_index();
        self.status.term = node.term();
        self.status.repair_barrier = node.vote_barrier();
        let conf = node.conf_state();
        self.status.is_learner = conf.learners.contains(&self.me);
        if let Ok(mut c) = self.conf.write() {
            if *c != *conf {
                *c = conf.clone();
            }
        }
        self.stats
            .proposals_pending
            .store(self.replica.pending_proposals() as u64, Ordering::Relaxed);
        let s = self.status;
        self.status_tx.send_if_modified(|old| {
            if *old != s {
                *old = s;
                true
            } else {
                false
            }
        });
    }
}

/// Where the snapshot thread writes, and what.
struct SnapshotTarget<'a> {
    dir: &'a std::path::Path,
    plan: Plan,
    /// Set to the chain the snapshot leaves once its file is durable.
    chain: &'a SharedChain,
}

/// The snapshot thread of a snapshot the loop serializes: writes the
/// pieces as they come ([`SnapshotWriter`], one pass: the key-value length
/// is filled into its slot at the end; a delta's parts around its records
/// are written after them, [`snapshot_chain::finish_delta`]), hands each
/// buffer back, then tells the WAL writer (which purges the WAL behind the
/// file, in order with its batches, and tells the loop). A failure is
/// reported the same way; nothing is lost.
fn write_snapshot_pieces(
    to: SnapshotTarget<'_>,
    due: SnapshotDue,
    pieces: &std::sync::mpsc::Receiver<Piece>,
    free: &mpsc::UnboundedSender<Vec<u8>>,
    writer: &std::sync::mpsc::Sender<WriteJob>,
    latency: Arc<Latency>,
) {
    let started = std::time::Instant::now();
    let meta = &due.meta;
    let _writing = latency.snapshot_file();
    let saved = (|| {
        let mut w = match &to.plan {
            Plan::Full { .. } => {
                SnapshotWriter::create(to.dir, meta.index, meta.term, &meta.conf_state)?
            }
            Plan::Delta { .. } => SnapshotWriter::create_delta(to.dir, meta.index, meta.term)?,
        };
        w.observe_syncs(latency.clone());
        w.pace(SNAPSHOT_WRITE_BYTES_PER_SEC);
        let mut sections = SectionTracker::default();
        if let Plan::Delta { .. } = &to.plan {
            w.begin_extent();
        }
        loop {
            match pieces.recv() {
                Ok(Piece::Data(buf, section)) => {
                    if let Plan::Full { .. } = &to.plan {
                        sections.enter(&mut w, section);
                    }
                    w.write(&buf)?;
                    // The loop is gone only when the snapshot was abandoned.
                    let _ = free.send(buf);
                }
                Ok(Piece::KvLenSlot) => {
                    sections.enter(&mut w, None);
                    w.reserve(KV_LEN_SLOT_BYTES)?;
                }
                Ok(Piece::Finish(slot)) => {
                    let (file, chain) = match &to.plan {
                        Plan::Full { .. } => {
                            let chain = sections.chain(&mut w, &to.plan);
                            (w.finish(&slot)?, chain)
                        }
                        Plan::Delta { chain, parts } => {
                            let own = w.end_extent();
                            let (file, next) = snapshot_chain::finish_delta(
                                w,
                                chain,
                                parts,
                                own,
                                &meta.conf_state,
                            )?;
                            (file, Some(next))
                        }
                    };
                    if let Ok(mut c) = to.chain.lock() {
                        *c = chain;
                    }
                    return Ok(file);
                }
                // Dropping `w` removes the temporary file.
                Err(_) => return Err(StreamedSaveError::Source(SnapshotJobError::Cancelled)),
            }
        }
    })();
    report_snapshot(due, saved, started, writer);
}

/// Tells the WAL writer how a snapshot's save ended.
fn report_snapshot(
    due: SnapshotDue,
    saved: Result<SnapshotFile, StreamedSaveError<SnapshotJobError>>,
    started: std::time::Instant,
    writer: &std::sync::mpsc::Sender<WriteJob>,
) {
    let meta = due.meta;
    let index = meta.index;
    let job = match saved {
        Ok(file) => {
            tracing::info!(
                index,
                bytes = file.len(),
                delta = file.is_delta(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "saved snapshot"
            );
            WriteJob::SnapshotSaved {
                meta,
                file,
                purge_below: due.compact_through + 1,
            }
        }
        Err(e) => {
            tracing::warn!(index, error = %e, "taking a snapshot failed; the next threshold tries again");
            WriteJob::SnapshotFailed { index }
        }
    };
    // The writer is gone only when the member stops.
    let _ = writer.send(job);
}

fn propose_error(e: ProposeError) -> EtcdError {
    match e {
        ProposeError::NotLeader { leader: None } => EtcdError::NoLeader,
        ProposeError::NotLeader { .. } => EtcdError::NotLeader,
        ProposeError::UncommittedLimit | ProposeError::TooManyPending => EtcdError::TooManyRequests,
        ProposeError::ConfChange(
            e @ (metalraft_core::ConfChangeError::LeaderNotReady
            | metalraft_core::ConfChangeError::ChangePending),
        ) => EtcdError::MembershipChangeNotReady(e.to_string()),
        ProposeError::ConfChange(e) => {
            EtcdError::InvalidArgument(format!("etcdserver: membership change refused: {e}"))
        }
        ProposeError::TransferInProgress => EtcdError::LeaderChanged,
        _ => EtcdError::Stopped,
    }
}

/// etcd's answer for a request the replica could not complete.
fn request_failure(f: RequestFailure) -> EtcdError {
    match f {
        // Definite, or unknown because this member's log was replaced:
        // etcd says "leader changed" in both cases (clients retry).
        RequestFailure::Superseded { .. }
        | RequestFailure::Unknown(UnknownReason::SnapshotInstalled) => EtcdError::LeaderChanged,
        RequestFailure::Unknown(UnknownReason::TimedOut) | RequestFailure::TimedOut => {
            EtcdError::Timeout
        }
        RequestFailure::Read(e) => read_error(e),
        _ => EtcdError::Stopped,
    }
}

fn read_error(e: ReadError) -> EtcdError {
    match e {
        ReadError::NoLeader => EtcdError::NoLeader,
        ReadError::TooManyPending => EtcdError::TooManyRequests,
        ReadError::LeaderChanged => EtcdError::LeaderChanged,
        ReadError::TimedOut | ReadError::Rejected => EtcdError::Timeout,
        _ => EtcdError::Stopped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays the loop's rule for `rounds` rounds in which client inputs
    /// are always waiting and a written buffer is always ready (the select
    /// is modelled as taking the step whenever it is allowed to); returns
    /// the rounds that stepped.
    fn steps_under_constant_inputs(rounds: u32) -> Vec<u32> {
        let mut deferred = 0;
        let mut stepped_at = Vec::new();
        for r in 0..rounds {
            let may = snapshot_may_step(true, deferred);
            if may {
                stepped_at.push(r);
            }
            deferred = deferred_after_round(deferred, may, may);
        }
        stepped_at
    }

    #[test]
    fn a_snapshot_step_waits_for_waiting_inputs_but_never_longer_than_the_bound() {
        assert!(snapshot_may_step(false, 0), "an idle loop steps at once");
        assert!(!snapshot_may_step(true, 0));
        assert!(!snapshot_may_step(true, SNAPSHOT_MAX_DEFERRED_ROUNDS - 1));
        assert!(snapshot_may_step(true, SNAPSHOT_MAX_DEFERRED_ROUNDS));
        let at = steps_under_constant_inputs(10 * (SNAPSHOT_MAX_DEFERRED_ROUNDS + 1));
        assert_eq!(at.len(), 10, "one step every bound + 1 rounds: {at:?}");
        for w in at.windows(2) {
            assert_eq!(w[1] - w[0], SNAPSHOT_MAX_DEFERRED_ROUNDS + 1);
        }
    }

    #[test]
    fn an_overdue_step_without_a_buffer_stays_due() {
        // Allowed (overdue) but the thread had no buffer back yet: the
        // counter is kept, so the step runs as soon as one comes back.
        let d = deferred_after_round(SNAPSHOT_MAX_DEFERRED_ROUNDS, true, false);
        assert!(snapshot_may_step(true, d));
        assert_eq!(deferred_after_round(d, true, true), 0);
        assert_eq!(deferred_after_round(3, false, false), 4);
        assert_eq!(deferred_after_round(u32::MAX, false, false), u32::MAX);
    }
}
