//! A key-value cluster of real replicas: writes, reads, leader changes,
//! snapshots, membership, events, crashes and determinism.

mod common;

use common::*;
use metalraft_core::{ConfChange, ConfChangeOp, MessageBody, NodeId};
use metalraft_kv::{
    Command, CommandResult, Compare, CompareResult, CompareTarget, DeleteRangeRequest, KvStore,
    PutRequest, RequestOp, TxnRequest,
};
use metalraft_replica::{
    ChunkError, Completion, Config, Event, Fatal, KeyChange, KvError, Outcome, RequestFailure,
    UnknownReason,
};

type Done = Completion<
    Result<CommandResult, KvError>,
    Result<metalraft_kv::RangeResponse, metalraft_kv::RequestError>,
>;

fn completions_for(c: &Cluster<KvStore>, id: NodeId, req: u64) -> Vec<Done> {
    c.slots[id as usize - 1]
        .completions
        .iter()
        .filter(|x| x.req_id == req)
        .cloned()
        .collect()
}

fn wait_done(c: &mut Cluster<KvStore>, id: NodeId, req: u64) -> Done {
    assert!(
        c.run_until(200, |c| !completions_for(c, id, req).is_empty()),
        "request {req} on n{id} never completed"
    );
    let all = completions_for(c, id, req);
    assert_eq!(all.len(), 1, "exactly one completion: {all:?}");
    all[0].clone()
}

fn read_value(c: &mut Cluster<KvStore>, id: NodeId, req: u64, key: &str) -> Option<Vec<u8>> {
    c.r(id).read(req, get(key)).expect("read accepted");
    match wait_done(c, id, req).outcome {
        Outcome::Read { output: Ok(r), .. } => r.kvs.first().map(|kv| kv.value.clone()),
        other => panic!("read failed: {other:?}"),
    }
}

