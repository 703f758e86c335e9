//! The replicated auth state and the operations that change it.
//!
//! # Compatibility
//!
//! [`AuthOp`] is postcard in the log (server command kind
//! [`crate::command::KIND_AUTH`]): variants are only ever appended. The
//! state is saved in snapshots as [`AuthState::encode`]: a version byte
//! ([`STATE_FORMAT_V1`]) then postcard, so a later format can be told apart.
//!
//! # Determinism
//!
//! Passwords arrive hashed (bcrypt, on the member that took the request,
//! with its `--bcrypt-cost`): applying never hashes, so every member
//! applies the same bytes to the same state alike, and errors are decided
//! here, at apply, in log order.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{AuthError, ROOT_ROLE, ROOT_USER};
use crate::registry::CodecError;

/// First byte of an encoded [`AuthState`].
pub const STATE_FORMAT_V1: u8 = 1;

/// etcd's `authpb.Permission.Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PermType {
    /// Range and Watch.
    Read,
    /// Put and DeleteRange.
    Write,
    /// Both.
    ReadWrite,
}

impl PermType {
    /// Whether a permission of this type allows `need` (`Read` or `Write`).
    pub fn allows(self, need: PermType) -> bool {
        self == PermType::ReadWrite || self == need
    }

    /// From etcd's enum value (READ = 0, WRITE = 1, READWRITE = 2).
    pub fn from_pb(v: i32) -> Option<PermType> {
        match v {
            0 => Some(PermType::Read),
            1 => Some(PermType::Write),
            2 => Some(PermType::ReadWrite),
            _ => None,
        }
    }

    /// etcd's enum value.
    pub fn to_pb(self) -> i32 {
        match self {
            PermType::Read => 0,
            PermType::Write => 1,
            PermType::ReadWrite => 2,
        }
    }
}

/// A permission on `[key, range_end)`: an empty `range_end` is the single
/// key, `range_end == [0]` every key from `key` on (etcd's encoding).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    /// What it allows.
    pub perm_type: PermType,
    /// First key.
    pub key: Vec<u8>,
    /// End (exclusive), empty or `[0]` as above.
    pub range_end: Vec<u8>,
}

/// A user: a bcrypt hash (none for etcd's `--no-password` users, who cannot
/// authenticate with a password) and role names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// bcrypt hash of the password.
    pub password_hash: Option<String>,
    /// Granted roles.
    pub roles: BTreeSet<String>,
}

/// A change to the auth state, replicated through the log. Variants are only
/// ever appended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthOp {
    /// `auth enable`: needs a `root` user with the `root` role.
    Enable,
    /// `auth disable`.
    Disable,
    /// `user add`.
    UserAdd {
        /// Name (not empty).
        name: String,
        /// bcrypt hash, or none for a no-password user.
        password_hash: Option<String>,
    },
    /// `user delete`.
    UserDelete {
        /// Name.
        name: String,
    },
    /// `user passwd`.
    UserChangePassword {
        /// Name.
        name: String,
        /// New bcrypt hash.
        password_hash: String,
    },
    /// `user grant-role`.
    UserGrantRole {
        /// User name.
        user: String,
        /// Role name.
        role: String,
    },
    /// `user revoke-role`.
    UserRevokeRole {
        /// User name.
        user: String,
        /// Role name.
        role: String,
    },
    /// `role add`.
    RoleAdd {
        /// Name (not empty).
        name: String,
    },
    /// `role delete` (also revoked from every user).
    RoleDelete {
        /// Name.
        name: String,
    },
    /// `role grant-permission`: replaces the type of a permission on the
    /// same range.
    RoleGrantPermission {
        /// Role name.
        role: String,
        /// The permission.
        perm: Permission,
    },
    /// `role revoke-permission`.
    RoleRevokePermission {
        /// Role name.
        role: String,
        /// First key of the permission.
        key: Vec<u8>,
        /// Its end.
        range_end: Vec<u8>,
    },
    /// A successful `Authenticate`: `token` names `user` on every member
    /// from this entry on (etcd 3.4 replicates its simple tokens the same
    /// way). Changes no [`AuthState`] and not its revision; refused with
    /// "authentication failed" unless auth is still enabled and the user's
    /// password hash is still `password_hash`, the one the password was
    /// checked against (a password changed in between wins).
    AssignToken {
        /// The authenticated user.
        user: String,
        /// The token (see [`super::SimpleTokens::generate`]).
        token: String,
        /// The bcrypt hash the password matched.
        password_hash: String,
    },
}

