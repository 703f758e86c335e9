//! `healthcheck` — a tiny static HTTP probe for the `FROM scratch` image,
//! which has no shell and no curl. Built with plain `rustc` (std only, no
//! crates) by deploy/build-image.sh.
//!
//! Usage: healthcheck [URL] [EXPECTED]
//!   URL      http://host:port/path  (default http://127.0.0.1:2379/health)
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
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:2379/health".to_string());
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
