//! `metalraft`: an etcd-compatible replicated key-value server.
//!
//! # Contract
//!
//! - **Command line:** etcd's flags, defaults and `ETCD_*` variables
//!   ([`cli`], validated by [`config`]); bad or contradictory flags exit
//!   non-zero with a message naming the flag.
//! - **Durability:** nothing is acknowledged — no vote, no append
//!   acknowledgement to a peer, no client success — before the state it
//!   promises is fdatasync'ed in the write-ahead log ([`storage`]). On start a
//!   torn final WAL record is truncated and logged; any other corruption stops
//!   the member with an error naming the file and offset.
//! - **Client API:** the etcd v3 gRPC API ([`proto`], served by [`api`]),
//!   wire-compatible for the services listed in the README, with etcd's
//!   error codes and messages ([`errors`]); everything else answers
//!   `UNIMPLEMENTED`. Writes go through the Raft log ([`raft_loop`]), reads
//!   are linearizable by ReadIndex unless serializable.
//! - **Client connections:** each passes a front layer ([`front`]) that
//!   repairs the HTTP/2 `:authority` etcd clients send and `h2` refuses.
//! - **Membership:** runtime changes through the core, with member URLs in
//!   a replicated registry ([`registry`]); a removed member stops.
//! - **Peers:** an internal gRPC service ([`transport`]) that checks every
//!   batch at the edge (cluster id, known sender, decodable messages).
//! - **TLS:** etcd's certificate flags on both ports ([`tls`], rustls with
//!   ring); with client-certificate authentication a client or peer without
//!   a certificate from the trusted CA is refused in the handshake.
//! - **Bounds:** every queue and buffer has a named constant or config field.
//!
//! The binary's `main` only parses the command line and calls into this
//! library, so integration tests drive the same code as users.

#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod api;
pub mod auth;
pub mod backup;
pub mod batch_sizes;
pub mod bolt;
pub mod catch_up;
pub mod cli;
pub mod coalesce;
pub mod command;
pub mod compactor;
pub mod concurrency;
pub mod config;
pub mod dev;
#[cfg(test)]
mod durability_tests;
pub mod duration;
pub mod errors;
pub mod front;
pub mod gateway;
pub mod grpc_metrics;
pub mod latency;
pub mod lease;
pub mod machine;
pub mod member;
pub mod metrics;
pub mod proto;
pub mod publish;
pub mod raft_loop;
pub mod registry;
pub mod snapshot_chain;
pub mod storage;
pub mod tls;
pub mod transport;
pub mod watch;
pub mod writer;
