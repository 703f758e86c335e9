//! `metalraft-model check`: runs the model checker at a bound and prints
//! state counts, run time and any counterexample as a short trace.

use std::process::ExitCode;
use std::time::Instant;

use metalraft_model::{Bounds, RaftModel, Variant};
use stateright::{Checker, HasDiscoveries, Model};

const USAGE: &str =
    "usage: metalraft-model check [--bound quick|quick-power-loss|deep] [--variant basic|membership|replace|snapshot]
       [--pre-vote] [--batch N] [--from figure8|leader|joint|replace|snapshot] [--dfs] [--threads N] [--depth N (0: none)] [--term N] [--crashes N]
       [--proposals N] [--reads N] [--drops N] [--dups N] [--heartbeats N]
       [--log N] [--snapshots N] [--stop-on-failure] [--safety-only]";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn num<T: std::str::FromStr>(v: Option<&String>, flag: &str) -> Result<T, String> {
    v.and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{flag} needs a number"))
}

fn run(args: Vec<String>) -> Result<ExitCode, String> {
    let mut it = args.iter();
    if it.next().map(String::as_str) != Some("check") {
        return Err("expected the `check` command".into());
    }
    let mut bounds = Bounds::QUICK;
    let mut variant = Variant::Basic;
    let mut pre_vote = false;
    let mut batch = 1usize;
    let mut prefix = Vec::new();
    let mut dfs = false;
    let mut threads = 1usize;
    let mut stop = false;
    let mut safety_only = false;
    while let Some(flag) = it.next() {
        let b = &mut bounds;
        match flag.as_str() {
            "--bound" => match it.next().map(String::as_str) {
                Some("quick") => *b = Bounds::QUICK,
                Some("deep") => {
                    // From a leader with a commit (a later --from overrides).
                    *b = Bounds::DEEP;
                    prefix = RaftModel::leader_prefix();
                }
                Some("quick-power-loss") => *b = Bounds::QUICK_POWER_LOSS,
                _ => return Err("--bound is quick, quick-power-loss or deep".into()),
            },
            "--variant" => {
                variant = match it.next().map(String::as_str) {
                    Some("basic") => Variant::Basic,
                    Some("membership") => Variant::Membership,
                    Some("replace") => Variant::Replace,
                    Some("snapshot") => Variant::Snapshot,
                    _ => return Err("--variant is basic, membership, replace or snapshot".into()),
                }
            }
            "--pre-vote" => pre_vote = true,
            "--from" => match it.next().map(String::as_str) {
                Some("figure8") => prefix = RaftModel::figure8_prefix(),
                Some("leader") => prefix = RaftModel::leader_prefix(),
                Some("snapshot") => prefix = RaftModel::snapshot_prefix(),
                Some("joint") => prefix = RaftModel::joint_prefix(),
                Some("replace") => prefix = RaftModel::replace_prefix(),
                _ => return Err("--from is figure8, leader, joint, replace or snapshot".into()),
            },
            "--batch" => batch = num(it.next(), flag)?,
            "--dfs" => dfs = true,
            "--stop-on-failure" => stop = true,
            // For bounds too shallow to reach a commit (deep searches from
            // the start): reachability is reported, not required.
            "--safety-only" => safety_only = true,
            "--threads" => threads = num(it.next(), flag)?,
            "--depth" => b.max_depth = num(it.next(), flag)?,
            "--term" => b.max_term = num(it.next(), flag)?,
            "--crashes" => b.max_crashes = num(it.next(), flag)?,
            "--proposals" => b.max_proposals = num(it.next(), flag)?,
            "--reads" => b.max_reads = num(it.next(), flag)?,
            "--drops" => b.max_drops = num(it.next(), flag)?,
            "--dups" => b.max_dups = num(it.next(), flag)?,
            "--heartbeats" => b.max_heartbeats = num(it.next(), flag)?,
            "--log" => b.max_log = num(it.next(), flag)?,
            "--snapshots" => b.max_snapshots = num(it.next(), flag)?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let mut model = RaftModel::new(variant, bounds);
    model.pre_vote = pre_vote;
    model.entries_per_msg = batch;
    for step in &prefix {
        println!("prefix: {step:?}");
    }
    model.prefix = prefix;
    println!("variant {variant:?}, pre-vote {pre_vote}, entries per message {batch}, {bounds:?}");
    let start = Instant::now();
    let mut builder = model.clone().checker_at_bound().threads(threads);
    if stop {
        builder = builder.finish_when(HasDiscoveries::AnyFailures);
    }
    let failed = if dfs {
        report(&model, builder.spawn_dfs().join(), start, safety_only)
    } else {
        report(&model, builder.spawn_bfs().join(), start, safety_only)
    };
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Prints counts, time and every discovery; returns whether the check failed.
fn report(
    model: &RaftModel,
    checker: impl Checker<RaftModel>,
    start: Instant,
    safety_only: bool,
) -> bool {
    let secs = start.elapsed().as_secs_f64();
    println!(
        "states: {} generated, {} unique, max depth {}, {:.1} s",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        secs
    );
    let mut failed = false;
    for p in model.properties() {
        let found = checker.discovery(p.name);
        match (found, p.expectation.discovery_is_failure()) {
            (None, true) => println!("ok      {}", p.name),
            (Some(_), false) => println!("reached {}", p.name),
            (None, false) if safety_only => {
                println!("not reached {} (--safety-only)", p.name);
            }
            (None, false) => {
                failed = true;
                println!(
                    "NOT REACHED {} (the bound is too small to say anything)",
                    p.name
                );
            }
            (Some(path), true) => {
                failed = true;
                let actions = path.into_actions();
                println!(
                    "VIOLATED {}: counterexample of {} steps",
                    p.name,
                    actions.len()
                );
                for (i, a) in actions.iter().enumerate() {
                    println!("  {:>2}. {}", i + 1, model.format_action(a));
                }
            }
        }
    }
    failed
}
