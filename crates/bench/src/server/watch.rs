//! The Watch benchmarks of issue 15, run by the server suite on the same two
//! clusters and with the same load generator as the key-value workloads:
//!
//! - **fan-out** (`watch-fanout`): many watchers on one prefix, on the
//!   followers only, while writers put to the leader at a fixed rate. Events
//!   delivered per second, latency from a put's acknowledgement to the
//!   delivery of its event (one clock: this process's), and the memory an
//!   idle watcher costs the members (RSS before and after opening them).
//! - **catch-up** (`watch-catchup`): one watcher on a follower created at an
//!   old revision replays a long history. Time to receive all of it.
//!
//! Every event is checked. A fan-out watcher must see exactly the revisions
//! of the run's puts, contiguous from its start revision, each once, in
//! order, each with the key and the self-describing value of the put that
//! the writers saw acknowledged at that revision. The catch-up watcher must
//! see exactly the written history, revision by revision. A wrong event
//! fails the run ("WRONG ANSWER"); so do a lost event, a canceled watch, a
//! failed put or a stream error. Nothing else writes during these runs.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Event, EventType, KvClient, WatchClient, WatchOptions};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::cluster::{self, Cluster, ProcStats, System};
use super::load;

/// Fan-out: watchers (one watch stream each), spread over the followers.
pub const FANOUT_WATCHERS: usize = 1_000;
pub const QUICK_FANOUT_WATCHERS: usize = 100;
/// Watch streams sharing one HTTP/2 connection. The metalraft server takes
/// hyper's default of 200 concurrent streams per connection (etcd: no
/// limit), so this stays well below it.
pub const WATCHERS_PER_CONNECTION: usize = 50;
/// hyper's default limit of concurrent streams per connection, which the
/// metalraft server keeps.
const SERVER_STREAMS_PER_CONNECTION: usize = 200;
const _: () = assert!(WATCHERS_PER_CONNECTION < SERVER_STREAMS_PER_CONNECTION);
/// Fan-out: puts per second, paced (open loop: a put is sent on schedule
/// whether or not earlier ones have been answered).
pub const PUT_RATE: u32 = 1_000;
/// Fan-out: paced puts before the measured ones (their events are checked
/// but not counted), and the measured stretch.
pub const FANOUT_WARMUP: Duration = Duration::from_secs(1);
pub const FANOUT_MEASURE: Duration = Duration::from_secs(10);
pub const QUICK_FANOUT_WARMUP: Duration = Duration::from_millis(500);
pub const QUICK_FANOUT_MEASURE: Duration = Duration::from_secs(2);
/// Catch-up: events of history replayed to the one watcher.
pub const CATCHUP_EVENTS: u64 = 100_000;
pub const QUICK_CATCHUP_EVENTS: u64 = 10_000;
/// Fan-out: connections of the writers to the leader.
const WRITER_CONNECTIONS: usize = 4;
/// Fan-out: puts unanswered at once. At the cap the writers wait for an
/// answer before sending the next put, so a system (or a load generator)
/// that cannot keep up with the offered events slows the writers down
/// instead of queueing without bound; the report shows the achieved put
/// rate and how many puts were held back.
const MAX_PUTS_IN_FLIGHT: usize = 1_000;
/// Fan-out: pause between the last watch created and the RSS reading, so
/// that the members finish setting the watchers up.
const IDLE_SETTLE: Duration = Duration::from_secs(2);
/// Fan-out: all watches must be created within this.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// Fan-out: every event must be delivered within this after the last put
/// was acknowledged.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Catch-up: concurrent writers of the history, and their connections.
const CATCHUP_WRITERS: usize = 128;
const CATCHUP_WRITER_CONNECTIONS: usize = 8;
/// Catch-up: the whole replay must arrive within this.
const CATCHUP_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest watch response the load generator accepts (etcd-client's
/// default is 4 MiB; neither server should come near it).
const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Key prefixes: fan-out `w/0000000`.., catch-up `c/0000000`.. (indices
/// cycle over `load::KEYSPACE`).
pub const FANOUT_PREFIX: &str = "w/";
pub const CATCHUP_PREFIX: &str = "c/";
/// Writer ids in the values.
const FANOUT_WRITER: u32 = u32::MAX - 2;
const CATCHUP_WRITER: u32 = u32::MAX - 3;

/// The two watch workloads.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum WatchWorkload {
    Fanout,
    Catchup,
}

impl WatchWorkload {
    pub fn all() -> Vec<WatchWorkload> {
        vec![WatchWorkload::Fanout, WatchWorkload::Catchup]
    }

    pub fn id(self) -> &'static str {
        match self {
            WatchWorkload::Fanout => "watch-fanout",
            WatchWorkload::Catchup => "watch-catchup",
        }
    }

    pub fn parse(s: &str) -> Option<WatchWorkload> {
        WatchWorkload::all().into_iter().find(|w| w.id() == s)
    }
}

/// The sizes of the watch workloads.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    pub watchers: usize,
    pub per_connection: usize,
    pub put_rate: u32,
    pub warmup: Duration,
    pub measure: Duration,
    pub catchup_events: u64,
}

