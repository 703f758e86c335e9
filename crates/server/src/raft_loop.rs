//! The task that owns the Raft core and drives it with real time.
//!
//! One loop, in the order the core's contract asks for: feed inputs (ticks,
//! peer messages, proposals, read requests, persistence acknowledgements),
//! then for every `Ready`: send messages, hand the persistence batch to the
//! WAL writer thread (which acknowledges it after `fdatasync`), answer read
//! states, apply committed entries and complete the clients waiting on them.
//!
//! Client-facing code talks to the loop through a [`RaftHandle`] and
//! observes it through a [`watch`] of [`NodeStatus`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use metalraft_core::{
    ConfChange, ConfChangeError, ConfState, Entry, EntryData, Message, Node, ReadError, Role,
    SnapshotChunk, SnapshotInstall, SnapshotMeta, TransferError,
};
use metalraft_kv as kv;
use tokio::sync::{mpsc, oneshot, watch};

use crate::command::{self, Payload};
use crate::errors::EtcdError;
use crate::registry::{Registry, RegistryOp, SnapshotData};
use crate::storage::{SharedLog, Snapshot, WriteBatch};
use crate::transport::Transport;
use crate::writer::{WriteJob, WriterEvent, WriterGauges};

/// Capacity of the loop's input queue; beyond it clients get "too many requests".
pub const INPUT_QUEUE_CAPACITY: usize = 16 * 1024;
/// Most inputs handled before the next `Ready` is processed.
pub const MAX_INPUTS_PER_ROUND: usize = 4096;
/// Most proposals waiting for their entry to apply.
pub const MAX_PENDING_PROPOSALS: usize = 64 * 1024;
/// Log entries kept behind a snapshot for followers that lag a little
/// (etcd's `SnapshotCatchUpEntries`), capped by `--snapshot-count`.
pub const SNAPSHOT_CATCH_UP_ENTRIES: u64 = 5000;
/// Largest snapshot accepted from a leader.
pub const MAX_INCOMING_SNAPSHOT_BYTES: usize = 4 * 1024 * 1024 * 1024;

/// The Raft node as the server instantiates it.
pub type RaftNode = Node<Vec<u8>, SharedLog>;

/// The result a proposer gets: the state machine's answer, or why not.
pub type ProposeResult = Result<kv::CommandResult, EtcdError>;

/// Requests to the loop.
pub enum Input {
    /// A message from a peer (already validated by the transport).
    Step(Message<Vec<u8>>),
    /// A write to propose; answered when applied.
    Propose {
        /// The command.
        cmd: kv::Command,
        /// Where the result goes.
        reply: oneshot::Sender<ProposeResult>,
    },
    /// A linearizable read: answered with the index to wait for.
    ReadIndex {
        /// Where the read index goes.
        reply: oneshot::Sender<Result<u64, EtcdError>>,
    },
    /// A member-registry change to replicate; answered when applied.
    ProposeRegistry {
        /// The change.
        op: RegistryOp,
        /// Applied, or why not.
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
}

/// A cheap handle for client-facing code.
#[derive(Clone)]
pub struct RaftHandle {
    inputs: mpsc::Sender<Input>,
    /// Status updates.
    pub status: watch::Receiver<NodeStatus>,
    /// The state machine (read under the lock for serializable reads).
    pub kv: Arc<RwLock<kv::KvStore>>,
    /// Loop counters.
    pub stats: Arc<LoopStats>,
    /// The member registry.
    pub registry: Registry,
    /// The core's configuration in effect.
    pub conf: Arc<RwLock<ConfState>>,
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
        self.try_send(Input::Propose { cmd, reply })?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(EtcdError::Stopped),
            Err(_) => Err(EtcdError::Timeout),
        }
    }

    /// Obtains a read index and waits until it is applied.
    pub async fn linearizable_barrier(&self, timeout: Duration) -> Result<(), EtcdError> {
        let fut = async {
            let (reply, rx) = oneshot::channel();
            self.try_send(Input::ReadIndex { reply })?;
            let index = rx.await.map_err(|_| EtcdError::Stopped)??;
            self.wait_applied(index).await
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| EtcdError::Timeout)?
    }

    /// Waits until the applied index reaches `index`.
    pub async fn wait_applied(&self, index: u64) -> Result<(), EtcdError> {
        let mut st = self.status.clone();
        let r = st.wait_for(|s| s.applied >= index || s.stopped).await;
        match r {
            Ok(s) if !s.stopped => Ok(()),
            _ => Err(EtcdError::Stopped),
        }
    }

    /// Replicates a registry change and waits until it is applied.
    pub async fn propose_registry(
        &self,
        op: RegistryOp,
        timeout: Duration,
    ) -> Result<(), EtcdError> {
        let (reply, rx) = oneshot::channel();
        self.try_send(Input::ProposeRegistry { op, reply })?;
        tokio::time::timeout(timeout, rx)
            .await
            .map_err(|_| EtcdError::Timeout)?
            .map_err(|_| EtcdError::Stopped)?
    }

    /// Proposes a membership change and waits until it is applied.
    pub async fn conf_change(&self, cc: ConfChange, timeout: Duration) -> Result<(), EtcdError> {
        let (reply, rx) = oneshot::channel();
        self.try_send(Input::ConfChange { cc, reply })?;
        tokio::time::timeout(timeout, rx)
            .await
            .map_err(|_| EtcdError::Timeout)?
            .map_err(|_| EtcdError::Stopped)?
    }

    /// Asks the core to transfer leadership.
    pub async fn transfer(&self, to: u64) -> Result<(), EtcdError> {
        let (reply, rx) = oneshot::channel();
        self.try_send(Input::Transfer { to, reply })?;
        rx.await.map_err(|_| EtcdError::Stopped)?
    }
}

