//! The model checker at the quick bound (runs in `cargo test`), and the
//! deep bound as an ignored test (run it in release, see the README).

use metalraft_model::{props, Bounds, RaftModel, Variant};
use stateright::{Checker, Model};

/// Depth of the snapshot configuration in `cargo test`: the install is
/// reached at 4 steps, so 10 leaves 6 steps of crashes and elections
/// around it.
const SNAPSHOT_CI_DEPTH: usize = 10;
/// Depth of the membership configuration in `cargo test`: the joint
/// change commits and is left at 9 or 10 steps (the least depth at which
/// that reachability property holds).
const MEMBERSHIP_CI_DEPTH: usize = 10;

/// Checks every property of `model`: no safety property is violated and
/// every reachability property is reached.
fn check(model: RaftModel) -> usize {
    let properties = model.properties();
    let checker = model.checker_at_bound().spawn_bfs().join();
    for p in &properties {
        if p.expectation.discovery_is_failure() {
            checker.assert_no_discovery(p.name);
        } else {
            let found = checker.discovery(p.name);
            assert!(found.is_some(), "never reached: {}", p.name);
        }
    }
    checker.unique_state_count()
}

#[test]
fn quick_bound_holds() {
    let states = check(RaftModel::new(Variant::Basic, Bounds::QUICK));
    eprintln!("quick bound: {states} unique states");
    assert!(states > 10_000, "the bound explores something: {states}");
}

/// Power loss, with a shallower depth (the safety properties only: a
/// commit needs 16 steps).
#[test]
fn quick_bound_with_power_loss_holds() {
    let model = RaftModel::new(Variant::Basic, Bounds::QUICK_POWER_LOSS);
    let properties = model.properties();
    let checker = model.checker_at_bound().spawn_bfs().join();
    for p in properties
        .iter()
        .filter(|p| p.expectation.discovery_is_failure())
    {
        checker.assert_no_discovery(p.name);
    }
    eprintln!(
        "quick bound with power loss: {} unique states",
        checker.unique_state_count()
    );
}

/// The snapshot configuration: from a leader that has compacted its log
/// past what node 3 holds, every interleaving of sending, installing and
/// crashing around the snapshot (all properties, including "a follower
/// installs a snapshot").
#[test]
fn snapshot_variant_holds() {
    let bounds = Bounds {
        max_term: 3,
        max_crashes: 1,
        max_snapshots: 2,
        max_log: 4,
        max_depth: SNAPSHOT_CI_DEPTH,
        ..Bounds::QUICK
    };
    let mut model = RaftModel::new(Variant::Snapshot, bounds);
    model.prefix = RaftModel::snapshot_prefix();
    let states = check(model);
    eprintln!("snapshot variant: {states} unique states");
}

/// The membership configuration: from a leader that has just proposed
/// the joint change {1,2,3}→{1,2}, every interleaving of its replication,
/// the automatic leave, a power loss and node 3's campaign (all
/// properties, including "the joint change commits and is left"). Term ≤
/// 2 keeps it quick in a debug build; elections in a later term during
/// the change are the documented `--term 3` command.
#[test]
fn membership_variant_holds() {
    let bounds = Bounds {
        max_term: 2,
        max_crashes: 1,
        max_log: 4,
        max_depth: MEMBERSHIP_CI_DEPTH,
        ..Bounds::QUICK
    };
    let mut model = RaftModel::new(Variant::Membership, bounds);
    model.prefix = RaftModel::joint_prefix();
    let states = check(model);
    eprintln!("membership variant: {states} unique states");
}

/// Depth of the replace configuration in `cargo test`: the joint change
/// commits and is left at 10 steps from [`RaftModel::replace_prefix`].
const REPLACE_CI_DEPTH: usize = 10;

/// The replace configuration: from a leader whose joint change
/// {1,2,3}→{1,2,4} is durable on itself and on the new node 4 (its
/// acknowledgement in flight), every interleaving of committing it (which
/// needs node 2, or nodes 3 and 4), the automatic leave and node 3's
/// campaign (a power loss too is the documented `--crashes 1` command:
/// four times the states). A leader that counted only the incoming
/// configuration would commit with node 4 alone; the documented `--term
/// 3` command finds that in 6 steps (docs/model-checking.md, "Teeth").
#[test]
fn replace_variant_holds() {
    let bounds = Bounds {
        max_term: 2,
        max_crashes: 0,
        max_log: 4,
        max_depth: REPLACE_CI_DEPTH,
        ..Bounds::QUICK
    };
    let mut model = RaftModel::new(Variant::Replace, bounds);
    model.prefix = RaftModel::replace_prefix();
    let states = check(model);
    eprintln!("replace variant: {states} unique states");
}

/// The properties hold in the initial state and are not trivially true:
/// a hand-made bad ghost history fails them.
#[test]
fn properties_can_fail() {
    let model = RaftModel::new(Variant::Basic, Bounds::QUICK);
    let mut s = model.init_states().remove(0);
    assert!(props::election_safety(&s));
    assert!(props::state_machine_safety(&s));
    std::sync::Arc::make_mut(&mut s.ghost)
        .leaders
        .insert(2, vec![1, 1]);
    assert!(!props::election_safety(&s), "one node winning a term twice");
}

#[test]
#[ignore = "minutes in release: cargo test --release -p metalraft-model -- --ignored"]
fn deep_bound_holds() {
    let mut model = RaftModel::new(Variant::Basic, Bounds::DEEP);
    model.prefix = RaftModel::leader_prefix();
    let states = check(model);
    eprintln!("deep bound: {states} unique states");
}
