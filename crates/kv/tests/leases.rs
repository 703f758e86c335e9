//! Leases in the MVCC store, with etcd 3.4's semantics: grant (chosen and
//! server-chosen IDs), attach/detach on put, `ignore_lease`, lease compares,
//! revoke deleting every attached key in one revision, snapshots; and a
//! model test of attachments against a plain reference.

use metalraft_kv::*;
use std::collections::{BTreeMap, BTreeSet};

fn put(key: &[u8], value: &[u8]) -> PutRequest {
    PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        ..Default::default()
    }
}

fn leased(key: &[u8], value: &[u8], lease: i64) -> Command {
    Command::LeasePut(
        put(key, value),
        LeaseOption {
            lease,
            ignore_lease: false,
        },
    )
}

fn grant(id: i64, ttl: i64) -> Command {
    Command::LeaseGrant(LeaseGrantRequest { id, ttl })
}

fn revoke(id: i64) -> Command {
    Command::LeaseRevoke(LeaseRevokeRequest { id })
}

fn apply(kv: &mut MvccStore, cmd: &Command) -> Result<CommandResult, RequestError> {
    let index = kv.applied_index() + 1;
    kv.apply(index, cmd).map_err(|e| match e {
        ApplyError::Rejected(r) => r,
        other => panic!("{other}"),
    })
}

fn granted(kv: &mut MvccStore, id: i64, ttl: i64) -> i64 {
    match apply(kv, &grant(id, ttl)).unwrap() {
        CommandResult::LeaseGrant(g) => {
            assert_eq!(g.ttl, ttl);
            g.id
        }
        other => panic!("{other:?}"),
    }
}

fn lease_of(kv: &MvccStore, key: &[u8]) -> i64 {
    let kvs = kv.range(&RangeRequest::single(key)).unwrap().kvs;
    kvs.first().map_or(0, |e| kv.key_lease(key, e.mod_revision))
}

#[test]
fn grant_with_id_zero_chooses_the_same_unique_id_on_every_replica() {
    let (mut a, mut b) = (MvccStore::new(), MvccStore::new());
    let mut ids = BTreeSet::new();
    for _ in 0..50 {
        let x = granted(&mut a, 0, 10);
        let y = granted(&mut b, 0, 10);
        assert_eq!(x, y, "same log, same ID");
        assert!(x > 0);
        assert!(ids.insert(x), "IDs are unique");
    }
    assert_eq!(a, b);
    assert_eq!(a.revision(), 1, "a grant does not change the revision");
}

#[test]
fn grant_refuses_an_existing_id_and_a_too_large_ttl() {
    let mut kv = MvccStore::new();
    assert_eq!(granted(&mut kv, 7, 5), 7);
    assert_eq!(apply(&mut kv, &grant(7, 9)), Err(RequestError::LeaseExists));
    assert_eq!(
        apply(&mut kv, &grant(8, MAX_LEASE_TTL_SECS + 1)),
        Err(RequestError::LeaseTtlTooLarge)
    );
    assert_eq!(kv.lease_ttl(7), Some(5));
    assert_eq!(kv.leases().collect::<Vec<_>>(), vec![(7, 5)]);
}

#[test]
fn a_put_attaches_moves_and_detaches_its_key() {
    let mut kv = MvccStore::new();
    granted(&mut kv, 1, 10);
    granted(&mut kv, 2, 10);
    apply(&mut kv, &leased(b"k", b"v", 1)).unwrap();
    assert_eq!(lease_of(&kv, b"k"), 1);
    assert_eq!(kv.lease(1).unwrap().keys, vec![b"k".to_vec()]);

    apply(&mut kv, &leased(b"k", b"v2", 2)).unwrap();
    assert_eq!(lease_of(&kv, b"k"), 2, "moved to the new lease");
    assert!(kv.lease(1).unwrap().keys.is_empty(), "left the old one");

    let keep = Command::LeasePut(
        put(b"k", b"v3"),
        LeaseOption {
            lease: 0,
            ignore_lease: true,
        },
    );
    apply(&mut kv, &keep).unwrap();
    assert_eq!(lease_of(&kv, b"k"), 2, "ignore_lease keeps the lease");

    apply(&mut kv, &Command::Put(put(b"k", b"v4"))).unwrap();
    assert_eq!(lease_of(&kv, b"k"), 0, "a put without a lease detaches");
    assert!(kv.lease(2).unwrap().keys.is_empty());
}

#[test]
fn puts_naming_missing_leases_or_keys_are_refused_without_change() {
    let mut kv = MvccStore::new();
    let before = kv.clone();
    assert_eq!(
        apply(&mut kv, &leased(b"k", b"v", 99)),
        Err(RequestError::LeaseNotFound)
    );
    let ignore = |lease| {
        Command::LeasePut(
            put(b"k", b"v"),
            LeaseOption {
                lease,
                ignore_lease: true,
            },
        )
    };
    assert_eq!(apply(&mut kv, &ignore(0)), Err(RequestError::KeyNotFound));
    assert_eq!(apply(&mut kv, &ignore(5)), Err(RequestError::LeaseProvided));
    assert_eq!(kv.revision(), before.revision());
    assert_eq!(kv.len(), 0);
}

