//! Power loss on real files: each test writes a WAL through [`Storage`]
//! (real `fdatasync`), keeps the image of the last segment as the last sync
//! left it and as the unsynced writes after it left it, and then builds the
//! image a power cut can leave: the synced prefix intact, and each 512-byte
//! sector of the unsynced region either new or as it was (zeros of the
//! preallocated segment). Recovery must open it, keep every acknowledged
//! entry, and keep nothing that was not written. Mid-log damage (a later
//! frame proves the damaged one was durable) must still be refused.
//!
//! The argument these tests check is in `docs/adr/0014-torn-tail-recovery.md`.

use std::path::{Path, PathBuf};

use metalraft_core::{ConfState, Entry, EntryData, HardState, LogStorage};

use super::codec::{self, FrameRead};
use super::*;

/// The unit a disk writes atomically.
const SECTOR_BYTES: usize = 512;

fn conf() -> ConfState {
    ConfState::with_voters(&[1, 2, 3])
}

fn opts() -> WalOptions {
    WalOptions {
        segment_bytes: 16 * 1024,
    }
}

fn entry(index: u64, len: usize) -> Entry<Vec<u8>> {
    Entry {
        term: 1,
        index,
        data: EntryData::Normal(vec![(index % 251) as u8 | 1; len]),
    }
}

fn batch(index: u64, len: usize) -> WriteBatch {
    WriteBatch {
        entries: vec![entry(index, len)],
        hard_state: Some(HardState {
            term: 1,
            vote: Some(1),
            commit: index.saturating_sub(1),
        }),
        clears_repair: false,
    }
}

/// A WAL cut by power loss: `acked` entries were written and synced one
/// group commit each (so acknowledged), then `unsynced` more were written in
/// one group commit that never synced.
struct PowerCut {
    dir: tempfile::TempDir,
    segment: PathBuf,
    /// The segment as the last sync left it.
    synced: Vec<u8>,
    /// The segment with every unsynced write in place.
    live: Vec<u8>,
    acked: u64,
    written: u64,
}

