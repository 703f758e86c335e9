//! Request validation: etcd's API-layer checks, run on decode and again on
//! apply so every replica reaches the same verdict on every entry.

use crate::error::RequestError;
use crate::limits::{MAX_KEY_BYTES, MAX_REQUEST_BYTES, MAX_TXN_OPS, MAX_VALUE_BYTES};
use crate::request::{
    Command, Compare, CompareTarget, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};
#[cfg(feature = "leases")]
use crate::request::{LeaseOption, TxnLeases};
use alloc::vec::Vec;

impl Command {
    /// Checks the command against etcd's request rules and this crate's
    /// limits (see [the limits](crate#encoding-and-limits)), without looking at any state.
    /// [`Command::decode`] and [`KvStore::apply`](crate::KvStore::apply) both
    /// call it; a server can call it before proposing.
    pub fn validate(&self) -> Result<(), RequestError> {
        match self {
            Command::Put(r) => check_put(r)?,
            Command::DeleteRange(r) => check_delete(r)?,
            Command::Txn(r) => check_txn(r)?,
            Command::Range(r) => check_range(r)?,
            Command::Compact(_) => {}
            #[cfg(feature = "leases")]
            Command::LeaseGrant(g) => {
                if g.ttl > crate::MAX_LEASE_TTL_SECS {
                    return Err(RequestError::LeaseTtlTooLarge);
                }
            }
            #[cfg(feature = "leases")]
            Command::LeaseRevoke(_) => {}
            #[cfg(feature = "leases")]
            Command::LeasePut(r, l) => {
                check_put(r)?;
                check_lease_option(l)?;
            }
            #[cfg(feature = "leases")]
            Command::LeaseTxn(t, l) => {
                check_txn(t)?;
                check_txn_leases(t, l)?;
            }
        }
        let len = self.payload_bytes();
        if len > MAX_REQUEST_BYTES {
            return Err(RequestError::RequestTooLarge { len });
        }
        Ok(())
    }

    /// Sum of the lengths of every key, `range_end` and value in the command.
    fn payload_bytes(&self) -> usize {
        match self {
            Command::Put(r) => r.key.len() + r.value.len(),
            Command::DeleteRange(r) => r.key.len() + r.range_end.len(),
            Command::Range(r) => r.key.len() + r.range_end.len(),
            Command::Compact(_) => 0,
            Command::Txn(t) => txn_bytes(t),
            #[cfg(feature = "leases")]
            Command::LeasePut(r, _) => r.key.len() + r.value.len(),
            #[cfg(feature = "leases")]
            Command::LeaseTxn(t, _) => txn_bytes(t),
            #[cfg(feature = "leases")]
            Command::LeaseGrant(_) | Command::LeaseRevoke(_) => 0,
        }
    }
}

impl TxnRequest {
    /// [`Command::validate`] of `Command::Txn(self)`: etcd's request rules
    /// (operation counts, [`MAX_TXN_OPS`], duplicate writes, key and value
    /// lengths) and [`MAX_REQUEST_BYTES`], without cloning the request.
    pub fn validate(&self) -> Result<(), RequestError> {
        check_txn(self)?;
        let len = txn_bytes(self);
        if len > MAX_REQUEST_BYTES {
            return Err(RequestError::RequestTooLarge { len });
        }
        Ok(())
    }

    /// Whether every operation of both branches, nested transactions
    /// included, is a range (etcd `isTxnReadonly`): such a transaction
    /// changes nothing and can be served without the log
    /// ([`MvccStore::read_txn`](crate::MvccStore::read_txn)).
    pub fn is_read_only(&self) -> bool {
        self.success.iter().chain(&self.failure).all(|op| match op {
            RequestOp::Range(_) => true,
            #[cfg(feature = "nested-txn")]
            RequestOp::Txn(t) => t.is_read_only(),
            _ => false,
        })
    }
}

