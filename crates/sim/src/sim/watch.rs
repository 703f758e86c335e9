//! Watch clients and the background writer.
//!
//! A watcher is attached to one node and reads that node's applied MVCC
//! history in bounded batches (`MvccStore::changes`, the server's catch-up
//! path), which is what any member serves. Its stream breaks when the node
//! crashes, when a partition cuts it (each stream with probability 1/2: the
//! client's own side of a partition is not modeled), and at random
//! (`WatchConfig::break_ppm` per poll, safety phase only); a response in
//! flight on a broken stream is lost. The watcher then resumes on a random
//! node from the last revision it reached + 1 (the header revision of its
//! last response, as an etcd client does after progress notifications). A
//! node that has not applied that far answers nothing new until it has; a
//! node whose history starts later answers with a compaction cancel, and
//! the watcher restarts from the compact revision, as etcd tells a client
//! to (the revisions in between are a recorded hole, allowed only because a
//! compaction covering them was committed).
//!
//! The background writer proposes, on the current leader, compactions (to
//! the leader's revision minus up to `compact_retention_revisions_max`),
//! multi-key transactions and range deletes on keys of their own
//! (`/sim/t*`), so that watchers see revisions with several changes and
//! compaction cancels, without touching the clients' keys (whose histories
//! the linearizability checker judges).

use super::clients::CONF_REQ_IDS_MAX;
use super::*;
use crate::config::{WatchStart, BACKGROUND_KEYS};
use metalraft_kv::{
    Change, Command, CompactionRequest, Compare, CompareResult, CompareTarget, DeleteRangeRequest,
    PutRequest, RequestError, RequestOp, TxnRequest,
};

/// Request ids of background writes start here (membership changes count
/// up from 1, client requests start at `CONF_REQ_IDS_MAX`).
pub(super) const BACKGROUND_REQ_BASE: ReqId = CONF_REQ_IDS_MAX / 2;

/// The keys whose history the [`Sabotage::HistoryDropsKey`] replay drops.
const SABOTAGE_DROPPED_KEYS: [&[u8]; 2] = [b"/sim/k0", b"/sim/t0"];

/// Every this many non-empty responses, the watch sabotages strike.
const SABOTAGE_EVERY_RESPONSES: u64 = 5;

/// What a node answered a watch poll.
#[derive(Debug)]
pub(super) enum WatchReply {
    /// The changes from the requested revision, and where to continue.
    Batch {
        changes: Vec<Change>,
        next_revision: i64,
    },
    /// The requested revision is compacted on this node.
    Canceled {
        requested: i64,
        compact_revision: i64,
    },
}

/// A simulated watch client.
#[derive(Debug)]
pub(super) struct Watcher {
    key: Vec<u8>,
    range_end: Vec<u8>,
    /// Bumped at every (re)attach: a response of another stream is lost.
    stream: u32,
    /// (node, its incarnation) while attached.
    attached: Option<(usize, u32)>,
    /// The next revision to ask for; 0 until created.
    resume: i64,
    /// Non-empty responses received (for the sabotages).
    responses: u64,
}

impl Watcher {
    pub(super) fn new(spec: &crate::config::WatcherSpec) -> Self {
        let (key, range_end) = spec.range.bounds();
        Watcher {
            key,
            range_end,
            stream: 0,
            attached: None,
            resume: 0,
            responses: 0,
        }
    }
}

/// Reads one batch of `store`'s history for a watcher (with the history
/// sabotage, the replay drops some keys).
fn read_batch(
    store: &metalraft_kv::MvccStore,
    w: &Watcher,
    batch_max: usize,
    sabotage: Sabotage,
) -> Result<WatchReply, RequestError> {
    match store.changes(w.resume, &w.key, &w.range_end, batch_max) {
        Ok(mut b) => {
            if sabotage == Sabotage::HistoryDropsKey {
                b.changes
                    .retain(|c| !SABOTAGE_DROPPED_KEYS.contains(&c.kv.key.as_slice()));
            }
            Ok(WatchReply::Batch {
                changes: b.changes,
                next_revision: b.next_revision,
            })
        }
        Err(RequestError::Compacted { requested, oldest }) => Ok(WatchReply::Canceled {
            requested,
            compact_revision: oldest,
        }),
        Err(e) => Err(e),
    }
}

