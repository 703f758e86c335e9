//! The firmware's on-disk recovery on arbitrary disk images: hard-state
//! slots, snapshot slots and the log's record chain
//! (`metalraft_fw_proto::disk`, `metalraft_fw_store::DiskLog::open`).
//!
//! The image is built from a list of writes: raw bytes at a sector, or
//! records, hard states and snapshot headers made by the real encoders
//! (with correct checksums, so the fuzzer gets past them) from arbitrary
//! and extreme field values. Then:
//! - the sector decoders must refuse bad sectors with an error;
//! - recovery must give a `DiskLog` or a `StoreError`, never panic;
//! - a recovered log must be readable through `LogStorage`, and the core
//!   must start on it or refuse it with an error;
//! - a node started on it must be able to persist new entries, and a
//!   second recovery from the result must find them.

use std::cell::RefCell;
use std::rc::Rc;

use arbitrary::Arbitrary;
use metalraft_core::{
    ConfState, Config, EntryData, LogStorage, Node, SnapshotMeta, MAX_TERM_OR_INDEX,
};
use metalraft_fw_proto::disk::{
    HardStateRecord, RecordHeader, SnapshotHeader, HARD_STATE_SECTORS, LOG_START_SECTOR,
    MAX_RECORD_PAYLOAD_BYTES, SECTOR_BYTES, SNAPSHOT_SLOTS,
};
use metalraft_fw_proto::CRC32C;
use metalraft_fw_store::{BlockDevice, DiskError, DiskLog};

/// A disk whose writes are durable at once, shared so that it can be
/// recovered a second time after a node used it.
#[derive(Clone)]
struct MemDisk(Rc<RefCell<Vec<u8>>>);

impl BlockDevice for MemDisk {
    fn sectors(&self) -> u64 {
        (self.0.borrow().len() / SECTOR_BYTES) as u64
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let range = self.range(sector, buf.len())?;
        buf.copy_from_slice(&self.0.borrow()[range]);
        Ok(())
    }
    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), DiskError> {
        let range = self.range(sector, buf.len())?;
        self.0.borrow_mut()[range].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        Ok(())
    }
}

impl MemDisk {
    fn range(&self, sector: u64, len: usize) -> Result<std::ops::Range<usize>, DiskError> {
        if len % SECTOR_BYTES != 0 {
            return Err(DiskError::Misaligned);
        }
        let start = usize::try_from(sector)
            .ok()
            .and_then(|s| s.checked_mul(SECTOR_BYTES))
            .ok_or(DiskError::OutOfRange)?;
        let end = start.checked_add(len).ok_or(DiskError::OutOfRange)?;
        if end > self.0.borrow().len() {
            return Err(DiskError::OutOfRange);
        }
        Ok(start..end)
    }
}

/// One run: the writes that build the disk image, then how much the node
/// recovered from it proposes.
#[derive(Arbitrary, Debug)]
pub struct Input {
    /// Sectors of the log ring beyond the minimum (small rings wrap often).
    ring_sectors: u8,
    writes: Vec<Write>,
    /// Proposals a node makes on the recovered log before it is recovered
    /// a second time.
    proposals: u8,
}

/// A number from a small range, or an extreme one (to find overflows).
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Num {
    Small(u8),
    Max,
    AboveLimit,
    Huge(u64),
}

