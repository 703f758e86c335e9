//! The load generator: concurrent etcd v3 clients (the `etcd-client` crate)
//! running one workload for a warm-up plus a fixed measured window, with
//! per-operation latency and a check of every answer.
//!
//! Every value the suite writes is self-describing (key index, writer,
//! sequence number, checksum), so a get that returns a wrong, torn or
//! foreign value is caught. Each client writes only its own share of the
//! keyspace (`key % clients == client`), so it knows what it wrote last and
//! reads it back after the run.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse,
};

/// Distinct keys: `k0000000` .. `k0009999` (8 bytes each).
pub const KEYSPACE: u32 = 10_000;
/// Bytes per value.
pub const VALUE_BYTES: usize = 256;
/// Concurrent clients of the read and txn workloads.
pub const READ_CLIENTS: usize = 64;
/// Clients of the second linearizable-get workload (issue 18's target is
/// set at 64 and at 256 clients).
pub const MANY_READ_CLIENTS: usize = 256;
/// Concurrent clients sharing one gRPC (HTTP/2) connection.
pub const CLIENTS_PER_CONNECTION: usize = 16;
/// The value in force (`--clients-per-connection`), set once before a suite.
pub static CLIENTS_PER_CONN: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(CLIENTS_PER_CONNECTION);
/// Timeout of one request in the throughput workloads; a slower request
/// counts as an error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Latency samples kept per client in one run (bounds memory; at the cap
/// the client stops issuing requests and the run reports it).
pub const MAX_OPS_PER_CLIENT: usize = 2_000_000;
/// Keys each client reads back (linearizable get, own keys only) after a
/// write workload.
pub const VERIFY_KEYS_PER_CLIENT: usize = 8;
/// Extra time a run may take beyond warm-up + measure + one request timeout
/// before it is abandoned as hung.
pub const RUN_GRACE: Duration = Duration::from_secs(10);
/// A run fails if more than this fraction of its operations fail.
pub const MAX_ERROR_FRACTION: f64 = 0.01;
/// Writer id of the preload.
const PRELOAD_WRITER: u32 = u32::MAX;

/// The workloads, in the order they run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Workload {
    /// Put with this many concurrent clients.
    Put(usize),
    /// Linearizable (default) single-key get with this many concurrent
    /// clients.
    GetLinearizable(usize),
    /// Serializable single-key get.
    GetSerializable,
    /// Txn: compare(version(k) > 0) then put, put, get, get.
    Txn,
}

impl Workload {
    pub fn all() -> Vec<Workload> {
        vec![
            Workload::Put(1),
            Workload::Put(16),
            Workload::Put(64),
            Workload::Put(256),
            Workload::GetLinearizable(READ_CLIENTS),
            Workload::GetLinearizable(MANY_READ_CLIENTS),
            Workload::GetSerializable,
            Workload::Txn,
        ]
    }

    pub fn clients(self) -> usize {
        match self {
            Workload::Put(n) | Workload::GetLinearizable(n) => n,
            _ => READ_CLIENTS,
        }
    }

    /// Short name for flags and file names.
    pub fn id(self) -> String {
        match self {
            Workload::Put(n) => format!("put-{n}"),
            // The first read workload kept its name (earlier reports, CI).
            Workload::GetLinearizable(READ_CLIENTS) => "get-linearizable".into(),
            Workload::GetLinearizable(n) => format!("get-linearizable-{n}"),
            Workload::GetSerializable => "get-serializable".into(),
            Workload::Txn => "txn-4op".into(),
        }
    }

    pub fn label(self) -> String {
        match self {
            Workload::Put(1) => "put, 1 client".into(),
            Workload::Put(n) => format!("put, {n} clients"),
            Workload::GetLinearizable(n) => format!("linearizable get, {n} clients"),
            Workload::GetSerializable => format!("serializable get, {READ_CLIENTS} clients"),
            Workload::Txn => format!("txn (cmp; 2 put + 2 get), {READ_CLIENTS} clients"),
        }
    }

