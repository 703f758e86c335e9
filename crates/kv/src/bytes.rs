//! Byte strings read in one copy: serde's `Vec<u8>` reads a sequence of
//! `u8` one element at a time; postcard writes a byte string exactly as it
//! writes that sequence (a varint length, then the bytes), so reading it as
//! bytes gives the same values from the same input, about ten times faster
//! on a snapshot of 256-byte values (see the README, "Restore time").
//!
//! For other crates' postcard formats too: `#[serde(with =
//! "metalraft_kv::bytes")]` on a `Vec<u8>` field, or
//! `serialize_with = "metalraft_kv::bytes::serialize"` on a `&[u8]` one.

use alloc::vec::Vec;
use core::fmt;
use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
use serde::Serializer;

/// Writes a byte string in one block: the same postcard bytes as serde's
/// element-by-element `[u8]`.
pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(v)
}

/// Reads a `Vec<u8>` with `deserialize_byte_buf` (one copy).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    d.deserialize_byte_buf(ByteBufVisitor)
}

/// A `Vec<u8>` read with `deserialize_byte_buf`.
pub(crate) struct ByteBuf(pub(crate) Vec<u8>);

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize(d).map(ByteBuf)
    }
}

struct ByteBufVisitor;

impl<'de> Visitor<'de> for ByteBufVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    /// For formats that hand a byte string over as a sequence.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::new();
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same bytes decode to the same value both ways, whatever the
    /// length (the varint length prefix crosses one byte at 128).
    #[test]
    fn reads_what_a_vec_of_u8_wrote() {
        for len in [0usize, 1, 127, 128, 300, 70_000] {
            let v: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let bytes = postcard::to_allocvec(&(7u8, v.clone(), 9u8)).unwrap();
            let (a, ByteBuf(got), b): (u8, ByteBuf, u8) = postcard::from_bytes(&bytes).unwrap();
            assert_eq!((a, got, b), (7, v, 9));
        }
    }

    /// Written as one block, the bytes are those of a `&[u8]` written
    /// element by element.
    #[test]
    fn writes_what_a_slice_of_u8_wrote() {
        #[derive(serde::Serialize)]
        struct Block<'a>(#[serde(serialize_with = "serialize")] &'a [u8]);
        for len in [0usize, 1, 127, 128, 300, 70_000] {
            let v: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
            let block = postcard::to_allocvec(&(1u8, Block(&v), 2u8)).unwrap();
            let each = postcard::to_allocvec(&(1u8, v.as_slice(), 2u8)).unwrap();
            assert_eq!(block, each);
        }
    }

    /// A length beyond the input is refused, not trusted.
    #[test]
    fn refuses_a_length_beyond_the_input() {
        let mut bytes = postcard::to_allocvec(&alloc::vec![1u8; 10]).unwrap();
        bytes.truncate(5);
        assert!(postcard::from_bytes::<ByteBuf>(&bytes).is_err());
    }
}
