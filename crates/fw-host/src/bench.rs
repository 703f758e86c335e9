//! `metalraft-fw bench`: closed-loop write load against a running cluster.
//! For each window (requests in flight) it keeps that many puts outstanding
//! at the leader for a fixed time, refilling the window as answers come,
//! and reports commits/s, p50/p99 latency (send to answer, measured on the
//! host), the QEMU processes' own CPU use over the same interval (from
//! `/proc/PID/stat`), and the leader's per-stage counters
//! ([`Perf`](metalraft_fw_proto::client::Perf)) divided per commit.
//!
//! Every put is answered by the leader after the entry is committed
//! (flushed on a majority) and applied. Keys cycle through
//! [`BENCH_KEYS`] names so the store (and so the snapshot) stays small
//! however long the bench runs.

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use metalraft_fw_proto::client::{Op, Perf, Reply, Request, Response, Status};

/// Distinct keys the bench writes (cycled).
pub const BENCH_KEYS: u64 = 128;
/// A put unanswered after this long is counted lost and its slot refilled.
pub const LOST_AFTER: Duration = Duration::from_secs(3);
/// Pause after an error answer before the window is refilled.
pub const ERROR_BACKOFF: Duration = Duration::from_millis(5);
/// Largest window the bench accepts (the leader admits 64 waiting writes).
pub const MAX_WINDOW: usize = 64;
/// Receive buffer.
const RECV_BUF_BYTES: usize = 2048;

/// What one window's run measured.
#[derive(Clone, Debug)]
pub struct WindowResult {
    /// Requests in flight.
    pub window: usize,
    /// Puts answered `Put` (committed and applied).
    pub commits: u64,
    /// Puts answered with an error (`Busy`, `NotLeader`, ...).
    pub errors: u64,
    /// The first error answer, if any.
    pub first_error: Option<Reply>,
    /// Puts never answered within [`LOST_AFTER`].
    pub lost: u64,
    /// Length of the run.
    pub elapsed: Duration,
    /// Latencies of the committed puts, sorted.
    pub latencies: Vec<Duration>,
}

impl WindowResult {
    /// Commits per second.
    pub fn rate(&self) -> f64 {
        self.commits as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `p`-th percentile latency (0..=100), if anything committed.
    pub fn percentile(&self, p: u32) -> Option<Duration> {
        if self.latencies.is_empty() {
            return None;
        }
        let rank = (self.latencies.len() * p as usize).div_ceil(100).max(1);
        Some(self.latencies[rank.min(self.latencies.len()) - 1])
    }
}

/// Keeps `window` puts of `value_bytes`-byte values in flight at node
/// `leader` through `gateway` for `length`.
pub fn run_window(
    gateway: SocketAddr,
    leader: u8,
    window: usize,
    value_bytes: usize,
    length: Duration,
) -> io::Result<WindowResult> {
    let window = window.clamp(1, MAX_WINDOW);
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    let mut next_id = (u64::from(std::process::id()) << 32) | ((window as u64) << 24);
    let value = vec![b'v'; value_bytes];
    let mut sent: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut r = WindowResult {
        window,
        commits: 0,
        errors: 0,
        first_error: None,
        lost: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    let start = Instant::now();
    let end = start + length;
    let mut buf = [0u8; RECV_BUF_BYTES];
    loop {
        let now = Instant::now();
        // Expire puts that will not be answered, then refill the window.
        let lost: Vec<u64> = sent
            .iter()
            .filter(|(_, &at)| now.duration_since(at) > LOST_AFTER)
            .map(|(&id, _)| id)
            .collect();
        for id in lost {
            sent.remove(&id);
            r.lost += 1;
        }
        if now < end {
            while sent.len() < window {
                next_id += 1;
                let key = format!("bench-{:03}", next_id % BENCH_KEYS).into_bytes();
                let mut dgram = vec![leader];
                dgram.extend_from_slice(
                    &Request {
                        id: next_id,
                        op: Op::Put {
                            key,
                            value: value.clone(),
                        },
                    }
                    .encode(),
                );
                sock.send_to(&dgram, gateway)?;
                sent.insert(next_id, Instant::now());
            }
        } else if sent.is_empty() {
            break;
        }
        // After the end, wait for the stragglers (they count in the
        // elapsed time too).
        let wait = sent
            .values()
            .min()
            .map_or(Duration::from_millis(10), |&at| {
                (at + LOST_AFTER).saturating_duration_since(now)
            })
            .max(Duration::from_millis(1));
        sock.set_read_timeout(Some(wait))?;
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        let Some((_, body)) = buf[..n].split_first() else {
            continue;
        };
        let Ok(Response { id, reply, .. }) = Response::decode(body) else {
            continue;
        };
        let Some(at) = sent.remove(&id) else {
            continue;
        };
        match reply {
            Reply::Put { .. } => {
                r.commits += 1;
                r.latencies.push(at.elapsed());
            }
            // Busy, NotLeader, ...: back off a little before the slot is
            // refilled, so a refusing leader is not flooded.
            other => {
                r.errors += 1;
                r.first_error.get_or_insert(other);
                std::thread::sleep(ERROR_BACKOFF);
            }
        }
    }
    r.elapsed = start.elapsed();
    r.latencies.sort_unstable();
    Ok(r)
}

/// CPU time (user + system) a process has used, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat"))?;
    // The command name (field 2) may hold spaces: fields count from the
    // last ')'. utime and stime are fields 14 and 15.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other("unreadable /proc stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| -> io::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("unreadable /proc stat"))
    };
    // Fields after the name start at field 3, so field 14 is index 11.
    let ticks = tick(11)? + tick(12)?;
    Ok(Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_second() as f64,
    ))
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 if that fails).
pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// RAM a node may use at its peak (issue 19): static image, stack and
/// heap high-water marks together.
pub const RAM_BUDGET_BYTES: u64 = 256 * 1024;