fn put_txn_get(p: Persistence) {
    let mut c = kv_cluster(3, p, default_config);
    let l = c.elect();
    let idx = c.r(l).propose(1, &put("a", "1")).expect("propose");
    let Outcome::Applied {
        index,
        output: Ok(CommandResult::Put(r)),
    } = wait_done(&mut c, l, 1).outcome
    else {
        panic!("put not applied")
    };
    assert_eq!(index, idx);
    assert_eq!(r.header.revision, 2);
    // Compare-and-swap through the log.
    let cas = Command::Txn(TxnRequest {
        compare: vec![Compare::new(
            b"a",
            CompareResult::Equal,
            CompareTarget::Version(1),
        )],
        success: vec![RequestOp::Put(PutRequest {
            key: b"a".to_vec(),
            value: b"2".to_vec(),
            ..Default::default()
        })],
        failure: vec![],
    });
    c.r(l).propose(2, &cas.encode()).expect("propose txn");
    let Outcome::Applied {
        output: Ok(CommandResult::Txn(t)),
        ..
    } = wait_done(&mut c, l, 2).outcome
    else {
        panic!("txn not applied")
    };
    assert!(t.succeeded);
    // A refused command is an ordinary, deterministic output.
    let missing = Command::Put(PutRequest {
        key: b"missing".to_vec(),
        ignore_value: true,
        ..Default::default()
    });
    c.r(l)
        .propose(3, &missing.encode())
        .expect("propose bad put");
    assert!(matches!(
        wait_done(&mut c, l, 3).outcome,
        Outcome::Applied {
            output: Err(KvError::Rejected(_)),
            ..
        }
    ));
    // Garbage bytes too.
    c.r(l).propose(4, b"garbage").expect("propose garbage");
    assert!(matches!(
        wait_done(&mut c, l, 4).outcome,
        Outcome::Applied {
            output: Err(KvError::Decode(_)),
            ..
        }
    ));
    // Linearizable reads on the leader and on a follower.
    assert_eq!(read_value(&mut c, l, 10, "a"), Some(b"2".to_vec()));
    let f = (l % 3) + 1;
    assert_eq!(read_value(&mut c, f, 11, "a"), Some(b"2".to_vec()));
    // Proposals on a follower are refused with the leader's id.
    assert_eq!(
        c.r(f).propose(5, &put("b", "1")),
        Err(metalraft_replica::ProposeError::NotLeader { leader: Some(l) })
    );
    // Every replica converges to the same store.
    c.rounds(5);
    let hashes: Vec<_> = (1..=3).map(|i| c.r(i).state_machine().hash()).collect();
    assert!(hashes.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn put_txn_get_through_the_log_immediate_persistence() {
    put_txn_get(Persistence::Immediate);
}

#[test]
fn put_txn_get_through_the_log_slow_persistence() {
    put_txn_get(Persistence::Slow(3));
}

#[test]
fn duplicate_request_ids_are_refused_while_pending() {
    let mut c = kv_cluster(3, Persistence::Slow(2), default_config);
    let l = c.elect();
    c.r(l).propose(7, &put("a", "1")).unwrap();
    assert_eq!(
        c.r(l).propose(7, &put("a", "2")),
        Err(metalraft_replica::ProposeError::DuplicateRequest)
    );
    wait_done(&mut c, l, 7);
    // Once completed, the id may be used again, and completes on its own.
    c.r(l).propose(7, &put("a", "3")).unwrap();
    assert!(c.run_until(100, |c| completions_for(c, l, 7).len() == 2));
    let revs: Vec<i64> = completions_for(&c, l, 7)
        .iter()
        .map(|d| match &d.outcome {
            Outcome::Applied {
                output: Ok(CommandResult::Put(p)),
                ..
            } => p.header.revision,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(revs, vec![2, 3]);
}

/// The old leader's proposal never reached anyone; a new leader commits a
/// different entry at that index: the old proposal completes once, as
/// superseded, never with the other entry's result.
#[test]
fn proposal_on_a_deposed_leader_is_superseded_exactly_once() {
    for p in [Persistence::Immediate, Persistence::Slow(2)] {
        let mut c = kv_cluster(3, p, default_config);
        let old = c.elect();
        c.isolate(old);
        let lost_at = c.r(old).propose(100, &put("x", "lost")).unwrap();
        assert!(c.run_until(300, |c| c.leader().is_some_and(|l| l != old)));
        let new = c
            .slots
            .iter()
            .filter_map(|s| s.replica.as_ref())
            .find(|r| r.role() == metalraft_core::Role::Leader && r.id() != old)
            .unwrap()
            .id();
        c.rounds(3);
        // The new leader's no-op (or this entry) takes the lost entry's index.
        let won_at = c.r(new).propose(200, &put("x", "won")).unwrap();
        assert!(won_at >= lost_at);
        wait_done(&mut c, new, 200);
        c.heal();
        let done = wait_done(&mut c, old, 100);
        assert_eq!(
            done.outcome,
            Outcome::Failed(RequestFailure::Superseded { index: lost_at })
        );
        c.rounds(20);
        assert_eq!(completions_for(&c, old, 100).len(), 1);
        assert_eq!(read_value(&mut c, old, 101, "x"), Some(b"won".to_vec()));
    }
}

/// The old leader's proposal reached a majority before it lost leadership:
/// the next leader commits it, and the old leader (now a follower)
/// completes it with its own result, once.
#[test]
fn proposal_committed_by_the_next_leader_completes_on_the_proposer() {
    let mut c = kv_cluster(3, Persistence::Immediate, default_config);
    let old = c.elect();
    // Replicate, but keep commit from reaching... simply: cut the leader's
    // inbound links so it never learns the acknowledgements.
    for s in 1..=3 {
        if s != old {
            c.cut.insert((s, old));
        }
    }
    let at = c.r(old).propose(100, &put("y", "1")).unwrap();
    c.round();
    assert!(completions_for(&c, old, 100).is_empty());
    c.isolate(old);
    assert!(c.run_until(300, |c| c.leader().is_some_and(|l| l != old)));
    c.rounds(5);
    c.heal();
    let done = wait_done(&mut c, old, 100);
    match done.outcome {
        Outcome::Applied {
            index,
            output: Ok(CommandResult::Put(_)),
        } => assert_eq!(index, at),
        other => panic!("expected applied, got {other:?}"),
    }
    c.rounds(10);
    assert_eq!(completions_for(&c, old, 100).len(), 1);
}

/// A proposal on a leader cut off for good completes as unknown after
/// `request_timeout_ticks`, and never again.
#[test]
fn proposal_times_out_as_unknown_exactly_once() {
    fn cfg(id: NodeId) -> Config {
        let mut c = default_config(id);
        c.request_timeout_ticks = 30;
        c
    }
    let mut c = kv_cluster(3, Persistence::Immediate, cfg);
    let old = c.elect();
    c.isolate(old);
    c.r(old).propose(100, &put("x", "maybe")).unwrap();
    let done = wait_done(&mut c, old, 100);
    assert_eq!(
        done.outcome,
        Outcome::Failed(RequestFailure::Unknown(UnknownReason::TimedOut))
    );
    c.heal();
    c.rounds(50);
    assert_eq!(completions_for(&c, old, 100).len(), 1);
    assert_eq!(c.r(old).pending_proposals(), 0);
}

/// A read on a follower that has its read index but has not applied it yet
/// waits; it is answered with the newest value once the follower catches up.
#[test]
fn follower_reads_wait_for_apply() {
    let mut c = kv_cluster(3, Persistence::Immediate, default_config);
    let l = c.elect();
    let f = (l % 3) + 1;
    c.r(l).propose(1, &put("k", "v1")).unwrap();
    wait_done(&mut c, l, 1);
    c.rounds(3);
    // The leader's appends and heartbeats no longer reach f.
    c.filter = Some(Box::new(move |m| {
        m.to == f
            && matches!(
                m.body,
                MessageBody::AppendEntries { .. } | MessageBody::Heartbeat { .. }
            )
    }));
    c.r(l).propose(2, &put("k", "v2")).unwrap();
    let Outcome::Applied { index: v2_at, .. } = wait_done(&mut c, l, 2).outcome else {
        panic!()
    };
    assert!(c.r(f).applied_index() < v2_at);
    c.r(f).read(50, get("k")).unwrap();
    c.rounds(5);
    assert!(completions_for(&c, f, 50).is_empty(), "served before apply");
    assert_eq!(c.r(f).pending_reads(), 1);
    c.filter = None;
    let done = wait_done(&mut c, f, 50);
    let Outcome::Read {
        index,
        output: Ok(r),
    } = done.outcome
    else {
        panic!("{done:?}")
    };
    assert!(index >= v2_at);
    assert_eq!(r.kvs[0].value, b"v2");
    assert!(c.r(f).applied_index() >= index);
}

fn snapshot_config(id: NodeId) -> Config {
    let mut c = default_config(id);
    c.snapshot_threshold_entries = 20;
    c.core.max_snapshot_chunk_bytes = 64;
    c
}

/// Snapshots are taken at the threshold; a follower that missed the
/// compacted entries is caught up by chunked InstallSnapshot, reassembled
/// by its replica.
#[test]
fn snapshot_threshold_and_chunked_catch_up() {
    let mut c = kv_cluster(3, Persistence::Slow(1), snapshot_config);
    let l = c.elect();
    let lagging = (l % 3) + 1;
    c.isolate(lagging);
    for i in 0..60u64 {
        c.r(l)
            .propose(i, &put(&format!("key{i}"), "some value bytes"))
            .unwrap();
        c.round();
    }
    c.rounds(5);
    let saved = c.slot(l).snapshots_saved.clone();
    assert!(!saved.is_empty(), "no snapshot taken");
    assert!(
        saved[0] >= 20 && saved[0] < 40,
        "first snapshot at the threshold: {saved:?}"
    );
    c.heal();
    assert!(c.run_until(300, |c| c.r(lagging).applied_index()
        == c.r(l).applied_index()));
    let chunks = c
        .trace
        .iter()
        .map(|t| t.matches("InstallSnapshot").count())
        .sum::<usize>();
    assert!(chunks > 1, "the snapshot went in several chunks ({chunks})");
    let installed = c
        .slot(lagging)
        .events
        .iter()
        .any(|e| matches!(e, Event::SnapshotInstalled { .. }));
    assert!(installed, "caught up by snapshot");
    assert!(c.r(lagging).stats().snapshots_installed >= 1);
    assert_eq!(
        c.r(lagging).state_machine().hash(),
        c.r(l).state_machine().hash()
    );
    assert_eq!(
        read_value(&mut c, lagging, 1000, "key59"),
        Some(b"some value bytes".to_vec())
    );
}

thread_local! {
    static CAP: std::cell::Cell<u64> = const { std::cell::Cell::new(64) };
}

/// A snapshot larger than the follower's cap stops that replica with a
/// typed error; its state machine and durable log are untouched, and after a
/// restart with a larger cap it catches up.
#[test]
fn oversized_snapshot_is_refused_and_loses_nothing() {
    fn cfg(id: NodeId) -> Config {
        let mut c = snapshot_config(id);
        c.max_snapshot_bytes = CAP.with(|x| x.get());
        c
    }
    CAP.with(|x| x.set(64));
    let mut c = kv_cluster(3, Persistence::Immediate, cfg);
    let l = c.elect();
    let lagging = (l % 3) + 1;
    c.r(l).propose(0, &put("before", "1")).unwrap();
    wait_done(&mut c, l, 0);
    c.rounds(3);
    let applied_before = c.r(lagging).applied_index();
    let hash_before = c.r(lagging).state_machine().hash();
    let disk_before = c.slot(lagging).disk.all_entries().len();
    c.isolate(lagging);
    for i in 1..50u64 {
        c.r(l)
            .propose(i, &put(&format!("key{i}"), "value"))
            .unwrap();
        c.round();
    }
    c.heal();
    assert!(c.run_until(200, |c| c.slot(lagging).failure.is_some()));
    assert!(matches!(
        c.slot(lagging).failure,
        Some(Fatal::Snapshot(ChunkError::TooLarge { max: 64 }))
    ));
    let r = c.r(lagging);
    assert_eq!(r.applied_index(), applied_before);
    assert_eq!(r.state_machine().hash(), hash_before);
    assert!(c.slot(lagging).disk.all_entries().len() >= disk_before);
    // Restart with room for the snapshot: it catches up.
    CAP.with(|x| x.set(1 << 20));
    c.crash(lagging);
    c.restart(lagging);
    assert!(c.run_until(300, |c| c.r(lagging).applied_index()
        == c.r(l).applied_index()));
    assert_eq!(
        c.r(lagging).state_machine().hash(),
        c.r(l).state_machine().hash()
    );
}

#[test]
fn membership_changes_are_events_and_completions() {
    let mut c = kv_cluster(3, Persistence::Immediate, default_config);
    let l = c.elect();
    let new = c.add_node();
    c.r(l)
        .propose_conf_change(1, ConfChange::new(&[ConfChangeOp::AddLearner(new)]))
        .unwrap();
    assert!(
        matches!(wait_done(&mut c, l, 1).outcome, Outcome::ConfChanged { ref conf_state, .. } if conf_state.learners == vec![new])
    );
    c.r(l)
        .propose_conf_change(2, ConfChange::new(&[ConfChangeOp::AddVoter(new)]))
        .unwrap();
    assert!(
        matches!(wait_done(&mut c, l, 2).outcome, Outcome::ConfChanged { ref conf_state, .. } if conf_state.voters.contains(&new))
    );
    c.rounds(10);
    for id in 1..=new {
        let changes: Vec<_> = c
            .slot(id)
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Membership(m) => Some(m.clone()),
                _ => None,
            })
            .collect();
        // Every node saw both changes (the new one learns them from the log).
        assert!(
            changes
                .iter()
                .any(|m| m.change.ops == vec![ConfChangeOp::AddVoter(new)]),
            "n{id}: {changes:?}"
        );
        assert!(changes.iter().all(|m| !m.self_removed));
    }
    // The leader removes itself: it reports its own removal.
    c.r(l)
        .propose_conf_change(3, ConfChange::new(&[ConfChangeOp::Remove(l)]))
        .unwrap();
    wait_done(&mut c, l, 3);
    assert!(c
        .slot(l)
        .events
        .iter()
        .any(|e| matches!(e, Event::Membership(m) if m.self_removed)));
}

#[test]
fn applied_events_per_revision() {
    let mut c = kv_cluster(3, Persistence::Immediate, default_config);
    let l = c.elect();
    let txn = Command::Txn(TxnRequest {
        compare: vec![],
        success: vec![
            RequestOp::Put(PutRequest {
                key: b"c".to_vec(),
                value: b"3".to_vec(),
                ..Default::default()
            }),
            RequestOp::DeleteRange(DeleteRangeRequest {
                key: b"a".to_vec(),
                ..Default::default()
            }),
        ],
        failure: vec![],
    });
    let del_nothing = Command::DeleteRange(DeleteRangeRequest {
        key: b"zz".to_vec(),
        ..Default::default()
    });
    let del_prefix = Command::DeleteRange(DeleteRangeRequest {
        key: b"b".to_vec(),
        range_end: b"d".to_vec(),
        ..Default::default()
    });
    let cmds = [
        put("a", "1"),
        put("b", "2"),
        txn.encode(),
        del_nothing.encode(),
        del_prefix.encode(),
    ];
    for (i, cmd) in cmds.iter().enumerate() {
        c.r(l).propose(i as u64, cmd).unwrap();
        wait_done(&mut c, l, i as u64);
    }
    c.rounds(3);
    for id in 1..=3 {
        let evs: Vec<_> = c
            .slot(id)
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Applied { event, .. } => Some((event.revision, event.changes.clone())),
                _ => None,
            })
            .collect();
        let keys = |ch: &Vec<KeyChange>| -> Vec<String> {
            ch.iter()
                .map(|c| match c {
                    KeyChange::Put(kv) => format!(
                        "put {} v{} mod{}",
                        String::from_utf8_lossy(&kv.key),
                        kv.version,
                        kv.mod_revision
                    ),
                    KeyChange::Delete(k) => format!("del {}", String::from_utf8_lossy(k)),
                })
                .collect()
        };
        let got: Vec<(i64, Vec<String>)> = evs.iter().map(|(r, ch)| (*r, keys(ch))).collect();
        assert_eq!(
            got,
            vec![
                (2, vec!["put a v1 mod2".to_string()]),
                (3, vec!["put b v1 mod3".to_string()]),
                (4, vec!["put c v1 mod4".to_string(), "del a".to_string()]),
                // The delete of nothing made no revision and no event.
                (5, vec!["del b".to_string(), "del c".to_string()]),
            ],
            "n{id}"
        );
    }
}

