//! etcd's Lease service, and the leader's lease clock behind it.
//!
//! Which leases exist and which keys they hold is replicated state (the
//! MVCC store's); grants and revokes go through the log like any write.
//! Deadlines are the leader's alone ([`LeaseClock`], a
//! [`metalraft_replica::Lessor`] with wall time from one monotonic epoch):
//! keepalives renew them there, the Raft loop's timer proposes revokes of
//! expired leases, and a new leader restarts every countdown at its full
//! TTL (etcd 3.4). A follower relays keepalives and remaining-TTL questions
//! to the leader over the Peer service (`LeaseRenew`), one request each, so
//! a leader change costs a client nothing but one retried keepalive.
//!
//! The minimum TTL is etcd's: `ceil(3/2 × election timeout)` seconds, so a
//! lease outlives the election that follows a leader crash.

// tonic's handlers return `Result<_, Status>`; `Status` is large by design.
#![allow(clippy::result_large_err)]

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use metalraft_kv as kv;
use metalraft_replica::{
    observe_lease_result, propose_expired_revokes, Instant, Lessor, LessorConfig, Renew,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::api::{Shared, REQUEST_TIMEOUT};
use crate::command::KIND_KV;
use crate::errors::{self, EtcdError};
use crate::proto::etcdserverpb as pb;
use crate::proto::mvccpb;
use crate::proto::peer as peerpb;

/// Keepalive responses buffered per stream before the reader waits.
pub const KEEPALIVE_STREAM_BUFFER: usize = 16;

/// Keepalives and TTL questions a follower relays to the leader at once;
/// more wait for a slot. Below the leader's peer port limit of concurrent
/// HTTP/2 streams per connection (hyper's 200), so a burst of thousands of
/// keepalive streams on a follower queues here instead of having its
/// streams refused by the leader ("h2 protocol error").
pub const LEASE_RELAYS_IN_FLIGHT: usize = 128;

/// The leader's lease deadlines, shared by the state machine (timer, apply)
/// and the Lease service (keepalives). Cheap to clone.
#[derive(Clone, Debug)]
pub struct LeaseClock {
    lessor: Arc<Mutex<Lessor>>,
    epoch: std::time::Instant,
}

impl Default for LeaseClock {
    fn default() -> Self {
        Self::new()
    }
}

impl LeaseClock {
    /// A follower's clock (no deadlines), with etcd's revoke rate.
    pub fn new() -> Self {
        LeaseClock {
            lessor: Arc::new(Mutex::new(Lessor::new(LessorConfig::default()))),
            epoch: std::time::Instant::now(),
        }
    }

    /// Now, on the clock every deadline is measured with.
    pub fn now(&self) -> Instant {
        let us = self.epoch.elapsed().as_micros();
        Instant(u64::try_from(us).unwrap_or(u64::MAX))
    }

    fn lock(&self) -> MutexGuard<'_, Lessor> {
        // The lessor holds no invariant a panic elsewhere could break
        // half-way that matters more than serving keepalives.
        self.lessor.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An applied key-value command's result (`body`: its bytes).
    pub(crate) fn observe(&self, body: &[u8], r: &kv::CommandResult) {
        let cmd = match r {
            kv::CommandResult::LeaseRevoke(_) => kv::Command::decode(body).ok(),
            _ => None,
        };
        observe_lease_result(&mut self.lock(), cmd.as_ref(), r);
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.lock().next_deadline()
    }

    /// Pushes the revokes of expired leases as server commands.
    pub(crate) fn expire(&self, store: &kv::MvccStore, now: Instant, out: &mut Vec<Vec<u8>>) {
        let wrap = |body: Vec<u8>| {
            let mut cmd = Vec::with_capacity(1 + body.len());
            cmd.push(KIND_KV);
            cmd.extend_from_slice(&body);
            cmd
        };
        propose_expired_revokes(&mut self.lock(), store, now, out, wrap);
    }

    pub(crate) fn promote(&self, store: &kv::MvccStore, now: Instant) {
        self.lock().promote(now, store.leases());
    }

    pub(crate) fn demote(&self) {
        self.lock().demote();
    }

    /// Whether this member keeps deadlines (leads).
    pub fn is_primary(&self) -> bool {
        self.lock().is_primary()
    }

    /// A keepalive of the existing lease `id` granted for `ttl` seconds.
    pub fn renew(&self, id: i64, ttl: i64) -> Renew {
        let now = self.now();
        self.lock().renew(id, ttl, now)
    }

    /// Whole seconds lease `id` has left (etcd truncates), if this member
    /// leads and knows it.
    pub fn remaining_secs(&self, id: i64) -> Option<i64> {
        let now = self.now();
        let us = self.lock().remaining_us(id, now)?;
        Some(i64::try_from(us / 1_000_000).unwrap_or(i64::MAX))
    }
}

/// etcd's minimum lease TTL for `election_timeout`: `ceil(3/2 × election
/// timeout)` in seconds.
pub fn min_ttl_secs(election_timeout: Duration) -> i64 {
    let ms = election_timeout.as_millis().saturating_mul(3) / 2;
    i64::try_from(ms.div_ceil(1000)).unwrap_or(i64::MAX).max(1)
}

/// Sets each pair's `lease` from the store (see
/// [`kv::MvccStore::key_lease`]).
pub fn fill_leases<'a>(
    store: &kv::MvccStore,
    kvs: impl IntoIterator<Item = &'a mut mvccpb::KeyValue>,
) {
    for kv in kvs {
        kv.lease = store.key_lease(&kv.key, kv.mod_revision);
    }
}

