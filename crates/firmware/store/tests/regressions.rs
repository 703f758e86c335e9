//! Regressions found by fuzzing (`fuzz/`, target `fw_disk`), each named
//! after the bug with a `postmortem:` note.

mod common;

use common::MemDisk;
use std::cell::RefCell;
use std::rc::Rc;

use metalraft_core::{ConfChange, ConfChangeOp, Config, EntryData, LogStorage, Node, Role};
use metalraft_fw_proto::disk::{LOG_START_SECTOR, SECTOR_BYTES};
use metalraft_fw_store::{DiskLog, StoreError};

/// postmortem: found by the `fw_disk` fuzz target (a fresh disk with a
/// 17-sector ring, 14 proposals). The ring-full check only looked for a
/// wrapped record that would end past the first live record's sector
/// (`at < start`); when the ring wrapped exactly onto that sector
/// (`at == start`), the new record overwrote entry 1. Recovery then found
/// no chain from the ring's start while the durable commit index covered
/// it: `CorruptBelowCommit`, a node that lost committed entries it had
/// acknowledged. Fix: writing at the first live record's sector is "log
/// full" too.
#[test]
fn fw_store_bug_01_ring_wrapping_onto_the_first_live_record_is_full() {
    let ring_sectors = 17;
    let img = vec![0u8; (LOG_START_SECTOR + ring_sectors) as usize * SECTOR_BYTES];
    let disk = MemDisk(Rc::new(RefCell::new(img)));
    let (log, _, _) = DiskLog::open(disk.clone(), &[1]).expect("fresh disk");
    let mut node = elect(log);
    let mut full = false;
    for round in 0..64u8 {
        if round > 0 && node.role() == Role::Leader {
            node.propose(vec![round; 40]).expect("leader");
        }
        while node.has_ready() {
            let mut rd = node.ready().expect("ready");
            let Some(p) = rd.take_persist() else { continue };
            match node.storage_mut().persist(&p, None) {
                Ok(_) => node.on_persisted(p.into_token()).expect("in order"),
                Err(StoreError::LogFull) => full = true,
                Err(e) => panic!("unexpected {e}"),
            }
        }
        if full {
            break;
        }
    }
    assert!(full, "a 17-sector ring fills up within 64 entries");
    let persisted = node.persisted_index();
    drop(node);
    let (again, _, _) = DiskLog::open(disk, &[1]).expect("what was persisted recovers");
    assert!(again.last_index().expect("last") >= persisted);
}

fn disk_with(writes: &[(u64, [u8; SECTOR_BYTES])]) -> MemDisk {
    let mut img = vec![0u8; (LOG_START_SECTOR + 64) as usize * SECTOR_BYTES];
    for (sector, bytes) in writes {
        let at = *sector as usize * SECTOR_BYTES;
        img[at..at + SECTOR_BYTES].copy_from_slice(bytes);
    }
    MemDisk(Rc::new(RefCell::new(img)))
}

/// postmortem: found by the `fw_disk` fuzz target. Recovery writes the
/// next hard state with sequence number `seq + 1` and `boots + 1`; a
/// checksummed slot holding u64::MAX in either overflowed (a panic with
/// overflow checks; without, seq 0 went to slot A while slot B kept
/// u64::MAX, so every later boot read the stale slot B: term and vote
/// would go back). Fix: an exhausted sequence number stops the node with
/// an error; the boot counter saturates. (Since bug 09 a boot renumbers a
/// sequence number at or above 2^63 instead, so such a disk boots.)
#[test]
fn fw_store_bug_02_hard_state_counters_at_u64_max_do_not_wrap() {
    use metalraft_fw_proto::disk::{HardStateRecord, HARD_STATE_SECTORS};
    let at_max = HardStateRecord {
        seq: u64::MAX,
        term: 1,
        ..HardStateRecord::default()
    };
    let disk = disk_with(&[(HARD_STATE_SECTORS[1], at_max.encode())]);
    // Since bug 09 the boot renumbers such a slot instead of stopping; it
    // boots again and again, in its term.
    for _ in 0..3 {
        let (log, _, _) = DiskLog::open(disk.clone(), &[1]).expect("renumbered, not wrapped");
        assert_eq!(log.initial_state().expect("state").hard_state.term, 1);
    }
    let boots_max = HardStateRecord {
        seq: 1,
        term: 1,
        boots: u64::MAX,
        ..HardStateRecord::default()
    };
    let disk = disk_with(&[(HARD_STATE_SECTORS[1], boots_max.encode())]);
    let (log, _, _) = DiskLog::open(disk, &[1]).expect("opens");
    assert_eq!(log.boots(), u64::MAX);
}

