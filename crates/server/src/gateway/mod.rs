//! etcd's HTTP/JSON gateway on the client port: `POST /v3/<service>/<call>`
//! (and `/v3beta/...`, which etcd 3.4 also serves) with a JSON body in
//! protobuf's JSON mapping (original field names, bytes as base64, 64-bit
//! integers as strings, defaults omitted), answered by the same handlers as
//! the gRPC API; and `GET /version`.
//!
//! - Unary calls answer one JSON object, or etcd's error object
//!   `{"error": …, "message": …, "code": <gRPC code>}` with the HTTP status
//!   grpc-gateway maps the code to.
//! - Streaming calls (`/v3/watch`) read a sequence of JSON requests from the
//!   body as they arrive and answer a chunked body of one
//!   `{"result": <response>}` line per message, as grpc-gateway does.
//!
//! Clients that use it: Patroni's etcd3 support, etcd3gw (OpenStack), curl
//! scripts.

mod json;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Status};

use crate::api::{ClusterService, KvService, MaintenanceService, Shared, ETCD_API_VERSION};
use crate::concurrency::{ElectionService, LockService};
use crate::lease::LeaseService;
use crate::proto::etcdserverpb as pb;
use crate::proto::etcdserverpb::cluster_server::Cluster as _;
use crate::proto::etcdserverpb::kv_server::Kv as _;
use crate::proto::etcdserverpb::lease_server::Lease as _;
use crate::proto::etcdserverpb::maintenance_server::Maintenance as _;
use crate::proto::v3electionpb;
use crate::proto::v3electionpb::election_server::Election as _;
use crate::proto::v3lockpb::lock_server::Lock as _;
use tokio_stream::StreamExt;

pub use json::{error_body, http_status, ErrorBody};

/// The path prefixes served: etcd 3.4 answers both.
pub const PREFIXES: [&str; 2] = ["/v3", "/v3beta"];
/// Largest JSON request body accepted (a request is at most
/// `--max-request-bytes` of protobuf; base64 adds a third, field names and
/// quoting a little more).
pub fn max_body_bytes(max_request_bytes: usize) -> usize {
    max_request_bytes
        .saturating_mul(2)
        .saturating_add(64 * 1024)
}

/// The gateway's routes.
pub fn router(shared: Arc<Shared>) -> Router {
    let version = Router::new().route(
        "/version",
        get(|| async {
            json_response(
                StatusCode::OK,
                &serde_json::json!({
                    "etcdserver": ETCD_API_VERSION,
                    "etcdcluster": ETCD_API_VERSION,
                }),
            )
        }),
    );
    // One route table, served under every prefix.
    let api = api_routes(&shared);
    PREFIXES.iter().fold(version, |r, p| r.nest(p, api.clone()))
}

