//! Power loss at sector granularity (issue 20, part 3): the block log's
//! record chain and torn-tail logic against every subset of the sectors
//! written since the last flush. A drive cache writes back unsynced
//! sectors in any order, so a power cut keeps any subset of them; what is
//! not kept reads as it was before (zeros on a fresh disk, or the record an
//! overwrite replaced).
//!
//! After every cut, recovery must succeed by itself and the recovered log
//! must be one the node really had: a prefix of the log after the last
//! batch, no shorter than the log at the last flush (everything flushed
//! survives), and never a mix (an entry followed by one that a leader
//! appended after a different entry at that index: that would break Log
//! Matching, Raft §5.3).

use std::cell::RefCell;
use std::rc::Rc;

use metalraft_core::{Config, Entry, EntryData, LogStorage, Message, MessageBody, Node, Term};
use metalraft_fw_proto::disk::{LOG_START_SECTOR, SECTOR_BYTES};
use metalraft_fw_store::{BlockDevice, DiskError, DiskLog};

/// Sectors of the test disks' log ring.
const RING_SECTORS: u64 = 64;

#[derive(Clone)]
enum Op {
    /// One sector written.
    Write(u64, Vec<u8>),
    /// A flush the disk was asked for.
    Flush,
}

#[derive(Default)]
struct Image {
    /// What survives a power cut.
    durable: Vec<u8>,
    /// With `hold`: writes and flushes since holding began, in order.
    ops: Vec<Op>,
    /// The power is about to fail: flushes are recorded, not carried out
    /// yet (see [`PowerDisk::cut`]).
    hold: bool,
}

/// A disk whose flushes can be held back, then a power cut that keeps
/// what the completed flushes made durable plus a chosen subset of the
/// sectors written after them.
#[derive(Clone, Default)]
struct PowerDisk(Rc<RefCell<Image>>);

impl PowerDisk {
    fn fresh() -> Self {
        let d = PowerDisk::default();
        d.0.borrow_mut().durable =
            vec![0u8; ((LOG_START_SECTOR + RING_SECTORS) as usize) * SECTOR_BYTES];
        d
    }

    /// From now on the power may fail: writes and flushes are recorded.
    fn hold(&self) {
        self.0.borrow_mut().hold = true;
    }

    /// Where the sectors in flight start: every flush but the last one
    /// completed (the power fails during the last one), so the writes
    /// before the last completed flush are durable.
    fn in_flight_from(ops: &[Op]) -> usize {
        let flushes: Vec<usize> = ops
            .iter()
            .enumerate()
            .filter(|(_, o)| matches!(o, Op::Flush))
            .map(|(i, _)| i)
            .collect();
        match flushes.len() {
            0 | 1 => 0,
            n => flushes[n - 2] + 1,
        }
    }

    /// Sector writes in flight at the cut.
    fn pending(&self) -> usize {
        let img = self.0.borrow();
        let from = Self::in_flight_from(&img.ops);
        img.ops[from..]
            .iter()
            .filter(|o| matches!(o, Op::Write(..)))
            .count()
    }

    /// A copy of this disk after a power cut that kept the sector writes
    /// in flight that `keep` selects (by position among them).
    fn cut(&self, keep: impl Fn(usize) -> bool) -> PowerDisk {
        let img = self.0.borrow();
        let mut durable = img.durable.clone();
        let from = Self::in_flight_from(&img.ops);
        let mut n = 0;
        for (i, op) in img.ops.iter().enumerate() {
            let Op::Write(sector, data) = op else {
                continue;
            };
            let kept = if i < from {
                true
            } else {
                n += 1;
                keep(n - 1)
            };
            if kept {
                let s = *sector as usize * SECTOR_BYTES;
                durable[s..s + SECTOR_BYTES].copy_from_slice(data);
            }
        }
        PowerDisk(Rc::new(RefCell::new(Image {
            durable,
            ops: Vec::new(),
            hold: false,
        })))
    }
}

impl BlockDevice for PowerDisk {
    fn sectors(&self) -> u64 {
        (self.0.borrow().durable.len() / SECTOR_BYTES) as u64
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let img = self.0.borrow();
        let start = sector as usize * SECTOR_BYTES;
        let src = img
            .durable
            .get(start..start + buf.len())
            .ok_or(DiskError::OutOfRange)?;
        buf.copy_from_slice(src);
        // The cache answers reads with what was written last.
        for op in &img.ops {
            if let Op::Write(s, data) = op {
                let s = *s as usize * SECTOR_BYTES;
                if s >= start && s < start + buf.len() {
                    buf[s - start..s - start + SECTOR_BYTES].copy_from_slice(data);
                }
            }
        }
        Ok(())
    }
    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), DiskError> {
        let mut img = self.0.borrow_mut();
        let start = sector as usize * SECTOR_BYTES;
        if start + buf.len() > img.durable.len() {
            return Err(DiskError::OutOfRange);
        }
        if img.hold {
            for (i, chunk) in buf.chunks(SECTOR_BYTES).enumerate() {
                img.ops.push(Op::Write(sector + i as u64, chunk.to_vec()));
            }
        } else {
            img.durable[start..start + buf.len()].copy_from_slice(buf);
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        let mut img = self.0.borrow_mut();
        if img.hold {
            img.ops.push(Op::Flush);
        }
        Ok(())
    }
}

type N = Node<Vec<u8>, DiskLog<PowerDisk>>;

/// Node 1 of a 3-voter cluster, as a follower, on `disk`.
fn follower(disk: PowerDisk) -> N {
    let (log, _, _) = DiskLog::open(disk, &[1, 2, 3]).expect("fresh disk");
    Node::new(Config::new(1), log, 0).expect("valid")
}

