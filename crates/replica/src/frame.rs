//! The envelope every command travels in through the log.
//!
//! `kind: u8 | origin: u64 LE | req_id: u64 LE | command`. `origin` is the
//! node that proposed the entry and `req_id` the caller's request id, so the
//! proposer (and any node, e.g. for tracing or Watch) can tell whose entry it
//! is after apply. Matching a completion uses the entry's `(index, term)`
//! as well, which the Raft log-matching property makes unique, so a request
//! id reused after a restart can never complete the wrong request.

use alloc::vec::Vec;

use metalraft_core::NodeId;

/// Bytes of the envelope before the command.
pub const FRAME_HEADER_BYTES: usize = 17;

/// Tag of a command proposed by a client through [`crate::Replica::propose`].
const KIND_CLIENT: u8 = 0xC1;
/// Tag of a command the replica proposed on its own (a timed action).
const KIND_INTERNAL: u8 = 0xC2;

/// Who proposed an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A client request `req_id` proposed on node `node`.
    Client {
        /// The proposing node.
        node: NodeId,
        /// The caller's request id.
        req_id: u64,
    },
    /// A timed action of the state machine proposed by leader `node`
    /// ([`crate::StateMachine::on_timeout`]); `seq` counts them per node.
    Internal {
        /// The proposing leader.
        node: NodeId,
        /// Sequence number on that node.
        seq: u64,
    },
}

/// An entry's envelope, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Who proposed it.
    pub origin: Origin,
    /// The state machine command.
    pub command: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Decodes an entry payload; `None` if it is not an envelope (every
    /// replica decodes the same bytes alike, so skipping it is consistent).
    pub fn decode(data: &'a [u8]) -> Option<Frame<'a>> {
        let (head, command) = data.split_at_checked(FRAME_HEADER_BYTES)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&head[1..9]);
        let node = u64::from_le_bytes(a);
        a.copy_from_slice(&head[9..17]);
        let n = u64::from_le_bytes(a);
        let origin = match head[0] {
            KIND_CLIENT => Origin::Client { node, req_id: n },
            KIND_INTERNAL => Origin::Internal { node, seq: n },
            _ => return None,
        };
        Some(Frame { origin, command })
    }

    /// Encodes `command` in an envelope.
    pub fn encode(origin: Origin, command: &[u8]) -> Vec<u8> {
        let (kind, node, n) = match origin {
            Origin::Client { node, req_id } => (KIND_CLIENT, node, req_id),
            Origin::Internal { node, seq } => (KIND_INTERNAL, node, seq),
        };
        let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + command.len());
        out.push(kind);
        out.extend_from_slice(&node.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(command);
        out
    }
}
