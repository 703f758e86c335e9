//! Per-method gRPC server metrics, with the names, labels and buckets of
//! go-grpc-prometheus, which etcd registers on its gRPC server:
//! `grpc_server_started_total`, `grpc_server_handled_total` (by status
//! code), `grpc_server_msg_received_total`, `grpc_server_msg_sent_total`,
//! and with `--metrics=extensive` the `grpc_server_handling_seconds`
//! histogram. Also etcd's `etcd_network_client_grpc_{received,sent}_bytes_total`.
//!
//! Contract:
//! - Every method of the services this member serves is pre-registered at
//!   zero (as go-grpc-prometheus does), so alert rules computing rates see
//!   the series before the first error. Paths that are not one of them
//!   (the HTTP gateway, `/metrics`, unknown methods) are not counted.
//! - A call is counted as started when its request arrives, and as handled
//!   exactly once, with the `grpc-status` it ended with: from the response
//!   headers (a trailers-only error), from the trailers, or `Canceled` when
//!   the response is dropped before its status was sent (the client went
//!   away).
//! - Messages are counted by reading gRPC's length-prefixed framing in the
//!   bodies as they stream through; bytes are the body bytes (framing
//!   included).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use bytes::Bytes;
use http_body::Frame;

/// go-grpc-prometheus's `grpc_type` label values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrpcType {
    /// One request, one response.
    Unary,
    /// A request stream, one response.
    ClientStream,
    /// One request, a response stream.
    ServerStream,
    /// Streams both ways.
    BidiStream,
}

impl GrpcType {
    fn label(self) -> &'static str {
        match self {
            GrpcType::Unary => "unary",
            GrpcType::ClientStream => "client_stream",
            GrpcType::ServerStream => "server_stream",
            GrpcType::BidiStream => "bidi_stream",
        }
    }
}

use GrpcType::{BidiStream, ServerStream, Unary};

/// The gRPC methods this member serves on its client port: (service,
/// method, type). Lock and Election are served as etcd serves them (etcd
/// registers them after the metrics interceptor's pre-registration, so it
/// lists them only once called; here they are listed from the start).
pub const CLIENT_METHODS: &[(&str, &str, GrpcType)] = &[
    ("etcdserverpb.KV", "Range", Unary),
    ("etcdserverpb.KV", "Put", Unary),
    ("etcdserverpb.KV", "DeleteRange", Unary),
    ("etcdserverpb.KV", "Txn", Unary),
    ("etcdserverpb.KV", "Compact", Unary),
    ("etcdserverpb.Watch", "Watch", BidiStream),
    ("etcdserverpb.Lease", "LeaseGrant", Unary),
    ("etcdserverpb.Lease", "LeaseRevoke", Unary),
    ("etcdserverpb.Lease", "LeaseKeepAlive", BidiStream),
    ("etcdserverpb.Lease", "LeaseTimeToLive", Unary),
    ("etcdserverpb.Lease", "LeaseLeases", Unary),
    ("etcdserverpb.Cluster", "MemberAdd", Unary),
    ("etcdserverpb.Cluster", "MemberRemove", Unary),
    ("etcdserverpb.Cluster", "MemberUpdate", Unary),
    ("etcdserverpb.Cluster", "MemberList", Unary),
    ("etcdserverpb.Cluster", "MemberPromote", Unary),
    ("etcdserverpb.Maintenance", "Alarm", Unary),
    ("etcdserverpb.Maintenance", "Status", Unary),
    ("etcdserverpb.Maintenance", "Defragment", Unary),
    ("etcdserverpb.Maintenance", "Hash", Unary),
    ("etcdserverpb.Maintenance", "HashKV", Unary),
    ("etcdserverpb.Maintenance", "Snapshot", ServerStream),
    ("etcdserverpb.Maintenance", "MoveLeader", Unary),
    ("etcdserverpb.Auth", "AuthEnable", Unary),
    ("etcdserverpb.Auth", "AuthDisable", Unary),
    ("etcdserverpb.Auth", "Authenticate", Unary),
    ("etcdserverpb.Auth", "UserAdd", Unary),
    ("etcdserverpb.Auth", "UserGet", Unary),
    ("etcdserverpb.Auth", "UserList", Unary),
    ("etcdserverpb.Auth", "UserDelete", Unary),
    ("etcdserverpb.Auth", "UserChangePassword", Unary),
    ("etcdserverpb.Auth", "UserGrantRole", Unary),
    ("etcdserverpb.Auth", "UserRevokeRole", Unary),
    ("etcdserverpb.Auth", "RoleAdd", Unary),
    ("etcdserverpb.Auth", "RoleGet", Unary),
    ("etcdserverpb.Auth", "RoleList", Unary),
    ("etcdserverpb.Auth", "RoleDelete", Unary),
    ("etcdserverpb.Auth", "RoleGrantPermission", Unary),
    ("etcdserverpb.Auth", "RoleRevokePermission", Unary),
    ("v3lockpb.Lock", "Lock", Unary),
    ("v3lockpb.Lock", "Unlock", Unary),
    ("v3electionpb.Election", "Campaign", Unary),
    ("v3electionpb.Election", "Proclaim", Unary),
    ("v3electionpb.Election", "Leader", Unary),
    ("v3electionpb.Election", "Observe", ServerStream),
    ("v3electionpb.Election", "Resign", Unary),
    ("grpc.health.v1.Health", "Check", Unary),
    ("grpc.health.v1.Health", "Watch", ServerStream),
];

