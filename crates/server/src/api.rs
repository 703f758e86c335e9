//! The etcd v3 gRPC services (KV, Cluster, Maintenance) and the internal
//! Peer service, over one member's [`Shared`] context.
//!
//! Writes go through the Raft log: on the leader they are proposed
//! directly; a follower forwards them to the leader over the Peer service
//! and relays the leader's answer (etcd forwards proposals too).
//! Linearizable reads wait for a ReadIndex (answered by the leader, also
//! when asked on a follower) to be applied locally; serializable reads are
//! served from local state at once.

// tonic's handlers return `Result<_, Status>`; `Status` is large by design.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metalraft_kv as kv;
use tokio_stream::Stream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::command::{self, HeaderInfo};
use crate::config::MemberConfig;
use crate::errors::{self, EtcdError};
use crate::machine::NOSPACE_ALARM;
use crate::proto::etcdserverpb as pb;
use crate::proto::peer::{self as peerpb, peer_client::PeerClient};
use crate::raft_loop::{Input, RaftHandle};
use crate::registry::RegistryOp;
use crate::transport::{self, TransportStats};
use crate::writer::WriterGauges;
use metalraft_core::{ConfChange, ConfChangeOp};

/// The etcd API version reported by `Status` (the protocol we speak).
pub const ETCD_API_VERSION: &str = "3.4.0";
/// Bytes of snapshot data per streamed `SnapshotResponse`.
pub const SNAPSHOT_CHUNK_BYTES: usize = 64 * 1024;
/// How long a request waits for a leader, a commit or a read index.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);
/// A learner is promotable when its applied index is at least
/// `LEARNER_READY_NUMERATOR / LEARNER_READY_DENOMINATOR` of the leader's
/// commit index (etcd's 90%).
pub const LEARNER_READY_NUMERATOR: u64 = 9;
/// See [`LEARNER_READY_NUMERATOR`].
pub const LEARNER_READY_DENOMINATOR: u64 = 10;
/// How long a member waits for a peer's `Info` answer.
pub const PEER_INFO_TIMEOUT: Duration = Duration::from_millis(500);
/// How often a follower relaying a cluster request looks again for the
/// leader's published client URL (a new leader publishes it right after it
/// is elected).
pub const LEADER_URL_POLL: Duration = Duration::from_millis(20);

/// What every service of a member shares.
pub struct Shared {
    /// Validated configuration (ids as persisted in the data directory).
    pub cfg: MemberConfig,
    /// The Raft loop.
    pub raft: RaftHandle,
    /// WAL writer gauges (no-space flag, sizes).
    pub gauges: Arc<WriterGauges>,
    /// Transport counters.
    pub transport_stats: Arc<TransportStats>,
    /// Per-method gRPC counters of the client port.
    pub grpc_metrics: Arc<crate::grpc_metrics::GrpcMetrics>,
    /// `/health` outcomes.
    pub health_counts: crate::metrics::HealthCounts,
    /// Slots for keepalives relayed to the leader
    /// ([`crate::lease::LEASE_RELAYS_IN_FLIGHT`]).
    pub lease_relays: tokio::sync::Semaphore,
    /// Lazily connected clients of the other members' Peer services.
    peers: Mutex<BTreeMap<u64, (String, PeerClient<Channel>)>>,
}

impl Shared {
    /// The shared context of a member's services.
    pub fn new(
        cfg: MemberConfig,
        raft: RaftHandle,
        gauges: Arc<WriterGauges>,
        transport_stats: Arc<TransportStats>,
    ) -> Shared {
        let extensive = cfg.metrics == crate::cli::MetricsLevel::Extensive;
        Shared {
            cfg,
            raft,
            gauges,
            transport_stats,
            grpc_metrics: Arc::new(crate::grpc_metrics::GrpcMetrics::new(extensive)),
            health_counts: crate::metrics::HealthCounts::default(),
            lease_relays: tokio::sync::Semaphore::new(crate::lease::LEASE_RELAYS_IN_FLIGHT),
            peers: Mutex::new(BTreeMap::new()),
        }
    }

    /// A client of member `id`'s Peer service (connected lazily).
    pub(crate) fn peer_client(&self, id: u64) -> Option<PeerClient<Channel>> {
        let mut peers = self.peers.lock().ok()?;
        let urls = self.raft.registry.members().get(&id)?.clone();
        let first = urls.first()?.clone();
        if let Some((u, c)) = peers.get(&id) {
            if *u == first {
                return Some(c.clone());
            }
        }
        let url = url::Url::parse(&first).ok()?;
        let ep = transport::endpoint(&url, self.cfg.tls.peer_dial.as_ref()).ok()?;
        let client = PeerClient::new(ep.connect_lazy())
            .max_decoding_message_size(transport::PEER_MAX_GRPC_BYTES)
            .max_encoding_message_size(transport::PEER_MAX_GRPC_BYTES);
        peers.insert(id, (first, client.clone()));
        Some(client)
    }

    /// The header fields as of now.
    pub fn header_info(&self) -> HeaderInfo {
        HeaderInfo {
            cluster_id: self.cfg.cluster_id,
            member_id: self.cfg.id,
            raft_term: self.raft.status.borrow().term,
        }
    }

    pub(crate) fn revision(&self) -> i64 {
        self.raft.kv.read().map(|k| k.revision()).unwrap_or(0)
    }

    pub(crate) fn envelope(&self, to: u64) -> peerpb::Envelope {
        peerpb::Envelope {
            cluster_id: self.cfg.cluster_id,
            from: self.cfg.id,
            to,
        }
    }

    fn check_size<M: prost::Message>(&self, m: &M) -> Result<(), EtcdError> {
        if m.encoded_len() > self.cfg.max_request_bytes {
            return Err(EtcdError::RequestTooLarge);
        }
        Ok(())
    }

