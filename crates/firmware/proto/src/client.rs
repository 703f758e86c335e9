//! The client protocol: one request per UDP datagram to a node's
//! [`crate::addr::CLIENT_PORT`], one response per request, matched by
//! request id. The leader answers; other nodes redirect with
//! [`Reply::NotLeader`]. Reads are linearizable (ReadIndex).
//!
//! Wire form: [`CLIENT_VERSION`], then the postcard encoding. Both sides
//! decode with [`Request::decode`] / [`Response::decode`], which refuse
//! unknown versions, malformed bytes, trailing bytes and out-of-bound keys,
//! values, node ids and member lists: decoding is total, any input gives a
//! value or a [`DecodeError`].
//!
//! Versions: 1 had the kv operations and `Status`; 2 (this one) adds the
//! membership messages ([`Op::Members`], [`Op::ChangeMembers`],
//! [`Reply::Members`]) and their error codes. A datagram of another
//! version is refused as [`DecodeError::UnknownVersion`] (the host tool and
//! the firmware are built from the same tree).

use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};

use crate::addr::{MAX_DATAGRAM_BYTES, MAX_MEMBERS, MAX_NODE_ID};

/// Version byte of the client protocol (2: membership messages added).
pub const CLIENT_VERSION: u8 = 2;
/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 64;
/// Longest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 512;

// A put with the largest key and value must fit one datagram (postcard adds
// at most a few bytes of framing per field).
const _: () = assert!(MAX_KEY_BYTES + MAX_VALUE_BYTES + 32 <= MAX_DATAGRAM_BYTES);

/// A client request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the client, echoed in the response.
    pub id: u64,
    /// What to do.
    pub op: Op,
}

/// Client operations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Set `key` to `value` (through the Raft log).
    Put {
        /// Non-empty, at most [`MAX_KEY_BYTES`].
        key: Vec<u8>,
        /// At most [`MAX_VALUE_BYTES`].
        value: Vec<u8>,
    },
    /// Linearizable read of `key`.
    Get {
        /// Non-empty, at most [`MAX_KEY_BYTES`].
        key: Vec<u8>,
    },
    /// Delete `key` (through the Raft log).
    Delete {
        /// Non-empty, at most [`MAX_KEY_BYTES`].
        key: Vec<u8>,
    },
    /// The node's own view of the cluster (answered by any node).
    Status,
    /// The node's view of the membership: the latest configuration in its
    /// log, committed or not (answered by any node, like `Status`; ask the
    /// leader for the cluster's). A joint configuration (outgoing voters
    /// listed) means a change is still in progress.
    Members,
    /// A membership change, carried out by the leader through the Raft
    /// log: one voter changed is a single-server change, more go through
    /// joint consensus (left automatically). Answered with
    /// [`Reply::Members`] once the change is applied on the leader. A
    /// change that removes or demotes the leader itself is not proposed:
    /// the leader hands leadership to a remaining voter and answers
    /// [`Reply::NotLeader`] naming it; send the change there.
    ChangeMembers {
        /// 1..=[`MAX_MEMBERS`] operations, each on a different node.
        ops: Vec<MemberOp>,
    },
}

/// One operation of a membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberOp {
    /// Add a node that is not a member as a voter.
    AddVoter(u8),
    /// Add a node that is not a member as a learner (it receives the log,
    /// typically through a snapshot, but does not vote).
    AddLearner(u8),
    /// Make a learner a voter.
    Promote(u8),
    /// Remove a member in any role; a removed node stops.
    Remove(u8),
}

impl MemberOp {
    /// The node the operation is about.
    pub fn node(self) -> u8 {
        match self {
            MemberOp::AddVoter(n)
            | MemberOp::AddLearner(n)
            | MemberOp::Promote(n)
            | MemberOp::Remove(n) => n,
        }
    }
}

/// A configuration as a node sees it (ids ascending).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Voters (of the incoming configuration when joint).
    pub voters: Vec<u8>,
    /// Learners.
    pub learners: Vec<u8>,
    /// Voters of the outgoing configuration: not empty only while a joint
    /// change is in progress.
    pub voters_outgoing: Vec<u8>,
    /// Outgoing voters that become learners when the joint configuration is
    /// left.
    pub learners_next: Vec<u8>,
}

