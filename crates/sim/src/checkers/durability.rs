//! Durability: every write a client saw acknowledged is in the final
//! committed log, at the index where it was first seen committed, after all
//! crashes, torn writes and restarts.

use std::collections::BTreeMap;

use metalraft_core::Index;

use super::Violation;
use crate::history::OpId;

/// `acked` are the acknowledged writes, `committed_at` maps operations to
/// the index they were first applied at, `final_log` maps the indices of the
/// final committed log to the operation they carry.
pub fn check_durability(
    acked: impl IntoIterator<Item = OpId>,
    committed_at: &BTreeMap<OpId, Index>,
    final_log: &BTreeMap<Index, OpId>,
) -> Result<usize, Violation> {
    let mut n = 0;
    for op in acked {
        let index = committed_at.get(&op).copied().unwrap_or(0);
        if final_log.get(&index) != Some(&op) {
            return Err(Violation::LostAcknowledgedWrite { op, index });
        }
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_acknowledged_write_is_reported() {
        let committed_at = BTreeMap::from([(10, 2), (11, 3)]);
        let final_log = BTreeMap::from([(2, 10), (3, 11)]);
        assert_eq!(check_durability([10, 11], &committed_at, &final_log), Ok(2));
        // Index 3 was overwritten by another write after a crash.
        let rewritten = BTreeMap::from([(2, 10), (3, 12)]);
        assert_eq!(
            check_durability([10, 11], &committed_at, &rewritten),
            Err(Violation::LostAcknowledgedWrite { op: 11, index: 3 })
        );
        // Acknowledged but never seen committed at all.
        assert_eq!(
            check_durability([13], &committed_at, &final_log),
            Err(Violation::LostAcknowledgedWrite { op: 13, index: 0 })
        );
    }
}
