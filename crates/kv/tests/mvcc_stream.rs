//! Snapshots written in steps while the store keeps applying
//! (`SnapshotStream`), and compaction freed in chunks across applied
//! entries: the stream's bytes are the snapshot of the store as frozen,
//! a compaction during the stream is detected, and a pending compaction is
//! invisible to reads, hashes and snapshots.

use metalraft_kv::*;

fn put(key: &[u8], value: &[u8]) -> Command {
    Command::Put(PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        ..Default::default()
    })
}

fn delete(key: &[u8]) -> Command {
    Command::DeleteRange(DeleteRangeRequest {
        key: key.to_vec(),
        ..Default::default()
    })
}

fn compact(revision: i64) -> Command {
    Command::Compact(CompactionRequest { revision })
}

fn apply(kv: &mut MvccStore, cmd: &Command) {
    let index = kv.applied_index() + 1;
    kv.apply(index, cmd).expect("command accepted");
}

/// A small deterministic generator (xorshift), so the test needs no crate.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A write of some kind over 40 keys: puts, deletes (single and prefix),
/// transactions, lease grants and leased puts.
fn random_write(rng: &mut Rng, kv: &MvccStore) -> Command {
    let key = format!("k{:02}", rng.below(40)).into_bytes();
    let value = vec![b'v'; rng.below(300) as usize];
    match rng.below(10) {
        0 => delete(&key),
        1 => Command::DeleteRange(DeleteRangeRequest {
            key: b"k1".to_vec(),
            range_end: prefix_end(b"k1"),
            ..Default::default()
        }),
        2 => Command::Txn(TxnRequest {
            compare: vec![],
            success: vec![
                RequestOp::Put(PutRequest {
                    key: b"t1".to_vec(),
                    value: value.clone(),
                    ..Default::default()
                }),
                RequestOp::Put(PutRequest {
                    key: key.clone(),
                    value,
                    ..Default::default()
                }),
            ],
            failure: vec![],
        }),
        3 => Command::LeaseGrant(LeaseGrantRequest { id: 0, ttl: 60 }),
        4 => match kv.leases().next() {
            Some((id, _)) => Command::LeasePut(
                PutRequest {
                    key,
                    value,
                    ..Default::default()
                },
                LeaseOption {
                    lease: id,
                    ignore_lease: false,
                },
            ),
            None => put(&key, &value),
        },
        _ => put(&key, &value),
    }
}

/// Every write, whether the store accepts it or not (a refused delete of a
/// missing key still moves the applied index).
fn apply_any(kv: &mut MvccStore, cmd: &Command) {
    let index = kv.applied_index() + 1;
    let _ = kv.apply(index, cmd);
}

fn build(seed: u64, writes: usize) -> (MvccStore, Rng) {
    let mut kv = MvccStore::new();
    let mut rng = Rng(seed);
    for _ in 0..writes {
        let cmd = random_write(&mut rng, &kv);
        apply_any(&mut kv, &cmd);
    }
    (kv, rng)
}

/// Runs `stream` to the end in steps of `items`, applying one random write
/// of `rng` to `kv` between steps.
fn stream_while_writing(
    stream: &mut SnapshotStream,
    kv: &mut MvccStore,
    rng: &mut Rng,
    items: usize,
) -> Result<Vec<u8>, StreamError> {
    let mut out = Vec::new();
    while !stream.step(kv, items, &mut out)? {
        let cmd = random_write(rng, kv);
        apply_any(kv, &cmd);
    }
    Ok(out)
}

#[test]
fn a_stream_emits_the_frozen_snapshot_while_the_store_keeps_applying() {
    for seed in 1..=20u64 {
        let (mut kv, mut rng) = build(seed, 400);
        if seed % 2 == 0 {
            let cmd = compact(kv.revision() / 2);
            apply(&mut kv, &cmd);
        }
        let frozen = kv.clone();
        let expected = frozen.snapshot();
        let mut stream = kv.snapshot_stream();
        let items = 1 + (seed as usize % 7);
        let got = stream_while_writing(&mut stream, &mut kv, &mut rng, items).unwrap();
        assert_eq!(got, expected, "seed {seed}");
        assert_eq!(stream.emitted(), expected.len() as u64);
        assert!(
            kv.applied_index() > frozen.applied_index(),
            "it applied meanwhile"
        );
        assert_eq!(MvccStore::restore(&got).unwrap(), frozen, "seed {seed}");
        // The leases as frozen, whatever was granted, revoked or attached
        // since.
        let leases: Vec<LeaseInfo> = frozen
            .leases()
            .map(|(id, _)| frozen.lease(id).unwrap())
            .collect();
        assert_eq!(stream.leases().unwrap(), leases, "seed {seed}");

        // A second pass (length first, then the bytes) gives the same bytes.
        stream.rewind();
        let again = stream_while_writing(&mut stream, &mut kv, &mut rng, items).unwrap();
        assert_eq!(again, expected, "seed {seed}, second pass");
    }
}

