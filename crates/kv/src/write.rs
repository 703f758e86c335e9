//! The write path shared by [`KvStore`] and [`MvccStore`](crate::MvccStore):
//! `Put`, `DeleteRange` and `Txn` over the current-state map, reporting every
//! version they replace to a [`History`].
//!
//! [`KvStore`] plugs in [`NoHistory`], whose methods are empty and inline
//! away, so the firmware's store pays nothing for the MVCC store's needs.

use crate::error::RequestError;
use crate::keys::KeyRange;
use crate::request::{DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};
use crate::response::{
    DeleteRangeResponse, PutResponse, RangeResponse, ResponseHeader, ResponseOp, TxnResponse,
};
use crate::store::{entry_size, Entry, KvStore};
use crate::{range, txn};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// What a store keeps beyond its current state, and how it serves reads of
/// past revisions inside a transaction.
pub(crate) trait History {
    /// `key` was written at `rev`; `old` is the version it replaced (`None`:
    /// the key did not exist). Only called when the revision really changes.
    fn record_put(&mut self, key: &[u8], old: Option<Entry>, rev: i64);
    /// `key` was deleted at `rev`; `old` was its last version.
    fn record_delete(&mut self, key: &[u8], old: Entry, rev: i64);
    /// Whether [`record_put`](Self::record_put) wants the replaced value when
    /// a put keeps it (`ignore_value`): costs a copy, so only if kept.
    fn keeps_versions(&self) -> bool;
    /// etcd `checkRequestRange` for a range of a transaction branch that
    /// started at `start` (`wrote`: an earlier op of the branch wrote).
    fn check_txn_range(
        &self,
        requested: i64,
        start: i64,
        wrote: bool,
        compact_revision: i64,
    ) -> Result<(), RequestError>;
    /// The lease a live key is attached to (0: none), for lease compares.
    fn lease_of(&self, key: &[u8]) -> i64;
    /// Serves a range of a transaction branch whose revision was checked.
    fn txn_range(
        &self,
        map: &BTreeMap<Vec<u8>, Entry>,
        r: &RangeRequest,
        start: i64,
    ) -> RangeResponse;
}

/// The history of a [`KvStore`]: none. A range inside a transaction may name
/// revision 0 or the transaction's start revision before any write of its
/// branch; anything else is compacted (or in the future).
pub(crate) struct NoHistory;

impl History for NoHistory {
    #[inline(always)]
    fn record_put(&mut self, _key: &[u8], _old: Option<Entry>, _rev: i64) {}
    #[inline(always)]
    fn record_delete(&mut self, _key: &[u8], _old: Entry, _rev: i64) {}
    #[inline(always)]
    fn keeps_versions(&self) -> bool {
        false
    }
    #[inline(always)]
    fn lease_of(&self, _key: &[u8]) -> i64 {
        0
    }

    fn check_txn_range(
        &self,
        requested: i64,
        start: i64,
        wrote: bool,
        _compact_revision: i64,
    ) -> Result<(), RequestError> {
        if requested == 0 {
            return Ok(());
        }
        if requested > start {
            return Err(RequestError::FutureRevision {
                requested,
                current: start,
            });
        }
        if requested < start || wrote {
            let oldest = if wrote {
                start.saturating_add(1)
            } else {
                start
            };
            return Err(RequestError::Compacted { requested, oldest });
        }
        Ok(())
    }

    fn txn_range(
        &self,
        map: &BTreeMap<Vec<u8>, Entry>,
        r: &RangeRequest,
        start: i64,
    ) -> RangeResponse {
        range::read(map, r, start)
    }
}

impl KvStore {
    fn next_revision(&self) -> Result<i64, RequestError> {
        self.revision
            .checked_add(1)
            .ok_or(RequestError::RevisionExhausted)
    }

    pub(crate) fn put_command<H: History>(
        &mut self,
        r: &PutRequest,
        history: &mut H,
    ) -> Result<PutResponse, RequestError> {
        if r.ignore_value && !self.map.contains_key(&r.key) {
            return Err(RequestError::KeyNotFound);
        }
        let rev = self.next_revision()?;
        let resp = self.put_at(rev, r, history);
        self.revision = rev;
        Ok(resp)
    }

    pub(crate) fn delete_command<H: History>(
        &mut self,
        r: &DeleteRangeRequest,
        history: &mut H,
    ) -> Result<DeleteRangeResponse, RequestError> {
        let rev = self.next_revision()?;
        let mut resp = self.delete_at(rev, r, history);
        if resp.deleted > 0 {
            self.revision = rev;
        }
        resp.header.revision = self.revision;
        Ok(resp)
    }

