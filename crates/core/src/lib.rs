#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

extern crate alloc;

mod conf;
mod config;
mod error;
mod log;
mod message;
mod node;
mod peer_map;
mod progress;
mod quorum;
mod ready;
mod rng;
mod sort;
mod storage;
mod types;

pub use conf::{
    apply_conf_change, bootstrap_entry, bootstrap_hard_state, ConfChange, ConfChangeOp,
    ConfTransition, BOOTSTRAP_TERM,
};
pub use config::*;
pub use error::{
    ConfChangeError, ConfigError, Error, ProposeError, ReadError, StepError, StorageError,
    TransferError,
};
pub use message::{Message, MessageBody, MessageKind, RejectHint};
pub use node::{Node, Stats, MAX_TERM_OR_INDEX};
pub use ready::{Persist, PersistToken, Ready};
pub use storage::{LogStorage, MemStorage};
pub use types::{
    ConfState, Entry, EntryData, HardState, Index, InitialState, NodeId, Payload, ReadCtx,
    ReadState, Role, SnapshotChunk, SnapshotInstall, SnapshotMeta, SoftState, Term,
    CONF_CHANGE_OP_BYTES, ENTRY_OVERHEAD_BYTES, INVALID_ID,
};
