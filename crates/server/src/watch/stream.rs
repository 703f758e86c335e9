//! One gRPC Watch stream: its watchers, its task, and etcd's answers.

// tonic's handlers return `Result<_, Status>`; `Status` is large by design.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use metalraft_kv as kv;
use prost::Message;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::feed::{FeedBatch, WatchStats};
use super::{
    CATCH_UP_BATCH_EVENTS, MAX_WATCHERS_PER_STREAM, NO_WATCH_ID, REQUIRE_LEADER_KEY,
    WATCH_SEND_BUFFER,
};
use crate::api::Shared;
use crate::command;
use crate::errors::EtcdError;
use crate::proto::etcdserverpb as pb;
use crate::proto::mvccpb;

/// etcd's cancel reason for a client-chosen id already in use.
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
/// etcd's cancel reason for a range that holds no key.
const EMPTY_RANGE: &str = "mvcc: watcher range is empty";
/// Cancel reason once a stream holds [`MAX_WATCHERS_PER_STREAM`] watchers.
const TOO_MANY: &str = "too many watchers on this stream";
/// etcd's `WatchCreateRequest.FilterType` values.
const FILTER_NOPUT: i32 = 0;
const FILTER_NODELETE: i32 = 1;

/// etcd's Watch service.
pub struct WatchService(pub Arc<Shared>);

type Outbound = mpsc::Sender<Result<pb::WatchResponse, Status>>;

#[tonic::async_trait]
impl pb::watch_server::Watch for WatchService {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

    async fn watch(
        &self,
        req: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let s = self.0.clone();
        let needs_leader = req
            .metadata()
            .get(REQUIRE_LEADER_KEY)
            .is_some_and(|v| v.as_bytes() == b"true");
        if needs_leader && s.raft.status.borrow().leader.is_none() {
            return Err(EtcdError::NoLeader.into());
        }
        // The feed is subscribed before anything is read, so no applied
        // batch can fall between what the store shows a new watcher and
        // what the feed brings.
        let user = crate::auth::service::caller(&s.raft.auth, &req)?;
        let out = serve_stream(s, req.into_inner(), user);
        Ok(Response::new(Box::pin(out)))
    }
}

/// Serves one Watch stream whose requests come from `inbound` (the gRPC
/// stream, or the HTTP gateway's decoded body) for the auth user `user`
/// (whose read permission each watch create needs while auth is enabled):
/// returns the responses.
pub fn serve_stream<S>(
    shared: Arc<Shared>,
    inbound: S,
    user: Option<String>,
) -> impl Stream<Item = Result<pb::WatchResponse, Status>> + Send
where
    S: Stream<Item = Result<pb::WatchRequest, Status>> + Send + Unpin + 'static,
{
    let feed = shared.raft.watch_feed.subscribe();
    let (out, rx) = mpsc::channel(WATCH_SEND_BUFFER);
    let stats = shared.raft.watch_feed.stats.clone();
    WatchStats::add(&stats.streams, 1);
    let task = StreamTask {
        stats,
        shared,
        user,
        watchers: BTreeMap::new(),
        next_auto_id: 0,
        out,
    };
    tokio::spawn(task.run(inbound, feed));
    ReceiverStream::new(rx)
}

/// One watcher of a stream.
#[derive(Debug)]
struct Watcher {
    key: Vec<u8>,
    range_end: Vec<u8>,
    /// Every revision below this was delivered or did not concern us.
    next_revision: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    fragment: bool,
    /// Whether events were sent since the last progress tick.
    sent_since_tick: bool,
}

impl Watcher {
    fn wants(&self, c: &kv::Change) -> bool {
        let kind_ok = match c.kind {
            kv::ChangeKind::Put => !self.no_put,
            kv::ChangeKind::Delete => !self.no_delete,
        };
        kind_ok && kv::key_in_range(&c.kv.key, &self.key, &self.range_end)
    }

    fn event(&self, c: &kv::Change) -> mvccpb::Event {
        let kind = match c.kind {
            kv::ChangeKind::Put => mvccpb::event::EventType::Put,
            kv::ChangeKind::Delete => mvccpb::event::EventType::Delete,
        };
        let mut kv = command::kv_pair(c.kv.clone());
        kv.lease = c.lease;
        mvccpb::Event {
            r#type: kind as i32,
            kv: Some(kv),
            prev_kv: if self.prev_kv {
                c.prev_kv.clone().map(command::kv_pair)
            } else {
                None
            },
        }
    }
}

/// Why a stream task ends: the client went away (nothing to answer).
struct Gone;

struct StreamTask {
    shared: Arc<Shared>,
    /// The auth user of the stream (see [`serve_stream`]).
    user: Option<String>,
    stats: Arc<WatchStats>,
    watchers: BTreeMap<i64, Watcher>,
    next_auto_id: i64,
    out: Outbound,
}

impl Drop for StreamTask {
    fn drop(&mut self) {
        WatchStats::add(&self.stats.streams, -1);
        WatchStats::add(&self.stats.watchers, -(self.watchers.len() as i64));
    }
}

