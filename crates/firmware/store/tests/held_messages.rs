//! The firmware's driver never sends a message before the state it depends
//! on has been flushed (issue 12, defect 1: the core holds such messages
//! until `on_persisted`; this shows the firmware's side keeps the promise).
//!
//! Three real `metalraft-replica` replicas (a core node and a `KvStore`),
//! each over the real [`DiskLog`] (records, hard-state slots, recovery)
//! driven by the real [`Pump`] in the Raft task's order (poll, send, sync). Only the disk is a model: a
//! write-back cache whose writes become durable at `flush` and are lost on
//! power failure. At every send the test cuts the sender's power in
//! thought: it recovers a `DiskLog` from the durable image alone and checks
//! that the message's term, vote and acknowledged entries survived.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use metalraft_core::{HardState, LogStorage, Message, MessageBody};
use metalraft_fw_proto::disk::{LOG_START_SECTOR, SECTOR_BYTES};
use metalraft_fw_store::{
    BlockDevice, DiskError, DiskLog, DiskReplica, Pump, PumpError, StoreError,
};
use metalraft_kv::{Command, KvStore, PutRequest, RangeRequest};
use metalraft_replica::Config;

const MEMBERS: [u64; 3] = [1, 2, 3];
/// A small disk: the fixed areas plus a ring of a few hundred sectors.
const DISK_SECTORS: u64 = LOG_START_SECTOR + 512;
/// Most rounds any test waits for progress.
const MAX_ROUNDS: usize = 2_000;

/// A disk with a write-back cache.
#[derive(Default)]
struct Image {
    /// What reads see: every completed write.
    seen: Vec<u8>,
    /// What survives a power failure: writes covered by a completed flush.
    durable: Vec<u8>,
    /// Writes not yet flushed: `(sector, bytes)`.
    cached: Vec<(u64, Vec<u8>)>,
    /// Every flush fails from now on (and its cached writes are lost).
    failing: bool,
    flushes: u64,
    /// Flushes complete only at [`ModelDisk::complete`], as a device that
    /// carries out requests while the node goes on (the firmware's
    /// virtio-blk): `flush` returns once submitted.
    deferred: bool,
    /// With `deferred`: flushes submitted but not yet completed, each with
    /// the writes it covers, in order. As the firmware's driver does, a
    /// write after a flush starts only once it completed, so a power
    /// failure keeps some of these flushes whole, then any subset of the
    /// next one's sectors, and nothing after.
    flushing: Vec<Vec<(u64, Vec<u8>)>>,
}

#[derive(Clone)]
struct ModelDisk(Rc<RefCell<Image>>);

impl ModelDisk {
    fn new(bytes: Vec<u8>) -> ModelDisk {
        ModelDisk(Rc::new(RefCell::new(Image {
            seen: bytes.clone(),
            durable: bytes,
            ..Image::default()
        })))
    }

    fn range(&self, sector: u64, len: usize) -> Result<std::ops::Range<usize>, DiskError> {
        if len == 0 || len % SECTOR_BYTES != 0 {
            return Err(DiskError::Misaligned);
        }
        let start = sector as usize * SECTOR_BYTES;
        if start + len > self.0.borrow().seen.len() {
            return Err(DiskError::OutOfRange);
        }
        Ok(start..start + len)
    }
}

impl BlockDevice for ModelDisk {
    fn sectors(&self) -> u64 {
        (self.0.borrow().seen.len() / SECTOR_BYTES) as u64
    }

    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let r = self.range(sector, buf.len())?;
        buf.copy_from_slice(&self.0.borrow().seen[r]);
        Ok(())
    }

    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), DiskError> {
        let r = self.range(sector, buf.len())?;
        let mut img = self.0.borrow_mut();
        img.seen[r].copy_from_slice(buf);
        img.cached.push((sector, buf.to_vec()));
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DiskError> {
        let mut img = self.0.borrow_mut();
        let cached = std::mem::take(&mut img.cached);
        if img.failing {
            // The cached writes never reach the medium.
            return Err(DiskError::Io);
        }
        if img.deferred {
            img.flushing.push(cached);
            return Ok(());
        }
        for (sector, bytes) in cached {
            let start = sector as usize * SECTOR_BYTES;
            img.durable[start..start + bytes.len()].copy_from_slice(&bytes);
        }
        img.flushes += 1;
        Ok(())
    }
}

