#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

extern crate alloc;

mod awaiting;
mod config;
mod error;
mod frame;
#[cfg(feature = "kv")]
mod kv;
#[cfg(feature = "leases")]
mod kv_lease;
mod lease;
mod machine;
mod output;
mod replica;
mod snapshot;

pub use config::*;
pub use error::{
    ChunkError, ConfigError, Fatal, ProposeError, ReadError, RequestFailure, StateMachineError,
    UnknownReason,
};
pub use frame::{Frame, Origin, FRAME_HEADER_BYTES};
#[cfg(feature = "kv")]
pub use kv::{KeyChange, KvError, KvEvent, MvccEvent};
#[cfg(feature = "leases")]
pub use kv_lease::{observe_lease_result, propose_expired_revokes, LeasedMvccStore};
pub use lease::{Lessor, LessorConfig, Renew};
pub use machine::{Instant, StateMachine};
pub use output::{
    Completion, Event, MembershipChange, Outcome, Output, PersistWork, ReqId, SnapshotDue,
    SnapshotToSave,
};
pub use replica::{EntryPayload, OutputOf, Replica, Stats};
pub use snapshot::SnapshotAssembler;