impl Simulation {
    /// Watcher `w` connects to a random node (created on its first).
    pub(super) fn on_watch_connect(&mut self, w: usize) -> Step {
        let node = self.rng_watch.index(self.replicas.len());
        let retry = self.now + self.watch_reconnect_us();
        let r = &self.replicas[node];
        let (id, inc) = (r.id, r.incarnation);
        let revision = match &r.live {
            Some(l) if r.paused_until <= self.now => l.replica.state_machine().kv().revision(),
            // Down or not answering: try another node later.
            _ => {
                self.at(retry, Event::WatchConnect { watcher: w });
                return Ok(());
            }
        };
        let spec = &self.cfg.watch.watchers[w];
        let wt = &mut self.watchers[w];
        let first = wt.resume == 0;
        if first {
            wt.resume = match spec.start {
                WatchStart::Now => revision + 1,
                WatchStart::Past(n) => (revision - n).max(1),
                WatchStart::Future(n) => revision + 1 + n,
            };
            self.watch.created(w, &wt.key, &wt.range_end, wt.resume);
        }
        wt.stream += 1;
        wt.attached = Some((node, inc));
        let (stream, from) = (wt.stream, wt.resume);
        let range = &spec.range;
        self.trace.record(
            self.now,
            Actor::Node(id),
            TraceKind::Watch,
            w as u64,
            from as u64,
            || {
                let what = if first { "created" } else { "resumed" };
                format!("watcher {w} ({range}) {what} from revision {from}")
            },
        );
        let t = self.now + self.cfg.workload.client_latency_us;
        self.at(t, Event::WatchPoll { watcher: w, stream });
        Ok(())
    }

    /// Watcher `w` asks its node for the changes from where it stands.
    pub(super) fn on_watch_poll(&mut self, w: usize, stream: u32) -> Step {
        let wt = &self.watchers[w];
        let Some((node, inc)) = wt.attached.filter(|_| wt.stream == stream) else {
            return Ok(());
        };
        if self.defer_if_paused(node, || Event::WatchPoll { watcher: w, stream }) {
            return Ok(());
        }
        let r = &self.replicas[node];
        if r.live.is_none() || r.incarnation != inc {
            self.break_stream(w, "its node crashed");
            return Ok(());
        }
        if self.phase == Phase::Safety && self.rng_watch.chance_ppm(self.cfg.watch.break_ppm) {
            self.break_stream(w, "the connection dropped");
            return Ok(());
        }
        let r = &self.replicas[node];
        let id = r.id;
        let Some(live) = r.live.as_ref() else {
            return Ok(());
        };
        let batch_max = self.cfg.watch.watchers[w].batch_max;
        let store = live.replica.state_machine().kv();
        let reply = read_batch(store, &self.watchers[w], batch_max, self.opts.sabotage)
            .map_err(|e| core_err(id, format!("watch read: {e}")))?;
        let t = self.now + self.cfg.workload.client_latency_us;
        self.at(
            t,
            Event::WatchReply {
                watcher: w,
                stream,
                node,
                reply,
            },
        );
        Ok(())
    }

