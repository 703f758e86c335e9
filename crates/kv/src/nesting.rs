//! `Deserialize` for [`TxnRequest`] and [`RequestOp`], the two types that
//! contain each other (a nested transaction is a `RequestOp::Txn`), and
//! for their results [`TxnResponse`] and [`ResponseOp`] (a follower decodes
//! those from the leader). Derived
//! code would recurse once per level for as long as the input says, so a
//! command of a few hundred kilobytes from a peer or a damaged log could
//! nest deeply enough to overflow the stack before validation ever ran.
//! These seeds carry the depth down and refuse a transaction nested more
//! than [`MAX_TXN_DEPTH`] levels deep before decoding it.
//!
//! The wire form is the derived one (postcard encodes a struct as a
//! sequence and an enum as a variant index then its content), so the
//! encoding is unchanged; only sequence-shaped formats are supported, which
//! is all this crate decodes (see `codec.rs`).

use alloc::vec::Vec;
use core::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, SeqAccess, VariantAccess, Visitor,
};
use serde::Deserialize;

use crate::limits::MAX_TXN_DEPTH;
use crate::request::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use crate::response::{
    DeleteRangeResponse, PutResponse, RangeResponse, ResponseHeader, ResponseOp, TxnResponse,
};

const TXN_FIELDS: &[&str] = &["compare", "success", "failure"];
const OP_VARIANTS: &[&str] = &["Range", "Put", "DeleteRange", "Txn"];

/// A transaction at `level` (the outer one is level 1).
struct TxnSeed {
    level: usize,
}

impl<'de> DeserializeSeed<'de> for TxnSeed {
    type Value = TxnRequest;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<TxnRequest, D::Error> {
        if self.level > MAX_TXN_DEPTH {
            return Err(de::Error::custom("transactions nested too deep"));
        }
        d.deserialize_struct("TxnRequest", TXN_FIELDS, self)
    }
}

impl<'de> Visitor<'de> for TxnSeed {
    type Value = TxnRequest;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TxnRequest")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TxnRequest, A::Error> {
        let missing = |i| de::Error::invalid_length(i, &"3 fields");
        let compare: Vec<Compare> = seq.next_element()?.ok_or_else(|| missing(0))?;
        let ops = OpsSeed { level: self.level };
        let success = seq.next_element_seed(ops)?.ok_or_else(|| missing(1))?;
        let ops = OpsSeed { level: self.level };
        let failure = seq.next_element_seed(ops)?.ok_or_else(|| missing(2))?;
        Ok(TxnRequest {
            compare,
            success,
            failure,
        })
    }
}

/// One branch of a transaction at `level`.
struct OpsSeed {
    level: usize,
}

impl<'de> DeserializeSeed<'de> for OpsSeed {
    type Value = Vec<RequestOp>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<RequestOp>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for OpsSeed {
    type Value = Vec<RequestOp>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of RequestOp")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<RequestOp>, A::Error> {
        // No capacity from the length prefix: the input could claim any.
        let mut ops = Vec::new();
        while let Some(op) = seq.next_element_seed(OpSeed { level: self.level })? {
            ops.push(op);
        }
        Ok(ops)
    }
}

/// One operation of a transaction at `level`.
struct OpSeed {
    #[cfg_attr(not(feature = "nested-txn"), allow(dead_code))]
    level: usize,
}

impl<'de> DeserializeSeed<'de> for OpSeed {
    type Value = RequestOp;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RequestOp, D::Error> {
        d.deserialize_enum("RequestOp", OP_VARIANTS, self)
    }
}

impl<'de> Visitor<'de> for OpSeed {
    type Value = RequestOp;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a RequestOp")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<RequestOp, A::Error> {
        // Variant indices in declaration order, as the derived `Serialize`
        // writes them.
        let (index, v): (u32, _) = data.variant()?;
        match index {
            0 => Ok(RequestOp::Range(v.newtype_variant::<RangeRequest>()?)),
            1 => Ok(RequestOp::Put(v.newtype_variant::<PutRequest>()?)),
            2 => Ok(RequestOp::DeleteRange(
                v.newtype_variant::<DeleteRangeRequest>()?,
            )),
            #[cfg(feature = "nested-txn")]
            3 => Ok(RequestOp::Txn(v.newtype_variant_seed(TxnSeed {
                level: self.level + 1,
            })?)),
            other => Err(de::Error::invalid_value(
                de::Unexpected::Unsigned(u64::from(other)),
                &"a RequestOp variant index (0-3)",
            )),
        }
    }
}

