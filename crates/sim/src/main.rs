//! `metalraft-sim`: replay one seed or run a swarm. See the crate README.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use metalraft_sim::swarm::{run_swarm, SwarmOptions};
use metalraft_sim::{html, run_seed, Knobs, RunOptions, Sabotage};

const USAGE: &str = "usage:
  metalraft-sim run --seed N [--no-membership] [--snapshots] [--leases] [--torn-sectors] [--bit-rot] [--trace] [--history] [--html FILE]
                    [--lease-bug half-ttl|promote-from-epoch|never-expire]   (replays tests/lease_teeth.rs)
                    [--no-vote-barrier]   (with --bit-rot: replays tests/repair_teeth.rs)
  metalraft-sim swarm --seeds A..B [--no-membership] [--snapshots] [--leases] [--torn-sectors] [--bit-rot] [--jobs J] [--minutes M]
(membership changes are on by default; --membership is accepted and changes nothing)";

/// Default worker threads of `swarm`.
const DEFAULT_JOBS: usize = 2;
/// Progress redraw interval on a terminal.
const PROGRESS_TTY_EVERY: Duration = Duration::from_millis(500);
/// Progress line interval when stderr is a log.
const PROGRESS_LOG_EVERY: Duration = Duration::from_secs(10);
/// Width of the progress bar.
const PROGRESS_BAR_WIDTH: u64 = 30;

fn replay_command(seed: u64, knobs: Knobs) -> String {
    format!(
        "cargo run --release -p metalraft-sim -- run --seed {seed}{} --trace",
        knobs.flags()
    )
}

#[derive(Debug)]
enum CliError {
    Usage(String),
    Io(std::io::Error),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Usage(m) => write!(f, "{m}\n{USAGE}"),
            CliError::Io(e) => write!(f, "i/o error: {e}"),
        }
    }
}

fn value<T: std::str::FromStr>(args: &[String], i: usize, flag: &str) -> Result<T, CliError> {
    args.get(i + 1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| CliError::Usage(format!("{flag} needs a valid value")))
}

fn run(args: &[String]) -> Result<bool, CliError> {
    let mut seed = None;
    let mut knobs = Knobs::default();
    let (mut trace, mut history, mut html_file) = (false, false, None::<String>);
    let mut sabotage = Sabotage::None;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--seed" => {
                seed = Some(value::<u64>(args, i, "--seed")?);
                i += 1;
            }
            "--trace" => trace = true,
            "--membership" => knobs.membership = true,
            "--no-membership" => knobs.membership = false,
            "--snapshots" => knobs.snapshots = true,
            "--leases" => knobs.leases = true,
            "--torn-sectors" => knobs.torn_sectors = true,
            "--bit-rot" => knobs.bit_rot = true,
            "--no-vote-barrier" => sabotage = Sabotage::NoVoteBarrier,
            "--history" => history = true,
            "--lease-bug" => {
                let name = value::<String>(args, i, "--lease-bug")?;
                sabotage = Sabotage::from_lease_bug_name(&name).ok_or_else(|| {
                    CliError::Usage(format!("--lease-bug: unknown defect {name:?}"))
                })?;
                i += 1;
            }
            "--html" => {
                html_file = Some(value::<String>(args, i, "--html")?);
                i += 1;
            }
            a => return Err(CliError::Usage(format!("unknown argument {a}"))),
        }
        i += 1;
    }
    let seed = seed.ok_or_else(|| CliError::Usage("run needs --seed N".into()))?;
    let opts = RunOptions {
        trace,
        timeline: html_file.is_some(),
        knobs,
        sabotage,
    };
    let r = run_seed(seed, opts);
    let mut out = std::io::stdout().lock();
    let w = |out: &mut std::io::StdoutLock<'_>, s: &str| {
        out.write_all(s.as_bytes()).map_err(CliError::Io)
    };
    w(&mut out, &format!("config: {}\n", r.config.summary()))?;
    if let Some(t) = &r.trace {
        w(&mut out, t)?;
    }
    if history {
        for op in &r.history.ops {
            w(&mut out, &format!("{op}\n"))?;
        }
    }
    let s = &r.stats;
    let [ok, failed, unknown, pending] = r.history.outcome_counts();
    w(
        &mut out,
        &format!(
            "stats: {} ticks, {} deliveries, {} lost, {} crashes ({} torn), {} partitions, {} pauses, {} transfers, {} membership changes, {} targeted faults, {} fsyncs, {} leader terms, {}us simulated\n\
             ops: {ok} ok, {failed} failed, {unknown} unknown, {pending} pending\n\
             watch: {} events checked, {} streams broken and resumed, {} compaction cancels; {} background writes, {} compactions\n\
             leases: {} keepalives accepted, {} expired, {} revoked by clients; latest expiry {} µs past its deadline\n\
             disk: {} whole frames dropped after a torn one; {} frames damaged at rest, {} found at restart, {} repairs completed\n\
             fingerprint: {:016x}\n",
            s.ticks, s.deliveries, s.lost, s.crashes, s.torn_writes, s.partitions, s.pauses, s.transfers, s.conf_changes, s.targeted, s.fsyncs,
            s.leader_terms, s.sim_time_us, s.watch_events, s.watch_breaks, s.watch_cancels, s.background_writes, s.compactions,
            s.lease_keepalives, s.lease_expiries, s.lease_revokes, s.lease_lateness_max_us,
            s.torn_frames_after_gap, s.rot_damaged, s.repairs_found, s.repairs_done, r.fingerprint
        ),
    )?;
    if let Some(file) = &html_file {
        std::fs::write(file, html::render(&r)).map_err(CliError::Io)?;
        w(&mut out, &format!("timeline written to {file}\n"))?;
    }
    match &r.violation {
        None => {
            w(&mut out, "result: OK\n")?;
            Ok(true)
        }
        Some(v) => {
            w(
                &mut out,
                &format!(
                    "result: VIOLATION\n{v}\nreplay: {}\n",
                    replay_command(seed, knobs)
                ),
            )?;
            Ok(false)
        }
    }
}