impl ModelDisk {
    /// The device completes the flushes submitted so far.
    fn complete(&self) {
        let mut img = self.0.borrow_mut();
        let done = std::mem::take(&mut img.flushing);
        if done.is_empty() {
            return;
        }
        for (sector, bytes) in done.into_iter().flatten() {
            let start = sector as usize * SECTOR_BYTES;
            img.durable[start..start + bytes.len()].copy_from_slice(&bytes);
        }
        img.flushes += 1;
    }

    /// Images a power failure could leave now: the durable one plus the
    /// first `k` flushes in flight whole (they completed) and a subset of
    /// the sectors written after them, up to the next flush (in any order),
    /// for every `k`. Every subset when there are at most
    /// [`MAX_SUBSET_SECTORS`]; else none, all, and each prefix and suffix
    /// in write order.
    fn power_cuts(&self) -> Vec<Vec<u8>> {
        let img = self.0.borrow();
        let groups: Vec<&Vec<(u64, Vec<u8>)>> = img.flushing.iter().chain([&img.cached]).collect();
        let mut images = Vec::new();
        for k in 0..groups.len() {
            let mut base = img.durable.clone();
            for (sector, bytes) in groups[..k].iter().copied().flatten() {
                let start = *sector as usize * SECTOR_BYTES;
                base[start..start + bytes.len()].copy_from_slice(bytes);
            }
            let sectors: Vec<(u64, &[u8])> = groups[k]
                .iter()
                .flat_map(|(s, b)| {
                    b.chunks(SECTOR_BYTES)
                        .enumerate()
                        .map(move |(i, c)| (s + i as u64, c))
                })
                .collect();
            let n = sectors.len();
            let keeps: Vec<Box<dyn Fn(usize) -> bool>> = if n <= MAX_SUBSET_SECTORS {
                (0..1u32 << n)
                    .map(|mask| {
                        Box::new(move |i: usize| mask & (1 << i) != 0) as Box<dyn Fn(usize) -> bool>
                    })
                    .collect()
            } else {
                (0..=n)
                    .flat_map(|j| {
                        [
                            Box::new(move |i: usize| i < j) as Box<dyn Fn(usize) -> bool>,
                            Box::new(move |i: usize| i >= j),
                        ]
                    })
                    .collect()
            };
            for keep in &keeps {
                let mut image = base.clone();
                for (i, (sector, bytes)) in sectors.iter().enumerate() {
                    if keep(i) {
                        let start = *sector as usize * SECTOR_BYTES;
                        image[start..start + SECTOR_BYTES].copy_from_slice(bytes);
                    }
                }
                images.push(image);
            }
        }
        images
    }
}

/// Most unflushed sectors whose every subset [`ModelDisk::power_cuts`] tries.
const MAX_SUBSET_SECTORS: usize = 8;

/// What a node would recover if its power failed now.
struct AfterPowerLoss {
    hard_state: HardState,
    last_index: u64,
}

fn after_power_loss(disk: &ModelDisk) -> Result<AfterPowerLoss, StoreError> {
    let image = disk.0.borrow().durable.clone();
    recover(image)
}

