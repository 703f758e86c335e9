//! `healthcheck` — a tiny static HTTP probe for the `FROM scratch` image,
//! which has no shell and no curl. Built with plain `rustc` (std only, no
//! crates) by deploy/build-image.sh.
//!
//! Usage: healthcheck [URL] [EXPECTED]
//!   URL      http://host:port/path. Default: `/health` on the first
//!            `http://` URL of $ETCD_LISTEN_METRICS_URLS, else of
//!            $ETCD_LISTEN_CLIENT_URLS (a wildcard host becomes 127.0.0.1),
//!            else http://127.0.0.1:2379/health. So a member whose client
//!            URLs are https-only is probed on its plain metrics URL, as
//!            etcd operators do (the probe speaks no TLS).
//!   EXPECTED substring the body must contain (default `"health":"true"`)
//!
//! Exits 0 when the answer is HTTP 200 and the body contains EXPECTED,
//! 1 otherwise (message on stderr). Times out after 3 seconds.
//!
//! `/health` answers 503 when unhealthy; the body is checked as well so a
//! different service answering 200 on the port is not taken for healthy.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::exit;
use std::time::Duration;

fn fail(msg: String) -> ! {
    eprintln!("healthcheck: {msg}");
    exit(1)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(default_url);
    let expect = args
        .next()
        .unwrap_or_else(|| "\"health\":\"true\"".to_string());
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| fail(format!("only http:// URLs are supported: {url}")));
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let timeout = Duration::from_secs(3);
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| fail(format!("resolve {hostport}: {e}")))
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| fail(format!("{hostport} resolves to no address")));
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .unwrap_or_else(|e| fail(format!("connect {addr}: {e}")));
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let req = format!("GET {path} HTTP/1.0\r\nHost: {hostport}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .unwrap_or_else(|e| fail(format!("send: {e}")));
    let mut buf = Vec::new();
    if let Err(e) = s.take(1 << 20).read_to_end(&mut buf) {
        fail(format!("read: {e}"));
    }
    let text = String::from_utf8_lossy(&buf);
    let status_ok = text
        .lines()
        .next()
        .map(|l| l.split_whitespace().nth(1) == Some("200"))
        .unwrap_or(false);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    if !status_ok || !body.contains(&expect) {
        fail(format!(
            "{url}: {} / body {body:?} (want 200 and {expect:?})",
            text.lines().next().unwrap_or("no answer")
        ));
    }
    println!("{}", body.trim());
}

/// `/health` on the first plain-HTTP metrics or client URL the member
/// listens on (from the container's etcd environment).
fn default_url() -> String {
    for var in ["ETCD_LISTEN_METRICS_URLS", "ETCD_LISTEN_CLIENT_URLS"] {
        let Ok(list) = std::env::var(var) else { continue };
        for u in list.split(',').map(str::trim) {
            let Some(rest) = u.strip_prefix("http://") else { continue };
            let hostport = rest.split('/').next().unwrap_or(rest);
            let hostport = match hostport.rsplit_once(':') {
                Some(("0.0.0.0" | "[::]" | "", port)) => format!("127.0.0.1:{port}"),
                Some(_) => hostport.to_string(),
                None => continue,
            };
            return format!("http://{hostport}/health");
        }
    }
    if std::env::var("ETCD_LISTEN_CLIENT_URLS").is_ok_and(|v| v.contains("https://")) {
        fail("the client URLs are https-only and no http:// metrics URL is set: add --listen-metrics-urls=http://0.0.0.0:2381 (ETCD_LISTEN_METRICS_URLS) for the probe".to_string());
    }
    "http://127.0.0.1:2379/health".to_string()
}
