//! Stage-by-stage latency of the write path (issue 18, item 2).
//!
//! One histogram per [`Stage`], exported in `/metrics` as
//! `metalraft_stage_duration_seconds{stage="…"}`. The put stages follow a
//! proposal through the member that leads; `loop_round`,
//! `snapshot_step`, `snapshot_sync` and `wal_purge` are the periodic work that can
//! delay them. `docs/latency-budget.md` shows the breakdown measured with
//! the bench suite.
//!
//! Recording is lock-free (relaxed atomic adds), so a stage costs two
//! `Instant::now()` calls and three atomic adds.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Upper bounds of every stage histogram: 25 µs doubling to 3.28 s
/// (the last slot, `+Inf`, holds anything longer).
pub const STAGE_BUCKETS_SECONDS: [f64; 18] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_2, 0.000_4, 0.000_8, 0.001_6, 0.003_2, 0.006_4, 0.012_8,
    0.025_6, 0.051_2, 0.102_4, 0.204_8, 0.409_6, 0.819_2, 1.638_4, 3.276_8,
];

/// A measured stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// A client's proposal waits in the Raft loop's input queue.
    Queue,
    /// The loop encodes it and hands it to the core (`Replica::propose`).
    Propose,
    /// A persistence batch waits in the WAL writer's queue until the writer
    /// starts the group it belongs to.
    WalHandoff,
    /// One group commit: write + `fdatasync`.
    WalWrite,
    /// The writer's acknowledgement waits for the Raft loop to take it.
    WalAck,
    /// From the proposal to its completion on this member: the local
    /// write, the replication round trip (a follower's receive, write,
    /// `fdatasync` and ack), the commit and the apply.
    Commit,
    /// An apply waits for the store's write lock (held by reads and by a
    /// snapshot step).
    ApplyLockWait,
    /// An apply under the store's write lock.
    Apply,
    /// The completion travels back to the request's task.
    Reply,
    /// The whole proposal as the gRPC handler sees it (`RaftHandle::propose`).
    Total,
    /// One round of the Raft loop (inputs, drive, publish).
    LoopRound,
    /// One step of a snapshot's serialization, on the Raft loop
    /// (`SNAPSHOT_STEP_ITEMS` keys or log records).
    SnapshotStep,
    /// One group commit (write + `fdatasync`, as [`Stage::WalWrite`],
    /// which counts it too) while this member was writing a snapshot file:
    /// the WAL's syncs with and without snapshot I/O on the same disk.
    WalWriteDuringSnapshot,
    /// One sync of the snapshot file (every `SNAPSHOT_SYNC_BYTES` and at
    /// its end), on the snapshot thread.
    SnapshotSync,
    /// The WAL writer deletes the segments behind a snapshot.
    WalPurge,
}

impl Stage {
    /// Every stage, in export order.
    pub const ALL: [Stage; 15] = [
        Stage::Queue,
        Stage::Propose,
        Stage::WalHandoff,
        Stage::WalWrite,
        Stage::WalAck,
        Stage::Commit,
        Stage::ApplyLockWait,
        Stage::Apply,
        Stage::Reply,
        Stage::Total,
        Stage::LoopRound,
        Stage::SnapshotStep,
        Stage::WalWriteDuringSnapshot,
        Stage::SnapshotSync,
        Stage::WalPurge,
    ];

    /// The `stage` label.
    pub fn label(self) -> &'static str {
        match self {
            Stage::Queue => "queue",
            Stage::Propose => "propose",
            Stage::WalHandoff => "wal_handoff",
            Stage::WalWrite => "wal_write_fsync",
            Stage::WalAck => "wal_ack",
            Stage::Commit => "commit_apply",
            Stage::ApplyLockWait => "apply_lock_wait",
            Stage::Apply => "apply",
            Stage::Reply => "reply",
            Stage::Total => "total",
            Stage::LoopRound => "loop_round",
            Stage::SnapshotStep => "snapshot_step",
            Stage::WalWriteDuringSnapshot => "wal_write_fsync_during_snapshot",
            Stage::SnapshotSync => "snapshot_sync",
            Stage::WalPurge => "wal_purge",
        }
    }
}

