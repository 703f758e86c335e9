//! The 1,000,000-key measurements of issue 18, for each system on a fresh
//! cluster of its own (after the other workloads, whose clusters
//! are gone by then, so only one cluster runs at a time):
//!
//! - **load** (always, the others need it): `keys` keys of `value_bytes`
//!   bytes, written by [`LOAD_CLIENTS`] clients in txns of
//!   [`PUTS_PER_TXN`] puts each, every txn checked; then every member must
//!   reach the leader's applied index.
//! - **`big-rss`**: each member's peak RSS (VmHWM) and current RSS once the
//!   load is applied everywhere; the largest member counts.
//! - **`big-backup`**: a backup (the Maintenance `Snapshot` RPC, what
//!   `etcdctl snapshot save` calls) taken from the leader while one client
//!   puts: its time and size, and the put latencies before and during it
//!   ([`super::backup`]).
//! - **`big-restart`**: kill -9 of a follower, then the time from starting
//!   it again (same data directory) until it answers a linearizable get of
//!   a loaded key with the right value.
//! - **`big-catchup`**: MemberAdd of a fourth member, then the time from
//!   starting it (empty data directory, `--initial-cluster-state existing`)
//!   until its applied index reaches the leader's applied index at the add,
//!   and until it answers a linearizable get of a loaded key with the right
//!   value. It is removed (MemberRemove) and stopped afterwards.
//!
//! The clusters run with `--snapshot-count` [`Params::snapshot_count`]
//! (unless the suite's `--snapshot-count` says otherwise): the load is
//! `keys / PUTS_PER_TXN` log entries, and one snapshot every tenth of them
//! gives both systems as many snapshots as `keys` single puts at the default
//! 100,000 would for 1,000,000 keys (10). So the restarted member starts
//! from a snapshot plus a log tail, and the new member catches up by
//! snapshot: after the full load (10,000 entries, `--snapshot-count 1000`)
//! etcd keeps the last 5,000 entries and metalraft the last 1,000, neither
//! a log reaching back to the start.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, Txn, TxnOp};
use tokio::task::JoinSet;

use super::backup::BackupRun;
use super::cluster::{self, Cluster, ProcStats, System, Timing};
use super::load;

/// Keys loaded by the full run.
pub const KEYS: u64 = 1_000_000;
/// Keys loaded by `--quick` (CI's bench smoke).
pub const QUICK_KEYS: u64 = 20_000;
/// Bytes per value.
pub const VALUE_BYTES: usize = 256;
/// Puts per loading txn (etcd's `--max-txn-ops` is 128).
pub const PUTS_PER_TXN: u64 = 100;
/// Concurrent loading clients.
pub const LOAD_CLIENTS: usize = 16;
/// Snapshots taken while loading (see the module comment).
pub const SNAPSHOTS_DURING_LOAD: u64 = 10;
/// Give up on the load after this long.
const LOAD_TIMEOUT: Duration = Duration::from_secs(1_800);
/// Give up waiting for a member to serve (restart, catch-up) after this.
const SERVE_TIMEOUT: Duration = Duration::from_secs(600);
/// Timeout of one probe (status or get) of a starting member.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1_000);
/// Pause between probes of a starting member.
const PROBE_POLL: Duration = Duration::from_millis(20);

/// MemberAdd refused as "unhealthy cluster": pause between tries, and how
/// long to keep trying.
const MEMBER_ADD_RETRY: Duration = Duration::from_millis(500);
const MEMBER_ADD_RETRY_FOR: Duration = Duration::from_secs(60);

/// Which of the measurements to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BigWorkload {
    Rss,
    Backup,
    Restart,
    Catchup,
}

impl BigWorkload {
    pub fn all() -> Vec<BigWorkload> {
        vec![
            BigWorkload::Rss,
            BigWorkload::Backup,
            BigWorkload::Restart,
            BigWorkload::Catchup,
        ]
    }

    pub fn parse(s: &str) -> Option<BigWorkload> {
        match s {
            "big-rss" => Some(BigWorkload::Rss),
            "big-backup" => Some(BigWorkload::Backup),
            "big-restart" => Some(BigWorkload::Restart),
            "big-catchup" => Some(BigWorkload::Catchup),
            _ => None,
        }
    }
}

/// Sizes of the run.
#[derive(Clone, Debug)]
pub struct Params {
    pub keys: u64,
}

impl Params {
    pub fn full() -> Params {
        Params { keys: KEYS }
    }
    pub fn quick() -> Params {
        Params { keys: QUICK_KEYS }
    }

    /// Log entries of the load.
    pub fn entries(&self) -> u64 {
        self.keys.div_ceil(PUTS_PER_TXN)
    }

