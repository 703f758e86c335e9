//! Same seed, same code: the same trace, byte for byte.

use metalraft_sim::{run_seed, RunOptions};

#[test]
fn same_seed_gives_byte_identical_trace() {
    let opts = RunOptions {
        trace: true,
        timeline: true,
        ..RunOptions::default()
    };
    for seed in [3, 42] {
        let a = run_seed(seed, opts);
        let b = run_seed(seed, opts);
        let (ta, tb) = (a.trace.as_deref().unwrap(), b.trace.as_deref().unwrap());
        assert!(ta.len() > 1_000, "a real trace for seed {seed}");
        assert_eq!(ta, tb, "seed {seed}: traces differ");
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.history, b.history);
        assert_eq!(a.stats, b.stats);
        // Tracing does not change the run.
        let quiet = run_seed(seed, RunOptions::default());
        assert_eq!(quiet.fingerprint, a.fingerprint);
    }
}

#[test]
fn different_seeds_give_different_runs() {
    let fps: std::collections::BTreeSet<u64> = (0..20)
        .map(|s| run_seed(s, RunOptions::default()).fingerprint)
        .collect();
    assert_eq!(fps.len(), 20);
}

#[test]
fn membership_runs_are_deterministic_too() {
    let opts = RunOptions {
        trace: true,
        knobs: metalraft_sim::Knobs { membership: true },
        ..RunOptions::default()
    };
    let a = run_seed(72, opts);
    let b = run_seed(72, opts);
    assert!(a.stats.conf_changes > 0, "seed 72 changes membership");
    assert_eq!(a.trace, b.trace);
    assert_ne!(
        a.fingerprint,
        run_seed(72, RunOptions::default()).fingerprint
    );
}
