//! Watch: each watcher's concatenated events are exactly the committed
//! history, filtered by its key range, from its start revision on — no
//! gap, no duplicate, in revision order, each revision whole (etcd's
//! "ordered, unique, reliable, atomic, resumable" API guarantees).
//!
//! The checker sees what a watch client sees: responses, each with its
//! events and the revision the stream has caught up to (the response
//! header: every change below `next_revision` in range has been sent), or
//! a cancellation because the requested revision was compacted. It judges
//! them against the [`ReferenceHistory`], never against the store that
//! served them:
//!
//! - a response must hold exactly the reference's changes in range with a
//!   revision from where the watcher stands (every earlier revision is
//!   accounted for) up to its `next_revision`, so a revision is never split
//!   across responses, and nothing is skipped or repeated;
//! - a compaction cancel is allowed only if a compaction to its
//!   `compact_revision` was committed and the requested revision is below
//!   it; the watcher then restarts from the compact revision, and the
//!   revisions in between are a recorded, allowed hole (etcd: "the watcher
//!   must re-watch from `compact_revision`");
//! - at the end of a run that recovered, every watcher has caught up with
//!   the newest committed revision.

use metalraft_core::NodeId;
use metalraft_kv::Change;

use super::mvcc_history::{describe_one, ReferenceHistory};
use super::Violation;

/// What is wrong with a watcher's stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchFault {
    /// A committed change in range is missing.
    Gap,
    /// A change was delivered twice (in one response or across a resume).
    Duplicate,
    /// Changes out of revision order.
    OutOfOrder,
    /// A change at or beyond the revision the response says it reached: a
    /// revision split across responses, or progress claimed too early.
    SplitRevision,
    /// A change that is not the committed one (content, kind, prev_kv), or
    /// progress beyond the committed history.
    Wrong,
    /// A compaction cancel without a committed compaction covering the
    /// requested revision.
    BadCancel,
    /// The run recovered but the watcher never caught up.
    Incomplete,
}

/// One watcher's stream, as far as it has been verified.
#[derive(Clone, Debug)]
struct Stream {
    key: Vec<u8>,
    range_end: Vec<u8>,
    /// Every committed change in range below this revision has been
    /// delivered exactly once (or lies in a compaction hole).
    next: i64,
    /// Events delivered.
    events: u64,
    /// Compaction holes `[from, to)` the watcher skipped after a cancel.
    holes: Vec<(i64, i64)>,
}

/// The streams of every watcher of a run.
#[derive(Clone, Debug, Default)]
pub struct WatchChecker {
    streams: Vec<Option<Stream>>,
}

impl WatchChecker {
    /// A checker for `watchers` watchers, none created yet.
    pub fn new(watchers: usize) -> Self {
        WatchChecker {
            streams: vec![None; watchers],
        }
    }

    /// Watcher `w` was created on the key range `[key, range_end)` from
    /// revision `start` (resolved: "now" is the serving node's revision + 1).
    pub fn created(&mut self, w: usize, key: &[u8], range_end: &[u8], start: i64) {
        assert!(self.streams[w].is_none(), "watcher {w} created twice");
        self.streams[w] = Some(Stream {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            next: start.max(1),
            events: 0,
            holes: Vec::new(),
        });
    }

    /// Events delivered to all watchers.
    pub fn events(&self) -> u64 {
        self.streams.iter().flatten().map(|s| s.events).sum()
    }

    /// The compaction holes of watcher `w`.
    pub fn holes(&self, w: usize) -> &[(i64, i64)] {
        self.streams[w].as_ref().map_or(&[], |s| &s.holes)
    }

    /// Where watcher `w` stands: every change below it has been checked.
    pub fn next(&self, w: usize) -> Option<i64> {
        self.streams[w].as_ref().map(|s| s.next)
    }

