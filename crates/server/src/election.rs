//! etcd's server-side Election service (`v3electionpb.Election`), on the
//! same key layout as etcd's election recipe (`name/<lease in hex>`, the
//! oldest key leads), so it interoperates with `etcdctl elect` and
//! client-side recipes. Waiting (Campaign) and Observe watch this member's
//! applied state; see [`crate::lock`].

// tonic's handlers return `Result<_, Status>`; `Status` is large by design.
#![allow(clippy::result_large_err)]

use std::pin::Pin;
use std::sync::Arc;

use metalraft_kv as kv;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::api::Shared;
use crate::command;
use crate::errors::EtcdError;
use crate::lock::{create_key, lock_key, wait_turn, LOCK_POLL_INTERVAL};
use crate::proto::mvccpb;
use crate::proto::v3electionpb as pb;

/// etcd's election errors (plain errors there: gRPC UNKNOWN).
const NOT_LEADER: &str = "election: not leader";
const NO_LEADER: &str = "election: no leader";
const MISSING_LEADER: &str = "\"leader\" field must be provided";
/// Observe responses buffered per stream.
const OBSERVE_BUFFER: usize = 16;

/// etcd's Election service.
pub struct ElectionService(pub Arc<Shared>);

fn prefix(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

/// The leader of `name` in this member's applied state: the oldest key
/// under `name/`, with its lease.
fn current_leader(s: &Shared, name: &[u8]) -> Result<Option<mvccpb::KeyValue>, EtcdError> {
    let store = s.raft.kv.read().map_err(|_| EtcdError::Stopped)?;
    let r = kv::RangeRequest {
        sort_order: kv::SortOrder::Ascend,
        sort_target: kv::SortTarget::Create,
        limit: 1,
        ..kv::RangeRequest::prefix(&prefix(name))
    };
    let r = store.range(&r).map_err(command::request_error)?;
    Ok(r.kvs.into_iter().next().map(|k| {
        let lease = store.key_lease(&k.key, k.mod_revision);
        let mut kv = command::kv_pair(k);
        kv.lease = lease;
        kv
    }))
}

/// A put of `value` on the leader key, only if it still leads (its key has
/// the create revision it won with).
async fn guarded(
    s: &Shared,
    leader: &pb::LeaderKey,
    op: kv::RequestOp,
) -> Result<(bool, i64), EtcdError> {
    let txn = kv::TxnRequest {
        compare: vec![kv::Compare::new(
            &leader.key,
            kv::CompareResult::Equal,
            kv::CompareTarget::CreateRevision(leader.rev),
        )],
        success: vec![op],
        failure: Vec::new(),
    };
    let puts = usize::from(matches!(txn.success[0], kv::RequestOp::Put(_)));
    // A proclaim keeps the key's lease (etcd puts it with the same lease).
    let keep = kv::LeaseOption {
        lease: 0,
        ignore_lease: true,
    };
    let leases = kv::TxnLeases {
        success: vec![keep; puts],
        failure: Vec::new(),
    };
    match s.write(kv::Command::LeaseTxn(txn, leases)).await? {
        kv::CommandResult::Txn(t) => Ok((t.succeeded, t.header.revision)),
        _ => Err(EtcdError::Internal("unexpected result kind".into())),
    }
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<pb::LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::election_server::Election for ElectionService {
    async fn campaign(
        &self,
        req: Request<pb::CampaignRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        let s = &self.0;
        let r = req.into_inner();
        if r.name.is_empty() {
            return Err(EtcdError::EmptyKey.into());
        }
        let key = lock_key(&r.name, r.lease);
        let created = create_key(s, &key, &r.value, r.lease).await?;
        if !created {
            // Campaigning again with the same lease: keep the candidacy,
            // with the new value (as etcd's recipe does).
            let put = kv::RequestOp::Put(kv::PutRequest {
                key: key.clone(),
                value: r.value.clone(),
                ..Default::default()
            });
            let rev = s
                .raft
                .kv
                .read()
                .ok()
                .and_then(|st| st.range(&kv::RangeRequest::single(&key)).ok())
                .and_then(|x| x.kvs.first().map(|k| k.create_revision))
                .unwrap_or(0);
            let leader = pb::LeaderKey {
                name: r.name.clone(),
                key: key.clone(),
                rev,
                lease: r.lease,
            };
            guarded(s, &leader, put).await?;
        }
        let (revision, rev) = wait_turn(s, &prefix(&r.name), &key).await?;
        Ok(Response::new(pb::CampaignResponse {
            header: Some(s.header_info().header(revision)),
            leader: Some(pb::LeaderKey {
                name: r.name,
                key,
                rev,
                lease: r.lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        req: Request<pb::ProclaimRequest>,
    ) -> Result<Response<pb::ProclaimResponse>, Status> {
        let s = &self.0;
        let r = req.into_inner();
        let leader = r.leader.ok_or_else(|| Status::unknown(MISSING_LEADER))?;
        let put = kv::RequestOp::Put(kv::PutRequest {
            key: leader.key.clone(),
            value: r.value,
            ..Default::default()
        });
        let (ok, revision) = guarded(s, &leader, put).await?;
        if !ok {
            return Err(Status::unknown(NOT_LEADER));
        }
        Ok(Response::new(pb::ProclaimResponse {
            header: Some(s.header_info().header(revision)),
        }))
    }

    async fn leader(
        &self,
        req: Request<pb::LeaderRequest>,
    ) -> Result<Response<pb::LeaderResponse>, Status> {
        let s = &self.0;
        let name = req.into_inner().name;
        s.read_barrier().await?;
        let kv = current_leader(s, &name)?.ok_or_else(|| Status::unknown(NO_LEADER))?;
        Ok(Response::new(pb::LeaderResponse {
            header: Some(s.header_info().header(s.revision())),
            kv: Some(kv),
        }))
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        req: Request<pb::LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let s = self.0.clone();
        let name = req.into_inner().name;
        s.read_barrier().await?;
        let (tx, rx) = mpsc::channel(OBSERVE_BUFFER);
        tokio::spawn(async move {
            // The (key, mod revision) last sent: a new leader or value is news.
            let mut last: Option<(Vec<u8>, i64)> = None;
            loop {
                let now = match current_leader(&s, &name) {
                    Ok(kv) => kv,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                if let Some(kv) = now {
                    let id = (kv.key.clone(), kv.mod_revision);
                    if last.as_ref() != Some(&id) {
                        last = Some(id);
                        let resp = pb::LeaderResponse {
                            header: Some(s.header_info().header(s.revision())),
                            kv: Some(kv),
                        };
                        if tx.send(Ok(resp)).await.is_err() {
                            return;
                        }
                    }
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(LOCK_POLL_INTERVAL).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(
        &self,
        req: Request<pb::ResignRequest>,
    ) -> Result<Response<pb::ResignResponse>, Status> {
        let s = &self.0;
        let leader = req
            .into_inner()
            .leader
            .ok_or_else(|| Status::unknown(MISSING_LEADER))?;
        let delete = kv::RequestOp::DeleteRange(kv::DeleteRangeRequest {
            key: leader.key.clone(),
            ..Default::default()
        });
        // Not leading any more is no error: there is nothing to give up.
        let (_, revision) = guarded(s, &leader, delete).await?;
        Ok(Response::new(pb::ResignResponse {
            header: Some(s.header_info().header(revision)),
        }))
    }
}
