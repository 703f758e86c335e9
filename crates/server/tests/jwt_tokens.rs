//! `--auth-token jwt,...` end to end (etcd 3.4's JWT tokens): members of a
//! 3-member cluster share an ES256 key pair generated here; etcdctl with
//! `--user` works; a token `Authenticate` signed on one member is accepted
//! by the others (no log entry: any member verifies it with the public
//! key) and carries etcd's claims; a tampered or foreign token is etcd's
//! "invalid auth token"; bad `--auth-token` values stop the member at
//! start-up with a clear message. `--bcrypt-cost=4` keeps it quick.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::Value;

/// An ES256 (P-256) key pair as PEM files in `dir`: (public, private).
fn es256_keys(dir: &Path, tag: &str) -> (PathBuf, PathBuf) {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
    let public = dir.join(format!("{tag}-pub.pem"));
    let private = dir.join(format!("{tag}-priv.pem"));
    std::fs::write(&public, kp.public_key_pem()).expect("write public key");
    std::fs::write(&private, kp.serialize_pem()).expect("write private key");
    (public, private)
}

fn jwt_flag(public: &Path, private: &Path, method: &str) -> String {
    format!(
        "--auth-token=jwt,pub-key={},priv-key={},sign-method={method},ttl=5m",
        public.display(),
        private.display()
    )
}

/// POSTs JSON `body` to the gateway at `path` on `port`, with `token` as the
/// `Authorization` header: (HTTP status, parsed body). Plain HTTP/1.1.
fn post(port: u16, path: &str, body: &str, token: Option<&str>) -> (u16, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: {t}\r\n"));
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         {auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8_lossy(&raw);
    let code: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text}"));
    let (head, rest) = text.split_once("\r\n\r\n").expect("headers end");
    let json = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        // One chunk is enough for these small answers.
        rest.split_once("\r\n").map_or("", |(_, r)| r).to_string()
    } else {
        rest.to_string()
    };
    let start = json.find('{').unwrap_or(0);
    let end = json.rfind('}').map_or(json.len(), |e| e + 1);
    let v = serde_json::from_str(&json[start..end])
        .unwrap_or_else(|e| panic!("{path}: bad JSON ({e}) in {text}"));
    (code, v)
}

fn ctl(eps: &str, user: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut all = vec!["--endpoints", eps];
    if let Some(u) = user {
        all.extend(["--user", u]);
    }
    all.extend_from_slice(args);
    etcdctl_try(&all)
}

