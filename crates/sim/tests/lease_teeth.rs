//! The lease checker has teeth end to end: a leader whose lease clock runs
//! at twice the speed (leases expire at half their TTL) and a new leader
//! that does not restart the countdowns at its promotion are caught as
//! early expiries, and leaders that never expire a lease as a late one,
//! with a lease violation on the default configuration of the first seeds
//! (each printed with its replay command), while the same seeds pass
//! without the defect.

use metalraft_sim::checkers::{LeaseFault, Violation};
use metalraft_sim::{run_seed, Knobs, RunOptions, RunReport, Sabotage};

/// Seeds tried per defect (the default configuration of each, so that the
/// printed replay command reproduces the run exactly).
const SEEDS: u64 = 6;

fn run(seed: u64, sabotage: Sabotage) -> RunReport {
    let opts = RunOptions {
        sabotage,
        knobs: Knobs {
            leases: true,
            ..Knobs::default()
        },
        ..RunOptions::default()
    };
    run_seed(seed, opts)
}

/// Every seed with `sabotage` either passes (the defect had no chance to
/// show) or fails with a lease violation, and at least `min_caught` fail
/// with `fault`.
fn caught(sabotage: Sabotage, name: &str, fault: LeaseFault, min_caught: usize) {
    let mut n = 0;
    for seed in 0..SEEDS {
        match run(seed, sabotage).violation {
            None => eprintln!("seed {seed}, {sabotage:?}: not caught on this seed"),
            Some(v @ Violation::Lease { fault: f, .. }) => {
                eprintln!(
                    "seed {seed}, {sabotage:?}: {v}\n  replay: cargo run --release -p metalraft-sim -- run --seed {seed} --leases --lease-bug {name} --trace"
                );
                n += usize::from(f == fault);
            }
            Some(other) => panic!("seed {seed}: {sabotage:?} ended in another violation: {other}"),
        }
    }
    assert!(
        n >= min_caught,
        "{sabotage:?}: caught on {n} of {SEEDS} seeds"
    );
}

#[test]
fn honest_leases_pass_and_expire() {
    let (mut expired, mut kept) = (0, 0);
    for seed in 0..SEEDS {
        let r = run(seed, Sabotage::None);
        if let Some(v) = r.violation {
            panic!("seed {seed}: {v}");
        }
        expired += r.stats.lease_expiries;
        kept += r.stats.lease_keepalives;
    }
    assert!(
        expired > 0 && kept > 0,
        "expired {expired}, keepalives {kept}"
    );
}

#[test]
fn expiring_at_half_the_ttl_is_caught() {
    caught(
        Sabotage::LeaseHalfTtl,
        "half-ttl",
        LeaseFault::Early,
        SEEDS as usize / 2,
    );
}

#[test]
fn a_new_leader_that_does_not_restart_the_countdowns_is_caught() {
    caught(
        Sabotage::LeasePromoteFromEpoch,
        "promote-from-epoch",
        LeaseFault::Early,
        SEEDS as usize / 2,
    );
}

#[test]
fn a_leader_that_never_expires_a_lease_is_caught() {
    caught(
        Sabotage::LeaseNeverExpires,
        "never-expire",
        LeaseFault::Late,
        SEEDS as usize / 2,
    );
}
