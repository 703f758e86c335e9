//! `cargo fuzz` target: see `metalraft_fuzz::core_cluster`.
#![no_main]

use metalraft_fuzz::core_cluster::{check, Input};

libfuzzer_sys::fuzz_target!(|input: Input| check(input));
