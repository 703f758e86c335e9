//! [`Lessor`]: the leader's lease clock (etcd 3.4's `lessor`, with time
//! passed in).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use crate::machine::Instant;

/// Microseconds per second.
const MICROS_PER_SEC: u64 = 1_000_000;

/// The [`Lessor`]'s bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LessorConfig {
    /// Most revokes proposed per round (by all [`Lessor::expire`] calls in
    /// it together).
    pub revokes_per_round: usize,
    /// Length of a round (microseconds): a round starts at the first
    /// [`Lessor::expire`] call after the previous one ended.
    pub round_interval_us: u64,
    /// A lease whose revoke was proposed but has not applied after this
    /// long (microseconds) is returned again (the proposal may have been
    /// lost with a leader change).
    pub revoke_retry_us: u64,
}

impl Default for LessorConfig {
    /// etcd 3.4's figures: 500 revokes per 500 ms round (its
    /// `leaseRevokeRate` of 1000/s), retry after 3 s
    /// (`expiredLeaseRetryInterval`).
    fn default() -> Self {
        LessorConfig {
            revokes_per_round: 500,
            round_interval_us: 500_000,
            revoke_retry_us: 3_000_000,
        }
    }
}

/// What [`Lessor::renew`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renew {
    /// The deadline moved to now + TTL.
    Renewed,
    /// The deadline had passed: the lease is being revoked (etcd answers
    /// the keepalive with TTL 0).
    Expired,
    /// This node is not the leader: relay the keepalive.
    NotPrimary,
}

/// The leader's lease clock (etcd 3.4's `lessor`, with time
/// passed in). Which leases exist and what is attached to them is
/// replicated state (the key-value store's); when each one expires is not:
/// only the leader keeps deadlines, renews them on keepalives, and proposes
/// a revoke through the log once one has passed.
///
/// Rules, as etcd 3.4 has them:
/// - a new leader restarts every lease's countdown at its full TTL
///   ([`Lessor::promote`], etcd's `Promote`), so a lease never expires early
///   because leadership moved; it may live up to one TTL longer;
/// - a follower keeps no deadlines ([`Lessor::demote`]) and answers no
///   keepalive (the caller relays it to the leader);
/// - a lease whose deadline passed is not renewed (its revoke is on the
///   way): [`Lessor::renew`] says [`Renew::Expired`];
/// - at most [`LessorConfig::revokes_per_round`] revokes are proposed per
///   [`LessorConfig::round_interval_us`], so a mass expiry does not flood the
///   log (etcd: 1000 revokes per second); a revoke not applied after
///   [`LessorConfig::revoke_retry_us`] is proposed again.
///
/// Deadlines are not checkpointed (etcd's optional
/// `--experimental-enable-lease-checkpoint`): a long TTL restarts in full on
/// each leader change. See `docs/adr/0015-leases.md`.
///
/// Method map:
/// - **leadership**: [`promote`](Lessor::promote), [`demote`](Lessor::demote),
///   [`is_primary`](Lessor::is_primary);
/// - **replicated changes**: [`granted`](Lessor::granted),
///   [`revoked`](Lessor::revoked) (optional: a deadline of a lease that is
///   gone is dropped when it comes due);
/// - **clients, on the leader**: [`renew`](Lessor::renew),
///   [`remaining_us`](Lessor::remaining_us);
/// - **timer**: [`next_deadline`](Lessor::next_deadline),
///   [`expire`](Lessor::expire).
#[derive(Clone, Debug, Default)]
pub struct Lessor {
    config: LessorConfig,
    primary: bool,
    /// Lease → its deadline (for a lease whose revoke was proposed: when to
    /// propose it again).
    deadlines: BTreeMap<i64, Instant>,
    /// The same, ordered by deadline.
    queue: BTreeSet<(Instant, i64)>,
    /// Leases granted while leading, whose countdown starts at the next
    /// [`Lessor::expire`] (the apply path has no clock); TTL in seconds.
    pending: BTreeMap<i64, i64>,
    /// Leases whose revoke was proposed.
    revoking: BTreeSet<i64>,
    /// The current round's start, and the revokes proposed in it: at most
    /// `revokes_per_round` per `round_interval_us` window, however the
    /// deadlines are spread (a round is a window of time, not one call).
    round_start: Instant,
    round_revokes: usize,
}

fn after(now: Instant, ttl_secs: i64) -> Instant {
    let ttl = u64::try_from(ttl_secs).unwrap_or(0);
    Instant(now.0.saturating_add(ttl.saturating_mul(MICROS_PER_SEC)))
}

