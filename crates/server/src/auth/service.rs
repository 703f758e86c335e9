//! The `etcdserverpb.Auth` gRPC service, and the checks the other services
//! make before they serve a request.
//!
//! Who calls: with auth enabled, the `token` gRPC metadata (clientv3's key;
//! `authorization`, which etcd's gateway passes, is accepted too) names a
//! user through the [`super::SimpleTokens`] every member learns from the
//! log. A token this member does not know yet may come from an
//! `Authenticate` on another member whose entry is not applied here yet:
//! [`token_gate`] (every gRPC call) and the gateway first wait for one read
//! index ([`await_token`]), as etcd 3.4 waits for the token's raft index.
//! A token still unknown is etcd's "invalid auth token" (clients
//! re-authenticate and retry); no token is no user, which every check
//! refuses with "user name is empty", as etcd does. With auth disabled
//! tokens are ignored and all is allowed.
//!
//! # Leases
//!
//! As etcd 3.4: LeaseGrant, LeaseKeepAlive, LeaseTimeToLive and
//! LeaseLeases need only a valid token (or none); LeaseRevoke, and a Put or
//! a txn put with a lease, need write permission on every key already
//! attached to that lease (etcd's `checkLeasePuts`): [`authorize_lease`].

// tonic's handlers return `Result<_, Status>`; `Status` is large by design.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};

use super::{Auth, AuthError, AuthOp, PermType, Permission};
use crate::api::{Shared, REQUEST_TIMEOUT};
use crate::errors::{self, EtcdError};
use crate::proto::authpb;
use crate::proto::etcdserverpb as pb;
use crate::proto::peer as peerpb;

/// The gRPC metadata key clientv3 puts the token in.
pub const TOKEN_METADATA: &str = "token";
/// The key etcd's HTTP gateway passes the `Authorization` header as.
pub const GATEWAY_TOKEN_METADATA: &str = "authorization";
/// A watch create without read permission is canceled with this reason
/// (etcd 3.4 puts the gRPC error's text there).
pub const WATCH_PERMISSION_DENIED: &str =
    "rpc error: code = PermissionDenied desc = etcdserver: permission denied";
/// Longest a request whose token this member does not know waits for the
/// read index that would bring the token's `AssignToken` entry here.
pub const TOKEN_APPLY_WAIT: Duration = Duration::from_secs(3);
/// Lowest and highest `--bcrypt-cost` (bcrypt's own bounds; etcd's default
/// is 10).
pub const BCRYPT_COST_MIN: u32 = 4;
/// See [`BCRYPT_COST_MIN`].
pub const BCRYPT_COST_MAX: u32 = 31;

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

/// The user a request comes from: `Ok(None)` while auth is disabled or when
/// the request carries no token (and, with `--client-cert-auth`, no client
/// certificate with a CommonName).
pub fn caller<T>(auth: &Auth, req: &Request<T>) -> Result<Option<String>, AuthError> {
    if !auth.read(|s| s.enabled) {
        return Ok(None);
    }
    let md = req.metadata();
    let token = md
        .get(TOKEN_METADATA)
        .or_else(|| md.get(GATEWAY_TOKEN_METADATA))
        .and_then(|v| v.to_str().ok());
    let Some(token) = token else {
        // etcd: with --client-cert-auth, no token means the certificate's
        // CommonName (a certificate without one is no user).
        if !auth.cert_users() {
            return Ok(None);
        }
        let certs = req.peer_certs();
        return Ok(certs
            .as_ref()
            .and_then(|c| c.first())
            .and_then(|c| super::cert::common_name(c)));
    };
    if let Some(jwt) = auth.jwt() {
        let (user, revision) = jwt
            .verify(token, std::time::SystemTime::now())
            .ok_or(AuthError::InvalidAuthToken)?;
        // As etcd 3.4: a JWT from before a change of users or roles (a
        // password changed, a user deleted and added again) is refused.
        if revision < auth.read(|s| s.revision) {
            return Err(AuthError::AuthOldRevision);
        }
        return Ok(Some(user));
    }
    auth.tokens()
        .user(token, Instant::now())
        .map(Some)
        .ok_or(AuthError::InvalidAuthToken)
}

