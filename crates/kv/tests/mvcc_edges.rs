//! Edge cases of the MVCC store: re-creation after delete, compaction onto
//! tombstones and onto the current revision, old snapshots, damaged bytes,
//! hashes and sizes across snapshot and compaction.

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

/// Applies each command at the next index, all of them accepted.
fn run(kv: &mut MvccStore, cmds: &[Command]) {
    for cmd in cmds {
        let index = kv.applied_index() + 1;
        kv.apply(index, cmd).expect("command accepted");
    }
}

fn get_at(kv: &MvccStore, key: &[u8], revision: i64) -> Result<RangeResponse, RequestError> {
    kv.range(&RangeRequest {
        revision,
        ..RangeRequest::single(key)
    })
}

fn one_at(kv: &MvccStore, key: &[u8], revision: i64) -> Option<KeyValue> {
    get_at(kv, key, revision).unwrap().kvs.into_iter().next()
}

#[test]
fn past_revisions_are_readable_with_their_metadata() {
    let mut kv = MvccStore::new();
    run(
        &mut kv,
        &[put(b"a", b"1"), put(b"a", b"2"), put(b"b", b"x")],
    );
    assert_eq!(kv.revision(), 4);
    let a2 = one_at(&kv, b"a", 2).unwrap();
    assert_eq!(
        (
            a2.value.as_slice(),
            a2.create_revision,
            a2.mod_revision,
            a2.version
        ),
        (&b"1"[..], 2, 2, 1)
    );
    let a3 = one_at(&kv, b"a", 3).unwrap();
    assert_eq!(
        (
            a3.value.as_slice(),
            a3.create_revision,
            a3.mod_revision,
            a3.version
        ),
        (&b"2"[..], 2, 3, 2)
    );
    assert_eq!(one_at(&kv, b"b", 3), None);
    assert_eq!(one_at(&kv, b"a", 1), None);
    // The header carries the current revision, as etcd's does.
    assert_eq!(get_at(&kv, b"a", 2).unwrap().header.revision, 4);
    assert_eq!(
        get_at(&kv, b"a", 5),
        Err(RequestError::FutureRevision {
            requested: 5,
            current: 4
        })
    );
}

#[test]
fn delete_then_recreate_starts_a_new_generation() {
    let mut kv = MvccStore::new();
    run(
        &mut kv,
        &[
            put(b"k", b"1"),
            put(b"k", b"2"),
            delete(b"k"),
            put(b"k", b"3"),
        ],
    );
    let now = one_at(&kv, b"k", 0).unwrap();
    assert_eq!(
        (now.create_revision, now.mod_revision, now.version),
        (5, 5, 1)
    );
    assert_eq!(one_at(&kv, b"k", 4), None);
    assert_eq!(one_at(&kv, b"k", 3).unwrap().version, 2);
    let events = kv.changes_at(4);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, ChangeKind::Delete);
    assert_eq!(
        events[0].kv,
        KeyValue {
            key: b"k".to_vec(),
            mod_revision: 4,
            ..Default::default()
        }
    );
    assert_eq!(events[0].prev_kv.as_ref().unwrap().value, b"2");
    // The re-creation has no previous version: the key did not exist.
    assert_eq!(kv.changes_at(5)[0].prev_kv, None);
}

