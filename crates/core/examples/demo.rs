//! An in-process 3-node cluster driven by hand, in one thread: elects a
//! leader, replicates a few commands, kills the leader, elects another and
//! keeps going. Prints what happens.
//!
//! Run: `cargo run -p metalraft-core --example demo`

use std::collections::{BTreeMap, VecDeque};

use metalraft_core::{ConfState, Config, EntryData, MemStorage, Message, Node, NodeId, Role};

type DemoNode = Node<Vec<u8>, MemStorage<Vec<u8>>>;

struct Cluster {
    nodes: BTreeMap<NodeId, DemoNode>,
    down: Vec<NodeId>,
    wire: VecDeque<Message<Vec<u8>>>,
}

impl Cluster {
    fn new(ids: &[NodeId]) -> Self {
        let nodes = ids
            .iter()
            .map(|&id| {
                let mut cfg = Config::new(id);
                cfg.rng_seed = 2024;
                let storage = MemStorage::new_with_conf(ConfState::with_voters(ids));
                (id, Node::new(cfg, storage, 0).expect("valid config"))
            })
            .collect();
        Cluster {
            nodes,
            down: Vec::new(),
            wire: VecDeque::new(),
        }
    }

    /// The sans-IO loop for every node: send, persist, acknowledge, apply.
    fn pump(&mut self) {
        loop {
            for (&id, node) in self.nodes.iter_mut() {
                if self.down.contains(&id) {
                    continue;
                }
                while node.has_ready() {
                    let mut rd = node.ready().expect("storage is in memory");
                    if let Some(s) = rd.soft_state() {
                        println!(
                            "  node {id}: {:?} in term {} (leader {:?})",
                            s.role, s.term, s.leader
                        );
                    }
                    self.wire.extend(rd.take_messages());
                    if let Some(p) = rd.take_persist() {
                        node.storage_mut().apply_persist(&p);
                        node.on_persisted(p.into_token()).expect("acked in order");
                    }
                    for e in rd.take_committed_entries() {
                        if let EntryData::Normal(d) = e.data {
                            println!(
                                "  node {id}: applied #{} {:?}",
                                e.index,
                                String::from_utf8_lossy(&d)
                            );
                        }
                    }
                }
            }
            let Some(m) = self.wire.pop_front() else {
                break;
            };
            if self.down.contains(&m.to) {
                continue;
            }
            if let Some(node) = self.nodes.get_mut(&m.to) {
                let _dropped_if_stale = node.step(m);
            }
        }
    }

    fn tick_until_leader(&mut self) -> NodeId {
        for _ in 0..1_000 {
            for (id, node) in self.nodes.iter_mut() {
                if !self.down.contains(id) {
                    node.tick().expect("tick");
                }
            }
            self.pump();
            let leader = self
                .nodes
                .iter()
                .find(|(id, n)| !self.down.contains(id) && n.role() == Role::Leader);
            if let Some((&id, _)) = leader {
                return id;
            }
        }
        panic!("no leader elected");
    }
}

fn main() {
    println!("metalraft-core demo: 3 nodes in one process, messages in memory");
    let mut c = Cluster::new(&[1, 2, 3]);
    let leader = c.tick_until_leader();
    println!("leader is node {leader}; proposing 3 commands");
    for cmd in ["x=1", "y=2", "z=3"] {
        c.nodes
            .get_mut(&leader)
            .unwrap()
            .propose(cmd.as_bytes().to_vec())
            .expect("leader");
        c.pump();
    }
    println!("crashing node {leader}");
    c.down.push(leader);
    let next = c.tick_until_leader();
    println!("new leader is node {next}; proposing 1 command");
    c.nodes
        .get_mut(&next)
        .unwrap()
        .propose(b"w=4".to_vec())
        .expect("leader");
    c.pump();
    println!("done");
}
