//! The driver never sends a message before the state it depends on is on
//! disk (issue 12, defect 1: the core holds such messages until
//! `on_persisted`; these tests show the server's driver keeps that promise).
//!
//! Three members run the real [`RaftLoop`] around the real replica
//! ([`metalraft_replica::Replica`], whose `poll()` output the loop carries
//! out), the real WAL writer thread and
//! the real [`Storage`] (files in a temporary directory, real
//! `fdatasync`). Two things are test-only: a [`SyncGate`] in front of each
//! WAL's `fdatasync`, which holds a sync back (a slow disk) or makes it
//! fail, and a tap at [`Transport::send`], the transport's send path, which
//! records every message, checks it against what its sender's last
//! *completed* sync made durable, and delivers it to the recipient's loop.
//!
//! The check, on every message except pre-votes and their answers (which
//! change no state): its term is durable at its sender; a vote grant's vote
//! is durable; an append acknowledgement's entries are durable.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metalraft_core::{bootstrap_entry, bootstrap_hard_state, Config, Message, MessageBody};
use metalraft_replica::Replica;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::machine::ServerMachine;
use crate::raft_loop::{self, Input, LoopError, LoopParts, NodeStatus, RaftHandle, RaftLoop};
use crate::registry::Registry;
use crate::storage::sync_gate::{Durable, SyncGate};
use crate::storage::{Storage, StorageError, WalOptions, WriteBatch};
use crate::transport::Transport;
use crate::writer::{self, WriterGauges};

const MEMBERS: [u64; 3] = [1, 2, 3];
const TICK: Duration = Duration::from_millis(10);
/// Election timeout of the member meant to campaign first, in ticks.
const FAST_ELECTION_TICKS: u32 = 15;
/// Election timeout of the others: they never campaign during a test.
const SLOW_ELECTION_TICKS: u32 = 100_000;
/// How long a held sync is kept back while the test watches the transport
/// (many election and heartbeat periods).
const HOLD: Duration = Duration::from_millis(600);
/// Bound on any wait for progress.
const PATIENCE: Duration = Duration::from_secs(10);

/// The kinds of message, as counted at the send path.
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

/// One message seen at the send path.
#[derive(Clone, Debug)]
struct Sent {
    from: u64,
    to: u64,
    term: u64,
    kind: Kind,
    at: Instant,
}

/// Why a message must not have left yet, or `None`.
fn early(m: &Message<Vec<u8>>, d: &Durable) -> Option<String> {
    let k = kind(m);
    if matches!(k, Kind::PreVote | Kind::PreVoteResponse) {
        return None;
    }
    let what = format!(
        "member {} sent {:?} to {} in term {}",
        m.from, k, m.to, m.term
    );
    if m.term > d.hard_state.term {
        return Some(format!(
            "{what}, but its durable term is {}",
            d.hard_state.term
        ));
    }
    match &m.body {
        MessageBody::RequestVoteResponse { granted: true, .. }
            if d.hard_state.term != m.term || d.hard_state.vote != Some(m.to) =>
        {
            Some(format!(
                "{what} granting its vote, but its durable hard state is {:?}",
                d.hard_state
            ))
        }
        MessageBody::AppendEntriesResponse {
            index,
            reject: None,
        } if *index > d.last_index => Some(format!(
            "{what} acknowledging index {index}, but its durable log ends at {}",
            d.last_index
        )),
        _ => None,
    }
}

