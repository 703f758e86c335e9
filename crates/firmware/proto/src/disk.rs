//! The on-disk layout of a node's virtio-blk disk, shared by the firmware
//! (which writes it) and the host tool (which creates images and inspects
//! or damages them in tests).
//!
//! ```text
//! sector 0              config block (written by the host, see config)
//! sectors 1, 2          hard-state slots A and B, written alternately
//! sectors 8 .. 136      snapshot slot A: header sector, then data
//! sectors 136 .. 264    snapshot slot B
//! sectors 264 .. end    log records in a ring, each on a sector boundary
//! ```
//!
//! Snapshots alternate between the two slots; the valid one (header and
//! data checksums) with the higher sequence number is current. Its header
//! also says where the log's first record after the snapshot lies, so
//! taking a snapshot frees the ring space before it. A record never
//! straddles the end of the ring: when fewer than [`MAX_RECORD_SECTORS`]
//! remain, writer and reader both wrap to [`LOG_START_SECTOR`]
//! ([`ring_position`]).
//!
//! A log record is a 36-byte header, the payload, zero padding to the next
//! sector. The header holds `MAGIC`, the format version, the write epoch,
//! the payload length, the entry's index and term, and a CRC-32C over the
//! header (CRC field excluded) and the payload. Recovery reads records from
//! [`LOG_START_SECTOR`] while each one is intact, has the next index, a
//! term and an epoch no lower than its predecessor's; the first record that
//! fails ends the log (a torn or stale tail is discarded). The epoch grows
//! at every boot and at every truncation, so records left behind by an
//! overwrite can never be mistaken for the log's continuation.

use core::fmt;

use crate::CRC32C;

/// Bytes per sector.
pub const SECTOR_BYTES: usize = 512;
/// The config block's sector.
pub const CONFIG_SECTOR: u64 = 0;
/// The two hard-state slots.
pub const HARD_STATE_SECTORS: [u64; 2] = [1, 2];
/// Sectors of one snapshot slot (header + data).
pub const SNAPSHOT_SLOT_SECTORS: u64 = 128;
/// First sector of each snapshot slot.
pub const SNAPSHOT_SLOTS: [u64; 2] = [8, 8 + SNAPSHOT_SLOT_SECTORS];
/// Largest snapshot (data bytes).
pub const MAX_SNAPSHOT_BYTES: usize = (SNAPSHOT_SLOT_SECTORS as usize - 1) * SECTOR_BYTES;
/// First sector of the log ring.
pub const LOG_START_SECTOR: u64 = SNAPSHOT_SLOTS[1] + SNAPSHOT_SLOT_SECTORS;
/// Bytes of a record header.
pub const RECORD_HEADER_BYTES: usize = 36;
/// Largest record payload (bounds reads of a corrupt length field).
pub const MAX_RECORD_PAYLOAD_BYTES: usize = 4 * SECTOR_BYTES - RECORD_HEADER_BYTES;
/// Default disk image size made by the host tool.
pub const DEFAULT_DISK_BYTES: u64 = 8 * 1024 * 1024;

const RECORD_MAGIC: [u8; 4] = *b"MRLG";
const HARD_STATE_MAGIC: [u8; 4] = *b"MRHS";
/// Version of the record and hard-state formats.
pub const DISK_FORMAT_VERSION: u8 = 1;
const HARD_STATE_BYTES: usize = 4 + 1 + 8 * 5 + 4;

const _: () = assert!(HARD_STATE_BYTES <= SECTOR_BYTES);
const _: () = assert!(HARD_STATE_SECTORS[1] < SNAPSHOT_SLOTS[0]);
/// Most sectors one record can occupy.
pub const MAX_RECORD_SECTORS: u64 = record_sectors(MAX_RECORD_PAYLOAD_BYTES);

/// Where a record that would start at `sector` really starts: at the ring's
/// start when fewer than [`MAX_RECORD_SECTORS`] remain before `disk_sectors`.
pub const fn ring_position(sector: u64, disk_sectors: u64) -> u64 {
    if sector + MAX_RECORD_SECTORS > disk_sectors {
        LOG_START_SECTOR
    } else {
        sector
    }
}

/// Sectors a record with `payload_len` bytes of payload occupies.
pub const fn record_sectors(payload_len: usize) -> u64 {
    ((RECORD_HEADER_BYTES + payload_len).div_ceil(SECTOR_BYTES)) as u64
}

