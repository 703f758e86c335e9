//! The liveness phase: faults stop, every node restarts, and within the
//! budget the cluster must recover.

use super::*;

impl Simulation {
    /// The liveness budget: the configured base plus time for the most
    /// lagging node to catch up, one batch of `max_entries_per_msg` entries
    /// per round trip (two worst-case latencies plus a worst-case fsync).
    pub(super) fn liveness_budget_ticks(&self) -> u64 {
        let last = self
            .replicas
            .iter()
            .filter_map(|r| r.live.as_ref()?.node().last_index().ok())
            .chain(self.replicas.iter().map(|r| r.disk.durable_last_index()))
            .max()
            .unwrap_or(0);
        let applied_min = self
            .replicas
            .iter()
            .map(|r| r.live.as_ref().map_or(0, |l| l.node().applied_index()))
            .min()
            .unwrap_or(0);
        let batches = (last - applied_min.min(last)).div_ceil(self.cfg.max_entries_per_msg as u64);
        let round_trip_us = 2 * self.cfg.latency_us_max + self.cfg.fsync_us_worst();
        // Leases whose keepalives stopped must expire: a TTL after an
        // election, plus the slack.
        let lease_us = self.cfg.leases.ttl_secs_max as u64 * crate::config::LEASE_SECOND_US
            + u64::from(self.cfg.election_timeout_ticks_max) * TICK_US_NOMINAL
            + LEASE_EXPIRY_SLACK_US;
        self.cfg.liveness_budget_ticks
            + (batches * round_trip_us + lease_us).div_ceil(TICK_US_NOMINAL)
    }

    pub(super) fn on_liveness_start(&mut self) -> Step {
        let budget = self.liveness_budget_ticks();
        self.phase = Phase::Liveness {
            deadline: self.now + budget * TICK_US_NOMINAL,
            start: self.now,
        };
        self.trace
            .record(self.now, Actor::Sim, TraceKind::Phase, 1, budget, || {
                format!("liveness phase: faults stop, budget {budget} ticks")
            });
        if self.opts.timeline {
            self.timeline.liveness_start = Some(self.now);
        }
        self.heal();
        self.net.calm();
        self.targeted_on_calm();
        for i in 0..self.replicas.len() {
            self.replicas[i].paused_until = 0;
            self.restart(i)?;
        }
        for c in &mut self.clients {
            c.ok_since_calm = false;
        }
        self.at(self.now + LIVENESS_POLL_US, Event::Poll);
        Ok(())
    }

    pub(super) fn liveness_snapshot(&self, start: Time) -> LivenessSnapshot {
        // Members of the newest leader's configuration must converge.
        let members: Vec<NodeId> = self
            .replicas
            .iter()
            .filter_map(|r| r.live.as_ref().filter(|l| l.node().role() == Role::Leader))
            .max_by_key(|l| l.node().term())
            .map_or_else(Vec::new, |l| l.node().conf_state().members());
        LivenessSnapshot {
            nodes: self
                .replicas
                .iter()
                .map(|r| match &r.live {
                    Some(l) => NodeProgress {
                        id: r.id,
                        up: true,
                        member: members.contains(&r.id),
                        leader: l.node().role() == Role::Leader,
                        term: l.node().term(),
                        commit: l.node().commit_index(),
                        applied: l.node().applied_index(),
                    },
                    None => NodeProgress {
                        id: r.id,
                        up: false,
                        member: members.contains(&r.id),
                        leader: false,
                        term: 0,
                        commit: 0,
                        applied: 0,
                    },
                })
                .collect(),
            clients_waiting: (0..self.clients.len())
                .filter(|&c| !self.clients[c].ok_since_calm || self.clients[c].current.is_some())
                .collect(),
            elapsed_ticks: (self.now - start) / TICK_US_NOMINAL,
        }
    }

    /// Under one leader that is stable — it has been seen with its whole log
    /// committed in this phase — every lease is within its deadline plus
    /// the slack, counted from that moment at the earliest: before it,
    /// faults or a quorum still catching up (entry by entry on some seeds)
    /// keep the leader's revokes queued behind its backlog.
    fn check_leases_not_late(&mut self, start: Time) -> Step {
        let leaders: Vec<usize> = (0..self.replicas.len())
            .filter(|&i| self.replicas[i].is_leader())
            .collect();
        let [l] = leaders[..] else {
            return Ok(());
        };
        let r = &self.replicas[l];
        let Some(live) = r.live.as_ref() else {
            return Ok(());
        };
        let node = live.node();
        let (id, term, commit) = (r.id, node.term(), node.commit_index());
        let caught_up = node.last_index().is_ok_and(|last| commit >= last);
        let stable = match self.lease_stable {
            Some((n, t, Some(at))) if n == id && t == term => Some(at),
            Some((n, t, None)) if n == id && t == term && !caught_up => None,
            _ => {
                let since = caught_up.then_some(self.now);
                self.lease_stable = Some((id, term, since));
                since
            }
        };
        let Some(since) = stable else {
            return Ok(());
        };
        let reference = &self.reference;
        self.lease
            .check_not_late(id, self.now, since.max(start), |l| reference.has_lease(l))
    }

    pub(super) fn on_poll(&mut self) -> Step {
        let Phase::Liveness { deadline, start } = self.phase else {
            return Ok(());
        };
        let snap = self.liveness_snapshot(start);
        self.check_leases_not_late(start)?;
        let reference = &self.reference;
        let leases_gone = self.lease.all_gone(|l| reference.has_lease(l));
        match check_liveness(&snap).and_then(|()| {
            if leases_gone {
                Ok(())
            } else {
                Err(Violation::Liveness {
                    what: format!(
                        "{} leases still exist after their keepalives stopped",
                        reference.lease_count()
                    ),
                })
            }
        }) {
            Ok(()) => {
                self.finished = true;
                Ok(())
            }
            Err(v) if self.now >= deadline => Err(v),
            Err(_) => {
                self.at(self.now + LIVENESS_POLL_US, Event::Poll);
                Ok(())
            }
        }
    }
}