impl Params {
    pub fn full() -> Params {
        Params {
            watchers: FANOUT_WATCHERS,
            per_connection: WATCHERS_PER_CONNECTION,
            put_rate: PUT_RATE,
            warmup: FANOUT_WARMUP,
            measure: FANOUT_MEASURE,
            catchup_events: CATCHUP_EVENTS,
        }
    }

    pub fn quick() -> Params {
        Params {
            watchers: QUICK_FANOUT_WATCHERS,
            warmup: QUICK_FANOUT_WARMUP,
            measure: QUICK_FANOUT_MEASURE,
            catchup_events: QUICK_CATCHUP_EVENTS,
            ..Params::full()
        }
    }

    fn warm_puts(&self) -> u64 {
        (self.warmup.as_secs_f64() * f64::from(self.put_rate)).round() as u64
    }

    fn total_puts(&self) -> u64 {
        self.warm_puts() + (self.measure.as_secs_f64() * f64::from(self.put_rate)).round() as u64
    }
}

pub fn fanout_key(idx: u32) -> Vec<u8> {
    assert!(idx < load::KEYSPACE);
    format!("{FANOUT_PREFIX}{idx:07}").into_bytes()
}

pub fn catchup_key(idx: u32) -> Vec<u8> {
    assert!(idx < load::KEYSPACE);
    format!("{CATCHUP_PREFIX}{idx:07}").into_bytes()
}

fn key_index(seq: u64) -> u32 {
    (seq % u64::from(load::KEYSPACE)) as u32
}

/// Latency histogram in microseconds: exact below 1,024 µs, then 512
/// buckets per power of two (under 0.2% error), up to `u32::MAX`.
#[derive(Clone)]
pub struct Hist {
    counts: Vec<u64>,
    n: u64,
}

const HIST_EXACT: u32 = 1024;
const HIST_SUB: usize = 512;
const HIST_BUCKETS: usize = HIST_EXACT as usize + 22 * HIST_SUB;

impl Hist {
    pub fn new() -> Hist {
        Hist {
            counts: vec![0; HIST_BUCKETS],
            n: 0,
        }
    }

    fn bucket(v: u32) -> usize {
        if v < HIST_EXACT {
            return v as usize;
        }
        let msb = 31 - v.leading_zeros();
        let shift = msb - 9;
        HIST_EXACT as usize + (shift as usize - 1) * HIST_SUB + ((v >> shift) as usize - HIST_SUB)
    }

    /// The smallest value of bucket `b`.
    fn lower(b: usize) -> u32 {
        if b < HIST_EXACT as usize {
            return b as u32;
        }
        let k = b - HIST_EXACT as usize;
        let shift = (k / HIST_SUB + 1) as u32;
        ((k % HIST_SUB + HIST_SUB) as u32) << shift
    }

    pub fn record(&mut self, v: u32) {
        self.counts[Hist::bucket(v)] += 1;
        self.n += 1;
    }

    pub fn merge(&mut self, o: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.n += o.n;
    }

    pub fn len(&self) -> u64 {
        self.n
    }

    /// The q-quantile (nearest rank), the lower bound of its bucket, µs.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.n == 0 {
            return f64::NAN;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return f64::from(Hist::lower(b));
            }
        }
        unreachable!("rank {rank} beyond {} samples", self.n)
    }
}

/// One fan-out run.
pub struct FanoutRun {
    pub watchers: usize,
    /// Measured puts (after the warm-up) and their achieved rate.
    pub puts: u64,
    pub puts_per_sec: f64,
    /// Events of the measured puts, all delivered (times watchers).
    pub events: u64,
    /// `events` / (last delivery − first measured put).
    pub events_per_sec: f64,
    /// Put acknowledgement → event delivery, every measured event, µs.
    pub lat: Hist,
    /// Events that arrived before the load generator saw their put's
    /// acknowledgement (counted as 0 µs).
    pub early: u64,
    /// Last delivery after the last acknowledgement.
    pub drain_secs: f64,
    /// Puts that waited for an answer to an earlier one before being sent
    /// (`MAX_PUTS_IN_FLIGHT` reached).
    pub held_back: u64,
    pub rss_before_kib: Vec<u64>,
    pub rss_after_kib: Vec<u64>,
    /// Each member's CPU seconds from the first measured put to the last
    /// delivery, and the load generator's.
    pub cpu_secs: Vec<f64>,
    pub loadgen_cpu_secs: f64,
}

impl FanoutRun {
    /// (RSS of all members after opening the watchers − before) / watchers.
    pub fn idle_kib_per_watcher(&self) -> f64 {
        let delta: i64 = self
            .rss_after_kib
            .iter()
            .zip(&self.rss_before_kib)
            .map(|(&a, &b)| a as i64 - b as i64)
            .sum();
        delta as f64 / self.watchers as f64
    }
}

/// One catch-up run.
pub struct CatchupRun {
    pub events: u64,
    /// From the create request to the last event.
    pub secs: f64,
    /// From the create request to the first event.
    pub first_event_secs: f64,
}

impl CatchupRun {
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.secs
    }
}

/// The history the catch-up watcher must replay: (revision, seq) of every
/// put, in revision order.
pub struct History {
    expected: Vec<(i64, u64)>,
}

fn us_since(base: Instant) -> u32 {
    base.elapsed().as_micros().min(u128::from(u32::MAX)) as u32
}

