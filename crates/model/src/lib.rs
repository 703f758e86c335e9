//! Exhaustive model checking of the real `metalraft-core` [`Node`] with
//! [stateright].
//!
//! A state is three real nodes (four in the replacement configuration), the messages in flight (a multiset), each
//! node's durable disk and its written-but-unsynced batches, and ghost
//! history for the properties. Every input of the core is a transition:
//! deliver, drop or duplicate a message; an election timeout; a leader's
//! heartbeat tick; a disk sync; a power loss (the node restarts from what
//! was durable); a proposal; a read; a membership change; a snapshot.
//!
//! `Node` cannot be cloned, so a state keeps each node's inputs since its
//! last restart and rebuilds the node by replaying them (the core is
//! deterministic). States are identified by what is observable: each
//! node's role, term, vote, leader, commit/applied/persisted indices, log
//! and configuration, its disks, the network and the ghost history (see
//! `README.md` for what that abstraction may merge).
//!
//! ```
//! use metalraft_model::{Bounds, RaftModel, Variant};
//! use stateright::{Checker, Model};
//!
//! // Elections in term 2, no proposals, 8 steps deep: well under a second.
//! let bounds = Bounds { max_proposals: 0, max_depth: 8, ..Bounds::QUICK };
//! let checker = RaftModel::new(Variant::Basic, bounds)
//!     .checker()
//!     .spawn_bfs()
//!     .join();
//! checker.assert_no_discovery("election safety");
//! checker.assert_no_discovery("log matching");
//! assert!(checker.unique_state_count() > 100);
//! ```
//!
//! [`Node`]: metalraft_core::Node
//! [stateright]: https://docs.rs/stateright

#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod driver;
mod model;
pub mod props;

pub use driver::{
    decode_sm, encode_sm, model_config, Batch, CoreNode, Driver, EntryId, Input, Outputs, Payload,
    Tag,
};
pub use model::{
    show_message, Action, Bounds, Change, Ghost, RaftModel, Script, ServedRead, Slot, State, Used,
    Variant, View, ALL_NODES, NODES, QUORUM,
};