/// The payload bytes of a transaction: compare keys and operands, and its
/// operations' keys, range ends and values.
fn txn_bytes(t: &TxnRequest) -> usize {
    fn op_bytes(op: &RequestOp) -> usize {
        match op {
            RequestOp::Range(r) => r.key.len() + r.range_end.len(),
            RequestOp::Put(r) => r.key.len() + r.value.len(),
            RequestOp::DeleteRange(r) => r.key.len() + r.range_end.len(),
            #[cfg(feature = "nested-txn")]
            RequestOp::Txn(t) => txn_bytes(t),
        }
    }
    let cmp: usize = t
        .compare
        .iter()
        .map(|c| {
            let v = match &c.target {
                CompareTarget::Value(v) => v.len(),
                _ => 0,
            };
            c.key.len() + c.range_end.len() + v
        })
        .sum();
    let ops: usize = t.success.iter().chain(&t.failure).map(op_bytes).sum();
    cmp + ops
}

fn check_key(key: &[u8]) -> Result<(), RequestError> {
    if key.is_empty() {
        return Err(RequestError::EmptyKey);
    }
    check_key_len(key)
}

fn check_key_len(key: &[u8]) -> Result<(), RequestError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(RequestError::KeyTooLarge { len: key.len() });
    }
    Ok(())
}

fn check_value_len(value: &[u8]) -> Result<(), RequestError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(RequestError::ValueTooLarge { len: value.len() });
    }
    Ok(())
}

fn check_put(r: &PutRequest) -> Result<(), RequestError> {
    check_key(&r.key)?;
    check_value_len(&r.value)?;
    if r.ignore_value && !r.value.is_empty() {
        return Err(RequestError::ValueProvided);
    }
    Ok(())
}

fn check_delete(r: &DeleteRangeRequest) -> Result<(), RequestError> {
    check_key(&r.key)?;
    check_key_len(&r.range_end)
}

pub(crate) fn check_range(r: &RangeRequest) -> Result<(), RequestError> {
    check_key(&r.key)?;
    check_key_len(&r.range_end)
}

fn check_compare(c: &Compare) -> Result<(), RequestError> {
    // etcd accepts an empty compare key (it matches no key), so only lengths.
    check_key_len(&c.key)?;
    check_key_len(&c.range_end)?;
    if let CompareTarget::Value(v) = &c.target {
        check_value_len(v)?;
    }
    Ok(())
}

fn check_txn(t: &TxnRequest) -> Result<(), RequestError> {
    check_txn_ops(t, MAX_TXN_OPS)?;
    check_duplicates(&t.success)?;
    check_duplicates(&t.failure)?;
    Ok(())
}

/// etcd `checkTxnRequest`: the longest of a transaction's three lists
/// counts against `budget`, and a nested transaction gets what is left
/// (so nesting is at most [`MAX_TXN_OPS`] deep); then every operation's
/// own checks.
fn check_txn_ops(t: &TxnRequest, budget: usize) -> Result<(), RequestError> {
    let len = t.compare.len().max(t.success.len()).max(t.failure.len());
    if len > budget {
        return Err(RequestError::TooManyOps { len });
    }
    for c in &t.compare {
        check_compare(c)?;
    }
    for op in t.success.iter().chain(&t.failure) {
        match op {
            RequestOp::Range(r) => check_range(r)?,
            RequestOp::Put(r) => check_put(r)?,
            RequestOp::DeleteRange(r) => check_delete(r)?,
            #[cfg(feature = "nested-txn")]
            RequestOp::Txn(inner) => check_txn_ops(inner, budget - len)?,
        }
    }
    Ok(())
}

/// Whether `key` lies in a deleted interval. Intervals are compared
/// literally, as etcd's interval tree does, so a delete with
/// `range_end = "\0"` contains nothing (etcd quirk, kept for compatibility).
fn deleted(d: &DeleteRangeRequest, key: &[u8]) -> bool {
    if d.range_end.is_empty() {
        d.key == key
    } else {
        d.key.as_slice() <= key && key < d.range_end.as_slice()
    }
}