    /// Writes one key at revision `rev`; the caller checked `ignore_value`
    /// and sets `self.revision`.
    pub(crate) fn put_at<H: History>(
        &mut self,
        rev: i64,
        r: &PutRequest,
        history: &mut H,
    ) -> PutResponse {
        let header = ResponseHeader { revision: rev };
        match self.map.get_mut(r.key.as_slice()) {
            Some(e) => {
                let prev_kv = r.prev_kv.then(|| e.to_key_value(&r.key, true));
                let old_value = if r.ignore_value {
                    if history.keeps_versions() {
                        e.value.clone()
                    } else {
                        Vec::new()
                    }
                } else {
                    self.size_bytes = self.size_bytes.saturating_sub(e.value.len());
                    self.size_bytes = self.size_bytes.saturating_add(r.value.len());
                    core::mem::replace(&mut e.value, r.value.clone())
                };
                let old = Entry {
                    value: old_value,
                    create_revision: e.create_revision,
                    mod_revision: e.mod_revision,
                    version: e.version,
                };
                e.mod_revision = rev;
                e.version = e.version.saturating_add(1);
                history.record_put(&r.key, Some(old), rev);
                PutResponse { header, prev_kv }
            }
            None => {
                self.size_bytes = self.size_bytes.saturating_add(entry_size(&r.key, &r.value));
                let e = Entry {
                    value: r.value.clone(),
                    create_revision: rev,
                    mod_revision: rev,
                    version: 1,
                };
                self.map.insert(r.key.clone(), e);
                history.record_put(&r.key, None, rev);
                PutResponse {
                    header,
                    prev_kv: None,
                }
            }
        }
    }

    /// Deletes a range; the caller sets `self.revision` to `rev` if anything
    /// was deleted.
    pub(crate) fn delete_at<H: History>(
        &mut self,
        rev: i64,
        r: &DeleteRangeRequest,
        history: &mut H,
    ) -> DeleteRangeResponse {
        let keys: Vec<Vec<u8>> = KeyRange::new(&r.key, &r.range_end)
            .iter(&self.map)
            .map(|(k, _)| k.clone())
            .collect();
        let mut prev_kvs = Vec::new();
        for k in &keys {
            if let Some(e) = self.map.remove(k.as_slice()) {
                self.size_bytes = self.size_bytes.saturating_sub(entry_size(k, &e.value));
                if r.prev_kv {
                    prev_kvs.push(e.to_key_value(k, true));
                }
                history.record_delete(k, e, rev);
            }
        }
        DeleteRangeResponse {
            header: ResponseHeader { revision: rev },
            deleted: i64::try_from(keys.len()).unwrap_or(i64::MAX),
            prev_kvs,
        }
    }

    pub(crate) fn txn<H: History>(
        &mut self,
        t: &TxnRequest,
        history: &mut H,
    ) -> Result<TxnResponse, RequestError> {
        let mut path = Vec::new();
        txn::decide(&self.map, t, &|k| history.lease_of(k), &mut path);
        let start = self.revision;
        let compact_revision = self.compact_revision;
        txn::check_branch(&self.map, t, &path, start, &mut |requested, wrote| {
            history.check_txn_range(requested, start, wrote, compact_revision)
        })?;
        // check_branch refused the branch if it writes and start == i64::MAX.
        let rev = start.saturating_add(1);
        let mut changed = false;
        let mut next = 0;
        let mut resp = self.run_txn(t, &path, &mut next, rev, start, &mut changed, history);
        if changed {
            self.revision = rev;
        }
        set_headers(
            &mut resp.responses,
            ResponseHeader {
                revision: self.revision,
            },
        );
        resp.header = ResponseHeader {
            revision: self.revision,
        };
        Ok(resp)
    }

    /// Runs the branch of `t` that `path[*next]` names, nested transactions
    /// included, every write at `rev` and every read at `start`.
    #[allow(clippy::too_many_arguments)]
    fn run_txn<H: History>(
        &mut self,
        t: &TxnRequest,
        path: &[bool],
        next: &mut usize,
        rev: i64,
        start: i64,
        changed: &mut bool,
        history: &mut H,
    ) -> TxnResponse {
        let succeeded = path.get(*next).copied().unwrap_or(false);
        let ops = txn::path_branch(t, path, next);
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                RequestOp::Range(r) => ResponseOp::Range(history.txn_range(&self.map, r, start)),
                RequestOp::Put(p) => {
                    *changed = true;
                    ResponseOp::Put(self.put_at(rev, p, history))
                }
                RequestOp::DeleteRange(d) => {
                    let resp = self.delete_at(rev, d, history);
                    *changed |= resp.deleted > 0;
                    ResponseOp::DeleteRange(resp)
                }
                #[cfg(feature = "nested-txn")]
                RequestOp::Txn(inner) => {
                    ResponseOp::Txn(self.run_txn(inner, path, next, rev, start, changed, history))
                }
            });
        }
        TxnResponse {
            header: ResponseHeader::default(),
            succeeded,
            responses,
        }
    }
}

/// Gives every operation's response `header`, as etcd does once the
/// transaction's revision is known; a nested transaction's own header
/// stays empty, as in etcd, but its operations get `header` too.
pub(crate) fn set_headers(responses: &mut [ResponseOp], header: ResponseHeader) {
    for resp in responses {
        match resp {
            ResponseOp::Range(r) => r.header = header,
            ResponseOp::Put(r) => r.header = header,
            ResponseOp::DeleteRange(r) => r.header = header,
            #[cfg(feature = "nested-txn")]
            ResponseOp::Txn(t) => set_headers(&mut t.responses, header),
        }
    }
}
