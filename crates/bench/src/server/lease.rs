//! The Lease benchmarks of issue 16, run by the server suite on the same two
//! clusters and with the same load generator as the other workloads:
//!
//! - **keepalive** (`lease-keepalive`): many leases, each kept alive by a
//!   keepalive stream of its own (etcd-client's `LeaseKeeper`, one gRPC
//!   stream per lease, the streams spread over the members, so
//!   followers relay). First paced, one keepalive per lease per second (the
//!   load of that many clients): keepalives answered per second, the
//!   members' CPU and memory. Then saturated: every stream sends its next
//!   keepalive as soon as the previous one is answered: the sustained
//!   keepalives per second.
//! - **mass expiry** (`lease-expiry`): many leases with one key each stop
//!   being kept alive at once (they are granted with a short TTL and never
//!   renewed): the time until every key is gone, and the latency of
//!   unrelated puts, paced, while the leader revokes them.
//!
//! Every answer is checked: a keepalive must answer for its lease with a
//! TTL > 0 (the leases never expire during the keepalive run); every
//! attached key must exist before the expiry and be gone after it; a failed
//! grant, put or stream fails the run. The leases of the keepalive run are
//! revoked at its end, so they do not expire during later runs.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, KvClient, LeaseClient, PutOptions};
use tokio::task::JoinSet;

use super::cluster::{self, Cluster, ProcStats, System};
use super::load;

/// Keepalive run: leases, each with its own keepalive stream.
pub const KEEPALIVE_LEASES: usize = 10_000;
pub const QUICK_KEEPALIVE_LEASES: usize = 1_000;
/// Mass expiry: leases, one key each.
pub const EXPIRY_LEASES: usize = 10_000;
pub const QUICK_EXPIRY_LEASES: usize = 1_000;
/// Keepalive streams sharing one HTTP/2 connection (below the metalraft
/// server's 200 concurrent streams per connection, hyper's default).
pub const STREAMS_PER_CONNECTION: usize = 100;
/// Paced phase: each lease is kept alive this often.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// Paced phase: warm-up, then the measured stretch; then the saturated
/// phase's measured stretch (after one interval of ramp-up).
const PACED_WARMUP: Duration = Duration::from_secs(2);
const PACED_MEASURE: Duration = Duration::from_secs(5);
const SATURATED_MEASURE: Duration = Duration::from_secs(4);
const QUICK_PACED_MEASURE: Duration = Duration::from_secs(2);
const QUICK_SATURATED_MEASURE: Duration = Duration::from_secs(2);
/// TTL of the kept-alive leases: far longer than any gap between
/// keepalives, so none may expire.
const KEEPALIVE_TTL_SECS: i64 = 60;
/// TTL of the leases that expire: longer than granting them takes, so
/// all of them are granted and attached before the first expires.
const EXPIRY_TTL_SECS: i64 = 10;
const QUICK_EXPIRY_TTL_SECS: i64 = 5;
/// Grants, puts and revokes in flight while setting up.
const SETUP_CONCURRENCY: usize = 64;
/// Unrelated puts during the mass expiry: paced, to the leader.
const UNRELATED_PUT_RATE: u32 = 200;
/// How often the load generator counts the keys still attached.
const COUNT_POLL: Duration = Duration::from_millis(50);
/// Every key must be gone within this after the last lease's TTL.
const EXPIRY_TIMEOUT: Duration = Duration::from_secs(120);
/// Setting up or tearing down must finish within this.
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);
/// Key prefixes: attached keys `x/0000000`.., unrelated puts `u/`.. .
const EXPIRY_PREFIX: &str = "x/";
const UNRELATED_PREFIX: &str = "u/";

/// The two lease workloads.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum LeaseWorkload {
    Keepalive,
    Expiry,
}

impl LeaseWorkload {
    pub fn all() -> Vec<LeaseWorkload> {
        vec![LeaseWorkload::Keepalive, LeaseWorkload::Expiry]
    }

    pub fn id(self) -> &'static str {
        match self {
            LeaseWorkload::Keepalive => "lease-keepalive",
            LeaseWorkload::Expiry => "lease-expiry",
        }
    }

    pub fn parse(s: &str) -> Option<LeaseWorkload> {
        LeaseWorkload::all().into_iter().find(|w| w.id() == s)
    }
}

