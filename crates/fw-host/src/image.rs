//! Disk images: one sparse raw file per node, the config block in sector 0,
//! the rest zero (an empty Raft log). Also the inspection and damage
//! helpers the tests use to prove torn-tail recovery.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use metalraft_fw_proto::config::NodeConfig;
use metalraft_fw_proto::disk::{
    self, HardStateRecord, RecordHeader, SnapshotHeader, LOG_START_SECTOR, SECTOR_BYTES,
};
use metalraft_fw_proto::CRC32C;

/// Creates (or replaces) a node's disk image of `bytes` bytes.
pub fn create(path: &Path, cfg: &NodeConfig, bytes: u64) -> io::Result<()> {
    let block = cfg.encode().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("config for node {}: {e}", cfg.node_id),
        )
    })?;
    let mut f = File::create(path)?;
    f.set_len(bytes)?;
    f.write_all(&block)?;
    f.sync_all()
}

/// Reads a node's config block back from its image.
pub fn read_config(path: &Path) -> io::Result<NodeConfig> {
    let mut block = vec![0u8; SECTOR_BYTES];
    File::open(path)?.read_exact(&mut block)?;
    NodeConfig::decode(&block)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

/// One valid log record found on an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordInfo {
    /// First sector.
    pub sector: u64,
    /// Its header.
    pub header: RecordHeader,
}

/// The log as recovery would see it: the valid chain of records, and the
/// newest hard state.
#[derive(Clone, Debug, Default)]
pub struct LogScan {
    /// Records of the valid chain, in order.
    pub records: Vec<RecordInfo>,
    /// The newest valid hard-state slot.
    pub hard_state: Option<HardStateRecord>,
    /// The current snapshot's header.
    pub snapshot: Option<SnapshotHeader>,
    /// Where the next record would be written.
    pub next_sector: u64,
}

fn read_sectors(f: &mut File, sector: u64, count: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; (count as usize) * SECTOR_BYTES];
    f.seek(SeekFrom::Start(sector * SECTOR_BYTES as u64))?;
    f.read_exact(&mut buf)?;
    Ok(buf)
}

/// The newest valid snapshot slot (header and data checksums verified).
fn current_snapshot(f: &mut File) -> io::Result<Option<SnapshotHeader>> {
    let mut best: Option<SnapshotHeader> = None;
    for slot in disk::SNAPSHOT_SLOTS {
        let Ok(h) = SnapshotHeader::decode(&read_sectors(f, slot, 1)?) else {
            continue;
        };
        let data = read_sectors(
            f,
            slot + 1,
            (h.data_len as u64).div_ceil(SECTOR_BYTES as u64),
        )?;
        if CRC32C.checksum(&data[..h.data_len as usize]) != h.data_crc {
            continue;
        }
        if best.as_ref().is_none_or(|b| h.seq > b.seq) {
            best = Some(h);
        }
    }
    Ok(best)
}

/// Scans an image the way the firmware recovers it (same rules, same
/// shared decoders and chain rule).
pub fn scan(path: &Path) -> io::Result<LogScan> {
    let mut f = File::open(path)?;
    let total = f.metadata()?.len() / SECTOR_BYTES as u64;
    let slots = disk::HARD_STATE_SECTORS.map(|s| read_sectors(&mut f, s, 1));
    let [a, b] = slots;
    let hard_state = HardStateRecord::newest(
        HardStateRecord::decode(&a?).ok(),
        HardStateRecord::decode(&b?).ok(),
    );
    let snapshot = current_snapshot(&mut f)?;
    let (mut sector, mut chain) = match &snapshot {
        Some(h) => (
            h.log_start_sector,
            disk::Chain {
                epoch: h.first_epoch,
                ..disk::Chain::after(h.index, h.term)
            },
        ),
        None => (LOG_START_SECTOR, disk::Chain::default()),
    };
    let mut records = Vec::new();
    let max_records = total.saturating_sub(LOG_START_SECTOR) as usize;
    while records.len() < max_records {
        let at = disk::ring_position(sector, total);
        let Ok(h) = RecordHeader::decode(&read_sectors(&mut f, at, 1)?) else {
            break;
        };
        let rec = read_sectors(&mut f, at, h.sectors())?;
        if h.verify(&rec).is_err() || !chain.accepts(&h) {
            break;
        }
        records.push(RecordInfo {
            sector: at,
            header: h,
        });
        chain.push(&h);
        sector = at + h.sectors();
    }
    Ok(LogScan {
        records,
        hard_state,
        snapshot,
        next_sector: disk::ring_position(sector, total),
    })
}

/// Payload size of the simulated torn record (spans two sectors).
const TORN_PAYLOAD_BYTES: usize = 600;

/// How [`tear`] damages the space after a node's log: each a way a power
/// cut leaves records that were written but never flushed (so never
/// acknowledged), which recovery must discard as a torn tail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TearCase {
    /// The next record's first sector (header and the start of the
    /// payload) reached the disk, its second did not.
    Body,
    /// The reverse: the second sector reached the disk, the first (with
    /// the header) did not: a later sector kept while an earlier is lost.
    Header,
    /// The next record's sectors are zero (never written, as in
    /// preallocated space) and a complete, valid record with the index
    /// after it follows: a zeroed frame followed by data (issue 20).
    Gap,
}

impl TearCase {
    /// Every case, in the order the tool lists them.
    pub const ALL: [TearCase; 3] = [TearCase::Body, TearCase::Header, TearCase::Gap];

