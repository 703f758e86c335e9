//! Log matching (Raft §5.3): if two logs hold an entry with the same index
//! and term, the logs are identical in all entries up to that index.
//!
//! Logs may start after index 1 (a compacted prefix). For every pair of
//! logs the checker finds the highest index in their overlap where the
//! terms agree; below it, within the overlap, both logs must hold the same
//! entries (term and content).

use metalraft_core::{Index, NodeId, Term};

use super::Violation;

/// What the checker needs of one log entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogEntrySummary {
    /// Index.
    pub index: Index,
    /// Term.
    pub term: Term,
    /// Digest of the entry's content.
    pub digest: u64,
}

/// Checks every pair of `logs` (each contiguous, from any first index).
pub fn check_log_matching(logs: &[(NodeId, Vec<LogEntrySummary>)]) -> Result<(), Violation> {
    for (x, (na, a)) in logs.iter().enumerate() {
        for (nb, b) in &logs[x + 1..] {
            check_pair(*na, a, *nb, b)?;
        }
    }
    Ok(())
}

fn check_pair(
    na: NodeId,
    a: &[LogEntrySummary],
    nb: NodeId,
    b: &[LogEntrySummary],
) -> Result<(), Violation> {
    let (Some(fa), Some(fb)) = (a.first(), b.first()) else {
        return Ok(());
    };
    let lo = fa.index.max(fb.index);
    let hi = (fa.index + a.len() as Index).min(fb.index + b.len() as Index);
    let at = |log: &[LogEntrySummary], first: Index, i: Index| log[(i - first) as usize];
    let mut matched = false;
    for i in (lo..hi).rev() {
        let (ea, eb) = (at(a, fa.index, i), at(b, fb.index, i));
        if !matched && ea.term == eb.term {
            matched = true;
        }
        if matched && ea != eb {
            // Reported at the entry where they agree on index and term.
            let top = (i..hi)
                .rev()
                .find(|&j| at(a, fa.index, j).term == at(b, fb.index, j).term)
                .unwrap_or(i);
            return Err(Violation::LogMatching {
                a: na,
                b: nb,
                index: top,
                term: at(a, fa.index, top).term,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_from(first: Index, entries: &[(Term, u64)]) -> Vec<LogEntrySummary> {
        entries
            .iter()
            .enumerate()
            .map(|(i, &(term, digest))| LogEntrySummary {
                index: first + i as u64,
                term,
                digest,
            })
            .collect()
    }
    fn log(entries: &[(Term, u64)]) -> Vec<LogEntrySummary> {
        log_from(1, entries)
    }

    #[test]
    fn diverging_suffixes_of_different_terms_are_fine() {
        let a = log(&[(1, 10), (1, 11), (2, 12)]);
        let b = log(&[(1, 10), (1, 11), (3, 99), (3, 100)]);
        assert!(check_log_matching(&[(1, a), (2, b)]).is_ok());
    }

    #[test]
    fn same_index_and_term_with_different_prefix_is_reported() {
        let a = log(&[(1, 10), (1, 11), (2, 12)]);
        let b = log(&[(1, 10), (1, 77), (2, 12)]);
        assert!(matches!(
            check_log_matching(&[(1, a), (2, b)]),
            Err(Violation::LogMatching {
                a: 1,
                b: 2,
                index: 3,
                term: 2
            })
        ));
        // A prefix that differs in term below a matching entry.
        let a = log(&[(1, 10), (1, 11), (3, 12)]);
        let b = log(&[(1, 10), (2, 11), (3, 12)]);
        assert!(check_log_matching(&[(1, a), (2, b)]).is_err());
    }

    #[test]
    fn same_index_and_term_with_different_content_is_reported() {
        let a = log(&[(1, 10), (2, 12)]);
        let b = log(&[(1, 10), (2, 13)]);
        assert!(matches!(
            check_log_matching(&[(1, a), (3, b)]),
            Err(Violation::LogMatching { index: 2, .. })
        ));
    }

    #[test]
    fn compacted_logs_are_compared_on_their_overlap() {
        let full = log(&[(1, 10), (1, 11), (2, 12), (2, 13)]);
        let compacted = log_from(3, &[(2, 12), (2, 13), (3, 14)]);
        assert!(check_log_matching(&[(1, full.clone()), (2, compacted)]).is_ok());
        let bad = log_from(3, &[(2, 99), (2, 13)]);
        assert!(check_log_matching(&[(1, full), (2, bad)]).is_err());
    }
}