impl Membership {
    /// Every list holds at most [`MAX_MEMBERS`] valid node ids.
    fn valid(&self) -> bool {
        [
            &self.voters,
            &self.learners,
            &self.voters_outgoing,
            &self.learners_next,
        ]
        .iter()
        .all(|l| l.len() <= MAX_MEMBERS && l.iter().all(|&id| node_ok(id)))
    }

    /// Whether `id` is a member in any role.
    pub fn contains(&self, id: u8) -> bool {
        self.is_voter(id) || self.learners.contains(&id) || self.learners_next.contains(&id)
    }

    /// Whether `id` votes (in the incoming or the outgoing configuration).
    pub fn is_voter(&self, id: u8) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }

    /// Whether a joint change is in progress.
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }
}

impl fmt::Display for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "voters {:?} learners {:?}", self.voters, self.learners)?;
        if self.is_joint() {
            write!(
                f,
                " (joint: outgoing voters {:?}, learners after {:?})",
                self.voters_outgoing, self.learners_next
            )?;
        }
        Ok(())
    }
}

/// A response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The request's id.
    pub id: u64,
    /// The answering node.
    pub node: u8,
    /// The outcome.
    pub reply: Reply,
}

/// Outcomes.
// `Status` (with its per-stage counters) is the large variant. A reply
// lives only from its decision to its encoding, one at a time; boxing it
// would cost an allocation per status request and code in the firmware's
// tight `.text` budget for no memory saved.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The put committed and was applied at `revision`.
    Put {
        /// Store revision after the put.
        revision: i64,
    },
    /// The value of the key (None: absent) as of `revision`.
    Get {
        /// The value.
        value: Option<Vec<u8>>,
        /// Store revision the read saw.
        revision: i64,
    },
    /// The delete committed; `deleted` keys were removed.
    Delete {
        /// 0 or 1.
        deleted: i64,
        /// Store revision after the delete.
        revision: i64,
    },
    /// The node's status.
    Status(Status),
    /// This node is not the leader; ask `leader` (if known).
    NotLeader {
        /// The leader this node knows of.
        leader: Option<u8>,
    },
    /// The request failed; nothing was applied unless said otherwise.
    Error(ErrorCode),
    /// The membership (after the change, for [`Op::ChangeMembers`]).
    Members(Membership),
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request did not decode or violated a bound.
    BadRequest,
    /// Too many requests in flight on this node; retry later.
    Busy,
    /// The outcome of a write is unknown: the node can no longer tell
    /// whether it was applied (it waited too long, e.g. a leader cut off
    /// from the majority, or a snapshot from a new leader covered it). It
    /// may have committed, as in etcd.
    LeadershipLost,
    /// The node's log is full (log compaction not implemented yet).
    LogFull,
    /// The state machine refused the command.
    Rejected,
    /// The node hit a storage failure and stopped serving.
    StorageFailed,
    /// The read could not be confirmed (no leader, timeout); retry.
    ReadFailed,
    /// Definitely not applied: another entry was committed at the write's
    /// log index (its leader lost office). Safe to retry.
    Superseded,
    /// Another membership change is still in progress (or a new leader has
    /// not committed an entry of its term yet, or a leadership transfer is
    /// under way): nothing was proposed; retry.
    ChangePending,
    /// The change does not fit the configuration: adding a member, promoting
    /// a node that is not a learner, removing a node that is not a member,
    /// or leaving no voter. Nothing was proposed.
    BadMembershipChange,
    /// This node was removed from the cluster and stops.
    Removed,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorCode::BadRequest => "bad request",
            ErrorCode::Busy => "node busy, retry",
            ErrorCode::LeadershipLost => "leadership lost; outcome unknown",
            ErrorCode::LogFull => "log full",
            ErrorCode::Rejected => "state machine refused the command",
            ErrorCode::StorageFailed => "node storage failed",
            ErrorCode::ReadFailed => "read could not be confirmed, retry",
            ErrorCode::Superseded => "not applied: another entry took its place; retry",
            ErrorCode::ChangePending => "another membership change is in progress; retry",
            ErrorCode::BadMembershipChange => {
                "membership change does not fit the configuration (already a member, \
                 not a learner, not a member, or no voter left)"
            }
            ErrorCode::Removed => "node removed from the cluster",
        })
    }
}

