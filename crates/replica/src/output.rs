//! What [`crate::Replica::poll`] hands the caller.

use alloc::vec::Vec;

use metalraft_core::{
    ConfChange, ConfState, Index, Message, Persist, SnapshotMeta, SoftState, Term,
};

use crate::error::{Fatal, RequestFailure};

/// The caller's id for a request, unique among its pending requests.
pub type ReqId = u64;

/// One request finished: exactly one per accepted [`crate::Replica::propose`],
/// [`crate::Replica::propose_conf_change`] and [`crate::Replica::read`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion<O, R> {
    /// The caller's request id.
    pub req_id: ReqId,
    /// What happened.
    pub outcome: Outcome<O, R>,
}

/// How a request finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<O, R> {
    /// The command was committed at `index` and applied; `output` is the
    /// state machine's answer (which may be a deterministic refusal).
    Applied {
        /// Its log index.
        index: Index,
        /// The state machine's answer.
        output: O,
    },
    /// The membership change was committed at `index` and applied.
    ConfChanged {
        /// Its log index.
        index: Index,
        /// The configuration in effect after it.
        conf_state: ConfState,
    },
    /// A linearizable read, served once the state machine applied `index`.
    Read {
        /// The read index it waited for.
        index: Index,
        /// The answer.
        output: R,
    },
    /// No result; [`RequestFailure`] says whether it is definite.
    Failed(RequestFailure),
}

/// Something observers may want to know, in the order it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<E> {
    /// This node's role, leader or term changed.
    Role(SoftState),
    /// The state machine reported `event` applying the entry at `index`
    /// (Watch's feed; only with `Config::emit_apply_events`).
    Applied {
        /// The entry's index.
        index: Index,
        /// What changed.
        event: E,
    },
    /// A membership change was applied.
    Membership(MembershipChange),
    /// The state machine was replaced by a snapshot from the leader.
    SnapshotInstalled {
        /// The snapshot's last index.
        index: Index,
        /// Its term.
        term: Term,
    },
}

/// An applied membership change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipChange {
    /// The entry's index.
    pub index: Index,
    /// The change, with its context (e.g. the server's member registry op).
    pub change: ConfChange,
    /// The configuration in effect after it (the latest appended one).
    pub conf_state: ConfState,
    /// This node was a member and is no longer: it should stop.
    pub self_removed: bool,
}

/// Storage work: the core's [`Persist`] batch, plus the data of the
/// snapshot it installs.
#[derive(Debug)]
#[must_use = "make the batch durable, then acknowledge it with Replica::on_persisted"]
pub struct PersistWork<P> {
    /// Write `snapshot_data` as the current snapshot FIRST when
    /// `persist.snapshot()` is set (then fix the log as
    /// `SnapshotInstall` says), then the entries and the hard state; sync if
    /// `must_sync()`; then pass `persist.into_token()` to
    /// [`crate::Replica::on_persisted`]. The state machine is already restored.
    pub persist: Persist<P>,
    /// The received snapshot's bytes when `persist.snapshot()` is set.
    pub snapshot_data: Option<Vec<u8>>,
}

/// A snapshot of the state machine to store (the threshold was reached).
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "store the snapshot, then call Replica::snapshot_saved"]
pub struct SnapshotToSave {
    /// Its metadata (store it with the data; the leader sends both).
    pub meta: SnapshotMeta,
    /// The state machine's bytes at `meta.index`.
    pub data: Vec<u8>,
    /// Once durable, the log may be compacted up to and including this index
    /// (`snapshot_catch_up_entries` are kept for lagging followers).
    pub compact_through: Index,
}

/// The snapshot threshold was reached and the state machine takes its
/// snapshots itself ([`crate::StateMachine::defers_snapshots`]).
///
/// The state machine is at `meta.index` when the [`Output`] carrying this is
/// handed out, and stays there until the next [`crate::Replica::poll`]
/// (entries are applied only inside `poll`): capture its state before
/// polling again, store it with `meta` (whenever it is ready, from any
/// thread), compact the log up to `compact_through`, then call
/// [`crate::Replica::snapshot_saved`] (also if it failed: nothing is lost,
/// the next threshold tries again).
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "take the snapshot before the next poll, then call Replica::snapshot_saved"]
pub struct SnapshotDue {
    /// Its metadata (store it with the data; the leader sends both).
    pub meta: SnapshotMeta,
    /// Once durable, the log may be compacted up to and including this index.
    pub compact_through: Index,
}

/// Everything a replica asks its caller to do, from one [`crate::Replica::poll`].
///
/// Order: send `messages`; write `persist` and acknowledge it when durable
/// (maybe later, on another thread); hand out `completions`; store
/// `snapshot` (or take `snapshot_due`); publish `events`.
#[derive(Debug)]
#[must_use = "an Output holds messages to send and state to persist"]
pub struct Output<P, O, R, E> {
    /// Messages that may be sent now (the core holds back every message that
    /// depends on durable state until its batch is acknowledged).
    pub messages: Vec<Message<P>>,
    /// Storage work, if any.
    pub persist: Option<PersistWork<P>>,
    /// Finished requests.
    pub completions: Vec<Completion<O, R>>,
    /// A snapshot to store, if the threshold was reached.
    pub snapshot: Option<SnapshotToSave>,
    /// A snapshot to take, if the threshold was reached and the state
    /// machine defers its snapshots (then `snapshot` is `None`).
    pub snapshot_due: Option<SnapshotDue>,
    /// What happened, in order.
    pub events: Vec<Event<E>>,
    /// Set once, when the replica stops: every pending request has completed
    /// in this output; rebuild the replica from durable state.
    pub failure: Option<Fatal>,
}

impl<P, O, R, E> Output<P, O, R, E> {
    pub(crate) fn new() -> Self {
        Output {
            messages: Vec::new(),
            persist: None,
            completions: Vec::new(),
            snapshot: None,
            snapshot_due: None,
            events: Vec::new(),
            failure: None,
        }
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.persist.is_none()
            && self.completions.is_empty()
            && self.snapshot.is_none()
            && self.snapshot_due.is_none()
            && self.events.is_empty()
            && self.failure.is_none()
    }
}
