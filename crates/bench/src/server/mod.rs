//! `metalraft-bench server`: a 3-member etcd cluster and a 3-member
//! metalraft cluster on loopback, driven by one load generator over the etcd
//! v3 gRPC API, side by side; plus failover and the disk ceiling. See
//! `README.md` for what each number means.

mod backup;
mod big;
mod cluster;
mod disk;
mod lease;
mod load;
mod stages;
mod svg;
mod watch;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use big::BigWorkload;
use cluster::{Cluster, ProcStats, System, Timing};
use etcd_client::{Client, ConnectOptions};
use lease::LeaseWorkload;
use load::{quantile, RunResult, Workload};
use watch::WatchWorkload;

/// Both clusters' Raft timing: etcd's defaults.
pub const HEARTBEAT_MS: u64 = 100;
pub const ELECTION_MS: u64 = 1000;
/// First client port of the etcd cluster; metalraft uses `+ PORT_GAP`.
pub const BASE_PORT: u16 = 29_400;
const PORT_GAP: u16 = 100;
/// Full suite: warm-up and measured seconds per run, runs per cell.
const WARMUP: Duration = Duration::from_secs(2);
const MEASURE: Duration = Duration::from_secs(8);
const REPS: usize = 3;
const FAILOVER_RUNS: usize = 5;
const DISK_PROBE: Duration = Duration::from_secs(5);
/// `--quick`: the same workloads, shorter and once each.
const QUICK_WARMUP: Duration = Duration::from_millis(500);
const QUICK_MEASURE: Duration = Duration::from_secs(2);
const QUICK_REPS: usize = 1;
const QUICK_FAILOVER_RUNS: usize = 3;
const QUICK_DISK_PROBE: Duration = Duration::from_secs(2);
/// Failover: a new put attempt every interval until one succeeds.
const FAILOVER_RETRY_INTERVAL: Duration = Duration::from_millis(10);
/// Failover: timeout of each put attempt.
const FAILOVER_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Failover: give up (and report the run as failed) after this long.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// Failover: pause after the killed member is back and a leader is agreed,
/// so that it catches up before the next kill.
const FAILOVER_SETTLE: Duration = Duration::from_secs(2);
/// Worker threads of the load generator's Tokio runtime.
const LOADGEN_THREADS: usize = 2;

pub const USAGE: &str = "\
usage: metalraft-bench server [options]

Starts a 3-member (--members) etcd cluster and a metalraft cluster of as many on loopback
(data directories on the same file system, heartbeat 100 ms, election
timeout 1000 ms for both) and drives both with one load generator over the
etcd v3 gRPC API, alternating runs (A B A B). Then kills the leader of each
repeatedly (failover) and measures the fdatasync and loopback ceilings.