fn last_segment(dir: &Path) -> PathBuf {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("member/wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v.pop().expect("a segment")
}

/// Offsets of the valid frames of `buf` and where they end.
fn frames(buf: &[u8]) -> (Vec<usize>, usize) {
    let mut pos = 0;
    let mut out = Vec::new();
    while let FrameRead::Frame(_, len) = codec::read_frame(&buf[pos..]) {
        out.push(pos);
        pos += len;
    }
    (out, pos)
}

impl PowerCut {
    fn new(acked: u64, unsynced: u64, len: usize) -> PowerCut {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Storage::open(dir.path(), conf(), opts()).unwrap().storage;
        for i in 1..=acked {
            s.write(&[batch(i, len)], true).unwrap();
        }
        let segment = last_segment(dir.path());
        let synced = std::fs::read(&segment).unwrap();
        let group: Vec<WriteBatch> = (acked + 1..=acked + unsynced)
            .map(|i| batch(i, len))
            .collect();
        s.write(&group, false).unwrap();
        assert_eq!(
            last_segment(dir.path()),
            segment,
            "the test stays in one segment"
        );
        let live = std::fs::read(&segment).unwrap();
        drop(s);
        PowerCut {
            dir,
            segment,
            synced,
            live,
            acked,
            written: acked + unsynced,
        }
    }

    /// Where the synced frames end.
    fn synced_end(&self) -> usize {
        frames(&self.synced).1
    }

    /// Sector numbers the unsynced writes touched.
    fn unsynced_sectors(&self) -> std::ops::Range<usize> {
        let end = frames(&self.live).1;
        self.synced_end() / SECTOR_BYTES..end.div_ceil(SECTOR_BYTES)
    }

    /// The image where sector `n` of the unsynced region reached the disk
    /// iff `landed(n)`.
    fn sectors(&self, landed: impl Fn(usize) -> bool) -> Vec<u8> {
        let mut img = self.synced.clone();
        for n in self.unsynced_sectors() {
            if landed(n) {
                let r = n * SECTOR_BYTES..(n + 1) * SECTOR_BYTES;
                img[r.clone()].copy_from_slice(&self.live[r]);
            }
        }
        img
    }

    /// Puts `img` on disk as the segment and opens the storage.
    fn open(&self, img: &[u8]) -> Result<Opened, StorageError> {
        std::fs::write(&self.segment, img).unwrap();
        Storage::open(self.dir.path(), conf(), opts())
    }

    /// Puts `img` on disk as the segment and opens the bare WAL (which
    /// refuses mid-log damage instead of repairing it).
    fn open_wal(&self, img: &[u8]) -> Result<(Wal, Recovered), StorageError> {
        std::fs::write(&self.segment, img).unwrap();
        Wal::open(&self.dir.path().join("member/wal"), opts())
    }

    /// Opens `img` and checks the recovered log: every acknowledged entry,
    /// then only entries that were written, intact. Returns the open storage.
    fn recovers(&self, img: &[u8], what: &str) -> Opened {
        let o = self
            .open(img)
            .unwrap_or_else(|e| panic!("{what}: a power cut must not stop the member: {e}"));
        let (first, last) = o.storage.log().bounds().unwrap();
        assert_eq!(first, 1, "{what}");
        assert!(
            last >= self.acked,
            "{what}: lost acknowledged entries: last {last}"
        );
        assert!(
            last <= self.written,
            "{what}: invented entries: last {last}"
        );
        let got = o.storage.log().entries(1, last + 1, usize::MAX).unwrap();
        for e in &got {
            assert_eq!(
                e,
                &entry(e.index, entry_len(e)),
                "{what}: entry {}",
                e.index
            );
        }
        o
    }
}

fn entry_len(e: &Entry<Vec<u8>>) -> usize {
    match &e.data {
        EntryData::Normal(d) => d.len(),
        _ => 0,
    }
}

fn assert_corrupt_at<T>(r: Result<T, StorageError>, path: &Path, offset: usize) -> String {
    match r {
        Err(StorageError::Corrupt {
            path: p,
            offset: o,
            reason,
        }) => {
            assert_eq!(p, path);
            assert_eq!(o, offset as u64, "{reason}");
            reason
        }
        Err(e) => panic!("expected Corrupt at {offset}, got {e}"),
        Ok(_) => panic!("expected Corrupt at {offset}, opened"),
    }
}

#[test]
fn power_loss_zero_length_tail_opens_clean() {
    let cut = PowerCut::new(4, 2, 300);
    let o = cut.recovers(&cut.synced, "nothing unsynced landed");
    assert!(o.torn_tail.is_none());
    assert_eq!(o.storage.log().bounds().unwrap(), (1, 4));
}

#[test]
fn power_loss_torn_at_every_byte_of_a_two_frame_unsynced_tail() {
    let cut = PowerCut::new(3, 2, 200);
    let start = cut.synced_end();
    let end = frames(&cut.live).1;
    for keep in 0..=end - start {
        let mut img = cut.synced.clone();
        img[start..start + keep].copy_from_slice(&cut.live[start..start + keep]);
        let o = cut.recovers(&img, &format!("{keep} unsynced bytes landed"));
        let last = o.storage.log().bounds().unwrap().1;
        let (whole, whole_end) = frames(&img);
        assert_eq!(
            last,
            3 + (whole.len() - frames(&cut.synced).0.len()) as u64,
            "keep {keep}"
        );
        // A partial header, partial payload or partial second frame is a
        // torn tail: everything after the last whole frame is dropped.
        let dirty_end = img.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
        assert_eq!(o.torn_tail.is_some(), dirty_end > whole_end, "keep {keep}");
        if let Some((path, offset)) = &o.torn_tail {
            assert_eq!(path, &cut.segment);
            assert_eq!(*offset as usize, whole_end);
            assert_eq!(o.torn_bytes_dropped as usize, dirty_end - whole_end);
        }
    }
}

#[test]
fn power_loss_every_subset_of_unsynced_sectors_recovers() {
    // Frames of ~700 bytes straddle sector boundaries; the group commit
    // spans several sectors, so zeroed sectors fall before, inside and
    // between frames.
    let cut = PowerCut::new(2, 4, 700);
    let sectors = cut.unsynced_sectors();
    assert!(sectors.len() >= 5, "{sectors:?}");
    assert!(sectors.len() <= 12, "exhaustive over {sectors:?}");
    for mask in 0u32..(1 << sectors.len()) {
        let img = cut.sectors(|n| mask & (1 << (n - sectors.start)) != 0);
        let o = cut.recovers(&img, &format!("sector mask {mask:b}"));
        // Recovery keeps exactly the whole frames before the first hole.
        let last = o.storage.log().bounds().unwrap().1;
        assert_eq!(
            last,
            2 + (frames(&img).0.len() - frames(&cut.synced).0.len()) as u64,
            "mask {mask:b}"
        );
        drop(o);
        // The truncation is durable: a second open finds a clean log.
        let again = Storage::open(cut.dir.path(), conf(), opts()).unwrap();
        assert!(again.torn_tail.is_none(), "mask {mask:b}");
        assert_eq!(again.storage.log().bounds().unwrap().1, last);
    }
}

/// The image from issue 20: the sector holding the first unsynced frame's
/// header was lost, a later one landed, and a whole unsynced frame (valid
/// checksum, next sequence number) sits after the zeroed header.
#[test]
fn power_loss_zeroed_header_followed_by_a_valid_unsynced_frame_is_a_torn_tail() {
    let cut = PowerCut::new(3, 3, 40);
    let start = cut.synced_end();
    let (live_frames, live_end) = frames(&cut.live);
    let mut img = cut.live.clone();
    // Lose the first unsynced frame entirely (its sector never landed).
    let second = live_frames[live_frames.iter().position(|o| *o == start).unwrap() + 1];
    img[start..second].fill(0);
    let o = cut.recovers(&img, "zeroed first unsynced frame");
    assert_eq!(o.storage.log().bounds().unwrap(), (1, 3));
    assert_eq!(o.torn_tail, Some((cut.segment.clone(), start as u64)));
    // Counted from the cut, zeroed sector included.
    assert!(second > start);
    assert_eq!(o.torn_bytes_dropped as usize, live_end - start);
    // Appends continue where the tail was cut, and survive a reopen.
    let mut s = o.storage;
    s.write(&[batch(4, 40)], true).unwrap();
    drop(s);
    let o = Storage::open(cut.dir.path(), conf(), opts()).unwrap();
    assert!(o.torn_tail.is_none());
    assert_eq!(o.storage.log().bounds().unwrap(), (1, 4));
}

#[test]
fn power_loss_zeroed_header_followed_by_garbage_is_a_torn_tail() {
    let cut = PowerCut::new(3, 1, 100);
    let start = cut.synced_end();
    let mut img = cut.synced.clone();
    img[start + 8..start + 300].fill(0x5A);
    let o = cut.recovers(&img, "zeroed header then garbage");
    assert_eq!(o.storage.log().bounds().unwrap(), (1, 3));
    assert_eq!(o.torn_bytes_dropped, 300);
}

/// A valid-looking frame from an earlier use of the space (a lower sequence
/// number) proves nothing: it is dropped with the tail.
#[test]
fn power_loss_zeroed_header_followed_by_a_stale_frame_is_a_torn_tail() {
    let cut = PowerCut::new(4, 1, 100);
    let start = cut.synced_end();
    let (fs, _) = frames(&cut.synced);
    let stale = cut.synced[fs[2]..fs[3]].to_vec();
    let mut img = cut.synced.clone();
    img[start + 8..start + 8 + stale.len()].copy_from_slice(&stale);
    let o = cut.recovers(&img, "stale frame after a zeroed header");
    assert_eq!(o.storage.log().bounds().unwrap(), (1, 4));
    assert_eq!(o.torn_tail, Some((cut.segment.clone(), start as u64)));
    drop(o);
    // Directly at the boundary (no zeroed header) it is out of sequence.
    let mut img = cut.synced.clone();
    img[start..start + stale.len()].copy_from_slice(&stale);
    let o = cut.recovers(&img, "stale frame at the boundary");
    assert_eq!(o.storage.log().bounds().unwrap(), (1, 4));
    assert_eq!(o.torn_tail, Some((cut.segment.clone(), start as u64)));
}

/// A flipped bit in an acknowledged frame in the middle of the log: the
/// frames after it were written after it was durable, so it is refused.
#[test]
fn power_loss_bit_flip_mid_log_is_repaired_even_with_a_torn_tail_after_it() {
    let cut = PowerCut::new(6, 2, 100);
    let (fs, _) = frames(&cut.synced);
    let victim = fs[3];
    // Torn tail too: only the first unsynced sector landed.
    let mut img = cut.sectors(|n| n == cut.unsynced_sectors().start);
    img[victim + 30] ^= 0x08;
    let reason = assert_corrupt_at(cut.open_wal(&img), &cut.segment, victim);
    assert!(reason.contains("mid-log damage"), "{reason}");
    // The member itself repairs: the prefix before the damaged frame (the
    // segment start and frames 1..=2 hold entries 1 and 2), a barrier at
    // the highest index any later frame names.
    let o = cut.open(&img).unwrap();
    let d = o.repair.expect("repair");
    assert_eq!(
        (d.path.as_path(), d.offset),
        (cut.segment.as_path(), victim as u64)
    );
    assert_eq!(o.storage.log().bounds().unwrap(), (1, 2));
    // Frames 4..=6 (entries 4..=6) follow the damage; the torn unsynced
    // sector may add entry 7.
    assert!(d.barrier >= 6, "barrier {}", d.barrier);
    assert_eq!(o.repair_barrier, Some(d.barrier));
}

/// The last acknowledged frame is damaged; an unsynced frame written after
/// its sync survived and proves it had been durable.
#[test]
fn power_loss_damaged_last_acked_frame_with_a_later_witness_is_repaired() {
    let cut = PowerCut::new(4, 1, 100);
    let (fs, end) = frames(&cut.synced);
    let victim = *fs.last().unwrap();
    let mut img = cut.live.clone();
    img[end - 3] ^= 0x40;
    let reason = assert_corrupt_at(cut.open_wal(&img), &cut.segment, victim);
    assert!(reason.contains("was durable"), "{reason}");
    // Repaired: entry 4 is lost, the witness (entry 5) sets the barrier.
    let o = cut.open(&img).unwrap();
    assert_eq!(o.storage.log().bounds().unwrap(), (1, 3));
    assert_eq!(o.repair_barrier, Some(5));
}

/// A flip in the last frame with nothing after it cannot be told from a
/// torn write, and is truncated (ADR 0014 says why that is acceptable).
#[test]
fn power_loss_damaged_final_frame_without_a_witness_is_truncated() {
    let cut = PowerCut::new(4, 1, 100);
    let (fs, end) = frames(&cut.synced);
    let mut img = cut.synced.clone();
    img[end - 3] ^= 0x40;
    let o = cut.open(&img).unwrap();
    assert_eq!(o.storage.log().bounds().unwrap(), (1, 3));
    assert_eq!(
        o.torn_tail,
        Some((cut.segment.clone(), *fs.last().unwrap() as u64))
    );
}

/// Every frame of a segment that is not the last was synced before the next
/// segment was created: a torn-looking frame there is corruption.
#[test]
fn power_loss_damage_in_a_non_last_segment_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = Storage::open(dir.path(), conf(), opts()).unwrap().storage;
        for i in 1..=60 {
            s.write(&[batch(i, 300)], true).unwrap();
        }
    }
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir.path().join("member/wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segs.sort();
    assert!(segs.len() >= 2, "{segs:?}");
    let first = &segs[0];
    let mut img = std::fs::read(first).unwrap();
    let (fs, end) = frames(&img);
    let victim = *fs.last().unwrap();
    // Zero the second half of its last frame, exactly as a torn write looks.
    img[victim + (end - victim) / 2..end].fill(0);
    std::fs::write(first, &img).unwrap();
    let reason = assert_corrupt_at(
        Wal::open(&dir.path().join("member/wal"), opts()),
        first,
        victim,
    );
    assert!(reason.contains("not the last"), "{reason}");
    // Repaired: the later segments are deleted, the barrier is the last
    // entry they held.
    let o = Storage::open(dir.path(), conf(), opts()).unwrap();
    let d = o.repair.clone().expect("repair");
    assert_eq!(d.segments_dropped, segs.len() - 1);
    assert_eq!(d.barrier, 60);
    let (_, last) = o.storage.log().bounds().unwrap();
    assert!(last < 60 && last == d.kept_last_index, "{last} {d:?}");
    drop(o);
    let left = std::fs::read_dir(dir.path().join("member/wal"))
        .unwrap()
        .count();
    assert_eq!(left, 1);
}