/// Everything the loop owns.
pub struct RaftLoop {
    node: RaftNode,
    me: u64,
    transport: Transport,
    writer: std::sync::mpsc::Sender<WriteJob>,
    writer_events: mpsc::UnboundedReceiver<WriterEvent>,
    gauges: Arc<WriterGauges>,
    inputs: mpsc::Receiver<Input>,
    status_tx: watch::Sender<NodeStatus>,
    kv: Arc<RwLock<kv::KvStore>>,
    stats: Arc<LoopStats>,
    pending: HashMap<u64, Pending>,
    pending_conf: Option<(u64, oneshot::Sender<Result<(), EtcdError>>)>,
    registry: Registry,
    conf: Arc<RwLock<ConfState>>,
    was_member: bool,
    next_seq: u64,
    reads: HashMap<u64, oneshot::Sender<Result<u64, EtcdError>>>,
    incoming: Option<(SnapshotMeta, Vec<u8>)>,
    next_read: u64,
    tick: Duration,
    snapshot_count: u64,
    last_snapshot_index: u64,
    status: NodeStatus,
}

/// A client waiting for its entry to apply.
enum Pending {
    Kv(oneshot::Sender<ProposeResult>),
    Registry(oneshot::Sender<Result<(), EtcdError>>),
}

impl Pending {
    fn fail(self, e: EtcdError) {
        match self {
            Pending::Kv(tx) => {
                let _ = tx.send(Err(e));
            }
            Pending::Registry(tx) => {
                let _ = tx.send(Err(e));
            }
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Pending::Kv(tx) => tx.is_closed(),
            Pending::Registry(tx) => tx.is_closed(),
        }
    }
}

/// Parameters of [`RaftLoop::new`].
pub struct LoopParts {
    /// The core.
    pub node: RaftNode,
    /// Outgoing peer messages.
    pub transport: Transport,
    /// The WAL writer's job queue.
    pub writer: std::sync::mpsc::Sender<WriteJob>,
    /// The WAL writer's events.
    pub writer_events: mpsc::UnboundedReceiver<WriterEvent>,
    /// The WAL writer's gauges.
    pub gauges: Arc<WriterGauges>,
    /// The state machine.
    pub kv: Arc<RwLock<kv::KvStore>>,
    /// Tick period (`--heartbeat-interval`).
    pub tick: Duration,
    /// Applied entries between snapshots.
    pub snapshot_count: u64,
    /// Index of the snapshot the state machine was restored from.
    pub snapshot_index: u64,
    /// The member registry.
    pub registry: Registry,
}

