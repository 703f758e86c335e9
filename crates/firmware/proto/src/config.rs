//! The node configuration block: sector 0 of every node's disk, written by
//! the host tool, read once at boot. One firmware image serves every node;
//! its identity and timing come from here, and the bootstrap membership:
//! [`NodeConfig::members`] is used once, when the disk is fresh. After that
//! the membership is the one in the node's log and snapshot (changes are
//! log entries), so a restarted node recovers it from its disk whatever
//! this block says.
//!
//! Layout (little endian): `MAGIC` (8 bytes), format version (1 byte), body
//! length (2 bytes), postcard body, CRC-32C of everything before it (4
//! bytes), zero padding to [`CONFIG_BLOCK_BYTES`].

use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};

use crate::addr::{MAX_MEMBERS, MAX_NODE_ID};
use crate::CRC32C;

/// Size of the block (one disk sector).
pub const CONFIG_BLOCK_BYTES: usize = 512;
/// Identifies a config block.
pub const MAGIC: [u8; 8] = *b"MRFWCFG\0";
/// Version of the block format.
pub const CONFIG_VERSION: u8 = 1;
const HEADER_BYTES: usize = MAGIC.len() + 1 + 2;
const CRC_BYTES: usize = 4;
/// Largest body that fits the block.
pub const MAX_BODY_BYTES: usize = CONFIG_BLOCK_BYTES - HEADER_BYTES - CRC_BYTES;
/// Bounds of the Raft tick period.
pub const TICK_MS_MIN: u16 = 5;
/// Upper bound of the Raft tick period.
pub const TICK_MS_MAX: u16 = 1000;

/// What a node needs to know about itself and its cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    /// This node's id (`1..=MAX_NODE_ID`), also its LAN address.
    pub node_id: u8,
    /// The bootstrap voters, ascending: the cluster's first configuration.
    /// A node listed here starts a fresh disk with the bootstrap entry (these
    /// voters at index 1); a node not listed is a joiner: it starts with an
    /// empty log and waits until a leader adds it and sends it the log or a
    /// snapshot. Read only on a fresh disk.
    pub members: Vec<u8>,
    /// Raft tick period in milliseconds.
    pub tick_ms: u16,
    /// Leader heartbeat period, in ticks.
    pub heartbeat_ticks: u16,
    /// Lower bound of the randomized election timeout, in ticks.
    pub election_ticks_min: u16,
    /// Exclusive upper bound of the randomized election timeout, in ticks.
    pub election_ticks_max: u16,
    /// Seed of the node's PRNG (election timeouts, network stack).
    pub rng_seed: u64,
    /// Take a snapshot (and compact the log) after this many applied
    /// entries: the replica's `snapshot_threshold_entries`, one name in
    /// every realization. (Renamed from `snapshot_interval_entries`; the
    /// encoding is unchanged, so configured disks still boot.)
    pub snapshot_threshold_entries: u16,
}

/// Why a config block was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The input is not [`CONFIG_BLOCK_BYTES`] long.
    WrongSize,
    /// No magic: the disk was never configured.
    NoMagic,
    /// Written by an unknown format version.
    UnknownVersion(u8),
    /// The body length field exceeds the block.
    BadLength,
    /// The checksum does not match.
    BadChecksum,
    /// The body does not decode.
    Malformed,
    /// The node id is 0 or above [`MAX_NODE_ID`].
    BadNodeId,
    /// Members are empty, too many, unsorted, duplicated or out of range.
    BadMembers,
    /// Tick period outside `TICK_MS_MIN..=TICK_MS_MAX`.
    BadTick,
    /// Heartbeat is 0 or not below the election timeout, or the election
    /// range is empty.
    BadTimeouts,
    /// The body does not fit the block (encoding only).
    TooLarge,
    /// The snapshot threshold is 0.
    BadSnapshotThreshold,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::WrongSize => write!(f, "config block is not {CONFIG_BLOCK_BYTES} bytes"),
            ConfigError::NoMagic => f.write_str("no config block (disk not configured)"),
            ConfigError::UnknownVersion(v) => write!(f, "unknown config block version {v}"),
            ConfigError::BadLength => f.write_str("config body length out of range"),
            ConfigError::BadChecksum => f.write_str("config block checksum mismatch"),
            ConfigError::Malformed => f.write_str("config body malformed"),
            ConfigError::BadNodeId => write!(f, "node id not in 1..={MAX_NODE_ID}"),
            ConfigError::BadMembers => {
                f.write_str("member list empty, unsorted, duplicated or out of range")
            }
            ConfigError::BadTick => {
                write!(f, "tick period not in {TICK_MS_MIN}..={TICK_MS_MAX} ms")
            }
            ConfigError::BadTimeouts => f.write_str("heartbeat/election timeouts inconsistent"),
            ConfigError::TooLarge => f.write_str("config body too large for the block"),
            ConfigError::BadSnapshotThreshold => {
                f.write_str("snapshot threshold must be at least 1 entry")
            }
        }
    }
}

impl NodeConfig {
    /// Whether this node is one of the bootstrap voters (else it joins a
    /// running cluster).
    // `contains` on a byte slice goes through `memchr`: 156 bytes more
    // firmware `.text` than this loop over at most seven ids.
    #[allow(clippy::manual_contains)]
    pub fn bootstraps(&self) -> bool {
        self.members.iter().any(|&m| m == self.node_id)
    }