/// postmortem: found while fixing bug 02 (the `fw_disk` target generates
/// such slots). A checksummed snapshot slot whose index was u64::MAX was
/// recovered; the log after it starts at `index + 1`, which overflowed.
/// Fix: such a slot is not valid (as with a bad checksum), so recovery
/// falls back to the other slot or to no snapshot.
#[test]
fn fw_store_bug_03_snapshot_slot_at_index_u64_max_is_invalid() {
    use metalraft_core::{ConfState, SnapshotMeta};
    use metalraft_fw_proto::disk::SNAPSHOT_SLOTS;
    let meta = SnapshotMeta {
        index: u64::MAX,
        term: 1,
        conf_state: ConfState::with_voters(&[1]),
    };
    let disk = disk_with(&[(
        SNAPSHOT_SLOTS[0],
        snapshot_slot(&meta, 1, LOG_START_SECTOR, 0),
    )]);
    let (log, rec, data) = DiskLog::open(disk, &[1]).expect("opens without it");
    assert_eq!(rec.snapshot_index, 0);
    assert!(data.is_none());
    assert_eq!(log.snapshot_index(), 0);
}

/// postmortem: found by the `fw_disk` fuzz target. A checksummed snapshot
/// slot whose `log_start_sector` lay outside the log ring was trusted:
/// u64::MAX overflowed `ring_position`; a sector in the fixed areas (say 1,
/// a hard-state slot) would have been scanned as log records and then
/// overwritten by the node's next entries. Fix: such a slot is not valid.
#[test]
fn fw_store_bug_04_snapshot_log_start_outside_the_ring_is_invalid() {
    use metalraft_core::{ConfState, SnapshotMeta};
    use metalraft_fw_proto::disk::SNAPSHOT_SLOTS;
    for log_start_sector in [u64::MAX, 1, LOG_START_SECTOR - 1, LOG_START_SECTOR + 65] {
        let meta = SnapshotMeta {
            index: 5,
            term: 1,
            conf_state: ConfState::with_voters(&[1]),
        };
        let disk = disk_with(&[(
            SNAPSHOT_SLOTS[0],
            snapshot_slot(&meta, 1, log_start_sector, 0),
        )]);
        let (_, rec, _) = DiskLog::open(disk, &[1]).expect("opens without it");
        assert_eq!(
            rec.snapshot_index, 0,
            "log start {log_start_sector} accepted"
        );
    }
}

/// postmortem: found by reading (session 10), the snapshot-side twin of
/// bug 02. A checksummed snapshot slot holding sequence number u64::MAX was
/// recovered, and the next snapshot's header took `seq + 1`: a panic with
/// overflow checks; without, seq 0 in the other slot, which the next boot
/// would rank below the stale one. Fix: an exhausted sequence number
/// refuses the snapshot with `LogFull`; the recovered one stays current.
#[test]
fn fw_store_bug_07_snapshot_sequence_at_u64_max_does_not_wrap() {
    use metalraft_core::{ConfState, SnapshotMeta};
    use metalraft_fw_proto::disk::SNAPSHOT_SLOTS;
    let meta = SnapshotMeta {
        index: 5,
        term: 1,
        conf_state: ConfState::with_voters(&[1]),
    };
    let disk = disk_with(&[(
        SNAPSHOT_SLOTS[0],
        snapshot_slot(&meta, u64::MAX, LOG_START_SECTOR, 0),
    )]);
    let (mut log, rec, _) = DiskLog::open(disk.clone(), &[1]).expect("opens");
    assert_eq!(rec.snapshot_index, 5);
    let next = SnapshotMeta { index: 6, ..meta };
    assert!(matches!(
        log.create_snapshot(&next, b"state"),
        Err(StoreError::LogFull)
    ));
    drop(log);
    let (again, rec, _) = DiskLog::open(disk, &[1]).expect("opens again");
    assert_eq!(rec.snapshot_index, 5);
    assert_eq!(again.snapshot_index(), 5);
}

