//! Prometheus metrics (text exposition format) and the `/health` endpoint,
//! served on `--listen-metrics-urls` and, like etcd, on the client URLs.
//! Names follow etcd's where the meaning matches, so existing dashboards
//! and alerts find them; metalraft-specific ones are prefixed `metalraft_`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use std::time::Duration;

use axum::http::{StatusCode, Uri};
use axum::routing::get;

use crate::api::Shared;
use crate::transport::PeerCounters;
use crate::writer::FSYNC_BUCKETS_SECONDS;

/// How long `/health` waits for its linearizable read (etcd's probe
/// semantics: healthy means a linearizable read succeeds). Below the usual
/// probe timeouts (Docker's 4 s, Kubernetes' 1–5 s).
pub const HEALTH_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The HTTP routes `/metrics`, `/health`, `/livez` and `/readyz`.
pub fn router(shared: Arc<Shared>) -> axum::Router {
    let m = shared.clone();
    let h = shared.clone();
    let r = shared.clone();
    axum::Router::new()
        .route("/metrics", get(move || std::future::ready(render(&m))))
        .route(
            "/health",
            get(move |uri: Uri| {
                let h = h.clone();
                async move {
                    let q = HealthQuery::parse(uri.query().unwrap_or(""));
                    let verdict = health(&h, &q).await;
                    h.health_counts.count(verdict.healthy);
                    health_response(verdict)
                }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let r = r.clone();
                async move {
                    let q = HealthQuery::default();
                    let h = health(&r, &q).await;
                    probe_response(h.healthy, h.reason)
                }
            }),
        )
        .route(
            "/livez",
            get(move || std::future::ready(probe_response(livez(&shared), "raft loop stopped"))),
        )
}

/// How many `/health` requests found the member healthy, and how many
/// did not (etcd's `etcd_server_health_success` / `_failures`).
#[derive(Debug, Default)]
pub struct HealthCounts {
    success: AtomicU64,
    failures: AtomicU64,
}

impl HealthCounts {
    fn count(&self, healthy: bool) {
        let c = if healthy {
            &self.success
        } else {
            &self.failures
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Options of `/health`, as etcd 3.5 reads them from the query string:
/// `serializable=true` skips the linearizable read (a member without a
/// leader is then still unhealthy), `exclude=NOSPACE` ignores that alarm.
/// Unknown parameters are ignored, as etcd does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthQuery {
    /// Do not require a linearizable read to succeed.
    pub serializable: bool,
    /// Ignore the NOSPACE alarm.
    pub exclude_nospace: bool,
}

impl HealthQuery {
    /// Parses `a=b&c=d` (no percent-decoding needed for these values).
    pub fn parse(query: &str) -> HealthQuery {
        let mut q = HealthQuery::default();
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("serializable", v)) => q.serializable = v.eq_ignore_ascii_case("true"),
                Some(("exclude", v)) => q.exclude_nospace |= v.eq_ignore_ascii_case("NOSPACE"),
                _ => {}
            }
        }
        q
    }
}

/// A health verdict and etcd's reason string (empty when healthy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    /// Whether the member is healthy.
    pub healthy: bool,
    /// etcd's reason: `RAFT NO LEADER`, `ALARM NOSPACE`, ...
    pub reason: &'static str,
}

/// etcd's `/health` verdict: no alarm (unless excluded), a leader known,
/// and (unless `serializable`) a linearizable read that completes within
/// [`HEALTH_READ_TIMEOUT`].
pub async fn health(s: &Shared, q: &HealthQuery) -> Health {
    let st = *s.raft.status.borrow();
    let bad = |reason| Health {
        healthy: false,
        reason,
    };
    if st.stopped {
        return bad("RAFT LOOP STOPPED");
    }
    if st.repair_barrier.is_some() {
        // ADR 0021: catching up after mid-log WAL damage, not a voter yet.
        return bad("LOG REPAIR IN PROGRESS");
    }
    // etcd: any alarm makes the member unhealthy ("ALARM NOSPACE",
    // "ALARM CORRUPT"); `exclude=NOSPACE` ignores that one.
    for a in s.alarms() {
        let nospace = a.alarm == crate::proto::etcdserverpb::AlarmType::Nospace as i32;
        if nospace && q.exclude_nospace {
            continue;
        }
        return bad(if nospace {
            "ALARM NOSPACE"
        } else {
            "ALARM CORRUPT"
        });
    }
    if st.leader.is_none() {
        return bad("RAFT NO LEADER");
    }
    if !q.serializable {
        match tokio::time::timeout(HEALTH_READ_TIMEOUT, s.read_barrier()).await {
            Ok(Ok(())) => {}
            _ => return bad("LINEARIZABLE READ FAILED"),
        }
    }
    Health {
        healthy: true,
        reason: "",
    }
}

