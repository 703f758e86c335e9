//! The replica: `metalraft-core`'s node plus `metalraft-kv`'s store, the
//! disk log and the client requests waiting on them. No I/O here beyond the
//! synchronous disk: inputs are datagrams and ticks, outputs go to an
//! [`Outbox`] that the task sends.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use embassy_net::IpEndpoint;
use metalraft_core::{Config, EntryData, Index, Node, ProposeError, ReadCtx, Role as CoreRole};
use metalraft_fw_proto::client::{self, ErrorCode, Op, Reply, Request, Response, Status};
use metalraft_fw_proto::config::NodeConfig;
use metalraft_kv::{Command, CommandResult, DeleteRangeRequest, KvStore, PutRequest, RangeRequest};

use super::limits::*;
use super::wire;
use crate::platform::heap;
use crate::storage::{DiskLog, Pump, Recovered, StoreError};

/// Datagrams to send.
#[derive(Default)]
pub struct Outbox {
    /// Raft messages: (peer id, message).
    pub peers: Vec<(u8, metalraft_core::Message<Vec<u8>>)>,
    /// Client responses.
    pub clients: Vec<(IpEndpoint, Response)>,
}

struct PendingWrite {
    term: u64,
    client: IpEndpoint,
    id: u64,
}

struct PendingRead {
    client: IpEndpoint,
    id: u64,
    key: Vec<u8>,
}

/// Why the replica could not be built.
#[derive(Debug)]
pub enum ReplicaError {
    /// The core refused the configuration.
    Config(metalraft_core::ConfigError),
    /// The stored snapshot does not restore.
    Snapshot,
}

impl core::fmt::Display for ReplicaError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ReplicaError::Config(e) => write!(f, "raft config: {e}"),
            ReplicaError::Snapshot => f.write_str("stored snapshot does not restore"),
        }
    }
}

/// Counters reported in the status.
#[derive(Default, Clone, Copy)]
struct Counters {
    bad_datagrams: u64,
    bad_requests: u64,
}

/// One node's replicated state machine.
pub struct Replica {
    node: Node<Vec<u8>, DiskLog>,
    kv: KvStore,
    me: u8,
    members: Vec<u8>,
    writes: BTreeMap<Index, PendingWrite>,
    reads: BTreeMap<ReadCtx, PendingRead>,
    awaiting_apply: Vec<(Index, PendingRead)>,
    next_ctx: ReadCtx,
    counters: Counters,
    recovered: Recovered,
    first_leader_ms: Option<u64>,
    failed: Option<StoreError>,
    /// Take a snapshot after this many applied entries.
    snapshot_interval: u64,
    /// The order in which a `Ready` is carried out; holds the batch taken
    /// from the last one until it is durable.
    pump: Pump,
}

fn core_config(cfg: &NodeConfig) -> Config {
    let mut c = Config::new(u64::from(cfg.node_id));
    c.heartbeat_interval_ticks = u32::from(cfg.heartbeat_ticks);
    c.election_timeout_ticks_min = u32::from(cfg.election_ticks_min);
    c.election_timeout_ticks_max = u32::from(cfg.election_ticks_max);
    c.rng_seed = cfg.rng_seed;
    c.pre_vote = true;
    c.check_quorum = true;
    c.max_entries_per_msg = MAX_ENTRIES_PER_APPEND;
    c.max_bytes_per_msg = MAX_APPEND_BYTES;
    c.max_inflight_msgs = MAX_INFLIGHT_MSGS;
    c.max_inflight_bytes = MAX_INFLIGHT_BYTES;
    c.max_uncommitted_bytes = MAX_UNCOMMITTED_BYTES;
    c.max_apply_bytes = MAX_APPLY_BYTES;
    c.max_pending_reads = MAX_CORE_PENDING_READS;
    c.max_snapshot_chunk_bytes = MAX_APPEND_BYTES;
    c.max_snapshot_chunks_inflight = 1;
    c
}

fn role(r: CoreRole) -> client::Role {
    match r {
        CoreRole::Follower => client::Role::Follower,
        CoreRole::PreCandidate => client::Role::PreCandidate,
        CoreRole::Candidate => client::Role::Candidate,
        CoreRole::Leader => client::Role::Leader,
    }
}

