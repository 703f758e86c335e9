//! `/health` and `/metrics`, on the client port (like etcd) and on
//! `--listen-metrics-urls`.

mod common;

use common::*;

#[test]
fn health_and_metrics_are_served_on_client_and_metrics_ports() {
    let metrics_port = free_port();
    let flag = format!("--listen-metrics-urls=http://127.0.0.1:{metrics_port}");
    let c = Cluster::start_with(1, &[&flag]);
    let client_port = c.members[0].client_port;
    put_ok(&c.endpoint(0), "k", "v");
    for port in [client_port, metrics_port] {
        let health = http_get(port, "/health");
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        assert!(
            health.contains("{\"health\":\"true\",\"reason\":\"\"}"),
            "{health}"
        );
        for probe in [
            "/livez",
            "/readyz",
            "/health?serializable=true&exclude=NOSPACE",
        ] {
            let r = http_get(port, probe);
            assert!(r.starts_with("HTTP/1.1 200"), "{probe}: {r}");
        }
        let metrics = http_get(port, "/metrics");
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        for name in [
            "etcd_server_is_leader 1",
            "etcd_server_has_leader 1",
            "etcd_server_leader_changes_seen_total",
            "etcd_server_proposals_pending",
            "etcd_server_proposals_failed_total",
            "metalraft_apply_lag_entries",
            "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"+Inf\"}",
            "metalraft_peer_round_trip_seconds_count",
        ] {
            assert!(metrics.contains(name), "{name} missing from\n{metrics}");
        }
        // At least the bootstrap write and the put were synced.
        let count = metrics
            .lines()
            .find_map(|l| l.strip_prefix("etcd_disk_wal_fsync_duration_seconds_count "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("fsync count");
        assert!(count >= 2, "{count}");
    }
}

#[test]
fn health_is_503_without_quorum_while_livez_stays_200() {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();
    put_ok(&c.endpoints(), "k", "v");
    let survivor = (leader + 1) % 3;
    let port = c.members[survivor].client_port;
    assert!(http_get(port, "/health").starts_with("HTTP/1.1 200"));
    // Lose quorum: the survivor can no longer serve a linearizable read,
    // and once its election timeout passes it knows no leader either.
    c.kill9(leader);
    c.kill9((leader + 2) % 3);
    let h = eventually("/health turns 503", || {
        let r = http_get(port, "/health");
        r.starts_with("HTTP/1.1 503").then_some(r)
    });
    assert!(h.contains("\"health\":\"false\""), "{h}");
    let s = eventually("serializable /health reports no leader", || {
        let r = http_get(port, "/health?serializable=true");
        r.contains("RAFT NO LEADER").then_some(r)
    });
    assert!(s.starts_with("HTTP/1.1 503"), "{s}");
    assert!(http_get(port, "/readyz").starts_with("HTTP/1.1 503"));
    // Liveness does not depend on the cluster: restarting this member
    // would not help.
    let l = http_get(port, "/livez");
    assert!(l.starts_with("HTTP/1.1 200"), "{l}");
}