    pub fn parse(s: &str) -> Option<Workload> {
        Workload::all().into_iter().find(|w| w.id() == s)
    }
}

pub fn key(idx: u32) -> Vec<u8> {
    assert!(idx < KEYSPACE);
    format!("k{idx:07}").into_bytes()
}

pub fn mix(mut x: u64) -> u64 {
    // splitmix64 finalizer
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn checksum(idx: u32, writer: u32, seq: u64) -> u64 {
    mix(u64::from(idx) ^ (u64::from(writer) << 32) ^ mix(seq))
}

/// A value: key index, writer, sequence number, checksum, then filler
/// derived from the checksum.
pub fn value(idx: u32, writer: u32, seq: u64) -> Vec<u8> {
    let sum = checksum(idx, writer, seq);
    let mut v = Vec::with_capacity(VALUE_BYTES);
    v.extend_from_slice(&idx.to_le_bytes());
    v.extend_from_slice(&writer.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&sum.to_le_bytes());
    let fill = sum.to_le_bytes();
    while v.len() < VALUE_BYTES {
        v.push(fill[v.len() % 8]);
    }
    v
}

/// Checks that `v` is a value this suite wrote for key `idx`; returns its
/// (writer, seq).
pub fn check_value(idx: u32, v: &[u8]) -> Result<(u32, u64), String> {
    if v.len() != VALUE_BYTES {
        return Err(format!("key {idx}: value of {} bytes", v.len()));
    }
    let got_idx = u32::from_le_bytes(v[0..4].try_into().unwrap());
    let writer = u32::from_le_bytes(v[4..8].try_into().unwrap());
    let seq = u64::from_le_bytes(v[8..16].try_into().unwrap());
    if got_idx != idx {
        return Err(format!("key {idx}: value belongs to key {got_idx}"));
    }
    // Compared in place, without building the expected value: the watch
    // benchmarks check a million events a second with this.
    let sum = checksum(idx, writer, seq);
    let fill = sum.to_le_bytes();
    let intact = v[16..24] == fill
        && v[24..]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == fill[(i + 24) % 8]);
    if !intact {
        return Err(format!(
            "key {idx}: value corrupt (writer {writer}, seq {seq})"
        ));
    }
    Ok((writer, seq))
}

/// A small deterministic PRNG per client (xorshift64*).
struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(mix(seed) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u32) -> u32 {
        (self.next() % u64::from(n)) as u32
    }
}

/// A key index owned by client `c` of `clients`.
fn own_key(rng: &mut Rng, c: usize, clients: usize) -> u32 {
    let per = (KEYSPACE as usize - c).div_ceil(clients) as u32;
    let k = c as u32 + rng.below(per) * clients as u32;
    debug_assert!(k < KEYSPACE);
    k
}

/// The result of one run of one workload against one cluster.
#[derive(Default)]
pub struct RunResult {
    pub ops: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Wrong answers (a failed correctness check); any makes the run fail.
    pub wrong: Option<String>,
    /// Latency of every measured operation, microseconds.
    pub lat_us: Vec<u32>,
    pub secs: f64,
    pub hit_op_cap: bool,
}

impl RunResult {
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.secs
    }

    /// Why the run does not count, if it does not.
    pub fn failure(&self) -> Option<String> {
        if let Some(w) = &self.wrong {
            return Some(format!("WRONG ANSWER: {w}"));
        }
        let total = self.ops + self.errors;
        if total == 0 {
            return Some("no operation completed".into());
        }
        if self.errors as f64 > MAX_ERROR_FRACTION * total as f64 {
            return Some(format!(
                "{} of {} operations failed; first error: {}",
                self.errors,
                total,
                self.first_error.as_deref().unwrap_or("?")
            ));
        }
        None
    }
}

/// One client of `ep` whose requests time out after [`REQUEST_TIMEOUT`].
pub async fn connect_one(ep: &str) -> Result<Client, String> {
    let opts = ConnectOptions::new()
        .with_timeout(REQUEST_TIMEOUT)
        .with_connect_timeout(REQUEST_TIMEOUT);
    Client::connect([ep], Some(opts))
        .await
        .map_err(|e| format!("connect {ep}: {e}"))
}

