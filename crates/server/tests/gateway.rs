//! etcd's HTTP/JSON gateway with curl, as Patroni, etcd3gw and shell
//! scripts use it: `/version`, unary calls under `/v3/` and `/v3beta/`,
//! errors in grpc-gateway's shape, and a streaming `/v3/watch`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// base64 of `s` (the gateway's bytes encoding), without a crate.
fn b64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, x)| acc | (u32::from(*x) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// POSTs `body` to `path`; returns (HTTP status, parsed JSON body).
fn post(port: u16, path: &str, body: &str) -> (u16, Value) {
    let out = Command::new("curl")
        .args(["-sS", "-X", "POST", "-w", "\n%{http_code}", "-d", body])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (json, code) = text.rsplit_once('\n').expect("status line");
    (
        code.trim().parse().expect("status"),
        serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON ({e}): {json:?}")),
    )
}

fn int(v: &Value) -> i64 {
    // int64 fields are JSON strings in protobuf's mapping.
    v.as_str()
        .expect("int64 as a string")
        .parse()
        .expect("integer")
}

#[test]
fn gateway_serves_etcds_json_api_and_a_watch_stream() {
    let c = Cluster::start(3);
    let leader = c.wait_for_leader();
    let port = c.members[(leader + 1) % 3].client_port; // a follower

    let version = http_get(port, "/version");
    assert!(version.contains("\"etcdserver\":\"3.4"), "{version}");
    assert!(version.contains("\"etcdcluster\":\"3.4"), "{version}");

    let (code, put) = post(
        port,
        "/v3/kv/put",
        &format!(r#"{{"key":"{}","value":"{}"}}"#, b64("foo"), b64("bar")),
    );
    assert_eq!(code, 200, "{put}");
    let rev = int(&put["header"]["revision"]);
    assert!(rev >= 2);
    assert!(put["header"]["cluster_id"].is_string());

    for prefix in ["/v3", "/v3beta"] {
        let (code, got) = post(
            port,
            &format!("{prefix}/kv/range"),
            &format!(r#"{{"key":"{}"}}"#, b64("foo")),
        );
        assert_eq!(code, 200, "{got}");
        assert_eq!(got["kvs"][0]["value"], b64("bar"));
        assert_eq!(got["kvs"][0]["key"], b64("foo"));
        assert_eq!(int(&got["count"]), 1);
        assert!(got.get("more").is_none(), "defaults are omitted: {got}");
    }

    // A txn with a compare, as Patroni's leader-key update does.
    let txn = format!(
        r#"{{"compare":[{{"key":"{k}","target":"VALUE","result":"EQUAL","value":"{v}"}}],
            "success":[{{"request_put":{{"key":"{k}","value":"{n}"}}}}]}}"#,
        k = b64("foo"),
        v = b64("bar"),
        n = b64("baz")
    );
    let (code, t) = post(port, "/v3/kv/txn", &txn);
    assert_eq!(code, 200, "{t}");
    assert_eq!(t["succeeded"], true);
    let (_, again) = post(port, "/v3/kv/txn", &txn);
    assert!(
        again.get("succeeded").is_none(),
        "false is omitted: {again}"
    );

    // Errors come back in grpc-gateway's shape with its HTTP status.
    let (code, err) = post(port, "/v3/kv/range", r#"{"key": 5"#);
    assert_eq!(code, 400);
    assert_eq!(err["code"], 3, "{err}");
    assert!(err["error"].is_string());
    let (code, err) = post(
        port,
        "/v3/kv/range",
        &format!(r#"{{"key":"{}","revision":"{}"}}"#, b64("foo"), rev + 1000),
    );
    assert_eq!(code, 400, "{err}");
    assert_eq!(err["code"], 11);
    assert!(
        err["message"].as_str().unwrap().contains("future revision"),
        "{err}"
    );

    let (code, members) = post(port, "/v3/cluster/member/list", "{}");
    assert_eq!(code, 200);
    assert_eq!(members["members"].as_array().unwrap().len(), 3);
    let (code, status) = post(port, "/v3/maintenance/status", "");
    assert_eq!(code, 200);
    assert!(status["version"].as_str().unwrap().starts_with("3.4"));
    let (code, hash) = post(port, "/v3/maintenance/hash", "{}");
    assert_eq!(code, 200, "{hash}");
    assert!(hash["hash"].as_u64().is_some(), "{hash}");

    // A watch: created, then the event of a put, one JSON line each.
    let mut watch = Command::new("curl")
        .args(["-sS", "-N", "-X", "POST", "-d"])
        .arg(format!(
            r#"{{"create_request":{{"key":"{}","prev_kv":true}}}}"#,
            b64("foo")
        ))
        .arg(format!("http://127.0.0.1:{port}/v3/watch"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl watch");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| -> Value {
        let line = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("no watch line ({what})"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    };
    let created = next("created");
    assert_eq!(created["result"]["created"], true, "{created}");
    let deadline = Instant::now() + WAIT;
    let event = loop {
        assert!(Instant::now() < deadline);
        post(
            port,
            "/v3/kv/put",
            &format!(r#"{{"key":"{}","value":"{}"}}"#, b64("foo"), b64("new")),
        );
        let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) else {
            continue;
        };
        break serde_json::from_str::<Value>(&line).unwrap();
    };
    let ev = &event["result"]["events"][0];
    assert_eq!(ev["kv"]["value"], b64("new"), "{event}");
    assert_eq!(ev["prev_kv"]["value"], b64("baz"), "{event}");
    assert!(ev.get("type").is_none(), "PUT is the default: {event}");
    let _ = watch.kill();
    let _ = watch.wait();
}

/// base64 (standard alphabet, padded) back to bytes, without a crate.
fn unb64(s: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let mut out = Vec::new();
    for quad in s.as_bytes().chunks(4) {
        let data: Vec<u8> = quad.iter().copied().filter(|c| *c != b'=').collect();
        let n = data
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, c)| acc | (value(*c) << (18 - 6 * i)));
        for i in 0..data.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

#[test]
fn gateway_streams_a_backup_etcdctl_reads() {
    use sha2::Digest;
    let c = Cluster::start(1);
    c.wait_for_leader();
    let port = c.members[0].client_port;
    assert_eq!(unb64(&b64("ab")), b"ab");
    for i in 0..40 {
        let body = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            b64(&format!("k{i}")),
            b64("v")
        );
        assert_eq!(post(port, "/v3/kv/put", &body).0, 200);
    }
    let out = Command::new("curl")
        .args(["-sS", "-X", "POST", "-d", "{}"])
        .arg(format!("http://127.0.0.1:{port}/v3/maintenance/snapshot"))
        .output()
        .expect("run curl");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut file = Vec::new();
    let mut revision = 0;
    let mut remaining = -1;
    for (i, line) in text.lines().enumerate() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let r = &v["result"];
        if i == 0 {
            revision = int(&r["header"]["revision"]);
        }
        file.extend(unb64(r["blob"].as_str().expect("a blob")));
        // 0, the last message's, is left out as protobuf's JSON does.
        remaining = r.get("remaining_bytes").map_or(0, int);
    }
    assert_eq!(revision, 41);
    assert_eq!(remaining, 0);
    // etcd's shape: whole 512-byte pages, then their SHA-256.
    assert_eq!((file.len() - 32) % 512, 0);
    let (body, digest) = file.split_at(file.len() - 32);
    assert_eq!(&sha2::Sha256::digest(body)[..], digest);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backup.db");
    std::fs::write(&path, &file).unwrap();
    let status: Value = serde_json::from_str(&etcdctl(&[
        "snapshot",
        "status",
        path.to_str().unwrap(),
        "-w",
        "json",
    ]))
    .unwrap();
    assert_eq!(status["revision"], 41, "{status}");
}