/// gRPC status codes by number, with go-grpc-prometheus's label spelling.
pub const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The code a call is counted with when its response is dropped before a
/// status was sent.
const CODE_CANCELED: usize = 1;
/// The code a `grpc-status` that is not a number 0–16 is counted as.
const CODE_UNKNOWN: usize = 2;

/// Upper bounds of `grpc_server_handling_seconds` (Prometheus' default
/// buckets, which go-grpc-prometheus uses).
pub const HANDLING_BUCKETS_SECONDS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Bytes of gRPC's message prefix: a compression flag and a big-endian
/// u32 length.
const GRPC_PREFIX_BYTES: usize = 5;

/// One method's counters.
#[derive(Debug)]
struct MethodStats {
    service: &'static str,
    method: &'static str,
    kind: GrpcType,
    started: AtomicU64,
    handled: [AtomicU64; CODES.len()],
    msg_received: AtomicU64,
    msg_sent: AtomicU64,
    /// Per bucket (not cumulative), the last one is +Inf.
    handling: [AtomicU64; HANDLING_BUCKETS_SECONDS.len() + 1],
    handling_micros: AtomicU64,
}

/// The gRPC metrics of one member's client port.
#[derive(Debug)]
pub struct GrpcMetrics {
    methods: Vec<MethodStats>,
    by_path: HashMap<String, usize>,
    extensive: bool,
    received_bytes: AtomicU64,
    sent_bytes: AtomicU64,
}

impl GrpcMetrics {
    /// Metrics for [`CLIENT_METHODS`]; `extensive` adds the handling-time
    /// histogram (etcd's `--metrics=extensive`).
    pub fn new(extensive: bool) -> GrpcMetrics {
        let methods: Vec<MethodStats> = CLIENT_METHODS
            .iter()
            .map(|&(service, method, kind)| MethodStats {
                service,
                method,
                kind,
                started: AtomicU64::new(0),
                handled: std::array::from_fn(|_| AtomicU64::new(0)),
                msg_received: AtomicU64::new(0),
                msg_sent: AtomicU64::new(0),
                handling: std::array::from_fn(|_| AtomicU64::new(0)),
                handling_micros: AtomicU64::new(0),
            })
            .collect();
        let by_path = methods
            .iter()
            .enumerate()
            .map(|(i, m)| (format!("/{}/{}", m.service, m.method), i))
            .collect();
        GrpcMetrics {
            methods,
            by_path,
            extensive,
            received_bytes: AtomicU64::new(0),
            sent_bytes: AtomicU64::new(0),
        }
    }

    /// Counts a call to `path` as started and returns its tracker, or
    /// `None` when `path` is not a counted method.
    pub fn start(self: &Arc<Self>, path: &str) -> Option<Arc<Call>> {
        let &method = self.by_path.get(path)?;
        self.methods[method].started.fetch_add(1, Ordering::Relaxed);
        Some(Arc::new(Call {
            metrics: self.clone(),
            method,
            started: Instant::now(),
            done: AtomicBool::new(false),
        }))
    }

