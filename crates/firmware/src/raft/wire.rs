//! The peer wire format: one Raft message per UDP datagram,
//! [`RAFT_WIRE_VERSION`] then the postcard encoding of
//! `metalraft_core::Message<Vec<u8>>`. Decoding checks the version, refuses
//! trailing bytes, and checks that the message is for this node and really
//! comes from the node it names (its source address on the LAN plan, where
//! the hub accepts node N's frames only from node N's port). Whether that
//! node is a member is the core's call, not the wire's: membership changes
//! with the log, and a node this one does not yet know was added may need
//! its vote (ADR 0006); the core drops what a non-member may not send.
//!
//! One other datagram shares the port: the removal notice
//! (`metalraft_fw_proto::notice`, first byte `REMOVED_NOTICE_KIND`),
//! the firmware's own signal, not a Raft message; [`decode_removed`] adds
//! the same address checks. A member sends it to a node that its applied
//! configuration removed at that index and that still talks to it — as
//! etcd's peers answer a removed member "410 Gone": the leader stops
//! replicating to a removed node the moment it appends the change, so the
//! node may never learn of its removal through Raft.
//!
//! Allocation bound: postcard never pre-allocates more elements than input
//! bytes remain, and every element of a finished container took at least
//! one input byte. So at any moment each kind of allocation holds at most
//! `MAX_DATAGRAM_BYTES` elements in total — the one `Vec<Entry>`, the
//! boxed `ConfChange`s, their `ConfChangeOp` lists, the byte strings — and
//! decoding one datagram allocates at most `MAX_DATAGRAM_BYTES` times the
//! sum of those element sizes transiently ([`DECODE_ALLOC_BOUND_BYTES`]).
//! (The first version of this bound counted only the `Entry` vector; the
//! fuzz target `fw_wire` found a 1,472-byte datagram of entries carrying
//! configuration changes that allocated 62,806 B at its peak, above it.)

use alloc::vec::Vec;
use core::fmt;

use metalraft_core::{ConfChange, ConfChangeOp, Entry, Message, NodeId};
use metalraft_fw_proto::addr::{MAX_DATAGRAM_BYTES, MAX_NODE_ID};
use metalraft_fw_proto::notice::RemovalNotice;

/// Version byte of the peer protocol.
pub const RAFT_WIRE_VERSION: u8 = 1;

/// Worst transient allocation of decoding one datagram.
pub const DECODE_ALLOC_BOUND_BYTES: usize = MAX_DATAGRAM_BYTES
    * (core::mem::size_of::<Entry<Vec<u8>>>()
        + core::mem::size_of::<ConfChange>()
        + core::mem::size_of::<ConfChangeOp>()
        + 1);

// The bound fits the heap; it is far above what real datagrams allocate
// (a crafted one reached 62,806 B), but with the heap near its high-water
// mark a crafted datagram can still fail an allocation: see the README.
const _: () = assert!(DECODE_ALLOC_BOUND_BYTES < crate::platform::heap::HEAP_BYTES);

/// Why a datagram was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Empty datagram.
    Empty,
    /// Unknown protocol version.
    UnknownVersion(u8),
    /// Not a valid encoding, or trailing bytes.
    Malformed,
    /// Addressed to another node.
    WrongRecipient,
    /// The named sender is not a node of the plan or not the datagram's
    /// source.
    WrongSender,
    /// The message does not fit one datagram (encoding).
    TooLarge,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Empty => f.write_str("empty datagram"),
            WireError::UnknownVersion(v) => write!(f, "unknown peer protocol version {v}"),
            WireError::Malformed => f.write_str("malformed message"),
            WireError::WrongRecipient => f.write_str("message for another node"),
            WireError::WrongSender => f.write_str("sender is not the node it claims to be"),
            WireError::TooLarge => write!(f, "message above {MAX_DATAGRAM_BYTES} bytes"),
        }
    }
}

/// Encodes `msg` into `buf`; returns the datagram.
pub fn encode<'b>(
    msg: &Message<Vec<u8>>,
    buf: &'b mut [u8; MAX_DATAGRAM_BYTES],
) -> Result<&'b [u8], WireError> {
    buf[0] = RAFT_WIRE_VERSION;
    let n = postcard::to_slice(msg, &mut buf[1..])
        .map_err(|_| WireError::TooLarge)?
        .len();
    Ok(&buf[..1 + n])
}

/// Decodes a datagram received by node `me` from LAN id `source`.
pub fn decode(bytes: &[u8], me: NodeId, source: u8) -> Result<Message<Vec<u8>>, WireError> {
    let (&version, body) = bytes.split_first().ok_or(WireError::Empty)?;
    if version != RAFT_WIRE_VERSION {
        return Err(WireError::UnknownVersion(version));
    }
    let (msg, rest): (Message<Vec<u8>>, _) =
        postcard::take_from_bytes(body).map_err(|_| WireError::Malformed)?;
    if !rest.is_empty() {
        return Err(WireError::Malformed);
    }
    if msg.to != me {
        return Err(WireError::WrongRecipient);
    }
    if msg.from != NodeId::from(source) || !(1..=MAX_NODE_ID).contains(&source) {
        return Err(WireError::WrongSender);
    }
    Ok(msg)
}

/// Decodes a removal notice received by node `me` from LAN id `source`;
/// returns the index of the change that removed `me`.
pub fn decode_removed(bytes: &[u8], me: u8, source: u8) -> Result<u64, WireError> {
    let n = RemovalNotice::decode(bytes).map_err(|_| WireError::Malformed)?;
    if n.to != me {
        return Err(WireError::WrongRecipient);
    }
    if n.from != source || !(1..=MAX_NODE_ID).contains(&source) {
        return Err(WireError::WrongSender);
    }
    Ok(n.index)
}