/// A record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Write epoch (see the module doc).
    pub epoch: u32,
    /// Payload length.
    pub len: u32,
    /// Log index of the entry.
    pub index: u64,
    /// Term of the entry.
    pub term: u64,
    /// CRC-32C of the header (without this field) and the payload.
    pub crc: u32,
}

/// Why a record or hard-state slot was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// All zero: never written.
    Empty,
    /// No magic (garbage or a torn write).
    NoMagic,
    /// Unknown format version.
    UnknownVersion(u8),
    /// Length field above the bound.
    BadLength,
    /// Checksum mismatch (torn or corrupted).
    BadChecksum,
    /// Payload too large to store (encoding).
    TooLarge,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Empty => f.write_str("empty (never written)"),
            RecordError::NoMagic => f.write_str("no magic (garbage or torn write)"),
            RecordError::UnknownVersion(v) => write!(f, "unknown format version {v}"),
            RecordError::BadLength => f.write_str("length field out of bounds"),
            RecordError::BadChecksum => f.write_str("checksum mismatch"),
            RecordError::TooLarge => f.write_str("payload above the record limit"),
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl RecordHeader {
    /// Encodes a record (header + payload + padding) into `out`, which must
    /// be exactly [`record_sectors`] sectors long.
    pub fn encode_record(
        epoch: u32,
        index: u64,
        term: u64,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<(), RecordError> {
        if payload.len() > MAX_RECORD_PAYLOAD_BYTES {
            return Err(RecordError::TooLarge);
        }
        assert_eq!(
            out.len() as u64,
            record_sectors(payload.len()) * SECTOR_BYTES as u64,
            "record buffer size"
        );
        out[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + payload.len()].copy_from_slice(payload);
        Self::seal_record(epoch, index, term, payload.len(), out)
    }

    /// [`RecordHeader::encode_record`] for a payload already in place: the
    /// `payload_len` bytes after the header in `out` (which must be exactly
    /// [`record_sectors`] sectors long). Writes the header and zeroes the
    /// padding; the same bytes as `encode_record`. Lets the writer encode
    /// an entry straight into its record buffer (one copy less, no
    /// separate payload buffer).
    pub fn seal_record(
        epoch: u32,
        index: u64,
        term: u64,
        payload_len: usize,
        out: &mut [u8],
    ) -> Result<(), RecordError> {
        if payload_len > MAX_RECORD_PAYLOAD_BYTES {
            return Err(RecordError::TooLarge);
        }
        assert_eq!(
            out.len() as u64,
            record_sectors(payload_len) * SECTOR_BYTES as u64,
            "record buffer size"
        );
        let end = RECORD_HEADER_BYTES + payload_len;
        out[..RECORD_HEADER_BYTES].fill(0);
        out[end..].fill(0);
        out[0..4].copy_from_slice(&RECORD_MAGIC);
        out[4] = DISK_FORMAT_VERSION;
        out[8..12].copy_from_slice(&epoch.to_le_bytes());
        out[12..16].copy_from_slice(&(payload_len as u32).to_le_bytes());
        out[16..24].copy_from_slice(&index.to_le_bytes());
        out[24..32].copy_from_slice(&term.to_le_bytes());
        let (header, rest) = out.split_at_mut(RECORD_HEADER_BYTES);
        let crc = Self::checksum(&header[..32], &rest[..payload_len]);
        header[32..36].copy_from_slice(&crc.to_le_bytes());
        Ok(())
    }

    fn checksum(header: &[u8], payload: &[u8]) -> u32 {
        let mut d = CRC32C.digest();
        d.update(header);
        d.update(payload);
        d.finalize()
    }

    /// Parses the header at the start of a record's first sector. The CRC
    /// is checked later, by [`RecordHeader::verify`], once the payload is read.
    pub fn decode(sector: &[u8]) -> Result<RecordHeader, RecordError> {
        if sector.len() < RECORD_HEADER_BYTES {
            return Err(RecordError::BadLength);
        }
        if sector[..RECORD_HEADER_BYTES].iter().all(|&b| b == 0) {
            return Err(RecordError::Empty);
        }
        if sector[0..4] != RECORD_MAGIC {
            return Err(RecordError::NoMagic);
        }
        if sector[4] != DISK_FORMAT_VERSION {
            return Err(RecordError::UnknownVersion(sector[4]));
        }
        let h = RecordHeader {
            epoch: u32_at(sector, 8),
            len: u32_at(sector, 12),
            index: u64_at(sector, 16),
            term: u64_at(sector, 24),
            crc: u32_at(sector, 32),
        };
        if h.len as usize > MAX_RECORD_PAYLOAD_BYTES {
            return Err(RecordError::BadLength);
        }
        Ok(h)
    }

    /// Checks the CRC over the whole record (`record` = all its sectors);
    /// returns the payload.
    pub fn verify<'a>(&self, record: &'a [u8]) -> Result<&'a [u8], RecordError> {
        let end = RECORD_HEADER_BYTES + self.len as usize;
        if record.len() < end {
            return Err(RecordError::BadLength);
        }
        let payload = &record[RECORD_HEADER_BYTES..end];
        if Self::checksum(&record[..32], payload) != self.crc {
            return Err(RecordError::BadChecksum);
        }
        Ok(payload)
    }

    /// Sectors this record occupies.
    pub fn sectors(&self) -> u64 {
        record_sectors(self.len as usize)
    }
}

