//! `v3electionpb.Election`: clientv3's election recipe on the server.

use std::pin::Pin;
use std::sync::Arc;

use metalraft_kv as kv;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{
    created_at, enter, key_of, prefix_of, put_op, session_lease, txn, wait_deletes, wait_feed,
    Abandon, Ctx,
};
use crate::api::Shared;
use crate::proto::etcdserverpb as pb;
use crate::proto::etcdserverpb::kv_server::Kv as _;
use crate::proto::{mvccpb, v3electionpb as epb};

/// etcd's errors (plain errors in etcd, so gRPC code Unknown).
pub const NO_LEADER: &str = "election: no leader";
/// See [`NO_LEADER`].
pub const NOT_LEADER: &str = "election: not leader";
/// See [`NO_LEADER`].
pub const MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";
/// Announcements an observer may have queued before its task waits.
pub const OBSERVE_BUFFER: usize = 16;

/// etcd's Election service.
pub struct ElectionService(pub Arc<Shared>);

/// The current leader's key-value under `prefix` (the oldest key), read
/// linearizably.
async fn leader_kv(
    cx: &Ctx,
    prefix: &[u8],
    serializable: bool,
) -> Result<(Option<mvccpb::KeyValue>, Option<pb::ResponseHeader>), Status> {
    let r = cx
        .kv()
        .range(cx.request(pb::RangeRequest {
            key: prefix.to_vec(),
            range_end: kv::prefix_end(prefix),
            limit: 1,
            sort_order: pb::range_request::SortOrder::Ascend as i32,
            sort_target: pb::range_request::SortTarget::Create as i32,
            serializable,
            ..Default::default()
        }))
        .await?
        .into_inner();
    Ok((r.kvs.into_iter().next(), r.header))
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<epb::LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl epb::election_server::Election for ElectionService {
    async fn campaign(
        &self,
        req: Request<epb::CampaignRequest>,
    ) -> Result<Response<epb::CampaignResponse>, Status> {
        let cx = Ctx::of(&self.0, &req);
        let r = req.into_inner();
        let lease = session_lease(&cx, r.lease).await?;
        let prefix = prefix_of(&r.name);
        let key = key_of(&prefix, lease);
        let (rev, current, header) = enter(&cx, &key, &r.value, lease).await?;
        let abandon = Abandon::new(&cx, &key);
        if current != r.value {
            // Our key existed with another value: announce the new one.
            let t = txn(
                &cx,
                pb::TxnRequest {
                    compare: vec![created_at(&key, rev)],
                    success: vec![put_op(&key, &r.value, lease)],
                    failure: vec![],
                },
            )
            .await?;
            if !t.succeeded {
                return Err(Status::unknown(NOT_LEADER));
            }
        }
        wait_deletes(&cx, &prefix, rev - 1).await?;
        abandon.keep();
        Ok(Response::new(epb::CampaignResponse {
            header: Some(header),
            leader: Some(epb::LeaderKey {
                name: r.name,
                key,
                rev,
                lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        req: Request<epb::ProclaimRequest>,
    ) -> Result<Response<epb::ProclaimResponse>, Status> {
        let cx = Ctx::of(&self.0, &req);
        let r = req.into_inner();
        let leader = r
            .leader
            .ok_or_else(|| Status::unknown(MISSING_LEADER_KEY))?;
        let t = txn(
            &cx,
            pb::TxnRequest {
                compare: vec![created_at(&leader.key, leader.rev)],
                success: vec![put_op(&leader.key, &r.value, leader.lease)],
                failure: vec![],
            },
        )
        .await?;
        if !t.succeeded {
            return Err(Status::unknown(NOT_LEADER));
        }
        Ok(Response::new(epb::ProclaimResponse { header: t.header }))
    }

    async fn leader(
        &self,
        req: Request<epb::LeaderRequest>,
    ) -> Result<Response<epb::LeaderResponse>, Status> {
        let cx = Ctx::of(&self.0, &req);
        let prefix = prefix_of(&req.into_inner().name);
        match leader_kv(&cx, &prefix, false).await? {
            (Some(kv), header) => Ok(Response::new(epb::LeaderResponse {
                header,
                kv: Some(kv),
            })),
            (None, _) => Err(Status::unknown(NO_LEADER)),
        }
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        req: Request<epb::LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let cx = Ctx::of(&self.0, &req);
        let prefix = prefix_of(&req.into_inner().name);
        let (tx, rx) = tokio::sync::mpsc::channel(OBSERVE_BUFFER);
        tokio::spawn(async move {
            // Announce every change of the leader's key or value, as
            // clientv3's `Observe` does; nothing while there is no leader.
            let mut last: Option<(Vec<u8>, i64)> = None;
            loop {
                let mut feed = cx.shared.raft.watch_feed.subscribe();
                let (kv, header) = match leader_kv(&cx, &prefix, true).await {
                    Ok(x) => x,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                if let Some(kv) = kv {
                    let now = (kv.key.clone(), kv.mod_revision);
                    if last.as_ref() != Some(&now) {
                        last = Some(now);
                        let resp = epb::LeaderResponse {
                            header,
                            kv: Some(kv),
                        };
                        if tx.send(Ok(resp)).await.is_err() {
                            return;
                        }
                    }
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = wait_feed(&mut feed, |c| c.kv.key.starts_with(&prefix)) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn resign(
        &self,
        req: Request<epb::ResignRequest>,
    ) -> Result<Response<epb::ResignResponse>, Status> {
        let cx = Ctx::of(&self.0, &req);
        let r = req.into_inner();
        let leader = r
            .leader
            .ok_or_else(|| Status::unknown(MISSING_LEADER_KEY))?;
        let t = txn(
            &cx,
            pb::TxnRequest {
                compare: vec![created_at(&leader.key, leader.rev)],
                success: vec![pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestDeleteRange(
                        pb::DeleteRangeRequest {
                            key: leader.key,
                            ..Default::default()
                        },
                    )),
                }],
                failure: vec![],
            },
        )
        .await?;
        Ok(Response::new(epb::ResignResponse { header: t.header }))
    }
}
