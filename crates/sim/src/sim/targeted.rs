//! Carries out the seed's targeted fault schedule (`schedule.rs`): hooks
//! called by the event loop at the moments that matter, and the actions
//! they schedule. Actions are events of their own (never carried out in the
//! middle of handling another event), and every random choice comes from
//! the schedule's own stream, so the run stays deterministic.

use std::collections::{BTreeMap, BTreeSet};

use metalraft_core::{Message, MessageBody, NodeId, Term};

use super::{Event, Phase, Simulation, Step};
use crate::config::{Time, FSYNC_US_CAP, TICK_US_NOMINAL};
use crate::network::Partition;
use crate::payload::SimPayload;
use crate::schedule::{
    Schedule, BLIP_DOWN_ELECTION_TIMEOUTS_MAX, BLIP_DOWN_US_MIN, STALL_ROUND_TRIPS_MAX,
    STALL_ROUND_TRIPS_MIN,
};
use crate::trace::{Actor, TraceKind};

/// An isolated leader (`Schedule::FirstCommit { partition: true }`) is
/// reconnected after this many maximum election timeouts.
pub(super) const ISOLATION_ELECTION_TIMEOUTS: u64 = 3;
/// A power-loss crash comes back within this long (a power blip).
pub(super) const POWER_BLIP_DOWN_US_MAX: Time = 2 * TICK_US_NOMINAL;
/// A node back from a power loss is spared further power-loss faults (a
/// stalled fsync, being cut off, a crash) for this many maximum election
/// timeouts, so that it can win the term it forgot again and commit in it.
pub(super) const RECOVERY_ELECTION_TIMEOUTS: u64 = 4;
/// Chance (ppm) that a new leader starts a term-churn burst, when none is
/// running.
pub(super) const CHURN_BURST_PPM: u32 = 500_000;

/// A targeted fault, scheduled by a hook.
#[derive(Debug)]
pub(super) enum Action {
    /// Crash `node` if it is still in incarnation `inc`, and restart it
    /// after `down_us`.
    Crash {
        node: usize,
        inc: u32,
        down_us: Time,
        torn: bool,
        /// A power loss: connections to the node die with it.
        power_loss: bool,
        why: &'static str,
    },
    /// Cut `node` (still in incarnation `inc`) off from everyone.
    Isolate { node: usize, inc: u32 },
    /// Undo an isolation.
    Heal,
    /// Undo a lossy path for AppendEntries.
    EndDeaf,
    /// Ask `node`, if still leader, to hand over to `to`.
    Transfer { node: usize, to: NodeId },
}

/// What the hooks remember.
#[derive(Debug, Default)]
pub(super) struct TargetedState {
    /// Leaders still to strike in the current term-churn burst.
    churn_left: u64,
    /// (node, incarnation) of a leader whose term is not durable yet, to be
    /// crashed once it sends a client entry.
    pub(super) armed: Option<(usize, u32)>,
    /// A leader whose AppendEntries to these followers are lost (heartbeats
    /// get through).
    pub(super) deaf: Option<(NodeId, Vec<NodeId>)>,
    /// Nodes back from a power loss, spared further power-loss faults
    /// until then.
    pub(super) spared_until: BTreeMap<usize, Time>,
    /// Nodes whose latest crash reset their connections: messages sent to
    /// an earlier incarnation are lost.
    pub(super) conn_reset: BTreeSet<usize>,
    /// Term-churn leaders (node, term) to crash at their first commit.
    churn_commit: BTreeSet<(NodeId, Term)>,
    /// (node, term) whose first commit was already handled.
    first_commits: BTreeSet<(NodeId, Term)>,
    /// Targeted faults carried out.
    pub(super) fired: u64,
}

impl Simulation {
    fn targeted_active(&self) -> bool {
        self.phase == Phase::Safety && self.cfg.schedule != Schedule::Random
    }

    /// A quick restart: a power blip or a process restart, short enough
    /// that the node may campaign again before its peers time out.
    fn blip_down_us(&mut self) -> Time {
        let max = BLIP_DOWN_ELECTION_TIMEOUTS_MAX
            * u64::from(self.cfg.election_timeout_ticks_min)
            * TICK_US_NOMINAL;
        self.rng_sched
            .range(BLIP_DOWN_US_MIN, max.max(BLIP_DOWN_US_MIN + 1))
    }

    /// Whether `node` is back from a power loss and spared for now.
    fn spared(&self, node: usize) -> bool {
        self.targeted
            .spared_until
            .get(&node)
            .is_some_and(|&t| t > self.now)
    }

    /// Whether one more node may go down.
    fn may_crash(&self) -> bool {
        let down = self.replicas.iter().filter(|r| r.live.is_none()).count();
        down < self.cfg.faults.down_max
    }

