//! A small in-memory cluster of real `Replica`s: a message queue with
//! partitions, immediate or slow persistence, crash and restart from what
//! was durable. Deterministic: no clock, no randomness beyond the core's
//! seeded election timeouts.
#![allow(dead_code)]

use std::collections::{BTreeSet, VecDeque};

use metalraft_core::{
    Entry, HardState, Index, MemStorage, Message, NodeId, PersistToken, Role, SnapshotInstall,
};
use metalraft_replica::{Completion, Config, Event, Output, OutputOf, Replica, StateMachine};

pub type Store = MemStorage<Vec<u8>>;

/// Drops the messages it returns true for.
pub type Filter = Box<dyn Fn(&Message<Vec<u8>>) -> bool>;

/// How persistence batches become durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// Acknowledged as soon as the replica hands them out.
    Immediate,
    /// Acknowledged this many rounds later (a slow disk).
    Slow(u32),
}

/// A batch written but not yet durable.
struct InFlight {
    due_round: u64,
    entries: Vec<Entry<Vec<u8>>>,
    hard_state: Option<HardState>,
    install: Option<(SnapshotInstall, Vec<u8>)>,
    token: PersistToken,
}

pub struct Slot<M: StateMachine> {
    pub id: NodeId,
    pub replica: Option<Replica<M, Store>>,
    /// What survives a crash.
    pub disk: Store,
    in_flight: VecDeque<InFlight>,
    pub completions: Vec<Completion<M::Output, M::ReadOutput>>,
    pub events: Vec<Event<M::Event>>,
    pub failure: Option<metalraft_replica::Fatal>,
    pub snapshots_saved: Vec<Index>,
    /// Of those, the ones the state machine deferred (`SnapshotDue`).
    pub snapshots_deferred: usize,
}

impl<M: StateMachine> Slot<M> {
    fn new(id: NodeId, replica: Replica<M, Store>, disk: Store) -> Self {
        Slot {
            id,
            replica: Some(replica),
            disk,
            in_flight: VecDeque::new(),
            completions: Vec::new(),
            events: Vec::new(),
            failure: None,
            snapshots_saved: Vec::new(),
            snapshots_deferred: 0,
        }
    }
}

pub struct Cluster<M: StateMachine> {
    pub slots: Vec<Slot<M>>,
    pub net: VecDeque<Message<Vec<u8>>>,
    /// Links (from, to) that drop everything.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    pub persistence: Persistence,
    /// Drops a message when it returns true (targeted faults).
    pub filter: Option<Filter>,
    pub round: u64,
    make_sm: fn() -> M,
    restore_sm: fn(&[u8]) -> M,
    cfg: fn(NodeId) -> Config,
    /// Every output, for determinism checks.
    pub trace: Vec<String>,
    /// Take outputs with `Replica::poll_mut` (emptied in place) instead of
    /// `Replica::poll`.
    pub in_place: bool,
}

pub fn default_config(id: NodeId) -> Config {
    let mut cfg = Config::new(id);
    cfg.core.rng_seed = 42;
    cfg
}