#[test]
fn crash_and_restart_from_durable_state() {
    let mut c = kv_cluster(3, Persistence::Slow(2), snapshot_config);
    let l = c.elect();
    for i in 0..30u64 {
        c.r(l).propose(i, &put(&format!("k{i}"), "v")).unwrap();
        c.round();
    }
    let f = (l % 3) + 1;
    c.crash(f);
    c.rounds(5);
    c.restart(f);
    // The leader crashes too, with batches in flight; a new one takes over.
    c.r(l).propose(999, &put("inflight", "?")).unwrap();
    c.crash(l);
    assert!(c.run_until(300, |c| c.leader().is_some()));
    let nl = c.leader().unwrap();
    c.rounds(3);
    c.r(nl).propose(1000, &put("after", "crash")).unwrap();
    wait_done(&mut c, nl, 1000);
    c.restart(l);
    // Request ids start over after a restart: reusing 999 cannot match the
    // entry of the previous life.
    assert!(c.run_until(300, |c| c.r(l).applied_index() == c.r(nl).applied_index()));
    for id in 1..=3 {
        assert_eq!(
            read_value(&mut c, id, 5000 + id, "k29"),
            Some(b"v".to_vec())
        );
        assert_eq!(
            read_value(&mut c, id, 6000 + id, "after"),
            Some(b"crash".to_vec())
        );
    }
    assert!(completions_for(&c, l, 999).len() <= 1);
    let hashes: Vec<_> = (1..=3).map(|i| c.r(i).state_machine().hash()).collect();
    assert!(hashes.windows(2).all(|w| w[0] == w[1]));
}

