//! The lease checker: a leased key disappears only when its lease was
//! revoked by a client or expired in the leader's view, never earlier; and
//! once keepalives stop under a stable leader it does disappear, within a
//! bounded time.
//!
//! It sees what an outside observer records, in simulated time: each
//! node's role changes, each grant a node applied, each keepalive a node
//! accepted (answered with a renewed TTL), each expiry a node decided (the
//! revoke it proposed), and the first application of each revoke in the
//! committed log. A lease's keys leave the store only with its revoke (the
//! key-value history checkers judge that part).
//!
//! **Never early, against the leader's view.** An expiry of lease `X`
//! decided by node `L` at time `t` is legal only if `L` is leader at `t`,
//! has been since its promotion at `P` (the time it reported the role), and
//! `t ≥ start + TTL`, where `start` is the latest of: `P`; the time `L`
//! applied `X`'s grant, if it did so while leading; the last keepalive for
//! `X` that `L` accepted since `P`. Keepalives that other nodes accepted
//! (earlier leaders) do not count: a new leader restarts every countdown
//! at its promotion (etcd 3.4's `Promote`), which is later than any of
//! them. Every revoke proposed by an expiry that commits must follow such
//! a legal decision by its proposer.
//!
//! **Not late, once a leader is stable.** While a leader `L` has been in
//! office since `P` and no faults are injected (the liveness phase), a
//! lease that still exists at time `t` must have `t ≤ start + TTL +`
//! [`LEASE_EXPIRY_SLACK_US`], with `start` as above. Since a new leader is
//! elected within an election timeout of the old one's loss, a lease is
//! gone within TTL + election timeout + slack of its last keepalive. The
//! slack is for one revoke; many leases due at once (a new leader restarts
//! every countdown at its promotion) are revoked one entry each, and with
//! one entry per AppendEntries and a slow disk the last waits for every
//! revoke before it (simulator seed 840002479 `--leases --no-membership`:
//! 34 revokes proposed together, the 33rd committed 70.7 ms after its
//! deadline). So lateness counts from the last expiry revoke committed, if
//! later: a queue of revokes that keeps draining is not late; one that
//! stalls for the slack is. A lease forgotten behind a steady stream of
//! other expiries is still caught when the stream ends, and by the
//! liveness phase's final check that every lease is gone.

use std::collections::{BTreeMap, BTreeSet};

use metalraft_core::NodeId;

use super::Violation;
use crate::config::{Time, FSYNC_US_CAP, LEASE_SECOND_US, TICK_US_NOMINAL};

/// How long past its deadline (in the stable leader's view) a lease may
/// still exist: the leader checks its deadlines at every event it handles
/// (at least once a tick), and its revoke must commit and apply: an fsync
/// on the leader and on a quorum (each at most [`FSYNC_US_CAP`]), plus
/// round trips and queueing, well within 10 ticks more.
pub const LEASE_EXPIRY_SLACK_US: Time = 2 * FSYNC_US_CAP + 10 * TICK_US_NOMINAL;

/// Why the lease checker failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseFault {
    /// An expiry decided before its TTL passed in the leader's view.
    Early,
    /// An expiry (or a keepalive accepted) by a node that is not leader.
    NotLeader,
    /// A revoke proposed as an expiry committed without a legal decision.
    Undecided,
    /// A lease outlived its deadline plus the slack under a stable leader.
    Late,
}

/// One node's view while it leads.
#[derive(Debug)]
struct LeaderView {
    promoted: Time,
    /// Lease → when its countdown last started on this leader (grant
    /// applied while leading, or keepalive accepted).
    starts: BTreeMap<i64, Time>,
}

impl LeaderView {
    fn start(&self, lease: i64) -> Time {
        self.starts
            .get(&lease)
            .copied()
            .unwrap_or(0)
            .max(self.promoted)
    }
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct LeaseChecker {
    leaders: BTreeMap<NodeId, LeaderView>,
    /// Lease → TTL in seconds, for every lease ever granted (committed).
    ttls: BTreeMap<i64, i64>,
    /// Leases revoked (committed).
    revoked: BTreeSet<i64>,
    /// (proposer, lease) of every legal expiry decision.
    decided: BTreeSet<(NodeId, i64)>,
    /// Expiry decisions judged.
    pub decisions: u64,
    /// Leases gone by expiry / by a client's revoke.
    pub expired: u64,
    /// Leases revoked by clients.
    pub revoked_by_clients: u64,
    /// Keepalives accepted.
    pub keepalives: u64,
    /// When the last revoke proposed as an expiry committed.
    last_expiry_revoked: Time,
    /// The largest time a lease was still there past `start + TTL` under
    /// a stable leader (liveness phase), in µs.
    pub lateness_max_us: Time,
}

fn ttl_us(ttl_secs: i64) -> Time {
    u64::try_from(ttl_secs).unwrap_or(0) * LEASE_SECOND_US
}

impl LeaseChecker {
    /// A checker that has seen nothing.
    pub fn new() -> Self {
        LeaseChecker::default()
    }