#[test]
fn compaction_onto_a_tombstone_drops_the_key_history() {
    let mut kv = MvccStore::new();
    run(
        &mut kv,
        &[put(b"k", b"1"), put(b"other", b"x"), delete(b"k")],
    );
    let before = kv.size_bytes();
    run(&mut kv, &[compact(4)]);
    assert!(kv.size_bytes() < before);
    assert_eq!(kv.compact_revision(), 4);
    assert_eq!(one_at(&kv, b"k", 4), None);
    assert_eq!(one_at(&kv, b"other", 4).unwrap().value, b"x");
    assert_eq!(
        get_at(&kv, b"k", 3),
        Err(RequestError::Compacted {
            requested: 3,
            oldest: 4
        })
    );
    // The compact revision's own record stays for a watch from it.
    let batch = kv.changes(4, b"k", b"", 10).unwrap();
    assert_eq!(batch.changes.len(), 1);
    assert_eq!(batch.changes[0].kind, ChangeKind::Delete);
    assert_eq!(batch.changes[0].prev_kv, None);
    assert_eq!(batch.next_revision, 5);
    assert_eq!(
        kv.changes(3, b"k", b"", 10),
        Err(RequestError::Compacted {
            requested: 3,
            oldest: 4
        })
    );
    assert_eq!(
        kv.hash_kv(3),
        Err(RequestError::Compacted {
            requested: 3,
            oldest: 4
        })
    );
    let h = kv.hash_kv(0).unwrap();
    assert_eq!((h.compact_revision, h.revision), (4, 4));
    assert_eq!(h, kv.hash_kv(4).unwrap());
    // Only the live key and the record of revision 4 are left.
    let record = LOG_RECORD_OVERHEAD_BYTES + LOG_CHANGE_OVERHEAD_BYTES + 1;
    assert_eq!(kv.size_bytes(), 5 + 1 + ENTRY_OVERHEAD_BYTES + record);
}

#[test]
fn compaction_at_the_current_revision_keeps_current_reads() {
    let mut kv = MvccStore::new();
    run(
        &mut kv,
        &[put(b"a", b"1"), put(b"a", b"2"), put(b"a", b"3")],
    );
    let rev = kv.revision();
    run(&mut kv, &[compact(rev)]);
    assert_eq!(one_at(&kv, b"a", rev).unwrap().value, b"3");
    assert_eq!(one_at(&kv, b"a", 0).unwrap().version, 3);
    assert_eq!(kv.changes_at(rev).len(), 1);
    assert_eq!(kv.changes_at(rev - 1), vec![]);
    // Everything but the live data and the last record is gone.
    let live = kv.range(&RangeRequest::prefix(b"")).unwrap();
    assert_eq!(live.count, 1);
    let record = LOG_RECORD_OVERHEAD_BYTES + LOG_CHANGE_OVERHEAD_BYTES + 1;
    assert_eq!(kv.size_bytes(), 1 + 1 + ENTRY_OVERHEAD_BYTES + record);
    // Compacting again at the same revision is refused, as in etcd.
    let index = kv.applied_index() + 1;
    assert_eq!(
        kv.apply(index, &compact(rev)),
        Err(ApplyError::Rejected(RequestError::Compacted {
            requested: rev,
            oldest: rev
        }))
    );
    let index = kv.applied_index() + 1;
    assert_eq!(
        kv.apply(index, &compact(rev + 1)),
        Err(ApplyError::Rejected(RequestError::FutureRevision {
            requested: rev + 1,
            current: rev
        }))
    );
}

#[test]
fn old_kv_store_snapshot_restores_without_history() {
    let mut old = KvStore::new();
    for (i, cmd) in [put(b"a", b"1"), put(b"b", b"2"), put(b"a", b"3")]
        .iter()
        .enumerate()
    {
        old.apply(i as u64 + 1, cmd).unwrap();
    }
    let kv = MvccStore::restore(&old.snapshot()).unwrap();
    assert_eq!(kv.revision(), 4);
    assert_eq!(kv.compact_revision(), 4);
    assert_eq!(kv.applied_index(), 3);
    assert_eq!(kv.hash(), old.hash());
    assert_eq!(kv.size_bytes(), old.size_bytes());
    assert_eq!(one_at(&kv, b"a", 4).unwrap().value, b"3");
    assert!(matches!(
        get_at(&kv, b"a", 3),
        Err(RequestError::Compacted { .. })
    ));
    let mut padded = old.snapshot();
    let len = padded.len();
    padded.extend_from_slice(&[0; 16]);
    let (prefixed, got_len) = MvccStore::restore_prefix(&padded).unwrap();
    assert_eq!((prefixed, got_len), (kv, len));
}