    /// `--snapshot-count` of the big clusters: [`SNAPSHOTS_DURING_LOAD`]
    /// snapshots during the load (1,000 for 1,000,000 keys).
    pub fn snapshot_count(&self) -> u64 {
        (self.entries() / SNAPSHOTS_DURING_LOAD).max(1)
    }
}

/// The key of index `i`.
fn key(i: u64) -> String {
    format!("big/{i:08}")
}

/// The value of key `i`: its index, then filler, [`VALUE_BYTES`] long.
fn value(i: u64) -> Vec<u8> {
    let mut v = format!("{i:08}:").into_bytes();
    v.resize(VALUE_BYTES, b'a' + (i % 26) as u8);
    v
}

/// One system's measurements.
#[derive(Debug, Default)]
pub struct BigRun {
    pub load_secs: f64,
    /// Load average (1, 5, 15 min) before the load and after the last
    /// measurement.
    pub loadavg_before: String,
    pub loadavg_after: String,
    /// Per member after the load: peak and current RSS.
    pub stats: Vec<ProcStats>,
    pub backup: Option<Result<BackupRun, String>>,
    pub restart: Option<Result<Duration, String>>,
    /// (applied index reached, serving a linearizable get).
    pub catchup: Option<Result<(Duration, Duration), String>>,
    /// The leader's applied index after the load.
    pub applied: u64,
}