/// Fills the leases of every pair a txn's reads returned.
pub fn fill_txn_leases(store: &kv::MvccStore, t: &mut pb::TxnResponse) {
    for op in &mut t.responses {
        if let Some(pb::response_op::Response::ResponseRange(r)) = &mut op.response {
            fill_leases(store, &mut r.kvs);
        }
    }
}

/// What the leader knows of a lease: (remaining seconds, granted TTL), or
/// `None` when it does not exist.
type LeaseState = Option<(i64, i64)>;

/// etcd's Lease service.
pub struct LeaseService(pub Arc<Shared>);

impl LeaseService {
    fn ttl_local(s: &Shared, id: i64) -> Option<i64> {
        s.raft.kv.read().ok()?.lease_ttl(id)
    }

    /// On the leader: renew (`renew`) or just look at lease `id`.
    /// `Err(NotLeader)` when this member does not lead.
    async fn on_leader(s: &Shared, id: i64, renew: bool) -> Result<LeaseState, EtcdError> {
        let mut granted = Self::ttl_local(s, id);
        if granted.is_none() {
            // A lease granted in an entry committed but not yet applied here
            // (a new leader): wait for what was committed, then look again.
            s.read_barrier().await?;
            granted = Self::ttl_local(s, id);
        }
        let Some(ttl) = granted else {
            return Ok(None);
        };
        if !s.raft.leases.is_primary() {
            return Err(EtcdError::NotLeader);
        }
        if !renew {
            let left = s
                .raft
                .leases
                .remaining_secs(id)
                .ok_or(EtcdError::NotLeader)?;
            return Ok(Some((left, ttl)));
        }
        match s.raft.leases.renew(id, ttl) {
            Renew::Renewed => Ok(Some((ttl, ttl))),
            Renew::Expired => Ok(None),
            Renew::NotPrimary => Err(EtcdError::NotLeader),
        }
    }

    /// Renews or looks at lease `id` wherever the leader is.
    async fn at_leader(s: &Shared, id: i64, renew: bool) -> Result<LeaseState, EtcdError> {
        let st = s.leader().await?;
        if st.is_leader {
            return Self::on_leader(s, id, renew).await;
        }
        let leader = st.leader.ok_or(EtcdError::NoLeader)?;
        let mut client = s.peer_client(leader).ok_or(EtcdError::NoLeader)?;
        let req = peerpb::LeaseRenewRequest {
            envelope: Some(s.envelope(leader)),
            id,
            renew,
        };
        let relay = async {
            let _slot = s.lease_relays.acquire().await;
            client.lease_renew(req).await
        };
        let reply = tokio::time::timeout(REQUEST_TIMEOUT, relay)
            .await
            .map_err(|_| EtcdError::Timeout)?
            .map_err(|st| errors::from_status(&st))?
            .into_inner();
        Ok(reply.found.then_some((reply.ttl, reply.granted_ttl)))
    }

    /// The answer to one keepalive (TTL 0: the lease is gone or expired).
    pub(crate) async fn keepalive(
        s: &Shared,
        id: i64,
    ) -> Result<pb::LeaseKeepAliveResponse, EtcdError> {
        let state = Self::at_leader(s, id, true).await?;
        Ok(pb::LeaseKeepAliveResponse {
            header: Some(s.header_info().header(s.revision())),
            id,
            ttl: state.map_or(0, |(ttl, _)| ttl),
        })
    }
}