fn scripted_run(in_place: bool) -> Vec<String> {
    let mut c = kv_cluster(3, Persistence::Slow(1), snapshot_config);
    c.in_place = in_place;
    let l = c.elect();
    for i in 0..30u64 {
        c.r(l)
            .propose(i, &put(&format!("k{}", i % 7), &format!("v{i}")))
            .unwrap();
        if i % 5 == 0 {
            let f = (l % 3) + 1;
            let _ = c.r(f).read(10_000 + i, get("k1"));
        }
        c.round();
    }
    c.isolate(l);
    c.run_until(300, |c| c.leader().is_some_and(|x| x != l));
    c.heal();
    c.rounds(20);
    c.trace
}

#[test]
fn same_inputs_same_outputs() {
    let a = scripted_run(false);
    let b = scripted_run(false);
    assert!(a.len() > 100);
    assert_eq!(a, b);
}

/// `poll_mut` (the output emptied in place, its vectors reused) hands out
/// exactly what `poll` does, output by output.
#[test]
fn poll_mut_hands_out_what_poll_does() {
    let by_value = scripted_run(false);
    let in_place = scripted_run(true);
    assert!(in_place.len() > 100);
    assert_eq!(by_value, in_place);
}

/// Leader changes under load, from a seeded schedule of isolations and
/// crashes: every accepted proposal completes at most once (exactly once
/// unless its node crashed); `Applied` always carries its own write's
/// revision; `Superseded` means its write is nowhere.
#[test]
fn no_completion_carries_another_proposals_result() {
    for seed in 1..=6u64 {
        let mut rng = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut next = move |n: u64| {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (rng >> 33) % n
        };
        let mut c = kv_cluster(
            3,
            if seed % 2 == 0 {
                Persistence::Slow(2)
            } else {
                Persistence::Immediate
            },
            snapshot_config,
        );
        c.elect();
        let mut accepted: Vec<(NodeId, u64, u32)> = Vec::new(); // (node, req, life)
        let mut lives = [0u32; 3];
        let mut req = 0u64;
        for _ in 0..150 {
            if let Some(l) = c.leader() {
                for _ in 0..next(3) {
                    req += 1;
                    if c.r(l).propose(req, &put(&format!("r{req}"), "x")).is_ok() {
                        accepted.push((l, req, lives[l as usize - 1]));
                    }
                }
            }
            match next(20) {
                0 => {
                    c.heal();
                    let v = next(3) + 1;
                    c.isolate(v);
                }
                1 => c.heal(),
                2 => {
                    let v = next(3) + 1;
                    if c.slots[v as usize - 1].replica.is_some()
                        && (1..=3)
                            .filter(|i| c.slots[*i as usize - 1].replica.is_some())
                            .count()
                            == 3
                    {
                        c.crash(v);
                        lives[v as usize - 1] += 1;
                    }
                }
                _ => {}
            }
            for v in 1..=3u64 {
                if c.slots[v as usize - 1].replica.is_none() && next(4) == 0 {
                    c.restart(v);
                }
            }
            c.round();
        }
        c.heal();
        for v in 1..=3u64 {
            if c.slots[v as usize - 1].replica.is_none() {
                c.restart(v);
            }
        }
        assert!(
            c.run_until(2000, |c| (1..=3).all(|v| c.r(v).pending_proposals() == 0)),
            "seed {seed}: proposals left pending"
        );
        let l = c.elect();
        c.rounds(20);
        for (node, r, life) in accepted {
            let done: Vec<Done> = completions_for(&c, node, r);
            let crashed = lives[node as usize - 1] != life;
            assert!(
                done.len() <= 1,
                "seed {seed}: req {r} completed twice: {done:?}"
            );
            assert!(
                crashed || done.len() == 1,
                "seed {seed}: req {r} never completed"
            );
            let stored = c
                .r(l)
                .state_machine()
                .range(&get(&format!("r{r}")))
                .unwrap();
            match done.first().map(|d| &d.outcome) {
                Some(Outcome::Applied {
                    output: Ok(CommandResult::Put(p)),
                    ..
                }) => {
                    assert_eq!(
                        stored.kvs.len(),
                        1,
                        "seed {seed}: applied req {r} is missing"
                    );
                    assert_eq!(
                        stored.kvs[0].mod_revision, p.header.revision,
                        "seed {seed}: req {r} got another write's result"
                    );
                }
                Some(Outcome::Failed(RequestFailure::Superseded { .. })) => {
                    assert!(
                        stored.kvs.is_empty(),
                        "seed {seed}: superseded req {r} was applied"
                    );
                }
                Some(Outcome::Failed(RequestFailure::Unknown(_))) | None => {}
                Some(other) => panic!("seed {seed}: req {r}: {other:?}"),
            }
        }
    }
}