    /// Waits (bounded) until some leader is known, returning the status.
    pub(crate) async fn leader(&self) -> Result<crate::raft_loop::NodeStatus, EtcdError> {
        let mut st = self.raft.status.clone();
        let r = tokio::time::timeout(
            REQUEST_TIMEOUT,
            st.wait_for(|s| s.leader.is_some() || s.stopped),
        )
        .await;
        match r {
            Ok(Ok(s)) if !s.stopped => Ok(*s),
            Ok(_) => Err(EtcdError::Stopped),
            Err(_) => Err(EtcdError::NoLeader),
        }
    }

    /// Runs a write through the log: directly on the leader, forwarded from
    /// a follower.
    pub async fn write(&self, cmd: kv::Command) -> Result<kv::CommandResult, EtcdError> {
        // Refuse what the state machine would refuse before it costs a log
        // entry (the check runs again, deterministically, at apply).
        cmd.validate().map_err(command::request_error)?;
        self.check_space(&cmd)?;
        let st = self.leader().await?;
        if st.is_leader {
            return self.raft.propose(cmd, REQUEST_TIMEOUT).await;
        }
        let leader = st.leader.ok_or(EtcdError::NoLeader)?;
        let mut client = self.peer_client(leader).ok_or(EtcdError::NoLeader)?;
        let req = peerpb::ForwardRequest {
            envelope: Some(self.envelope(leader)),
            command: cmd.encode(),
        };
        let reply = tokio::time::timeout(REQUEST_TIMEOUT, client.forward(req))
            .await
            .map_err(|_| EtcdError::Timeout)?
            .map_err(|s| errors::from_status(&s))?;
        kv::CommandResult::decode(&reply.get_ref().result)
            .map_err(|e| EtcdError::Internal(format!("undecodable result from the leader: {e}")))
    }

    /// Waits until this member has applied everything committed when the
    /// call started (ReadIndex), so a local read is linearizable.
    pub async fn read_barrier(&self) -> Result<(), EtcdError> {
        // etcd 3.4 serves only serializable reads on a learner.
        if self.raft.status.borrow().is_learner {
            return Err(EtcdError::NotSupportedForLearner);
        }
        self.leader().await?;
        self.raft.linearizable_barrier(REQUEST_TIMEOUT).await
    }

    /// Serves a transaction whose every operation (nested ones included)
    /// is a range without the log, as etcd does: after a ReadIndex wait
    /// unless every range is serializable, then against one view of the
    /// store (every compare and range at the same revision), with the
    /// answer and errors applying it through the log would give (the
    /// revision does not move). The caller checked permissions and size.
    pub async fn read_only_txn(
        &self,
        t: &kv::TxnRequest,
        serializable: bool,
    ) -> Result<pb::TxnResponse, EtcdError> {
        // What `write` refuses before proposing, refused before waiting.
        t.validate().map_err(command::request_error)?;
        if !serializable {
            self.read_barrier().await?;
        } else if self.raft.status.borrow().repair_barrier.is_some() {
            // As a serializable Range: the local state may be older than
            // what this member acknowledged (ADR 0021).
            return Err(EtcdError::NotCapable);
        }
        let kv = self.raft.kv.read().map_err(|_| EtcdError::Stopped)?;
        let out = kv.read_txn(t).map_err(|e| match e {
            kv::ReadTxnError::Refused(e) => command::request_error(e),
            other => EtcdError::Internal(format!("read-only txn: {other}")),
        })?;
        let mut resp = command::txn_response(&self.header_info(), out);
        crate::lease::fill_txn_leases(&kv, &mut resp);
        drop(kv);
        Ok(resp)
    }

    pub(crate) fn url_strings(urls: &[url::Url]) -> Vec<String> {
        urls.iter()
            .map(|u| u.as_str().trim_end_matches('/').to_string())
            .collect()
    }

    /// The members as etcd lists them, from this member's applied state
    /// only (see [`crate::registry`]): peer URLs and published attributes
    /// from the registry, the learner flag from the core's configuration.
    /// A member that has not published yet has an empty name and no client
    /// URLs, as etcd shows an unstarted member.
    pub fn members(&self) -> Vec<pb::Member> {
        let conf = self.raft.conf.read().map(|c| c.clone()).unwrap_or_default();
        self.raft
            .registry
            .records()
            .into_iter()
            .map(|(id, r)| pb::Member {
                id,
                name: r.attributes.name,
                peer_ur_ls: r.peer_urls,
                client_ur_ls: r.attributes.client_urls,
                is_learner: conf.is_learner(id),
            })
            .collect()
    }

    /// A member's applied index, asked over the peer service.
    async fn member_applied_index(&self, id: u64) -> Option<u64> {
        let mut c = self.peer_client(id)?;
        let req = peerpb::InfoRequest {
            envelope: Some(self.envelope(id)),
        };
        let r = tokio::time::timeout(PEER_INFO_TIMEOUT, c.info(req))
            .await
            .ok()?
            .ok()?;
        Some(r.into_inner().applied_index)
    }

