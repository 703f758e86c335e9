//! Repair mode: a member that lost part of its log abstains from elections
//! until a leader has confirmed its log up to the vote barrier
//! (`Config::vote_barrier`; protocol-aware recovery, Alagappan et al.,
//! FAST'18; Raft paper §5.4.1 for why a vote depends on the log; ADR 0021).

mod common;

use std::collections::BTreeMap;

use common::{config, Network, TestNode};
use metalraft_core::{
    EntryData, Error, HardState, MemStorage, Message, MessageBody, Node, NodeId, Role, StepError,
};

/// Ticks a lone node is left alone for: many election timeouts
/// (the default timeout is at most 20 ticks).
const MANY_TIMEOUTS_TICKS: u32 = 1_000;

/// A 3-member network with some committed entries, member 3 then crashed
/// and its storage cut back to the first `keep` entries (its hard state
/// kept, its commit capped), as the server's WAL reader leaves a member
/// with mid-log damage. Returns the network, the cut storage and the last
/// index member 3 held before the crash (the barrier).
fn damaged_member(seed: u64, keep: usize) -> (Network, MemStorage<Vec<u8>>, u64) {
    let mut net = Network::new(3, seed);
    let leader = net.wait_leader();
    let leader = if leader == 3 {
        net.nodes.get_mut(&3).unwrap().transfer_leader(1).unwrap();
        net.tick_until("leadership moves off 3", |n| n.stable_leader() == Some(1));
        1
    } else {
        leader
    };
    for i in 0..20u8 {
        net.propose(leader, &[i]);
    }
    net.tick_until("member 3 holds everything", |n| {
        n.nodes[&3].commit_index() == n.nodes[&leader].commit_index()
            && n.nodes[&3].persisted_index() == n.nodes[&leader].last_index().unwrap()
    });
    net.crash(3);
    let full = net.down.remove(&3).unwrap();
    let barrier = full.all_entries().last().unwrap().index;
    let mut cut = MemStorage::new_with_conf(Default::default());
    cut.append(&full.all_entries()[..keep]);
    let hs = full.hard_state();
    cut.set_hard_state(HardState {
        commit: hs.commit.min(keep as u64),
        ..hs
    });
    (net, cut, barrier)
}

fn lone_node(barrier: Option<u64>) -> TestNode {
    let mut cfg = config(1, 9);
    cfg.vote_barrier = barrier;
    let storage = MemStorage::bootstrap(&[1, 2, 3]);
    Node::new(cfg, storage, 0).unwrap()
}

/// Ticks a node with no peers, carrying out its Ready batches.
fn tick_alone(node: &mut TestNode, ticks: u32) {
    for _ in 0..ticks {
        node.tick().unwrap();
        while node.has_ready() {
            let mut rd = node.ready().unwrap();
            if let Some(p) = rd.take_persist() {
                node.storage_mut().apply_persist(&p);
                node.on_persisted(p.into_token()).unwrap();
            }
        }
    }
}

/// The vote answer `node` sends for a request from 2 in `term`.
fn vote_answer(node: &mut TestNode, pre_vote: bool, term: u64) -> Option<bool> {
    let req = Message {
        from: 2,
        to: 1,
        term,
        body: MessageBody::RequestVote {
            pre_vote,
            transfer: false,
            // A log far ahead of ours: up to date by any measure.
            last_log_index: 100,
            last_log_term: term.saturating_sub(1).max(1),
        },
    };
    node.step(req).unwrap();
    let mut rd = node.ready().unwrap();
    let msgs = rd.take_messages();
    if let Some(p) = rd.take_persist() {
        node.storage_mut().apply_persist(&p);
        node.on_persisted(p.into_token()).unwrap();
    }
    let mut msgs: Vec<_> = msgs;
    if node.has_ready() {
        msgs.extend(node.ready().unwrap().take_messages());
    }
    msgs.iter().find_map(|m| match m.body {
        MessageBody::RequestVoteResponse {
            pre_vote: p,
            granted,
        } if p == pre_vote => Some(granted),
        _ => None,
    })
}