/// postmortem-style scenario: a node's old-term proposal and its new-term
/// proposal sit at the same index. Leader A appends three entries while cut
/// off; the next leader's single no-op truncates A's log to one entry past
/// the old end; A leads again, its no-op and a new proposal land on the
/// indexes of its old second and third. The new proposal must get its own
/// result, the old one must be superseded.
#[test]
fn old_and_new_proposal_of_one_node_at_the_same_index() {
    let mut c = kv_cluster(3, Persistence::Immediate, default_config);
    let a = c.elect();
    let end = c.r(a).node().last_index().unwrap();
    c.isolate(a);
    for req in 1..=3 {
        c.r(a)
            .propose(req, &put(&format!("old{req}"), "x"))
            .unwrap();
    }
    assert!(c.run_until(300, |c| c.leader().is_some_and(|l| l != a)));
    let b = c
        .slots
        .iter()
        .filter_map(|s| s.replica.as_ref())
        .find(|r| r.role() == metalraft_core::Role::Leader && r.id() != a)
        .unwrap()
        .id();
    c.rounds(2);
    assert_eq!(
        c.r(b).node().last_index().unwrap(),
        end + 1,
        "only the new leader's no-op"
    );
    c.heal();
    c.rounds(3);
    c.r(b).transfer_leader(a).unwrap();
    assert!(c.run_until(100, |c| c.leader() == Some(a)));
    c.rounds(2);
    let at = c.r(a).propose(4, &put("new", "y")).unwrap();
    assert_eq!(at, end + 3, "same index as the old third proposal");
    let done = wait_done(&mut c, a, 4);
    let Outcome::Applied {
        output: Ok(CommandResult::Put(p)),
        ..
    } = done.outcome
    else {
        panic!("{done:?}")
    };
    let stored = c.r(a).state_machine().range(&get("new")).unwrap();
    assert_eq!(stored.kvs[0].mod_revision, p.header.revision);
    for old in 1..=3 {
        assert!(
            matches!(
                wait_done(&mut c, a, old).outcome,
                Outcome::Failed(RequestFailure::Superseded { .. })
            ),
            "old {old}"
        );
    }
}

