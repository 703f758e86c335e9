//! Seeds that once failed, pinned with a postmortem each.

use metalraft_sim::{run_seed, Knobs, RunOptions};

/// Runs `seed` with `knobs` and fails with the violation, if any.
fn assert_passes(seed: u64, knobs: Knobs) {
    let r = run_seed(
        seed,
        RunOptions {
            knobs,
            ..RunOptions::default()
        },
    );
    assert!(
        r.violation.is_none(),
        "seed {seed}: {}",
        r.violation.unwrap()
    );
}

/// postmortem: a 7-node cluster with one AppendEntries entry per message
/// ended its safety phase with node 4 about 280 entries behind; catching up
/// at one entry per round trip took longer than the fixed liveness budget,
/// so the liveness checker fired although the cluster was making progress.
/// The simulator's budget (not the core) was wrong: it now adds catch-up
/// time for the most lagging node (`Simulation::liveness_budget_ticks`).
#[test]
fn sim_bug_01_liveness_budget_ignored_catch_up() {
    assert_passes(241, Knobs::default());
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
    assert_passes(
        56,
        Knobs {
            snapshots: true,
            leases: true,
            ..Knobs::default()
        },
    );
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
    assert_passes(
        272,
        Knobs {
            bit_rot: true,
            ..Knobs::default()
        },
    );
}

/// postmortem (core, `KNOWN_CORE_BUGS.md`, "removed servers disrupted a
/// lagging member without pre-vote and check-quorum"): a member 300
/// entries behind on a slow disk, whose configuration still listed two
/// removed nodes as voters, took their terms over and over and deposed the
/// one node that could lead before it could catch the member up: no leader
/// for the whole 10,703-tick budget. Fixed in the core: the lease on votes
/// of thesis §4.2.3 holds with or without check-quorum.
#[test]
fn core_bug_seed_678987180_removed_servers_disrupt_a_lagging_member() {
    for seed in [678_987_180, 700_012_783] {
        assert_passes(seed, Knobs::default());
    }
}

/// postmortem (replica, `KNOWN_CORE_BUGS.md`, "an older snapshot install
/// landing after a newer snapshot of its own"): a late snapshot at 203 was
/// installed by a follower holding entries to 214; before the install was
/// durable the replica applied to 214 and took its own snapshot there,
/// which the older install then replaced: the durable commit index went
/// from 214 back to 203. Fixed in the replica: no snapshot of its own
/// while an install is not durable.
#[test]
fn replica_bug_snapshots_leases_seed_19_install_replaced_a_newer_snapshot() {
    assert_passes(
        19,
        Knobs {
            snapshots: true,
            leases: true,
            ..Knobs::default()
        },
    );
}

/// postmortem (simulator): a new leader of 2 nodes restarted the countdown
/// of 34 leases at its promotion and proposed their 34 revokes together;
/// with one entry per AppendEntries and a follower fsyncing each (3.5–7
/// ms), the 33rd committed 70.7 ms after its deadline, past the lease
/// checker's 70 ms slack, which was sized for one revoke. The checker now
/// counts lateness from the last expiry revoke committed, if later: a
/// draining queue is not late, a stalled one is.
#[test]
fn sim_bug_leases_seed_840002479_a_queue_of_revokes_is_not_late() {
    assert_passes(
        840_002_479,
        Knobs {
            leases: true,
            membership: false,
            ..Knobs::default()
        },
    );
}

/// postmortem (replica, `KNOWN_CORE_BUGS.md`, "a lease revoke refused
/// during a leadership transfer"): leases expired while the leader was
/// transferring leadership; the core refused their revokes and the replica
/// dropped them, so they waited for the lessor's 3 s retry and outlived
/// their deadline past the checker's slack. Fixed in the replica: refused
/// timed commands are proposed again at the next `handle_timeout`.
#[test]
fn replica_bug_leases_seed_860000303_revokes_refused_during_a_transfer() {
    assert_passes(
        860_000_303,
        Knobs {
            leases: true,
            membership: false,
            ..Knobs::default()
        },
    );
}