/// A one-sector log record at `sector` holding `data`.
fn record(index: u64, term: u64, data: &EntryData<Vec<u8>>) -> [u8; SECTOR_BYTES] {
    use metalraft_fw_proto::disk::RecordHeader;
    let payload = postcard::to_allocvec(data).expect("encodes");
    let mut rec = [0u8; SECTOR_BYTES];
    RecordHeader::encode_record(1, index, term, &payload, &mut rec).expect("fits");
    rec
}

/// postmortem: found by the `fw_disk` fuzz target. Records are written
/// before their batch's hard state and flushed together, so a disk that
/// kept the records but lost the hard-state sector recovers a log whose
/// last term (here 9; the fuzzer used u64::MAX) is above the stored term.
/// The node resumed in the older term, won it alone, and appended its
/// entries of that term after the newer ones: the next recovery's chain
/// (terms never decrease) cut them off below the commit index,
/// `CorruptBelowCommit`. Fix: recovery resumes in the log's last term
/// (without a vote); a record with a term or index the core refuses ends
/// the chain as damage.
#[test]
fn fw_store_bug_05_log_term_above_the_stored_term_is_adopted() {
    let add_1 = add_voter_1();
    for term in [9, u64::MAX] {
        let disk = disk_with(&[(LOG_START_SECTOR, record(1, term, &add_1))]);
        let (log, _, _) = DiskLog::open(disk.clone(), &[1]).expect("opens");
        let mut node = elect(log);
        write_rounds(&mut node, 4);
        assert_eq!(node.role(), Role::Leader);
        let persisted = node.persisted_index();
        drop(node);
        let (again, _, _) = DiskLog::open(disk, &[1]).expect("recovers what it wrote");
        assert_eq!(again.last_index().expect("last"), persisted);
    }
}

/// postmortem: found by the `fw_disk` fuzz target (the first timed run in
/// CI, 2026-12-06). A boot wrote in the epoch after the recovered chain's
/// highest, but an intact record beyond the chain's end can carry a higher
/// epoch (a power cut that kept it and lost the record before it; here:
/// stale records on a fresh disk). The boot's new records then chained
/// into it: a second recovery found an entry this node never wrote, with
/// a term it never had. Fix: a boot writes in an epoch above every intact
/// record on the disk (`highest_epoch`, a full scan of the ring).
#[test]
fn fw_store_bug_06_a_stale_record_with_a_higher_epoch_never_joins_the_chain() {
    use metalraft_fw_proto::disk::{record_sectors, RecordHeader};
    let ring_sectors = 64;
    let mut img = vec![0u8; (LOG_START_SECTOR + ring_sectors) as usize * SECTOR_BYTES];
    // Stale records (epoch 9, index 3, term 5) in the ring's first sectors,
    // so one lies right after wherever entries 1 and 2 end.
    let payload = [7u8; 8];
    let mut rec = vec![0u8; record_sectors(payload.len()) as usize * SECTOR_BYTES];
    RecordHeader::encode_record(9, 3, 5, &payload, &mut rec).expect("encodes");
    for s in 0..8 {
        let at = (LOG_START_SECTOR + s) as usize * SECTOR_BYTES;
        img[at..at + rec.len()].copy_from_slice(&rec);
    }
    let disk = MemDisk(Rc::new(RefCell::new(img)));
    let (log, recovered, _) = DiskLog::open(disk.clone(), &[1]).expect("opens");
    assert!(recovered.bootstrapped, "no chain from the ring's start");
    let mut node = elect(log);
    persist_all(&mut node);
    assert_eq!(node.role(), Role::Leader);
    let (last, term) = (node.persisted_index(), node.hard_state().term);
    assert_eq!(
        (last, term),
        (2, 2),
        "the bootstrap entry and the no-op of term 2"
    );
    drop(node);
    let (again, _, _) = DiskLog::open(disk, &[1]).expect("recovers");
    assert_eq!(
        again.last_index().expect("last"),
        last,
        "no stale entry joined"
    );
    let hs = again.initial_state().expect("initial state").hard_state;
    assert_eq!(hs.term, term, "no stale term adopted");
}

