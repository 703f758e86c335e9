//! The simulator's state machine: the crate's `MvccStore` (through its
//! `metalraft-replica` `StateMachine` impl, the one the server ships),
//! wrapped to report what the replica applies so the checkers judge the
//! shipped apply path; and the leader's lease clock, a
//! `metalraft_replica::Lessor` driven as the server drives it
//! (`crates/server/src/machine.rs`, `lease.rs`): promoted and demoted on
//! leader changes, told of applied grants and revokes, asked for expired
//! leases at its deadlines, renewed by keepalives. Time is the simulated
//! clock, passed in by the replica's timing hooks, never read.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use metalraft_core::{ConfChange, Index, NodeId, Term};
use metalraft_kv::{Command, CommandResult, LeaseRevokeRequest, MvccStore, RangeRequest};
use metalraft_replica::{
    observe_lease_result, Instant, Lessor, LessorConfig, Renew, StateMachine, StateMachineError,
};

use crate::config::{Time, LEASE_CLOCK_SCALE};
use crate::history::OpId;
use crate::payload::{
    command_digest, conf_change_digest, empty_digest, sim_command, split_command,
};

/// The op id of a revoke that node `n` proposes because a lease expired is
/// `LEASE_EXPIRY_OP_BASE + n` (no client operation has one: client and
/// background ops count up from 1).
pub const LEASE_EXPIRY_OP_BASE: OpId = 1 << 63;

/// A deliberate defect of the lease driving (tests only, through
/// `Sabotage`; a normal run has none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LeaseBug {
    /// None.
    #[default]
    None,
    /// The lease clock runs twice as fast: leases expire at half their TTL.
    HalfTtl,
    /// A new leader does not restart the countdowns at its promotion: it
    /// counts each from the start of the run, as if deadlines survived a
    /// leader change on a clock nobody ran.
    PromoteFromEpoch,
    /// The leader never finds a lease expired: keepalives stop and the key
    /// stays.
    NeverExpire,
}

/// What the lease side of a node's state machine did, in order, drained by
/// the simulator with [`SimMachine::take_lease_notes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseNote {
    /// A grant of lease `id` with `ttl` seconds was applied.
    Granted {
        /// The lease.
        id: i64,
        /// Its TTL in seconds.
        ttl: i64,
    },
    /// A revoke of lease `id` was applied (it existed).
    Revoked {
        /// The lease.
        id: i64,
        /// The leader that proposed it because the lease expired (`None`:
        /// a client revoked it).
        expiry_by: Option<NodeId>,
    },
    /// The leader decided that lease `id` expired and proposed its revoke.
    Expiring {
        /// The lease.
        id: i64,
    },
}

/// What the replica did to the state machine, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Entry (`index`, `term`) with content `digest` was applied; `op` is
    /// the client operation it carried.
    Entry {
        /// Its index.
        index: Index,
        /// Its term.
        term: Term,
        /// [`crate::payload::entry_digest`] of what was applied.
        digest: u64,
        /// The client operation, if any.
        op: Option<OpId>,
        /// The kv command (without the op prefix), if the entry carried
        /// one and lies beyond [`SimMachine::with_history_end`]'s index:
        /// the committed history is replayed from it
        /// (`checkers::ReferenceHistory`).
        command: Option<Vec<u8>>,
    },
    /// The state was replaced by a snapshot of `index`.
    Restored {
        /// The snapshot's index.
        index: Index,
    },
}

/// `MvccStore` plus a record of every apply and restore, drained by the
/// simulator after each `Replica::poll` ([`SimMachine::take_applied`]),
/// and the leader's lease clock ([`Lessor`] with etcd's revoke rate).
#[derive(Debug)]
pub struct SimMachine {
    kv: MvccStore,
    applied: RefCell<Vec<Applied>>,
    /// The highest index whose command the simulator already has (shared
    /// by every node): only entries beyond it are copied into the record.
    history_end: Rc<Cell<Index>>,
    /// The leader's lease deadlines (volatile: lost on crash).
    lessor: Lessor,
    lease_bug: LeaseBug,
    lease_notes: RefCell<Vec<LeaseNote>>,
    /// This node's id (named in the expiry revokes it proposes).
    node: NodeId,
}

