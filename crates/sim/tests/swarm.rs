//! A small fixed swarm inside `cargo test` (the CI-sized one runs through
//! the CLI in release mode; see the README).

use metalraft_sim::swarm::{run_swarm, SwarmOptions};

#[test]
fn small_fixed_swarm_passes_and_is_independent_of_thread_count() {
    let run = |jobs| {
        run_swarm(
            &SwarmOptions {
                seeds: 100..108,
                jobs,
                time_limit: None,
                knobs: Default::default(),
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