fn respond(out: &mut Outbox, client: IpEndpoint, id: u64, me: u8, reply: Reply) {
    out.clients.push((
        client,
        Response {
            id,
            node: me,
            reply,
        },
    ));
}

impl Replica {
    /// Builds the replica over a recovered log: the store is restored from
    /// the snapshot, if any, and the core re-delivers the committed entries
    /// after it.
    pub fn new(
        cfg: &NodeConfig,
        log: DiskLog,
        recovered: Recovered,
        snapshot: Option<Vec<u8>>,
    ) -> Result<Replica, ReplicaError> {
        let kv = match snapshot {
            Some(data) => KvStore::restore(&data).map_err(|_| ReplicaError::Snapshot)?,
            None => KvStore::new(),
        };
        let node =
            Node::new(core_config(cfg), log, kv.applied_index()).map_err(ReplicaError::Config)?;
        Ok(Replica {
            node,
            kv,
            snapshot_interval: u64::from(cfg.snapshot_interval_entries),
            me: cfg.node_id,
            members: cfg.members.clone(),
            writes: BTreeMap::new(),
            reads: BTreeMap::new(),
            awaiting_apply: Vec::new(),
            next_ctx: 1,
            counters: Counters::default(),
            recovered,
            first_leader_ms: None,
            failed: None,
            pump: Pump::new(),
        })
    }

    /// One Raft tick.
    pub fn tick(&mut self) {
        if self.failed.is_none() {
            let _ = self.node.tick();
        }
    }

    /// A datagram on the Raft port from LAN id `source`.
    pub fn on_peer_datagram(&mut self, bytes: &[u8], source: u8) {
        if self.failed.is_some() {
            return;
        }
        match wire::decode(bytes, u64::from(self.me), source, &self.members) {
            // Stale or unexpected messages are normal; the core counts them.
            Ok(msg) => {
                let _ = self.node.step(msg);
            }
            Err(e) => {
                self.counters.bad_datagrams += 1;
                if self.counters.bad_datagrams.is_power_of_two() {
                    warn!(
                        "peer datagram from {} refused: {} ({} so far)",
                        source, e, self.counters.bad_datagrams
                    );
                }
            }
        }
    }

    /// A datagram on the client port.
    pub fn on_client_datagram(&mut self, bytes: &[u8], client: IpEndpoint, out: &mut Outbox) {
        let req = match Request::decode(bytes) {
            Ok(r) => r,
            Err(_) => {
                self.counters.bad_requests += 1;
                respond(out, client, 0, self.me, Reply::Error(ErrorCode::BadRequest));
                return;
            }
        };
        let Request { id, op } = req;
        if self.failed.is_some() && op != Op::Status {
            respond(
                out,
                client,
                id,
                self.me,
                Reply::Error(ErrorCode::StorageFailed),
            );
            return;
        }
        match op {
            Op::Status => {
                let s = self.status();
                respond(out, client, id, self.me, Reply::Status(s));
            }
            Op::Put { key, value } => {
                let cmd = Command::Put(PutRequest {
                    key,
                    value,
                    ..PutRequest::default()
                });
                self.propose(cmd, client, id, out);
            }
            Op::Delete { key } => {
                let cmd = Command::DeleteRange(DeleteRangeRequest {
                    key,
                    ..DeleteRangeRequest::default()
                });
                self.propose(cmd, client, id, out);
            }
            Op::Get { key } => self.read(key, client, id, out),
        }
    }

    fn leader_id(&self) -> Option<u8> {
        self.node.leader().and_then(|l| u8::try_from(l).ok())
    }

    fn propose(&mut self, cmd: Command, client: IpEndpoint, id: u64, out: &mut Outbox) {
        if self.node.role() != CoreRole::Leader {
            respond(
                out,
                client,
                id,
                self.me,
                Reply::NotLeader {
                    leader: self.leader_id(),
                },
            );
            return;
        }
        if self.writes.len() >= MAX_PENDING_WRITES {
            respond(out, client, id, self.me, Reply::Error(ErrorCode::Busy));
            return;
        }
        if self.node.storage().last() as usize + self.writes.len()
            >= crate::storage::MAX_LOG_ENTRIES - 1
        {
            respond(out, client, id, self.me, Reply::Error(ErrorCode::LogFull));
            return;
        }
        match self.node.propose(cmd.encode()) {
            Ok(index) => {
                let term = self.node.term();
                self.writes.insert(index, PendingWrite { term, client, id });
            }
            Err(ProposeError::NotLeader { leader }) => {
                let leader = leader.and_then(|l| u8::try_from(l).ok());
                respond(out, client, id, self.me, Reply::NotLeader { leader });
            }
            Err(ProposeError::Failed) => respond(
                out,
                client,
                id,
                self.me,
                Reply::Error(ErrorCode::StorageFailed),
            ),
            Err(_) => respond(out, client, id, self.me, Reply::Error(ErrorCode::Busy)),
        }
    }

