//! Transaction compares and the checks that make a transaction all-or-nothing.

use crate::error::RequestError;
use crate::keys::KeyRange;
use crate::request::{Compare, CompareResult, CompareTarget, RequestOp, TxnRequest};
use crate::store::Entry;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::cmp::Ordering;

/// etcd `applyCompare`: true when the compare holds for every key in its
/// range. With no key in range, a value compare is false whatever the
/// operator (etcd cannot tell a missing value from an empty one), and any
/// other target compares a zeroed key-value (version, revisions, lease 0).
/// `lease_of` gives a live key's lease (a store without leases: always 0).
pub(crate) fn holds(
    map: &BTreeMap<Vec<u8>, Entry>,
    c: &Compare,
    lease_of: impl Fn(&[u8]) -> i64,
) -> bool {
    let mut in_range = KeyRange::new(&c.key, &c.range_end).iter(map).peekable();
    if in_range.peek().is_none() {
        return match &c.target {
            CompareTarget::Value(_) => false,
            _ => outcome(c.result, ordering(None, 0, &c.target)),
        };
    }
    in_range.all(|(k, e)| outcome(c.result, ordering(Some(e), lease_of(k), &c.target)))
}

/// How the key's field compares to the operand (`None`: missing key).
fn ordering(e: Option<&Entry>, lease: i64, target: &CompareTarget) -> Ordering {
    let field = |f: fn(&Entry) -> i64| e.map_or(0, f);
    match target {
        CompareTarget::Version(v) => field(|e| e.version).cmp(v),
        CompareTarget::CreateRevision(v) => field(|e| e.create_revision).cmp(v),
        CompareTarget::ModRevision(v) => field(|e| e.mod_revision).cmp(v),
        CompareTarget::Lease(v) => lease.cmp(v),
        CompareTarget::Value(v) => e.map_or(&[][..], |e| &e.value[..]).cmp(&v[..]),
    }
}

fn outcome(result: CompareResult, ord: Ordering) -> bool {
    match result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    }
}

/// The branch a transaction runs when its compares `held`.
pub(crate) fn branch(t: &TxnRequest, held: bool) -> &[RequestOp] {
    if held {
        &t.success
    } else {
        &t.failure
    }
}

/// etcd `compareToPath`: decides `t` and every nested transaction in the
/// branches that will run, all against the store as it is before any write
/// of the transaction, and appends the verdicts to `path` in execution
/// order (the outer transaction first).
pub(crate) fn decide(
    map: &BTreeMap<Vec<u8>, Entry>,
    t: &TxnRequest,
    lease_of: &dyn Fn(&[u8]) -> i64,
    path: &mut Vec<bool>,
) {
    let held = t.compare.iter().all(|c| holds(map, c, lease_of));
    path.push(held);
    #[cfg(feature = "nested-txn")]
    for op in branch(t, held) {
        if let RequestOp::Txn(inner) = op {
            decide(map, inner, lease_of, path);
        }
    }
}

/// Walks the operations a decided transaction will run, in execution
/// order; `path` is [`decide`]'s verdicts and `next` the position in it.
pub(crate) fn path_branch<'t>(
    t: &'t TxnRequest,
    path: &[bool],
    next: &mut usize,
) -> &'t [RequestOp] {
    let held = path.get(*next).copied().unwrap_or(false);
    *next += 1;
    branch(t, held)
}

/// The state-dependent checks etcd runs on the branches that will run
/// before executing them (`checkRequests`), so a failing transaction
/// changes nothing. `path` is [`decide`]'s verdicts.
///
/// `check_range(requested, wrote)` decides whether a range may name
/// revision `requested` (`wrote`: an earlier op of the transaction wrote);
/// the store decides, since only it knows which revisions it keeps.
pub(crate) fn check_branch(
    map: &BTreeMap<Vec<u8>, Entry>,
    t: &TxnRequest,
    path: &[bool],
    start: i64,
    check_range: &mut dyn FnMut(i64, bool) -> Result<(), RequestError>,
) -> Result<(), RequestError> {
    let mut wrote = false;
    let mut next = 0;
    check_ops(map, t, path, &mut next, &mut wrote, check_range)?;
    if wrote && start == i64::MAX {
        return Err(RequestError::RevisionExhausted);
    }
    Ok(())
}

fn check_ops(
    map: &BTreeMap<Vec<u8>, Entry>,
    t: &TxnRequest,
    path: &[bool],
    next: &mut usize,
    wrote: &mut bool,
    check_range: &mut dyn FnMut(i64, bool) -> Result<(), RequestError>,
) -> Result<(), RequestError> {
    for op in path_branch(t, path, next) {
        match op {
            RequestOp::Range(r) => check_range(r.revision, *wrote)?,
            RequestOp::Put(p) => {
                if p.ignore_value && !map.contains_key(&p.key) {
                    return Err(RequestError::KeyNotFound);
                }
                *wrote = true;
            }
            RequestOp::DeleteRange(_) => *wrote = true,
            #[cfg(feature = "nested-txn")]
            RequestOp::Txn(inner) => check_ops(map, inner, path, next, wrote, check_range)?,
        }
    }
    Ok(())
}
