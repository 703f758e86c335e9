//! `v3lockpb.Lock`: clientv3's mutex recipe on the server.

use tonic::{Request, Response, Status};

use super::{enter, key_of, prefix_of, session_lease, wait_deletes, Abandon};
use crate::api::{KvService, Shared};
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
        let s = &self.0;
        let r = req.into_inner();
        let lease = session_lease(s, r.lease).await?;
        let prefix = prefix_of(&r.name);
        let key = key_of(&prefix, lease);
        let (rev, _, _) = enter(s, &key, b"", lease).await?;
        let abandon = Abandon::new(s, &key);
        wait_deletes(s, &prefix, rev - 1).await?;
        // Still ours? The lease may have expired while waiting.
        let mine = KvService(s.clone())
            .range(Request::new(pb::RangeRequest {
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
        let r = req.into_inner();
        let del = KvService(self.0.clone())
            .delete_range(Request::new(pb::DeleteRangeRequest {
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
