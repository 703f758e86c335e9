//! The server's storage readers on arbitrary bytes: WAL frames and record
//! payloads (`storage::codec`), snapshot files (`storage::snapshot`), a
//! whole data directory opened by `Storage::open` (WAL segment replay,
//! snapshot loading, the in-memory log the core reads), and backup files
//! (`backup::read`). Damaged or foreign bytes must give an error, never a
//! panic or an unbounded allocation; whatever decodes must re-encode to
//! itself; a data directory that opens must give a log the core can start
//! on, or a clear refusal.
//!
//! Records and snapshots can be generated with valid checksums, so the
//! fuzzer reaches the replay logic behind them.

use std::fs;
use std::path::Path;

use arbitrary::Arbitrary;
use metalraft::backup;
use metalraft::storage::codec::{self, FrameRead, Record};
use metalraft::storage::snapshot::{self, Snapshot};
use metalraft::storage::{Storage, WalOptions};
use metalraft_core::{
    ConfChange, ConfChangeOp, ConfState, Config, Entry, EntryData, HardState, LogStorage, Node,
    MAX_TERM_OR_INDEX,
};

/// A data directory: an optional snapshot file and WAL segments.
#[derive(Arbitrary, Debug)]
struct DirInput {
    snapshot: Option<SnapFile>,
    segments: Vec<Segment>,
}

/// A number from a small range, or an extreme one (to find overflows).
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Num {
    Small(u8),
    Zero,
    Max,
    AboveLimit,
    Huge(u64),
}

