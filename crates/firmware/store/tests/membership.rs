//! Membership on the firmware's storage, with real replicas over the real
//! [`DiskLog`] driven by the real [`Pump`] (only the disk is a model, in
//! RAM, and messages are delivered in rounds):
//!
//! - a joiner's fresh disk gets no bootstrap entry (it is not one of the
//!   bootstrap voters): an empty log, no configuration;
//! - added as a learner after the leader compacted its log, it catches up
//!   through the leader's snapshot, then is promoted;
//! - every node reopened from its disk (as after a restart) has the
//!   membership of its log and snapshot, whatever bootstrap voters it is
//!   given: the config block is read only on a fresh disk;
//! - a removed node never receives the change that removes it (the leader
//!   stops replicating to it when it appends that change), so it keeps
//!   campaigning; the members that applied the change answer it with a
//!   removal notice ([`Departures`]) that it believes, while a node added
//!   back later does not believe a stale one.

mod common;

use common::MemDisk;
use std::cell::RefCell;
use std::rc::Rc;

use metalraft_core::{ConfChange, ConfChangeOp, ConfState, Message, MessageBody, Role};
use metalraft_fw_proto::disk::{LOG_START_SECTOR, SECTOR_BYTES};
use metalraft_fw_store::{believe_notice, Departures, DiskLog, DiskReplica, Pump};
use metalraft_kv::{Command, KvStore, PutRequest};
use metalraft_replica::{Config, Event};

/// The bootstrap voters (the config block's `members`).
const BOOTSTRAP: [u64; 3] = [1, 2, 3];
/// The node that joins later.
const JOINER: u64 = 4;
const DISK_SECTORS: u64 = LOG_START_SECTOR + 1024;
const SNAPSHOT_THRESHOLD: u64 = 8;
/// Most rounds any step waits for progress.
const MAX_ROUNDS: usize = 3_000;

fn config(id: u64) -> Config {
    let mut cfg = Config::new(id);
    cfg.core.heartbeat_interval_ticks = 1;
    // Node 1 campaigns first; the others only if it is gone.
    let election = if id == 1 { 10 } else { 40 };
    cfg.core.election_timeout_ticks_min = election;
    cfg.core.election_timeout_ticks_max = election * 2;
    cfg.core.rng_seed = id;
    cfg.core.max_snapshot_chunk_bytes = 256;
    // As the firmware: the disk log keeps nothing behind a snapshot.
    cfg.snapshot_catch_up_entries = 0;
    cfg.snapshot_threshold_entries = SNAPSHOT_THRESHOLD;
    cfg
}

fn open(id: u64, disk: &MemDisk, bootstrap: &[u64]) -> DiskReplica<KvStore, MemDisk> {
    let (log, _, snapshot) = DiskLog::open(disk.clone(), bootstrap).expect("recovers");
    let kv = match snapshot {
        Some(data) => KvStore::restore(&data).expect("snapshot restores"),
        None => KvStore::new(),
    };
    DiskReplica::new(config(id), log, kv).expect("replica")
}

struct Node {
    id: u64,
    disk: MemDisk,
    replica: DiskReplica<KvStore, MemDisk>,
    pump: Pump,
    removed: bool,
    /// What the firmware's shell tracks for removal notices.
    departures: Departures,
}

struct Cluster {
    nodes: Vec<Node>,
    queue: Vec<Message<Vec<u8>>>,
}

impl Cluster {
    /// Nodes 1..=3 bootstrap; node 4 gets a fresh disk as a joiner.
    fn new() -> Cluster {
        let nodes = (1..=JOINER)
            .map(|id| {
                let disk = MemDisk(Rc::new(RefCell::new(vec![
                    0;
                    DISK_SECTORS as usize
                        * SECTOR_BYTES
                ])));
                let bootstrap: &[u64] = if BOOTSTRAP.contains(&id) {
                    &BOOTSTRAP
                } else {
                    &[]
                };
                Node {
                    id,
                    replica: open(id, &disk, bootstrap),
                    disk,
                    pump: Pump::new(),
                    removed: false,
                    departures: Departures::new(ConfState::default()),
                }
            })
            .collect();
        Cluster {
            nodes,
            queue: Vec::new(),
        }
    }