    /// Appends the Prometheus text of every series.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let labels = |m: &MethodStats| {
            format!(
                "grpc_method=\"{}\",grpc_service=\"{}\",grpc_type=\"{}\"",
                m.method,
                m.service,
                m.kind.label()
            )
        };
        let header = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        header(
            out,
            "grpc_server_handled_total",
            "counter",
            "Total number of RPCs completed on the server, regardless of success or failure.",
        );
        for (code, name) in CODES.iter().enumerate() {
            for m in &self.methods {
                let _ = writeln!(
                    out,
                    "grpc_server_handled_total{{grpc_code=\"{name}\",{}}} {}",
                    labels(m),
                    m.handled[code].load(Ordering::Relaxed)
                );
            }
        }
        for (name, help, get) in [
            (
                "grpc_server_msg_received_total",
                "Total number of RPC stream messages received on the server.",
                (|m: &MethodStats| &m.msg_received) as fn(&MethodStats) -> &AtomicU64,
            ),
            (
                "grpc_server_msg_sent_total",
                "Total number of gRPC stream messages sent by the server.",
                |m: &MethodStats| &m.msg_sent,
            ),
            (
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
                |m: &MethodStats| &m.started,
            ),
        ] {
            header(out, name, "counter", help);
            for m in &self.methods {
                let _ = writeln!(
                    out,
                    "{name}{{{}}} {}",
                    labels(m),
                    get(m).load(Ordering::Relaxed)
                );
            }
        }
        if self.extensive {
            let name = "grpc_server_handling_seconds";
            header(
                out,
                name,
                "histogram",
                "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
            );
            for m in &self.methods {
                let l = labels(m);
                let mut cumulative = 0;
                for (i, le) in HANDLING_BUCKETS_SECONDS.iter().enumerate() {
                    cumulative += m.handling[i].load(Ordering::Relaxed);
                    let _ = writeln!(out, "{name}_bucket{{{l},le=\"{le}\"}} {cumulative}");
                }
                cumulative += m.handling[HANDLING_BUCKETS_SECONDS.len()].load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}_bucket{{{l},le=\"+Inf\"}} {cumulative}");
                let micros = m.handling_micros.load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}_sum{{{l}}} {}", micros as f64 / 1e6);
                let _ = writeln!(out, "{name}_count{{{l}}} {cumulative}");
            }
        }
        for (name, help, v) in [
            (
                "etcd_network_client_grpc_received_bytes_total",
                "The total number of bytes received from grpc clients.",
                &self.received_bytes,
            ),
            (
                "etcd_network_client_grpc_sent_bytes_total",
                "The total number of bytes sent to grpc clients.",
                &self.sent_bytes,
            ),
        ] {
            header(out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
    }

    /// The handled count of `path` with status `code` (tests).
    pub fn handled(&self, path: &str, code: tonic::Code) -> u64 {
        self.by_path
            .get(path)
            .map(|&i| self.methods[i].handled[code as usize].load(Ordering::Relaxed))
            .unwrap_or(0)
    }
}

/// One call in progress; finished exactly once.
#[derive(Debug)]
pub struct Call {
    metrics: Arc<GrpcMetrics>,
    method: usize,
    started: Instant,
    done: AtomicBool,
}

impl Call {
    fn stats(&self) -> &MethodStats {
        &self.metrics.methods[self.method]
    }

    /// Counts the call as handled with `code` (0–16), once.
    fn finish(&self, code: usize) {
        if self.done.swap(true, Ordering::Relaxed) {
            return;
        }
        let m = self.stats();
        m.handled[code.min(CODES.len() - 1)].fetch_add(1, Ordering::Relaxed);
        if self.metrics.extensive {
            let took = self.started.elapsed();
            let secs = took.as_secs_f64();
            let bucket = HANDLING_BUCKETS_SECONDS
                .iter()
                .position(|le| secs <= *le)
                .unwrap_or(HANDLING_BUCKETS_SECONDS.len());
            m.handling[bucket].fetch_add(1, Ordering::Relaxed);
            m.handling_micros
                .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        }
    }

    /// Finishes from a `grpc-status` header or trailer value.
    fn finish_with(&self, status: &http::HeaderValue) {
        let code = status
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|c| *c < CODES.len())
            .unwrap_or(CODE_UNKNOWN);
        self.finish(code);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // Every body wrapper and the middleware hold the call; the last one
        // to go without a status means the response never completed.
        self.finish(CODE_CANCELED);
    }
}

/// Counts gRPC messages in a byte stream by following the 5-byte prefixes.
#[derive(Debug, Default)]
pub struct MessageCounter {
    /// Prefix bytes read so far of the current message (0 while in a payload).
    prefix: [u8; GRPC_PREFIX_BYTES],
    prefix_len: usize,
    /// Payload bytes still to skip.
    payload_left: u64,
}

impl MessageCounter {
    /// Feeds the next bytes; returns how many messages started in them.
    pub fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut messages = 0;
        while !data.is_empty() {
            if self.payload_left > 0 {
                let skip = self.payload_left.min(data.len() as u64);
                self.payload_left -= skip;
                data = &data[skip as usize..];
                continue;
            }
            let take = (GRPC_PREFIX_BYTES - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&data[..take]);
            self.prefix_len += take;
            data = &data[take..];
            if self.prefix_len == GRPC_PREFIX_BYTES {
                messages += 1;
                self.prefix_len = 0;
                let len = [
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ];
                self.payload_left = u64::from(u32::from_be_bytes(len));
            }
        }
        messages
    }
}