/// The sizes of the lease workloads.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    pub keepalive_leases: usize,
    pub expiry_leases: usize,
    pub paced_measure: Duration,
    pub saturated_measure: Duration,
    pub expiry_ttl_secs: i64,
}

impl Params {
    pub fn full() -> Params {
        Params {
            keepalive_leases: KEEPALIVE_LEASES,
            expiry_leases: EXPIRY_LEASES,
            paced_measure: PACED_MEASURE,
            saturated_measure: SATURATED_MEASURE,
            expiry_ttl_secs: EXPIRY_TTL_SECS,
        }
    }

    pub fn quick() -> Params {
        Params {
            keepalive_leases: QUICK_KEEPALIVE_LEASES,
            expiry_leases: QUICK_EXPIRY_LEASES,
            paced_measure: QUICK_PACED_MEASURE,
            saturated_measure: QUICK_SATURATED_MEASURE,
            expiry_ttl_secs: QUICK_EXPIRY_TTL_SECS,
        }
    }
}

/// One keepalive run.
pub struct KeepaliveRun {
    pub leases: usize,
    /// Paced phase: keepalives answered per second in the measured stretch.
    pub paced_per_sec: f64,
    /// Paced phase: p99 of a keepalive's round trip, µs.
    pub paced_p99_us: f64,
    /// Saturated phase: keepalives answered per second.
    pub saturated_per_sec: f64,
    /// Each member's CPU seconds per second of the paced / saturated
    /// measured stretch.
    pub paced_cpu: Vec<f64>,
    pub saturated_cpu: Vec<f64>,
    /// The load generator's CPU per second of the saturated stretch.
    pub loadgen_saturated_cpu: f64,
    /// RSS of the members before granting and with every stream open.
    pub rss_before_kib: Vec<u64>,
    pub rss_after_kib: Vec<u64>,
    /// Seconds to grant the leases.
    pub setup_secs: f64,
    /// Keepalive streams that failed and were reopened, and the first
    /// error.
    pub errors: u64,
    pub first_error: Option<String>,
}

/// One mass-expiry run.
pub struct ExpiryRun {
    pub leases: usize,
    /// Seconds to grant and attach.
    pub setup_secs: f64,
    /// From the first lease's deadline (its grant's acknowledgement + TTL)
    /// to the last key gone.
    pub span_secs: f64,
    /// From the last lease's deadline to the last key gone.
    pub after_last_deadline_secs: f64,
    /// Unrelated puts sent during the expiry (first deadline .. all gone),
    /// their p50 and p99, µs; and the p99 of those sent before it.
    pub puts: usize,
    pub put_p50_us: f64,
    pub put_p99_us: f64,
    pub put_p99_before_us: f64,
    /// Each member's CPU seconds during the expiry.
    pub cpu_secs: Vec<f64>,
    /// Keys still attached at the first deadline (all of them, unless a
    /// lease expired early in the client's view).
    pub left_at_first_deadline: i64,
}

/// Every lease run of the suite.
#[derive(Default)]
pub struct Results {
    pub keepalive: HashMap<System, Vec<Result<KeepaliveRun, String>>>,
    pub expiry: HashMap<System, Vec<Result<ExpiryRun, String>>>,
}

impl Results {
    pub fn failed(&self) -> usize {
        let k = self.keepalive.values().flatten().filter(|r| r.is_err());
        let e = self.expiry.values().flatten().filter(|r| r.is_err());
        k.count() + e.count()
    }
}

fn stats(c: &Cluster) -> Vec<ProcStats> {
    (0..c.founders())
        .map(|i| c.pid(i).and_then(cluster::proc_stats).unwrap_or_default())
        .collect()
}

fn cpu_delta(a: &[ProcStats], b: &[ProcStats], secs: f64) -> Vec<f64> {
    a.iter()
        .zip(b)
        .map(|(a, b)| (b.cpu_secs - a.cpu_secs) / secs)
        .collect()
}

/// CPU seconds this process (the load generator) has used so far.
pub(super) fn own_cpu_secs() -> f64 {
    cpu_time::ProcessTime::now().as_duration().as_secs_f64()
}