impl Num {
    fn get(self) -> u64 {
        match self {
            Num::Small(n) => u64::from(n % 16),
            Num::Max => u64::MAX,
            Num::AboveLimit => MAX_TERM_OR_INDEX + 1,
            Num::Huge(n) => n,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Write {
    /// Raw bytes at a sector anywhere on the disk.
    Raw { sector: u16, bytes: Vec<u8> },
    /// A log record at the write cursor (which then moves past it), or at
    /// `jump` sectors into the ring.
    Record {
        jump: Option<u8>,
        epoch: Num,
        index: Num,
        term: Num,
        payload: Payload,
    },
    HardState {
        slot: bool,
        seq: Num,
        term: Num,
        vote: Num,
        commit: Num,
        boots: Num,
    },
    Snapshot {
        slot: bool,
        seq: Num,
        index: Num,
        term: Num,
        /// The meta's index and term, if they should differ from the header's.
        meta_override: Option<(Num, Num)>,
        voters: Vec<u8>,
        log_start_sector: Num,
        first_epoch: Num,
        data: Vec<u8>,
        data_crc_ok: bool,
    },
}

#[derive(Arbitrary, Debug)]
enum Payload {
    Entry(u8),
    Raw(Vec<u8>),
}

const BASE_RING_SECTORS: u64 = 16;

fn build(input: &Input) -> Vec<u8> {
    let sectors = LOG_START_SECTOR + BASE_RING_SECTORS + u64::from(input.ring_sectors % 64);
    let mut img = vec![0u8; sectors as usize * SECTOR_BYTES];
    let mut cursor = LOG_START_SECTOR;
    let put = |img: &mut Vec<u8>, sector: u64, bytes: &[u8]| {
        let start = (sector % sectors) as usize * SECTOR_BYTES;
        let n = bytes.len().min(img.len() - start);
        img[start..start + n].copy_from_slice(&bytes[..n]);
    };
    for w in input.writes.iter().take(64) {
        match w {
            Write::Raw { sector, bytes } => put(
                &mut img,
                u64::from(*sector),
                &bytes[..bytes.len().min(4 * SECTOR_BYTES)],
            ),
            Write::Record {
                jump,
                epoch,
                index,
                term,
                payload,
            } => {
                let payload = match payload {
                    Payload::Entry(d) => postcard::to_allocvec(&entry_data(*d)).expect("encodes"),
                    Payload::Raw(b) => b[..b.len().min(MAX_RECORD_PAYLOAD_BYTES)].to_vec(),
                };
                let len = metalraft_fw_proto::disk::record_sectors(payload.len()) as usize;
                let mut rec = vec![0u8; len * SECTOR_BYTES];
                let epoch = u32::try_from(epoch.get() & 0xFFFF_FFFF).expect("masked");
                RecordHeader::encode_record(epoch, index.get(), term.get(), &payload, &mut rec)
                    .expect("payload within bounds");
                if let Some(j) = jump {
                    cursor = LOG_START_SECTOR + u64::from(*j) % (sectors - LOG_START_SECTOR);
                }
                cursor = metalraft_fw_proto::disk::ring_position(cursor, sectors);
                put(&mut img, cursor, &rec);
                cursor += len as u64;
            }
            Write::HardState {
                slot,
                seq,
                term,
                vote,
                commit,
                boots,
            } => {
                let r = HardStateRecord {
                    seq: seq.get(),
                    term: term.get(),
                    vote: vote.get(),
                    commit: commit.get(),
                    boots: boots.get(),
                };
                put(
                    &mut img,
                    HARD_STATE_SECTORS[usize::from(*slot)],
                    &r.encode(),
                );
            }
            Write::Snapshot {
                slot,
                seq,
                index,
                term,
                meta_override,
                voters,
                log_start_sector,
                first_epoch,
                data,
                data_crc_ok,
            } => {
                let (mi, mt) = meta_override.map_or((*index, *term), |o| o);
                let meta = SnapshotMeta {
                    index: mi.get(),
                    term: mt.get(),
                    conf_state: ConfState::with_voters(
                        &voters
                            .iter()
                            .take(5)
                            .map(|&v| u64::from(v))
                            .collect::<Vec<_>>(),
                    ),
                };
                let data = &data[..data.len().min(4 * SECTOR_BYTES)];
                let crc = CRC32C.checksum(data);
                let h = SnapshotHeader {
                    seq: seq.get(),
                    index: index.get(),
                    term: term.get(),
                    log_start_sector: log_start_sector.get(),
                    data_len: data.len() as u32,
                    data_crc: if *data_crc_ok { crc } else { !crc },
                    first_epoch: u32::try_from(first_epoch.get() & 0xFFFF_FFFF).expect("masked"),
                    meta: postcard::to_allocvec(&meta).expect("encodes"),
                };
                let Ok(sector) = h.encode() else { continue };
                let at = SNAPSHOT_SLOTS[usize::from(*slot)];
                put(&mut img, at, &sector);
                put(&mut img, at + 1, data);
            }
        }
    }
    img
}

fn entry_data(d: u8) -> EntryData<Vec<u8>> {
    match d % 3 {
        0 => EntryData::Noop,
        1 => EntryData::Normal(vec![d; usize::from(d)]),
        _ => EntryData::ConfChange(Box::new(metalraft_core::ConfChange::new(&[
            metalraft_core::ConfChangeOp::AddVoter(u64::from(d % 5)),
        ]))),
    }
}

/// The sector decoders on every sector of the image.
fn decode_sectors(img: &[u8]) {
    for s in img.chunks(SECTOR_BYTES) {
        if let Ok(h) = RecordHeader::decode(s) {
            let _ = h.verify(s);
        }
        if let Ok(h) = SnapshotHeader::decode(s) {
            assert_eq!(h.encode().as_ref().map(|b| &b[..]), Ok(s));
        }
        if let Ok(h) = HardStateRecord::decode(s) {
            assert_eq!(HardStateRecord::decode(&h.encode()), Ok(h));
        }
    }
}

type N = Node<Vec<u8>, DiskLog<MemDisk>>;

/// The target: one structured input, checked.
pub fn check(input: Input) {
    let img = build(&input);
    decode_sectors(&img);
    let disk = MemDisk(Rc::new(RefCell::new(img)));
    let Ok((log, _rec, _snap)) = DiskLog::open(disk.clone(), &[1]) else {
        return;
    };
    // Everything recovered is readable (or refused) through LogStorage.
    let first = log.first_index().expect("first");
    let last = log.last_index().expect("last");
    for i in [first.saturating_sub(1), first, last, last.saturating_add(1)] {
        let _ = log.term(i);
    }
    let _ = log.entries(first, last.saturating_add(1).min(first + 64), usize::MAX);
    let _ = log.initial_state().expect("initial state");
    let Ok(mut node): Result<N, _> = Node::new(Config::new(1), log, 0) else {
        return;
    };
    // A single-voter cluster (fresh disks bootstrap with `[1]`) elects
    // itself; then it writes new records on the recovered ring.
    let _ = node.campaign();
    let mut proposed = 0;
    for round in 0..u32::from(input.proposals % 16) + 2 {
        if round > 0
            && node.role() == metalraft_core::Role::Leader
            && node.propose(vec![round as u8; 40]).is_ok()
        {
            proposed += 1;
        }
        while node.has_ready() {
            let mut rd = node.ready().expect("ready");
            let Some(p) = rd.take_persist() else { continue };
            if node.storage_mut().persist(&p, None).is_err() {
                // Log full, or the disk refused: the node must stop.
                return;
            }
            node.on_persisted(p.into_token()).expect("in order");
        }
    }
    let persisted = node.persisted_index();
    let hs = node.hard_state();
    drop(node);
    // What was persisted survives a second recovery.
    let (again, _, _) = DiskLog::open(disk, &[1]).expect("a disk this node wrote recovers");
    assert!(
        again.last_index().expect("last") >= persisted,
        "persisted {persisted}, recovered {} ({proposed} proposed)",
        again.last_index().expect("last")
    );
    let recovered = again.initial_state().expect("initial state").hard_state;
    assert_eq!(recovered.term, hs.term);
}

/// [`check`] on the input `bytes` decode to, as `cargo fuzz` runs it.
pub fn run(bytes: &[u8]) {
    if let Some(input) = crate::structured::<Input>(bytes) {
        check(input);
    }
}