options:
  --quick              smoke run (< 3 min): 0.5 s warm-up + 2 s per run, one run
                       each, 3 failovers each; results go to a temp dir
  --metalraft-bin P    the metalraft binary (default: `cargo build --release
                       -p metalraft`, then the `metalraft` next to this binary)
  --etcd-bin P         the etcd binary (default: `etcd` on PATH; installed with
                       apt-get install etcd-server if missing)
  --data-root DIR      data directories (default: $TMPDIR/metalraft-bench)
  --out DIR            where results.md and SVG plots go (default:
                       docs/benchmarks/ of the repo; a temp dir with --quick)
  --warmup SECS        warm-up per run (default 2)
  --duration SECS      measured seconds per run (default 8)
  --reps N             measured runs per system and workload (default 3)
  --failover-runs N    leader kills per system (default 5; 0 skips)
  --workloads A,B,..   subset of put-1,put-16,put-64,put-256,get-linearizable,
                       get-linearizable-256,get-serializable,txn-4op,
                       watch-fanout,watch-catchup,
                       lease-keepalive,lease-expiry,big-rss,big-backup,big-restart,
                       big-catchup
                       (with no key-value workload the disk ceiling is skipped)
  --big-keys N         big-*: keys loaded (default 1000000; 20000 with --quick)
  --watchers N         watch-fanout: watchers on the followers (default 1000;
                       100 with --quick)
  --watchers-per-connection N
                       watch-fanout: watch streams per HTTP/2 connection
                       (default 50)
  --put-rate N         watch-fanout: paced puts per second (default 1000)
  --watch-duration S   watch-fanout: measured seconds (default 10; 2 with
                       --quick), after 1 s (0.5 s) of warm-up
  --catchup-events N   watch-catchup: history replayed (default 100000; 10000
                       with --quick)
  --leases N           lease-keepalive and lease-expiry: leases (default 10000;
                       1000 with --quick)
  --only SYSTEM        etcd | metalraft: one system only (e.g. under a
                       profiler); no ratios
  --clients-per-connection N
                       clients sharing one HTTP/2 connection (default 16)
  --base-port N        first port (default 29400; etcd uses N.., metalraft N+100..)
  --members N          members per cluster, both systems (default 3; 3..=9)
  --snapshot-count N   pass --snapshot-count N to every member of both systems
                       (default: each system's own), e.g. to put snapshots
                       inside the measured runs
";

pub struct Opts {
    pub quick: bool,
    metalraft_bin: Option<PathBuf>,
    etcd_bin: Option<PathBuf>,
    data_root: PathBuf,
    out: Option<PathBuf>,
    warmup: Duration,
    measure: Duration,
    reps: usize,
    failover_runs: usize,
    workloads: Vec<Workload>,
    watch: Vec<WatchWorkload>,
    watch_params: watch::Params,
    lease: Vec<LeaseWorkload>,
    lease_params: lease::Params,
    big: Vec<BigWorkload>,
    big_params: big::Params,
    systems: Vec<System>,
    base_port: u16,
    disk_probe: Duration,
    snapshot_count: Option<u64>,
    members: usize,
}

pub fn parse_args(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        quick: false,
        metalraft_bin: None,
        etcd_bin: None,
        data_root: std::env::temp_dir().join("metalraft-bench"),
        out: None,
        warmup: WARMUP,
        measure: MEASURE,
        reps: REPS,
        failover_runs: FAILOVER_RUNS,
        workloads: Workload::all(),
        watch: WatchWorkload::all(),
        watch_params: watch::Params::full(),
        lease: LeaseWorkload::all(),
        lease_params: lease::Params::full(),
        big: BigWorkload::all(),
        big_params: big::Params::full(),
        systems: vec![System::Etcd, System::Metalraft],
        base_port: BASE_PORT,
        disk_probe: DISK_PROBE,
        snapshot_count: None,
        members: cluster::DEFAULT_MEMBERS,
    };
    let (mut warmup, mut measure, mut reps, mut fo) = (None, None, None, None);
    let (mut watchers, mut per_conn, mut put_rate, mut watch_secs, mut catchup) =
        (None, None, None, None, None);
    let mut leases = None;
    let mut big_keys = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let secs = |s: String, name: &str| match s.parse::<f64>() {
            Ok(x) if x > 0.0 && x <= 3600.0 => Ok(Duration::from_secs_f64(x)),
            _ => Err(format!("{name}: expected seconds in (0, 3600], got {s:?}")),
        };
        match a.as_str() {
            "--quick" => o.quick = true,
            "--metalraft-bin" => o.metalraft_bin = Some(value(a)?.into()),
            "--etcd-bin" => o.etcd_bin = Some(value(a)?.into()),
            "--data-root" => o.data_root = value(a)?.into(),
            "--out" => o.out = Some(value(a)?.into()),
            "--warmup" => warmup = Some(secs(value(a)?, a)?),
            "--duration" => measure = Some(secs(value(a)?, a)?),
            "--reps" => reps = Some(crate::parse_pos(&value(a)?, a)? as usize),
            "--failover-runs" => {
                let v = value(a)?;
                fo = Some(
                    v.parse::<usize>()
                        .map_err(|_| format!("{a}: bad count {v:?}"))?,
                )
            }
            "--workloads" => {
                o.workloads.clear();
                o.watch.clear();
                o.lease.clear();
                o.big.clear();
                for w in value(a)?.split(',').map(str::trim) {
                    if let Some(w) = Workload::parse(w) {
                        o.workloads.push(w);
                    } else if let Some(w) = WatchWorkload::parse(w) {
                        o.watch.push(w);
                    } else if let Some(w) = LeaseWorkload::parse(w) {
                        o.lease.push(w);
                    } else if let Some(w) = BigWorkload::parse(w) {
                        o.big.push(w);
                    } else {
                        return Err(format!("{a}: unknown workload {w:?}"));
                    }
                }
            }
            "--watchers" => watchers = Some(crate::parse_pos(&value(a)?, a)? as usize),
            "--watchers-per-connection" => {
                per_conn = Some(crate::parse_pos(&value(a)?, a)? as usize)
            }
            "--put-rate" => {
                let v = crate::parse_pos(&value(a)?, a)?;
                put_rate = Some(u32::try_from(v).map_err(|_| format!("{a}: {v} is too large"))?);
            }
            "--watch-duration" => watch_secs = Some(secs(value(a)?, a)?),
            "--catchup-events" => catchup = Some(crate::parse_pos(&value(a)?, a)?),
            "--big-keys" => big_keys = Some(crate::parse_pos(&value(a)?, a)?),
            "--leases" => leases = Some(crate::parse_pos(&value(a)?, a)? as usize),
            "--only" => {
                o.systems = match value(a)?.as_str() {
                    "etcd" => vec![System::Etcd],
                    "metalraft" => vec![System::Metalraft],
                    other => return Err(format!("--only: unknown system {other:?}")),
                }
            }
            "--clients-per-connection" => {
                let n = crate::parse_pos(&value(a)?, a)? as usize;
                load::CLIENTS_PER_CONN.store(n, std::sync::atomic::Ordering::Relaxed);
            }
            "--members" => {
                let v = value(a)?;
                o.members = match v.parse::<usize>() {
                    Ok(n) if (cluster::MIN_MEMBERS..=cluster::MAX_MEMBERS).contains(&n) => n,
                    _ => {
                        return Err(format!(
                            "{a}: expected {}..={} members, got {v:?}",
                            cluster::MIN_MEMBERS,
                            cluster::MAX_MEMBERS
                        ))
                    }
                }
            }
            "--snapshot-count" => o.snapshot_count = Some(crate::parse_pos(&value(a)?, a)?),
            "--base-port" => {
                let v = value(a)?;
                o.base_port = match v.parse::<u16>() {
                    Ok(p) if (1024..=65_000 - 2 * PORT_GAP).contains(&p) => p,
                    _ => return Err(format!("{a}: bad port {v:?}")),
                }
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if o.quick {
        o.warmup = QUICK_WARMUP;
        o.measure = QUICK_MEASURE;
        o.reps = QUICK_REPS;
        o.failover_runs = QUICK_FAILOVER_RUNS;
        o.disk_probe = QUICK_DISK_PROBE;
        o.watch_params = watch::Params::quick();
        o.lease_params = lease::Params::quick();
        o.big_params = big::Params::quick();
    }
    if let Some(n) = big_keys {
        o.big_params.keys = n;
    }
    if let Some(n) = leases {
        o.lease_params.keepalive_leases = n;
        o.lease_params.expiry_leases = n;
    }
    let wp = &mut o.watch_params;
    wp.watchers = watchers.unwrap_or(wp.watchers);
    wp.per_connection = per_conn.unwrap_or(wp.per_connection);
    wp.put_rate = put_rate.unwrap_or(wp.put_rate);
    wp.measure = watch_secs.unwrap_or(wp.measure);
    wp.catchup_events = catchup.unwrap_or(wp.catchup_events);
    o.warmup = warmup.unwrap_or(o.warmup);
    o.measure = measure.unwrap_or(o.measure);
    o.reps = reps.unwrap_or(o.reps);
    o.failover_runs = fo.unwrap_or(o.failover_runs);
    Ok(o)
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The etcd binary; installs Debian's etcd-server if there is none.
fn find_etcd(o: &Opts) -> Result<PathBuf, String> {
    if let Some(p) = &o.etcd_bin {
        return Ok(p.clone());
    }
    let on_path = || {
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("etcd"))
                .find(|f| f.is_file())
        })
    };
    if let Some(p) = on_path() {
        return Ok(p);
    }
    eprintln!("etcd not found; installing Debian's etcd-server (apt-get)");
    let ok = Command::new("sh")
        .args([
            "-c",
            "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server",
        ])
        .status()
        .map_err(|e| format!("apt-get: {e}"))?;
    if !ok.success() {
        return Err(format!(
            "apt-get install etcd-server failed ({ok}); install etcd 3.4 or pass --etcd-bin"
        ));
    }
    on_path().ok_or_else(|| "etcd-server installed but no etcd on PATH".into())
}

