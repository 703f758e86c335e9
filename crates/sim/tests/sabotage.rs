//! The checkers have teeth end to end: a deliberately broken realization
//! (a disk that acknowledges writes before they are durable, reads served
//! from a node's local state outside the log) is caught by the simulator.

use metalraft_sim::checkers::Violation;
use metalraft_sim::{RunOptions, RunReport, Sabotage, SimConfig, Simulation};

/// Seeds tried per defect; each defect must be caught within them.
const SEEDS: u64 = 24;
/// Safety phase of these runs (shorter than the swarm's, to keep tests fast).
const SAFETY_TICKS: u64 = 400;

fn run_report(seed: u64, sabotage: Sabotage) -> RunReport {
    let mut cfg = SimConfig::from_seed(seed);
    cfg.safety_ticks = SAFETY_TICKS;
    let opts = RunOptions {
        sabotage,
        ..RunOptions::default()
    };
    Simulation::new(cfg, opts).run()
}

fn run(seed: u64, sabotage: Sabotage) -> Option<Violation> {
    run_report(seed, sabotage).violation
}

fn violations(sabotage: Sabotage) -> Vec<(u64, Violation)> {
    (0..SEEDS)
        .filter_map(|s| run(s, sabotage).map(|v| (s, v)))
        .collect()
}

#[test]
fn honest_runs_pass() {
    for s in 0..SEEDS {
        if let Some(v) = run(s, Sabotage::None) {
            panic!("seed {s}: {v}");
        }
    }
}

#[test]
fn lying_fsync_is_caught() {
    let v = violations(Sabotage::AckBeforeSync);
    assert!(
        v.iter().any(|(_, v)| matches!(
            v,
            Violation::PromiseNotDurable { .. } | Violation::VoteNotDurable { .. }
        )),
        "a disk that acknowledges before syncing went unnoticed: {v:?}"
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

/// A livelock (traffic that grows without bound while nothing finishes)
/// fails fast with a liveness verdict instead of running to the hard event
/// cap: the swarm once spent 9 minutes on such seeds.
#[test]
fn a_livelock_fails_fast() {
    let start = std::time::Instant::now();
    let r = run_report(3, Sabotage::Storm);
    let v = r.violation.expect("a livelock is a failure");
    assert!(
        matches!(&v, Violation::Liveness { what } if what.contains("livelock")),
        "{v}"
    );
    assert!(
        r.stats.events < metalraft_sim::config::EVENTS_MAX / 4,
        "caught early: {} events",
        r.stats.events
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(30));
}