fn recover(image: Vec<u8>) -> Result<AfterPowerLoss, StoreError> {
    let (log, _, _) = DiskLog::open(ModelDisk::new(image), &MEMBERS)?;
    Ok(AfterPowerLoss {
        hard_state: log.initial_state().expect("initial state").hard_state,
        last_index: log.last(),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    PreVote,
    PreVoteResponse,
    RequestVote,
    RequestVoteResponse,
    AppendEntries,
    AppendEntriesResponse,
    Other,
}

fn kind(m: &Message<Vec<u8>>) -> Kind {
    match &m.body {
        MessageBody::RequestVote { pre_vote: true, .. } => Kind::PreVote,
        MessageBody::RequestVote { .. } => Kind::RequestVote,
        MessageBody::RequestVoteResponse { pre_vote: true, .. } => Kind::PreVoteResponse,
        MessageBody::RequestVoteResponse { .. } => Kind::RequestVoteResponse,
        MessageBody::AppendEntries { .. } => Kind::AppendEntries,
        MessageBody::AppendEntriesResponse { .. } => Kind::AppendEntriesResponse,
        _ => Kind::Other,
    }
}

/// Why `m` must not have left its sender yet, or `None`.
fn early(m: &Message<Vec<u8>>, d: &Result<AfterPowerLoss, StoreError>) -> Option<String> {
    let k = kind(m);
    if matches!(k, Kind::PreVote | Kind::PreVoteResponse) {
        return None; // they change no state
    }
    let what = format!("node {} sent {k:?} to {} in term {}", m.from, m.to, m.term);
    let d = match d {
        Ok(d) => d,
        Err(e) => {
            return Some(format!(
                "{what}, but after a power failure it would not even start: {e}"
            ))
        }
    };
    if m.term > d.hard_state.term {
        return Some(format!(
            "{what}, but after a power failure its term would be {}",
            d.hard_state.term
        ));
    }
    match &m.body {
        MessageBody::RequestVoteResponse { granted: true, .. }
            if d.hard_state.term != m.term || d.hard_state.vote != Some(m.to) =>
        {
            Some(format!(
                "{what} granting its vote, but after a power failure its hard state would be {:?}",
                d.hard_state
            ))
        }
        MessageBody::AppendEntriesResponse {
            index,
            reject: None,
        } if *index > d.last_index => Some(format!(
            "{what} acknowledging index {index}, but after a power failure its log would end at {}",
            d.last_index
        )),
        _ => None,
    }
}

struct Member {
    replica: DiskReplica<KvStore, ModelDisk>,
    pump: Pump,
    disk: ModelDisk,
    stopped: Option<PumpError>,
}

#[derive(Debug)]
struct Sent {
    from: u64,
    term: u64,
    kind: Kind,
    /// The sender's completed flushes when it sent this.
    flushes: u64,
}

struct Cluster {
    members: Vec<Member>,
    /// A node whose messages, both ways, are lost.
    isolated: Option<u64>,
    queue: VecDeque<Message<Vec<u8>>>,
    sent: Vec<Sent>,
    violations: Vec<String>,
    /// Drive as the firmware does: `Pump::write`, then receive (step what
    /// is queued for the node) while the disk finishes, then
    /// `Pump::acknowledge`; instead of `Pump::sync`.
    split: bool,
    /// Drive as the firmware does with batches pipelined: flushes complete
    /// later (the model disk defers them); while a batch is on the disk the
    /// node receives and takes the replica's next outputs (sending their
    /// messages, keeping their batch), and the kept batch is written right
    /// after the one on the disk is acknowledged. Every send is then also
    /// checked against every power cut of the in-flight sectors.
    pipelined: bool,
    /// Outputs with messages taken while the node's previous batch was on
    /// the disk, unacknowledged.
    taken_during_flush: usize,
    /// Power cuts checked.
    cuts_checked: usize,
}

impl Cluster {
    /// Fresh disks; node 1 campaigns first, the others never do.
    fn new() -> Cluster {
        Cluster::with_snapshots_every(Config::new(1).snapshot_threshold_entries)
    }

    /// As [`Cluster::new`], every replica taking a snapshot each `threshold`
    /// applied entries.
    fn with_snapshots_every(threshold: u64) -> Cluster {
        let members = MEMBERS
            .iter()
            .map(|&id| {
                let disk = ModelDisk::new(vec![0; DISK_SECTORS as usize * SECTOR_BYTES]);
                let (log, _, _) = DiskLog::open(disk.clone(), &MEMBERS).expect("bootstrap");
                let mut cfg = Config::new(id);
                cfg.core.heartbeat_interval_ticks = 1;
                let election = if id == 1 { 10 } else { 100_000 };
                cfg.core.election_timeout_ticks_min = election;
                cfg.core.election_timeout_ticks_max = election * 2;
                cfg.core.rng_seed = id;
                // As the firmware: the disk log keeps nothing behind a snapshot.
                cfg.snapshot_catch_up_entries = 0;
                cfg.snapshot_threshold_entries = threshold;
                Member {
                    replica: DiskReplica::new(cfg, log, KvStore::new()).expect("replica"),
                    pump: Pump::new(),
                    disk,
                    stopped: None,
                }
            })
            .collect();
        Cluster {
            members,
            isolated: None,
            queue: VecDeque::new(),
            sent: Vec::new(),
            violations: Vec::new(),
            split: false,
            pipelined: false,
            taken_during_flush: 0,
            cuts_checked: 0,
        }
    }

    fn member(&mut self, id: u64) -> &mut Member {
        &mut self.members[id as usize - 1]
    }

    /// One round: every running node ticks, takes the messages addressed
    /// to it, and carries out its Readys as the Raft task does.
    fn round(&mut self) {
        let isolated = self.isolated;
        let inbox: Vec<_> = self
            .queue
            .drain(..)
            .filter(|m| isolated != Some(m.from) && isolated != Some(m.to))
            .collect();
        for id in MEMBERS {
            if self.member(id).stopped.is_some() {
                continue;
            }
            let m = self.member(id);
            let _ = m.replica.tick();
            for msg in inbox.iter().filter(|msg| msg.to == id) {
                let _ = m.replica.step(msg.clone());
            }
            self.drive(id);
        }
    }

    /// Takes every output the pump gives now and sends its messages;
    /// returns how many had messages, or `None` if the node stopped.
    fn take_outputs(&mut self, id: u64) -> Option<usize> {
        let mut with_messages = 0;
        loop {
            let m = self.member(id);
            let taken = m.pump.poll(&mut m.replica, |out| {
                (out.failure.take(), core::mem::take(&mut out.messages))
            });
            let Some((failure, messages)) = taken else {
                return Some(with_messages);
            };
            if let Some(e) = failure {
                self.member(id).stopped = Some(PumpError::Replica(e));
                return None;
            }
            if !messages.is_empty() {
                with_messages += 1;
            }
            for msg in messages {
                self.send(id, msg);
            }
        }
    }

    /// The Raft task's loop with pipelined batches (see `pipelined`).
    fn drive_pipelined(&mut self, id: u64) {
        loop {
            let Some(taken) = self.take_outputs(id) else {
                return;
            };
            let m = self.member(id);
            if let Err(e) = m.pump.write(&mut m.replica) {
                m.stopped = Some(e);
                return;
            }
            if !m.pump.on_disk() {
                if taken == 0 {
                    return;
                }
                continue;
            }
            // The flush runs: receive, and take what that produces.
            let isolated = self.isolated;
            let mine: Vec<_> = self
                .queue
                .iter()
                .filter(|q| q.to == id && isolated != Some(q.from) && isolated != Some(id))
                .cloned()
                .collect();
            self.queue.retain(|q| q.to != id);
            let m = self.member(id);
            for msg in mine {
                let _ = m.replica.step(msg);
            }
            let Some(taken) = self.take_outputs(id) else {
                return;
            };
            self.taken_during_flush += taken;
            let m = self.member(id);
            assert!(
                m.pump.on_disk(),
                "the batch on the disk is still unacknowledged"
            );
            // Nothing new reaches the disk before the flush completes.
            let writes_before = m.disk.0.borrow().cached.len();
            if let Err(e) = m.pump.write(&mut m.replica) {
                m.stopped = Some(e);
                return;
            }
            assert_eq!(m.disk.0.borrow().cached.len(), writes_before);
            m.disk.complete();
            if let Err(e) = m.pump.acknowledge(&mut m.replica) {
                m.stopped = Some(e);
                return;
            }
        }
    }

    /// The Raft task's loop: poll an output, send its messages, sync its batch.
    fn drive(&mut self, id: u64) {
        if self.pipelined {
            return self.drive_pipelined(id);
        }
        loop {
            let m = self.member(id);
            let out = m.pump.poll(&mut m.replica, |out| {
                (out.failure.take(), core::mem::take(&mut out.messages))
            });
            let progressed = out.is_some();
            if let Some((failure, messages)) = out {
                if let Some(e) = failure {
                    self.member(id).stopped = Some(PumpError::Replica(e));
                    return;
                }
                for msg in messages {
                    self.send(id, msg);
                }
            }
            if self.split {
                let m = self.member(id);
                if let Err(e) = m.pump.write(&mut m.replica) {
                    m.stopped = Some(e);
                    return;
                }
                // Receiving while the disk finishes the batch.
                let isolated = self.isolated;
                let mine: Vec<_> = self
                    .queue
                    .iter()
                    .filter(|q| q.to == id && isolated != Some(q.from) && isolated != Some(id))
                    .cloned()
                    .collect();
                self.queue.retain(|q| q.to != id);
                let m = self.member(id);
                for msg in mine {
                    let _ = m.replica.step(msg);
                }
                if let Err(e) = m.pump.acknowledge(&mut m.replica) {
                    m.stopped = Some(e);
                    return;
                }
            } else {
                let m = self.member(id);
                if let Err(e) = m.pump.sync(&mut m.replica) {
                    m.stopped = Some(e);
                    return;
                }
            }
            if !progressed {
                return;
            }
        }
    }

    fn send(&mut self, from: u64, msg: Message<Vec<u8>>) {
        let disk = self.member(from).disk.clone();
        if let Some(v) = early(&msg, &after_power_loss(&disk)) {
            self.violations.push(v);
        }
        if self.pipelined {
            for image in disk.power_cuts() {
                self.cuts_checked += 1;
                if let Some(v) = early(&msg, &recover(image)) {
                    self.violations.push(format!("(power cut in flight) {v}"));
                }
            }
        }
        self.sent.push(Sent {
            from,
            term: msg.term,
            kind: kind(&msg),
            flushes: disk.0.borrow().flushes,
        });
        self.queue.push_back(msg);
    }

    fn run_until(&mut self, what: &str, done: impl Fn(&Cluster) -> bool) {
        for _ in 0..MAX_ROUNDS {
            if done(self) {
                return;
            }
            self.round();
        }
        panic!(
            "no {what} within {MAX_ROUNDS} rounds; sent: {:?}",
            self.sent
        );
    }

    fn count(&self, from: u64, kind: Kind, term: u64) -> usize {
        self.sent
            .iter()
            .filter(|s| s.from == from && s.kind == kind && s.term == term)
            .count()
    }

    fn assert_no_violation(&self) {
        assert!(
            self.violations.is_empty(),
            "held messages were sent before the state they depend on was flushed:\n{}",
            self.violations.join("\n")
        );
    }
}

/// Node 1 campaigns in term 2 and wins; nodes 2 and 3 vote and acknowledge
/// its appends. Every RequestVote, vote, append and acknowledgement left
/// its sender only once a power failure could no longer take back what it
/// promises; the vote requests left after the flush of the term and
/// self-vote.
#[test]
fn no_message_leaves_before_the_flush_it_depends_on() {
    let mut c = Cluster::new();
    c.run_until("leader with acknowledged appends", |c| {
        c.members[0].replica.role() == metalraft_core::Role::Leader
            && [2, 3]
                .iter()
                .all(|&p| c.count(p, Kind::AppendEntriesResponse, 2) > 0)
    });
    c.assert_no_violation();
    assert!(c.count(1, Kind::PreVote, 2) >= 2);
    for peer in [2, 3] {
        assert!(
            c.count(peer, Kind::RequestVoteResponse, 2) > 0,
            "node {peer} voted"
        );
    }
    assert!(c.count(1, Kind::AppendEntries, 2) > 0);
    // The vote requests waited for a flush the pre-votes did not.
    let flushes_at = |kind| {
        c.sent
            .iter()
            .find(|s| s.from == 1 && s.kind == kind && s.term == 2)
            .map(|s| s.flushes)
    };
    assert!(
        flushes_at(Kind::RequestVote) > flushes_at(Kind::PreVote),
        "{:?}",
        c.sent
    );
}

/// The same with the firmware's split of `Pump::sync`: messages stepped in
/// between `Pump::write` and `Pump::acknowledge` (the task receives while
/// the disk finishes a batch) release nothing early.
#[test]
fn receiving_between_write_and_acknowledge_releases_nothing_early() {
    let mut c = Cluster::new();
    c.split = true;
    c.run_until("leader with acknowledged appends", |c| {
        c.members[0].replica.role() == metalraft_core::Role::Leader
            && [2, 3]
                .iter()
                .all(|&p| c.count(p, Kind::AppendEntriesResponse, 2) > 0)
    });
    for i in 0..20 {
        put(&mut c, 100 + i, &format!("k{i}"));
    }
    c.assert_no_violation();
}

/// Pipelined batches (the firmware's order): flushes complete only later,
/// and while a node's batch is on the disk it receives and takes the
/// replica's next outputs, whose messages leave at once (the leader's
/// appends of new entries, acknowledgements released by the batch before).
/// No message leaves before the flush it depends on — checked against the
/// durable image and against every power cut that keeps a subset of the
/// sectors in flight — and the disk sees nothing of batch N+1 before
/// batch N's flush completed. Outputs really were taken during flushes.
#[test]
fn pipelined_batches_release_nothing_before_their_flush() {
    let mut c = Cluster::new();
    c.pipelined = true;
    for m in &c.members {
        m.disk.0.borrow_mut().deferred = true;
    }
    c.run_until("leader with acknowledged appends", |c| {
        c.members[0].replica.role() == metalraft_core::Role::Leader
            && [2, 3]
                .iter()
                .all(|&p| c.count(p, Kind::AppendEntriesResponse, 2) > 0)
    });
    // Several proposals at once, so batches overlap.
    for round in 0..10u64 {
        let mut last = 0;
        for i in 0..3 {
            let cmd = Command::Put(PutRequest {
                key: format!("k{round}-{i}").into_bytes(),
                value: b"v".to_vec(),
                ..PutRequest::default()
            });
            last = c
                .member(1)
                .replica
                .propose(1000 + round * 10 + i, &cmd.encode())
                .expect("leader accepts");
            c.round();
        }
        c.run_until("the puts applied on the leader", |c| {
            c.members[0].replica.applied_index() >= last
        });
    }
    c.assert_no_violation();
    assert!(
        c.taken_during_flush > 0,
        "no output was taken while a batch was on the disk"
    );
    assert!(c.cuts_checked > 0);
    for m in &c.members {
        assert!(m.stopped.is_none(), "{:?}", m.stopped);
    }
    // Every replica converges, and the leader's durable image holds the
    // last put.
    c.run_until("followers applied everything", |c| {
        let a = c.members[0].replica.applied_index();
        c.members.iter().all(|m| m.replica.applied_index() == a)
    });
    let leader = &c.members[0];
    leader.disk.complete();
    let after = after_power_loss(&leader.disk).expect("recovers");
    assert!(after.last_index >= leader.replica.applied_index());
}

/// As [`snapshots_are_taken_and_installed_through_the_pump`], with
/// pipelined batches and deferred flushes.
#[test]
fn pipelined_batches_take_and_install_snapshots() {
    const THRESHOLD: u64 = 8;
    let mut c = Cluster::with_snapshots_every(THRESHOLD);
    c.pipelined = true;
    for m in &c.members {
        m.disk.0.borrow_mut().deferred = true;
    }
    c.run_until("a leader", |c| {
        c.members[0].replica.role() == metalraft_core::Role::Leader
    });
    c.isolated = Some(3);
    for i in 0..4 * THRESHOLD {
        put(&mut c, i + 1, &format!("k{i}"));
    }
    assert!(c.members[0].replica.storage().snapshot_index() >= 3 * THRESHOLD);
    c.isolated = None;
    c.run_until("node 3 to catch up", |c| {
        c.members[2].replica.applied_index() == c.members[0].replica.applied_index()
    });
    c.assert_no_violation();
    assert_eq!(c.members[2].replica.stats().snapshots_installed, 1);
    assert_eq!(
        c.members[2].replica.state_machine().hash(),
        c.members[0].replica.state_machine().hash()
    );
}

/// Node 1's disk fails every flush once it runs. It becomes a candidate in
/// term 2 but that batch never becomes durable: it is never acknowledged,
/// the pump stops, and no message of term 2 leaves node 1.
#[test]
fn a_failed_flush_is_never_acknowledged() {
    let mut c = Cluster::new();
    c.member(1).disk.0.borrow_mut().failing = true;
    // Many election timeouts of node 1.
    for _ in 0..300 {
        c.round();
    }
    c.assert_no_violation();
    assert!(c.count(1, Kind::PreVote, 2) > 0, "node 1 campaigned");
    let from_1: Vec<_> = c
        .sent
        .iter()
        .filter(|s| s.from == 1 && !matches!(s.kind, Kind::PreVote | Kind::PreVoteResponse))
        .collect();
    assert!(
        from_1.is_empty(),
        "node 1 sent after a failed flush: {from_1:?}"
    );
    assert_eq!(
        c.members[0].stopped,
        Some(PumpError::Store(StoreError::Disk(DiskError::Io)))
    );
    assert_eq!(
        c.members[0].replica.term(),
        2,
        "the term was taken, just never made durable"
    );
}

/// Puts `key` on node 1 (the leader) and runs until it is applied there.
fn put(c: &mut Cluster, req_id: u64, key: &str) {
    let cmd = Command::Put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        ..PutRequest::default()
    });
    let index = c
        .member(1)
        .replica
        .propose(req_id, &cmd.encode())
        .expect("leader accepts");
    c.run_until("the put applied on the leader", |c| {
        c.members[0].replica.applied_index() >= index
    });
}

