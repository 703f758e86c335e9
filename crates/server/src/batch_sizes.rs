//! Batch sizes of the write path (issue 18, item 3): how many log entries
//! one `fdatasync` of the WAL makes durable, and how many one AppendEntries
//! message carries to a follower. Exported in `/metrics` as
//! `metalraft_batch_entries{batch="wal_sync"|"append_entries"}`, a
//! histogram over [`BATCH_BUCKETS`]; `docs/latency-budget.md` shows them at
//! 1, 64 and 256 clients.
//!
//! Recording is lock-free (relaxed atomic adds), like the stage histograms
//! of [`crate::latency`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the batch histograms: 1 doubling to 4,096 entries (the
/// last slot, `+Inf`, holds anything bigger).
pub const BATCH_BUCKETS: [u64; 13] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

/// The family name in `/metrics`.
pub const BATCH_METRIC: &str = "metalraft_batch_entries";

/// A measured batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batch {
    /// Entries made durable by one WAL group commit that synced (a sync
    /// that only wrote the hard state counts 0).
    WalSync,
    /// Entries of one AppendEntries message this member sent (empty ones —
    /// probes and commit updates — are not counted).
    AppendEntries,
}

impl Batch {
    /// Every batch, in export order.
    pub const ALL: [Batch; 2] = [Batch::WalSync, Batch::AppendEntries];

    /// The `batch` label.
    pub fn label(self) -> &'static str {
        match self {
            Batch::WalSync => "wal_sync",
            Batch::AppendEntries => "append_entries",
        }
    }
}

/// One histogram: non-cumulative counts per bucket, the sum and count.
#[derive(Default, Debug)]
struct Counts {
    buckets: [AtomicU64; BATCH_BUCKETS.len() + 1],
    sum: AtomicU64,
    count: AtomicU64,
}

/// The histogram of every [`Batch`] of one member.
#[derive(Default, Debug)]
pub struct BatchSizes {
    batches: [Counts; Batch::ALL.len()],
}

impl BatchSizes {
    /// Records one batch of `entries` entries.
    pub fn observe(&self, batch: Batch, entries: usize) {
        let n = entries as u64;
        let h = &self.batches[batch as usize];
        let slot = BATCH_BUCKETS
            .iter()
            .position(|b| n <= *b)
            .unwrap_or(BATCH_BUCKETS.len());
        h.buckets[slot].fetch_add(1, Ordering::Relaxed);
        h.sum.fetch_add(n, Ordering::Relaxed);
        h.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Batches of `batch` recorded so far.
    pub fn count(&self, batch: Batch) -> u64 {
        self.batches[batch as usize].count.load(Ordering::Relaxed)
    }

    /// Appends the Prometheus text of every batch histogram to `out`.
    pub fn render(&self, out: &mut String) {
        let name = BATCH_METRIC;
        let _ = writeln!(
            out,
            "# HELP {name} Log entries per WAL fdatasync and per AppendEntries message sent (docs/latency-budget.md).\n# TYPE {name} histogram"
        );
        for batch in Batch::ALL {
            let h = &self.batches[batch as usize];
            crate::latency::write_histogram(
                out,
                name,
                &format!("batch=\"{}\"", batch.label()),
                &BATCH_BUCKETS,
                &h.buckets,
                h.sum.load(Ordering::Relaxed),
                h.count.load(Ordering::Relaxed),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_land_in_their_bucket_and_render_cumulatively() {
        let b = BatchSizes::default();
        for n in [1, 3, 4, 5, 10_000] {
            b.observe(Batch::WalSync, n);
        }
        b.observe(Batch::AppendEntries, 64);
        assert_eq!(b.count(Batch::WalSync), 5);
        assert_eq!(b.count(Batch::AppendEntries), 1);
        let mut out = String::new();
        b.render(&mut out);
        let value = |s: &str| -> u64 { crate::latency::sample_value(&out, s).parse().unwrap() };
        let wal = "metalraft_batch_entries_bucket{batch=\"wal_sync\",le=";
        assert_eq!(value(&format!("{wal}\"1\"}}")), 1);
        assert_eq!(value(&format!("{wal}\"2\"}}")), 1);
        assert_eq!(value(&format!("{wal}\"4\"}}")), 3);
        assert_eq!(value(&format!("{wal}\"8\"}}")), 4);
        assert_eq!(value(&format!("{wal}\"4096\"}}")), 4);
        assert_eq!(value(&format!("{wal}\"+Inf\"}}")), 5);
        assert_eq!(
            value("metalraft_batch_entries_sum{batch=\"wal_sync\"}"),
            10_013
        );
        let app = "metalraft_batch_entries_bucket{batch=\"append_entries\",le=";
        assert_eq!(value(&format!("{app}\"32\"}}")), 0);
        assert_eq!(value(&format!("{app}\"64\"}}")), 1);
        assert_eq!(
            value("metalraft_batch_entries_count{batch=\"append_entries\"}"),
            1
        );
    }
}
