//! Member-to-member transport over the internal gRPC `Peer` service.
//!
//! Outgoing: two lanes per peer, each its own connection, sender task and
//! queue bounded in messages and bytes — one for Raft messages
//! ([`PEER_QUEUE_MSGS`], [`PEER_QUEUE_BYTES`]) and one for snapshot chunks
//! ([`PEER_SNAPSHOT_QUEUE_MSGS`], [`PEER_SNAPSHOT_QUEUE_BYTES`]), so a large
//! snapshot never delays heartbeats and appends. A full queue drops the
//! message (Raft retransmits; the drop is counted). A task batches
//! everything queued and pipelines the batches over one long-lived,
//! ordered `Stream` call, reconnecting with exponential backoff
//! ([`RECONNECT_BACKOFF_MIN`]..[`RECONNECT_BACKOFF_MAX`]).
//!
//! Incoming: every batch is checked once at the edge — cluster id, a known
//! sender, this member as recipient, each message decoded with postcard and
//! its `from`/`to` matching the envelope — before it reaches the core.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metalraft_core::{Message, MessageBody};
use tokio::sync::mpsc;
use tonic::transport::{ClientTlsConfig, Endpoint};
use url::Url;

use crate::proto::peer::peer_client::PeerClient;
use crate::proto::peer::{Envelope, RaftBatch};

/// Most messages queued for one peer.
pub const PEER_QUEUE_MSGS: usize = 4096;
/// Most encoded bytes queued for one peer.
pub const PEER_QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// Most snapshot-chunk messages queued for one peer (the core also bounds
/// chunks in flight).
pub const PEER_SNAPSHOT_QUEUE_MSGS: usize = 64;
/// Most encoded snapshot-chunk bytes queued for one peer.
pub const PEER_SNAPSHOT_QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// Most messages sent in one `Deliver` call.
pub const MAX_MSGS_PER_BATCH: usize = 512;
/// Most bytes sent in one `Deliver` call (one message may exceed it).
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Largest gRPC message on the peer port, in and out.
pub const PEER_MAX_GRPC_BYTES: usize = 128 * 1024 * 1024;
/// First reconnect delay after a failed send.
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest reconnect delay to a peer that could not be reached: short, so
/// a restarted peer hears from this member within a fraction of a second
/// of listening again (a 2 s cap cost a restarted member up to 0.8 s
/// before the leader reconnected, issue 18; etcd's stream reader redials
/// every 100 ms). A failed dial on a closed port costs one refused SYN.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_millis(200);
/// Delay before dialling again a peer that rejected this member (another
/// cluster, or this member was removed): it will not change its mind soon,
/// and every rejection is logged.
pub const REJECTED_RETRY: Duration = Duration::from_secs(2);
/// A stream that lived this long was healthy: the next failure backs off
/// from [`RECONNECT_BACKOFF_MIN`] again.
pub const RECONNECT_HEALTHY_AFTER: Duration = Duration::from_secs(2);
/// Connect timeout to a peer.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Timeout of one `Deliver` call.
pub const PEER_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Batches buffered between a lane's task and its stream (the pipeline
/// depth beyond what HTTP/2 flow control holds).
pub const STREAM_WINDOW_BATCHES: usize = 64;
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
    /// The snapshot transfer to or from this peer, for the log lines that
    /// time its stages: (snapshot index, first chunk's instant).
    snapshot_transfer: std::sync::Mutex<Option<(u64, std::time::Instant)>>,
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

