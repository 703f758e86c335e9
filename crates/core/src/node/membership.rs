//! Membership changes in the node (thesis §4): a configuration takes
//! effect when its entry is appended, is undone if that entry is
//! truncated, and becomes the base once committed.

use super::*;
use crate::conf::{apply_conf_change, ConfChange};
use crate::error::ConfChangeError;

impl<P: Payload, S: LogStorage<P>> Node<P, S> {
    /// Proposes a membership change on the leader and returns its index.
    /// At most one change may be pending, and the leader must have
    /// committed an entry of its own term first.
    pub fn propose_conf_change(&mut self, cc: ConfChange) -> Result<Index, ConfChangeError> {
        if self.failed.is_some() {
            return Err(ConfChangeError::Failed);
        }
        if self.role != Role::Leader {
            return Err(ConfChangeError::NotLeader {
                leader: self.leader,
            });
        }
        if self.lead_transferee.is_some() {
            return Err(ConfChangeError::TransferInProgress);
        }
        if !self.conf_pending.is_empty() {
            return Err(ConfChangeError::ChangePending);
        }
        let committed = self.log.committed();
        let ready = self.log.term(committed).map_err(|e| {
            self.fail(e);
            ConfChangeError::Failed
        })? == Some(self.term);
        if !ready {
            return Err(ConfChangeError::LeaderNotReady);
        }
        apply_conf_change(&self.conf, &cc)?;
        self.append_conf_change(cc).map_err(|e| {
            self.fail(e);
            ConfChangeError::Failed
        })
    }

    pub(super) fn append_conf_change(&mut self, cc: ConfChange) -> Result<Index, StorageError> {
        let index = self.log.last_index()? + 1;
        let entry = Entry {
            term: self.term,
            index,
            data: EntryData::ConfChange(Box::new(cc.clone())),
        };
        let size = entry.size_bytes();
        self.log.append(entry);
        self.uncommitted.push_back((index, size));
        self.uncommitted_bytes += size;
        self.apply_conf_entry(index, &cc);
        self.pending_bcast = true;
        Ok(index)
    }

    /// Whether this node may campaign: it is a voter in its latest
    /// configuration, or in its committed one while a change that removes
    /// or demotes it is not committed yet (thesis §4.2.2: "it might still be
    /// needed until the Cnew entry is committed"). Its own vote counts only
    /// if it is a voter in its latest configuration.
    pub fn promotable(&self) -> bool {
        let id = self.id();
        self.conf.is_voter(id) || self.conf_base.is_voter(id)
    }

    /// The configuration in effect: the latest in the log (committed or not).
    pub fn conf_state(&self) -> &ConfState {
        &self.conf
    }

    /// The configuration as of the commit index.
    pub fn committed_conf_state(&self) -> &ConfState {
        &self.conf_base
    }

    /// A conf-change entry at `index` was appended: it takes effect now.
    /// An invalid change (only a faulty leader sends one) is ignored, the
    /// same way on every node.
    pub(super) fn apply_conf_entry(&mut self, index: Index, cc: &ConfChange) {
        match apply_conf_change(&self.conf, cc) {
            Ok(next) => {
                self.conf_pending.push_back((index, next));
                self.refresh_conf();
            }
            Err(_) => self.stats.conf_changes_ignored += 1,
        }
    }

    /// Entries from `from` on were overwritten: their changes are undone.
    pub(super) fn truncate_confs(&mut self, from: Index) {
        let before = self.conf_pending.len();
        self.conf_pending.retain(|(i, _)| *i < from);
        if self.conf_pending.len() != before {
            self.refresh_conf();
        }
    }

    /// Applies the conf changes among freshly appended `entries` (those at
    /// or after `from`).
    pub(super) fn apply_appended_confs(&mut self, entries: &[Entry<P>], from: Index) {
        self.truncate_confs(from);
        for e in entries.iter().filter(|e| e.index >= from) {
            if let EntryData::ConfChange(cc) = &e.data {
                self.apply_conf_entry(e.index, cc);
            }
        }
    }