/// The snapshot paths through the pump: node 3 is cut off while the others
/// commit past several snapshot thresholds, take snapshots and compact
/// their logs; back, it can only catch up through the leader's snapshot,
/// which its replica reassembles and its pump writes whole into a slot.
/// Its state then matches the leader's, and survives a power failure: the
/// durable image recovers that snapshot. No message leaves early meanwhile.
#[test]
fn snapshots_are_taken_and_installed_through_the_pump() {
    const THRESHOLD: u64 = 8;
    let mut c = Cluster::with_snapshots_every(THRESHOLD);
    c.run_until("a leader", |c| {
        c.members[0].replica.role() == metalraft_core::Role::Leader
    });
    c.isolated = Some(3);
    for i in 0..4 * THRESHOLD {
        put(&mut c, i + 1, &format!("k{i}"));
    }
    let leader_snapshot = c.members[0].replica.storage().snapshot_index();
    assert!(
        leader_snapshot >= 3 * THRESHOLD,
        "the leader compacted: {leader_snapshot}"
    );
    assert_eq!(c.members[2].replica.storage().snapshot_index(), 0);

    c.isolated = None;
    c.run_until("node 3 to catch up", |c| {
        c.members[2].replica.applied_index() == c.members[0].replica.applied_index()
    });
    c.assert_no_violation();
    let follower = &c.members[2].replica;
    assert_eq!(follower.stats().snapshots_installed, 1);
    assert!(follower.storage().snapshot_index() >= leader_snapshot);
    assert_eq!(
        follower.state_machine().hash(),
        c.members[0].replica.state_machine().hash()
    );

    let image = c.members[2].disk.0.borrow().durable.clone();
    let (log, _, data) = DiskLog::open(ModelDisk::new(image), &MEMBERS).expect("recovers");
    let kv = KvStore::restore(&data.expect("a durable snapshot")).expect("restores");
    assert_eq!(kv.applied_index(), log.snapshot_index());
    assert!(kv.applied_index() >= leader_snapshot);
    let first = kv.range(&RangeRequest::single(b"k0")).expect("range");
    assert_eq!(first.kvs.len(), 1, "the snapshot holds the first put");
}