/// The rule that links log records into the log, shared by the firmware's
/// recovery and the host's inspection so the two cannot drift: a record
/// continues the log if it has the next index and an epoch and a term no
/// lower than its predecessor's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chain {
    /// Index the next record must have.
    pub next_index: u64,
    /// Highest epoch so far.
    pub epoch: u32,
    /// Highest term so far.
    pub term: u64,
}

impl Default for Chain {
    fn default() -> Self {
        Chain::after(0, 0)
    }
}

impl Chain {
    /// A chain whose first record follows the entry (`index`, `term`)
    /// (the snapshot's, or (0, 0) without one).
    pub const fn after(index: u64, term: u64) -> Chain {
        Chain {
            next_index: index + 1,
            epoch: 0,
            term,
        }
    }

    /// Whether an intact record with header `h` continues the chain.
    pub fn accepts(&self, h: &RecordHeader) -> bool {
        h.index == self.next_index && h.epoch >= self.epoch && h.term >= self.term
    }

    /// Extends the chain with `h` (which it must accept).
    pub fn push(&mut self, h: &RecordHeader) {
        debug_assert!(self.accepts(h));
        *self = Chain {
            next_index: h.index + 1,
            epoch: h.epoch,
            term: h.term,
        };
    }
}

const SNAPSHOT_MAGIC: [u8; 4] = *b"MRSN";
/// Largest encoded snapshot metadata (index, term, configuration).
pub const MAX_SNAPSHOT_META_BYTES: usize = 256;
const SNAPSHOT_FIXED_BYTES: usize = 4 + 1 + 8 * 4 + 4 * 3 + 2;

const _: () = assert!(SNAPSHOT_FIXED_BYTES + MAX_SNAPSHOT_META_BYTES + 4 <= SECTOR_BYTES);

/// The header sector of a snapshot slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// Write sequence: the valid slot with the higher one is current.
    pub seq: u64,
    /// Last log index the snapshot covers.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// Sector of the first log record after the snapshot.
    pub log_start_sector: u64,
    /// Data length in bytes.
    pub data_len: u32,
    /// CRC-32C of the data.
    pub data_crc: u32,
    /// Lowest epoch the first log record after the snapshot may have.
    pub first_epoch: u32,
    /// Opaque encoded metadata (the firmware stores the core's `SnapshotMeta`).
    pub meta: alloc::vec::Vec<u8>,
}

