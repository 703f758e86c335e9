#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

extern crate alloc;

mod config;
mod error;
mod log;
mod message;
mod node;
mod progress;
mod quorum;
mod ready;
mod rng;
mod storage;
mod types;

pub use config::*;
pub use error::{
    ConfigError, Error, ProposeError, ReadError, StepError, StorageError, TransferError,
};
pub use message::{Message, MessageBody, MessageKind, RejectHint};
pub use node::{Node, Stats, MAX_TERM_OR_INDEX};
pub use ready::{Persist, PersistToken, Ready};
pub use storage::{LogStorage, MemStorage};
pub use types::{
    ConfState, Entry, EntryData, HardState, Index, InitialState, NodeId, Payload, ReadCtx,
    ReadState, Role, SoftState, Term, ENTRY_OVERHEAD_BYTES, INVALID_ID,
};