/// `/livez`: the member's Raft loop runs (leader or not). Kubernetes'
/// liveness probe should use this: restarting a member because the
/// cluster lost quorum only makes things worse.
pub fn livez(s: &Shared) -> bool {
    !s.raft.status.borrow().stopped
}

/// etcd's JSON body, HTTP 200 when healthy and 503 otherwise.
fn health_response(h: Health) -> (StatusCode, String) {
    let code = if h.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        format!(
            "{{\"health\":\"{}\",\"reason\":\"{}\"}}",
            h.healthy, h.reason
        ),
    )
}

/// `/livez` and `/readyz`: `ok` with 200, or the reason with 503.
fn probe_response(ok: bool, reason: &str) -> (StatusCode, String) {
    if ok {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n"))
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// Renders every metric.
pub fn render(s: &Shared) -> String {
    let st = *s.raft.status.borrow();
    let ls = &s.raft.stats;
    let ts = &s.transport_stats;
    let g = &s.gauges;
    let mut out = String::new();
    metric(
        &mut out,
        "etcd_server_has_leader",
        "gauge",
        "Whether a leader is known (1) or not (0).",
        u8::from(st.leader.is_some()),
    );
    metric(
        &mut out,
        "etcd_server_is_leader",
        "gauge",
        "Whether this member leads (1) or not (0).",
        u8::from(st.is_leader),
    );
    metric(
        &mut out,
        "etcd_server_is_learner",
        "gauge",
        "Whether this member is a learner.",
        u8::from(st.is_learner),
    );
    metric(
        &mut out,
        "etcd_server_leader_changes_seen_total",
        "counter",
        "Leader changes seen by this member.",
        st.leader_changes,
    );
    metric(
        &mut out,
        "etcd_server_proposals_committed_total",
        "gauge",
        "The commit index.",
        st.commit,
    );
    metric(
        &mut out,
        "etcd_server_proposals_applied_total",
        "gauge",
        "The applied index.",
        st.applied,
    );
    metric(
        &mut out,
        "etcd_server_proposals_pending",
        "gauge",
        "Proposals waiting to be applied.",
        ls.proposals_pending.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "etcd_server_proposals_failed_total",
        "counter",
        "Proposals refused or failed.",
        ls.proposals_failed.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "metalraft_proposals_succeeded_total",
        "counter",
        "Proposals applied with a result for their client.",
        ls.proposals_committed.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "metalraft_apply_lag_entries",
        "gauge",
        "Committed entries not yet applied.",
        st.commit.saturating_sub(st.applied),
    );
    metric(
        &mut out,
        "etcd_server_term",
        "gauge",
        "The current Raft term.",
        st.term,
    );
    metric(
        &mut out,
        "metalraft_wal_bytes",
        "gauge",
        "Bytes the WAL occupies (preallocated segments included).",
        g.wal_bytes.load(Ordering::Relaxed),
    );
    let w = &s.raft.watch_feed.stats;
    metric(
        &mut out,
        "etcd_debugging_mvcc_watch_stream_total",
        "gauge",
        "Open Watch streams.",
        w.streams.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "etcd_debugging_mvcc_watcher_total",
        "gauge",
        "Watchers.",
        w.watchers.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "etcd_debugging_mvcc_events_total",
        "counter",
        "Events sent to watchers.",
        w.events.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "metalraft_watch_catch_ups_total",
        "counter",
        "Times a watcher fell behind the live feed and caught up from history.",
        w.catch_ups.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "metalraft_disk_no_space",
        "gauge",
        "1 while the disk is full (NOSPACE alarm).",
        u8::from(g.no_space.load(Ordering::Relaxed)),
    );
    metric(
        &mut out,
        "metalraft_repair_pending",
        "gauge",
        "1 while this member repairs its log from the leader after mid-log WAL damage (no votes, no serializable reads; ADR 0021).",
        u8::from(st.repair_barrier.is_some()),
    );
    metric(
        &mut out,
        "metalraft_repair_barrier_index",
        "gauge",
        "The log index this member's log must reach from the leader before it votes again (0 when not repairing).",
        st.repair_barrier.unwrap_or(0),
    );
    metric(
        &mut out,
        "metalraft_snapshots_total",
        "counter",
        "State-machine snapshots taken.",
        ls.snapshots.load(Ordering::Relaxed),
    );
    for (name, help, v) in [
        (
            "metalraft_snapshot_sends_total",
            "Snapshot transfers started to a follower (first chunk sent).",
            &ts.snapshot_sends,
        ),
        (
            "metalraft_snapshot_chunks_sent_total",
            "Snapshot chunks sent to followers.",
            &ts.snapshot_chunks_sent,
        ),
        (
            "metalraft_snapshot_bytes_sent_total",
            "Snapshot bytes sent to followers.",
            &ts.snapshot_bytes_sent,
        ),
        (
            "metalraft_snapshots_installed_total",
            "Snapshots received from a leader and installed.",
            &ls.snapshots_installed,
        ),
    ] {
        metric(&mut out, name, "counter", help, v.load(Ordering::Relaxed));
    }

    let name = "etcd_disk_wal_fsync_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Latency of WAL group-commit write + fdatasync.\n# TYPE {name} histogram"
    );
    let mut cumulative = 0u64;
    for (i, le) in FSYNC_BUCKETS_SECONDS.iter().enumerate() {
        cumulative += g.sync_buckets[i].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    cumulative += g.sync_buckets[FSYNC_BUCKETS_SECONDS.len()].load(Ordering::Relaxed);
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(
        out,
        "{name}_sum {}",
        g.sync_micros.load(Ordering::Relaxed) as f64 / 1e6
    );
    let _ = writeln!(out, "{name}_count {}", g.syncs.load(Ordering::Relaxed));

    let h = &s.raft.backend_commits;
    let name = "etcd_disk_backend_commit_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} The latency distributions of commit called by backend (here: how long an applied command holds the in-memory MVCC store's write lock).\n# TYPE {name} histogram"
    );
    let mut cumulative = 0u64;
    for (i, le) in FSYNC_BUCKETS_SECONDS.iter().enumerate() {
        cumulative += h.buckets[i].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    cumulative += h.buckets[FSYNC_BUCKETS_SECONDS.len()].load(Ordering::Relaxed);
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(
        out,
        "{name}_sum {}",
        h.micros.load(Ordering::Relaxed) as f64 / 1e6
    );
    let _ = writeln!(out, "{name}_count {}", h.count.load(Ordering::Relaxed));

    let name = "metalraft_peer_round_trip_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Round trips of peer probes (an empty Deliver per lane and second).\n# TYPE {name} summary"
    );
    let _ = writeln!(
        out,
        "{name}_sum {}",
        ts.rtt_micros_sum.load(Ordering::Relaxed) as f64 / 1e6
    );
    let _ = writeln!(out, "{name}_count {}", ts.pings.load(Ordering::Relaxed));
    metric(
        &mut out,
        "metalraft_peer_batches_sent_total",
        "counter",
        "Message batches handed to peer streams.",
        ts.batches_sent.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "metalraft_peer_dropped_queue_full_total",
        "counter",
        "Messages dropped because a peer queue was full.",
        ts.dropped_queue_full.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "metalraft_peer_dropped_send_failed_total",
        "counter",
        "Messages dropped because a send failed.",
        ts.dropped_send_failed.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "metalraft_peer_rejected_incoming_total",
        "counter",
        "Incoming peer requests rejected at the edge.",
        ts.rejected_incoming.load(Ordering::Relaxed),
    );
    s.raft.stats.latency.render(&mut out);
    render_identity(s, &mut out);
    render_store(s, &mut out);
    render_peers(s, &mut out);
    s.grpc_metrics.render(&mut out);
    render_process(&mut out);
    out
}

/// A gauge whose one series carries its value in a label (etcd's
/// `etcd_server_id{server_id="…"} 1` style).
fn info_metric(out: &mut String, name: &str, help: &str, label: &str, value: &str) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{label}=\"{value}\"}} 1"
    );
}