/// Watch RPCs are streams: no per-request timeout on their connection.
async fn connect_watch(ep: &str) -> Result<WatchClient, String> {
    let mut c = load::connect_stream(ep).await?;
    // One round trip first, so that no measured watch pays for setting up
    // the connection.
    tokio::time::timeout(load::REQUEST_TIMEOUT, c.status())
        .await
        .map_err(|_| format!("status of {ep}: no answer"))?
        .map_err(|e| format!("status of {ep}: {e}"))?;
    Ok(c.watch_client()
        .max_decoding_message_size(MAX_MESSAGE_BYTES))
}

async fn kv_clients(ep: &str, n: usize) -> Result<Vec<KvClient>, String> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(load::connect_one(ep).await?.kv_client());
    }
    Ok(v)
}

/// Checks one event: a put at revision `rev` of a key under `prefix`
/// holding a value this suite wrote for that key; returns the value's seq.
fn check_event(ev: &Event, prefix: &str, rev: i64) -> Result<u64, String> {
    let kv = ev.kv().ok_or("event without kv")?;
    if ev.event_type() != EventType::Put {
        return Err(format!(
            "a {:?} event at revision {}",
            ev.event_type(),
            kv.mod_revision()
        ));
    }
    if kv.mod_revision() != rev {
        return Err(format!(
            "event at revision {}, expected revision {rev} (gap, duplicate or reorder)",
            kv.mod_revision()
        ));
    }
    let idx = kv
        .key()
        .strip_prefix(prefix.as_bytes())
        .and_then(|k| std::str::from_utf8(k).ok())
        .and_then(|k| k.parse::<u32>().ok())
        .filter(|&i| i < load::KEYSPACE)
        .ok_or_else(|| {
            format!(
                "revision {rev}: key {:?} outside the watched prefix {prefix:?}",
                String::from_utf8_lossy(kv.key())
            )
        })?;
    let (_, seq) =
        load::check_value(idx, kv.value()).map_err(|e| format!("revision {rev}: {e}"))?;
    if key_index(seq) != idx {
        return Err(format!("revision {rev}: put {seq} under key index {idx}"));
    }
    Ok(seq)
}

/// Order-sensitive digest of a watcher's (revision, seq) sequence.
fn digest(h: u64, rev: i64, seq: u64) -> u64 {
    load::mix(h ^ load::mix(rev as u64 ^ seq.rotate_left(32)))
}

/// What one fan-out watcher returns.
struct WatcherOut {
    w: usize,
    /// Delivery time of each event, µs since the run's base instant; event
    /// `j` is at revision `start + j`.
    recv_us: Vec<u32>,
    digest: u64,
    next_rev: i64,
    /// "WRONG ANSWER: …" or an operating error.
    failed: Option<String>,
}

#[allow(clippy::too_many_arguments)]
async fn watcher_task(
    w: usize,
    mut wc: WatchClient,
    start_rev: i64,
    mut target: watch::Receiver<i64>,
    created: mpsc::UnboundedSender<Result<(), String>>,
    delivered: Arc<AtomicU64>,
    base: Instant,
    capacity: usize,
) -> WatcherOut {
    let mut out = WatcherOut {
        w,
        recv_us: Vec::with_capacity(capacity),
        digest: 0,
        next_rev: start_rev,
        failed: None,
    };
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(start_rev);
    // The handle keeps the request half of the stream open.
    let (_handle, mut stream) = match wc.watch(FANOUT_PREFIX, Some(opts)).await {
        Ok(x) => {
            let _ = created.send(Ok(()));
            x
        }
        Err(e) => {
            let e = format!("watcher {w}: create: {e}");
            let _ = created.send(Err(e.clone()));
            out.failed = Some(e);
            return out;
        }
    };
    drop(created);
    loop {
        if out.next_rev > *target.borrow() {
            break;
        }
        tokio::select! {
            m = stream.message() => {
                let t = us_since(base);
                match m {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            out.failed = Some(format!(
                                "watch canceled by the server at revision {} (reason {:?}, compact revision {})",
                                out.next_rev, resp.cancel_reason(), resp.compact_revision()
                            ));
                            break;
                        }
                        for ev in resp.events() {
                            match check_event(ev, FANOUT_PREFIX, out.next_rev) {
                                Ok(seq) => {
                                    out.digest = digest(out.digest, out.next_rev, seq);
                                    out.recv_us.push(t);
                                    out.next_rev += 1;
                                }
                                Err(e) => {
                                    out.failed = Some(format!("WRONG ANSWER: {e}"));
                                    break;
                                }
                            }
                        }
                        if out.failed.is_some() {
                            break;
                        }
                        delivered.fetch_add(resp.events().len() as u64, Ordering::Relaxed);
                    }
                    Ok(None) => {
                        out.failed = Some(format!("stream ended by the server at revision {}", out.next_rev));
                        break;
                    }
                    Err(e) => {
                        out.failed = Some(format!("stream error at revision {}: {e}", out.next_rev));
                        break;
                    }
                }
            }
            r = target.changed() => if r.is_err() {
                break;
            }
        }
    }
    out
}

/// One put the writers saw acknowledged.
struct Ack {
    rev: i64,
    seq: u64,
    ack_us: u32,
}

