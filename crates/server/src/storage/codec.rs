//! Byte layout of WAL frames and their payloads.
//!
//! A frame is `len: u32 LE | crc: u32 LE | payload[len]`, where `crc` is the
//! CRC32C of the four length bytes followed by the payload. A frame with
//! `len == 0` and `crc == 0` never occurs in a valid log: it is how the
//! preallocated (zero-filled) tail of a segment reads.
//!
//! Payloads are decoded with explicit bounds checks: a decoder never panics
//! and never allocates more than the frame it was given.
//!
//! Since format 2 every frame the WAL writes is *sequenced*: its payload
//! starts with a tag of [`TAG_SEQUENCED_OFFSET`] plus the record's tag, then a
//! [`FrameSeq`] (the frame's number in the WAL and the highest number known
//! durable when it was written). Recovery uses it to tell a torn tail from
//! mid-log damage (`docs/adr/0014-torn-tail-recovery.md`). Unsequenced
//! frames (format 1, metalraft 0.1.x) still decode.

use metalraft_core::{Entry, EntryData, HardState};

/// Bytes of the frame header (length + checksum).
pub const FRAME_HEADER_BYTES: usize = 8;
/// Largest frame payload accepted on read or write. A group-commit batch
/// larger than this is split into several frames.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

// One log entry (a validated command plus the server's prefix and the
// entry header) always fits in a frame, so an accepted request can never be
// refused by the WAL.
const _: () = assert!(metalraft_kv::MAX_ENCODED_COMMAND_BYTES + 1024 < MAX_FRAME_BYTES);

const TAG_SEGMENT_START: u8 = 1;
const TAG_BATCH: u8 = 2;
/// Added to a record's tag when the payload carries a [`FrameSeq`].
pub const TAG_SEQUENCED_OFFSET: u8 = 2;
const ENTRY_NOOP: u8 = 0;
const ENTRY_NORMAL: u8 = 1;
const ENTRY_OTHER: u8 = 2;

/// One decoded WAL record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// First record of every segment: the state a reader needs even if every
    /// earlier segment has been purged.
    SegmentStart {
        /// Index of the first entry this segment may hold.
        first_index: u64,
        /// Term of entry `first_index - 1` (0 if none or unknown).
        prev_term: u64,
        /// Hard state when the segment was started.
        hard_state: HardState,
    },
    /// Entries (overwriting from the first one's index) and an optional new
    /// hard state, written and synced together.
    Batch {
        /// Contiguous entries.
        entries: Vec<Entry<Vec<u8>>>,
        /// The hard state after the entries, if it changed.
        hard_state: Option<HardState>,
    },
}

/// Why a payload could not be decoded (the frame's checksum was fine, so
/// this means a writer bug or a format from another version).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload ended early.
    #[error("record truncated")]
    Truncated,
    /// Unknown record or entry tag.
    #[error("unknown tag {0}")]
    BadTag(u8),
    /// Bytes left over after the record.
    #[error("trailing bytes after record")]
    Trailing,
    /// A membership change (or other core-defined entry kind) that does not decode.
    #[error("undecodable membership change")]
    BadConfChange,
    /// Entries are not contiguous.
    #[error("entries not contiguous")]
    NotContiguous,
    /// A sequenced frame whose durable mark is not below its own number.
    #[error("frame {seq} claims frame {synced} was durable before it was written")]
    BadSequence {
        /// The frame's number.
        seq: u64,
        /// The durable mark it carries.
        synced: u64,
    },
}

/// Largest frame number the WAL writes (asserted): far beyond what a WAL
/// can write in practice.
pub const MAX_FRAME_SEQ: u64 = 1 << 62;
/// Largest frame number accepted on read: half of [`MAX_FRAME_SEQ`], so a
/// WAL continuing after a number read from (possibly hostile) bytes has
/// 2^61 frames to go before the writer's assertion.
pub const MAX_FRAME_SEQ_READ: u64 = MAX_FRAME_SEQ / 2;

/// Where a frame sits in the WAL's write history.
///
/// `seq` numbers frames 1, 2, 3, … across segments and never repeats within
/// a WAL. `synced` is the highest `seq` a completed `fdatasync` had made
/// durable when this frame was written (0 if none), so `synced < seq`. A
/// valid frame whose `synced` covers an earlier damaged frame proves that
/// frame had been durable, hence possibly acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameSeq {
    /// This frame's number (1-based).
    pub seq: u64,
    /// Highest frame number durable when this one was written.
    pub synced: u64,
}

