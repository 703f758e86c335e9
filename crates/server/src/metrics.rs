//! Prometheus metrics (text exposition format) and the `/health` endpoint,
//! served on `--listen-metrics-urls` and, like etcd, on the client URLs.
//! Names follow etcd's where the meaning matches, so existing dashboards
//! and alerts find them; metalraft-specific ones are prefixed `metalraft_`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::routing::get;

use crate::api::Shared;
use crate::writer::FSYNC_BUCKETS_SECONDS;

/// The HTTP routes `/metrics` and `/health`.
pub fn router(shared: Arc<Shared>) -> axum::Router {
    let m = shared.clone();
    axum::Router::new()
        .route("/metrics", get(move || std::future::ready(render(&m))))
        .route("/health", get(move || std::future::ready(health(&shared))))
}

/// etcd's `/health` body: healthy when a leader is known and no alarm is raised.
pub fn health(s: &Shared) -> String {
    let st = *s.raft.status.borrow();
    let ok = st.leader.is_some()
        && !st.stopped
        && !s.gauges.no_space.load(Ordering::Relaxed)
        && !s.over_quota();
    format!("{{\"health\":\"{ok}\"}}")
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
    metric(
        &mut out,
        "metalraft_disk_no_space",
        "gauge",
        "1 while the disk is full (NOSPACE alarm).",
        u8::from(g.no_space.load(Ordering::Relaxed)),
    );
    metric(
        &mut out,
        "metalraft_snapshots_total",
        "counter",
        "State-machine snapshots taken.",
        ls.snapshots.load(Ordering::Relaxed),
    );

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
