//! Messages exchanged between nodes. The core validates every field of every
//! message it receives; a realization only has to decode bytes into this type.

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::types::{Entry, Index, NodeId, ReadCtx, SnapshotMeta, Term};

/// A message from one node to another.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Message<P> {
    /// Sender.
    pub from: NodeId,
    /// Recipient.
    pub to: NodeId,
    /// The sender's term when it sent the message (for pre-votes: the term the
    /// sender would campaign in).
    pub term: Term,
    /// What the message says.
    pub body: MessageBody<P>,
}

/// The kinds of message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum MessageBody<P> {
    /// RequestVote (Raft paper §5.2, §5.4.1) or PreVote (thesis §9.6).
    RequestVote {
        /// A pre-vote: the receiver changes no state.
        pre_vote: bool,
        /// Sent on a leader's request (leadership transfer, thesis §3.10):
        /// receivers ignore their leader lease.
        transfer: bool,
        /// Index of the candidate's last log entry.
        last_log_index: Index,
        /// Term of the candidate's last log entry.
        last_log_term: Term,
    },
    /// Answer to [`MessageBody::RequestVote`].
    RequestVoteResponse {
        /// Answer to a pre-vote.
        pre_vote: bool,
        /// Whether the vote was granted.
        granted: bool,
    },
    /// AppendEntries (Raft paper §5.3).
    AppendEntries {
        /// Index of the entry just before `entries`.
        prev_log_index: Index,
        /// Term of that entry.
        prev_log_term: Term,
        /// Entries to append, contiguous from `prev_log_index + 1`.
        entries: Vec<Entry<P>>,
        /// The leader's commit index.
        leader_commit: Index,
    },
    /// Answer to [`MessageBody::AppendEntries`].
    AppendEntriesResponse {
        /// On success: the index up to which the follower's log now matches the
        /// leader's and is durable. On rejection: the `prev_log_index` that did
        /// not match.
        index: Index,
        /// `Some` when the append was rejected, with a hint for fast back-off.
        reject: Option<RejectHint>,
    },
    /// Leader heartbeat (Raft paper §5.2), carrying a commit index the
    /// follower is known to have reached.
    Heartbeat {
        /// `min(follower's match index, leader's commit)`.
        commit: Index,
        /// The leader's heartbeat round, echoed back to confirm leadership
        /// for reads (thesis §6.4).
        read_seq: u64,
    },
    /// Answer to [`MessageBody::Heartbeat`].
    HeartbeatResponse {
        /// The round being answered (0 when answering a stale leader).
        read_seq: u64,
    },
    /// A follower asks the leader for a read index on behalf of its client.
    ReadIndex {
        /// The follower's request id, echoed back.
        ctx: ReadCtx,
    },
    /// The leader's answer to [`MessageBody::ReadIndex`].
    ReadIndexResponse {
        /// The follower's request id.
        ctx: ReadCtx,
        /// The read index, or `None` if the leader could not serve it.
        index: Option<Index>,
    },
    /// Leadership transfer: the leader tells an up-to-date follower to
    /// campaign at once (thesis §3.10).
    TimeoutNow,
    /// One chunk of a snapshot (thesis §5.3, InstallSnapshot).
    InstallSnapshot {
        /// The snapshot this chunk belongs to (boxed to keep every other
        /// message small).
        meta: Box<SnapshotMeta>,
        /// Byte offset of `data`.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
        /// Whether this is the last chunk.
        done: bool,
    },
    /// Acknowledges the bytes of snapshot `index` received in order.
    SnapshotResponse {
        /// The snapshot's index.
        index: Index,
        /// Bytes received in order so far.
        received: u64,
    },
}

/// Where a follower's log diverges, so the leader can skip a whole term of
/// mismatching entries in one round trip (Raft paper §5.3, last paragraphs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RejectHint {
    /// The largest index `<= min(prev_log_index, follower's last index)` whose
    /// term is `<= hint_term`; the leader retries from its own matching point.
    pub hint_index: Index,
    /// The follower's term at `hint_index`.
    pub hint_term: Term,
}

impl RejectHint {
    /// The hint of a follower that is repairing a damaged log
    /// ([`crate::Config::vote_barrier`]) and may lack entries it once
    /// acknowledged, whose log ends at `last`. Encoded in values no other
    /// follower sends (a term of 0 above index 0, or the largest term at
    /// index 0), so a leader tells it from a reordered rejection and still
    /// reads it as an ordinary hint (probe from `last`) otherwise.
    pub fn lost_entries(last: Index) -> Self {
        if last > 0 {
            RejectHint {
                hint_index: last,
                hint_term: 0,
            }
        } else {
            RejectHint {
                hint_index: 0,
                hint_term: crate::node::MAX_TERM_OR_INDEX,
            }
        }
    }

    /// Whether this hint comes from [`RejectHint::lost_entries`]. A correct
    /// follower that is not repairing never sends such a hint: its hint
    /// index is at or above its commit index, hence its snapshot, where
    /// every index but 0 has a term of at least 1, and index 0 has term 0.
    pub fn is_lost_entries(&self) -> bool {
        (self.hint_index > 0 && self.hint_term == 0)
            || (self.hint_index == 0 && self.hint_term == crate::node::MAX_TERM_OR_INDEX)
    }
}

impl<P> MessageBody<P> {
    /// A short name for traces and counters.
    pub fn kind(&self) -> MessageKind {
        match self {
            MessageBody::RequestVote { pre_vote: true, .. } => MessageKind::PreVote,
            MessageBody::RequestVote { .. } => MessageKind::Vote,
            MessageBody::RequestVoteResponse { pre_vote: true, .. } => MessageKind::PreVoteResponse,
            MessageBody::RequestVoteResponse { .. } => MessageKind::VoteResponse,
            MessageBody::AppendEntries { .. } => MessageKind::Append,
            MessageBody::AppendEntriesResponse { .. } => MessageKind::AppendResponse,
            MessageBody::Heartbeat { .. } => MessageKind::Heartbeat,
            MessageBody::HeartbeatResponse { .. } => MessageKind::HeartbeatResponse,
            MessageBody::ReadIndex { .. } => MessageKind::ReadIndex,
            MessageBody::ReadIndexResponse { .. } => MessageKind::ReadIndexResponse,
            MessageBody::TimeoutNow => MessageKind::TimeoutNow,
            MessageBody::InstallSnapshot { .. } => MessageKind::InstallSnapshot,
            MessageBody::SnapshotResponse { .. } => MessageKind::SnapshotResponse,
        }
    }
}

/// Message kinds without their payloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)]
pub enum MessageKind {
    PreVote,
    Vote,
    PreVoteResponse,
    VoteResponse,
    Append,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    ReadIndex,
    ReadIndexResponse,
    TimeoutNow,
    InstallSnapshot,
    SnapshotResponse,
}
