//! The node's I/O shell around [`metalraft_replica::Replica`]: it decodes
//! datagrams, keeps which client waits for which request, carries out the
//! replica's outputs in the order of the store's [`Pump`], and reports
//! status. Every decision — which client an applied entry answers, when a
//! read may be served, when to snapshot, how an incoming snapshot is
//! reassembled — is the replica's. No I/O here beyond the synchronous disk:
//! inputs are datagrams and ticks, outputs go to an [`Outbox`] that the task
//! sends.
//!
//! Membership: the configuration is the core's (the latest in the log, or
//! the snapshot's), never the config block's. A change request is checked
//! against it on the leader and proposed as one conf-change entry; one that
//! would remove the leader itself is not proposed — the leader hands
//! leadership to a voter that stays and redirects the client there.
//! A node stops ([`Shell::removed`]) when it applies its own removal, or
//! when a member that applied it tells it so: a removal notice (format in
//! [`wire`], rules in `metalraft-fw-store`'s [`Departures`]).

use alloc::vec::Vec;

use embassy_net::IpEndpoint;
use metalraft_core::{
    ConfChange, ConfChangeError, ConfChangeOp, ConfState, Index, LogStorage, Message, MessageBody,
    Role as CoreRole,
};
use metalraft_fw_proto::client::{
    self, DroppedDatagrams, ErrorCode, MemberOp, Membership, Op, Perf, Reply, Request, Response,
    Status,
};
use metalraft_fw_proto::config::NodeConfig;
use metalraft_fw_proto::disk::MAX_SNAPSHOT_BYTES;
use metalraft_fw_proto::notice::{RemovalNotice, NOTICE_BYTES, REMOVED_NOTICE_KIND};
use metalraft_kv::{Command, CommandResult, DeleteRangeRequest, KvStore, PutRequest, RangeRequest};
use metalraft_replica::{
    Config, Event, KvEvent, Outcome, ProposeError, ReadError, ReqId, RequestFailure, StateMachine,
};

use super::limits::*;
use super::wire::{self, WireError};
use crate::platform::disk::DiskError;
use crate::platform::heap;
use crate::storage::{
    believe_notice, Departures, DiskLog, DiskReplica, Pump, PumpError, Recovered, SnapshotSaved,
    StoreError, MAX_LOG_ENTRIES,
};

/// A datagram for a peer's Raft port.
pub enum PeerOut {
    /// A Raft message.
    Raft(metalraft_core::Message<Vec<u8>>),
    /// A removal notice (already encoded).
    Removed([u8; NOTICE_BYTES]),
}

/// Whether `p` is an AppendEntries that carries no entries — only a
/// commit index (the core sends one to every follower at each advance of
/// its commit index) — in `term`, at or below `commit`: a later
/// AppendEntries to the same follower in the same output, of that term and
/// with a commit index at least as high, says everything it says, so it is
/// not sent (one datagram fewer; as if the network had lost it, which Raft
/// allows: the core counts no entry-less append as in flight).
fn commit_only(p: &PeerOut, term: u64, commit: Index) -> bool {
    matches!(p, PeerOut::Raft(Message {
        term: t,
        body: MessageBody::AppendEntries { entries, leader_commit, .. },
        ..
    }) if *t == term && entries.is_empty() && *leader_commit <= commit)
}

/// Datagrams to send.
#[derive(Default)]
pub struct Outbox {
    /// To peers: (peer id, datagram).
    pub peers: Vec<(u8, PeerOut)>,
    /// Client responses.
    pub clients: Vec<(IpEndpoint, Response)>,
}

/// Why a datagram on the Raft port never reached the replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerDrop {
    /// Larger than the receive buffer: the socket cut it.
    Truncated,
    /// Not from a LAN address's Raft port.
    ForeignSource,
    /// Refused by the wire decoder.
    Wire(WireError),
}

