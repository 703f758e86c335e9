//! Snapshots (thesis §5): the application's snapshots release the log
//! prefix; followers that need compacted entries receive the snapshot in
//! chunks, with a bounded window, retransmission after loss, and a clean
//! restart when the leader's term or the snapshot changes.

use alloc::vec::Vec;

use super::*;
use crate::progress::SnapshotSend;
use crate::types::{SnapshotChunk, SnapshotInstall, SnapshotMeta};

/// A snapshot being received by a follower.
#[derive(Debug)]
pub(super) struct Incoming {
    meta: SnapshotMeta,
    /// Term of the leader sending it.
    term: Term,
    /// Bytes received in order.
    received: u64,
}

impl<P: Payload, S: LogStorage<P>> Node<P, S> {
    /// The application has a snapshot of its state machine at `index`
    /// (at most the applied index). Returns the metadata to store with it;
    /// once the snapshot is durable the application may compact its log up
    /// to `index` (keeping `term(index)` answerable, see [`LogStorage`]).
    pub fn snapshot_created(&mut self, index: Index) -> Result<SnapshotMeta, Error> {
        self.check_failed()?;
        if index > self.log.applied() || index > self.log.committed() {
            return Err(Error::BadIndex(index));
        }
        let term = match self.log.term(index).map_err(|e| self.fail(e))? {
            Some(t) => t,
            None => return Err(Error::BadIndex(index)),
        };
        // The configuration as of `index`: the latest committed change at
        // or before it. Older history is no longer needed.
        let pos = self.conf_history.iter().rposition(|(i, _)| *i <= index);
        let Some(pos) = pos else {
            return Err(Error::BadIndex(index));
        };
        self.conf_history.drain(..pos);
        let conf_state = self.conf_history[0].1.clone();
        Ok(SnapshotMeta {
            index,
            term,
            conf_state,
        })
    }

    /// Leader: the highest index the application may compact its log to
    /// without cutting off a follower being caught up: the snapshot index of
    /// every follower receiving a snapshot (it needs the entries after it;
    /// etcd pauses compaction while a snapshot is in flight for the same
    /// reason), and the matched index of every other follower heard from in
    /// this check-quorum period (one that just installed a snapshot is
    /// probed before it replicates, and needs the entries after it too). `None` on a non-leader or
    /// when no follower is behind. Read-only: the application decides how
    /// long it honours it (it bounds the entries it keeps for this).
    pub fn catch_up_floor(&self) -> Option<Index> {
        if self.role != Role::Leader {
            return None;
        }
        self.progress
            .iter()
            .filter(|(id, _)| *id != self.cfg.id)
            .filter_map(|(_, pr)| match (&pr.snapshot, pr.state) {
                (Some(send), _) => Some(send.meta.index),
                (None, _) if pr.recent_active => Some(pr.matched),
                _ => None,
            })
            .min()
    }

    /// Leader: start sending the current snapshot to `to`. Returns false if
    /// storage has none (a storage contract violation: entries were
    /// compacted without a snapshot).
    pub(super) fn start_snapshot(&mut self, to: NodeId) -> Result<bool, StorageError> {
        let Some(meta) = self.log.storage.snapshot_meta()? else {
            return Ok(false);
        };
        let Some(pr) = self.progress.get_mut(to) else {
            return Ok(false);
        };
        pr.become_snapshot(meta);
        self.stats.snapshots_started += 1;
        self.send_snapshot_chunks(to)?;
        Ok(true)
    }

