//! Linearizable reads (thesis §6.4): ReadIndex, forwarding, leases.

mod common;

use common::Network;
use metalraft_core::{MessageKind, ReadError, ReadMode, Role};

/// §6.4: the leader answers a read with an index at least as new as every
/// write committed before the read was requested, after a heartbeat round.
#[test]
fn read_index_on_leader_covers_prior_writes() {
    let mut net = Network::new(3, 1);
    let leader = net.wait_leader();
    let w = net.propose(leader, b"w");
    net.tick_until("write commits", |n| n.nodes[&leader].commit_index() >= w);
    let beats_before = net.delivered;
    net.nodes.get_mut(&leader).unwrap().read_index(7).unwrap();
    net.deliver(10_000);
    let idx = net
        .read_result(leader, 7)
        .expect("answered without waiting for a tick")
        .unwrap();
    assert!(idx >= w);
    assert!(
        net.delivered > beats_before,
        "confirmed without a heartbeat round"
    );
}

/// §6.4: a follower forwards the read; the leader returns its read index.
#[test]
fn read_index_on_follower_is_forwarded() {
    let mut net = Network::new(3, 2);
    let leader = net.wait_leader();
    let w = net.propose(leader, b"w");
    net.tick_until("write commits", |n| n.nodes[&leader].commit_index() >= w);
    let f = if leader == 1 { 2 } else { 1 };
    net.nodes.get_mut(&f).unwrap().read_index(9).unwrap();
    net.deliver(10_000);
    let idx = net.read_result(f, 9).expect("answered").unwrap();
    assert!(idx >= w);
    // The follower can serve it once applied reaches idx.
    net.tick_until("follower applies", |n| n.nodes[&f].applied_index() >= idx);
}

/// §6.4: a deposed leader in a minority partition never confirms a read
/// (that would be a stale read); the read fails once it learns it lost.
#[test]
fn deposed_leader_in_minority_never_serves_reads() {
    for check_quorum in [true, false] {
        let mut net = Network::with_config(5, 3, |c| c.check_quorum = check_quorum);
        let old = net.wait_leader();
        let minority = [old, if old == 1 { 2 } else { 1 }];
        let majority: Vec<u64> = (1..=5).filter(|i| !minority.contains(i)).collect();
        net.partition(&minority, &majority);
        net.nodes.get_mut(&old).unwrap().read_index(1).unwrap();
        // The majority elects a new leader and writes.
        let new = net.tick_until("new leader", |n| {
            n.stable_leader().is_some_and(|l| l != old)
        });
        let _ = new;
        let new = net.stable_leader().unwrap();
        let w = net.propose(new, b"newer");
        net.tick_until("majority commits", |n| n.nodes[&new].commit_index() >= w);
        for _ in 0..50 {
            net.tick();
            assert!(
                !matches!(net.read_result(old, 1), Some(Ok(_))),
                "stale read served by a deposed leader (check_quorum={check_quorum})"
            );
        }
        net.heal();
        net.tick_until("old leader learns", |n| {
            n.nodes[&old].role() != Role::Leader
        });
        net.ticks(2);
        assert_eq!(net.read_result(old, 1), Some(Err(ReadError::LeaderChanged)));
    }
}

/// §6.4 step 1: a new leader answers reads only after its term's no-op
/// commits.
#[test]
fn new_leader_waits_for_its_first_commit() {
    let mut net = Network::new(3, 4);
    let leader = net.wait_leader();
    // Block acknowledgements, then force a new term on the same cluster.
    net.drop_kinds.insert(MessageKind::AppendResponse);
    net.crash(leader);
    let new = net.wait_leader();
    net.nodes.get_mut(&new).unwrap().read_index(5).unwrap();
    net.ticks(30);
    assert_eq!(
        net.read_result(new, 5),
        None,
        "read answered before the no-op committed"
    );
    net.drop_kinds.clear();
    net.tick_until("read answered", |n| n.read_result(new, 5).is_some());
    let idx = net.read_result(new, 5).unwrap().unwrap();
    assert_eq!(
        net.nodes[&new].entries(idx, idx + 1, usize::MAX).unwrap()[0].term,
        net.nodes[&new].term()
    );
}

/// Pending reads are bounded: beyond the limit the request is refused.
#[test]
fn pending_reads_are_bounded() {
    let mut net = Network::with_config(3, 5, |c| c.max_pending_reads = 3);
    let leader = net.wait_leader();
    let f = if leader == 1 { 2 } else { 1 };
    net.isolate(f);
    let node = net.nodes.get_mut(&f).unwrap();
    for ctx in 0..3 {
        node.read_index(ctx).unwrap();
    }
    assert_eq!(node.read_index(3), Err(ReadError::TooManyPending));
}

/// A forwarded read whose answer is lost fails after its deadline instead of
/// hanging.
#[test]
fn lost_forwarded_read_times_out() {
    let mut net = Network::new(3, 6);
    let leader = net.wait_leader();
    let f = if leader == 1 { 2 } else { 1 };
    net.drop_kinds.insert(MessageKind::ReadIndexResponse);
    net.nodes.get_mut(&f).unwrap().read_index(11).unwrap();
    net.tick_until("read fails", |n| n.read_result(f, 11).is_some());
    assert_eq!(net.read_result(f, 11), Some(Err(ReadError::TimedOut)));
    assert_eq!(net.nodes[&f].leader(), Some(leader));
}

/// Thesis §6.4.1: with a lease, the leader answers without a round trip
/// while the lease holds, and stops once it expires.
#[test]
fn lease_reads_skip_round_trip_until_lease_expires() {
    let mut net = Network::with_config(3, 7, |c| c.read_mode = ReadMode::Lease);
    let leader = net.wait_leader();
    net.ticks(3); // a confirmed heartbeat round grants the lease
    let before = net.delivered;
    net.nodes.get_mut(&leader).unwrap().read_index(1).unwrap();
    net.process_ready();
    assert!(
        matches!(net.read_result(leader, 1), Some(Ok(_))),
        "lease read not immediate"
    );
    assert_eq!(net.delivered, before, "lease read sent messages");
    // Heartbeat answers stop (appends still flow, so check-quorum keeps
    // the leader in office): the lease is not renewed and runs out
    // `election_timeout_ticks_min - lease_drift_ticks` ticks after the last
    // confirmed round was sent.
    net.drop_kinds.insert(MessageKind::HeartbeatResponse);
    let cfg = net.configs[&leader].clone();
    let expiry = cfg.election_timeout_ticks_min - cfg.lease_drift_ticks;
    let mut immediate = Vec::new();
    for t in 0..2 * expiry {
        net.propose(leader, b"keepalive");
        let ctx = 100 + u64::from(t);
        net.nodes.get_mut(&leader).unwrap().read_index(ctx).unwrap();
        net.process_ready();
        immediate.push(matches!(net.read_result(leader, ctx), Some(Ok(_))));
        net.tick();
        assert_eq!(net.nodes[&leader].role(), Role::Leader);
    }
    assert!(
        immediate[0],
        "lease should still hold right after the last round"
    );
    assert!(
        immediate[expiry as usize..].iter().all(|&i| !i),
        "read served on an expired lease"
    );
}