    /// Client URL of the leader, to relay cluster requests to it.
    async fn leader_client_url(&self) -> Result<String, EtcdError> {
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            let st = self.leader().await?;
            let leader = st.leader.ok_or(EtcdError::NoLeader)?;
            // The leader's published client URL. A brand-new member that
            // leads before its first publish is applied has none yet: wait
            // for it (its publish is one entry, retried every
            // `PUBLISH_RETRY`), as etcd's followers, which propose through
            // Raft, never make a client see. etcdctl does not retry a
            // "no leader" MemberAdd.
            if let Some(url) = self
                .raft
                .registry
                .attributes(leader)
                .and_then(|a| a.client_urls.first().cloned())
            {
                return Ok(url);
            }
            if tokio::time::Instant::now() + LEADER_URL_POLL >= deadline {
                return Err(EtcdError::NoLeader);
            }
            tokio::time::sleep(LEADER_URL_POLL).await;
        }
    }

    /// Whether the state machine has reached `--quota-backend-bytes`.
    pub fn over_quota(&self) -> bool {
        let size = self
            .raft
            .kv
            .read()
            .map(|k| k.size_bytes() as u64)
            .unwrap_or(0);
        size >= self.cfg.quota_backend_bytes
    }

    /// Refuses writes while the disk is full, and writes that add data while
    /// the store is over its quota (deletes and compaction still pass, so
    /// space can be reclaimed), with etcd's "database space exceeded".
    fn check_space(&self, cmd: &kv::Command) -> Result<(), EtcdError> {
        if self.gauges.no_space.load(Ordering::Relaxed) {
            return Err(EtcdError::NoSpace);
        }
        if command::adds_data(cmd)
            && (self.over_quota() || self.raft.registry.alarm_raised(NOSPACE_ALARM))
        {
            return Err(EtcdError::NoSpace);
        }
        Ok(())
    }

    /// The alarms in force: those raised through the log (Alarm ACTIVATE),
    /// and this member's NOSPACE while its disk is full or its data over
    /// the quota (cleared by itself once the condition ends).
    pub(crate) fn alarms(&self) -> Vec<pb::AlarmMember> {
        let mut alarms: Vec<pb::AlarmMember> = self
            .raft
            .registry
            .alarms()
            .into_iter()
            .map(|(member_id, alarm)| pb::AlarmMember { member_id, alarm })
            .collect();
        let local = pb::AlarmMember {
            member_id: self.cfg.id,
            alarm: pb::AlarmType::Nospace as i32,
        };
        if (self.gauges.no_space.load(Ordering::Relaxed) || self.over_quota())
            && !alarms.contains(&local)
        {
            alarms.push(local);
        }
        alarms
    }
}

/// etcd reports the compacted revision of a store never compacted as -1
/// (its `compactMainRev` starts there); clients test for it.
fn etcd_compact_revision(compacted: i64) -> i64 {
    if compacted == 0 {
        -1
    } else {
        compacted
    }
}

/// etcd's KV service.
pub struct KvService(pub Arc<Shared>);
/// etcd's Cluster service.
pub struct ClusterService(pub Arc<Shared>);
/// etcd's Maintenance service.
pub struct MaintenanceService(pub Arc<Shared>);
/// The internal Peer service.
pub struct PeerService(pub Arc<Shared>);

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn range(
        &self,
        req: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let s = &self.0;
        crate::auth::service::authorize(s, &req)?;
        let r = req.into_inner();
        s.check_size(&r)?;
        let kr = command::range_request(&r)?;
        if !r.serializable {
            s.read_barrier().await?;
        } else if s.raft.status.borrow().repair_barrier.is_some() {
            // Repairing after mid-log WAL damage (ADR 0021): the local
            // state may be older than what this member acknowledged.
            return Err(EtcdError::NotCapable.into());
        }
        let kv = s.raft.kv.read().map_err(|_| EtcdError::Stopped)?;
        let out = kv.range(&kr).map_err(command::request_error)?;
        let mut resp = command::range_response(&s.header_info(), out);
        crate::lease::fill_leases(&kv, &mut resp.kvs);
        drop(kv);
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let s = &self.0;
        crate::auth::service::authorize(s, &req)?;
        crate::auth::service::authorize_lease(s, &req, [req.get_ref().lease])?;
        let r = req.into_inner();
        s.check_size(&r)?;
        let cmd = command::put_command(&r)?;
        match s.write(cmd).await? {
            kv::CommandResult::Put(p) => {
                Ok(Response::new(command::put_response(&s.header_info(), p)))
            }
            _ => Err(EtcdError::Internal("unexpected result kind".into()).into()),
        }
    }

    async fn delete_range(
        &self,
        req: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let s = &self.0;
        crate::auth::service::authorize(s, &req)?;
        let r = req.into_inner();
        s.check_size(&r)?;
        let cmd = kv::Command::DeleteRange(command::delete_request(&r));
        match s.write(cmd).await? {
            kv::CommandResult::DeleteRange(d) => {
                Ok(Response::new(command::delete_response(&s.header_info(), d)))
            }
            _ => Err(EtcdError::Internal("unexpected result kind".into()).into()),
        }
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let s = &self.0;
        crate::auth::service::authorize(s, &req)?;
        let leases = crate::auth::service::txn_leases(req.get_ref());
        crate::auth::service::authorize_lease(s, &req, leases)?;
        let r = req.into_inner();
        s.check_size(&r)?;
        let cmd = command::txn_command(&r)?;
        if let kv::Command::Txn(t) = &cmd {
            if t.is_read_only() {
                let serializable = command::txn_is_serializable(&r);
                return Ok(Response::new(s.read_only_txn(t, serializable).await?));
            }
        }
        match s.write(cmd).await? {
            kv::CommandResult::Txn(t) => {
                let mut resp = command::txn_response(&s.header_info(), t);
                if let Ok(kv) = s.raft.kv.read() {
                    crate::lease::fill_txn_leases(&kv, &mut resp);
                }
                Ok(Response::new(resp))
            }
            _ => Err(EtcdError::Internal("unexpected result kind".into()).into()),
        }
    }

    async fn compact(
        &self,
        req: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let s = &self.0;
        crate::auth::service::authorize(s, &req)?;
        let r = req.into_inner();
        let cmd = kv::Command::Compact(kv::CompactionRequest {
            revision: r.revision,
        });
        match s.write(cmd).await? {
            kv::CommandResult::Compact(c) => Ok(Response::new(pb::CompactionResponse {
                header: Some(s.header_info().header(c.header.revision)),
            })),
            _ => Err(EtcdError::Internal("unexpected result kind".into()).into()),
        }
    }
}

