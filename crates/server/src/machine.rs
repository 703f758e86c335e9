//! The server's replicated state machine: the key-value store, the
//! member registry and the auth state ([`crate::auth`]), driven by
//! [`metalraft_replica::Replica`].
//!
//! Both halves are shared with the gRPC services (serializable reads, the
//! member list) behind locks, and written only here, in log order, on the
//! Raft loop's task. A snapshot holds both ([`SnapshotData`]), so a member
//! that installs one from its leader gets the member table with the keys.

use std::sync::{Arc, RwLock};

use metalraft_core::{ConfChange, Index, Term};
use metalraft_kv as kv;
use metalraft_replica::{Instant, KvError, MvccEvent, StateMachine, StateMachineError};

use crate::auth::{Auth, AuthError, AuthOp, AuthState};
use crate::command::{self, CommandError, KIND_AUTH, KIND_KV};
use crate::lease::LeaseClock;
use crate::registry::{CodecError, Registry, RegistryOp, SnapshotData};
use crate::watch::WatchFeed;

/// What a proposer gets back from an applied command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// A key-value command's result.
    Kv(kv::CommandResult),
    /// A registry change was applied.
    Registry,
    /// An auth change was applied.
    Auth,
}

/// Why an applied command produced no result. Deterministic: every member
/// refuses the same command alike, and the state is unchanged (but for the
/// applied index).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The key-value store refused the command (etcd's error to the client).
    Kv(kv::RequestError),
    /// The command does not decode (a bug in some member's encoder).
    Undecodable(CommandError),
    /// The auth store refused the change (etcd's error to the client).
    Auth(AuthError),
}