impl SnapshotHeader {
    /// Encodes into one sector.
    pub fn encode(&self) -> Result<[u8; SECTOR_BYTES], RecordError> {
        if self.meta.len() > MAX_SNAPSHOT_META_BYTES || self.data_len as usize > MAX_SNAPSHOT_BYTES
        {
            return Err(RecordError::TooLarge);
        }
        let mut s = [0u8; SECTOR_BYTES];
        s[0..4].copy_from_slice(&SNAPSHOT_MAGIC);
        s[4] = DISK_FORMAT_VERSION;
        for (i, v) in [self.seq, self.index, self.term, self.log_start_sector]
            .iter()
            .enumerate()
        {
            s[5 + 8 * i..13 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        s[37..41].copy_from_slice(&self.data_len.to_le_bytes());
        s[41..45].copy_from_slice(&self.data_crc.to_le_bytes());
        s[45..49].copy_from_slice(&self.first_epoch.to_le_bytes());
        s[49..51].copy_from_slice(&(self.meta.len() as u16).to_le_bytes());
        let end = SNAPSHOT_FIXED_BYTES + self.meta.len();
        s[SNAPSHOT_FIXED_BYTES..end].copy_from_slice(&self.meta);
        let crc = CRC32C.checksum(&s[..end]);
        s[end..end + 4].copy_from_slice(&crc.to_le_bytes());
        Ok(s)
    }

    /// Decodes a header sector (the data checksum is checked separately).
    pub fn decode(s: &[u8]) -> Result<SnapshotHeader, RecordError> {
        if s.len() < SECTOR_BYTES {
            return Err(RecordError::BadLength);
        }
        if s[..SNAPSHOT_FIXED_BYTES].iter().all(|&b| b == 0) {
            return Err(RecordError::Empty);
        }
        if s[0..4] != SNAPSHOT_MAGIC {
            return Err(RecordError::NoMagic);
        }
        if s[4] != DISK_FORMAT_VERSION {
            return Err(RecordError::UnknownVersion(s[4]));
        }
        let meta_len = usize::from(u16::from_le_bytes([s[49], s[50]]));
        let data_len = u32_at(s, 37);
        if meta_len > MAX_SNAPSHOT_META_BYTES || data_len as usize > MAX_SNAPSHOT_BYTES {
            return Err(RecordError::BadLength);
        }
        let end = SNAPSHOT_FIXED_BYTES + meta_len;
        if CRC32C.checksum(&s[..end]) != u32_at(s, end) {
            return Err(RecordError::BadChecksum);
        }
        Ok(SnapshotHeader {
            seq: u64_at(s, 5),
            index: u64_at(s, 13),
            term: u64_at(s, 21),
            log_start_sector: u64_at(s, 29),
            data_len,
            data_crc: u32_at(s, 41),
            first_epoch: u32_at(s, 45),
            meta: s[SNAPSHOT_FIXED_BYTES..end].to_vec(),
        })
    }
}

/// The durable hard state plus the boot counter, in one slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardStateRecord {
    /// Write sequence number: the slot with the higher valid one wins.
    pub seq: u64,
    /// Current term.
    pub term: u64,
    /// Vote in `term` (0: none).
    pub vote: u64,
    /// Commit index.
    pub commit: u64,
    /// Boots of this disk.
    pub boots: u64,
}

impl HardStateRecord {
    /// The slot sector for this record (alternates with `seq`).
    pub fn sector(&self) -> u64 {
        HARD_STATE_SECTORS[(self.seq % 2) as usize]
    }

    /// Encodes into one sector.
    pub fn encode(&self) -> [u8; SECTOR_BYTES] {
        let mut s = [0u8; SECTOR_BYTES];
        s[0..4].copy_from_slice(&HARD_STATE_MAGIC);
        s[4] = DISK_FORMAT_VERSION;
        for (i, v) in [self.seq, self.term, self.vote, self.commit, self.boots]
            .iter()
            .enumerate()
        {
            s[5 + 8 * i..13 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        let crc = CRC32C.checksum(&s[..HARD_STATE_BYTES - 4]);
        s[HARD_STATE_BYTES - 4..HARD_STATE_BYTES].copy_from_slice(&crc.to_le_bytes());
        s
    }

    /// Decodes one slot.
    pub fn decode(s: &[u8]) -> Result<HardStateRecord, RecordError> {
        if s.len() < HARD_STATE_BYTES {
            return Err(RecordError::BadLength);
        }
        if s[..HARD_STATE_BYTES].iter().all(|&b| b == 0) {
            return Err(RecordError::Empty);
        }
        if s[0..4] != HARD_STATE_MAGIC {
            return Err(RecordError::NoMagic);
        }
        if s[4] != DISK_FORMAT_VERSION {
            return Err(RecordError::UnknownVersion(s[4]));
        }
        if CRC32C.checksum(&s[..HARD_STATE_BYTES - 4]) != u32_at(s, HARD_STATE_BYTES - 4) {
            return Err(RecordError::BadChecksum);
        }
        Ok(HardStateRecord {
            seq: u64_at(s, 5),
            term: u64_at(s, 13),
            vote: u64_at(s, 21),
            commit: u64_at(s, 29),
            boots: u64_at(s, 37),
        })
    }

    /// The newer of two slots, ignoring invalid ones (`None`).
    pub fn newest(
        a: Option<HardStateRecord>,
        b: Option<HardStateRecord>,
    ) -> Option<HardStateRecord> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if a.seq >= b.seq { a } else { b }),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealing_a_payload_in_place_gives_the_encoded_record() {
        for len in [0usize, 1, 476, 477, 600, MAX_RECORD_PAYLOAD_BYTES] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
            let size = record_sectors(len) as usize * SECTOR_BYTES;
            let mut encoded = alloc::vec![0u8; size];
            RecordHeader::encode_record(3, 42, 7, &payload, &mut encoded).unwrap();
            // A reused buffer: stale bytes everywhere but the payload.
            let mut sealed = alloc::vec![0xAB; size];
            sealed[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len].copy_from_slice(&payload);
            RecordHeader::seal_record(3, 42, 7, len, &mut sealed).unwrap();
            assert_eq!(sealed, encoded, "payload of {len} bytes");
            let h = RecordHeader::decode(&sealed).unwrap();
            assert_eq!(h.verify(&sealed).unwrap(), &payload[..]);
        }
        let mut big = alloc::vec![0u8; 4 * SECTOR_BYTES];
        assert_eq!(
            RecordHeader::seal_record(1, 1, 1, MAX_RECORD_PAYLOAD_BYTES + 1, &mut big),
            Err(RecordError::TooLarge)
        );
    }