#[test]
fn a_compaction_during_a_stream_stops_it() {
    let (mut kv, mut rng) = build(7, 300);
    let mut stream = kv.snapshot_stream();
    let mut out = Vec::new();
    assert!(!stream.step(&kv, 3, &mut out).unwrap());
    let cmd = random_write(&mut rng, &kv);
    apply_any(&mut kv, &cmd);
    let cmd = compact(kv.revision() - 10);
    apply(&mut kv, &cmd);
    assert_eq!(stream.step(&kv, 3, &mut out), Err(StreamError::Changed));
    // So does a store that went back (replaced by an older one).
    let older = MvccStore::new();
    let mut stream = kv.snapshot_stream();
    assert_eq!(stream.step(&older, 3, &mut out), Err(StreamError::Changed));
}

/// postmortem-style regression for issue 18: a compaction of a long history
/// ran inside one apply (0.26 s for 500,000 revisions).
#[test]
fn a_large_compaction_is_freed_in_chunks_and_invisible_meanwhile() {
    let mut kv = MvccStore::new();
    let keys = 50;
    for i in 0..(COMPACTION_CHANGES_PER_ENTRY * 20) {
        let key = format!("k{:02}", i % keys).into_bytes();
        apply(&mut kv, &put(&key, format!("{i}").as_bytes()));
        if i % 97 == 0 {
            apply(&mut kv, &delete(&key));
        }
    }
    let size_before = kv.size_bytes();
    let target = kv.revision() - 5;
    apply(&mut kv, &compact(target));
    assert!(kv.is_pruning(), "one entry frees one chunk, not all of it");
    assert_eq!(kv.compact_revision(), target);

    // From the compaction on, the old history is refused and unhashed...
    let old = RangeRequest {
        revision: target - 1,
        ..RangeRequest::single(b"k01")
    };
    assert_eq!(
        kv.range(&old),
        Err(RequestError::Compacted {
            requested: target - 1,
            oldest: target
        })
    );
    assert!(matches!(
        kv.changes(target - 1, b"k", b"\0", 10),
        Err(RequestError::Compacted { .. })
    ));
    // ...exactly as on a member restored from a snapshot, which holds none.
    let restored = MvccStore::restore(&kv.snapshot()).unwrap();
    assert!(!restored.is_pruning());
    for at in [target, target + 2, kv.revision()] {
        assert_eq!(kv.hash_kv(at), restored.hash_kv(at), "hash_kv({at})");
        let all = RangeRequest {
            revision: at,
            ..RangeRequest::prefix(b"k")
        };
        assert_eq!(kv.range(&all), restored.range(&all));
    }
    assert_eq!(
        kv.changes(target, b"k", b"\0", 1000),
        restored.changes(target, b"k", b"\0", 1000)
    );

    // Each later entry frees another chunk, until none is left; then the
    // store is the restored one, byte for byte and in size.
    let mut entries = 0;
    while kv.is_pruning() {
        let index = kv.applied_index() + 1;
        kv.mark_applied(index).unwrap();
        entries += 1;
        assert!(entries < 100, "pruning must finish");
    }
    assert!(entries >= 10, "it took {entries} entries");
    assert!(kv.size_bytes() < size_before / 10);
    let mut restored = restored;
    restored.mark_applied(kv.applied_index()).unwrap();
    assert_eq!(kv, restored);
}

#[test]
fn replicas_applying_the_same_entries_prune_alike() {
    let (mut a, mut rng) = build(3, 2000);
    let mut b = a.clone();
    let cmd = compact(a.revision() - 100);
    apply(&mut a, &cmd);
    apply(&mut b, &cmd);
    while a.is_pruning() {
        let cmd = random_write(&mut rng, &a);
        apply_any(&mut a, &cmd);
        apply_any(&mut b, &cmd);
        assert_eq!(a, b);
        assert_eq!(a.size_bytes(), b.size_bytes());
    }
}

#[test]
fn a_stream_frozen_during_pruning_is_unaffected_by_it() {
    let mut kv = MvccStore::new();
    for i in 0..(COMPACTION_CHANGES_PER_ENTRY * 8) {
        let key = format!("k{:02}", i % 30).into_bytes();
        apply(&mut kv, &put(&key, b"x"));
    }
    let cmd = compact(kv.revision() - 3);
    apply(&mut kv, &cmd);
    assert!(kv.is_pruning());
    let frozen = kv.clone();
    let mut stream = kv.snapshot_stream();
    let mut rng = Rng(11);
    let got = stream_while_writing(&mut stream, &mut kv, &mut rng, 2).unwrap();
    assert!(!kv.is_pruning(), "pruning went on during the stream");
    assert_eq!(got, frozen.snapshot());
}