impl<'de> Deserialize<'de> for TxnRequest {
    /// A transaction that is not nested in another (level 1).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TxnRequest, D::Error> {
        TxnSeed { level: 1 }.deserialize(d)
    }
}

impl<'de> Deserialize<'de> for RequestOp {
    /// An operation of a transaction that is not nested (level 1).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RequestOp, D::Error> {
        OpSeed { level: 1 }.deserialize(d)
    }
}

const TXN_RESPONSE_FIELDS: &[&str] = &["header", "succeeded", "responses"];

/// A transaction's result at `level` (the outer one is level 1).
struct TxnResponseSeed {
    level: usize,
}

impl<'de> DeserializeSeed<'de> for TxnResponseSeed {
    type Value = TxnResponse;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<TxnResponse, D::Error> {
        if self.level > MAX_TXN_DEPTH {
            return Err(de::Error::custom("transactions nested too deep"));
        }
        d.deserialize_struct("TxnResponse", TXN_RESPONSE_FIELDS, self)
    }
}

impl<'de> Visitor<'de> for TxnResponseSeed {
    type Value = TxnResponse;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TxnResponse")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TxnResponse, A::Error> {
        let missing = |i| de::Error::invalid_length(i, &"3 fields");
        let header: ResponseHeader = seq.next_element()?.ok_or_else(|| missing(0))?;
        let succeeded: bool = seq.next_element()?.ok_or_else(|| missing(1))?;
        let responses = seq
            .next_element_seed(ResponsesSeed { level: self.level })?
            .ok_or_else(|| missing(2))?;
        Ok(TxnResponse {
            header,
            succeeded,
            responses,
        })
    }
}

/// The results of a transaction's branch at `level`.
struct ResponsesSeed {
    level: usize,
}

impl<'de> DeserializeSeed<'de> for ResponsesSeed {
    type Value = Vec<ResponseOp>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<ResponseOp>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ResponsesSeed {
    type Value = Vec<ResponseOp>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of ResponseOp")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<ResponseOp>, A::Error> {
        let mut out = Vec::new();
        while let Some(r) = seq.next_element_seed(ResponseSeed { level: self.level })? {
            out.push(r);
        }
        Ok(out)
    }
}

/// One operation's result in a transaction at `level`.
struct ResponseSeed {
    #[cfg_attr(not(feature = "nested-txn"), allow(dead_code))]
    level: usize,
}

impl<'de> DeserializeSeed<'de> for ResponseSeed {
    type Value = ResponseOp;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ResponseOp, D::Error> {
        d.deserialize_enum("ResponseOp", OP_VARIANTS, self)
    }
}

impl<'de> Visitor<'de> for ResponseSeed {
    type Value = ResponseOp;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a ResponseOp")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<ResponseOp, A::Error> {
        let (index, v): (u32, _) = data.variant()?;
        match index {
            0 => Ok(ResponseOp::Range(v.newtype_variant::<RangeResponse>()?)),
            1 => Ok(ResponseOp::Put(v.newtype_variant::<PutResponse>()?)),
            2 => Ok(ResponseOp::DeleteRange(
                v.newtype_variant::<DeleteRangeResponse>()?,
            )),
            #[cfg(feature = "nested-txn")]
            3 => Ok(ResponseOp::Txn(v.newtype_variant_seed(
                TxnResponseSeed {
                    level: self.level + 1,
                },
            )?)),
            other => Err(de::Error::invalid_value(
                de::Unexpected::Unsigned(u64::from(other)),
                &"a ResponseOp variant index (0-3)",
            )),
        }
    }
}

impl<'de> Deserialize<'de> for TxnResponse {
    /// A transaction's result that is not nested in another (level 1).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TxnResponse, D::Error> {
        TxnResponseSeed { level: 1 }.deserialize(d)
    }
}

