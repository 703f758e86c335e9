//! Records written through the reused record buffer (`DiskLog` encodes
//! each entry straight into one buffer kept across writes): entries of
//! mixed sizes read back intact after recovery, and an entry too large for
//! a record is refused.

mod common;

use common::MemDisk;
use std::cell::RefCell;
use std::rc::Rc;

use metalraft_core::{Config, EntryData, LogStorage, Node};
use metalraft_fw_proto::disk::{LOG_START_SECTOR, MAX_RECORD_PAYLOAD_BYTES, SECTOR_BYTES};
use metalraft_fw_store::{DiskLog, StoreError};

/// Sectors of the test disk's ring.
const RING_SECTORS: u64 = 256;

/// Proposes `sizes` one at a time on a single-voter node over a fresh disk
/// and persists each; returns the disk and the persist results.
fn write_entries(sizes: &[usize]) -> (MemDisk, Vec<Result<bool, StoreError>>) {
    let img = vec![0u8; (LOG_START_SECTOR + RING_SECTORS) as usize * SECTOR_BYTES];
    let disk = MemDisk(Rc::new(RefCell::new(img)));
    let (log, _, _) = DiskLog::open(disk.clone(), &[1]).expect("fresh disk");
    let mut node = Node::new(Config::new(1), log, 0).expect("valid");
    node.campaign().expect("single voter");
    let mut results = Vec::new();
    let mut sizes = sizes.iter();
    for _ in 0..64 {
        while node.has_ready() {
            let mut rd = node.ready().expect("ready");
            let Some(p) = rd.take_persist() else { continue };
            let r = node.storage_mut().persist(&p, None);
            if p.entries()
                .iter()
                .any(|e| matches!(e.data, EntryData::Normal(_)))
            {
                results.push(r);
            }
            if r.is_err() {
                return (disk, results);
            }
            node.on_persisted(p.into_token()).expect("in order");
        }
        let Some(&n) = sizes.next() else { break };
        node.propose(vec![(n % 251) as u8; n]).expect("leader");
    }
    (disk, results)
}

#[test]
fn entries_of_mixed_sizes_read_back_after_recovery() {
    // Large then small: the reused buffer holds stale bytes of the larger
    // record behind the smaller one's payload.
    let sizes = [1_500, 10, 900, 1, 1_800, 300];
    let (disk, results) = write_entries(&sizes);
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    let (log, _, _) = DiskLog::open(disk, &[1]).expect("recovers");
    let last = log.last_index().expect("last");
    let entries = log.entries(1, last + 1, usize::MAX).expect("reads back");
    let payloads: Vec<usize> = entries
        .iter()
        .filter_map(|e| match &e.data {
            EntryData::Normal(d) => {
                assert!(d.iter().all(|&b| b == (d.len() % 251) as u8));
                Some(d.len())
            }
            _ => None,
        })
        .collect();
    assert_eq!(payloads, sizes);
}

#[test]
fn an_entry_too_large_for_a_record_is_refused() {
    let (_, results) = write_entries(&[100, MAX_RECORD_PAYLOAD_BYTES + 1]);
    assert_eq!(results.len(), 2, "{results:?}");
    assert!(results[0].is_ok());
    assert_eq!(results[1], Err(StoreError::EntryTooLarge));
}
