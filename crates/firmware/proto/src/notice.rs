//! The removal notice: the one datagram on a node's Raft port that is not a
//! Raft message. A member sends it to a node that its applied configuration
//! removed and that still talks to it (ADR 0022); the firmware's peer
//! decoder checks its recipient and sender against the address plan.
//!
//! Layout, fixed [`NOTICE_BYTES`] bytes: [`REMOVED_NOTICE_KIND`] (a first
//! byte no Raft datagram starts with: those start with their protocol
//! version, 1), the recipient's node id, the sender's node id, the index of
//! the change that removed the recipient (u64, little endian). Decoding is
//! total: any other length or first byte is an error.

use core::fmt;

/// First byte of a removal notice.
pub const REMOVED_NOTICE_KIND: u8 = 0x81;
/// Length of a removal notice.
pub const NOTICE_BYTES: usize = 1 + 1 + 1 + 8;

/// "The change at `index` removed you."
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemovalNotice {
    /// The removed node.
    pub to: u8,
    /// The member telling it.
    pub from: u8,
    /// Index of the applied change that removed `to`.
    pub index: u64,
}

/// Why bytes are not a removal notice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoticeError {
    /// Not [`NOTICE_BYTES`] long.
    WrongLength,
    /// The first byte is not [`REMOVED_NOTICE_KIND`].
    WrongKind(u8),
}

impl fmt::Display for NoticeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoticeError::WrongLength => write!(f, "removal notice is not {NOTICE_BYTES} bytes"),
            NoticeError::WrongKind(k) => write!(f, "not a removal notice (first byte {k:#04x})"),
        }
    }
}

impl RemovalNotice {
    /// The datagram.
    pub fn encode(&self) -> [u8; NOTICE_BYTES] {
        let mut b = [0u8; NOTICE_BYTES];
        b[0] = REMOVED_NOTICE_KIND;
        b[1] = self.to;
        b[2] = self.from;
        b[3..].copy_from_slice(&self.index.to_le_bytes());
        b
    }

    /// Parses a datagram (the ids are checked by the receiver).
    pub fn decode(bytes: &[u8]) -> Result<RemovalNotice, NoticeError> {
        let b: &[u8; NOTICE_BYTES] = bytes.try_into().map_err(|_| NoticeError::WrongLength)?;
        if b[0] != REMOVED_NOTICE_KIND {
            return Err(NoticeError::WrongKind(b[0]));
        }
        let mut index = [0u8; 8];
        index.copy_from_slice(&b[3..]);
        Ok(RemovalNotice {
            to: b[1],
            from: b[2],
            index: u64::from_le_bytes(index),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let n = RemovalNotice {
            to: 3,
            from: 1,
            index: 0x0102_0304_0506_0708,
        };
        let b = n.encode();
        assert_eq!(b.len(), NOTICE_BYTES);
        assert_eq!(b[0], REMOVED_NOTICE_KIND);
        assert_eq!(RemovalNotice::decode(&b), Ok(n));
    }

    #[test]
    fn anything_else_is_refused() {
        let b = RemovalNotice {
            to: 3,
            from: 1,
            index: 9,
        }
        .encode();
        assert_eq!(
            RemovalNotice::decode(&b[..NOTICE_BYTES - 1]),
            Err(NoticeError::WrongLength)
        );
        let mut long = b.to_vec();
        long.push(0);
        assert_eq!(RemovalNotice::decode(&long), Err(NoticeError::WrongLength));
        assert_eq!(RemovalNotice::decode(&[]), Err(NoticeError::WrongLength));
        let mut raft = b;
        raft[0] = 1; // a Raft datagram's version byte
        assert_eq!(RemovalNotice::decode(&raft), Err(NoticeError::WrongKind(1)));
    }
}
