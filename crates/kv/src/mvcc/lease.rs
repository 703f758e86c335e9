//! The MVCC store's leases (etcd's `lessor`, without the clock): which
//! leases exist, their TTLs, and which live keys are attached to which.
//!
//! Only replicated facts live here. When a lease expires is the leader's
//! business (`metalraft_replica::Lessor`), which revokes it through the log
//! with `Command::LeaseRevoke`; every replica
//! then deletes its keys in one revision.
//!
//! Invariants (kept by [`LeaseHook`] and the revoke, checked on restore):
//! every attached key is live in the current map; `attached[k] == id` if and
//! only if `k` is in `by_id[id].keys`.
//!
//! Without the feature `leases` (the firmware) no command reaches the
//! lease paths; the table stays empty.
#![cfg_attr(not(feature = "leases"), allow(dead_code, unused_imports))]

use super::history::Past;
use super::MvccStore;
use crate::error::RequestError;
use crate::request::{
    DeleteRangeRequest, LeaseGrantRequest, LeaseOption, LeaseRevokeRequest, PutRequest,
    RangeRequest, RequestOp, TxnLeases, TxnRequest,
};
use crate::response::{LeaseGrantResponse, LeaseRevokeResponse, RangeResponse, ResponseHeader};
use crate::store::Entry;
use crate::txn;
use crate::write::History;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

/// One lease as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Lease {
    /// Time to live in seconds, as granted.
    pub(crate) ttl: i64,
    /// The live keys attached to it.
    pub(crate) keys: BTreeSet<Vec<u8>>,
}

/// Every lease and every attachment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Leases {
    pub(crate) by_id: BTreeMap<i64, Lease>,
    pub(crate) attached: BTreeMap<Vec<u8>, i64>,
}

/// A lease as [`MvccStore::lease`] reports it (etcd `LeaseTimeToLive` with
/// `keys`, minus the remaining TTL, which only the leader knows).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The lease's ID.
    pub id: i64,
    /// Its granted time to live in seconds.
    pub ttl: i64,
    /// The keys attached to it, in key order.
    pub keys: Vec<Vec<u8>>,
}

impl Leases {
    pub(super) fn lease_of(&self, key: &[u8]) -> i64 {
        self.attached.get(key).copied().unwrap_or(0)
    }

    fn detach(&mut self, key: &[u8]) {
        if let Some(id) = self.attached.remove(key) {
            let lease = self.by_id.get_mut(&id);
            debug_assert!(lease.is_some(), "an attachment names a missing lease");
            if let Some(lease) = lease {
                lease.keys.remove(key);
            }
        }
    }

    /// Attaches `key` (detached by the caller) to the existing lease `id`.
    fn attach(&mut self, key: &[u8], id: i64) {
        debug_assert!(!self.attached.contains_key(key));
        if let Some(lease) = self.by_id.get_mut(&id) {
            lease.keys.insert(key.to_vec());
            self.attached.insert(key.to_vec(), id);
        }
    }

    #[cfg(feature = "leases")]
    /// etcd's put checks that need state: the lease exists; an
    /// `ignore_lease` put names a live key.
    fn check_put(
        &self,
        map: &BTreeMap<Vec<u8>, Entry>,
        p: &PutRequest,
        l: &LeaseOption,
    ) -> Result<(), RequestError> {
        if l.lease != 0 && !self.by_id.contains_key(&l.lease) {
            return Err(RequestError::LeaseNotFound);
        }
        if l.ignore_lease && !map.contains_key(&p.key) {
            return Err(RequestError::KeyNotFound);
        }
        Ok(())
    }

    #[cfg(feature = "leases")]
    /// The [`LeaseOption`]s of the puts a transaction will run, in the
    /// order they run (nested transactions included), each checked.
    fn txn_branch(
        &self,
        map: &BTreeMap<Vec<u8>, Entry>,
        t: &TxnRequest,
        l: &TxnLeases,
    ) -> Result<Vec<LeaseOption>, RequestError> {
        let mut path = Vec::new();
        txn::decide(map, t, &|k| self.lease_of(k), &mut path);
        let held = path.first().copied().unwrap_or(false);
        let opts = if held { &l.success } else { &l.failure };
        let mut next = 0;
        let mut opts = opts.iter();
        let mut run = Vec::new();
        collect_options(t, &path, &mut next, &mut opts, Some(&mut run));
        for (p, o) in &run {
            self.check_put(map, p, o)?;
        }
        Ok(run.into_iter().map(|(_, o)| o).collect())
    }
}