/// §5.4.1 + ADR 0021: a node with a barrier refuses votes and pre-votes
/// that the same node without a barrier grants.
#[test]
fn barrier_refuses_votes_and_pre_votes() {
    for pre_vote in [true, false] {
        let mut control = lone_node(None);
        assert_eq!(vote_answer(&mut control, pre_vote, 5), Some(true));
        let mut repairing = lone_node(Some(50));
        assert_eq!(
            vote_answer(&mut repairing, pre_vote, 5),
            Some(false),
            "pre_vote={pre_vote}"
        );
        assert_eq!(repairing.vote(), None);
        assert_eq!(repairing.vote_barrier(), Some(50));
    }
}

/// A node with a barrier never campaigns, however long it hears nothing,
/// and refuses an explicit campaign and a TimeoutNow.
#[test]
fn barrier_never_campaigns() {
    let mut control = lone_node(None);
    tick_alone(&mut control, MANY_TIMEOUTS_TICKS);
    assert!(control.stats().campaigns > 0, "the control must campaign");

    let mut node = lone_node(Some(7));
    tick_alone(&mut node, MANY_TIMEOUTS_TICKS);
    assert_eq!(node.stats().campaigns, 0);
    assert_eq!(node.role(), Role::Follower);
    assert_eq!(node.campaign(), Err(Error::Repairing { barrier: 7 }));
    let t = node.term();
    let r = node.step(Message {
        from: 2,
        to: 1,
        term: t,
        body: MessageBody::TimeoutNow,
    });
    assert_eq!(r, Err(StepError::Unexpected));
    assert_eq!(node.stats().campaigns, 0);
    assert_eq!(node.vote_barrier(), Some(7));
}

/// The barrier never clears from the node's own entries: a node whose log
/// already reaches past the barrier keeps abstaining, cut off from any
/// leader, however long it waits.
#[test]
fn barrier_never_clears_from_own_entries() {
    let (mut net, full, _) = damaged_member(3, 1);
    let _ = full;
    net.crash(1);
    let own = net.down[&1].clone();
    let own_last = own.all_entries().last().unwrap().index;
    let barrier = own_last / 2;
    let mut cfg = net.configs[&1].clone();
    cfg.vote_barrier = Some(barrier);
    net.configs.insert(1, cfg);
    net.restart(1);
    net.isolate(1);
    net.ticks(MANY_TIMEOUTS_TICKS);
    assert!(net.nodes[&1].last_index().unwrap() > barrier);
    assert_eq!(net.nodes[&1].vote_barrier(), Some(barrier));
    assert_eq!(net.nodes[&1].stats().campaigns, 0);
    assert_eq!(net.nodes[&1].role(), Role::Follower);
}

/// The whole repair: member 3 restarts with a shorter log and a barrier,
/// abstains, catches up from the leader (which must forget its old match
/// index for it, busy or idle), the barrier clears through a Persist batch, and then
/// it votes and can lead again; every member applies the same sequence.
#[test]
fn repaired_member_catches_up_then_votes() {
    for seed in 0..5 {
        let (mut net, storage, barrier) = damaged_member(seed, 6);
        let mut cfg = net.configs[&3].clone();
        cfg.vote_barrier = Some(barrier);
        net.configs.insert(3, cfg);
        net.down.insert(3, storage);
        net.restart(3);
        assert_eq!(net.nodes[&3].vote_barrier(), Some(barrier));
        let leader = net.stable_leader().unwrap();
        // Odd seeds: an idle leader, which sends no append by itself; the
        // member's rejection of a heartbeat makes it probe.
        if seed % 2 == 0 {
            net.propose(leader, b"after");
        }
        net.tick_until("member 3 catches up", |n| {
            n.nodes[&3].vote_barrier().is_none()
        });
        assert!(net.nodes[&3].last_index().unwrap() >= barrier);
        net.tick_until("member 3 applies everything", |n| {
            n.nodes[&3].applied_index() == n.nodes[&leader].applied_index()
        });
        net.check_applied_prefixes();
        // Now a voter again: without the old leader, 3 and the other
        // member elect a leader, which needs 3's vote or 3 itself.
        net.crash(leader);
        let next = net.wait_leader();
        assert_ne!(next, leader, "seed {seed}");
        let others: Vec<NodeId> = [1, 2, 3].into_iter().filter(|&i| i != leader).collect();
        assert!(others.contains(&next));
        net.propose(next, b"new leader");
        net.tick_until("3 applies under the new leader", |n| {
            n.applied_data(3).last().map(Vec::as_slice) == Some(b"new leader".as_slice())
        });
        net.check_applied_prefixes();
    }
}