    /// A response reaches watcher `w` (lost if its stream broke meanwhile):
    /// the checker judges it, the watcher moves on.
    pub(super) fn on_watch_reply(
        &mut self,
        w: usize,
        stream: u32,
        node: usize,
        reply: WatchReply,
    ) -> Step {
        if self.watchers[w].stream != stream {
            return Ok(());
        }
        let id = self.replicas[node].id;
        let spec_batch_max = self.cfg.watch.watchers[w].batch_max;
        let poll_us = self.cfg.watch.watchers[w].poll_us;
        let next_poll = match reply {
            WatchReply::Batch {
                mut changes,
                next_revision,
            } => {
                let wt = &mut self.watchers[w];
                let full = changes.len() >= spec_batch_max;
                if !changes.is_empty() {
                    wt.responses += 1;
                    if wt.responses % SABOTAGE_EVERY_RESPONSES == 0 {
                        match self.opts.sabotage {
                            Sabotage::WatchSkipsEvent => {
                                changes.remove(0);
                            }
                            Sabotage::WatchDuplicatesEvent => {
                                changes.push(changes[changes.len() - 1].clone());
                            }
                            _ => {}
                        }
                    }
                }
                wt.resume = next_revision;
                self.watch
                    .observe_response(w, id, &self.reference, &changes, next_revision)?;
                self.stats.watch_events += changes.len() as u64;
                if !changes.is_empty() {
                    let n = changes.len();
                    self.trace.record(
                        self.now,
                        Actor::Node(id),
                        TraceKind::Watch,
                        w as u64,
                        next_revision as u64,
                        || {
                            format!(
                                "watcher {w} got {n} events, up to revision {}: {}",
                                next_revision - 1,
                                describe(&changes)
                            )
                        },
                    );
                }
                if full {
                    self.cfg.workload.client_latency_us
                } else {
                    poll_us
                }
            }
            WatchReply::Canceled {
                requested,
                compact_revision,
            } => {
                self.watch
                    .observe_canceled(w, id, &self.reference, requested, compact_revision)?;
                self.stats.watch_cancels += 1;
                self.watchers[w].resume = compact_revision;
                self.trace.record(
                    self.now,
                    Actor::Node(id),
                    TraceKind::Watch,
                    w as u64,
                    compact_revision as u64,
                    || {
                        format!(
                            "watcher {w} canceled: revision {requested} compacted, restarts from {compact_revision}"
                        )
                    },
                );
                self.cfg.workload.client_latency_us
            }
        };
        self.at(
            self.now + next_poll,
            Event::WatchPoll { watcher: w, stream },
        );
        Ok(())
    }

    /// Watcher `w`'s stream broke: responses in flight are lost, and it
    /// resumes on a random node after a reconnect delay.
    pub(super) fn break_stream(&mut self, w: usize, why: &str) {
        let wt = &mut self.watchers[w];
        let Some((node, _)) = wt.attached.take() else {
            return;
        };
        wt.stream += 1;
        // The defect: resume at the last revision reached, not last + 1.
        if self.opts.sabotage == Sabotage::WatchResumesAtLast && wt.responses > 0 && wt.resume > 1 {
            wt.resume -= 1;
        }
        self.stats.watch_breaks += 1;
        let id = self.replicas[node].id;
        self.trace.record(
            self.now,
            Actor::Node(id),
            TraceKind::Watch,
            w as u64,
            0,
            || format!("watcher {w} stream broken: {why}"),
        );
        let t = self.now + self.watch_reconnect_us();
        self.at(t, Event::WatchConnect { watcher: w });
    }

    /// A partition cuts each attached stream with probability 1/2.
    pub(super) fn watch_on_partition(&mut self) {
        for w in 0..self.watchers.len() {
            if self.watchers[w].attached.is_some() && self.rng_watch.coin() {
                self.break_stream(w, "a partition cut it");
            }
        }
    }

    fn watch_reconnect_us(&mut self) -> Time {
        2 * self.cfg.workload.client_latency_us + self.rng_watch.range(0, TICK_US_NOMINAL)
    }

    /// At the end of a run: every watcher reads the rest of the history
    /// from the most advanced live node (the checker judges it like any
    /// response); if the cluster recovered, every watcher must then have
    /// caught up with the committed history.
    pub(super) fn drain_watchers(&mut self, recovered: bool) -> Step {
        let best = self
            .replicas
            .iter()
            .filter_map(|r| Some((r.id, r.live.as_ref()?)))
            .max_by_key(|(id, l)| (l.node().applied_index(), std::cmp::Reverse(*id)));
        let Some((id, live)) = best else {
            return Ok(());
        };
        let store = live.replica.state_machine().kv();
        for w in 0..self.watchers.len() {
            if self.watchers[w].resume == 0 {
                continue;
            }
            let batch_max = self.cfg.watch.watchers[w].batch_max;
            // Each round moves `resume` forward: at most one round per
            // revision, plus one per compaction cancel.
            let rounds_max = store.revision() + 2;
            for _ in 0..rounds_max {
                let wt = &mut self.watchers[w];
                if wt.resume > store.revision() {
                    break;
                }
                match read_batch(store, wt, batch_max, self.opts.sabotage)
                    .map_err(|e| core_err(id, format!("watch read: {e}")))?
                {
                    WatchReply::Batch {
                        changes,
                        next_revision,
                    } => {
                        wt.resume = next_revision;
                        self.watch.observe_response(
                            w,
                            id,
                            &self.reference,
                            &changes,
                            next_revision,
                        )?;
                        self.stats.watch_events += changes.len() as u64;
                    }
                    WatchReply::Canceled {
                        requested,
                        compact_revision,
                    } => {
                        wt.resume = compact_revision;
                        self.watch.observe_canceled(
                            w,
                            id,
                            &self.reference,
                            requested,
                            compact_revision,
                        )?;
                        self.stats.watch_cancels += 1;
                    }
                }
            }
        }
        if recovered {
            self.watch.check_complete(&self.reference)?;
        }
        Ok(())
    }