    fn node(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[id as usize - 1]
    }

    fn round(&mut self) {
        let inbox = std::mem::take(&mut self.queue);
        for n in self.nodes.iter_mut().filter(|n| !n.removed) {
            n.replica.tick().expect("tick");
            for m in inbox.iter().filter(|m| m.to == n.id) {
                let _ = n.replica.step(m.clone());
            }
            loop {
                let queue = &mut self.queue;
                let progressed = n
                    .pump
                    .poll(&mut n.replica, |out| {
                        assert!(out.failure.is_none(), "node {}: {:?}", n.id, out.failure);
                        queue.append(&mut out.messages);
                        for e in out.events.drain(..) {
                            if let Event::Membership(m) = e {
                                n.departures.applied(m.index, &m.change);
                                n.removed |= m.self_removed;
                            }
                        }
                    })
                    .is_some();
                n.pump.sync(&mut n.replica).expect("sync");
                if !progressed {
                    break;
                }
            }
        }
    }

    fn run_until(&mut self, what: &str, done: impl Fn(&Cluster) -> bool) {
        for _ in 0..MAX_ROUNDS {
            if done(self) {
                return;
            }
            self.round();
        }
        panic!("no {what} within {MAX_ROUNDS} rounds");
    }

    fn applied(&self, id: u64) -> u64 {
        self.nodes[id as usize - 1].replica.applied_index()
    }

    fn put(&mut self, req_id: u64, key: &str) {
        let cmd = Command::Put(PutRequest {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
            ..PutRequest::default()
        });
        let index = self
            .node(1)
            .replica
            .propose(req_id, &cmd.encode())
            .expect("leader accepts");
        self.run_until("the put applied", |c| c.applied(1) >= index);
    }

    /// Proposes `ops` on node 1 and runs until every running node applied it.
    fn change(&mut self, req_id: u64, ops: &[ConfChangeOp]) {
        let index = self
            .node(1)
            .replica
            .propose_conf_change(req_id, ConfChange::new(ops))
            .expect("the leader accepts the change");
        self.run_until("the change applied everywhere", |c| {
            c.nodes
                .iter()
                .filter(|n| !n.removed && n.replica.node().conf_state().contains(n.id))
                .all(|n| n.replica.applied_index() >= index)
        });
    }
}

fn voters(r: &DiskReplica<KvStore, MemDisk>) -> Vec<u64> {
    r.node().conf_state().voters.clone()
}

#[test]
fn a_joiner_catches_up_by_snapshot_and_every_node_recovers_membership_from_disk() {
    let mut c = Cluster::new();
    // The joiner's fresh disk holds no bootstrap entry and no configuration.
    let joiner = &c.nodes[JOINER as usize - 1].replica;
    assert_eq!(joiner.storage().last(), 0, "no bootstrap entry on a joiner");
    assert_eq!(joiner.node().conf_state(), &ConfState::default());

    c.run_until("a leader", |c| c.nodes[0].replica.role() == Role::Leader);
    for i in 0..3 * SNAPSHOT_THRESHOLD {
        c.put(i + 1, &format!("k{i}"));
    }
    let compacted = c.nodes[0].replica.storage().snapshot_index();
    assert!(
        compacted > 1,
        "the leader compacted past the bootstrap entry"
    );
    // The joiner, never added, heard nothing.
    assert_eq!(c.applied(JOINER), 0);

    // Added as a learner: only the leader's snapshot can bring it up.
    c.change(100, &[ConfChangeOp::AddLearner(JOINER)]);
    c.run_until("the learner to catch up", |c| {
        c.applied(JOINER) == c.applied(1)
    });
    let learner = &c.nodes[JOINER as usize - 1].replica;
    assert_eq!(learner.stats().snapshots_installed, 1);
    assert!(learner.node().conf_state().is_learner(JOINER));
    assert_eq!(
        learner.state_machine().hash(),
        c.nodes[0].replica.state_machine().hash()
    );

    // Promoted: four voters.
    c.change(101, &[ConfChangeOp::AddVoter(JOINER)]);
    assert_eq!(voters(&c.nodes[0].replica), vec![1, 2, 3, 4]);
    c.put(200, "after-promotion");

    // Restart every node from its disk. The bootstrap voters are the config
    // block's [1, 2, 3] (or none for the joiner); the membership comes from
    // the log and snapshot all the same.
    for n in &c.nodes {
        for bootstrap in [&BOOTSTRAP[..], &[]] {
            let again = open(n.id, &n.disk, bootstrap);
            assert_eq!(
                voters(&again),
                vec![1, 2, 3, 4],
                "node {} after a restart (bootstrap {bootstrap:?})",
                n.id
            );
        }
    }
}

