//! The harness for tikv's raft-rs (`raft` 0.7): `RawNode` + its `MemStorage`.

use std::collections::VecDeque;

use raft::eraftpb::{ConfState, Entry, EntryType, Message};
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole};

use crate::workload::{Applier, Cluster};

/// The same limits as the metalraft-core defaults (see `metal::config`):
/// heartbeat 1 tick, election timeout 10..20 ticks, pre-vote and
/// check-quorum on, 1 MiB per message (raft-rs's default of 0 would mean
/// one entry per message), 256 in-flight messages, 64 MiB uncommitted and
/// per-Ready apply limits. `batch_append` merges appends to the same peer
/// made before the next `ready()`, as metalraft-core always does; without
/// it every proposal becomes its own message per follower.
fn config(id: u64) -> Config {
    Config {
        id,
        election_tick: 10,
        heartbeat_tick: 1,
        min_election_tick: 10,
        max_election_tick: 20,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        batch_append: true,
        max_uncommitted_size: 64 * 1024 * 1024,
        max_committed_size_per_ready: 64 * 1024 * 1024,
        ..Config::default()
    }
}

/// Node ids 1, 2, 3 live at positions 0, 1, 2.
pub struct RaftRsCluster {
    nodes: Vec<RawNode<MemStorage>>,
    appliers: Vec<Applier>,
    wire: VecDeque<Message>,
    delivered: u64,
    /// After the election, every message must be accepted: a fault-free
    /// run that drops messages is a harness bug.
    strict: bool,
}

fn apply_all(applier: &mut Applier, id: u64, entries: Vec<Entry>) {
    for e in entries {
        assert_eq!(e.get_entry_type(), EntryType::EntryNormal, "no conf change");
        // raft-rs's new leader appends an entry with empty data.
        let data = (!e.data.is_empty()).then_some(&e.data[..]);
        applier.apply(id, e.index, data);
    }
}

impl RaftRsCluster {
    /// The loop of raft-rs's documentation ("Processing the Ready State",
    /// steps 1-7) for one node, until it has nothing more to do. Returns
    /// whether it did anything.
    fn drive(&mut self, i: usize) -> bool {
        let node = &mut self.nodes[i];
        let applier = &mut self.appliers[i];
        let id = node.raft.id;
        let mut did = false;
        while node.has_ready() {
            did = true;
            let mut rd = node.ready();
            // 1. Messages that may go before persisting (a leader's appends).
            self.wire.extend(rd.take_messages());
            // 2. No snapshots in this workload.
            assert!(rd.snapshot().is_empty(), "no snapshot expected");
            // 3. Apply committed entries (already persisted locally).
            apply_all(applier, id, rd.take_committed_entries());
            // 4. Persist entries, 5. the hard state.
            if !rd.entries().is_empty() {
                node.mut_store()
                    .wl()
                    .append(rd.entries())
                    .expect("contiguous append");
            }
            if let Some(hs) = rd.hs() {
                node.mut_store().wl().set_hardstate(hs.clone());
            }
            // 6. Messages that promise durable state, now that it is stored.
            self.wire.extend(rd.take_persisted_messages());
            // 7. Advance, then handle the LightReady like steps 1 and 3.
            let mut light = node.advance(rd);
            if let Some(commit) = light.commit_index() {
                node.mut_store().wl().mut_hard_state().set_commit(commit);
            }
            self.wire.extend(light.take_messages());
            apply_all(applier, id, light.take_committed_entries());
            node.advance_apply();
        }
        did
    }
}

impl Cluster for RaftRsCluster {
    const NAME: &'static str = "raft-rs 0.7";

    fn new() -> Self {
        // raft-rs logs through slog; discard everything, as metalraft-core
        // logs nothing.
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let ids = vec![1, 2, 3];
        let nodes = ids
            .iter()
            .map(|&id| {
                let storage =
                    MemStorage::new_with_conf_state(ConfState::from((ids.clone(), vec![])));
                RawNode::new(&config(id), storage, &logger).expect("valid config")
            })
            .collect();
        let mut c = RaftRsCluster {
            nodes,
            appliers: ids.iter().map(|_| Applier::new()).collect(),
            wire: VecDeque::new(),
            delivered: 0,
            strict: false,
        };
        c.nodes[0].campaign().expect("node 1 is a voter");
        c.pump();
        assert_eq!(
            c.nodes[0].raft.state,
            StateRole::Leader,
            "node 1 won the election"
        );
        c.strict = true;
        c
    }

    fn propose(&mut self, data: Vec<u8>) {
        self.nodes[0]
            .propose(Vec::new(), data)
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
