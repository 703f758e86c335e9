//! The network model: one directed link per ordered pair of nodes, each
//! with its own latency distribution, plus drop, duplicate and reorder
//! faults and partitions (symmetric, asymmetric, bridge). Partitions are
//! applied when a message is sent; a message already in flight arrives.
//!
//! Connections: every node knows one incarnation of each peer (the one it
//! last heard from) and sends to that one. A message that reaches a later
//! incarnation travelled on a connection that died with the process it was
//! meant for; whether it is lost is decided per crash (a power loss always
//! resets connections; see `Simulation::lost_to_restart`). A lost one tells
//! its sender, who reconnects to the current incarnation (as a TCP sender
//! does after a reset).

use std::fmt;

use metalraft_core::NodeId;

use crate::config::{FaultConfig, SimConfig, Time};
use crate::rng::Rng;

/// One directed link's latency: `base_us + uniform(0, jitter_us)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// Minimum one-way latency.
    pub base_us: Time,
    /// Random extra latency (upper bound); jitter reorders messages too.
    pub jitter_us: Time,
}

/// A network partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Partition {
    /// Nobody in `a` reaches anybody in `b` and vice versa.
    Symmetric {
        /// One side.
        a: Vec<NodeId>,
        /// The other.
        b: Vec<NodeId>,
    },
    /// Messages from `from` to `to` are lost; the other direction works.
    Asymmetric {
        /// Senders that cannot reach `to`.
        from: Vec<NodeId>,
        /// Receivers.
        to: Vec<NodeId>,
    },
    /// `a` and `b` cannot reach each other, but `bridge` reaches both.
    Bridge {
        /// One side.
        a: Vec<NodeId>,
        /// The other.
        b: Vec<NodeId>,
        /// The node connected to both.
        bridge: NodeId,
    },
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Partition::Symmetric { a, b } => write!(f, "symmetric {a:?} | {b:?}"),
            Partition::Asymmetric { from, to } => write!(f, "asymmetric {from:?} -/-> {to:?}"),
            Partition::Bridge { a, b, bridge } => write!(f, "bridge {a:?} | {b:?} via {bridge}"),
        }
    }
}

/// What happens to one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Lost (dropped at random or blocked by a partition).
    Lost {
        /// Whether a partition blocked it (otherwise a random drop).
        blocked: bool,
    },
    /// Delivered at this time, and possibly a duplicate at the second.
    Deliver(Time, Option<Time>),
}

/// All links and the current faults.
#[derive(Debug)]
pub struct Network {
    n: usize,
    links: Vec<Link>,
    blocked: Vec<bool>,
    faults: FaultConfig,
    partition: Option<Partition>,
    /// Per ordered pair (from, to): the incarnation of `to` that `from`
    /// last heard from.
    known_inc: Vec<u32>,
}

impl Network {
    /// Draws every link's latency from `cfg` and `rng`.
    pub fn new(cfg: &SimConfig, rng: &mut Rng) -> Self {
        let n = cfg.nodes();
        let spread = cfg.latency_us_max - cfg.latency_us_min;
        let links = (0..n * n)
            .map(|_| {
                let base_us = cfg.latency_us_min + rng.range(0, spread / 2 + 1);
                Link {
                    base_us,
                    jitter_us: rng.range(0, cfg.latency_us_max - base_us + 1),
                }
            })
            .collect();
        Network {
            n,
            links,
            blocked: vec![false; n * n],
            faults: cfg.faults.clone(),
            partition: None,
            known_inc: vec![0; n * n],
        }
    }

    fn slot(&self, from: NodeId, to: NodeId) -> usize {
        (from as usize - 1) * self.n + (to as usize - 1)
    }

    /// Decides the fate of one message sent at `now`.
    pub fn route(&self, rng: &mut Rng, from: NodeId, to: NodeId, now: Time) -> Route {
        let s = self.slot(from, to);
        if self.blocked[s] {
            return Route::Lost { blocked: true };
        }
        if rng.chance_ppm(self.faults.drop_ppm) {
            return Route::Lost { blocked: false };
        }
        let link = self.links[s];
        let at = |rng: &mut Rng| {
            let mut t = now + link.base_us + rng.range(0, link.jitter_us + 1);
            if rng.chance_ppm(self.faults.reorder_ppm) {
                t += rng.range(1, self.faults.reorder_delay_us_max + 1);
            }
            t
        };
        let first = at(rng);
        let dup = rng.chance_ppm(self.faults.duplicate_ppm).then(|| at(rng));
        Route::Deliver(first, dup)
    }

    /// The incarnation of `to` that `from` sends to: the one it last heard
    /// from.
    pub fn known_incarnation(&self, from: NodeId, to: NodeId) -> u32 {
        self.known_inc[self.slot(from, to)]
    }

    /// `at` received a message from incarnation `inc` of `from`: its
    /// answers go there from now on.
    pub fn heard_from(&mut self, at: NodeId, from: NodeId, inc: u32) {
        let s = self.slot(at, from);
        self.known_inc[s] = self.known_inc[s].max(inc);
    }

