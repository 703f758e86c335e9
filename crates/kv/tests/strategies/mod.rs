//! proptest strategies shared by the property tests: small key and value
//! alphabets so that random commands collide on keys often.

#![allow(dead_code)]

use metalraft_kv::*;
use proptest::prelude::*;

pub fn key() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop::sample::select(vec![0u8, b'a', b'b', b'c', 0xff]);
    prop_oneof![
        30 => prop::collection::vec(byte, 1..=3),
        1 => Just(vec![]),
    ]
}

pub fn range_end() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => Just(vec![]),
        1 => Just(vec![0]),
        2 => key(),
        2 => key().prop_map(|k| prefix_end(&k)),
    ]
}

pub fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(vec![b'x', b'y', b'z']), 0..3)
}

pub fn put() -> impl Strategy<Value = PutRequest> {
    (key(), value(), any::<bool>(), prop::bool::weighted(0.15)).prop_map(
        |(key, value, prev_kv, ignore_value)| PutRequest {
            // Mostly a well-formed ignore_value put, sometimes a bad one.
            value: if ignore_value && value.len() < 2 {
                vec![]
            } else {
                value
            },
            key,
            prev_kv,
            ignore_value,
        },
    )
}

pub fn delete() -> impl Strategy<Value = DeleteRangeRequest> {
    (key(), range_end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| DeleteRangeRequest {
        key,
        range_end,
        prev_kv,
    })
}

fn small_revision() -> impl Strategy<Value = i64> {
    prop_oneof![3 => Just(0i64), 2 => -1i64..14]
}

fn filter_revision() -> impl Strategy<Value = i64> {
    prop_oneof![6 => Just(0i64), 1 => 1i64..14]
}

pub fn range() -> impl Strategy<Value = RangeRequest> {
    let order = prop::sample::select(vec![SortOrder::None, SortOrder::Ascend, SortOrder::Descend]);
    let target = prop::sample::select(vec![
        SortTarget::Key,
        SortTarget::Version,
        SortTarget::Create,
        SortTarget::Mod,
        SortTarget::Value,
    ]);
    (
        (key(), range_end(), -1i64..4, small_revision()),
        (order, target, any::<bool>(), prop::bool::weighted(0.2)),
        (
            filter_revision(),
            filter_revision(),
            filter_revision(),
            filter_revision(),
        ),
    )
        .prop_map(
            |(
                (key, range_end, limit, revision),
                (sort_order, sort_target, keys_only, count_only),
                (min_mod_revision, max_mod_revision, min_create_revision, max_create_revision),
            )| RangeRequest {
                key,
                range_end,
                limit,
                revision,
                sort_order,
                sort_target,
                keys_only,
                count_only,
                min_mod_revision,
                max_mod_revision,
                min_create_revision,
                max_create_revision,
            },
        )
}

pub fn compare() -> impl Strategy<Value = Compare> {
    let result = prop::sample::select(vec![
        CompareResult::Equal,
        CompareResult::NotEqual,
        CompareResult::Less,
        CompareResult::Greater,
    ]);
    let target = prop_oneof![
        (0i64..4).prop_map(CompareTarget::Version),
        (0i64..10).prop_map(CompareTarget::CreateRevision),
        (0i64..10).prop_map(CompareTarget::ModRevision),
        value().prop_map(CompareTarget::Value),
        (-1i64..=1).prop_map(CompareTarget::Lease),
    ];
    let end = prop_oneof![3 => Just(vec![]), 1 => range_end()];
    (result, target, key(), end).prop_map(|(result, target, key, range_end)| Compare {
        result,
        target,
        key,
        range_end,
    })
}

pub fn request_op() -> impl Strategy<Value = RequestOp> {
    prop_oneof![
        1 => range().prop_map(RequestOp::Range),
        2 => put().prop_map(RequestOp::Put),
        1 => delete().prop_map(RequestOp::DeleteRange),
    ]
}

pub fn txn() -> impl Strategy<Value = TxnRequest> {
    (
        prop::collection::vec(compare(), 0..3),
        prop::collection::vec(request_op(), 0..4),
        prop::collection::vec(request_op(), 0..4),
    )
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        })
}

pub fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        4 => put().prop_map(Command::Put),
        2 => delete().prop_map(Command::DeleteRange),
        3 => txn().prop_map(Command::Txn),
        1 => range().prop_map(Command::Range),
        1 => (0i64..14).prop_map(|revision| Command::Compact(CompactionRequest { revision })),
    ]
}

/// One step of a replica's life: a command at some later index, a local
/// read afterwards, and sometimes a stale re-delivery first.
#[derive(Clone, Debug)]
pub struct Step {
    pub cmd: Command,
    pub index_gap: u64,
    pub replay_stale: bool,
    pub read: RangeRequest,
}

pub fn step() -> impl Strategy<Value = Step> {
    (
        command(),
        prop_oneof![4 => Just(1u64), 1 => 2u64..4],
        prop::bool::weighted(0.1),
        range(),
    )
        .prop_map(|(cmd, index_gap, replay_stale, read)| Step {
            cmd,
            index_gap,
            replay_stale,
            read,
        })
}