/// Raft role as reported in [`Status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Following a leader (or waiting for one).
    Follower,
    /// Running a pre-vote.
    PreCandidate,
    /// Running an election.
    Candidate,
    /// Leading.
    Leader,
}

/// A node's view of itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Node id.
    pub node: u8,
    /// Role.
    pub role: Role,
    /// Current term.
    pub term: u64,
    /// Known leader.
    pub leader: Option<u8>,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Last log index.
    pub last_index: u64,
    /// Index covered by the node's latest snapshot (0: none).
    pub snapshot_index: u64,
    /// Snapshots received from a leader and installed since boot.
    pub snapshots_installed: u64,
    /// Keys in the store.
    pub keys: u64,
    /// Store revision.
    pub revision: i64,
    /// Milliseconds since boot.
    pub uptime_ms: u64,
    /// Milliseconds from boot until this node first saw a leader (None: not yet).
    pub first_leader_ms: Option<u64>,
    /// Heap bytes in use now.
    pub heap_used: u64,
    /// Most heap bytes ever in use since boot.
    pub heap_high_water: u64,
    /// Size of the heap arena.
    pub heap_size: u64,
    /// Static RAM (`.data`, `.bss`, `.uninit`) without the heap arena.
    pub static_bytes: u64,
    /// Deepest the main stack has been since boot, in bytes (measured by
    /// painting; at most `stack_watch`).
    pub stack_high_water: u64,
    /// The stack window watched for `stack_high_water`.
    pub stack_watch: u64,
    /// Raft datagrams dropped because they failed to decode or validate
    /// (`dropped.total()`).
    pub bad_datagrams: u64,
    /// The same, by cause.
    pub dropped: DroppedDatagrams,
    /// Client datagrams that were not a valid request (answered
    /// `Error(BadRequest)` when they could be read) or were cut by the
    /// receive buffer.
    pub bad_requests: u64,
    /// Records discarded from a torn or corrupt log tail at boot.
    pub recovered_torn_records: u64,
    /// Boots of this disk (incremented at every boot).
    pub boots: u64,
    /// Where the node's work and time went since boot (measured).
    pub perf: Perf,
}

/// Per-stage counters of a node since boot, all measured by the node
/// (times from its 10 MHz machine timer, in microseconds of guest time,
/// which under QEMU is host wall time).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Perf {
    /// Wake-ups of the Raft task (a datagram or a tick ended its wait).
    pub wakeups: u64,
    /// Raft ticks.
    pub ticks: u64,
    /// Datagrams received on the Raft port.
    pub peer_in: u64,
    /// Datagrams sent to peers.
    pub peer_out: u64,
    /// Datagrams received on the client port.
    pub client_in: u64,
    /// Client responses sent.
    pub client_out: u64,
    /// Outputs of the replica carried out.
    pub outputs: u64,
    /// Persistence batches written (each ends with a flush when it must).
    pub batches: u64,
    /// Log entries written by those batches.
    pub entries_written: u64,
    /// Disk write requests.
    pub disk_writes: u64,
    /// Disk flush requests.
    pub flushes: u64,
    /// Time in disk writes.
    pub write_us: u64,
    /// Time in disk flushes.
    pub flush_us: u64,
    /// Time carrying out batches and snapshots (writes, flushes, encoding).
    pub storage_us: u64,
    /// Time handing datagrams to the network stack.
    pub send_us: u64,
    /// Time in the replica: decoding, stepping, proposing, taking outputs.
    pub raft_us: u64,
    /// Time the Raft task was not waiting (all of the above and the rest).
    pub busy_us: u64,
    /// Time the Raft task waited, idle, while a batch was on the disk (its
    /// flush running) or a snapshot was to be stored; the datagrams and
    /// ticks it handled meanwhile count as busy.
    pub disk_wait_us: u64,
}