/// The metalraft binary; builds it (release) unless given.
fn find_metalraft(o: &Opts) -> Result<PathBuf, String> {
    if let Some(p) = &o.metalraft_bin {
        return Ok(p.clone());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building metalraft: cargo build --release -p metalraft");
    let st = Command::new(cargo)
        .args(["build", "--release", "-p", "metalraft"])
        .current_dir(repo_root())
        .status()
        .map_err(|e| format!("cargo build: {e}"))?;
    if !st.success() {
        return Err(format!(
            "cargo build --release -p metalraft failed ({st}); pass --metalraft-bin"
        ));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = exe.with_file_name("metalraft");
    if !bin.is_file() {
        return Err(format!(
            "{} not found after the build; pass --metalraft-bin",
            bin.display()
        ));
    }
    Ok(bin)
}

/// One measured run: the load generator's result and each member's CPU
/// seconds inside the measured window and peak RSS after it.
struct Measured {
    res: RunResult,
    cpu_secs: Vec<f64>,
    hwm_kib: Vec<u64>,
    /// The load generator's (this process's) CPU seconds in the window: on
    /// a 2-core machine its share bounds what the members can serve.
    gen_cpu_secs: f64,
    /// Snapshots the leader saved in the window (from its `/metrics`; `None`
    /// if a scrape failed).
    snapshots: Option<u64>,
}

type Outcome = Result<Measured, String>;

pub fn main(o: &Opts) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(LOADGEN_THREADS)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(suite(o))
}

async fn suite(o: &Opts) -> Result<(), String> {
    let wall = Instant::now();
    let etcd_bin = find_etcd(o)?;
    let mr_bin = find_metalraft(o)?;
    let _ = std::fs::remove_dir_all(&o.data_root);
    std::fs::create_dir_all(&o.data_root).map_err(|e| format!("{}: {e}", o.data_root.display()))?;
    let out_dir = match &o.out {
        Some(d) => d.clone(),
        None if o.quick => o.data_root.join("results"),
        None => repo_root().join("docs/benchmarks"),
    };
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let machine = machine(o, &etcd_bin, &mr_bin);
    eprintln!("{machine}");

    // The disk ceiling is the floor of the key-value workloads' latency;
    // a watch-only run skips it.
    let ceiling = if o.workloads.is_empty() {
        None
    } else {
        eprintln!(
            "disk ceiling: 4 KiB appends + fdatasync for {:?} in {}",
            o.disk_probe,
            o.data_root.display()
        );
        Some(disk::measure(&o.data_root, o.disk_probe)?)
    };

    let timing = Timing {
        heartbeat_ms: HEARTBEAT_MS,
        election_ms: ELECTION_MS,
        snapshot_count: o.snapshot_count,
        members: o.members,
    };
    let mut clusters: Vec<Cluster> = Vec::new();
    // The big-* measurements start clusters of their own; the shared ones
    // are only for the other workloads and failover.
    let shared = !(o.workloads.is_empty()
        && o.watch.is_empty()
        && o.lease.is_empty()
        && o.failover_runs == 0);
    for (k, &sys) in o.systems.iter().enumerate().filter(|_| shared) {
        let bin = if sys == System::Etcd {
            &etcd_bin
        } else {
            &mr_bin
        };
        let port = o.base_port + PORT_GAP * k as u16;
        clusters.push(Cluster::start(sys, bin, &o.data_root, port, &timing)?);
    }
    for c in &mut clusters {
        let t = Instant::now();
        let l = c.wait_ready().await?;
        eprintln!(
            "{}: leader m{} after {:.1?}",
            c.system.name(),
            l + 1,
            t.elapsed()
        );
        if !o.workloads.is_empty() {
            load::preload(&c.endpoints(), l)
                .await
                .map_err(|e| format!("{}: {e}", c.system.name()))?;
        }
    }

    // Workloads, alternating A B A B.
    let mut results: HashMap<(usize, System), Vec<Outcome>> = HashMap::new();
    for (wi, &w) in o.workloads.iter().enumerate() {
        for rep in 0..o.reps {
            for c in clusters.iter_mut() {
                let out = one_run(c, w, o, (wi * 1000 + rep) as u64).await;
                match &out {
                    Ok(m) => eprintln!(
                        "{:<18} {:<9} rep {}: {:>9.0} ops/s  p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  peak RSS {:.0} MiB  {}",
                        w.id(),
                        c.system.name(),
                        rep + 1,
                        m.res.ops_per_sec(),
                        quantile(&m.res.lat_us, 0.5) / 1e3,
                        quantile(&m.res.lat_us, 0.99) / 1e3,
                        quantile(&m.res.lat_us, 0.999) / 1e3,
                        m.res.lat_us.iter().max().map_or(0.0, |&us| f64::from(us) / 1e3),
                        m.hwm_kib.iter().max().copied().unwrap_or(0) as f64 / 1024.0,
                        m.res
                            .failure()
                            .map(|f| format!("FAILED: {f}"))
                            .unwrap_or_default()
                    ),
                    Err(e) => eprintln!(
                        "{:<18} {:<9} rep {}: FAILED: {e}",
                        w.id(),
                        c.system.name(),
                        rep + 1
                    ),
                }
                results.entry((wi, c.system)).or_default().push(out);
            }
        }
    }

    let watch_results = watch_workloads(o, &mut clusters).await;
    let lease_results = lease_workloads(o, &mut clusters).await;

    // Failover, alternating.
    let mut failover: HashMap<System, Vec<Result<Duration, String>>> = HashMap::new();
    for run in 0..o.failover_runs {
        for c in clusters.iter_mut() {
            let r = failover_run(c, run as u64).await;
            match &r {
                Ok(d) => eprintln!(
                    "failover {:<9} run {}: {:.0} ms",
                    c.system.name(),
                    run + 1,
                    d.as_secs_f64() * 1e3
                ),
                Err(e) => eprintln!(
                    "failover {:<9} run {}: FAILED: {e}",
                    c.system.name(),
                    run + 1
                ),
            }
            failover.entry(c.system).or_default().push(r);
        }
    }
    drop(clusters);

    let big_runs = big_workloads(o, &etcd_bin, &mr_bin, &timing).await;

    let mut report = report(
        o,
        &machine,
        ceiling.as_ref(),
        &results,
        &watch_results,
        &failover,
        wall.elapsed(),
    );
    if !o.lease.is_empty() {
        lease::report(
            &mut report,
            &o.lease_params,
            &o.systems,
            &o.lease,
            &lease_results,
        );
    }
    if !o.big.is_empty() {
        big::report(
            &mut report,
            &o.big_params,
            big_timing(o, &timing).snapshot_count.unwrap_or(0),
            &o.systems,
            &o.big,
            &big_runs,
        );
    }
    println!("{report}");
    std::fs::write(out_dir.join("results.md"), &report).map_err(|e| e.to_string())?;
    write_plots(o, &out_dir, &results)?;
    eprintln!("results and plots in {}", out_dir.display());
    // A failed row or failover run is in the report; the exit status says
    // so too (for CI).
    let failed_rows = results.values().filter(|v| cell(v).is_err()).count();
    let failed_rows =
        failed_rows + watch_results.failed() + lease_results.failed() + big::failed(&big_runs);
    let failed_failovers = failover.values().flatten().filter(|r| r.is_err()).count();
    if failed_rows + failed_failovers > 0 {
        return Err(format!(
            "{failed_rows} workload row(s) and {failed_failovers} failover run(s) failed; see the report"
        ));
    }
    Ok(())
}

/// The big clusters' timing: the suite's, with `--snapshot-count`
/// [`big::Params::snapshot_count`] unless the suite sets one.
fn big_timing(o: &Opts, timing: &Timing) -> Timing {
    Timing {
        snapshot_count: o.snapshot_count.or(Some(o.big_params.snapshot_count())),
        ..timing.clone()
    }
}

/// The 1,000,000-key measurements, each system on a fresh cluster of its
/// own, one after the other.
async fn big_workloads(
    o: &Opts,
    etcd_bin: &Path,
    mr_bin: &Path,
    timing: &Timing,
) -> Vec<(System, Result<big::BigRun, String>)> {
    let mut runs = Vec::new();
    if o.big.is_empty() {
        return runs;
    }
    let timing = big_timing(o, timing);
    for (k, &sys) in o.systems.iter().enumerate() {
        let bin = if sys == System::Etcd {
            etcd_bin
        } else {
            mr_bin
        };
        let port = o.base_port + PORT_GAP * k as u16;
        let r = big::run(sys, bin, &o.data_root, port, &timing, &o.big_params, &o.big).await;
        if let Err(e) = &r {
            eprintln!("big       {:<9} FAILED: {e}", sys.name());
        }
        runs.push((sys, r));
    }
    runs
}

/// The watch workloads: fan-out runs alternating A B A B, then per system
/// the catch-up history and the catch-up runs, alternating.
async fn watch_workloads(o: &Opts, clusters: &mut [Cluster]) -> watch::Results {
    let p = &o.watch_params;
    let mut r = watch::Results::default();
    if o.watch.contains(&WatchWorkload::Fanout) {
        for rep in 0..o.reps {
            for c in clusters.iter_mut() {
                let out = watch::fanout_run(c, p).await;
                match &out {
                    Ok(f) => eprintln!(
                        "watch-fanout       {:<9} rep {}: {:>9.0} events/s  p50 {:.2} ms  p99 {:.2} ms  \
                         idle {:.1} KiB/watcher  {} puts at {:.0}/s ({} held back)  drain {:.3} s",
                        c.system.name(),
                        rep + 1,
                        f.events_per_sec,
                        f.lat.quantile(0.5) / 1e3,
                        f.lat.quantile(0.99) / 1e3,
                        f.idle_kib_per_watcher(),
                        f.puts,
                        f.puts_per_sec,
                        f.held_back,
                        f.drain_secs,
                    ),
                    Err(e) => eprintln!(
                        "watch-fanout       {:<9} rep {}: FAILED: {e}",
                        c.system.name(),
                        rep + 1
                    ),
                }
                r.fanout.entry(c.system).or_default().push(out);
            }
        }
    }
    if o.watch.contains(&WatchWorkload::Catchup) {
        let mut histories = Vec::new();
        for c in clusters.iter_mut() {
            let t = Instant::now();
            let h = watch::catchup_history(c, p.catchup_events).await;
            match &h {
                Ok(_) => eprintln!(
                    "watch-catchup      {:<9} history of {} puts written in {:.1?}",
                    c.system.name(),
                    p.catchup_events,
                    t.elapsed()
                ),
                Err(e) => eprintln!(
                    "watch-catchup      {:<9} history: FAILED: {e}",
                    c.system.name()
                ),
            }
            histories.push(h);
        }
        for rep in 0..o.reps {
            for (c, h) in clusters.iter_mut().zip(&histories) {
                let out = match h {
                    Ok(h) => watch::catchup_run(c, h).await,
                    Err(e) => Err(format!("writing the history: {e}")),
                };
                match &out {
                    Ok(x) => eprintln!(
                        "watch-catchup      {:<9} rep {}: {} events in {:.3} s = {:.0} events/s",
                        c.system.name(),
                        rep + 1,
                        x.events,
                        x.secs,
                        x.events_per_sec()
                    ),
                    Err(e) => eprintln!(
                        "watch-catchup      {:<9} rep {}: FAILED: {e}",
                        c.system.name(),
                        rep + 1
                    ),
                }
                r.catchup.entry(c.system).or_default().push(out);
            }
        }
    }
    r
}

/// The lease workloads: keepalive runs, then mass-expiry runs, each
/// alternating A B A B.
async fn lease_workloads(o: &Opts, clusters: &mut [Cluster]) -> lease::Results {
    let p = &o.lease_params;
    let mut r = lease::Results::default();
    if o.lease.contains(&LeaseWorkload::Keepalive) {
        for rep in 0..o.reps {
            for c in clusters.iter_mut() {
                let out = lease::keepalive_run(c, p).await;
                match &out {
                    Ok(k) => eprintln!(
                        "lease-keepalive    {:<9} rep {}: {} leases, paced {:.0} keepalives/s (p99 {:.2} ms, CPU {:.2}), \
                         saturated {:.0} keepalives/s (CPU {:.2}, load generator {:.2}), setup {:.1} s, \
                         {} streams failed and reopened {}",
                        c.system.name(),
                        rep + 1,
                        k.leases,
                        k.paced_per_sec,
                        k.paced_p99_us / 1e3,
                        k.paced_cpu.iter().sum::<f64>(),
                        k.saturated_per_sec,
                        k.saturated_cpu.iter().sum::<f64>(),
                        k.loadgen_saturated_cpu,
                        k.setup_secs,
                        k.errors,
                        k.first_error.as_deref().unwrap_or(""),
                    ),
                    Err(e) => eprintln!(
                        "lease-keepalive    {:<9} rep {}: FAILED: {e}",
                        c.system.name(),
                        rep + 1
                    ),
                }
                r.keepalive.entry(c.system).or_default().push(out);
            }
        }
    }
    if o.lease.contains(&LeaseWorkload::Expiry) {
        for rep in 0..o.reps {
            for c in clusters.iter_mut() {
                let out = lease::expiry_run(c, p).await;
                match &out {
                    Ok(x) => eprintln!(
                        "lease-expiry       {:<9} rep {}: {} leases ({} left at the first deadline) gone {:.2} s after the first deadline \
                         ({:.2} s after the last); unrelated puts p50 {:.2} ms p99 {:.2} ms (before: p99 {:.2} ms)",
                        c.system.name(),
                        rep + 1,
                        x.leases,
                        x.left_at_first_deadline,
                        x.span_secs,
                        x.after_last_deadline_secs,
                        x.put_p50_us / 1e3,
                        x.put_p99_us / 1e3,
                        x.put_p99_before_us / 1e3,
                    ),
                    Err(e) => eprintln!(
                        "lease-expiry       {:<9} rep {}: FAILED: {e}",
                        c.system.name(),
                        rep + 1
                    ),
                }
                r.expiry.entry(c.system).or_default().push(out);
            }
        }
    }
    r
}

async fn one_run(c: &mut Cluster, w: Workload, o: &Opts, seed: u64) -> Outcome {
    c.check_alive()?;
    let leader = c.wait_ready().await?;
    let eps = c.endpoints();
    let rev0 = load::revision(&eps, leader).await?;
    let pids: Vec<Option<u32>> = (0..c.founders()).map(|i| c.pid(i)).collect();
    let sample = move || -> Vec<ProcStats> {
        pids.iter()
            .map(|p| p.and_then(cluster::proc_stats).unwrap_or_default())
            .collect()
    };
    let (warmup, measure) = (o.warmup, o.measure);
    // Every member's /metrics before and after the measured phase:
    // snapshots saved (both systems), metalraft's stage histograms.
    let urls: Vec<String> = eps.clone();
    let system = c.system;
    let scrape = move || -> Vec<Result<stages::Scrape, String>> {
        urls.iter()
            .map(|u| stages::fetch(u).map(|t| stages::parse(&t)))
            .collect()
    };
    let sampler = tokio::spawn(async move {
        tokio::time::sleep(warmup).await;
        let a = sample();
        let g0 = lease::own_cpu_secs();
        let s0 = tokio::task::spawn_blocking(scrape.clone()).await;
        tokio::time::sleep(measure).await;
        let b = sample();
        let g1 = lease::own_cpu_secs();
        let s1 = tokio::task::spawn_blocking(scrape).await;
        (a, b, s0, s1, g1 - g0)
    });
    let res = load::run(&eps, leader, w, warmup, measure, rev0, seed).await?;
    let (a, b, s0, s1, gen_cpu_secs) = sampler.await.map_err(|e| e.to_string())?;
    let mut snapshots = None;
    if let (Ok(s0), Ok(s1)) = (s0, s1) {
        if let (Some(Ok(x)), Some(Ok(y))) = (s0.get(leader), s1.get(leader)) {
            snapshots = Some(y.snapshots.saturating_sub(x.snapshots));
        }
        for (i, (x, y)) in s0.iter().zip(&s1).enumerate() {
            match (x, y) {
                (Ok(x), Ok(y)) => {
                    eprint!(
                        "  m{}{}: {} snapshot(s) in the measured phase",
                        i + 1,
                        if i == leader { " (leader)" } else { "" },
                        y.snapshots.saturating_sub(x.snapshots),
                    );
                    if system == System::Metalraft {
                        eprint!(
                            "; stages:\n{}{}",
                            stages::render(&stages::delta(x, y)),
                            stages::render_batches(&stages::batch_delta(x, y))
                        );
                    } else {
                        eprintln!();
                    }
                }
                (Err(e), _) | (_, Err(e)) => eprintln!("  m{}: /metrics: {e}", i + 1),
            }
        }
    }
    c.check_alive()?;
    Ok(Measured {
        res,
        cpu_secs: a
            .iter()
            .zip(&b)
            .map(|(a, b)| b.cpu_secs - a.cpu_secs)
            .collect(),
        hwm_kib: b.iter().map(|s| s.hwm_kib).collect(),
        gen_cpu_secs,
        snapshots,
    })
}

/// kill -9 of the leader; the time from the kill until a put through the
/// two survivors succeeds. Then the member is restarted and the cluster
/// settles.
async fn failover_run(c: &mut Cluster, run: u64) -> Result<Duration, String> {
    let leader = c.wait_ready().await?;
    let survivors: Vec<String> = (0..c.founders())
        .filter(|&i| i != leader)
        .map(|i| c.endpoint(i))
        .collect();
    let opts = ConnectOptions::new()
        .with_timeout(FAILOVER_ATTEMPT_TIMEOUT)
        .with_connect_timeout(FAILOVER_ATTEMPT_TIMEOUT);
    let client = Client::connect(&survivors, Some(opts))
        .await
        .map_err(|e| e.to_string())?;
    let mut kv = client.kv_client();
    let idx = 0;
    // Warm the connections to both survivors.
    for s in 0..4 {
        kv.put(
            load::key(idx),
            load::value(idx, u32::MAX - 1, run * 1_000_000 + s),
            None,
        )
        .await
        .map_err(|e| format!("put before the kill: {e}"))?;
    }
    let t0 = Instant::now();
    c.kill(leader);
    let mut attempts = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(FAILOVER_RETRY_INTERVAL);
    let mut seq = run * 1_000_000 + 100;
    let mut last_err = String::new();
    let done = loop {
        if t0.elapsed() > FAILOVER_TIMEOUT {
            break Err(format!(
                "no put succeeded within {FAILOVER_TIMEOUT:?}; last error: {last_err}"
            ));
        }
        tokio::select! {
            _ = tick.tick() => {
                let mut kv = kv.clone();
                seq += 1;
                let v = load::value(idx, u32::MAX - 1, seq);
                attempts.spawn(async move {
                    kv.put(load::key(idx), v, None).await.map(|_| Instant::now()).map_err(|e| e.to_string())
                });
            }
            Some(r) = attempts.join_next() => {
                match r.map_err(|e| e.to_string())? {
                    Ok(t1) => break Ok(t1 - t0),
                    Err(e) => last_err = e,
                }
            }
        }
    };
    attempts.abort_all();
    // The value read back must be one the suite wrote.
    if done.is_ok() {
        let r = kv
            .get(load::key(idx), None)
            .await
            .map_err(|e| format!("get after failover: {e}"))?;
        let v = r.kvs().first().ok_or("key missing after failover")?;
        load::check_value(idx, v.value())
            .map_err(|e| format!("WRONG ANSWER after failover: {e}"))?;
    }
    c.restart(leader)?;
    c.wait_ready().await?;
    tokio::time::sleep(FAILOVER_SETTLE).await;
    done
}

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine(o: &Opts, etcd: &Path, mr: &Path) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = sh("awk '/MemTotal/ {printf \"%.0f GiB\", $2/1048576}' /proc/meminfo");
    let fs = sh(&format!(
        "df -T {} | awk 'NR==2 {{print $1\" (\"$2\")\"}}'",
        o.data_root.display()
    ));
    let root = repo_root();
    let commit = sh(&format!("git -C {} rev-parse --short HEAD", root.display()));
    let dirty = sh(&format!(
        "git -C {} status --porcelain -- crates/server crates/core crates/kv | wc -l",
        root.display()
    ));
    format!(
        "- **Date:** {} UTC\n- **Machine:** {cpus} CPUs ({}), {mem} RAM, kernel {}; load average at start: {}\n\
         - **Data directories:** {} on {fs}\n- **etcd:** {} ({})\n- **metalraft:** {}; the working tree is at commit {commit}{}\n\
         - **Settings (both):** {} members on 127.0.0.1, heartbeat {HEARTBEAT_MS} ms, election timeout {ELECTION_MS} ms, \
         default durability (fsync on), snapshot count {}, log level warn",
        crate::utc_date(),
        crate::cpu_model(),
        sh("uname -r"),
        sh("cut -d' ' -f1-3 /proc/loadavg"),
        o.data_root.display(),
        etcd.display(),
        sh(&format!("{} --version | head -1", etcd.display())),
        if o.metalraft_bin.is_some() {
            // A given binary may be older than the tree: say when it was built.
            format!(
                "{} (given with --metalraft-bin; binary modified {} UTC)",
                mr.display(),
                sh(&format!("date -u -r {} '+%H:%M'", mr.display()))
            )
        } else {
            mr.display().to_string()
        },
        if dirty.trim() == "0" { String::new() } else { format!(" plus {} uncommitted files in crates/server, core, kv (shared working tree)", dirty.trim()) },
        o.members,
        o.snapshot_count.map_or_else(
            || "default (etcd 3.4: 100000, metalraft: 100000)".to_string(),
            |n| format!("{n} (--snapshot-count)")
        ),
    )
}