/// One client of `ep` for streams (Watch, keepalives): only the connection
/// has a timeout, a stream has no per-request one.
pub async fn connect_stream(ep: &str) -> Result<Client, String> {
    let opts = ConnectOptions::new().with_connect_timeout(REQUEST_TIMEOUT);
    Client::connect([ep], Some(opts))
        .await
        .map_err(|e| format!("connect {ep}: {e}"))
}

/// Connects `n` clients to the cluster's endpoints, round-robin starting at
/// `first` (the leader), `CLIENTS_PER_CONN` clients per connection.
pub async fn connect(
    endpoints: &[String],
    first: usize,
    clients: usize,
) -> Result<Vec<KvClient>, String> {
    let per = CLIENTS_PER_CONN
        .load(std::sync::atomic::Ordering::Relaxed)
        .max(1);
    let conns = clients.div_ceil(per).max(1);
    let mut cs = Vec::new();
    for i in 0..conns {
        let ep = &endpoints[(first + i) % endpoints.len()];
        let c = connect_one(ep).await?;
        cs.push(c.kv_client());
    }
    Ok((0..clients).map(|i| cs[i % conns].clone()).collect())
}

/// Writes every key once (64 clients), so reads always find a value.
pub async fn preload(endpoints: &[String], leader: usize) -> Result<(), String> {
    let clients = connect(endpoints, leader, READ_CLIENTS).await?;
    let mut tasks = Vec::new();
    for (c, mut kv) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut idx = c as u32;
            while idx < KEYSPACE {
                kv.put(key(idx), value(idx, PRELOAD_WRITER, 0), None)
                    .await
                    .map_err(|e| format!("preload put {idx}: {e}"))?;
                idx += READ_CLIENTS as u32;
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// The current revision, by a linearizable get.
pub async fn revision(endpoints: &[String], leader: usize) -> Result<i64, String> {
    let mut kv = connect(endpoints, leader, 1).await?.remove(0);
    let r = kv.get(key(0), None).await.map_err(|e| e.to_string())?;
    Ok(r.header().map_or(0, |h| h.revision()))
}

/// What one client task returns.
struct TaskOut {
    ops: u64,
    errors: u64,
    first_error: Option<String>,
    wrong: Option<String>,
    lat_us: Vec<u32>,
    hit_cap: bool,
    /// key → seq of this client's last successful put, and keys whose last
    /// write has an unknown outcome (failed request).
    written: HashMap<u32, Option<u64>>,
}

/// Runs `w` for `warmup` + `measure`; only operations started inside the
/// measured window are counted. `rev0` is the revision before the run (no
/// writes happen during the get workloads, so linearizable reads must see
/// exactly it).
pub async fn run(
    endpoints: &[String],
    leader: usize,
    w: Workload,
    warmup: Duration,
    measure: Duration,
    rev0: i64,
    seed: u64,
) -> Result<RunResult, String> {
    let n = w.clients();
    let clients = connect(endpoints, leader, n).await?;
    let start = Instant::now();
    let t_measure = start + warmup;
    let t_end = t_measure + measure;
    let mut tasks = Vec::new();
    for (c, kv) in clients.into_iter().enumerate() {
        let seed = seed ^ ((c as u64) << 20);
        tasks.push(tokio::spawn(client_task(
            kv, w, c, n, t_measure, t_end, rev0, seed,
        )));
    }
    let mut res = RunResult {
        secs: measure.as_secs_f64(),
        ..Default::default()
    };
    let mut outs = Vec::new();
    let hang = t_end + REQUEST_TIMEOUT + RUN_GRACE;
    for t in tasks {
        let o = tokio::time::timeout_at(hang.into(), t).await.map_err(|_| {
            format!("run hung: a client got no answer (not even an error) {RUN_GRACE:?} after its request timeout")
        })?;
        outs.push(o.map_err(|e| e.to_string())?);
    }
    for o in outs {
        res.ops += o.ops;
        res.errors += o.errors;
        if res.first_error.is_none() {
            res.first_error = o.first_error;
        }
        if res.wrong.is_none() {
            res.wrong = o.wrong;
        }
        res.hit_op_cap |= o.hit_cap;
        res.lat_us.extend(o.lat_us);
    }
    res.lat_us.sort_unstable();
    Ok(res)
}

#[allow(clippy::too_many_arguments)]
async fn client_task(
    mut kv: KvClient,
    w: Workload,
    c: usize,
    n: usize,
    t_measure: Instant,
    t_end: Instant,
    rev0: i64,
    seed: u64,
) -> TaskOut {
    let mut rng = Rng::new(seed);
    let mut out = TaskOut {
        ops: 0,
        errors: 0,
        first_error: None,
        wrong: None,
        lat_us: Vec::new(),
        hit_cap: false,
        written: HashMap::new(),
    };
    let mut seq: u64 = 0;
    let mut last_rev: i64 = 0;
    loop {
        let t0 = Instant::now();
        if t0 >= t_end {
            break;
        }
        if out.lat_us.len() >= MAX_OPS_PER_CLIENT {
            out.hit_cap = true;
            break;
        }
        seq += 1;
        let r: Result<(), String> = match w {
            Workload::Put(_) => {
                let idx = own_key(&mut rng, c, n);
                out.written.insert(idx, None);
                match kv.put(key(idx), value(idx, c as u32, seq), None).await {
                    Ok(r) => {
                        out.written.insert(idx, Some(seq));
                        check_rev_increases(r.header().map(|h| h.revision()), &mut last_rev)
                            .inspect_err(|e| {
                                out.wrong.get_or_insert(e.clone());
                            })
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            Workload::GetLinearizable(_) | Workload::GetSerializable => {
                let idx = rng.below(KEYSPACE);
                let opts =
                    (w == Workload::GetSerializable).then(|| GetOptions::new().with_serializable());
                match kv.get(key(idx), opts).await {
                    Ok(r) => {
                        let rev = r.header().map_or(0, |h| h.revision());
                        let rev_ok = if matches!(w, Workload::GetLinearizable(_)) {
                            rev == rev0
                        } else {
                            rev > 0 && rev <= rev0
                        };
                        if !rev_ok {
                            out.wrong.get_or_insert(format!(
                                "{}: header revision {rev}, the cluster is at {rev0} and nothing writes",
                                w.id()
                            ));
                        }
                        match r.kvs() {
                            [one] => check_value(idx, one.value()).map(|_| ()),
                            other => Err(format!("get {idx}: {} kvs", other.len())),
                        }
                        .inspect_err(|e| {
                            out.wrong.get_or_insert(e.clone());
                        })
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            Workload::Txn => {
                // Two distinct keys: a txn may not put one key twice.
                let a = own_key(&mut rng, c, n);
                let mut b = own_key(&mut rng, c, n);
                while b == a {
                    b = own_key(&mut rng, c, n);
                }
                let (g1, g2) = (rng.below(KEYSPACE), rng.below(KEYSPACE));
                let txn = Txn::new()
                    .when([Compare::version(key(a), CompareOp::Greater, 0)])
                    .and_then([
                        TxnOp::put(key(a), value(a, c as u32, seq), None),
                        TxnOp::put(key(b), value(b, c as u32, seq), None),
                        TxnOp::get(key(g1), None),
                        TxnOp::get(key(g2), None),
                    ]);
                out.written.insert(a, None);
                out.written.insert(b, None);
                match kv.txn(txn).await {
                    Ok(r) => {
                        let checked = check_txn(&r, g1, g2);
                        if checked.is_ok() {
                            out.written.insert(a, Some(seq));
                            out.written.insert(b, Some(seq));
                        }
                        checked
                            .and_then(|()| {
                                check_rev_increases(r.header().map(|h| h.revision()), &mut last_rev)
                            })
                            .inspect_err(|e| {
                                out.wrong.get_or_insert(e.clone());
                            })
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        let t1 = Instant::now();
        if t0 >= t_measure {
            match r {
                Ok(()) => {
                    out.ops += 1;
                    let us = (t1 - t0).as_micros().min(u128::from(u32::MAX)) as u32;
                    out.lat_us.push(us);
                }
                Err(e) => {
                    out.errors += 1;
                    out.first_error.get_or_insert(e);
                }
            }
        }
        if out.wrong.is_some() {
            break;
        }
    }
    // Read back this client's last writes: its keys are its own, so a
    // linearizable get must return exactly what it wrote last.
    if matches!(w, Workload::Put(_) | Workload::Txn) && out.wrong.is_none() {
        let keys: Vec<(u32, u64)> = out
            .written
            .iter()
            .filter_map(|(&k, &s)| s.map(|s| (k, s)))
            .take(VERIFY_KEYS_PER_CLIENT)
            .collect();
        for (idx, seq) in keys {
            match kv.get(key(idx), None).await {
                Ok(r) => {
                    let got = match r.kvs().first() {
                        Some(kv) => check_value(idx, kv.value()),
                        None => Err(format!("key {idx} missing after run")),
                    };
                    if got != Ok((c as u32, seq)) {
                        out.wrong = Some(format!(
                            "read-back of key {idx}: expected writer {c} seq {seq}, got {got:?}"
                        ));
                        break;
                    }
                }
                Err(e) => {
                    out.errors += 1;
                    out.first_error.get_or_insert(format!("read-back get: {e}"));
                }
            }
        }
    }
    out
}

fn check_rev_increases(rev: Option<i64>, last: &mut i64) -> Result<(), String> {
    let rev = rev.unwrap_or(0);
    if rev <= *last {
        return Err(format!(
            "write acknowledged at revision {rev}, after an earlier write of the same client at {last}"
        ));
    }
    *last = rev;
    Ok(())
}

fn check_txn(r: &etcd_client::TxnResponse, g1: u32, g2: u32) -> Result<(), String> {
    if !r.succeeded() {
        return Err("txn: compare version > 0 failed on a preloaded key".into());
    }
    let ops = r.op_responses();
    match ops.as_slice() {
        [TxnOpResponse::Put(_), TxnOpResponse::Put(_), TxnOpResponse::Get(x), TxnOpResponse::Get(y)] =>
        {
            for (idx, g) in [(g1, x), (g2, y)] {
                match g.kvs() {
                    [one] => {
                        check_value(idx, one.value())?;
                    }
                    other => return Err(format!("txn get {idx}: {} kvs", other.len())),
                }
            }
            Ok(())
        }
        _ => Err(format!("txn: {} responses of the wrong kinds", ops.len())),
    }
}

/// The q-quantile of sorted samples (nearest rank).
pub fn quantile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_check() {
        let v = value(42, 7, 99);
        assert_eq!(v.len(), VALUE_BYTES);
        assert_eq!(check_value(42, &v), Ok((7, 99)));
        assert!(check_value(43, &v).is_err());
        let mut bad = v.clone();
        bad[200] ^= 1;
        assert!(check_value(42, &bad).is_err());
        assert!(check_value(42, &v[..255]).is_err());
        assert_eq!(key(9_999), b"k0009999".to_vec());
    }

    #[test]
    fn own_keys_are_disjoint_and_in_range() {
        for clients in [1, 16, 64, 256] {
            for c in 0..clients {
                let mut rng = Rng::new(c as u64);
                for _ in 0..200 {
                    let k = own_key(&mut rng, c, clients);
                    assert!(k < KEYSPACE);
                    assert_eq!(k as usize % clients, c);
                }
            }
        }
    }

    #[test]
    fn quantiles() {
        let v: Vec<u32> = (1..=1000).collect();
        assert_eq!(quantile(&v, 0.5), 500.0);
        assert_eq!(quantile(&v, 0.99), 990.0);
        assert_eq!(quantile(&v, 0.999), 999.0);
        assert_eq!(quantile(&v, 1.0), 1000.0);
    }

    #[test]
    fn workload_ids_round_trip() {
        for w in Workload::all() {
            assert_eq!(Workload::parse(&w.id()), Some(w));
        }
    }
}
