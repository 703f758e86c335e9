//! What goes into the Raft log, and the translation between etcd's
//! protobuf messages and `metalraft-kv`'s commands and results.
//!
//! A log entry's payload is the replica's envelope
//! ([`metalraft_replica::Frame`]: kind, proposing node, request id; 17
//! bytes) around a server command `kind: u8 | body`: kind 0 is a key-value
//! command (`metalraft_kv::Command::encode`), kind 1 a member-registry
//! change ([`RegistryOp`], postcard), kind 2 an auth change
//! ([`crate::auth::AuthOp`], postcard). The envelope is the replica's: it
//! finds the client waiting for an entry; the server never looks at it.

use metalraft_kv as kv;

use crate::errors::EtcdError;
use crate::proto::etcdserverpb as pb;
use crate::proto::mvccpb;
use crate::registry::{CodecError, RegistryOp};

/// Kind byte of a key-value command.
pub const KIND_KV: u8 = 0;
/// Kind byte of a member-registry change.
pub const KIND_REGISTRY: u8 = 1;
/// Kind byte of an auth change.
pub const KIND_AUTH: u8 = 2;

/// What an application entry carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// A key-value command.
    Kv(kv::Command),
    /// A member-registry change.
    Registry(RegistryOp),
    /// An auth change.
    Auth(crate::auth::AuthOp),
}

/// Why a server command could not be decoded. Every member decodes the same
/// bytes alike, so it is refused alike everywhere.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// No kind byte.
    #[error("empty command")]
    Empty,
    /// A kind byte this version does not know.
    #[error("unknown command kind {0}")]
    UnknownKind(u8),
    /// A key-value command that does not decode.
    #[error("key-value command: {0}")]
    Kv(kv::DecodeError),
    /// A registry change that does not decode.
    #[error("registry operation: {0}")]
    Registry(CodecError),
    /// An auth change that does not decode.
    #[error("auth operation: {0}")]
    Auth(CodecError),
}