    /// Watcher `w` received a response from `node`: `events`, and every
    /// change in range below `next_revision` sent.
    pub fn observe_response(
        &mut self,
        w: usize,
        node: NodeId,
        reference: &ReferenceHistory,
        events: &[Change],
        next_revision: i64,
    ) -> Result<(), Violation> {
        let s = self.streams[w]
            .as_mut()
            .expect("a response on a created watcher");
        let fail = |fault, revision, what: String| {
            Err(Violation::Watch {
                watcher: w,
                node,
                fault,
                revision,
                what,
            })
        };
        // A watcher that starts in the future is answered "nothing yet,
        // continue from your start": only progress beyond it is a claim.
        if next_revision > s.next && next_revision > reference.revision() + 1 {
            return fail(
                WatchFault::Wrong,
                next_revision,
                format!(
                    "stream claims every change below revision {next_revision}; the committed history ends at {}",
                    reference.revision()
                ),
            );
        }
        let lo = s.next;
        let hi = next_revision.max(lo);
        let want: Vec<&Change> = reference.filtered(&s.key, &s.range_end, lo, hi).collect();
        for i in 0..events.len().max(want.len()) {
            let (got, exp) = (events.get(i), want.get(i).copied());
            if let (Some(g), Some(x)) = (got, exp) {
                if reference.same_change(g, x) {
                    continue;
                }
            }
            let Some(g) = got else {
                let x = exp.expect("one of them");
                return fail(
                    WatchFault::Gap,
                    x.kv.mod_revision,
                    format!(
                        "missing {} (stream at revision {lo}, response up to {next_revision})",
                        describe_one(x)
                    ),
                );
            };
            let rev = g.kv.mod_revision;
            let seen_before = rev < lo
                && reference
                    .filtered(&s.key, &s.range_end, rev, rev + 1)
                    .any(|x| reference.same_change(g, x));
            let repeated = events[..i].iter().any(|e| e == g);
            let (fault, why) = if seen_before || repeated {
                (WatchFault::Duplicate, "delivered before")
            } else if rev < lo || events[..i].iter().any(|e| e.kv.mod_revision > rev) {
                (WatchFault::OutOfOrder, "out of revision order")
            } else if rev >= hi {
                (
                    WatchFault::SplitRevision,
                    "beyond the revision the response reached",
                )
            } else if exp.is_some_and(|x| x.kv.mod_revision == rev && x.kv.key == g.kv.key) {
                (WatchFault::Wrong, "not the committed change")
            } else if exp
                .is_some_and(|x| events[i + 1..].iter().any(|e| reference.same_change(e, x)))
            {
                (WatchFault::OutOfOrder, "delivered before an earlier change")
            } else if let Some(x) = exp {
                return fail(
                    WatchFault::Gap,
                    x.kv.mod_revision,
                    format!(
                        "missing {} (got {} instead)",
                        describe_one(x),
                        describe_one(g)
                    ),
                );
            } else {
                (WatchFault::Wrong, "not a committed change in range")
            };
            let want_here = exp.map_or("nothing".into(), describe_one);
            return fail(
                fault,
                rev,
                format!(
                    "{} {why} (stream at revision {lo}, response up to {next_revision}; expected {want_here})",
                    describe_one(g)
                ),
            );
        }
        s.next = hi;
        s.events += events.len() as u64;
        Ok(())
    }

    /// Watcher `w`'s request from `requested` was canceled by `node`
    /// because its history starts at `compact_revision`; the watcher
    /// restarts from there.
    pub fn observe_canceled(
        &mut self,
        w: usize,
        node: NodeId,
        reference: &ReferenceHistory,
        requested: i64,
        compact_revision: i64,
    ) -> Result<(), Violation> {
        let s = self.streams[w]
            .as_mut()
            .expect("a cancel on a created watcher");
        if requested >= compact_revision || !reference.compacted_at(compact_revision) {
            return Err(Violation::Watch {
                watcher: w,
                node,
                fault: WatchFault::BadCancel,
                revision: requested,
                what: format!(
                    "canceled as compacted at revision {compact_revision}; committed compactions up to {}",
                    reference.compact_revision()
                ),
            });
        }
        if compact_revision > s.next {
            s.holes.push((s.next, compact_revision));
            s.next = compact_revision;
        }
        Ok(())
    }

