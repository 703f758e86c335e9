//! The write path's stage histograms of a metalraft member
//! (`metalraft_stage_duration_seconds{stage="…"}` in its `/metrics`), read
//! before and after a measured run; the difference is that run's breakdown
//! (docs/latency-budget.md).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The histogram family the server exports.
pub const STAGE_METRIC: &str = "metalraft_stage_duration_seconds";
/// The snapshot counter the server exports.
pub const SNAPSHOTS_METRIC: &str = "metalraft_snapshots_total";
/// etcd 3.4's count of snapshots saved (the observations of its snapshot
/// save histogram): what [`Scrape::snapshots`] holds for etcd.
pub const ETCD_SNAPSHOTS_METRIC: &str = "etcd_debugging_snap_save_total_duration_seconds_count";
/// Longest a scrape may take.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// One scrape: per stage, the cumulative bucket counts in order of their
/// upper bound (`f64::INFINITY` last), and the snapshots taken so far
/// (metalraft's [`SNAPSHOTS_METRIC`] or etcd's [`ETCD_SNAPSHOTS_METRIC`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scrape {
    pub stages: BTreeMap<String, Vec<(f64, u64)>>,
    /// The same for the batch sizes ([`BATCH_METRIC`], entries), and each
    /// batch's total entries.
    pub batches: BTreeMap<String, Vec<(f64, u64)>>,
    pub batch_sums: BTreeMap<String, u64>,
    pub snapshots: u64,
}

/// The batch-size histogram family the server exports (entries per WAL
/// sync and per AppendEntries message).
pub const BATCH_METRIC: &str = "metalraft_batch_entries";

/// One bucket line of a labelled histogram: `rest` is what follows
/// `<family>_bucket{<label>="`, e.g. `queue",le="0.000025"} 12`.
fn bucket(rest: &str) -> Option<(String, f64, u64)> {
    let (name, rest) = rest.split_once("\",le=\"")?;
    let (le, count) = rest.split_once("\"} ")?;
    let le = if le == "+Inf" {
        f64::INFINITY
    } else {
        le.parse::<f64>().ok()?
    };
    Some((name.to_string(), le, count.trim().parse::<u64>().ok()?))
}

/// `GET /metrics` over HTTP/1.1 from `url` (`http://host:port`).
pub fn fetch(url: &str) -> Result<String, String> {
    let addr = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: not an http:// URL"))?
        .trim_end_matches('/');
    let sock = addr
        .parse::<std::net::SocketAddr>()
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut s = TcpStream::connect_timeout(&sock, SCRAPE_TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(SCRAPE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&body).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{url}: no HTTP header end"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "{url}: {}",
            head.lines().next().unwrap_or_default()
        ));
    }
    Ok(rest.to_string())
}

/// The stage histograms and the snapshot counter in a `/metrics` text.
pub fn parse(text: &str) -> Scrape {
    let mut out = Scrape::default();
    let stage_bucket = format!("{STAGE_METRIC}_bucket{{stage=\"");
    let batch_bucket = format!("{BATCH_METRIC}_bucket{{batch=\"");
    let batch_sum = format!("{BATCH_METRIC}_sum{{batch=\"");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(&stage_bucket) {
            if let Some((stage, le, count)) = bucket(rest) {
                out.stages.entry(stage).or_default().push((le, count));
            }
        } else if let Some(rest) = line.strip_prefix(&batch_bucket) {
            if let Some((batch, le, count)) = bucket(rest) {
                out.batches.entry(batch).or_default().push((le, count));
            }
        } else if let Some(rest) = line.strip_prefix(&batch_sum) {
            if let Some((batch, v)) = rest.split_once("\"} ") {
                if let Ok(v) = v.trim().parse::<u64>() {
                    out.batch_sums.insert(batch.to_string(), v);
                }
            }
        } else if let Some(v) = line
            .strip_prefix(SNAPSHOTS_METRIC)
            .or_else(|| line.strip_prefix(ETCD_SNAPSHOTS_METRIC))
        {
            if let Ok(n) = v.trim().parse::<u64>() {
                out.snapshots = n;
            }
        }
    }
    out
}

/// One stage over a run: observations, and the upper bounds of the
/// buckets holding the 50th, 99th, 99.9th percentile and the largest one
/// (`f64::INFINITY`: above the last bound).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StageDelta {
    pub count: u64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// What happened between two scrapes of one member, per stage.
pub fn delta(before: &Scrape, after: &Scrape) -> BTreeMap<String, StageDelta> {
    histogram_delta(&before.stages, &after.stages)
}

/// One batch size over a run: the [`StageDelta`] of its histogram (bounds
/// in entries) and the mean entries per batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchDelta {
    pub hist: StageDelta,
    pub mean: f64,
}

/// The batch sizes between two scrapes of one member.
pub fn batch_delta(before: &Scrape, after: &Scrape) -> BTreeMap<String, BatchDelta> {
    histogram_delta(&before.batches, &after.batches)
        .into_iter()
        .map(|(name, hist)| {
            let sum = after
                .batch_sums
                .get(&name)
                .copied()
                .unwrap_or(0)
                .saturating_sub(before.batch_sums.get(&name).copied().unwrap_or(0));
            let mean = sum as f64 / hist.count as f64;
            (name, BatchDelta { hist, mean })
        })
        .collect()
}