/// One histogram: non-cumulative counts per bucket, the sum and count.
#[derive(Default, Debug)]
struct Histogram {
    buckets: [AtomicU64; STAGE_BUCKETS_SECONDS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = STAGE_BUCKETS_SECONDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(STAGE_BUCKETS_SECONDS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// The histograms of every [`Stage`] of one member.
#[derive(Default, Debug)]
pub struct Latency {
    stages: [Histogram; Stage::ALL.len()],
    /// Entries per WAL sync and per AppendEntries (shared by the same
    /// threads, rendered with the stages).
    pub batches: crate::batch_sizes::BatchSizes,
    /// Snapshot files being written by this member right now.
    snapshot_files: AtomicU64,
}

/// While alive, this member counts as writing a snapshot file
/// ([`Latency::snapshot_file`]).
#[derive(Debug)]
pub struct SnapshotFileGuard<'a>(&'a Latency);

impl Drop for SnapshotFileGuard<'_> {
    fn drop(&mut self) {
        self.0.snapshot_files.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Latency {
    /// Marks a snapshot file being written until the guard is dropped.
    pub fn snapshot_file(&self) -> SnapshotFileGuard<'_> {
        self.snapshot_files.fetch_add(1, Ordering::Relaxed);
        SnapshotFileGuard(self)
    }

    /// Records one WAL group commit ([`Stage::WalWrite`], and
    /// [`Stage::WalWriteDuringSnapshot`] if a snapshot file is being
    /// written).
    pub fn observe_wal_write(&self, d: Duration) {
        self.observe(Stage::WalWrite, d);
        if self.snapshot_files.load(Ordering::Relaxed) > 0 {
            self.observe(Stage::WalWriteDuringSnapshot, d);
        }
    }

    /// Records one duration of `stage`.
    pub fn observe(&self, stage: Stage, d: Duration) {
        self.stages[stage as usize].observe(d);
    }

    /// Records the time since `since` in `stage`.
    pub fn since(&self, stage: Stage, since: Instant) {
        self.observe(stage, since.elapsed());
    }

    /// Observations of `stage` so far.
    pub fn count(&self, stage: Stage) -> u64 {
        self.stages[stage as usize].count.load(Ordering::Relaxed)
    }

    /// Appends the Prometheus text of every stage, then of the batch sizes
    /// ([`crate::batch_sizes`]), to `out`.
    pub fn render(&self, out: &mut String) {
        self.render_stages(out);
        self.batches.render(out);
    }

    fn render_stages(&self, out: &mut String) {
        let name = "metalraft_stage_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Write-path stages and the periodic work that can delay them (docs/latency-budget.md).\n# TYPE {name} histogram"
        );
        for stage in Stage::ALL {
            let h = &self.stages[stage as usize];
            write_histogram(
                out,
                name,
                &format!("stage=\"{}\"", stage.label()),
                &STAGE_BUCKETS_SECONDS,
                &h.buckets,
                h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
                h.count.load(Ordering::Relaxed),
            );
        }
    }
}

/// Writes one labelled series of a Prometheus histogram: a cumulative
/// `_bucket` line per bound of `bounds`, then `+Inf`, from the
/// non-cumulative `counts` (one more than `bounds`), then `_sum` and
/// `_count`. `label` is `name="value"`.
pub(crate) fn write_histogram(
    out: &mut String,
    name: &str,
    label: &str,
    bounds: &[impl std::fmt::Display],
    counts: &[AtomicU64],
    sum: impl std::fmt::Display,
    count: u64,
) {
    let mut cumulative = 0u64;
    for (le, n) in bounds.iter().zip(counts) {
        cumulative += n.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{label},le=\"{le}\"}} {cumulative}");
    }
    cumulative += counts
        .get(bounds.len())
        .map_or(0, |n| n.load(Ordering::Relaxed));
    let _ = writeln!(out, "{name}_bucket{{{label},le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(out, "{name}_sum{{{label}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{label}}} {count}");
}

/// The value of the first sample line of the exposition `text` that starts
/// with `prefix` (tests of the histograms [`write_histogram`] renders).
#[cfg(test)]
pub(crate) fn sample_value<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line {prefix} in\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket_and_render_cumulatively() {
        let l = Latency::default();
        l.observe(Stage::Apply, Duration::from_micros(10));
        l.observe(Stage::Apply, Duration::from_micros(30));
        l.observe(Stage::Apply, Duration::from_secs(5));
        l.observe(Stage::Queue, Duration::from_millis(2));
        assert_eq!(l.count(Stage::Apply), 3);
        assert_eq!(l.count(Stage::Total), 0);
        let mut out = String::new();
        l.render(&mut out);
        let line = |s: &str| sample_value(&out, s).to_string();
        let b = "metalraft_stage_duration_seconds_bucket";
        assert_eq!(
            line(&format!("{b}{{stage=\"apply\",le=\"0.000025\"}}")),
            "1"
        );
        assert_eq!(line(&format!("{b}{{stage=\"apply\",le=\"0.00005\"}}")), "2");
        assert_eq!(line(&format!("{b}{{stage=\"apply\",le=\"3.2768\"}}")), "2");
        assert_eq!(line(&format!("{b}{{stage=\"apply\",le=\"+Inf\"}}")), "3");
        assert_eq!(line(&format!("{b}{{stage=\"queue\",le=\"0.0016\"}}")), "0");
        assert_eq!(line(&format!("{b}{{stage=\"queue\",le=\"0.0032\"}}")), "1");
        assert_eq!(
            line("metalraft_stage_duration_seconds_count{stage=\"apply\"}"),
            "3"
        );
        for stage in Stage::ALL {
            assert!(out.contains(&format!("stage=\"{}\"", stage.label())));
        }
    }
}