/// postmortem: found by the `fw_disk` fuzz target (CI's fixed-seed run,
/// 2026-12-07). A checksummed hard-state slot holding a term above
/// `MAX_TERM_OR_INDEX` (2^63) was recovered and the core started in that
/// term; its election went one past the limit and its records carried
/// that term, which the next recovery (rightly) treats as damage: the
/// chain ended below the commit index, `CorruptBelowCommit`. Fix: such a
/// slot is not valid (as with a bad checksum; the same for its commit
/// index), so recovery falls back to the other slot or to none.
#[test]
fn fw_store_bug_08_hard_state_term_above_the_core_limit_is_invalid() {
    use metalraft_core::MAX_TERM_OR_INDEX;
    use metalraft_fw_proto::disk::{HardStateRecord, HARD_STATE_SECTORS};
    let add_1 = add_voter_1();
    let above = HardStateRecord {
        seq: 7,
        term: MAX_TERM_OR_INDEX + 1,
        ..HardStateRecord::default()
    };
    let disk = disk_with(&[
        (LOG_START_SECTOR, record(1, 0, &add_1)),
        (HARD_STATE_SECTORS[1], above.encode()),
    ]);
    let (log, _, _) = DiskLog::open(disk.clone(), &[1]).expect("opens");
    assert!(log.initial_state().expect("initial state").hard_state.term <= MAX_TERM_OR_INDEX);
    let mut node = elect(log);
    write_rounds(&mut node, 3);
    assert_eq!(node.role(), Role::Leader);
    let (persisted, term) = (node.persisted_index(), node.hard_state().term);
    assert!(persisted > 1);
    drop(node);
    let (again, _, _) = DiskLog::open(disk, &[1]).expect("recovers what it wrote");
    assert_eq!(again.last_index().expect("last"), persisted);
    let hs = again.initial_state().expect("initial state").hard_state;
    assert_eq!(hs.term, term);
}

/// postmortem: found by the `fw_disk` fuzz target (a fixed-seed run after
/// the core's coverage changed, 2026-12-07). Every boot writes the hard
/// state once more (its boot counter), under the next sequence number. A
/// checksummed slot at `u64::MAX - 1` booted once, writing `u64::MAX`, and
/// the next boot had no number left: `LogFull`, so a disk the node had
/// written did not boot. Fix: a boot that recovers a number at or above
/// `RENUMBER_HARD_STATE_SEQ_AT` (only a damaged or crafted slot) writes the
/// state again under small numbers, the other slot first, so a crash in
/// between recovers the state from before the boot.
#[test]
fn fw_store_bug_09_a_boot_renumbers_an_exhausted_hard_state_sequence() {
    use metalraft_fw_proto::disk::{HardStateRecord, HARD_STATE_SECTORS};
    let add_1 = add_voter_1();
    for seq in [u64::MAX - 2, u64::MAX - 1, u64::MAX] {
        let near_max = HardStateRecord {
            seq,
            term: 1,
            ..HardStateRecord::default()
        };
        let disk = disk_with(&[
            (LOG_START_SECTOR, record(1, 0, &add_1)),
            (HARD_STATE_SECTORS[(seq % 2) as usize], near_max.encode()),
        ]);
        let mut term = 1;
        for boot in 0..3 {
            let (log, _, _) = DiskLog::open(disk.clone(), &[1]).unwrap_or_else(|e| {
                panic!("seq {seq}, boot {boot}: a disk the node wrote boots: {e:?}")
            });
            assert_eq!(log.initial_state().expect("state").hard_state.term, term);
            let mut node = elect(log);
            persist_all(&mut node);
            assert_eq!(node.role(), Role::Leader);
            term = node.hard_state().term;
        }
    }
    // A crash between the two writes of the renumbering: only the first
    // (into the other slot, under a small number) landed. The slot with the
    // highest number still wins: the state from before that boot.
    let old = HardStateRecord {
        seq: u64::MAX,
        term: 5,
        ..HardStateRecord::default()
    };
    let first = HardStateRecord {
        seq: 2,
        term: 6,
        ..HardStateRecord::default()
    };
    let disk = disk_with(&[
        (LOG_START_SECTOR, record(1, 0, &add_1)),
        (HARD_STATE_SECTORS[1], old.encode()),
        (HARD_STATE_SECTORS[0], first.encode()),
    ]);
    let (log, _, _) = DiskLog::open(disk, &[1]).expect("boots");
    assert_eq!(log.initial_state().expect("state").hard_state.term, 5);
}