impl PeerDrop {
    /// The cause, as the status reports it.
    fn cause(self) -> &'static str {
        match self {
            PeerDrop::Truncated => "truncated",
            PeerDrop::ForeignSource => "not from a member's Raft port",
            PeerDrop::Wire(WireError::Empty) => "empty",
            PeerDrop::Wire(WireError::UnknownVersion(_)) => "unknown version",
            PeerDrop::Wire(WireError::Malformed | WireError::TooLarge) => "malformed",
            PeerDrop::Wire(WireError::WrongRecipient) => "for another node",
            PeerDrop::Wire(WireError::WrongSender) => "sender is not who it claims",
        }
    }
}

/// Why the shell could not be built.
#[derive(Debug)]
pub enum ShellError {
    /// The replica refused the configuration.
    Config(metalraft_replica::ConfigError),
    /// The stored snapshot does not restore.
    Snapshot,
}

impl core::fmt::Display for ShellError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ShellError::Config(e) => write!(f, "raft config: {e}"),
            ShellError::Snapshot => f.write_str("stored snapshot does not restore"),
        }
    }
}

/// A client waiting for the completion of request `req_id`.
#[derive(Clone, Copy)]
struct Waiter {
    req_id: ReqId,
    client: IpEndpoint,
    /// The client's own request id, echoed in the response.
    id: u64,
}

/// Which client waits for which request: a fixed table with one slot per
/// request the replica admits (`max_pending_proposals` + `max_pending_reads`),
/// so it never fills before the replica refuses. Request ids are the
/// shell's own counter: client ids are only unique per client.
struct Waiters {
    slots: [Option<Waiter>; MAX_WAITERS],
    next: ReqId,
}

impl Waiters {
    const fn new() -> Waiters {
        Waiters {
            slots: [None; MAX_WAITERS],
            next: 1,
        }
    }

    /// The id the next request gets if the replica accepts it.
    fn next_id(&self) -> ReqId {
        self.next
    }

    /// Records the client of the accepted request [`Waiters::next_id`].
    fn insert(&mut self, client: IpEndpoint, id: u64) {
        let req_id = self.next;
        self.next += 1;
        let free = self.slots.iter_mut().find(|s| s.is_none());
        // The replica admits at most MAX_WAITERS requests at a time.
        let free = free.expect("a free waiter slot for every request the replica admits");
        *free = Some(Waiter { req_id, client, id });
    }

    fn remove(&mut self, req_id: ReqId) -> Option<Waiter> {
        self.slots
            .iter_mut()
            .find(|s| s.is_some_and(|w| w.req_id == req_id))
            .and_then(Option::take)
    }

    fn drain(&mut self) -> impl Iterator<Item = Waiter> + '_ {
        self.slots.iter_mut().filter_map(Option::take)
    }
}

