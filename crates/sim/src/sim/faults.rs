//! Random faults (crashes, torn crashes, partitions, heals, pauses,
//! leadership transfers, membership changes) and node restarts.

use super::*;
use crate::config::FaultConfig;

/// A random fault, drawn by weight ([`Fault::draw`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Crash a running node; `torn` keeps a torn prefix of its unsynced writes.
    Crash { torn: bool },
    /// Install a random partition.
    Partition,
    /// Remove the partition.
    Heal,
    /// Pause a running node.
    Pause,
    /// Ask the leader to transfer leadership to a random node.
    Transfer,
    /// Ask the leader for a random membership change.
    ConfChange,
}

impl Fault {
    /// Every fault with its weight in `f`, in the order of the draw (fixed:
    /// a seed's faults depend on it).
    fn weighted(f: &FaultConfig) -> [(Fault, u32); 7] {
        [
            (Fault::Crash { torn: false }, f.crash_weight),
            (Fault::Crash { torn: true }, f.torn_crash_weight),
            (Fault::Partition, f.partition_weight),
            (Fault::Heal, f.heal_weight),
            (Fault::Pause, f.pause_weight),
            (Fault::Transfer, f.transfer_weight),
            (Fault::ConfChange, f.conf_change_weight),
        ]
    }

    /// One fault drawn in proportion to its weight; `None` if every weight
    /// is zero.
    fn draw(f: &FaultConfig, rng: &mut Rng) -> Option<Fault> {
        let weighted = Fault::weighted(f);
        let total: u32 = weighted.iter().map(|(_, w)| w).sum();
        if total == 0 {
            return None;
        }
        let mut x = rng.range(0, u64::from(total)) as u32;
        for (fault, w) in weighted {
            if x < w {
                return Some(fault);
            }
            x -= w;
        }
        unreachable!("x < total")
    }
}

impl Simulation {
    pub(super) fn fault_gap(&mut self) -> Time {
        1 + self
            .rng_fault
            .range(0, 2 * self.cfg.faults.fault_gap_us_mean)
    }

    pub(super) fn on_fault(&mut self) -> Step {
        if self.phase != Phase::Safety {
            return Ok(());
        }
        let gap = self.fault_gap();
        self.at(self.now + gap, Event::Fault);
        let Some(fault) = Fault::draw(&self.cfg.faults, &mut self.rng_fault) else {
            return Ok(());
        };
        let n = self.replicas.len();
        let up: Vec<usize> = (0..n)
            .filter(|&i| self.replicas[i].live.is_some())
            .collect();
        match fault {
            Fault::Crash { torn } if n - up.len() < self.cfg.faults.down_max && !up.is_empty() => {
                let i = up[self.rng_fault.index(up.len())];
                self.crash(i, torn)?;
            }
            Fault::Partition if n >= 2 => {
                let p = Network::random_partition(&mut self.rng_fault, n);
                self.install_partition(p);
            }
            Fault::Heal => self.heal(),
            Fault::Pause if !up.is_empty() => {
                let i = up[self.rng_fault.index(up.len())];
                let until = self.now + 1 + self.rng_fault.range(0, self.cfg.faults.pause_us_max);
                self.replicas[i].paused_until = until;
                self.stats.pauses += 1;
                let id = self.replicas[i].id;
                self.trace.record(
                    self.now,
                    Actor::Node(id),
                    TraceKind::Pause,
                    until,
                    0,
                    || format!("paused until {until}us"),
                );
                if self.opts.timeline {
                    self.timeline
                        .node_events
                        .push((self.now, id, NodeEvent::Pause(until)));
                }
            }
            Fault::Transfer => {
                let Some(l) = (0..n).find(|&i| self.replicas[i].is_leader()) else {
                    return Ok(());
                };
                if n < 2 || self.replicas[l].paused_until > self.now {
                    return Ok(());
                }
                let to = loop {
                    let t = self.rng_fault.index(n);
                    if t != l {
                        break t as NodeId + 1;
                    }
                };
                self.transfer(l, to)?;
            }
            Fault::ConfChange => self.conf_change()?,
            // Not possible now (too many nodes down, nobody up, one node).
            Fault::Crash { .. } | Fault::Partition | Fault::Pause => {}
        }
        Ok(())
    }

