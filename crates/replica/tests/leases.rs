//! Lease expiry across a cluster of real replicas running
//! `LeasedMvccStore`, in virtual time (one round = 100 ms): only the leader
//! revokes, through the log; keepalives on the leader keep a lease alive
//! across a leader crash (the new leader restarts the countdown in full);
//! once keepalives stop the key goes on every replica, never before its TTL.
#![cfg(feature = "leases")]

mod common;

use common::*;
use metalraft_core::NodeId;
use metalraft_kv::{Command, LeaseGrantRequest, LeaseOption, PutRequest};
use metalraft_replica::{Instant, LeasedMvccStore, Renew, StateMachine};

const ROUND_US: u64 = 100_000;
const TTL_SECS: i64 = 3;
const TTL_ROUNDS: u64 = TTL_SECS as u64 * 1_000_000 / ROUND_US;
const LEASE: i64 = 7;

fn cluster() -> Cluster<LeasedMvccStore> {
    Cluster::new(
        3,
        Persistence::Immediate,
        default_config,
        LeasedMvccStore::default,
        |d| {
            let mut sm = LeasedMvccStore::default();
            let index = metalraft_kv::MvccStore::restore(d)
                .expect("restores")
                .applied_index();
            sm.restore(index, d).expect("durable snapshot restores");
            sm
        },
    )
}

fn now(c: &Cluster<LeasedMvccStore>) -> Instant {
    Instant(c.round * ROUND_US)
}

/// One round with wall time: every live replica sees the clock first.
fn step(c: &mut Cluster<LeasedMvccStore>) {
    let t = now(c);
    for s in &mut c.slots {
        if let Some(r) = s.replica.as_mut() {
            r.handle_timeout(t);
        }
    }
    c.round();
}

fn live_with_key(c: &Cluster<LeasedMvccStore>) -> (usize, usize) {
    let live: Vec<_> = c.slots.iter().filter_map(|s| s.replica.as_ref()).collect();
    let with = live
        .iter()
        .filter(|r| r.state_machine().store().len() == 1)
        .count();
    (with, live.len())
}

fn propose(c: &mut Cluster<LeasedMvccStore>, req: u64, cmd: &Command) {
    let l = c.leader().expect("leader");
    c.r(l).propose(req, &cmd.encode()).expect("proposed");
    for _ in 0..5 {
        step(c);
    }
}

/// Grants [`LEASE`] and puts `lock` under it, through the log.
fn grant_and_attach(c: &mut Cluster<LeasedMvccStore>) {
    propose(
        c,
        1,
        &Command::LeaseGrant(LeaseGrantRequest {
            id: LEASE,
            ttl: TTL_SECS,
        }),
    );
    let put = Command::LeasePut(
        PutRequest {
            key: b"lock".to_vec(),
            value: b"me".to_vec(),
            ..Default::default()
        },
        LeaseOption {
            lease: LEASE,
            ignore_lease: false,
        },
    );
    propose(c, 2, &put);
}

fn keepalive(c: &mut Cluster<LeasedMvccStore>, l: NodeId) -> Renew {
    let t = now(c);
    c.r(l)
        .state_machine_mut()
        .lessor_mut()
        .renew(LEASE, TTL_SECS, t)
}

#[test]
fn a_kept_alive_lease_survives_a_leader_crash_and_expires_after_keepalives_stop() {
    let mut c = cluster();
    c.elect();
    grant_and_attach(&mut c);
    assert_eq!(live_with_key(&c), (3, 3));

    // Keepalives every second for 6 s (two TTLs), the leader crashing at 2 s.
    let start = c.round;
    let mut crashed = None;
    while c.round < start + 2 * TTL_ROUNDS {
        if (c.round - start) % 10 == 0 {
            if let Some(l) = c.leader() {
                assert_eq!(keepalive(&mut c, l), Renew::Renewed);
            }
        }
        if crashed.is_none() && c.round == start + 20 {
            let l = c.leader().expect("leader");
            c.crash(l);
            crashed = Some(l);
        }
        step(&mut c);
        let (with, live) = live_with_key(&c);
        assert_eq!(with, live, "round {}: the kept-alive key vanished", c.round);
    }
    let old = crashed.expect("crashed");
    c.restart(old);
    let l = c.leader().expect("a new leader");
    assert_ne!(l, old);

    // Keepalives stop: the key stays for a full TTL, then goes everywhere.
    assert_eq!(keepalive(&mut c, l), Renew::Renewed);
    let last = c.round;
    while c.round < last + TTL_ROUNDS {
        step(&mut c);
        let (with, live) = live_with_key(&c);
        // The revoke is proposed once the deadline passed: applied a round later.
        if c.round < last + TTL_ROUNDS {
            assert_eq!(with, live, "round {}: expired early", c.round);
        }
    }
    let gone = c.run_until(30, |c| {
        let t = now(c);
        for s in &mut c.slots {
            if let Some(r) = s.replica.as_mut() {
                r.handle_timeout(t);
            }
        }
        live_with_key(c).0 == 0
    });
    assert!(gone, "the lease did not expire within TTL + 3 s");
    for s in &c.slots {
        let store = s.replica.as_ref().expect("live").state_machine().store();
        assert_eq!(store.lease_count(), 0);
    }
}

/// A lease that expires while a leadership transfer is pending: the core
/// refuses the revoke (etcd drops proposals during a transfer too), and
/// the replica proposes it again at the next `handle_timeout` once the
/// transfer is over, instead of waiting for the lessor's 3 s retry
/// (30 rounds here).
#[test]
fn a_revoke_refused_during_a_transfer_is_proposed_again_when_it_ends() {
    let mut c = cluster();
    let l = c.elect();
    grant_and_attach(&mut c);
    assert_eq!(keepalive(&mut c, l), Renew::Renewed);
    let last = c.round;
    while c.round + 1 < last + TTL_ROUNDS {
        step(&mut c);
    }
    // A transfer to a cut-off follower stays pending for an election
    // timeout, across the lease's deadline.
    let target = (1..=3).find(|&i| i != l).expect("a follower");
    c.isolate(target);
    c.r(l).transfer_leader(target).expect("transfer starts");
    let mut refused = false;
    let gone = c.run_until(25, |c| {
        if c.round > last + TTL_ROUNDS && c.r(l).node().lead_transferee().is_some() {
            refused = true;
        }
        let t = now(c);
        for s in &mut c.slots {
            if let Some(r) = s.replica.as_mut() {
                r.handle_timeout(t);
            }
        }
        c.r(l).state_machine().store().is_empty()
    });
    assert!(
        refused,
        "the deadline passed while the transfer was pending"
    );
    assert!(
        gone,
        "the key is gone from the leader within 2.5 s of its deadline (the lessor's own retry: 3 s)"
    );
}