/// postmortem: found by the `fw_disk` fuzz target (CI's fixed-seed run,
/// 2026-12-07, session 15). A checksummed snapshot slot at index 0 with
/// term 2 was recovered on an otherwise fresh disk: no hard state and an
/// empty chain, so the disk was bootstrapped — the bootstrap entry (index
/// 1, term 1) written after a "snapshot" of term 2. The node ran and
/// committed; the next recovery's chain (after index 0, term 2) refused
/// the term-1 record, and the disk the node wrote did not boot
/// (`CorruptBelowCommit`). Fix: a snapshot slot at index 0 is not valid (no
/// snapshot covers nothing), so recovery ignores it.
#[test]
fn fw_store_bug_10_snapshot_slot_at_index_0_is_invalid() {
    use metalraft_core::{ConfState, SnapshotMeta};
    use metalraft_fw_proto::disk::SNAPSHOT_SLOTS;
    let meta = SnapshotMeta {
        index: 0,
        term: 2,
        conf_state: ConfState::default(),
    };
    let disk = disk_with(&[(
        SNAPSHOT_SLOTS[0],
        snapshot_slot(&meta, u64::MAX, LOG_START_SECTOR, 7),
    )]);
    let (log, rec, data) = DiskLog::open(disk.clone(), &[1]).expect("opens without it");
    assert_eq!(rec.snapshot_index, 0);
    assert!(data.is_none());
    assert!(rec.bootstrapped);
    let mut node = elect(log);
    write_rounds(&mut node, 3);
    let persisted = node.persisted_index();
    drop(node);
    let (again, _, _) = DiskLog::open(disk, &[1]).expect("a disk the node wrote boots");
    assert!(again.last_index().expect("last") >= persisted);
}

/// A checksummed snapshot slot for `meta` with no data.
fn snapshot_slot(
    meta: &metalraft_core::SnapshotMeta,
    seq: u64,
    log_start_sector: u64,
    first_epoch: u32,
) -> [u8; SECTOR_BYTES] {
    metalraft_fw_proto::disk::SnapshotHeader {
        seq,
        index: meta.index,
        term: meta.term,
        log_start_sector,
        data_len: 0,
        data_crc: metalraft_fw_proto::CRC32C.checksum(&[]),
        first_epoch,
        meta: postcard::to_allocvec(meta).expect("encodes"),
    }
    .encode()
    .expect("fits")
}

/// The configuration entry that makes node 1 the single voter.
fn add_voter_1() -> EntryData<Vec<u8>> {
    EntryData::ConfChange(Box::new(ConfChange::new(&[ConfChangeOp::AddVoter(1)])))
}

/// A single-voter node on `log`, campaigning.
fn elect(log: DiskLog<MemDisk>) -> Node<Vec<u8>, DiskLog<MemDisk>> {
    let mut node = Node::new(Config::new(1), log, 0).expect("valid");
    node.campaign().expect("single voter");
    node
}

/// `rounds` rounds of: propose a one-byte entry if leading, then persist
/// every ready batch.
fn write_rounds(node: &mut Node<Vec<u8>, DiskLog<MemDisk>>, rounds: u8) {
    for round in 0..rounds {
        if node.role() == Role::Leader {
            node.propose(vec![round]).expect("leader");
        }
        persist_all(node);
    }
}

/// Persists every ready batch of `node` on its disk (each must succeed).
fn persist_all(node: &mut Node<Vec<u8>, DiskLog<MemDisk>>) {
    while node.has_ready() {
        let mut rd = node.ready().expect("ready");
        let Some(p) = rd.take_persist() else { continue };
        node.storage_mut().persist(&p, None).expect("persists");
        node.on_persisted(p.into_token()).expect("in order");
    }
}