    /// The case named `name` (`body`, `header`, `gap`).
    pub fn from_name(name: &str) -> Option<TearCase> {
        TearCase::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            TearCase::Body => "body",
            TearCase::Header => "header",
            TearCase::Gap => "gap",
        }
    }
}

/// Simulates a crash in the middle of writing the next log record: its
/// first sector (header and the start of the payload) reached the disk, its
/// second did not. Such a record was never flushed, so never acknowledged.
/// Returns the index the torn record claims.
pub fn append_torn_record(path: &Path) -> io::Result<u64> {
    tear(path, TearCase::Body)
}

/// Damages the space after the log of a stopped node's image as `case`
/// says. Returns the index of the first record the damage claims.
pub fn tear(path: &Path, case: TearCase) -> io::Result<u64> {
    let s = scan(path)?;
    let sector = s.next_sector;
    let (index, term, epoch) = match (s.records.last(), &s.snapshot) {
        (Some(r), _) => (r.header.index + 1, r.header.term, r.header.epoch),
        (None, Some(h)) => (h.index + 1, h.term, h.first_epoch),
        (None, None) => (1, 1, 1),
    };
    let record = |index: u64| -> io::Result<Vec<u8>> {
        let mut rec = vec![0u8; disk::record_sectors(TORN_PAYLOAD_BYTES) as usize * SECTOR_BYTES];
        let payload: Vec<u8> = (0..TORN_PAYLOAD_BYTES).map(|i| i as u8).collect();
        RecordHeader::encode_record(epoch, index, term, &payload, &mut rec)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        Ok(rec)
    };
    let rec = record(index)?;
    let bytes = match case {
        TearCase::Body => {
            let mut b = rec.clone();
            b[SECTOR_BYTES..].fill(0);
            b
        }
        TearCase::Header => {
            let mut b = rec.clone();
            b[..SECTOR_BYTES].fill(0);
            b
        }
        TearCase::Gap => {
            let mut b = vec![0u8; rec.len()];
            b.extend_from_slice(&record(index + 1)?);
            b
        }
    };
    let total = OpenOptions::new().read(true).open(path)?.metadata()?.len();
    let end = sector * SECTOR_BYTES as u64 + bytes.len() as u64;
    if end > total || disk::ring_position(sector, total / SECTOR_BYTES as u64) != sector {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no room after the log for the damage (the ring wraps here)",
        ));
    }
    let mut f = OpenOptions::new().read(true).write(true).open(path)?;
    f.seek(SeekFrom::Start(sector * SECTOR_BYTES as u64))?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    Ok(index)
}

/// Damages the record at the durable commit index (keeps its first half,
/// overwrites the rest with garbage): corruption of data the node flushed
/// and acknowledged, which recovery must refuse rather than serve. Returns
/// the damaged index.
pub fn damage_committed_record(path: &Path) -> io::Result<u64> {
    let s = scan(path)?;
    let commit = s.hard_state.map_or(0, |h| h.commit);
    let last = *s
        .records
        .iter()
        .rev()
        .find(|r| r.header.index <= commit)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "no committed log record to damage",
            )
        })?;
    let mut f = OpenOptions::new().read(true).write(true).open(path)?;
    let len = disk::RECORD_HEADER_BYTES as u64 + u64::from(last.header.len);
    let keep = len / 2;
    let start = last.sector * SECTOR_BYTES as u64 + keep;
    let garbage: Vec<u8> = (0..(len - keep) as usize)
        .map(|i| (i as u8).wrapping_mul(151) ^ 0xA5)
        .collect();
    f.seek(SeekFrom::Start(start))?;
    f.write_all(&garbage)?;
    f.sync_all()?;
    Ok(last.header.index)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image whose log holds entries 1..=3 (one sector each).
    fn image_with_a_log(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("disk.img");
        let mut f = File::create(&path).unwrap();
        f.set_len((LOG_START_SECTOR + 64) * SECTOR_BYTES as u64)
            .unwrap();
        for i in 0..3u64 {
            let mut rec = vec![0u8; SECTOR_BYTES];
            RecordHeader::encode_record(1, i + 1, 1, &[i as u8; 8], &mut rec).unwrap();
            f.seek(SeekFrom::Start(
                (LOG_START_SECTOR + i) * SECTOR_BYTES as u64,
            ))
            .unwrap();
            f.write_all(&rec).unwrap();
        }
        path
    }

    #[test]
    fn every_tear_case_is_discarded_by_the_recovery_rules() {
        for case in TearCase::ALL {
            let dir = std::env::temp_dir().join(format!(
                "metalraft-fw-tear-{}-{}",
                std::process::id(),
                case.name()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let path = image_with_a_log(&dir);
            let before = scan(&path).unwrap();
            assert_eq!(before.records.len(), 3);
            assert_eq!(tear(&path, case).unwrap(), 4, "{case:?}");
            let after = scan(&path).unwrap();
            assert_eq!(
                after.records.len(),
                3,
                "{case:?}: the damage is not part of the log"
            );
            assert_eq!(after.next_sector, before.next_sector, "{case:?}");
            // The damage is really there: the bytes after the log changed.
            let mut f = File::open(&path).unwrap();
            let tail = read_sectors(&mut f, before.next_sector, 4).unwrap();
            assert!(tail.iter().any(|&b| b != 0), "{case:?}");
            if case == TearCase::Gap {
                let h =
                    RecordHeader::decode(&read_sectors(&mut f, before.next_sector + 2, 1).unwrap())
                        .unwrap();
                assert_eq!(h.index, 5, "a valid record follows the zeroed one");
            }
            std::fs::remove_dir_all(&dir).unwrap();
            assert_eq!(TearCase::from_name(case.name()), Some(case));
        }
    }
}