    fn crash_at(&mut self, node: usize, at: Time, why: &'static str) {
        let inc = self.replicas[node].incarnation;
        let down_us = self.blip_down_us();
        let torn = self.rng_sched.coin();
        self.at(
            at,
            Event::Targeted(Action::Crash {
                node,
                inc,
                down_us,
                torn,
                power_loss: false,
                why,
            }),
        );
    }

    /// A power loss of `node` at `at`: nothing unsynced survives (a torn
    /// write could keep the new term) and its connections die with it (its
    /// peers' answers to what it sent are lost). The node is back almost at
    /// once, so that it often times out before its peers and campaigns
    /// again, in the term it has forgotten.
    fn power_loss_at(&mut self, node: usize, at: Time, why: &'static str) {
        let inc = self.replicas[node].incarnation;
        let down_us = self
            .rng_sched
            .range(BLIP_DOWN_US_MIN, POWER_BLIP_DOWN_US_MAX + 1);
        self.at(
            at,
            Event::Targeted(Action::Crash {
                node,
                inc,
                down_us,
                torn: false,
                power_loss: true,
                why,
            }),
        );
    }

    /// Hook: `node` just became leader of `term`.
    pub(super) fn targeted_on_leader(&mut self, node: usize, term: Term) {
        if !self.targeted_active() {
            return;
        }
        match self.cfg.schedule {
            Schedule::PowerLoss { leader_ppm, .. } => {
                // Its term (and self-vote) is durable only once its oldest
                // synced batch completes: crash it before that, at the
                // latest just before, and earlier if it sends a client
                // entry first (`targeted_on_send`).
                if self.spared(node) {
                    // Back from a power loss: let it lead undisturbed, and
                    // send it clients, whose writes may land where the
                    // forgotten term's writes are.
                    self.clients_to(node);
                    return;
                }
                let Some(sync_at) = self.replicas[node].disk.next_sync_at() else {
                    return;
                };
                if sync_at <= self.now || !self.rng_sched.chance_ppm(leader_ppm) {
                    return;
                }
                let crash_at = sync_at - 1;
                self.power_loss_at(node, crash_at, "leader term not durable");
                self.targeted.armed = Some((node, self.replicas[node].incarnation));
                // Clients find the new leader at once, so that it accepts
                // writes for the term before the term is durable ...
                self.clients_to(node);
                let n = self.replicas.len();
                let peers = n.saturating_sub(1);
                let hearing_max = peers.saturating_sub(n / 2);
                if hearing_max >= 1 && self.rng_sched.range(0, 4) != 0 {
                    let id = self.replicas[node].id;
                    let hearing = 1 + self.rng_sched.index(hearing_max);
                    let mut others: Vec<NodeId> = (1..=n as NodeId).filter(|&x| x != id).collect();
                    for i in 0..hearing {
                        let j = i + self.rng_sched.index(others.len() - i);
                        others.swap(i, j);
                    }
                    let deaf = others.split_off(hearing);
                    let text = format!("n{id}'s AppendEntries to {deaf:?} are lost");
                    self.trace
                        .record(self.now, Actor::Sim, TraceKind::Partition, 3, 0, || text);
                    self.targeted.deaf = Some((id, deaf));
                    self.at(crash_at + 1, Event::Targeted(Action::EndDeaf));
                }
            }
            Schedule::TermChurn {
                rounds,
                delay_us_max,
            } => {
                if self.targeted.churn_left == 0 && self.rng_sched.chance_ppm(CHURN_BURST_PPM) {
                    self.targeted.churn_left = rounds;
                }
                if self.targeted.churn_left > 0 {
                    self.targeted.churn_left -= 1;
                    // Figure 8's order: partial replication, a leader whose
                    // entries stay on its own log, a commit cut short.
                    let how = (rounds - 1 - self.targeted.churn_left) % 3;
                    self.churn(node, term, how, delay_us_max);
                }
            }
            Schedule::ReadBeforeNoop => self.clients_to(node),
            _ => {}
        }
    }