/// Why a snapshot of this state machine could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The registry/key-value envelope does not decode.
    #[error("snapshot envelope: {0}")]
    Envelope(#[from] CodecError),
    /// The key-value snapshot does not restore.
    #[error("key-value snapshot: {0}")]
    Kv(#[from] kv::SnapshotError),
    /// A lock was poisoned.
    #[error("{0}")]
    Poisoned(#[from] crate::registry::Poisoned),
}

/// The key-value store and the member registry as one [`StateMachine`].
///
/// Linearizable reads are barriers (`Query = ()`): the replica answers once
/// this member has applied the read index, and the gRPC task then reads the
/// store under its lock, so range scans never run on the Raft loop.
#[derive(Clone, Debug)]
pub struct ServerMachine {
    kv: Arc<RwLock<kv::MvccStore>>,
    registry: Registry,
    auth: Auth,
    /// The store's applied index, kept here so the replica's frequent
    /// `applied_index()` calls take no lock.
    applied: Index,
    /// The leader's lease deadlines (not replicated), shared with the Lease
    /// service for keepalives.
    leases: LeaseClock,
    /// Where applied events go (`crate::watch`): the store reports them only
    /// while someone is subscribed.
    watch_feed: WatchFeed,
}

impl ServerMachine {
    /// A state machine over an empty store and `registry`.
    pub fn new(registry: Registry) -> Self {
        ServerMachine {
            kv: Arc::new(RwLock::new(kv::MvccStore::new())),
            registry,
            auth: Auth::new(),
            applied: 0,
            leases: LeaseClock::new(),
            watch_feed: WatchFeed::new(),
        }
    }

    /// The feed of applied events, for Watch and the concurrency services.
    pub fn watch_feed(&self) -> WatchFeed {
        self.watch_feed.clone()
    }

    /// The lease clock, shared with the Lease service.
    pub fn leases(&self) -> LeaseClock {
        self.leases.clone()
    }

    /// Restores the store and the registry from snapshot `data` (taken at
    /// index `index`, or a restored backup); returns the store's applied
    /// index, which is at most `index`.
    pub fn recover(&mut self, index: Index, data: &[u8]) -> Result<Index, RestoreError> {
        let decoded = SnapshotData::decode(data)?;
        let store = kv::MvccStore::restore(&decoded.kv)?;
        let auth = AuthState::decode(&decoded.auth)?;
        let applied = store.applied_index().min(index);
        *self.kv.write().map_err(|_| crate::registry::Poisoned)? = store;
        self.registry.restore(&decoded)?;
        self.auth.restore(auth);
        self.applied = applied;
        Ok(applied)
    }

    /// The store, shared with the gRPC services (read it under the lock).
    pub fn kv(&self) -> Arc<RwLock<kv::MvccStore>> {
        self.kv.clone()
    }

    /// The member registry, shared with the gRPC services.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The auth state, shared with the gRPC services.
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    fn store(&self) -> Result<std::sync::RwLockWriteGuard<'_, kv::MvccStore>, StateMachineError> {
        self.kv.write().map_err(|_| StateMachineError::Unavailable)
    }

    fn mark_applied(&mut self, index: Index) -> Result<(), StateMachineError> {
        self.store()?
            .mark_applied(index)
            .map_err(|_| StateMachineError::Inconsistent)?;
        self.applied = index;
        Ok(())
    }

    fn apply_registry(&mut self, index: Index, op: &RegistryOp) -> Result<(), StateMachineError> {
        self.mark_applied(index)?;
        self.registry
            .apply(op)
            .map_err(|_| StateMachineError::Unavailable)
    }
}

impl StateMachine for ServerMachine {
    type Output = Result<Applied, Refused>;
    type Query = ();
    type ReadOutput = ();
    type Event = MvccEvent;

    fn applied_index(&self) -> Index {
        self.applied
    }

    fn apply(
        &mut self,
        index: Index,
        term: Term,
        cmd: &[u8],
        events: Option<&mut Vec<MvccEvent>>,
    ) -> Result<Self::Output, StateMachineError> {
        let refused = match command::split_command(cmd) {
            Ok((KIND_KV, body)) => {
                // Collecting events copies every change; skip it while
                // nobody listens. A subscriber that arrives meanwhile finds
                // the gap by revision and reads history (`crate::watch`).
                let events = events.filter(|_| self.watch_feed.streams() > 0);
                let out = StateMachine::apply(&mut *self.store()?, index, term, body, events)?;
                self.applied = index;
                match out {
                    Ok(r) => {
                        self.leases.observe(body, &r);
                        return Ok(Ok(Applied::Kv(r)));
                    }
                    Err(KvError::Rejected(e)) => return Ok(Err(Refused::Kv(e))),
                    Err(KvError::Decode(e)) => CommandError::Kv(e),
                }
            }
            Ok((KIND_AUTH, body)) => match AuthOp::decode(body) {
                Ok(op) => {
                    self.mark_applied(index)?;
                    return Ok(self
                        .auth
                        .apply(&op)
                        .map(|()| Applied::Auth)
                        .map_err(Refused::Auth));
                }
                Err(e) => {
                    self.mark_applied(index)?;
                    CommandError::Auth(e)
                }
            },
            Ok((_, body)) => match RegistryOp::decode(body) {
                Ok(op) => {
                    self.apply_registry(index, &op)?;
                    return Ok(Ok(Applied::Registry));
                }
                Err(e) => {
                    self.mark_applied(index)?;
                    CommandError::Registry(e)
                }
            },
            Err(e) => {
                self.mark_applied(index)?;
                e
            }
        };
        // Every member decodes the same bytes the same way, so skipping is
        // consistent; it can only come from a bug.
        tracing::error!(index, reason = %refused, "undecodable committed command skipped");
        Ok(Err(Refused::Undecodable(refused)))
    }

    fn apply_empty(&mut self, index: Index, _term: Term) -> Result<(), StateMachineError> {
        self.mark_applied(index)
    }

    fn apply_conf_change(
        &mut self,
        index: Index,
        _term: Term,
        change: &ConfChange,
    ) -> Result<(), StateMachineError> {
        // MemberAdd/MemberRemove carry their registry change in the context:
        // applied with the configuration, atomically.
        if change.context.is_empty() {
            return self.mark_applied(index);
        }
        match RegistryOp::decode(&change.context) {
            Ok(op) => self.apply_registry(index, &op),
            Err(reason) => {
                // Same bytes, same verdict on every member.
                tracing::error!(index, %reason, "undecodable membership change context skipped");
                self.mark_applied(index)
            }
        }
    }

    fn query(&self, _barrier: &()) {}

    fn snapshot(&self) -> Result<Vec<u8>, StateMachineError> {
        let kv = self
            .kv
            .read()
            .map_err(|_| StateMachineError::Unavailable)?
            .snapshot();
        let mut data = self
            .registry
            .snapshot_data(kv)
            .map_err(|_| StateMachineError::Unavailable)?;
        data.auth = self
            .auth
            .snapshot()
            .encode()
            .map_err(|_| StateMachineError::Unavailable)?;
        data.encode().map_err(|_| StateMachineError::Unavailable)
    }

    fn restore(&mut self, index: Index, data: &[u8]) -> Result<(), StateMachineError> {
        // Check before changing anything: on error the state stays as it was.
        let decoded = SnapshotData::decode(data).map_err(|_| StateMachineError::BadSnapshot)?;
        let store =
            kv::MvccStore::restore(&decoded.kv).map_err(|_| StateMachineError::BadSnapshot)?;
        let auth = AuthState::decode(&decoded.auth).map_err(|_| StateMachineError::BadSnapshot)?;
        if store.applied_index() != index {
            return Err(StateMachineError::Inconsistent);
        }
        *self.store()? = store;
        self.registry
            .restore(&decoded)
            .map_err(|_| StateMachineError::Unavailable)?;
        self.auth.restore(auth);
        self.applied = index;
        Ok(())
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.leases.next_deadline()
    }

    fn on_timeout(&mut self, now: Instant, proposals: &mut Vec<Vec<u8>>) {
        if let Ok(store) = self.kv.read() {
            self.leases.expire(&store, now, proposals);
        }
    }

    fn on_leader_change(&mut self, leader: bool, now: Instant) {
        match self.kv.read() {
            Ok(store) if leader => self.leases.promote(&store, now),
            _ => self.leases.demote(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{encode_command, Payload};

    fn machine() -> ServerMachine {
        ServerMachine::new(Registry::new([(1, vec!["http://a:1".to_string()])]))
    }

    #[test]
    fn kv_and_registry_commands_apply_in_order_and_snapshot_together() {
        let mut m = machine();
        let put = Payload::Kv(kv::Command::Put(kv::PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        }));
        let out = m.apply(1, 1, &encode_command(&put).unwrap(), None).unwrap();
        assert!(matches!(out, Ok(Applied::Kv(kv::CommandResult::Put(_)))));
        let add = Payload::Registry(RegistryOp::Add {
            id: 2,
            peer_urls: vec!["http://b:2".into()],
        });
        let out = m.apply(2, 1, &encode_command(&add).unwrap(), None).unwrap();
        assert_eq!(out, Ok(Applied::Registry));
        let out = m.apply(3, 1, &[7, 1, 2], None).unwrap();
        assert_eq!(out, Err(Refused::Undecodable(CommandError::UnknownKind(7))));
        assert_eq!(m.applied_index(), 3);

        let snap = m.snapshot().unwrap();
        let mut other = machine();
        assert_eq!(
            other.restore(2, &snap),
            Err(StateMachineError::Inconsistent)
        );
        assert_eq!(
            other.applied_index(),
            0,
            "a refused restore changes nothing"
        );
        other.restore(3, &snap).unwrap();
        assert_eq!(other.applied_index(), 3);
        assert!(other.registry().contains(2));
        let kv = other.kv();
        let got = kv.read().unwrap().range(&kv::RangeRequest::single(b"k"));
        assert_eq!(got.unwrap().kvs[0].value, b"v");
    }

    #[test]
    fn auth_changes_apply_in_log_order_and_travel_in_snapshots() {
        use crate::auth::{AuthError, AuthOp, ROOT_ROLE, ROOT_USER};
        let mut m = machine();
        let ops = [
            AuthOp::Enable,
            AuthOp::UserAdd {
                name: ROOT_USER.into(),
                password_hash: Some("hash".into()),
            },
            AuthOp::UserGrantRole {
                user: ROOT_USER.into(),
                role: ROOT_ROLE.into(),
            },
            AuthOp::Enable,
        ];
        let mut outs = Vec::new();
        for (i, op) in ops.into_iter().enumerate() {
            let cmd = encode_command(&Payload::Auth(op)).unwrap();
            outs.push(m.apply(i as u64 + 1, 1, &cmd, None).unwrap());
        }
        assert_eq!(
            outs,
            vec![
                Err(Refused::Auth(AuthError::RootUserNotExist)),
                Ok(Applied::Auth),
                Ok(Applied::Auth),
                Ok(Applied::Auth),
            ]
        );
        assert_eq!(m.applied_index(), 4);
        assert!(m.auth().read(|a| a.enabled));

        let snap = m.snapshot().unwrap();
        let mut other = machine();
        other.restore(4, &snap).unwrap();
        assert_eq!(other.auth().snapshot(), m.auth().snapshot());
        let mut recovered = machine();
        assert_eq!(recovered.recover(4, &snap).unwrap(), 4);
        assert!(recovered.auth().read(|a| a.users.contains_key(ROOT_USER)));
    }

    #[test]
    fn a_membership_change_applies_its_registry_context() {
        let mut m = machine();
        let op = RegistryOp::Remove { id: 1 };
        let cc = ConfChange::new(&[metalraft_core::ConfChangeOp::Remove(1)])
            .with_context(op.encode().unwrap());
        m.apply_conf_change(1, 1, &cc).unwrap();
        assert!(!m.registry().contains(1));
        assert!(m.registry().is_removed(1));
        assert_eq!(m.applied_index(), 1);
    }
}
