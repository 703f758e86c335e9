//! `/health` and `/metrics`, on the client port (like etcd) and on
//! `--listen-metrics-urls`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read response");
    out
}

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
        assert!(health.contains("{\"health\":\"true\"}"), "{health}");
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
