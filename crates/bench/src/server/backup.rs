//! `big-backup`: what a backup (`etcdctl snapshot save`, the Maintenance
//! `Snapshot` RPC) costs the writers, on the loaded cluster of
//! [`super::big`].
//!
//! One client puts to the leader without pause; after [`BASELINE`] a second
//! client fetches a backup from the leader (the whole stream, every byte
//! counted), then the writer stops [`AFTER`] later. Reported: the backup's
//! time and size, and the writer's put latencies (p50, p99.9, max) before
//! the backup and while it was being taken. A backup that makes writes wait
//! shows in the second set.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::load;

/// Writer time before the backup starts.
pub const BASELINE: Duration = Duration::from_secs(2);
/// Writer time after the backup ends.
pub const AFTER: Duration = Duration::from_millis(200);
/// Give up on a backup after this long.
pub const BACKUP_TIMEOUT: Duration = Duration::from_secs(600);
/// The writer's keys (a key space of their own, not the loaded keys).
const WRITER_KEYS: u64 = 1000;
/// Bytes per written value.
const WRITER_VALUE_BYTES: usize = 256;

/// Put latencies of one interval.
#[derive(Clone, Debug, Default)]
pub struct Latencies {
    pub n: usize,
    pub p50_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latencies {
    fn of(mut us: Vec<u32>) -> Latencies {
        us.sort_unstable();
        Latencies {
            n: us.len(),
            p50_ms: load::quantile(&us, 0.5) / 1000.0,
            p999_ms: load::quantile(&us, 0.999) / 1000.0,
            max_ms: us.last().map_or(f64::NAN, |&m| f64::from(m) / 1000.0),
        }
    }
}

/// One system's backup measurement.
#[derive(Clone, Debug, Default)]
pub struct BackupRun {
    pub secs: f64,
    /// From the request until the first chunk arrived (the server building
    /// the backup, for a system that builds it before sending).
    pub first_byte_secs: f64,
    pub bytes: u64,
    pub before: Latencies,
    pub during: Latencies,
    /// Puts during the backup that failed (timed out after
    /// [`load::REQUEST_TIMEOUT`]); counted in the latencies at the time
    /// they took.
    pub failed_during: usize,
    /// When the slowest put during the backup began, seconds after the
    /// backup's request.
    pub worst_at_secs: f64,
    /// The leader's peak RSS (VmHWM, KiB) before the backup and after it
    /// (0 if its process could not be read).
    pub leader_hwm_kib: (u64, u64),
}

/// Fetches a whole backup from `ep`; returns its size and when its first
/// chunk arrived.
async fn fetch_backup(ep: &str) -> Result<(u64, Duration), String> {
    let start = Instant::now();
    let c = load::connect_stream(ep).await?;
    let mut m = c.maintenance_client();
    let mut stream = m
        .snapshot()
        .await
        .map_err(|e| format!("snapshot {ep}: {e}"))?;
    let mut bytes = 0u64;
    let mut first = None;
    while let Some(r) = stream
        .message()
        .await
        .map_err(|e| format!("snapshot stream {ep}: {e}"))?
    {
        first.get_or_insert_with(|| start.elapsed());
        bytes += r.blob().len() as u64;
    }
    if bytes == 0 {
        return Err(format!("snapshot {ep}: an empty backup"));
    }
    Ok((bytes, first.unwrap_or_default()))
}

/// The measurement (see the module doc) against the leader `ep`, whose
/// process is `leader_pid`.
pub async fn measure(ep: &str, leader_pid: Option<u32>) -> Result<BackupRun, String> {
    let hwm = || {
        leader_pid
            .and_then(super::cluster::proc_stats)
            .map_or(0, |s| s.hwm_kib)
    };
    let hwm_before = hwm();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writer = load::connect_one(ep).await?;
    let stop_w = Arc::clone(&stop);
    let origin = Instant::now();
    // (start offset, latency, failed) of every put, microseconds.
    let puts = tokio::spawn(async move {
        let mut out: Vec<(u64, u32, bool)> = Vec::new();
        let mut i = 0u64;
        while !stop_w.load(Ordering::Relaxed) {
            let key = format!("bk/{:04}", i % WRITER_KEYS);
            let start = Instant::now();
            // A put that times out is a result here (a stall at least as
            // long as the timeout), not a failed measurement.
            let failed = writer
                .put(key, vec![b'b'; WRITER_VALUE_BYTES], None)
                .await
                .is_err();
            let lat = u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX);
            out.push((start.duration_since(origin).as_micros() as u64, lat, failed));
            i += 1;
        }
        out
    });
    tokio::time::sleep(BASELINE).await;
    let t0 = origin.elapsed().as_micros() as u64;
    let fetched = tokio::time::timeout(BACKUP_TIMEOUT, fetch_backup(ep)).await;
    let t1 = origin.elapsed().as_micros() as u64;
    tokio::time::sleep(AFTER).await;
    stop.store(true, Ordering::Relaxed);
    let puts = puts.await.map_err(|e| e.to_string())?;
    let (bytes, first_byte) =
        fetched.map_err(|_| format!("a backup took over {BACKUP_TIMEOUT:?}"))??;
    let (mut before, mut during) = (Vec::new(), Vec::new());
    let (mut failed_during, mut failed_before) = (0, 0);
    let mut worst = (0u32, 0u64);
    for (at, lat, failed) in puts {
        // A put that was in flight at any moment of the backup is "during"
        // (one started just before it and held up by it counts).
        let end = at + u64::from(lat);
        if end > t0 && at < t1 {
            during.push(lat);
            failed_during += usize::from(failed);
            if lat > worst.0 {
                worst = (lat, at);
            }
        } else if at < t0 {
            before.push(lat);
            failed_before += usize::from(failed);
        }
    }
    if failed_before > 0 {
        return Err(format!(
            "{failed_before} put(s) failed before the backup began: the cluster is not healthy"
        ));
    }
    Ok(BackupRun {
        secs: (t1 - t0) as f64 / 1e6,
        first_byte_secs: first_byte.as_secs_f64(),
        bytes,
        before: Latencies::of(before),
        during: Latencies::of(during),
        failed_during,
        worst_at_secs: (worst.1 as f64 - t0 as f64) / 1e6,
        leader_hwm_kib: (hwm_before, hwm()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_of_samples() {
        let l = Latencies::of((1..=1000).rev().map(|x| x * 1000).collect());
        assert_eq!(l.n, 1000);
        assert_eq!(l.p50_ms, 500.0);
        assert_eq!(l.p999_ms, 999.0);
        assert_eq!(l.max_ms, 1000.0);
        assert!(Latencies::of(Vec::new()).max_ms.is_nan());
    }
}