/// A cluster request a follower relays to the leader's client URL.
async fn leader_cluster_client(
    s: &Shared,
) -> Result<pb::cluster_client::ClusterClient<Channel>, EtcdError> {
    Ok(pb::cluster_client::ClusterClient::new(
        leader_channel(s).await?,
    ))
}

/// A channel to the leader's client URL, for requests a follower relays.
async fn leader_channel(s: &Shared) -> Result<Channel, EtcdError> {
    let url = s.leader_client_url().await?;
    let mut ep = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|e| EtcdError::Internal(format!("leader client URL: {e}")))?
        .timeout(REQUEST_TIMEOUT);
    // An https client URL is dialed with --trusted-ca-file/--peer-trusted-ca-file
    // as roots and --cert-file/--key-file as client identity (see crate::tls).
    if let (true, Some(tls)) = (url.starts_with("https://"), &s.cfg.tls.client_dial) {
        ep = ep
            .tls_config(tls.clone())
            .map_err(|e| EtcdError::Internal(format!("leader client URL TLS: {e}")))?;
    }
    ep.connect().await.map_err(|_| EtcdError::NoLeader)
}

/// Pause between two tries of a membership change the leader cannot take
/// yet (it commits its first entry within a heartbeat or two).
pub const CONF_CHANGE_RETRY: Duration = Duration::from_millis(100);

/// Proposes a membership change, trying again while the leader cannot take
/// it yet (right after an election, or while the previous change commits),
/// for up to [`REQUEST_TIMEOUT`]: an operator's `member add` during churn
/// succeeds instead of failing on a transient condition.
async fn conf_change_when_ready(s: &Shared, cc: ConfChange) -> Result<(), EtcdError> {
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match s.raft.conf_change(cc.clone(), left).await {
            Err(EtcdError::MembershipChangeNotReady(_))
                if tokio::time::Instant::now() + CONF_CHANGE_RETRY < deadline =>
            {
                tokio::time::sleep(CONF_CHANGE_RETRY).await;
            }
            r => return r,
        }
    }
}

fn is_leader(s: &Shared) -> bool {
    s.raft.status.borrow().is_leader
}

impl ClusterService {
    fn list(&self) -> Vec<pb::Member> {
        self.0.members()
    }

