//! Seeds that once failed, pinned with a postmortem each.

use metalraft_sim::{run_seed, Knobs, RunOptions};

/// postmortem: a 7-node cluster with one AppendEntries entry per message
/// ended its safety phase with node 4 about 280 entries behind; catching up
/// at one entry per round trip took longer than the fixed liveness budget,
/// so the liveness checker fired although the cluster was making progress.
/// The simulator's budget (not the core) was wrong: it now adds catch-up
/// time for the most lagging node (`Simulation::liveness_budget_ticks`).
#[test]
fn sim_bug_01_liveness_budget_ignored_catch_up() {
    let r = run_seed(241, RunOptions::default());
    assert!(r.violation.is_none(), "{}", r.violation.unwrap());
}

/// Open (core, `KNOWN_CORE_BUGS.md`, "a member with a stale configuration
/// keeps an election from finishing"): with pre-vote off, after the
/// configuration shrank to one voter and grew again, no leader is elected
/// in the liveness phase. Run with `--ignored` once the core is fixed.
#[test]
#[ignore = "open core liveness bug, see KNOWN_CORE_BUGS.md"]
fn core_open_snapshots_seed_56_no_leader_after_membership_changes() {
    let opts = RunOptions {
        knobs: Knobs {
            snapshots: true,
            leases: true,
            ..Knobs::default()
        },
        ..RunOptions::default()
    };
    let r = run_seed(56, opts);
    assert!(r.violation.is_none(), "{}", r.violation.unwrap());
}

/// postmortem (core, `KNOWN_CORE_BUGS.md`, "reordered lost-entries
/// rejections made the leader restart a repairing follower's catch-up"):
/// with bit rot, a follower repairing 660 lost entries over a reordering
/// link drew stale lost-entries rejections that reset the leader's
/// progress for it again and again, until the event cap (a livelock).
/// Fixed in `Progress::maybe_decr_to`: such a rejection resets only while
/// nothing is in flight.
#[test]
fn core_bug_bit_rot_seed_272_stale_lost_entries_rejections_livelock() {
    let opts = RunOptions {
        knobs: Knobs {
            bit_rot: true,
            ..Knobs::default()
        },
        ..RunOptions::default()
    };
    let r = run_seed(272, opts);
    assert!(r.violation.is_none(), "{}", r.violation.unwrap());
}