/// The token an HTTP request carries: gRPC's `token` metadata, else the
/// gateway's `Authorization` header.
pub fn request_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(TOKEN_METADATA)
        .or_else(|| headers.get(axum::http::header::AUTHORIZATION))
        .and_then(|v| v.to_str().ok())
}

/// With auth enabled, a `token` this member does not know yet waits until
/// this member has applied everything committed now (one read index,
/// at most [`TOKEN_APPLY_WAIT`]): a client that authenticated on another
/// member got its token only after the `AssignToken` entry committed.
/// Returns at once for no token or a known one. A failed wait (no leader)
/// leaves the token unknown, and the call answers "invalid auth token".
pub async fn await_token(s: &Shared, token: Option<&str>) {
    let Some(token) = token else {
        return;
    };
    // A JWT needs no log entry: valid or not, waiting changes nothing.
    if s.raft.auth.jwt().is_some()
        || !s.raft.auth.read(|a| a.enabled)
        || s.raft.auth.tokens().knows(token, Instant::now())
    {
        return;
    }
    let barrier = s.raft.linearizable_barrier(TOKEN_APPLY_WAIT);
    if let Ok(Err(e)) | Err(e) = tokio::time::timeout(TOKEN_APPLY_WAIT, barrier)
        .await
        .map_err(|_| EtcdError::Timeout)
    {
        tracing::debug!(error = %e, "waiting for an unknown auth token");
    }
}

/// The layer of the client port's gRPC routes: [`await_token`] before every
/// call, so the handlers' synchronous [`caller`] finds a token assigned
/// through the log a moment ago.
pub async fn token_gate(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let token = request_token(req.headers()).map(str::to_owned);
    await_token(&shared, token.as_deref()).await;
    next.run(req).await
}

/// [`caller`] for an HTTP gateway request's `Authorization` header.
pub(crate) fn gateway_caller(
    s: &Shared,
    headers: &axum::http::HeaderMap,
) -> Result<Option<String>, AuthError> {
    let mut probe = Request::new(());
    if let Some(v) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| tonic::metadata::MetadataValue::try_from(v.as_bytes()).ok())
    {
        probe.metadata_mut().insert(GATEWAY_TOKEN_METADATA, v);
    }
    caller(&s.raft.auth, &probe)
}

/// What a request needs: the key ranges it reads and writes.
pub trait Checked {
    /// Checks every range of the request for `user` against `auth`.
    fn check(&self, auth: &super::AuthState, user: Option<&str>) -> Result<(), AuthError>;
}

impl Checked for pb::RangeRequest {
    fn check(&self, a: &super::AuthState, u: Option<&str>) -> Result<(), AuthError> {
        a.check_range(u, &self.key, &self.range_end, PermType::Read)
    }
}

impl Checked for pb::PutRequest {
    fn check(&self, a: &super::AuthState, u: Option<&str>) -> Result<(), AuthError> {
        a.check_range(u, &self.key, &[], PermType::Write)?;
        if self.prev_kv {
            a.check_range(u, &self.key, &[], PermType::Read)?;
        }
        Ok(())
    }
}

impl Checked for pb::DeleteRangeRequest {
    fn check(&self, a: &super::AuthState, u: Option<&str>) -> Result<(), AuthError> {
        a.check_range(u, &self.key, &self.range_end, PermType::Write)?;
        if self.prev_kv {
            a.check_range(u, &self.key, &self.range_end, PermType::Read)?;
        }
        Ok(())
    }
}

impl Checked for pb::TxnRequest {
    /// Every compare is a read; both branches are checked, whichever runs
    /// (etcd checks them all too), nested txns included.
    fn check(&self, a: &super::AuthState, u: Option<&str>) -> Result<(), AuthError> {
        for c in &self.compare {
            a.check_range(u, &c.key, &c.range_end, PermType::Read)?;
        }
        for op in self.success.iter().chain(&self.failure) {
            use pb::request_op::Request as R;
            match &op.request {
                Some(R::RequestRange(r)) => r.check(a, u)?,
                Some(R::RequestPut(r)) => r.check(a, u)?,
                Some(R::RequestDeleteRange(r)) => r.check(a, u)?,
                Some(R::RequestTxn(r)) => r.check(a, u)?,
                None => {}
            }
        }
        Ok(())
    }
}