    /// The background writer: a compaction, a multi-key transaction or a
    /// range delete, proposed on the leader (safety phase only).
    pub(super) fn on_background(&mut self) -> Step {
        let mean = self.cfg.watch.background_gap_us_mean;
        if self.phase != Phase::Safety || mean == 0 {
            return Ok(());
        }
        let gap = 1 + self.rng_watch.range(0, 2 * mean);
        self.at(self.now + gap, Event::Background);
        let Some(l) = (0..self.replicas.len()).find(|&i| self.replicas[i].is_leader()) else {
            return Ok(());
        };
        if self.replicas[l].paused_until > self.now {
            return Ok(());
        }
        let Some(live) = self.replicas[l].live.as_ref() else {
            return Ok(());
        };
        let revision = live.replica.state_machine().kv().revision();
        let wc = &self.cfg.watch;
        let (compact, txn) = (wc.compact_weight, wc.txn_weight);
        let total = compact + txn + wc.delete_range_weight;
        let retention = wc.compact_retention_revisions_max;
        let x = self.rng_watch.range(0, u64::from(total)) as u32;
        self.background += 1;
        let op = self.background;
        let pad = self.cfg.workload.value_pad_bytes;
        let cmd = if x < compact {
            let back = self.rng_watch.range(0, retention + 1) as i64;
            Command::Compact(CompactionRequest {
                revision: (revision - back).max(1),
            })
        } else if x < compact + txn {
            self.background_txn(op, pad)
        } else {
            Command::DeleteRange(DeleteRangeRequest {
                key: b"/sim/t".to_vec(),
                range_end: metalraft_kv::prefix_end(b"/sim/t"),
                prev_kv: false,
            })
        };
        let command = sim_command(op, &cmd.encode());
        let req = BACKGROUND_REQ_BASE + op;
        let r = &mut self.replicas[l];
        let id = r.id;
        let Some(live) = r.live.as_mut() else {
            return Ok(());
        };
        let res = live.replica.propose(req, &command);
        self.stats.background_writes += u64::from(res.is_ok());
        self.trace
            .record(self.now, Actor::Node(id), TraceKind::Propose, op, 0, || {
                format!("background write {op}: {cmd:?}: {res:?}")
            });
        self.drive(l)
    }

    /// Two or three writes to distinct background keys under one revision,
    /// sometimes behind a version compare (then the failure branch writes
    /// one key).
    fn background_txn(&mut self, op: OpId, pad: usize) -> Command {
        let mut keys: Vec<usize> = (0..BACKGROUND_KEYS).collect();
        let n = 2 + self.rng_watch.index(2);
        let mut ops = Vec::new();
        for i in 0..n {
            let k = keys.swap_remove(self.rng_watch.index(keys.len()));
            let key = format!("/sim/t{k}").into_bytes();
            ops.push(if i > 0 && self.rng_watch.range(0, 3) == 0 {
                RequestOp::DeleteRange(DeleteRangeRequest {
                    key,
                    ..DeleteRangeRequest::default()
                })
            } else {
                RequestOp::Put(PutRequest {
                    key,
                    value: workload::value_bytes(op, pad),
                    ..PutRequest::default()
                })
            });
        }
        let compare = if self.rng_watch.coin() {
            let k = keys[self.rng_watch.index(keys.len())];
            vec![Compare::new(
                format!("/sim/t{k}").as_bytes(),
                CompareResult::Less,
                CompareTarget::Version(1 + self.rng_watch.range(0, 4) as i64),
            )]
        } else {
            Vec::new()
        };
        let failure = vec![ops[0].clone()];
        Command::Txn(TxnRequest {
            compare,
            success: ops,
            failure,
        })
    }
}
