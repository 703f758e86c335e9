//! Benchmarks of MetalRaft against its peers, side by side in one run.
//!
//! `metalraft-bench core` runs metalraft-core and tikv's raft-rs in the same
//! harness (see `README.md`) and prints a markdown table of proposals/s and
//! their ratio. `metalraft-bench server` puts a 3-member metalraft cluster
//! next to a 3-member etcd cluster (`src/server/`). `all` runs both.

mod metal;
mod raftrs;
mod server;
mod workload;

use std::process::ExitCode;
use std::time::Instant;

use metal::MetalCluster;
use raftrs::RaftRsCluster;
use workload::{make_payload, Cluster, PAYLOAD_BYTES};

const USAGE: &str = "\
usage: metalraft-bench core [options]
       metalraft-bench server [options]   (metalraft-bench server --help)
       metalraft-bench all [--quick]      core, then server


Runs metalraft-core and raft-rs 0.7 side by side: an in-process 3-node
cluster in one thread, N proposals of 256 bytes per run, for each batch size.

options:
  --quick            smoke run: 10000 proposals, 2 measured runs each
  --proposals N      proposals per measured run (default 100000)
  --reps N           measured runs per library and batch size (default 5)
  --batches A,B,..   proposals submitted per round (default 1,16,256)
  --only LIB         run one library only (metalraft | raft-rs), e.g. under
                     valgrind --tool=callgrind; no warm-up, no ratio
";

/// Which libraries a run measures.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Only {
    Both,
    Metal,
    RaftRs,
}

struct Opts {
    proposals: u64,
    reps: usize,
    batches: Vec<u64>,
    only: Only,
    quick: bool,
}

fn parse_args(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        proposals: 100_000,
        reps: 5,
        batches: vec![1, 16, 256],
        only: Only::Both,
        quick: false,
    };
    let (mut proposals, mut reps) = (None, None);
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("core") => {}
        Some("-h" | "--help") => return Err(String::new()),
        Some(other) => return Err(format!("unknown benchmark {other:?}")),
        None => return Err("which benchmark? (core, server or all)".into()),
    }
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--quick" => o.quick = true,
            "--proposals" => proposals = Some(parse_pos(&value(a)?, a)?),
            "--reps" => reps = Some(parse_pos(&value(a)?, a)? as usize),
            "--batches" => {
                o.batches = value(a)?
                    .split(',')
                    .map(|b| parse_pos(b, a))
                    .collect::<Result<_, _>>()?;
            }
            "--only" => {
                o.only = match value(a)?.as_str() {
                    "metalraft" => Only::Metal,
                    "raft-rs" => Only::RaftRs,
                    other => return Err(format!("--only: unknown library {other:?}")),
                }
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if o.quick {
        o.proposals = 10_000;
        o.reps = 2;
    }
    o.proposals = proposals.unwrap_or(o.proposals);
    o.reps = reps.unwrap_or(o.reps);
    Ok(o)
}

fn parse_pos(s: &str, name: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{name}: expected a positive integer, got {s:?}")),
    }
}

/// One measured run.
struct Sample {
    /// By wall-clock time.
    proposals_per_sec: f64,
    /// By this thread's CPU time (user + system).
    proposals_per_cpu_sec: f64,
    msgs_per_proposal: f64,
}

/// Builds a fresh cluster (not timed), then times submitting `total`
/// proposals `batch` at a time, each batch driven until it is committed,
/// applied and checked on all three nodes. The cluster is dropped after the
/// clock stops.
fn run<C: Cluster>(total: u64, batch: u64) -> Sample {
    let mut c = C::new();
    let msgs_before = c.messages();
    let start = Instant::now();
    let cpu_start = cpu_time::ThreadTime::now();
    drive_workload(&mut c, total, batch);
    let cpu_secs = cpu_start.elapsed().as_secs_f64();
    let secs = start.elapsed().as_secs_f64();
    let msgs = c.messages() - msgs_before;
    drop(c);
    Sample {
        proposals_per_sec: total as f64 / secs,
        proposals_per_cpu_sec: total as f64 / cpu_secs,
        msgs_per_proposal: msgs as f64 / total as f64,
    }
}

