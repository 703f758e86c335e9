//! etcd's server-side Lock service (`v3lockpb.Lock`), on top of leases and
//! transactions, with etcd's key layout so it interoperates with clients
//! that lock through `etcdctl lock` or the client-side recipe.
//!
//! Lock: the caller's key `name/<lease in hex>` is created (if missing)
//! attached to the lease, in one transaction through the log; the caller
//! holds the lock once no key under `name/` has an older create revision.
//! Waiting watches this member's applied state (deletions are committed
//! before they are applied, so a lock is never granted early); a lease
//! that expires while waiting ends the wait with an error, as etcd's mutex
//! does. Unlock deletes the key.

// tonic's handlers return `Result<_, Status>`; `Status` is large by design.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use metalraft_kv as kv;
use tonic::{Request, Response, Status};

use crate::api::Shared;
use crate::errors::EtcdError;
use crate::proto::v3lockpb as pb;

/// TTL of the lease a Lock without one gets (etcd's session default).
pub const DEFAULT_LOCK_TTL_SECS: i64 = 60;
/// How often a waiting Lock looks at the applied state again.
pub const LOCK_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// etcd's Lock service.
pub struct LockService(pub Arc<Shared>);

/// etcd's key for a lock or candidacy of `lease` under `name`.
pub(crate) fn lock_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut key = name.to_vec();
    key.push(b'/');
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key
}

/// Grants a lease for a Lock that names none.
async fn fresh_lease(s: &Shared) -> Result<i64, EtcdError> {
    let cmd = kv::Command::LeaseGrant(kv::LeaseGrantRequest {
        id: 0,
        ttl: DEFAULT_LOCK_TTL_SECS,
    });
    match s.write(cmd).await? {
        kv::CommandResult::LeaseGrant(g) => Ok(g.id),
        _ => Err(EtcdError::Internal("unexpected result kind".into())),
    }
}

/// Creates `key` with `value` attached to `lease` unless it exists
/// (locking twice with one lease is one acquisition, as in etcd); returns
/// whether it created it.
pub(crate) async fn create_key(
    s: &Shared,
    key: &[u8],
    value: &[u8],
    lease: i64,
) -> Result<bool, EtcdError> {
    let txn = kv::TxnRequest {
        compare: vec![kv::Compare::new(
            key,
            kv::CompareResult::Equal,
            kv::CompareTarget::CreateRevision(0),
        )],
        success: vec![kv::RequestOp::Put(kv::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ..Default::default()
        })],
        failure: Vec::new(),
    };
    let leases = kv::TxnLeases {
        success: vec![kv::LeaseOption {
            lease,
            ignore_lease: false,
        }],
        failure: Vec::new(),
    };
    match s.write(kv::Command::LeaseTxn(txn, leases)).await? {
        kv::CommandResult::Txn(t) => Ok(t.succeeded),
        _ => Err(EtcdError::Internal("unexpected result kind".into())),
    }
}

/// Whether `key` holds the lock now: `Some((revision, key's create
/// revision))` if no key under `prefix` is older; an error once `key` is
/// gone (its lease expired).
fn holds(s: &Shared, prefix: &[u8], key: &[u8]) -> Result<Option<(i64, i64)>, EtcdError> {
    let store = s.raft.kv.read().map_err(|_| EtcdError::Stopped)?;
    let mine = store
        .range(&kv::RangeRequest::single(key))
        .map_err(crate::command::request_error)?;
    let Some(me) = mine.kvs.first() else {
        return Err(EtcdError::Unsupported(
            "etcdserver: lock lease expired or revoked while waiting".into(),
        ));
    };
    let older = kv::RangeRequest {
        keys_only: true,
        max_create_revision: me.create_revision.saturating_sub(1),
        ..kv::RangeRequest::prefix(prefix)
    };
    let older = store.range(&older).map_err(crate::command::request_error)?;
    Ok(older
        .kvs
        .is_empty()
        .then_some((store.revision(), me.create_revision)))
}

/// Waits (polling this member's applied state) until `key` is the oldest
/// key under `prefix`: `(revision, key's create revision)`.
pub(crate) async fn wait_turn(
    s: &Shared,
    prefix: &[u8],
    key: &[u8],
) -> Result<(i64, i64), EtcdError> {
    s.read_barrier().await?;
    // Ends when the turn comes, the lease goes, or the client leaves
    // (tonic drops this future).
    loop {
        if let Some(turn) = holds(s, prefix, key)? {
            return Ok(turn);
        }
        tokio::time::sleep(LOCK_POLL_INTERVAL).await;
    }
}

#[tonic::async_trait]
impl pb::lock_server::Lock for LockService {
    async fn lock(
        &self,
        req: Request<pb::LockRequest>,
    ) -> Result<Response<pb::LockResponse>, Status> {
        let s = &self.0;
        let r = req.into_inner();
        if r.name.is_empty() {
            return Err(EtcdError::EmptyKey.into());
        }
        let lease = match r.lease {
            0 => fresh_lease(s).await?,
            id => id,
        };
        let key = lock_key(&r.name, lease);
        create_key(s, &key, &[], lease).await?;
        let mut prefix = r.name.clone();
        prefix.push(b'/');
        let (revision, _) = wait_turn(s, &prefix, &key).await?;
        Ok(Response::new(pb::LockResponse {
            header: Some(s.header_info().header(revision)),
            key,
        }))
    }

    async fn unlock(
        &self,
        req: Request<pb::UnlockRequest>,
    ) -> Result<Response<pb::UnlockResponse>, Status> {
        let s = &self.0;
        let key = req.into_inner().key;
        let cmd = kv::Command::DeleteRange(kv::DeleteRangeRequest {
            key,
            ..Default::default()
        });
        let revision = s.write(cmd).await?.header().revision;
        Ok(Response::new(pb::UnlockResponse {
            header: Some(s.header_info().header(revision)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_etcds() {
        assert_eq!(
            lock_key(b"mylock", 0x694d_7c5b),
            b"mylock/694d7c5b".to_vec()
        );
    }
}