impl BigRun {
    fn max_hwm_kib(&self) -> u64 {
        self.stats.iter().map(|s| s.hwm_kib).max().unwrap_or(0)
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn client(ep: &str, timeout: Duration) -> Result<Client, String> {
    let opts = ConnectOptions::new()
        .with_timeout(timeout)
        .with_connect_timeout(timeout);
    Client::connect([ep], Some(opts))
        .await
        .map_err(|e| format!("connect {ep}: {e}"))
}

/// Writes every key once, in txns.
async fn load_keys(c: &Cluster, leader: usize, keys: u64) -> Result<(), String> {
    let clients = load::connect(&c.endpoints(), leader, LOAD_CLIENTS).await?;
    let txns = keys.div_ceil(PUTS_PER_TXN);
    let mut set = JoinSet::new();
    for (w, mut kv) in clients.into_iter().enumerate() {
        set.spawn(async move {
            let mut t = w as u64;
            while t < txns {
                let ops: Vec<TxnOp> = (t * PUTS_PER_TXN..((t + 1) * PUTS_PER_TXN).min(keys))
                    .map(|i| TxnOp::put(key(i), value(i), None))
                    .collect();
                let n = ops.len();
                let r = kv
                    .txn(Txn::new().and_then(ops))
                    .await
                    .map_err(|e| format!("loading txn {t}: {e}"))?;
                if !r.succeeded() || r.op_responses().len() != n {
                    return Err(format!("loading txn {t}: unexpected answer {r:?}"));
                }
                t += LOAD_CLIENTS as u64;
            }
            Ok::<(), String>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// The applied index member `ep` reports.
async fn applied_index(ep: &str) -> Result<u64, String> {
    let mut c = client(ep, PROBE_TIMEOUT).await?;
    let s = c.status().await.map_err(|e| format!("status {ep}: {e}"))?;
    Ok(s.raft_applied_index())
}

/// A linearizable get of key `i` on `ep` that returns the right value.
async fn serves(ep: &str, i: u64) -> Result<(), String> {
    let mut c = client(ep, PROBE_TIMEOUT).await?;
    let r = c
        .get(key(i), None)
        .await
        .map_err(|e| format!("get {ep}: {e}"))?;
    match r.kvs().first() {
        Some(kv) if kv.value() == value(i).as_slice() => Ok(()),
        other => Err(format!("get {} on {ep}: wrong answer {other:?}", key(i))),
    }
}

/// Polls `probe` until it succeeds or [`SERVE_TIMEOUT`] passes since
/// `start`; returns the time since `start`.
async fn until<F, Fut>(start: Instant, what: &str, mut probe: F) -> Result<Duration, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, String>>,
{
    let mut last = String::from("no answer yet");
    loop {
        match probe().await {
            Ok(true) => return Ok(start.elapsed()),
            Ok(false) => {}
            Err(e) => last = e,
        }
        if start.elapsed() > SERVE_TIMEOUT {
            return Err(format!("{what}: not after {SERVE_TIMEOUT:?} ({last})"));
        }
        tokio::time::sleep(PROBE_POLL).await;
    }
}

/// Every member's applied index reaches the leader's.
async fn wait_applied_everywhere(c: &Cluster, leader: usize) -> Result<u64, String> {
    let target = applied_index(&c.endpoint(leader)).await?;
    let start = Instant::now();
    for i in 0..c.founders() {
        let ep = c.endpoint(i);
        until(start, &format!("m{} applying the load", i + 1), || async {
            Ok(applied_index(&ep).await? >= target)
        })
        .await?;
    }
    Ok(target)
}

/// Runs the load and the selected measurements on a fresh cluster of
/// `system`.
pub async fn run(
    system: System,
    bin: &std::path::Path,
    data_root: &std::path::Path,
    base_port: u16,
    timing: &Timing,
    p: &Params,
    which: &[BigWorkload],
) -> Result<BigRun, String> {
    let mut out = BigRun {
        loadavg_before: loadavg(),
        ..BigRun::default()
    };
    let mut c = Cluster::start(system, bin, &data_root.join("big"), base_port, timing)?;
    let leader = c.wait_ready().await?;
    let t = Instant::now();
    tokio::time::timeout(LOAD_TIMEOUT, load_keys(&c, leader, p.keys))
        .await
        .map_err(|_| format!("loading {} keys took over {LOAD_TIMEOUT:?}", p.keys))??;
    out.load_secs = t.elapsed().as_secs_f64();
    out.applied = wait_applied_everywhere(&c, leader).await?;
    out.stats = (0..c.founders())
        .map(|i| c.pid(i).and_then(cluster::proc_stats).unwrap_or_default())
        .collect();
    eprintln!(
        "big       {:<9} {} keys loaded in {:.1} s (applied index {}); RSS MiB now / peak: {}",
        system.name(),
        p.keys,
        out.load_secs,
        out.applied,
        out.stats
            .iter()
            .map(|s| format!(
                "{:.0}/{:.0}",
                s.rss_kib as f64 / 1024.0,
                s.hwm_kib as f64 / 1024.0
            ))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let probe_key = p.keys / 2;
    if which.contains(&BigWorkload::Backup) {
        let r = super::backup::measure(&c.endpoint(leader), c.pid(leader)).await;
        match &r {
            Ok(b) => eprintln!(
                "big       {:<9} backup: {:.2} s (first byte {:.2} s), {:.1} MB; put ms p50/p99.9/max before {:.2}/{:.2}/{:.2} ({} puts), during {:.2}/{:.2}/{:.2} ({} puts, {} failed; the slowest began {:.2} s in); leader peak RSS {:.0} -> {:.0} MiB",
                system.name(),
                b.secs,
                b.first_byte_secs,
                b.bytes as f64 / 1e6,
                b.before.p50_ms,
                b.before.p999_ms,
                b.before.max_ms,
                b.before.n,
                b.during.p50_ms,
                b.during.p999_ms,
                b.during.max_ms,
                b.during.n,
                b.failed_during,
                b.worst_at_secs,
                b.leader_hwm_kib.0 as f64 / 1024.0,
                b.leader_hwm_kib.1 as f64 / 1024.0,
            ),
            Err(e) => eprintln!("big       {:<9} backup: FAILED: {e}", system.name()),
        }
        out.backup = Some(r);
    }
    if which.contains(&BigWorkload::Restart) {
        let f = (leader + 1) % c.founders();
        c.kill(f);
        let start = Instant::now();
        let r = match c.restart(f) {
            Ok(()) => {
                let ep = c.endpoint(f);
                until(start, "the restarted member serving", || async {
                    serves(&ep, probe_key).await.map(|()| true)
                })
                .await
            }
            Err(e) => Err(e),
        };
        match &r {
            Ok(d) => eprintln!(
                "big       {:<9} restart of m{}: serving after {:.2} s",
                system.name(),
                f + 1,
                d.as_secs_f64()
            ),
            Err(e) => eprintln!("big       {:<9} restart: FAILED: {e}", system.name()),
        }
        out.restart = Some(r);
        c.wait_ready().await?;
    }
    if which.contains(&BigWorkload::Catchup) {
        let r = catch_up(&mut c, timing, probe_key).await;
        match &r {
            Ok((a, s)) => eprintln!(
                "big       {:<9} new member: leader's applied index after {:.2} s, serving after {:.2} s",
                system.name(),
                a.as_secs_f64(),
                s.as_secs_f64()
            ),
            Err(e) => eprintln!("big       {:<9} catch-up: FAILED: {e}", system.name()),
        }
        out.catchup = Some(r);
    }
    c.check_alive()?;
    out.loadavg_after = loadavg();
    Ok(out)
}

/// MemberAdd, start the new member, time its catch-up, MemberRemove.
async fn catch_up(
    c: &mut Cluster,
    timing: &Timing,
    probe_key: u64,
) -> Result<(Duration, Duration), String> {
    let leader = c.wait_ready().await?;
    let lep = c.endpoint(leader);
    let (i, peer) = c.add_member(timing);
    let mut admin = client(&lep, load::REQUEST_TIMEOUT).await?;
    // etcd 3.4 (--strict-reconfig-check) refuses a MemberAdd as "unhealthy
    // cluster" until every member has been connected for 5 s, as right
    // after the restart measurement: try again, as an operator would.
    let added_at = Instant::now();
    let added = loop {
        match admin.member_add([peer.as_str()], None).await {
            Ok(a) => break a,
            Err(e)
                if e.to_string().contains("unhealthy cluster")
                    && added_at.elapsed() < MEMBER_ADD_RETRY_FOR =>
            {
                tokio::time::sleep(MEMBER_ADD_RETRY).await
            }
            Err(e) => return Err(format!("member add: {e}")),
        }
    };
    let id = added
        .member()
        .map(|m| m.id())
        .ok_or("member add: no member in the answer")?;
    let target = applied_index(&lep).await?;
    let start = Instant::now();
    let r = async {
        c.restart(i)?;
        let ep = c.endpoint(i);
        let applied = until(start, "the new member applying", || async {
            Ok(applied_index(&ep).await? >= target)
        })
        .await?;
        let serving = until(start, "the new member serving", || async {
            serves(&ep, probe_key).await.map(|()| true)
        })
        .await?;
        Ok::<_, String>((applied, serving))
    }
    .await;
    // Back to the founding members whatever happened.
    let removed = admin
        .member_remove(id)
        .await
        .map_err(|e| format!("member remove: {e}"));
    c.drop_added();
    let r = r?;
    removed?;
    Ok(r)
}

/// The report section: one row per measurement, with the ratio and the
/// issue-18 target (≤ 0.5× etcd).
pub fn report(
    s: &mut String,
    p: &Params,
    snapshot_count: u64,
    systems: &[System],
    which: &[BigWorkload],
    runs: &[(System, Result<BigRun, String>)],
) {
    use super::ratio;
    let _ = writeln!(
        s,
        "\n## {} keys (issue 18)\n\n\
         Each system on a fresh cluster of its own (as many members as the other workloads) (etcd first, then metalraft; one cluster \
         at a time), `--snapshot-count {snapshot_count}`: {} keys of {VALUE_BYTES} bytes loaded by \
         {LOAD_CLIENTS} clients in txns of {PUTS_PER_TXN} puts ({} log entries, so about as many \
         snapshots as {} single puts at the default 100,000). Peak RSS: VmHWM of each member once \
         every member applied the load. Restart: kill -9 of a follower, then from its start until it \
         answers a linearizable get of a loaded key correctly. Catch-up: MemberAdd, then from the new \
         member's start (empty data directory) until its applied index reaches the leader's at the \
         add, and until it answers that get. Target: each ≤ 0.5× etcd's.\n",
        p.keys,
        p.keys,
        p.entries(),
        p.keys,
    );
    let _ = writeln!(
        s,
        "| system | load s | load average before → after | RSS MiB per member (peak) | restart s | catch-up: applied s | catch-up: serving s |\n|---|---:|---|---|---:|---:|---:|"
    );
    let secs = |d: &Option<Result<Duration, String>>| match d {
        Some(Ok(d)) => format!("{:.2}", d.as_secs_f64()),
        Some(Err(e)) => format!("FAILED: {e}"),
        None => "–".into(),
    };
    for (sys, r) in runs {
        match r {
            Ok(b) => {
                let (a, sv) = match &b.catchup {
                    Some(Ok((a, sv))) => (
                        format!("{:.2}", a.as_secs_f64()),
                        format!("{:.2}", sv.as_secs_f64()),
                    ),
                    Some(Err(e)) => (format!("FAILED: {e}"), "–".into()),
                    None => ("–".into(), "–".into()),
                };
                let _ = writeln!(
                    s,
                    "| {} | {:.1} | {} → {} | {} | {} | {a} | {sv} |",
                    sys.name(),
                    b.load_secs,
                    b.loadavg_before,
                    b.loadavg_after,
                    b.stats
                        .iter()
                        .map(|x| format!("{:.0}", x.hwm_kib as f64 / 1024.0))
                        .collect::<Vec<_>>()
                        .join(" / "),
                    secs(&b.restart),
                );
            }
            Err(e) => {
                let _ = writeln!(s, "| {} | FAILED: {e} | | | | | |", sys.name());
            }
        }
    }
    if which.contains(&BigWorkload::Backup) {
        backup_report(s, runs);
    }
    if systems.len() != 2 {
        return;
    }
    let get = |sys: System| {
        runs.iter()
            .find(|(x, _)| *x == sys)
            .and_then(|(_, r)| r.as_ref().ok())
    };
    let (Some(e), Some(m)) = (get(System::Etcd), get(System::Metalraft)) else {
        return;
    };
    let ok_secs = |d: &Option<Result<Duration, String>>| match d {
        Some(Ok(d)) => d.as_secs_f64(),
        _ => f64::NAN,
    };
    let catch = |b: &BigRun, serving: bool| match &b.catchup {
        Some(Ok((a, sv))) => {
            if serving {
                sv.as_secs_f64()
            } else {
                a.as_secs_f64()
            }
        }
        _ => f64::NAN,
    };
    let mut rows: Vec<(&str, f64, f64)> = Vec::new();
    if which.contains(&BigWorkload::Rss) {
        rows.push((
            "peak RSS of the largest member",
            m.max_hwm_kib() as f64,
            e.max_hwm_kib() as f64,
        ));
    }
    if which.contains(&BigWorkload::Restart) {
        rows.push((
            "restart until serving",
            ok_secs(&m.restart),
            ok_secs(&e.restart),
        ));
    }
    if which.contains(&BigWorkload::Catchup) {
        rows.push((
            "new member: leader's applied index",
            catch(m, false),
            catch(e, false),
        ));
        rows.push(("new member: serving", catch(m, true), catch(e, true)));
    }
    let _ = writeln!(
        s,
        "\n| measure | metalraft/etcd | target | met? |\n|---|---:|---|---|"
    );
    for (what, mv, ev) in rows {
        let met = if mv.is_finite() && ev.is_finite() && ev > 0.0 {
            if mv / ev <= TARGET_RATIO {
                "yes"
            } else {
                "**no**"
            }
        } else {
            "–"
        };
        let _ = writeln!(
            s,
            "| {what} | {} | ≤ {TARGET_RATIO}× | {met} |",
            ratio(mv, ev)
        );
    }
}

/// The `big-backup` table: one row per system.
fn backup_report(s: &mut String, runs: &[(System, Result<BigRun, String>)]) {
    let _ = writeln!(
        s,
        "\nBackup (`big-backup`): the Maintenance `Snapshot` RPC (`etcdctl snapshot save`) from the \
         leader while one client puts {}-byte values to it without pause; a put in flight at any \
         moment of the backup counts as during it. A backup that makes writes wait shows in the \
         \"during\" columns.\n\n\
         | system | backup s (first byte) | backup MB | puts before / during (failed) | put ms before: p50 / p99.9 / max | put ms during: p50 / p99.9 / max | slowest put began, s into the backup | leader peak RSS MiB before → after |\n\
         |---|---:|---:|---:|---|---|---:|---|",
        VALUE_BYTES
    );
    for (sys, r) in runs {
        let Ok(BigRun {
            backup: Some(b), ..
        }) = r
        else {
            continue;
        };
        match b {
            Ok(b) => {
                let _ = writeln!(
                    s,
                    "| {} | {:.2} ({:.2}) | {:.1} | {} / {} ({}) | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {:.2} | {:.0} → {:.0} |",
                    sys.name(),
                    b.secs,
                    b.first_byte_secs,
                    b.bytes as f64 / 1e6,
                    b.before.n,
                    b.during.n,
                    b.failed_during,
                    b.before.p50_ms,
                    b.before.p999_ms,
                    b.before.max_ms,
                    b.during.p50_ms,
                    b.during.p999_ms,
                    b.during.max_ms,
                    b.worst_at_secs,
                    b.leader_hwm_kib.0 as f64 / 1024.0,
                    b.leader_hwm_kib.1 as f64 / 1024.0,
                );
            }
            Err(e) => {
                let _ = writeln!(s, "| {} | FAILED: {e} | | | | | | |", sys.name());
            }
        }
    }
}

/// Issue 18's target for every big measurement: at most half of etcd's.
pub const TARGET_RATIO: f64 = 0.5;

/// Failed measurements (for the exit status).
pub fn failed(runs: &[(System, Result<BigRun, String>)]) -> usize {
    runs.iter()
        .map(|(_, r)| match r {
            Err(_) => 1,
            Ok(b) => {
                usize::from(matches!(b.restart, Some(Err(_))))
                    + usize::from(matches!(b.backup, Some(Err(_))))
                    + usize::from(matches!(b.catchup, Some(Err(_))))
            }
        })
        .sum()
}