/// Runs `stream` to the end in steps of `items` like
/// [`stream_while_writing`], keeping each section's bytes apart.
fn sections_while_writing(
    stream: &mut SnapshotStream,
    kv: &mut MvccStore,
    rng: &mut Rng,
    items: usize,
) -> Vec<(Section, Vec<u8>)> {
    let mut out: Vec<(Section, Vec<u8>)> = Vec::new();
    loop {
        let section = stream.section();
        let mut piece = Vec::new();
        let done = stream.step(kv, items, &mut piece).unwrap();
        if !piece.is_empty() {
            let section = section.expect("a step that writes names its section");
            match out.last_mut() {
                Some((s, bytes)) if *s == section => bytes.extend_from_slice(&piece),
                _ => out.push((section, piece)),
            }
        }
        if done {
            return out;
        }
        let cmd = random_write(rng, kv);
        apply_any(kv, &cmd);
    }
}

fn section(parts: &[(Section, Vec<u8>)], which: Section) -> Vec<u8> {
    let found: Vec<&Vec<u8>> = parts
        .iter()
        .filter(|(s, _)| *s == which)
        .map(|(_, b)| b)
        .collect();
    assert!(found.len() <= 1, "{which:?} written in one run of steps");
    found.first().map(|b| b.to_vec()).unwrap_or_default()
}

#[test]
fn a_chainable_snapshot_and_its_deltas_compose_into_the_later_snapshot() {
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    for seed in 1..=12u64 {
        let (mut kv, mut rng) = build(seed, 300);
        if seed % 3 == 0 {
            let cmd = compact(kv.revision() / 2);
            apply(&mut kv, &cmd);
        }
        let items = 1 + (seed as usize % 5);
        // The chainable snapshot: in sections, the same store when restored.
        let frozen = kv.clone();
        let mut full = kv.chainable_snapshot_stream();
        let parts = sections_while_writing(&mut full, &mut kv, &mut rng, items);
        let order: Vec<Section> = parts.iter().map(|(s, _)| *s).collect();
        let mut expected = vec![Section::Prefix, Section::Base, Section::Count];
        if frozen.revision() > frozen.compact_revision().max(1) {
            expected.push(Section::Records);
        }
        expected.push(Section::Tail);
        assert_eq!(order, expected, "seed {seed}");
        let whole: Vec<u8> = parts.iter().flat_map(|(_, b)| b.clone()).collect();
        assert_eq!(MvccStore::restore(&whole).unwrap(), frozen, "seed {seed}");
        assert!(whole.len() > frozen.snapshot().len(), "padded fields");

        // Deltas, each against the chain so far, while writes go on.
        let base = section(&parts, Section::Base);
        let mut records = section(&parts, Section::Records);
        let mut after = frozen.revision();
        for round in 0..3 {
            for _ in 0..(round * 20) {
                let cmd = random_write(&mut rng, &kv);
                apply_any(&mut kv, &cmd);
            }
            let later = kv.clone();
            let mut delta = kv.snapshot_delta_stream(after).unwrap();
            let got = sections_while_writing(&mut delta, &mut kv, &mut rng, items);
            assert!(got.iter().all(|(s, _)| *s == Section::Records));
            records.extend(got.into_iter().flat_map(|(_, b)| b));
            let mut composed = delta.prefix_bytes();
            composed.extend_from_slice(&base);
            composed.extend_from_slice(&delta.count_bytes());
            composed.extend_from_slice(&records);
            composed.extend_from_slice(delta.leases_bytes());
            let sum = crc.checksum(&composed);
            composed.extend_from_slice(&sum.to_le_bytes());
            assert_eq!(
                MvccStore::restore(&composed).unwrap(),
                later,
                "seed {seed} round {round}"
            );
            after = later.revision();
        }
        assert!(kv.snapshot_delta_stream(kv.revision() + 1).is_none());
        assert!(kv.snapshot_delta_stream(-1).is_none());
    }
}

#[test]
fn a_padded_varint_decodes_as_the_number() {
    for n in [
        0u64,
        1,
        127,
        128,
        300,
        u32::MAX as u64,
        i64::MAX as u64,
        u64::MAX,
    ] {
        let bytes = padded_varint(n);
        assert_eq!(bytes.len(), PADDED_VARINT_BYTES);
        assert_eq!(postcard::from_bytes::<u64>(&bytes).unwrap(), n);
    }
}