/// One fan-out run: open the watchers on the followers (RSS before and
/// after), write at the fixed rate, wait until every watcher has every
/// event, check them all.
pub async fn fanout_run(c: &mut Cluster, p: &Params) -> Result<FanoutRun, String> {
    c.check_alive()?;
    let leader = c.wait_ready().await?;
    let followers: Vec<usize> = (0..c.founders()).filter(|&i| i != leader).collect();
    let pids: Vec<Option<u32>> = (0..c.founders()).map(|i| c.pid(i)).collect();
    let sample = || -> Vec<ProcStats> {
        pids.iter()
            .map(|p| p.and_then(cluster::proc_stats).unwrap_or_default())
            .collect()
    };
    let self_cpu = || {
        cluster::proc_stats(std::process::id())
            .map(|s| s.cpu_secs)
            .unwrap_or(0.0)
    };
    let writers = kv_clients(&c.endpoint(leader), WRITER_CONNECTIONS).await?;
    let r0 = load::revision(&c.endpoints(), leader).await?;
    let (total, warm) = (p.total_puts(), p.warm_puts());
    let base = Instant::now();
    let before = sample();

    // The watchers, created with the revision after r0 as start: nothing
    // else writes, so each must see exactly the run's puts.
    let conns = p.watchers.div_ceil(p.per_connection);
    let mut wcs = Vec::new();
    for k in 0..conns {
        wcs.push(connect_watch(&c.endpoint(followers[k % followers.len()])).await?);
    }
    let (target_tx, target_rx) = watch::channel(i64::MAX);
    let (created_tx, mut created_rx) = mpsc::unbounded_channel();
    let delivered = Arc::new(AtomicU64::new(0));
    let mut watchers = JoinSet::new();
    for w in 0..p.watchers {
        watchers.spawn(watcher_task(
            w,
            wcs[w % conns].clone(),
            r0 + 1,
            target_rx.clone(),
            created_tx.clone(),
            delivered.clone(),
            base,
            total as usize,
        ));
    }
    drop((created_tx, target_rx));
    let deadline = tokio::time::Instant::now() + CREATE_TIMEOUT;
    for n in 0..p.watchers {
        match tokio::time::timeout_at(deadline, created_rx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => return Err(e),
            Ok(None) => return Err("watcher tasks ended before creating their watches".into()),
            Err(_) => {
                return Err(format!(
                    "only {n} of {} watches created within {CREATE_TIMEOUT:?}",
                    p.watchers
                ))
            }
        }
    }
    tokio::time::sleep(IDLE_SETTLE).await;
    let after = sample();
    c.check_alive()?;

    // The writers: put `i` is sent at t_start + i / rate, to the leader.
    let period = Duration::from_secs_f64(1.0 / f64::from(p.put_rate));
    let t_start = Instant::now();
    let mut puts = JoinSet::new();
    let mut acks: Vec<Ack> = Vec::with_capacity(total as usize);
    let mut at_measure = None;
    let mut measure_us = 0;
    let mut held_back = 0;
    for i in 0..total {
        tokio::time::sleep_until((t_start + period.mul_f64(i as f64)).into()).await;
        if i == warm {
            at_measure = Some((sample(), self_cpu()));
            measure_us = us_since(base);
        }
        while let Some(r) = puts.try_join_next() {
            acks.push(r.map_err(|e| e.to_string())??);
        }
        if puts.len() >= MAX_PUTS_IN_FLIGHT {
            held_back += 1;
            if let Some(r) = puts.join_next().await {
                acks.push(r.map_err(|e| e.to_string())??);
            }
        }
        let mut kv = writers[i as usize % writers.len()].clone();
        puts.spawn(async move {
            let idx = key_index(i);
            let r = kv
                .put(fanout_key(idx), load::value(idx, FANOUT_WRITER, i), None)
                .await
                .map_err(|e| format!("put {i}: {e}"))?;
            Ok::<Ack, String>(Ack {
                rev: r.header().map_or(0, |h| h.revision()),
                seq: i,
                ack_us: us_since(base),
            })
        });
    }
    while let Some(r) = puts.join_next().await {
        acks.push(r.map_err(|e| e.to_string())??);
    }
    let put_secs = (us_since(base) - measure_us) as f64 / 1e6;
    acks.sort_unstable_by_key(|a| a.rev);
    for (j, a) in acks.iter().enumerate() {
        let want = r0 + 1 + j as i64;
        if a.rev != want {
            return Err(format!(
                "WRONG ANSWER: put {} acknowledged at revision {}, expected {want} (nothing else writes, so \
                 the run's puts must take the revisions from {} on, each once)",
                a.seq,
                a.rev,
                r0 + 1
            ));
        }
    }
    let r_last = r0 + total as i64;
    let want_digest = acks.iter().fold(0, |h, a| digest(h, a.rev, a.seq));
    let last_ack_us = acks.iter().map(|a| a.ack_us).max().unwrap_or(0);
    let _ = target_tx.send(r_last);

    // Every watcher must get every event.
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    let mut outs = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, watchers.join_next()).await {
            Ok(Some(r)) => outs.push(r.map_err(|e| format!("watcher task: {e}"))?),
            Ok(None) => break,
            Err(_) => {
                return Err(format!(
                    "only {} of {} events delivered {DRAIN_TIMEOUT:?} after the last put was acknowledged",
                    delivered.load(Ordering::Relaxed),
                    total * p.watchers as u64
                ))
            }
        }
    }
    let end = (sample(), self_cpu());
    c.check_alive()?;
    outs.sort_by_key(|o| o.w);
    for o in &outs {
        if let Some(f) = &o.failed {
            return Err(format!("watcher {}: {f}", o.w));
        }
        if o.recv_us.len() as u64 != total || o.next_rev != r_last + 1 {
            return Err(format!(
                "WRONG ANSWER: watcher {} got {} events, the writers made {total}",
                o.w,
                o.recv_us.len()
            ));
        }
        if o.digest != want_digest {
            return Err(format!(
                "WRONG ANSWER: watcher {}: the events do not match the acknowledged puts (key/value per revision)",
                o.w
            ));
        }
    }

    let mut lat = Hist::new();
    let (mut early, mut last_us) = (0, 0);
    for o in &outs {
        for (a, &t) in acks.iter().zip(&o.recv_us) {
            if a.seq < warm {
                continue;
            }
            if t < a.ack_us {
                early += 1;
            }
            lat.record(t.saturating_sub(a.ack_us));
            last_us = last_us.max(t);
        }
    }
    let measured_puts = total - warm;
    let events = measured_puts * p.watchers as u64;
    assert_eq!(lat.len(), events);
    let (cpu_a, self_a) = at_measure.expect("the warm-up is shorter than the run");
    Ok(FanoutRun {
        watchers: p.watchers,
        puts: measured_puts,
        puts_per_sec: measured_puts as f64 / put_secs,
        events,
        events_per_sec: events as f64 / ((last_us - measure_us) as f64 / 1e6),
        lat,
        early,
        drain_secs: last_us.saturating_sub(last_ack_us) as f64 / 1e6,
        held_back,
        rss_before_kib: before.iter().map(|s| s.rss_kib).collect(),
        rss_after_kib: after.iter().map(|s| s.rss_kib).collect(),
        cpu_secs: cpu_a
            .iter()
            .zip(&end.0)
            .map(|(a, b)| b.cpu_secs - a.cpu_secs)
            .collect(),
        loadgen_cpu_secs: end.1 - self_a,
    })
}