fn render_identity(s: &Shared, out: &mut String) {
    info_metric(
        out,
        "etcd_server_id",
        "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
        "server_id",
        &format!("{:x}", s.cfg.id),
    );
    info_metric(
        out,
        "etcd_server_version",
        "Which version is running. 1 for 'server_version' label with current version.",
        "server_version",
        crate::api::ETCD_API_VERSION,
    );
    info_metric(
        out,
        "etcd_cluster_version",
        "Which version is running. 1 for 'cluster_version' label with current cluster version",
        "cluster_version",
        CLUSTER_VERSION,
    );
    let h = &s.health_counts;
    metric(
        out,
        "etcd_server_health_success",
        "counter",
        "The total number of successful health checks",
        h.success.load(Ordering::Relaxed),
    );
    metric(
        out,
        "etcd_server_health_failures",
        "counter",
        "The total number of failed health checks",
        h.failures.load(Ordering::Relaxed),
    );
    metric(
        out,
        "etcd_server_quota_backend_bytes",
        "gauge",
        "Current backend storage quota size in bytes.",
        s.cfg.quota_backend_bytes,
    );
}

/// The cluster version etcd 3.4 reports (major.minor).
pub const CLUSTER_VERSION: &str = "3.4";

fn render_store(s: &Shared, out: &mut String) {
    let (keys, in_use, rev, compacted) = s
        .raft
        .kv
        .read()
        .map(|k| (k.len(), k.size_bytes(), k.revision(), k.compact_revision()))
        .unwrap_or_default();
    // Status' dbSize and what the quota checks: the store's size.
    metric(
        out,
        "etcd_mvcc_db_total_size_in_bytes",
        "gauge",
        "Total size of the underlying database physically allocated in bytes.",
        in_use,
    );
    metric(
        out,
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "gauge",
        "Total size of the underlying database logically in use in bytes.",
        in_use,
    );
    metric(
        out,
        "etcd_debugging_mvcc_keys_total",
        "gauge",
        "Total number of keys.",
        keys,
    );
    metric(
        out,
        "etcd_debugging_mvcc_current_revision",
        "gauge",
        "The current revision of store.",
        rev,
    );
    metric(
        out,
        "etcd_debugging_mvcc_compact_revision",
        "gauge",
        "The revision of the last compaction in store.",
        compacted,
    );
}