    fn read(&mut self, key: Vec<u8>, client: IpEndpoint, id: u64, out: &mut Outbox) {
        if self.reads.len() + self.awaiting_apply.len() >= MAX_PENDING_READS {
            respond(out, client, id, self.me, Reply::Error(ErrorCode::Busy));
            return;
        }
        let ctx = self.next_ctx;
        self.next_ctx += 1;
        match self.node.read_index(ctx) {
            Ok(()) => {
                self.reads.insert(ctx, PendingRead { client, id, key });
            }
            Err(_) => respond(
                out,
                client,
                id,
                self.me,
                Reply::Error(ErrorCode::ReadFailed),
            ),
        }
    }

    fn answer_read(&self, r: PendingRead, out: &mut Outbox) {
        let reply = match self.kv.range(&RangeRequest::single(&r.key)) {
            Ok(resp) => Reply::Get {
                value: resp.kvs.into_iter().next().map(|kv| kv.value),
                revision: resp.header.revision,
            },
            Err(_) => Reply::Error(ErrorCode::BadRequest),
        };
        respond(out, r.client, r.id, self.me, reply);
    }

    fn fail_writes(&mut self, out: &mut Outbox) {
        for (_, w) in core::mem::take(&mut self.writes) {
            respond(
                out,
                w.client,
                w.id,
                self.me,
                Reply::Error(ErrorCode::LeadershipLost),
            );
        }
    }

    fn apply(&mut self, index: Index, term: u64, data: &EntryData<Vec<u8>>, out: &mut Outbox) {
        let result = match data {
            EntryData::Normal(bytes) => match Command::decode(bytes) {
                Ok(cmd) => Some(self.kv.apply(index, &cmd)),
                // Only validated commands are proposed; a foreign one is
                // skipped identically on every replica.
                Err(_) => self.kv.mark_applied(index).err().map(Err),
            },
            _ => self.kv.mark_applied(index).err().map(Err),
        };
        let Some(w) = self.writes.remove(&index) else {
            return;
        };
        let reply = if w.term != term {
            Reply::Error(ErrorCode::LeadershipLost)
        } else {
            match result {
                Some(Ok(CommandResult::Put(p))) => Reply::Put {
                    revision: p.header.revision,
                },
                Some(Ok(CommandResult::DeleteRange(d))) => Reply::Delete {
                    deleted: d.deleted,
                    revision: d.header.revision,
                },
                _ => Reply::Error(ErrorCode::Rejected),
            }
        };
        respond(out, w.client, w.id, self.me, reply);
    }

    fn stop(&mut self, e: StoreError, out: &mut Outbox) {
        error!("storage failure, node stops serving: {}", e);
        self.failed = Some(e);
        self.fail_writes(out);
    }

    /// Takes one `Ready`, if there is one (see [`Pump::poll`]): its
    /// messages go to `out` (they may leave before our own write is durable:
    /// the core holds back every message that depends on it), its
    /// persistence batch is kept for [`Replica::sync`], its committed
    /// entries are applied. Returns whether there was one.
    pub fn poll_ready(&mut self, out: &mut Outbox) -> bool {
        if self.failed.is_some() {
            return false;
        }
        let mut rd = match self.pump.poll(&mut self.node) {
            Ok(Some(rd)) => rd,
            Ok(None) => return false,
            Err(e) => {
                error!("{}", e);
                self.stop(StoreError::Core, out);
                return false;
            }
        };
        if let Some(ss) = rd.soft_state() {
            info!("role {:?} term {} leader {:?}", ss.role, ss.term, ss.leader);
            if ss.leader.is_some() && self.first_leader_ms.is_none() {
                self.first_leader_ms = Some(embassy_time::Instant::now().as_millis());
            }
            if ss.role != CoreRole::Leader {
                self.fail_writes(out);
            }
        }
        for m in rd.take_messages() {
            if let Ok(to) = u8::try_from(m.to) {
                out.peers.push((to, m));
            }
        }
        for e in rd.take_committed_entries() {
            self.apply(e.index, e.term, &e.data, out);
        }
        for rs in rd.take_read_states() {
            let Some(r) = self.reads.remove(&rs.ctx) else {
                continue;
            };
            match rs.result {
                Ok(index) => self.awaiting_apply.push((index, r)),
                Err(_) => respond(
                    out,
                    r.client,
                    r.id,
                    self.me,
                    Reply::Error(ErrorCode::ReadFailed),
                ),
            }
        }
        self.answer_applied_reads(out);
        true
    }