fn swarm(args: &[String]) -> Result<bool, CliError> {
    let mut seeds = None;
    let mut knobs = Knobs::default();
    let mut jobs = DEFAULT_JOBS;
    let mut time_limit = None;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--seeds" => {
                let v: String = value(args, i, "--seeds")?;
                let (a, b) = v
                    .split_once("..")
                    .ok_or_else(|| CliError::Usage("--seeds wants A..B".into()))?;
                let (a, b) = (a.parse::<u64>(), b.parse::<u64>());
                match (a, b) {
                    (Ok(a), Ok(b)) if a < b => seeds = Some(a..b),
                    _ => return Err(CliError::Usage("--seeds wants A..B with A < B".into())),
                }
                i += 1;
            }
            "--membership" => knobs.membership = true,
            "--no-membership" => knobs.membership = false,
            "--snapshots" => knobs.snapshots = true,
            "--leases" => knobs.leases = true,
            "--torn-sectors" => knobs.torn_sectors = true,
            "--bit-rot" => knobs.bit_rot = true,
            "--jobs" => {
                jobs = value(args, i, "--jobs")?;
                i += 1;
            }
            "--minutes" => {
                let m: f64 = value(args, i, "--minutes")?;
                if !m.is_finite() || m <= 0.0 {
                    return Err(CliError::Usage("--minutes must be positive".into()));
                }
                time_limit = Some(Duration::from_secs_f64(m * 60.0));
                i += 1;
            }
            a => return Err(CliError::Usage(format!("unknown argument {a}"))),
        }
        i += 1;
    }
    let seeds = seeds.ok_or_else(|| CliError::Usage("swarm needs --seeds A..B".into()))?;
    let total = seeds.end - seeds.start;
    let opts = SwarmOptions {
        seeds,
        jobs,
        time_limit,
        knobs,
        sabotage: Default::default(),
    };
    let mut last_print = Duration::ZERO;
    let tty = std::io::stderr().is_terminal();
    // A terminal gets a redrawn bar; a log gets a line every few seconds.
    let every = if tty {
        PROGRESS_TTY_EVERY
    } else {
        PROGRESS_LOG_EVERY
    };
    let summary = run_swarm(&opts, |r, s| {
        if let Some(v) = &r.violation {
            eprintln!(
                "\nseed {} FAILED: {v}\n  replay: {}",
                r.seed,
                replay_command(r.seed, knobs)
            );
        }
        if s.wall >= last_print + every || s.seeds == total {
            last_print = s.wall;
            let filled = (s.seeds * PROGRESS_BAR_WIDTH / total.max(1)) as usize;
            eprint!(
                "{}[{:<w$}] {}/{} seeds, {} failed, {:.0} deliveries/s{}",
                if tty { "\r" } else { "" },
                "#".repeat(filled),
                s.seeds,
                total,
                s.failures.len(),
                s.deliveries_per_sec(),
                if tty { "" } else { "\n" },
                w = PROGRESS_BAR_WIDTH as usize
            );
        }
    });
    eprintln!();
    println!("{}", summary.render());
    if summary.failures.is_empty() {
        println!("result: OK");
        Ok(true)
    } else {
        println!("result: {} seeds FAILED", summary.failures.len());
        for (seed, v) in &summary.failures {
            println!(
                "  seed {seed}: {}",
                v.to_string().lines().next().unwrap_or("")
            );
            println!("    replay: {}", replay_command(*seed, knobs));
        }
        Ok(false)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => run(&args[1..]),
        Some("swarm") => swarm(&args[1..]),
        _ => Err(CliError::Usage("expected a subcommand".into())),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}