/// A new segment whose start frame was torn: nothing in it was written
/// after, so it is rewritten and the log continues from the previous one.
#[test]
fn power_loss_torn_segment_start_is_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let mut last_acked = 0;
    {
        let mut s = Storage::open(dir.path(), conf(), opts()).unwrap().storage;
        let first = last_segment(dir.path());
        while last_segment(dir.path()) == first {
            last_acked += 1;
            s.write(&[batch(last_acked, 300)], true).unwrap();
        }
    }
    // The frame that did not fit went into the new segment after its start.
    let seg = last_segment(dir.path());
    let mut img = std::fs::read(&seg).unwrap();
    let (fs, end) = frames(&img);
    assert_eq!(fs.len(), 2, "start frame plus one batch");
    // Pretend the start frame was the unsynced one: tear it, drop the rest.
    img[fs[1]..end].fill(0);
    img[fs[0] + 4..fs[1]].fill(0);
    std::fs::write(&seg, &img).unwrap();
    let o = Storage::open(dir.path(), conf(), opts()).unwrap();
    assert_eq!(o.torn_tail, Some((seg.clone(), 0)));
    assert_eq!(o.storage.log().bounds().unwrap(), (1, last_acked - 1));
    let mut s = o.storage;
    s.write(&[batch(last_acked, 300)], true).unwrap();
    drop(s);
    let o = Storage::open(dir.path(), conf(), opts()).unwrap();
    assert!(o.torn_tail.is_none());
    assert_eq!(o.storage.log().bounds().unwrap(), (1, last_acked));
}

