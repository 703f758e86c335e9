//! The state machine behind a replica, as a trait, so a library user can
//! plug in their own (the crate implements it for `metalraft_kv::KvStore`).

use alloc::vec::Vec;

use metalraft_core::{ConfChange, Index, Term};

use crate::error::StateMachineError;

/// A point in time, in microseconds since an epoch the caller chooses (boot,
/// the simulator's zero). The replica never reads a clock: time is passed in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(pub u64);

impl Instant {
    /// From microseconds.
    pub const fn from_micros(us: u64) -> Self {
        Instant(us)
    }
    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> u64 {
        self.0
    }
}

/// A deterministic state machine replicated through the log.
///
/// Every replica applies the same commands at the same indexes and must end
/// in the same state: no clock, no randomness, no hash-map iteration order in
/// `apply`. A refused command is an ordinary [`StateMachine::Output`] (every
/// replica refuses it alike); an `Err` means the state machine itself failed
/// and stops the replica.
pub trait StateMachine {
    /// What the proposer of a command gets back.
    type Output;
    /// A linearizable read ([`crate::Replica::read`]).
    type Query;
    /// The answer to a [`StateMachine::Query`].
    type ReadOutput;
    /// What one applied command reports to observers, e.g. a revision and its
    /// key changes for Watch ([`crate::Event::Applied`]).
    type Event;

    /// The index of the last entry applied (0 for an empty state machine;
    /// the snapshot's index right after a restore).
    fn applied_index(&self) -> Index;

    /// Applies the committed `command` of entry (`index`, `term`), with
    /// `index > applied_index()`. When `events` is given, pushes what changed.
    fn apply(
        &mut self,
        index: Index,
        term: Term,
        command: &[u8],
        events: Option<&mut Vec<Self::Event>>,
    ) -> Result<Self::Output, StateMachineError>;

    /// Records entry (`index`, `term`) that carries no command (a leader's
    /// no-op, a membership change, bytes that are not a replica envelope), so
    /// that a snapshot taken now covers it.
    fn apply_empty(&mut self, index: Index, term: Term) -> Result<(), StateMachineError>;

    /// Records the membership change `change` committed at (`index`,
    /// `term`). Its `context` is the application's (e.g. the server's
    /// member-registry operation): apply it here so it is part of the state
    /// and of every snapshot taken afterwards. By default the entry is
    /// recorded with [`StateMachine::apply_empty`].
    fn apply_conf_change(
        &mut self,
        index: Index,
        term: Term,
        change: &ConfChange,
    ) -> Result<(), StateMachineError> {
        let _ = change;
        self.apply_empty(index, term)
    }

    /// Serves a read from the current state.
    fn query(&self, query: &Self::Query) -> Self::ReadOutput;

    /// A deterministic snapshot of the whole state, `applied_index()` included.
    fn snapshot(&self) -> Result<Vec<u8>, StateMachineError>;

    /// Whether the caller takes this state machine's snapshots itself, off
    /// the apply path (e.g. serialized on another thread from an immutable
    /// view): the replica then hands out [`crate::SnapshotDue`] instead of
    /// calling [`StateMachine::snapshot`] and a [`crate::SnapshotToSave`].
    /// Default `false`.
    fn defers_snapshots(&self) -> bool {
        false
    }

    /// Replaces the whole state with a snapshot of index `index`. On `Err`
    /// the state must be unchanged.
    fn restore(&mut self, index: Index, data: &[u8]) -> Result<(), StateMachineError>;

    /// A digest of the state, comparable between replicas at the same
    /// applied index, if the state machine has one (for checkers).
    fn hash(&self) -> Option<u64> {
        None
    }

    /// The next time a leader-driven timed action is due (e.g. the earliest
    /// lease expiry), if any. Asked only on the leader.
    fn next_deadline(&self) -> Option<Instant> {
        None
    }

    /// On the leader, at or after [`StateMachine::next_deadline`]: push the
    /// commands to propose through the log (e.g. revoke expired leases).
    /// Actions take effect only when applied, on every replica alike.
    fn on_timeout(&mut self, now: Instant, proposals: &mut Vec<Vec<u8>>) {
        let _ = (now, proposals);
    }

    /// This node became leader (`true`) or stopped leading (`false`) at
    /// `now`, e.g. to refresh lease deadlines on a new leader (etcd's
    /// `Promote`) or forget them on a follower.
    fn on_leader_change(&mut self, leader: bool, now: Instant) {
        let _ = (leader, now);
    }
}
