//! Checkers: independent judges of a run. They see only what an outside
//! observer could record (roles and terms, applied entries, durable hard
//! states and logs, messages sent, client histories), never the core's
//! internals, and each one can be fed a hand-made history in tests.

mod append_truncation;
mod commit_rule;
mod committed;
mod durability;
mod durable_state;
mod election;
mod leader_completeness;
mod lease;
mod linearizability;
mod liveness;
mod log_matching;
mod mvcc_history;
mod repair;
mod state_machine;
mod step_down;
mod watch;

pub use append_truncation::check_batch_start;
pub use commit_rule::check_leader_commit;
pub use committed::CommittedChecker;
pub use durability::check_durability;
pub use durable_state::DurableStateChecker;
pub use election::ElectionChecker;
pub use leader_completeness::LeaderCompletenessChecker;
pub use lease::{LeaseChecker, LeaseFault, LEASE_EXPIRY_SLACK_US};
pub use linearizability::{
    check_linearizable, LinearizabilityReport, LIN_REPORT_OPS_MAX, LIN_SEARCH_STEPS_MAX,
};
pub use liveness::{check_liveness, LivenessSnapshot, NodeProgress};
pub use log_matching::{check_log_matching, LogEntrySummary};
pub use mvcc_history::{
    check_node_event, check_node_revision, describe, describe_one, in_key_range, ReferenceHistory,
    FIRST_WRITE_REVISION,
};
pub use repair::RepairChecker;
pub use state_machine::StateMachineChecker;
pub use step_down::StepDownChecker;
pub use watch::{WatchChecker, WatchFault};

use std::fmt;

use metalraft_core::{Index, NodeId, Term};

use crate::history::{KeyId, OpId};