    /// `node` reported its role at `now`: leader or not (a crash is "not").
    pub fn observe_role(&mut self, node: NodeId, leader: bool, now: Time) {
        if !leader {
            self.leaders.remove(&node);
        } else {
            self.leaders.entry(node).or_insert(LeaderView {
                promoted: now,
                starts: BTreeMap::new(),
            });
        }
    }

    /// `node` applied the grant of `lease` with `ttl` seconds at `now`.
    pub fn observe_grant(&mut self, node: NodeId, lease: i64, ttl: i64, now: Time) {
        self.ttls.insert(lease, ttl);
        if let Some(v) = self.leaders.get_mut(&node) {
            v.starts.insert(lease, now);
        }
    }

    /// `node` answered a keepalive of `lease` at `now` with a renewed TTL.
    pub fn observe_keepalive(
        &mut self,
        node: NodeId,
        lease: i64,
        now: Time,
    ) -> Result<(), Violation> {
        let Some(v) = self.leaders.get_mut(&node) else {
            return Err(violation(
                node,
                lease,
                LeaseFault::NotLeader,
                now,
                "a keepalive renewed by a node that does not lead".into(),
            ));
        };
        v.starts.insert(lease, now);
        self.keepalives += 1;
        Ok(())
    }

    /// `node` decided at `now` that `lease` expired (and proposed its revoke).
    pub fn observe_expiry(&mut self, node: NodeId, lease: i64, now: Time) -> Result<(), Violation> {
        self.decisions += 1;
        let Some(v) = self.leaders.get(&node) else {
            return Err(violation(
                node,
                lease,
                LeaseFault::NotLeader,
                now,
                "an expiry decided by a node that does not lead".into(),
            ));
        };
        let Some(&ttl) = self.ttls.get(&lease) else {
            return Err(violation(
                node,
                lease,
                LeaseFault::Early,
                now,
                "an expiry of a lease never granted".into(),
            ));
        };
        let start = v.start(lease);
        let due = start + ttl_us(ttl);
        if now < due {
            return Err(violation(
                node,
                lease,
                LeaseFault::Early,
                now,
                format!(
                    "expired {} µs early: TTL {ttl} s ({} µs), leader since {}, countdown started at {start}, due at {due}",
                    due - now,
                    ttl_us(ttl),
                    v.promoted
                ),
            ));
        }
        self.decided.insert((node, lease));
        Ok(())
    }

    /// The committed revoke of `lease` was first applied at `now`;
    /// `expiry_by`: the node that proposed it as an expiry (else a client
    /// revoked it).
    pub fn observe_revoked(
        &mut self,
        lease: i64,
        expiry_by: Option<NodeId>,
        now: Time,
    ) -> Result<(), Violation> {
        if !self.revoked.insert(lease) {
            return Ok(());
        }
        for v in self.leaders.values_mut() {
            v.starts.remove(&lease);
        }
        match expiry_by {
            None => self.revoked_by_clients += 1,
            Some(node) => {
                if !self.decided.contains(&(node, lease)) {
                    return Err(violation(node, lease, LeaseFault::Undecided, now, "a revoke proposed as an expiry committed, without a legal expiry decision by its proposer".into()));
                }
                self.expired += 1;
                self.last_expiry_revoked = self.last_expiry_revoked.max(now);
            }
        }
        Ok(())
    }

