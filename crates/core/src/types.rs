//! Identifiers, log entries, persistent and volatile node state.

use alloc::vec::Vec;

/// Identifier of a cluster member. `0` is reserved and never a valid id.
pub type NodeId = u64;
/// A Raft term (Raft paper §5.1). Starts at 0 and never decreases on a node.
pub type Term = u64;
/// A log position. The first real entry has index 1; index 0 is the empty prefix.
pub type Index = u64;

/// The reserved "no node" id: rejected by [`crate::Config::validate`].
pub const INVALID_ID: NodeId = 0;

/// Bytes charged per operation of a membership change.
pub const CONF_CHANGE_OP_BYTES: usize = 16;

/// Bookkeeping bytes charged per entry on top of its payload, so that empty
/// entries still count against byte limits (roughly: index, term, tag).
pub const ENTRY_OVERHEAD_BYTES: usize = 24;

/// What the core needs to know about a proposal's payload: it is cloned into
/// outgoing messages and its length is charged against byte limits.
///
/// The core never looks inside a payload. Implementations exist for
/// `Vec<u8>` and `Box<[u8]>`; a realization with a cheaper clone (e.g. a
/// reference-counted buffer) implements it for its own type. See
/// `docs/adr/0003-typed-payloads.md`.
pub trait Payload: Clone {
    /// Length in bytes, as charged against `max_*_bytes` limits.
    fn payload_len(&self) -> usize;
}

impl Payload for Vec<u8> {
    fn payload_len(&self) -> usize {
        self.len()
    }
}

impl Payload for alloc::boxed::Box<[u8]> {
    fn payload_len(&self) -> usize {
        self.len()
    }
}

/// What an entry carries.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum EntryData<P> {
    /// The empty entry a new leader appends at the start of its term (thesis §6.4,
    /// needed for commit and read safety). Applications skip it.
    Noop,
    /// An application command proposed with [`crate::Node::propose`].
    Normal(P),
    /// A membership change proposed with [`crate::Node::propose_conf_change`].
    /// It takes effect on every node when appended (thesis §4.1). Boxed so
    /// the common variants stay small (an `Entry` is 32 bytes on 32-bit
    /// targets, which bounds the firmware's decode allocations).
    ConfChange(alloc::boxed::Box<crate::ConfChange>),
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Entry<P> {
    /// Term of the leader that created the entry.
    pub term: Term,
    /// Position in the log.
    pub index: Index,
    /// Content.
    pub data: EntryData<P>,
}

impl<P: Payload> Entry<P> {
    /// Bytes charged for this entry against byte limits.
    pub fn size_bytes(&self) -> usize {
        ENTRY_OVERHEAD_BYTES
            + match &self.data {
                EntryData::Noop => 0,
                EntryData::Normal(p) => p.payload_len(),
                EntryData::ConfChange(cc) => cc.ops.len() * CONF_CHANGE_OP_BYTES + cc.context.len(),
            }
    }
}

/// State that must be on stable storage before the node may promise anything
/// that depends on it (Raft paper Figure 2, "Persistent state on all servers").
/// `commit` is persisted lazily: losing it is safe, it is only an optimisation
/// for restart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct HardState {
    /// Latest term this node has seen.
    pub term: Term,
    /// Candidate voted for in `term`, if any.
    pub vote: Option<NodeId>,
    /// Highest index known committed.
    pub commit: Index,
}

/// The members of the cluster (thesis §4). In a joint configuration
/// (§4.3) decisions need a majority of `voters` AND of `voters_outgoing`.
#[derive(Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ConfState {
    /// Voting members (of the incoming configuration when joint), sorted,
    /// without duplicates.
    pub voters: Vec<NodeId>,
    /// Voting members of the outgoing configuration; empty unless joint.
    pub voters_outgoing: Vec<NodeId>,
    /// Non-voting members that receive the log, sorted, without duplicates.
    pub learners: Vec<NodeId>,
    /// Outgoing voters that become learners when the joint configuration is
    /// left (they still vote in the outgoing majority until then).
    pub learners_next: Vec<NodeId>,
    /// Leave the joint configuration automatically once it is committed.
    pub auto_leave: bool,
}

