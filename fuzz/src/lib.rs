//! The bodies of MetalRaft's fuzz targets, as plain library functions.
//!
//! Each target is a module with one entry point: `run(&[u8])` for targets
//! that take raw bytes, `check(Input)` for targets that take a structured
//! [`arbitrary`] input (plus `run(&[u8])`, which builds the input from
//! bytes exactly as libFuzzer's `fuzz_target!` does). Two callers use
//! them:
//!
//! - the `cargo fuzz` binaries in `fuzz_targets/` (nightly, or stable with
//!   `RUSTC_BOOTSTRAP=1`; feature `libfuzzer`, on by default);
//! - `tests/corpus.rs`, which replays every committed input under
//!   `corpus/<target>/` through the same functions on stable Rust, without
//!   libFuzzer: `cargo test --manifest-path fuzz/Cargo.toml
//!   --no-default-features`.
//!
//! The server's WAL target (`wal_decode`) needs the whole server crate (a
//! cold build of about 20 minutes) and sits behind the `server` feature
//! (on by default). Without it, only the core, kv and firmware crates are
//! built.

#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

extern crate alloc;

pub mod core_cluster;
pub mod fw_disk;
pub mod fw_wire;
pub mod kv_decode;
#[cfg(feature = "server")]
pub mod wal_decode;

use arbitrary::{Arbitrary, Unstructured};

/// Builds a structured input from fuzzer bytes as `libfuzzer-sys`'s
/// `fuzz_target!` does: too few bytes for the type's minimum size, or
/// bytes it cannot use, give no input (the run is skipped, not failed).
pub fn structured<'a, T: Arbitrary<'a>>(bytes: &'a [u8]) -> Option<T> {
    if bytes.len() < T::size_hint(0).0 {
        return None;
    }
    T::arbitrary_take_rest(Unstructured::new(bytes)).ok()
}

/// A target's `cargo fuzz` name (also its corpus directory) and its byte
/// entry point.
pub type Target = (&'static str, fn(&[u8]));

/// The targets whose bodies this build contains.
pub fn targets() -> Vec<Target> {
    #[allow(unused_mut)] // pushed to with the `server` feature
    let mut v: Vec<Target> = vec![
        ("core_cluster", core_cluster::run),
        ("kv_decode", kv_decode::run),
        ("fw_wire", fw_wire::run),
        ("fw_disk", fw_disk::run),
    ];
    #[cfg(feature = "server")]
    v.push(("wal_decode", wal_decode::run));
    v
}

/// Stands in for the firmware's `platform::heap` module, which `wire.rs`
/// names in a compile-time check of its allocation bound against the
/// RISC-V heap. On the host entries are larger, so that check is made at
/// run time instead (see `fw_wire`).
mod platform {
    pub(crate) mod heap {
        pub(crate) const HEAP_BYTES: usize = 3 * crate::fw_wire::wire::DECODE_ALLOC_BOUND_BYTES + 3;
    }
}