/// Encodes `payload` as a frame.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).expect("frame payload bounded by MAX_FRAME_BYTES");
    let len_bytes = len.to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload);
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Starts a frame at the end of `out`: reserves its header, which
/// [`finish_frame`] fills once the payload follows it. Lets the WAL encode
/// a whole group's frames into one buffer without a copy per frame.
pub fn begin_frame(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    start
}

/// Fills the header of the frame [`begin_frame`] started at `start`, whose
/// payload is everything after the header. Same bytes as [`encode_frame`].
/// A payload above [`MAX_FRAME_BYTES`] is refused with its length, and
/// nothing is filled.
pub fn finish_frame(out: &mut [u8], start: usize) -> Result<(), usize> {
    let payload_len = out.len() - start - FRAME_HEADER_BYTES;
    let len_bytes = match u32::try_from(payload_len) {
        Ok(len) if payload_len <= MAX_FRAME_BYTES => len.to_le_bytes(),
        _ => return Err(payload_len),
    };
    let payload = &out[start + FRAME_HEADER_BYTES..];
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload);
    out[start..start + 4].copy_from_slice(&len_bytes);
    out[start + 4..start + FRAME_HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Result of looking at the bytes at a frame boundary.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameRead<'a> {
    /// A valid frame: its payload and total length.
    Frame(&'a [u8], usize),
    /// A zero header: the end of written data.
    End,
    /// Not a valid frame. `claimed_end` is where the frame says it ends, if
    /// that is plausible, else the end of its header.
    Bad {
        /// Why.
        reason: &'static str,
        /// Offset (relative to the frame start) past the claimed frame.
        claimed_end: usize,
    },
}

/// Reads the frame at the start of `buf`.
pub fn read_frame(buf: &[u8]) -> FrameRead<'_> {
    if buf.len() < FRAME_HEADER_BYTES {
        if buf.iter().all(|b| *b == 0) {
            return FrameRead::End;
        }
        return FrameRead::Bad {
            reason: "partial frame header",
            claimed_end: buf.len(),
        };
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if len == 0 && crc == 0 {
        return FrameRead::End;
    }
    if len > MAX_FRAME_BYTES || FRAME_HEADER_BYTES + len > buf.len() {
        return FrameRead::Bad {
            reason: "frame length beyond the end of the file",
            claimed_end: FRAME_HEADER_BYTES,
        };
    }
    let payload = &buf[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len];
    let actual = crc32c::crc32c_append(crc32c::crc32c(&buf[0..4]), payload);
    if actual != crc {
        return FrameRead::Bad {
            reason: "checksum mismatch",
            claimed_end: FRAME_HEADER_BYTES + len,
        };
    }
    FrameRead::Frame(payload, FRAME_HEADER_BYTES + len)
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_hard_state(out: &mut Vec<u8>, hs: &HardState) {
    put_u64(out, hs.term);
    put_u64(out, hs.vote.unwrap_or(0));
    put_u64(out, hs.commit);
}

/// Why a record could not be encoded. Nothing is written then: an entry
/// that does not encode must never become an empty WAL record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A membership change (or other core-defined entry kind) that postcard
    /// refused.
    #[error("entry {index} does not encode: {source}")]
    Entry {
        /// The entry's index.
        index: u64,
        /// postcard's reason.
        source: postcard::Error,
    },
    /// A snapshot's membership record that postcard refused.
    #[error("snapshot membership record does not encode: {0}")]
    ConfState(postcard::Error),
    /// A delta snapshot's manifest that postcard refused.
    #[error("delta snapshot manifest does not encode: {0}")]
    DeltaManifest(postcard::Error),
}

fn record_tag(r: &Record) -> u8 {
    match r {
        Record::SegmentStart { .. } => TAG_SEGMENT_START,
        Record::Batch { .. } => TAG_BATCH,
    }
}

/// Encodes an unsequenced (format 1) record payload. The WAL writes
/// [`encode_sequenced`]; this stays for tools and tests that build old logs.
pub fn encode_record(r: &Record, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    out.push(record_tag(r));
    encode_body(r, out)
}

/// Encodes a sequenced (format 2) record payload.
///
/// # Panics
/// If `at.synced >= at.seq` (a frame cannot be durable before it exists).
pub fn encode_sequenced(r: &Record, at: FrameSeq, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    put_sequence(record_tag(r), at, out);
    encode_body(r, out)
}

/// Encodes a sequenced (format 2) batch payload from borrowed entries:
/// the same bytes as [`encode_sequenced`] of a [`Record::Batch`] holding
/// them, without copying the entries into one first.
///
/// # Panics
/// As [`encode_sequenced`].
pub fn encode_batch_sequenced(
    entries: &[Entry<Vec<u8>>],
    hard_state: Option<HardState>,
    at: FrameSeq,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    put_sequence(TAG_BATCH, at, out);
    encode_batch_body(entries, hard_state.as_ref(), out)
}

fn put_sequence(tag: u8, at: FrameSeq, out: &mut Vec<u8>) {
    assert!(at.seq >= 1, "frame numbers start at 1");
    assert!(at.seq <= MAX_FRAME_SEQ, "frame number above MAX_FRAME_SEQ");
    assert!(
        at.synced < at.seq,
        "durable mark not below the frame number"
    );
    out.push(tag + TAG_SEQUENCED_OFFSET);
    put_u64(out, at.seq);
    put_u64(out, at.synced);
}

fn encode_body(r: &Record, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match r {
        Record::SegmentStart {
            first_index,
            prev_term,
            hard_state,
        } => {
            put_u64(out, *first_index);
            put_u64(out, *prev_term);
            put_hard_state(out, hard_state);
        }
        Record::Batch {
            entries,
            hard_state,
        } => encode_batch_body(entries, hard_state.as_ref(), out)?,
    }
    Ok(())
}

fn encode_batch_body(
    entries: &[Entry<Vec<u8>>],
    hard_state: Option<&HardState>,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    match hard_state {
        Some(hs) => {
            out.push(1);
            put_hard_state(out, hs);
        }
        None => out.push(0),
    }
    put_u64(out, entries.len() as u64);
    for e in entries {
        put_u64(out, e.index);
        put_u64(out, e.term);
        match &e.data {
            EntryData::Noop => out.push(ENTRY_NOOP),
            EntryData::Normal(d) => {
                out.push(ENTRY_NORMAL);
                put_u64(out, d.len() as u64);
                out.extend_from_slice(d);
            }
            #[allow(unreachable_patterns)]
            other => {
                out.push(ENTRY_OTHER);
                let bytes = encode_other(e.index, other)?;
                put_u64(out, bytes.len() as u64);
                out.extend_from_slice(&bytes);
            }
        }
    }
    Ok(())
}

/// Bytes `encode_record` produces for one entry (for splitting batches).
pub fn entry_encoded_bytes(e: &Entry<Vec<u8>>) -> Result<usize, EncodeError> {
    Ok(17
        + match &e.data {
            EntryData::Noop => 0,
            EntryData::Normal(d) => 8 + d.len(),
            #[allow(unreachable_patterns)]
            other => 8 + encode_other(e.index, other)?.len(),
        })
}

/// Entry kinds other than no-op and application data (membership changes)
/// are stored in the core's serde form (postcard), so the WAL follows the
/// core's type without a hand-written mirror.
fn encode_other(index: u64, data: &EntryData<Vec<u8>>) -> Result<Vec<u8>, EncodeError> {
    postcard::to_allocvec(data).map_err(|source| EncodeError::Entry { index, source })
}

/// Decodes a membership-change entry: the current layout, or the layout
/// of metalraft 0.1.0 WALs written before `ConfChange` had a context.
fn decode_other(bytes: &[u8]) -> Result<EntryData<Vec<u8>>, DecodeError> {
    if let Ok(d) = postcard::from_bytes(bytes) {
        return Ok(d);
    }
    #[derive(serde::Deserialize)]
    struct ConfChangeV0 {
        ops: Vec<metalraft_core::ConfChangeOp>,
        transition: metalraft_core::ConfTransition,
    }
    // Variant order as in `EntryData`.
    #[derive(serde::Deserialize)]
    enum EntryDataV0 {
        #[allow(dead_code)]
        Noop,
        #[allow(dead_code)]
        Normal(Vec<u8>),
        ConfChange(ConfChangeV0),
    }
    match postcard::from_bytes::<EntryDataV0>(bytes) {
        Ok(EntryDataV0::ConfChange(cc)) => Ok(EntryData::ConfChange(Box::new(
            metalraft_core::ConfChange {
                ops: cc.ops,
                transition: cc.transition,
                context: Vec::new(),
            },
        ))),
        _ => Err(DecodeError::BadConfChange),
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn hard_state(&mut self) -> Result<HardState, DecodeError> {
        let term = self.u64()?;
        let vote = self.u64()?;
        let commit = self.u64()?;
        Ok(HardState {
            term,
            vote: (vote != 0).then_some(vote),
            commit,
        })
    }
}

/// Decodes a record payload, sequenced or not.
pub fn decode_record(buf: &[u8]) -> Result<Record, DecodeError> {
    decode_sequenced(buf).map(|(rec, _)| rec)
}

/// Decodes a record payload and its [`FrameSeq`] (`None` for a format 1
/// frame).
pub fn decode_sequenced(buf: &[u8]) -> Result<(Record, Option<FrameSeq>), DecodeError> {
    let mut r = Reader { buf };
    let mut tag = r.u8()?;
    let mut at = None;
    if is_sequenced_tag(tag) {
        tag -= TAG_SEQUENCED_OFFSET;
        let seq = r.u64()?;
        let synced = r.u64()?;
        if seq == 0 || seq > MAX_FRAME_SEQ_READ || synced >= seq {
            return Err(DecodeError::BadSequence { seq, synced });
        }
        at = Some(FrameSeq { seq, synced });
    }
    let rec = match tag {
        TAG_SEGMENT_START => Record::SegmentStart {
            first_index: r.u64()?,
            prev_term: r.u64()?,
            hard_state: r.hard_state()?,
        },
        TAG_BATCH => {
            let hard_state = match r.u8()? {
                0 => None,
                1 => Some(r.hard_state()?),
                t => return Err(DecodeError::BadTag(t)),
            };
            let n = r.u64()?;
            // Each entry takes at least 17 bytes: bound the allocation by the input.
            if n > (r.buf.len() / 17) as u64 {
                return Err(DecodeError::Truncated);
            }
            let mut entries = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let index = r.u64()?;
                let term = r.u64()?;
                let data = match r.u8()? {
                    ENTRY_NOOP => EntryData::Noop,
                    ENTRY_NORMAL => {
                        let len = r.u64()?;
                        let len = usize::try_from(len).map_err(|_| DecodeError::Truncated)?;
                        EntryData::Normal(r.take(len)?.to_vec())
                    }
                    ENTRY_OTHER => {
                        let len = r.u64()?;
                        let len = usize::try_from(len).map_err(|_| DecodeError::Truncated)?;
                        decode_other(r.take(len)?)?
                    }
                    t => return Err(DecodeError::BadTag(t)),
                };
                if let Some(prev) = entries.last() {
                    let prev: &Entry<Vec<u8>> = prev;
                    if prev.index.checked_add(1) != Some(index) {
                        return Err(DecodeError::NotContiguous);
                    }
                }
                entries.push(Entry { term, index, data });
            }
            Record::Batch {
                entries,
                hard_state,
            }
        }
        t => return Err(DecodeError::BadTag(t)),
    };
    if !r.buf.is_empty() {
        return Err(DecodeError::Trailing);
    }
    Ok((rec, at))
}

/// Whether `b` can be the first payload byte of a frame the WAL writes
/// today: a cheap filter before checksumming a candidate frame while
/// scanning damaged bytes.
pub fn is_sequenced_tag(b: u8) -> bool {
    b == TAG_SEGMENT_START + TAG_SEQUENCED_OFFSET || b == TAG_BATCH + TAG_SEQUENCED_OFFSET
}

/// Whether `b` can be the first payload byte of any record.
pub fn is_record_tag(b: u8) -> bool {
    b == TAG_SEGMENT_START || b == TAG_BATCH || is_sequenced_tag(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record::Batch {
            entries: vec![
                Entry {
                    term: 2,
                    index: 5,
                    data: EntryData::Noop,
                },
                Entry {
                    term: 2,
                    index: 6,
                    data: EntryData::Normal(b"hello".to_vec()),
                },
            ],
            hard_state: Some(HardState {
                term: 2,
                vote: Some(7),
                commit: 4,
            }),
        }
    }

    #[test]
    fn record_round_trips_and_entry_size_is_exact() {
        let r = sample();
        let mut buf = Vec::new();
        encode_record(&r, &mut buf).unwrap();
        assert_eq!(decode_record(&buf), Ok(r.clone()));
        let Record::Batch { entries, .. } = r else {
            unreachable!()
        };
        let sum: usize = entries
            .iter()
            .map(|e| entry_encoded_bytes(e).unwrap())
            .sum();
        assert_eq!(buf.len(), 1 + 1 + 24 + 8 + sum);
    }

    #[test]
    fn every_truncation_and_bit_flip_is_detected() {
        let mut payload = Vec::new();
        encode_record(&sample(), &mut payload).unwrap();
        let mut frame = Vec::new();
        encode_frame(&payload, &mut frame);
        assert_eq!(read_frame(&frame), FrameRead::Frame(&payload, frame.len()));
        for cut in 1..frame.len() {
            assert!(
                !matches!(read_frame(&frame[..cut]), FrameRead::Frame(..)),
                "cut at {cut}"
            );
        }
        for bit in 0..frame.len() * 8 {
            let mut f = frame.clone();
            f[bit / 8] ^= 1 << (bit % 8);
            assert!(!matches!(read_frame(&f), FrameRead::Frame(..)), "bit {bit}");
        }
        for cut in 0..payload.len() {
            assert!(decode_record(&payload[..cut]).is_err());
        }
    }

    #[test]
    fn membership_changes_round_trip_and_0_1_0_layout_still_reads() {
        use metalraft_core::{ConfChange, ConfChangeOp};
        let cc = ConfChange::new(&[ConfChangeOp::AddLearner(9)]).with_context(b"ctx".to_vec());
        let data = EntryData::ConfChange(Box::new(cc));
        assert_eq!(decode_other(&encode_other(1, &data).unwrap()), Ok(data));
        // metalraft 0.1.0: variant 2 (ConfChange), one op AddVoter(5),
        // transition Auto, no context.
        assert_eq!(
            decode_other(&[2, 1, 0, 5, 0]),
            Ok(EntryData::ConfChange(Box::new(ConfChange::new(&[
                ConfChangeOp::AddVoter(5)
            ]))))
        );
        assert_eq!(decode_other(&[2, 1, 9]), Err(DecodeError::BadConfChange));
        assert_eq!(decode_other(&[]), Err(DecodeError::BadConfChange));
    }

    #[test]
    fn zero_bytes_read_as_end() {
        assert_eq!(read_frame(&[0u8; 64]), FrameRead::End);
        assert_eq!(read_frame(&[0u8; 3]), FrameRead::End);
    }

    #[test]
    fn sequenced_records_round_trip_and_unsequenced_ones_still_read() {
        let at = FrameSeq { seq: 9, synced: 7 };
        let mut buf = Vec::new();
        encode_sequenced(&sample(), at, &mut buf).unwrap();
        assert!(is_sequenced_tag(buf[0]));
        assert_eq!(decode_sequenced(&buf), Ok((sample(), Some(at))));
        assert_eq!(decode_record(&buf), Ok(sample()));
        let mut old = Vec::new();
        encode_record(&sample(), &mut old).unwrap();
        assert!(is_record_tag(old[0]) && !is_sequenced_tag(old[0]));
        assert_eq!(decode_sequenced(&old), Ok((sample(), None)));
        // Same body after the 17-byte sequence prefix.
        assert_eq!(buf.len(), old.len() + 16);
        for cut in 0..buf.len() {
            assert!(decode_sequenced(&buf[..cut]).is_err());
        }
    }

    #[test]
    fn a_frame_durable_before_it_was_written_does_not_decode() {
        let mut buf = Vec::new();
        encode_sequenced(&sample(), FrameSeq { seq: 3, synced: 2 }, &mut buf).unwrap();
        buf[9..17].copy_from_slice(&3u64.to_le_bytes());
        assert_eq!(
            decode_sequenced(&buf),
            Err(DecodeError::BadSequence { seq: 3, synced: 3 })
        );
        buf[1..9].copy_from_slice(&0u64.to_le_bytes());
        assert!(decode_sequenced(&buf).is_err());
        // A number read from disk can always be incremented.
        buf[1..9].copy_from_slice(&u64::MAX.to_le_bytes());
        buf[9..17].copy_from_slice(&0u64.to_le_bytes());
        assert!(decode_sequenced(&buf).is_err());
    }
}