/// Writes the catch-up history: `n` puts under `CATCHUP_PREFIX` to the
/// leader, `CATCHUP_WRITERS` at a time.
pub async fn catchup_history(c: &mut Cluster, n: u64) -> Result<History, String> {
    c.check_alive()?;
    let leader = c.wait_ready().await?;
    let clients = kv_clients(&c.endpoint(leader), CATCHUP_WRITER_CONNECTIONS).await?;
    let mut set = JoinSet::new();
    for k in 0..CATCHUP_WRITERS {
        let mut kv = clients[k % clients.len()].clone();
        set.spawn(async move {
            let mut done = Vec::new();
            let mut seq = k as u64;
            while seq < n {
                let idx = key_index(seq);
                let r = kv
                    .put(
                        catchup_key(idx),
                        load::value(idx, CATCHUP_WRITER, seq),
                        None,
                    )
                    .await
                    .map_err(|e| format!("history put {seq}: {e}"))?;
                done.push((r.header().map_or(0, |h| h.revision()), seq));
                seq += CATCHUP_WRITERS as u64;
            }
            Ok::<_, String>(done)
        });
    }
    let mut expected = Vec::with_capacity(n as usize);
    while let Some(r) = set.join_next().await {
        expected.extend(r.map_err(|e| e.to_string())??);
    }
    expected.sort_unstable();
    if let Some(w) = expected.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(format!(
            "WRONG ANSWER: puts {} and {} both acknowledged at revision {}",
            w[0].1, w[1].1, w[0].0
        ));
    }
    assert_eq!(expected.len() as u64, n);
    Ok(History { expected })
}

/// One catch-up run: a watcher on a follower from the history's first
/// revision must receive exactly the history.
pub async fn catchup_run(c: &mut Cluster, h: &History) -> Result<CatchupRun, String> {
    c.check_alive()?;
    let leader = c.wait_ready().await?;
    let follower = (0..c.founders())
        .find(|&i| i != leader)
        .ok_or("a watch catch-up run needs a follower")?;
    let mut wc = connect_watch(&c.endpoint(follower)).await?;
    let n = h.expected.len();
    let t0 = Instant::now();
    let replay = async {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(h.expected[0].0);
        let (_handle, mut stream) = wc
            .watch(CATCHUP_PREFIX, Some(opts))
            .await
            .map_err(|e| format!("create: {e}"))?;
        let mut i = 0;
        let mut first = None;
        while i < n {
            let resp = match stream.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return Err(format!("stream ended after {i} of {n} events")),
                Err(e) => return Err(format!("stream error after {i} of {n} events: {e}")),
            };
            if resp.canceled() {
                return Err(format!(
                    "watch canceled after {i} of {n} events (reason {:?}, compact revision {})",
                    resp.cancel_reason(),
                    resp.compact_revision()
                ));
            }
            if !resp.events().is_empty() {
                first.get_or_insert_with(|| t0.elapsed());
            }
            for ev in resp.events() {
                let Some(&(rev, seq)) = h.expected.get(i) else {
                    return Err(format!("WRONG ANSWER: more than the {n} events written"));
                };
                let got = check_event(ev, CATCHUP_PREFIX, rev)
                    .map_err(|e| format!("WRONG ANSWER: event {i}: {e}"))?;
                if got != seq {
                    return Err(format!(
                        "WRONG ANSWER: event {i} at revision {rev} holds put {got}, the writers saw put {seq} \
                         acknowledged there"
                    ));
                }
                i += 1;
            }
        }
        Ok(first.unwrap_or_default())
    };
    let first = tokio::time::timeout(CATCHUP_TIMEOUT, replay)
        .await
        .map_err(|_| format!("catch-up of {n} events not done within {CATCHUP_TIMEOUT:?}"))??;
    let secs = t0.elapsed().as_secs_f64();
    c.check_alive()?;
    Ok(CatchupRun {
        events: n as u64,
        secs,
        first_event_secs: first.as_secs_f64(),
    })
}

