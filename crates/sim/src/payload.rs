//! The proposal payload: an encoded `metalraft-kv` command tagged with the
//! client operation it carries, behind an `Rc` so the core's many clones
//! (into every AppendEntries, every log view) cost a reference count.

use std::rc::Rc;

use metalraft_core::{Entry, EntryData, Payload};

use crate::digest::{fnv_bytes, fnv_u64, FNV_OFFSET};
use crate::history::OpId;

/// What one log entry proposed by the simulator carries.
#[derive(Debug, PartialEq, Eq)]
pub struct Proposal {
    /// The client operation.
    pub op: OpId,
    /// `metalraft_kv::Command::encode` of the operation.
    pub command: Vec<u8>,
}

/// The payload type the simulated cluster runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimPayload(pub Rc<Proposal>);

impl Payload for SimPayload {
    fn payload_len(&self) -> usize {
        self.0.command.len()
    }
}

/// Digest of an entry's content, for the log and state-machine checkers.
pub fn entry_digest(e: &Entry<SimPayload>) -> u64 {
    match &e.data {
        EntryData::Noop => fnv_u64(FNV_OFFSET, 1),
        EntryData::Normal(p) => fnv_bytes(fnv_u64(fnv_u64(FNV_OFFSET, 2), p.0.op), &p.0.command),
        EntryData::ConfChange(cc) => {
            fnv_bytes(fnv_u64(FNV_OFFSET, 3), format!("{cc:?}").as_bytes())
        }
    }
}

/// The client operation an entry carries, if any.
pub fn entry_op(e: &Entry<SimPayload>) -> Option<OpId> {
    match &e.data {
        EntryData::Normal(p) => Some(p.0.op),
        _ => None,
    }
}
