//! `metalraft-fw bench` as a user runs it: `cluster up`, `bench`, `cluster
//! down`, all through the command line. Checks that every window commits,
//! loses and fails nothing, that the report carries what the README says it
//! prints (latencies, the QEMU processes' CPU, every node's counters), and
//! that the largest node's measured RAM peak is within the budget. The
//! throughput itself is a benchmark, not asserted here.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{pick_ports, test_dir};
use metalraft_fw::cluster::ClusterSpec;
use metalraft_fw::firmware;

/// Nodes of the cluster (the README's default).
const NODES: u8 = 5;
/// Seconds per window: enough for a few hundred commits under QEMU.
const SECONDS: &str = "1";
/// The windows run: one request in flight, then several.
const WINDOWS: &str = "1,16";

fn fw(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_metalraft-fw"))
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("the binary runs")
}

/// Brings the cluster down when the test ends, also when it fails.
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = fw(self.0, &["cluster", "down"]);
    }
}

/// The number right after `word` in `line`.
fn number_after(line: &str, word: &str) -> Option<f64> {
    let rest = &line[line.find(word)? + word.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn bench_reports_every_window_and_the_ram_peak() {
    let elf =
        firmware::build().expect("firmware builds (needs the riscv32imac-unknown-none-elf target)");
    let dir = test_dir("fw-bench");
    let spec = pick_ports(|p| ClusterSpec::new(&dir, NODES, p, &elf).unwrap());
    let base = spec.ports.base.to_string();
    let up = fw(&dir, &["cluster", "up", "--no-build", "--base-port", &base]);
    let _down = Down(&dir);
    assert!(up.status.success(), "cluster up: {up:?}");

    let out = fw(&dir, &["bench", "--seconds", SECONDS, "--windows", WINDOWS]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bench: {out:?}");
    eprintln!("{text}");

    let windows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("in flight"))
        .collect();
    assert_eq!(windows.len(), 2, "one line per window: {text}");
    for w in &windows {
        let rate = number_after(w, ":").expect("commits/s");
        assert!(rate > 0.0, "the window committed: {w}");
        for part in ["latency p50", "p99", "errors 0 lost 0", "QEMU CPU"] {
            assert!(w.contains(part), "{part:?} in {w}");
        }
    }
    // The nodes' counters per window (a node whose status request timed
    // out on a loaded machine is left out of the report, so not all five
    // are required; the leader's is).
    let leader_lines = text
        .lines()
        .filter(|l| l.trim_start().starts_with("node ") && l.contains(" leader "))
        .count();
    assert_eq!(
        leader_lines,
        windows.len(),
        "the leader's counters per window: {text}"
    );

    let ram = text
        .lines()
        .find(|l| l.starts_with("RAM peak"))
        .expect("the RAM peak line");
    // "...largest node: node N <peak> B = <static> + <stack> + <heap> (...)"
    let peak: u64 = ram
        .split(": node ")
        .nth(1)
        .and_then(|after| after.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .expect("the peak in bytes");
    assert!(peak > 0, "{ram}");
    assert!(
        peak <= metalraft_fw::bench::RAM_BUDGET_BYTES && !ram.contains("OVER"),
        "RAM peak within the budget: {ram}"
    );
}