#[cfg(feature = "leases")]
/// Walks the branch of `t` that `path[*next]` names, taking one option from
/// `opts` for every put in it (those of nested transactions included, in
/// [`TxnLeases`] order); the puts that run, with their options, go to `run`
/// (`None`: a branch that does not run, whose options are only skipped).
fn collect_options<'t>(
    t: &'t TxnRequest,
    path: &[bool],
    next: &mut usize,
    opts: &mut core::slice::Iter<'_, LeaseOption>,
    run: Option<&mut Vec<(&'t PutRequest, LeaseOption)>>,
) {
    let ops = txn::path_branch(t, path, next);
    walk_options(ops, path, next, opts, run);
}

#[cfg(feature = "leases")]
fn walk_options<'t>(
    ops: &'t [RequestOp],
    path: &[bool],
    next: &mut usize,
    opts: &mut core::slice::Iter<'_, LeaseOption>,
    mut run: Option<&mut Vec<(&'t PutRequest, LeaseOption)>>,
) {
    for op in ops {
        match op {
            RequestOp::Put(p) => {
                let o = opts.next().copied().unwrap_or_default();
                if let Some(run) = run.as_deref_mut() {
                    run.push((p, o));
                }
            }
            #[cfg(feature = "nested-txn")]
            RequestOp::Txn(inner) => match run.as_deref_mut() {
                // A nested transaction of a branch that runs: its options
                // are listed success first, then failure; only the branch
                // its verdict names runs.
                Some(run) => {
                    let held = path.get(*next).copied().unwrap_or(false);
                    *next += 1;
                    let (first, second) = (&inner.success, &inner.failure);
                    if held {
                        walk_options(first, path, next, opts, Some(run));
                        walk_options(second, path, next, opts, None);
                    } else {
                        walk_options(first, path, next, opts, None);
                        walk_options(second, path, next, opts, Some(run));
                    }
                }
                None => {
                    walk_options(&inner.success, path, next, opts, None);
                    walk_options(&inner.failure, path, next, opts, None);
                }
            },
            _ => {}
        }
    }
}

/// The [`History`] of the MVCC store's writes: [`Past`], plus keeping
/// attachments right. The write path calls `record_put` once per put, in
/// operation order, so `puts` gives each its [`LeaseOption`] (none left:
/// lease 0, which detaches the key, as an etcd put without a lease does).
pub(crate) struct LeaseHook<'a> {
    past: &'a mut Past,
    leases: &'a mut Leases,
    puts: core::slice::Iter<'a, LeaseOption>,
}

impl<'a> LeaseHook<'a> {
    pub(crate) fn new(past: &'a mut Past, leases: &'a mut Leases, puts: &'a [LeaseOption]) -> Self {
        LeaseHook {
            past,
            leases,
            puts: puts.iter(),
        }
    }
}

impl History for LeaseHook<'_> {
    fn record_put(&mut self, key: &[u8], old: Option<Entry>, rev: i64) {
        self.past.record_put(key, old, rev);
        let opt = self.puts.next().copied().unwrap_or_default();
        if !opt.ignore_lease {
            self.leases.detach(key);
            if opt.lease != 0 {
                self.leases.attach(key, opt.lease);
            }
        }
    }

    fn record_delete(&mut self, key: &[u8], old: Entry, rev: i64) {
        self.past.record_delete(key, old, rev);
        self.leases.detach(key);
    }

    fn keeps_versions(&self) -> bool {
        self.past.keeps_versions()
    }

    fn lease_of(&self, key: &[u8]) -> i64 {
        self.leases.lease_of(key)
    }

    fn check_txn_range(
        &self,
        requested: i64,
        start: i64,
        wrote: bool,
        compact_revision: i64,
    ) -> Result<(), RequestError> {
        self.past
            .check_txn_range(requested, start, wrote, compact_revision)
    }

    fn txn_range(
        &self,
        map: &BTreeMap<Vec<u8>, Entry>,
        r: &RangeRequest,
        start: i64,
    ) -> RangeResponse {
        self.past.txn_range(map, r, start)
    }
}

