//! Wire formats shared by the MetalRaft firmware (`no_std`) and its host tool
//! (`metalraft-fw`): the node configuration block stored in sector 0 of every
//! node's disk, the client request/response protocol, the removal notice
//! between nodes, and the address plan of the emulated LAN.
//!
//! Every decoder here validates its input once and returns a typed error;
//! none of them panics on any input.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

extern crate alloc;

pub mod addr;
pub mod client;
pub mod config;
mod counters;
pub mod disk;
pub mod notice;

/// CRC-32C (Castagnoli), used by every checksummed format of the firmware.
pub const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
