//! Regression, found by `scripts/patroni-test.sh` (Patroni with Auth on a
//! 3-member cluster): a simple token from `Authenticate` on one member is
//! valid on every member, on the HTTP/JSON gateway (Patroni's etcd3 API)
//! and on gRPC (etcdctl), as in etcd 3.4.
//!
//! postmortem: metalraft kept simple tokens per member. etcd 3.4 assigns
//! each token through the raft log (`InternalAuthenticateRequest`), so
//! every member knows it, and a member that has not applied that entry yet
//! waits for it before judging the token. Here, a client that moved to
//! another member got "invalid auth token": Patroni after its member died
//! (it re-authenticates, with an error in its log), and etcdctl `--user`
//! with several `--endpoints`, whose balancer spreads calls over members,
//! retried up to five times. Fixed with `AuthOp::AssignToken` and a read
//! index before judging an unknown token (`auth::service::await_token`).
//! Members run with `--bcrypt-cost=4` (bcrypt's lowest) to keep it quick.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

/// Flags every member here runs with.
const FLAGS: &[&str] = &["--bcrypt-cost=4"];
/// Rounds of "authenticate on one member, use the token at once on the
/// others": the race between the apply on the other members and the
/// client's next call is tried this many times per member.
const ROUNDS: usize = 5;

/// base64 of `s` (the gateway's bytes encoding), without a crate.
fn b64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in s.as_bytes().chunks(3) {
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

/// POSTs `body` to `path` on `port`, with `token` as the `Authorization`
/// header (as Patroni sends it); returns (HTTP status, parsed JSON body).
fn post(port: u16, path: &str, body: &str, token: Option<&str>) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-m",
        "20",
        "-X",
        "POST",
        "-w",
        "\n%{http_code}",
        "-d",
        body,
    ]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: {t}")]);
    }
    let out = cmd
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

/// `Authenticate` as `user`/`password` on member port `port`: the token.
fn authenticate(port: u16, user: &str, password: &str) -> String {
    let (code, got) = post(
        port,
        "/v3/auth/authenticate",
        &format!(r#"{{"name":"{user}","password":"{password}"}}"#),
        None,
    );
    assert_eq!(code, 200, "authenticate on :{port}: {got}");
    got["token"].as_str().expect("a token").to_string()
}

/// etcdctl on `eps`, asserting success.
fn ctl_ok(eps: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["--endpoints", eps];
    all.extend_from_slice(args);
    let out = etcdctl_try(&all);
    assert!(
        out.status.success(),
        "etcdctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// root, and `patroni` with readwrite on prefix `/service/` (as
/// scripts/patroni-test.sh sets them up), then `auth enable`.
fn set_up_auth(eps: &str) {
    for args in [
        &["user", "add", "root:pw"][..],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "patroni"],
        &[
            "role",
            "grant-permission",
            "patroni",
            "--prefix=true",
            "readwrite",
            "/service/",
        ],
        &["user", "add", "patroni:ppw"],
        &["user", "grant-role", "patroni", "patroni"],
        &["auth", "enable"],
    ] {
        ctl_ok(eps, args);
    }
}

#[test]
fn a_token_from_one_member_is_valid_at_once_on_every_member() {
    let c = Cluster::start_with(3, FLAGS);
    let leader = c.wait_for_leader();
    set_up_auth(&c.endpoint(leader));
    let ports: Vec<u16> = c.members.iter().map(|m| m.client_port).collect();
    let key = b64("/service/pg/leader");

    for round in 0..ROUNDS {
        for (a, &pa) in ports.iter().enumerate() {
            let token = authenticate(pa, "patroni", "ppw");
            // Straight to every other member, as a client that moved does.
            for (b, &pb) in ports.iter().enumerate().filter(|(b, _)| *b != a) {
                let value = b64(&format!("round {round} from {a} on {b}"));
                let (code, got) = post(
                    pb,
                    "/v3/kv/put",
                    &format!(r#"{{"key":"{key}","value":"{value}"}}"#),
                    Some(&token),
                );
                assert_eq!(
                    code, 200,
                    "put with member {a}'s token on member {b}: {got}"
                );
                let (code, got) = post(
                    pb,
                    "/v3/kv/range",
                    &format!(r#"{{"key":"{key}"}}"#),
                    Some(&token),
                );
                assert_eq!(
                    code, 200,
                    "range with member {a}'s token on member {b}: {got}"
                );
                assert_eq!(got["kvs"][0]["value"], Value::String(value));
                // The token still names a user with only its prefix.
                let (code, got) = post(
                    pb,
                    "/v3/kv/range",
                    &format!(r#"{{"key":"{}"}}"#, b64("/elsewhere")),
                    Some(&token),
                );
                assert_eq!(code, 403, "{got}");
                assert_eq!(got["error"], "etcdserver: permission denied");
            }
        }
    }

    // gRPC: etcdctl spreads its calls over all endpoints with the token it
    // got from one; etcd 3.4 never answers "invalid auth token" here.
    let all = c.endpoints();
    for i in 0..ROUNDS {
        let out = ctl_ok(
            &all,
            &[
                "--user",
                "patroni:ppw",
                "put",
                &format!("/service/grpc/{i}"),
                "v",
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("invalid auth token"),
            "etcdctl retried with a token another member did not know: {stderr}"
        );
    }
}

#[test]
fn tokens_end_on_every_member_with_their_user_and_unknown_ones_are_refused() {
    let c = Cluster::start_with(3, FLAGS);
    let leader = c.wait_for_leader();
    set_up_auth(&c.endpoint(leader));
    let ports: Vec<u16> = c.members.iter().map(|m| m.client_port).collect();
    let key = b64("/service/x");
    let range = format!(r#"{{"key":"{key}"}}"#);

    // A token no member issued: refused everywhere (after the wait for it).
    for &p in &ports {
        let (code, got) = post(p, "/v3/kv/range", &range, Some("nosuchtokenatall.1"));
        assert_eq!(code, 401, "{got}");
        assert_eq!(got["error"], "etcdserver: invalid auth token");
    }

    // A password change ends the sessions of that user on every member.
    let token = authenticate(ports[(leader + 1) % 3], "patroni", "ppw");
    for &p in &ports {
        assert_eq!(post(p, "/v3/kv/range", &range, Some(&token)).0, 200);
    }
    let ep = c.endpoint(leader);
    let out = etcdctl_stdin(
        &[
            "--endpoints",
            &ep,
            "--user",
            "root:pw",
            "user",
            "passwd",
            "patroni",
            "--interactive=false",
        ],
        b"new-password\n",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Password updated\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for &p in &ports {
        let (code, got) = eventually("the old session to end", || {
            let r = post(p, "/v3/kv/range", &range, Some(&token));
            (r.0 != 200).then_some(r)
        });
        assert_eq!(code, 401, "{got}");
    }
    let (code, got) = post(
        ports[0],
        "/v3/auth/authenticate",
        r#"{"name":"patroni","password":"ppw"}"#,
        None,
    );
    assert_eq!(code, 400, "the old password still authenticates: {got}");
    let token = authenticate(ports[2], "patroni", "new-password");
    for &p in &ports {
        assert_eq!(post(p, "/v3/kv/range", &range, Some(&token)).0, 200);
    }
}