impl AuthOp {
    /// Encodes with postcard.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        Ok(postcard::to_allocvec(self)?)
    }

    /// Decodes, refusing trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<AuthOp, CodecError> {
        let (op, rest) = postcard::take_from_bytes::<AuthOp>(bytes)?;
        if !rest.is_empty() {
            return Err(CodecError::TrailingBytes(rest.len()));
        }
        Ok(op)
    }
}

/// Users, roles and whether auth is enabled: what every member applies.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    /// `auth enable` is in force.
    pub enabled: bool,
    /// Users by name.
    pub users: BTreeMap<String, User>,
    /// Roles by name, each with its permissions in key order.
    pub roles: BTreeMap<String, Vec<Permission>>,
    /// Successful changes applied (etcd's auth revision).
    pub revision: u64,
}

impl AuthState {
    /// Encodes for a snapshot (version byte, then postcard).
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = vec![STATE_FORMAT_V1];
        out.extend(postcard::to_allocvec(self)?);
        Ok(out)
    }

    /// Decodes [`AuthState::encode`]'s bytes; empty bytes (a snapshot from
    /// before auth existed) are the empty state.
    pub fn decode(bytes: &[u8]) -> Result<AuthState, CodecError> {
        let Some((&version, body)) = bytes.split_first() else {
            return Ok(AuthState::default());
        };
        if version != STATE_FORMAT_V1 {
            return Err(CodecError::Postcard(
                postcard::Error::DeserializeBadEncoding,
            ));
        }
        let (s, rest) = postcard::take_from_bytes::<AuthState>(body)?;
        if !rest.is_empty() {
            return Err(CodecError::TrailingBytes(rest.len()));
        }
        Ok(s)
    }

    /// Applies `op`; on error nothing changes.
    pub fn apply(&mut self, op: &AuthOp) -> Result<(), AuthError> {
        self.apply_inner(op)?;
        // A session is not a change of users or roles: no new revision.
        if !matches!(op, AuthOp::AssignToken { .. }) {
            self.revision += 1;
        }
        Ok(())
    }

    /// Whether an `AssignToken` for `user`, checked against
    /// `password_hash`, still holds.
    fn check_assign_token(&self, user: &str, password_hash: &str) -> Result<(), AuthError> {
        if !self.enabled {
            return Err(AuthError::AuthNotEnabled);
        }
        let current = self
            .users
            .get(user)
            .and_then(|u| u.password_hash.as_deref());
        if current != Some(password_hash) {
            return Err(AuthError::AuthFailed);
        }
        Ok(())
    }

    fn user_mut(&mut self, name: &str) -> Result<&mut User, AuthError> {
        self.users.get_mut(name).ok_or(AuthError::UserNotFound)
    }

    fn apply_inner(&mut self, op: &AuthOp) -> Result<(), AuthError> {
        match op {
            AuthOp::Enable => {
                let root = self
                    .users
                    .get(ROOT_USER)
                    .ok_or(AuthError::RootUserNotExist)?;
                if !root.roles.contains(ROOT_ROLE) {
                    return Err(AuthError::RootRoleNotExist);
                }
                self.enabled = true;
            }
            AuthOp::Disable => self.enabled = false,
            AuthOp::UserAdd {
                name,
                password_hash,
            } => {
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(name) {
                    return Err(AuthError::UserAlreadyExist);
                }
                let user = User {
                    password_hash: password_hash.clone(),
                    roles: BTreeSet::new(),
                };
                self.users.insert(name.clone(), user);
            }
            AuthOp::UserDelete { name } => {
                if self.enabled && name == ROOT_USER {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.users.remove(name).ok_or(AuthError::UserNotFound)?;
            }
            AuthOp::UserChangePassword {
                name,
                password_hash,
            } => self.user_mut(name)?.password_hash = Some(password_hash.clone()),
            AuthOp::UserGrantRole { user, role } => {
                // etcd lets `root` be granted before `role add root`.
                if role != ROOT_ROLE && !self.roles.contains_key(role) {
                    self.user_mut(user)?;
                    return Err(AuthError::RoleNotFound);
                }
                // Granting a role twice is ignored, as in etcd.
                self.user_mut(user)?.roles.insert(role.clone());
            }
            AuthOp::UserRevokeRole { user, role } => {
                if self.enabled && user == ROOT_USER && role == ROOT_ROLE {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                if !self.user_mut(user)?.roles.remove(role) {
                    return Err(AuthError::RoleNotGranted);
                }
            }
            AuthOp::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                self.roles.insert(name.clone(), Vec::new());
            }
            AuthOp::RoleDelete { name } => {
                if self.enabled && name == ROOT_ROLE {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.roles.remove(name).ok_or(AuthError::RoleNotFound)?;
                for u in self.users.values_mut() {
                    u.roles.remove(name);
                }
            }
            AuthOp::RoleGrantPermission { role, perm } => {
                let perms = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                match perms
                    .iter_mut()
                    .find(|p| p.key == perm.key && p.range_end == perm.range_end)
                {
                    Some(p) => p.perm_type = perm.perm_type,
                    None => {
                        // Kept in key order, as etcd lists them.
                        let at = perms.partition_point(|p| {
                            (&p.key, &p.range_end) <= (&perm.key, &perm.range_end)
                        });
                        perms.insert(at, perm.clone());
                    }
                }
            }
            AuthOp::AssignToken {
                user,
                password_hash,
                ..
            } => self.check_assign_token(user, password_hash)?,
            AuthOp::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                let perms = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                let before = perms.len();
                perms.retain(|p| !(p.key == *key && p.range_end == *range_end));
                if perms.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
            }
        }
        Ok(())
    }

    /// The user `name`, or etcd's errors for a missing or empty name.
    fn known_user(&self, name: Option<&str>) -> Result<&User, AuthError> {
        let name = name.ok_or(AuthError::UserEmpty)?;
        if name.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        self.users.get(name).ok_or(AuthError::UserNotFound)
    }

    /// Whether user `name` may do what only `root` may (always, while auth
    /// is disabled).
    pub fn check_admin(&self, name: Option<&str>) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        if self.known_user(name)?.roles.contains(ROOT_ROLE) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// Whether user `name` may `need` (read or write) every key of the
    /// request range `[key, range_end)` (etcd's encoding: empty end is the
    /// single key, `[0]` everything from `key`). Always, while disabled.
    /// The union of the user's permissions must cover the range.
    pub fn check_range(
        &self,
        name: Option<&str>,
        key: &[u8],
        range_end: &[u8],
        need: PermType,
    ) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let user = self.known_user(name)?;
        if user.roles.contains(ROOT_ROLE) {
            return Ok(());
        }
        let mut have: Vec<Interval> = user
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flatten()
            .filter(|p| p.perm_type.allows(need))
            .map(|p| Interval::of(&p.key, &p.range_end))
            .collect();
        if covered(&mut have, &Interval::of(key, range_end)) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// Whether user `name` has role `role` (a user may read its own roles).
    pub fn has_role(&self, name: Option<&str>, role: &str) -> bool {
        name.and_then(|n| self.users.get(n))
            .is_some_and(|u| u.roles.contains(role))
    }
}