    /// Asks the leader for a random membership change (it may refuse: one
    /// change at a time, leader not ready, no voters left, ...).
    pub(super) fn conf_change(&mut self) -> Step {
        use metalraft_core::{ConfChange, ConfChangeOp};
        let n = self.replicas.len() as NodeId;
        let Some(l) = (0..self.replicas.len()).find(|&i| self.replicas[i].is_leader()) else {
            return Ok(());
        };
        if self.replicas[l].paused_until > self.now {
            return Ok(());
        }
        let pick = |rng: &mut Rng| 1 + rng.range(0, n);
        let a = pick(&mut self.rng_fault);
        let b = pick(&mut self.rng_fault);
        let ops = match self.rng_fault.range(0, 5) {
            0 | 1 => vec![ConfChangeOp::AddVoter(a)],
            2 => vec![ConfChangeOp::AddLearner(a)],
            3 => vec![ConfChangeOp::Remove(a)],
            _ => vec![ConfChangeOp::AddVoter(a), ConfChangeOp::Remove(b)],
        };
        if self.cfg.faults.rot_ppm > 0 && !self.keeps_rot_quorum(l, &ops) {
            // With bit rot, a damaged voter abstains until repaired: the
            // other voters must stay a quorum (an operator does not shrink
            // a cluster below three voters while a member may need repair).
            return Ok(());
        }
        // An application context rides along (checked by the log digests
        // like any entry content).
        let cc = ConfChange::new(&ops).with_context(format!("cc {a} {b}").into_bytes());
        let id = self.replicas[l].id;
        if let Some(live) = self.replicas[l].live.as_mut() {
            self.conf_req += 1;
            let r = live.replica.propose_conf_change(self.conf_req, cc);
            self.stats.conf_changes += u64::from(r.is_ok());
            self.trace.record(
                self.now,
                Actor::Node(id),
                TraceKind::ConfChange,
                a,
                b,
                || format!("conf change {ops:?}: {r:?}"),
            );
        }
        self.drive(l)
    }

    /// Whether leader `l`'s configuration keeps at least
    /// `ROT_VOTERS_MIN` voters after `ops`.
    fn keeps_rot_quorum(&self, l: usize, ops: &[metalraft_core::ConfChangeOp]) -> bool {
        use metalraft_core::ConfChangeOp;
        let Some(live) = self.replicas[l].live.as_ref() else {
            return false;
        };
        let mut voters = live.node().conf_state().voters.clone();
        for op in ops {
            match *op {
                ConfChangeOp::AddVoter(a) => {
                    if !voters.contains(&a) {
                        voters.push(a);
                    }
                }
                ConfChangeOp::AddLearner(a) | ConfChangeOp::Remove(a) => voters.retain(|&v| v != a),
            }
        }
        voters.len() >= crate::config::ROT_VOTERS_MIN
    }

    pub(super) fn install_partition(&mut self, p: crate::network::Partition) {
        self.stats.partitions += 1;
        let text = p.to_string();
        self.trace
            .record(self.now, Actor::Sim, TraceKind::Partition, 0, 0, || {
                text.clone()
            });
        if self.opts.timeline {
            self.timeline.partitions.push((self.now, Some(text)));
        }
        self.net.partition(p);
        self.watch_on_partition();
    }

    /// Asks leader `l` to hand over to `to`.
    pub(super) fn transfer(&mut self, l: usize, to: NodeId) -> Step {
        let id = self.replicas[l].id;
        if let Some(live) = self.replicas[l].live.as_mut() {
            let r = live.replica.transfer_leader(to);
            self.stats.transfers += 1;
            self.trace.record(
                self.now,
                Actor::Node(id),
                TraceKind::Transfer,
                to,
                u64::from(r.is_ok()),
                || format!("transfer leadership to n{to}: {r:?}"),
            );
        }
        self.drive(l)
    }

    pub(super) fn heal(&mut self) {
        if self.net.current_partition().is_some() {
            self.net.heal();
            self.trace
                .record(self.now, Actor::Sim, TraceKind::Heal, 0, 0, || {
                    "network healed".into()
                });
            if self.opts.timeline {
                self.timeline.partitions.push((self.now, None));
            }
        }
    }

    pub(super) fn crash(&mut self, node: usize, torn: bool) -> Step {
        self.targeted_on_random_crash(node);
        self.crash_for(node, torn, None)
    }

    /// Crashes `node`; it restarts after `down_us`, or a random downtime.
    pub(super) fn crash_for(&mut self, node: usize, torn: bool, down_us: Option<Time>) -> Step {
        let r = &mut self.replicas[node];
        if r.live.take().is_none() {
            return Ok(());
        }
        r.incarnation += 1;
        r.paused_until = 0;
        r.last_role = None;
        let id = r.id;
        let report = r.disk.crash(torn, &mut self.rng_disk);
        let hs = r.disk.durable_hard_state();
        self.durable.observe_durable(id, hs)?;
        self.repair.observe_crash(id, r.disk.durable_last_index());
        self.stats.torn_frames_after_gap += report.frames_after_gap;
        self.committed.forget(id);
        self.step_down.forget(id);
        self.lease.observe_role(id, false, self.now);
        self.stats.crashes += 1;
        self.stats.torn_writes += u64::from(torn);
        self.trace.record(
            self.now,
            Actor::Node(id),
            TraceKind::Crash,
            u64::from(torn),
            report.records_lost,
            || {
                format!(
                "torn={torn} unsynced records lost={} kept={} durable term={} vote={:?} commit={}",
                report.records_lost, report.records_kept, hs.term, hs.vote, hs.commit
            )
            },
        );
        if self.opts.timeline {
            self.timeline
                .node_events
                .push((self.now, id, NodeEvent::Crash { torn }));
        }
        self.maybe_rot(node);
        let down = match down_us {
            Some(d) => d,
            None => self.rng_fault.range(DOWNTIME_TICKS_MIN, DOWNTIME_TICKS_MAX) * TICK_US_NOMINAL,
        };
        self.at(self.now + down, Event::Restart { node });
        Ok(())
    }

