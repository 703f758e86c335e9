//! A restored store is the original: equal (`==`: current state, past
//! versions, revision log, leases, sizes), and it answers every read,
//! `HashKV` and watch replay the same, at every readable revision. The
//! history exercises what the bulk restore (base built in one pass, records
//! replayed by moving keys and values in) must reproduce: a key deleted
//! then put, and put then deleted, in one revision, deletes and re-creations,
//! overwrites, leases, and a compaction that leaves a base state.

use metalraft_kv::*;

fn put(key: &str, value: &str) -> RequestOp {
    RequestOp::Put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    })
}

fn delete(key: &str, range_end: &[u8]) -> RequestOp {
    RequestOp::DeleteRange(DeleteRangeRequest {
        key: key.as_bytes().to_vec(),
        range_end: range_end.to_vec(),
        ..Default::default()
    })
}

fn txn(ops: Vec<RequestOp>) -> Command {
    Command::Txn(TxnRequest {
        compare: Vec::new(),
        success: ops,
        failure: Vec::new(),
    })
}

/// Applies `cmds` in order at the next log indices, each accepted.
fn apply_all(kv: &mut MvccStore, cmds: Vec<Command>) {
    for cmd in cmds {
        let index = kv.applied_index() + 1;
        kv.apply(index, &cmd)
            .unwrap_or_else(|e| panic!("{cmd:?}: {e:?}"));
    }
}

/// The history, in two parts around an optional compaction.
fn history(compact: bool) -> MvccStore {
    let mut kv = MvccStore::new();
    let mut first = vec![Command::LeaseGrant(LeaseGrantRequest { id: 5, ttl: 30 })];
    for i in 0..40 {
        first.push(txn((0..5)
            .map(|j| {
                put(
                    &format!("k{:03}", (i * 7 + j * 13) % 97),
                    &format!("v{i}.{j}"),
                )
            })
            .collect()));
    }
    // A key changed twice in one revision: put, then a delete from it to
    // the end (range end "\0", which etcd's literal interval check lets
    // through); delete and re-create.
    first.push(txn(vec![put("zz", "a"), put("zzz", "b")]));
    first.push(txn(vec![put("zz", "x"), delete("zz", b"\0")]));
    first.push(txn(vec![delete("k001", b"")]));
    first.push(txn(vec![put("k001", "again")]));
    first.push(Command::LeasePut(
        PutRequest {
            key: b"leased".to_vec(),
            value: b"l".to_vec(),
            ..Default::default()
        },
        LeaseOption {
            lease: 5,
            ignore_lease: false,
        },
    ));
    apply_all(&mut kv, first);
    if compact {
        let revision = kv.revision() - 10;
        apply_all(
            &mut kv,
            vec![Command::Compact(CompactionRequest { revision })],
        );
    }
    let mut second = Vec::new();
    for i in 0..30 {
        second.push(txn(vec![
            put(&format!("k{:03}", i * 3 % 97), &format!("w{i}")),
            delete(&format!("k{:03}", (i * 5 + 1) % 97), b""),
        ]));
    }
    second.push(txn(vec![put("zz", "c"), put("zzz", "c")]));
    second.push(txn(vec![delete("zz", b"\0"), put("zz", "d")]));
    second.push(txn(vec![put("zzz", "e"), delete("zzz", b"\0")]));
    apply_all(&mut kv, second);
    kv
}

fn range_at(key: &[u8], range_end: &[u8], revision: i64) -> RangeRequest {
    RangeRequest {
        key: key.to_vec(),
        range_end: range_end.to_vec(),
        revision,
        ..Default::default()
    }
}

fn assert_same(original: &MvccStore) {
    let bytes = original.snapshot();
    let restored = MvccStore::restore(&bytes).expect("its own snapshot restores");
    assert_eq!(&restored, original);
    assert_eq!(
        restored.snapshot(),
        bytes,
        "and snapshots to the same bytes"
    );
    assert_eq!(restored.size_bytes(), original.size_bytes());
    assert_eq!(restored.hash(), original.hash());
    let mut keys: Vec<Vec<u8>> = original
        .range(&range_at(b"\0", b"\0", 0))
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    keys.extend([
        b"zz".to_vec(),
        b"zzz".to_vec(),
        b"k001".to_vec(),
        b"missing".to_vec(),
    ]);
    let from = original.compact_revision().max(1);
    for rev in from..=original.revision() {
        assert_eq!(
            restored.hash_kv(rev),
            original.hash_kv(rev),
            "HashKV at {rev}"
        );
        let all = range_at(b"\0", b"\0", rev);
        assert_eq!(
            restored.range(&all),
            original.range(&all),
            "all keys at {rev}"
        );
        for key in &keys {
            let one = range_at(key, b"", rev);
            assert_eq!(restored.range(&one), original.range(&one));
        }
        assert_eq!(
            restored.changes(rev, b"\0", b"\0", usize::MAX),
            original.changes(rev, b"\0", b"\0", usize::MAX),
            "watch replay from {rev}"
        );
    }
    let below = range_at(b"k000", b"", from - 1);
    if from > 1 {
        assert_eq!(restored.range(&below), original.range(&below));
        assert!(
            restored.range(&below).is_err(),
            "compacted revisions stay unreadable"
        );
    }
}

#[test]
fn a_restored_store_answers_like_the_original() {
    assert_same(&history(false));
}

#[test]
fn a_restored_compacted_store_answers_like_the_original() {
    let kv = history(true);
    assert!(kv.compact_revision() > 1, "the snapshot has a base");
    assert_same(&kv);
}

/// A snapshot whose replayed delete hits a key that is not live is
/// refused: the write path would have logged no change.
#[test]
fn a_delete_of_a_key_not_live_is_refused() {
    let mut kv = MvccStore::new();
    apply_all(
        &mut kv,
        vec![txn(vec![put("a", "1")]), txn(vec![delete("a", b"")])],
    );
    let good = kv.snapshot();
    // Change the deleted key's name in the record ("a" to "b", both
    // one byte), then fix the framing's checksum.
    let body = &good[..good.len() - 4];
    let at = body.iter().rposition(|&b| b == b'a').unwrap();
    let mut bad = body.to_vec();
    bad[at] = b'b';
    let crc = crc32c(&bad);
    bad.extend_from_slice(&crc.to_le_bytes());
    assert_eq!(MvccStore::restore(&bad), Err(SnapshotError::Inconsistent));
}

/// CRC-32C, bit by bit (the framing's checksum), to forge a snapshot whose
/// framing is intact but whose contents are not.
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
