//! What a leader knows about each follower's log, and the flow control that
//! bounds what it sends (etcd-raft's Progress / Inflights design).
//!
//! ```text
//!            reject / unreachable           snapshot needed (future)
//!  +---------+  <---------------  +-----------+
//!  |  Probe  |                    | Replicate |
//!  +---------+  --------------->  +-----------+
//!   one append per heartbeat        pipelined appends, bounded by Inflights
//!             first successful response
//! ```

use alloc::collections::VecDeque;

use crate::types::{Index, SnapshotMeta};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProgressState {
    /// Next index unknown: send one append at a time and wait.
    Probe,
    /// Next index known: pipeline appends optimistically.
    Replicate,
    /// The entries the follower needs are compacted: send a snapshot.
    Snapshot,
}

/// Appends sent to a follower and not yet acknowledged.
#[derive(Clone, Debug)]
pub(crate) struct Inflights {
    /// (last index in the message, entry bytes in the message)
    queue: VecDeque<(Index, usize)>,
    bytes: usize,
    max_msgs: usize,
    max_bytes: usize,
}

impl Inflights {
    pub(crate) fn new(max_msgs: usize, max_bytes: usize) -> Self {
        Inflights {
            queue: VecDeque::new(),
            bytes: 0,
            max_msgs,
            max_bytes,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub(crate) fn full(&self) -> bool {
        self.queue.len() >= self.max_msgs || self.bytes >= self.max_bytes
    }

    pub(crate) fn add(&mut self, last: Index, bytes: usize) {
        debug_assert!(!self.full());
        self.queue.push_back((last, bytes));
        self.bytes += bytes;
    }

    /// Frees every message whose last index is `<= index`.
    pub(crate) fn free_to(&mut self, index: Index) {
        while let Some(&(last, bytes)) = self.queue.front() {
            if last > index {
                break;
            }
            self.queue.pop_front();
            self.bytes -= bytes;
        }
    }

    pub(crate) fn free_first_one(&mut self) {
        if let Some((_, bytes)) = self.queue.pop_front() {
            self.bytes -= bytes;
        }
    }

    pub(crate) fn reset(&mut self) {
        self.queue.clear();
        self.bytes = 0;
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Progress {
    /// Highest index known to match the leader's log (and be durable there).
    pub(crate) matched: Index,
    /// Next index to send.
    pub(crate) next: Index,
    pub(crate) state: ProgressState,
    /// In Probe: an append was sent and not answered (pause until a response
    /// or the next heartbeat response).
    pub(crate) probe_sent: bool,
    pub(crate) inflights: Inflights,
    /// Heard from in the current check-quorum period.
    pub(crate) recent_active: bool,
    /// In Snapshot: the transfer in progress.
    pub(crate) snapshot: Option<SnapshotSend>,
}

/// A snapshot transfer to one follower (chunked, windowed, go-back-N).
#[derive(Clone, Debug)]
pub(crate) struct SnapshotSend {
    pub(crate) meta: SnapshotMeta,
    /// Next byte to send.
    pub(crate) next_offset: u64,
    /// Bytes the follower acknowledged in order.
    pub(crate) acked: u64,
    /// `acked` at the previous heartbeat answer (to detect a stall).
    pub(crate) acked_at_last_beat: u64,
    /// End offsets of chunks sent and not acknowledged.
    pub(crate) inflight: VecDeque<u64>,
    /// The last chunk was sent (and may be unacknowledged).
    pub(crate) done_sent: bool,
}

impl SnapshotSend {
    pub(crate) fn new(meta: SnapshotMeta) -> Self {
        SnapshotSend {
            meta,
            next_offset: 0,
            acked: 0,
            acked_at_last_beat: 0,
            inflight: VecDeque::new(),
            done_sent: false,
        }
    }

    /// Go back to the last acknowledged byte and resend from there.
    pub(crate) fn rewind(&mut self) {
        self.next_offset = self.acked;
        self.inflight.clear();
        self.done_sent = false;
    }

    pub(crate) fn ack(&mut self, received: u64) {
        if received < self.acked {
            // The follower lost its partial state (e.g. it restarted).
            self.acked = received;
            self.rewind();
            return;
        }
        self.acked = received;
        while self.inflight.front().is_some_and(|&end| end <= received) {
            self.inflight.pop_front();
        }
    }
}

impl Progress {
    pub(crate) fn new(next: Index, max_msgs: usize, max_bytes: usize) -> Self {
        Progress {
            matched: 0,
            next,
            state: ProgressState::Probe,
            probe_sent: false,
            inflights: Inflights::new(max_msgs, max_bytes),
            recent_active: false,
            snapshot: None,
        }
    }

    pub(crate) fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(),
            ProgressState::Snapshot => true,
        }
    }

    pub(crate) fn become_snapshot(&mut self, meta: SnapshotMeta) {
        self.state = ProgressState::Snapshot;
        self.probe_sent = false;
        self.inflights.reset();
        self.snapshot = Some(SnapshotSend::new(meta));
    }

    pub(crate) fn become_probe(&mut self) {
        self.snapshot = None;
        self.state = ProgressState::Probe;
        self.next = self.matched + 1;
        self.probe_sent = false;
        self.inflights.reset();
    }

    pub(crate) fn become_replicate(&mut self) {
        self.snapshot = None;
        self.state = ProgressState::Replicate;
        self.next = self.matched + 1;
        self.probe_sent = false;
        self.inflights.reset();
    }

    /// A successful response up to `index`. Returns false if it is stale
    /// (a reordered or duplicated response carries a lower index).
    pub(crate) fn maybe_update(&mut self, index: Index) -> bool {
        let updated = index > self.matched;
        if updated {
            self.matched = index;
            self.probe_sent = false;
        }
        self.next = self.next.max(index + 1);
        updated
    }

    /// A rejection of an append at `rejected` (its prev index). `hint` is the
    /// index the leader should retry after. Returns false if stale.
    /// `lost`: the follower says it may lack entries it acknowledged
    /// ([`crate::RejectHint::is_lost_entries`]).
    pub(crate) fn maybe_decr_to(&mut self, rejected: Index, hint: Index, lost: bool) -> bool {
        match self.state {
            ProgressState::Replicate => {
                // Only with nothing in flight: a marked rejection at
                // `matched` may be a stale one, sent for an append that
                // overtook an earlier one before the follower acknowledged
                // `matched`; while appends are in flight, the follower's
                // rejections of them (above `matched`) lead to Probe and
                // the lost entries are found there. An idle leader has
                // nothing in flight once everything is acknowledged, and
                // one that is behind probes on every heartbeat response.
                if lost
                    && rejected == self.matched
                    && hint < self.matched
                    && self.inflights.is_empty()
                {
                    self.lost_entries(hint);
                    return true;
                }
                // Only a rejection of what we actually sent is meaningful:
                // anything at or below `matched` is a stale response.
                if rejected <= self.matched {
                    return false;
                }
                self.next = self.matched + 1;
                true
            }
            ProgressState::Probe => {
                // In Probe only the latest append (at next - 1) is outstanding.
                if self.next == 0 || rejected != self.next - 1 {
                    return false;
                }
                if lost && rejected == self.matched && hint < self.matched {
                    self.lost_entries(hint);
                    return true;
                }
                self.next = rejected.min(hint.saturating_add(1)).max(self.matched + 1);
                self.probe_sent = false;
                true
            }
            // A snapshot is on its way; rejections of older appends are stale.
            ProgressState::Snapshot => false,
        }
    }

    /// A repairing follower's rejection at exactly `matched` with a hint
    /// below it: it no longer holds what it acknowledged (it repaired a
    /// damaged log and kept a shorter prefix, ADR 0021; it also says so on
    /// a heartbeat whose commit index it lacks). Backing off never goes
    /// below `matched`, so forget it and probe from the hint. Safe: the
    /// follower abstains from votes until it has caught up, and a lower
    /// `matched` only delays commits. Only hints marked
    /// [`crate::RejectHint::is_lost_entries`] do this, so a reordered
    /// ordinary rejection stays a stale response.
    fn lost_entries(&mut self, hint: Index) {
        self.snapshot = None;
        self.state = ProgressState::Probe;
        self.matched = 0;
        self.next = hint.saturating_add(1);
        self.probe_sent = false;
        self.inflights.reset();
    }

    /// Records an append of entries up to `last` (of `bytes` bytes).
    pub(crate) fn sent_entries(&mut self, last: Index, bytes: usize) {
        match self.state {
            ProgressState::Replicate => {
                self.next = last + 1;
                self.inflights.add(last, bytes);
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A follower in Replicate with `matched` 10 and appends up to `sent`
    /// in flight.
    fn replicating(sent: Index) -> Progress {
        let mut pr = Progress::new(1, 256, usize::MAX);
        assert!(pr.maybe_update(10));
        pr.become_replicate();
        for i in 11..=sent {
            pr.sent_entries(i, 1);
        }
        pr
    }

    #[test]
    fn a_lost_entries_rejection_at_matched_resets_only_with_nothing_in_flight() {
        // Idle: the follower says it lost what it acknowledged.
        let mut pr = replicating(10);
        assert!(pr.maybe_decr_to(10, 4, true));
        assert_eq!(
            (pr.state, pr.matched, pr.next),
            (ProgressState::Probe, 0, 5)
        );
        // Appends in flight: a marked rejection at `matched` may be a stale
        // one (sent before the follower acknowledged `matched`, for an
        // append that overtook an earlier one): ignored, as an unmarked one.
        let mut pr = replicating(20);
        assert!(!pr.maybe_decr_to(10, 9, true));
        assert_eq!(
            (pr.state, pr.matched, pr.next),
            (ProgressState::Replicate, 10, 21)
        );
        // A rejection of an append in flight (above `matched`) leads to
        // Probe at `matched + 1`, where the loss is found.
        assert!(pr.maybe_decr_to(15, 9, true));
        pr.become_probe();
        assert_eq!((pr.matched, pr.next), (10, 11));
        assert!(pr.maybe_decr_to(10, 9, true));
        assert_eq!(
            (pr.state, pr.matched, pr.next),
            (ProgressState::Probe, 0, 10)
        );
    }
}
