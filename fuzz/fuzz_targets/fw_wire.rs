//! `cargo fuzz` target: see `metalraft_fuzz::fw_wire`.
#![no_main]

use metalraft_fuzz::fw_wire::CountingAlloc;

/// The target measures the peer decoder's allocations.
#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| metalraft_fuzz::fw_wire::run(data));
