//! [`LeasedMvccStore`]: the MVCC store with the leader's [`Lessor`], as one
//! [`StateMachine`] whose timing hooks expire leases (feature `kv`), and the
//! two helpers a realization with its own state machine wrapper (the
//! server's) calls from the same hooks: [`observe_lease_result`] and
//! [`propose_expired_revokes`].

use alloc::vec::Vec;

use metalraft_core::{Index, Term};
use metalraft_kv::{Command, CommandResult, LeaseRevokeRequest, MvccStore, RangeRequest};

use crate::error::StateMachineError;
use crate::kv::{KvError, MvccEvent};
use crate::lease::{Lessor, LessorConfig};
use crate::machine::{Instant, StateMachine};

/// Tells the lessor about an applied command's result: a grant starts a
/// countdown (on the leader), a revoke ends one.
pub fn observe_lease_result(lessor: &mut Lessor, cmd: Option<&Command>, result: &CommandResult) {
    match (cmd, result) {
        (_, CommandResult::LeaseGrant(g)) => lessor.granted(g.id, g.ttl),
        (Some(Command::LeaseRevoke(r)), CommandResult::LeaseRevoke(_)) => lessor.revoked(r.id),
        _ => {}
    }
}

/// On the leader at `now`: pushes one encoded [`Command::LeaseRevoke`] per
/// expired lease of `store` (a bounded number per round, see [`Lessor`]),
/// each passed through `wrap` (a realization's envelope, or the identity).
pub fn propose_expired_revokes(
    lessor: &mut Lessor,
    store: &MvccStore,
    now: Instant,
    proposals: &mut Vec<Vec<u8>>,
    wrap: impl Fn(Vec<u8>) -> Vec<u8>,
) {
    for id in lessor.expire(now, |id| store.lease_ttl(id).is_some()) {
        let cmd = Command::LeaseRevoke(LeaseRevokeRequest { id });
        proposals.push(wrap(cmd.encode()));
    }
}

/// The MVCC store plus the leader's lease clock: applies like
/// `MvccStore`'s [`StateMachine`] implementation, and on the leader revokes
/// expired leases through the log (etcd 3.4's rules, see [`Lessor`]).
#[derive(Clone, Debug, Default)]
pub struct LeasedMvccStore {
    store: MvccStore,
    lessor: Lessor,
}

impl LeasedMvccStore {
    /// An empty store whose lessor has `config`.
    pub fn new(config: LessorConfig) -> Self {
        LeasedMvccStore {
            store: MvccStore::new(),
            lessor: Lessor::new(config),
        }
    }

    /// The replicated store.
    pub fn store(&self) -> &MvccStore {
        &self.store
    }

    /// The lease clock (to [`Lessor::renew`] on a keepalive).
    pub fn lessor_mut(&mut self) -> &mut Lessor {
        &mut self.lessor
    }

    /// The lease clock.
    pub fn lessor(&self) -> &Lessor {
        &self.lessor
    }
}

impl StateMachine for LeasedMvccStore {
    type Output = <MvccStore as StateMachine>::Output;
    type Query = RangeRequest;
    type ReadOutput = <MvccStore as StateMachine>::ReadOutput;
    type Event = MvccEvent;

    fn applied_index(&self) -> Index {
        self.store.applied_index()
    }

    fn apply(
        &mut self,
        index: Index,
        term: Term,
        command: &[u8],
        events: Option<&mut Vec<MvccEvent>>,
    ) -> Result<Self::Output, StateMachineError> {
        let out: Result<CommandResult, KvError> =
            StateMachine::apply(&mut self.store, index, term, command, events)?;
        if let Ok(r) = &out {
            let cmd = match r {
                CommandResult::LeaseRevoke(_) => Command::decode(command).ok(),
                _ => None,
            };
            observe_lease_result(&mut self.lessor, cmd.as_ref(), r);
        }
        Ok(out)
    }

    fn apply_empty(&mut self, index: Index, term: Term) -> Result<(), StateMachineError> {
        StateMachine::apply_empty(&mut self.store, index, term)
    }

    fn query(&self, query: &RangeRequest) -> Self::ReadOutput {
        self.store.range(query)
    }

    fn snapshot(&self) -> Result<Vec<u8>, StateMachineError> {
        StateMachine::snapshot(&self.store)
    }