fn entry(index: u64, term: Term, bytes: usize) -> Entry<Vec<u8>> {
    Entry {
        index,
        term,
        data: EntryData::Normal(vec![index as u8; bytes]),
    }
}

/// Steps an append from `leader` in `term` and carries out the batch on
/// the disk.
fn append(node: &mut N, leader: u64, term: Term, prev: (u64, Term), entries: Vec<Entry<Vec<u8>>>) {
    let m = Message {
        from: leader,
        to: 1,
        term,
        body: MessageBody::AppendEntries {
            prev_log_index: prev.0,
            prev_log_term: prev.1,
            entries,
            leader_commit: 1,
        },
    };
    node.step(m).expect("accepted");
    while node.has_ready() {
        let mut rd = node.ready().expect("ready");
        if let Some(p) = rd.take_persist() {
            node.storage_mut().persist(&p, None).expect("written");
            node.on_persisted(p.into_token()).expect("in order");
        }
    }
}

/// (index, term) of every entry of a recovered log.
fn log_of(disk: PowerDisk) -> Vec<(u64, Term)> {
    let (log, _, _) =
        DiskLog::open(disk, &[1, 2, 3]).expect("recovery must not refuse a torn tail");
    let last = log.last_index().unwrap();
    (log.first_index().unwrap()..=last)
        .map(|i| (i, log.term(i).unwrap()))
        .collect()
}

/// Every subset of the `pending` cached sectors (all of them, up to 2^12)
/// recovers to a prefix of `after` at least as long as `flushed`.
fn every_cut_recovers(disk: &PowerDisk, flushed: &[(u64, Term)], after: &[(u64, Term)]) -> usize {
    let n = disk.pending();
    assert!((1..=12).contains(&n), "{n} sectors in flight");
    let mut shorter = 0;
    for mask in 0u32..(1 << n) {
        let got = log_of(disk.cut(|i| mask & (1 << i) != 0));
        assert!(
            got.len() >= flushed.len() && after.starts_with(&got),
            "cut keeping sectors {mask:#b} of {n}: recovered {got:?}; flushed {flushed:?}, written {after:?}"
        );
        shorter += usize::from(got.len() < after.len());
    }
    shorter
}

/// Zeroed sectors anywhere in the unsynced region, a later record kept
/// while an earlier one is lost, and the preallocated zeros after the log
/// (a fresh disk): recovery truncates at the first gap.
#[test]
fn torn_appends_of_one_sector_records_recover_to_a_prefix() {
    let disk = PowerDisk::fresh();
    let mut node = follower(disk.clone());
    append(
        &mut node,
        2,
        2,
        (1, 1),
        vec![entry(2, 2, 8), entry(3, 2, 8)],
    );
    let flushed = log_of(disk.cut(|_| false));
    assert_eq!(flushed, [(1, 1), (2, 2), (3, 2)]);
    // The power fails during the next batch's flush.
    disk.hold();
    append(
        &mut node,
        2,
        2,
        (3, 2),
        (4..=7).map(|i| entry(i, 2, 8)).collect(),
    );
    let after: Vec<(u64, Term)> = (1..=7).map(|i| (i, if i == 1 { 1 } else { 2 })).collect();
    let shorter = every_cut_recovers(&disk, &flushed, &after);
    assert!(shorter > 0);
}

/// Records of two sectors each: a torn header (the first sector lost, the
/// second kept) and a torn body (the reverse) end the log there.
#[test]
fn torn_headers_and_bodies_of_multi_sector_records_end_the_log() {
    let disk = PowerDisk::fresh();
    let mut node = follower(disk.clone());
    append(&mut node, 2, 2, (1, 1), vec![entry(2, 2, 700)]);
    let flushed = log_of(disk.cut(|_| false));
    disk.hold();
    append(
        &mut node,
        2,
        2,
        (2, 2),
        (3..=5).map(|i| entry(i, 2, 700)).collect(),
    );
    let after: Vec<(u64, Term)> = (1..=5).map(|i| (i, if i == 1 { 1 } else { 2 })).collect();
    every_cut_recovers(&disk, &flushed, &after);
}

/// An overwrite (a new leader's entries replace uncommitted ones) writes
/// its records where the replaced ones were. If the first new record is
/// lost (the sector keeps the replaced record) while a later new record
/// survives, the chain must not accept the later one after the replaced
/// one: that log never existed.
#[test]
fn a_torn_overwrite_never_recovers_a_mixed_log() {
    let disk = PowerDisk::fresh();
    let mut node = follower(disk.clone());
    append(
        &mut node,
        2,
        2,
        (1, 1),
        (2..=4).map(|i| entry(i, 2, 8)).collect(),
    );
    let before = log_of(disk.cut(|_| false));
    assert_eq!(before, [(1, 1), (2, 2), (3, 2), (4, 2)]);
    disk.hold();
    append(
        &mut node,
        3,
        3,
        (1, 1),
        (2..=4).map(|i| entry(i, 3, 8)).collect(),
    );
    let n = disk.pending();
    let new: Vec<(u64, Term)> = (1..=4).map(|i| (i, if i == 1 { 1 } else { 3 })).collect();
    for mask in 0u32..(1 << n) {
        let got = log_of(disk.cut(|i| mask & (1 << i) != 0));
        let ok = before.starts_with(&got) || new.starts_with(&got);
        assert!(
            ok && !got.is_empty(),
            "cut keeping sectors {mask:#b} of {n}: recovered {got:?}, a log the node never had \
             (before the overwrite {before:?}, after it {new:?})"
        );
    }
}