/// Written out only to keep it out of line: a configuration is cloned in
/// a dozen places, and inlining four vector clones into each was about
/// 1 KB of the firmware's `.text` at `opt-level = "s"`.
impl Clone for ConfState {
    #[inline(never)]
    fn clone(&self) -> Self {
        Self {
            voters: self.voters.clone(),
            voters_outgoing: self.voters_outgoing.clone(),
            learners: self.learners.clone(),
            learners_next: self.learners_next.clone(),
            auto_leave: self.auto_leave,
        }
    }
}

impl ConfState {
    /// A configuration of the given voters (sorted and deduplicated).
    pub fn with_voters(voters: &[NodeId]) -> Self {
        ConfState {
            voters: sorted(voters.to_vec()),
            ..ConfState::default()
        }
    }

    /// Whether this is a joint configuration.
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Whether `id` votes (in the incoming or the outgoing configuration).
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.binary_search(&id).is_ok() || self.voters_outgoing.binary_search(&id).is_ok()
    }

    /// Whether `id` is a learner (now or after leaving the joint configuration).
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.binary_search(&id).is_ok() || self.learners_next.binary_search(&id).is_ok()
    }

    /// Whether `id` is a member in any role.
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_learner(id)
    }

    /// Every voter of the incoming and outgoing configurations, sorted.
    pub fn all_voters(&self) -> Vec<NodeId> {
        sorted(
            self.voters
                .iter()
                .chain(&self.voters_outgoing)
                .copied()
                .collect(),
        )
    }

    /// Every member, sorted, without duplicates.
    pub fn members(&self) -> Vec<NodeId> {
        sorted(
            self.voters
                .iter()
                .chain(&self.voters_outgoing)
                .chain(&self.learners)
                .chain(&self.learners_next)
                .copied()
                .collect(),
        )
    }
}

pub(crate) fn sorted(mut v: Vec<NodeId>) -> Vec<NodeId> {
    crate::sort::sort_u64(&mut v);
    v.dedup();
    v
}

/// What a node reads from storage when it starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InitialState {
    /// The last durable hard state.
    pub hard_state: HardState,
    /// The membership configuration.
    pub conf_state: ConfState,
}

/// The role a node plays in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asks for pre-votes without increasing its term (thesis §9.6).
    PreCandidate,
    /// Asks for votes in a new term (Raft paper §5.2).
    Candidate,
    /// Replicates its log to the others.
    Leader,
}

/// Volatile state worth reporting to the application when it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    /// The node's role.
    pub role: Role,
    /// The leader this node knows of in `term`.
    pub leader: Option<NodeId>,
    /// The node's current term.
    pub term: Term,
}

/// The caller's id for a read request, echoed back in its [`ReadState`].
pub type ReadCtx = u64;

/// The outcome of a [`crate::Node::read_index`] request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The caller's request id.
    pub ctx: ReadCtx,
    /// On success, the read index: serve the read once the state machine
    /// has applied at least this index (thesis §6.4, step 4).
    pub result: Result<Index, crate::ReadError>,
}

/// What identifies a snapshot: the last log entry it covers and the
/// membership configuration at that entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SnapshotMeta {
    /// Index of the last entry the snapshot covers.
    pub index: Index,
    /// Term of that entry.
    pub term: Term,
    /// The configuration as of `index`.
    pub conf_state: ConfState,
}

/// A piece of an incoming snapshot, in order, for the application to
/// write (see [`crate::Ready::take_snapshot_chunks`]). A chunk at offset 0
/// starts a new transfer: discard any partial data received before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// The snapshot being received.
    pub meta: SnapshotMeta,
    /// Byte offset of `data` in the snapshot.
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

/// An instruction in a [`crate::Persist`] batch: the snapshot received in
/// chunks is complete. Make it durable as the current snapshot, restore the
/// state machine from it, then fix the log: if `keep_entries_after`, delete
/// entries up to `meta.index` and keep the rest; otherwise delete the whole
/// log. Afterwards storage must report `first_index() == meta.index + 1`,
/// `term(meta.index) == meta.term` and `meta.conf_state` as its base
/// configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInstall {
    /// The snapshot.
    pub meta: SnapshotMeta,
    /// Whether the log already contains the snapshot's last entry, so that
    /// the entries after it stay valid (thesis §5.3 / Figure 5.3 step 6).
    pub keep_entries_after: bool,
}