impl Lessor {
    /// A follower's lessor (no deadlines) with `config`.
    pub fn new(config: LessorConfig) -> Self {
        assert!(
            config.revokes_per_round > 0,
            "a round must revoke something"
        );
        Lessor {
            config,
            ..Lessor::default()
        }
    }

    /// Whether this node leads (keeps deadlines, answers keepalives).
    pub fn is_primary(&self) -> bool {
        self.primary
    }

    /// Number of leases with a deadline or waiting for one.
    pub fn len(&self) -> usize {
        self.deadlines.len() + self.pending.len()
    }

    /// Whether no lease has a deadline.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// This node became leader at `now`: every lease of `leases` (ID, TTL
    /// in seconds) gets the deadline `now + TTL` (etcd's `Promote`).
    pub fn promote(&mut self, now: Instant, leases: impl IntoIterator<Item = (i64, i64)>) {
        self.clear();
        self.primary = true;
        for (id, ttl) in leases {
            self.set(id, after(now, ttl));
        }
    }

    /// This node stopped leading: forget every deadline.
    pub fn demote(&mut self) {
        self.clear();
        self.primary = false;
    }

    /// Lease `id` with `ttl_secs` was granted (applied). On the leader its
    /// countdown starts at the next [`expire`](Self::expire) call.
    pub fn granted(&mut self, id: i64, ttl_secs: i64) {
        if self.primary {
            self.pending.insert(id, ttl_secs);
        }
    }

    /// Lease `id` was revoked (applied): drop its deadline.
    pub fn revoked(&mut self, id: i64) {
        self.unset(id);
        self.pending.remove(&id);
        self.revoking.remove(&id);
    }

    /// A keepalive for the existing lease `id` with `ttl_secs` at `now`.
    pub fn renew(&mut self, id: i64, ttl_secs: i64, now: Instant) -> Renew {
        if !self.primary {
            return Renew::NotPrimary;
        }
        let expired =
            self.revoking.contains(&id) || self.deadlines.get(&id).is_some_and(|d| *d <= now);
        if expired {
            return Renew::Expired;
        }
        self.pending.remove(&id);
        self.set(id, after(now, ttl_secs));
        Renew::Renewed
    }

    /// Microseconds lease `id` has left at `now` on the leader (its full
    /// TTL if its countdown has not started), or `None` if this node does
    /// not lead or does not know the lease. 0 once expired.
    pub fn remaining_us(&self, id: i64, now: Instant) -> Option<u64> {
        if !self.primary {
            return None;
        }
        if self.revoking.contains(&id) {
            return Some(0);
        }
        if let Some(ttl) = self.pending.get(&id) {
            return Some(after(Instant(0), *ttl).0);
        }
        self.deadlines.get(&id).map(|d| d.0.saturating_sub(now.0))
    }

    /// When [`expire`](Self::expire) should next run, on the leader.
    pub fn next_deadline(&self) -> Option<Instant> {
        if !self.primary {
            return None;
        }
        if !self.pending.is_empty() {
            // Start the countdowns now.
            return Some(Instant(0));
        }
        let (first, _) = self.queue.first()?;
        Some((*first).max(self.next_round()))
    }

    /// No revoke before this: the end of the current round once it is full.
    fn next_round(&self) -> Instant {
        if self.round_revokes < self.config.revokes_per_round {
            return Instant(0);
        }
        Instant(
            self.round_start
                .0
                .saturating_add(self.config.round_interval_us),
        )
    }

    /// At `now` on the leader: starts pending countdowns, and returns the
    /// leases to revoke (at most [`LessorConfig::revokes_per_round`], those
    /// due first). `exists` tells whether a lease is still in the replicated
    /// state; one that is gone is dropped.
    pub fn expire(&mut self, now: Instant, exists: impl Fn(i64) -> bool) -> Vec<i64> {
        let mut out = Vec::new();
        if !self.primary {
            return out;
        }
        for (id, ttl) in core::mem::take(&mut self.pending) {
            self.set(id, after(now, ttl));
        }
        if now.0
            >= self
                .round_start
                .0
                .saturating_add(self.config.round_interval_us)
        {
            self.round_start = now;
            self.round_revokes = 0;
        }
        let budget = self.config.revokes_per_round - self.round_revokes;
        while out.len() < budget {
            let Some(&(deadline, id)) = self.queue.first() else {
                break;
            };
            if deadline > now {
                break;
            }
            self.unset(id);
            if !exists(id) {
                self.revoking.remove(&id);
                continue;
            }
            self.revoking.insert(id);
            let retry = Instant(now.0.saturating_add(self.config.revoke_retry_us));
            self.set(id, retry);
            out.push(id);
        }
        self.round_revokes += out.len();
        out
    }