impl<'de> Deserialize<'de> for ResponseOp {
    /// An operation's result in a transaction that is not nested (level 1).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ResponseOp, D::Error> {
        ResponseSeed { level: 1 }.deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(feature = "nested-txn")]
    use crate::MAX_TXN_OPS;
    use crate::{Command, DecodeError};

    #[cfg(feature = "nested-txn")]
    fn nested(levels: usize) -> TxnRequest {
        let mut t = TxnRequest {
            success: alloc::vec![RequestOp::Put(PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ..PutRequest::default()
            })],
            ..TxnRequest::default()
        };
        for _ in 1..levels {
            t = TxnRequest {
                success: alloc::vec![RequestOp::Txn(t)],
                ..TxnRequest::default()
            };
        }
        t
    }

    /// The encoding of `Command::Txn(nested(levels))`, built without the
    /// value (a very deep value overflows the stack when it is encoded or
    /// dropped): each level wraps the next as `compare: []`,
    /// `success: [Txn(..)]`, `failure: []`.
    #[cfg(feature = "nested-txn")]
    fn deep_bytes(levels: usize) -> Vec<u8> {
        let one = Command::Txn(nested(1)).encode();
        // [format version, Command::Txn's index], then the txn.
        let (head, txn) = one.split_at(2);
        let mut bytes = head.to_vec();
        for _ in 1..levels {
            // compare: 0 items; success: 1 item, variant 3 (Txn).
            bytes.extend_from_slice(&[0, 1, 3]);
        }
        bytes.extend_from_slice(txn);
        // Each wrapper's failure: 0 items.
        bytes.resize(bytes.len() + levels - 1, 0);
        bytes
    }

    #[cfg(feature = "nested-txn")]
    #[test]
    fn the_encoding_round_trips_at_every_allowed_depth() {
        for levels in [1, 2, 3, 17, MAX_TXN_DEPTH] {
            let cmd = Command::Txn(nested(levels));
            let bytes = cmd.encode();
            assert_eq!(Command::decode(&bytes), Ok(cmd), "{levels} levels");
        }
    }

    #[cfg(feature = "nested-txn")]
    #[test]
    fn deeper_nesting_is_refused_before_it_is_decoded() {
        // The hand-made encoding is the real one.
        for levels in [1, 2, 5] {
            assert_eq!(deep_bytes(levels), Command::Txn(nested(levels)).encode());
        }
        assert!(Command::decode(&deep_bytes(MAX_TXN_DEPTH)).is_ok());
        assert_eq!(
            Command::decode(&deep_bytes(MAX_TXN_DEPTH + 1)),
            Err(DecodeError::Malformed)
        );
        // Far deeper than derived code's recursion would survive, and
        // within the command size limit: four bytes a level.
        assert_eq!(
            Command::decode(&deep_bytes(300_000)),
            Err(DecodeError::Malformed)
        );
        const { assert!(MAX_TXN_DEPTH <= MAX_TXN_OPS) };
    }

    #[cfg(feature = "nested-txn")]
    #[test]
    fn results_round_trip_and_deep_ones_are_refused() {
        use crate::CommandResult;
        let mut r = TxnResponse {
            succeeded: true,
            responses: alloc::vec![ResponseOp::Put(PutResponse::default())],
            ..TxnResponse::default()
        };
        for _ in 1..MAX_TXN_DEPTH {
            r = TxnResponse {
                responses: alloc::vec![ResponseOp::Txn(r)],
                ..TxnResponse::default()
            };
        }
        let ok = CommandResult::Txn(r.clone());
        assert_eq!(CommandResult::decode(&ok.encode()), Ok(ok));
        let deeper = CommandResult::Txn(TxnResponse {
            responses: alloc::vec![ResponseOp::Txn(r)],
            ..TxnResponse::default()
        });
        assert_eq!(
            CommandResult::decode(&deeper.encode()),
            Err(DecodeError::Malformed)
        );
    }

    #[test]
    fn an_unknown_variant_index_is_malformed() {
        let cmd = Command::Txn(TxnRequest {
            success: alloc::vec![RequestOp::Range(RangeRequest::default())],
            ..TxnRequest::default()
        });
        let mut bytes = cmd.encode();
        // The Range's variant index sits before its body and the failure
        // list's length (one byte, 0).
        let range = postcard::to_allocvec(&RangeRequest::default()).expect("encodes");
        let idx = bytes.len() - 2 - range.len();
        assert_eq!(bytes[idx], 0, "the Range variant index");
        bytes[idx] = 9;
        assert_eq!(Command::decode(&bytes), Err(DecodeError::Malformed));
    }
}