/// The calls, relative to a prefix.
fn api_routes(shared: &Arc<Shared>) -> Router {
    // A unary call `$service($method)` of gRPC service `$grpc`.
    macro_rules! call {
        ($service:ident, $grpc:literal, $method:ident) => {
            unary(
                shared,
                $grpc,
                |s, q| async move { $service(s).$method(q).await },
            )
        };
    }
    // etcd 3.4 routes both Hash and HashKV to `/maintenance/hash`; HashKV wins.
    let hash_kv = call!(
        MaintenanceService,
        "/etcdserverpb.Maintenance/HashKV",
        hash_kv
    );
    // The lease calls etcd also serves under `/kv/lease/`.
    let revoke = call!(
        LeaseService,
        "/etcdserverpb.Lease/LeaseRevoke",
        lease_revoke
    );
    let ttl = call!(
        LeaseService,
        "/etcdserverpb.Lease/LeaseTimeToLive",
        lease_time_to_live
    );
    let leases = call!(
        LeaseService,
        "/etcdserverpb.Lease/LeaseLeases",
        lease_leases
    );
    let r = Router::new()
        .route(
            "/kv/range",
            call!(KvService, "/etcdserverpb.KV/Range", range),
        )
        .route("/kv/put", call!(KvService, "/etcdserverpb.KV/Put", put))
        .route(
            "/kv/deleterange",
            call!(KvService, "/etcdserverpb.KV/DeleteRange", delete_range),
        )
        .route("/kv/txn", call!(KvService, "/etcdserverpb.KV/Txn", txn))
        .route(
            "/kv/compaction",
            call!(KvService, "/etcdserverpb.KV/Compact", compact),
        )
        .route(
            "/cluster/member/add",
            call!(
                ClusterService,
                "/etcdserverpb.Cluster/MemberAdd",
                member_add
            ),
        )
        .route(
            "/cluster/member/remove",
            call!(
                ClusterService,
                "/etcdserverpb.Cluster/MemberRemove",
                member_remove
            ),
        )
        .route(
            "/cluster/member/update",
            call!(
                ClusterService,
                "/etcdserverpb.Cluster/MemberUpdate",
                member_update
            ),
        )
        .route(
            "/cluster/member/list",
            call!(
                ClusterService,
                "/etcdserverpb.Cluster/MemberList",
                member_list
            ),
        )
        .route(
            "/cluster/member/promote",
            call!(
                ClusterService,
                "/etcdserverpb.Cluster/MemberPromote",
                member_promote
            ),
        )
        .route(
            "/maintenance/alarm",
            call!(MaintenanceService, "/etcdserverpb.Maintenance/Alarm", alarm),
        )
        .route(
            "/maintenance/status",
            call!(
                MaintenanceService,
                "/etcdserverpb.Maintenance/Status",
                status
            ),
        )
        .route(
            "/maintenance/defragment",
            call!(
                MaintenanceService,
                "/etcdserverpb.Maintenance/Defragment",
                defragment
            ),
        )
        .route("/maintenance/snapshot", snapshot_route(shared))
        .route("/maintenance/hash", hash_kv.clone())
        .route("/maintenance/hashkv", hash_kv)
        .route(
            "/maintenance/transfer-leadership",
            call!(
                MaintenanceService,
                "/etcdserverpb.Maintenance/MoveLeader",
                move_leader
            ),
        )
        .route("/watch", watch_route(shared))
        .route(
            "/lease/grant",
            call!(LeaseService, "/etcdserverpb.Lease/LeaseGrant", lease_grant),
        )
        .route("/lease/revoke", revoke.clone())
        .route("/kv/lease/revoke", revoke)
        .route("/lease/timetolive", ttl.clone())
        .route("/kv/lease/timetolive", ttl)
        .route("/lease/leases", leases.clone())
        .route("/kv/lease/leases", leases)
        .route("/lease/keepalive", keepalive_route(shared))
        .route(
            "/lock/lock",
            call!(LockService, "/v3lockpb.Lock/Lock", lock),
        )
        .route(
            "/lock/unlock",
            call!(LockService, "/v3lockpb.Lock/Unlock", unlock),
        )
        .route(
            "/election/campaign",
            call!(ElectionService, "/v3electionpb.Election/Campaign", campaign),
        )
        .route(
            "/election/proclaim",
            call!(ElectionService, "/v3electionpb.Election/Proclaim", proclaim),
        )
        .route(
            "/election/leader",
            call!(ElectionService, "/v3electionpb.Election/Leader", leader),
        )
        .route(
            "/election/resign",
            call!(ElectionService, "/v3electionpb.Election/Resign", resign),
        )
        .route("/election/observe", observe_route(shared));
    crate::auth::gateway::routes(r, shared)
}

/// A unary route: JSON body → `Req` → `call` → JSON answer. An
/// `Authorization` header is passed on as the auth token (etcd's gateway
/// does the same), valid on every member as in etcd
/// ([`crate::auth::service::await_token`]).
pub(crate) fn unary<Req, Resp, F, Fut>(
    shared: &Arc<Shared>,
    method: &'static str,
    call: F,
) -> axum::routing::MethodRouter
where
    Req: DeserializeOwned + Default + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(Arc<Shared>, Request<Req>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<tonic::Response<Resp>, Status>> + Send,
{
    let shared = shared.clone();
    post(move |headers: axum::http::HeaderMap, body: Bytes| {
        let shared = shared.clone();
        let call = call.clone();
        async move {
            let req = match grpc_request::<Req>(&shared, method, &headers, &body).await {
                Ok(r) => r,
                Err(refused) => return refused,
            };
            match call(shared, req).await {
                Ok(resp) => json_response(StatusCode::OK, &resp.into_inner()),
                Err(status) => error_response(&status),
            }
        }
    })
}

/// The gRPC request of a call of `method` with this HTTP request's
/// headers and body, or the error answer: the learner refusal, a body
/// that does not parse. Its auth token is the `Authorization` header,
/// whose entry is awaited first (a token from another member's
/// Authenticate may need it applied here).
async fn grpc_request<Req: DeserializeOwned + Default>(
    shared: &Arc<Shared>,
    method: &str,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<Request<Req>, Response> {
    if let Some(refused) = learner_refusal(shared, method) {
        return Err(error_response(&refused));
    }
    crate::auth::service::await_token(shared, crate::auth::service::request_token(headers)).await;
    let req: Req = json::parse_body(body, max_body_bytes(shared.cfg.max_request_bytes))
        .map_err(|status| error_response(&status))?;
    let mut req = Request::new(req);
    if let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| tonic::metadata::MetadataValue::try_from(v.as_bytes()).ok())
    {
        req.metadata_mut()
            .insert(crate::auth::service::GATEWAY_TOKEN_METADATA, token);
    }
    Ok(req)
}

/// `/v3/maintenance/snapshot`: one `SnapshotRequest` body, the backup as
/// a stream of `{"result": SnapshotResponse}` lines (each `blob` base64),
/// the way etcd's gateway serves it.
fn snapshot_route(shared: &Arc<Shared>) -> axum::routing::MethodRouter {
    const METHOD: &str = "/etcdserverpb.Maintenance/Snapshot";
    let shared = shared.clone();
    post(move |headers: axum::http::HeaderMap, body: Bytes| {
        let shared = shared.clone();
        async move {
            let req =
                match grpc_request::<pb::SnapshotRequest>(&shared, METHOD, &headers, &body).await {
                    Ok(r) => r,
                    Err(refused) => return refused,
                };
            match MaintenanceService(shared).snapshot(req).await {
                Ok(stream) => json::streaming_response(stream.into_inner()),
                Err(status) => error_response(&status),
            }
        }
    })
}

/// The learner refusal the gRPC side applies (`member::learner_gate`).
fn learner_refusal(shared: &Shared, method: &str) -> Option<Status> {
    crate::member::learner_refuses(shared, method)
        .then(|| Status::from(crate::errors::EtcdError::NotSupportedForLearner))
}

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => error_response(&Status::internal(format!("encoding the answer: {e}"))),
    }
}