/// A WAL written by metalraft 0.1.x (unsequenced frames) still opens, and
/// new frames go to a new, sequenced segment.
#[test]
fn power_loss_format_1_wal_opens_and_new_frames_are_sequenced() {
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("member/wal");
    std::fs::create_dir_all(&wal).unwrap();
    let mut img = Vec::new();
    let start = codec::Record::SegmentStart {
        first_index: 1,
        prev_term: 0,
        hard_state: HardState::default(),
    };
    for rec in [start]
        .into_iter()
        .chain((1..=3).map(|i| codec::Record::Batch {
            entries: vec![entry(i, 50)],
            hard_state: batch(i, 50).hard_state,
        }))
    {
        let mut p = Vec::new();
        codec::encode_record(&rec, &mut p).unwrap();
        codec::encode_frame(&p, &mut img);
    }
    img.resize(8192, 0);
    let seg0 = wal.join("0000000000000000-0000000000000001.wal");
    std::fs::write(&seg0, &img).unwrap();
    let o = Storage::open(dir.path(), conf(), opts()).unwrap();
    assert_eq!(o.storage.log().bounds().unwrap(), (1, 3));
    let mut s = o.storage;
    s.write(&[batch(4, 50)], true).unwrap();
    drop(s);
    let seg = last_segment(dir.path());
    assert_ne!(seg, seg0, "a new segment for sequenced frames");
    let buf = std::fs::read(&seg).unwrap();
    let (fs, _) = frames(&buf);
    for o in fs {
        let FrameRead::Frame(p, _) = codec::read_frame(&buf[o..]) else {
            unreachable!()
        };
        assert!(codec::decode_sequenced(p).unwrap().1.is_some());
    }
    let o = Storage::open(dir.path(), conf(), opts()).unwrap();
    assert_eq!(o.storage.log().bounds().unwrap(), (1, 4));
}