/// Aggregate of one (workload, system) cell over its runs.
struct Cell {
    ops_per_sec: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    cpu_secs: Vec<f64>,
    hwm_kib: Vec<u64>,
    /// The load generator's CPU seconds per run (mean).
    gen_cpu_secs: f64,
    /// Snapshots the leader saved in the measured phases, all runs
    /// together (`None`: a scrape failed).
    snapshots: Option<u64>,
    lat_us: Vec<u32>,
    errors: u64,
    ops: u64,
    runs: usize,
}

fn cell(outs: &[Outcome]) -> Result<Cell, String> {
    let mut ms = Vec::new();
    for o in outs {
        let m = o.as_ref().map_err(Clone::clone)?;
        if let Some(f) = m.res.failure() {
            return Err(f);
        }
        ms.push(m);
    }
    let mut lat: Vec<u32> = ms
        .iter()
        .flat_map(|m| m.res.lat_us.iter().copied())
        .collect();
    lat.sort_unstable();
    let n = ms.len() as f64;
    let members = ms.first().map_or(0, |m| m.cpu_secs.len());
    Ok(Cell {
        ops_per_sec: crate::median(ms.iter().map(|m| m.res.ops_per_sec()).collect()),
        p50: quantile(&lat, 0.5) / 1e3,
        p99: quantile(&lat, 0.99) / 1e3,
        p999: quantile(&lat, 0.999) / 1e3,
        max: lat.last().map_or(0.0, |&us| f64::from(us) / 1e3),
        cpu_secs: (0..members)
            .map(|i| ms.iter().map(|m| m.cpu_secs[i]).sum::<f64>() / n)
            .collect(),
        hwm_kib: (0..members)
            .map(|i| ms.iter().map(|m| m.hwm_kib[i]).max().unwrap_or(0))
            .collect(),
        gen_cpu_secs: ms.iter().map(|m| m.gen_cpu_secs).sum::<f64>() / n,
        snapshots: ms.iter().map(|m| m.snapshots).sum(),
        errors: ms.iter().map(|m| m.res.errors).sum(),
        ops: ms.iter().map(|m| m.res.ops).sum(),
        lat_us: lat,
        runs: ms.len(),
    })
}