fn render_peers(s: &Shared, out: &mut String) {
    use crate::transport::PEER_RTT_BUCKETS_SECONDS;
    let me = format!("{:x}", s.cfg.id);
    let peers = s.transport_stats.peers();
    let series = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    series(
        out,
        "etcd_network_active_peers",
        "gauge",
        "The current number of active peer connections.",
    );
    for (id, p) in &peers {
        let _ = writeln!(
            out,
            "etcd_network_active_peers{{Local=\"{me}\",Remote=\"{id:x}\"}} {}",
            u8::from(p.active.load(Ordering::Relaxed))
        );
    }
    for (name, help, label, get) in [
        (
            "etcd_network_peer_sent_bytes_total",
            "The total number of bytes sent to peers.",
            "To",
            (|p: &PeerCounters| &p.sent_bytes) as fn(&PeerCounters) -> &AtomicU64,
        ),
        (
            "etcd_network_peer_received_bytes_total",
            "The total number of bytes received from peers.",
            "From",
            |p: &PeerCounters| &p.received_bytes,
        ),
        (
            "etcd_network_peer_sent_failures_total",
            "The total number of send failures from peers.",
            "To",
            |p: &PeerCounters| &p.sent_failures,
        ),
    ] {
        series(out, name, "counter", help);
        for (id, p) in &peers {
            let _ = writeln!(
                out,
                "{name}{{{label}=\"{id:x}\"}} {}",
                get(p).load(Ordering::Relaxed)
            );
        }
    }
    let name = "etcd_network_peer_round_trip_time_seconds";
    series(
        out,
        name,
        "histogram",
        "Round-Trip-Time histogram between peers",
    );
    for (id, p) in &peers {
        let mut cumulative = 0;
        for (i, le) in PEER_RTT_BUCKETS_SECONDS.iter().enumerate() {
            cumulative += p.rtt_buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{To=\"{id:x}\",le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += p.rtt_buckets[PEER_RTT_BUCKETS_SECONDS.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{To=\"{id:x}\",le=\"+Inf\"}} {cumulative}"
        );
        let sum = p.rtt_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{To=\"{id:x}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{To=\"{id:x}\"}} {cumulative}");
    }
}

/// The process series of Prometheus' process collector, read from
/// `/proc/self` (absent where it cannot be read).
fn render_process(out: &mut String) {
    let Some(p) = ProcessStats::read() else {
        return;
    };
    for (name, kind, help, value) in [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            p.cpu_seconds,
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            p.open_fds,
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            p.max_fds,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            p.resident_bytes,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            p.start_time_seconds,
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            p.virtual_bytes,
        ),
    ] {
        metric(out, name, kind, help, value);
    }
}