impl Checked for pb::CompactionRequest {
    /// etcd 3.4 checks only that the token is valid (done by [`caller`]).
    fn check(&self, _: &super::AuthState, _: Option<&str>) -> Result<(), AuthError> {
        Ok(())
    }
}

/// Checks a KV request against the caller's permissions.
pub fn authorize<T: Checked>(s: &Shared, req: &Request<T>) -> Result<(), Status> {
    let user = caller(&s.raft.auth, req)?;
    Ok(s.raft
        .auth
        .read(|a| req.get_ref().check(a, user.as_deref()))?)
}

/// Checks that the caller has the root role (etcd's `IsAdminPermitted`:
/// Defragment, Snapshot, Hash, HashKV and the member changes).
pub fn authorize_admin<T>(s: &Shared, req: &Request<T>) -> Result<(), Status> {
    let user = caller(&s.raft.auth, req)?;
    Ok(s.raft.auth.read(|a| a.check_admin(user.as_deref()))?)
}

/// [`authorize_admin`] for Defragment, Snapshot and HashKV, which etcd 3.4
/// answers with its auth package's error as is: code UNKNOWN and
/// `auth: permission denied`, `auth: user name is empty`, ... (etcdctl
/// shows exactly that).
pub fn authorize_maintenance<T>(s: &Shared, req: &Request<T>) -> Result<(), Status> {
    let checked = caller(&s.raft.auth, req)
        .and_then(|user| s.raft.auth.read(|a| a.check_admin(user.as_deref())));
    checked.map_err(|e| {
        let text = e.to_string();
        let bare = text.strip_prefix("etcdserver: ").unwrap_or(&text);
        Status::unknown(format!("auth: {bare}"))
    })
}

/// Checks that `user` may read `[key, range_end)` (a Watch create).
pub fn may_watch(
    auth: &Auth,
    user: Option<&str>,
    key: &[u8],
    range_end: &[u8],
) -> Result<(), AuthError> {
    auth.read(|a| a.check_range(user, key, range_end, PermType::Read))
}

/// etcd's `checkLeasePuts`: with auth enabled, the caller may write every
/// key attached to each of `leases` (0 and unknown leases pass; the
/// command itself reports a missing lease). For LeaseRevoke and for puts
/// with a lease.
pub fn authorize_lease<T>(
    s: &Shared,
    req: &Request<T>,
    leases: impl IntoIterator<Item = i64>,
) -> Result<(), Status> {
    if !s.raft.auth.read(|a| a.enabled) {
        return Ok(());
    }
    let user = caller(&s.raft.auth, req)?;
    for lease in leases.into_iter().filter(|l| *l != 0) {
        let keys = s
            .raft
            .kv
            .read()
            .ok()
            .and_then(|kv| kv.lease(lease))
            .map(|l| l.keys)
            .unwrap_or_default();
        may_write_keys(&s.raft.auth, user.as_deref(), &keys)?;
    }
    Ok(())
}

