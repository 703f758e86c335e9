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

/// postmortem (core, `KNOWN_CORE_BUGS.md`, "a member with a stale
/// configuration keeps an election from finishing"): with pre-vote off,
/// after the configuration shrank to `{4}` and grew to `{1, 4}`, removed
/// nodes with stale configurations campaigned alone, one election timeout
/// ahead of node 4, the only node that could win: it learnt each of node
/// 1's terms from node 1's refusal and lost the next race. No leader in
/// the 758-tick budget (elected after 1,360 ticks with a longer one).
/// Fixed in the core (`yield_to_better_candidate`, node/step.rs): a node
/// that refuses a vote only for its term, to a candidate whose log is
/// strictly more up to date, holds its own campaign back.
#[test]
fn core_bug_snapshots_leases_seed_56_stale_candidates_outrun_the_up_to_date_one() {
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
