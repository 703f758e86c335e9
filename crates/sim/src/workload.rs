//! The client workload: operations on a small key set, encoded as
//! `metalraft-kv` commands, and the decoding of their results.
//!
//! Every written value is unique (its first 8 bytes are the operation id),
//! so a read names exactly the write it observed. Reads go through the log
//! as `Command::Range`, which makes them linearizable without ReadIndex.

use std::collections::BTreeMap;

use metalraft_kv::{
    Command, CommandResult, Compare, CompareResult, CompareTarget, DeleteRangeRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest,
};

use crate::config::{Time, WorkloadConfig};
use crate::history::{ClientId, KeyId, OpId, OpKind, OpOutput};
use crate::rng::Rng;

/// Bits of an [`OpId`] below the client number.
pub const OP_SEQ_BITS: u32 = 40;

/// The key bytes of key `k`.
pub fn key_bytes(k: KeyId) -> Vec<u8> {
    format!("/sim/k{k}").into_bytes()
}

/// The value written by operation `op`: its id, then `pad` filler bytes.
pub fn value_bytes(op: OpId, pad: usize) -> Vec<u8> {
    let mut v = op.to_be_bytes().to_vec();
    v.resize(8 + pad, b'.');
    v
}

/// The operation id in a value written by [`value_bytes`].
pub fn value_op(v: &[u8]) -> Option<OpId> {
    Some(OpId::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

/// The kv command for an operation.
pub fn command(id: OpId, key: KeyId, kind: OpKind, pad: usize) -> Command {
    let key = key_bytes(key);
    let put = |key: Vec<u8>| PutRequest {
        key,
        value: value_bytes(id, pad),
        ..PutRequest::default()
    };
    match kind {
        OpKind::Put => Command::Put(put(key)),
        OpKind::Get => Command::Range(RangeRequest::single(&key)),
        OpKind::Delete => Command::DeleteRange(DeleteRangeRequest {
            key,
            ..DeleteRangeRequest::default()
        }),
        OpKind::Cas { expect } => {
            let compare = match expect {
                Some(v) => Compare::new(
                    &key,
                    CompareResult::Equal,
                    CompareTarget::Value(value_bytes(v, pad)),
                ),
                None => Compare::new(&key, CompareResult::Equal, CompareTarget::Version(0)),
            };
            Command::Txn(TxnRequest {
                compare: vec![compare],
                success: vec![RequestOp::Put(put(key))],
                failure: vec![],
            })
        }
    }
}

/// What the client learns from the result of its command, or `None` if the
/// result does not fit the operation (reported as a violation).
pub fn output(kind: OpKind, r: &CommandResult) -> Option<OpOutput> {
    Some(match (kind, r) {
        (OpKind::Put, CommandResult::Put(_)) => OpOutput::Put,
        (OpKind::Get, CommandResult::Range(g)) => match g.kvs.first() {
            None => OpOutput::Get(None),
            Some(kv) => OpOutput::Get(Some(value_op(&kv.value)?)),
        },
        (OpKind::Delete, CommandResult::DeleteRange(d)) => OpOutput::Delete(d.deleted > 0),
        (OpKind::Cas { .. }, CommandResult::Txn(t)) => OpOutput::Cas(t.succeeded),
        _ => return None,
    })
}

/// One client's generator state.
#[derive(Debug)]
pub struct ClientGen {
    id: ClientId,
    seq: u64,
    /// The last value this client saw or wrote per key (for CAS).
    last_seen: BTreeMap<KeyId, Option<OpId>>,
}

impl ClientGen {
    /// Client `id`.
    pub fn new(id: ClientId) -> Self {
        ClientGen {
            id,
            seq: 0,
            last_seen: BTreeMap::new(),
        }
    }

    /// Draws the next operation.
    pub fn next_op(&mut self, w: &WorkloadConfig, rng: &mut Rng) -> (OpId, KeyId, OpKind) {
        self.seq += 1;
        let id = ((self.id as u64 + 1) << OP_SEQ_BITS) | self.seq;
        let key = rng.index(w.keys) as KeyId;
        let total = w.put_weight + w.get_weight + w.delete_weight + w.cas_weight;
        let mut x = rng.range(0, u64::from(total)) as u32;
        let kind = if x < w.put_weight {
            OpKind::Put
        } else {
            x -= w.put_weight;
            if x < w.get_weight {
                OpKind::Get
            } else if x - w.get_weight < w.delete_weight {
                OpKind::Delete
            } else {
                OpKind::Cas {
                    expect: self.last_seen.get(&key).copied().flatten(),
                }
            }
        };
        (id, key, kind)
    }

    /// Remembers what an operation showed about its key.
    pub fn learn(&mut self, id: OpId, key: KeyId, kind: OpKind, out: OpOutput) {
        let v = match (kind, out) {
            (_, OpOutput::Put) => Some(id),
            (_, OpOutput::Get(v)) => v,
            (_, OpOutput::Delete(_)) => None,
            (_, OpOutput::Cas(true)) => Some(id),
            (_, OpOutput::Cas(false)) => return,
        };
        self.last_seen.insert(key, v);
    }
}

/// Think time before a client's next operation.
pub fn think(w: &WorkloadConfig, rng: &mut Rng) -> Time {
    rng.range(0, w.think_us_max + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use metalraft_kv::KvStore;

    #[test]
    fn commands_round_trip_through_the_kv_store() {
        let mut kv = KvStore::new();
        let mut i = 0;
        let mut run = |id, kind| {
            i += 1;
            let cmd = Command::decode(&command(id, 3, kind, 5).encode()).unwrap();
            output(kind, &kv.apply(i, &cmd).unwrap()).unwrap()
        };
        assert_eq!(run(7, OpKind::Get), OpOutput::Get(None));
        assert_eq!(run(8, OpKind::Cas { expect: None }), OpOutput::Cas(true));
        assert_eq!(run(9, OpKind::Get), OpOutput::Get(Some(8)));
        assert_eq!(
            run(10, OpKind::Cas { expect: Some(7) }),
            OpOutput::Cas(false)
        );
        assert_eq!(
            run(11, OpKind::Cas { expect: Some(8) }),
            OpOutput::Cas(true)
        );
        assert_eq!(run(12, OpKind::Put), OpOutput::Put);
        assert_eq!(run(13, OpKind::Get), OpOutput::Get(Some(12)));
        assert_eq!(run(14, OpKind::Delete), OpOutput::Delete(true));
        assert_eq!(run(15, OpKind::Delete), OpOutput::Delete(false));
        assert_eq!(
            run(16, OpKind::Cas { expect: Some(12) }),
            OpOutput::Cas(false)
        );
    }

    #[test]
    fn op_ids_are_unique_across_clients() {
        let w = crate::config::SimConfig::from_seed(1).workload;
        let mut rng = Rng::new(2);
        let mut a = ClientGen::new(0);
        let mut b = ClientGen::new(1);
        let ids: std::collections::BTreeSet<OpId> = (0..100)
            .flat_map(|_| [a.next_op(&w, &mut rng).0, b.next_op(&w, &mut rng).0])
            .collect();
        assert_eq!(ids.len(), 200);
    }
}