/// Builds a server command (the replica wraps it in its envelope).
pub fn encode_command(payload: &Payload) -> Result<Vec<u8>, CodecError> {
    let (kind, body) = match payload {
        Payload::Kv(cmd) => (KIND_KV, cmd.encode()),
        Payload::Registry(op) => (KIND_REGISTRY, op.encode()?),
        Payload::Auth(op) => (KIND_AUTH, op.encode()?),
    };
    let mut out = Vec::with_capacity(1 + body.len());
    out.push(kind);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Splits a server command into its kind and body, checking the kind.
pub fn split_command(data: &[u8]) -> Result<(u8, &[u8]), CommandError> {
    let (&kind, body) = data.split_first().ok_or(CommandError::Empty)?;
    match kind {
        KIND_KV | KIND_REGISTRY | KIND_AUTH => Ok((kind, body)),
        k => Err(CommandError::UnknownKind(k)),
    }
}

/// Decodes a server command.
pub fn decode_command(data: &[u8]) -> Result<Payload, CommandError> {
    let (kind, body) = split_command(data)?;
    if kind == KIND_KV {
        kv::Command::decode(body)
            .map(Payload::Kv)
            .map_err(CommandError::Kv)
    } else if kind == KIND_AUTH {
        crate::auth::AuthOp::decode(body)
            .map(Payload::Auth)
            .map_err(CommandError::Auth)
    } else {
        RegistryOp::decode(body)
            .map(Payload::Registry)
            .map_err(CommandError::Registry)
    }
}

/// Maps a refusal by the state machine to etcd's error.
pub fn request_error(e: kv::RequestError) -> EtcdError {
    use kv::RequestError as R;
    match e {
        R::EmptyKey => EtcdError::EmptyKey,
        R::KeyTooLarge { .. } | R::ValueTooLarge { .. } | R::RequestTooLarge { .. } => {
            EtcdError::RequestTooLarge
        }
        R::TooManyOps { .. } => EtcdError::TooManyOps,
        R::ValueProvided => EtcdError::ValueProvided,
        R::DuplicateKey => EtcdError::DuplicateKey,
        R::KeyNotFound => EtcdError::KeyNotFound,
        R::Compacted { .. } => EtcdError::Compacted,
        R::FutureRevision { .. } => EtcdError::FutureRevision,
        R::LeaseNotFound => EtcdError::LeaseNotFound,
        R::LeaseExists => EtcdError::LeaseExist,
        R::LeaseTtlTooLarge => EtcdError::LeaseTtlTooLarge,
        R::LeaseProvided => EtcdError::LeaseProvided,
        other => EtcdError::InvalidArgument(format!("etcdserver: {other}")),
    }
}

fn sort_order(v: i32) -> Result<kv::SortOrder, EtcdError> {
    Ok(match pb::range_request::SortOrder::try_from(v) {
        Ok(pb::range_request::SortOrder::None) => kv::SortOrder::None,
        Ok(pb::range_request::SortOrder::Ascend) => kv::SortOrder::Ascend,
        Ok(pb::range_request::SortOrder::Descend) => kv::SortOrder::Descend,
        Err(_) => {
            return Err(EtcdError::InvalidArgument(format!(
                "etcdserver: unknown sort order {v}"
            )))
        }
    })
}

fn sort_target(v: i32) -> Result<kv::SortTarget, EtcdError> {
    use pb::range_request::SortTarget as T;
    Ok(match T::try_from(v) {
        Ok(T::Key) => kv::SortTarget::Key,
        Ok(T::Version) => kv::SortTarget::Version,
        Ok(T::Create) => kv::SortTarget::Create,
        Ok(T::Mod) => kv::SortTarget::Mod,
        Ok(T::Value) => kv::SortTarget::Value,
        Err(_) => {
            return Err(EtcdError::InvalidArgument(format!(
                "etcdserver: unknown sort target {v}"
            )))
        }
    })
}

/// etcd `RangeRequest` → kv.
pub fn range_request(r: &pb::RangeRequest) -> Result<kv::RangeRequest, EtcdError> {
    Ok(kv::RangeRequest {
        key: r.key.clone(),
        range_end: r.range_end.clone(),
        limit: r.limit,
        revision: r.revision,
        sort_order: sort_order(r.sort_order)?,
        sort_target: sort_target(r.sort_target)?,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    })
}

/// etcd `PutRequest` → the command: a plain put, or one with lease fields.
pub fn put_command(r: &pb::PutRequest) -> Result<kv::Command, EtcdError> {
    let put = put_request(r)?;
    Ok(match lease_option(r)? {
        None => kv::Command::Put(put),
        Some(l) => kv::Command::LeasePut(put, l),
    })
}

/// etcd `PutRequest`'s lease fields (`None`: neither is set), checked as
/// etcd's API layer does.
fn lease_option(r: &pb::PutRequest) -> Result<Option<kv::LeaseOption>, EtcdError> {
    if r.ignore_lease && r.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok((r.lease != 0 || r.ignore_lease).then_some(kv::LeaseOption {
        lease: r.lease,
        ignore_lease: r.ignore_lease,
    }))
}

/// etcd `PutRequest` → kv, without its lease fields (see [`put_command`]).
pub fn put_request(r: &pb::PutRequest) -> Result<kv::PutRequest, EtcdError> {
    Ok(kv::PutRequest {
        key: r.key.clone(),
        value: r.value.clone(),
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
    })
}

/// etcd `DeleteRangeRequest` → kv.
pub fn delete_request(r: &pb::DeleteRangeRequest) -> kv::DeleteRangeRequest {
    kv::DeleteRangeRequest {
        key: r.key.clone(),
        range_end: r.range_end.clone(),
        prev_kv: r.prev_kv,
    }
}

fn compare(c: &pb::Compare) -> Result<kv::Compare, EtcdError> {
    use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let result = match R::try_from(c.result) {
        Ok(R::Equal) => kv::CompareResult::Equal,
        Ok(R::Greater) => kv::CompareResult::Greater,
        Ok(R::Less) => kv::CompareResult::Less,
        Ok(R::NotEqual) => kv::CompareResult::NotEqual,
        Err(_) => {
            return Err(EtcdError::InvalidArgument(format!(
                "etcdserver: unknown compare result {}",
                c.result
            )))
        }
    };
    let target = T::try_from(c.target).map_err(|_| {
        EtcdError::InvalidArgument(format!("etcdserver: unknown compare target {}", c.target))
    })?;
    // etcd reads the operand that matches the target; a missing operand is
    // the field's zero value.
    let target = match (target, &c.target_union) {
        (T::Version, Some(U::Version(v))) => kv::CompareTarget::Version(*v),
        (T::Version, None) => kv::CompareTarget::Version(0),
        (T::Create, Some(U::CreateRevision(v))) => kv::CompareTarget::CreateRevision(*v),
        (T::Create, None) => kv::CompareTarget::CreateRevision(0),
        (T::Mod, Some(U::ModRevision(v))) => kv::CompareTarget::ModRevision(*v),
        (T::Mod, None) => kv::CompareTarget::ModRevision(0),
        (T::Value, Some(U::Value(v))) => kv::CompareTarget::Value(v.clone()),
        (T::Value, None) => kv::CompareTarget::Value(Vec::new()),
        (T::Lease, Some(U::Lease(v))) => kv::CompareTarget::Lease(*v),
        (T::Lease, None) => kv::CompareTarget::Lease(0),
        _ => {
            return Err(EtcdError::InvalidArgument(
                "etcdserver: compare target and operand do not match".into(),
            ))
        }
    };
    Ok(kv::Compare {
        result,
        target,
        key: c.key.clone(),
        range_end: c.range_end.clone(),
    })
}

fn request_op(op: &pb::RequestOp) -> Result<kv::RequestOp, EtcdError> {
    use pb::request_op::Request;
    match &op.request {
        Some(Request::RequestRange(r)) => Ok(kv::RequestOp::Range(range_request(r)?)),
        Some(Request::RequestPut(r)) => Ok(kv::RequestOp::Put(put_request(r)?)),
        Some(Request::RequestDeleteRange(r)) => Ok(kv::RequestOp::DeleteRange(delete_request(r))),
        Some(Request::RequestTxn(t)) => Ok(kv::RequestOp::Txn(txn_request(t)?)),
        // etcd's checkRequestOp answers an empty op with "key not found".
        None => Err(EtcdError::KeyNotFound),
    }
}

/// etcd `TxnRequest` → kv.
pub fn txn_request(r: &pb::TxnRequest) -> Result<kv::TxnRequest, EtcdError> {
    Ok(kv::TxnRequest {
        compare: r.compare.iter().map(compare).collect::<Result<_, _>>()?,
        success: r.success.iter().map(request_op).collect::<Result<_, _>>()?,
        failure: r.failure.iter().map(request_op).collect::<Result<_, _>>()?,
    })
}

/// etcd `TxnRequest` → the command: a plain txn, or one whose puts carry
/// lease fields.
pub fn txn_command(r: &pb::TxnRequest) -> Result<kv::Command, EtcdError> {
    let txn = txn_request(r)?;
    // One option per put, a nested txn's puts where it stands (its success
    // puts, then its failure puts), as `kv::TxnLeases` lists them.
    fn collect(ops: &[pb::RequestOp], out: &mut Vec<kv::LeaseOption>) -> Result<(), EtcdError> {
        use pb::request_op::Request;
        for op in ops {
            match &op.request {
                Some(Request::RequestPut(p)) => out.push(lease_option(p)?.unwrap_or_default()),
                Some(Request::RequestTxn(t)) => {
                    collect(&t.success, out)?;
                    collect(&t.failure, out)?;
                }
                _ => {}
            }
        }
        Ok(())
    }
    let options = |ops: &[pb::RequestOp]| -> Result<Vec<kv::LeaseOption>, EtcdError> {
        let mut out = Vec::new();
        collect(ops, &mut out)?;
        Ok(out)
    };
    let leases = kv::TxnLeases {
        success: options(&r.success)?,
        failure: options(&r.failure)?,
    };
    let plain = |l: &[kv::LeaseOption]| l.iter().all(|o| *o == kv::LeaseOption::default());
    Ok(if plain(&leases.success) && plain(&leases.failure) {
        kv::Command::Txn(txn)
    } else {
        kv::Command::LeaseTxn(txn, leases)
    })
}

/// Whether every range of a txn, nested txns included, is serializable
/// (etcd `isTxnSerializable`): a read-only txn is then served from local
/// state without a ReadIndex wait. Only meaningful for a read-only txn
/// (`kv::TxnRequest::is_read_only`); a write makes it false.
pub fn txn_is_serializable(r: &pb::TxnRequest) -> bool {
    use pb::request_op::Request;
    r.success
        .iter()
        .chain(&r.failure)
        .all(|op| match &op.request {
            Some(Request::RequestRange(r)) => r.serializable,
            Some(Request::RequestTxn(t)) => txn_is_serializable(t),
            _ => false,
        })
}

/// Whether a command can grow the store (a put, a txn with a put, a lease
/// grant): what etcd refuses while the NOSPACE alarm is raised.
pub fn adds_data(cmd: &kv::Command) -> bool {
    match cmd {
        kv::Command::Put(_) | kv::Command::LeasePut(..) | kv::Command::LeaseGrant(_) => true,
        kv::Command::Txn(t) | kv::Command::LeaseTxn(t, _) => txn_has_put(t),
        _ => false,
    }
}

/// Whether a txn has a put in any branch, nested txns included.
pub fn txn_has_put(r: &kv::TxnRequest) -> bool {
    r.success.iter().chain(&r.failure).any(|op| match op {
        kv::RequestOp::Put(_) => true,
        kv::RequestOp::Txn(t) => txn_has_put(t),
        _ => false,
    })
}

/// What the server puts in every response header.
#[derive(Clone, Copy, Debug)]
pub struct HeaderInfo {
    /// Cluster id.
    pub cluster_id: u64,
    /// This member.
    pub member_id: u64,
    /// Current Raft term.
    pub raft_term: u64,
}

impl HeaderInfo {
    /// A header at `revision`.
    pub fn header(&self, revision: i64) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.raft_term,
        }
    }
}