/// The Peer service's `LeaseRenew`: a follower's relayed keepalive or
/// remaining-TTL question, answered by the leader.
pub async fn peer_lease_renew(
    s: &Shared,
    r: peerpb::LeaseRenewRequest,
) -> Result<peerpb::LeaseRenewReply, Status> {
    if !s.raft.status.borrow().is_leader {
        return Err(EtcdError::LeaderChanged.into());
    }
    let state = LeaseService::on_leader(s, r.id, r.renew).await?;
    Ok(peerpb::LeaseRenewReply {
        found: state.is_some(),
        ttl: state.map_or(0, |(t, _)| t),
        granted_ttl: state.map_or(0, |(_, g)| g),
    })
}

type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::lease_server::Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let s = &self.0;
        crate::auth::service::caller(&s.raft.auth, &req)?;
        let r = req.into_inner();
        if r.ttl > kv::MAX_LEASE_TTL_SECS {
            return Err(EtcdError::LeaseTtlTooLarge.into());
        }
        let ttl = r.ttl.max(min_ttl_secs(s.cfg.election_timeout));
        let cmd = kv::Command::LeaseGrant(kv::LeaseGrantRequest { id: r.id, ttl });
        match s.write(cmd).await? {
            kv::CommandResult::LeaseGrant(g) => Ok(Response::new(pb::LeaseGrantResponse {
                header: Some(s.header_info().header(g.header.revision)),
                id: g.id,
                ttl: g.ttl,
                error: String::new(),
            })),
            _ => Err(EtcdError::Internal("unexpected result kind".into()).into()),
        }
    }

    async fn lease_revoke(
        &self,
        req: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let s = &self.0;
        crate::auth::service::authorize_lease(s, &req, [req.get_ref().id])?;
        let id = req.into_inner().id;
        let cmd = kv::Command::LeaseRevoke(kv::LeaseRevokeRequest { id });
        match s.write(cmd).await? {
            kv::CommandResult::LeaseRevoke(r) => Ok(Response::new(pb::LeaseRevokeResponse {
                header: Some(s.header_info().header(r.header.revision)),
            })),
            _ => Err(EtcdError::Internal("unexpected result kind".into()).into()),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<tonic::Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let s = self.0.clone();
        crate::auth::service::caller(&s.raft.auth, &req)?;
        let mut incoming = req.into_inner();
        let (tx, rx) = mpsc::channel(KEEPALIVE_STREAM_BUFFER);
        tokio::spawn(async move {
            loop {
                let r = match incoming.message().await {
                    Ok(Some(r)) => r,
                    // The client closed the stream or went away.
                    Ok(None) | Err(_) => return,
                };
                let answer = LeaseService::keepalive(&s, r.id)
                    .await
                    .map_err(Status::from);
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() || failed {
                    // etcd ends the stream on an error; clients open a new one.
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let s = &self.0;
        crate::auth::service::caller(&s.raft.auth, &req)?;
        let r = req.into_inner();
        let state = LeaseService::at_leader(s, r.id, false).await?;
        let Some((ttl, granted)) = state else {
            return Ok(Response::new(pb::LeaseTimeToLiveResponse {
                header: Some(s.header_info().header(s.revision())),
                id: r.id,
                ttl: -1,
                ..Default::default()
            }));
        };
        let keys = if r.keys {
            s.read_barrier().await?;
            let store = s.raft.kv.read().map_err(|_| EtcdError::Stopped)?;
            store.lease(r.id).map(|l| l.keys).unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok(Response::new(pb::LeaseTimeToLiveResponse {
            header: Some(s.header_info().header(s.revision())),
            id: r.id,
            ttl,
            granted_ttl: granted,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        req: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let s = &self.0;
        crate::auth::service::caller(&s.raft.auth, &req)?;
        s.read_barrier().await?;
        let store = s.raft.kv.read().map_err(|_| EtcdError::Stopped)?;
        let leases = store
            .leases()
            .map(|(id, _)| pb::LeaseStatus { id })
            .collect();
        let revision = store.revision();
        drop(store);
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: Some(s.header_info().header(revision)),
            leases,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimum_ttl_is_etcds() {
        // etcd: (3 × election ticks / 2) × heartbeat, rounded up to seconds.
        assert_eq!(min_ttl_secs(Duration::from_millis(1000)), 2);
        assert_eq!(min_ttl_secs(Duration::from_millis(500)), 1);
        assert_eq!(min_ttl_secs(Duration::from_millis(2000)), 3);
        assert_eq!(min_ttl_secs(Duration::from_millis(5000)), 8);
    }
}