pub type FanoutOutcome = Result<FanoutRun, String>;
pub type CatchupOutcome = Result<CatchupRun, String>;

/// Every run of the watch workloads, per system.
#[derive(Default)]
pub struct Results {
    pub fanout: HashMap<System, Vec<FanoutOutcome>>,
    pub catchup: HashMap<System, Vec<CatchupOutcome>>,
}

/// Fan-out runs of one system, aggregated; the first failure if any.
struct FanoutCell {
    events_per_sec: f64,
    puts_per_sec: f64,
    lat: Hist,
    early: u64,
    kib_per_watcher: Vec<f64>,
    cpu_us_per_event: f64,
    cpu_secs: Vec<f64>,
    loadgen_cpu_secs: f64,
    drain_secs: f64,
    held_back: u64,
}

fn fanout_cell(runs: &[FanoutOutcome]) -> Result<FanoutCell, String> {
    let mut rs = Vec::new();
    for r in runs {
        rs.push(r.as_ref().map_err(Clone::clone)?);
    }
    if rs.is_empty() {
        return Err("not run".into());
    }
    let n = rs.len() as f64;
    let members = rs[0].cpu_secs.len();
    let mut lat = Hist::new();
    for r in &rs {
        lat.merge(&r.lat);
    }
    Ok(FanoutCell {
        events_per_sec: crate::median(rs.iter().map(|r| r.events_per_sec).collect()),
        puts_per_sec: crate::median(rs.iter().map(|r| r.puts_per_sec).collect()),
        lat,
        early: rs.iter().map(|r| r.early).sum(),
        kib_per_watcher: rs.iter().map(|r| r.idle_kib_per_watcher()).collect(),
        cpu_us_per_event: rs
            .iter()
            .map(|r| r.cpu_secs.iter().sum::<f64>() * 1e6 / r.events as f64)
            .sum::<f64>()
            / n,
        cpu_secs: (0..members)
            .map(|i| rs.iter().map(|r| r.cpu_secs[i]).sum::<f64>() / n)
            .collect(),
        loadgen_cpu_secs: rs.iter().map(|r| r.loadgen_cpu_secs).sum::<f64>() / n,
        drain_secs: rs.iter().map(|r| r.drain_secs).fold(0.0, f64::max),
        held_back: rs.iter().map(|r| r.held_back).sum(),
    })
}

struct CatchupCell {
    secs: Vec<f64>,
    median_secs: f64,
    events: u64,
    first_event_ms: f64,
}

fn catchup_cell(runs: &[CatchupOutcome]) -> Result<CatchupCell, String> {
    let mut rs = Vec::new();
    for r in runs {
        rs.push(r.as_ref().map_err(Clone::clone)?);
    }
    if rs.is_empty() {
        return Err("not run".into());
    }
    Ok(CatchupCell {
        secs: rs.iter().map(|r| r.secs).collect(),
        median_secs: crate::median(rs.iter().map(|r| r.secs).collect()),
        events: rs[0].events,
        first_event_ms: crate::median(rs.iter().map(|r| r.first_event_secs * 1e3).collect()),
    })
}

impl Results {
    /// Rows that failed (for the exit status).
    pub fn failed(&self) -> usize {
        self.fanout
            .values()
            .filter(|v| fanout_cell(v).is_err())
            .count()
            + self
                .catchup
                .values()
                .filter(|v| catchup_cell(v).is_err())
                .count()
    }
}

/// The first run's idle memory per watcher, then the later runs'.
fn idle_kib(c: &FanoutCell) -> String {
    let k = &c.kib_per_watcher;
    let later: Vec<String> = k[1..].iter().map(|x| format!("{x:.1}")).collect();
    if later.is_empty() {
        format!("{:.1}", k[0])
    } else {
        format!("{:.1} ({})", k[0], later.join(" / "))
    }
}

fn esc(e: &str) -> String {
    e.replace('|', "\\|").replace('\n', " ")
}