/// A key-value pair on the wire.
pub fn kv_pair(k: kv::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: k.key,
        create_revision: k.create_revision,
        mod_revision: k.mod_revision,
        version: k.version,
        value: k.value,
        lease: 0,
    }
}

/// kv `RangeResponse` → etcd.
pub fn range_response(h: &HeaderInfo, r: kv::RangeResponse) -> pb::RangeResponse {
    pb::RangeResponse {
        header: Some(h.header(r.header.revision)),
        kvs: r.kvs.into_iter().map(kv_pair).collect(),
        more: r.more,
        count: r.count,
    }
}

/// kv `PutResponse` → etcd.
pub fn put_response(h: &HeaderInfo, r: kv::PutResponse) -> pb::PutResponse {
    pb::PutResponse {
        header: Some(h.header(r.header.revision)),
        prev_kv: r.prev_kv.map(kv_pair),
    }
}

/// kv `DeleteRangeResponse` → etcd.
pub fn delete_response(h: &HeaderInfo, r: kv::DeleteRangeResponse) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header: Some(h.header(r.header.revision)),
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(kv_pair).collect(),
    }
}

/// kv `TxnResponse` → etcd. As in etcd, only the outer header names the
/// cluster, member and term; the headers of the operations inside carry
/// just their revision.
pub fn txn_response(h: &HeaderInfo, r: kv::TxnResponse) -> pb::TxnResponse {
    let revision = r.header.revision;
    let mut out = inner_txn_response(r);
    out.header = Some(h.header(revision));
    out
}