/// postmortem: `poll` handled one batch of the core per call and returned
/// `None` when that batch produced nothing to hand out — a follower applying
/// committed entries without apply events. The next batch of committed
/// entries (`max_apply_bytes` each) then waited for the next input, so a
/// lagging follower applied one batch per heartbeat. Found by the simulator
/// (seed 97 of the default swarm: a liveness failure, a follower 1,400
/// entries behind after the faults stopped).
#[test]
fn poll_applies_every_committed_batch_before_returning_none() {
    use metalraft_core::{Entry, EntryData, HardState, MemStorage};
    use metalraft_replica::{Frame, Origin, Replica};

    let mut disk: MemStorage<Vec<u8>> = MemStorage::bootstrap(&[1, 2, 3]);
    let first = disk.all_entries().last().map_or(1, |e| e.index + 1);
    let entries: Vec<Entry<Vec<u8>>> = (first..first + 100)
        .map(|index| Entry {
            term: 1,
            index,
            data: EntryData::Normal(Frame::encode(
                Origin::Client {
                    node: 2,
                    req_id: index,
                },
                &put(&format!("k{index}"), "v"),
            )),
        })
        .collect();
    disk.append(&entries);
    disk.set_hard_state(HardState {
        term: 1,
        vote: None,
        commit: first + 99,
    });
    let mut cfg = default_config(1);
    cfg.emit_apply_events = false;
    cfg.core.max_apply_bytes = 1; // one entry per batch of the core
    let mut r = Replica::new(cfg, disk, KvStore::new()).unwrap();
    while let Some(out) = r.poll() {
        assert!(out.persist.is_none());
    }
    assert_eq!(r.applied_index(), first + 99);
}
