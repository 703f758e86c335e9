//! The Auth service on etcd's HTTP/JSON gateway (`/v3/auth/...`, with
//! etcd's paths); the token goes in the `Authorization` header.

use std::sync::Arc;

use axum::Router;

use super::service::AuthService;
use crate::api::Shared;
use crate::gateway::unary;
use crate::proto::etcdserverpb::auth_server::Auth as _;

/// Adds the Auth routes (relative to the gateway's prefix).
pub(crate) fn routes(r: Router, shared: &Arc<Shared>) -> Router {
    macro_rules! route {
        ($r:expr, $path:literal, $method:literal, $call:ident) => {
            $r.route(
                concat!("/auth/", $path),
                unary(
                    shared,
                    concat!("/etcdserverpb.Auth/", $method),
                    |s, q| async move { AuthService(s).$call(q).await },
                ),
            )
        };
    }
    let r = route!(r, "enable", "AuthEnable", auth_enable);
    let r = route!(r, "disable", "AuthDisable", auth_disable);
    let r = route!(r, "authenticate", "Authenticate", authenticate);
    let r = route!(r, "user/add", "UserAdd", user_add);
    let r = route!(r, "user/get", "UserGet", user_get);
    let r = route!(r, "user/list", "UserList", user_list);
    let r = route!(r, "user/delete", "UserDelete", user_delete);
    let r = route!(
        r,
        "user/changepw",
        "UserChangePassword",
        user_change_password
    );
    let r = route!(r, "user/grant", "UserGrantRole", user_grant_role);
    let r = route!(r, "user/revoke", "UserRevokeRole", user_revoke_role);
    let r = route!(r, "role/add", "RoleAdd", role_add);
    let r = route!(r, "role/get", "RoleGet", role_get);
    let r = route!(r, "role/list", "RoleList", role_list);
    let r = route!(r, "role/delete", "RoleDelete", role_delete);
    let r = route!(
        r,
        "role/grant",
        "RoleGrantPermission",
        role_grant_permission
    );
    route!(
        r,
        "role/revoke",
        "RoleRevokePermission",
        role_revoke_permission
    )
}