/// Without a barrier the same damaged member could vote for a candidate
/// that lacks committed entries (the teeth of the barrier): here member 3
/// lost entries and member 2 never had them; 3 grants 2's request at once
/// when restarted without a barrier, and refuses it with one.
#[test]
fn without_barrier_a_damaged_member_votes_for_a_stale_candidate() {
    let (_net, storage, barrier) = damaged_member(1, 3);
    let stale_candidate_last = (3u64, storage.all_entries()[2].term);
    let ask = |barrier: Option<u64>| {
        let mut cfg = config(3, 1);
        cfg.vote_barrier = barrier;
        let mut node = Node::new(cfg, storage.clone(), 0).unwrap();
        let t = node.term() + 1;
        node.step(Message {
            from: 2,
            to: 3,
            term: t,
            body: MessageBody::RequestVote {
                pre_vote: false,
                transfer: false,
                last_log_index: stale_candidate_last.0,
                last_log_term: stale_candidate_last.1,
            },
        })
        .unwrap();
        let mut rd = node.ready().unwrap();
        let p = rd.take_persist().unwrap();
        node.storage_mut().apply_persist(&p);
        node.on_persisted(p.into_token()).unwrap();
        let msgs = node.ready().unwrap().take_messages();
        msgs.iter().any(|m| {
            matches!(
                m.body,
                MessageBody::RequestVoteResponse { granted: true, .. }
            )
        })
    };
    assert!(ask(None), "without a barrier the vote is granted");
    assert!(!ask(Some(barrier)), "with the barrier it is refused");
}

/// A barrier clears through a snapshot from the leader, when the snapshot
/// reaches it, and the Persist batch says so.
#[test]
fn barrier_clears_through_leader_snapshot() {
    let (mut net, storage, barrier) = damaged_member(4, 2);
    let leader = net.stable_leader().unwrap();
    net.snapshot(leader);
    let mut cfg = net.configs[&3].clone();
    cfg.vote_barrier = Some(barrier);
    net.configs.insert(3, cfg);
    net.down.insert(3, storage);
    net.restart(3);
    net.tick_until("member 3 repaired", |n| {
        n.nodes[&3].vote_barrier().is_none()
    });
    assert!(net.nodes[&3].stats().snapshots_installed >= 1);
    net.check_applied_prefixes();
}

/// `Persist::clears_vote_barrier` is set on exactly one batch, the one
/// holding the entries that reach the barrier.
#[test]
fn clearing_is_handed_out_once_in_a_synced_batch() {
    let mut cfg = config(1, 2);
    cfg.vote_barrier = Some(3);
    let mut storages = BTreeMap::new();
    storages.insert(1, MemStorage::bootstrap(&[1, 2, 3]));
    let mut node = Node::new(cfg, storages.remove(&1).unwrap(), 0).unwrap();
    let term = 2;
    let entries: Vec<_> = (2..=3)
        .map(|i| metalraft_core::Entry {
            term,
            index: i,
            data: metalraft_core::EntryData::Normal(vec![i as u8]),
        })
        .collect();
    let append = |prev: u64, entries: Vec<metalraft_core::Entry<Vec<u8>>>| Message {
        from: 2,
        to: 1,
        term,
        body: MessageBody::AppendEntries {
            prev_log_index: prev,
            prev_log_term: if prev == 1 { 1 } else { term },
            entries,
            leader_commit: 0,
        },
    };
    // Up to index 2 only: not yet.
    node.step(append(1, entries[..1].to_vec())).unwrap();
    let mut rd = node.ready().unwrap();
    let p = rd.take_persist().unwrap();
    assert!(!p.clears_vote_barrier());
    node.storage_mut().apply_persist(&p);
    node.on_persisted(p.into_token()).unwrap();
    assert_eq!(node.vote_barrier(), Some(3));
    // Reaching 3 clears it, in a synced batch.
    node.step(append(2, entries[1..].to_vec())).unwrap();
    let mut rd = node.ready().unwrap();
    let p = rd.take_persist().unwrap();
    assert!(p.clears_vote_barrier() && p.must_sync());
    node.storage_mut().apply_persist(&p);
    node.on_persisted(p.into_token()).unwrap();
    assert_eq!(node.vote_barrier(), None);
    // Never again.
    node.step(append(3, Vec::new())).unwrap();
    let mut rd = node.ready().unwrap();
    if let Some(p) = rd.take_persist() {
        assert!(!p.clears_vote_barrier());
    }
}