fn snap(index: u64) -> Snapshot {
    Snapshot {
        index,
        term: 1,
        conf_state: conf(),
        data: vec![index as u8; 2000],
    }
}

/// Two snapshots and a log purged below the older one; then the newer
/// snapshot file is damaged (`garble`).
fn two_snapshots(purge_below: u64, garble: impl Fn(&mut Vec<u8>)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = Storage::open(dir.path(), conf(), opts()).unwrap().storage;
        for i in 1..=120 {
            s.write(&[batch(i, 300)], true).unwrap();
        }
        s.save_snapshot(&snap(60), None).unwrap();
        s.save_snapshot(&snap(110), Some(purge_below)).unwrap();
    }
    let newest = dir
        .path()
        .join("member/snap")
        .join(format!("{:016x}-{:016x}.snap", 1, 110));
    let mut bytes = std::fs::read(&newest).unwrap();
    garble(&mut bytes);
    std::fs::write(&newest, bytes).unwrap();
    (dir, newest)
}

#[test]
fn power_loss_damaged_newest_snapshot_falls_back_to_the_older_one() {
    for (what, garble) in [
        (
            "flipped bit",
            Box::new(|b: &mut Vec<u8>| b[700] ^= 1) as Box<dyn Fn(&mut Vec<u8>)>,
        ),
        ("cut short", Box::new(|b: &mut Vec<u8>| b.truncate(1000))),
        (
            "zeroed sectors",
            Box::new(|b: &mut Vec<u8>| b[512..1536].fill(0)),
        ),
    ] {
        let (dir, newest) = two_snapshots(61, garble);
        let o = Storage::open(dir.path(), conf(), opts()).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(o.snapshot.as_ref().map(|s| s.index), Some(60), "{what}");
        let log = o.storage.log();
        let (first, last) = log.bounds().unwrap();
        assert!(first <= 61 && last == 120, "{what}: {first}..{last}");
        assert!(!newest.exists(), "{what}: set aside");
        drop(o);
        // A later save keeps the good older snapshot and the new one.
        let mut s = Storage::open(dir.path(), conf(), opts()).unwrap().storage;
        s.save_snapshot(&snap(115), None).unwrap();
        drop(s);
        let o = Storage::open(dir.path(), conf(), opts()).unwrap();
        assert_eq!(o.snapshot.as_ref().map(|s| s.index), Some(115), "{what}");
    }
}