/// By hand, the same as the derive (see [`crate::counters`]).
impl Serialize for Perf {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        crate::counters::serialize_counters(
            serializer,
            "Perf",
            &[
                ("wakeups", self.wakeups),
                ("ticks", self.ticks),
                ("peer_in", self.peer_in),
                ("peer_out", self.peer_out),
                ("client_in", self.client_in),
                ("client_out", self.client_out),
                ("outputs", self.outputs),
                ("batches", self.batches),
                ("entries_written", self.entries_written),
                ("disk_writes", self.disk_writes),
                ("flushes", self.flushes),
                ("write_us", self.write_us),
                ("flush_us", self.flush_us),
                ("storage_us", self.storage_us),
                ("send_us", self.send_us),
                ("raft_us", self.raft_us),
                ("busy_us", self.busy_us),
                ("disk_wait_us", self.disk_wait_us),
            ],
        )
    }
}

/// Raft datagrams a node dropped before they reached Raft, one counter per
/// cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct DroppedDatagrams {
    /// Larger than the receive buffer: cut, so dropped.
    pub truncated: u64,
    /// Not from a member's address and Raft port.
    pub foreign_source: u64,
    /// Empty.
    pub empty: u64,
    /// Unknown peer protocol version.
    pub unknown_version: u64,
    /// Not a valid message encoding, or trailing bytes.
    pub malformed: u64,
    /// A message for another node.
    pub wrong_recipient: u64,
    /// The named sender is not a member, or not the datagram's source.
    pub wrong_sender: u64,
}

/// By hand, the same as the derive (see [`crate::counters`]).
impl Serialize for DroppedDatagrams {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        crate::counters::serialize_counters(
            serializer,
            "DroppedDatagrams",
            &[
                ("truncated", self.truncated),
                ("foreign_source", self.foreign_source),
                ("empty", self.empty),
                ("unknown_version", self.unknown_version),
                ("malformed", self.malformed),
                ("wrong_recipient", self.wrong_recipient),
                ("wrong_sender", self.wrong_sender),
            ],
        )
    }
}

impl DroppedDatagrams {
    /// Every cause together.
    pub fn total(&self) -> u64 {
        self.truncated
            + self.foreign_source
            + self.empty
            + self.unknown_version
            + self.malformed
            + self.wrong_recipient
            + self.wrong_sender
    }
}

/// Why bytes did not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Empty input.
    Empty,
    /// Longer than [`MAX_DATAGRAM_BYTES`].
    TooLarge,
    /// Unknown protocol version.
    UnknownVersion(u8),
    /// Not a valid encoding, or trailing bytes.
    Malformed,
    /// A key, value, node id or member list breaks a bound.
    OutOfBounds,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Empty => f.write_str("empty datagram"),
            DecodeError::TooLarge => write!(f, "datagram above {MAX_DATAGRAM_BYTES} bytes"),
            DecodeError::UnknownVersion(v) => write!(f, "unknown protocol version {v}"),
            DecodeError::Malformed => f.write_str("malformed datagram"),
            DecodeError::OutOfBounds => {
                f.write_str("key, value, node id or member list out of bounds")
            }
        }
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = alloc::vec![CLIENT_VERSION];
    // Serializing into a Vec cannot fail for these types.
    out.extend_from_slice(&postcard::to_allocvec(value).unwrap_or_default());
    out
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if bytes.len() > MAX_DATAGRAM_BYTES {
        return Err(DecodeError::TooLarge);
    }
    if version != CLIENT_VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    let (value, rest) = postcard::take_from_bytes(body).map_err(|_| DecodeError::Malformed)?;
    if !rest.is_empty() {
        return Err(DecodeError::Malformed);
    }
    Ok(value)
}

fn key_ok(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_BYTES
}

fn node_ok(id: u8) -> bool {
    (1..=MAX_NODE_ID).contains(&id)
}

/// 1..=MAX_MEMBERS operations on valid, distinct nodes.
fn ops_ok(ops: &[MemberOp]) -> bool {
    let distinct = ops
        .iter()
        .enumerate()
        .all(|(i, a)| ops[..i].iter().all(|b| b.node() != a.node()));
    (1..=MAX_MEMBERS).contains(&ops.len()) && distinct && ops.iter().all(|o| node_ok(o.node()))
}

