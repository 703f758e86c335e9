//! Linearizability of the client history, partitioned by key (every
//! operation touches one key, and a history is linearizable iff each key's
//! sub-history is: Herlihy & Wing's locality). Each key is checked with the
//! Wing–Gong search with Lowe's memoisation of (linearized set, state), the
//! algorithm of Knossos and porcupine. (The `porcupine` crate on crates.io
//! is an unrelated Win32 wrapper, so this is our own implementation; its
//! tests below include non-linearizable histories it must reject.)
//!
//! Outcomes: `Failed` operations are left out (they did not happen);
//! `Unknown` and pending operations may have happened at any time after
//! their invocation, so their return is placed at infinity; unknown reads
//! constrain nothing and are left out.

use std::collections::{BTreeMap, HashSet};

use super::Violation;
use crate::config::Time;
use crate::history::{History, KeyId, OpId, OpKind, OpOutput, OpRecord, Outcome};

/// Search steps allowed per key before the check of that key is reported
/// inconclusive (counted in the report, never a silent pass).
pub const LIN_SEARCH_STEPS_MAX: u64 = 5_000_000;
/// Most operations of a key listed in a violation report.
pub const LIN_REPORT_OPS_MAX: usize = 200;

/// What the check covered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinearizabilityReport {
    /// Keys checked.
    pub keys: usize,
    /// Operations that entered the check.
    pub ops_checked: usize,
    /// Keys whose search exceeded [`LIN_SEARCH_STEPS_MAX`].
    pub inconclusive_keys: Vec<KeyId>,
}

#[derive(Clone, Copy, Debug)]
struct LinOp {
    id: OpId,
    invoke: Time,
    ret: Time,
    kind: OpKind,
    output: Option<OpOutput>,
}

type State = Option<OpId>;

/// The sequential specification of one key.
fn step(state: State, op: &LinOp) -> Option<State> {
    match (op.kind, op.output) {
        (OpKind::Put, None | Some(OpOutput::Put)) => Some(Some(op.id)),
        (OpKind::Get, Some(OpOutput::Get(v))) => (v == state).then_some(state),
        (OpKind::Delete, None) => Some(None),
        (OpKind::Delete, Some(OpOutput::Delete(d))) => (d == state.is_some()).then_some(None),
        (OpKind::Cas { expect }, out) => {
            let holds = state == expect;
            let next = if holds { Some(op.id) } else { state };
            match out {
                None => Some(next),
                Some(OpOutput::Cas(s)) => (s == holds).then_some(next),
                Some(_) => None,
            }
        }
        _ => None,
    }
}

fn to_lin(r: &OpRecord) -> Option<LinOp> {
    let (ret, output) = match r.completion {
        Some((_, Outcome::Failed)) => return None,
        Some((t, Outcome::Ok(o))) => (t, Some(o)),
        Some((_, Outcome::Unknown)) | None => (Time::MAX, None),
    };
    if output.is_none() && r.kind == OpKind::Get {
        return None;
    }
    Some(LinOp {
        id: r.id,
        invoke: r.invoke,
        ret,
        kind: r.kind,
        output,
    })
}

/// Checks the whole history. `Err` names the first key without a
/// linearization and lists its operations.
pub fn check_linearizable(history: &History) -> Result<LinearizabilityReport, Violation> {
    let mut by_key: BTreeMap<KeyId, Vec<&OpRecord>> = BTreeMap::new();
    for r in &history.ops {
        by_key.entry(r.key).or_default().push(r);
    }
    let mut report = LinearizabilityReport::default();
    for (key, records) in by_key {
        let ops: Vec<LinOp> = records.iter().filter_map(|r| to_lin(r)).collect();
        report.keys += 1;
        report.ops_checked += ops.len();
        match search(&ops, LIN_SEARCH_STEPS_MAX) {
            Search::Linearizable => {}
            Search::Inconclusive => report.inconclusive_keys.push(key),
            Search::NotLinearizable => {
                let mut lines: Vec<String> = records.iter().map(|r| r.to_string()).collect();
                if lines.len() > LIN_REPORT_OPS_MAX {
                    let more = lines.len() - LIN_REPORT_OPS_MAX;
                    lines.truncate(LIN_REPORT_OPS_MAX);
                    lines.push(format!("... and {more} more"));
                }
                return Err(Violation::NotLinearizable { key, ops: lines });
            }
        }
    }
    Ok(report)
}

#[derive(Debug, PartialEq, Eq)]
enum Search {
    Linearizable,
    NotLinearizable,
    Inconclusive,
}

