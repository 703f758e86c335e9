//! The sans-IO contract: what may be sent before persistence and what may not.

use metalraft_core::{
    ConfState, Config, ConfigError, Entry, EntryData, Error, HardState, MemStorage, Message,
    MessageBody, Node, Role,
};

type N = Node<Vec<u8>, MemStorage<Vec<u8>>>;

fn node(id: u64, voters: &[u64]) -> N {
    let cfg = Config::new(id);
    Node::new(
        cfg,
        MemStorage::new_with_conf(ConfState::with_voters(voters)),
        0,
    )
    .unwrap()
}

fn msg(from: u64, to: u64, term: u64, body: MessageBody<Vec<u8>>) -> Message<Vec<u8>> {
    Message {
        from,
        to,
        term,
        body,
    }
}

/// Raft paper Figure 2 ("respond after persisting"): a vote grant is not
/// released until the vote is acknowledged durable.
#[test]
fn vote_grant_waits_for_persistence() {
    let mut n = node(2, &[1, 2, 3]);
    let req = MessageBody::RequestVote {
        pre_vote: false,
        transfer: false,
        last_log_index: 0,
        last_log_term: 0,
    };
    n.step(msg(1, 2, 1, req)).unwrap();
    let mut rd = n.ready().unwrap();
    assert!(
        rd.take_messages().is_empty(),
        "vote sent before it was durable"
    );
    let p = rd.take_persist().expect("vote must be persisted");
    assert!(p.must_sync());
    assert_eq!(p.hard_state().map(|h| (h.term, h.vote)), Some((1, Some(1))));
    // Nothing comes out until the ack, however often we ask.
    assert!(n.ready().unwrap().take_messages().is_empty());
    n.storage_mut().apply_persist(&p);
    n.on_persisted(p.into_token()).unwrap();
    let out = n.ready().unwrap().take_messages();
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].body,
        MessageBody::RequestVoteResponse {
            pre_vote: false,
            granted: true
        }
    );
}

/// An append acknowledgement is released only after the entries are durable.
#[test]
fn append_ack_waits_for_persistence() {
    let mut n = node(2, &[1, 2, 3]);
    let e = Entry {
        term: 1,
        index: 1,
        data: EntryData::Normal(b"x".to_vec()),
    };
    let body = MessageBody::AppendEntries {
        prev_log_index: 0,
        prev_log_term: 0,
        entries: vec![e.clone()],
        leader_commit: 0,
    };
    n.step(msg(1, 2, 1, body)).unwrap();
    let mut rd = n.ready().unwrap();
    assert!(rd.take_messages().is_empty());
    let p = rd.take_persist().unwrap();
    assert_eq!(p.entries(), &[e]);
    n.storage_mut().apply_persist(&p);
    n.on_persisted(p.into_token()).unwrap();
    let out = n.ready().unwrap().take_messages();
    assert_eq!(
        out[0].body,
        MessageBody::AppendEntriesResponse {
            index: 1,
            reject: None
        }
    );
}

/// A candidate sends vote requests at once but counts its own vote only
/// after persisting it: a single-voter cluster becomes leader only then.
#[test]
fn self_vote_counts_only_when_durable() {
    let mut n = node(1, &[1]);
    n.campaign().unwrap();
    assert_eq!(n.role(), Role::Candidate);
    let mut rd = n.ready().unwrap();
    let p = rd.take_persist().unwrap();
    assert_eq!(
        n.role(),
        Role::Candidate,
        "leader before its vote was durable"
    );
    n.storage_mut().apply_persist(&p);
    n.on_persisted(p.into_token()).unwrap();
    assert_eq!(n.role(), Role::Leader);
}

/// The leader sends appends before its own write is durable (async writes),
/// but counts itself towards commit only after the acknowledgement.
#[test]
fn leader_replicates_in_parallel_with_its_own_write() {
    let mut n = node(1, &[1, 2, 3]);
    n.campaign().unwrap();
    // Win the pre-vote and the vote.
    for round in [true, false] {
        let mut rd = n.ready().unwrap();
        if let Some(p) = rd.take_persist() {
            n.storage_mut().apply_persist(&p);
            n.on_persisted(p.into_token()).unwrap();
        }
        let term = if round { n.term() + 1 } else { n.term() };
        let body = MessageBody::RequestVoteResponse {
            pre_vote: round,
            granted: true,
        };
        n.step(msg(2, 1, term, body)).unwrap();
    }
    assert_eq!(n.role(), Role::Leader);
    let idx = n.propose(b"p".to_vec()).unwrap();
    let mut rd = n.ready().unwrap();
    let sent = rd.take_messages();
    assert!(sent.iter().any(|m| matches!(&m.body, MessageBody::AppendEntries { entries, .. } if entries.iter().any(|e| e.index == idx))));
    let p = rd.take_persist().unwrap();
    // Follower 2 acknowledges everything before the leader's write is durable.
    n.step(msg(
        2,
        1,
        n.term(),
        MessageBody::AppendEntriesResponse {
            index: idx,
            reject: None,
        },
    ))
    .unwrap();
    assert!(
        n.commit_index() < idx,
        "leader counted an entry it has not persisted"
    );
    n.storage_mut().apply_persist(&p);
    n.on_persisted(p.into_token()).unwrap();
    assert_eq!(n.commit_index(), idx);
}