impl Request {
    /// Checks the bounds of keys and values.
    pub fn validate(&self) -> Result<(), DecodeError> {
        let ok = match &self.op {
            Op::Put { key, value } => key_ok(key) && value.len() <= MAX_VALUE_BYTES,
            Op::Get { key } | Op::Delete { key } => key_ok(key),
            Op::Status | Op::Members => true,
            Op::ChangeMembers { ops } => ops_ok(ops),
        };
        ok.then_some(()).ok_or(DecodeError::OutOfBounds)
    }

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Parses and validates the wire form.
    pub fn decode(bytes: &[u8]) -> Result<Request, DecodeError> {
        let r: Request = decode(bytes)?;
        r.validate()?;
        Ok(r)
    }
}

impl Response {
    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// The wire form written into `buf` (the same bytes as
    /// [`Response::encode`]), or `None` if it does not fit. For the node,
    /// which answers every request: no heap allocation per answer.
    pub fn encode_into<'b>(&self, buf: &'b mut [u8]) -> Option<&'b [u8]> {
        let (version, body) = buf.split_first_mut()?;
        *version = CLIENT_VERSION;
        let n = postcard::to_slice(self, body).ok()?.len();
        Some(&buf[..1 + n])
    }

    /// Parses the wire form; a member list beyond its bounds is refused.
    pub fn decode(bytes: &[u8]) -> Result<Response, DecodeError> {
        let r: Response = decode(bytes)?;
        match &r.reply {
            Reply::Members(m) if !m.valid() => Err(DecodeError::OutOfBounds),
            _ => Ok(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written `Serialize` of the counter structs: every field
    /// distinct, so a field left out or out of order fails the round trip
    /// through the derived `Deserialize`.
    #[test]
    fn counters_round_trip_field_by_field() {
        let mut n = 0u64;
        let mut next = || {
            n += 1;
            n * 1_000_003
        };
        let perf = Perf {
            wakeups: next(),
            ticks: next(),
            peer_in: next(),
            peer_out: next(),
            client_in: next(),
            client_out: next(),
            outputs: next(),
            batches: next(),
            entries_written: next(),
            disk_writes: next(),
            flushes: next(),
            write_us: next(),
            flush_us: next(),
            storage_us: next(),
            send_us: next(),
            raft_us: next(),
            busy_us: next(),
            disk_wait_us: next(),
        };
        let bytes = postcard::to_allocvec(&perf).unwrap();
        assert_eq!(postcard::from_bytes::<Perf>(&bytes).unwrap(), perf);
        let dropped = DroppedDatagrams {
            truncated: next(),
            foreign_source: next(),
            empty: next(),
            unknown_version: next(),
            malformed: next(),
            wrong_recipient: next(),
            wrong_sender: next(),
        };
        let bytes = postcard::to_allocvec(&dropped).unwrap();
        assert_eq!(
            postcard::from_bytes::<DroppedDatagrams>(&bytes).unwrap(),
            dropped
        );
    }

    #[test]
    fn round_trip_and_bounds() {
        let r = Request {
            id: 9,
            op: Op::Put {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            },
        };
        assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        let big = Request {
            id: 1,
            op: Op::Put {
                key: b"k".to_vec(),
                value: alloc::vec![0; MAX_VALUE_BYTES + 1],
            },
        };
        assert_eq!(
            Request::decode(&big.encode()),
            Err(DecodeError::OutOfBounds)
        );
        let empty = Request {
            id: 1,
            op: Op::Get { key: Vec::new() },
        };
        assert_eq!(
            Request::decode(&empty.encode()),
            Err(DecodeError::OutOfBounds)
        );
        let max = Request {
            id: u64::MAX,
            op: Op::Put {
                key: alloc::vec![1; MAX_KEY_BYTES],
                value: alloc::vec![2; MAX_VALUE_BYTES],
            },
        };
        assert!(max.encode().len() <= MAX_DATAGRAM_BYTES);
    }

    #[test]
    fn response_encoded_into_a_buffer_is_the_same_bytes() {
        let r = Response {
            id: 7,
            node: 3,
            reply: Reply::Get {
                value: Some(b"value".to_vec()),
                revision: 42,
            },
        };
        let mut buf = [0u8; MAX_DATAGRAM_BYTES];
        let bytes = r.encode_into(&mut buf).unwrap();
        assert_eq!(bytes, &r.encode()[..]);
        assert_eq!(Response::decode(bytes).unwrap(), r);
        // Too small a buffer: refused, not cut.
        let mut small = [0u8; 4];
        assert_eq!(r.encode_into(&mut small), None);
        assert_eq!(r.encode_into(&mut []), None);
    }

    #[test]
    fn garbage_is_refused_without_panic() {
        assert_eq!(Request::decode(&[]), Err(DecodeError::Empty));
        assert_eq!(
            Request::decode(&[9, 0]),
            Err(DecodeError::UnknownVersion(9))
        );
        let mut seed = 0x1234_5678_u32;
        for len in 1..200 {
            let mut b = alloc::vec![CLIENT_VERSION];
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                b.push(seed as u8);
            }
            let _ = Request::decode(&b);
            let _ = Response::decode(&b);
        }
        let mut ok = Request {
            id: 3,
            op: Op::Status,
        }
        .encode();
        ok.push(0);
        assert_eq!(Request::decode(&ok), Err(DecodeError::Malformed));
    }

    #[test]
    fn membership_messages_round_trip_and_are_bounded() {
        let change = Request {
            id: 4,
            op: Op::ChangeMembers {
                ops: alloc::vec![MemberOp::Promote(4), MemberOp::Promote(5)],
            },
        };
        assert_eq!(Request::decode(&change.encode()), Ok(change));
        let list = Request {
            id: 5,
            op: Op::Members,
        };
        assert_eq!(Request::decode(&list.encode()), Ok(list));
        let bad = |ops: Vec<MemberOp>| {
            Request::decode(
                &Request {
                    id: 1,
                    op: Op::ChangeMembers { ops },
                }
                .encode(),
            )
        };
        // No operation, node 0, a node beyond the plan, one node twice,
        // more operations than members.
        assert_eq!(bad(Vec::new()), Err(DecodeError::OutOfBounds));
        assert_eq!(
            bad(alloc::vec![MemberOp::Remove(0)]),
            Err(DecodeError::OutOfBounds)
        );
        assert_eq!(
            bad(alloc::vec![MemberOp::AddVoter(MAX_NODE_ID + 1)]),
            Err(DecodeError::OutOfBounds)
        );
        assert_eq!(
            bad(alloc::vec![MemberOp::AddLearner(4), MemberOp::Promote(4)]),
            Err(DecodeError::OutOfBounds)
        );
        let too_many = (1..=MAX_NODE_ID).chain([1]).map(MemberOp::Remove).collect();
        assert_eq!(bad(too_many), Err(DecodeError::OutOfBounds));

        // The largest answer fits one datagram.
        let all: Vec<u8> = (1..=MAX_NODE_ID).collect();
        let full = Response {
            id: u64::MAX,
            node: MAX_NODE_ID,
            reply: Reply::Members(Membership {
                voters: all.clone(),
                learners: all.clone(),
                voters_outgoing: all.clone(),
                learners_next: all,
            }),
        };
        assert!(full.encode().len() <= MAX_DATAGRAM_BYTES);
        assert_eq!(Response::decode(&full.encode()), Ok(full));
        // A member list beyond the plan is refused.
        let wrong = Response {
            id: 1,
            node: 1,
            reply: Reply::Members(Membership {
                voters: alloc::vec![1, 200],
                ..Membership::default()
            }),
        };
        assert_eq!(
            Response::decode(&wrong.encode()),
            Err(DecodeError::OutOfBounds)
        );
        let long = Response {
            id: 1,
            node: 1,
            reply: Reply::Members(Membership {
                learners: alloc::vec![1; MAX_MEMBERS + 1],
                ..Membership::default()
            }),
        };
        assert_eq!(
            Response::decode(&long.encode()),
            Err(DecodeError::OutOfBounds)
        );
    }

    #[test]
    fn version_1_datagrams_are_refused_by_version() {
        let mut v1 = Request {
            id: 1,
            op: Op::Status,
        }
        .encode();
        v1[0] = 1;
        assert_eq!(Request::decode(&v1), Err(DecodeError::UnknownVersion(1)));
    }
}