    /// Carries out the kept persistence batch (write + flush) and
    /// acknowledges it, which releases the messages that promised it (see
    /// [`Pump::sync`]). A failure stops the node without acknowledging.
    pub fn sync(&mut self, out: &mut Outbox) {
        let kv = &mut self.kv;
        let result = self.pump.sync(&mut self.node, |log| {
            let data = log.snapshot_data()?.ok_or(StoreError::SnapshotMismatch)?;
            let restored = KvStore::restore(&data).map_err(|_| StoreError::SnapshotMismatch)?;
            info!("installed a snapshot at index {}", restored.applied_index());
            *kv = restored;
            Ok(())
        });
        if let Err(e) = result {
            error!("{}", e);
            let cause = match e {
                metalraft_fw_store::PumpError::Store(s) => s,
                metalraft_fw_store::PumpError::Core(_) => StoreError::Core,
            };
            self.stop(cause, out);
        }
    }

    /// Takes a snapshot and compacts the log once `snapshot_interval`
    /// entries were applied since the last one.
    pub fn maybe_snapshot(&mut self, out: &mut Outbox) {
        let applied = self.kv.applied_index();
        let base = self.node.storage().snapshot_index();
        if self.failed.is_some() || self.pump.syncing() || applied < base + self.snapshot_interval {
            return;
        }
        let data = self.kv.snapshot();
        let meta = match self.node.snapshot_created(applied) {
            Ok(m) => m,
            Err(e) => {
                warn!("snapshot at {} refused by the core: {}", applied, e);
                return;
            }
        };
        match self.node.storage_mut().create_snapshot(&meta, &data) {
            Ok(true) => info!(
                "snapshot at index {} ({} bytes), log compacted",
                applied,
                data.len()
            ),
            Ok(false) => {}
            Err(StoreError::SnapshotTooLarge) => {
                warn!(
                    "state machine ({} bytes) too large to snapshot; the log keeps growing",
                    data.len()
                )
            }
            Err(e) => self.stop(e, out),
        }
    }

    fn answer_applied_reads(&mut self, out: &mut Outbox) {
        let applied = self.kv.applied_index();
        let (ready, waiting): (Vec<_>, Vec<_>) = core::mem::take(&mut self.awaiting_apply)
            .into_iter()
            .partition(|(i, _)| *i <= applied);
        self.awaiting_apply = waiting;
        for (_, r) in ready {
            self.answer_read(r, out);
        }
    }

    /// This node's status.
    pub fn status(&self) -> Status {
        Status {
            node: self.me,
            role: role(self.node.role()),
            term: self.node.term(),
            leader: self.leader_id(),
            commit: self.node.commit_index(),
            applied: self.kv.applied_index(),
            last_index: self.node.storage().last(),
            snapshot_index: self.node.storage().snapshot_index(),
            snapshots_installed: self.node.stats().snapshots_installed,
            keys: self.kv.len() as u64,
            revision: self.kv.revision(),
            uptime_ms: embassy_time::Instant::now().as_millis(),
            first_leader_ms: self.first_leader_ms,
            heap_used: heap::used() as u64,
            heap_high_water: heap::high_water() as u64,
            heap_size: heap::HEAP_BYTES as u64,
            bad_datagrams: self.counters.bad_datagrams + self.counters.bad_requests,
            recovered_torn_records: self.recovered.torn_records,
            boots: self.node.storage().boots(),
        }
    }
}
