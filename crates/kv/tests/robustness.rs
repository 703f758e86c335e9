//! Snapshot determinism and round trips, and decoders fed arbitrary bytes.

use metalraft_kv::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

mod strategies;
use strategies::command;

fn config(cases: u32) -> Config {
    Config {
        rng_seed: RngSeed::Fixed(0x736e_6170),
        failure_persistence: None,
        ..Config::with_cases(cases)
    }
}

/// Applies `cmds` at indices 1, 2, ... and returns every outcome.
fn run(
    kv: &mut KvStore,
    first_index: u64,
    cmds: &[Command],
) -> Vec<Result<CommandResult, ApplyError>> {
    cmds.iter()
        .zip(first_index..)
        .map(|(cmd, index)| kv.apply(index, cmd))
        .collect()
}

/// CRC-32C as the snapshot format specifies it, computed here independently
/// (bitwise, reflected polynomial 0x82F63B78) to frame hand-made bodies.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn frame_snapshot(body: &[u8]) -> Vec<u8> {
    let mut out = SNAPSHOT_MAGIC.to_vec();
    out.push(FORMAT_VERSION);
    out.extend_from_slice(body);
    let crc = crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

#[test]
fn snapshot_checksum_is_crc32c() {
    // The standard CRC-32C check value.
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    let bytes = KvStore::new().snapshot();
    let (covered, crc) = bytes.split_at(bytes.len() - 4);
    assert_eq!(crc, crc32c(covered).to_le_bytes());
}

/// One key as written in a snapshot body: key, create, mod, version, value.
type RawKv<'a> = (&'a [u8], i64, i64, i64, &'a [u8]);

/// Writes a snapshot body by hand, field by field, in the documented layout.
fn body(revision: i64, compact: i64, applied: u64, kvs: &[RawKv<'_>]) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        revision: i64,
        compact_revision: i64,
        applied_index: u64,
        kvs: Vec<RawKv<'a>>,
    }
    postcard::to_allocvec(&Body {
        revision,
        compact_revision: compact,
        applied_index: applied,
        kvs: kvs.to_vec(),
    })
    .unwrap()
}

#[test]
fn hand_made_snapshot_is_accepted_and_inconsistent_ones_refused() {
    let good = frame_snapshot(&body(
        5,
        2,
        9,
        &[(b"a", 2, 4, 2, b"x"), (b"b", 5, 5, 1, b"")],
    ));
    let kv = KvStore::restore(&good).unwrap();
    assert_eq!(
        (
            kv.revision(),
            kv.compact_revision(),
            kv.applied_index(),
            kv.len()
        ),
        (5, 2, 9, 2)
    );
    assert_eq!(kv.snapshot(), good, "the documented layout is the real one");
    let bad: [Vec<u8>; 9] = [
        body(0, 0, 0, &[]),                                           // revision below 1
        body(5, 6, 0, &[]),                                           // compact ahead of revision
        body(5, 0, 0, &[(b"b", 2, 2, 1, b""), (b"a", 3, 3, 1, b"")]), // keys out of order
        body(5, 0, 0, &[(b"a", 2, 2, 1, b""), (b"a", 3, 3, 1, b"")]), // duplicate key
        body(5, 0, 0, &[(b"", 2, 2, 1, b"")]),                        // empty key
        body(5, 0, 0, &[(b"a", 2, 6, 1, b"")]),                       // mod after revision
        body(5, 0, 0, &[(b"a", 4, 3, 1, b"")]),                       // mod before create
        body(5, 0, 0, &[(b"a", 2, 3, 3, b"")]),                       // too many versions
        body(5, 0, 0, &[(b"a", 1, 1, 1, b"")]),                       // created at revision 1
    ];
    for (i, b) in bad.iter().enumerate() {
        assert_eq!(
            KvStore::restore(&frame_snapshot(b)),
            Err(SnapshotError::Inconsistent),
            "case {i}"
        );
    }
    let mut trailing = body(5, 0, 0, &[]);
    trailing.push(0);
    assert_eq!(
        KvStore::restore(&frame_snapshot(&trailing)),
        Err(SnapshotError::Malformed)
    );
    assert_eq!(
        KvStore::restore(&frame_snapshot(&[1, 2])),
        Err(SnapshotError::Malformed)
    );
}