/// If the log no longer holds the entries between the older snapshot and
/// the damaged newer one, falling back would lose them: refuse, naming the
/// damaged snapshot.
#[test]
fn power_loss_damaged_newest_snapshot_without_log_cover_is_refused() {
    let (dir, newest) = two_snapshots(111, |b| b[700] ^= 1);
    match Storage::open(dir.path(), conf(), opts()) {
        Err(StorageError::Corrupt { path, reason, .. }) => {
            assert_eq!(path, newest, "{reason}");
            assert!(reason.contains("checksum"), "{reason}");
        }
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("expected Corrupt, opened"),
    }
    assert!(newest.exists(), "left in place for the operator");
}

/// The last acknowledged frame held a new term and vote and rots at rest
/// with nothing after it: the WAL cannot tell it from a torn write and drops
/// it, but the vote record still has the term and vote, so the member can
/// never vote twice in that term.
#[test]
fn power_loss_vote_survives_a_truncated_wal_tail() {
    let dir = tempfile::tempdir().unwrap();
    let voted = HardState {
        term: 5,
        vote: Some(2),
        commit: 3,
    };
    {
        let mut s = Storage::open(dir.path(), conf(), opts()).unwrap().storage;
        for i in 1..=4 {
            s.write(&[batch(i, 100)], true).unwrap();
        }
        s.write(
            &[WriteBatch {
                entries: Vec::new(),
                hard_state: Some(voted),
                clears_repair: false,
            }],
            true,
        )
        .unwrap();
    }
    let seg = last_segment(dir.path());
    let mut img = std::fs::read(&seg).unwrap();
    let (_, end) = frames(&img);
    img[end - 5] ^= 0x10;
    std::fs::write(&seg, &img).unwrap();
    let o = Storage::open(dir.path(), conf(), opts()).unwrap();
    assert!(
        o.torn_tail.is_some(),
        "the damaged final frame is truncated"
    );
    let hs = o.storage.log().hard_state().unwrap();
    assert_eq!((hs.term, hs.vote), (5, Some(2)), "{hs:?}");
    assert_eq!(o.storage.log().bounds().unwrap(), (1, 4));
    drop(o);
    // The WAL was brought up to date too: the record alone is no longer needed.
    std::fs::remove_file(dir.path().join("member/vote")).unwrap();
    let o = Storage::open(dir.path(), conf(), opts()).unwrap();
    let hs = o.storage.log().hard_state().unwrap();
    assert_eq!((hs.term, hs.vote), (5, Some(2)));
}