/// What `/proc/self` says about this process.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcessStats {
    /// User + system CPU seconds.
    pub cpu_seconds: f64,
    /// Open file descriptors.
    pub open_fds: f64,
    /// The soft limit on open file descriptors.
    pub max_fds: f64,
    /// Resident set size.
    pub resident_bytes: f64,
    /// Virtual memory size.
    pub virtual_bytes: f64,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// Reads `/proc/self/{stat,fd,limits}` and `/proc/stat`.
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is in parentheses and may
        // itself hold spaces or parentheses.
        let rest = &stat[stat.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3 (state): field n is f[n - 3].
        let field = |n: usize| f.get(n - 3)?.parse::<f64>().ok();
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let page = rustix::param::page_size() as f64;
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()?
            .lines()
            .find_map(|l| {
                let v = l.strip_prefix("Max open files")?;
                v.split_whitespace().next()?.parse::<f64>().ok()
            })?;
        Some(ProcessStats {
            cpu_seconds: (field(14)? + field(15)?) / ticks,
            open_fds,
            max_fds,
            resident_bytes: field(24)? * page,
            virtual_bytes: field(23)?,
            start_time_seconds: boot_time + field(22)? / ticks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::HealthQuery;

    #[test]
    fn process_stats_are_read_from_proc() {
        let p = super::ProcessStats::read().expect("/proc/self is readable on Linux");
        assert!(p.resident_bytes > 0.0 && p.virtual_bytes >= p.resident_bytes);
        assert!(p.open_fds >= 3.0 && p.max_fds >= p.open_fds);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(p.start_time_seconds <= now + 1.0 && p.start_time_seconds > now - 86_400.0);
        assert!(p.cpu_seconds >= 0.0);
    }

    #[test]
    fn health_query_reads_etcds_parameters_and_ignores_others() {
        assert_eq!(HealthQuery::parse(""), HealthQuery::default());
        let q = HealthQuery::parse("serializable=true&exclude=NOSPACE&x=1");
        assert!(q.serializable && q.exclude_nospace);
        let q = HealthQuery::parse("serializable=false&exclude=CORRUPT");
        assert!(!q.serializable && !q.exclude_nospace);
        assert_eq!(
            HealthQuery::parse("&&=&serializable"),
            HealthQuery::default()
        );
    }
}