#[test]
fn a_removed_node_is_told_by_a_notice_and_a_node_added_back_is_not() {
    let mut c = Cluster::new();
    c.run_until("a leader", |c| c.nodes[0].replica.role() == Role::Leader);
    c.put(1, "k");
    let index = c
        .node(1)
        .replica
        .propose_conf_change(2, ConfChange::new(&[ConfChangeOp::Remove(3)]))
        .expect("the leader accepts");
    c.run_until("nodes 1 and 2 to apply the removal", |c| {
        c.applied(1) >= index && c.applied(2) >= index
    });
    // Two voters commit without node 3.
    c.put(3, "after-removal");
    assert_eq!(voters(&c.nodes[0].replica), vec![1, 2]);
    // Node 3 never got the change (the leader stopped replicating to it
    // when it appended it): it still thinks it is a voter and campaigns.
    let mut vote_requests = Vec::new();
    for _ in 0..400 {
        c.round();
        vote_requests.extend(
            c.queue
                .iter()
                .filter(|m| m.from == 3 && matches!(m.body, MessageBody::RequestVote { .. }))
                .cloned(),
        );
    }
    let three = &c.nodes[2].replica;
    assert!(!c.nodes[2].removed, "node 3 learned nothing through Raft");
    assert!(three.storage().last() < index);
    assert!(three.node().conf_state().is_voter(3));
    assert!(!vote_requests.is_empty(), "node 3 campaigns");
    // The members that applied the removal name it in a notice; node 3
    // believes it.
    for member in [1, 2] {
        let n = &c.nodes[member - 1];
        let latest = n.replica.node().conf_state();
        assert_eq!(n.departures.notice_for(3, latest), Some(index));
        assert_eq!(n.departures.notice_for(2, latest), None, "a member");
        assert_eq!(n.departures.notice_for(4, latest), None, "never a member");
    }
    assert!(believe_notice(index, three.storage().last()));

    // Added back: its log catches up through the removal and the addition,
    // so the notice a member that has not applied the addition might still
    // send cannot stop it; and once applied, no member sends one.
    let stale = c.nodes[1].departures.clone();
    c.change(4, &[ConfChangeOp::AddVoter(3)]);
    c.run_until("node 3 to catch up", |c| c.applied(3) == c.applied(1));
    let three = &c.nodes[2].replica;
    assert!(!believe_notice(index, three.storage().last()));
    let old_view = ConfState::with_voters(&[1, 2]);
    assert_eq!(stale.notice_for(3, &old_view), Some(index), "a stale view");
    for member in [1, 2] {
        let n = &c.nodes[member - 1];
        let latest = n.replica.node().conf_state();
        assert_eq!(n.departures.notice_for(3, latest), None);
    }
    assert_eq!(voters(&c.nodes[0].replica), vec![1, 2, 3]);
}