/// The timed part of a run; a separate symbol so that a profiler can count
/// it alone (`valgrind --tool=callgrind --toggle-collect='*drive_workload*'`).
#[inline(never)]
fn drive_workload<C: Cluster>(c: &mut C, total: u64, batch: u64) {
    let mut seq = 0;
    while seq < total {
        let n = batch.min(total - seq);
        for _ in 0..n {
            c.propose(make_payload(seq));
            seq += 1;
        }
        c.pump();
        let applied = c.applied();
        assert_eq!(
            applied,
            [seq; 3],
            "{}: proposals applied per node after a round",
            C::NAME
        );
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty());
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Results of one library at one batch size.
struct Row {
    samples: Vec<Sample>,
}

impl Row {
    fn median(&self) -> f64 {
        median(self.samples.iter().map(|s| s.proposals_per_sec).collect())
    }
    fn median_cpu(&self) -> f64 {
        median(
            self.samples
                .iter()
                .map(|s| s.proposals_per_cpu_sec)
                .collect(),
        )
    }
    fn range(&self) -> (f64, f64) {
        let it = self.samples.iter().map(|s| s.proposals_per_sec);
        (it.clone().fold(f64::MAX, f64::min), it.fold(0.0, f64::max))
    }
    fn msgs(&self) -> f64 {
        self.samples
            .first()
            .map_or(f64::NAN, |s| s.msgs_per_proposal)
    }
    fn cell(&self) -> String {
        let (lo, hi) = self.range();
        format!(
            "{} ({}–{})",
            thousands(self.median()),
            thousands(lo),
            thousands(hi)
        )
    }
}

fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x);
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Today's date (UTC) as YYYY-MM-DD, from the days since 1970-01-01
/// (proleptic Gregorian calendar, 400-year eras).
fn utc_date() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn core_bench(o: &Opts) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("## metalraft-core vs raft-rs 0.7: in-process 3-node cluster, one thread");
    println!();
    let schedule = match o.only {
        Only::Both => format!(
            "median of {} runs per cell (min–max in brackets), run alternately (A B A B) \
             after one warm-up run each at {} proposals",
            o.reps,
            warmup(o.proposals)
        ),
        _ => format!("median of {} runs, one library only, no warm-up", o.reps),
    };
    println!(
        "{} UTC; {cpus} CPUs ({}); {} proposals of {PAYLOAD_BYTES} B per run; {schedule}.",
        utc_date(),
        cpu_model(),
        o.proposals,
    );
    println!(
        "Payload: metalraft-core `BytesPayload(bytes::Bytes)`, raft-rs `Entry.data: bytes::Bytes`; \
         storage: each library's `MemStorage`; raft-rs with `batch_append`, protobuf-codec, \
         slog discard logger."
    );
    println!();
    match o.only {
        Only::Both => {
            println!(
                "| batch | metalraft-core proposals/s | raft-rs 0.7 proposals/s | \
                 ratio metalraft/raft-rs | ratio by thread CPU time | msgs/proposal metalraft / raft-rs |"
            );
            println!("|---:|---:|---:|---:|---:|---:|");
        }
        _ => {
            println!("| library | batch | proposals/s | msgs/proposal |");
            println!("|---|---:|---:|---:|");
        }
    }
    for &batch in &o.batches {
        let mut metal = Row {
            samples: Vec::new(),
        };
        let mut peer = Row {
            samples: Vec::new(),
        };
        match o.only {
            Only::Both => {
                run::<MetalCluster>(warmup(o.proposals), batch);
                run::<RaftRsCluster>(warmup(o.proposals), batch);
                for _ in 0..o.reps {
                    metal.samples.push(run::<MetalCluster>(o.proposals, batch));
                    peer.samples.push(run::<RaftRsCluster>(o.proposals, batch));
                }
                println!(
                    "| {batch} | {} | {} | **{:.2}×** | {:.2}× | {:.2} / {:.2} |",
                    metal.cell(),
                    peer.cell(),
                    metal.median() / peer.median(),
                    metal.median_cpu() / peer.median_cpu(),
                    metal.msgs(),
                    peer.msgs(),
                );
            }
            Only::Metal | Only::RaftRs => {
                let (row, name) = if o.only == Only::Metal {
                    for _ in 0..o.reps {
                        metal.samples.push(run::<MetalCluster>(o.proposals, batch));
                    }
                    (&metal, MetalCluster::NAME)
                } else {
                    for _ in 0..o.reps {
                        peer.samples.push(run::<RaftRsCluster>(o.proposals, batch));
                    }
                    (&peer, RaftRsCluster::NAME)
                };
                println!("| {name} | {batch} | {} | {:.2} |", row.cell(), row.msgs());
            }
        }
    }
    println!();
    println!("Every applied entry was checked on all 3 nodes: contiguous indices, proposals in order, payload intact.");
}

/// Proposals in the warm-up run.
fn warmup(proposals: u64) -> u64 {
    (proposals / 5).max(1)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("server") => return server_main(&args[1..]),
        Some("all") => {
            let quick = args[1..].iter().any(|a| a == "--quick");
            let core_args: Vec<String> = std::iter::once("core".to_string())
                .chain(quick.then(|| "--quick".to_string()))
                .collect();
            let rc = core_main(&core_args);
            if rc != ExitCode::SUCCESS {
                return rc;
            }
            println!();
            return server_main(&args[1..]);
        }
        _ => {}
    }
    core_main(&args)
}

fn core_main(args: &[String]) -> ExitCode {
    match parse_args(args) {
        Ok(o) => {
            core_bench(&o);
            ExitCode::SUCCESS
        }
        Err(e) if e.is_empty() => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}\n");
            eprint!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn server_main(args: &[String]) -> ExitCode {
    match server::parse_args(args) {
        Ok(o) => match server::main(&o) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) if e.is_empty() => {
            print!("{}", server::USAGE);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}\n");
            eprint!("{}", server::USAGE);
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_harnesses_commit_and_apply_everything() {
        for batch in [1, 7, 256] {
            let m = run::<MetalCluster>(600, batch);
            let r = run::<RaftRsCluster>(600, batch);
            assert!(m.proposals_per_sec > 0.0 && r.proposals_per_sec > 0.0);
        }
    }

    #[test]
    fn args() {
        let a = |s: &str| parse_args(&s.split(' ').map(String::from).collect::<Vec<_>>());
        let o = a("core --quick").unwrap();
        assert_eq!((o.proposals, o.reps), (10_000, 2));
        let o = a("core --batches 4,8 --proposals 50 --only raft-rs").unwrap();
        assert_eq!(o.batches, vec![4, 8]);
        assert_eq!(o.proposals, 50);
        assert!(o.only == Only::RaftRs);
        assert!(a("core --batches 0").is_err());
        assert!(a("bogus").is_err());
        assert_eq!(a("--help").err(), Some(String::new()));
    }

    #[test]
    fn date_is_gregorian() {
        let d = utc_date();
        assert_eq!(d.len(), 10);
        assert!(d.starts_with("20"));
    }
}