/// What happened to a committed entry after the member holding its only
/// other copy lost it (see [`lost_entry_run`]).
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// A leader was elected whose log lacks the committed entry (Leader
    /// Completeness, §5.4, violated): the safety violation.
    LeaderWithoutCommittedEntry { leader: NodeId, term: u64 },
    /// No such leader; the cluster recovered and every member applied the
    /// entry, in the same order.
    Safe,
}

/// §5.4 with a damaged voter, the way the simulator checks it: leader `l`
/// commits `e` with member `d` only (member `s` is cut off), then `l`
/// crashes and `d` restarts having lost `e` from the middle of its log
/// (entries from `e` on are cut; its term and vote are kept), with or
/// without the vote barrier; `s` is reconnected. Without the barrier `d`
/// votes for `s` (or campaigns itself) and a leader without `e` is elected;
/// with it nobody can be elected until `l` returns, and `l` then repairs
/// `d`.
fn lost_entry_run(seed: u64, with_barrier: bool) -> Outcome {
    let mut net = Network::new(3, seed);
    let l = net.wait_leader();
    let (s, d) = match l {
        1 => (2, 3),
        2 => (3, 1),
        _ => (1, 2),
    };
    net.isolate(s);
    let e = net.propose(l, b"e");
    net.tick_until("e committed by l and d", |n| {
        n.nodes[&l].commit_index() >= e && n.nodes[&d].persisted_index() >= e
    });
    net.tick_until("l applies e", |n| {
        n.applied[&l].iter().any(|(i, _)| *i == e)
    });
    net.crash(l);
    net.crash(d);
    let full = net.down.remove(&d).unwrap();
    let mut cut = MemStorage::new_with_conf(Default::default());
    let keep: Vec<_> = full
        .all_entries()
        .iter()
        .filter(|x| x.index < e)
        .cloned()
        .collect();
    cut.append(&keep);
    let hs = full.hard_state();
    cut.set_hard_state(HardState {
        commit: hs.commit.min(e - 1),
        ..hs
    });
    let mut cfg = net.configs[&d].clone();
    cfg.vote_barrier = with_barrier.then_some(full.all_entries().last().unwrap().index);
    net.configs.insert(d, cfg);
    net.down.insert(d, cut);
    net.restart(d);
    net.heal();
    // Many election timeouts with `l` down.
    for _ in 0..MANY_TIMEOUTS_TICKS / 5 {
        net.tick();
        for (&id, node) in &net.nodes {
            if node.role() == Role::Leader {
                let has_e = node.entries(e, e + 1, usize::MAX).is_ok_and(|x| {
                    x.first()
                        .is_some_and(|x| matches!(&x.data, EntryData::Normal(v) if v == b"e"))
                });
                if !has_e {
                    return Outcome::LeaderWithoutCommittedEntry {
                        leader: id,
                        term: node.term(),
                    };
                }
            }
        }
    }
    assert!(net.leader().is_none(), "only a leader without e could win");
    assert_eq!(net.nodes[&d].stats().campaigns, 0);
    net.restart(l);
    net.tick_until("d repaired by the returning leader", |n| {
        n.nodes[&d].vote_barrier().is_none()
            && n.applied[&d].iter().any(|(i, v)| *i == e && v == b"e")
    });
    net.check_applied_prefixes();
    Outcome::Safe
}

/// The simulator-style check of the barrier, with teeth: across seeds,
/// ignoring the barrier always elects a leader without a committed entry,
/// and honouring it never does.
#[test]
fn lost_entry_without_barrier_breaks_leader_completeness_and_with_it_never() {
    for seed in 0..8 {
        let without = lost_entry_run(seed, false);
        assert!(
            matches!(without, Outcome::LeaderWithoutCommittedEntry { .. }),
            "seed {seed}: the teeth variant must find the violation, got {without:?}"
        );
        assert_eq!(lost_entry_run(seed, true), Outcome::Safe, "seed {seed}");
    }
}