/// Which way a body flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

/// A body that counts its messages and bytes, and (for a response)
/// finishes the call with the status in its trailers.
struct CountedBody {
    inner: Body,
    call: Arc<Call>,
    side: Side,
    counter: MessageCounter,
}

impl http_body::Body for CountedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let messages = this.counter.feed(data);
                let m = this.call.stats();
                let metrics = &this.call.metrics;
                let (msgs, bytes) = match this.side {
                    Side::Request => (&m.msg_received, &metrics.received_bytes),
                    Side::Response => (&m.msg_sent, &metrics.sent_bytes),
                };
                msgs.fetch_add(messages, Ordering::Relaxed);
                bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            } else if let Some(trailers) = frame.trailers_ref() {
                if this.side == Side::Response {
                    if let Some(status) = trailers.get("grpc-status") {
                        this.call.finish_with(status);
                    }
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The axum middleware: counts the call around the rest of the stack.
pub async fn layer(
    axum::extract::State(metrics): axum::extract::State<Arc<GrpcMetrics>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let Some(call) = metrics.start(req.uri().path()) else {
        return next.run(req).await;
    };
    let req = req.map(|inner| {
        Body::new(CountedBody {
            inner,
            call: call.clone(),
            side: Side::Request,
            counter: MessageCounter::default(),
        })
    });
    let res = next.run(req).await;
    if let Some(status) = res.headers().get("grpc-status") {
        // Trailers-only: the status is already known.
        call.finish_with(status);
        return res;
    }
    res.map(|inner| {
        Body::new(CountedBody {
            inner,
            call,
            side: Side::Response,
            counter: MessageCounter::default(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            out.push(0);
            out.extend_from_slice(&(p.len() as u32).to_be_bytes());
            out.extend_from_slice(p);
        }
        out
    }

    #[test]
    fn messages_are_counted_however_the_bytes_are_split() {
        let bytes = framed(&[b"hello", b"", &[7u8; 300], b"x"]);
        for chunk in 1..=bytes.len() {
            let mut c = MessageCounter::default();
            let n: u64 = bytes.chunks(chunk).map(|b| c.feed(b)).sum();
            assert_eq!(n, 4, "chunk size {chunk}");
            assert_eq!((c.prefix_len, c.payload_left), (0, 0));
        }
        let mut c = MessageCounter::default();
        assert_eq!(c.feed(&bytes[..3]), 0, "a partial prefix is no message yet");
        assert_eq!(c.feed(&bytes[3..]), 4);
    }

    #[test]
    fn every_method_is_pre_registered_and_unknown_paths_are_not_counted() {
        let m = Arc::new(GrpcMetrics::new(true));
        assert!(m.start("/etcdserverpb.KV/Nope").is_none());
        assert!(m.start("/v3/kv/range").is_none());
        let mut out = String::new();
        m.render(&mut out);
        let handled = out
            .lines()
            .filter(|l| l.starts_with("grpc_server_handled_total{"))
            .count();
        assert_eq!(handled, CODES.len() * CLIENT_METHODS.len());
        assert!(out.contains(
            "grpc_server_started_total{grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"} 0"
        ));
        assert!(out.contains("grpc_server_handling_seconds_bucket{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\",le=\"0.005\"} 0"));
        let mut basic = String::new();
        GrpcMetrics::new(false).render(&mut basic);
        assert!(!basic.contains("grpc_server_handling_seconds"));
    }

    #[test]
    fn a_call_is_handled_once_with_its_status_or_canceled_when_dropped() {
        let m = Arc::new(GrpcMetrics::new(true));
        let path = "/etcdserverpb.KV/Put";
        let call = m.start(path).unwrap();
        call.finish_with(&http::HeaderValue::from_static("9"));
        call.finish_with(&http::HeaderValue::from_static("0"));
        drop(call);
        assert_eq!(m.handled(path, tonic::Code::FailedPrecondition), 1);
        assert_eq!(m.handled(path, tonic::Code::Ok), 0);
        assert_eq!(m.handled(path, tonic::Code::Cancelled), 0);
        drop(m.start(path).unwrap());
        assert_eq!(m.handled(path, tonic::Code::Cancelled), 1);
        let call = m.start(path).unwrap();
        call.finish_with(&http::HeaderValue::from_static("garbage"));
        assert_eq!(m.handled(path, tonic::Code::Unknown), 1);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("grpc_server_started_total{grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 3"));
        assert!(out.contains("grpc_server_handling_seconds_count{grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 3"));
    }
}