/// The put keys and deletes of one branch, nested transactions included,
/// as etcd's `checkIntervals` collects them.
#[derive(Default)]
struct Intervals<'a> {
    puts: Vec<&'a [u8]>,
    dels: Vec<&'a DeleteRangeRequest>,
}

impl Intervals<'_> {
    fn put_conflicts(&self, key: &[u8]) -> bool {
        self.puts.contains(&key) || self.dels.iter().any(|d| deleted(d, key))
    }
}

/// etcd's `checkIntervals` for one branch: no key is put twice, and no put
/// key lies in a deleted interval, counting the puts and deletes of nested
/// transactions, where a key put by both branches of one nested
/// transaction is fine (only one of them runs). Refuses with
/// [`RequestError::DuplicateKey`].
fn check_duplicates(ops: &[RequestOp]) -> Result<Intervals<'_>, RequestError> {
    // Linear lists over at most MAX_TXN_OPS ops a level rather than sets:
    // a set was one more map instantiation in the firmware (~3 KB of
    // `.text`), and the interval test is a scan anyway.
    let mut here = Intervals::default();
    for op in ops {
        if let RequestOp::DeleteRange(d) = op {
            here.dels.push(d);
        }
    }
    #[cfg(feature = "nested-txn")]
    for op in ops {
        let RequestOp::Txn(t) = op else { continue };
        let then = check_duplicates(&t.success)?;
        let els = check_duplicates(&t.failure)?;
        for k in &then.puts {
            if here.put_conflicts(k) {
                return Err(RequestError::DuplicateKey);
            }
        }
        let before = here.puts.len();
        here.puts.extend_from_slice(&then.puts);
        for k in &els.puts {
            let in_then = then.puts.contains(k);
            if (here.puts.contains(k) && !in_then) || here.dels.iter().any(|d| deleted(d, k)) {
                return Err(RequestError::DuplicateKey);
            }
            if !here.puts[before..].contains(k) {
                here.puts.push(k);
            }
        }
        here.dels.extend(then.dels);
        here.dels.extend(els.dels);
    }
    for op in ops {
        let RequestOp::Put(p) = op else { continue };
        if here.put_conflicts(&p.key) {
            return Err(RequestError::DuplicateKey);
        }
        here.puts.push(&p.key);
    }
    Ok(here)
}

#[cfg(feature = "leases")]
/// etcd `checkPutRequest`'s lease rule: `ignore_lease` with a lease is refused.
fn check_lease_option(l: &LeaseOption) -> Result<(), RequestError> {
    if l.ignore_lease && l.lease != 0 {
        return Err(RequestError::LeaseProvided);
    }
    Ok(())
}

#[cfg(feature = "leases")]
/// One [`LeaseOption`] per put of each branch, each valid.
fn check_txn_leases(t: &TxnRequest, l: &TxnLeases) -> Result<(), RequestError> {
    let puts = count_puts;
    if puts(&t.success) != l.success.len() || puts(&t.failure) != l.failure.len() {
        // A malformed command (the server builds both from one etcd txn).
        return Err(RequestError::TooManyOps {
            len: l.success.len().saturating_add(l.failure.len()),
        });
    }
    l.success
        .iter()
        .chain(&l.failure)
        .try_for_each(check_lease_option)
}

/// The puts of a branch, those of nested transactions (both branches)
/// included: how many [`LeaseOption`]s the branch has in a [`TxnLeases`].
#[cfg(feature = "leases")]
pub(crate) fn count_puts(ops: &[RequestOp]) -> usize {
    ops.iter()
        .map(|op| match op {
            RequestOp::Put(_) => 1,
            #[cfg(feature = "nested-txn")]
            RequestOp::Txn(t) => count_puts(&t.success) + count_puts(&t.failure),
            _ => 0,
        })
        .sum()
}
