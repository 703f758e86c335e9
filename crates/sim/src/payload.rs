//! The entry payload: the bytes of a `metalraft-replica` envelope (origin
//! node, request id, command) behind an `Rc`, so the core's many clones
//! (into every AppendEntries, every log view) cost a reference count.
//!
//! A simulator command is `op: u64 LE` followed by `metalraft_kv::Command::encode`
//! ([`sim_command`]): the state machine ([`crate::machine::SimMachine`])
//! reports the op of every entry it applies, so the checkers see what the
//! shipped apply path applied, not what the log says.

use std::rc::Rc;

use metalraft_core::{Entry, EntryData, Payload};
use metalraft_replica::Frame;

use crate::digest::{fnv_bytes, fnv_u64, FNV_OFFSET};
use crate::history::OpId;

/// Bytes of the op id in front of a simulator command.
pub const OP_PREFIX_BYTES: usize = 8;

/// The payload type the simulated cluster runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimPayload(pub Rc<[u8]>);

impl Payload for SimPayload {
    fn payload_len(&self) -> usize {
        self.0.len()
    }
}

impl AsRef<[u8]> for SimPayload {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for SimPayload {
    fn from(v: Vec<u8>) -> Self {
        SimPayload(Rc::from(v))
    }
}

/// The command the simulator proposes for operation `op`: its id, then the
/// encoded kv command.
pub fn sim_command(op: OpId, kv_command: &[u8]) -> Vec<u8> {
    let mut c = Vec::with_capacity(OP_PREFIX_BYTES + kv_command.len());
    c.extend_from_slice(&op.to_le_bytes());
    c.extend_from_slice(kv_command);
    c
}

/// Splits a simulator command into its op and its kv command.
pub fn split_command(command: &[u8]) -> Option<(OpId, &[u8])> {
    let (op, kv) = command.split_at_checked(OP_PREFIX_BYTES)?;
    Some((OpId::from_le_bytes(op.try_into().ok()?), kv))
}

/// Digest of an entry without a command (a no-op, or bytes that are not an
/// envelope, which the replica applies as empty).
pub fn empty_digest() -> u64 {
    fnv_u64(FNV_OFFSET, 1)
}

/// Digest of an applied command (the state machine's view of an entry).
pub fn command_digest(command: &[u8]) -> u64 {
    fnv_bytes(fnv_u64(FNV_OFFSET, 2), command)
}

/// Digest of a membership change.
pub fn conf_change_digest(cc: &metalraft_core::ConfChange) -> u64 {
    fnv_bytes(fnv_u64(FNV_OFFSET, 3), format!("{cc:?}").as_bytes())
}

/// Digest of an entry's content, for the log and state-machine checkers: the
/// same value the state machine reports when it applies the entry.
pub fn entry_digest(e: &Entry<SimPayload>) -> u64 {
    match &e.data {
        EntryData::Noop => empty_digest(),
        EntryData::Normal(p) => match Frame::decode(p.as_ref()) {
            Some(f) => command_digest(f.command),
            None => empty_digest(),
        },
        EntryData::ConfChange(cc) => conf_change_digest(cc),
    }
}

/// The client operation an entry carries, if any.
pub fn entry_op(e: &Entry<SimPayload>) -> Option<OpId> {
    match &e.data {
        EntryData::Normal(p) => Some(split_command(Frame::decode(p.as_ref())?.command)?.0),
        _ => None,
    }
}