    /// Checks every field and their relationships.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 || self.node_id > MAX_NODE_ID {
            return Err(ConfigError::BadNodeId);
        }
        let m = &self.members;
        if m.is_empty() || m.len() > MAX_MEMBERS {
            return Err(ConfigError::BadMembers);
        }
        if m.iter().any(|&id| id == 0 || id > MAX_NODE_ID) || m.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ConfigError::BadMembers);
        }
        if !(TICK_MS_MIN..=TICK_MS_MAX).contains(&self.tick_ms) {
            return Err(ConfigError::BadTick);
        }
        if self.heartbeat_ticks == 0
            || self.heartbeat_ticks >= self.election_ticks_min
            || self.election_ticks_min >= self.election_ticks_max
        {
            return Err(ConfigError::BadTimeouts);
        }
        if self.snapshot_threshold_entries == 0 {
            return Err(ConfigError::BadSnapshotThreshold);
        }
        Ok(())
    }

    /// The block as stored on disk.
    pub fn encode(&self) -> Result<[u8; CONFIG_BLOCK_BYTES], ConfigError> {
        self.validate()?;
        let mut block = [0u8; CONFIG_BLOCK_BYTES];
        let body = postcard::to_slice(
            self,
            &mut block[HEADER_BYTES..HEADER_BYTES + MAX_BODY_BYTES],
        )
        .map_err(|_| ConfigError::TooLarge)?
        .len();
        block[..MAGIC.len()].copy_from_slice(&MAGIC);
        block[MAGIC.len()] = CONFIG_VERSION;
        // `body <= MAX_BODY_BYTES < u16::MAX`.
        block[MAGIC.len() + 1..HEADER_BYTES].copy_from_slice(&(body as u16).to_le_bytes());
        let end = HEADER_BYTES + body;
        let crc = CRC32C.checksum(&block[..end]);
        block[end..end + CRC_BYTES].copy_from_slice(&crc.to_le_bytes());
        Ok(block)
    }

    /// Parses and validates a block read from disk.
    pub fn decode(block: &[u8]) -> Result<NodeConfig, ConfigError> {
        if block.len() != CONFIG_BLOCK_BYTES {
            return Err(ConfigError::WrongSize);
        }
        if block[..MAGIC.len()] != MAGIC {
            return Err(ConfigError::NoMagic);
        }
        let version = block[MAGIC.len()];
        if version != CONFIG_VERSION {
            return Err(ConfigError::UnknownVersion(version));
        }
        let body = usize::from(u16::from_le_bytes([
            block[MAGIC.len() + 1],
            block[MAGIC.len() + 2],
        ]));
        if body > MAX_BODY_BYTES {
            return Err(ConfigError::BadLength);
        }
        let end = HEADER_BYTES + body;
        let mut crc = [0u8; CRC_BYTES];
        crc.copy_from_slice(&block[end..end + CRC_BYTES]);
        if CRC32C.checksum(&block[..end]) != u32::from_le_bytes(crc) {
            return Err(ConfigError::BadChecksum);
        }
        let (cfg, rest): (NodeConfig, _) = postcard::take_from_bytes(&block[HEADER_BYTES..end])
            .map_err(|_| ConfigError::Malformed)?;
        if !rest.is_empty() {
            return Err(ConfigError::Malformed);
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NodeConfig {
        NodeConfig {
            node_id: 2,
            members: alloc::vec![1, 2, 3],
            tick_ms: 25,
            heartbeat_ticks: 2,
            election_ticks_min: 10,
            election_ticks_max: 20,
            rng_seed: 7,
            snapshot_threshold_entries: 64,
        }
    }

    #[test]
    fn round_trip() {
        let b = sample().encode().unwrap();
        assert_eq!(NodeConfig::decode(&b).unwrap(), sample());
    }

    #[test]
    fn every_single_bit_flip_is_refused() {
        let b = sample().encode().unwrap();
        let used = HEADER_BYTES + usize::from(u16::from_le_bytes([b[9], b[10]])) + CRC_BYTES;
        for i in 0..used * 8 {
            let mut c = b;
            c[i / 8] ^= 1 << (i % 8);
            assert!(NodeConfig::decode(&c).is_err(), "bit {i}");
        }
    }

    #[test]
    fn invalid_configs_are_refused() {
        let mut c = sample();
        c.node_id = 4;
        let joiner = NodeConfig::decode(&c.encode().unwrap()).unwrap();
        assert!(!joiner.bootstraps(), "not a bootstrap voter: joins later");
        assert!(sample().bootstraps());
        let mut c = sample();
        c.members = alloc::vec![2, 1];
        assert_eq!(c.validate(), Err(ConfigError::BadMembers));
        let mut c = sample();
        c.heartbeat_ticks = 10;
        assert_eq!(c.validate(), Err(ConfigError::BadTimeouts));
        assert_eq!(NodeConfig::decode(&[0u8; 512]), Err(ConfigError::NoMagic));
        assert_eq!(NodeConfig::decode(&[0u8; 5]), Err(ConfigError::WrongSize));
    }
}
