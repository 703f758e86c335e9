//! `cargo fuzz` target: see `metalraft_fuzz::fw_disk`.
#![no_main]

use metalraft_fuzz::fw_disk::{check, Input};

libfuzzer_sys::fuzz_target!(|input: Input| check(input));
