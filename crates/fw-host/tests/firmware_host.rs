//! The firmware workspace's host-tested crates, run from this workspace's
//! `cargo test` (the firmware is its own workspace, built for RISC-V): the
//! wire formats, and the storage with the order in which the Raft task
//! carries out a replica output — including `held_messages`, which shows
//! that no message leaves a node before the flush it depends on (issue 12).

#[test]
fn firmware_host_tests_pass() {
    metalraft_fw::firmware::host_tests().expect("the firmware's host tests");
}