/// Three members wired through tapped transports.
struct Cluster {
    handles: Vec<RaftHandle>,
    gates: Vec<Arc<SyncGate>>,
    sent: Arc<Mutex<Vec<Sent>>>,
    violations: Arc<Mutex<Vec<String>>>,
    loops: Vec<JoinHandle<Result<(), LoopError>>>,
    shutdown: watch::Sender<bool>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// Starts the members; member 1 campaigns first. `closed[i]`: member
    /// `i + 1`'s gate starts closed (every sync after bootstrap waits).
    fn start(closed: [bool; 3]) -> Cluster {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let violations = Arc::new(Mutex::new(Vec::new()));
        let (route_tx, mut route_rx) = mpsc::unbounded_channel::<Message<Vec<u8>>>();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut c = Cluster {
            handles: Vec::new(),
            gates: Vec::new(),
            sent,
            violations,
            loops: Vec::new(),
            shutdown,
            _dirs: Vec::new(),
        };
        for (i, id) in MEMBERS.into_iter().enumerate() {
            let dir = tempfile::tempdir().expect("temporary directory");
            let mut storage = Storage::open(
                dir.path(),
                Default::default(),
                WalOptions {
                    segment_bytes: 1 << 20,
                },
            )
            .expect("open storage")
            .storage;
            storage
                .write(
                    &[WriteBatch {
                        entries: vec![bootstrap_entry(&MEMBERS)],
                        hard_state: Some(bootstrap_hard_state()),
                        clears_repair: false,
                    }],
                    true,
                )
                .expect("bootstrap");
            let gate = Arc::new(SyncGate::new(
                !closed[i],
                Durable {
                    hard_state: bootstrap_hard_state(),
                    last_index: 1,
                },
            ));
            storage.set_sync_gate(gate.clone());
            let mut cfg = Config::new(id);
            cfg.heartbeat_interval_ticks = 1;
            let election = if id == 1 {
                FAST_ELECTION_TICKS
            } else {
                SLOW_ELECTION_TICKS
            };
            cfg.election_timeout_ticks_min = election;
            cfg.election_timeout_ticks_max = election * 2;
            cfg.rng_seed = id;
            let registry = Registry::new(
                MEMBERS
                    .iter()
                    .map(|m| (*m, vec![format!("http://127.0.0.1:{}", 1000 + m)])),
            );
            let replica = Replica::new(
                raft_loop::replica_config(cfg, 1_000_000, TICK),
                storage.log(),
                ServerMachine::new(registry),
            )
            .expect("replica");
            let gauges = Arc::new(WriterGauges::default());
            let (job_tx, job_rx) = std::sync::mpsc::channel();
            let (ev_tx, ev_rx) = mpsc::unbounded_channel();
            let g = gauges.clone();
            let snap_dir = storage.snap_dir().to_path_buf();
            std::thread::spawn(move || writer::run(storage, job_rx, ev_tx, g));
            let tap = {
                let (gate, sent, violations, route) = (
                    gate.clone(),
                    c.sent.clone(),
                    c.violations.clone(),
                    route_tx.clone(),
                );
                Arc::new(move |m: Message<Vec<u8>>| {
                    // Checked here, synchronously on the loop's send path:
                    // what is durable only grows, so a later check could
                    // miss an early message.
                    if let Some(v) = early(&m, &gate.durable()) {
                        violations.lock().unwrap().push(v);
                    }
                    sent.lock().unwrap().push(Sent {
                        from: m.from,
                        to: m.to,
                        term: m.term,
                        kind: kind(&m),
                        at: Instant::now(),
                    });
                    let _ = route.send(m);
                })
            };
            let (lp, handle) = RaftLoop::new(LoopParts {
                replica,
                transport: Transport::tapped(id, tap),
                writer: job_tx,
                writer_events: ev_rx,
                gauges,
                tick: TICK,
                snap_dir,
                chain: None,
            });
            c.loops.push(tokio::spawn(lp.run(shutdown_rx.clone())));
            c.handles.push(handle);
            c.gates.push(gate);
            c._dirs.push(dir);
        }
        let handles = c.handles.clone();
        tokio::spawn(async move {
            while let Some(m) = route_rx.recv().await {
                if let Some(h) = handles.get((m.to as usize).wrapping_sub(1)) {
                    let _ = h.try_send(Input::Step(m));
                }
            }
        });
        c
    }

    fn gate(&self, id: u64) -> &SyncGate {
        &self.gates[id as usize - 1]
    }

    /// Messages `from` sent of `kind` in `term` or later so far (a
    /// candidate whose sync is held may time out and campaign again).
    fn count(&self, from: u64, kind: Kind, term: u64) -> usize {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.from == from && s.kind == kind && s.term >= term)
            .count()
    }

    /// When `from` first sent `kind` in `term` or later.
    fn first(&self, from: u64, kind: Kind, term: u64) -> Option<Sent> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.from == from && s.kind == kind && s.term >= term)
            .cloned()
    }

    /// Waits until `id` holds a sync whose hard state is in `term` at
    /// least; returns what that sync carries. Fails at once if a message
    /// left early meanwhile.
    async fn held_sync(&self, id: u64, term: u64) -> Durable {
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.assert_no_violation();
            let gate = self.gates[id as usize - 1].clone();
            let held = tokio::task::spawn_blocking(move || {
                gate.wait_held(TICK * 5, |d| d.hard_state.term >= term)
            })
            .await
            .unwrap();
            if let Some(d) = held {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "member {id} never synced a hard state in term {term}"
            );
        }
    }

    async fn wait_status(&self, id: u64, what: &str, pred: impl Fn(&NodeStatus) -> bool) {
        let mut st = self.handles[id as usize - 1].status.clone();
        tokio::time::timeout(PATIENCE, st.wait_for(|s| pred(s)))
            .await
            .unwrap_or_else(|_| panic!("member {id}: timed out waiting for {what}"))
            .expect("status channel");
    }

    fn assert_no_violation(&self) {
        let v = self.violations.lock().unwrap().clone();
        assert!(
            v.is_empty(),
            "held messages were sent before the state they depend on was durable:\n{}",
            v.join("\n")
        );
    }

    /// Stops every loop; returns each loop's outcome.
    async fn stop(self) -> Vec<Result<(), LoopError>> {
        for g in &self.gates {
            g.open();
        }
        let _ = self.shutdown.send(true);
        let mut out = Vec::new();
        for l in self.loops {
            out.push(l.await.expect("loop task"));
        }
        out
    }
}

