//! `cargo fuzz` target: see `metalraft_fuzz::kv_decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| metalraft_fuzz::kv_decode::run(data));