fn busy_store() -> MvccStore {
    let mut kv = MvccStore::new();
    run(
        &mut kv,
        &[
            put(b"a", b"1"),
            put(b"b", b"2"),
            put(b"a", b"3"),
            delete(b"b"),
            compact(3),
            put(b"b", b"4"),
            Command::Txn(TxnRequest {
                success: vec![
                    RequestOp::Put(PutRequest {
                        key: b"c".to_vec(),
                        value: b"5".to_vec(),
                        ..Default::default()
                    }),
                    RequestOp::DeleteRange(DeleteRangeRequest {
                        key: b"a".to_vec(),
                        ..Default::default()
                    }),
                    RequestOp::Put(PutRequest {
                        key: b"b".to_vec(),
                        ignore_value: true,
                        ..Default::default()
                    }),
                ],
                ..Default::default()
            }),
        ],
    );
    kv
}

#[test]
fn snapshot_restores_an_equal_store_with_equal_hashes() {
    let kv = busy_store();
    let bytes = kv.snapshot();
    let restored = MvccStore::restore(&bytes).unwrap();
    assert_eq!(restored, kv);
    assert_eq!(restored.snapshot(), bytes);
    for rev in kv.compact_revision()..=kv.revision() {
        assert_eq!(restored.hash_kv(rev), kv.hash_kv(rev));
        assert_eq!(
            restored.changes(rev, b"\0", b"\0", 100),
            kv.changes(rev, b"\0", b"\0", 100)
        );
    }
    assert_eq!(restored.size_bytes(), kv.size_bytes());
    // A txn's changes are one revision, in op order.
    let txn = kv.changes_at(kv.revision());
    let kinds: Vec<_> = txn.iter().map(|c| (c.kv.key.clone(), c.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            (b"c".to_vec(), ChangeKind::Put),
            (b"a".to_vec(), ChangeKind::Delete),
            (b"b".to_vec(), ChangeKind::Put)
        ]
    );
}

#[test]
fn damaged_snapshots_are_refused_without_panicking() {
    let bytes = busy_store().snapshot();
    for len in 0..bytes.len() {
        assert!(
            MvccStore::restore(&bytes[..len]).is_err(),
            "truncated to {len}"
        );
        assert!(
            MvccStore::restore_prefix(&bytes[..len]).is_err(),
            "prefix of {len}"
        );
    }
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = bytes.clone();
            bad[i] ^= bit;
            assert!(MvccStore::restore(&bad).is_err(), "bit flip at {i}");
            let _ = MvccStore::restore_prefix(&bad);
        }
    }
    assert_eq!(
        MvccStore::restore(b"MRXX00000000"),
        Err(SnapshotError::BadMagic)
    );
    assert_eq!(MvccStore::restore(b""), Err(SnapshotError::Truncated));
}

#[test]
fn changes_stop_between_revisions_and_resume() {
    let mut kv = MvccStore::new();
    run(&mut kv, &[put(b"a", b"1")]);
    run(
        &mut kv,
        &[Command::Txn(TxnRequest {
            success: vec![
                RequestOp::Put(PutRequest {
                    key: b"b".to_vec(),
                    ..Default::default()
                }),
                RequestOp::Put(PutRequest {
                    key: b"c".to_vec(),
                    ..Default::default()
                }),
            ],
            ..Default::default()
        })],
    );
    run(&mut kv, &[put(b"d", b"4")]);
    let first = kv.changes(2, b"\0", b"\0", 2).unwrap();
    // Two events asked for: the txn's two stay with the put before them.
    assert_eq!(first.changes.len(), 3);
    assert_eq!(first.next_revision, 4);
    let rest = kv.changes(first.next_revision, b"\0", b"\0", 2).unwrap();
    assert_eq!(rest.changes.len(), 1);
    assert_eq!(rest.next_revision, 5);
    let caught_up = kv.changes(rest.next_revision, b"\0", b"\0", 2).unwrap();
    assert_eq!(
        caught_up,
        ChangeBatch {
            changes: vec![],
            next_revision: 5
        }
    );
    assert_eq!(kv.changes(0, b"a", b"", 1).unwrap().next_revision, 5);
    // Prefix filter.
    let only_b = kv.changes(1, b"b", &prefix_end(b"b"), 100).unwrap();
    assert_eq!(only_b.changes.len(), 1);
    assert_eq!(only_b.changes[0].kv.key, b"b");
}