/// Grants `n` leases of `ttl` seconds over `clients` (round robin, at most
/// [`SETUP_CONCURRENCY`] in flight); returns their IDs in order and the
/// instants of the first and the last acknowledgement. With `prefix`, each
/// lease then gets its key `prefix<i>` attached.
async fn grant(
    clients: &[Client],
    n: usize,
    ttl: i64,
    prefix: Option<&'static str>,
) -> Result<(Vec<i64>, Instant, Instant), String> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for w in 0..SETUP_CONCURRENCY.min(n) {
        let c = &clients[w % clients.len()];
        let (mut lc, mut kv) = (c.lease_client(), c.kv_client());
        let next = next.clone();
        tasks.spawn(async move {
            let mut got = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    return Ok::<_, String>(got);
                }
                let r = lc
                    .grant(ttl, None)
                    .await
                    .map_err(|e| format!("grant {i}: {e}"))?;
                if r.ttl() < ttl || r.id() == 0 {
                    return Err(format!(
                        "WRONG ANSWER: grant {i}: id {} ttl {}",
                        r.id(),
                        r.ttl()
                    ));
                }
                let at = Instant::now();
                if let Some(p) = prefix {
                    let opts = PutOptions::new().with_lease(r.id());
                    kv.put(
                        format!("{p}{i:07}"),
                        load::value(0, 0, i as u64),
                        Some(opts),
                    )
                    .await
                    .map_err(|e| format!("put {i} with lease: {e}"))?;
                }
                got.push((i, r.id(), at));
            }
        });
    }
    let mut all = Vec::with_capacity(n);
    let collect = async {
        while let Some(t) = tasks.join_next().await {
            all.extend(t.map_err(|e| e.to_string())??);
        }
        Ok::<(), String>(())
    };
    tokio::time::timeout(SETUP_TIMEOUT, collect)
        .await
        .map_err(|_| "granting the leases took too long".to_string())??;
    all.sort_unstable_by_key(|&(i, _, _)| i);
    let first = all.iter().map(|x| x.2).min().ok_or("no lease granted")?;
    let last = all.iter().map(|x| x.2).max().ok_or("no lease granted")?;
    Ok((all.into_iter().map(|x| x.1).collect(), first, last))
}

/// Revokes `ids` over `clients`.
async fn revoke(clients: &[Client], ids: Vec<i64>) -> Result<(), String> {
    let ids = Arc::new(ids);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for w in 0..SETUP_CONCURRENCY.min(ids.len()) {
        let mut lc = clients[w % clients.len()].lease_client();
        let (ids, next) = (ids.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&id) = ids.get(i) else {
                    return Ok::<(), String>(());
                };
                lc.revoke(id)
                    .await
                    .map_err(|e| format!("revoke {id:x}: {e}"))?;
            }
        });
    }
    let all = async {
        while let Some(t) = tasks.join_next().await {
            t.map_err(|e| e.to_string())??;
        }
        Ok::<(), String>(())
    };
    tokio::time::timeout(SETUP_TIMEOUT, all)
        .await
        .map_err(|_| "revoking the leases took too long".to_string())?
}

/// Shared counters of the keepalive tasks.
#[derive(Default)]
struct Counters {
    paced: AtomicU64,
    saturated: AtomicU64,
    errors: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Counters {
    fn note_error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.first_error.lock() {
            f.get_or_insert(e);
        }
    }
}

/// Phases of the keepalive run, as instants every task reads.
#[derive(Clone, Copy)]
struct Plan {
    paced_from: Instant,
    paced_to: Instant,
    saturated_from: Instant,
    saturated_to: Instant,
}

/// After a keepalive stream fails (an error answer, a reset), the task
/// waits this long and opens a new one, as etcd's clients do.
const KEEPALIVE_RETRY_BACKOFF: Duration = Duration::from_millis(100);

