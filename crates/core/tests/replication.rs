//! Log replication and commitment (Raft paper §5.3, §5.4).

mod common;

use std::collections::BTreeMap;

use common::Network;
use metalraft_core::{
    ConfState, Entry, EntryData, HardState, MemStorage, MessageBody, MessageKind, ProposeError,
    Role,
};

fn entry(index: u64, term: u64, tag: &str) -> Entry<Vec<u8>> {
    Entry {
        term,
        index,
        data: EntryData::Normal(tag.as_bytes().to_vec()),
    }
}

fn storage(entries: &[Entry<Vec<u8>>], term: u64) -> MemStorage<Vec<u8>> {
    let mut s = MemStorage::new_with_conf(ConfState::with_voters(&[1, 2, 3, 4, 5]));
    s.append(entries);
    s.set_hard_state(HardState {
        term,
        vote: None,
        commit: 0,
    });
    s
}

/// §5.3: proposals are replicated and applied in the same order everywhere.
#[test]
fn proposals_commit_and_apply_everywhere_in_order() {
    let mut net = Network::new(3, 4);
    let leader = net.wait_leader();
    let mut last = 0;
    for i in 0..100u32 {
        last = net.propose(leader, &i.to_be_bytes());
    }
    net.tick_until("all applied", |n| {
        n.nodes.values().all(|x| x.applied_index() >= last)
    });
    let expect: Vec<Vec<u8>> = (0..100u32).map(|i| i.to_be_bytes().to_vec()).collect();
    for id in 1..=3 {
        assert_eq!(net.applied_data(id), expect);
    }
}

/// §5.3 under a hostile network: drops, duplicates and reordering delay
/// but never corrupt replication.
#[test]
fn replication_survives_drop_duplicate_reorder() {
    for seed in 0..10 {
        let mut net = Network::new(5, seed);
        net.drop_percent = 20;
        net.dup_percent = 20;
        net.reorder = true;
        let mut proposed = 0;
        let mut ticks = 0;
        while proposed < 30 && ticks < 5_000 {
            if let Some(l) = net.stable_leader() {
                if net
                    .nodes
                    .get_mut(&l)
                    .unwrap()
                    .propose(vec![proposed])
                    .is_ok()
                {
                    proposed += 1;
                }
            }
            net.tick();
            ticks += 1;
            net.check_applied_prefixes();
        }
        net.drop_percent = 0;
        net.dup_percent = 0;
        net.tick_until("converge", |n| {
            let c: Vec<u64> = n.nodes.values().map(|x| x.applied_index()).collect();
            c.iter().all(|&x| x == c[0] && x > 0)
        });
        net.check_applied_prefixes();
    }
}

/// §5.3: a follower with many conflicting entries from several old terms is
/// repaired; the conflict-term hint skips a whole term per round trip.
#[test]
fn log_repair_of_follower_with_many_conflicting_entries() {
    let mut stores = BTreeMap::new();
    let common = [entry(1, 1, "a")];
    // Node 5 holds 300 entries from terms 2, 3, 4 that never committed.
    let mut bad = common.to_vec();
    for i in 2..=301 {
        bad.push(entry(i, 2 + (i - 2) / 100, "junk"));
    }
    stores.insert(5, storage(&bad, 4));
    for id in 1..=4 {
        stores.insert(id, storage(&common, 4));
    }
    let mut net = Network::with_storages(5, 1, stores, |_| {});
    net.nodes.get_mut(&1).unwrap().campaign().unwrap();
    net.deliver(100_000);
    let leader = net.wait_leader();
    assert_ne!(leader, 5);
    let idx = net.propose(leader, b"good");
    net.tick_until("5 repaired", |n| n.nodes[&5].applied_index() >= idx);
    assert_eq!(net.applied_data(5), vec![b"a".to_vec(), b"good".to_vec()]);
    net.check_applied_prefixes();
}

