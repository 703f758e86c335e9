//! The batch of effects a node asks its caller to carry out.
//!
//! The persistence rule lives in the types: a message whose correctness
//! depends on durable state is never in a [`Ready`] until the [`Persist`]
//! batch it depends on has been acknowledged with
//! [`crate::Node::on_persisted`], which takes the batch's [`PersistToken`].
//! That covers vote grants and append acknowledgements (they promise the
//! vote or the entries) and **every message sent in a term the node has not
//! yet made durable**: a candidate's vote requests wait for its new term and
//! self-vote, so a crash can never make it campaign for the same term twice.
//! The token cannot be cloned or forged, so a caller cannot release those
//! messages early; it can only lie about having synced.

use alloc::vec::Vec;

use crate::message::Message;
use crate::types::{
    Entry, HardState, Index, ReadState, SnapshotChunk, SnapshotInstall, SoftState, Term,
};

/// Proof of a specific persistence batch, handed back to
/// [`crate::Node::on_persisted`] once the batch is durable.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "acknowledge the batch with Node::on_persisted once it is durable"]
pub struct PersistToken {
    pub(crate) seq: u64,
    /// Last entry of the batch, if it had entries.
    pub(crate) last: Option<(Index, Term)>,
    /// Index of the snapshot the batch installs, if any.
    pub(crate) snapshot: Option<Index>,
    /// Term of the batch's hard state: once acknowledged, the node may send
    /// messages in this term.
    pub(crate) term: Term,
}

impl PersistToken {
    /// The batch's sequence number (batches are numbered from 1 and must be
    /// acknowledged in order).
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// Storage work: write `entries` (overwriting from `entries()[0].index`) and
/// then `hard_state`; make them durable (fsync if [`Persist::must_sync`]);
/// then pass [`Persist::into_token`] to [`crate::Node::on_persisted`].
/// Batches must be written and acknowledged in the order they were issued.
#[derive(Debug)]
pub struct Persist<P> {
    pub(crate) snapshot: Option<SnapshotInstall>,
    pub(crate) entries: Vec<Entry<P>>,
    pub(crate) hard_state: Option<HardState>,
    pub(crate) must_sync: bool,
    pub(crate) clears_vote_barrier: bool,
    pub(crate) token: PersistToken,
}

impl<P> Persist<P> {
    /// A received snapshot to install, if any: carry it out FIRST (see
    /// [`SnapshotInstall`]), then write the entries.
    pub fn snapshot(&self) -> Option<&SnapshotInstall> {
        self.snapshot.as_ref()
    }

    /// Entries to write, contiguous. If the first index is at or below the
    /// last stored index, delete the stored entries from that index on first.
    pub fn entries(&self) -> &[Entry<P>] {
        &self.entries
    }

    /// Moves the entries out (e.g. to hand them to a writer thread).
    pub fn take_entries(&mut self) -> Vec<Entry<P>> {
        core::mem::take(&mut self.entries)
    }

    /// The hard state to store, if it changed.
    pub fn hard_state(&self) -> Option<HardState> {
        self.hard_state
    }

    /// Whether the write must be synced (entries or term/vote changed) before
    /// it is acknowledged. When false only the commit index changed, which may
    /// be written lazily.
    pub fn must_sync(&self) -> bool {
        self.must_sync
    }

    /// Whether this batch clears the node's vote barrier
    /// ([`crate::Config::vote_barrier`]): a leader confirmed the log up to
    /// it. Record the clearing durably AFTER this batch's entries, snapshot
    /// and hard state are durable (the batch is then synced), before
    /// acknowledging the batch: a crash in between only leaves the barrier
    /// in place, which the leader clears again.
    pub fn clears_vote_barrier(&self) -> bool {
        self.clears_vote_barrier
    }

    /// The batch's sequence number.
    pub fn seq(&self) -> u64 {
        self.token.seq
    }

    /// Consumes the batch, returning the token to acknowledge it with.
    pub fn into_token(self) -> PersistToken {
        self.token
    }
}

/// Everything a node asks its caller to do, returned by [`crate::Node::ready`].
///
/// Process it in this order:
/// 1. send [`Ready::take_messages`] (safe before anything is durable);
/// 2. write the [`Ready::take_persist`] batch, sync it if required, then call
///    [`crate::Node::on_persisted`] with its token (this may happen later or
///    on another thread: the node keeps working meanwhile);
/// 3. apply [`Ready::take_committed_entries`] to the state machine, in order.
#[derive(Debug)]
#[must_use = "a Ready holds messages to send and state to persist"]
pub struct Ready<P> {
    pub(crate) messages: Vec<Message<P>>,
    pub(crate) persist: Option<Persist<P>>,
    pub(crate) committed_entries: Vec<Entry<P>>,
    pub(crate) soft_state: Option<SoftState>,
    pub(crate) read_states: Vec<ReadState>,
    pub(crate) snapshot_chunks: Vec<SnapshotChunk>,
}

impl<P> Ready<P> {
    /// Messages that may be sent now.
    pub fn messages(&self) -> &[Message<P>] {
        &self.messages
    }

    /// Moves the messages out.
    pub fn take_messages(&mut self) -> Vec<Message<P>> {
        core::mem::take(&mut self.messages)
    }

    /// The storage work of this batch, if any.
    pub fn persist(&self) -> Option<&Persist<P>> {
        self.persist.as_ref()
    }

    /// Moves the storage work out.
    pub fn take_persist(&mut self) -> Option<Persist<P>> {
        self.persist.take()
    }

    /// Committed entries to apply, in log order. They are durable locally.
    pub fn committed_entries(&self) -> &[Entry<P>] {
        &self.committed_entries
    }

    /// Moves the committed entries out.
    pub fn take_committed_entries(&mut self) -> Vec<Entry<P>> {
        core::mem::take(&mut self.committed_entries)
    }

    /// The new role/leader/term, if any of them changed since the last Ready.
    pub fn soft_state(&self) -> Option<SoftState> {
        self.soft_state
    }

    /// Pieces of an incoming snapshot, in order: write them (a chunk at
    /// offset 0 starts over) BEFORE carrying out this Ready's Persist batch,
    /// which may ask to install the completed snapshot.
    pub fn take_snapshot_chunks(&mut self) -> Vec<SnapshotChunk> {
        core::mem::take(&mut self.snapshot_chunks)
    }

    /// Outcomes of [`crate::Node::read_index`] requests.
    pub fn read_states(&self) -> &[ReadState] {
        &self.read_states
    }

    /// Moves the read outcomes out.
    pub fn take_read_states(&mut self) -> Vec<ReadState> {
        core::mem::take(&mut self.read_states)
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.persist.is_none()
            && self.committed_entries.is_empty()
            && self.soft_state.is_none()
            && self.read_states.is_empty()
            && self.snapshot_chunks.is_empty()
    }
}
