//! The versioned binary encoding of commands and results: one
//! [`FORMAT_VERSION`] byte, then the value in postcard's stable 1.x format.

use crate::error::DecodeError;
use crate::limits::{MAX_ENCODED_COMMAND_BYTES, MAX_ENCODED_RESULT_BYTES};
use crate::request::Command;
use crate::response::CommandResult;
use alloc::vec::Vec;
use serde::{de::DeserializeOwned, Serialize};

/// The leading byte of every encoded command, result and snapshot body.
pub const FORMAT_VERSION: u8 = 1;

/// Capacity an encoding starts with: most commands and results are
/// smaller, so they are written without growing the `Vec` (which starts at
/// one byte and doubles otherwise: four reallocations and copies for a
/// 50-byte put, a measurable cost on the firmware's emulated CPU).
const ENCODE_START_BYTES: usize = 128;

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENCODE_START_BYTES);
    out.push(FORMAT_VERSION);
    // Serializing into a Vec only fails for sequences of unknown length,
    // which none of this crate's types have: a failure is a bug.
    postcard::to_extend(value, out)
        .expect("postcard cannot fail to encode this crate's types into a Vec")
}

/// Decodes a postcard body that must fill `bytes` exactly.
pub(crate) fn decode_exact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|_| DecodeError::Malformed)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes { len: rest.len() });
    }
    Ok(value)
}

fn decode<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    decode_exact(body)
}

impl Command {
    /// The wire form: [`FORMAT_VERSION`], then the postcard encoding. A
    /// command that passes [`validate`](Self::validate) encodes to at most
    /// [`MAX_ENCODED_COMMAND_BYTES`].
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Parses and validates the wire form. Refuses empty, oversized
    /// (`> MAX_ENCODED_COMMAND_BYTES`), unknown-version, malformed and
    /// trailing-garbage input, and commands that fail
    /// [`validate`](Self::validate). Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Command, DecodeError> {
        let cmd: Command = decode(bytes, MAX_ENCODED_COMMAND_BYTES)?;
        cmd.validate().map_err(DecodeError::Invalid)?;
        Ok(cmd)
    }
}

impl CommandResult {
    /// The wire form: [`FORMAT_VERSION`], then the postcard encoding.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Parses the wire form. Refuses empty, oversized
    /// (`> MAX_ENCODED_RESULT_BYTES`), unknown-version, malformed and
    /// trailing-garbage input. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<CommandResult, DecodeError> {
        decode(bytes, MAX_ENCODED_RESULT_BYTES)
    }
}
