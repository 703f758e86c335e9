//! The leader's compaction floor while a follower is caught up by
//! snapshot (issue 18, ADR 0028): the lowest catch-up floor over the last
//! check-quorum periods, so the log keeps the entries after the snapshot a
//! follower just installed.
//!
//! A pure decision; the Raft loop ([`crate::raft_loop`]) carries it out.

use std::collections::VecDeque;

/// Check-quorum periods over which the lowest catch-up floor is kept.
pub const FLOOR_WINDOW_PERIODS: u64 = 2;

/// The lowest of the core's [`catch_up_floor`](metalraft_core::Node::catch_up_floor)
/// over the last [`FLOOR_WINDOW_PERIODS`] check-quorum periods, one sample
/// per tick.
///
/// Why a window: the core counts a follower that is not in a snapshot
/// transfer only if it was heard from in the current check-quorum period,
/// and it clears that mark for every follower at the tick that starts a
/// period. Read right after that tick, the floor ignores every follower
/// until each answers again; a new member that has just installed a
/// snapshot (in `Probe`, busy applying the first appends) is then not
/// counted and the log was compacted past it, which sent it a second
/// whole snapshot (issue 18, the 23:15 run of the "received snapshot saved
/// during its restore" section). A follower that is alive answers at least
/// once per period, so the lowest floor over two periods always counts it;
/// a dead one stops counting after two periods (and the log is bounded by
/// [`crate::raft_loop::LOG_HOLD_MAX_BYTES`] meanwhile).
#[derive(Debug)]
pub struct FloorWindow {
    samples: VecDeque<Option<u64>>,
    len: usize,
}

impl FloorWindow {
    /// A window of [`FLOOR_WINDOW_PERIODS`] periods of `period_ticks` ticks.
    pub fn new(period_ticks: u64) -> Self {
        let len = usize::try_from(period_ticks.max(1).saturating_mul(FLOOR_WINDOW_PERIODS))
            .unwrap_or(usize::MAX);
        FloorWindow {
            samples: VecDeque::new(),
            len,
        }
    }

    /// Records one tick's floor, forgetting the oldest beyond the window.
    pub fn push(&mut self, floor: Option<u64>) {
        if self.samples.len() >= self.len {
            self.samples.pop_front();
        }
        self.samples.push_back(floor);
    }

    /// The lowest of `now` and the floors in the window.
    pub fn floor(&self, now: Option<u64>) -> Option<u64> {
        self.samples.iter().copied().chain([now]).flatten().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 23:15 run's sequence: the new member installed snapshot 4774
    /// (Probe, heard from), then a check-quorum period starts and the core
    /// forgets it was heard from until it answers again; the saved
    /// snapshot 7652 would compact to 6652.
    #[test]
    fn the_floor_survives_the_tick_that_starts_a_check_quorum_period() {
        let mut w = FloorWindow::new(10);
        for _ in 0..5 {
            w.push(Some(4774));
        }
        // The period starts: the core's floor is None until the member
        // answers (the other followers are caught up).
        w.push(None);
        assert_eq!(w.floor(None), Some(4774));
        // 20 samples in the window: the last 4774 leaves after 19 more.
        for _ in 0..18 {
            w.push(None);
        }
        assert_eq!(w.floor(None), Some(4774), "within two periods");
        // Two periods without hearing from it: it no longer holds the log.
        w.push(None);
        assert_eq!(w.floor(None), None);
        // The current floor always counts.
        assert_eq!(w.floor(Some(9000)), Some(9000));
    }
}