    fn set(&mut self, id: i64, deadline: Instant) {
        self.unset(id);
        self.deadlines.insert(id, deadline);
        self.queue.insert((deadline, id));
    }

    fn unset(&mut self, id: i64) {
        if let Some(d) = self.deadlines.remove(&id) {
            self.queue.remove(&(d, id));
        }
    }

    fn clear(&mut self) {
        self.deadlines.clear();
        self.queue.clear();
        self.pending.clear();
        self.revoking.clear();
        self.round_start = Instant(0);
        self.round_revokes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = MICROS_PER_SEC;

    fn leader(leases: &[(i64, i64)]) -> Lessor {
        let mut l = Lessor::new(LessorConfig::default());
        l.promote(Instant(0), leases.iter().copied());
        l
    }

    #[test]
    fn a_lease_expires_at_its_ttl_and_not_before() {
        let mut l = leader(&[(1, 5)]);
        assert_eq!(l.next_deadline(), Some(Instant(5 * S)));
        assert!(l.expire(Instant(5 * S - 1), |_| true).is_empty());
        assert_eq!(l.expire(Instant(5 * S), |_| true), vec![1]);
        assert_eq!(l.renew(1, 5, Instant(5 * S)), Renew::Expired);
        assert_eq!(l.remaining_us(1, Instant(5 * S)), Some(0));
    }

    #[test]
    fn a_keepalive_moves_the_deadline() {
        let mut l = leader(&[(1, 5)]);
        assert_eq!(l.renew(1, 5, Instant(4 * S)), Renew::Renewed);
        assert!(l.expire(Instant(8 * S), |_| true).is_empty());
        assert_eq!(l.remaining_us(1, Instant(8 * S)), Some(S));
        assert_eq!(l.expire(Instant(9 * S), |_| true), vec![1]);
    }

    #[test]
    fn a_grant_starts_its_countdown_at_the_next_round() {
        let mut l = leader(&[]);
        l.granted(7, 3);
        assert_eq!(l.next_deadline(), Some(Instant(0)));
        assert_eq!(l.remaining_us(7, Instant(0)), Some(3 * S));
        assert!(l.expire(Instant(10 * S), |_| true).is_empty());
        assert_eq!(l.next_deadline(), Some(Instant(13 * S)));
    }

    #[test]
    fn a_follower_keeps_no_deadlines_and_a_new_leader_restarts_them_in_full() {
        let mut l = leader(&[(1, 10)]);
        l.demote();
        assert_eq!(l.next_deadline(), None);
        assert_eq!(l.renew(1, 10, Instant(S)), Renew::NotPrimary);
        l.granted(2, 10);
        assert!(l.is_empty(), "a follower ignores grants");
        l.promote(Instant(9 * S), [(1, 10)]);
        assert!(l.expire(Instant(18 * S), |_| true).is_empty(), "not early");
        assert_eq!(l.expire(Instant(19 * S), |_| true), vec![1]);
    }

    #[test]
    fn a_mass_expiry_is_revoked_in_bounded_rounds_and_unapplied_revokes_retry() {
        let cfg = LessorConfig::default();
        let n = cfg.revokes_per_round as i64 * 2 + 10;
        let leases: Vec<_> = (1..=n).map(|id| (id, 1)).collect();
        let mut l = leader(&leases);
        let first = l.expire(Instant(S), |_| true);
        assert_eq!(first.len(), cfg.revokes_per_round);
        assert!(
            l.expire(Instant(S + 1), |_| true).is_empty(),
            "round interval"
        );
        let at = Instant(S + cfg.round_interval_us);
        assert_eq!(l.next_deadline(), Some(at));
        assert_eq!(l.expire(at, |_| true).len(), cfg.revokes_per_round);
        for id in first.iter().chain(&[]) {
            l.revoked(*id);
        }
        let at = Instant(at.0 + cfg.round_interval_us);
        assert_eq!(l.expire(at, |_| true).len(), 10);
        // The second batch was never applied: proposed again after the retry.
        let retry = Instant(S + cfg.round_interval_us + cfg.revoke_retry_us);
        assert_eq!(l.expire(retry, |_| true).len(), cfg.revokes_per_round);
        // A lease that is gone from the store is dropped, not revoked.
        let later = Instant(retry.0 + cfg.revoke_retry_us + cfg.round_interval_us);
        assert!(l.expire(later, |_| false).is_empty());
        assert!(l.is_empty());
    }

    /// Deadlines spread out (one per 100 µs, 10,000/s) are still revoked at
    /// most `revokes_per_round` per `round_interval_us`, even though no
    /// single call finds a full round due (the bug the lease benchmark
    /// found: the bound held only for simultaneous deadlines).
    #[test]
    fn spread_deadlines_are_revoked_at_the_bounded_rate() {
        let cfg = LessorConfig::default();
        let n = 4 * cfg.revokes_per_round as i64;
        let mut l = leader(&[]);
        // Lease `id` is due at 1 s + id × 100 µs.
        for id in 1..=n {
            assert_eq!(l.renew(id, 1, Instant(id as u64 * 100)), Renew::Renewed);
        }
        let mut revoked: Vec<(u64, i64)> = Vec::new();
        let mut now = 0;
        while let Some(d) = l.next_deadline() {
            now = d.0.max(now);
            for id in l.expire(Instant(now), |_| true) {
                revoked.push((now, id));
                l.revoked(id);
            }
        }
        assert_eq!(revoked.len(), n as usize);
        // Rounds are consecutive windows: any interval overlaps two.
        for &(t, _) in &revoked {
            let window = revoked
                .iter()
                .filter(|&&(u, _)| u >= t && u < t + cfg.round_interval_us)
                .count();
            assert!(
                window <= 2 * cfg.revokes_per_round,
                "{window} revokes in one interval from {t}"
            );
        }
        // 4 full rounds: at least 3 intervals from the first to the last
        // (the deadlines themselves span only 0.2 s).
        let span = revoked.last().unwrap().0 - revoked[0].0;
        assert!(
            span >= 3 * cfg.round_interval_us,
            "all revoked within {span} µs"
        );
        // Never early.
        assert!(revoked.iter().all(|&(t, id)| t >= S + id as u64 * 100));
    }

    /// Model test: random grants, keepalives, leader changes and clock
    /// steps. A lease is returned for revoke only once a full TTL has passed
    /// since its last start (grant round, keepalive or promotion) on the
    /// current leader, and always within one round of that.
    #[test]
    fn revokes_are_never_early_and_never_late_over_random_histories() {
        for seed in 1..=30u64 {
            let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut next = |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            let mut l = Lessor::new(LessorConfig::default());
            let mut ttls: BTreeMap<i64, i64> = BTreeMap::new();
            // Reference: lease → earliest instant it may be revoked.
            let mut earliest: BTreeMap<i64, u64> = BTreeMap::new();
            let mut now = 0u64;
            let mut leading = false;
            for _ in 0..400 {
                match next(10) {
                    0 => {
                        leading = !leading;
                        if leading {
                            l.promote(Instant(now), ttls.clone());
                            earliest = ttls
                                .iter()
                                .map(|(i, t)| (*i, now + *t as u64 * S))
                                .collect();
                        } else {
                            l.demote();
                            earliest.clear();
                        }
                    }
                    1 | 2 => {
                        let id = 1 + next(20) as i64;
                        if let std::collections::btree_map::Entry::Vacant(e) = ttls.entry(id) {
                            let ttl = 1 + next(5) as i64;
                            e.insert(ttl);
                            l.granted(id, ttl);
                        }
                    }
                    3 | 4 => {
                        let id = 1 + next(20) as i64;
                        if let Some(ttl) = ttls.get(&id) {
                            if l.renew(id, *ttl, Instant(now)) == Renew::Renewed {
                                earliest.insert(id, now + *ttl as u64 * S);
                            }
                        }
                    }
                    _ => now += next(2 * S),
                }
                if !leading {
                    assert_eq!(l.next_deadline(), None);
                    continue;
                }
                // The realization calls expire whenever next_deadline is due.
                while l.next_deadline().is_some_and(|d| d.0 <= now) {
                    let pending: Vec<i64> = l.pending.keys().copied().collect();
                    for id in pending {
                        earliest.insert(id, now + ttls[&id] as u64 * S);
                    }
                    let before = l.queue.len();
                    for id in l.expire(Instant(now), |id| ttls.contains_key(&id)) {
                        let due = earliest[&id];
                        assert!(due <= now, "seed {seed}: lease {id} revoked early");
                        ttls.remove(&id);
                        earliest.remove(&id);
                        l.revoked(id);
                    }
                    if l.queue.len() == before && l.pending.is_empty() {
                        break;
                    }
                }
                for (id, due) in &earliest {
                    assert!(*due > now, "seed {seed}: lease {id} overdue at {now}");
                }
            }
        }
    }
}