/// A crash between the WAL's sync and the vote record's leaves the record
/// behind; the WAL wins and the record catches up.
#[test]
fn power_loss_vote_record_behind_the_wal_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = Storage::open(dir.path(), conf(), opts()).unwrap().storage;
        s.write(&[batch(1, 10)], true).unwrap();
    }
    let vote = dir.path().join("member/vote");
    let before = std::fs::read(&vote).unwrap();
    {
        let mut s = Storage::open(dir.path(), conf(), opts()).unwrap().storage;
        s.write(
            &[WriteBatch {
                entries: Vec::new(),
                hard_state: Some(HardState {
                    term: 4,
                    vote: Some(3),
                    commit: 0,
                }),
                clears_repair: false,
            }],
            true,
        )
        .unwrap();
    }
    std::fs::write(&vote, before).unwrap();
    let o = Storage::open(dir.path(), conf(), opts()).unwrap();
    let hs = o.storage.log().hard_state().unwrap();
    assert_eq!((hs.term, hs.vote), (4, Some(3)));
    drop(o);
    let img = std::fs::read(&vote).unwrap();
    let mut both_damaged = img.clone();
    both_damaged[0] ^= 1;
    both_damaged[vote::FILE_BYTES / 2] ^= 1;
    std::fs::write(&vote, both_damaged).unwrap();
    match Storage::open(dir.path(), conf(), opts()) {
        Err(StorageError::Corrupt { path, reason, .. }) => {
            assert_eq!(path, vote);
            assert!(reason.contains("both copies"), "{reason}");
        }
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("a lost vote must refuse to start"),
    }
}