/// splitmix64's finalizer: spreads consecutive log indexes over the ID
/// space, so server-chosen IDs look like etcd's and rarely meet client ones.
fn mix(index: u64) -> u64 {
    let mut z = index.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl MvccStore {
    #[cfg(feature = "leases")]
    pub(crate) fn check_lease_put(
        &self,
        p: &PutRequest,
        l: &LeaseOption,
    ) -> Result<(), RequestError> {
        self.leases.check_put(&self.current.map, p, l)
    }

    #[cfg(feature = "leases")]
    pub(crate) fn check_lease_txn(
        &self,
        t: &TxnRequest,
        l: &TxnLeases,
    ) -> Result<Vec<LeaseOption>, RequestError> {
        self.leases.txn_branch(&self.current.map, t, l)
    }

    #[cfg(feature = "leases")]
    /// etcd `LeaseGrant` at apply: ID 0 becomes a positive ID derived from
    /// the log index (the first free one from there), the same on every
    /// replica. The revision is unchanged.
    pub(crate) fn grant(
        &mut self,
        g: &LeaseGrantRequest,
    ) -> Result<LeaseGrantResponse, RequestError> {
        let id = if g.id == 0 {
            let mut candidate = mix(self.applied_index());
            loop {
                // Positive, non-zero, unused: at most one step per lease.
                let id = i64::try_from(candidate >> 1).unwrap_or(1).max(1);
                if !self.leases.by_id.contains_key(&id) {
                    break id;
                }
                candidate = mix(candidate);
            }
        } else {
            g.id
        };
        if self.leases.by_id.contains_key(&id) {
            return Err(RequestError::LeaseExists);
        }
        let lease = Lease {
            ttl: g.ttl,
            keys: BTreeSet::new(),
        };
        self.leases.by_id.insert(id, lease);
        Ok(LeaseGrantResponse {
            header: ResponseHeader {
                revision: self.revision(),
            },
            id,
            ttl: g.ttl,
        })
    }

    #[cfg(feature = "leases")]
    /// etcd `LeaseRevoke` at apply: the lease goes, and every key attached
    /// to it is deleted in one new revision (none if it had no keys), in key
    /// order, so watchers see one DELETE event per key.
    pub(crate) fn revoke(
        &mut self,
        r: &LeaseRevokeRequest,
    ) -> Result<LeaseRevokeResponse, RequestError> {
        let has_keys = match self.leases.by_id.get(&r.id) {
            None => return Err(RequestError::LeaseNotFound),
            Some(l) => !l.keys.is_empty(),
        };
        let rev = if has_keys {
            self.revision()
                .checked_add(1)
                .ok_or(RequestError::RevisionExhausted)?
        } else {
            self.revision()
        };
        let lease = self.leases.by_id.remove(&r.id);
        let keys = lease.map(|l| l.keys).unwrap_or_default();
        for key in keys {
            self.leases.attached.remove(&key);
            let d = DeleteRangeRequest {
                key,
                ..DeleteRangeRequest::default()
            };
            let deleted = self.current.delete_at(rev, &d, &mut self.past).deleted;
            debug_assert_eq!(deleted, 1, "an attached key was not live");
        }
        self.current.revision = rev;
        Ok(LeaseRevokeResponse {
            header: ResponseHeader { revision: rev },
        })
    }

    /// The lease `id` with its TTL and attached keys, if it exists.
    /// O(keys attached).
    pub fn lease(&self, id: i64) -> Option<LeaseInfo> {
        let l = self.leases.by_id.get(&id)?;
        Some(LeaseInfo {
            id,
            ttl: l.ttl,
            keys: l.keys.iter().cloned().collect(),
        })
    }

    /// The granted TTL of lease `id` in seconds, if it exists. O(log leases).
    pub fn lease_ttl(&self, id: i64) -> Option<i64> {
        self.leases.by_id.get(&id).map(|l| l.ttl)
    }

    /// Every lease as (ID, granted TTL), in ID order (etcd `LeaseLeases`).
    pub fn leases(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.leases.by_id.iter().map(|(id, l)| (*id, l.ttl))
    }

    /// Number of leases.
    pub fn lease_count(&self) -> usize {
        self.leases.by_id.len()
    }

    /// The lease of `key`'s version with `mod_revision`, for a `KeyValue`'s
    /// `lease` field: the key's lease if that version is the live one, else
    /// 0 (past versions do not record their lease; see ADR 0015).
    pub fn key_lease(&self, key: &[u8], mod_revision: i64) -> i64 {
        match self.current.map.get(key) {
            Some(e) if e.mod_revision == mod_revision => self.leases.lease_of(key),
            _ => 0,
        }
    }
}