    #[test]
    fn record_round_trip_and_corruption() {
        let payload = [5u8; 600];
        let mut rec = alloc::vec![0u8; record_sectors(600) as usize * SECTOR_BYTES];
        RecordHeader::encode_record(3, 42, 7, &payload, &mut rec).unwrap();
        let h = RecordHeader::decode(&rec).unwrap();
        assert_eq!(
            (h.epoch, h.index, h.term, h.len, h.sectors()),
            (3, 42, 7, 600, 2)
        );
        assert_eq!(h.verify(&rec).unwrap(), &payload[..]);
        let mut torn = rec.clone();
        torn[SECTOR_BYTES..].fill(0); // second sector never reached the disk
        assert_eq!(
            RecordHeader::decode(&torn).unwrap().verify(&torn),
            Err(RecordError::BadChecksum)
        );
        assert_eq!(RecordHeader::decode(&[0u8; 512]), Err(RecordError::Empty));
        let mut bad = rec.clone();
        bad[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(RecordHeader::decode(&bad), Err(RecordError::BadLength));
    }

    #[test]
    fn chain_refuses_stale_and_out_of_order_records() {
        let h = |epoch, index, term| RecordHeader {
            epoch,
            len: 0,
            index,
            term,
            crc: 0,
        };
        let mut c = Chain::default();
        assert!(c.accepts(&h(1, 1, 1)));
        c.push(&h(1, 1, 1));
        assert!(!c.accepts(&h(1, 3, 1)), "gap");
        assert!(
            !c.accepts(&h(0, 2, 1)),
            "older epoch: left behind by an overwrite"
        );
        assert!(!c.accepts(&h(1, 2, 0)), "term went backwards");
        assert!(c.accepts(&h(2, 2, 3)));
    }

    #[test]
    fn snapshot_header_round_trip_and_damage() {
        let h = SnapshotHeader {
            seq: 3,
            index: 700,
            term: 4,
            log_start_sector: 300,
            data_len: 9000,
            data_crc: 0xdead_beef,
            first_epoch: 2,
            meta: alloc::vec![1, 2, 3],
        };
        let s = h.encode().unwrap();
        assert_eq!(SnapshotHeader::decode(&s), Ok(h));
        let mut bad = s;
        bad[14] ^= 0x10;
        assert_eq!(SnapshotHeader::decode(&bad), Err(RecordError::BadChecksum));
        assert_eq!(
            SnapshotHeader::decode(&[0u8; SECTOR_BYTES]),
            Err(RecordError::Empty)
        );
    }

    #[test]
    fn ring_wraps_before_a_record_could_straddle_the_end() {
        assert_eq!(
            ring_position(LOG_START_SECTOR + 5, 1000),
            LOG_START_SECTOR + 5
        );
        assert_eq!(
            ring_position(1000 - MAX_RECORD_SECTORS, 1000),
            1000 - MAX_RECORD_SECTORS
        );
        assert_eq!(
            ring_position(1000 - MAX_RECORD_SECTORS + 1, 1000),
            LOG_START_SECTOR
        );
    }

    #[test]
    fn hard_state_slots() {
        let a = HardStateRecord {
            seq: 4,
            term: 2,
            vote: 1,
            commit: 9,
            boots: 3,
        };
        let b = HardStateRecord { seq: 5, ..a };
        assert_eq!(HardStateRecord::decode(&a.encode()), Ok(a));
        assert_ne!(a.sector(), b.sector());
        let mut torn = b.encode();
        torn[20] ^= 1;
        assert_eq!(
            HardStateRecord::newest(
                HardStateRecord::decode(&a.encode()).ok(),
                HardStateRecord::decode(&torn).ok()
            ),
            Some(a)
        );
    }
}