/// grpc-gateway's error answer for a failed unary call.
fn error_response(status: &Status) -> Response {
    json_response(http_status(status.code()), &error_body(status))
}

/// `/v3/lease/keepalive`: each `LeaseKeepAliveRequest` of the body gets
/// one `{"result": LeaseKeepAliveResponse}` line.
fn keepalive_route(shared: &Arc<Shared>) -> axum::routing::MethodRouter {
    let shared = shared.clone();
    post(move |body: Body| {
        let shared = shared.clone();
        async move {
            if let Some(refused) = learner_refusal(&shared, "/etcdserverpb.Lease/LeaseKeepAlive") {
                return error_response(&refused);
            }
            let limit = max_body_bytes(shared.cfg.max_request_bytes);
            let requests = json::request_stream::<pb::LeaseKeepAliveRequest>(body, limit);
            let answers = requests.then(move |r| {
                let shared = shared.clone();
                async move {
                    let r = r?;
                    LeaseService::keepalive(&shared, r.id)
                        .await
                        .map_err(Status::from)
                }
            });
            json::streaming_response(Box::pin(answers))
        }
    })
}

/// `/v3/election/observe`: one `LeaderRequest` body, a stream of
/// `{"result": LeaderResponse}` lines.
fn observe_route(shared: &Arc<Shared>) -> axum::routing::MethodRouter {
    let shared = shared.clone();
    post(move |body: Bytes| {
        let shared = shared.clone();
        async move {
            let limit = max_body_bytes(shared.cfg.max_request_bytes);
            let req: v3electionpb::LeaderRequest = match json::parse_body(&body, limit) {
                Ok(r) => r,
                Err(status) => return error_response(&status),
            };
            match ElectionService(shared).observe(Request::new(req)).await {
                Ok(stream) => json::streaming_response(stream.into_inner()),
                Err(status) => error_response(&status),
            }
        }
    })
}

/// `/v3/watch`: the request body is a stream of `WatchRequest`s, the
/// answer a stream of `{"result": WatchResponse}` lines.
fn watch_route(shared: &Arc<Shared>) -> axum::routing::MethodRouter {
    let shared = shared.clone();
    post(move |headers: axum::http::HeaderMap, body: Body| {
        let shared = shared.clone();
        async move {
            crate::auth::service::await_token(
                &shared,
                crate::auth::service::request_token(&headers),
            )
            .await;
            let user = match crate::auth::service::gateway_caller(&shared, &headers) {
                Ok(u) => u,
                Err(e) => return error_response(&e.into()),
            };
            if let Some(refused) = learner_refusal(&shared, "/etcdserverpb.Watch/Watch") {
                return error_response(&refused);
            }
            let limit = max_body_bytes(shared.cfg.max_request_bytes);
            let requests = json::request_stream::<pb::WatchRequest>(body, limit);
            let responses = crate::watch::serve_stream(shared, requests, user);
            json::streaming_response(responses)
        }
    })
}