/// Batches must be acknowledged in order; a skipped batch is an error.
#[test]
fn persist_tokens_must_be_acknowledged_in_order() {
    let mut n = node(1, &[1, 2, 3]);
    n.campaign().unwrap();
    let p1 = n.ready().unwrap().take_persist();
    assert!(p1.is_none(), "pre-vote changes no durable state");
    let body = MessageBody::RequestVoteResponse {
        pre_vote: true,
        granted: true,
    };
    n.step(msg(2, 1, 1, body)).unwrap();
    let a = n.ready().unwrap().take_persist().unwrap();
    n.tick().unwrap();
    for _ in 0..30 {
        n.tick().unwrap();
    }
    let mut b = None;
    for _ in 0..100 {
        let body = MessageBody::RequestVoteResponse {
            pre_vote: true,
            granted: true,
        };
        let _ = n.step(msg(2, 1, n.term() + 1, body));
        if let Some(p) = n.ready().unwrap().take_persist() {
            b = Some(p);
            break;
        }
        n.tick().unwrap();
    }
    let b = b.expect("second batch");
    assert_eq!(
        n.on_persisted(b.into_token()),
        Err(Error::PersistOutOfOrder {
            expected: 1,
            got: 2
        })
    );
    assert!(n.on_persisted(a.into_token()).is_ok());
}

/// A restarted node resumes from its durable hard state and log.
#[test]
fn restart_resumes_from_durable_state() {
    let mut s = MemStorage::new_with_conf(ConfState::with_voters(&[1, 2, 3]));
    s.append(&[Entry {
        term: 4,
        index: 1,
        data: EntryData::Noop,
    }]);
    s.set_hard_state(HardState {
        term: 5,
        vote: Some(3),
        commit: 1,
    });
    let mut n: N = Node::new(Config::new(1), s, 0).unwrap();
    assert_eq!((n.term(), n.vote(), n.commit_index()), (5, Some(3), 1));
    let rd = n.ready().unwrap();
    assert_eq!(
        rd.committed_entries().len(),
        1,
        "committed entry re-applied after restart"
    );
    // It will not vote for anyone else in term 5.
    let req = MessageBody::RequestVote {
        pre_vote: false,
        transfer: false,
        last_log_index: 9,
        last_log_term: 5,
    };
    n.step(msg(2, 1, 5, req)).unwrap();
    let mut rd = n.ready().unwrap();
    assert!(rd.take_persist().is_none());
    let out = rd.take_messages();
    assert_eq!(
        out[0].body,
        MessageBody::RequestVoteResponse {
            pre_vote: false,
            granted: false
        }
    );
}

/// Invalid configuration is a typed error, checked up front.
#[test]
fn invalid_config_is_rejected() {
    let s = || MemStorage::<Vec<u8>>::new_with_conf(ConfState::with_voters(&[1]));
    let mut c = Config::new(1);
    c.heartbeat_interval_ticks = c.election_timeout_ticks_min;
    assert_eq!(
        Node::new(c, s(), 0).err(),
        Some(ConfigError::HeartbeatNotBelowElectionTimeout)
    );
    let mut c = Config::new(1);
    c.election_timeout_ticks_max = c.election_timeout_ticks_min;
    assert_eq!(
        Node::new(c, s(), 0).err(),
        Some(ConfigError::EmptyElectionTimeoutRange)
    );
    let mut c = Config::new(1);
    c.max_inflight_msgs = 0;
    assert_eq!(
        Node::new(c, s(), 0).err(),
        Some(ConfigError::ZeroLimit("max_inflight_msgs"))
    );
    assert_eq!(
        Node::new(Config::new(0), s(), 0).err(),
        Some(ConfigError::InvalidId)
    );
    let bad_member = MemStorage::<Vec<u8>>::new_with_conf(ConfState::with_voters(&[1, 0]));
    assert_eq!(
        Node::new(Config::new(1), bad_member, 0).err(),
        Some(ConfigError::InvalidConfState)
    );
    let mut bad = s();
    bad.set_hard_state(HardState {
        term: 1,
        vote: None,
        commit: 5,
    });
    assert_eq!(
        Node::new(Config::new(1), bad, 0).err(),
        Some(ConfigError::InconsistentHardState)
    );
}

/// Same seed, same inputs: same outputs (election timeouts come from the
/// seeded PRNG, not from global randomness).
#[test]
fn deterministic_given_seed() {
    let run = |seed: u64| {
        let mut cfg = Config::new(1);
        cfg.rng_seed = seed;
        let mut n: N = Node::new(
            cfg,
            MemStorage::new_with_conf(ConfState::with_voters(&[1, 2, 3])),
            0,
        )
        .unwrap();
        let mut t = 0;
        while n.role() == Role::Follower {
            n.tick().unwrap();
            t += 1;
        }
        t
    };
    assert_eq!(run(42), run(42));
    let distinct: std::collections::BTreeSet<u32> = (0..20).map(run).collect();
    assert!(distinct.len() > 1, "timeouts are not randomized");
}
