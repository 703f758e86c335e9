//! Member-to-member transport over the internal gRPC `Peer` service.
//!
//! Outgoing: two lanes per peer, each its own connection and long-lived,
//! ordered `Stream` call — one for Raft messages and one for snapshot
//! chunks, so a large snapshot never delays heartbeats and appends. The
//! Raft loop encodes the messages of one [`Transport::send`] into one batch
//! per lane and puts it straight onto the lane's live stream (no task hop
//! in between: issue 18); a lane holds at most [`PEER_QUEUE_BATCHES`]
//! batches ([`PEER_SNAPSHOT_QUEUE_BATCHES`] for snapshots) and
//! [`PEER_QUEUE_BYTES`] ([`PEER_SNAPSHOT_QUEUE_BYTES`]) not yet taken by
//! HTTP/2. A full lane, or one whose stream is down, drops the batch (Raft
//! retransmits; the drop is counted). Each lane's task only (re)connects,
//! with exponential backoff ([`RECONNECT_BACKOFF_MIN`]..[`RECONNECT_BACKOFF_MAX`]),
//! and probes the round trip.
//!
//! Incoming: every batch is checked once at the edge — cluster id, a known
//! sender, this member as recipient, each message decoded with postcard and
//! its `from`/`to` matching the envelope — before it reaches the core.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metalraft_core::{Message, MessageBody};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{ClientTlsConfig, Endpoint};
use url::Url;

use crate::proto::peer::peer_client::PeerClient;
use crate::proto::peer::{Envelope, RaftBatch};

/// Most batches queued on one peer's Raft lane (the pipeline depth beyond
/// what HTTP/2 flow control holds).
pub const PEER_QUEUE_BATCHES: usize = 64;
/// Most encoded bytes queued on one peer's Raft lane.
pub const PEER_QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// Most batches queued on one peer's snapshot lane (the core also bounds
/// chunks in flight).
pub const PEER_SNAPSHOT_QUEUE_BATCHES: usize = 64;
/// Most encoded snapshot-chunk bytes queued for one peer.
pub const PEER_SNAPSHOT_QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// Most messages in one batch.
pub const MAX_MSGS_PER_BATCH: usize = 512;
/// Most bytes in one batch (one message may exceed it).
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Largest gRPC message on the peer port, in and out.
pub const PEER_MAX_GRPC_BYTES: usize = 128 * 1024 * 1024;
/// First reconnect delay after a failed send.
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest reconnect delay.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Connect timeout to a peer.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Timeout of one `Deliver` call.
pub const PEER_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often each lane probes the peer's round trip.
pub const PEER_PING_INTERVAL: Duration = Duration::from_secs(1);
/// HTTP/2 keep-alive ping interval on peer streams.
pub const PEER_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// A peer that does not answer a keep-alive within this is considered gone.
pub const PEER_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Counters of the transport.
#[derive(Default, Debug)]
pub struct TransportStats {
    /// Messages dropped because a peer queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Messages dropped because delivery failed.
    pub dropped_send_failed: AtomicU64,
    /// Batches handed to a peer stream.
    pub batches_sent: AtomicU64,
    /// Round-trip probes answered.
    pub pings: AtomicU64,
    /// Incoming batches rejected at the edge.
    pub rejected_incoming: AtomicU64,
    /// Sum of round-trip probe times, in microseconds.
    pub rtt_micros_sum: AtomicU64,
    /// Snapshot transfers started (first chunks queued, restarts from
    /// offset 0 included).
    pub snapshot_sends: AtomicU64,
    /// Snapshot chunks queued for peers.
    pub snapshot_chunks_sent: AtomicU64,
    /// Snapshot bytes queued for peers.
    pub snapshot_bytes_sent: AtomicU64,
    /// A peer told us we were removed from the cluster.
    pub removed: std::sync::atomic::AtomicBool,
    /// Per-peer counters, by member id.
    peers: std::sync::Mutex<BTreeMap<u64, Arc<PeerCounters>>>,
}

/// Upper bounds of `etcd_network_peer_round_trip_time_seconds`: etcd's
/// exponential buckets from 100 µs, doubling, 14 of them.
pub const PEER_RTT_BUCKETS_SECONDS: [f64; 14] = [
    0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512, 0.1024, 0.2048,
    0.4096, 0.8192,
];