impl RaftLoop {
    /// Builds the loop and its handle.
    pub fn new(p: LoopParts) -> (RaftLoop, RaftHandle) {
        let (tx, rx) = mpsc::channel(INPUT_QUEUE_CAPACITY);
        let applied = p.node.applied_index();
        let status = NodeStatus {
            term: p.node.term(),
            applied,
            commit: p.node.commit_index(),
            ..NodeStatus::default()
        };
        let (status_tx, status_rx) = watch::channel(status);
        let stats = Arc::new(LoopStats::default());
        let me = p.node.id();
        let conf = Arc::new(RwLock::new(p.node.conf_state().clone()));
        let was_member = p.node.conf_state().contains(me);
        let handle = RaftHandle {
            inputs: tx,
            status: status_rx,
            kv: p.kv.clone(),
            stats: stats.clone(),
            registry: p.registry.clone(),
            conf: conf.clone(),
        };
        let lp = RaftLoop {
            me,
            node: p.node,
            transport: p.transport,
            writer: p.writer,
            writer_events: p.writer_events,
            gauges: p.gauges,
            inputs: rx,
            status_tx,
            kv: p.kv,
            stats,
            pending: HashMap::new(),
            pending_conf: None,
            registry: p.registry,
            conf,
            was_member,
            next_seq: 1,
            reads: HashMap::new(),
            incoming: None,
            next_read: 1,
            tick: p.tick,
            snapshot_count: p.snapshot_count,
            last_snapshot_index: p.snapshot_index,
            status,
        };
        (lp, handle)
    }

