//! Request validation: etcd's API-layer checks, run on decode and again on
//! apply so every replica reaches the same verdict on every entry.

use crate::error::RequestError;
use crate::limits::{MAX_KEY_BYTES, MAX_REQUEST_BYTES, MAX_TXN_OPS, MAX_VALUE_BYTES};
use crate::request::{
    Command, Compare, CompareTarget, DeleteRangeRequest, LeaseOption, PutRequest, RangeRequest,
    RequestOp, TxnLeases, TxnRequest,
};

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
            Command::LeaseGrant(g) => {
                if g.ttl > crate::MAX_LEASE_TTL_SECS {
                    return Err(RequestError::LeaseTtlTooLarge);
                }
            }
            Command::LeaseRevoke(_) => {}
            Command::LeasePut(r, l) => {
                check_put(r)?;
                check_lease_option(l)?;
            }
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
        fn op_bytes(op: &RequestOp) -> usize {
            match op {
                RequestOp::Range(r) => r.key.len() + r.range_end.len(),
                RequestOp::Put(r) => r.key.len() + r.value.len(),
                RequestOp::DeleteRange(r) => r.key.len() + r.range_end.len(),
            }
        }
        match self {
            Command::Put(r) | Command::LeasePut(r, _) => r.key.len() + r.value.len(),
            Command::DeleteRange(r) => r.key.len() + r.range_end.len(),
            Command::Range(r) => r.key.len() + r.range_end.len(),
            Command::Compact(_) | Command::LeaseGrant(_) | Command::LeaseRevoke(_) => 0,
            Command::Txn(t) | Command::LeaseTxn(t, _) => {
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
        }
    }
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
    for len in [t.compare.len(), t.success.len(), t.failure.len()] {
        if len > MAX_TXN_OPS {
            return Err(RequestError::TooManyOps { len });
        }
    }
    for c in &t.compare {
        check_compare(c)?;
    }
    for op in t.success.iter().chain(&t.failure) {
        match op {
            RequestOp::Range(r) => check_range(r)?,
            RequestOp::Put(r) => check_put(r)?,
            RequestOp::DeleteRange(r) => check_delete(r)?,
        }
    }
    check_duplicates(&t.success)?;
    check_duplicates(&t.failure)
}

/// etcd's `checkIntervals` for one branch: no key is put twice, and no put
/// key lies in a deleted interval. Intervals are compared literally, as
/// etcd's interval tree does, so a delete with `range_end = "\0"` conflicts
/// with nothing (etcd quirk, kept for compatibility).
fn check_duplicates(ops: &[RequestOp]) -> Result<(), RequestError> {
    // Pairwise over at most MAX_TXN_OPS ops rather than a `BTreeSet` of put
    // keys: the set was one more map instantiation in the firmware (~3 KB
    // of `.text`), and the interval test is pairwise anyway.
    for (i, op) in ops.iter().enumerate() {
        let RequestOp::Put(p) = op else { continue };
        let k = p.key.as_slice();
        let conflict = ops.iter().enumerate().any(|(j, op)| match op {
            RequestOp::Put(earlier) => j < i && earlier.key == k,
            RequestOp::DeleteRange(d) if d.range_end.is_empty() => d.key == k,
            RequestOp::DeleteRange(d) => d.key.as_slice() <= k && k < d.range_end.as_slice(),
            RequestOp::Range(_) => false,
        });
        if conflict {
            return Err(RequestError::DuplicateKey);
        }
    }
    Ok(())
}

/// etcd `checkPutRequest`'s lease rule: `ignore_lease` with a lease is refused.
fn check_lease_option(l: &LeaseOption) -> Result<(), RequestError> {
    if l.ignore_lease && l.lease != 0 {
        return Err(RequestError::LeaseProvided);
    }
    Ok(())
}

/// One [`LeaseOption`] per put of each branch, each valid.
fn check_txn_leases(t: &TxnRequest, l: &TxnLeases) -> Result<(), RequestError> {
    let puts = |ops: &[RequestOp]| {
        ops.iter()
            .filter(|op| matches!(op, RequestOp::Put(_)))
            .count()
    };
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