    /// In the liveness phase, at `now`, with `leader` the only leader:
    /// every lease that still exists (`exists`) must be within its TTL plus
    /// [`LEASE_EXPIRY_SLACK_US`] of its countdown's start in that leader's
    /// view, or within the slack of the last expiry revoke committed.
    /// Lateness counts from `since` at the earliest (the start of the
    /// liveness phase: before it, faults may keep a leader from committing).
    pub fn check_not_late(
        &mut self,
        leader: NodeId,
        now: Time,
        since: Time,
        exists: impl Fn(i64) -> bool,
    ) -> Result<(), Violation> {
        let Some(v) = self.leaders.get(&leader) else {
            return Ok(());
        };
        for (&lease, &ttl) in &self.ttls {
            if self.revoked.contains(&lease) || !exists(lease) {
                continue;
            }
            let due = v.start(lease) + ttl_us(ttl);
            let late = now.saturating_sub(due.max(since).max(self.last_expiry_revoked));
            self.lateness_max_us = self.lateness_max_us.max(late);
            if late > LEASE_EXPIRY_SLACK_US {
                return Err(violation(
                    leader,
                    lease,
                    LeaseFault::Late,
                    now,
                    format!(
                        "still there {late} µs after its deadline {due} (TTL {ttl} s, leader since {}), slack {LEASE_EXPIRY_SLACK_US} µs",
                        v.promoted
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether every lease granted so far is gone (`exists` is false).
    pub fn all_gone(&self, exists: impl Fn(i64) -> bool) -> bool {
        self.ttls
            .keys()
            .all(|&l| self.revoked.contains(&l) || !exists(l))
    }
}

fn violation(node: NodeId, lease: i64, fault: LeaseFault, at: Time, what: String) -> Violation {
    Violation::Lease {
        node,
        lease,
        fault,
        at_us: at,
        what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Time = LEASE_SECOND_US;

    #[test]
    fn an_expiry_is_judged_against_the_leaders_own_countdown() {
        let mut c = LeaseChecker::new();
        c.observe_role(1, true, 0);
        c.observe_grant(1, 7, 2, 10);
        c.observe_grant(2, 7, 2, 12);
        c.observe_keepalive(1, 7, S).unwrap();
        // Due at S + 2 S.
        let e = c.observe_expiry(1, 7, 3 * S - 1).unwrap_err();
        assert!(
            matches!(
                e,
                Violation::Lease {
                    fault: LeaseFault::Early,
                    ..
                }
            ),
            "{e}"
        );
        c.observe_expiry(1, 7, 3 * S).unwrap();
        c.observe_revoked(7, Some(1), 3 * S + 5).unwrap();
        assert_eq!(c.expired, 1);
    }

    #[test]
    fn a_new_leader_restarts_the_countdown_and_followers_decide_nothing() {
        let mut c = LeaseChecker::new();
        c.observe_role(1, true, 0);
        c.observe_grant(1, 7, 1, 0);
        c.observe_role(1, false, S / 2);
        let e = c.observe_expiry(1, 7, 2 * S).unwrap_err();
        assert!(matches!(
            e,
            Violation::Lease {
                fault: LeaseFault::NotLeader,
                ..
            }
        ));
        c.observe_role(2, true, S / 2);
        let e = c.observe_expiry(2, 7, S + S / 4).unwrap_err();
        assert!(matches!(
            e,
            Violation::Lease {
                fault: LeaseFault::Early,
                ..
            }
        ));
        c.observe_expiry(2, 7, S + S / 2).unwrap();
        // A revoke by node 3 that never decided.
        let e = c.observe_revoked(7, Some(3), 2 * S).unwrap_err();
        assert!(matches!(
            e,
            Violation::Lease {
                fault: LeaseFault::Undecided,
                ..
            }
        ));
    }

    #[test]
    fn a_lease_outliving_its_deadline_under_a_stable_leader_is_late() {
        let mut c = LeaseChecker::new();
        c.observe_role(1, true, 0);
        c.observe_grant(1, 7, 1, 0);
        c.check_not_late(1, S + LEASE_EXPIRY_SLACK_US, 0, |_| true)
            .unwrap();
        let e = c
            .check_not_late(1, S + LEASE_EXPIRY_SLACK_US + 1, 0, |_| true)
            .unwrap_err();
        assert!(matches!(
            e,
            Violation::Lease {
                fault: LeaseFault::Late,
                ..
            }
        ));
        assert!(!c.all_gone(|_| true));
        c.observe_revoked(7, None, 2 * S).unwrap();
        c.check_not_late(1, 10 * S, 0, |_| true).unwrap();
        assert!(c.all_gone(|_| true));
    }

    /// Leases due together are revoked one entry each: while their
    /// revokes keep committing, the last in the queue is not late; once
    /// they stop for longer than the slack, it is.
    #[test]
    fn a_draining_queue_of_expiry_revokes_is_not_late_a_stalled_one_is() {
        const STEP: Time = LEASE_EXPIRY_SLACK_US / 2;
        let mut c = LeaseChecker::new();
        c.observe_role(1, true, 0);
        for lease in 1..=5 {
            c.observe_grant(1, lease, 1, 0);
        }
        for lease in 1..=5 {
            c.observe_expiry(1, lease, S).unwrap();
        }
        let mut now = S;
        for lease in 1..=4 {
            now += STEP;
            c.observe_revoked(lease, Some(1), now).unwrap();
            c.check_not_late(1, now, 0, |l| l == 5).unwrap();
        }
        assert!(now - S > LEASE_EXPIRY_SLACK_US, "lease 5 is past the slack");
        c.check_not_late(1, now + LEASE_EXPIRY_SLACK_US, 0, |l| l == 5)
            .unwrap();
        let e = c
            .check_not_late(1, now + LEASE_EXPIRY_SLACK_US + 1, 0, |l| l == 5)
            .unwrap_err();
        assert!(matches!(
            e,
            Violation::Lease {
                fault: LeaseFault::Late,
                ..
            }
        ));
    }
}
