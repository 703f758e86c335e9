//! Range reads with etcd's `count`, `limit`/`more`, filters, sorting,
//! `keys_only` and `count_only` behaviour (etcd `txn.Range`).

use crate::keys::KeyRange;
use crate::range_sort::Found;
use crate::request::{RangeRequest, SortOrder, SortTarget};
use crate::response::{KeyValue, RangeResponse, ResponseHeader};
use crate::store::Entry;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::cmp::Ordering;

/// Runs `req` against `map`, ignoring `req.revision` (the caller checked it).
pub(crate) fn read(
    map: &BTreeMap<Vec<u8>, Entry>,
    req: &RangeRequest,
    revision: i64,
) -> RangeResponse {
    read_from(
        KeyRange::new(&req.key, &req.range_end).iter(map),
        req,
        revision,
    )
}

/// Runs `req` against `in_range`: the keys in `req`'s range with the version
/// to show, in key order (a current map's, or a past revision's). Answers
/// with `revision` in the header.
pub(crate) fn read_from<'m>(
    in_range: impl Iterator<Item = (&'m Vec<u8>, &'m Entry)>,
    req: &RangeRequest,
    revision: i64,
) -> RangeResponse {
    let header = ResponseHeader { revision };
    if req.count_only {
        let count = in_range.count();
        return RangeResponse {
            header,
            kvs: Vec::new(),
            more: false,
            count: to_i64(count),
        };
    }
    let mut found: Vec<(&Vec<u8>, &Entry)> = in_range.collect();
    let count = to_i64(found.len());
    found.retain(|(_, e)| passes_filters(req, e));
    sort(&mut found, req.sort_order, req.sort_target);
    let mut more = false;
    if let Ok(limit) = usize::try_from(req.limit) {
        if limit > 0 && found.len() > limit {
            found.truncate(limit);
            more = true;
        }
    }
    let kvs = found
        .into_iter()
        .map(|(k, e)| e.to_key_value(k, !req.keys_only))
        .collect();
    RangeResponse {
        header,
        kvs,
        more,
        count,
    }
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// etcd's `pruneKVs`: a zero bound is no bound.
fn passes_filters(req: &RangeRequest, e: &Entry) -> bool {
    let below = |min: i64, v: i64| min != 0 && v < min;
    let above = |max: i64, v: i64| max != 0 && v > max;
    !(below(req.min_mod_revision, e.mod_revision)
        || above(req.max_mod_revision, e.mod_revision)
        || below(req.min_create_revision, e.create_revision)
        || above(req.max_create_revision, e.create_revision))
}

/// etcd's sort rules: a target other than the key with no order sorts
/// ascending; key/ascend is the natural order. Ties (which etcd leaves in an
/// unspecified order) stay in key order here.
fn sort(found: &mut [Found<'_>], order: SortOrder, target: SortTarget) {
    let order = match (target, order) {
        (SortTarget::Key, SortOrder::Ascend) => SortOrder::None,
        (SortTarget::Key, o) => o,
        (_, SortOrder::None) => SortOrder::Ascend,
        (_, o) => o,
    };
    let by = |a: &Found<'_>, b: &Found<'_>| -> Ordering {
        match target {
            SortTarget::Key => a.0.cmp(b.0),
            SortTarget::Version => a.1.version.cmp(&b.1.version),
            SortTarget::Create => a.1.create_revision.cmp(&b.1.create_revision),
            SortTarget::Mod => a.1.mod_revision.cmp(&b.1.mod_revision),
            SortTarget::Value => a.1.value.cmp(&b.1.value),
        }
    };
    let descend = match order {
        SortOrder::None => return,
        SortOrder::Ascend => false,
        SortOrder::Descend => true,
    };
    // `found` is in key order, so breaking ties by key (ascending, also
    // when descending) gives exactly what a stable sort would, with any
    // sort: the library's with `fast-sort` (the server), else `range_sort`'s
    // smaller one (the firmware; see there).
    let cmp = |a: &Found<'_>, b: &Found<'_>| {
        let o = by(a, b);
        let o = if descend { o.reverse() } else { o };
        o.then_with(|| a.0.cmp(b.0))
    };
    #[cfg(feature = "fast-sort")]
    found.sort_unstable_by(cmp);
    #[cfg(not(feature = "fast-sort"))]
    crate::range_sort::sort_by(found, &cmp);
}

/// Checks the revision of a standalone range (etcd `rangeKeys`): `<= 0` is
/// the current revision, and no other revision than the current is kept.
pub(crate) fn check_revision(requested: i64, current: i64) -> Result<(), crate::RequestError> {
    if requested > current {
        return Err(crate::RequestError::FutureRevision { requested, current });
    }
    if requested > 0 && requested < current {
        return Err(crate::RequestError::Compacted {
            requested,
            oldest: current,
        });
    }
    Ok(())
}

impl Entry {
    pub(crate) fn to_key_value(&self, key: &[u8], with_value: bool) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value: if with_value {
                self.value.clone()
            } else {
                Vec::new()
            },
        }
    }
}
