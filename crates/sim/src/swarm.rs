//! Many seeds on several threads, with progress and a summary.
//!
//! Each run is single-threaded and deterministic; threads only pick which
//! seed to run next. The wall clock is read here, for progress, throughput
//! and the `--minutes` limit, never inside a run.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::checkers::Violation;
use crate::config::Knobs;
use crate::sim::{RunOptions, RunStats, Sabotage};

/// What to run.
#[derive(Clone, Debug, PartialEq)]
pub struct SwarmOptions {
    /// Seeds to run, in order.
    pub seeds: Range<u64>,
    /// Worker threads.
    pub jobs: usize,
    /// Stop starting new seeds after this long (wall clock).
    pub time_limit: Option<Duration>,
    /// Optional parts of each run.
    pub knobs: Knobs,
    /// A deliberate defect in every run (tests only; `Sabotage::None`
    /// otherwise).
    pub sabotage: Sabotage,
}

/// One finished seed.
#[derive(Clone, Debug)]
pub struct SeedResult {
    /// The seed.
    pub seed: u64,
    /// Its violation, if any.
    pub violation: Option<Violation>,
    /// Its counters.
    pub stats: RunStats,
    /// Operations by outcome: ok, failed, unknown, pending.
    pub ops: [u64; 4],
    /// Operations that entered the linearizability check.
    pub ops_checked: u64,
    /// Keys whose linearizability search was inconclusive.
    pub inconclusive_keys: u64,
    /// The trace fingerprint.
    pub fingerprint: u64,
    /// CPU time the run took on its thread (0 where unmeasurable).
    pub cpu: Duration,
}

/// CPU time of the calling thread so far, from Linux's
/// `/proc/thread-self/schedstat` (first field: nanoseconds on the CPU).
/// `None` elsewhere. Used only for throughput figures, never by a run.
pub fn thread_cpu_time() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Totals over a swarm.
#[derive(Clone, Debug, Default)]
pub struct SwarmSummary {
    /// Seeds completed.
    pub seeds: u64,
    /// Seeds with a violation, sorted by seed.
    pub failures: Vec<(u64, Violation)>,
    /// Summed counters.
    pub stats: RunStats,
    /// Operations by outcome: ok, failed, unknown, pending.
    pub ops: [u64; 4],
    /// Operations checked for linearizability.
    pub ops_checked: u64,
    /// Keys whose search was inconclusive.
    pub inconclusive_keys: u64,
    /// Wall-clock time.
    pub wall: Duration,
    /// Worker threads used.
    pub jobs: usize,
    /// CPU time of all runs (0 where unmeasurable).
    pub cpu: Duration,
    /// XOR of every seed's fingerprint (compare two swarms at a glance).
    pub fingerprint: u64,
}

impl SwarmSummary {
    fn add(&mut self, r: &SeedResult) {
        self.seeds += 1;
        let s = &mut self.stats;
        let t = &r.stats;
        s.events += t.events;
        s.deliveries += t.deliveries;
        s.lost += t.lost;
        s.ticks += t.ticks;
        s.sim_time_us += t.sim_time_us;
        s.crashes += t.crashes;
        s.torn_writes += t.torn_writes;
        s.partitions += t.partitions;
        s.pauses += t.pauses;
        s.transfers += t.transfers;
        s.conf_changes += t.conf_changes;
        s.fsyncs += t.fsyncs;
        s.leader_terms += t.leader_terms;
        s.targeted += t.targeted;
        s.watch_events += t.watch_events;
        s.watch_breaks += t.watch_breaks;
        s.watch_cancels += t.watch_cancels;
        s.background_writes += t.background_writes;
        s.compactions += t.compactions;
        s.lease_keepalives += t.lease_keepalives;
        s.lease_expiries += t.lease_expiries;
        s.lease_revokes += t.lease_revokes;
        s.torn_frames_after_gap += t.torn_frames_after_gap;
        s.rot_damaged += t.rot_damaged;
        s.repairs_found += t.repairs_found;
        s.repairs_done += t.repairs_done;
        s.lease_lateness_max_us = s.lease_lateness_max_us.max(t.lease_lateness_max_us);
        for i in 0..4 {
            self.ops[i] += r.ops[i];
        }
        self.ops_checked += r.ops_checked;
        self.inconclusive_keys += r.inconclusive_keys;
        self.cpu += r.cpu;
        self.fingerprint ^= r.fingerprint.rotate_left((r.seed % 64) as u32);
        if let Some(v) = &r.violation {
            self.failures.push((r.seed, v.clone()));
        }
    }