fn ctl_ok(eps: &str, user: Option<&str>, args: &[&str]) -> String {
    let out = ctl(eps, user, args);
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[derive(serde::Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

#[test]
fn jwt_tokens_work_on_every_member_and_tampered_ones_are_refused() {
    let keys = tempfile::tempdir().unwrap();
    let (public, private) = es256_keys(keys.path(), "cluster");
    let flag = jwt_flag(&public, &private, "ES256");
    let c = Cluster::start_with(3, &["--bcrypt-cost=4", &flag]);
    let ep0 = c.endpoint(0);
    for args in [
        &["user", "add", "root:pw"][..],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["auth", "enable"],
    ] {
        ctl_ok(&ep0, None, args);
    }
    // etcdctl --user: Authenticate, then the JWT on every call.
    assert_eq!(ctl_ok(&ep0, Some("root:pw"), &["put", "k", "v"]), "OK\n");
    assert_eq!(
        ctl_ok(&ep0, Some("root:pw"), &["user", "add", "alice:apw"]),
        "User alice created\n"
    );
    assert_eq!(
        ctl_ok(&c.endpoints(), Some("root:pw"), &["get", "k"]),
        "k\nv\n"
    );
    // Without a user: refused as in etcd.
    let out = ctl(&ep0, None, &["get", "k"]);
    assert!(!out.status.success());
    // alice has no role: permission denied, with her valid JWT.
    let out = ctl(&ep0, Some("alice:apw"), &["get", "k"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A token from member 0, used on members 1 and 2 at once.
    let (p0, p1, p2) = (
        c.members[0].client_port,
        c.members[1].client_port,
        c.members[2].client_port,
    );
    let (code, got) = post(
        p0,
        "/v3/auth/authenticate",
        r#"{"name":"root","password":"pw"}"#,
        None,
    );
    assert_eq!(code, 200, "{got}");
    let token = got["token"].as_str().expect("token").to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    // etcd's claims, signed with our key.
    let key = jsonwebtoken::DecodingKey::from_ec_pem(&std::fs::read(&public).unwrap()).unwrap();
    let claims = jsonwebtoken::decode::<Claims>(
        &token,
        &key,
        &jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256),
    )
    .expect("verifies with the public key")
    .claims;
    assert_eq!(claims.username, "root");
    assert!(claims.revision > 0, "auth revision {}", claims.revision);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        claims.exp > now + 240 && claims.exp <= now + 301,
        "exp {} now {now}",
        claims.exp
    );
    let range = r#"{"key":"aw=="}"#; // "k"
    for port in [p0, p1, p2] {
        let (code, got) = post(port, "/v3/kv/range", range, Some(&token));
        assert_eq!(code, 200, ":{port}: {got}");
        assert_eq!(got["kvs"][0]["value"], "dg==", ":{port}: {got}"); // "v"
    }

    // Tampered: one character of the signature changed; the payload
    // re-signed by nobody (claims say alice is root); another key's token.
    let mut bad = token.clone().into_bytes();
    let i = bad.len() - 3;
    bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
    let tampered_sig = String::from_utf8(bad).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let forged_payload = format!(
        "{}.{}.{}",
        parts[0],
        parts[1].chars().rev().collect::<String>(),
        parts[2]
    );
    let (opub, opriv) = es256_keys(keys.path(), "other");
    let foreign = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &serde_json::json!({"username": "root", "revision": claims.revision + 100, "exp": now + 300}),
        &jsonwebtoken::EncodingKey::from_ec_pem(&std::fs::read(&opriv).unwrap()).unwrap(),
    )
    .unwrap();
    drop(opub);
    // Any change of users or roles makes earlier tokens old, on every
    // member (etcd 3.4's auth revision check); a new token works.
    ctl_ok(&ep0, Some("root:pw"), &["role", "add", "r2"]);
    for port in [p0, p1, p2] {
        let old = eventually("the role change applied everywhere", || {
            let (code, got) = post(port, "/v3/kv/range", range, Some(&token));
            (code != 200).then_some((code, got))
        });
        assert!(
            old.1
                .to_string()
                .contains("etcdserver: revision of auth store is old"),
            ":{port}: {old:?}"
        );
    }
    let (_, got) = post(
        p1,
        "/v3/auth/authenticate",
        r#"{"name":"root","password":"pw"}"#,
        None,
    );
    let fresh = got["token"].as_str().expect("token").to_string();
    for port in [p0, p1, p2] {
        let (code, got) = post(port, "/v3/kv/range", range, Some(&fresh));
        assert_eq!(code, 200, ":{port}: {got}");
    }

    for bad in [
        &tampered_sig,
        &forged_payload,
        &foreign,
        &"abcdefghijklmnop.1".to_string(),
    ] {
        for port in [p0, p2] {
            let (code, got) = post(port, "/v3/kv/range", range, Some(bad));
            assert_eq!(code, 401, ":{port} {bad}: {got}");
            assert!(
                got.to_string().contains("etcdserver: invalid auth token"),
                ":{port}: {got}"
            );
        }
    }

    // A member change through a follower is relayed to the leader with a
    // token the leader signed for the caller (root), and refused for alice.
    let leader = c.wait_for_leader();
    let follower = c.endpoint((leader + 1) % 3);
    let out = ctl_ok(
        &follower,
        Some("root:pw"),
        &["member", "add", "m9", "--peer-urls=http://127.0.0.1:1"],
    );
    assert!(out.contains("added to cluster"), "{out}");
    let out = ctl(
        &follower,
        Some("alice:apw"),
        &["member", "add", "m8", "--peer-urls=http://127.0.0.1:2"],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_auth_token_values_stop_the_member_at_start_up() {
    let keys = tempfile::tempdir().unwrap();
    let (public, private) = es256_keys(keys.path(), "k");
    let missing = keys.path().join("missing.pem");
    let cases: Vec<(String, &str)> = vec![
        (jwt_flag(&public, &missing, "ES256"), "jwt priv-key"),
        (
            jwt_flag(&public, &private, "HS999"),
            "sign-method \"HS999\" is not supported",
        ),
        // An EC key for an RSA method.
        (
            jwt_flag(&public, &private, "RS256"),
            "is not a PEM key for \"RS256\"",
        ),
        (
            format!("--auth-token=jwt,priv-key={}", private.display()),
            "jwt option sign-method is missing",
        ),
        (
            "--auth-token=oauth".to_string(),
            "--auth-token \"oauth\" is not supported",
        ),
    ];
    for (flag, want) in cases {
        let mut c = Cluster::prepare(1, &[&flag]);
        c.spawn(0);
        let status = c.wait_member_exit(0).expect("member exits at start-up");
        assert!(!status.success(), "{flag}: exited successfully");
        let log = std::fs::read_to_string(&c.members[0].log).unwrap();
        assert!(log.contains(want), "{flag}: want {want:?} in {log}");
    }
}