proptest! {
    #![proptest_config(config(128))]

    /// Replicas applying the same entries write byte-identical snapshots.
    #[test]
    fn snapshots_are_deterministic(cmds in prop::collection::vec(command(), 0..40)) {
        let mut a = KvStore::new();
        let mut b = KvStore::new();
        let ra = run(&mut a, 1, &cmds);
        let rb = run(&mut b, 1, &cmds);
        prop_assert_eq!(ra, rb);
        prop_assert_eq!(a.snapshot(), b.snapshot());
        prop_assert_eq!(a.hash(), b.hash());
    }

    /// A store restored mid-way behaves exactly like one that never stopped.
    #[test]
    fn restore_then_continue_is_identical(
        cmds in prop::collection::vec(command(), 0..40),
        split in any::<prop::sample::Index>(),
    ) {
        let split = split.index(cmds.len() + 1);
        let mut straight = KvStore::new();
        run(&mut straight, 1, &cmds[..split]);
        let bytes = straight.snapshot();
        let mut restored = KvStore::restore(&bytes).unwrap();
        prop_assert_eq!(&restored, &straight);
        prop_assert_eq!(restored.snapshot(), bytes);
        prop_assert_eq!(restored.size_bytes(), straight.size_bytes());
        // Replaying the whole log over the snapshot skips what it covers.
        for (cmd, index) in cmds[..split].iter().zip(1u64..) {
            let stale = restored.apply(index, cmd);
            prop_assert!(matches!(stale, Err(ApplyError::AlreadyApplied { .. })), "{:?}", stale);
        }
        let first = split as u64 + 1;
        prop_assert_eq!(
            run(&mut restored, first, &cmds[split..]),
            run(&mut straight, first, &cmds[split..])
        );
        prop_assert_eq!(restored.snapshot(), straight.snapshot());
    }

    /// Any damage to a snapshot is refused: CRC-32C catches every burst
    /// error up to 32 bits.
    #[test]
    fn damaged_snapshot_is_refused(
        cmds in prop::collection::vec(command(), 0..20),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let mut kv = KvStore::new();
        run(&mut kv, 1, &cmds);
        let mut bytes = kv.snapshot();
        let i = at.index(bytes.len());
        bytes[i] ^= flip;
        prop_assert!(KvStore::restore(&bytes).is_err());
    }

    /// Every command encodes; it decodes back exactly when it is valid.
    #[test]
    fn command_encoding_round_trips(cmd in command()) {
        let decoded = Command::decode(&cmd.encode());
        match cmd.validate() {
            Ok(()) => prop_assert_eq!(decoded, Ok(cmd)),
            Err(e) => prop_assert_eq!(decoded, Err(DecodeError::Invalid(e))),
        }
    }

    /// Every result encodes and decodes back exactly.
    #[test]
    fn result_encoding_round_trips(cmds in prop::collection::vec(command(), 1..20)) {
        let mut kv = KvStore::new();
        for result in run(&mut kv, 1, &cmds).into_iter().flatten() {
            prop_assert_eq!(CommandResult::decode(&result.encode()), Ok(result));
        }
    }
}

proptest! {
    #![proptest_config(config(2048))]

    /// Arbitrary bytes into every decoder: an error or a value, never a panic.
    #[test]
    fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Command::decode(&bytes);
        let _ = CommandResult::decode(&bytes);
        let _ = KvStore::restore(&bytes);
        // Past the version byte, so the body parser sees the bytes.
        let mut versioned = vec![FORMAT_VERSION];
        versioned.extend_from_slice(&bytes);
        if let Ok(cmd) = Command::decode(&versioned) {
            prop_assert_eq!(cmd.validate(), Ok(()));
        }
        let _ = CommandResult::decode(&versioned);
        // Past the checksum, so the snapshot body parser and checks see them.
        if let Ok(kv) = KvStore::restore(&frame_snapshot(&bytes)) {
            prop_assert_eq!(KvStore::restore(&kv.snapshot()), Ok(kv));
        }
    }

    /// Valid encodings, then damaged: flipped, cut short or lengthened.
    #[test]
    fn damaged_encodings_never_panic(
        cmd in command(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        how in 0u8..3,
    ) {
        let mut bytes = cmd.encode();
        let i = at.index(bytes.len());
        match how {
            0 => bytes[i] = byte,
            1 => bytes.truncate(i),
            _ => bytes.insert(i, byte),
        }
        if let Ok(decoded) = Command::decode(&bytes) {
            prop_assert_eq!(decoded.validate(), Ok(()));
        }
        let _ = CommandResult::decode(&bytes);
    }
}

#[test]
fn exhausted_revision_counter_refuses_writes_without_panicking() {
    let snap = frame_snapshot(&body(
        i64::MAX,
        0,
        1,
        &[(b"a", i64::MAX, i64::MAX, 1, b"v")],
    ));
    let mut kv = KvStore::restore(&snap).unwrap();
    let put = Command::Put(PutRequest {
        key: b"a".to_vec(),
        value: b"w".to_vec(),
        ..Default::default()
    });
    let exhausted = Err(ApplyError::Rejected(RequestError::RevisionExhausted));
    assert_eq!(kv.apply(2, &put), exhausted);
    let write_txn = Command::Txn(TxnRequest {
        success: vec![RequestOp::DeleteRange(DeleteRangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        })],
        ..Default::default()
    });
    assert_eq!(kv.apply(3, &write_txn), exhausted);
    let read_txn = Command::Txn(TxnRequest {
        success: vec![RequestOp::Range(RangeRequest::single(b"a"))],
        ..Default::default()
    });
    assert!(kv.apply(4, &read_txn).is_ok());
    assert_eq!(kv.revision(), i64::MAX);
    assert_eq!(
        kv.range(&RangeRequest::single(b"a")).unwrap().kvs[0].value,
        b"v"
    );
}
