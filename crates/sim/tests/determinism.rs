//! Same seed, same code: the same trace, byte for byte.

use metalraft_sim::{Knobs, RunOptions, RunReport, SimConfig, Simulation};

/// Safety phase of these runs (shorter than the swarm's: debug-mode tests).
const SAFETY_TICKS: u64 = 600;

fn short(seed: u64, opts: RunOptions) -> RunReport {
    let mut c = SimConfig::from_seed_with(seed, opts.knobs);
    c.safety_ticks = SAFETY_TICKS;
    Simulation::new(c, opts).run()
}

#[test]
fn same_seed_gives_byte_identical_trace() {
    let opts = RunOptions {
        trace: true,
        timeline: true,
        ..RunOptions::default()
    };
    for seed in [3, 42] {
        let a = short(seed, opts);
        let b = short(seed, opts);
        let (ta, tb) = (a.trace.as_deref().unwrap(), b.trace.as_deref().unwrap());
        assert!(ta.len() > 1_000, "a real trace for seed {seed}");
        assert_eq!(ta, tb, "seed {seed}: traces differ");
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.history, b.history);
        assert_eq!(a.stats, b.stats);
        // Tracing does not change the run.
        let quiet = short(seed, RunOptions::default());
        assert_eq!(quiet.fingerprint, a.fingerprint);
    }
}

#[test]
fn different_seeds_give_different_runs() {
    let fps: std::collections::BTreeSet<u64> = (0..10)
        .map(|s| short(s, RunOptions::default()).fingerprint)
        .collect();
    assert_eq!(fps.len(), 10);
}

#[test]
fn membership_and_snapshot_runs_are_deterministic_too() {
    let opts = RunOptions {
        trace: true,
        knobs: Knobs {
            membership: true,
            snapshots: true,
            leases: false,
            ..Knobs::default()
        },
        ..RunOptions::default()
    };
    let (a, b) = (short(76, opts), short(76, opts));
    assert!(a.stats.conf_changes > 0, "seed 76 changes membership");
    let t = a.trace.as_deref().unwrap();
    assert!(t.contains("snapshot taken"), "seed 76 takes snapshots");
    assert_eq!(a.trace, b.trace);
    assert!(a.violation.is_none(), "{:?}", a.violation);
}