    /// Strikes a new leader in a term-churn burst, in Figure 8's order
    /// (`how`): 0, its AppendEntries reach only a minority of followers and
    /// it crashes soon after, leaving its entries partially replicated (S1
    /// in term 2); 1, it is cut off at once, before its first AppendEntries
    /// leave, so that its entries of the term stay on its own log (S5 in
    /// term 3); 2, it loses power right after its first commit, before its
    /// own entries are safe (S1 in term 4).
    fn churn(&mut self, node: usize, term: Term, how: u64, delay_us_max: Time) {
        let n = self.replicas.len();
        let id = self.replicas[node].id;
        let others: Vec<NodeId> = (1..=n as NodeId).filter(|&x| x != id).collect();
        if others.is_empty() {
            return;
        }
        if how == 2 {
            // Figure 8's S1 in term 4: it may commit, and then loses power
            // at once (`targeted_on_commit`).
            self.targeted.churn_commit.insert((id, term));
            return;
        }
        if how == 1 {
            self.targeted.fired += 1;
            self.install_partition(Partition::Symmetric {
                a: vec![id],
                b: others,
            });
            let back = (1 + self.rng_sched.range(0, ISOLATION_ELECTION_TIMEOUTS))
                * u64::from(self.cfg.election_timeout_ticks_max)
                * TICK_US_NOMINAL;
            self.at(self.now + back, Event::Targeted(Action::Heal));
            return;
        }
        // A minority of the followers (at least one) hears it.
        let mut others = others;
        let hearing_max = others.len().saturating_sub(n / 2).max(1);
        let hearing = 1 + self.rng_sched.index(hearing_max);
        for i in 0..hearing {
            let j = i + self.rng_sched.index(others.len() - i);
            others.swap(i, j);
        }
        let deaf = others.split_off(hearing.min(others.len()));
        let d = self.rng_sched.range(0, delay_us_max + 1);
        if !deaf.is_empty() {
            let text = format!("n{id}'s AppendEntries to {deaf:?} are lost");
            self.trace
                .record(self.now, Actor::Sim, TraceKind::Partition, 3, 0, || text);
            self.targeted.deaf = Some((id, deaf));
            self.at(self.now + d + 1, Event::Targeted(Action::EndDeaf));
        }
        // A power loss: what it has not synced is gone, so it may vote for
        // a follower that never heard of those entries.
        self.power_loss_at(node, self.now + d, "term churn");
    }

    /// Every client turns to `node` at once (idle ones start an operation).
    fn clients_to(&mut self, node: usize) {
        for c in 0..self.clients.len() {
            self.clients[c].hint = Some(node);
            if self.clients[c].current.is_none() {
                self.at(self.now, Event::ClientWake { client: c });
            }
        }
    }

    /// Hook: `node` sends an AppendEntries carrying a client entry (only
    /// called while a power-loss crash is armed).
    pub(super) fn targeted_on_send_entry(&mut self, node: usize) {
        let inc = self.replicas[node].incarnation;
        if self.targeted.armed != Some((node, inc)) {
            return;
        }
        self.targeted.armed = None;
        // In flight to its followers; the crash comes before the earliest
        // answer can.
        let d = self.rng_sched.range(0, self.cfg.latency_us_min + 1);
        self.power_loss_at(node, self.now + d, "sent a client entry, term not durable");
    }

    /// Whether a message sent to an earlier incarnation of `node` is lost:
    /// its connection died with that process. Decided per crash: always
    /// after a power loss, otherwise with probability 1/2 (a transport that
    /// resends across restarts still delivers it, to a node that never saw
    /// its request).
    pub(super) fn lost_to_restart(&self, node: usize) -> bool {
        self.targeted.conn_reset.contains(&node)
    }

    /// Hook: a node crashed at random (not a targeted power loss).
    pub(super) fn targeted_on_random_crash(&mut self, node: usize) {
        if self.rng_fault.coin() {
            self.targeted.conn_reset.insert(node);
        } else {
            self.targeted.conn_reset.remove(&node);
        }
    }

    /// Hook: whether a message is lost to a targeted fault (only called
    /// while one is installed).
    pub(super) fn targeted_drops(&self, m: &Message<SimPayload>) -> bool {
        let Some((from, deaf)) = &self.targeted.deaf else {
            return false;
        };
        m.from == *from
            && deaf.contains(&m.to)
            && matches!(m.body, MessageBody::AppendEntries { .. })
    }

    /// Hook: a candidate writes its new term; returns how long its fsync
    /// stalls (`Schedule::PowerLoss`).
    pub(super) fn targeted_stall_us(&mut self, node: usize) -> Time {
        let Schedule::PowerLoss { stall_ppm, .. } = self.cfg.schedule else {
            return 0;
        };
        let candidate = self.replicas[node]
            .live
            .as_ref()
            .is_some_and(|l| l.node().role() == metalraft_core::Role::Candidate);
        if !self.targeted_active()
            || !candidate
            || self.spared(node)
            || !self.rng_sched.chance_ppm(stall_ppm)
        {
            return 0;
        }
        let rtt = 2 * self.cfg.latency_us_max;
        self.rng_sched
            .range(STALL_ROUND_TRIPS_MIN * rtt, STALL_ROUND_TRIPS_MAX * rtt + 1)
            .min(FSYNC_US_CAP)
    }

