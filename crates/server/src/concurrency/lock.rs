//! `v3lockpb.Lock`: clientv3's mutex recipe on the server.

use tonic::{Request, Response, Status};

use super::{enter, key_of, prefix_of, session_lease, wait_deletes, Abandon, Ctx};
use crate::api::Shared;
use crate::proto::etcdserverpb as pb;
use crate::proto::etcdserverpb::kv_server::Kv as _;
use crate::proto::v3lockpb;
use std::sync::Arc;

/// etcd's error when the lock's key disappeared while waiting (its lease
/// expired or was revoked).
pub const SESSION_EXPIRED: &str = "concurrency: session expired";

/// etcd's Lock service.
pub struct LockService(pub Arc<Shared>);

#[tonic::async_trait]
impl v3lockpb::lock_server::Lock for LockService {
    async fn lock(
        &self,
        req: Request<v3lockpb::LockRequest>,
    ) -> Result<Response<v3lockpb::LockResponse>, Status> {
        let cx = Ctx::of(&self.0, &req);
        let r = req.into_inner();
        let lease = session_lease(&cx, r.lease).await?;
        let prefix = prefix_of(&r.name);
        let key = key_of(&prefix, lease);
        let (rev, _, _) = enter(&cx, &key, b"", lease).await?;
        let abandon = Abandon::new(&cx, &key);
        wait_deletes(&cx, &prefix, rev - 1).await?;
        // Still ours? The lease may have expired while waiting.
        let mine = cx
            .kv()
            .range(cx.request(pb::RangeRequest {
                key: key.clone(),
                ..Default::default()
            }))
            .await?
            .into_inner();
        if !mine.kvs.iter().any(|kv| kv.create_revision == rev) {
            abandon.keep();
            return Err(Status::unknown(SESSION_EXPIRED));
        }
        abandon.keep();
        Ok(Response::new(v3lockpb::LockResponse {
            header: mine.header,
            key,
        }))
    }

    async fn unlock(
        &self,
        req: Request<v3lockpb::UnlockRequest>,
    ) -> Result<Response<v3lockpb::UnlockResponse>, Status> {
        let cx = Ctx::of(&self.0, &req);
        let r = req.into_inner();
        let del = cx
            .kv()
            .delete_range(cx.request(pb::DeleteRangeRequest {
                key: r.key,
                ..Default::default()
            }))
            .await?
            .into_inner();
        Ok(Response::new(v3lockpb::UnlockResponse {
            header: del.header,
        }))
    }
}