/// A broken invariant, with enough context to start debugging.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// Two nodes were leader in the same term (Raft §5.2).
    ElectionSafety {
        /// The term.
        term: Term,
        /// The first leader seen.
        first: NodeId,
        /// The second.
        second: NodeId,
    },
    /// A node led a term, crashed, restarted and led the same term again:
    /// its term and vote were not durable when it won (§5.2, Figure 2).
    LeaderAgainAfterRestart {
        /// The node.
        node: NodeId,
        /// The term it led twice.
        term: Term,
        /// The incarnation that led it first.
        first_incarnation: u32,
        /// The incarnation that led it again.
        second_incarnation: u32,
    },
    /// A node reported a commit index covering an entry other than the one
    /// committed there, or overwrote an entry at or below its own commit
    /// index (§5.4.3).
    CommittedEntryChanged {
        /// The node.
        node: NodeId,
        /// The index.
        index: Index,
        /// What it holds (term, digest).
        got: (Term, u64),
        /// What was committed there first (term, digest).
        expected: (Term, u64),
    },
    /// A node reported a commit index beyond the end of its own log.
    CommitBeyondLog {
        /// The node.
        node: NodeId,
        /// The commit index it reported.
        commit: Index,
        /// Its last log index.
        last: Index,
    },
    /// A leader kept acting as leader of its term more than one round trip
    /// after a message with a higher term was delivered to it (Figure 2).
    StaleLeader {
        /// The node.
        node: NodeId,
        /// The term it still leads.
        term: Term,
        /// The higher term it was told about.
        seen: Term,
        /// When it was told (virtual microseconds).
        since_us: u64,
    },
    /// A leader moved its commit index onto an entry of an earlier term
    /// (counted replicas of an old entry: §5.4.2, Figure 8).
    LeaderCommittedOldTerm {
        /// The leader.
        node: NodeId,
        /// Its term.
        term: Term,
        /// The new commit index.
        index: Index,
        /// The term of the entry there.
        entry_term: Term,
    },
    /// A follower overwrote an entry it already held with the same term
    /// (and so truncated the matching entries after it; Figure 2,
    /// AppendEntries steps 3 and 4).
    TruncatedMatchingEntry {
        /// The node.
        node: NodeId,
        /// The first overwritten index.
        index: Index,
        /// The term both the stored and the new entry have.
        term: Term,
    },
    /// Two logs agree on an entry's term but not on what precedes it (§5.3).
    LogMatching {
        /// One node.
        a: NodeId,
        /// The other.
        b: NodeId,
        /// The entry where they agree on the term but not on the prefix.
        index: Index,
        /// Its term.
        term: Term,
    },
    /// A leader lacks an entry committed in an earlier term (§5.4).
    LeaderCompleteness {
        /// The new leader.
        leader: NodeId,
        /// Its term.
        term: Term,
        /// The committed entry it lacks (or holds differently).
        index: Index,
    },
    /// Two nodes applied different entries at an index, or a node skipped
    /// one (§5.4.3).
    StateMachineSafety {
        /// The node that disagrees with what was applied first.
        node: NodeId,
        /// The index.
        index: Index,
        /// What it applied (term, digest).
        got: (Term, u64),
        /// What was applied there first (term, digest); for a skipped entry
        /// the index the node should have applied.
        expected: (Term, u64),
    },
    /// The durable hard state went backwards (term, vote within a term,
    /// commit).
    DurableStateRegressed {
        /// The node.
        node: NodeId,
        /// Which field.
        field: &'static str,
        /// Before (vote: 0 for none).
        before: u64,
        /// After.
        after: u64,
    },
    /// A node sent a promise (vote grant, append acknowledgement) its
    /// durable state does not back.
    PromiseNotDurable {
        /// The node.
        node: NodeId,
        /// What it promised.
        what: &'static str,
        /// The term or index promised.
        promised: u64,
        /// What was durable.
        durable: u64,
    },
    /// A node granted its vote before that vote (or a newer term) was
    /// durable.
    VoteNotDurable {
        /// The voter.
        node: NodeId,
        /// The candidate it voted for.
        candidate: NodeId,
        /// The term of the vote.
        term: Term,
        /// Its durable term when it sent the grant.
        durable_term: Term,
        /// Its durable vote in that term.
        durable_vote: Option<NodeId>,
    },
    /// An acknowledged write is missing from the final committed history.
    LostAcknowledgedWrite {
        /// The operation.
        op: OpId,
        /// Where it was committed (0: never seen committed).
        index: Index,
    },
    /// The client history of a key has no linearization.
    NotLinearizable {
        /// The key.
        key: KeyId,
        /// The key's operations, one per line.
        ops: Vec<String>,
    },
    /// After faults stopped, the cluster did not recover within budget.
    Liveness {
        /// What did not happen.
        what: String,
    },
    /// A client request was answered with a result of another kind of
    /// operation: the replica completed it with another entry's output.
    MismatchedCompletion {
        /// The node that answered.
        node: NodeId,
        /// The operation.
        op: OpId,
        /// The operation and the result it got.
        what: String,
    },
    /// A node's store or its replica's watch feed disagrees with the
    /// committed MVCC history (`checkers::ReferenceHistory`): a missing,
    /// extra or different watch event for an applied entry, or the wrong
    /// revision or compact revision after an index.
    NodeHistory {
        /// The node.
        node: NodeId,
        /// The applied index concerned.
        index: Index,
        /// The revision concerned.
        revision: i64,
        /// What differs.
        what: String,
    },
    /// A watcher's concatenated events are not the committed history
    /// filtered by its key range from its start revision (see
    /// `checkers::WatchChecker`).
    Watch {
        /// The watcher.
        watcher: usize,
        /// The node that served the response (0: none, at the end).
        node: NodeId,
        /// What is wrong.
        fault: WatchFault,
        /// The revision concerned.
        revision: i64,
        /// Details.
        what: String,
    },
    /// A lease expired early in its leader's view, was expired or renewed by
    /// a node that did not lead, or outlived its deadline under a stable
    /// leader (see `checkers::LeaseChecker`).
    Lease {
        /// The node that decided (or the stable leader, for `Late`).
        node: NodeId,
        /// The lease.
        lease: i64,
        /// What is wrong.
        fault: LeaseFault,
        /// When (simulated µs).
        at_us: u64,
        /// Details.
        what: String,
    },
    /// A node that lost part of its durable log to mid-log damage granted
    /// a vote (or pre-vote) before a leader had given the lost entries back
    /// (ADR 0021: it may lack entries it acknowledged).
    VoteWhileRepairing {
        /// The node.
        node: NodeId,
        /// The candidate.
        candidate: NodeId,
        /// The term.
        term: Term,
        /// Whether it was a pre-vote.
        pre_vote: bool,
        /// The lowest index lost and not given back.
        lost_from: Index,
        /// The highest index it may have acknowledged before the damage.
        barrier: Index,
    },
    /// A node acknowledged an append up to an index it had lost to mid-log
    /// damage and not been given back.
    AckOfLostEntry {
        /// The node.
        node: NodeId,
        /// The index acknowledged.
        index: Index,
        /// The lowest index lost and not given back.
        lost_from: Index,
        /// The highest index it may have acknowledged before the damage.
        barrier: Index,
    },
    /// The core returned an error the simulator cannot explain (a storage
    /// failure of a healthy in-memory store, a refused restart, ...).
    CoreError {
        /// The node.
        node: NodeId,
        /// The error.
        error: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::ElectionSafety { term, first, second } => {
                write!(f, "election safety: nodes {first} and {second} both leader in term {term}")
            }
            Violation::LeaderAgainAfterRestart {
                node,
                term,
                first_incarnation,
                second_incarnation,
            } => write!(
                f,
                "election safety: node {node} led term {term} in incarnation {first_incarnation} and again after a restart in incarnation {second_incarnation}"
            ),
            Violation::CommittedEntryChanged { node, index, got, expected } => write!(
                f,
                "committed entry changed: node {node} holds (term {}, digest {:016x}) at committed index {index}, committed was (term {}, digest {:016x})",
                got.0, got.1, expected.0, expected.1
            ),
            Violation::CommitBeyondLog { node, commit, last } => write!(
                f,
                "node {node} reported commit index {commit} beyond its last log index {last}"
            ),
            Violation::StaleLeader { node, term, seen, since_us } => write!(
                f,
                "stale leader: node {node} still acts as leader of term {term} more than a round trip after it was told about term {seen} (at {since_us}us)"
            ),
            Violation::LeaderCommittedOldTerm {
                node,
                term,
                index,
                entry_term,
            } => write!(
                f,
                "commit rule (Figure 8): node {node}, leader of term {term}, committed index {index} holding an entry of term {entry_term} by counting replicas"
            ),
            Violation::TruncatedMatchingEntry { node, index, term } => write!(
                f,
                "follower truncated matching entries: node {node} overwrote entry {index} (term {term}) with an entry of the same term, dropping the entries after it"
            ),
            Violation::LogMatching { a, b, index, term } => write!(
                f,
                "log matching: nodes {a} and {b} agree on entry {index} (term {term}) but not on the entries before it"
            ),
            Violation::LeaderCompleteness { leader, term, index } => write!(
                f,
                "leader completeness: node {leader}, leader of term {term}, lacks committed entry {index}"
            ),
            Violation::StateMachineSafety { node, index, got, expected } => write!(
                f,
                "state machine safety: node {node} applied (term {}, digest {:016x}) at index {index}, expected (term {}, digest {:016x})",
                got.0, got.1, expected.0, expected.1
            ),
            Violation::DurableStateRegressed { node, field, before, after } => write!(
                f,
                "durable state regressed on node {node}: {field} {before} -> {after}"
            ),
            Violation::PromiseNotDurable { node, what, promised, durable } => write!(
                f,
                "node {node} promised {what} {promised} but only {durable} was durable"
            ),
            Violation::VoteNotDurable {
                node,
                candidate,
                term,
                durable_term,
                durable_vote,
            } => {
                let vote = durable_vote.map_or_else(|| "none".to_string(), |v| format!("node {v}"));
                write!(
                    f,
                    "node {node} granted its vote in term {term} to node {candidate} but its durable term was {durable_term} with vote {vote}"
                )
            }
            Violation::LostAcknowledgedWrite { op, index } => write!(
                f,
                "acknowledged write {op} (committed at index {index}) is missing from the final committed log"
            ),
            Violation::NotLinearizable { key, ops } => {
                writeln!(f, "history of key k{key} is not linearizable; its operations:")?;
                for o in ops {
                    writeln!(f, "    {o}")?;
                }
                Ok(())
            }
            Violation::Liveness { what } => write!(f, "liveness: {what}"),
            Violation::MismatchedCompletion { node, op, what } => write!(
                f,
                "mismatched completion: node {node} answered op {op} with another entry's result: {what}"
            ),
            Violation::NodeHistory { node, index, revision, what } => write!(
                f,
                "node history: node {node} at index {index} (revision {revision}): {what}"
            ),
            Violation::Watch { watcher, node, fault, revision, what } => write!(
                f,
                "watch: watcher {watcher} ({fault:?}, revision {revision}, served by node {node}): {what}"
            ),
            Violation::Lease { node, lease, fault, at_us, what } => write!(
                f,
                "lease: lease {lease} ({fault:?}, node {node}, at {at_us} µs): {what}"
            ),
            Violation::VoteWhileRepairing { node, candidate, term, pre_vote, lost_from, barrier } => write!(
                f,
                "repair: node {node} granted its {} in term {term} to node {candidate} while it lacked the entries {lost_from}..={barrier} it lost to mid-log damage",
                if *pre_vote { "pre-vote" } else { "vote" }
            ),
            Violation::AckOfLostEntry { node, index, lost_from, barrier } => write!(
                f,
                "repair: node {node} acknowledged entries up to {index} while it lacked the entries {lost_from}..={barrier} it lost to mid-log damage"
            ),
            Violation::CoreError { node, error } => write!(f, "core error on node {node}: {error}"),
        }
    }
}

impl std::error::Error for Violation {}
