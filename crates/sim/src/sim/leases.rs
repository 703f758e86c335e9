//! Lease clients, keepalives, and the lease side of the node driver.
//!
//! The node driver mirrors the server's (`crates/server/src/machine.rs`,
//! `lease.rs`): before every poll the replica is given the simulated time
//! (`Replica::handle_timeout`), so a leader's promotion restarts its
//! countdowns at the current time and its expired leases are revoked
//! through the log, in bounded rounds (`SimMachine`'s `Lessor`).
//!
//! A lease client (safety phase only) grants a lease with an ID of its own
//! and a TTL from the seed's range, attaches its key `/sim/l<client>` to it
//! (both proposed on the current leader), then sends a keepalive every
//! TTL/3 to a random node for up to [`LEASE_KEEPALIVE_TTLS_MAX`] TTLs;
//! then it stops, and either revokes the lease or lets it expire, and
//! starts over. Clients go quiet for the largest TTL and two election
//! timeouts before the safety phase ends, so most leases expire under
//! faults and the liveness phase rarely waits for one. A node that does not lead relays a keepalive to the leader
//! it knows, as the server's followers do (`LeaseRenew`), unless a
//! partition cuts that link; otherwise the keepalive is lost (the client
//! sends the next one anyway). The lease checker (`checkers::LeaseChecker`)
//! sees every role change, grant applied, keepalive accepted, expiry
//! decided and revoke committed.

use super::*;
use crate::config::{
    LEASE_KEEPALIVES_PER_TTL, LEASE_KEEPALIVE_TTLS_MAX, LEASE_REVOKE_PPM, LEASE_SECOND_US,
};
use crate::machine::LeaseNote;
use metalraft_kv::{Command, LeaseGrantRequest, LeaseOption, LeaseRevokeRequest, PutRequest};
use metalraft_replica::{Instant, Renew};

/// A lease client starts within this long of the run's start.
pub(super) const LEASE_CLIENT_START_US_MAX: Time = 50 * crate::config::TICK_US_NOMINAL;

/// Lease clients stop this many election timeouts (plus the largest TTL)
/// before the end of the safety phase.
const LEASE_QUIET_ELECTIONS: u64 = 2;

/// Lease IDs of client `c` are `(c + 1) << LEASE_ID_CLIENT_SHIFT | n`.
const LEASE_ID_CLIENT_SHIFT: u32 = 32;

/// A lease a client holds.
#[derive(Debug)]
struct Held {
    id: i64,
    ttl_us: Time,
    /// Keepalives stop then.
    stop_at: Time,
    revoke: bool,
}

/// A simulated lease client.
#[derive(Debug, Default)]
pub(super) struct LeaseClient {
    granted: i64,
    held: Option<Held>,
}

impl Simulation {
    /// The leader that can take a proposal now, if any.
    fn lease_leader(&self) -> Option<usize> {
        (0..self.replicas.len()).find(|&i| {
            let r = &self.replicas[i];
            r.is_leader() && r.paused_until <= self.now
        })
    }

    /// Proposes a lease command of client `c` on `leader`.
    fn lease_propose(&mut self, leader: usize, c: usize, cmd: Command) -> Step {
        self.background += 1;
        let op = self.background;
        let command = sim_command(op, &cmd.encode());
        let req = watch::BACKGROUND_REQ_BASE + op;
        let r = &mut self.replicas[leader];
        let id = r.id;
        let Some(live) = r.live.as_mut() else {
            return Ok(());
        };
        let res = live.replica.propose(req, &command);
        self.trace
            .record(self.now, Actor::Node(id), TraceKind::Propose, op, 0, || {
                format!("lease client {c}, op {op}: {cmd:?}: {res:?}")
            });
        self.drive(leader)
    }