    /// etcd's Cluster service header: cluster, member and term, no
    /// revision.
    fn header(&self) -> pb::ResponseHeader {
        self.0.header_info().header(0)
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn member_add(
        &self,
        req: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let s = &self.0;
        crate::auth::service::authorize_admin(s, &req)?;
        if !is_leader(s) {
            let mut c = leader_cluster_client(s).await?;
            return c
                .member_add(crate::auth::service::relayed(s, req).await?)
                .await;
        }
        let r = req.into_inner();
        let urls = crate::config::parse_urls("peer-urls", &r.peer_ur_ls.join(","))
            .map_err(|e| EtcdError::InvalidArgument(format!("etcdserver: {e}")))?;
        let url_strings = Shared::url_strings(&urls);
        let registered = s.raft.registry.members();
        if registered
            .values()
            .flatten()
            .any(|u| url_strings.contains(u))
        {
            return Err(Status::failed_precondition(
                "etcdserver: Peer URLs already exists",
            ));
        }
        // Like etcd, a new member's id hashes its URLs, the cluster token
        // and the time, so URLs of a removed member can be added again
        // (under a new id; removed ids stay refused).
        let removed = s.raft.registry.removed();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let mut salt = 0u32;
        let id = loop {
            let token = format!("{}\0{nanos}\0{salt}", s.cfg.cluster_token);
            let id = crate::config::member_id(&urls, &token);
            if !registered.contains_key(&id) && !removed.contains(&id) {
                break id;
            }
            salt = salt.wrapping_add(1);
        };
        let op = if r.is_learner {
            ConfChangeOp::AddLearner(id)
        } else {
            ConfChangeOp::AddVoter(id)
        };
        // One log entry: the registry change rides in the configuration
        // change's context, so a crash cannot leave one without the other.
        let context = RegistryOp::Add {
            id,
            peer_urls: url_strings.clone(),
        }
        .encode()
        .map_err(|e| EtcdError::Internal(format!("encoding a registry operation: {e}")))?;
        conf_change_when_ready(s, ConfChange::new(&[op]).with_context(context)).await?;
        let member = pb::Member {
            id,
            name: String::new(),
            peer_ur_ls: url_strings,
            client_ur_ls: Vec::new(),
            is_learner: r.is_learner,
        };
        Ok(Response::new(pb::MemberAddResponse {
            header: Some(self.header()),
            member: Some(member),
            members: self.list(),
        }))
    }

    async fn member_remove(
        &self,
        req: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let s = &self.0;
        crate::auth::service::authorize_admin(s, &req)?;
        if !is_leader(s) {
            let mut c = leader_cluster_client(s).await?;
            return c
                .member_remove(crate::auth::service::relayed(s, req).await?)
                .await;
        }
        let id = req.into_inner().id;
        if !s.raft.registry.contains(id) {
            return Err(EtcdError::MemberNotFound.into());
        }
        if id == s.cfg.id {
            // Like etcd, a leader asked to remove itself hands leadership to
            // another voter first; the new leader carries out the removal.
            let conf = s.raft.conf.read().map(|c| c.clone()).unwrap_or_default();
            let target = conf
                .voters
                .iter()
                .copied()
                .find(|v| *v != id)
                .ok_or_else(|| {
                    Status::failed_precondition("etcdserver: cannot remove the only voting member")
                })?;
            s.raft.transfer(target).await?;
            let mut st = s.raft.status.clone();
            tokio::time::timeout(
                REQUEST_TIMEOUT,
                st.wait_for(|x| x.leader.is_some_and(|l| l != id) || x.stopped),
            )
            .await
            .map_err(|_| EtcdError::Timeout)?
            .map_err(|_| EtcdError::Stopped)?;
            let mut c = leader_cluster_client(s).await?;
            return c.member_remove(pb::MemberRemoveRequest { id }).await;
        }
        // One entry: the core drops the member from the configuration and
        // the registry stops accepting its messages, atomically.
        let context = RegistryOp::Remove { id }
            .encode()
            .map_err(|e| EtcdError::Internal(format!("encoding a registry operation: {e}")))?;
        conf_change_when_ready(
            s,
            ConfChange::new(&[ConfChangeOp::Remove(id)]).with_context(context),
        )
        .await?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: Some(self.header()),
            members: self.list(),
        }))
    }

    async fn member_update(
        &self,
        req: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        let s = &self.0;
        crate::auth::service::authorize_admin(s, &req)?;
        if !is_leader(s) {
            let mut c = leader_cluster_client(s).await?;
            return c
                .member_update(crate::auth::service::relayed(s, req).await?)
                .await;
        }
        let r = req.into_inner();
        if !s.raft.registry.contains(r.id) {
            return Err(EtcdError::MemberNotFound.into());
        }
        let urls = crate::config::parse_urls("peer-urls", &r.peer_ur_ls.join(","))
            .map_err(|e| EtcdError::InvalidArgument(format!("etcdserver: {e}")))?;
        let url_strings = Shared::url_strings(&urls);
        let taken = s
            .raft
            .registry
            .members()
            .into_iter()
            .any(|(id, us)| id != r.id && us.iter().any(|u| url_strings.contains(u)));
        if taken {
            return Err(Status::failed_precondition(
                "etcdserver: Peer URLs already exists",
            ));
        }
        // The id and the published attributes stay; only where the member
        // is reached changes.
        s.raft
            .propose_registry(
                RegistryOp::UpdatePeerUrls {
                    id: r.id,
                    peer_urls: url_strings,
                },
                REQUEST_TIMEOUT,
            )
            .await?;
        Ok(Response::new(pb::MemberUpdateResponse {
            header: Some(self.header()),
            members: self.list(),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let s = &self.0;
        crate::auth::service::authorize_admin(s, &req)?;
        if !is_leader(s) {
            let mut c = leader_cluster_client(s).await?;
            return c
                .member_promote(crate::auth::service::relayed(s, req).await?)
                .await;
        }
        let id = req.into_inner().id;
        if !s.raft.registry.contains(id) {
            return Err(EtcdError::MemberNotFound.into());
        }
        let learner = s
            .raft
            .conf
            .read()
            .map(|c| c.is_learner(id))
            .unwrap_or(false);
        if !learner {
            return Err(Status::failed_precondition(
                "etcdserver: can only promote a learner member",
            ));
        }
        // etcd promotes only a learner within 10% of the leader's log.
        let commit = s.raft.status.borrow().commit;
        let applied = s.member_applied_index(id).await;
        let ready = applied.is_some_and(|a| {
            a.saturating_mul(LEARNER_READY_DENOMINATOR)
                >= commit.saturating_mul(LEARNER_READY_NUMERATOR)
        });
        if !ready {
            return Err(Status::failed_precondition(
                "etcdserver: can only promote a learner member which is in sync with leader",
            ));
        }
        conf_change_when_ready(s, ConfChange::new(&[ConfChangeOp::AddVoter(id)])).await?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: Some(self.header()),
            members: self.list(),
        }))
    }

    async fn member_list(
        &self,
        _: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        // As in etcd 3.4 (MemberList has no `linearizable` flag before
        // 3.5), the answer is this member's applied registry, at once, even
        // on a member cut off from the leader: possibly stale, never partial.
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.header()),
            members: self.list(),
        }))
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        req: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        use pb::alarm_request::AlarmAction;
        let s = &self.0;
        let action = AlarmAction::try_from(req.get_ref().action).map_err(|_| {
            EtcdError::InvalidArgument(format!(
                "etcdserver: unknown alarm action {}",
                req.get_ref().action
            ))
        })?;
        if action == AlarmAction::Get {
            return Ok(Response::new(pb::AlarmResponse {
                header: Some(s.header_info().header(s.revision())),
                alarms: s.alarms(),
            }));
        }
        // ACTIVATE and DEACTIVATE go through the log, as in etcd: a
        // follower relays them to the leader, then waits until it has
        // applied them too.
        if !is_leader(s) {
            let ch = leader_channel(s).await?;
            let mut c = pb::maintenance_client::MaintenanceClient::new(ch);
            let resp = c
                .alarm(crate::auth::service::relayed(s, req).await?)
                .await?;
            s.read_barrier().await?;
            return Ok(resp);
        }
        let r = req.into_inner();
        let this = pb::AlarmMember {
            member_id: r.member_id,
            alarm: r.alarm,
        };
        let activate = action == AlarmAction::Activate;
        let was_raised = s.alarms().contains(&this);
        s.raft
            .propose_registry(
                RegistryOp::Alarm {
                    member_id: r.member_id,
                    alarm: r.alarm,
                    activate,
                },
                REQUEST_TIMEOUT,
            )
            .await?;
        // etcd answers with the alarm raised, or the one cleared (none if
        // it was not raised). A NOSPACE this member raised for its own full
        // disk or quota stays listed until the condition ends.
        Ok(Response::new(pb::AlarmResponse {
            header: Some(s.header_info().header(s.revision())),
            alarms: if activate || was_raised {
                vec![this]
            } else {
                Vec::new()
            },
        }))
    }

    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let s = &self.0;
        let st = *s.raft.status.borrow();
        let (rev, in_use) = s
            .raft
            .kv
            .read()
            .map(|k| (k.revision(), k.size_bytes() as i64))
            .unwrap_or((0, 0));
        // etcd lists each alarm as its protobuf text form.
        let errors = s
            .alarms()
            .iter()
            .map(|a| {
                let name = pb::AlarmType::try_from(a.alarm)
                    .map_or_else(|_| a.alarm.to_string(), |t| t.as_str_name().to_string());
                format!("memberID:{} alarm:{name} ", a.member_id)
            })
            .collect();
        Ok(Response::new(pb::StatusResponse {
            header: Some(s.header_info().header(rev)),
            version: ETCD_API_VERSION.to_string(),
            // etcd's dbSize is its backend's size, the bound its quota
            // checks; ours is the store, which the quota checks too. The
            // WAL (preallocated in 64 MiB segments) is not the backend:
            // metalraft_wal_bytes reports it.
            db_size: in_use,
            leader: st.leader.unwrap_or(0),
            raft_index: st.commit,
            raft_term: st.term,
            raft_applied_index: st.applied,
            errors,
            db_size_in_use: in_use,
            is_learner: st.is_learner,
        }))
    }

    async fn defragment(
        &self,
        req: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        // The state machine lives in memory; there is nothing to defragment.
        // etcd 3.4 answers without a header, and clients test for that.
        crate::auth::service::authorize_maintenance(&self.0, &req)?;
        Ok(Response::new(pb::DefragmentResponse { header: None }))
    }

    async fn hash_kv(
        &self,
        req: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        let s = &self.0;
        crate::auth::service::authorize_maintenance(s, &req)?;
        let r = req.into_inner();
        let kv = s.raft.kv.read().map_err(|_| EtcdError::Stopped)?;
        // etcd: the hash of every version kept up to `revision` (0: now),
        // equal on members that applied the same log.
        let h = kv.hash_kv(r.revision).map_err(command::request_error)?;
        let current = kv.revision();
        drop(kv);
        Ok(Response::new(pb::HashKvResponse {
            header: Some(s.header_info().header(current)),
            hash: h.hash,
            compact_revision: etcd_compact_revision(h.compact_revision),
        }))
    }

    async fn hash(
        &self,
        _: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        // etcd hashes its whole backend file; the closest equivalent here
        // is every version kept, up to now (the same digest as HashKV(0)).
        let s = &self.0;
        let kv = s.raft.kv.read().map_err(|_| EtcdError::Stopped)?;
        let h = kv.hash_kv(0).map_err(command::request_error)?;
        let current = kv.revision();
        drop(kv);
        Ok(Response::new(pb::HashResponse {
            header: Some(s.header_info().header(current)),
            hash: h.hash,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        req: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let s = &self.0;
        crate::auth::service::authorize_maintenance(s, &req)?;
        // Off the runtime, and holding the store's lock one step at a
        // time: applies never wait for a backup (crate::backup::live). The
        // database goes into an anonymous file in the data directory when
        // there is room (crate::backup::spool), and is read back from it as
        // the client takes it.
        let kv = Arc::clone(&s.raft.kv);
        let dir = s.cfg.data_dir.clone();
        let (backup, framed) = tokio::task::spawn_blocking(move || {
            let mut b = crate::backup::live::backup(&kv, |bytes| {
                crate::backup::spool::Spool::for_store(&dir, bytes)
            })?;
            let framed = etcd_snapshot_frame(&mut b.db, b.len)
                .map_err(crate::backup::live::LiveBackupError::Io)?;
            Ok::<_, crate::backup::live::LiveBackupError>((b, framed))
        })
        .await
        .map_err(|_| EtcdError::Stopped)?
        .map_err(|e| {
            tracing::warn!(error = %e, "backup failed");
            match e {
                crate::backup::live::LiveBackupError::Stopped => EtcdError::Stopped,
                e => EtcdError::Internal(e.to_string()),
            }
        })?;
        let header = s.header_info().header(backup.revision);
        let (len, digest) = framed;
        let (tx, rx) = tokio::sync::mpsc::channel(SNAPSHOT_QUEUE_MESSAGES);
        // Read on a blocking thread, at the client's pace (the channel is
        // bounded); a client gone closes the channel and ends the thread.
        tokio::task::spawn_blocking(move || {
            let messages = snapshot_messages(backup.db, len, digest, header, SNAPSHOT_CHUNK_BYTES);
            for m in messages {
                let m = m.map_err(|e| {
                    tracing::warn!(error = %e, "reading a backup back failed");
                    Status::from(EtcdError::Internal(format!("reading the backup: {e}")))
                });
                let failed = m.is_err();
                if tx.blocking_send(m).is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn move_leader(
        &self,
        req: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        let s = &self.0;
        let target = req.into_inner().target_id;
        if !s.raft.status.borrow().is_leader {
            return Err(EtcdError::NotLeader.into());
        }
        if !s
            .raft
            .conf
            .read()
            .map(|c| c.is_voter(target))
            .unwrap_or(false)
        {
            return Err(EtcdError::BadLeaderTransferee.into());
        }
        if target == s.cfg.id {
            // Already there: etcd 3.4 answers at once, without a header.
            return Ok(Response::new(pb::MoveLeaderResponse { header: None }));
        }
        s.raft.transfer(target).await?;
        let mut st = s.raft.status.clone();
        tokio::time::timeout(
            REQUEST_TIMEOUT,
            st.wait_for(|x| x.leader == Some(target) || x.stopped),
        )
        .await
        .map_err(|_| EtcdError::Timeout)?
        .map_err(|_| EtcdError::Stopped)?;
        Ok(Response::new(pb::MoveLeaderResponse {
            header: Some(s.header_info().header(s.revision())),
        }))
    }
}

/// Page size etcd's tools expect a snapshot's body to be a multiple of.
pub const SNAPSHOT_PAGE_BYTES: usize = 512;

/// Messages of a backup queued between the thread reading it back and
/// the client's stream.
pub const SNAPSHOT_QUEUE_MESSAGES: usize = 4;

/// The `Snapshot` RPC's messages as etcd 3.4 sends them: `len` bytes of
/// `body`, `chunk` bytes per message, each with the body's bytes still to
/// come as `remaining_bytes`, then `digest` in a message of its own
/// (`remaining_bytes` 0); the header on the first message. Each message's
/// bytes are read when it is taken (as the stream is polled), not up
/// front; a failed read is the last item.
fn snapshot_messages<R: Read>(
    mut body: R,
    len: u64,
    digest: [u8; 32],
    header: pb::ResponseHeader,
    chunk: usize,
) -> impl Iterator<Item = std::io::Result<pb::SnapshotResponse>> {
    let chunk = chunk.max(1) as u64;
    let mut header = Some(header);
    let body_messages = (0..len.div_ceil(chunk)).map(move |i| {
        let start = i * chunk;
        let end = (start + chunk).min(len);
        let mut blob = vec![0; (end - start) as usize];
        body.read_exact(&mut blob).map(|()| (len - end, blob))
    });
    body_messages
        .chain(std::iter::once(Ok((0, digest.to_vec()))))
        .scan(false, |stop, m| {
            // Nothing after a failed read: no more reads, no digest.
            if *stop {
                return None;
            }
            *stop = m.is_err();
            Some(m)
        })
        .map(move |m| {
            m.map(|(remaining_bytes, blob)| pb::SnapshotResponse {
                header: header.take(),
                remaining_bytes,
                blob,
            })
        })
}

/// Frames a backup the way etcd streams a snapshot: the body (`len`
/// bytes from offset 0 of `body`) zero-padded to a multiple of
/// [`SNAPSHOT_PAGE_BYTES`] (in place), and the SHA-256 of the padded body,
/// which the stream sends after it (etcdctl checks this shape). Returns the
/// padded length and the digest, with `body` back at offset 0. The body is
/// etcd's database ([`crate::backup::etcd_db::encode`], already whole
/// pages, so no padding).
///
/// # Errors
/// Reading or writing `body` failed.
pub fn etcd_snapshot_frame<F: Read + Write + Seek>(
    body: &mut F,
    len: u64,
) -> std::io::Result<(u64, [u8; 32])> {
    use sha2::Digest;
    use std::io::SeekFrom;
    let page = SNAPSHOT_PAGE_BYTES as u64;
    let padded = len.div_ceil(page).max(1) * page;
    body.seek(SeekFrom::Start(len))?;
    body.write_all(&vec![0; (padded - len) as usize])?;
    body.seek(SeekFrom::Start(0))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0; SNAPSHOT_CHUNK_BYTES];
    let mut left = padded;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        body.read_exact(&mut buf[..n])?;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    body.seek(SeekFrom::Start(0))?;
    Ok((padded, h.finalize().into()))
}

impl PeerService {
    fn check(&self, env: Option<&peerpb::Envelope>) -> Result<peerpb::Envelope, Status> {
        let s = &self.0;
        if let Some(e) =
            env.filter(|e| e.cluster_id == s.cfg.cluster_id && s.raft.registry.is_removed(e.from))
        {
            tracing::info!(member = %format!("{:x}", e.from), "rejected a removed member");
            return Err(Status::permission_denied(crate::registry::REMOVED_MESSAGE));
        }
        let is_member = |id: u64| s.raft.registry.contains(id);
        transport::check_envelope(env, s.cfg.cluster_id, s.cfg.id, is_member).map_err(|e| {
            s.transport_stats
                .rejected_incoming
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "rejected a peer request");
            Status::permission_denied(e.to_string())
        })
    }
}

impl PeerService {
    /// Checks a batch's envelope, decodes it and queues its messages for
    /// the Raft loop. A full input queue drops messages (Raft retransmits).
    fn accept_batch(&self, r: &peerpb::RaftBatch) -> Result<(), Status> {
        let env = self.check(r.envelope.as_ref())?;
        let bytes: usize = r.messages.iter().map(Vec::len).sum();
        self.0
            .transport_stats
            .peer(env.from)
            .received_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        let msgs = transport::decode_batch(&env, &r.messages).map_err(|e| {
            self.0
                .transport_stats
                .rejected_incoming
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "rejected a malformed peer batch");
            Status::invalid_argument(e.to_string())
        })?;
        for m in msgs {
            self.0.transport_stats.note_incoming(env.from, &m);
            if let Err(EtcdError::Stopped) = self.0.raft.try_send(Input::Step(m)) {
                return Err(EtcdError::Stopped.into());
            }
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl peerpb::peer_server::Peer for PeerService {
    async fn deliver(
        &self,
        req: Request<peerpb::RaftBatch>,
    ) -> Result<Response<peerpb::DeliverReply>, Status> {
        self.accept_batch(&req.into_inner())?;
        Ok(Response::new(peerpb::DeliverReply {}))
    }

    async fn stream(
        &self,
        req: Request<tonic::Streaming<peerpb::RaftBatch>>,
    ) -> Result<Response<peerpb::DeliverReply>, Status> {
        let mut stream = req.into_inner();
        while let Some(r) = stream.message().await? {
            self.accept_batch(&r)?;
        }
        Ok(Response::new(peerpb::DeliverReply {}))
    }

    async fn forward(
        &self,
        req: Request<peerpb::ForwardRequest>,
    ) -> Result<Response<peerpb::ForwardReply>, Status> {
        let r = req.into_inner();
        self.check(r.envelope.as_ref())?;
        let s = &self.0;
        if !s.raft.status.borrow().is_leader {
            return Err(EtcdError::LeaderChanged.into());
        }
        let cmd = kv::Command::decode(&r.command)
            .map_err(|e| Status::invalid_argument(format!("undecodable forwarded command: {e}")))?;
        s.check_space(&cmd)?;
        let out = s.raft.propose(cmd, REQUEST_TIMEOUT).await?;
        Ok(Response::new(peerpb::ForwardReply {
            result: out.encode(),
        }))
    }

    async fn publish(
        &self,
        req: Request<peerpb::PublishRequest>,
    ) -> Result<Response<peerpb::PublishReply>, Status> {
        let r = req.into_inner();
        let env = self.check(r.envelope.as_ref())?;
        crate::publish::accept(&self.0, env.from, r.name, r.client_urls).await?;
        Ok(Response::new(peerpb::PublishReply {}))
    }

    async fn forward_auth(
        &self,
        req: Request<peerpb::ForwardAuthRequest>,
    ) -> Result<Response<peerpb::ForwardAuthReply>, Status> {
        let r = req.into_inner();
        self.check(r.envelope.as_ref())?;
        crate::auth::service::accept_forwarded(&self.0, &r.op).await?;
        Ok(Response::new(peerpb::ForwardAuthReply {}))
    }

    async fn issue_token(
        &self,
        req: Request<peerpb::IssueTokenRequest>,
    ) -> Result<Response<peerpb::IssueTokenReply>, Status> {
        let r = req.into_inner();
        self.check(r.envelope.as_ref())?;
        let token = crate::auth::service::issue_for_peer(&self.0, &r.user)?;
        Ok(Response::new(peerpb::IssueTokenReply { token }))
    }

    async fn lease_renew(
        &self,
        req: Request<peerpb::LeaseRenewRequest>,
    ) -> Result<Response<peerpb::LeaseRenewReply>, Status> {
        let r = req.into_inner();
        self.check(r.envelope.as_ref())?;
        let reply = crate::lease::peer_lease_renew(&self.0, r).await?;
        Ok(Response::new(reply))
    }

    async fn info(
        &self,
        req: Request<peerpb::InfoRequest>,
    ) -> Result<Response<peerpb::InfoReply>, Status> {
        let r = req.into_inner();
        // A member joining with --initial-cluster-state=existing does not
        // know the cluster id yet and asks with a zero envelope; it learns
        // only public information (ids and URLs, as MemberList shows).
        let joining = r
            .envelope
            .as_ref()
            .is_some_and(|e| e.cluster_id == 0 && e.from == 0);
        if !joining {
            self.check(r.envelope.as_ref())?;
        }
        let s = &self.0;
        Ok(Response::new(peerpb::InfoReply {
            name: s.cfg.name.clone(),
            client_urls: Shared::url_strings(&s.cfg.advertise_client_urls),
            cluster_id: s.cfg.cluster_id,
            member_id: s.cfg.id,
            members: s
                .raft
                .registry
                .members()
                .into_iter()
                .map(|(id, peer_urls)| peerpb::MemberUrls { id, peer_urls })
                .collect(),
            applied_index: s.raft.status.borrow().applied,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_messages_carry_the_body_then_the_digest() {
        let body: Vec<u8> = (0..100u8).collect();
        let digest = [7u8; 32];
        for chunk in [1, 5, 31, 32, 33, 100, 131, 4096] {
            let msgs: Vec<_> = snapshot_messages(
                std::io::Cursor::new(&body),
                body.len() as u64,
                digest,
                pb::ResponseHeader::default(),
                chunk,
            )
            .map(Result::unwrap)
            .collect();
            let (last, body_msgs) = msgs.split_last().unwrap();
            assert_eq!(last.blob, digest, "chunk {chunk}: the digest on its own");
            assert_eq!(last.remaining_bytes, 0, "chunk {chunk}");
            let sent: Vec<u8> = body_msgs
                .iter()
                .flat_map(|m| m.blob.iter().copied())
                .collect();
            assert_eq!(sent, body, "chunk {chunk}");
            assert!(msgs[0].header.is_some(), "chunk {chunk}");
            assert!(
                msgs[1..].iter().all(|m| m.header.is_none()),
                "chunk {chunk}"
            );
            let mut left = body.len() as u64;
            for m in body_msgs {
                assert!(!m.blob.is_empty() && m.blob.len() <= chunk, "chunk {chunk}");
                left -= m.blob.len() as u64;
                assert_eq!(m.remaining_bytes, left, "chunk {chunk}");
            }
        }
        // A body shorter than said: the read error is the last message,
        // with no digest after it.
        let msgs: Vec<_> = snapshot_messages(
            std::io::Cursor::new(&body[..50]),
            body.len() as u64,
            digest,
            pb::ResponseHeader::default(),
            32,
        )
        .collect();
        assert_eq!(msgs.len(), 2, "one whole chunk, then the error");
        assert!(msgs[0].is_ok() && msgs[1].is_err());
    }

    #[test]
    fn a_framed_body_is_padded_to_whole_pages_and_its_digest_covers_the_padding() {
        use sha2::Digest;
        for len in [0usize, 1, 511, 512, 513, 4096] {
            let mut f = std::io::Cursor::new(vec![9u8; len]);
            let (padded, digest) = etcd_snapshot_frame(&mut f, len as u64).unwrap();
            let body = f.into_inner();
            assert_eq!(padded as usize, body.len(), "len {len}");
            assert_eq!(body.len() % SNAPSHOT_PAGE_BYTES, 0, "len {len}");
            assert!(body.len() >= len.max(1), "len {len}");
            assert!(body[len..].iter().all(|b| *b == 0), "len {len}");
            assert_eq!(digest, <[u8; 32]>::from(sha2::Sha256::digest(&body)));
        }
    }
}