fn fmt_ms(x: f64) -> String {
    if x < 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.1}")
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "–".into()
    }
}

fn report(
    o: &Opts,
    machine: &str,
    ceil: Option<&disk::Ceiling>,
    results: &HashMap<(usize, System), Vec<Outcome>>,
    watch_results: &watch::Results,
    failover: &HashMap<System, Vec<Result<Duration, String>>>,
    took: Duration,
) -> String {
    let mut s = String::new();
    let both = o.systems.len() == 2;
    let _ = writeln!(
        s,
        "# metalraft vs etcd 3.4: {}-member clusters on loopback\n",
        o.members
    );
    let _ = writeln!(s, "{machine}");
    let cmd = if o.quick {
        "cargo run --release -p metalraft-bench -- server --quick"
    } else {
        "cargo run --release -p metalraft-bench -- server"
    };
    let _ = writeln!(
        s,
        "- **Command:** `{cmd}` (this run was invoked as `metalraft-bench {}`); the suite took {:.0} s{}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        took.as_secs_f64(),
        if o.workloads.is_empty() {
            "\n- **Key-value workloads:** none selected (no preload, no disk ceiling)\n"
        } else {
            ""
        },
    );
    if !o.workloads.is_empty() {
        let _ = writeln!(
        s,
        "- **Schedule:** per workload, {} run(s) per system alternating {}, each {:.1} s warm-up + {:.1} s measured; \
         ops/s is the median over runs, latency percentiles pool every measured operation, CPU seconds are the \
         mean per run of each member's utime+stime in the measured window (`/proc/<pid>/stat`), peak RSS is \
         VmHWM after the run (max over runs)\n\
         - **Load:** {}-byte keys from a keyspace of {}, {}-byte values (all keys preloaded); one Rust load generator \
         (crate `etcd-client` 0.16, {LOADGEN_THREADS} Tokio threads, {} clients per HTTP/2 connection, connections \
         round-robin over the members starting at the leader); every answer checked (values self-describing and \
         checksummed, per-client revisions increasing, linearizable reads at the current revision, written keys \
         read back after each write workload)\n",
        o.reps,
        if both { "(etcd, metalraft, etcd, metalraft, …)" } else { "(one system only)" },
        o.warmup.as_secs_f64(),
        o.measure.as_secs_f64(),
        8,
        load::KEYSPACE,
        load::VALUE_BYTES,
        load::CLIENTS_PER_CONN.load(std::sync::atomic::Ordering::Relaxed),
    );
    }

    if !o.workloads.is_empty() {
        let _ = writeln!(s, "## Throughput and latency\n");
        let _ = writeln!(
            s,
            "| workload | system | ops/s | p50 ms | p99 ms | p99.9 ms | max ms | CPU s per member (m1 / m2 / …) | CPU µs per op (all members) | CPU µs per op (load generator) | peak RSS MiB per member | snapshots by the leader, all runs |"
        );
        let _ = writeln!(
            s,
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
    }
    let mut cells: HashMap<(usize, System), Result<Cell, String>> = HashMap::new();
    for (wi, w) in o.workloads.iter().enumerate() {
        for &sys in &o.systems {
            let c = cell(results.get(&(wi, sys)).map_or(&[][..], |v| v.as_slice()));
            match &c {
                Ok(c) => {
                    let cpu_total: f64 = c.cpu_secs.iter().sum();
                    let ops_per_run = c.ops as f64 / c.runs as f64;
                    let _ = writeln!(
                        s,
                        "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {} | {} |",
                        w.label(),
                        sys.name(),
                        c.ops_per_sec,
                        fmt_ms(c.p50),
                        fmt_ms(c.p99),
                        fmt_ms(c.p999),
                        fmt_ms(c.max),
                        c.cpu_secs
                            .iter()
                            .map(|x| format!("{x:.2}"))
                            .collect::<Vec<_>>()
                            .join(" / "),
                        cpu_total * 1e6 / ops_per_run,
                        c.gen_cpu_secs * 1e6 / ops_per_run,
                        c.hwm_kib
                            .iter()
                            .map(|k| format!("{:.0}", *k as f64 / 1024.0))
                            .collect::<Vec<_>>()
                            .join(" / "),
                        c.snapshots.map_or_else(|| "?".into(), |n| n.to_string()),
                    );
                    if c.errors > 0 {
                        let _ = writeln!(
                            s,
                            "| | ({} failed requests, under the {:.0}% limit) | | | | | | | | | | |",
                            c.errors,
                            load::MAX_ERROR_FRACTION * 100.0
                        );
                    }
                }
                Err(e) => {
                    let _ = writeln!(
                        s,
                        "| {} | {} | **FAILED**: {} | | | | | | | | | |",
                        w.label(),
                        sys.name(),
                        e.replace('|', "\\|").replace('\n', " ")
                    );
                }
            }
            cells.insert((wi, sys), c);
        }
        if both {
            if let (Some(Ok(e)), Some(Ok(m))) = (
                cells.get(&(wi, System::Etcd)),
                cells.get(&(wi, System::Metalraft)),
            ) {
                let cpu_op =
                    |c: &Cell| c.cpu_secs.iter().sum::<f64>() / (c.ops as f64 / c.runs as f64);
                let maxrss = |c: &Cell| c.hwm_kib.iter().copied().max().unwrap_or(0) as f64;
                let _ = writeln!(
                    s,
                    "| | **metalraft/etcd** | **{}** | {} | {} | {} | {} | | {} | {} (max member) |",
                    ratio(m.ops_per_sec, e.ops_per_sec),
                    ratio(m.p50, e.p50),
                    ratio(m.p99, e.p99),
                    ratio(m.p999, e.p999),
                    ratio(m.max, e.max),
                    ratio(cpu_op(m), cpu_op(e)),
                    ratio(maxrss(m), maxrss(e)),
                );
            } else {
                let _ = writeln!(
                    s,
                    "| | **metalraft/etcd** | – (a run failed) | | | | | | | |"
                );
            }
        }
    }
    if !o.workloads.is_empty() {
        let _ = writeln!(
            s,
            "\nRatios above 1× are better for metalraft in the ops/s column, worse in the others.\n"
        );
    }
    if !o.watch.is_empty() {
        watch::report(
            &mut s,
            &o.watch_params,
            &o.systems,
            &o.watch,
            o.reps,
            watch_results,
        );
    }

    // Failover.
    let _ = writeln!(
        s,
        "## Failover (kill -9 of the leader until a put through the survivors succeeds)\n"
    );
    let _ = writeln!(
        s,
        "A put attempt is started every {} ms (each with a {} s timeout) from the kill on; the time is the completion of \
         the first successful one. The killed member is restarted, and the next run starts {} s after all members agree on a leader.\n",
        FAILOVER_RETRY_INTERVAL.as_millis(),
        FAILOVER_ATTEMPT_TIMEOUT.as_secs(),
        FAILOVER_SETTLE.as_secs()
    );
    let mut fo_median: HashMap<System, f64> = HashMap::new();
    if o.failover_runs > 0 {
        let _ = writeln!(s, "| system | runs (ms) | median ms |");
        let _ = writeln!(s, "|---|---|---:|");
        for &sys in &o.systems {
            let runs = failover.get(&sys).map_or(&[][..], |v| v.as_slice());
            let cells: Vec<String> = runs
                .iter()
                .map(|r| match r {
                    Ok(d) => format!("{:.0}", d.as_secs_f64() * 1e3),
                    Err(e) => format!("FAILED ({e})"),
                })
                .collect();
            let ok: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.as_ref().ok())
                .map(|d| d.as_secs_f64() * 1e3)
                .collect();
            let med = if ok.len() == runs.len() && !ok.is_empty() {
                crate::median(ok)
            } else {
                f64::NAN
            };
            fo_median.insert(sys, med);
            let _ = writeln!(
                s,
                "| {} | {} | {} |",
                sys.name(),
                cells.join(", "),
                if med.is_finite() {
                    format!("{med:.0}")
                } else {
                    "– (a run failed)".into()
                }
            );
        }
        if both {
            let _ = writeln!(
                s,
                "| **metalraft/etcd** | | **{}** |",
                ratio(fo_median[&System::Metalraft], fo_median[&System::Etcd])
            );
        }
    } else {
        let _ = writeln!(s, "(skipped: --failover-runs 0)");
    }

    if let Some(ceil) = ceil {
        // Disk ceiling. The floor uses the preallocated-file probe: both
        // servers write their WAL into preallocated segments.
        let f50 = quantile(&ceil.prealloc_us, 0.5) / 1e3;
        let rtt50 = quantile(&ceil.rtt_us, 0.5) / 1e3;
        let q = |v: &[u32], x: f64| fmt_ms(quantile(v, x) / 1e3);
        let _ = writeln!(s, "\n## The disk ceiling\n");
        let _ = writeln!(
            s,
            "Measured by the suite in the data directories' file system, one thread, {} B per write, {:.0} s per probe.\n\n\
             | measure | value |\n|---|---:|\n\
             | fdatasync after a 4 KiB write into a preallocated {} MiB file: rate | {:.0} /s |\n\
             | — latency p50 / p99 / p99.9 | {} / {} / {} ms |\n\
             | fdatasync after a 4 KiB append that grows the file: rate | {:.0} /s |\n\
             | — latency p50 / p99 / p99.9 | {} / {} / {} ms |\n\
             | loopback TCP round trip p50 / p99 (1 byte, TCP_NODELAY) | {:.3} / {:.3} ms |\n\
             | **floor** = preallocated fdatasync p50 + RTT p50 | {} ms |",
            disk::APPEND_BYTES,
            o.disk_probe.as_secs_f64(),
            disk::PREALLOC_BYTES >> 20,
            ceil.prealloc_per_sec(),
            q(&ceil.prealloc_us, 0.5),
            q(&ceil.prealloc_us, 0.99),
            q(&ceil.prealloc_us, 0.999),
            ceil.fsyncs_per_sec(),
            q(&ceil.fsync_us, 0.5),
            q(&ceil.fsync_us, 0.99),
            q(&ceil.fsync_us, 0.999),
            rtt50,
            quantile(&ceil.rtt_us, 0.99) / 1e3,
            fmt_ms(f50 + rtt50),
        );
        if let Some(wi) = o.workloads.iter().position(|w| *w == Workload::Put(1)) {
            for &sys in &o.systems {
                match cells.get(&(wi, sys)) {
                    Some(Ok(c)) => {
                        let _ = writeln!(
                            s,
                            "| {} single-client put p50 | {} ms = **{:.2}×** the floor |",
                            sys.name(),
                            fmt_ms(c.p50),
                            c.p50 / (f50 + rtt50)
                        );
                    }
                    _ => {
                        let _ = writeln!(
                            s,
                            "| {} single-client put p50 | – (run failed) |",
                            sys.name()
                        );
                    }
                }
            }
        }
    }

    // Targets.
    if both && !o.workloads.is_empty() {
        let _ = writeln!(s, "\n## Against the targets of issue 7\n");
        let _ = writeln!(s, "| target | measured | met? |\n|---|---:|---|");
        let get = |w: Workload, sys: System| {
            o.workloads
                .iter()
                .position(|x| *x == w)
                .and_then(|wi| cells.get(&(wi, sys)))
                .and_then(|c| c.as_ref().ok())
        };
        let both_cells = |w: Workload| get(w, System::Metalraft).zip(get(w, System::Etcd));
        let mut target = |name: &str, val: Option<f64>, good: &dyn Fn(f64) -> bool| {
            let _ = match val {
                Some(v) if v.is_finite() => writeln!(
                    s,
                    "| {name} | {v:.2}× | {} |",
                    if good(v) { "yes" } else { "**no**" }
                ),
                _ => writeln!(s, "| {name} | – | not measured / failed |"),
            };
        };
        target(
            "put throughput at 64 clients ≥ 2× etcd",
            both_cells(Workload::Put(64)).map(|(m, e)| m.ops_per_sec / e.ops_per_sec),
            &|v| v >= 2.0,
        );
        target(
            "single-client put p50 ≤ 0.5× etcd",
            both_cells(Workload::Put(1)).map(|(m, e)| m.p50 / e.p50),
            &|v| v <= 0.5,
        );
        target(
            "linearizable get throughput ≥ 2× etcd",
            both_cells(Workload::GetLinearizable(load::READ_CLIENTS))
                .map(|(m, e)| m.ops_per_sec / e.ops_per_sec),
            &|v| v >= 2.0,
        );
        target(
            "failover ≤ etcd",
            (o.failover_runs > 0).then(|| fo_median[&System::Metalraft] / fo_median[&System::Etcd]),
            &|v| v <= 1.0,
        );
        let peak = |sys: System| {
            (0..o.workloads.len())
                .filter_map(|wi| cells.get(&(wi, sys)).and_then(|c| c.as_ref().ok()))
                .flat_map(|c| c.hwm_kib.iter().copied())
                .max()
                .map(|k| k as f64)
        };
        target(
            "peak RSS ≤ etcd (largest member over all workloads)",
            peak(System::Metalraft)
                .zip(peak(System::Etcd))
                .map(|(m, e)| m / e),
            &|v| v <= 1.0,
        );
    }
    s
}