impl SimMachine {
    /// An empty store.
    pub fn new() -> Self {
        SimMachine {
            kv: MvccStore::new(),
            applied: RefCell::default(),
            history_end: Rc::default(),
            lessor: Lessor::new(LessorConfig::default()),
            lease_bug: LeaseBug::None,
            lease_notes: RefCell::default(),
            node: 0,
        }
    }

    /// A store restored from snapshot bytes (a restarting node), recording
    /// nothing.
    pub fn from_snapshot(data: &[u8]) -> Result<Self, metalraft_kv::SnapshotError> {
        Ok(SimMachine {
            kv: MvccStore::restore(data)?,
            ..SimMachine::new()
        })
    }

    /// Shares the simulator's end of the committed history: entries at or
    /// below it are recorded without their command (the simulator has it
    /// from the first node that applied them). Without it every command is
    /// recorded.
    pub fn with_history_end(mut self, end: Rc<Cell<Index>>) -> Self {
        self.history_end = end;
        self
    }

    /// Runs on node `node` (named in the expiry revokes it proposes).
    pub fn on_node(mut self, node: NodeId) -> Self {
        self.node = node;
        self
    }

    /// Injects a lease defect (tests only).
    pub fn with_lease_bug(mut self, bug: LeaseBug) -> Self {
        self.lease_bug = bug;
        self
    }

    /// The store.
    pub fn kv(&self) -> &MvccStore {
        &self.kv
    }

    /// The lease clock.
    pub fn lessor(&self) -> &Lessor {
        &self.lessor
    }

    /// A keepalive for lease `id` reaching this node at simulated time
    /// `now`: `None` if the lease is not in this node's store (unknown or
    /// gone), else what the lessor did (etcd's `Renew` on the leader).
    pub fn keepalive(&mut self, id: i64, now: Time) -> Option<Renew> {
        let ttl = self.kv.lease_ttl(id)?;
        let now = self.lease_now(Instant(now));
        Some(self.lessor.renew(id, ttl, now))
    }

    /// What the lease side did since the last call.
    pub fn take_lease_notes(&self) -> Vec<LeaseNote> {
        self.lease_notes.take()
    }

    /// Lease-clock microseconds per simulated microsecond.
    fn lease_scale(&self) -> u64 {
        match self.lease_bug {
            LeaseBug::HalfTtl => 2 * LEASE_CLOCK_SCALE,
            _ => LEASE_CLOCK_SCALE,
        }
    }

    fn lease_now(&self, now: Instant) -> Instant {
        Instant(now.0.saturating_mul(self.lease_scale()))
    }

    /// What was applied since the last call.
    pub fn take_applied(&self) -> Vec<Applied> {
        self.applied.take()
    }

    fn record(&self, a: Applied) {
        self.applied.borrow_mut().push(a);
    }

    /// An applied command's result, for the lessor (as the server's
    /// `LeaseClock::observe`) and the notes.
    fn observe_lease(&mut self, op: Option<OpId>, kv: &[u8], r: &CommandResult) {
        let note = match r {
            CommandResult::LeaseGrant(g) => Some(LeaseNote::Granted {
                id: g.id,
                ttl: g.ttl,
            }),
            CommandResult::LeaseRevoke(_) => match Command::decode(kv) {
                Ok(Command::LeaseRevoke(rv)) => Some(LeaseNote::Revoked {
                    id: rv.id,
                    expiry_by: op
                        .filter(|op| *op >= LEASE_EXPIRY_OP_BASE)
                        .map(|op| op - LEASE_EXPIRY_OP_BASE),
                }),
                _ => None,
            },
            _ => None,
        };
        let Some(note) = note else {
            return;
        };
        let cmd = match note {
            LeaseNote::Revoked { id, .. } => Some(Command::LeaseRevoke(LeaseRevokeRequest { id })),
            _ => None,
        };
        observe_lease_result(&mut self.lessor, cmd.as_ref(), r);
        self.lease_notes.borrow_mut().push(note);
    }
}