/// One line per batch: `batch n=… mean=… p50<=… p99<=… max<=… entries`.
pub fn render_batches(d: &BTreeMap<String, BatchDelta>) -> String {
    let n = |v: f64| {
        if v.is_infinite() {
            ">4096".to_string()
        } else {
            format!("{v:.0}")
        }
    };
    let mut s = String::new();
    for (batch, v) in d {
        s.push_str(&format!(
            "    batch {batch:<18} n={:<8} mean={:.1} p50<={} p99<={} max<={} entries\n",
            v.hist.count,
            v.mean,
            n(v.hist.p50),
            n(v.hist.p99),
            n(v.hist.max)
        ));
    }
    s
}

/// Per name, the difference of two scrapes' cumulative buckets and its
/// quantiles' bucket bounds; names with no observation in between are left
/// out.
fn histogram_delta(
    before: &BTreeMap<String, Vec<(f64, u64)>>,
    after: &BTreeMap<String, Vec<(f64, u64)>>,
) -> BTreeMap<String, StageDelta> {
    let mut out = BTreeMap::new();
    for (stage, b) in after {
        let a = before.get(stage);
        let counts: Vec<(f64, u64)> = b
            .iter()
            .enumerate()
            .map(|(i, &(le, n))| {
                let prev = a.and_then(|a| a.get(i)).map_or(0, |p| p.1);
                (le, n.saturating_sub(prev))
            })
            .collect();
        let total = counts.last().map_or(0, |c| c.1);
        if total == 0 {
            continue;
        }
        let at = |q: f64| {
            let rank = ((total as f64) * q).ceil().max(1.0) as u64;
            counts
                .iter()
                .find(|c| c.1 >= rank)
                .map_or(f64::INFINITY, |c| c.0)
        };
        out.insert(
            stage.clone(),
            StageDelta {
                count: total,
                p50: at(0.5),
                p99: at(0.99),
                p999: at(0.999),
                max: at(1.0),
            },
        );
    }
    out
}

fn ms(v: f64) -> String {
    if v.is_infinite() {
        ">3277".into()
    } else {
        format!("{:.3}", v * 1e3)
    }
}

/// One line per stage: `stage n=… p50≤… p99≤… p99.9≤… max≤… ms`.
pub fn render(d: &BTreeMap<String, StageDelta>) -> String {
    let mut s = String::new();
    for (stage, v) in d {
        s.push_str(&format!(
            "    {stage:<24} n={:<8} p50<={} p99<={} p99.9<={} max<={} ms\n",
            v.count,
            ms(v.p50),
            ms(v.p99),
            ms(v.p999),
            ms(v.max)
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: &str = "\
metalraft_snapshots_total 2
metalraft_stage_duration_seconds_bucket{stage=\"apply\",le=\"0.000025\"} 10
metalraft_stage_duration_seconds_bucket{stage=\"apply\",le=\"0.00005\"} 10
metalraft_stage_duration_seconds_bucket{stage=\"apply\",le=\"+Inf\"} 10
";
    const T1: &str = "\
metalraft_snapshots_total 5
metalraft_stage_duration_seconds_bucket{stage=\"apply\",le=\"0.000025\"} 1008
metalraft_stage_duration_seconds_bucket{stage=\"apply\",le=\"0.00005\"} 1009
metalraft_stage_duration_seconds_bucket{stage=\"apply\",le=\"+Inf\"} 1010
metalraft_stage_duration_seconds_sum{stage=\"apply\"} 1.5
";

    #[test]
    fn a_run_is_the_difference_of_two_scrapes() {
        let (a, b) = (parse(T0), parse(T1));
        assert_eq!(a.snapshots, 2);
        assert_eq!(b.snapshots, 5);
        assert_eq!(b.stages["apply"].len(), 3);
        let d = delta(&a, &b);
        let apply = d["apply"];
        assert_eq!(apply.count, 1000);
        assert_eq!(apply.p50, 0.000025);
        assert_eq!(apply.p99, 0.000025);
        assert_eq!(apply.p999, 0.00005);
        assert!(apply.max.is_infinite());
        assert!(render(&d).contains("apply"));
    }

    #[test]
    fn batch_sizes_are_read_and_differenced() {
        let t = |n1: u64, n4: u64, sum: u64| {
            format!(
                "metalraft_batch_entries_bucket{{batch=\"wal_sync\",le=\"1\"}} {n1}\n\
                 metalraft_batch_entries_bucket{{batch=\"wal_sync\",le=\"4\"}} {n4}\n\
                 metalraft_batch_entries_bucket{{batch=\"wal_sync\",le=\"+Inf\"}} {n4}\n\
                 metalraft_batch_entries_sum{{batch=\"wal_sync\"}} {sum}\n\
                 metalraft_batch_entries_count{{batch=\"wal_sync\"}} {n4}\n"
            )
        };
        let (a, b) = (parse(&t(5, 5, 5)), parse(&t(6, 10, 20)));
        assert_eq!(b.batches["wal_sync"].len(), 3);
        assert_eq!(b.batch_sums["wal_sync"], 20);
        let d = batch_delta(&a, &b);
        let w = d["wal_sync"];
        assert_eq!(w.hist.count, 5);
        assert_eq!(w.mean, 3.0);
        assert_eq!(w.hist.p50, 4.0);
        assert_eq!(w.hist.max, 4.0);
        assert!(render_batches(&d).contains("wal_sync"));
        assert!(delta(&a, &b).is_empty());
    }

    #[test]
    fn etcds_snapshot_count_is_read() {
        let etcd = "\
# TYPE etcd_debugging_snap_save_total_duration_seconds histogram
etcd_debugging_snap_save_total_duration_seconds_bucket{le=\"0.001\"} 0
etcd_debugging_snap_save_total_duration_seconds_sum 0.02
etcd_debugging_snap_save_total_duration_seconds_count 4
";
        let s = parse(etcd);
        assert_eq!(s.snapshots, 4);
        assert!(s.stages.is_empty());
    }
}