/// Wing–Gong–Lowe search over one key's operations.
fn search(ops: &[LinOp], steps_max: u64) -> Search {
    let n = ops.len();
    if n == 0 {
        return Search::Linearizable;
    }
    // Events: (time, is_return, op). Calls sort before returns at equal
    // times, so operations touching at an instant count as concurrent.
    let mut events: Vec<(Time, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoke, false, i));
        events.push((op.ret, true, i));
    }
    events.sort_unstable();
    // Doubly linked list over event slots 0..2n, head = 2n, tail = 2n + 1.
    let head = 2 * n;
    let tail = 2 * n + 1;
    let mut next = vec![0usize; 2 * n + 2];
    let mut prev = vec![0usize; 2 * n + 2];
    let mut call_slot = vec![0usize; n];
    let mut ret_slot = vec![0usize; n];
    for (slot, &(_, is_ret, op)) in events.iter().enumerate() {
        if is_ret {
            ret_slot[op] = slot;
        } else {
            call_slot[op] = slot;
        }
        next[slot] = if slot + 1 < 2 * n { slot + 1 } else { tail };
        prev[slot] = if slot == 0 { head } else { slot - 1 };
    }
    next[head] = 0;
    prev[tail] = 2 * n - 1;

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut calls: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut entry = next[head];
    let mut steps = 0u64;

    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, s: usize| {
        let (p, q) = (prev[s], next[s]);
        next[p] = q;
        prev[q] = p;
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, s: usize| {
        let (p, q) = (prev[s], next[s]);
        next[p] = s;
        prev[q] = s;
    };

    while next[head] != tail {
        steps += 1;
        if steps > steps_max {
            return Search::Inconclusive;
        }
        let (_, is_ret, op) = events[entry];
        if !is_ret {
            if let Some(new_state) = step(state, &ops[op]) {
                let mut lin = linearized.clone();
                lin[op / 64] |= 1 << (op % 64);
                if cache.insert((lin, new_state)) {
                    calls.push((op, state));
                    state = new_state;
                    linearized[op / 64] |= 1 << (op % 64);
                    unlink(&mut next, &mut prev, call_slot[op]);
                    unlink(&mut next, &mut prev, ret_slot[op]);
                    entry = next[head];
                    continue;
                }
            }
            entry = next[entry];
        } else {
            // A return whose call is not linearized yet: backtrack.
            let Some((op, old_state)) = calls.pop() else {
                return Search::NotLinearizable;
            };
            state = old_state;
            linearized[op / 64] &= !(1 << (op % 64));
            relink(&mut next, &mut prev, ret_slot[op]);
            relink(&mut next, &mut prev, call_slot[op]);
            entry = next[call_slot[op]];
        }
    }
    Search::Linearizable
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(
        id: OpId,
        client: usize,
        kind: OpKind,
        invoke: Time,
        done: Option<(Time, Outcome)>,
    ) -> OpRecord {
        OpRecord {
            id,
            client,
            key: 0,
            kind,
            invoke,
            completion: done,
        }
    }
    fn ok(t: Time, o: OpOutput) -> Option<(Time, Outcome)> {
        Some((t, Outcome::Ok(o)))
    }
    fn check(ops: Vec<OpRecord>) -> Result<LinearizabilityReport, Violation> {
        check_linearizable(&History { ops })
    }

    #[test]
    fn sequential_and_concurrent_histories_pass() {
        let h = vec![
            rec(1, 0, OpKind::Put, 0, ok(10, OpOutput::Put)),
            rec(2, 1, OpKind::Get, 11, ok(20, OpOutput::Get(Some(1)))),
            // Concurrent put and get: the get may see either value.
            rec(3, 0, OpKind::Put, 21, ok(40, OpOutput::Put)),
            rec(4, 1, OpKind::Get, 22, ok(30, OpOutput::Get(Some(1)))),
            rec(5, 1, OpKind::Get, 41, ok(50, OpOutput::Get(Some(3)))),
            rec(
                6,
                0,
                OpKind::Cas { expect: Some(3) },
                51,
                ok(60, OpOutput::Cas(true)),
            ),
            rec(
                7,
                1,
                OpKind::Cas { expect: Some(3) },
                61,
                ok(70, OpOutput::Cas(false)),
            ),
            rec(8, 0, OpKind::Delete, 71, ok(80, OpOutput::Delete(true))),
            rec(9, 1, OpKind::Get, 81, ok(90, OpOutput::Get(None))),
        ];
        let r = check(h).unwrap();
        assert_eq!((r.keys, r.ops_checked), (1, 9));
        assert!(r.inconclusive_keys.is_empty());
    }

    #[test]
    fn stale_read_is_rejected() {
        let h = vec![
            rec(1, 0, OpKind::Put, 0, ok(10, OpOutput::Put)),
            rec(2, 0, OpKind::Put, 11, ok(20, OpOutput::Put)),
            // Invoked after put 2 completed, yet sees put 1.
            rec(3, 1, OpKind::Get, 21, ok(30, OpOutput::Get(Some(1)))),
        ];
        assert!(matches!(
            check(h),
            Err(Violation::NotLinearizable { key: 0, .. })
        ));
    }

    #[test]
    fn lost_acknowledged_write_is_rejected() {
        let h = vec![
            rec(1, 0, OpKind::Put, 0, ok(10, OpOutput::Put)),
            rec(2, 1, OpKind::Get, 20, ok(30, OpOutput::Get(None))),
        ];
        assert!(check(h).is_err());
    }

    #[test]
    fn read_of_a_value_never_written_or_failed_is_rejected() {
        let h = vec![
            rec(1, 0, OpKind::Put, 0, Some((10, Outcome::Failed))),
            rec(2, 1, OpKind::Get, 20, ok(30, OpOutput::Get(Some(1)))),
        ];
        assert!(check(h).is_err(), "a failed write must not be visible");
    }

    #[test]
    fn unknown_writes_may_or_may_not_take_effect() {
        let took_effect = vec![
            rec(1, 0, OpKind::Put, 0, Some((10, Outcome::Unknown))),
            rec(2, 1, OpKind::Get, 20, ok(30, OpOutput::Get(Some(1)))),
            rec(3, 1, OpKind::Get, 40, ok(50, OpOutput::Get(Some(1)))),
        ];
        assert!(check(took_effect).is_ok());
        let never = vec![
            rec(1, 0, OpKind::Put, 0, None),
            rec(2, 1, OpKind::Get, 20, ok(30, OpOutput::Get(None))),
        ];
        assert!(check(never).is_ok());
        // But once seen, it cannot be unseen.
        let flicker = vec![
            rec(1, 0, OpKind::Put, 0, Some((10, Outcome::Unknown))),
            rec(2, 1, OpKind::Get, 20, ok(30, OpOutput::Get(Some(1)))),
            rec(3, 1, OpKind::Get, 40, ok(50, OpOutput::Get(None))),
        ];
        assert!(check(flicker).is_err());
    }

    #[test]
    fn wrong_cas_and_delete_results_are_rejected() {
        let cas = vec![
            rec(1, 0, OpKind::Put, 0, ok(10, OpOutput::Put)),
            rec(
                2,
                1,
                OpKind::Cas { expect: Some(1) },
                20,
                ok(30, OpOutput::Cas(false)),
            ),
        ];
        assert!(check(cas).is_err());
        let del = vec![rec(1, 0, OpKind::Delete, 0, ok(10, OpOutput::Delete(true)))];
        assert!(check(del).is_err());
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut a = rec(1, 0, OpKind::Put, 0, ok(10, OpOutput::Put));
        a.key = 1;
        let b = rec(2, 1, OpKind::Get, 20, ok(30, OpOutput::Get(None)));
        let r = check(vec![a, b]).unwrap();
        assert_eq!(r.keys, 2);
    }

    #[test]
    fn search_budget_reports_inconclusive_not_pass() {
        let ops: Vec<LinOp> = (0..20)
            .map(|i| LinOp {
                id: i,
                invoke: 0,
                ret: Time::MAX,
                kind: OpKind::Put,
                output: None,
            })
            .chain(std::iter::once(LinOp {
                id: 99,
                invoke: 1,
                ret: 2,
                kind: OpKind::Get,
                output: Some(OpOutput::Get(Some(12345))),
            }))
            .collect();
        assert_eq!(search(&ops, 1_000), Search::Inconclusive);
    }

    #[test]
    fn many_concurrent_clients_are_checked_quickly() {
        // 8 clients, 400 operations, heavy overlap: must finish within budget.
        let mut ops = Vec::new();
        let mut t = 0;
        let mut last = None;
        for i in 0..400u64 {
            let kind = if i % 3 == 0 { OpKind::Get } else { OpKind::Put };
            let out = if kind == OpKind::Get {
                OpOutput::Get(last)
            } else {
                OpOutput::Put
            };
            ops.push(rec(i + 1, (i % 8) as usize, kind, t, ok(t + 5, out)));
            if kind == OpKind::Put {
                last = Some(i + 1);
            }
            t += 6;
        }
        let r = check(ops).unwrap();
        assert!(r.inconclusive_keys.is_empty());
    }
}