    fn restore(&mut self, index: Index, data: &[u8]) -> Result<(), StateMachineError> {
        StateMachine::restore(&mut self.store, index, data)?;
        if self.lessor.is_primary() {
            // Not expected (a leader installs no snapshot); restart anyway.
            self.lessor.demote();
        }
        Ok(())
    }

    fn hash(&self) -> Option<u64> {
        StateMachine::hash(&self.store)
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.lessor.next_deadline()
    }

    fn on_timeout(&mut self, now: Instant, proposals: &mut Vec<Vec<u8>>) {
        propose_expired_revokes(&mut self.lessor, &self.store, now, proposals, |c| c);
    }

    fn on_leader_change(&mut self, leader: bool, now: Instant) {
        if leader {
            self.lessor.promote(now, self.store.leases());
        } else {
            self.lessor.demote();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metalraft_kv::{LeaseGrantRequest, LeaseOption, PutRequest};

    const S: u64 = 1_000_000;

    fn apply(sm: &mut LeasedMvccStore, cmd: &Command) -> CommandResult {
        let index = sm.applied_index() + 1;
        let mut events = Vec::new();
        StateMachine::apply(sm, index, 1, &cmd.encode(), Some(&mut events))
            .unwrap()
            .unwrap()
    }

    /// Grant + attach on two replicas; only the leader's clock expires the
    /// lease, and its revoke, applied on both, deletes the key alike.
    #[test]
    fn the_leader_revokes_an_expired_lease_through_the_log() {
        let (mut leader, mut follower) = (LeasedMvccStore::default(), LeasedMvccStore::default());
        leader.on_leader_change(true, Instant(0));
        let grant = Command::LeaseGrant(LeaseGrantRequest { id: 0, ttl: 2 });
        let CommandResult::LeaseGrant(g) = apply(&mut leader, &grant) else {
            panic!()
        };
        apply(&mut follower, &grant);
        let put = Command::LeasePut(
            PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            },
            LeaseOption {
                lease: g.id,
                ignore_lease: false,
            },
        );
        apply(&mut leader, &put);
        apply(&mut follower, &put);
        assert_eq!(follower.next_deadline(), None, "followers keep no clock");

        let mut out = Vec::new();
        leader.on_timeout(Instant(S), &mut out); // starts the countdown at 1 s
        assert!(out.is_empty());
        assert_eq!(leader.next_deadline(), Some(Instant(3 * S)));
        leader.on_timeout(Instant(3 * S - 1), &mut out);
        assert!(out.is_empty(), "never early");
        leader.on_timeout(Instant(3 * S), &mut out);
        assert_eq!(out.len(), 1);
        let revoke = Command::decode(&out[0]).unwrap();
        for sm in [&mut leader, &mut follower] {
            let index = sm.applied_index() + 1;
            let mut events = Vec::new();
            StateMachine::apply(sm, index, 1, &out[0], Some(&mut events))
                .unwrap()
                .unwrap();
            assert_eq!(events.len(), 1, "one revision");
            assert_eq!(events[0].changes.len(), 1, "one DELETE event");
            assert_eq!(sm.store().len(), 0);
            assert_eq!(sm.store().lease_count(), 0);
        }
        assert_eq!(
            revoke,
            Command::LeaseRevoke(LeaseRevokeRequest { id: g.id })
        );
        assert_eq!(
            leader.next_deadline(),
            None,
            "the revoke ended the countdown"
        );
    }

    /// etcd 3.4's Promote: a new leader restarts every countdown in full,
    /// from the snapshot-restored or replayed lease table.
    #[test]
    fn a_new_leader_restarts_countdowns_from_the_replicated_leases() {
        let mut old = LeasedMvccStore::default();
        let grant = Command::LeaseGrant(LeaseGrantRequest { id: 9, ttl: 10 });
        apply(&mut old, &grant);
        let snap = StateMachine::snapshot(&old).unwrap();
        let mut new = LeasedMvccStore::default();
        StateMachine::restore(&mut new, old.applied_index(), &snap).unwrap();
        new.on_leader_change(true, Instant(100 * S));
        let mut out = Vec::new();
        new.on_timeout(Instant(109 * S), &mut out);
        assert!(out.is_empty());
        assert_eq!(
            new.lessor_mut().renew(9, 10, Instant(109 * S)),
            crate::Renew::Renewed
        );
        new.on_timeout(Instant(119 * S - 1), &mut out);
        assert!(out.is_empty(), "the keepalive moved the deadline");
        new.on_leader_change(false, Instant(119 * S));
        assert_eq!(new.next_deadline(), None);
    }
}
