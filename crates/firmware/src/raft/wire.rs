//! The peer wire format: one Raft message per UDP datagram,
//! [`RAFT_WIRE_VERSION`] then the postcard encoding of
//! `metalraft_core::Message<Vec<u8>>`. Decoding checks the version, refuses
//! trailing bytes, and checks that the message is for this node and really
//! comes from the member it names (its source address); the core validates
//! everything else.
//!
//! Allocation bound: postcard never pre-allocates more elements than input
//! bytes remain, so a datagram of at most `MAX_DATAGRAM_BYTES` makes the
//! decoder allocate at most that many times the largest element (an
//! `Entry`, [`DECODE_ALLOC_BOUND_BYTES`]) transiently.

use alloc::vec::Vec;
use core::fmt;

use metalraft_core::{Entry, Message, NodeId};
use metalraft_fw_proto::addr::MAX_DATAGRAM_BYTES;

/// Version byte of the peer protocol.
pub const RAFT_WIRE_VERSION: u8 = 1;
/// Worst transient allocation of decoding one datagram.
pub const DECODE_ALLOC_BOUND_BYTES: usize =
    MAX_DATAGRAM_BYTES * core::mem::size_of::<Entry<Vec<u8>>>();

const _: () = assert!(DECODE_ALLOC_BOUND_BYTES < crate::platform::heap::HEAP_BYTES / 3);

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
    /// The named sender is not a member or not the datagram's source.
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
            WireError::WrongSender => f.write_str("sender is not the member it claims to be"),
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
pub fn decode(
    bytes: &[u8],
    me: NodeId,
    source: u8,
    members: &[u8],
) -> Result<Message<Vec<u8>>, WireError> {
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
    if msg.from != NodeId::from(source) || !members.contains(&source) {
        return Err(WireError::WrongSender);
    }
    Ok(msg)
}