impl PeerCounters {
    /// Logs the start (offset 0) and the end (last chunk) of a snapshot
    /// transfer with `peer`, `dir` saying which way, with the transfer's time
    /// and rate at the end (issue 18's catch-up breakdown).
    fn note_snapshot_chunk(&self, dir: &'static str, peer: u64, m: &Message<Vec<u8>>) {
        let MessageBody::InstallSnapshot {
            meta,
            offset,
            data,
            done,
        } = &m.body
        else {
            return;
        };
        let mut t = self
            .snapshot_transfer
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *offset == 0 {
            tracing::info!(peer = %format_args!("{peer:x}"), index = meta.index, dir, "snapshot transfer started");
            *t = Some((meta.index, std::time::Instant::now()));
        }
        if *done {
            let bytes = offset.saturating_add(data.len() as u64);
            // Resent last chunks (the heartbeat's go-back-N while the
            // follower restores) are not logged again.
            if let Some((index, started)) = t.take().filter(|(i, _)| *i == meta.index) {
                let secs = started.elapsed().as_secs_f64();
                tracing::info!(
                    peer = %format_args!("{peer:x}"),
                    index,
                    dir,
                    bytes,
                    elapsed_ms = (secs * 1000.0) as u64,
                    mb_per_s = (bytes as f64 / 1e6 / secs.max(1e-6)) as u64,
                    "snapshot transfer's last chunk"
                );
            }
        }
    }
}