    /// Message deliveries per wall-clock second (all jobs together).
    pub fn deliveries_per_sec(&self) -> f64 {
        self.stats.deliveries as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Message deliveries per CPU-second: the per-core throughput,
    /// independent of how busy the machine is (`None` if unmeasured).
    pub fn deliveries_per_cpu_sec(&self) -> Option<f64> {
        (!self.cpu.is_zero()).then(|| self.stats.deliveries as f64 / self.cpu.as_secs_f64())
    }

    /// The multi-line summary printed by `swarm`.
    pub fn render(&self) -> String {
        let secs = self.wall.as_secs_f64().max(1e-9);
        let s = &self.stats;
        format!(
            "seeds: {} ({} failed) in {:.1}s with {} jobs\n\
             simulated: {} node ticks ({:.0}/s), {} message deliveries ({:.0}/s wall, {} per CPU-second), {} events\n\
             faults injected: {} (crashes {} of which torn {}, partitions {}, pauses {}, leader transfers {}, membership changes {}; {} of them targeted), {} messages lost\n\
             operations: {} ok, {} failed, {} unknown, {} pending; {} checked for linearizability, {} inconclusive keys\n\
             watch: {} events checked, {} streams broken and resumed, {} compaction cancels; {} background writes, {} compactions\n\
             leases: {} keepalives accepted, {} expired, {} revoked by clients; latest expiry {} µs past its deadline (slack {} µs)\n\
             disk: {} whole frames dropped after a torn one; {} frames damaged at rest, {} found at restart, {} repairs completed\n\
             fingerprint: {:016x}",
            self.seeds,
            self.failures.len(),
            secs,
            self.jobs,
            s.ticks,
            s.ticks as f64 / secs,
            s.deliveries,
            self.deliveries_per_sec(),
            self.deliveries_per_cpu_sec().map_or("n/a".to_string(), |d| format!("{d:.0}")),
            s.events,
            s.faults(),
            s.crashes,
            s.torn_writes,
            s.partitions,
            s.pauses,
            s.transfers,
            s.conf_changes,
            s.targeted,
            s.lost,
            self.ops[0],
            self.ops[1],
            self.ops[2],
            self.ops[3],
            self.ops_checked,
            self.inconclusive_keys,
            s.watch_events,
            s.watch_breaks,
            s.watch_cancels,
            s.background_writes,
            s.compactions,
            s.lease_keepalives,
            s.lease_expiries,
            s.lease_revokes,
            s.lease_lateness_max_us,
            crate::checkers::LEASE_EXPIRY_SLACK_US,
            s.torn_frames_after_gap,
            s.rot_damaged,
            s.repairs_found,
            s.repairs_done,
            self.fingerprint,
        )
    }
}

/// The violation a panic inside a run is reported as: the simulator (or
/// the core it drives) broke, at no particular node.
pub fn panic_violation(message: &str) -> Violation {
    Violation::CoreError {
        node: 0,
        error: format!("panic inside the run: {message}"),
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}

/// Runs one seed and summarises it. A panic inside the run is caught and
/// reported as the seed's violation ([`panic_violation`]); the swarm goes
/// on with the next seed.
pub fn run_one(seed: u64, knobs: Knobs, sabotage: Sabotage) -> SeedResult {
    let cpu0 = thread_cpu_time();
    let opts = RunOptions {
        knobs,
        sabotage,
        ..RunOptions::default()
    };
    // A run owns all its state and shares nothing with other runs, so
    // nothing observes it broken after a panic.
    let run =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| crate::run_seed(seed, opts)));
    let cpu = match (cpu0, thread_cpu_time()) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => Duration::ZERO,
    };
    let r = match run {
        Ok(r) => r,
        Err(p) => {
            return SeedResult {
                seed,
                violation: Some(panic_violation(&panic_message(p.as_ref()))),
                stats: RunStats::default(),
                ops: [0; 4],
                ops_checked: 0,
                inconclusive_keys: 0,
                fingerprint: 0,
                cpu,
            }
        }
    };
    let lin = r.linearizability.as_ref();
    SeedResult {
        seed,
        ops: r.history.outcome_counts(),
        ops_checked: lin.map_or(0, |l| l.ops_checked as u64),
        inconclusive_keys: lin.map_or(0, |l| l.inconclusive_keys.len() as u64),
        violation: r.violation,
        stats: r.stats,
        fingerprint: r.fingerprint,
        cpu,
    }
}

/// Runs the swarm; `progress` sees every finished seed and the running
/// summary (on the calling thread).
pub fn run_swarm(
    opts: &SwarmOptions,
    mut progress: impl FnMut(&SeedResult, &SwarmSummary),
) -> SwarmSummary {
    let start = Instant::now();
    let next = AtomicU64::new(opts.seeds.start);
    let stop = AtomicBool::new(false);
    let jobs = opts.jobs.max(1);
    let mut summary = SwarmSummary {
        jobs,
        ..SwarmSummary::default()
    };
    let (tx, rx) = mpsc::channel::<SeedResult>();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let tx = tx.clone();
            let (next, stop) = (&next, &stop);
            scope.spawn(move || loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= opts.seeds.end {
                    return;
                }
                if tx.send(run_one(seed, opts.knobs, opts.sabotage)).is_err() {
                    return;
                }
            });
        }
        drop(tx);
        for r in rx {
            summary.add(&r);
            if opts.time_limit.is_some_and(|l| start.elapsed() >= l) {
                stop.store(true, Ordering::Relaxed);
            }
            summary.wall = start.elapsed();
            progress(&r, &summary);
        }
    });
    summary.wall = start.elapsed();
    summary.failures.sort_by_key(|(s, _)| *s);
    summary
}
