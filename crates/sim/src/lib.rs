//! # metalraft-sim
//!
//! A deterministic simulator for MetalRaft: whole clusters of the shipped
//! `metalraft-replica` replicas (the `metalraft-core` node, the
//! `metalraft-kv` state machine, proposal matching, reads and snapshots, as
//! the server and the firmware run them), in virtual time, under network, disk and node faults drawn from a seed, with
//! independent checkers of safety, durability, linearizability and
//! liveness. See the crate README for the fault model, the checkers and how
//! to replay a failing seed.
//!
//! ## Contract
//!
//! - **One seed fixes everything**: cluster size, timing, fault rates,
//!   workload, and every random choice of the run. No wall clock, no OS
//!   randomness, no hash-map iteration order reaches the trace: the same
//!   seed and the same code give the same trace, byte for byte.
//! - **Checkers are separate from the system**: they see only what an
//!   outside observer could record and can be fed hand-made histories.
//! - **A run is bounded**: a safety phase of `safety_ticks`, then a
//!   liveness phase of at most `liveness_budget_ticks`, and an event cap.
//!
//! ```
//! use metalraft_sim::{run_seed, RunOptions};
//!
//! let a = run_seed(7, RunOptions::default());
//! assert!(a.violation.is_none(), "{:?}", a.violation);
//! assert!(a.stats.deliveries > 0 && !a.history.ops.is_empty());
//! // Same seed, same trace.
//! let b = run_seed(7, RunOptions::default());
//! assert_eq!(a.fingerprint, b.fingerprint);
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod checkers;
pub mod config;
pub mod digest;
pub mod disk;
pub mod history;
pub mod html;
pub mod machine;
pub mod network;
pub mod payload;
pub mod replica;
pub mod rng;
pub mod schedule;
pub mod sim;
pub mod swarm;
pub mod timeline;
pub mod trace;
pub mod workload;

pub use config::{Knobs, SimConfig};
pub use sim::{RunOptions, RunReport, RunStats, Sabotage, Simulation};

/// Runs the configuration drawn from `seed` with the knobs of `opts`.
pub fn run_seed(seed: u64, opts: RunOptions) -> RunReport {
    Simulation::new(SimConfig::from_seed_with(seed, opts.knobs), opts).run()
}