/// A node's measured RAM peak: static image + stack high-water + heap
/// high-water (each a peak since boot, so their sum bounds the real peak
/// from above).
pub fn ram_peak(s: &Status) -> u64 {
    s.static_bytes
        .saturating_add(s.stack_high_water)
        .saturating_add(s.heap_high_water)
}

/// The difference of two counter snapshots, field by field.
pub fn perf_delta(after: &Perf, before: &Perf) -> Perf {
    let d = |a: u64, b: u64| a.saturating_sub(b);
    Perf {
        wakeups: d(after.wakeups, before.wakeups),
        ticks: d(after.ticks, before.ticks),
        peer_in: d(after.peer_in, before.peer_in),
        peer_out: d(after.peer_out, before.peer_out),
        client_in: d(after.client_in, before.client_in),
        client_out: d(after.client_out, before.client_out),
        outputs: d(after.outputs, before.outputs),
        batches: d(after.batches, before.batches),
        entries_written: d(after.entries_written, before.entries_written),
        disk_writes: d(after.disk_writes, before.disk_writes),
        flushes: d(after.flushes, before.flushes),
        write_us: d(after.write_us, before.write_us),
        flush_us: d(after.flush_us, before.flush_us),
        storage_us: d(after.storage_us, before.storage_us),
        send_us: d(after.send_us, before.send_us),
        raft_us: d(after.raft_us, before.raft_us),
        busy_us: d(after.busy_us, before.busy_us),
        disk_wait_us: d(after.disk_wait_us, before.disk_wait_us),
    }
}

/// One line describing a node's counters over a run of `elapsed` that
/// committed `commits` entries.
pub fn fmt_perf(p: &Perf, commits: u64, elapsed: Duration) -> String {
    let per = |x: u64| x as f64 / commits.max(1) as f64;
    let share = |us: u64| 100.0 * us as f64 / elapsed.as_micros().max(1) as f64;
    format!(
        "per commit: {:.2} peer msgs out, {:.2} in, {:.2} outputs, {:.2} flushes ({:.1} entries/batch); \
         time: busy {:.0}%, storage {:.0}%, send {:.0}%, raft {:.0}%, waiting for the disk {:.0}% \
         (device: flush {:.0}%, write {:.0}%); {:.0} ticks/s",
        per(p.peer_out),
        per(p.peer_in),
        per(p.outputs),
        per(p.flushes),
        p.entries_written as f64 / p.batches.max(1) as f64,
        share(p.busy_us),
        share(p.storage_us),
        share(p.send_us),
        share(p.raft_us),
        share(p.disk_wait_us),
        share(p.flush_us),
        share(p.write_us),
        p.ticks as f64 / elapsed.as_secs_f64().max(1e-9),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_rank() {
        let r = WindowResult {
            window: 1,
            commits: 100,
            errors: 0,
            first_error: None,
            lost: 0,
            elapsed: Duration::from_secs(1),
            latencies: (1..=100).map(Duration::from_millis).collect(),
        };
        assert_eq!(r.percentile(50), Some(Duration::from_millis(50)));
        assert_eq!(r.percentile(99), Some(Duration::from_millis(99)));
        assert_eq!(r.percentile(100), Some(Duration::from_millis(100)));
        assert_eq!(r.rate(), 100.0);
        let empty = WindowResult {
            latencies: Vec::new(),
            ..r
        };
        assert_eq!(empty.percentile(50), None);
    }

    #[test]
    fn cpu_time_of_this_process_is_readable() {
        let t = cpu_time(std::process::id()).expect("own /proc stat");
        assert!(t < Duration::from_secs(24 * 3600));
    }
}
