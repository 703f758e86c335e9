//! No peer input panics a node, and a node's own invariants hold whatever it
//! is fed: term never decreases, the vote never changes within a term, the
//! commit index never decreases nor passes the last index.

use metalraft_core::{
    ConfChange, ConfChangeOp, ConfState, ConfTransition, Config, Entry, EntryData, MemStorage,
    Message, MessageBody, Node, RejectHint, Role, SnapshotMeta,
};
use proptest::prelude::*;

type N = Node<Vec<u8>, MemStorage<Vec<u8>>>;

#[derive(Clone, Debug)]
enum Input {
    Step(Message<Vec<u8>>),
    Tick,
    Propose(Vec<u8>),
    Campaign,
    Read(u64),
    Transfer(u64),
}

/// Small numbers collide with real state; huge ones probe overflow.
fn num() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..8, Just(u64::MAX), Just(u64::MAX - 1), any::<u64>()]
}

fn data() -> impl Strategy<Value = EntryData<Vec<u8>>> {
    let op = prop_oneof![
        (0u64..6).prop_map(ConfChangeOp::AddVoter),
        (0u64..6).prop_map(ConfChangeOp::AddLearner),
        (0u64..6).prop_map(ConfChangeOp::Remove),
    ];
    let transition = prop_oneof![
        Just(ConfTransition::Auto),
        Just(ConfTransition::JointAutoLeave),
        Just(ConfTransition::JointExplicit),
    ];
    prop_oneof![
        Just(EntryData::Noop),
        prop::collection::vec(any::<u8>(), 0..4).prop_map(EntryData::Normal),
        (
            prop::collection::vec(op, 0..3),
            transition,
            prop::collection::vec(any::<u8>(), 0..4)
        )
            .prop_map(|(ops, transition, context)| EntryData::ConfChange(Box::new(
                ConfChange {
                    ops,
                    transition,
                    context
                }
            ))),
    ]
}

fn entries() -> impl Strategy<Value = Vec<Entry<Vec<u8>>>> {
    prop::collection::vec(
        (num(), num(), data()).prop_map(|(term, index, data)| Entry { term, index, data }),
        0..4,
    )
}

fn body() -> impl Strategy<Value = MessageBody<Vec<u8>>> {
    prop_oneof![
        (any::<bool>(), any::<bool>(), num(), num()).prop_map(
            |(pre_vote, transfer, last_log_index, last_log_term)| {
                MessageBody::RequestVote {
                    pre_vote,
                    transfer,
                    last_log_index,
                    last_log_term,
                }
            }
        ),
        (any::<bool>(), any::<bool>())
            .prop_map(|(pre_vote, granted)| MessageBody::RequestVoteResponse { pre_vote, granted }),
        (num(), num(), entries(), num()).prop_map(
            |(prev_log_index, prev_log_term, entries, leader_commit)| {
                MessageBody::AppendEntries {
                    prev_log_index,
                    prev_log_term,
                    entries,
                    leader_commit,
                }
            }
        ),
        (num(), prop::option::of((num(), num()))).prop_map(|(index, r)| {
            MessageBody::AppendEntriesResponse {
                index,
                reject: r.map(|(hint_index, hint_term)| RejectHint {
                    hint_index,
                    hint_term,
                }),
            }
        }),
        (num(), num()).prop_map(|(commit, read_seq)| MessageBody::Heartbeat { commit, read_seq }),
        num().prop_map(|read_seq| MessageBody::HeartbeatResponse { read_seq }),
        num().prop_map(|ctx| MessageBody::ReadIndex { ctx }),
        (num(), prop::option::of(num()))
            .prop_map(|(ctx, index)| MessageBody::ReadIndexResponse { ctx, index }),
        Just(MessageBody::TimeoutNow),
        (
            num(),
            num(),
            prop::collection::vec(0u64..6, 0..4),
            num(),
            prop::collection::vec(any::<u8>(), 0..8),
            any::<bool>()
        )
            .prop_map(|(index, term, voters, offset, data, done)| {
                MessageBody::InstallSnapshot {
                    meta: Box::new(SnapshotMeta {
                        index,
                        term,
                        conf_state: ConfState {
                            voters,
                            ..ConfState::default()
                        },
                    }),
                    offset,
                    data,
                    done,
                }
            }),
        (num(), num())
            .prop_map(|(index, received)| MessageBody::SnapshotResponse { index, received }),
    ]
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        6 => (0u64..5, 0u64..5, num(), body()).prop_map(|(from, to, term, body)| Input::Step(Message { from, to, term, body })),
        // Mostly well-addressed messages, so they reach the role logic.
        6 => (2u64..4, num(), body()).prop_map(|(from, term, body)| Input::Step(Message { from, to: 1, term, body })),
        3 => Just(Input::Tick),
        1 => prop::collection::vec(any::<u8>(), 0..8).prop_map(Input::Propose),
        1 => Just(Input::Campaign),
        1 => num().prop_map(Input::Read),
        1 => (0u64..5).prop_map(Input::Transfer),
    ]
}