/// A small deterministic generator (the test's seed replays a run).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// Rounds of: recover, acknowledge a few group commits (each synced, with
/// a new term and vote), write one unsynced group commit, cut power so that
/// a random subset of the unsynced sectors lands. Every round must recover
/// every acknowledged entry, the acknowledged term and vote, and nothing
/// that was not written.
#[test]
fn power_loss_repeated_random_cuts_keep_every_acknowledged_entry() {
    const SEEDS: u64 = 24;
    const ROUNDS: u64 = 5;
    for seed in 1..=SEEDS {
        let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let dir = tempfile::tempdir().unwrap();
        let mut lens: std::collections::BTreeMap<u64, usize> = Default::default();
        let mut acked_last = 0u64;
        let mut acked_hs = HardState::default();
        let mut cuts = 0;
        for round in 1..=ROUNDS {
            let what = format!("seed {seed} round {round}");
            let o =
                Storage::open(dir.path(), conf(), opts()).unwrap_or_else(|e| panic!("{what}: {e}"));
            let mut s = o.storage;
            let log = s.log();
            let (first, last) = log.bounds().unwrap();
            assert_eq!(first, 1, "{what}");
            assert!(
                last >= acked_last,
                "{what}: lost acknowledged entries ({last} < {acked_last})"
            );
            for e in log.entries(1, last + 1, usize::MAX).unwrap() {
                assert_eq!(
                    Some(&entry_len(&e)),
                    lens.get(&e.index),
                    "{what}: entry {}",
                    e.index
                );
                assert_eq!(e, entry(e.index, entry_len(&e)), "{what}");
            }
            // The acknowledged term and vote, or the unsynced ones of the
            // previous round if the frame holding them landed whole.
            let hs = log.hard_state().unwrap();
            let unsynced = (round - 1 + 100, Some(9));
            assert!(
                (hs.term, hs.vote) == (acked_hs.term, acked_hs.vote)
                    || (round > 1 && (hs.term, hs.vote) == unsynced),
                "{what}: {hs:?}, acknowledged {acked_hs:?}"
            );
            let mut next = last + 1;
            for _ in 0..rng.range(1, 4) {
                let len = rng.range(1, 900) as usize;
                let hs = HardState {
                    term: round,
                    vote: Some(rng.range(1, 3)),
                    commit: next - 1,
                };
                s.write(
                    &[WriteBatch {
                        entries: vec![entry(next, len)],
                        hard_state: Some(hs),
                        clears_repair: false,
                    }],
                    true,
                )
                .unwrap();
                lens.insert(next, len);
                acked_last = next;
                acked_hs = hs;
                next += 1;
            }
            let seg = last_segment(dir.path());
            let synced = std::fs::read(&seg).unwrap();
            let group: Vec<WriteBatch> = (next..next + rng.range(1, 5))
                .map(|i| {
                    let len = rng.range(1, 900) as usize;
                    lens.insert(i, len);
                    WriteBatch {
                        entries: vec![entry(i, len)],
                        // An unsynced higher term and vote: never promised.
                        hard_state: Some(HardState {
                            term: round + 100,
                            vote: Some(9),
                            commit: i - 1,
                        }),
                        clears_repair: false,
                    }
                })
                .collect();
            s.write(&group, false).unwrap();
            drop(s);
            if last_segment(dir.path()) != seg {
                // The group rotated (which syncs): no cut this round.
                continue;
            }
            let live = std::fs::read(&seg).unwrap();
            let mut img = synced.clone();
            for n in 0..img.len() / SECTOR_BYTES {
                let r = n * SECTOR_BYTES..(n + 1) * SECTOR_BYTES;
                if synced[r.clone()] != live[r.clone()] && rng.next().is_multiple_of(2) {
                    img[r.clone()].copy_from_slice(&live[r]);
                }
            }
            std::fs::write(&seg, &img).unwrap();
            cuts += 1;
        }
        assert!(cuts >= 2, "seed {seed}: only {cuts} cuts");
    }
}
