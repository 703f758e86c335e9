//! Leadership transfer (thesis §3.10).

mod common;

use common::Network;
use metalraft_core::{ProposeError, Role, TransferError};

/// §3.10: the target becomes leader without waiting for an election timeout.
#[test]
fn transfer_to_up_to_date_follower() {
    let mut net = Network::new(3, 1);
    let leader = net.wait_leader();
    let target = if leader == 3 { 1 } else { 3 };
    let term = net.nodes[&leader].term();
    net.nodes
        .get_mut(&leader)
        .unwrap()
        .transfer_leader(target)
        .unwrap();
    net.deliver(10_000);
    assert_eq!(
        net.nodes[&target].role(),
        Role::Leader,
        "transfer needs no tick"
    );
    assert_eq!(net.nodes[&target].term(), term + 1);
    net.ticks(2);
    assert_eq!(net.stable_leader(), Some(target));
}

/// §3.10: a lagging target is first brought up to date; meanwhile the
/// leader refuses proposals.
#[test]
fn transfer_to_lagging_follower() {
    let mut net = Network::new(3, 2);
    let leader = net.wait_leader();
    let target = if leader == 3 { 1 } else { 3 };
    net.isolate(target);
    let mut last = 0;
    for i in 0..20u8 {
        last = net.propose(leader, &[i]);
    }
    net.tick_until("majority commits", |n| {
        n.nodes[&leader].commit_index() >= last
    });
    net.nodes
        .get_mut(&leader)
        .unwrap()
        .transfer_leader(target)
        .unwrap();
    assert_eq!(
        net.nodes.get_mut(&leader).unwrap().propose(b"x".to_vec()),
        Err(ProposeError::TransferInProgress)
    );
    net.heal();
    net.tick_until("target leads", |n| n.stable_leader() == Some(target));
    assert!(net.nodes[&target].last_index().unwrap() >= last);
    net.check_applied_prefixes();
}

/// §3.10: a transfer that cannot finish is abandoned after an election
/// timeout and the leader accepts proposals again.
#[test]
fn transfer_times_out() {
    let mut net = Network::new(3, 3);
    let leader = net.wait_leader();
    let target = if leader == 3 { 1 } else { 3 };
    net.isolate(target);
    net.nodes
        .get_mut(&leader)
        .unwrap()
        .transfer_leader(target)
        .unwrap();
    let min = net.configs[&leader].election_timeout_ticks_min;
    let t = net.tick_until("transfer abandoned", |n| {
        n.nodes[&leader].lead_transferee().is_none()
    });
    assert!(t <= min + 1);
    assert_eq!(net.nodes[&leader].role(), Role::Leader);
    assert_eq!(net.nodes[&leader].stats().transfers_aborted, 1);
    assert!(net
        .nodes
        .get_mut(&leader)
        .unwrap()
        .propose(b"ok".to_vec())
        .is_ok());
}

/// Transfers to unknown nodes or from followers are errors.
#[test]
fn transfer_errors() {
    let mut net = Network::new(3, 4);
    let leader = net.wait_leader();
    let f = if leader == 1 { 2 } else { 1 };
    assert_eq!(
        net.nodes.get_mut(&leader).unwrap().transfer_leader(9),
        Err(TransferError::UnknownNode(9))
    );
    assert_eq!(
        net.nodes.get_mut(&f).unwrap().transfer_leader(leader),
        Err(TransferError::NotLeader {
            leader: Some(leader)
        })
    );
    assert_eq!(
        net.nodes.get_mut(&leader).unwrap().transfer_leader(leader),
        Ok(())
    );
}