    /// At the end of a run that recovered: every watcher has caught up with
    /// the committed history.
    pub fn check_complete(&self, reference: &ReferenceHistory) -> Result<(), Violation> {
        for (w, s) in self.streams.iter().enumerate() {
            let Some(s) = s else { continue };
            if s.next <= reference.revision() {
                return Err(Violation::Watch {
                    watcher: w,
                    node: 0,
                    fault: WatchFault::Incomplete,
                    revision: s.next,
                    what: format!(
                        "stopped at revision {}, the committed history ends at {}",
                        s.next,
                        reference.revision()
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metalraft_kv::{Command, CompactionRequest, PutRequest, RequestOp, TxnRequest};

    fn put(k: &str) -> Vec<u8> {
        Command::Put(PutRequest {
            key: k.into(),
            value: b"v".to_vec(),
            ..PutRequest::default()
        })
        .encode()
    }

    /// Revisions 2..=6: a, b, txn(a, c), b, compact 4, a.
    fn reference() -> ReferenceHistory {
        let mut r = ReferenceHistory::new();
        let txn = Command::Txn(TxnRequest {
            compare: vec![],
            success: ["a", "c"]
                .iter()
                .map(|k| {
                    RequestOp::Put(PutRequest {
                        key: k.as_bytes().to_vec(),
                        value: b"t".to_vec(),
                        ..PutRequest::default()
                    })
                })
                .collect(),
            failure: vec![],
        })
        .encode();
        let compact = Command::Compact(CompactionRequest { revision: 4 }).encode();
        let cmds = [put("a"), put("b"), txn, put("b"), compact, put("a")];
        for (i, c) in cmds.iter().enumerate() {
            r.apply(i as u64 + 1, Some(c));
        }
        assert_eq!(r.revision(), 6);
        r
    }

    fn all(r: &ReferenceHistory, from: i64, to: i64) -> Vec<Change> {
        r.filtered(b"a", &[0], from, to).cloned().collect()
    }

    fn checker(start: i64) -> WatchChecker {
        let mut c = WatchChecker::new(1);
        c.created(0, b"a", &[0], start);
        c
    }

    fn fault(r: Result<(), Violation>) -> WatchFault {
        match r {
            Err(Violation::Watch { fault, .. }) => fault,
            other => panic!("expected a watch violation, got {other:?}"),
        }
    }

    #[test]
    fn the_history_in_any_batching_passes() {
        let r = reference();
        let mut c = checker(2);
        c.observe_response(0, 1, &r, &all(&r, 2, 4), 4).unwrap();
        c.observe_response(0, 1, &r, &[], 4).unwrap(); // a lagging node
        c.observe_response(0, 2, &r, &[], 2).unwrap(); // a node further behind
        c.observe_response(0, 2, &r, &all(&r, 4, 5), 5).unwrap();
        c.observe_response(0, 2, &r, &all(&r, 5, 7), 7).unwrap();
        c.check_complete(&r).unwrap();
        assert_eq!(c.events(), 6);
        // A single-key watcher from "now" sees only its key.
        let mut c = WatchChecker::new(1);
        c.created(0, b"b", b"", 4);
        let b: Vec<Change> = r.filtered(b"b", b"", 0, 99).cloned().collect();
        c.observe_response(0, 1, &r, &b[1..], 7).unwrap();
    }

    #[test]
    fn a_skipped_event_is_a_gap() {
        let r = reference();
        let mut c = checker(2);
        let mut ev = all(&r, 2, 7);
        ev.remove(3);
        assert_eq!(fault(c.observe_response(0, 1, &r, &ev, 7)), WatchFault::Gap);
        let mut c = checker(2);
        assert_eq!(
            fault(c.observe_response(0, 1, &r, &all(&r, 3, 7), 7)),
            WatchFault::Gap,
            "a resume beyond where the watcher stood"
        );
    }

    #[test]
    fn a_repeated_event_is_a_duplicate() {
        let r = reference();
        let mut c = checker(2);
        let mut ev = all(&r, 2, 7);
        ev.insert(2, ev[1].clone());
        assert_eq!(
            fault(c.observe_response(0, 1, &r, &ev, 7)),
            WatchFault::Duplicate
        );
        // Resuming at the last revision instead of last + 1.
        let mut c = checker(2);
        c.observe_response(0, 1, &r, &all(&r, 2, 4), 4).unwrap();
        assert_eq!(
            fault(c.observe_response(0, 1, &r, &all(&r, 3, 7), 7)),
            WatchFault::Duplicate
        );
    }

    #[test]
    fn a_split_or_reordered_revision_is_caught() {
        let r = reference();
        let mut c = checker(2);
        let txn = all(&r, 4, 5);
        assert_eq!(txn.len(), 2);
        // Half the transaction in a response that claims revision 4 done.
        let mut ev = all(&r, 2, 4);
        ev.push(txn[0].clone());
        assert_eq!(fault(c.observe_response(0, 1, &r, &ev, 5)), WatchFault::Gap);
        let mut c = checker(2);
        assert_eq!(
            fault(c.observe_response(0, 1, &r, &ev, 4)),
            WatchFault::SplitRevision
        );
        let mut c = checker(2);
        let mut ev = all(&r, 2, 7);
        ev.swap(0, 1);
        assert_eq!(
            fault(c.observe_response(0, 1, &r, &ev, 7)),
            WatchFault::OutOfOrder
        );
        let mut c = checker(2);
        let mut ev = all(&r, 2, 7);
        ev[0].kv.value = b"other".to_vec();
        assert_eq!(
            fault(c.observe_response(0, 1, &r, &ev, 7)),
            WatchFault::Wrong
        );
        let mut c = checker(2);
        assert_eq!(
            fault(c.observe_response(0, 1, &r, &all(&r, 2, 7), 8)),
            WatchFault::Wrong,
            "progress beyond the committed history"
        );
    }

    #[test]
    fn compaction_cancels_need_a_committed_compaction() {
        let r = reference();
        let mut c = checker(2);
        c.observe_canceled(0, 1, &r, 2, 4).unwrap();
        assert_eq!(c.holes(0), &[(2, 4)]);
        c.observe_response(0, 1, &r, &all(&r, 4, 7), 7).unwrap();
        c.check_complete(&r).unwrap();
        let mut c = checker(2);
        assert_eq!(
            fault(c.observe_canceled(0, 1, &r, 2, 3)),
            WatchFault::BadCancel
        );
        assert_eq!(
            fault(c.observe_canceled(0, 1, &r, 4, 4)),
            WatchFault::BadCancel
        );
        let c = checker(2);
        assert_eq!(fault(c.check_complete(&r)), WatchFault::Incomplete);
    }
}