fn replica_config(cfg: &NodeConfig) -> Config {
    let mut c = Config::new(u64::from(cfg.node_id));
    let core = &mut c.core;
    core.heartbeat_interval_ticks = u32::from(cfg.heartbeat_ticks);
    core.election_timeout_ticks_min = u32::from(cfg.election_ticks_min);
    core.election_timeout_ticks_max = u32::from(cfg.election_ticks_max);
    core.rng_seed = cfg.rng_seed;
    core.pre_vote = true;
    core.check_quorum = true;
    core.max_entries_per_msg = MAX_ENTRIES_PER_APPEND;
    core.max_bytes_per_msg = MAX_APPEND_BYTES;
    core.max_inflight_msgs = MAX_INFLIGHT_MSGS;
    core.max_inflight_bytes = MAX_INFLIGHT_BYTES;
    core.max_uncommitted_bytes = MAX_UNCOMMITTED_BYTES;
    core.max_apply_bytes = MAX_APPLY_BYTES;
    core.max_pending_reads = MAX_CORE_PENDING_READS;
    core.max_snapshot_chunk_bytes = MAX_APPEND_BYTES;
    core.max_snapshot_chunks_inflight = 1;
    c.snapshot_threshold_entries = u64::from(cfg.snapshot_threshold_entries);
    // The disk log keeps no entries behind a snapshot (see `Pump::sync`).
    c.snapshot_catch_up_entries = 0;
    c.max_snapshot_bytes = MAX_SNAPSHOT_BYTES as u64;
    c.max_pending_proposals = MAX_PENDING_WRITES;
    c.max_pending_reads = MAX_PENDING_READS;
    c.request_timeout_ticks = (REQUEST_TIMEOUT_MS / u64::from(cfg.tick_ms)).max(1);
    c.emit_apply_events = false;
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

/// How a request of the kv replica finished.
type KvOutcome = Outcome<<KvStore as StateMachine>::Output, <KvStore as StateMachine>::ReadOutput>;

fn lan_id(id: Option<u64>) -> Option<u8> {
    id.and_then(|l| u8::try_from(l).ok())
}

/// Node ids of a configuration: every id in it came through a change the
/// leader checked against the address plan (`1..=MAX_NODE_ID`) or from the
/// bootstrap voters of a config block, so none is truncated.
fn lan_ids(ids: &[u64]) -> Vec<u8> {
    ids.iter().map(|&i| i as u8).collect()
}

/// A configuration as the client protocol reports it.
fn membership(c: &ConfState) -> Membership {
    Membership {
        voters: lan_ids(&c.voters),
        learners: lan_ids(&c.learners),
        voters_outgoing: lan_ids(&c.voters_outgoing),
        learners_next: lan_ids(&c.learners_next),
    }
}

/// The core's change for the client's operations, if each fits the
/// configuration `c`: only non-members are added, only learners promoted,
/// only members removed.
fn conf_change(c: &ConfState, ops: &[MemberOp]) -> Option<ConfChange> {
    let mut out = Vec::with_capacity(ops.len());
    for &op in ops {
        let id = u64::from(op.node());
        let (fits, core_op) = match op {
            MemberOp::AddVoter(_) => (!c.contains(id), ConfChangeOp::AddVoter(id)),
            MemberOp::AddLearner(_) => (!c.contains(id), ConfChangeOp::AddLearner(id)),
            MemberOp::Promote(_) => (c.is_learner(id), ConfChangeOp::AddVoter(id)),
            MemberOp::Remove(_) => (c.contains(id), ConfChangeOp::Remove(id)),
        };
        if !fits {
            return None;
        }
        out.push(core_op);
    }
    Some(ConfChange::new(&out))
}

/// The client's code for a change the core refused.
fn conf_change_error(e: ConfChangeError) -> Reply {
    Reply::Error(match e {
        ConfChangeError::NotLeader { leader } => {
            return Reply::NotLeader {
                leader: lan_id(leader),
            }
        }
        ConfChangeError::Failed => ErrorCode::StorageFailed,
        ConfChangeError::NoVoters | ConfChangeError::NotJoint | ConfChangeError::InvalidId => {
            ErrorCode::BadMembershipChange
        }
        // Pending change, joint configuration not left yet, new leader not
        // ready, transfer: all pass by themselves.
        _ => ErrorCode::ChangePending,
    })
}

/// The client's answer to a finished request.
fn reply(outcome: KvOutcome) -> Reply {
    match outcome {
        Outcome::Applied {
            output: Ok(CommandResult::Put(p)),
            ..
        } => Reply::Put {
            revision: p.header.revision,
        },
        Outcome::Applied {
            output: Ok(CommandResult::DeleteRange(d)),
            ..
        } => Reply::Delete {
            deleted: d.deleted,
            revision: d.header.revision,
        },
        Outcome::Applied { .. } => Reply::Error(ErrorCode::Rejected),
        Outcome::ConfChanged { conf_state, .. } => Reply::Members(membership(&conf_state)),
        Outcome::Read {
            output: Ok(resp), ..
        } => Reply::Get {
            value: resp.kvs.into_iter().next().map(|kv| kv.value),
            revision: resp.header.revision,
        },
        Outcome::Read { output: Err(_), .. } => Reply::Error(ErrorCode::BadRequest),
        Outcome::Failed(why) => Reply::Error(match why {
            RequestFailure::Superseded { .. } => ErrorCode::Superseded,
            RequestFailure::Read(_) | RequestFailure::TimedOut => ErrorCode::ReadFailed,
            RequestFailure::Stopped => ErrorCode::StorageFailed,
            // Unknown, and any failure added later: the write may have applied.
            _ => ErrorCode::LeadershipLost,
        }),
    }
}

/// One node: the replica over the disk log, and the clients waiting on it.
pub struct Shell {
    core: DiskReplica,
    me: u8,
    waiters: Waiters,
    /// What the replica's events said (removal, departures, first leader).
    seen: Seen,
    dropped: DroppedDatagrams,
    bad_requests: u64,
    recovered: Recovered,
    failed: Option<PumpError>,
    /// The order in which an output is carried out; holds the batch taken
    /// from the last one until it is durable.
    pump: Pump,
    /// Per-stage counters (`status`); the task fills in the network and
    /// timing ones, [`Shell::status`] the disk's.
    pub perf: Perf,
}

impl Shell {
    /// Builds the node over a recovered log: the store is restored from the
    /// snapshot, if any, and the replica applies the committed entries after
    /// it.
    pub fn new(
        cfg: &NodeConfig,
        log: DiskLog,
        recovered: Recovered,
        snapshot: Option<Vec<u8>>,
    ) -> Result<Shell, ShellError> {
        let kv = match snapshot {
            Some(data) => KvStore::restore(&data).map_err(|_| ShellError::Snapshot)?,
            None => KvStore::new(),
        };
        // The snapshot's configuration; the replica replays the committed
        // changes after it as events.
        let departures = Departures::new(match log.snapshot_meta() {
            Ok(Some(meta)) => meta.conf_state,
            _ => ConfState::default(),
        });
        let core = DiskReplica::new(replica_config(cfg), log, kv).map_err(ShellError::Config)?;
        Ok(Shell {
            core,
            me: cfg.node_id,
            waiters: Waiters::new(),
            seen: Seen {
                removed: None,
                departures,
                first_leader_ms: None,
            },
            dropped: DroppedDatagrams::default(),
            bad_requests: 0,
            recovered,
            failed: None,
            pump: Pump::new(),
            perf: Perf::default(),
        })
    }

    /// One Raft tick.
    pub fn tick(&mut self) {
        if self.failed.is_none() && self.seen.removed.is_none() {
            // A failure also comes out of the next poll, which stops the node.
            if let Err(e) = self.core.tick() {
                error!("tick: {}", e);
            }
        }
    }

    /// A datagram on the Raft port from LAN id `source`.
    pub fn on_peer_datagram(&mut self, bytes: &[u8], source: u8, out: &mut Outbox) {
        if self.failed.is_some() || self.seen.removed.is_some() {
            return;
        }
        if bytes.first() == Some(&REMOVED_NOTICE_KIND) {
            match wire::decode_removed(bytes, self.me, source) {
                Ok(index) => self.on_removed_notice(index, source),
                Err(e) => self.drop_peer_datagram(PeerDrop::Wire(e), source),
            }
            return;
        }
        match wire::decode(bytes, u64::from(self.me), source) {
            // Stale or unexpected messages are normal; the core counts them.
            Ok(msg) => {
                let latest = self.core.node().conf_state();
                if let Some(index) = self.seen.departures.notice_for(source, latest) {
                    let notice = RemovalNotice {
                        to: source,
                        from: self.me,
                        index,
                    };
                    out.peers.push((source, PeerOut::Removed(notice.encode())));
                }
                let _ = self.core.step(msg);
            }
            Err(e) => self.drop_peer_datagram(PeerDrop::Wire(e), source),
        }
    }

    /// Node `source` says the change at `index` removed this node.
    fn on_removed_notice(&mut self, index: Index, source: u8) {
        if believe_notice(index, self.core.storage().last()) {
            info!(
                "node {} says the change at {} removed this node",
                source, index
            );
            self.seen.removed = Some(index);
        }
    }

    /// A datagram on the Raft port that never reached the decoder (or was
    /// refused by it), counted by cause.
    pub fn drop_peer_datagram(&mut self, why: PeerDrop, source: u8) {
        let d = &mut self.dropped;
        let counter = match why {
            PeerDrop::Truncated => &mut d.truncated,
            PeerDrop::ForeignSource => &mut d.foreign_source,
            PeerDrop::Wire(WireError::Empty) => &mut d.empty,
            PeerDrop::Wire(WireError::UnknownVersion(_)) => &mut d.unknown_version,
            PeerDrop::Wire(WireError::Malformed | WireError::TooLarge) => &mut d.malformed,
            PeerDrop::Wire(WireError::WrongRecipient) => &mut d.wrong_recipient,
            PeerDrop::Wire(WireError::WrongSender) => &mut d.wrong_sender,
        };
        *counter += 1;
        if counter.is_power_of_two() {
            warn!(
                "peer datagram from {} dropped: {} ({} so far)",
                source,
                why.cause(),
                counter
            );
        }
    }

    /// A client datagram the socket cut (larger than its buffer): there is
    /// no request id to answer.
    pub fn drop_client_datagram(&mut self) {
        self.bad_requests += 1;
    }

    /// A datagram on the client port.
    pub fn on_client_datagram(&mut self, bytes: &[u8], client: IpEndpoint, out: &mut Outbox) {
        let Ok(Request { id, op }) = Request::decode(bytes) else {
            self.bad_requests += 1;
            self.respond(out, client, 0, Reply::Error(ErrorCode::BadRequest));
            return;
        };
        let stopped = if self.seen.removed.is_some() {
            Some(ErrorCode::Removed)
        } else {
            self.failed.map(|_| ErrorCode::StorageFailed)
        };
        if let (Some(code), false) = (stopped, op == Op::Status) {
            return self.respond(out, client, id, Reply::Error(code));
        }
        let cmd = match op {
            Op::Status => {
                let s = self.status();
                return self.respond(out, client, id, Reply::Status(s));
            }
            Op::Members => {
                let m = membership(self.core.node().conf_state());
                return self.respond(out, client, id, Reply::Members(m));
            }
            Op::ChangeMembers { ops } => return self.change_members(&ops, client, id, out),
            Op::Get { key } => return self.read(key, client, id, out),
            Op::Put { key, value } => Command::Put(PutRequest {
                key,
                value,
                ..PutRequest::default()
            }),
            Op::Delete { key } => Command::DeleteRange(DeleteRangeRequest {
                key,
                ..DeleteRangeRequest::default()
            }),
        };
        self.propose(&cmd, client, id, out);
    }

    fn respond(&self, out: &mut Outbox, client: IpEndpoint, id: u64, reply: Reply) {
        let node = self.me;
        out.clients.push((client, Response { id, node, reply }));
    }

    fn propose(&mut self, cmd: &Command, client: IpEndpoint, id: u64, out: &mut Outbox) {
        // The disk log's bound, not the replica's: entries proposed now must
        // fit after those already waiting. The bound counts the entries
        // after the snapshot (the log before it is compacted away), not the
        // absolute index: that refused every write once 2047 entries had
        // ever been written, snapshots or not.
        let log = self.core.storage();
        let held = log.last().saturating_sub(log.snapshot_index()) as usize;
        let log_full = held + self.core.pending_proposals() >= MAX_LOG_ENTRIES - 1;
        if log_full && self.core.role() == CoreRole::Leader {
            return self.respond(out, client, id, Reply::Error(ErrorCode::LogFull));
        }
        let req_id = self.waiters.next_id();
        let reply = match self.core.propose(req_id, &cmd.encode()) {
            Ok(_) => return self.waiters.insert(client, id),
            Err(ProposeError::NotLeader { leader }) => Reply::NotLeader {
                leader: lan_id(leader),
            },
            Err(ProposeError::Stopped) => Reply::Error(ErrorCode::StorageFailed),
            Err(_) => Reply::Error(ErrorCode::Busy),
        };
        self.respond(out, client, id, reply);
    }

    /// A membership change on the leader (see the module doc).
    fn change_members(&mut self, ops: &[MemberOp], client: IpEndpoint, id: u64, out: &mut Outbox) {
        let reply = self.try_change_members(ops);
        match reply {
            None => self.waiters.insert(client, id),
            Some(r) => self.respond(out, client, id, r),
        }
    }

    /// Proposes the change (`None`: accepted, the client waits for its
    /// completion) or says why not.
    fn try_change_members(&mut self, ops: &[MemberOp]) -> Option<Reply> {
        let me = u64::from(self.me);
        let node = self.core.node();
        if self.core.role() != CoreRole::Leader {
            return Some(Reply::NotLeader {
                leader: lan_id(self.core.leader()),
            });
        }
        // A change still pending is the core's to refuse (ChangePending).
        let conf = node.conf_state();
        let Some(cc) = conf_change(conf, ops) else {
            return Some(Reply::Error(ErrorCode::BadMembershipChange));
        };
        // The leader is a voter, so of the operations that fit only a
        // removal can take it out of the voters.
        let removed = |id: u64| ops.contains(&MemberOp::Remove(id as u8));
        if removed(me) {
            // Removing the leader: hand off to a voter that stays, which
            // then carries out the change (as etcd does). Not while a
            // joint configuration is being left: the change would wait
            // anyway, and the hand-off would be for nothing.
            if conf.is_joint() {
                return Some(Reply::Error(ErrorCode::ChangePending));
            }
            let Some(&to) = conf.voters.iter().find(|&&v| !removed(v)) else {
                return Some(Reply::Error(ErrorCode::BadMembershipChange));
            };
            return Some(match self.core.transfer_leader(to) {
                Ok(()) => {
                    info!("handing leadership to {} before leaving", to);
                    Reply::NotLeader {
                        leader: lan_id(Some(to)),
                    }
                }
                Err(_) => Reply::Error(ErrorCode::ChangePending),
            });
        }
        let req_id = self.waiters.next_id();
        match self.core.propose_conf_change(req_id, cc) {
            Ok(_) => None,
            Err(ProposeError::ConfChange(e)) => Some(conf_change_error(e)),
            Err(ProposeError::NotLeader { leader }) => Some(Reply::NotLeader {
                leader: lan_id(leader),
            }),
            Err(ProposeError::Stopped) => Some(Reply::Error(ErrorCode::StorageFailed)),
            Err(ProposeError::TransferInProgress) => Some(Reply::Error(ErrorCode::ChangePending)),
            Err(_) => Some(Reply::Error(ErrorCode::Busy)),
        }
    }

    fn read(&mut self, key: Vec<u8>, client: IpEndpoint, id: u64, out: &mut Outbox) {
        let req_id = self.waiters.next_id();
        let code = match self.core.read(req_id, RangeRequest::single(&key)) {
            Ok(()) => return self.waiters.insert(client, id),
            Err(ReadError::TooManyPending) => ErrorCode::Busy,
            Err(ReadError::Stopped) => ErrorCode::StorageFailed,
            Err(_) => ErrorCode::ReadFailed,
        };
        self.respond(out, client, id, Reply::Error(code));
    }

    /// The node stops serving: every waiting client is told. Out of line:
    /// it has four callers, and its log line inlined into each cost .text.
    #[inline(never)]
    fn stop(&mut self, e: PumpError, out: &mut Outbox) {
        error!("{}; node stops serving", e);
        self.failed = Some(e);
        self.fail_waiters(ErrorCode::StorageFailed, out);
    }

    fn fail_waiters(&mut self, code: ErrorCode, out: &mut Outbox) {
        let me = self.me;
        for w in self.waiters.drain() {
            out.clients.push((
                w.client,
                Response {
                    id: w.id,
                    node: me,
                    reply: Reply::Error(code),
                },
            ));
        }
    }

    /// The index of the applied change that removed this node from the
    /// cluster: it serves nothing more and the task stops the board.
    pub fn removed(&self) -> Option<Index> {
        self.seen.removed
    }

    /// Takes the replica's next output, if there is one (see [`Pump::poll`]):
    /// its messages go to `out` (they may leave before our own write is
    /// durable: the core holds back every message that depends on it), its
    /// completions become client responses, its batch and snapshot are kept
    /// for [`Shell::sync`]. Returns whether there was one.
    pub fn poll(&mut self, out: &mut Outbox) -> bool {
        if self.seen.removed.is_some() {
            // Whichever way it learned it, a removed node answers whoever
            // still waits (once: the table is then empty).
            self.fail_waiters(ErrorCode::Removed, out);
            return false;
        }
        if self.failed.is_some() {
            return false;
        }
        // The output is worked on where the replica built it (no move of
        // it); its vectors are drained, so they keep their capacity.
        let me = self.me;
        let waiters = &mut self.waiters;
        let seen = &mut self.seen;
        let failure = self.pump.poll(&mut self.core, |o| {
            for e in o.events.drain(..) {
                seen.on_event(e);
            }
            for m in o.messages.drain(..) {
                if let Ok(to) = u8::try_from(m.to) {
                    if let MessageBody::AppendEntries { leader_commit, .. } = m.body {
                        out.peers
                            .retain(|(t, p)| !(*t == to && commit_only(p, m.term, leader_commit)));
                    }
                    out.peers.push((to, PeerOut::Raft(m)));
                }
            }
            for c in o.completions.drain(..) {
                if let Some(w) = waiters.remove(c.req_id) {
                    let reply = reply(c.outcome);
                    out.clients.push((
                        w.client,
                        Response {
                            id: w.id,
                            node: me,
                            reply,
                        },
                    ));
                }
            }
            o.failure.take()
        });
        let Some(failure) = failure else {
            return false;
        };
        self.perf.outputs += 1;
        if let Some(e) = failure {
            self.stop(PumpError::Replica(e), out);
        }
        true
    }
}

/// What the node learns from the replica's events (kept apart from the
/// rest of [`Shell`] so that the output can be carried out while the
/// replica is borrowed).
struct Seen {
    /// The index of the applied change that removed this node: it stops.
    removed: Option<Index>,
    /// Which nodes the applied configuration dropped (removal notices).
    departures: Departures,
    first_leader_ms: Option<u64>,
}

impl Seen {
    fn on_event(&mut self, e: Event<KvEvent>) {
        match e {
            Event::Role(ss) => {
                // Leader 0: none known (0 is never a node id; cheaper to
                // print than an Option).
                let leader = ss.leader.unwrap_or(0);
                info!("role {:?} term {} leader {}", ss.role, ss.term, leader);
                if ss.leader.is_some() && self.first_leader_ms.is_none() {
                    self.first_leader_ms = Some(embassy_time::Instant::now().as_millis());
                }
            }
            Event::SnapshotInstalled { index, .. } => {
                info!("installing the leader's snapshot at index {}", index)
            }
            Event::Membership(m) => {
                let c = &m.conf_state;
                info!(
                    "membership at index {}: voters {:?} learners {:?}",
                    m.index, c.voters, c.learners
                );
                if m.self_removed {
                    self.removed = Some(m.index);
                }
                self.departures.applied(m.index, &m.change);
            }
            // Apply events are off.
            Event::Applied { .. } => {}
        }
    }
}

impl Shell {
    /// Writes the kept batch (see [`Pump::write`]) unless the one before
    /// is still on the disk; the disk may still be carrying out its last
    /// request (the flush) when this returns. Returns whether a batch went
    /// to the disk. A storage failure stops the node.
    pub fn write(&mut self, out: &mut Outbox) -> bool {
        if self.pump.on_disk() {
            return false;
        }
        let entries = self.pump.pending_entries() as u64;
        let start = embassy_time::Instant::now();
        let written = self.pump.write(&mut self.core);
        self.perf.storage_us += start.elapsed().as_micros();
        if let Err(e) = written {
            self.stop(e, out);
        }
        if !self.pump.on_disk() {
            return false;
        }
        self.perf.batches += 1;
        self.perf.entries_written += entries;
        true
    }

    /// Whether a written batch or a snapshot waits for [`Shell::acknowledge`].
    pub fn syncing(&self) -> bool {
        self.pump.syncing()
    }

    /// Once the disk finished everything [`Shell::write`] wrote (`disk`:
    /// how it went), acknowledges the batch — which releases the messages
    /// that promised it — then stores the kept snapshot (see
    /// [`Pump::acknowledge`]). A failed request stops the node without
    /// acknowledging.
    pub fn acknowledge(&mut self, disk: Result<(), DiskError>, out: &mut Outbox) {
        if !self.pump.syncing() {
            return;
        }
        if let Err(e) = disk {
            let e = self.pump.fail(StoreError::Disk(e));
            return self.stop(e, out);
        }
        let start = embassy_time::Instant::now();
        let done = self.pump.acknowledge(&mut self.core);
        self.perf.storage_us += start.elapsed().as_micros();
        match done {
            Ok(done) => match done.snapshot {
                Some(SnapshotSaved::Stored { index, bytes }) => {
                    info!(
                        "snapshot at index {} ({} bytes), log compacted",
                        index, bytes
                    )
                }
                Some(SnapshotSaved::TooLarge { bytes }) => warn!(
                    "state machine ({} bytes) too large to snapshot; the log keeps growing",
                    bytes
                ),
                Some(SnapshotSaved::Covered) | None => {}
            },
            Err(e) => self.stop(e, out),
        }
    }

    /// This node's status.
    pub fn status(&self) -> Status {
        let kv = self.core.state_machine();
        let log = self.core.storage();
        Status {
            node: self.me,
            role: role(self.core.role()),
            term: self.core.term(),
            leader: lan_id(self.core.leader()),
            commit: self.core.node().commit_index(),
            applied: kv.applied_index(),
            last_index: log.last(),
            snapshot_index: log.snapshot_index(),
            snapshots_installed: self.core.stats().snapshots_installed,
            keys: kv.len() as u64,
            revision: kv.revision(),
            uptime_ms: embassy_time::Instant::now().as_millis(),
            first_leader_ms: self.seen.first_leader_ms,
            heap_used: heap::used() as u64,
            heap_high_water: heap::high_water() as u64,
            heap_size: heap::HEAP_BYTES as u64,
            static_bytes: crate::platform::ram::static_bytes() as u64,
            stack_high_water: crate::platform::ram::stack_high_water() as u64,
            stack_watch: crate::platform::ram::STACK_WATCH_BYTES as u64,
            bad_datagrams: self.dropped.total(),
            dropped: self.dropped,
            bad_requests: self.bad_requests,
            recovered_torn_records: self.recovered.torn_records,
            boots: log.boots(),
            perf: {
                let d = crate::platform::disk::stats();
                Perf {
                    disk_writes: d.writes,
                    flushes: d.flushes,
                    write_us: d.write_us,
                    flush_us: d.flush_us,
                    ..self.perf
                }
            },
        }
    }
}
