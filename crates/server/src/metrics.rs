//! Prometheus metrics (text exposition format) and the `/health` endpoint,
//! served on `--listen-metrics-urls` and, like etcd, on the client URLs.
//! Names follow etcd's where the meaning matches, so existing dashboards
//! and alerts find them; metalraft-specific ones are prefixed `metalraft_`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use std::time::Duration;

use axum::http::{StatusCode, Uri};
use axum::routing::get;

use crate::api::Shared;
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
                    health_response(health(&h, &q).await)
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
    if !q.exclude_nospace && (s.gauges.no_space.load(Ordering::Relaxed) || s.over_quota()) {
        return bad("ALARM NOSPACE");
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
        "etcd_mvcc_db_total_size_in_bytes",
        "gauge",
        "Bytes the WAL occupies.",
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
    out
}

#[cfg(test)]
mod tests {
    use super::HealthQuery;

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