/// One lease's keepalive stream: paced until `paced_to`, then as fast as
/// answers come until `saturated_to`. A stream that fails is counted and
/// reopened. Returns the paced round trips measured (µs), or a wrong
/// answer.
async fn keeper_task(
    mut lc: LeaseClient,
    id: i64,
    offset: Duration,
    plan: Plan,
    counters: Arc<Counters>,
) -> Result<Vec<u32>, String> {
    let mut rtts = Vec::new();
    let start = plan.paced_from - PACED_WARMUP;
    let mut k: u32 = 0;
    let mut open = None;
    loop {
        let now = Instant::now();
        if now >= plan.saturated_to {
            return Ok(rtts);
        }
        let (keeper, stream) = match open.as_mut() {
            Some(s) => s,
            None => match lc.keep_alive(id).await {
                Ok(s) => open.insert(s),
                Err(e) => {
                    counters.note_error(format!("open the keepalive stream of {id:x}: {e}"));
                    tokio::time::sleep(KEEPALIVE_RETRY_BACKOFF).await;
                    continue;
                }
            },
        };
        if now < plan.paced_to {
            let at = start + offset + KEEPALIVE_INTERVAL * k;
            k += 1;
            if at >= plan.paced_to {
                tokio::time::sleep_until(plan.paced_to.into()).await;
                continue;
            }
            tokio::time::sleep_until(at.into()).await;
        }
        let sent = Instant::now();
        let answer = match keeper.keep_alive().await {
            Ok(()) => stream.message().await,
            Err(e) => Err(e),
        };
        let resp = match answer {
            Ok(Some(r)) => r,
            Ok(None) => {
                counters.note_error(format!("keepalive stream of {id:x} closed"));
                open = None;
                continue;
            }
            Err(e) => {
                counters.note_error(format!("keepalive of {id:x}: {e}"));
                open = None;
                tokio::time::sleep(KEEPALIVE_RETRY_BACKOFF).await;
                continue;
            }
        };
        if resp.id() != id || resp.ttl() <= 0 {
            return Err(format!(
                "WRONG ANSWER: keepalive of {id:x} answered for {:x} with TTL {}",
                resp.id(),
                resp.ttl()
            ));
        }
        let done = Instant::now();
        if sent >= plan.paced_from && done < plan.paced_to {
            counters.paced.fetch_add(1, Ordering::Relaxed);
            rtts.push((done - sent).as_micros().min(u128::from(u32::MAX)) as u32);
        } else if sent >= plan.saturated_from && done < plan.saturated_to {
            counters.saturated.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The keepalive run on `c`.
pub async fn keepalive_run(c: &mut Cluster, p: &Params) -> Result<KeepaliveRun, String> {
    c.check_alive()?;
    c.wait_ready().await?;
    let eps = c.endpoints();
    let n = p.keepalive_leases;
    let rss_before_kib = stats(c).iter().map(|s| s.rss_kib).collect();
    let t0 = Instant::now();
    let conns = n.div_ceil(STREAMS_PER_CONNECTION);
    let mut clients = Vec::with_capacity(conns);
    for i in 0..conns {
        clients.push(load::connect_stream(&eps[i % eps.len()]).await?);
    }
    let (ids, _, _) = grant(&clients, n, KEEPALIVE_TTL_SECS, None).await?;
    let setup_secs = t0.elapsed().as_secs_f64();
    // Streams open during the first second of the warm-up.
    let paced_from = Instant::now() + PACED_WARMUP;
    let paced_to = paced_from + p.paced_measure;
    let saturated_from = paced_to + KEEPALIVE_INTERVAL;
    let plan = Plan {
        paced_from,
        paced_to,
        saturated_from,
        saturated_to: saturated_from + p.saturated_measure,
    };
    let counters = Arc::new(Counters::default());
    let mut tasks = JoinSet::new();
    for (i, &id) in ids.iter().enumerate() {
        let lc = clients[i % conns].lease_client();
        let offset = KEEPALIVE_INTERVAL.mul_f64(i as f64 / n as f64);
        tasks.spawn(keeper_task(lc, id, offset, plan, counters.clone()));
    }
    tokio::time::sleep_until(paced_from.into()).await;
    let rss_after_kib = stats(c).iter().map(|s| s.rss_kib).collect();
    let a = stats(c);
    tokio::time::sleep_until(paced_to.into()).await;
    let b = stats(c);
    tokio::time::sleep_until(saturated_from.into()).await;
    let (s0, g0) = (stats(c), own_cpu_secs());
    tokio::time::sleep_until(plan.saturated_to.into()).await;
    let (s1, g1) = (stats(c), own_cpu_secs());
    let mut rtts = Vec::new();
    let mut first_err = None;
    while let Some(t) = tasks.join_next().await {
        match t.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(r) => rtts.extend(r),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    revoke(&clients, ids).await?;
    c.check_alive()?;
    if let Some(e) = first_err {
        return Err(e);
    }
    rtts.sort_unstable();
    let paced_secs = p.paced_measure.as_secs_f64();
    let sat_secs = p.saturated_measure.as_secs_f64();
    Ok(KeepaliveRun {
        leases: n,
        paced_per_sec: counters.paced.load(Ordering::Relaxed) as f64 / paced_secs,
        paced_p99_us: load::quantile(&rtts, 0.99),
        saturated_per_sec: counters.saturated.load(Ordering::Relaxed) as f64 / sat_secs,
        paced_cpu: cpu_delta(&a, &b, paced_secs),
        saturated_cpu: cpu_delta(&s0, &s1, sat_secs),
        loadgen_saturated_cpu: (g1 - g0) / sat_secs,
        rss_before_kib,
        rss_after_kib,
        setup_secs,
        errors: counters.errors.load(Ordering::Relaxed),
        first_error: counters.first_error.lock().ok().and_then(|mut f| f.take()),
    })
}

/// Counts the keys under `prefix` (linearizable).
async fn count(kv: &mut KvClient, prefix: &str) -> Result<i64, String> {
    let opts = GetOptions::new().with_prefix().with_count_only();
    let r = kv
        .get(prefix, Some(opts))
        .await
        .map_err(|e| format!("count {prefix}: {e}"))?;
    Ok(r.count())
}

/// The mass-expiry run on `c`.
pub async fn expiry_run(c: &mut Cluster, p: &Params) -> Result<ExpiryRun, String> {
    c.check_alive()?;
    let leader = c.wait_ready().await?;
    let eps = c.endpoints();
    let n = p.expiry_leases;
    let ttl = Duration::from_secs(p.expiry_ttl_secs as u64);
    let mut clients = Vec::new();
    for i in 0..SETUP_CONCURRENCY.div_ceil(16) {
        clients.push(load::connect_one(&eps[i % eps.len()]).await?);
    }
    let t0 = Instant::now();
    let (_, first, last) = grant(&clients, n, p.expiry_ttl_secs, Some(EXPIRY_PREFIX)).await?;
    let setup_secs = t0.elapsed().as_secs_f64();
    let mut counter = load::connect_one(&eps[leader]).await?.kv_client();
    let attached = count(&mut counter, EXPIRY_PREFIX).await?;
    if first + ttl <= Instant::now() {
        return Err(format!(
            "granting took {setup_secs:.1} s, longer than the TTL: raise it"
        ));
    }
    if attached != n as i64 {
        return Err(format!("WRONG ANSWER: {attached} keys attached, {n} put"));
    }
    // Unrelated puts, paced, open loop, until told to stop.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let puts = {
        let kv = load::connect_one(&eps[leader]).await?.kv_client();
        let base = Instant::now();
        tokio::spawn(async move {
            let mut set = JoinSet::new();
            let period = Duration::from_secs(1) / UNRELATED_PUT_RATE;
            let mut k: u32 = 0;
            while !*stop_rx.borrow() {
                let at = base + period * k;
                tokio::time::sleep_until(at.into()).await;
                let mut kv = kv.clone();
                let idx = k % load::KEYSPACE;
                set.spawn(async move {
                    let sent = Instant::now();
                    let key = format!("{UNRELATED_PREFIX}{idx:07}");
                    kv.put(key, load::value(idx, 1, u64::from(k)), None)
                        .await
                        .map_err(|e| format!("unrelated put {k}: {e}"))?;
                    Ok::<_, String>((sent, sent.elapsed()))
                });
                k += 1;
            }
            let mut out = Vec::new();
            while let Some(t) = set.join_next().await {
                out.push(t.map_err(|e| e.to_string())??);
            }
            Ok::<_, String>(out)
        })
    };
    let due_first = first + ttl;
    let due_last = last + ttl;
    tokio::time::sleep_until(due_first.into()).await;
    let a = stats(c);
    let left_at_first_deadline = count(&mut counter, EXPIRY_PREFIX).await?;
    let gone = loop {
        let left = count(&mut counter, EXPIRY_PREFIX).await?;
        let now = Instant::now();
        if left == 0 {
            break now;
        }
        if now > due_last + EXPIRY_TIMEOUT {
            let _ = stop_tx.send(true);
            return Err(format!(
                "{left} keys still attached {EXPIRY_TIMEOUT:?} after the last deadline"
            ));
        }
        tokio::time::sleep(COUNT_POLL).await;
    };
    let b = stats(c);
    let _ = stop_tx.send(true);
    let done = puts.await.map_err(|e| e.to_string())??;
    c.check_alive()?;
    let us = |d: Duration| d.as_micros().min(u128::from(u32::MAX)) as u32;
    let mut during: Vec<u32> = done
        .iter()
        .filter(|(s, _)| *s >= due_first && *s <= gone)
        .map(|(_, d)| us(*d))
        .collect();
    let mut before: Vec<u32> = done
        .iter()
        .filter(|(s, _)| *s < due_first)
        .map(|(_, d)| us(*d))
        .collect();
    during.sort_unstable();
    before.sort_unstable();
    Ok(ExpiryRun {
        leases: n,
        setup_secs,
        span_secs: (gone - due_first).as_secs_f64(),
        after_last_deadline_secs: gone.saturating_duration_since(due_last).as_secs_f64(),
        puts: during.len(),
        put_p50_us: load::quantile(&during, 0.5),
        put_p99_us: load::quantile(&during, 0.99),
        put_p99_before_us: load::quantile(&before, 0.99),
        cpu_secs: a
            .iter()
            .zip(&b)
            .map(|(a, b)| b.cpu_secs - a.cpu_secs)
            .collect(),
        left_at_first_deadline,
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The lease section of the report.
pub fn report(
    s: &mut String,
    p: &Params,
    systems: &[System],
    which: &[LeaseWorkload],
    r: &Results,
) {
    use super::{fmt_ms, ratio};
    let both = systems.len() == 2;
    let ms = |us: f64| fmt_ms(us / 1e3);
    let _ = writeln!(s, "\n## Leases (issue 16)\n");
    if which.contains(&LeaseWorkload::Keepalive) {
        let _ = writeln!(
            s,
            "**Keepalive.** {} leases (TTL {KEEPALIVE_TTL_SECS} s), each with its own keepalive stream \
             (etcd-client's `LeaseKeeper`), {STREAMS_PER_CONNECTION} streams per HTTP/2 connection, the \
             connections spread over the members (followers relay to the leader). **Paced**: each \
             stream sends one keepalive per second, {:.0} s warm-up, {:.1} s measured: keepalives answered/s, \
             their p99 round trip, the members' CPU (sum, cores) and RSS (sum, with every stream open; before \
             granting in parentheses). **Saturated**: then every stream sends its next keepalive as soon as \
             the previous one is answered, {:.1} s measured: keepalives answered/s (the sustained rate), the \
             members' CPU and the load generator's. Every answer must name its lease with TTL > 0; a stream \
             that fails (an error answer, a reset) is counted, and reopened after 100 ms, as etcd's clients do.\n",
            p.keepalive_leases,
            PACED_WARMUP.as_secs_f64(),
            p.paced_measure.as_secs_f64(),
            p.saturated_measure.as_secs_f64(),
        );
        let _ = writeln!(
            s,
            "| system | paced keepalives/s | paced p99 | paced CPU | RSS MiB | saturated keepalives/s | saturated CPU | load generator CPU | streams failed and reopened |\n|---|---|---|---|---|---|---|---|---|"
        );
        let mut sat: HashMap<System, f64> = HashMap::new();
        for &sys in systems {
            for run in r.keepalive.get(&sys).into_iter().flatten() {
                match run {
                    Ok(k) => {
                        sat.insert(sys, k.saturated_per_sec);
                        let _ = writeln!(
                            s,
                            "| {} | {:.0} | {} ms | {:.2} | {:.0} ({:.0}) | {:.0} | {:.2} | {:.2} | {}{} |",
                            sys.name(),
                            k.paced_per_sec,
                            ms(k.paced_p99_us),
                            k.paced_cpu.iter().sum::<f64>(),
                            mib(k.rss_after_kib.iter().sum()),
                            mib(k.rss_before_kib.iter().sum()),
                            k.saturated_per_sec,
                            k.saturated_cpu.iter().sum::<f64>(),
                            k.loadgen_saturated_cpu,
                            k.errors,
                            k.first_error
                                .as_deref()
                                .map(|e| format!(" (first: {})", e.replace('|', "/")))
                                .unwrap_or_default(),
                        );
                    }
                    Err(e) => {
                        let _ = writeln!(
                            s,
                            "| {} | FAILED: {} |||||||",
                            sys.name(),
                            e.replace('|', "/")
                        );
                    }
                }
            }
        }
        if both {
            if let (Some(&m), Some(&e)) = (sat.get(&System::Metalraft), sat.get(&System::Etcd)) {
                let met = if m >= 2.0 * e { "met" } else { "not met" };
                let _ = writeln!(
                    s,
                    "\nSustained keepalives/s, metalraft / etcd: **{}** (target ≥ 2×: {met}).",
                    ratio(m, e)
                );
            }
        }
    }
    if which.contains(&LeaseWorkload::Expiry) {
        let _ = writeln!(
            s,
            "\n**Mass expiry.** {} leases granted with TTL {} s, one key each (`{EXPIRY_PREFIX}…`), never \
             kept alive. **Span** = first lease's deadline (its grant's acknowledgement + TTL) → the last key \
             gone (a linearizable count every {} ms); **after the last deadline** = the last lease's deadline → \
             the last key gone. Meanwhile unrelated puts (`{UNRELATED_PREFIX}…`) go to the leader at \
             {UNRELATED_PUT_RATE}/s, paced, open loop: their p50/p99 for puts sent during the span, and the p99 \
             of those sent before it. etcd revokes at most 1,000 leases per second (its `leaseRevokeRate`, 500 \
             per 500 ms tick); metalraft's `Lessor` at most 500 per 500 ms round. CPU: the members' (sum, CPU-seconds over the span).\n",
            p.expiry_leases,
            p.expiry_ttl_secs,
            COUNT_POLL.as_millis(),
        );
        let _ = writeln!(
            s,
            "| system | grant + attach | keys left at the first deadline | span | after the last deadline | puts during | put p50 | put p99 | put p99 before | CPU-s |\n|---|---|---|---|---|---|---|---|---|---|"
        );
        let mut p99: HashMap<System, f64> = HashMap::new();
        for &sys in systems {
            for run in r.expiry.get(&sys).into_iter().flatten() {
                match run {
                    Ok(x) => {
                        p99.insert(sys, x.put_p99_us);
                        let _ = writeln!(
                            s,
                            "| {} | {:.1} s | {} | {:.2} s | {:.2} s | {} | {} ms | {} ms | {} ms | {:.2} |",
                            sys.name(),
                            x.setup_secs,
                            x.left_at_first_deadline,
                            x.span_secs,
                            x.after_last_deadline_secs,
                            x.puts,
                            ms(x.put_p50_us),
                            ms(x.put_p99_us),
                            ms(x.put_p99_before_us),
                            x.cpu_secs.iter().sum::<f64>(),
                        );
                    }
                    Err(e) => {
                        let _ = writeln!(
                            s,
                            "| {} | FAILED: {} ||||||||",
                            sys.name(),
                            e.replace('|', "/")
                        );
                    }
                }
            }
        }
        if both {
            if let (Some(&m), Some(&e)) = (p99.get(&System::Metalraft), p99.get(&System::Etcd)) {
                let met = if m <= e { "met" } else { "not met" };
                let _ = writeln!(
                    s,
                    "\nUnrelated put p99 during the mass expiry, metalraft / etcd: **{}** (target ≤ 1×: {met}).",
                    ratio(m, e)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_parse_and_quick_is_smaller() {
        for w in LeaseWorkload::all() {
            assert_eq!(LeaseWorkload::parse(w.id()), Some(w));
        }
        assert_eq!(LeaseWorkload::parse("lease"), None);
        let (f, q) = (Params::full(), Params::quick());
        assert!(q.keepalive_leases < f.keepalive_leases && q.expiry_leases < f.expiry_leases);
        assert!(q.keepalive_leases.div_ceil(STREAMS_PER_CONNECTION) >= 1);
    }
}