    /// Installs `p`, replacing any current partition.
    pub fn partition(&mut self, p: Partition) {
        self.blocked.iter_mut().for_each(|b| *b = false);
        let block = |net: &mut Network, a: &[NodeId], b: &[NodeId], both: bool| {
            for &x in a {
                for &y in b {
                    let s = net.slot(x, y);
                    net.blocked[s] = true;
                    if both {
                        let s = net.slot(y, x);
                        net.blocked[s] = true;
                    }
                }
            }
        };
        match &p {
            Partition::Symmetric { a, b } | Partition::Bridge { a, b, .. } => {
                block(self, a, b, true)
            }
            Partition::Asymmetric { from, to } => block(self, from, to, false),
        }
        self.partition = Some(p);
    }

    /// Removes any partition.
    pub fn heal(&mut self) {
        self.blocked.iter_mut().for_each(|b| *b = false);
        self.partition = None;
    }

    /// The current partition.
    pub fn current_partition(&self) -> Option<&Partition> {
        self.partition.as_ref()
    }

    /// Whether `from` can send to `to`.
    pub fn connected(&self, from: NodeId, to: NodeId) -> bool {
        !self.blocked[self.slot(from, to)]
    }

    /// Stops random message faults (the liveness phase); latency stays.
    pub fn calm(&mut self) {
        self.faults.drop_ppm = 0;
        self.faults.duplicate_ppm = 0;
        self.faults.reorder_ppm = 0;
    }

    /// Draws a random partition of `voters` nodes (`voters >= 2`).
    pub fn random_partition(rng: &mut Rng, voters: usize) -> Partition {
        let mut ids: Vec<NodeId> = (1..=voters as NodeId).collect();
        // Fisher–Yates.
        for i in (1..ids.len()).rev() {
            let j = rng.index(i + 1);
            ids.swap(i, j);
        }
        match rng.range(0, if voters >= 3 { 3 } else { 2 }) {
            0 => {
                let cut = 1 + rng.index(voters - 1);
                let (a, b) = ids.split_at(cut);
                Partition::Symmetric {
                    a: sorted(a),
                    b: sorted(b),
                }
            }
            1 => {
                let cut = 1 + rng.index(voters - 1);
                let (a, b) = ids.split_at(cut);
                Partition::Asymmetric {
                    from: sorted(a),
                    to: sorted(b),
                }
            }
            _ => {
                let bridge = ids[0];
                let rest = &ids[1..];
                let cut = 1 + rng.index(rest.len() - 1);
                let (a, b) = rest.split_at(cut);
                Partition::Bridge {
                    a: sorted(a),
                    b: sorted(b),
                    bridge,
                }
            }
        }
    }
}

fn sorted(v: &[NodeId]) -> Vec<NodeId> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(voters: usize) -> (Network, Rng) {
        let mut cfg = SimConfig::from_seed(3);
        cfg.voters = voters;
        cfg.spares = 0;
        cfg.faults.drop_ppm = 0;
        cfg.faults.duplicate_ppm = 0;
        cfg.faults.reorder_ppm = 0;
        let mut rng = Rng::new(1);
        (Network::new(&cfg, &mut rng), rng)
    }

    #[test]
    fn partitions_block_the_right_links() {
        let (mut n, _) = net(5);
        n.partition(Partition::Symmetric {
            a: vec![1, 2],
            b: vec![3, 4, 5],
        });
        assert!(!n.connected(1, 3) && !n.connected(3, 1) && n.connected(1, 2) && n.connected(3, 4));
        n.partition(Partition::Asymmetric {
            from: vec![1],
            to: vec![2],
        });
        assert!(!n.connected(1, 2) && n.connected(2, 1) && n.connected(1, 3));
        n.partition(Partition::Bridge {
            a: vec![1, 2],
            b: vec![4, 5],
            bridge: 3,
        });
        assert!(!n.connected(1, 4) && !n.connected(5, 2));
        assert!(n.connected(1, 3) && n.connected(3, 1) && n.connected(3, 5) && n.connected(5, 3));
        n.heal();
        assert!((1..=5).all(|a| (1..=5).all(|b| n.connected(a, b))));
    }

    #[test]
    fn latency_is_within_link_bounds_and_faults_apply() {
        let (mut n, mut rng) = net(3);
        for _ in 0..1000 {
            let l = n.links[n.slot(1, 2)];
            match n.route(&mut rng, 1, 2, 100) {
                Route::Deliver(t, None) => {
                    assert!(t >= 100 + l.base_us && t <= 100 + l.base_us + l.jitter_us)
                }
                r => panic!("calm network: {r:?}"),
            }
        }
        n.faults.drop_ppm = 1_000_000;
        assert_eq!(n.route(&mut rng, 1, 2, 0), Route::Lost { blocked: false });
        n.faults.drop_ppm = 0;
        n.faults.duplicate_ppm = 1_000_000;
        assert!(matches!(
            n.route(&mut rng, 1, 2, 0),
            Route::Deliver(_, Some(_))
        ));
    }

    #[test]
    fn random_partitions_split_every_node_into_a_side() {
        let mut rng = Rng::new(5);
        for voters in 2..=7 {
            for _ in 0..50 {
                let p = Network::random_partition(&mut rng, voters);
                let mut all: Vec<NodeId> = match &p {
                    Partition::Symmetric { a, b } => [a.clone(), b.clone()].concat(),
                    Partition::Asymmetric { from, to } => [from.clone(), to.clone()].concat(),
                    Partition::Bridge { a, b, bridge } => {
                        [a.clone(), b.clone(), vec![*bridge]].concat()
                    }
                };
                all.sort_unstable();
                assert_eq!(all, (1..=voters as NodeId).collect::<Vec<_>>(), "{p}");
            }
        }
    }
}