    /// Leader: send chunks to `to` while the window allows.
    pub(super) fn send_snapshot_chunks(&mut self, to: NodeId) -> Result<(), StorageError> {
        let (max_chunks, chunk_bytes) = (
            self.cfg.max_snapshot_chunks_inflight,
            self.cfg.max_snapshot_chunk_bytes,
        );
        loop {
            let Some(send) = self.progress.get(to).and_then(|p| p.snapshot.as_ref()) else {
                return Ok(());
            };
            if send.done_sent || send.inflight.len() >= max_chunks {
                return Ok(());
            }
            let (index, offset) = (send.meta.index, send.next_offset);
            let (data, done) = match self.log.storage.snapshot_chunk(index, offset, chunk_bytes) {
                Ok(c) => c,
                Err(StorageError::SnapshotOutOfDate) => {
                    // Replaced by a newer snapshot: restart with that one.
                    let Some(meta) = self.log.storage.snapshot_meta()? else {
                        return Ok(());
                    };
                    if meta.index == index {
                        return Err(StorageError::Io);
                    }
                    if let Some(pr) = self.progress.get_mut(to) {
                        pr.snapshot = Some(SnapshotSend::new(meta));
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Some(send) = self.progress.get_mut(to).and_then(|p| p.snapshot.as_mut()) else {
                return Ok(());
            };
            let end = offset + data.len() as u64;
            send.next_offset = end;
            send.inflight.push_back(end);
            send.done_sent = done;
            let meta = alloc::boxed::Box::new(send.meta.clone());
            self.send(
                to,
                self.term,
                MessageBody::InstallSnapshot {
                    meta,
                    offset,
                    data,
                    done,
                },
            );
        }
    }

    /// Leader: the follower acknowledged `received` bytes of snapshot `index`.
    pub(super) fn on_snapshot_response(
        &mut self,
        from: NodeId,
        index: Index,
        received: u64,
    ) -> Result<(), StepError> {
        let Some(pr) = self.progress.get_mut(from) else {
            return Err(StepError::Unexpected);
        };
        pr.recent_active = true;
        match pr.snapshot.as_mut() {
            Some(send) if send.meta.index == index => send.ack(received),
            _ => return Err(StepError::Unexpected),
        }
        self.send_snapshot_chunks(from)?;
        Ok(())
    }

    /// Leader, on a heartbeat answer: if the transfer made no progress
    /// since the previous one, chunks were lost: resend from the last
    /// acknowledged byte.
    pub(super) fn snapshot_heartbeat(&mut self, from: NodeId) -> Result<(), StorageError> {
        let Some(send) = self
            .progress
            .get_mut(from)
            .and_then(|p| p.snapshot.as_mut())
        else {
            return Ok(());
        };
        if send.acked == send.acked_at_last_beat
            && (send.next_offset > send.acked || send.done_sent)
        {
            send.rewind();
        }
        send.acked_at_last_beat = send.acked;
        self.send_snapshot_chunks(from)
    }

    /// Follower: a chunk from the leader of the current term.
    pub(super) fn handle_install_snapshot(
        &mut self,
        from: NodeId,
        meta: SnapshotMeta,
        offset: u64,
        data: Vec<u8>,
        done: bool,
    ) -> Result<(), StepError> {
        // A snapshot's last entry has a real term (entries start at term 1)
        // no later than the leader's: anything else is garbage, dropped
        // before it can touch the log.
        if meta.index > 0 && (meta.term == 0 || meta.term > self.term) {
            return Err(StepError::Malformed);
        }
        let committed = self.log.committed();
        if meta.index <= committed {
            // Older than what we have committed: ignore it (thesis §5.3),
            // and tell the leader where we are so it resumes appends.
            self.incoming = None;
            let body = MessageBody::AppendEntriesResponse {
                index: committed,
                reject: None,
            };
            self.send_durable(from, self.term, body);
            return Ok(());
        }
        let same = self.incoming.as_ref().is_some_and(|inc| {
            inc.meta.index == meta.index && inc.meta.term == meta.term && inc.term == self.term
        });
        if !same {
            if offset != 0 {
                // A chunk of a transfer we do not have: ask for the start.
                self.incoming = None;
                self.send(
                    from,
                    self.term,
                    MessageBody::SnapshotResponse {
                        index: meta.index,
                        received: 0,
                    },
                );
                return Ok(());
            }
            // A new transfer (other snapshot or other leader term): any
            // partial state is discarded (the chunk at offset 0 says so).
            self.incoming = Some(Incoming {
                meta: meta.clone(),
                term: self.term,
                received: 0,
            });
        }
        let Some(inc) = self.incoming.as_mut() else {
            return Err(StepError::Unexpected);
        };
        if offset != inc.received {
            // Duplicate or out of order: re-acknowledge what we have.
            let received = inc.received;
            self.send(
                from,
                self.term,
                MessageBody::SnapshotResponse {
                    index: meta.index,
                    received,
                },
            );
            return Ok(());
        }
        inc.received += data.len() as u64;
        let received = inc.received;
        self.snapshot_chunks.push(SnapshotChunk {
            meta: meta.clone(),
            offset,
            data,
        });
        if !done {
            self.send(
                from,
                self.term,
                MessageBody::SnapshotResponse {
                    index: meta.index,
                    received,
                },
            );
            return Ok(());
        }
        self.incoming = None;
        self.install_snapshot(from, meta)
    }

    /// Follower: the whole snapshot arrived; install it in memory and ask
    /// the application to make it durable.
    fn install_snapshot(&mut self, from: NodeId, mut meta: SnapshotMeta) -> Result<(), StepError> {
        let c = &mut meta.conf_state;
        for v in [
            &mut c.voters,
            &mut c.voters_outgoing,
            &mut c.learners,
            &mut c.learners_next,
        ] {
            *v = crate::types::sorted(core::mem::take(v));
        }
        if c.contains(INVALID_ID) {
            return Err(StepError::Malformed);
        }
        let keep = self.log.install_snapshot(meta.index, meta.term)?;
        self.stats.snapshots_installed += 1;
        if keep {
            self.conf_pending.retain(|(i, _)| *i > meta.index);
        } else {
            self.conf_pending.clear();
        }
        self.conf_base = meta.conf_state.clone();
        self.conf_history.clear();
        self.conf_history
            .push_back((meta.index, meta.conf_state.clone()));
        self.refresh_conf();
        let index = meta.index;
        self.confirm_log_to(index);
        self.pending_install = Some(SnapshotInstall {
            meta,
            keep_entries_after: keep,
        });
        // Only the snapshot's last entry is known to match the leader.
        let body = MessageBody::AppendEntriesResponse {
            index,
            reject: None,
        };
        self.send_durable(from, self.term, body);
        Ok(())
    }
}