#[test]
fn txn_ranges_read_history_like_etcd() {
    let mut kv = MvccStore::new();
    run(&mut kv, &[put(b"a", b"1"), put(b"a", b"2")]);
    let txn = Command::Txn(TxnRequest {
        success: vec![
            RequestOp::Put(PutRequest {
                key: b"a".to_vec(),
                value: b"3".to_vec(),
                ..Default::default()
            }),
            RequestOp::Range(RangeRequest {
                revision: 3,
                ..RangeRequest::single(b"a")
            }),
            RequestOp::Range(RangeRequest {
                revision: 2,
                ..RangeRequest::single(b"a")
            }),
            RequestOp::Range(RangeRequest::single(b"a")),
        ],
        ..Default::default()
    });
    let CommandResult::Txn(t) = kv.apply(10, &txn).unwrap() else {
        panic!()
    };
    let values: Vec<Vec<u8>> = t.responses[1..]
        .iter()
        .map(|r| match r {
            ResponseOp::Range(r) => r.kvs[0].value.clone(),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(values, vec![b"2".to_vec(), b"1".to_vec(), b"3".to_vec()]);
}

/// A restore replays the logged changes sorted by key, comparing 16 bytes
/// after the prefix all keys share before the keys themselves: keys that
/// are prefixes of one another, end in zero bytes, differ only past those
/// 16 bytes, or share everything but their length must come back in key
/// order with their history, on top of a base state and without one.
#[test]
fn restore_replays_keys_that_tell_apart_late_or_by_length() {
    let long = |tail: &[u8]| {
        let mut k = b"/registry/pods/default/".to_vec();
        k.extend_from_slice(b"0123456789abcdef");
        k.extend_from_slice(tail);
        k
    };
    let keys: Vec<Vec<u8>> = vec![
        b"/registry/pods/default/a".to_vec(),
        b"/registry/pods/default/a\0".to_vec(),
        b"/registry/pods/default/a\0\0".to_vec(),
        b"/registry/pods/default/ab".to_vec(),
        b"/registry/pods/default/".to_vec(),
        long(b""),
        long(b"\0"),
        long(b"x"),
        long(b"y"),
        long(b"xx"),
        b"/registry/pods/default/b".to_vec(),
    ];
    for compact_first in [false, true] {
        let mut kv = MvccStore::new();
        // In reverse, so the log is not in key order.
        for (i, k) in keys.iter().enumerate().rev() {
            run(&mut kv, &[put(k, &[i as u8])]);
        }
        if compact_first {
            let revision = kv.revision();
            run(&mut kv, &[compact(revision)]);
        }
        for (i, k) in keys.iter().enumerate() {
            run(&mut kv, &[put(k, &[i as u8, 1])]);
            if i % 3 == 0 {
                run(&mut kv, &[delete(k)]);
            }
            if i % 2 == 0 {
                run(&mut kv, &[put(k, &[i as u8, 2])]);
            }
        }
        let restored = MvccStore::restore(&kv.snapshot()).expect("restores");
        assert!(restored == kv, "compacted first: {compact_first}");
        assert_eq!(restored.snapshot(), kv.snapshot());
        assert_eq!(restored.hash_kv(0), kv.hash_kv(0));
        for k in &keys {
            for revision in kv.compact_revision().max(1)..=kv.revision() {
                assert_eq!(get_at(&restored, k, revision), get_at(&kv, k, revision));
            }
        }
    }
}
