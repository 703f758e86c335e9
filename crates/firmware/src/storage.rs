//! Durable Raft storage: `metalraft-fw-store` (host-tested) over this
//! board's virtio-blk [`Disk`].

use crate::platform::disk::Disk;

pub use metalraft_fw_store::{
    believe_notice, Departures, Pump, PumpError, Recovered, SnapshotSaved, StoreError,
    MAX_LOG_ENTRIES,
};

/// The log on this board's disk.
pub type DiskLog = metalraft_fw_store::DiskLog<Disk>;
/// The replica of the key-value store over that log.
pub type DiskReplica = metalraft_fw_store::DiskReplica<metalraft_kv::KvStore, Disk>;