/// The "Watch" section of the report.
pub fn report(
    s: &mut String,
    p: &Params,
    systems: &[System],
    which: &[WatchWorkload],
    reps: usize,
    r: &Results,
) {
    use super::{fmt_ms, ratio};
    let both = systems.len() == 2;
    let ms = |us: f64| fmt_ms(us / 1e3);
    let _ = writeln!(s, "\n## Watch (issue 15)\n");
    let mut fan: HashMap<System, Result<FanoutCell, String>> = HashMap::new();
    if which.contains(&WatchWorkload::Fanout) {
        let _ = writeln!(
            s,
            "**Fan-out.** {} watchers on the prefix `{FANOUT_PREFIX}`, one watch stream each, {} streams per HTTP/2 \
             connection, the connections spread over the followers. Writers put to the leader at {} puts/s \
             (paced, open loop; {}-byte values, keys cycling over {}) for {:.1} s of warm-up and {:.1} s measured; \
             {reps} run(s) per system alternating, fresh watchers each run. **events/s** = events of the measured \
             puts delivered to all watchers / (last delivery − first measured put), the median over runs; the \
             offered rate is puts/s × watchers. **Latency** = event delivery − the put's acknowledgement, both seen \
             by the load generator's clock, every measured event of every run pooled (an event that arrives before \
             its acknowledgement counts as 0). **Idle memory per watcher** = (RSS of the members after \
             opening the watchers and {} s idle − before) / watchers, from the first run, before any watch load; later \
             runs are in parentheses: the members are still handing back the previous run's memory then (Go's \
             scavenger, freed buffers), so their differences are disturbed and can be negative. CPU is each member's utime+stime \
             from the first measured put to the last delivery (mean per run).\n",
            p.watchers,
            p.per_connection,
            p.put_rate,
            load::VALUE_BYTES,
            load::KEYSPACE,
            p.warmup.as_secs_f64(),
            p.measure.as_secs_f64(),
            IDLE_SETTLE.as_secs(),
        );
        let _ = writeln!(
            s,
            "| system | events/s delivered | puts/s | p50 ms | p99 ms | p99.9 ms | max ms | idle memory per watcher, KiB, first run (later runs) | CPU µs per event (all members) | CPU s per member (m1 / m2 / …) | load generator CPU s |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for &sys in systems {
            let c = fanout_cell(r.fanout.get(&sys).map_or(&[][..], |v| v.as_slice()));
            match &c {
                Ok(c) => {
                    let _ = writeln!(
                        s,
                        "| {} | {} (offered {}) | {:.0} | {} | {} | {} | {} | {} | {:.2} | {} | {:.1} |",
                        sys.name(),
                        crate::thousands(c.events_per_sec),
                        crate::thousands(c.puts_per_sec * p.watchers as f64),
                        c.puts_per_sec,
                        ms(c.lat.quantile(0.5)),
                        ms(c.lat.quantile(0.99)),
                        ms(c.lat.quantile(0.999)),
                        ms(c.lat.quantile(1.0)),
                        idle_kib(c),
                        c.cpu_us_per_event,
                        c.cpu_secs
                            .iter()
                            .map(|x| format!("{x:.2}"))
                            .collect::<Vec<_>>()
                            .join(" / "),
                        c.loadgen_cpu_secs,
                    );
                }
                Err(e) => {
                    let _ = writeln!(
                        s,
                        "| {} | **FAILED**: {} | | | | | | | | | |",
                        sys.name(),
                        esc(e)
                    );
                }
            }
            fan.insert(sys, c);
        }
        if both {
            match (fan.get(&System::Etcd), fan.get(&System::Metalraft)) {
                (Some(Ok(e)), Some(Ok(m))) => {
                    let kib = |c: &FanoutCell| c.kib_per_watcher[0];
                    let _ = writeln!(
                        s,
                        "| **metalraft/etcd** | **{}** | | {} | **{}** | {} | {} | {} (first runs) | {} | | |",
                        ratio(m.events_per_sec, e.events_per_sec),
                        ratio(m.lat.quantile(0.5), e.lat.quantile(0.5)),
                        ratio(m.lat.quantile(0.99), e.lat.quantile(0.99)),
                        ratio(m.lat.quantile(0.999), e.lat.quantile(0.999)),
                        ratio(m.lat.quantile(1.0), e.lat.quantile(1.0)),
                        ratio(kib(m), kib(e)),
                        ratio(m.cpu_us_per_event, e.cpu_us_per_event),
                    );
                }
                _ => {
                    let _ = writeln!(
                        s,
                        "| **metalraft/etcd** | – (a run failed) | | | | | | | | | |"
                    );
                }
            }
        }
        let notes: Vec<String> = systems
            .iter()
            .filter_map(|sys| match fan.get(sys) {
                Some(Ok(c)) => Some(format!(
                    "{}: {} of {} events arrived before the load generator saw their put acknowledged; the last \
                     event came at most {:.3} s after the last acknowledgement; {} puts were held back by the cap \
                     of {MAX_PUTS_IN_FLIGHT} unanswered",
                    sys.name(),
                    c.early,
                    c.lat.len(),
                    c.drain_secs,
                    c.held_back,
                )),
                _ => None,
            })
            .collect();
        if !notes.is_empty() {
            let _ = writeln!(s, "\n{}.", notes.join("; "));
        }
        let _ = writeln!(
            s,
            "\nEvery watcher received every event of the run exactly once, in revision order, each with the key \
             and value of the put acknowledged at that revision.\n"
        );
    }
    let mut cat: HashMap<System, Result<CatchupCell, String>> = HashMap::new();
    if which.contains(&WatchWorkload::Catchup) {
        let _ = writeln!(
            s,
            "**Catch-up.** {} puts under `{CATCHUP_PREFIX}` ({} writers, to the leader), then one watcher on a \
             follower with `start_revision` = the first of them replays the whole history: the time from the \
             create request to the last event, {reps} run(s) per system alternating (the same history each \
             run), median. Every event checked against the revision, key and value the writers saw \
             acknowledged.\n",
            p.catchup_events, CATCHUP_WRITERS
        );
        let _ = writeln!(
            s,
            "| system | events | time s (runs) | median s | events/s | first event ms |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
        for &sys in systems {
            let c = catchup_cell(r.catchup.get(&sys).map_or(&[][..], |v| v.as_slice()));
            match &c {
                Ok(c) => {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {:.3} | {} | {:.1} |",
                        sys.name(),
                        crate::thousands(c.events as f64),
                        c.secs
                            .iter()
                            .map(|x| format!("{x:.3}"))
                            .collect::<Vec<_>>()
                            .join(" / "),
                        c.median_secs,
                        crate::thousands(c.events as f64 / c.median_secs),
                        c.first_event_ms,
                    );
                }
                Err(e) => {
                    let _ = writeln!(s, "| {} | **FAILED**: {} | | | | |", sys.name(), esc(e));
                }
            }
            cat.insert(sys, c);
        }
        if both {
            match (cat.get(&System::Etcd), cat.get(&System::Metalraft)) {
                (Some(Ok(e)), Some(Ok(m))) => {
                    let _ = writeln!(
                        s,
                        "| **metalraft/etcd** | | | {} | **{}** | {} |",
                        ratio(m.median_secs, e.median_secs),
                        ratio(e.median_secs, m.median_secs),
                        ratio(m.first_event_ms, e.first_event_ms),
                    );
                }
                _ => {
                    let _ = writeln!(s, "| **metalraft/etcd** | – (a run failed) | | | | |");
                }
            }
        }
    }
    let _ = writeln!(
        s,
        "\nRatios above 1× are better for metalraft in the events/s columns, worse in the others.\n"
    );
    if both && which.contains(&WatchWorkload::Fanout) {
        let _ = writeln!(s, "### Against the targets of issue 15\n");
        let _ = writeln!(s, "| target | measured | met? |\n|---|---:|---|");
        match (fan.get(&System::Etcd), fan.get(&System::Metalraft)) {
            (Some(Ok(e)), Some(Ok(m))) => {
                let tput = m.events_per_sec / e.events_per_sec;
                let p99 = m.lat.quantile(0.99) / e.lat.quantile(0.99);
                let yes = |b: bool| if b { "yes" } else { "**no**" };
                let _ = writeln!(
                    s,
                    "| fan-out delivered events/s ≥ 2× etcd | {tput:.2}× | {} |",
                    yes(tput >= 2.0)
                );
                let _ = writeln!(
                    s,
                    "| fan-out p99 latency ≤ etcd | {p99:.2}× | {} |",
                    yes(p99 <= 1.0)
                );
                let _ = writeln!(
                    s,
                    "| memory per idle watcher reported | {:.1} KiB vs {:.1} KiB (etcd), first run | yes |",
                    m.kib_per_watcher[0],
                    e.kib_per_watcher[0]
                );
            }
            _ => {
                let _ = writeln!(s, "| fan-out | – | a run failed |");
            }
        }
        let _ = writeln!(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hist_buckets_are_monotone_and_tight() {
        let mut last = 0;
        for v in (0..5_000u32).chain([1 << 20, (1 << 20) + 7, u32::MAX - 1, u32::MAX]) {
            let b = Hist::bucket(v);
            assert!(b >= last && b < HIST_BUCKETS, "v {v} bucket {b}");
            last = b;
            let lo = Hist::lower(b);
            assert!(lo <= v, "v {v} lower {lo}");
            assert!(
                f64::from(v - lo) <= f64::from(v) / 500.0,
                "v {v} lower {lo}"
            );
            assert_eq!(Hist::bucket(lo), b);
        }
        assert_eq!(Hist::bucket(1023), 1023);
        assert_eq!(Hist::bucket(1024), 1024);
    }

    #[test]
    fn hist_quantiles() {
        let mut h = Hist::new();
        for v in 1..=1000 {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), 500.0);
        assert_eq!(h.quantile(0.99), 990.0);
        assert_eq!(h.quantile(1.0), 1000.0);
        let mut g = Hist::new();
        g.record(1_000_000);
        h.merge(&g);
        assert_eq!(h.len(), 1001);
        let top = h.quantile(1.0);
        assert!((998_000.0..=1_000_000.0).contains(&top), "{top}");
        assert!(Hist::new().quantile(0.5).is_nan());
    }

    #[test]
    fn digest_is_order_sensitive() {
        let a = digest(digest(0, 5, 1), 6, 2);
        let b = digest(digest(0, 6, 2), 5, 1);
        let c = digest(digest(0, 5, 2), 6, 1);
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn params() {
        let p = Params::full();
        assert_eq!((p.warm_puts(), p.total_puts()), (1_000, 11_000));
        let q = Params::quick();
        assert_eq!((q.warm_puts(), q.total_puts()), (500, 2_500));
        assert_eq!(fanout_key(42), b"w/0000042".to_vec());
        assert_eq!(key_index(10_042), 42);
        for w in WatchWorkload::all() {
            assert_eq!(WatchWorkload::parse(w.id()), Some(w));
        }
    }
}