/// The counters of one peer, exported with etcd's `To`/`From` labels.
#[derive(Debug, Default)]
pub struct PeerCounters {
    /// Message bytes handed to the peer's streams.
    pub sent_bytes: AtomicU64,
    /// Message bytes received from the peer.
    pub received_bytes: AtomicU64,
    /// Messages that could not be sent (queue full, stream failed).
    pub sent_failures: AtomicU64,
    /// Round-trip probes per bucket (not cumulative; the last is +Inf).
    pub rtt_buckets: [AtomicU64; PEER_RTT_BUCKETS_SECONDS.len() + 1],
    /// Sum of the probes' round trips, in microseconds.
    pub rtt_micros: AtomicU64,
    /// Whether the last probe on a lane to the peer was answered.
    pub active: std::sync::atomic::AtomicBool,
}

impl PeerCounters {
    fn observe_rtt(&self, took: std::time::Duration) {
        let secs = took.as_secs_f64();
        let bucket = PEER_RTT_BUCKETS_SECONDS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(PEER_RTT_BUCKETS_SECONDS.len());
        self.rtt_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.rtt_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
}

impl TransportStats {
    /// The counters of peer `id` (created on first use).
    pub fn peer(&self, id: u64) -> Arc<PeerCounters> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.entry(id).or_default().clone()
    }

    /// Every peer's counters, by id.
    pub fn peers(&self) -> Vec<(u64, Arc<PeerCounters>)> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.iter().map(|(id, c)| (*id, c.clone())).collect()
    }
}

/// The stream a lane feeds while its call is up.
struct LiveStream {
    tx: mpsc::Sender<RaftBatch>,
    /// Encoded bytes put on `tx` and not yet taken by the HTTP/2 body.
    queued_bytes: Arc<AtomicUsize>,
}

/// Where a lane's batches go: its live stream, or none while (re)connecting.
type StreamSlot = Arc<Mutex<Option<LiveStream>>>;

/// One lane to a peer: its own connection and task.
struct Lane {
    live: StreamSlot,
    max_bytes: usize,
    /// Dropped with the lane: its task stops.
    _stop: oneshot::Sender<()>,
}

/// The two lanes to one peer, each its own connection and task, so
/// snapshot chunks never queue behind (or hold up) appends and heartbeats.
struct PeerLanes {
    env: Envelope,
    raft: Lane,
    snapshots: Lane,
}

/// Messages of one [`Transport::send`] for one lane, encoded.
struct Outgoing {
    to: u64,
    snapshots: bool,
    messages: Vec<Vec<u8>>,
    bytes: usize,
}

/// The sending half: routes messages from the Raft loop to per-peer streams.
pub struct Transport {
    peers: BTreeMap<u64, PeerLanes>,
    stats: Arc<TransportStats>,
    tls: Option<ClientTlsConfig>,
    cluster_id: u64,
    me: u64,
    /// Tests only: every message handed to [`Transport::send`] goes here
    /// instead of to a peer lane.
    #[cfg(test)]
    tap: Option<Tap>,
}

/// Receives every message handed to a tapped transport (tests only).
#[cfg(test)]
pub(crate) type Tap = Arc<dyn Fn(Message<Vec<u8>>) + Send + Sync>;

/// Builds a gRPC endpoint for a peer URL; an `https://` URL is dialed with
/// `tls` (the peer CA as roots, this member's peer certificate as client
/// identity). Without `tls` an `https://` peer cannot be reached (connecting
/// fails and is retried).
pub fn endpoint(
    url: &Url,
    tls: Option<&ClientTlsConfig>,
) -> Result<Endpoint, tonic::transport::Error> {
    with_tls(
        Endpoint::from_shared(url.as_str().trim_end_matches('/').to_string())?
            .connect_timeout(PEER_CONNECT_TIMEOUT)
            .timeout(PEER_REQUEST_TIMEOUT)
            .tcp_nodelay(true),
        url,
        tls,
    )
}

/// Applies `tls` to an endpoint of an `https://` URL.
fn with_tls(
    ep: Endpoint,
    url: &Url,
    tls: Option<&ClientTlsConfig>,
) -> Result<Endpoint, tonic::transport::Error> {
    match tls {
        Some(tls) if url.scheme() == "https" => ep.tls_config(tls.clone()),
        _ => Ok(ep),
    }
}

