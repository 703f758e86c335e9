//! Targeted fault schedules: faults aimed at the moments where Raft
//! implementations break, drawn from the seed on top of the random faults.
//!
//! Random faults rarely land in a window of a few hundred microseconds,
//! such as "a new leader has sent AppendEntries but its term is not yet on
//! disk". A schedule watches the run through hooks (a node became leader, a
//! leader committed its first entry of a term, a batch was written) and
//! fires its fault inside that window. Every seed draws one schedule
//! ([`Schedule::draw`]); it is printed in the `config:` line. The actions
//! themselves are carried out by `sim/targeted.rs`.

use std::fmt;

use crate::config::Time;
use crate::rng::Rng;

/// A stalled fsync takes this many worst-case network round trips more,
/// at least ...
pub const STALL_ROUND_TRIPS_MIN: u64 = 2;
/// ... and at most this many.
pub const STALL_ROUND_TRIPS_MAX: u64 = 8;
/// Most consecutive leaders a term-churn burst strikes.
pub const CHURN_ROUNDS_MAX: u64 = 8;
/// A quick restart (power blip, process restart) comes back after at least
/// this long ...
pub const BLIP_DOWN_US_MIN: Time = 200;
/// ... and at most this many election timeouts (minimum) later, so that
/// the node often campaigns again before its peers time out.
pub const BLIP_DOWN_ELECTION_TIMEOUTS_MAX: u64 = 1;

/// The targeted part of a seed's faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Only the random faults.
    Random,
    /// Power loss while a write is in flight. A candidate's fsync of its
    /// new term may stall (`stall_ppm`). A node that becomes leader while
    /// its term or vote is not yet durable is crashed (with probability
    /// `leader_ppm`) before that write completes: right after it sends its
    /// first AppendEntries with a client entry, or at the last moment
    /// before the write completes. Meanwhile clients turn to it, and often
    /// a random part of its followers cannot hear it, so that only some
    /// hold its entries. Any other synced batch draws such a crash with
    /// probability `batch_ppm`. The node restarts quickly, so it may
    /// campaign again for the same term.
    PowerLoss {
        /// Chance per leadership won with an undurable term.
        leader_ppm: u32,
        /// Chance per synced batch written.
        batch_ppm: u32,
        /// Chance that a candidate's fsync of its new term stalls for
        /// several network round trips (so it may win on its peers' votes
        /// alone and lead before its term is durable).
        stall_ppm: u32,
    },
    /// The leader is crashed (or, with `partition`, isolated from the
    /// others) right after it commits its first entry of a term.
    FirstCommit {
        /// Isolate instead of crash.
        partition: bool,
    },
    /// Rapid term churn (the Raft paper's Figure 8): for bursts of up to
    /// `rounds` consecutive terms, every new leader is crashed within
    /// `delay_us_max` of winning, while its entries are partially
    /// replicated, and restarts quickly.
    TermChurn {
        /// Leaders struck per burst.
        rounds: u64,
        /// Longest delay between winning and the crash.
        delay_us_max: Time,
    },
    /// A new leader receives client requests (reads among them) at once,
    /// before its no-op entry commits.
    ReadBeforeNoop,
    /// A leader with uncommitted entries is asked to hand over leadership
    /// (`chance_ppm` per client proposal it accepts).
    TransferUnderLoad {
        /// Chance per accepted proposal.
        chance_ppm: u32,
    },
}

impl Schedule {
    /// Draws a seed's schedule. Each targeted schedule is about as likely
    /// as the random-only one.
    pub fn draw(r: &mut Rng) -> Schedule {
        match r.range(0, 12) {
            0 | 1 => Schedule::Random,
            2..=4 => Schedule::PowerLoss {
                leader_ppm: r.range(300_000, 1_000_001) as u32,
                batch_ppm: r.range(0, 20_001) as u32,
                stall_ppm: r.range(100_000, 800_001) as u32,
            },
            5 | 6 => Schedule::FirstCommit {
                partition: r.coin(),
            },
            7..=9 => Schedule::TermChurn {
                rounds: r.range(2, CHURN_ROUNDS_MAX + 1),
                delay_us_max: r.range(100, 8_000),
            },
            10 => Schedule::ReadBeforeNoop,
            _ => Schedule::TransferUnderLoad {
                chance_ppm: r.range(20_000, 300_001) as u32,
            },
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Random => write!(f, "random"),
            Schedule::PowerLoss {
                leader_ppm,
                batch_ppm,
                stall_ppm,
            } => write!(
                f,
                "power-loss(leader={leader_ppm}ppm,batch={batch_ppm}ppm,stall={stall_ppm}ppm)"
            ),
            Schedule::FirstCommit { partition: false } => write!(f, "first-commit-crash"),
            Schedule::FirstCommit { partition: true } => write!(f, "first-commit-isolate"),
            Schedule::TermChurn {
                rounds,
                delay_us_max,
            } => write!(f, "term-churn(rounds={rounds},delay<{delay_us_max}us)"),
            Schedule::ReadBeforeNoop => write!(f, "read-before-noop"),
            Schedule::TransferUnderLoad { chance_ppm } => {
                write!(f, "transfer-under-load({chance_ppm}ppm)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schedule_is_drawn_deterministically() {
        let mut kinds = std::collections::BTreeSet::new();
        for seed in 0..300 {
            let a = Schedule::draw(&mut Rng::new(seed));
            assert_eq!(a, Schedule::draw(&mut Rng::new(seed)));
            kinds.insert(a.to_string().split('(').next().unwrap().to_string());
        }
        assert_eq!(kinds.len(), 7, "{kinds:?}");
    }
}