#[test]
fn a_delete_detaches_and_a_revoke_deletes_every_key_in_one_revision() {
    let mut kv = MvccStore::new();
    let id = granted(&mut kv, 0, 10);
    for k in [&b"a"[..], b"b", b"c"] {
        apply(&mut kv, &leased(k, b"v", id)).unwrap();
    }
    apply(
        &mut kv,
        &Command::DeleteRange(DeleteRangeRequest {
            key: b"b".to_vec(),
            ..Default::default()
        }),
    )
    .unwrap();
    assert_eq!(
        kv.lease(id).unwrap().keys,
        vec![b"a".to_vec(), b"c".to_vec()]
    );
    apply(&mut kv, &Command::Put(put(b"other", b"x"))).unwrap();

    let rev = kv.revision();
    match apply(&mut kv, &revoke(id)).unwrap() {
        CommandResult::LeaseRevoke(r) => assert_eq!(r.header.revision, rev + 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(kv.revision(), rev + 1, "one revision for the whole revoke");
    let events = kv.changes_at(rev + 1);
    let deleted: Vec<_> = events
        .iter()
        .map(|c| (c.kind, c.kv.key.clone(), c.prev_kv.is_some()))
        .collect();
    assert_eq!(
        deleted,
        vec![
            (ChangeKind::Delete, b"a".to_vec(), true),
            (ChangeKind::Delete, b"c".to_vec(), true)
        ]
    );
    assert_eq!(kv.len(), 1, "unattached keys stay");
    assert_eq!(kv.lease(id), None);
    assert_eq!(
        apply(&mut kv, &revoke(id)),
        Err(RequestError::LeaseNotFound)
    );

    let empty = granted(&mut kv, 0, 10);
    let rev = kv.revision();
    apply(&mut kv, &revoke(empty)).unwrap();
    assert_eq!(
        kv.revision(),
        rev,
        "revoking a lease without keys writes nothing"
    );
}

#[test]
fn txn_compares_on_the_lease_and_checks_only_the_branch_that_runs() {
    let mut kv = MvccStore::new();
    granted(&mut kv, 4, 10);
    apply(&mut kv, &leased(b"k", b"v", 4)).unwrap();
    let cmp = |v| Compare::new(b"k", CompareResult::Equal, CompareTarget::Lease(v));
    let txn = |v, lease| {
        Command::LeaseTxn(
            TxnRequest {
                compare: vec![cmp(v)],
                success: vec![RequestOp::Put(put(b"s", b"1"))],
                failure: vec![RequestOp::Put(put(b"f", b"1"))],
            },
            TxnLeases {
                success: vec![LeaseOption {
                    lease,
                    ignore_lease: false,
                }],
                failure: vec![LeaseOption::default()],
            },
        )
    };
    match apply(&mut kv, &txn(4, 4)).unwrap() {
        CommandResult::Txn(t) => assert!(t.succeeded),
        other => panic!("{other:?}"),
    }
    assert_eq!(lease_of(&kv, b"s"), 4);
    // The success branch names a missing lease, but the failure branch runs.
    match apply(&mut kv, &txn(5, 77)).unwrap() {
        CommandResult::Txn(t) => assert!(!t.succeeded),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        apply(&mut kv, &txn(4, 77)),
        Err(RequestError::LeaseNotFound)
    );
    let missing = Compare::new(b"nope", CompareResult::Equal, CompareTarget::Lease(0));
    let plain = Command::Txn(TxnRequest {
        compare: vec![missing],
        ..Default::default()
    });
    match apply(&mut kv, &plain).unwrap() {
        CommandResult::Txn(t) => assert!(t.succeeded, "a missing key has lease 0"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn leases_and_attachments_survive_a_snapshot() {
    let mut kv = MvccStore::new();
    let a = granted(&mut kv, 0, 30);
    let b = granted(&mut kv, 12, 60);
    apply(&mut kv, &leased(b"x", b"1", a)).unwrap();
    apply(&mut kv, &leased(b"y", b"1", b)).unwrap();
    apply(&mut kv, &Command::Put(put(b"z", b"1"))).unwrap();
    let bytes = kv.snapshot();
    assert!(bytes.starts_with(&MVCC_LEASE_SNAPSHOT_MAGIC));
    let restored = MvccStore::restore(&bytes).unwrap();
    assert_eq!(restored, kv);
    let (prefixed, len) = MvccStore::restore_prefix(&[&bytes[..], &[0; 7]].concat()).unwrap();
    assert_eq!((prefixed, len), (kv.clone(), bytes.len()));
    // The restored store keeps going alike: revoke deletes the right keys.
    let mut r = restored;
    apply(&mut r, &revoke(a)).unwrap();
    apply(&mut kv, &revoke(a)).unwrap();
    assert_eq!(r, kv);
    assert_eq!(r.len(), 2);
}

#[test]
fn a_kv_store_refuses_every_lease_command() {
    let mut kv = KvStore::new();
    for (i, cmd) in [
        grant(1, 5),
        revoke(1),
        leased(b"k", b"v", 0),
        Command::LeaseTxn(TxnRequest::default(), TxnLeases::default()),
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(
            kv.apply(i as u64 + 1, cmd),
            Err(ApplyError::Rejected(RequestError::LeaseNotFound))
        );
    }
}

#[test]
fn lease_commands_round_trip_through_the_codec() {
    for cmd in [
        grant(0, 5),
        revoke(3),
        leased(b"k", b"v", 9),
        Command::LeaseTxn(
            TxnRequest {
                success: vec![RequestOp::Put(put(b"k", b""))],
                ..Default::default()
            },
            TxnLeases {
                success: vec![LeaseOption::default()],
                failure: vec![],
            },
        ),
    ] {
        assert_eq!(Command::decode(&cmd.encode()), Ok(cmd));
    }
    let bad = Command::LeaseTxn(
        TxnRequest::default(),
        TxnLeases {
            success: vec![LeaseOption::default()],
            failure: vec![],
        },
    );
    assert!(bad.validate().is_err(), "one option per put");
}

/// A reference of what leases mean: key → lease, lease → TTL.
#[derive(Default)]
struct Model {
    keys: BTreeMap<Vec<u8>, i64>,
    leases: BTreeMap<i64, i64>,
}

#[test]
fn attachments_match_a_reference_model_over_random_histories() {
    for seed in 1..=40u64 {
        let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut kv = MvccStore::new();
        let mut m = Model::default();
        for step in 0..200 {
            let key = vec![b'a' + next(6) as u8];
            let lease = [0, 1, 2, 3][next(4) as usize];
            let cmd = match next(7) {
                0 => grant(lease, 1 + next(20) as i64),
                1 => revoke(lease),
                2 => Command::DeleteRange(DeleteRangeRequest {
                    key: key.clone(),
                    ..Default::default()
                }),
                3 => Command::Put(put(&key, b"p")),
                4 => Command::LeasePut(
                    put(&key, b"i"),
                    LeaseOption {
                        lease: 0,
                        ignore_lease: true,
                    },
                ),
                _ => leased(&key, b"l", lease),
            };
            let got = apply(&mut kv, &cmd);
            // What the reference says.
            let want: Result<(), RequestError> = match &cmd {
                Command::LeaseGrant(g) if g.id == 0 => Ok(()),
                Command::LeaseGrant(g) if m.leases.contains_key(&g.id) => {
                    Err(RequestError::LeaseExists)
                }
                Command::LeaseGrant(g) => {
                    m.leases.insert(g.id, g.ttl);
                    Ok(())
                }
                Command::LeaseRevoke(r) => match m.leases.remove(&r.id) {
                    None => Err(RequestError::LeaseNotFound),
                    Some(_) => {
                        m.keys.retain(|_, l| *l != r.id);
                        Ok(())
                    }
                },
                Command::DeleteRange(d) => {
                    m.keys.remove(&d.key);
                    Ok(())
                }
                Command::Put(p) => {
                    m.keys.insert(p.key.clone(), 0);
                    Ok(())
                }
                Command::LeasePut(p, o) if o.ignore_lease => {
                    if m.keys.contains_key(&p.key) {
                        Ok(())
                    } else {
                        Err(RequestError::KeyNotFound)
                    }
                }
                Command::LeasePut(p, o) => {
                    if o.lease != 0 && !m.leases.contains_key(&o.lease) {
                        Err(RequestError::LeaseNotFound)
                    } else {
                        m.keys.insert(p.key.clone(), o.lease);
                        Ok(())
                    }
                }
                _ => unreachable!(),
            };
            if let (Command::LeaseGrant(g), Ok(CommandResult::LeaseGrant(r))) = (&cmd, &got) {
                if g.id == 0 {
                    m.leases.insert(r.id, g.ttl);
                }
            }
            assert_eq!(got.map(|_| ()), want, "seed {seed} step {step}: {cmd:?}");
            for (k, l) in &m.keys {
                assert_eq!(lease_of(&kv, k), *l, "seed {seed} step {step} key {k:?}");
            }
            assert_eq!(kv.len(), m.keys.len());
            let leases: Vec<_> = kv.leases().collect();
            let want: Vec<_> = m.leases.iter().map(|(a, b)| (*a, *b)).collect();
            assert_eq!(leases, want);
            for (id, _) in &leases {
                let keys = kv.lease(*id).unwrap().keys;
                let want: Vec<_> = m
                    .keys
                    .iter()
                    .filter(|(_, l)| *l == id)
                    .map(|(k, _)| k.clone())
                    .collect();
                assert_eq!(keys, want);
            }
            if step % 50 == 49 {
                assert_eq!(MvccStore::restore(&kv.snapshot()).unwrap(), kv);
            }
        }
    }
}