impl Transport {
    /// Starts one sender task per peer; `https://` peers are dialed with
    /// `tls`.
    pub fn start(
        cluster_id: u64,
        me: u64,
        peers: &[(u64, Url)],
        stats: Arc<TransportStats>,
        tls: Option<ClientTlsConfig>,
    ) -> Transport {
        let mut t = Transport {
            peers: BTreeMap::new(),
            stats,
            tls,
            cluster_id,
            me,
            #[cfg(test)]
            tap: None,
        };
        for (id, url) in peers {
            t.add_peer(*id, url.clone());
        }
        t
    }

    /// A transport whose send path hands every message to `tap` (tests
    /// only: the Raft loop above it is the real one).
    #[cfg(test)]
    pub(crate) fn tapped(me: u64, tap: Tap) -> Transport {
        Transport {
            peers: BTreeMap::new(),
            stats: Arc::new(TransportStats::default()),
            tls: None,
            cluster_id: 0,
            me,
            tap: Some(tap),
        }
    }

    /// Starts sending to a new member (no-op if known or if it is us).
    pub fn add_peer(&mut self, id: u64, url: Url) {
        if id == self.me || self.peers.contains_key(&id) {
            return;
        }
        #[cfg(test)]
        if self.tap.is_some() {
            return;
        }
        let env = Envelope {
            cluster_id: self.cluster_id,
            from: self.me,
            to: id,
        };
        let lane = |window: usize, max_bytes: usize| {
            // The first stream is live at once, so what the loop sends
            // before the task first runs waits for the connection.
            let (first, body) = new_stream(window);
            let live: StreamSlot = Arc::new(Mutex::new(Some(first)));
            let (stop, stopped) = oneshot::channel();
            tokio::spawn(sender_task(
                env,
                url.clone(),
                self.tls.clone(),
                live.clone(),
                (window, body),
                stopped,
                self.stats.clone(),
            ));
            Lane {
                live,
                max_bytes,
                _stop: stop,
            }
        };
        let lanes = PeerLanes {
            env,
            raft: lane(PEER_QUEUE_BATCHES, PEER_QUEUE_BYTES),
            snapshots: lane(PEER_SNAPSHOT_QUEUE_BATCHES, PEER_SNAPSHOT_QUEUE_BYTES),
        };
        self.peers.insert(id, lanes);
    }

    /// Stops sending to a removed member (its task ends with its queue).
    pub fn remove_peer(&mut self, id: u64) {
        self.peers.remove(&id);
    }

    /// Whether a peer told this member it was removed from the cluster.
    pub fn removed(&self) -> bool {
        self.stats.removed.load(Ordering::Relaxed)
    }