impl TransportStats {
    /// Notes an incoming message from `from` (the receiving side of the
    /// snapshot transfer log lines).
    pub fn note_incoming(&self, from: u64, m: &Message<Vec<u8>>) {
        if matches!(m.body, MessageBody::InstallSnapshot { .. }) {
            self.peer(from).note_snapshot_chunk("received", from, m);
        }
    }

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

struct PeerQueue {
    tx: mpsc::Sender<Vec<u8>>,
    queued_bytes: Arc<AtomicUsize>,
    max_bytes: usize,
}

/// The two lanes to one peer, each its own connection and sender task, so
/// snapshot chunks never queue behind (or hold up) appends and heartbeats.
struct PeerLanes {
    raft: PeerQueue,
    snapshots: PeerQueue,
}

/// The sending half: routes messages from the Raft loop to per-peer tasks.
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
        let lane = |msgs: usize, max_bytes: usize| {
            let (tx, rx) = mpsc::channel(msgs);
            let queued_bytes = Arc::new(AtomicUsize::new(0));
            tokio::spawn(sender_task(
                env,
                url.clone(),
                self.tls.clone(),
                rx,
                queued_bytes.clone(),
                self.stats.clone(),
            ));
            PeerQueue {
                tx,
                queued_bytes,
                max_bytes,
            }
        };
        let lanes = PeerLanes {
            raft: lane(PEER_QUEUE_MSGS, PEER_QUEUE_BYTES),
            snapshots: lane(PEER_SNAPSHOT_QUEUE_MSGS, PEER_SNAPSHOT_QUEUE_BYTES),
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

    /// Queues messages; never blocks. Messages to unknown peers or beyond a
    /// queue's bounds are dropped and counted.
    pub fn send(&self, msgs: Vec<Message<Vec<u8>>>) {
        #[cfg(test)]
        if let Some(tap) = &self.tap {
            msgs.into_iter().for_each(|m| tap(m));
            return;
        }
        for m in msgs {
            let Some(lanes) = self.peers.get(&m.to) else {
                tracing::debug!(to = m.to, "message to unknown peer dropped");
                continue;
            };
            let q = if let MessageBody::InstallSnapshot { offset, data, .. } = &m.body {
                let s = &self.stats;
                if *offset == 0 {
                    s.snapshot_sends.fetch_add(1, Ordering::Relaxed);
                }
                s.snapshot_chunks_sent.fetch_add(1, Ordering::Relaxed);
                s.snapshot_bytes_sent
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                s.peer(m.to).note_snapshot_chunk("sent", m.to, &m);
                &lanes.snapshots
            } else {
                &lanes.raft
            };
            let bytes = match postcard::to_allocvec(&m) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "encoding a raft message failed");
                    continue;
                }
            };
            let len = bytes.len();
            let queued = q.queued_bytes.load(Ordering::Relaxed) + len <= q.max_bytes
                && q.tx.try_send(bytes).is_ok();
            if queued {
                q.queued_bytes.fetch_add(len, Ordering::Relaxed);
            } else {
                self.stats
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                self.stats
                    .peer(m.to)
                    .sent_failures
                    .fetch_add(1, Ordering::Relaxed);
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

/// Records and logs a rejection by the peer; whether `status` was one.
fn note_rejection(
    env: &Envelope,
    url: &Url,
    status: &tonic::Status,
    stats: &TransportStats,
) -> bool {
    if status.code() != tonic::Code::PermissionDenied {
        return false;
    }
    if status.message() == crate::registry::REMOVED_MESSAGE {
        stats.removed.store(true, Ordering::Relaxed);
    }
    tracing::warn!(peer = env.to, %url, %status, "peer rejected us");
    true
}

/// Sends one lane's messages over a `Stream` call, reconnecting with
/// backoff, and probes the round trip with an empty `Deliver` every
/// [`PEER_PING_INTERVAL`].
async fn sender_task(
    env: Envelope,
    url: Url,
    tls: Option<ClientTlsConfig>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    queued_bytes: Arc<AtomicUsize>,
    stats: Arc<TransportStats>,
) {
    let ep = match stream_endpoint(&url, tls.as_ref()) {
        Ok(ep) => ep,
        Err(e) => {
            tracing::error!(peer = env.to, %url, error = %e, "bad peer URL");
            return;
        }
    };
    let peer = stats.peer(env.to);
    let mut backoff = RECONNECT_BACKOFF_MIN;
    let mut rejected = false;
    let mut ping = tokio::time::interval(PEER_PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let client = PeerClient::new(ep.connect_lazy())
            .max_decoding_message_size(PEER_MAX_GRPC_BYTES)
            .max_encoding_message_size(PEER_MAX_GRPC_BYTES);
        let (tx, out_rx) = mpsc::channel::<RaftBatch>(STREAM_WINDOW_BATCHES);
        let mut call_client = client.clone();
        let mut call = tokio::spawn(async move {
            call_client
                .stream(tokio_stream::wrappers::ReceiverStream::new(out_rx))
                .await
        });
        let connected_at = tokio::time::Instant::now();
        loop {
            tokio::select! {
                res = &mut call => {
                    if let Ok(Err(status)) = &res {
                        tracing::debug!(peer = env.to, %url, %status, ?backoff, "peer stream ended; reconnecting");
                        rejected = note_rejection(&env, &url, status, &stats);
                    }
                    break;
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
                first = rx.recv() => {
                    let Some(first) = first else {
                        // The peer was removed: stop (dropping `tx` ends the call).
                        return;
                    };
                    let mut bytes = first.len();
                    let mut batch = vec![first];
                    while batch.len() < MAX_MSGS_PER_BATCH && bytes < MAX_BATCH_BYTES {
                        match rx.try_recv() {
                            Ok(m) => {
                                bytes += m.len();
                                batch.push(m);
                            }
                            Err(_) => break,
                        }
                    }
                    queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                    let n = batch.len() as u64;
                    let req = RaftBatch { envelope: Some(env), messages: batch };
                    if tx.send(req).await.is_ok() {
                        stats.batches_sent.fetch_add(1, Ordering::Relaxed);
                        peer.sent_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                    } else {
                        // The call ended; the next turn sees why.
                        stats.dropped_send_failed.fetch_add(n, Ordering::Relaxed);
                        peer.sent_failures.fetch_add(n, Ordering::Relaxed);
                    }
                }
            }
        }
        peer.active.store(false, Ordering::Relaxed);
        // A call that lived long enough was healthy: start backing off anew.
        if connected_at.elapsed() > RECONNECT_HEALTHY_AFTER {
            backoff = RECONNECT_BACKOFF_MIN;
        }
        let pause = match std::mem::take(&mut rejected) {
            true => REJECTED_RETRY,
            false => backoff,
        };
        tokio::time::sleep(pause).await;
        backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
        // Messages queued while disconnected are stale; Raft resends what matters.
        while let Ok(m) = rx.try_recv() {
            queued_bytes.fetch_sub(m.len(), Ordering::Relaxed);
            stats.dropped_send_failed.fetch_add(1, Ordering::Relaxed);
            peer.sent_failures.fetch_add(1, Ordering::Relaxed);
        }
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
