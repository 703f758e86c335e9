//! Log matching (Raft §5.3): if two logs hold an entry with the same index
//! and term, the logs are identical in all entries up to that index.

use std::collections::BTreeMap;

use metalraft_core::{Index, NodeId, Term};

use super::Violation;
use crate::digest::fnv_u64;

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

/// Checks every pair of `logs` (each contiguous from index 1) in one pass:
/// each (index, term) maps to the hash chain of the log prefix ending there,
/// and every log that has that (index, term) must have the same chain.
pub fn check_log_matching(logs: &[(NodeId, Vec<LogEntrySummary>)]) -> Result<(), Violation> {
    let mut seen: BTreeMap<(Index, Term), (u64, NodeId)> = BTreeMap::new();
    for (node, log) in logs {
        let mut chain = 0u64;
        for e in log {
            chain = fnv_u64(fnv_u64(fnv_u64(chain, e.index), e.term), e.digest);
            match seen.get(&(e.index, e.term)) {
                Some(&(c, other)) if c != chain => {
                    return Err(Violation::LogMatching {
                        a: other,
                        b: *node,
                        index: e.index,
                        term: e.term,
                    })
                }
                Some(_) => {}
                None => {
                    seen.insert((e.index, e.term), (chain, *node));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(entries: &[(Term, u64)]) -> Vec<LogEntrySummary> {
        entries
            .iter()
            .enumerate()
            .map(|(i, &(term, digest))| LogEntrySummary {
                index: i as u64 + 1,
                term,
                digest,
            })
            .collect()
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
        assert_eq!(
            check_log_matching(&[(1, a), (2, b)]),
            Err(Violation::LogMatching {
                a: 1,
                b: 2,
                index: 2,
                term: 1
            })
        );
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
}