/// §5.4.2, Figure 8: a leader does not commit an entry of an older term by
/// counting replicas, only through an entry of its own term.
#[test]
fn figure_8_old_term_entry_not_committed_by_counting() {
    // (a)/(b) of Figure 8, set up directly: index 2 from term 2 is on S1 and
    // S2; S5 holds a different index 2 from term 3. Everyone is at term 3.
    let base = entry(1, 1, "base");
    let mut stores = BTreeMap::new();
    stores.insert(1, storage(&[base.clone(), entry(2, 2, "t2")], 3));
    stores.insert(2, storage(&[base.clone(), entry(2, 2, "t2")], 3));
    stores.insert(3, storage(std::slice::from_ref(&base), 3));
    stores.insert(4, storage(std::slice::from_ref(&base), 3));
    stores.insert(5, storage(&[base.clone(), entry(2, 3, "t3")], 3));
    let mut net = Network::with_storages(5, 8, stores, |c| {
        c.max_entries_per_msg = 1;
        c.pre_vote = false;
    });
    // (c): S1 becomes leader in term 4 and replicates index 2 to S3, so index
    // 2 is on a majority (S1, S2, S3) — but its own term-4 entry (index 3)
    // is stripped from every append on the way.
    net.mutate = Some(Box::new(|m| {
        if let MessageBody::AppendEntries { entries, .. } = &mut m.body {
            entries.retain(|e| e.index < 3);
        }
    }));
    net.crash(5);
    net.nodes.get_mut(&1).unwrap().campaign().unwrap();
    net.deliver(100_000);
    assert_eq!(net.nodes[&1].role(), Role::Leader);
    assert_eq!(net.nodes[&1].term(), 4);
    net.ticks(3);
    let s3 = net.nodes[&3].storage().all_entries().to_vec();
    assert_eq!(s3.len(), 2, "index 2 reached S3");
    assert!(
        net.nodes[&1].commit_index() < 2,
        "Figure 8: must not commit index 2 by counting"
    );
    // (d): S1 crashes; S5 (last term 3) wins and overwrites index 2 — allowed,
    // because index 2 was never committed.
    net.crash(1);
    net.mutate = None;
    net.restart(5);
    // Only S5 can collect votes (the others' requests reach only S5, which
    // refuses them but learns their terms), so the outcome does not depend
    // on timing.
    net.filter = Some(Box::new(|m| {
        m.from != 5 && m.to != 5 && m.body.kind() == MessageKind::Vote
    }));
    net.tick_until("S5 leads", |n| n.stable_leader() == Some(5));
    net.tick_until("S5 commits", |n| n.nodes[&5].commit_index() >= 3);
    let committed2 = net.nodes[&5].entries(2, 3, usize::MAX).unwrap();
    assert_eq!(committed2[0].term, 3);
    net.restart(1);
    net.tick_until("S1 repaired", |n| n.nodes[&1].commit_index() >= 3);
    net.check_applied_prefixes();
    for id in 1..=5 {
        assert!(
            !net.applied_data(id).contains(&b"t2".to_vec()),
            "node {id} applied a lost entry"
        );
    }
}

/// §5.3: a deposed leader's uncommitted entries are overwritten by the new
/// leader's log.
#[test]
fn deposed_leader_uncommitted_entries_are_overwritten() {
    let mut net = Network::new(3, 21);
    let old = net.wait_leader();
    net.isolate(old);
    for i in 0..20u8 {
        net.nodes
            .get_mut(&old)
            .unwrap()
            .propose(vec![0xEE, i])
            .unwrap();
    }
    net.deliver(1000);
    let new = net.tick_until("new leader", |n| {
        n.stable_leader().is_some_and(|l| l != old)
    });
    let _ = new;
    let new = net.stable_leader().unwrap();
    let idx = net.propose(new, b"new");
    net.heal();
    net.tick_until("old leader repaired", |n| {
        n.nodes[&old].applied_index() >= idx
    });
    assert!(net
        .applied_data(old)
        .iter()
        .all(|d| d.first() != Some(&0xEE)));
    assert_eq!(net.nodes[&old].role(), Role::Follower);
    net.check_applied_prefixes();
}

/// A follower rejects proposals and names the leader.
#[test]
fn propose_on_follower_names_the_leader() {
    let mut net = Network::new(3, 2);
    let leader = net.wait_leader();
    let f = if leader == 1 { 2 } else { 1 };
    let err = net
        .nodes
        .get_mut(&f)
        .unwrap()
        .propose(b"x".to_vec())
        .unwrap_err();
    assert_eq!(
        err,
        ProposeError::NotLeader {
            leader: Some(leader)
        }
    );
}

/// The leader refuses proposals beyond `max_uncommitted_bytes` instead of
/// queueing them forever, and accepts again once entries commit.
#[test]
fn uncommitted_log_is_bounded() {
    let mut net = Network::with_config(3, 2, |c| c.max_uncommitted_bytes = 1000);
    let leader = net.wait_leader();
    let others: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();
    for &o in &others {
        net.isolate(o);
    }
    let mut accepted = 0;
    let err = loop {
        match net.nodes.get_mut(&leader).unwrap().propose(vec![0; 100]) {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 100, "limit not enforced");
    };
    assert_eq!(err, ProposeError::UncommittedLimit);
    assert_eq!(accepted, 1000 / 124);
    net.heal();
    net.tick_until("commit frees the budget", |n| {
        n.nodes[&leader].commit_index() >= n.nodes[&leader].last_index().unwrap()
    });
    assert!(net
        .nodes
        .get_mut(&leader)
        .unwrap()
        .propose(vec![0; 100])
        .is_ok());
}

/// Flow control: with the follower silent, the leader keeps at most
/// `max_inflight_msgs` appends outstanding to it.
#[test]
fn inflight_appends_are_bounded() {
    let mut net = Network::with_config(3, 6, |c| {
        c.max_inflight_msgs = 4;
        c.max_entries_per_msg = 1;
    });
    let leader = net.wait_leader();
    let f = if leader == 1 { 2 } else { 1 };
    // Let f's responses vanish; it keeps receiving.
    net.filter = Some(Box::new(move |m| {
        m.from == f && m.body.kind() == MessageKind::AppendResponse
    }));
    for i in 0..50u8 {
        net.nodes
            .get_mut(&leader)
            .unwrap()
            .propose(vec![i])
            .unwrap();
    }
    let before = net.nodes[&f].last_index().unwrap();
    net.deliver(100_000);
    let after = net.nodes[&f].last_index().unwrap();
    assert!(
        after - before <= 4,
        "sent {} entries without acks",
        after - before
    );
    net.filter = None;
    let last = net.nodes[&leader].last_index().unwrap();
    net.tick_until("f catches up", |n| n.nodes[&f].applied_index() >= last);
}