/// A key interval `[start, end)`; `end == None` is unbounded.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Interval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    fn of(key: &[u8], range_end: &[u8]) -> Interval {
        let end = match range_end {
            // The single key: [key, key + "\0").
            [] => {
                let mut e = key.to_vec();
                e.push(0);
                Some(e)
            }
            [0] => None,
            e => Some(e.to_vec()),
        };
        Interval {
            start: key.to_vec(),
            end,
        }
    }

    fn is_empty(&self) -> bool {
        self.end.as_ref().is_some_and(|e| *e <= self.start)
    }
}

/// Whether the union of `have` covers `want` (an empty `want` is covered).
fn covered(have: &mut [Interval], want: &Interval) -> bool {
    if want.is_empty() {
        return true;
    }
    have.sort_by(|a, b| a.start.cmp(&b.start));
    // Walk the intervals in start order, extending the covered prefix of
    // `want` from its start.
    let mut reached = want.start.clone();
    for h in have.iter().filter(|h| !h.is_empty()) {
        if h.start > reached {
            break;
        }
        match &h.end {
            None => return true,
            Some(e) if *e > reached => reached = e.clone(),
            Some(_) => {}
        }
        if want.end.as_ref().is_some_and(|w| reached >= *w) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(t: PermType, key: &[u8], end: &[u8]) -> Permission {
        Permission {
            perm_type: t,
            key: key.to_vec(),
            range_end: end.to_vec(),
        }
    }

    fn add_user(s: &mut AuthState, name: &str, roles: &[&str]) {
        s.apply(&AuthOp::UserAdd {
            name: name.into(),
            password_hash: Some("h".into()),
        })
        .unwrap();
        for r in roles {
            if *r != ROOT_ROLE && !s.roles.contains_key(*r) {
                s.apply(&AuthOp::RoleAdd { name: (*r).into() }).unwrap();
            }
            s.apply(&AuthOp::UserGrantRole {
                user: name.into(),
                role: (*r).into(),
            })
            .unwrap();
        }
    }

    fn enabled_with_alice(perms: &[Permission]) -> AuthState {
        let mut s = AuthState::default();
        add_user(&mut s, ROOT_USER, &[ROOT_ROLE]);
        add_user(&mut s, "alice", &["r"]);
        for p in perms {
            s.apply(&AuthOp::RoleGrantPermission {
                role: "r".into(),
                perm: p.clone(),
            })
            .unwrap();
        }
        s.apply(&AuthOp::Enable).unwrap();
        s
    }

    #[test]
    fn assign_token_needs_auth_on_and_the_checked_password_hash_and_keeps_the_revision() {
        let assign = |hash: &str| AuthOp::AssignToken {
            user: "alice".into(),
            token: "abcdefghijklmnop.1".into(),
            password_hash: hash.into(),
        };
        let mut s = enabled_with_alice(&[]);
        let rev = s.revision;
        let before = s.clone();
        assert_eq!(s.apply(&assign("h")), Ok(()));
        assert_eq!(
            s, before,
            "a session changes no auth state, nor its revision"
        );
        assert_eq!(s.revision, rev);
        // The password changed after it was checked: the old one fails.
        s.apply(&AuthOp::UserChangePassword {
            name: "alice".into(),
            password_hash: "h2".into(),
        })
        .unwrap();
        assert_eq!(s.apply(&assign("h")), Err(AuthError::AuthFailed));
        assert_eq!(s.apply(&assign("h2")), Ok(()));
        s.apply(&AuthOp::UserDelete {
            name: "alice".into(),
        })
        .unwrap();
        assert_eq!(s.apply(&assign("h2")), Err(AuthError::AuthFailed));
        s.apply(&AuthOp::Disable).unwrap();
        assert_eq!(s.apply(&assign("h2")), Err(AuthError::AuthNotEnabled));
        // Appended last: the variants before it keep their postcard tags.
        let op = assign("h");
        assert_eq!(op.encode().unwrap()[0], 11);
        assert_eq!(AuthOp::decode(&op.encode().unwrap()).unwrap(), op);
    }

    #[test]
    fn enable_needs_root_user_with_root_role() {
        let mut s = AuthState::default();
        assert_eq!(s.apply(&AuthOp::Enable), Err(AuthError::RootUserNotExist));
        add_user(&mut s, ROOT_USER, &[]);
        assert_eq!(s.apply(&AuthOp::Enable), Err(AuthError::RootRoleNotExist));
        assert!(!s.enabled);
        s.apply(&AuthOp::UserGrantRole {
            user: ROOT_USER.into(),
            role: ROOT_ROLE.into(),
        })
        .unwrap();
        s.apply(&AuthOp::Enable).unwrap();
        assert!(s.enabled);
        // While enabled, root and its role cannot be taken away.
        for op in [
            AuthOp::UserDelete {
                name: ROOT_USER.into(),
            },
            AuthOp::UserRevokeRole {
                user: ROOT_USER.into(),
                role: ROOT_ROLE.into(),
            },
            AuthOp::RoleDelete {
                name: ROOT_ROLE.into(),
            },
        ] {
            let before = s.clone();
            assert_eq!(s.apply(&op), Err(AuthError::InvalidAuthMgmt), "{op:?}");
            assert_eq!(s, before, "a refused op changes nothing");
        }
        s.apply(&AuthOp::Disable).unwrap();
        s.apply(&AuthOp::UserRevokeRole {
            user: ROOT_USER.into(),
            role: ROOT_ROLE.into(),
        })
        .unwrap();
    }

    #[test]
    fn user_and_role_errors_are_etcds() {
        let mut s = AuthState::default();
        let add = |n: &str| AuthOp::UserAdd {
            name: n.into(),
            password_hash: None,
        };
        assert_eq!(s.apply(&add("")), Err(AuthError::UserEmpty));
        s.apply(&add("a")).unwrap();
        assert_eq!(s.apply(&add("a")), Err(AuthError::UserAlreadyExist));
        assert_eq!(
            s.apply(&AuthOp::RoleAdd { name: "".into() }),
            Err(AuthError::RoleEmpty)
        );
        s.apply(&AuthOp::RoleAdd { name: "r".into() }).unwrap();
        assert_eq!(
            s.apply(&AuthOp::RoleAdd { name: "r".into() }),
            Err(AuthError::RoleAlreadyExist)
        );
        let grant = |u: &str, r: &str| AuthOp::UserGrantRole {
            user: u.into(),
            role: r.into(),
        };
        assert_eq!(s.apply(&grant("b", "r")), Err(AuthError::UserNotFound));
        assert_eq!(s.apply(&grant("a", "x")), Err(AuthError::RoleNotFound));
        s.apply(&grant("a", "r")).unwrap();
        s.apply(&grant("a", "r")).unwrap();
        let revoke = AuthOp::RoleRevokePermission {
            role: "r".into(),
            key: b"k".to_vec(),
            range_end: vec![],
        };
        assert_eq!(s.apply(&revoke), Err(AuthError::PermissionNotGranted));
        s.apply(&AuthOp::RoleDelete { name: "r".into() }).unwrap();
        assert!(s.users["a"].roles.is_empty(), "deleting a role revokes it");
        assert_eq!(
            s.apply(&AuthOp::UserRevokeRole {
                user: "a".into(),
                role: "r".into()
            }),
            Err(AuthError::RoleNotGranted)
        );
    }

    #[test]
    fn permissions_match_keys_ranges_prefixes_and_from_key() {
        let s = enabled_with_alice(&[
            perm(PermType::ReadWrite, b"foo", b"fop"), // --prefix foo
            perm(PermType::Read, b"k1", b""),          // single key
            perm(PermType::Write, b"m", b"p"),         // range [m, p)
            perm(PermType::Read, b"z", &[0]),          // --from-key z
        ]);
        let a = Some("alice");
        let ok = |k: &[u8], e: &[u8], t| s.check_range(a, k, e, t).is_ok();
        assert!(ok(b"foo", b"", PermType::Write));
        assert!(ok(b"foo/bar", b"", PermType::Read));
        assert!(ok(b"foo", b"fop", PermType::Read), "the prefix itself");
        assert!(!ok(b"fo", b"", PermType::Read));
        assert!(!ok(b"foo", b"foq", PermType::Read), "past the prefix");
        assert!(ok(b"k1", b"", PermType::Read));
        assert!(!ok(b"k1", b"", PermType::Write));
        assert!(!ok(b"k10", b"", PermType::Read));
        assert!(ok(b"n", b"o", PermType::Write));
        assert!(!ok(b"n", b"o", PermType::Read));
        assert!(!ok(b"m", b"q", PermType::Write));
        assert!(ok(b"zz", &[0], PermType::Read));
        assert!(!ok(b"y", &[0], PermType::Read));
        assert!(!ok(&[0], &[0], PermType::Read), "all keys");
        assert_eq!(
            s.check_range(a, b"x", b"", PermType::Read),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(
            s.check_range(None, b"foo", b"", PermType::Read),
            Err(AuthError::UserEmpty)
        );
        assert_eq!(
            s.check_range(Some("bob"), b"foo", b"", PermType::Read),
            Err(AuthError::UserNotFound)
        );
        assert!(s
            .check_range(Some(ROOT_USER), &[0], &[0], PermType::Write)
            .is_ok());
        assert_eq!(s.check_admin(a), Err(AuthError::PermissionDenied));
        assert!(s.check_admin(Some(ROOT_USER)).is_ok());
    }

    #[test]
    fn adjacent_permissions_cover_a_range_together() {
        let s = enabled_with_alice(&[
            perm(PermType::ReadWrite, b"c", b"e"),
            perm(PermType::Read, b"a", b"c"),
        ]);
        let a = Some("alice");
        assert!(s.check_range(a, b"b", b"d", PermType::Read).is_ok());
        assert!(s.check_range(a, b"b", b"d", PermType::Write).is_err());
        assert!(s.check_range(a, b"a", b"f", PermType::Read).is_err());
        let keys: Vec<&[u8]> = s.roles["r"].iter().map(|p| p.key.as_slice()).collect();
        assert_eq!(keys, [b"a".as_slice(), b"c"], "listed in key order");
    }

    #[test]
    fn a_disabled_store_permits_everything() {
        let mut s = enabled_with_alice(&[]);
        assert!(s
            .check_range(Some("alice"), b"x", b"", PermType::Write)
            .is_err());
        s.apply(&AuthOp::Disable).unwrap();
        assert!(s.check_range(None, b"x", b"", PermType::Write).is_ok());
        assert!(s.check_admin(None).is_ok());
    }

    #[test]
    fn state_and_ops_round_trip() {
        let s = enabled_with_alice(&[perm(PermType::Read, b"a", b"b")]);
        assert_eq!(AuthState::decode(&s.encode().unwrap()).unwrap(), s);
        assert_eq!(AuthState::decode(&[]).unwrap(), AuthState::default());
        assert!(AuthState::decode(&[9, 0]).is_err());
        let op = AuthOp::RoleGrantPermission {
            role: "r".into(),
            perm: perm(PermType::Write, b"x", &[0]),
        };
        assert_eq!(AuthOp::decode(&op.encode().unwrap()).unwrap(), op);
        // postmortem guard: ops sit in WALs; reordering variants would
        // change what old entries mean.
        assert_eq!(AuthOp::decode(&[0]).unwrap(), AuthOp::Enable);
        assert_eq!(
            AuthOp::decode(&[7, 1, b'r']).unwrap(),
            AuthOp::RoleAdd { name: "r".into() }
        );
    }
}