    /// Commit advanced: committed changes become the base. A leader that is
    /// no longer a voter steps down (thesis §4.2.2).
    pub(super) fn commit_to(&mut self, index: Index) {
        self.log.commit_to(index);
        let committed = self.log.committed();
        let mut changed = false;
        while let Some((i, _)) = self.conf_pending.front() {
            if *i > committed {
                break;
            }
            if let Some((i, c)) = self.conf_pending.pop_front() {
                self.record_committed_conf(i, c.clone());
                self.conf_base = c;
                changed = true;
            }
        }
        if changed && self.role == Role::Leader && !self.conf_base.is_voter(self.id()) {
            let term = self.term;
            self.become_follower(term, None);
        }
    }

    /// Leader: leave a committed joint configuration automatically.
    pub(super) fn maybe_auto_leave(&mut self) -> Result<(), StorageError> {
        let due = self.role == Role::Leader
            && self.conf_pending.is_empty()
            && self.conf_base.is_joint()
            && self.conf_base.auto_leave
            && self.lead_transferee.is_none();
        if due {
            self.append_conf_change(ConfChange::leave_joint())?;
        }
        Ok(())
    }

    pub(super) fn refresh_conf(&mut self) {
        self.conf = match self.conf_pending.back() {
            Some((_, c)) => c.clone(),
            None => self.conf_base.clone(),
        };
        if self.role == Role::Leader {
            self.sync_progress();
        }
    }

    /// Leader: track exactly the members of the configuration in effect.
    pub(super) fn sync_progress(&mut self) {
        let id = self.id();
        let members = self.conf.members();
        self.progress
            .retain(|p, _| members.binary_search(&p).is_ok());
        let next = self.log.last_index().unwrap_or(0) + 1;
        for m in members.into_iter().filter(|&m| m != id) {
            self.progress.get_or_insert_with(m, || {
                let mut pr = Progress::new(
                    next,
                    self.cfg.max_inflight_msgs,
                    self.cfg.max_inflight_bytes,
                );
                pr.recent_active = true;
                pr
            });
        }
    }

    /// Remembers a committed configuration for snapshot metadata, keeping
    /// at most [`MAX_CONF_HISTORY`] of them (the oldest go first: a snapshot
    /// older than every one kept is refused with `Error::BadIndex`).
    pub(super) fn record_committed_conf(&mut self, index: Index, conf: ConfState) {
        self.conf_history.push_back((index, conf));
        while self.conf_history.len() > MAX_CONF_HISTORY {
            self.conf_history.pop_front();
        }
    }

    /// At start: replay the conf changes in the stored log on top of the
    /// stored base configuration.
    pub(super) fn load_confs(&mut self) -> Result<(), StorageError> {
        let (mut lo, last) = (
            self.log.storage.first_index()?,
            self.log.storage.last_index()?,
        );
        self.conf_history
            .push_back((lo - 1, self.conf_base.clone()));
        while lo <= last {
            let batch = self.log.storage.entries(lo, last + 1, LOAD_BATCH_BYTES)?;
            let Some(end) = batch.last().map(|e| e.index) else {
                break;
            };
            for e in &batch {
                if let EntryData::ConfChange(cc) = &e.data {
                    self.apply_conf_entry(e.index, cc);
                }
            }
            lo = end + 1;
        }
        let committed = self.log.committed();
        self.commit_to(committed);
        Ok(())
    }
}

/// Bytes of log read per batch when replaying conf changes at start.
const LOAD_BATCH_BYTES: usize = 1024 * 1024;

/// Committed configurations remembered for snapshot metadata between two
/// snapshots. Applications snapshot at (or just below) their applied index,
/// which needs only the newest few; 64 changes between two snapshots is far
/// beyond any real cluster's churn, and each costs one `ConfState`.
pub(super) const MAX_CONF_HISTORY: usize = 64;