    /// Bit rot (`--bit-rot`): with the seed's chance, the crash also
    /// damages one durable log frame of `node` at rest, found at its
    /// restart. One node at a time: not while another node's damage is
    /// pending or its repair is in progress, and only in clusters that can
    /// elect a leader without the damaged node's vote.
    fn maybe_rot(&mut self, node: usize) {
        let rate = self.cfg.faults.rot_ppm;
        if rate == 0 || self.cfg.voters < crate::config::ROT_VOTERS_MIN {
            return;
        }
        let busy = self.replicas.iter().any(|r| {
            r.disk.is_rotten()
                || r.disk.repair_barrier().is_some()
                || self.repair.is_repairing(r.id)
        });
        if busy || !self.rng_rot.chance_ppm(rate) {
            return;
        }
        let r = &mut self.replicas[node];
        let id = r.id;
        if let Some(index) = r.disk.rot(&mut self.rng_rot) {
            self.stats.rot_damaged += 1;
            self.trace.record(
                self.now,
                Actor::Node(id),
                TraceKind::Repair,
                0,
                index,
                || format!("bit rot: the durable frame of entry {index} is damaged at rest"),
            );
        }
    }

    pub(super) fn restart(&mut self, node: usize) -> Step {
        let r = &mut self.replicas[node];
        if r.live.is_some() {
            return Ok(());
        }
        let id = r.id;
        if let Some(rep) = r.disk.open() {
            // Mid-log damage: the disk kept the valid prefix and made the
            // repair barrier durable (ADR 0021).
            let hs = r.disk.durable_hard_state();
            self.durable.observe_repaired(id, hs)?;
            self.repair.observe_damage(id, rep.lost_from, rep.barrier);
            self.stats.repairs_found += 1;
            self.trace.record(
                self.now,
                Actor::Node(id),
                TraceKind::Repair,
                rep.lost_from,
                rep.barrier,
                || {
                    format!(
                        "mid-log damage at entry {}: kept the log up to {} (was {}), lost from {}, \
                         {} frames dropped, commit {}, repair barrier {}",
                        rep.damaged_index,
                        rep.kept_last,
                        rep.last_before,
                        rep.lost_from,
                        rep.frames_dropped,
                        hs.commit,
                        rep.barrier
                    )
                },
            );
        }
        let r = &mut self.replicas[node];
        let barrier = r.disk.repair_barrier();
        self.repair
            .observe_restart(id, barrier, r.disk.durable_last_index());
        let storage = r.disk.durable().clone();
        let mut cfg = self.cfg.replica_config(id, r.incarnation);
        if self.opts.sabotage != Sabotage::NoVoteBarrier {
            cfg.core.vote_barrier = barrier;
        }
        // The store restarts from the durable snapshot, if any, and
        // re-applies the committed log after it.
        let (applied, sm) = match r.disk.snapshot() {
            Some((index, data)) => (
                index,
                SimMachine::from_snapshot(data).map_err(|e| core_err(id, e))?,
            ),
            None => (0, SimMachine::new()),
        };
        let sm = sm
            .with_history_end(self.history_end.clone())
            .on_node(id)
            .with_lease_bug(self.opts.sabotage.lease_bug());
        let replica = SimReplica::new(cfg, storage, sm).map_err(|e| core_err(id, e))?;
        // The restarted node's commit index is its durable one: its
        // durable log must hold the committed entries up to it.
        observe_commit(
            &mut self.committed,
            id,
            replica.storage(),
            replica.node().commit_index(),
        )?;
        let term = replica.term();
        r.live = Some(Live { replica });
        r.last_role = Some((Role::Follower, term));
        let inc = r.incarnation;
        let first_tick = self.now + 1 + self.rng_fault.range(0, r.tick_us);
        self.state_machine.restore(id, applied)?;
        self.trace.record(
            self.now,
            Actor::Node(id),
            TraceKind::Restart,
            u64::from(inc),
            term,
            || format!("restart (incarnation {inc}) from durable term {term}"),
        );
        if self.opts.timeline {
            self.timeline
                .node_events
                .push((self.now, id, NodeEvent::Restart));
            self.timeline
                .roles
                .push((self.now, id, Role::Follower, term));
        }
        self.at(first_tick, Event::Tick { node, inc });
        self.drive(node)
    }
}