/// A txn response whose header carries only the revision, as etcd's
/// operations inside a txn have; a nested txn's own header is empty
/// (kv gives it revision 0).
fn inner_txn_response(r: kv::TxnResponse) -> pb::TxnResponse {
    use pb::response_op::Response;
    let h = &HeaderInfo {
        cluster_id: 0,
        member_id: 0,
        raft_term: 0,
    };
    pb::TxnResponse {
        header: Some(h.header(r.header.revision)),
        succeeded: r.succeeded,
        responses: r
            .responses
            .into_iter()
            .map(|op| pb::ResponseOp {
                response: Some(match op {
                    kv::ResponseOp::Range(x) => Response::ResponseRange(range_response(h, x)),
                    kv::ResponseOp::Put(x) => Response::ResponsePut(put_response(h, x)),
                    kv::ResponseOp::DeleteRange(x) => {
                        Response::ResponseDeleteRange(delete_response(h, x))
                    }
                    kv::ResponseOp::Txn(x) => Response::ResponseTxn(inner_txn_response(x)),
                }),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_garbage_is_an_error() {
        let cmd = kv::Command::Put(kv::PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        });
        let e = encode_command(&Payload::Kv(cmd.clone())).unwrap();
        assert_eq!(e[0], KIND_KV);
        assert_eq!(decode_command(&e), Ok(Payload::Kv(cmd)));
        assert_eq!(decode_command(&[]), Err(CommandError::Empty));
        assert!(matches!(decode_command(&e[..2]), Err(CommandError::Kv(_))));
        let op = RegistryOp::Add {
            id: 5,
            peer_urls: vec!["http://127.0.0.1:1".into()],
        };
        let e = encode_command(&Payload::Registry(op.clone())).unwrap();
        assert_eq!(decode_command(&e), Ok(Payload::Registry(op)));
        let mut bad = e.clone();
        bad[0] = 9;
        assert_eq!(decode_command(&bad), Err(CommandError::UnknownKind(9)));
        bad[0] = KIND_REGISTRY;
        bad.push(0);
        assert!(matches!(
            decode_command(&bad),
            Err(CommandError::Registry(_))
        ));
    }

    #[test]
    fn lease_fields_make_a_lease_put_and_are_checked_as_etcd_does() {
        let mut r = pb::PutRequest {
            key: b"k".to_vec(),
            lease: 5,
            ..Default::default()
        };
        let lease = kv::LeaseOption {
            lease: 5,
            ignore_lease: false,
        };
        assert_eq!(
            put_command(&r),
            Ok(kv::Command::LeasePut(put_request(&r).unwrap(), lease))
        );
        r.ignore_lease = true;
        assert_eq!(put_command(&r), Err(EtcdError::LeaseProvided));
        r.lease = 0;
        r.ignore_lease = false;
        assert!(matches!(put_command(&r), Ok(kv::Command::Put(_))));
    }

    #[test]
    fn compare_with_mismatched_operand_is_invalid() {
        let c = pb::Compare {
            target: pb::compare::CompareTarget::Version as i32,
            target_union: Some(pb::compare::TargetUnion::Value(b"x".to_vec())),
            key: b"k".to_vec(),
            ..Default::default()
        };
        assert!(matches!(compare(&c), Err(EtcdError::InvalidArgument(_))));
    }
}