    /// Queues messages; never blocks. The messages for one lane become
    /// one batch (or several, beyond [`MAX_MSGS_PER_BATCH`] or
    /// [`MAX_BATCH_BYTES`]), in order, put straight onto the lane's
    /// stream. Messages to unknown peers, beyond a lane's bounds or to a
    /// lane whose stream is down are dropped and counted.
    pub fn send(&self, msgs: Vec<Message<Vec<u8>>>) {
        #[cfg(test)]
        if let Some(tap) = &self.tap {
            msgs.into_iter().for_each(|m| tap(m));
            return;
        }
        let mut out: Vec<Outgoing> = Vec::new();
        for m in msgs {
            if !self.peers.contains_key(&m.to) {
                tracing::debug!(to = m.to, "message to unknown peer dropped");
                continue;
            }
            let snapshots = if let MessageBody::InstallSnapshot { offset, data, .. } = &m.body {
                let s = &self.stats;
                if *offset == 0 {
                    s.snapshot_sends.fetch_add(1, Ordering::Relaxed);
                }
                s.snapshot_chunks_sent.fetch_add(1, Ordering::Relaxed);
                s.snapshot_bytes_sent
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                true
            } else {
                false
            };
            let bytes = match postcard::to_allocvec(&m) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "encoding a raft message failed");
                    continue;
                }
            };
            let slot = match out
                .iter()
                .position(|o| o.to == m.to && o.snapshots == snapshots)
            {
                Some(i) => i,
                None => {
                    out.push(Outgoing {
                        to: m.to,
                        snapshots,
                        messages: Vec::new(),
                        bytes: 0,
                    });
                    out.len() - 1
                }
            };
            let o = &mut out[slot];
            o.bytes += bytes.len();
            o.messages.push(bytes);
            if o.messages.len() >= MAX_MSGS_PER_BATCH || o.bytes >= MAX_BATCH_BYTES {
                let full = std::mem::replace(
                    o,
                    Outgoing {
                        to: m.to,
                        snapshots,
                        messages: Vec::new(),
                        bytes: 0,
                    },
                );
                self.put_batch(full);
            }
        }
        for o in out {
            if !o.messages.is_empty() {
                self.put_batch(o);
            }
        }
    }

    /// Puts one lane's batch on its live stream, or drops and counts it.
    fn put_batch(&self, o: Outgoing) {
        let Some(lanes) = self.peers.get(&o.to) else {
            return;
        };
        let lane = if o.snapshots {
            &lanes.snapshots
        } else {
            &lanes.raft
        };
        let n = o.messages.len() as u64;
        let peer = self.stats.peer(o.to);
        let live = lane.live.lock().unwrap_or_else(|e| e.into_inner());
        let Some(stream) = live.as_ref() else {
            self.stats
                .dropped_send_failed
                .fetch_add(n, Ordering::Relaxed);
            peer.sent_failures.fetch_add(n, Ordering::Relaxed);
            return;
        };
        // Counted before the send: the stream may take it at once.
        let before = stream.queued_bytes.fetch_add(o.bytes, Ordering::Relaxed);
        let batch = RaftBatch {
            envelope: Some(lanes.env),
            messages: o.messages,
        };
        let sent = if before + o.bytes > lane.max_bytes {
            Err(true)
        } else {
            stream
                .tx
                .try_send(batch)
                .map_err(|e| matches!(e, mpsc::error::TrySendError::Full(_)))
        };
        match sent {
            Ok(()) => {
                self.stats.batches_sent.fetch_add(1, Ordering::Relaxed);
                peer.sent_bytes.fetch_add(o.bytes as u64, Ordering::Relaxed);
            }
            Err(full) => {
                stream.queued_bytes.fetch_sub(o.bytes, Ordering::Relaxed);
                let counter = if full {
                    &self.stats.dropped_queue_full
                } else {
                    &self.stats.dropped_send_failed
                };
                counter.fetch_add(n, Ordering::Relaxed);
                peer.sent_failures.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

/// Builds the endpoint of a long-lived stream: no request timeout, but
/// HTTP/2 keep-alives so a dead peer is noticed.
fn stream_endpoint(
    url: &Url,
    tls: Option<&ClientTlsConfig>,
) -> Result<Endpoint, tonic::transport::Error> {
    with_tls(
        Endpoint::from_shared(url.as_str().trim_end_matches('/').to_string())?
            .connect_timeout(PEER_CONNECT_TIMEOUT)
            .http2_keep_alive_interval(PEER_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(PEER_KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true),
        url,
        tls,
    )
}

fn note_rejection(env: &Envelope, url: &Url, status: &tonic::Status, stats: &TransportStats) {
    if status.code() == tonic::Code::PermissionDenied {
        if status.message() == crate::registry::REMOVED_MESSAGE {
            stats.removed.store(true, Ordering::Relaxed);
        }
        tracing::warn!(peer = env.to, %url, %status, "peer rejected us");
    }
}

/// What one `Stream` call sends: the batches of its channel, each
/// batch's bytes taken off the lane's count as HTTP/2 takes it.
struct StreamBody {
    rx: mpsc::Receiver<RaftBatch>,
    taken: Arc<AtomicUsize>,
}

impl tokio_stream::Stream for StreamBody {
    type Item = RaftBatch;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<RaftBatch>> {
        let this = self.get_mut();
        let next = this.rx.poll_recv(cx);
        if let std::task::Poll::Ready(Some(b)) = &next {
            let n: usize = b.messages.iter().map(Vec::len).sum();
            this.taken.fetch_sub(n, Ordering::Relaxed);
        }
        next
    }
}

/// A fresh channel for one `Stream` call of a lane holding `window`
/// batches: its sending side (for [`Transport::send`]) and the call's body.
fn new_stream(window: usize) -> (LiveStream, StreamBody) {
    let (tx, rx) = mpsc::channel::<RaftBatch>(window);
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let body = StreamBody {
        rx,
        taken: queued_bytes.clone(),
    };
    (LiveStream { tx, queued_bytes }, body)
}

/// Keeps one lane's `Stream` call up, reconnecting with backoff: each call
/// gets a fresh channel, published in `live` for [`Transport::send`] while
/// the call lasts. Probes the round trip with an empty `Deliver` every
/// [`PEER_PING_INTERVAL`]. The first call's channel was made (and
/// published) by [`Transport::add_peer`]. Stops when the lane is dropped
/// (`stopped`).
async fn sender_task(
    env: Envelope,
    url: Url,
    tls: Option<ClientTlsConfig>,
    live: StreamSlot,
    (window, first): (usize, StreamBody),
    mut stopped: oneshot::Receiver<()>,
    stats: Arc<TransportStats>,
) {
    let ep = match stream_endpoint(&url, tls.as_ref()) {
        Ok(ep) => ep,
        Err(e) => {
            tracing::error!(peer = env.to, %url, error = %e, "bad peer URL");
            return;
        }
    };
    let set_live = |s: Option<LiveStream>| {
        *live.lock().unwrap_or_else(|e| e.into_inner()) = s;
    };
    let peer = stats.peer(env.to);
    let mut backoff = RECONNECT_BACKOFF_MIN;
    let mut ping = tokio::time::interval(PEER_PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next = Some(first);
    loop {
        let client = PeerClient::new(ep.connect_lazy())
            .max_decoding_message_size(PEER_MAX_GRPC_BYTES)
            .max_encoding_message_size(PEER_MAX_GRPC_BYTES);
        let body = match next.take() {
            Some(body) => body,
            None => {
                let (stream, body) = new_stream(window);
                set_live(Some(stream));
                body
            }
        };
        let mut call_client = client.clone();
        let mut call = tokio::spawn(async move { call_client.stream(body).await });
        let connected_at = tokio::time::Instant::now();
        loop {
            tokio::select! {
                res = &mut call => {
                    if let Ok(Err(status)) = &res {
                        tracing::debug!(peer = env.to, %url, %status, ?backoff, "peer stream ended; reconnecting");
                        note_rejection(&env, &url, status, &stats);
                    }
                    break;
                }
                _ = &mut stopped => {
                    // The peer was removed: dropping the sender ends the call.
                    set_live(None);
                    return;
                }
                _ = ping.tick() => {
                    let mut c = client.clone();
                    let stats = stats.clone();
                    let peer = peer.clone();
                    let url = url.clone();
                    tokio::spawn(async move {
                        let started = std::time::Instant::now();
                        let req = RaftBatch { envelope: Some(env), messages: Vec::new() };
                        match tokio::time::timeout(PEER_REQUEST_TIMEOUT, c.deliver(req)).await {
                            Ok(Ok(_)) => {
                                let took = started.elapsed();
                                stats.pings.fetch_add(1, Ordering::Relaxed);
                                stats.rtt_micros_sum.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
                                peer.observe_rtt(took);
                                peer.active.store(true, Ordering::Relaxed);
                            }
                            Ok(Err(status)) => {
                                peer.active.store(false, Ordering::Relaxed);
                                note_rejection(&env, &url, &status, &stats);
                            }
                            Err(_) => peer.active.store(false, Ordering::Relaxed),
                        }
                    });
                }
            }
        }
        // Batches sent until the next call are dropped and counted: they
        // are stale by then, and Raft resends what matters.
        set_live(None);
        peer.active.store(false, Ordering::Relaxed);
        // A call that lived long enough was healthy: start backing off anew.
        if connected_at.elapsed() > RECONNECT_BACKOFF_MAX {
            backoff = RECONNECT_BACKOFF_MIN;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = &mut stopped => return,
        }
        backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
    }
}

/// Why an incoming batch was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IncomingError {
    /// No envelope.
    #[error("missing envelope")]
    NoEnvelope,
    /// Another cluster (different token or member set).
    #[error("cluster id mismatch: got {got:x}, this member belongs to {want:x}")]
    ClusterMismatch {
        /// Received.
        got: u64,
        /// Ours.
        want: u64,
    },
    /// The sender is not a member.
    #[error("sender {0:x} is not a member of this cluster")]
    UnknownSender(u64),
    /// Addressed to another member.
    #[error("batch addressed to {0:x}, not this member")]
    WrongRecipient(u64),
    /// A message did not decode or contradicts the envelope.
    #[error("malformed message {index} in batch: {reason}")]
    Malformed {
        /// Position in the batch.
        index: usize,
        /// Why.
        reason: String,
    },
}

/// Validates the envelope of an incoming batch.
pub fn check_envelope(
    env: Option<&Envelope>,
    cluster_id: u64,
    me: u64,
    is_member: impl Fn(u64) -> bool,
) -> Result<Envelope, IncomingError> {
    let env = env.ok_or(IncomingError::NoEnvelope)?;
    if env.cluster_id != cluster_id {
        return Err(IncomingError::ClusterMismatch {
            got: env.cluster_id,
            want: cluster_id,
        });
    }
    if !is_member(env.from) || env.from == me {
        return Err(IncomingError::UnknownSender(env.from));
    }
    if env.to != me {
        return Err(IncomingError::WrongRecipient(env.to));
    }
    Ok(*env)
}

/// Decodes and checks the messages of a batch whose envelope is valid.
pub fn decode_batch(
    env: &Envelope,
    messages: &[Vec<u8>],
) -> Result<Vec<Message<Vec<u8>>>, IncomingError> {
    let mut out = Vec::with_capacity(messages.len());
    for (index, raw) in messages.iter().enumerate() {
        let m: Message<Vec<u8>> =
            postcard::from_bytes(raw).map_err(|e| IncomingError::Malformed {
                index,
                reason: e.to_string(),
            })?;
        if m.from != env.from || m.to != env.to {
            return Err(IncomingError::Malformed {
                index,
                reason: format!(
                    "message from {:x} to {:x} in a batch from {:x} to {:x}",
                    m.from, m.to, env.from, env.to
                ),
            });
        }
        out.push(m);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use metalraft_core::MessageBody;

    fn env() -> Envelope {
        Envelope {
            cluster_id: 7,
            from: 2,
            to: 1,
        }
    }

    #[test]
    fn envelopes_from_other_clusters_or_strangers_are_rejected() {
        let member = |id| id == 1 || id == 2;
        assert!(check_envelope(Some(&env()), 7, 1, member).is_ok());
        assert_eq!(
            check_envelope(None, 7, 1, member),
            Err(IncomingError::NoEnvelope)
        );
        assert!(matches!(
            check_envelope(Some(&env()), 8, 1, member),
            Err(IncomingError::ClusterMismatch { .. })
        ));
        let stranger = Envelope { from: 9, ..env() };
        assert_eq!(
            check_envelope(Some(&stranger), 7, 1, member),
            Err(IncomingError::UnknownSender(9))
        );
        let misrouted = Envelope { to: 3, ..env() };
        assert_eq!(
            check_envelope(Some(&misrouted), 7, 1, member),
            Err(IncomingError::WrongRecipient(3))
        );
    }

    #[test]
    fn garbage_and_spoofed_messages_are_rejected() {
        let good = Message::<Vec<u8>> {
            from: 2,
            to: 1,
            term: 3,
            body: MessageBody::TimeoutNow,
        };
        let bytes = postcard::to_allocvec(&good).unwrap();
        assert_eq!(
            decode_batch(&env(), std::slice::from_ref(&bytes)).unwrap(),
            vec![good.clone()]
        );
        let spoofed = postcard::to_allocvec(&Message { from: 3, ..good }).unwrap();
        assert!(decode_batch(&env(), &[spoofed]).is_err());
        for garbage in [vec![], vec![0xff; 3], b"GET / HTTP/1.1\r\n".to_vec()] {
            assert!(decode_batch(&env(), &[garbage]).is_err());
        }
        // Every truncation of a valid message is an error or a different
        // valid message, never a panic.
        for cut in 0..bytes.len() {
            let _ = decode_batch(&env(), &[bytes[..cut].to_vec()]);
        }
    }
}
