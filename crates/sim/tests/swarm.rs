//! A small fixed swarm inside `cargo test` (the CI-sized one runs through
//! the CLI in release mode; see the README).

use metalraft_sim::swarm::{panic_violation, run_swarm, SwarmOptions};
use metalraft_sim::Sabotage;

#[test]
fn small_fixed_swarm_passes_and_is_independent_of_thread_count() {
    let run = |jobs| {
        run_swarm(
            &SwarmOptions {
                seeds: 100..108,
                jobs,
                time_limit: None,
                knobs: Default::default(),
                sabotage: Sabotage::None,
            },
            |_, _| {},
        )
    };
    let one = run(1);
    assert!(one.failures.is_empty(), "{:?}", one.failures);
    assert_eq!(one.seeds, 8);
    assert!(one.stats.deliveries > 0 && one.stats.faults() > 0 && one.ops_checked > 0);
    let two = run(2);
    assert_eq!(
        one.fingerprint, two.fingerprint,
        "the summary does not depend on scheduling"
    );
    assert_eq!(one.stats.deliveries, two.stats.deliveries);
}

#[test]
fn a_panicking_seed_is_reported_and_the_swarm_goes_on() {
    // Every run panics at its start; none may take the swarm down, and each
    // is reported under its own seed.
    let s = run_swarm(
        &SwarmOptions {
            seeds: 40..43,
            jobs: 2,
            time_limit: None,
            knobs: Default::default(),
            sabotage: Sabotage::Panic,
        },
        |_, _| {},
    );
    assert_eq!(s.seeds, 3);
    let seeds: Vec<u64> = s.failures.iter().map(|(seed, _)| *seed).collect();
    assert_eq!(seeds, vec![40, 41, 42]);
    for (seed, v) in &s.failures {
        let msg = format!("sabotage: a deliberate panic in seed {seed}");
        assert_eq!(*v, panic_violation(&msg));
    }
}
