//! The checkers have teeth end to end: a deliberately broken realization
//! (a disk that acknowledges writes before they are durable, reads served
//! from a node's local state outside the log) is caught by the swarm.

use metalraft_sim::checkers::Violation;
use metalraft_sim::{run_seed, RunOptions, Sabotage};

/// Seeds tried per defect; each defect must be caught within them.
const SEEDS: u64 = 60;

fn violations(sabotage: Sabotage) -> Vec<(u64, Violation)> {
    let opts = RunOptions {
        sabotage,
        ..RunOptions::default()
    };
    (0..SEEDS)
        .filter_map(|s| run_seed(s, opts).violation.map(|v| (s, v)))
        .collect()
}

#[test]
fn honest_runs_pass() {
    for s in 0..SEEDS / 4 {
        let r = run_seed(s, RunOptions::default());
        assert!(r.violation.is_none(), "seed {s}: {}", r.violation.unwrap());
    }
}

#[test]
fn lying_fsync_is_caught() {
    let v = violations(Sabotage::AckBeforeSync);
    assert!(
        !v.is_empty(),
        "a disk that acknowledges before syncing went unnoticed"
    );
    assert!(
        v.iter()
            .any(|(_, v)| matches!(v, Violation::PromiseNotDurable { .. })),
        "the persistence rule checker fires: {v:?}"
    );
}

#[test]
fn reads_outside_the_log_are_caught() {
    let v = violations(Sabotage::LocalReads);
    assert!(
        v.iter()
            .any(|(_, v)| matches!(v, Violation::NotLinearizable { .. })),
        "stale local reads went unnoticed: {v:?}"
    );
}