impl<M: StateMachine> Cluster<M>
where
    M::Output: std::fmt::Debug,
    M::ReadOutput: std::fmt::Debug,
    M::Event: std::fmt::Debug,
{
    pub fn new(
        n: u64,
        persistence: Persistence,
        cfg: fn(NodeId) -> Config,
        make_sm: fn() -> M,
        restore_sm: fn(&[u8]) -> M,
    ) -> Self {
        let voters: Vec<NodeId> = (1..=n).collect();
        let mut c = Cluster {
            slots: Vec::new(),
            net: VecDeque::new(),
            cut: BTreeSet::new(),
            persistence,
            filter: None,
            round: 0,
            make_sm,
            restore_sm,
            cfg,
            trace: Vec::new(),
            in_place: false,
        };
        for id in 1..=n {
            let disk = Store::bootstrap(&voters);
            let replica = Replica::new(cfg(id), disk.clone(), make_sm()).expect("config");
            c.slots.push(Slot::new(id, replica, disk));
        }
        c
    }

    /// Adds a node that joins later (empty log, empty configuration).
    pub fn add_node(&mut self) -> NodeId {
        let id = self.slots.len() as NodeId + 1;
        let disk = Store::new_with_conf(Default::default());
        let replica = Replica::new((self.cfg)(id), disk.clone(), (self.make_sm)()).expect("config");
        self.slots.push(Slot::new(id, replica, disk));
        id
    }

    pub fn r(&mut self, id: NodeId) -> &mut Replica<M, Store> {
        self.slots[id as usize - 1]
            .replica
            .as_mut()
            .expect("node is down")
    }

    pub fn slot(&mut self, id: NodeId) -> &mut Slot<M> {
        &mut self.slots[id as usize - 1]
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.slots.iter().find_map(|s| {
            s.replica
                .as_ref()
                .filter(|r| r.role() == Role::Leader)
                .map(|r| r.id())
        })
    }

    /// Isolates `id` from everyone (both directions).
    pub fn isolate(&mut self, id: NodeId) {
        for s in &self.slots {
            if s.id != id {
                self.cut.insert((id, s.id));
                self.cut.insert((s.id, id));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Crash: everything not durable is lost.
    pub fn crash(&mut self, id: NodeId) {
        let s = self.slot(id);
        s.replica = None;
        s.in_flight.clear();
    }

    /// Restart from the disk: the state machine from the durable snapshot.
    pub fn restart(&mut self, id: NodeId) {
        let cfg = (self.cfg)(id);
        let (make, restore) = (self.make_sm, self.restore_sm);
        let s = self.slot(id);
        let sm = match s.disk.snapshot() {
            Some((_, data)) => restore(data),
            None => make(),
        };
        s.replica = Some(Replica::new(cfg, s.disk.clone(), sm).expect("restart"));
    }

    /// One round: acknowledge due batches, tick every live node, then
    /// deliver and poll until quiet.
    pub fn round(&mut self) {
        self.round += 1;
        for i in 0..self.slots.len() {
            self.ack_due(i, false);
            if let Some(r) = self.slots[i].replica.as_mut() {
                let _ = r.tick();
            }
        }
        self.settle();
    }

    pub fn rounds(&mut self, n: usize) {
        for _ in 0..n {
            self.round();
        }
    }

    /// Runs rounds until `done` holds (at most `max`); returns whether it did.
    pub fn run_until(&mut self, max: usize, mut done: impl FnMut(&mut Self) -> bool) -> bool {
        for _ in 0..max {
            if done(self) {
                return true;
            }
            self.round();
        }
        done(self)
    }

    pub fn elect(&mut self) -> NodeId {
        assert!(self.run_until(300, |c| c.leader().is_some()), "no leader");
        // Let the leader commit its no-op so it can serve reads and changes.
        self.rounds(3);
        self.leader().expect("leader")
    }

    /// Delivers messages and polls every node until nothing moves.
    pub fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for i in 0..self.slots.len() {
                moved |= self.drain(i);
            }
            while let Some(m) = self.net.pop_front() {
                moved = true;
                if self.cut.contains(&(m.from, m.to)) || self.filter.as_ref().is_some_and(|f| f(&m))
                {
                    continue;
                }
                let to = m.to as usize - 1;
                if let Some(r) = self.slots.get_mut(to).and_then(|s| s.replica.as_mut()) {
                    let _ = r.step(m);
                }
                moved |= self.drain(to);
            }
            if !moved {
                return;
            }
        }
        panic!("cluster did not settle");
    }

    /// Polls node `i` until it has nothing to do.
    fn drain(&mut self, i: usize) -> bool {
        let mut any = false;
        loop {
            let s = &mut self.slots[i];
            let Some(r) = s.replica.as_mut() else {
                return any;
            };
            let polled = if self.in_place {
                r.poll_mut().map(|o| Output {
                    messages: o.messages.drain(..).collect(),
                    persist: o.persist.take(),
                    completions: o.completions.drain(..).collect(),
                    snapshot: o.snapshot.take(),
                    snapshot_due: o.snapshot_due.take(),
                    events: o.events.drain(..).collect(),
                    failure: o.failure.take(),
                })
            } else {
                r.poll()
            };
            let Some(out) = polled else {
                return any;
            };
            any = true;
            self.handle_output(i, out);
        }
    }

    fn handle_output(&mut self, i: usize, mut out: OutputOf<M, Vec<u8>>) {
        let round = self.round;
        let delay = match self.persistence {
            Persistence::Immediate => 0,
            Persistence::Slow(d) => u64::from(d),
        };
        let s = &mut self.slots[i];
        self.trace.push(format!(
            "r{} n{} msgs={:?} persist={:?} done={:?} snap={:?} ev={:?} fail={:?}",
            round,
            s.id,
            out.messages,
            out.persist
                .as_ref()
                .map(|p| (p.persist.seq(), p.persist.entries().len())),
            out.completions,
            out.snapshot.as_ref().map(|x| (x.meta.index, x.data.len())),
            out.events,
            out.failure
        ));
        self.net.extend(out.messages.drain(..));
        let r = s.replica.as_mut().expect("live");
        if let Some(mut work) = out.persist.take() {
            let store = r.storage_mut();
            let install = match (work.persist.snapshot(), work.snapshot_data.take()) {
                (Some(inst), Some(data)) => {
                    store.install_snapshot(inst, data.clone());
                    Some((inst.clone(), data))
                }
                _ => None,
            };
            store.apply_persist(&work.persist);
            let hard_state = work.persist.hard_state();
            let entries = work.persist.take_entries();
            s.in_flight.push_back(InFlight {
                due_round: round + delay,
                entries,
                hard_state,
                install,
                token: work.persist.into_token(),
            });
        }
        let installing = s.in_flight.iter().any(|b| b.install.is_some());
        assert!(
            !(installing && (out.snapshot.is_some() || out.snapshot_due.is_some())),
            "n{}: a snapshot was taken while a received snapshot's install is not durable",
            s.id
        );
        if let Some(snap) = out.snapshot.take() {
            // Snapshots are written synchronously here.
            let index = snap.meta.index;
            let _ = r
                .storage_mut()
                .create_snapshot(snap.meta.clone(), snap.data.clone());
            let _ = s.disk.create_snapshot(snap.meta, snap.data);
            r.snapshot_saved(index);
            s.snapshots_saved.push(index);
        }
        if let Some(due) = out.snapshot_due.take() {
            // The caller's side of a deferred snapshot: the state machine is
            // still at the snapshot's index when the output is handed out.
            let index = due.meta.index;
            assert_eq!(r.state_machine().applied_index(), index);
            let data = r.state_machine().snapshot().expect("snapshot");
            let _ = r
                .storage_mut()
                .create_snapshot(due.meta.clone(), data.clone());
            let _ = s.disk.create_snapshot(due.meta, data);
            r.snapshot_saved(index);
            s.snapshots_saved.push(index);
            s.snapshots_deferred += 1;
        }
        s.completions.extend(out.completions);
        s.events.extend(out.events);
        if out.failure.is_some() {
            s.failure = out.failure;
        }
        if delay == 0 {
            self.ack_due(i, true);
        }
    }

    /// Makes due batches durable and acknowledges them.
    fn ack_due(&mut self, i: usize, all_due: bool) {
        let round = self.round;
        let s = &mut self.slots[i];
        while let Some(b) = s.in_flight.front() {
            if !all_due && b.due_round > round {
                break;
            }
            if b.due_round > round {
                break;
            }
            let Some(b) = s.in_flight.pop_front() else {
                break;
            };
            if let Some((inst, data)) = &b.install {
                s.disk.install_snapshot(inst, data.clone());
            }
            s.disk.append(&b.entries);
            if let Some(hs) = b.hard_state {
                s.disk.set_hard_state(hs);
            }
            if let Some(r) = s.replica.as_mut() {
                let _ = r.on_persisted(b.token);
            }
        }
    }
}

/// A key-value cluster.
pub fn kv_cluster(
    n: u64,
    p: Persistence,
    cfg: fn(NodeId) -> Config,
) -> Cluster<metalraft_kv::KvStore> {
    Cluster::new(n, p, cfg, metalraft_kv::KvStore::new, |d| {
        metalraft_kv::KvStore::restore(d).expect("durable snapshot restores")
    })
}

pub fn put(key: &str, value: &str) -> Vec<u8> {
    metalraft_kv::Command::Put(metalraft_kv::PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    })
    .encode()
}

pub fn get(key: &str) -> metalraft_kv::RangeRequest {
    metalraft_kv::RangeRequest::single(key.as_bytes())
}
