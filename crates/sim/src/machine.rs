//! The simulator's state machine: the crate's `MvccStore` (through its
//! `metalraft-replica` `StateMachine` impl, the one the server ships),
//! wrapped to report what the replica applies so the checkers judge the
//! shipped apply path.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use metalraft_core::{ConfChange, Index, Term};
use metalraft_kv::{MvccStore, RangeRequest};
use metalraft_replica::{StateMachine, StateMachineError};

use crate::history::OpId;
use crate::payload::{command_digest, conf_change_digest, empty_digest, split_command};

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
/// simulator after each `Replica::poll` ([`SimMachine::take_applied`]).
#[derive(Debug, Default)]
pub struct SimMachine {
    kv: MvccStore,
    applied: RefCell<Vec<Applied>>,
    /// The highest index whose command the simulator already has (shared
    /// by every node): only entries beyond it are copied into the record.
    history_end: Rc<Cell<Index>>,
}

impl SimMachine {
    /// An empty store.
    pub fn new() -> Self {
        SimMachine::default()
    }

    /// A store restored from snapshot bytes (a restarting node), recording
    /// nothing.
    pub fn from_snapshot(data: &[u8]) -> Result<Self, metalraft_kv::SnapshotError> {
        Ok(SimMachine {
            kv: MvccStore::restore(data)?,
            ..SimMachine::default()
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

    /// The store.
    pub fn kv(&self) -> &MvccStore {
        &self.kv
    }

    /// What was applied since the last call.
    pub fn take_applied(&self) -> Vec<Applied> {
        self.applied.take()
    }

    fn record(&self, a: Applied) {
        self.applied.borrow_mut().push(a);
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
        self.record(Applied::Restored { index });
        Ok(())
    }

    fn hash(&self) -> Option<u64> {
        StateMachine::hash(&self.kv)
    }
}