    /// Lease client `c` wakes up: grants, keeps alive, or stops.
    pub(super) fn on_lease_client(&mut self, c: usize) -> Step {
        let lc = self.cfg.leases.clone();
        // Quiet for the last TTL and election timeout of the safety phase:
        // the last leases expire under faults, and the liveness phase is
        // not stretched waiting for them (`LEASE_QUIET_ELECTIONS`).
        let quiet_us = lc.ttl_secs_max as u64 * LEASE_SECOND_US
            + LEASE_QUIET_ELECTIONS
                * u64::from(self.cfg.election_timeout_ticks_max)
                * crate::config::TICK_US_NOMINAL;
        let safety_end = self.cfg.safety_ticks * crate::config::TICK_US_NOMINAL;
        if self.phase != Phase::Safety || self.now + quiet_us >= safety_end {
            if let Some(h) = self.lease_clients[c].held.take() {
                if h.revoke {
                    if let Some(l) = self.lease_leader() {
                        let cmd = Command::LeaseRevoke(LeaseRevokeRequest { id: h.id });
                        return self.lease_propose(l, c, cmd);
                    }
                }
            }
            return Ok(());
        }
        match self.lease_clients[c].held.take() {
            None => {
                let Some(l) = self.lease_leader() else {
                    self.at(
                        self.now + NO_LEADER_BACKOFF_US,
                        Event::LeaseClient { client: c },
                    );
                    return Ok(());
                };
                let client = &mut self.lease_clients[c];
                client.granted += 1;
                let id = ((c as i64 + 1) << LEASE_ID_CLIENT_SHIFT) | client.granted;
                let span = (lc.ttl_secs_max - lc.ttl_secs_min) as u64;
                let ttl = lc.ttl_secs_min + self.rng_lease.range(0, span + 1) as i64;
                let ttl_us = ttl as u64 * LEASE_SECOND_US;
                let keep = self
                    .rng_lease
                    .range(0, LEASE_KEEPALIVE_TTLS_MAX * ttl_us + 1);
                let revoke = self.rng_lease.chance_ppm(LEASE_REVOKE_PPM);
                self.lease_clients[c].held = Some(Held {
                    id,
                    ttl_us,
                    stop_at: self.now + keep,
                    revoke,
                });
                self.at(
                    self.now + ttl_us / LEASE_KEEPALIVES_PER_TTL,
                    Event::LeaseClient { client: c },
                );
                self.lease_propose(l, c, Command::LeaseGrant(LeaseGrantRequest { id, ttl }))?;
                let put = PutRequest {
                    key: format!("/sim/l{c}").into_bytes(),
                    value: workload::value_bytes(self.background, 0),
                    ..PutRequest::default()
                };
                let opt = LeaseOption {
                    lease: id,
                    ignore_lease: false,
                };
                match self.lease_leader() {
                    Some(l) => self.lease_propose(l, c, Command::LeasePut(put, opt)),
                    None => Ok(()),
                }
            }
            Some(h) if self.now < h.stop_at => {
                let node = self.rng_lease.index(self.replicas.len());
                let t = self.now + self.cfg.workload.client_latency_us;
                self.at(
                    t,
                    Event::KeepAlive {
                        node,
                        lease: h.id,
                        relayed: false,
                    },
                );
                self.at(
                    self.now + h.ttl_us / LEASE_KEEPALIVES_PER_TTL,
                    Event::LeaseClient { client: c },
                );
                self.lease_clients[c].held = Some(h);
                Ok(())
            }
            Some(h) => {
                let gap = self.rng_lease.range(0, h.ttl_us + 1);
                self.at(self.now + gap, Event::LeaseClient { client: c });
                match self.lease_leader().filter(|_| h.revoke) {
                    Some(l) => {
                        let cmd = Command::LeaseRevoke(LeaseRevokeRequest { id: h.id });
                        self.lease_propose(l, c, cmd)
                    }
                    None => Ok(()),
                }
            }
        }
    }

    /// A keepalive of `lease` reaches `node` (`relayed`: from a follower).
    pub(super) fn on_keepalive(&mut self, node: usize, lease: i64, relayed: bool) -> Step {
        if self.defer_if_paused(node, || Event::KeepAlive {
            node,
            lease,
            relayed,
        }) {
            return Ok(());
        }
        let now = self.now;
        let r = &mut self.replicas[node];
        let id = r.id;
        let Some(live) = r.live.as_mut() else {
            return Ok(());
        };
        // The replica's clock first, as before any input.
        live.replica.handle_timeout(Instant(now));
        let leader = live.replica.leader();
        let renew = live.replica.state_machine_mut().keepalive(lease, now);
        self.trace.record(
            now,
            Actor::Node(id),
            TraceKind::Lease,
            lease as u64,
            u64::from(relayed),
            || format!("keepalive of lease {lease} (relayed: {relayed}): {renew:?}"),
        );
        match renew {
            Some(Renew::Renewed) => self.lease.observe_keepalive(id, lease, now)?,
            Some(Renew::NotPrimary) | None if !relayed => {
                // A follower relays to the leader it knows (the server's
                // `LeaseRenew`); `None`: this node has not applied the grant
                // yet, the leader may have.
                if let Some(to) = leader.filter(|&to| to != id && self.net.connected(id, to)) {
                    let t = now + self.cfg.latency_us_max;
                    self.at(
                        t,
                        Event::KeepAlive {
                            node: (to - 1) as usize,
                            lease,
                            relayed: true,
                        },
                    );
                }
            }
            _ => {}
        }
        self.drive(node)
    }

    /// The lease side of what `node` did: its expiry decisions, grants and
    /// revokes applied, for the lease checker.
    pub(super) fn observe_lease_notes(&mut self, node: usize, notes: Vec<LeaseNote>) -> Step {
        let id = self.replicas[node].id;
        for n in notes {
            match n {
                LeaseNote::Expiring { id: lease } => {
                    self.trace.record(
                        self.now,
                        Actor::Node(id),
                        TraceKind::Lease,
                        lease as u64,
                        2,
                        || format!("lease {lease} expired: revoke proposed"),
                    );
                    self.lease.observe_expiry(id, lease, self.now)?;
                }
                LeaseNote::Granted { id: lease, ttl } => {
                    self.lease.observe_grant(id, lease, ttl, self.now);
                }
                LeaseNote::Revoked {
                    id: lease,
                    expiry_by,
                } => self.lease.observe_revoked(lease, expiry_by, self.now)?,
            }
        }
        Ok(())
    }
}
