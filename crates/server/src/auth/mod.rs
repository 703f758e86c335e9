//! etcd 3.4's authentication and role-based access control.
//!
//! - [`store`]: the replicated state (users with bcrypt hashes, roles with
//!   key-range permissions, the enabled flag) and the [`AuthOp`]s that
//!   change it, applied in log order as server commands of kind
//!   [`crate::command::KIND_AUTH`] and saved in snapshots.
//! - [`tokens`]: etcd's `simple` tokens, random, assigned through the log
//!   ([`AuthOp::AssignToken`]) so every member knows them, as in etcd 3.4,
//!   each expiring on each member after a TTL that every use there renews.
//! - [`jwt`]: etcd's JWT tokens (`--auth-token jwt,...`), signed and
//!   verified with a key pair every member holds; no log entry.
//! - [`service`]: the `etcdserverpb.Auth` gRPC service and the checks the
//!   other services call ([`service::caller`], [`Auth::check_range`], ...).
//!
//! Permission checks run on the member that receives the request, against
//! its applied auth state, before the request is proposed or read (etcd
//! checks again at apply with an auth revision; see docs/adr/0018-auth.md).

pub mod cert;
pub(crate) mod gateway;
pub mod jwt;
pub mod service;
pub mod store;
pub mod tokens;

use std::sync::{Arc, Mutex, RwLock};

pub use store::{AuthOp, AuthState, PermType, Permission};
pub use tokens::SimpleTokens;

/// The user every permission is granted to once it has the root role.
pub const ROOT_USER: &str = "root";
/// The role that grants every permission and the admin-only calls.
pub const ROOT_ROLE: &str = "root";

/// etcd's auth errors (`rpctypes`), with its gRPC codes and messages.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize,
)]
#[non_exhaustive]
pub enum AuthError {
    /// AuthEnable without a `root` user.
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    /// AuthEnable while `root` lacks the `root` role.
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    /// UserAdd of an existing user.
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    /// An empty user name.
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    /// An unknown user.
    #[error("etcdserver: user name not found")]
    UserNotFound,
    /// RoleAdd of an existing role.
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    /// An unknown role.
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    /// An empty role name.
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    /// Authenticate with a wrong name or password.
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    /// The user may not do this.
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    /// UserRevokeRole of a role the user does not have.
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    /// RoleRevokePermission of a permission the role does not have.
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    /// Authenticate while auth is disabled.
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    /// An unknown or expired token.
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    /// Deleting `root`, or revoking or deleting the `root` role, while auth
    /// is enabled.
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    /// A JWT issued before the latest change of users or roles (etcd's
    /// `ErrAuthOldRevision`; clients authenticate again).
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
}

impl AuthError {
    /// Every error, for mapping a forwarded status back.
    pub const ALL: [AuthError; 16] = [
        AuthError::RootUserNotExist,
        AuthError::RootRoleNotExist,
        AuthError::UserAlreadyExist,
        AuthError::UserEmpty,
        AuthError::UserNotFound,
        AuthError::RoleAlreadyExist,
        AuthError::RoleNotFound,
        AuthError::RoleEmpty,
        AuthError::AuthFailed,
        AuthError::PermissionDenied,
        AuthError::RoleNotGranted,
        AuthError::PermissionNotGranted,
        AuthError::AuthNotEnabled,
        AuthError::InvalidAuthToken,
        AuthError::InvalidAuthMgmt,
        AuthError::AuthOldRevision,
    ];

    /// etcd's gRPC status code.
    pub fn code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            AuthError::UserEmpty
            | AuthError::RoleEmpty
            | AuthError::AuthFailed
            | AuthError::InvalidAuthMgmt
            | AuthError::AuthOldRevision => Code::InvalidArgument,
            AuthError::PermissionDenied => Code::PermissionDenied,
            AuthError::InvalidAuthToken => Code::Unauthenticated,
            _ => Code::FailedPrecondition,
        }
    }

    /// The error whose message is `msg`, if any (a status from the leader).
    pub fn from_message(msg: &str) -> Option<AuthError> {
        AuthError::ALL.into_iter().find(|e| e.to_string() == msg)
    }
}

impl From<AuthError> for crate::errors::EtcdError {
    fn from(e: AuthError) -> Self {
        crate::errors::EtcdError::Auth(e)
    }
}

/// One member's auth: the replicated state (written only by the state
/// machine, in log order) and the simple tokens this member knows.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    state: Arc<RwLock<AuthState>>,
    tokens: Arc<Mutex<SimpleTokens>>,
    /// `--auth-token jwt,...`: set once at start-up; then every token is a
    /// JWT and `tokens` stays unused.
    jwt: Arc<std::sync::OnceLock<jwt::JwtTokens>>,
    /// `--client-cert-auth`: a request without a token is the user its TLS
    /// client certificate's CommonName names.
    cert_users: Arc<std::sync::atomic::AtomicBool>,
}

impl Auth {
    /// An empty store: no users, no roles, disabled.
    pub fn new() -> Auth {
        Auth::default()
    }

    /// Reads the applied state.
    pub fn read<T>(&self, f: impl FnOnce(&AuthState) -> T) -> T {
        let g = self.state.read().unwrap_or_else(|p| p.into_inner());
        f(&g)
    }

    /// Applies a committed operation (the state machine's side).
    pub fn apply(&self, op: &AuthOp) -> Result<(), AuthError> {
        let mut g = self.state.write().unwrap_or_else(|p| p.into_inner());
        let r = g.apply(op);
        drop(g);
        // As etcd: disabling ends every session, deleting a user or
        // changing its password ends that user's.
        if r.is_ok() {
            match op {
                AuthOp::Disable => self.tokens().clear(),
                AuthOp::AssignToken { user, token, .. } => {
                    self.tokens().assign(token, user, std::time::Instant::now())
                }
                AuthOp::UserDelete { name } | AuthOp::UserChangePassword { name, .. } => {
                    self.tokens().invalidate_user(name)
                }
                _ => {}
            }
        }
        r
    }

    /// Replaces the state with a snapshot's.
    pub fn restore(&self, state: AuthState) {
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = state;
        self.tokens().clear();
    }

    /// The state as a snapshot field.
    pub fn snapshot(&self) -> AuthState {
        self.read(|s| s.clone())
    }

    /// Makes the TLS client certificate's CommonName the user of requests
    /// without a token (`--client-cert-auth`, as etcd).
    pub fn set_cert_users(&self, on: bool) {
        self.cert_users
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// See [`Auth::set_cert_users`].
    pub fn cert_users(&self) -> bool {
        self.cert_users.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Serves JWT tokens instead of simple ones (at start-up; a second
    /// call is ignored).
    pub fn set_jwt(&self, tokens: jwt::JwtTokens) {
        let _ = self.jwt.set(tokens);
    }

    /// The JWT keys, when `--auth-token jwt,...`.
    pub fn jwt(&self) -> Option<&jwt::JwtTokens> {
        self.jwt.get()
    }

    /// A signed JWT for `user` (carrying the current auth revision), or
    /// `None` when this member serves simple tokens.
    pub fn sign_jwt(&self, user: &str) -> Option<Result<String, String>> {
        let jwt = self.jwt()?;
        let revision = self.read(|s| s.revision);
        Some(
            jwt.sign(user, revision, std::time::SystemTime::now())
                .map_err(|e| e.to_string()),
        )
    }

    /// This member's tokens.
    pub fn tokens(&self) -> std::sync::MutexGuard<'_, SimpleTokens> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }
}
