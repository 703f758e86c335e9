//! The harness for `metalraft-core`.

use std::collections::VecDeque;

use bytes::Bytes;
use metalraft_core::{ConfState, Config, EntryData, MemStorage, Message, Node, Payload, Role};

use crate::workload::{Applier, Cluster};

/// The proposal payload: a reference-counted `bytes::Bytes`, the same buffer
/// type raft-rs stores in its entries, so cloning an entry into a message is
/// a reference-count increment for both libraries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BytesPayload(pub Bytes);

impl Payload for BytesPayload {
    fn payload_len(&self) -> usize {
        self.0.len()
    }
}

type MetalNode = Node<BytesPayload, MemStorage<BytesPayload>>;

/// Node ids 1, 2, 3 live at positions 0, 1, 2.
pub struct MetalCluster {
    nodes: Vec<MetalNode>,
    appliers: Vec<Applier>,
    wire: VecDeque<Message<BytesPayload>>,
    delivered: u64,
    /// After the election, every message must be accepted: a fault-free
    /// run that drops messages is a harness bug.
    strict: bool,
}

/// The core's defaults (heartbeat 1 tick, election timeout 10..20 ticks,
/// pre-vote and check-quorum on, 256 entries / 1 MiB per message, 256
/// in-flight messages, 64 MiB uncommitted and per-Ready apply limits). The
/// raft-rs configuration mirrors these.
fn config(id: u64) -> Config {
    let mut c = Config::new(id);
    c.rng_seed = 7;
    c
}

impl MetalCluster {
    /// The sans-IO loop of the core's README for one node: send, persist,
    /// acknowledge, apply; until the node has nothing more to do.
    /// Returns whether it did anything.
    fn drive(&mut self, i: usize) -> bool {
        let node = &mut self.nodes[i];
        let applier = &mut self.appliers[i];
        let id = node.id();
        let mut did = false;
        while node.has_ready() {
            did = true;
            let mut rd = node.ready().expect("in-memory storage cannot fail");
            // 1. Messages in a Ready may go now (the core holds back the ones
            //    that promise durable state until step 3).
            self.wire.extend(rd.take_messages());
            // 2. Persist, 3. acknowledge.
            if let Some(p) = rd.take_persist() {
                node.storage_mut().apply_persist(&p);
                node.on_persisted(p.into_token())
                    .expect("acknowledged in order");
            }
            // 4. Apply.
            for e in rd.take_committed_entries() {
                match &e.data {
                    EntryData::Noop => applier.apply(id, e.index, None),
                    EntryData::Normal(p) => applier.apply(id, e.index, Some(&p.0)),
                    EntryData::ConfChange(_) => panic!("no membership change was proposed"),
                }
            }
        }
        did
    }
}

impl Cluster for MetalCluster {
    const NAME: &'static str = "metalraft-core";

    fn new() -> Self {
        let ids = [1, 2, 3];
        let nodes = ids
            .iter()
            .map(|&id| {
                let storage = MemStorage::new_with_conf(ConfState::with_voters(&ids));
                Node::new(config(id), storage, 0).expect("valid config")
            })
            .collect();
        let mut c = MetalCluster {
            nodes,
            appliers: ids.iter().map(|_| Applier::new()).collect(),
            wire: VecDeque::new(),
            delivered: 0,
            strict: false,
        };
        c.nodes[0].campaign().expect("node 1 is a voter");
        c.pump();
        assert_eq!(c.nodes[0].role(), Role::Leader, "node 1 won the election");
        c.strict = true;
        c
    }

    fn propose(&mut self, data: Vec<u8>) {
        self.nodes[0]
            .propose(BytesPayload(Bytes::from(data)))
            .expect("node 1 leads and limits are not reached");
    }

    fn pump(&mut self) {
        loop {
            let mut did = false;
            for i in 0..self.nodes.len() {
                did |= self.drive(i);
            }
            if !did && self.wire.is_empty() {
                return;
            }
            while let Some(m) = self.wire.pop_front() {
                self.delivered += 1;
                let to = (m.to - 1) as usize;
                // During the election late votes are dropped, as expected.
                if let Err(e) = self.nodes[to].step(m) {
                    assert!(!self.strict, "node {}: message dropped: {e:?}", to + 1);
                }
            }
        }
    }

    fn applied(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.appliers[i].applied())
    }

    fn messages(&self) -> u64 {
        self.delivered
    }
}
