//! etcd's server-side concurrency services, `v3lockpb.Lock` and
//! `v3electionpb.Election`, which client libraries (the `etcd-client`
//! crate's `lock`/`campaign`, the gateway's `/v3/lock/*`,
//! `/v3/election/*`) call instead of running etcd's recipes themselves.
//!
//! As in etcd, they are clients of this member's own KV and Lease
//! services, following clientv3's `concurrency` recipes:
//! - a contender's key is `<name>/<lease id in hex>`, attached to its
//!   lease, created by a transaction only if absent;
//! - the contender with the lowest create revision under the prefix holds
//!   the lock or leads; the others wait until every key created before
//!   theirs is deleted (unlocked, resigned, or its lease expired);
//! - actions "while leading" compare the key's create revision.
//!
//! Every KV and Lease call a recipe makes carries the caller's credentials
//! (its token metadata and TLS connection), as etcd passes the incoming
//! context on: with auth enabled, the caller needs permission on the
//! keys the recipe touches, and a caller without it is refused.
//!
//! Waiting reads linearizably, then sleeps on the member's Watch feed
//! until the key it waits on is deleted (rechecking every
//! [`RECHECK_INTERVAL`] in case the feed skipped, e.g. over a snapshot).

mod election;
mod lock;

pub use election::{ElectionService, MISSING_LEADER_KEY, NOT_LEADER, NO_LEADER, OBSERVE_BUFFER};
pub use lock::{LockService, SESSION_EXPIRED};

use std::sync::Arc;
use std::time::Duration;

use metalraft_kv as kv;
use tonic::metadata::MetadataMap;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Request, Status};

use crate::api::{KvService, Shared};
use crate::lease::LeaseService;
use crate::proto::etcdserverpb as pb;
use crate::proto::etcdserverpb::kv_server::Kv as _;
use crate::proto::etcdserverpb::lease_server::Lease as _;
use crate::proto::mvccpb;

/// How often a waiter rechecks even without a feed event.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(1);
/// TTL of the lease etcd's recipes grant when the caller gives none
/// (clientv3 `concurrency.NewSession`'s default).
pub const DEFAULT_SESSION_TTL_SECS: i64 = 60;

/// A recipe's context: this member, and the caller's credentials to put
/// on every request the recipe makes.
#[derive(Clone)]
pub(crate) struct Ctx {
    shared: Arc<Shared>,
    metadata: MetadataMap,
    tls: Option<TlsConnectInfo<TcpConnectInfo>>,
}

impl Ctx {
    /// The context of the incoming request `req`.
    pub(crate) fn of<T>(shared: &Arc<Shared>, req: &Request<T>) -> Ctx {
        Ctx {
            shared: shared.clone(),
            metadata: req.metadata().clone(),
            tls: req
                .extensions()
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .cloned(),
        }
    }

    /// A request carrying `msg` with the caller's credentials.
    fn request<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        *r.metadata_mut() = self.metadata.clone();
        if let Some(tls) = &self.tls {
            r.extensions_mut().insert(tls.clone());
        }
        r
    }

    fn kv(&self) -> KvService {
        KvService(self.shared.clone())
    }
}

/// `<name>/`.
fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

/// `<name>/<lease in hex>`, clientv3's key for a contender.
fn key_of(prefix: &[u8], lease: i64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(format!("{lease:x}").as_bytes());
    k
}

/// The caller's lease, or a new one of [`DEFAULT_SESSION_TTL_SECS`] when
/// it gave none (as etcd's session does).
async fn session_lease(cx: &Ctx, lease: i64) -> Result<i64, Status> {
    if lease != 0 {
        return Ok(lease);
    }
    let granted = LeaseService(cx.shared.clone())
        .lease_grant(cx.request(pb::LeaseGrantRequest {
            ttl: DEFAULT_SESSION_TTL_SECS,
            id: 0,
        }))
        .await?
        .into_inner();
    Ok(granted.id)
}

/// A put of `key` = `value` attached to `lease`, as a txn operation.
fn put_op(key: &[u8], value: &[u8], lease: i64) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })),
    }
}