impl Num {
    fn get(self) -> u64 {
        match self {
            Num::Small(n) => u64::from(n % 16),
            Num::Zero => 0,
            Num::Max => u64::MAX,
            Num::AboveLimit => MAX_TERM_OR_INDEX + 1,
            Num::Huge(n) => n,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct ArbHardState {
    term: Num,
    vote: Num,
    commit: Num,
}

impl ArbHardState {
    fn get(&self) -> HardState {
        let vote = self.vote.get();
        HardState {
            term: self.term.get(),
            vote: (vote != 0).then_some(vote),
            commit: self.commit.get(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum SnapFile {
    Raw(Vec<u8>),
    Encoded {
        index: Num,
        term: Num,
        voters: Vec<u8>,
        data: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug)]
enum Segment {
    /// Bytes as they are.
    Raw(Vec<u8>),
    /// Well-framed records, then `tail` (a torn or damaged end).
    Records { records: Vec<Rec>, tail: Vec<u8> },
}

#[derive(Arbitrary, Debug)]
enum Rec {
    /// An arbitrary payload in a frame with a correct checksum.
    Payload(Vec<u8>),
    Start {
        first_index: Num,
        prev_term: Num,
        hard_state: ArbHardState,
    },
    Batch {
        first_index: Num,
        entries: Vec<(Num, u8)>,
        hard_state: Option<ArbHardState>,
    },
}

fn entry_data(d: u8) -> EntryData<Vec<u8>> {
    match d % 3 {
        0 => EntryData::Noop,
        1 => EntryData::Normal(vec![d; usize::from(d % 7)]),
        _ => EntryData::ConfChange(Box::new(ConfChange::new(&[ConfChangeOp::AddLearner(
            u64::from(d),
        )]))),
    }
}

impl Rec {
    fn payload(&self) -> Vec<u8> {
        let rec = match self {
            Rec::Payload(p) => return p.clone(),
            Rec::Start {
                first_index,
                prev_term,
                hard_state,
            } => Record::SegmentStart {
                first_index: first_index.get(),
                prev_term: prev_term.get(),
                hard_state: hard_state.get(),
            },
            Rec::Batch {
                first_index,
                entries,
                hard_state,
            } => Record::Batch {
                entries: entries
                    .iter()
                    .take(16)
                    .enumerate()
                    .filter_map(|(i, (term, d))| {
                        Some(Entry {
                            term: term.get(),
                            index: first_index.get().checked_add(i as u64)?,
                            data: entry_data(*d),
                        })
                    })
                    .collect(),
                hard_state: hard_state.as_ref().map(ArbHardState::get),
            },
        };
        let mut out = Vec::new();
        codec::encode_record(&rec, &mut out).expect("encodes");
        out
    }
}

// Input: one mode byte, then
// - `0`: `read_frame`, then `decode_record`, on the bytes;
// - `1`: `snapshot::decode` on the bytes;
// - `2`: `snapshot::decode` on the bytes as a payload with a correct
//   header and checksum;
// - `3`: a backup file (`etcdctl snapshot save`) of the bytes, padded to
//   pages, read without the SHA-256 check (no mutated input passes it);
// - `4`: a data directory whose only WAL segment is the bytes;
// - `5`: a data directory described by [`DirInput`] (records framed with
//   correct checksums, a snapshot file, several segments).
/// The target: one input of raw bytes, checked.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 6 {
        0 => frame(rest),
        1 => snapshot_bytes(rest),
        2 => snapshot_bytes(&snapshot_file(rest)),
        3 => backup_file(rest),
        4 => dir(None, vec![Segment::Raw(rest.to_vec())]),
        _ => {
            let u = arbitrary::Unstructured::new(rest);
            if let Ok(d) = DirInput::arbitrary_take_rest(u) {
                dir(d.snapshot, d.segments);
            }
        }
    }
}

fn frame(bytes: &[u8]) {
    if let FrameRead::Frame(payload, len) = codec::read_frame(bytes) {
        assert!(len <= bytes.len());
        let mut again = Vec::new();
        codec::encode_frame(payload, &mut again);
        assert_eq!(&again[..], &bytes[..len]);
    }
    if let Ok(rec) = codec::decode_record(bytes) {
        let mut again = Vec::new();
        codec::encode_record(&rec, &mut again).expect("encodes");
        assert_eq!(codec::decode_record(&again).as_ref(), Ok(&rec));
    }
}

/// A snapshot file around `payload`: magic, checksum and length correct.
fn snapshot_file(payload: &[u8]) -> Vec<u8> {
    let mut out = b"MRSNAP01".to_vec();
    out.extend_from_slice(&crc32c(payload).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn crc32c(bytes: &[u8]) -> u32 {
    const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    CRC32C.checksum(bytes)
}

fn snapshot_bytes(bytes: &[u8]) {
    if let Ok(s) = snapshot::decode(bytes) {
        let encoded = snapshot::encode(&s).expect("encodes");
        assert_eq!(snapshot::decode(&encoded).as_ref(), Ok(&s));
    }
}

fn scratch_dir() -> tempfile::TempDir {
    // tmpfs when there is one: every input writes a few files.
    let shm = Path::new("/dev/shm");
    let b = tempfile::Builder::new();
    if shm.is_dir() {
        if let Ok(d) = b.tempdir_in(shm) {
            return d;
        }
    }
    b.tempdir().expect("temporary directory")
}

fn dir(snap: Option<SnapFile>, segments: Vec<Segment>) {
    let tmp = scratch_dir();
    let member = tmp.path().join("member");
    let wal_dir = member.join("wal");
    let snap_dir = member.join("snap");
    fs::create_dir_all(&wal_dir).expect("mkdir");
    fs::create_dir_all(&snap_dir).expect("mkdir");
    if let Some(s) = snap {
        let (name, bytes) = match s {
            SnapFile::Raw(b) => ("0000000000000001-0000000000000001.snap".to_string(), b),
            SnapFile::Encoded {
                index,
                term,
                voters,
                data,
            } => {
                let s = Snapshot {
                    index: index.get(),
                    term: term.get(),
                    conf_state: ConfState::with_voters(
                        &voters
                            .iter()
                            .take(5)
                            .map(|&v| u64::from(v))
                            .collect::<Vec<_>>(),
                    ),
                    data,
                };
                (
                    format!("{:016x}-{:016x}.snap", s.term, s.index),
                    snapshot::encode(&s).expect("encodes"),
                )
            }
        };
        fs::write(snap_dir.join(name), bytes).expect("write snapshot");
    }
    for (seq, seg) in segments.iter().take(3).enumerate() {
        let bytes = match seg {
            Segment::Raw(b) => b.clone(),
            Segment::Records { records, tail } => {
                let mut out = Vec::new();
                for r in records.iter().take(16) {
                    codec::encode_frame(&r.payload(), &mut out);
                }
                out.extend_from_slice(tail);
                out
            }
        };
        let name = format!("{seq:016x}-{:016x}.wal", 1);
        fs::write(wal_dir.join(name), bytes).expect("write segment");
    }
    let opts = WalOptions {
        segment_bytes: metalraft::storage::wal::MIN_SEGMENT_BYTES,
    };
    let Ok(opened) = Storage::open(tmp.path(), ConfState::with_voters(&[1, 2, 3]), opts) else {
        return;
    };
    let log = opened.storage.log();
    // Whatever opened, the core reads it without panicking...
    let Ok((first, last)) = log.bounds() else {
        return;
    };
    let _ = log.hard_state();
    for i in [
        0,
        first.saturating_sub(1),
        first,
        last,
        last.saturating_add(1),
    ] {
        let _ = log.term_of(i);
    }
    let _ = LogStorage::<Vec<u8>>::entries(&log, first, last.saturating_add(1), 1 << 20);
    // ...and the core either starts on it or refuses it with an error.
    let _ = Node::new(Config::new(1), log, 0);
}

fn backup_file(body: &[u8]) {
    // The reader needs whole 512-byte pages plus a 32-byte digest.
    let page = metalraft::api::SNAPSHOT_PAGE_BYTES;
    let mut bytes = body.to_vec();
    bytes.resize(body.len().div_ceil(page).max(1) * page, 0);
    bytes.extend_from_slice(&[0u8; backup::DIGEST_BYTES]);
    let tmp = scratch_dir();
    let path = tmp.path().join("backup.db");
    fs::write(&path, &bytes).expect("write backup");
    if let Ok((store, info)) = backup::read(&path, false) {
        assert_eq!(info.total_keys, store.len());
        assert_eq!(info.revision, store.revision());
    }
}
