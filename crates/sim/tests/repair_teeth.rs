//! The repair checker has teeth end to end: with bit rot (`--bit-rot`), a
//! node that restarts after mid-log damage without the core's vote barrier
//! (`Config::vote_barrier`, ADR 0021) grants votes while it lacks entries
//! it had acknowledged, and the checker reports it (each caught seed is
//! printed with its replay command); the same seeds pass with the barrier,
//! and repair every damaged node.

use metalraft_sim::checkers::Violation;
use metalraft_sim::{run_seed, Knobs, RunOptions, RunReport, Sabotage};

/// Seeds tried (the default configuration of each, so that the printed
/// replay command reproduces the run exactly).
const SEEDS: u64 = 10;

fn run(seed: u64, sabotage: Sabotage) -> RunReport {
    let opts = RunOptions {
        sabotage,
        knobs: Knobs {
            torn_sectors: true,
            bit_rot: true,
            ..Knobs::default()
        },
        ..RunOptions::default()
    };
    run_seed(seed, opts)
}

#[test]
fn damaged_nodes_repair_from_their_peers_and_never_vote_on_lost_entries() {
    let (mut damaged, mut repaired, mut after_gap) = (0, 0, 0);
    for seed in 0..SEEDS {
        let r = run(seed, Sabotage::None);
        if let Some(v) = r.violation {
            panic!("seed {seed}: {v}");
        }
        damaged += r.stats.repairs_found;
        repaired += r.stats.repairs_done;
        after_gap += r.stats.torn_frames_after_gap;
    }
    assert!(damaged > 0, "some seeds damage a durable frame");
    assert_eq!(
        repaired, damaged,
        "every damaged node got its lost entries back"
    );
    assert!(after_gap > 0, "some torn crashes keep a frame after a gap");
}

#[test]
fn a_node_without_the_vote_barrier_is_caught_voting_on_lost_entries() {
    let mut caught = 0;
    for seed in 0..SEEDS {
        match run(seed, Sabotage::NoVoteBarrier).violation {
            None => eprintln!("seed {seed}: not caught on this seed"),
            Some(v @ (Violation::VoteWhileRepairing { .. } | Violation::AckOfLostEntry { .. })) => {
                eprintln!(
                    "seed {seed}: {v}\n  replay: cargo run --release -p metalraft-sim -- run --seed {seed} --torn-sectors --bit-rot --no-vote-barrier --trace"
                );
                caught += 1;
            }
            Some(other) => panic!("seed {seed}: ended in another violation: {other}"),
        }
    }
    assert!(caught >= 3, "caught on {caught} of {SEEDS} seeds");
}
