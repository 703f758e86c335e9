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

/// The series the etcd-mixin's alerts and the standard etcd dashboard
/// query, with etcd's names and labels.
const MIXIN_SERIES: &[&str] = &[
    "etcd_server_has_leader",
    "etcd_server_leader_changes_seen_total",
    "etcd_server_proposals_failed_total",
    "etcd_server_proposals_committed_total",
    "etcd_server_proposals_applied_total",
    "etcd_server_proposals_pending",
    "etcd_disk_wal_fsync_duration_seconds_bucket",
    "etcd_disk_backend_commit_duration_seconds_bucket",
    "etcd_mvcc_db_total_size_in_bytes",
    "etcd_mvcc_db_total_size_in_use_in_bytes",
    "etcd_server_quota_backend_bytes",
    "etcd_network_peer_round_trip_time_seconds_bucket",
    "etcd_network_peer_sent_failures_total",
    "etcd_network_peer_sent_bytes_total",
    "etcd_network_peer_received_bytes_total",
    "etcd_network_client_grpc_received_bytes_total",
    "etcd_network_client_grpc_sent_bytes_total",
    "grpc_server_started_total",
    "grpc_server_handled_total",
    "grpc_server_handling_seconds_bucket",
    "process_resident_memory_bytes",
];

/// Checks the text exposition format: every sample belongs to a family
/// declared once with `# TYPE`, and every value parses.
fn check_exposition(text: &str) {
    let mut families = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            assert!(
                families
                    .insert(name.to_string(), kind.to_string())
                    .is_none(),
                "family {name} declared twice"
            );
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        assert!(value.parse::<f64>().is_ok(), "bad value in {line:?}");
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                let base = name.strip_suffix(s)?;
                (families.get(base).map(String::as_str) == Some("histogram")
                    || families.get(base).map(String::as_str) == Some("summary"))
                .then_some(base)
            })
            .unwrap_or(name);
        assert!(
            families.contains_key(family),
            "sample {line:?} has no # TYPE"
        );
    }
}

/// The value of the sample `series` (name and labels exactly as served).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_have_etcds_names_labels_and_counts() {
    let c = Cluster::start_with(3, &["--metrics=extensive"]);
    let leader = c.wait_for_leader();
    let port = c.members[leader].client_port;
    let ep = c.endpoint(leader);
    for i in 0..3 {
        put_ok(&ep, &format!("k{i}"), "v");
    }
    // A read of a future revision fails with OutOfRange, as in etcd.
    let failed = etcdctl_try(&["--endpoints", &ep, "get", "k0", "--rev=1000000"]);
    assert!(!failed.status.success());
    let put = "grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"";
    let range = "grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"";
    let ids: Vec<String> = etcdctl(&["--endpoints", &ep, "member", "list"])
        .lines()
        .map(|l| l.split(',').next().unwrap().trim().to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    // Peer probes run once a second: wait until every peer has answered one.
    let text = eventually("peer round trips measured to both peers", || {
        let t = http_get(port, "/metrics");
        let t = t.split_once("\r\n\r\n").map(|(_, body)| body.to_string())?;
        let probed = t
            .lines()
            .filter(|l| l.starts_with("etcd_network_peer_round_trip_time_seconds_count{"))
            .filter(|l| l.rsplit_once(' ').is_some_and(|(_, v)| v != "0"))
            .count();
        (probed == 2).then_some(t)
    });
    check_exposition(&text);
    for name in MIXIN_SERIES {
        assert!(text.contains(name), "{name} missing");
    }
    let ok_puts = sample(
        &text,
        &format!("grpc_server_handled_total{{grpc_code=\"OK\",{put}}}"),
    );
    assert_eq!(ok_puts, Some(3.0));
    assert_eq!(
        sample(&text, &format!("grpc_server_started_total{{{put}}}")),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, &format!("grpc_server_msg_received_total{{{put}}}")),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, &format!("grpc_server_msg_sent_total{{{put}}}")),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("grpc_server_handling_seconds_count{{{put}}}")
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("grpc_server_handled_total{{grpc_code=\"OutOfRange\",{range}}}")
        ),
        Some(1.0)
    );
    // The write path's stages (docs/latency-budget.md): every put went
    // through each per-proposal stage of this member (the leader) once.
    let stage = |name: &str| {
        sample(
            &text,
            &format!("metalraft_stage_duration_seconds_count{{stage=\"{name}\"}}"),
        )
    };
    for name in ["queue", "propose", "commit_apply", "reply", "total"] {
        assert_eq!(stage(name), Some(3.0), "stage {name}");
    }
    for name in [
        "apply_lock_wait",
        "apply",
        "wal_handoff",
        "wal_write_fsync",
        "wal_ack",
        "loop_round",
    ] {
        assert!(
            stage(name).is_some_and(|n| n >= 3.0),
            "stage {name}: {:?}",
            stage(name)
        );
    }
    assert_eq!(
        sample(
            &text,
            "metalraft_stage_duration_seconds_bucket{stage=\"total\",le=\"+Inf\"}"
        ),
        Some(3.0)
    );
    // The store's commits: etcd's 14 buckets (1 ms doubling to 8.192 s),
    // cumulative up to +Inf, which counts at least the 3 puts.
    let commit = "etcd_disk_backend_commit_duration_seconds";
    let mut le = 0.001;
    let mut last = 0.0;
    for _ in 0..14 {
        let v = sample(&text, &format!("{commit}_bucket{{le=\"{le}\"}}"))
            .unwrap_or_else(|| panic!("{commit} bucket {le} missing"));
        assert!(v >= last, "{commit} buckets are cumulative");
        last = v;
        le = ((le * 2.0) * 1000.0_f64).round() / 1000.0;
    }
    let count = sample(&text, &format!("{commit}_count")).unwrap();
    assert_eq!(
        sample(&text, &format!("{commit}_bucket{{le=\"+Inf\"}}")),
        Some(count)
    );
    assert!(count >= 3.0, "{commit}_count {count}");
    assert!(sample(&text, &format!("{commit}_sum")).unwrap() > 0.0);
    let received = sample(&text, "etcd_network_client_grpc_received_bytes_total").unwrap();
    assert!(received > 0.0);
    // This member is the leader: it sent entries to both followers.
    let mine = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("etcd_server_id{server_id=\"")?
                .strip_suffix("\"} 1")
        })
        .expect("etcd_server_id")
        .to_string();
    assert!(ids.contains(&mine), "{mine} not in {ids:?}");
    let mut others = 0;
    for id in &ids {
        if *id == mine {
            continue;
        }
        others += 1;
        let sent = sample(
            &text,
            &format!("etcd_network_peer_sent_bytes_total{{To=\"{id}\"}}"),
        );
        assert!(sent.unwrap() > 0.0, "no bytes sent to {id}");
        assert_eq!(
            sample(
                &text,
                &format!("etcd_network_active_peers{{Local=\"{mine}\",Remote=\"{id}\"}}")
            ),
            Some(1.0)
        );
    }
    assert_eq!(others, 2);
    assert!(sample(&text, "process_resident_memory_bytes").unwrap() > 0.0);
}
