//! The watch checker has teeth end to end: watchers that skip an event,
//! deliver one twice, resume at their last revision instead of last + 1,
//! or read a store whose history replay drops a key are caught, while the
//! same runs without the defect pass.
//!
//! Every run here has two watchers over every key (one from a past
//! revision with small batches, one from "now"), background writes and
//! compactions, and streams that break often, so each defect has plenty
//! of chances to show.

use metalraft_sim::checkers::{Violation, WatchFault};
use metalraft_sim::config::{WatchRange, WatchStart, WatcherSpec, TICK_US_NOMINAL};
use metalraft_sim::{RunOptions, Sabotage, SimConfig, Simulation};

/// Seeds tried per defect.
const SEEDS: u64 = 8;
/// Safety phase of these runs (shorter than the swarm's, to keep tests fast).
const SAFETY_TICKS: u64 = 400;

fn config(seed: u64) -> SimConfig {
    let mut cfg = SimConfig::from_seed(seed);
    cfg.safety_ticks = SAFETY_TICKS;
    let w = &mut cfg.watch;
    w.watchers = vec![
        WatcherSpec {
            range: WatchRange::Prefix(b"/sim/".to_vec()),
            start: WatchStart::Past(10),
            batch_max: 2,
            poll_us: 700,
            created_us: 0,
        },
        WatcherSpec {
            range: WatchRange::FromKey(b"/sim/k0".to_vec()),
            start: WatchStart::Now,
            batch_max: 16,
            poll_us: 2 * TICK_US_NOMINAL,
            created_us: 50 * TICK_US_NOMINAL,
        },
    ];
    w.break_ppm = 30_000;
    w.background_gap_us_mean = 10 * TICK_US_NOMINAL;
    w.compact_retention_revisions_max = 20;
    cfg
}

fn run(seed: u64, sabotage: Sabotage) -> Option<Violation> {
    let opts = RunOptions {
        sabotage,
        ..RunOptions::default()
    };
    Simulation::new(config(seed), opts).run().violation
}

/// Runs every seed with `sabotage`: each must fail with a watch violation,
/// and at least one with `fault`.
fn caught(sabotage: Sabotage, fault: WatchFault) {
    let mut seen = Vec::new();
    for seed in 0..SEEDS {
        match run(seed, sabotage) {
            Some(v @ Violation::Watch { fault: f, .. }) => {
                eprintln!("seed {seed}, {sabotage:?}: {v}");
                seen.push(f);
            }
            other => panic!("seed {seed}: {sabotage:?} went unnoticed: {other:?}"),
        }
    }
    assert!(seen.contains(&fault), "{sabotage:?}: {seen:?}");
}

#[test]
fn honest_watchers_pass() {
    for seed in 0..SEEDS {
        if let Some(v) = run(seed, Sabotage::None) {
            panic!("seed {seed}: {v}");
        }
    }
}

#[test]
fn a_watcher_that_skips_an_event_is_caught() {
    caught(Sabotage::WatchSkipsEvent, WatchFault::Gap);
}

#[test]
fn a_duplicate_delivery_is_caught() {
    caught(Sabotage::WatchDuplicatesEvent, WatchFault::Duplicate);
}

#[test]
fn resuming_at_the_last_revision_instead_of_last_plus_one_is_caught() {
    caught(Sabotage::WatchResumesAtLast, WatchFault::Duplicate);
}

#[test]
fn a_history_replay_that_drops_a_key_is_caught() {
    caught(Sabotage::HistoryDropsKey, WatchFault::Gap);
}
