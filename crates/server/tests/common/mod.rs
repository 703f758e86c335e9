//! A real cluster of `metalraft` processes on loopback for tests.
//!
//! Every member is a child process of the built binary with its own data
//! directory under a per-test temporary directory and its own free ports.
//! Its stderr goes to `<tmp>/<name>.log`, printed when a test fails.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long any "wait until" in the tests may take on a loaded machine.
pub const WAIT: Duration = Duration::from_secs(60);
/// Poll interval of the "wait until" helpers.
pub const POLL: Duration = Duration::from_millis(100);
/// Heartbeat interval used by test clusters (etcd's default).
pub const HEARTBEAT_MS: u64 = 100;
/// Election timeout used by test clusters (etcd's default).
pub const ELECTION_MS: u64 = 1000;

/// One member's fixed identity.
pub struct MemberSpec {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

/// A running (or stopped) cluster.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub members: Vec<MemberSpec>,
    pub children: Vec<Option<Child>>,
    pub extra_flags: Vec<String>,
}

/// Lowest port [`free_port`] hands out.
const TEST_PORT_MIN: u32 = 10_000;

/// A free TCP port on loopback for a member to listen on.
///
/// Picked below the kernel's ephemeral range (`ip_local_port_range`,
/// 32768–60999 by default), never with `bind(0)`: a port the kernel hands
/// out for port 0 comes from that range, and between our pick and the
/// member's own bind any outgoing connection (a client, a peer stream) may
/// take it as its source port, so the member fails with "Address already in
/// use" (seen in CI). Ports are handed out in turn from a per-process start,
/// so tests running in parallel in one process never share one; each is
/// checked free by binding it once.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if ephemeral_low <= TEST_PORT_MIN + 1_000 {
        // No room below the ephemeral range: let the kernel pick.
        let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        return l.local_addr().expect("local addr").port();
    }
    let span = ephemeral_low - TEST_PORT_MIN;
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (TEST_PORT_MIN + (start + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {TEST_PORT_MIN}..{ephemeral_low}");
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_metalraft")
}

impl Cluster {
    /// Starts `n` members and waits until one leads.
    pub fn start(n: usize) -> Cluster {
        Self::start_with(n, &[])
    }

    /// Starts `n` members with extra flags and waits until one leads.
    pub fn start_with(n: usize, extra: &[&str]) -> Cluster {
        let mut c = Self::prepare(n, extra);
        for i in 0..n {
            c.spawn(i);
        }
        c.wait_for_leader();
        c
    }

    /// `n` member specs with fresh ports and data directories, none started.
    pub fn prepare(n: usize, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let members: Vec<MemberSpec> = (0..n)
            .map(|i| {
                let name = format!("m{i}");
                MemberSpec {
                    data_dir: dir.path().join(&name),
                    log: dir.path().join(format!("{name}.log")),
                    name,
                    client_port: free_port(),
                    peer_port: free_port(),
                }
            })
            .collect();
        Cluster {
            dir,
            children: (0..n).map(|_| None).collect(),
            members,
            extra_flags: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The flags member `i` runs with.
    pub fn flags(&self, i: usize) -> Vec<String> {
        let m = &self.members[i];
        let mut f = vec![
            format!("--name={}", m.name),
            format!("--data-dir={}", m.data_dir.display()),
            format!("--listen-client-urls=http://127.0.0.1:{}", m.client_port),
            format!("--advertise-client-urls=http://127.0.0.1:{}", m.client_port),
            format!("--listen-peer-urls=http://127.0.0.1:{}", m.peer_port),
            format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{}",
                m.peer_port
            ),
            format!("--initial-cluster={}", self.initial_cluster()),
            "--initial-cluster-token=test-cluster".to_string(),
            format!("--heartbeat-interval={HEARTBEAT_MS}"),
            format!("--election-timeout={ELECTION_MS}"),
            "--log-level=info".to_string(),
        ];
        f.extend(self.extra_flags.iter().cloned());
        f
    }

    /// Starts member `i` (again).
    pub fn spawn(&mut self, i: usize) {
        self.spawn_with(i, &[]);
    }

    /// Adds a member spec (not started, not in the cluster yet).
    pub fn add_spec(&mut self, name: &str) -> usize {
        self.members.push(MemberSpec {
            data_dir: self.dir.path().join(name),
            log: self.dir.path().join(format!("{name}.log")),
            name: name.to_string(),
            client_port: free_port(),
            peer_port: free_port(),
        });
        self.children.push(None);
        self.members.len() - 1
    }

    /// Adds a member spec `name` and announces it as a learner through
    /// `eps` (`etcdctl member add NAME --peer-urls=... --learner`, checked
    /// to succeed); not started. Its index and etcdctl's output.
    pub fn add_learner(&mut self, eps: &str, name: &str) -> (usize, String) {
        let new = self.add_spec(name);
        let peer = format!("http://127.0.0.1:{}", self.members[new].peer_port);
        let out = etcdctl(&[
            "--endpoints",
            eps,
            "member",
            "add",
            name,
            &format!("--peer-urls={peer}"),
            "--learner",
        ]);
        assert!(out.contains("added to cluster"), "{out}");
        (new, out)
    }

    /// Starts member `i` with extra flags.
    pub fn spawn_with(&mut self, i: usize, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.members[i].log)
            .expect("open member log");
        let child = Command::new(bin())
            .args(self.flags(i))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn metalraft");
        self.children[i] = Some(child);
    }

    /// SIGKILL member `i` and reap it.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            c.kill().expect("kill -9");
            c.wait().expect("wait");
        }
    }

    /// SIGTERM member `i` and wait for it to exit; returns its exit status.
    pub fn terminate(&mut self, i: usize) -> std::process::ExitStatus {
        let pid = self.children[i].as_ref().expect("member running").id();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        self.wait_member_exit(i)
            .expect("member did not exit after SIGTERM")
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].client_port)
    }

    pub fn endpoints(&self) -> String {
        (0..self.members.len())
            .map(|i| self.endpoint(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Endpoints of the members currently running.
    pub fn live_endpoints(&self) -> String {
        (0..self.members.len())
            .filter(|i| self.children[*i].is_some())
            .map(|i| self.endpoint(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The member index that leads, according to a running member's status.
    pub fn leader(&self) -> Option<usize> {
        for i in 0..self.members.len() {
            if self.children[i].is_none() {
                continue;
            }
            let out = etcdctl_try(&[
                "--endpoints",
                &self.endpoint(i),
                "endpoint",
                "status",
                "-w",
                "json",
            ]);
            if !out.status.success() {
                continue;
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let Some(leader) = json_u64(&text, "leader") else {
                continue;
            };
            let Some(me) = json_u64(&text, "member_id") else {
                continue;
            };
            if leader == 0 {
                continue;
            }
            if leader == me {
                return Some(i);
            }
        }
        None
    }

    /// Polls until a running member reports itself leader.
    pub fn wait_for_leader(&self) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(l) = self.leader() {
                return l;
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("no leader within {WAIT:?}");
            }
            std::thread::sleep(POLL);
        }
    }

    /// Prints every member's log (for failing tests).
    pub fn dump_logs(&self) {
        for m in &self.members {
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            eprintln!("===== {} log =====\n{}", m.name, text);
        }
    }

    /// Path of member `i`'s WAL directory.
    pub fn wal_dir(&self, i: usize) -> PathBuf {
        self.members[i].data_dir.join("member").join("wal")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            self.dump_logs();
        }
    }
}

impl Cluster {
    /// Waits for member `i` to exit by itself; on timeout it stays in the
    /// cluster (and is killed when the cluster is dropped).
    pub fn wait_member_exit(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let status = wait_exit(self.children[i].as_mut()?, WAIT)?;
        self.children[i] = None;
        Some(status)
    }
}

/// Waits for a child to exit, up to `timeout`.
pub fn wait_exit(c: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(s)) = c.try_wait() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Pulls `"key":123` out of etcdctl's JSON output.
pub fn json_u64(text: &str, key: &str) -> Option<u64> {
    let pat = format!("\"{key}\":");
    let start = text.find(&pat)? + pat.len();
    let digits: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// The `etcdctl` binary; a test that needs it fails with a clear message
/// when it is missing (CI installs Debian's `etcd-client`).
pub fn etcdctl_path() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let candidates = std::env::var_os("ETCDCTL_BIN")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::env::split_paths(&path).map(|p| p.join("etcdctl")));
    for c in candidates {
        if c.is_file() {
            return c;
        }
    }
    panic!("etcdctl not found: install Debian's `etcd-client` package (apt-get install etcd-client) or set ETCDCTL_BIN");
}

/// Runs etcdctl (API v3) and returns its output, whatever the exit status.
pub fn etcdctl_try(args: &[&str]) -> Output {
    Command::new(etcdctl_path())
        .env("ETCDCTL_API", "3")
        .args(["--command-timeout=10s", "--dial-timeout=3s"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run etcdctl")
}

/// Runs etcdctl, feeding `stdin`.
pub fn etcdctl_stdin(args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(etcdctl_path())
        .env("ETCDCTL_API", "3")
        .args(["--command-timeout=10s", "--dial-timeout=3s"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run etcdctl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("etcdctl output")
}

/// Runs etcdctl and asserts success; returns stdout.
pub fn etcdctl(args: &[&str]) -> String {
    let out = etcdctl_try(args);
    assert!(
        out.status.success(),
        "etcdctl {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Retries `f` until it returns `Some` or [`WAIT`] passes.
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}

/// Segment files of a WAL directory, oldest first.
pub fn wal_segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read wal dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

/// Offsets of the valid frames in a segment, and where its data ends.
pub fn frames(path: &Path) -> (Vec<u64>, u64) {
    let buf = std::fs::read(path).expect("read segment");
    let mut pos = 0usize;
    let mut out = Vec::new();
    while let metalraft::storage::codec::FrameRead::Frame(_, len) =
        metalraft::storage::codec::read_frame(&buf[pos..])
    {
        out.push(pos as u64);
        pos += len;
    }
    (out, pos as u64)
}

/// Errors a client retries: the cluster is electing, busy or slow.
const TRANSIENT: &[&str] = &[
    "leader changed",
    "no leader",
    "request timed out",
    "context deadline exceeded",
    "too many requests",
];

/// `etcdctl put`, retried (like a client would) while the cluster reports a
/// transient condition; any other failure fails the test at once.
pub fn put_ok(eps: &str, key: &str, value: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = etcdctl_try(&["--endpoints", eps, "put", key, value]);
        if out.status.success() {
            return;
        }
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let transient = TRANSIENT.iter().any(|t| err.contains(t));
        assert!(
            transient && Instant::now() < deadline,
            "etcdctl put {key} failed: {err}"
        );
        std::thread::sleep(POLL);
    }
}

/// How many keys under `prefix` the member at `ep` holds, read locally
/// (`--consistency=s`, so a member catching up answers from its own store);
/// 0 when the read fails.
pub fn local_key_count(ep: &str, prefix: &str) -> usize {
    let o = etcdctl_try(&[
        "--endpoints",
        ep,
        "get",
        prefix,
        "--prefix",
        "--keys-only",
        "--consistency=s",
    ]);
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .count()
}

/// `GET path` on 127.0.0.1:`port` over HTTP/1.1; the whole response
/// (status line, headers, body).
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
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

/// The value of an unlabelled Prometheus metric in `GET /metrics` of the
/// member whose client port is `port`.
pub fn metric_value(port: u16, name: &str) -> Option<f64> {
    let body = http_get(port, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