    /// Runs until `shutdown` fires or storage fails. Returns the fatal
    /// error, if any.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), String> {
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                _ = ticker.tick() => {
                    if let Err(e) = self.node.tick() {
                        break Err(format!("raft node stopped: {e}"));
                    }
                    if self.transport.removed() {
                        break Err(crate::registry::REMOVED_MESSAGE.to_string());
                    }
                }
                Some(input) = self.inputs.recv() => {
                    self.handle(input);
                    for _ in 0..MAX_INPUTS_PER_ROUND {
                        match self.inputs.try_recv() {
                            Ok(i) => self.handle(i),
                            Err(_) => break,
                        }
                    }
                }
                ev = self.writer_events.recv() => match ev {
                    Some(WriterEvent::Persisted(tokens)) => {
                        let mut failed = None;
                        for t in tokens {
                            if let Err(e) = self.node.on_persisted(t) {
                                failed = Some(format!("acknowledging a persisted batch: {e}"));
                                break;
                            }
                        }
                        if let Some(e) = failed { break Err(e); }
                    }
                    Some(WriterEvent::SnapshotSaved { meta, data, compact_to }) => {
                        let log = self.node.storage();
                        log.set_snapshot(meta, data);
                        log.compact_to(compact_to);
                    }
                    Some(WriterEvent::Fatal(e)) => break Err(format!("storage failed: {e}")),
                    None => break Err("the WAL writer stopped".to_string()),
                },
                _ = shutdown.changed() => break Ok(()),
            }
            if let Err(e) = self.process_ready() {
                break Err(e);
            }
            self.publish();
        };
        self.status.stopped = true;
        self.status_tx.send_replace(self.status);
        for (_, p) in self.pending.drain() {
            p.fail(EtcdError::Stopped);
        }
        if let Some((_, tx)) = self.pending_conf.take() {
            let _ = tx.send(Err(EtcdError::Stopped));
        }
        result
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Step(m) => {
                // Drops are normal (stale terms etc.) and counted by the core.
                if let Err(e) = self.node.step(m) {
                    tracing::trace!(error = %e, "message dropped");
                }
            }
            Input::Propose { cmd, reply } => self.propose(Payload::Kv(cmd), Pending::Kv(reply)),
            Input::ProposeRegistry { op, reply } => {
                self.propose(Payload::Registry(op), Pending::Registry(reply))
            }
            Input::ConfChange { cc, reply } => {
                if self.pending_conf.is_some() {
                    let _ = reply.send(Err(EtcdError::Unsupported(
                        "etcdserver: another membership change is in progress".into(),
                    )));
                    return;
                }
                match self.node.propose_conf_change(cc) {
                    Ok(index) => self.pending_conf = Some((index, reply)),
                    Err(e) => {
                        let err = match e {
                            ConfChangeError::NotLeader { leader: None } => EtcdError::NoLeader,
                            ConfChangeError::NotLeader { .. } => EtcdError::NotLeader,
                            ConfChangeError::Failed => EtcdError::Stopped,
                            ConfChangeError::ChangePending
                            | ConfChangeError::LeaderNotReady
                            | ConfChangeError::TransferInProgress => EtcdError::InvalidArgument(
                                format!("etcdserver: membership change refused: {e}"),
                            ),
                            other => EtcdError::InvalidArgument(format!(
                                "etcdserver: membership change refused: {other}"
                            )),
                        };
                        let _ = reply.send(Err(err));
                    }
                }
            }
            Input::ReadIndex { reply } => {
                let ctx = self.next_read;
                self.next_read += 1;
                match self.node.read_index(ctx) {
                    Ok(()) => {
                        self.reads.insert(ctx, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(read_error(e)));
                    }
                }
            }
            Input::Transfer { to, reply } => {
                let r = self.node.transfer_leader(to).map_err(|e| match e {
                    TransferError::NotLeader { .. } => EtcdError::NotLeader,
                    TransferError::Failed => EtcdError::Stopped,
                    _ => EtcdError::BadLeaderTransferee,
                });
                let _ = reply.send(r);
            }
        }
    }

    fn propose(&mut self, payload: Payload, waiter: Pending) {
        if self.gauges.no_space.load(Ordering::Relaxed) {
            waiter.fail(EtcdError::NoSpace);
            return;
        }
        if self.pending.len() >= MAX_PENDING_PROPOSALS {
            self.pending.retain(|_, p| !p.is_closed());
            if self.pending.len() >= MAX_PENDING_PROPOSALS {
                waiter.fail(EtcdError::TooManyRequests);
                return;
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let data = command::encode_entry(self.me, seq, &payload);
        match self.node.propose(data) {
            Ok(_) => {
                self.pending.insert(seq, waiter);
            }
            Err(e) => {
                self.stats.proposals_failed.fetch_add(1, Ordering::Relaxed);
                waiter.fail(match e {
                    metalraft_core::ProposeError::NotLeader { leader: None } => EtcdError::NoLeader,
                    metalraft_core::ProposeError::NotLeader { .. } => EtcdError::NotLeader,
                    metalraft_core::ProposeError::UncommittedLimit => EtcdError::TooManyRequests,
                    _ => EtcdError::Stopped,
                });
            }
        }
    }

    fn process_ready(&mut self) -> Result<(), String> {
        while self.node.has_ready() {
            let mut rd = self
                .node
                .ready()
                .map_err(|e| format!("raft node stopped: {e}"))?;
            if let Some(ss) = rd.soft_state() {
                let was_leader = self.status.is_leader;
                if ss.leader != self.status.leader {
                    self.status.leader_changes += 1;
                    tracing::info!(term = ss.term, leader = ?ss.leader.map(|l| format!("{l:x}")), role = ?ss.role, "leadership changed");
                }
                self.status.leader = ss.leader;
                self.status.is_leader = ss.role == Role::Leader;
                self.status.term = ss.term;
                if was_leader && !self.status.is_leader {
                    // Entries proposed here may or may not commit under the
                    // next leader; etcd answers "leader changed" too.
                    for (_, p) in self.pending.drain() {
                        p.fail(EtcdError::LeaderChanged);
                    }
                    if let Some((_, tx)) = self.pending_conf.take() {
                        let _ = tx.send(Err(EtcdError::LeaderChanged));
                    }
                }
            }
            self.transport.send(rd.take_messages());
            for chunk in rd.take_snapshot_chunks() {
                self.receive_chunk(chunk)?;
            }
            if let Some(mut p) = rd.take_persist() {
                let install = match p.snapshot().cloned() {
                    Some(inst) => {
                        self.stats
                            .snapshots_installed
                            .fetch_add(1, Ordering::Relaxed);
                        Some(Box::new(self.install_snapshot(inst)?))
                    }
                    None => None,
                };
                let batch = WriteBatch {
                    entries: p.take_entries(),
                    hard_state: p.hard_state(),
                };
                let sync = p.must_sync();
                let job = WriteJob::Persist {
                    batch,
                    sync,
                    token: p.into_token(),
                    install,
                };
                self.writer
                    .send(job)
                    .map_err(|_| "the WAL writer stopped".to_string())?;
            }
            for rs in rd.take_read_states() {
                if let Some(tx) = self.reads.remove(&rs.ctx) {
                    let _ = tx.send(rs.result.map_err(read_error));
                }
            }
            let committed = rd.take_committed_entries();
            if !committed.is_empty() {
                self.apply(committed)?;
            }
        }
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry<Vec<u8>>>) -> Result<(), String> {
        let kv_lock = self.kv.clone();
        let mut kv = kv_lock
            .write()
            .map_err(|_| "state machine lock poisoned".to_string())?;
        for e in entries {
            if e.index <= kv.applied_index() {
                // Already in the snapshot the store was restored from.
                continue;
            }
            match e.data {
                EntryData::Normal(data) => match command::decode_entry(&data) {
                    Ok(((proposer, seq), Payload::Kv(cmd))) => {
                        let out = match kv.apply(e.index, &cmd) {
                            Ok(r) => Ok(r),
                            Err(kv::ApplyError::Rejected(re)) => Err(command::request_error(re)),
                            Err(other) => {
                                return Err(format!("applying entry {}: {other}", e.index))
                            }
                        };
                        if proposer == self.me {
                            if let Some(Pending::Kv(tx)) = self.pending.remove(&seq) {
                                let counter = if out.is_ok() {
                                    &self.stats.proposals_committed
                                } else {
                                    &self.stats.proposals_failed
                                };
                                counter.fetch_add(1, Ordering::Relaxed);
                                let _ = tx.send(out);
                            }
                        }
                    }
                    Ok(((proposer, seq), Payload::Registry(op))) => {
                        kv.mark_applied(e.index)
                            .map_err(|err| format!("applying entry {}: {err}", e.index))?;
                        self.apply_registry(&op);
                        if proposer == self.me {
                            if let Some(Pending::Registry(tx)) = self.pending.remove(&seq) {
                                let _ = tx.send(Ok(()));
                            }
                        }
                    }
                    Err(reason) => {
                        // Every member decodes the same bytes the same way, so
                        // skipping is consistent; it can only come from a bug.
                        tracing::error!(index = e.index, %reason, "undecodable committed entry skipped");
                        kv.mark_applied(e.index)
                            .map_err(|err| format!("applying entry {}: {err}", e.index))?;
                    }
                },
                EntryData::ConfChange(cc) => {
                    kv.mark_applied(e.index)
                        .map_err(|err| format!("applying entry {}: {err}", e.index))?;
                    // MemberAdd/MemberRemove carry their registry change in
                    // the context: applied with the configuration, atomically.
                    if !cc.context.is_empty() {
                        match RegistryOp::decode(&cc.context) {
                            Ok(op) => self.apply_registry(&op),
                            // Same bytes, same verdict on every member.
                            Err(reason) => tracing::error!(
                                index = e.index,
                                %reason,
                                "undecodable membership change context skipped"
                            ),
                        }
                    }
                    if self
                        .pending_conf
                        .as_ref()
                        .is_some_and(|(i, _)| *i == e.index)
                    {
                        if let Some((_, tx)) = self.pending_conf.take() {
                            let _ = tx.send(Ok(()));
                        }
                    }
                    let conf = self.node.conf_state();
                    if conf.contains(self.me) {
                        self.was_member = true;
                    } else if self.was_member && !conf.voters_outgoing.contains(&self.me) {
                        return Err("this member was removed from the cluster".to_string());
                    }
                }
                _ => {
                    kv.mark_applied(e.index)
                        .map_err(|err| format!("applying entry {}: {err}", e.index))?;
                }
            }
        }
        self.status.applied = kv.applied_index();
        if self.status.applied >= self.last_snapshot_index + self.snapshot_count {
            let index = self.status.applied;
            let meta = match self.node.snapshot_created(index) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(index, error = %e, "the core refused a snapshot");
                    self.last_snapshot_index = index;
                    return Ok(());
                }
            };
            let data = SnapshotData {
                members: self.registry.members(),
                removed: self.registry.removed(),
                kv: kv.snapshot(),
            };
            let snap = Snapshot {
                index,
                term: meta.term,
                conf_state: meta.conf_state.clone(),
                data: data.encode(),
            };
            drop(kv);
            self.last_snapshot_index = index;
            self.stats.snapshots.fetch_add(1, Ordering::Relaxed);
            // Keep some entries so a slightly lagging follower catches up from
            // the log rather than needing the whole snapshot.
            let keep = SNAPSHOT_CATCH_UP_ENTRIES.min(self.snapshot_count);
            let purge_below = index.saturating_sub(keep) + 1;
            self.writer
                .send(WriteJob::Snapshot {
                    snap,
                    meta,
                    purge_below,
                })
                .map_err(|_| "the WAL writer stopped".to_string())?;
        }
        Ok(())
    }

    /// Collects the chunks of a snapshot the leader is sending.
    fn receive_chunk(&mut self, chunk: SnapshotChunk) -> Result<(), String> {
        if chunk.offset == 0 {
            self.incoming = Some((chunk.meta.clone(), Vec::new()));
        }
        let Some((meta, buf)) = self.incoming.as_mut() else {
            tracing::warn!(
                offset = chunk.offset,
                "snapshot chunk without its start dropped"
            );
            return Ok(());
        };
        if *meta != chunk.meta || buf.len() as u64 != chunk.offset {
            tracing::warn!(offset = chunk.offset, "out-of-order snapshot chunk dropped");
            return Ok(());
        }
        if buf.len() + chunk.data.len() > MAX_INCOMING_SNAPSHOT_BYTES {
            return Err(format!(
                "incoming snapshot exceeds {MAX_INCOMING_SNAPSHOT_BYTES} bytes"
            ));
        }
        buf.extend_from_slice(&chunk.data);
        Ok(())
    }

    /// Restores the state machine and registry from a received snapshot and
    /// returns what the writer must make durable before the batch.
    fn install_snapshot(
        &mut self,
        install: SnapshotInstall,
    ) -> Result<(Snapshot, SnapshotInstall), String> {
        let meta = install.meta.clone();
        let data = match self.incoming.take() {
            Some((m, data)) if m == meta => data,
            _ => {
                return Err(format!(
                    "asked to install snapshot {} without having received it",
                    meta.index
                ))
            }
        };
        let decoded = SnapshotData::decode(&data)
            .map_err(|e| format!("snapshot {} from the leader: {e}", meta.index))?;
        let store = kv::KvStore::restore(&decoded.kv)
            .map_err(|e| format!("snapshot {} from the leader: {e}", meta.index))?;
        {
            let mut kv = self
                .kv
                .write()
                .map_err(|_| "state machine lock poisoned".to_string())?;
            *kv = store;
        }
        self.registry
            .replace(decoded.members.clone(), decoded.removed);
        for (id, urls) in &decoded.members {
            if let Some(Ok(url)) = urls.first().map(|u| url::Url::parse(u)) {
                self.transport.add_peer(*id, url);
            }
        }
        self.status.applied = meta.index;
        self.last_snapshot_index = meta.index;
        tracing::info!(
            index = meta.index,
            term = meta.term,
            "restored state machine from the leader's snapshot"
        );
        let snap = Snapshot {
            index: meta.index,
            term: meta.term,
            conf_state: meta.conf_state.clone(),
            data,
        };
        Ok((snap, install))
    }

    fn apply_registry(&mut self, op: &RegistryOp) {
        self.registry.apply(op);
        match op {
            RegistryOp::Add { id, peer_urls } => {
                tracing::info!(member = %format!("{id:x}"), urls = ?peer_urls, "member added to the registry");
                match peer_urls.first().map(|u| url::Url::parse(u)) {
                    Some(Ok(url)) => {
                        // Restart the lanes: the URL may have changed (MemberUpdate).
                        self.transport.remove_peer(*id);
                        self.transport.add_peer(*id, url);
                    }
                    _ => {
                        tracing::error!(member = %format!("{id:x}"), "registered member has no usable peer URL")
                    }
                }
            }
            RegistryOp::Remove { id } => {
                tracing::info!(member = %format!("{id:x}"), "member removed from the registry");
                self.transport.remove_peer(*id);
            }
        }
    }

    fn publish(&mut self) {
        self.status.commit = self.node.commit_index();
        self.status.term = self.node.term();
        let conf = self.node.conf_state();
        self.status.is_learner = conf.learners.contains(&self.me);
        if let Ok(mut c) = self.conf.write() {
            if *c != *conf {
                *c = conf.clone();
            }
        }
        self.stats
            .proposals_pending
            .store(self.pending.len() as u64, Ordering::Relaxed);
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

fn read_error(e: ReadError) -> EtcdError {
    match e {
        ReadError::NoLeader => EtcdError::NoLeader,
        ReadError::TooManyPending => EtcdError::TooManyRequests,
        ReadError::LeaderChanged => EtcdError::LeaderChanged,
        ReadError::TimedOut | ReadError::Rejected => EtcdError::Timeout,
        _ => EtcdError::Stopped,
    }
}