impl StreamTask {
    fn remove(&mut self, id: i64) -> bool {
        let gone = self.watchers.remove(&id).is_some();
        if gone {
            WatchStats::add(&self.stats.watchers, -1);
        }
        gone
    }

    async fn run<S>(mut self, mut inbound: S, mut feed: broadcast::Receiver<FeedBatch>)
    where
        S: Stream<Item = Result<pb::WatchRequest, Status>> + Send + Unpin,
    {
        let mut progress = tokio::time::interval(self.shared.cfg.watch_progress_notify_interval);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        progress.tick().await; // the first tick is immediate
                               // A client that closes its sending side keeps receiving, as in
                               // etcd (the HTTP gateway sends one create request and then reads).
        let mut inbound_open = true;
        loop {
            let step = tokio::select! {
                req = inbound.next(), if inbound_open => match req {
                    Some(Ok(r)) => self.on_request(r).await,
                    None => {
                        inbound_open = false;
                        Ok(())
                    }
                    // The stream broke: nobody is reading any more.
                    Some(Err(_)) => Err(Gone),
                },
                batch = feed.recv() => match batch {
                    Ok(b) => self.on_batch(&b).await,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.stats.catch_ups.fetch_add(1, Ordering::Relaxed);
                        self.catch_up_all().await
                    }
                    Err(broadcast::error::RecvError::Closed) => Err(Gone),
                },
                _ = progress.tick() => self.on_progress_tick().await,
                _ = self.out.closed() => Err(Gone),
            };
            if step.is_err() {
                return;
            }
        }
    }

    fn header(&self, revision: i64) -> pb::ResponseHeader {
        self.shared.header_info().header(revision)
    }

    /// etcd's answer that watcher `id` is canceled, at `revision`.
    fn canceled(&self, id: i64, revision: i64) -> pb::WatchResponse {
        pb::WatchResponse {
            header: Some(self.header(revision)),
            watch_id: id,
            canceled: true,
            ..Default::default()
        }
    }

    fn current_revision(&self) -> i64 {
        self.shared
            .raft
            .kv
            .read()
            .map(|k| k.revision())
            .unwrap_or(0)
    }

    async fn send(&self, resp: pb::WatchResponse) -> Result<(), Gone> {
        self.stats
            .events
            .fetch_add(resp.events.len() as u64, Ordering::Relaxed);
        self.out.send(Ok(resp)).await.map_err(|_| Gone)
    }

    async fn on_request(&mut self, req: pb::WatchRequest) -> Result<(), Gone> {
        use pb::watch_request::RequestUnion;
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                // etcd answers only a cancel of a watcher that exists.
                if self.remove(c.watch_id) {
                    let resp = self.canceled(c.watch_id, self.current_revision());
                    self.send(resp).await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // The revision every watcher of the stream has been given
                // everything up to: a bookmark valid for all of them.
                let current = self.current_revision();
                let rev = self
                    .watchers
                    .values()
                    .map(|w| w.next_revision.saturating_sub(1))
                    .fold(current, i64::min);
                self.send(pb::WatchResponse {
                    header: Some(self.header(rev)),
                    watch_id: NO_WATCH_ID,
                    ..Default::default()
                })
                .await
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, c: pb::WatchCreateRequest) -> Result<(), Gone> {
        let current = self.current_revision();
        // etcd: an empty key is "\0", the smallest key.
        let key = if c.key.is_empty() { vec![0] } else { c.key };
        let empty_range = !c.range_end.is_empty()
            && c.range_end.as_slice() != [0]
            && key.as_slice() >= c.range_end.as_slice();
        let refusal = if empty_range {
            Some(EMPTY_RANGE)
        } else if c.watch_id != 0 && self.watchers.contains_key(&c.watch_id) {
            Some(DUPLICATE_ID)
        } else if self.watchers.len() >= MAX_WATCHERS_PER_STREAM {
            Some(TOO_MANY)
        } else if crate::auth::service::may_watch(
            &self.shared.raft.auth,
            self.user.as_deref(),
            &key,
            &c.range_end,
        )
        .is_err()
        {
            Some(crate::auth::service::WATCH_PERMISSION_DENIED)
        } else {
            None
        };
        if let Some(reason) = refusal {
            let resp = pb::WatchResponse {
                created: true,
                cancel_reason: reason.to_string(),
                ..self.canceled(NO_WATCH_ID, current)
            };
            return self.send(resp).await;
        }
        let id = if c.watch_id != 0 {
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_auto_id) {
                self.next_auto_id += 1;
            }
            let id = self.next_auto_id;
            self.next_auto_id += 1;
            id
        };
        let next_revision = if c.start_revision <= 0 {
            current.saturating_add(1)
        } else {
            c.start_revision
        };
        let w = Watcher {
            key,
            range_end: c.range_end,
            next_revision,
            prev_kv: c.prev_kv,
            no_put: c.filters.contains(&FILTER_NOPUT),
            no_delete: c.filters.contains(&FILTER_NODELETE),
            progress_notify: c.progress_notify,
            fragment: c.fragment,
            sent_since_tick: false,
        };
        self.watchers.insert(id, w);
        WatchStats::add(&self.stats.watchers, 1);
        self.send(pb::WatchResponse {
            header: Some(self.header(current)),
            watch_id: id,
            created: true,
            ..Default::default()
        })
        .await?;
        if next_revision <= current {
            self.catch_up(id).await?;
        }
        Ok(())
    }

    /// Delivers a feed batch to every watcher that is in step with it, and
    /// sends the others to history.
    async fn on_batch(&mut self, batch: &FeedBatch) -> Result<(), Gone> {
        let Some(last) = batch.last().map(|e| e.revision) else {
            return Ok(());
        };
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            let Some(w) = self.watchers.get_mut(&id) else {
                continue;
            };
            let mut events = Vec::new();
            let mut gap = false;
            for e in batch.iter() {
                if e.revision < w.next_revision {
                    continue;
                }
                if e.revision > w.next_revision {
                    gap = true;
                    break;
                }
                events.extend(e.changes.iter().filter(|c| w.wants(c)).map(|c| w.event(c)));
                w.next_revision = e.revision.saturating_add(1);
            }
            if !events.is_empty() {
                w.sent_since_tick = true;
                self.send_events(id, last, events).await?;
            }
            if gap {
                self.stats.catch_ups.fetch_add(1, Ordering::Relaxed);
                self.catch_up(id).await?;
            }
        }
        Ok(())
    }

    async fn catch_up_all(&mut self) -> Result<(), Gone> {
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            self.catch_up(id).await?;
        }
        Ok(())
    }

    /// Reads watcher `id`'s events from history until it has everything
    /// applied so far; cancels it if its next revision was compacted.
    async fn catch_up(&mut self, id: i64) -> Result<(), Gone> {
        loop {
            let Some(w) = self.watchers.get(&id) else {
                return Ok(());
            };
            let read = {
                let Ok(store) = self.shared.raft.kv.read() else {
                    return Err(Gone);
                };
                let r = store.changes(w.next_revision, &w.key, &w.range_end, CATCH_UP_BATCH_EVENTS);
                (r, store.revision())
            };
            match read {
                (Ok(batch), current) => {
                    let events: Vec<mvccpb::Event> = batch
                        .changes
                        .iter()
                        .filter(|c| w.wants(c))
                        .map(|c| w.event(c))
                        .collect();
                    if let Some(w) = self.watchers.get_mut(&id) {
                        w.next_revision = w.next_revision.max(batch.next_revision);
                        w.sent_since_tick |= !events.is_empty();
                    }
                    if !events.is_empty() {
                        self.send_events(id, current, events).await?;
                    }
                    if batch.next_revision > current {
                        return Ok(());
                    }
                }
                (Err(kv::RequestError::Compacted { oldest, .. }), current) => {
                    let resp = pb::WatchResponse {
                        compact_revision: oldest,
                        ..self.canceled(id, current)
                    };
                    self.remove(id);
                    return self.send(resp).await;
                }
                (Err(e), current) => {
                    let resp = pb::WatchResponse {
                        cancel_reason: e.to_string(),
                        ..self.canceled(id, current)
                    };
                    self.remove(id);
                    return self.send(resp).await;
                }
            }
        }
    }

    /// Sends `events` to watcher `id`: one response, or fragments of at
    /// most the request size limit if it asked for them.
    async fn send_events(
        &self,
        id: i64,
        revision: i64,
        events: Vec<mvccpb::Event>,
    ) -> Result<(), Gone> {
        let fragment = self.watchers.get(&id).is_some_and(|w| w.fragment);
        let limit = self.shared.cfg.max_request_bytes;
        let header = self.header(revision);
        let whole = pb::WatchResponse {
            header: Some(header),
            watch_id: id,
            events,
            ..Default::default()
        };
        if !fragment || whole.encoded_len() <= limit {
            return self.send(whole).await;
        }
        let mut parts: Vec<Vec<mvccpb::Event>> = vec![Vec::new()];
        let mut size = 0usize;
        for e in whole.events {
            let len = e.encoded_len();
            let current = parts.last_mut().map_or(0, |p| p.len());
            if current > 0 && size.saturating_add(len) > limit {
                parts.push(Vec::new());
                size = 0;
            }
            size = size.saturating_add(len);
            if let Some(p) = parts.last_mut() {
                p.push(e);
            }
        }
        let n = parts.len();
        for (i, events) in parts.into_iter().enumerate() {
            self.send(pb::WatchResponse {
                header: Some(header),
                watch_id: id,
                fragment: i + 1 < n,
                events,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }

    /// etcd's periodic progress notification: an empty response to every
    /// watcher that asked for them, is in step, and got nothing since the
    /// last tick. Its revision is one the watcher has everything up to.
    async fn on_progress_tick(&mut self) -> Result<(), Gone> {
        let current = self.current_revision();
        let mut due = Vec::new();
        for (id, w) in &mut self.watchers {
            let in_step = w.next_revision > current;
            if w.progress_notify && in_step && !w.sent_since_tick {
                due.push(*id);
            }
            w.sent_since_tick = false;
        }
        for id in due {
            self.send(pb::WatchResponse {
                header: Some(self.header(current)),
                watch_id: id,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }
}