fn write_plots(
    o: &Opts,
    dir: &Path,
    results: &HashMap<(usize, System), Vec<Outcome>>,
) -> Result<(), String> {
    let write = |name: &str, body: String| {
        std::fs::write(dir.join(name), body).map_err(|e| format!("{name}: {e}"))
    };
    // Throughput vs clients (put).
    let puts: Vec<(usize, usize)> = o
        .workloads
        .iter()
        .enumerate()
        .filter_map(|(wi, w)| match w {
            Workload::Put(n) => Some((wi, *n)),
            _ => None,
        })
        .collect();
    let cell_of = |wi: usize, sys: System| results.get(&(wi, sys)).map(|v| cell(v));
    if !puts.is_empty() {
        let cats: Vec<String> = puts.iter().map(|(_, n)| n.to_string()).collect();
        let series: Vec<svg::Series> = o
            .systems
            .iter()
            .map(|&sys| svg::Series {
                name: sys.name().into(),
                values: puts
                    .iter()
                    .map(|&(wi, _)| match cell_of(wi, sys) {
                        Some(Ok(c)) => c.ops_per_sec,
                        _ => f64::NAN,
                    })
                    .collect(),
            })
            .collect();
        write(
            "server-put-throughput.svg",
            svg::line_chart(
                &format!(
                    "put throughput vs concurrent clients ({} members, fsync on)",
                    o.members
                ),
                "concurrent clients",
                "puts/s",
                &cats,
                &series,
            ),
        )?;
    }
    for (wi, w) in o.workloads.iter().enumerate() {
        let cs: Vec<(String, Cell)> = o
            .systems
            .iter()
            .filter_map(|&sys| match cell_of(wi, sys) {
                Some(Ok(c)) => Some((sys.name().to_string(), c)),
                _ => None,
            })
            .collect();
        let series: Vec<(String, &[u32])> = cs
            .iter()
            .map(|(n, c)| (n.clone(), c.lat_us.as_slice()))
            .collect();
        write(
            &format!("server-latency-{}.svg", w.id()),
            svg::cdf_chart(&format!("latency CDF: {}", w.label()), &series),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Result<Opts, String> {
        parse_args(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn args() {
        let o = a("--quick").unwrap();
        assert_eq!(
            (o.reps, o.failover_runs, o.measure),
            (QUICK_REPS, QUICK_FAILOVER_RUNS, QUICK_MEASURE)
        );
        let o = a("--workloads put-1,txn-4op --only metalraft --duration 1.5 --failover-runs 0")
            .unwrap();
        assert_eq!(o.workloads, vec![Workload::Put(1), Workload::Txn]);
        assert_eq!(o.systems, vec![System::Metalraft]);
        assert_eq!(o.measure, Duration::from_millis(1500));
        assert_eq!(o.failover_runs, 0);
        assert!(a("--workloads put-3").is_err());
        let o =
            a("--quick --workloads watch-fanout,put-1 --watchers 10 --catchup-events 500").unwrap();
        assert_eq!(o.workloads, vec![Workload::Put(1)]);
        assert_eq!(o.watch, vec![WatchWorkload::Fanout]);
        assert_eq!(o.watch_params.watchers, 10);
        assert_eq!(o.watch_params.catchup_events, 500);
        assert_eq!(o.watch_params.measure, watch::QUICK_FANOUT_MEASURE);
        let o = a("").unwrap();
        assert_eq!(o.watch, WatchWorkload::all());
        assert_eq!(o.watch_params, watch::Params::full());
        assert!(a("--duration 0").is_err());
        assert!(a("--bogus").is_err());
        assert_eq!(a("--help").err(), Some(String::new()));
    }

    #[test]
    fn quick_suite_fits_its_budget() {
        // Runs alone: 7 workloads × 2 systems × (warm-up + measure) × reps.
        let per = (QUICK_WARMUP + QUICK_MEASURE).as_secs_f64() * QUICK_REPS as f64;
        assert!(7.0 * 2.0 * per < 60.0);
        let full = (WARMUP + MEASURE).as_secs_f64() * REPS as f64;
        assert!(7.0 * 2.0 * full < 10.0 * 60.0);
        // The watch fan-out adds, per system and run, warm-up + measure +
        // the idle pause before the RSS reading.
        let q = watch::Params::quick();
        let fanout = (q.warmup + q.measure).as_secs_f64() + 2.0;
        assert!(7.0 * 2.0 * per + 2.0 * fanout * (QUICK_REPS as f64) < 80.0);
        // The lease runs add, per system and run, the keepalive phases
        // (their paced warm-up is 2 s, one interval between them) and the
        // expiry TTL plus its drain (1,000 leases at 1,000 revokes/s).
        let l = lease::Params::quick();
        let leases = 2.0
            + 1.0
            + (l.paced_measure + l.saturated_measure).as_secs_f64()
            + l.expiry_ttl_secs as f64
            + 1.0;
        assert!(2.0 * leases * (QUICK_REPS as f64) < 40.0);
    }
}