impl Default for SimMachine {
    fn default() -> Self {
        SimMachine::new()
    }
}

impl StateMachine for SimMachine {
    type Output = <MvccStore as StateMachine>::Output;
    type Query = RangeRequest;
    type ReadOutput = <MvccStore as StateMachine>::ReadOutput;
    type Event = <MvccStore as StateMachine>::Event;

    fn applied_index(&self) -> Index {
        StateMachine::applied_index(&self.kv)
    }

    fn apply(
        &mut self,
        index: Index,
        term: Term,
        command: &[u8],
        events: Option<&mut Vec<Self::Event>>,
    ) -> Result<Self::Output, StateMachineError> {
        // A command without the op prefix goes to the store as it is (which
        // refuses it as undecodable, alike on every replica).
        let (op, kv) = match split_command(command) {
            Some((op, kv)) => (Some(op), kv),
            None => (None, command),
        };
        let out = StateMachine::apply(&mut self.kv, index, term, kv, events)?;
        if let Ok(r) = &out {
            self.observe_lease(op, kv, r);
        }
        self.record(Applied::Entry {
            index,
            term,
            digest: command_digest(command),
            op,
            command: (index > self.history_end.get()).then(|| kv.to_vec()),
        });
        Ok(out)
    }

    fn apply_empty(&mut self, index: Index, term: Term) -> Result<(), StateMachineError> {
        StateMachine::apply_empty(&mut self.kv, index, term)?;
        self.record(Applied::Entry {
            index,
            term,
            digest: empty_digest(),
            op: None,
            command: None,
        });
        Ok(())
    }

    fn apply_conf_change(
        &mut self,
        index: Index,
        term: Term,
        change: &ConfChange,
    ) -> Result<(), StateMachineError> {
        StateMachine::apply_conf_change(&mut self.kv, index, term, change)?;
        self.record(Applied::Entry {
            index,
            term,
            digest: conf_change_digest(change),
            op: None,
            command: None,
        });
        Ok(())
    }

    fn query(&self, query: &RangeRequest) -> Self::ReadOutput {
        StateMachine::query(&self.kv, query)
    }

    fn snapshot(&self) -> Result<Vec<u8>, StateMachineError> {
        StateMachine::snapshot(&self.kv)
    }

    fn restore(&mut self, index: Index, data: &[u8]) -> Result<(), StateMachineError> {
        StateMachine::restore(&mut self.kv, index, data)?;
        if self.lessor.is_primary() {
            // Not expected (a leader installs no snapshot); restart anyway,
            // as `LeasedMvccStore` does.
            self.lessor.demote();
        }
        self.record(Applied::Restored { index });
        Ok(())
    }

    fn hash(&self) -> Option<u64> {
        StateMachine::hash(&self.kv)
    }

    fn next_deadline(&self) -> Option<Instant> {
        // Back to simulated time, rounded up: at that instant the lease
        // clock has reached the deadline.
        let d = self.lessor.next_deadline()?;
        Some(Instant(d.0.div_ceil(self.lease_scale())))
    }

    fn on_timeout(&mut self, now: Instant, proposals: &mut Vec<Vec<u8>>) {
        if self.lease_bug == LeaseBug::NeverExpire {
            return;
        }
        let now = self.lease_now(now);
        let store = &self.kv;
        for id in self.lessor.expire(now, |id| store.lease_ttl(id).is_some()) {
            let cmd = Command::LeaseRevoke(LeaseRevokeRequest { id });
            proposals.push(sim_command(LEASE_EXPIRY_OP_BASE + self.node, &cmd.encode()));
            self.lease_notes
                .borrow_mut()
                .push(LeaseNote::Expiring { id });
        }
    }

    fn on_leader_change(&mut self, leader: bool, now: Instant) {
        if !leader {
            self.lessor.demote();
            return;
        }
        let start = match self.lease_bug {
            LeaseBug::PromoteFromEpoch => Instant(0),
            _ => self.lease_now(now),
        };
        self.lessor.promote(start, self.kv.leases());
    }
}
