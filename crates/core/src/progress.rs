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

use crate::types::Index;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProgressState {
    /// Next index unknown: send one append at a time and wait.
    Probe,
    /// Next index known: pipeline appends optimistically.
    Replicate,
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
        }
    }

    pub(crate) fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(),
        }
    }

    pub(crate) fn become_probe(&mut self) {
        self.state = ProgressState::Probe;
        self.next = self.matched + 1;
        self.probe_sent = false;
        self.inflights.reset();
    }

    pub(crate) fn become_replicate(&mut self) {
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
    pub(crate) fn maybe_decr_to(&mut self, rejected: Index, hint: Index) -> bool {
        match self.state {
            ProgressState::Replicate => {
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
                self.next = rejected.min(hint.saturating_add(1)).max(self.matched + 1);
                self.probe_sent = false;
                true
            }
        }
    }

    /// Records an append of entries up to `last` (of `bytes` bytes).
    pub(crate) fn sent_entries(&mut self, last: Index, bytes: usize) {
        match self.state {
            ProgressState::Replicate => {
                self.next = last + 1;
                self.inflights.add(last, bytes);
            }
            ProgressState::Probe => self.probe_sent = true,
        }
    }
}