    /// Hook: `node` wrote a batch that completes at `done`.
    pub(super) fn targeted_on_write(&mut self, node: usize, must_sync: bool, done: Time) {
        if !self.targeted_active() || !must_sync || done <= self.now {
            return;
        }
        if let Schedule::PowerLoss { batch_ppm, .. } = self.cfg.schedule {
            if !self.spared(node) && self.rng_sched.chance_ppm(batch_ppm) {
                let d = self.rng_sched.range(0, done - self.now);
                self.power_loss_at(node, self.now + d, "synced batch in flight");
            }
        }
    }

    /// Hook: leader `node` of `term` committed entries.
    pub(super) fn targeted_on_commit(&mut self, node: usize, term: Term) {
        if !self.targeted_active() {
            return;
        }
        let id = self.replicas[node].id;
        match self.cfg.schedule {
            Schedule::FirstCommit { partition } => {
                if !self.targeted.first_commits.insert((id, term)) {
                    return;
                }
                let inc = self.replicas[node].incarnation;
                if partition {
                    self.at(self.now, Event::Targeted(Action::Isolate { node, inc }));
                } else {
                    self.crash_at(node, self.now, "first commit of the term");
                }
            }
            // Figure 8: a leader that has just committed (entries of an
            // earlier term, perhaps) loses power before its own entries
            // are safe.
            Schedule::TermChurn { .. } if self.targeted.churn_commit.remove(&(id, term)) => {
                self.power_loss_at(node, self.now, "term churn: first commit of the term");
            }
            _ => {}
        }
    }

    /// Hook: leader `node` accepted a client proposal.
    pub(super) fn targeted_on_propose(&mut self, node: usize) {
        if !self.targeted_active() {
            return;
        }
        let Schedule::TransferUnderLoad { chance_ppm } = self.cfg.schedule else {
            return;
        };
        let n = self.replicas.len();
        if n < 2 || !self.rng_sched.chance_ppm(chance_ppm) {
            return;
        }
        let mut to = self.rng_sched.index(n - 1);
        if to >= node {
            to += 1;
        }
        self.at(
            self.now,
            Event::Targeted(Action::Transfer {
                node,
                to: to as NodeId + 1,
            }),
        );
    }

    /// Hook: the faults stop (the liveness phase begins).
    pub(super) fn targeted_on_calm(&mut self) {
        self.targeted.deaf = None;
        self.targeted.armed = None;
    }

    /// Carries out a targeted action (ignored once faults have stopped or
    /// when its node has crashed meanwhile).
    pub(super) fn on_targeted(&mut self, a: Action) -> Step {
        if self.phase != Phase::Safety {
            return Ok(());
        }
        match a {
            Action::Crash {
                node,
                inc,
                down_us,
                torn,
                power_loss,
                why,
            } => {
                let r = &self.replicas[node];
                if r.incarnation != inc || r.live.is_none() || !self.may_crash() {
                    return Ok(());
                }
                self.targeted.fired += 1;
                let id = r.id;
                self.trace
                    .record(self.now, Actor::Node(id), TraceKind::Crash, 2, 0, || {
                        format!("targeted crash: {why}, restart in {down_us}us")
                    });
                if power_loss {
                    let spare = RECOVERY_ELECTION_TIMEOUTS
                        * u64::from(self.cfg.election_timeout_ticks_max)
                        * TICK_US_NOMINAL;
                    self.targeted.spared_until.insert(node, self.now + spare);
                }
                if power_loss || self.rng_sched.coin() {
                    self.targeted.conn_reset.insert(node);
                } else {
                    self.targeted.conn_reset.remove(&node);
                }
                self.crash_for(node, torn, Some(down_us))
            }
            Action::Isolate { node, inc } => {
                let r = &self.replicas[node];
                let n = self.replicas.len();
                if r.incarnation != inc || r.live.is_none() || n < 2 {
                    return Ok(());
                }
                self.targeted.fired += 1;
                let id = r.id;
                let others = (1..=n as NodeId).filter(|&x| x != id).collect();
                self.install_partition(Partition::Symmetric {
                    a: vec![id],
                    b: others,
                });
                let back = ISOLATION_ELECTION_TIMEOUTS
                    * u64::from(self.cfg.election_timeout_ticks_max)
                    * TICK_US_NOMINAL;
                self.at(self.now + back, Event::Targeted(Action::Heal));
                Ok(())
            }
            Action::Heal => {
                self.heal();
                Ok(())
            }
            Action::EndDeaf => {
                self.targeted.deaf = None;
                Ok(())
            }
            Action::Transfer { node, to } => {
                if !self.replicas[node].is_leader() || self.replicas[node].paused_until > self.now {
                    return Ok(());
                }
                self.targeted.fired += 1;
                self.transfer(node, to)
            }
        }
    }
}