/// Brings node 1 of a 3-voter cluster into `role` with well-formed messages.
fn node_in(role: Role) -> N {
    let mut cfg = Config::new(1);
    cfg.pre_vote = role == Role::PreCandidate;
    let mut n: N = Node::new(
        cfg,
        MemStorage::new_with_conf(ConfState::with_voters(&[1, 2, 3])),
        0,
    )
    .unwrap();
    if role == Role::Follower {
        return n;
    }
    n.campaign().unwrap();
    drain(&mut n);
    if role == Role::Leader {
        let term = n.term();
        let body = MessageBody::RequestVoteResponse {
            pre_vote: false,
            granted: true,
        };
        n.step(Message {
            from: 2,
            to: 1,
            term,
            body,
        })
        .unwrap();
        drain(&mut n);
    }
    assert_eq!(n.role(), role);
    n
}

/// Persists, acknowledges and discards everything the node asks for.
/// Does what the `Ready` contract asks: collects snapshot chunks, installs
/// a completed snapshot into storage before the rest of the batch, then
/// persists and acknowledges.
fn drain(n: &mut N) {
    let mut incoming = Vec::new();
    while n.has_ready() {
        let mut rd = n.ready().unwrap();
        for chunk in rd.take_snapshot_chunks() {
            if chunk.offset == 0 {
                incoming.clear();
            }
            incoming.extend_from_slice(&chunk.data);
        }
        if let Some(p) = rd.take_persist() {
            if let Some(install) = p.snapshot() {
                n.storage_mut()
                    .install_snapshot(install, core::mem::take(&mut incoming));
            }
            n.storage_mut().apply_persist(&p);
            n.on_persisted(p.into_token()).unwrap();
        }
    }
}

fn run(role: Role, inputs: Vec<Input>) {
    let mut n = node_in(role);
    let (mut term, mut vote, mut commit) = (n.term(), n.vote(), n.commit_index());
    for input in inputs {
        match input {
            Input::Step(m) => {
                let _dropped_or_ok = n.step(m);
            }
            Input::Tick => n.tick().unwrap(),
            Input::Propose(d) => {
                let _maybe_not_leader = n.propose(d);
            }
            Input::Campaign => {
                let _ = n.campaign();
            }
            Input::Read(ctx) => {
                let _maybe_no_leader = n.read_index(ctx);
            }
            Input::Transfer(to) => {
                let _maybe_not_leader = n.transfer_leader(to);
            }
        }
        drain(&mut n);
        assert!(n.failure().is_none(), "peer input stopped the node");
        assert!(n.term() >= term, "term decreased");
        if n.term() == term && vote.is_some() {
            assert_eq!(n.vote(), vote, "vote changed within term {term}");
        }
        assert!(n.commit_index() >= commit, "commit decreased");
        assert!(
            n.commit_index() <= n.last_index().unwrap(),
            "commit beyond last index"
        );
        assert!(n.applied_index() <= n.commit_index());
        (term, vote, commit) = (n.term(), n.vote(), n.commit_index());
    }
}

proptest! {
    // A fixed seed: reproducible in CI (a random one found the term-0
    // snapshot below once in a while); more cases make up for it.
    #![proptest_config(ProptestConfig {
        cases: 1024,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x7261_6674),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn follower_survives_arbitrary_input(inputs in prop::collection::vec(input(), 1..60)) {
        run(Role::Follower, inputs);
    }

    #[test]
    fn precandidate_survives_arbitrary_input(inputs in prop::collection::vec(input(), 1..60)) {
        run(Role::PreCandidate, inputs);
    }

    #[test]
    fn candidate_survives_arbitrary_input(inputs in prop::collection::vec(input(), 1..60)) {
        run(Role::Candidate, inputs);
    }

    #[test]
    fn leader_survives_arbitrary_input(inputs in prop::collection::vec(input(), 1..60)) {
        run(Role::Leader, inputs);
    }
}

/// Found by the random-input test: an InstallSnapshot claiming term 0 for
/// index 1 (or a term beyond the leader's) used to be installed, leaving
/// the commit index beyond the last index.
#[test]
fn snapshot_with_an_impossible_term_is_dropped() {
    for role in [Role::Follower, Role::PreCandidate, Role::Candidate] {
        for (index, term) in [(1, 0), (5, 0), (1, 99)] {
            let mut n = node_in(role);
            let meta = SnapshotMeta {
                index,
                term,
                conf_state: ConfState::default(),
            };
            let r = n.step(Message {
                from: 2,
                to: 1,
                term: 2,
                body: MessageBody::InstallSnapshot {
                    meta: Box::new(meta),
                    offset: 0,
                    data: Vec::new(),
                    done: true,
                },
            });
            assert!(
                r.is_err(),
                "{role:?} accepted a snapshot at ({index}, {term})"
            );
            drain(&mut n);
            assert!(n.failure().is_none());
            assert!(n.commit_index() <= n.last_index().unwrap());
        }
    }
}