/// The leases a txn's puts attach keys to, in both branches and nested
/// txns (etcd's `checkLeasePutsTxn`).
pub fn txn_leases(t: &pb::TxnRequest) -> Vec<i64> {
    use pb::request_op::Request as Op;
    let mut out = Vec::new();
    let mut stack = vec![t];
    while let Some(t) = stack.pop() {
        for op in t.success.iter().chain(&t.failure) {
            match &op.request {
                Some(Op::RequestPut(p)) if p.lease != 0 => out.push(p.lease),
                Some(Op::RequestTxn(inner)) => stack.push(inner),
                _ => {}
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Checks that `user` may write each of `keys` (a lease's keys).
pub fn may_write_keys(auth: &Auth, user: Option<&str>, keys: &[Vec<u8>]) -> Result<(), AuthError> {
    auth.read(|a| {
        keys.iter()
            .try_for_each(|k| a.check_range(user, k, &[], PermType::Write))
    })
}

/// Replicates `op` and waits until it is applied here or on the leader:
/// directly on the leader, through its Peer service from a follower.
pub async fn propose(s: &Shared, op: AuthOp) -> Result<(), EtcdError> {
    let st = s.leader().await?;
    if st.is_leader {
        return s.raft.propose_auth(op, REQUEST_TIMEOUT).await;
    }
    let leader = st.leader.ok_or(EtcdError::NoLeader)?;
    let mut client = s.peer_client(leader).ok_or(EtcdError::NoLeader)?;
    let op = op
        .encode()
        .map_err(|e| EtcdError::Internal(format!("auth operation: {e}")))?;
    let req = peerpb::ForwardAuthRequest {
        envelope: Some(s.envelope(leader)),
        op,
    };
    tokio::time::timeout(REQUEST_TIMEOUT, client.forward_auth(req))
        .await
        .map_err(|_| EtcdError::Timeout)?
        .map_err(|st| errors::from_status(&st))?;
    // Answer once this member has applied it too, so the caller's next
    // request here sees it.
    s.read_barrier().await
}

/// The leader's side of a follower's [`propose`].
pub async fn accept_forwarded(s: &Shared, op: &[u8]) -> Result<(), Status> {
    if !s.raft.status.borrow().is_leader {
        return Err(EtcdError::LeaderChanged.into());
    }
    let op = AuthOp::decode(op)
        .map_err(|e| Status::invalid_argument(format!("undecodable auth operation: {e}")))?;
    Ok(s.raft.propose_auth(op, REQUEST_TIMEOUT).await?)
}

/// A Cluster request to relay to the leader's client URL: while auth is
/// enabled it carries a token the leader issued for the caller (asked over
/// the Peer service), since this member's tokens mean nothing there.
pub async fn relayed<T>(s: &Shared, req: Request<T>) -> Result<Request<T>, Status> {
    let user = caller(&s.raft.auth, &req)?;
    let mut out = Request::new(req.into_inner());
    let Some(user) = user else {
        return Ok(out);
    };
    let leader = s.raft.status.borrow().leader.ok_or(EtcdError::NoLeader)?;
    let mut client = s.peer_client(leader).ok_or(EtcdError::NoLeader)?;
    let ask = peerpb::IssueTokenRequest {
        envelope: Some(s.envelope(leader)),
        user,
    };
    let token = tokio::time::timeout(REQUEST_TIMEOUT, client.issue_token(ask))
        .await
        .map_err(|_| EtcdError::Timeout)?
        .map_err(|st| errors::from_status(&st))?
        .into_inner()
        .token;
    let token = tonic::metadata::MetadataValue::try_from(token.as_str())
        .map_err(|e| EtcdError::Internal(format!("token from the leader: {e}")))?;
    out.metadata_mut().insert(TOKEN_METADATA, token);
    Ok(out)
}

/// The leader's side of [`relayed`]: a token for `user` on this member.
pub fn issue_for_peer(s: &Shared, user: &str) -> Result<String, Status> {
    if !s.raft.auth.read(|a| a.users.contains_key(user)) {
        return Err(AuthError::UserNotFound.into());
    }
    if let Some(signed) = s.raft.auth.sign_jwt(user) {
        return Ok(signed.map_err(|e| EtcdError::Internal(format!("signing a JWT: {e}")))?);
    }
    Ok(s.raft
        .auth
        .tokens()
        .issue(user, Instant::now())
        .map_err(|e| EtcdError::Internal(format!("token randomness: {e}")))?)
}

async fn hash(cost: u32, password: String) -> Result<String, EtcdError> {
    tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
        .await
        .map_err(|e| EtcdError::Internal(format!("bcrypt task: {e}")))?
        .map_err(|e| EtcdError::Internal(format!("bcrypt: {e}")))
}

/// etcd's Auth service.
pub struct AuthService(pub Arc<Shared>);

impl AuthService {
    fn auth(&self) -> &Auth {
        &self.0.raft.auth
    }

    fn header(&self) -> pb::ResponseHeader {
        let rev = self.0.raft.kv.read().map(|k| k.revision()).unwrap_or(0);
        self.0.header_info().header(rev)
    }

    /// The caller, who must be root (while auth is enabled).
    fn admin<T>(&self, req: &Request<T>) -> Result<Option<String>, Status> {
        let user = caller(self.auth(), req)?;
        self.auth().read(|a| a.check_admin(user.as_deref()))?;
        Ok(user)
    }

    async fn change<T>(&self, req: &Request<T>, op: AuthOp) -> Result<pb::ResponseHeader, Status> {
        self.admin(req)?;
        propose(&self.0, op).await?;
        Ok(self.header())
    }
}

#[tonic::async_trait]
impl pb::auth_server::Auth for AuthService {
    async fn auth_enable(
        &self,
        _: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        // etcd checks no caller here: enabling needs root with the root
        // role anyway, and enabling twice is a no-op.
        propose(&self.0, AuthOp::Enable).await?;
        let header = self.header();
        Ok(Response::new(pb::AuthEnableResponse {
            header: Some(header),
        }))
    }

    async fn auth_disable(
        &self,
        req: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        let header = self.change(&req, AuthOp::Disable).await?;
        Ok(Response::new(pb::AuthDisableResponse {
            header: Some(header),
        }))
    }

    async fn authenticate(
        &self,
        req: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let r = req.into_inner();
        // See users added on other members just before.
        self.0.read_barrier().await?;
        let (enabled, hash) = self.auth().read(|a| {
            let hash = a.users.get(&r.name).and_then(|u| u.password_hash.clone());
            (a.enabled, hash)
        });
        if !enabled {
            return Err(AuthError::AuthNotEnabled.into());
        }
        let hash = hash.ok_or(AuthError::AuthFailed)?;
        let password = r.password;
        let checked = hash.clone();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &checked))
            .await
            .map_err(|e| EtcdError::Internal(format!("bcrypt task: {e}")))?
            .unwrap_or(false);
        if !ok {
            return Err(AuthError::AuthFailed.into());
        }
        // A JWT is stateless: signed here, verified by any member with the
        // public key; nothing goes through the log.
        if let Some(signed) = self.auth().sign_jwt(&r.name) {
            let token = signed.map_err(|e| EtcdError::Internal(format!("signing a JWT: {e}")))?;
            return Ok(Response::new(pb::AuthenticateResponse {
                header: Some(self.header()),
                token,
            }));
        }
        let token = self
            .auth()
            .tokens()
            .generate()
            .map_err(|e| EtcdError::Internal(format!("token randomness: {e}")))?;
        // Every member learns the token from the log (etcd 3.4 too), so the
        // client may use it on any of them; answered once applied here.
        let op = AuthOp::AssignToken {
            user: r.name,
            token: token.clone(),
            password_hash: hash,
        };
        propose(&self.0, op).await?;
        Ok(Response::new(pb::AuthenticateResponse {
            header: Some(self.header()),
            token,
        }))
    }

    async fn user_add(
        &self,
        req: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        self.admin(&req)?;
        let r = req.into_inner();
        if r.name.is_empty() {
            return Err(AuthError::UserEmpty.into());
        }
        let no_password = r.options.is_some_and(|o| o.no_password);
        let password_hash = if no_password {
            None
        } else {
            Some(hash(self.0.cfg.bcrypt_cost, r.password).await?)
        };
        let op = AuthOp::UserAdd {
            name: r.name,
            password_hash,
        };
        propose(&self.0, op).await?;
        Ok(Response::new(pb::AuthUserAddResponse {
            header: Some(self.header()),
        }))
    }

    async fn user_get(
        &self,
        req: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        let user = caller(self.auth(), &req)?;
        let r = req.into_inner();
        let roles = self.auth().read(|a| {
            // A user may look itself up (etcd 3.4).
            if user.as_deref() != Some(r.name.as_str()) {
                a.check_admin(user.as_deref())?;
            }
            let u = a.users.get(&r.name).ok_or(AuthError::UserNotFound)?;
            Ok::<_, AuthError>(u.roles.iter().cloned().collect())
        })?;
        Ok(Response::new(pb::AuthUserGetResponse {
            header: Some(self.header()),
            roles,
        }))
    }

    async fn user_list(
        &self,
        req: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        self.admin(&req)?;
        let users = self.auth().read(|a| a.users.keys().cloned().collect());
        Ok(Response::new(pb::AuthUserListResponse {
            header: Some(self.header()),
            users,
        }))
    }

    async fn user_delete(
        &self,
        req: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        let name = req.get_ref().name.clone();
        let header = self.change(&req, AuthOp::UserDelete { name }).await?;
        Ok(Response::new(pb::AuthUserDeleteResponse {
            header: Some(header),
        }))
    }

    async fn user_change_password(
        &self,
        req: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        self.admin(&req)?;
        let r = req.into_inner();
        if !self.auth().read(|a| a.users.contains_key(&r.name)) {
            return Err(AuthError::UserNotFound.into());
        }
        let password_hash = hash(self.0.cfg.bcrypt_cost, r.password).await?;
        let op = AuthOp::UserChangePassword {
            name: r.name,
            password_hash,
        };
        propose(&self.0, op).await?;
        Ok(Response::new(pb::AuthUserChangePasswordResponse {
            header: Some(self.header()),
        }))
    }

    async fn user_grant_role(
        &self,
        req: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        let r = req.get_ref();
        let op = AuthOp::UserGrantRole {
            user: r.user.clone(),
            role: r.role.clone(),
        };
        let header = self.change(&req, op).await?;
        Ok(Response::new(pb::AuthUserGrantRoleResponse {
            header: Some(header),
        }))
    }

    async fn user_revoke_role(
        &self,
        req: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        let r = req.get_ref();
        let op = AuthOp::UserRevokeRole {
            user: r.name.clone(),
            role: r.role.clone(),
        };
        let header = self.change(&req, op).await?;
        Ok(Response::new(pb::AuthUserRevokeRoleResponse {
            header: Some(header),
        }))
    }

    async fn role_add(
        &self,
        req: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        let name = req.get_ref().name.clone();
        let header = self.change(&req, AuthOp::RoleAdd { name }).await?;
        Ok(Response::new(pb::AuthRoleAddResponse {
            header: Some(header),
        }))
    }

    async fn role_get(
        &self,
        req: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        let user = caller(self.auth(), &req)?;
        let r = req.into_inner();
        let perm = self.auth().read(|a| {
            // A user may look up its own roles (etcd 3.4).
            if !a.has_role(user.as_deref(), &r.role) {
                a.check_admin(user.as_deref())?;
            }
            let perms = a.roles.get(&r.role).ok_or(AuthError::RoleNotFound)?;
            Ok::<_, AuthError>(perms.iter().map(to_pb).collect())
        })?;
        Ok(Response::new(pb::AuthRoleGetResponse {
            header: Some(self.header()),
            perm,
        }))
    }

    async fn role_list(
        &self,
        req: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        self.admin(&req)?;
        let roles = self.auth().read(|a| a.roles.keys().cloned().collect());
        Ok(Response::new(pb::AuthRoleListResponse {
            header: Some(self.header()),
            roles,
        }))
    }

    async fn role_delete(
        &self,
        req: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        let name = req.get_ref().role.clone();
        let header = self.change(&req, AuthOp::RoleDelete { name }).await?;
        Ok(Response::new(pb::AuthRoleDeleteResponse {
            header: Some(header),
        }))
    }

    async fn role_grant_permission(
        &self,
        req: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        let r = req.get_ref();
        let p = r.perm.clone().ok_or_else(|| {
            EtcdError::InvalidArgument("etcdserver: permission is not given".into())
        })?;
        let perm_type = PermType::from_pb(p.perm_type).ok_or_else(|| {
            EtcdError::InvalidArgument(format!(
                "etcdserver: unknown permission type {}",
                p.perm_type
            ))
        })?;
        let op = AuthOp::RoleGrantPermission {
            role: r.name.clone(),
            perm: Permission {
                perm_type,
                key: p.key,
                range_end: p.range_end,
            },
        };
        let header = self.change(&req, op).await?;
        Ok(Response::new(pb::AuthRoleGrantPermissionResponse {
            header: Some(header),
        }))
    }

    async fn role_revoke_permission(
        &self,
        req: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        let r = req.get_ref();
        let op = AuthOp::RoleRevokePermission {
            role: r.role.clone(),
            key: r.key.clone(),
            range_end: r.range_end.clone(),
        };
        let header = self.change(&req, op).await?;
        Ok(Response::new(pb::AuthRoleRevokePermissionResponse {
            header: Some(header),
        }))
    }
}

fn to_pb(p: &Permission) -> authpb::Permission {
    authpb::Permission {
        perm_type: p.perm_type.to_pb(),
        key: p.key.clone(),
        range_end: p.range_end.clone(),
    }
}
