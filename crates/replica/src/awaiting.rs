//! The reads waiting for their read index, by read context.
//!
//! Contexts are handed out in increasing order, so the reads are kept in
//! a deque in that order instead of a `BTreeMap`: a lookup is a binary
//! search, and the usual answer (the oldest read) is removed from the
//! front. In the firmware that spares one `BTreeMap` instantiation with
//! its removal code (about 4 KB of `.text` at `opt-level = "s"`).

use alloc::collections::VecDeque;

use metalraft_core::ReadCtx;

use crate::output::ReqId;

/// Reads waiting for the core's answer, in increasing context order.
pub(crate) struct AwaitingReads<Q> {
    reads: VecDeque<(ReadCtx, ReqId, Q)>,
}

impl<Q> AwaitingReads<Q> {
    /// No reads.
    pub(crate) fn new() -> Self {
        Self {
            reads: VecDeque::new(),
        }
    }

    /// How many reads wait.
    pub(crate) fn len(&self) -> usize {
        self.reads.len()
    }

    /// Adds a read. `ctx` must be above every context added before (the
    /// replica's contexts only grow); a context out of order is refused
    /// (`false`) rather than breaking the order lookups rely on.
    pub(crate) fn push(&mut self, ctx: ReadCtx, req_id: ReqId, query: Q) -> bool {
        if self.reads.back().is_some_and(|&(last, _, _)| last >= ctx) {
            return false;
        }
        self.reads.push_back((ctx, req_id, query));
        true
    }

    /// Removes and returns the read with context `ctx`, if it waits.
    pub(crate) fn take(&mut self, ctx: ReadCtx) -> Option<(ReqId, Q)> {
        let i = self.reads.binary_search_by_key(&ctx, |r| r.0).ok()?;
        self.reads
            .remove(i)
            .map(|(_, req_id, query)| (req_id, query))
    }

    /// Removes every read, in context order.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = (ReqId, Q)> + '_ {
        self.reads
            .drain(..)
            .map(|(_, req_id, query)| (req_id, query))
    }
}

#[cfg(test)]
mod tests {
    use super::AwaitingReads;
    use alloc::vec::Vec;

    #[test]
    fn takes_in_any_order_and_drains_in_context_order() {
        let mut r = AwaitingReads::new();
        for ctx in [1, 2, 5, 9] {
            assert!(r.push(ctx, ctx * 10, ()));
        }
        assert!(!r.push(9, 0, ()), "a repeated context is refused");
        assert!(!r.push(3, 0, ()), "a context out of order is refused");
        assert_eq!(r.take(5), Some((50, ())));
        assert_eq!(r.take(5), None);
        assert_eq!(r.take(3), None);
        assert_eq!(r.take(1), Some((10, ())));
        assert_eq!(r.len(), 2);
        let rest: Vec<u64> = r.drain().map(|(id, ())| id).collect();
        assert_eq!(rest, [20, 90]);
        assert_eq!(r.len(), 0);
    }
}
