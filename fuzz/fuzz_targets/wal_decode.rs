//! `cargo fuzz` target: see `metalraft_fuzz::wal_decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| metalraft_fuzz::wal_decode::run(data));