/// Member 1 times out, wins the pre-vote and becomes a candidate in term 2,
/// but its disk holds the sync of that term and self-vote: no RequestVote
/// may leave (a crash now would let it campaign in term 2 again, issue 12
/// defect 1). They leave as soon as the sync completes, and it leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidate_sends_no_vote_request_before_its_term_is_synced() {
    let c = Cluster::start([true, false, false]);
    let held = c.held_sync(1, 2).await;
    assert_eq!(
        held.hard_state.vote,
        Some(1),
        "the held sync carries the self-vote"
    );
    tokio::time::sleep(HOLD).await;

    assert!(
        c.count(1, Kind::PreVote, 2) >= 2,
        "member 1 campaigned (pre-votes are not held)"
    );
    for kind in [Kind::RequestVote, Kind::AppendEntries] {
        assert_eq!(
            c.count(1, kind, 2),
            0,
            "{kind:?} from member 1 left before its term was synced"
        );
    }
    for peer in [2, 3] {
        assert_eq!(
            c.count(peer, Kind::RequestVoteResponse, 2),
            0,
            "member {peer} voted without a request"
        );
    }
    assert_eq!(
        c.gate(1).durable().hard_state.term,
        1,
        "the gate held the sync"
    );

    let opened = Instant::now();
    c.gate(1).open();
    c.wait_status(1, "leadership", |s| s.is_leader && s.term >= 2)
        .await;
    c.assert_no_violation();
    let first = c
        .first(1, Kind::RequestVote, 2)
        .expect("vote requests were sent");
    assert!(
        first.at >= opened,
        "a vote request left before the sync was released"
    );
    assert!(
        first.at - opened < Duration::from_secs(2),
        "vote requests went out {:?} after the sync, not right after it",
        first.at - opened
    );
    assert!(c.count(1, Kind::AppendEntries, 2) > 0, "the leader appends");
    let outcomes = c.stop().await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
}

/// Member 2 adopts member 1's term 2 and grants its vote, but its disk holds
/// that sync: neither the grant nor any answer in term 2 (append
/// acknowledgements included) may leave. Member 1 wins with member 3's vote;
/// member 2's answers leave once its sync completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_sends_no_vote_or_ack_before_its_term_is_synced() {
    let c = Cluster::start([false, true, false]);
    let held = c.held_sync(2, 2).await;
    assert_eq!(
        held.hard_state.vote,
        Some(1),
        "the held sync carries the vote for member 1"
    );
    c.wait_status(1, "leadership", |s| s.is_leader && s.term >= 2)
        .await;
    tokio::time::sleep(HOLD).await;

    assert!(
        c.count(1, Kind::AppendEntries, 2) > 0,
        "member 2 is being sent appends"
    );
    let from_2_in_term_2 = c
        .sent
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.from == 2 && s.term >= 2)
        .filter(|s| !matches!(s.kind, Kind::PreVote | Kind::PreVoteResponse))
        .map(|s| (s.kind, s.to))
        .collect::<Vec<_>>();
    assert!(
        from_2_in_term_2.is_empty(),
        "member 2 answered in term 2 before syncing it: {from_2_in_term_2:?}"
    );

    let opened = Instant::now();
    c.gate(2).open();
    let deadline = Instant::now() + PATIENCE;
    while c.count(2, Kind::AppendEntriesResponse, 2) == 0 {
        assert!(
            Instant::now() < deadline,
            "member 2 never acknowledged an append"
        );
        tokio::time::sleep(TICK).await;
    }
    c.assert_no_violation();
    let first = c.first(2, Kind::RequestVoteResponse, 2);
    assert!(first.is_none_or(|s| s.at >= opened && s.to == 1));
    let outcomes = c.stop().await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
}

/// A failed `fdatasync` is never followed by `on_persisted`, even when it
/// reports a full disk (which the writer otherwise retries): the member
/// stops and the vote requests of the term it failed to sync never leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_is_never_acknowledged() {
    let c = Cluster::start([true, false, false]);
    c.held_sync(1, 2).await;
    c.gate(1)
        .open_failing(rustix::io::Errno::NOSPC.raw_os_error());
    // Longer than the writer's full-disk retry interval: a retried sync
    // would succeed now and release the vote requests.
    tokio::time::sleep(crate::writer::NO_SPACE_RETRY_INTERVAL * 3).await;
    assert_eq!(
        c.count(1, Kind::RequestVote, 2),
        0,
        "a vote request left after a failed sync"
    );
    c.assert_no_violation();
    c.wait_status(1, "the loop to stop", |s| s.stopped).await;
    let outcomes = c.stop().await;
    let err = outcomes[0].as_ref().expect_err("member 1 must stop");
    assert!(
        matches!(err, LoopError::Storage(StorageError::SyncFailed { .. })),
        "{err}"
    );
}