/// `create_revision(key) == rev`.
fn created_at(key: &[u8], rev: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(pb::compare::TargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

async fn txn(cx: &Ctx, t: pb::TxnRequest) -> Result<pb::TxnResponse, Status> {
    Ok(cx.kv().txn(cx.request(t)).await?.into_inner())
}

async fn range(cx: &Ctx, r: pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
    Ok(cx.kv().range(cx.request(r)).await?.into_inner())
}

/// Creates the contender key `key` (attached to `lease`, holding `value`)
/// unless it exists; returns its create revision, its current value and
/// the header of the transaction.
async fn enter(
    cx: &Ctx,
    key: &[u8],
    value: &[u8],
    lease: i64,
) -> Result<(i64, Vec<u8>, pb::ResponseHeader), Status> {
    let resp = txn(
        cx,
        pb::TxnRequest {
            compare: vec![created_at(key, 0)],
            success: vec![put_op(key, value, lease)],
            failure: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                    key: key.to_vec(),
                    ..Default::default()
                })),
            }],
        },
    )
    .await?;
    let header = resp.header.unwrap_or_default();
    if resp.succeeded {
        return Ok((header.revision, value.to_vec(), header));
    }
    let existing = resp.responses.into_iter().find_map(|r| match r.response {
        Some(pb::response_op::Response::ResponseRange(r)) => r.kvs.into_iter().next(),
        _ => None,
    });
    match existing {
        Some(kv) => Ok((kv.create_revision, kv.value, header)),
        // Deleted between the compare and the read: cannot happen inside
        // one txn, so the store misbehaved.
        None => Err(Status::internal(
            "contender key vanished inside a transaction",
        )),
    }
}

/// The oldest key under `prefix` created at or below `max_create` (the
/// contender just ahead), if any, read linearizably.
async fn ahead(
    cx: &Ctx,
    prefix: &[u8],
    max_create: i64,
) -> Result<(Option<mvccpb::KeyValue>, pb::ResponseHeader), Status> {
    let r = range(
        cx,
        pb::RangeRequest {
            key: prefix.to_vec(),
            range_end: kv::prefix_end(prefix),
            limit: 1,
            sort_order: pb::range_request::SortOrder::Descend as i32,
            sort_target: pb::range_request::SortTarget::Create as i32,
            max_create_revision: max_create,
            ..Default::default()
        },
    )
    .await?;
    Ok((r.kvs.into_iter().next(), r.header.unwrap_or_default()))
}

/// Waits until no key under `prefix` was created at or below `max_create`
/// (clientv3's `waitDeletes`); returns the header of the last read.
async fn wait_deletes(
    cx: &Ctx,
    prefix: &[u8],
    max_create: i64,
) -> Result<pb::ResponseHeader, Status> {
    loop {
        // Subscribe before reading, so a delete right after the read is
        // seen on the feed.
        let mut feed = cx.shared.raft.watch_feed.subscribe();
        let (blocker, header) = ahead(cx, prefix, max_create).await?;
        let Some(blocker) = blocker else {
            return Ok(header);
        };
        wait_feed(&mut feed, |c| {
            c.kind == kv::ChangeKind::Delete && c.kv.key == blocker.key
        })
        .await;
    }
}

/// Returns once a change on the feed satisfies `stop`, or after
/// [`RECHECK_INTERVAL`], or when the feed lagged or closed, whichever comes
/// first: the caller then reads again.
async fn wait_feed(
    feed: &mut tokio::sync::broadcast::Receiver<crate::watch::FeedBatch>,
    stop: impl Fn(&kv::Change) -> bool,
) {
    let deadline = tokio::time::Instant::now() + RECHECK_INTERVAL;
    while let Ok(Ok(batch)) = tokio::time::timeout_at(deadline, feed.recv()).await {
        if batch.iter().flat_map(|e| &e.changes).any(&stop) {
            return;
        }
    }
}

/// Deletes `key` if the request is abandoned before it succeeds (the
/// client went away while waiting), as clientv3's recipes clean up.
struct Abandon {
    cx: Ctx,
    key: Option<Vec<u8>>,
}

impl Abandon {
    fn new(cx: &Ctx, key: &[u8]) -> Self {
        Abandon {
            cx: cx.clone(),
            key: Some(key.to_vec()),
        }
    }

    fn keep(mut self) {
        self.key = None;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let cx = self.cx.clone();
            tokio::spawn(async move {
                let del = pb::DeleteRangeRequest {
                    key,
                    ..Default::default()
                };
                if let Err(e) = cx.kv().delete_range(cx.request(del)).await {
                    tracing::warn!(error = %e, "could not remove an abandoned contender key");
                }
            });
        }
    }
}
