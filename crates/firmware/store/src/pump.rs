//! The order in which the firmware's Raft task carries out a `Ready`, kept
//! here (host-testable) rather than in the task:
//!
//! 1. [`Pump::poll`] takes the next `Ready` — but not while the batch of
//!    the previous one waits for [`Pump::sync`] — stages its snapshot
//!    chunks and keeps its persistence batch. The caller sends its messages
//!    at once: the core has already held back every message that depends on
//!    a batch not yet acknowledged (vote grants, append acknowledgements,
//!    anything sent in a term not yet durable);
//! 2. [`Pump::sync`] writes the kept batch, flushes it (the disk is
//!    synchronous: [`DiskLog::persist`] returns once the flush completed)
//!    and only then acknowledges it with `Node::on_persisted`, which is what
//!    lets the held messages into the next `Ready`.
//!
//! A batch whose write or flush failed is never acknowledged, and the pump
//! stops for good: the node cannot keep the promises those messages make.

use alloc::vec::Vec;
use core::fmt;

use metalraft_core::{Node, Persist, Ready};

use crate::{BlockDevice, DiskLog, StoreError};

/// A core node over the firmware's disk log.
pub type DiskNode<D> = Node<Vec<u8>, DiskLog<D>>;

/// Why the pump stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PumpError {
    /// The core stopped (it says why).
    Core(metalraft_core::Error),
    /// Storage failed: the batch was not acknowledged.
    Store(StoreError),
}

impl fmt::Display for PumpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PumpError::Core(e) => write!(f, "core stopped: {e}"),
            PumpError::Store(e) => write!(f, "storage failed: {e}"),
        }
    }
}

/// Carries out `Ready`s in the order of the module doc.
#[derive(Debug, Default)]
pub struct Pump {
    /// The batch of the last `Ready`, not yet durable.
    unsynced: Option<Persist<Vec<u8>>>,
    /// A batch failed: nothing is ever acknowledged again.
    stopped: bool,
}

impl Pump {
    /// A pump with nothing pending.
    pub const fn new() -> Pump {
        Pump {
            unsynced: None,
            stopped: false,
        }
    }

    /// Whether a batch waits for [`Pump::sync`].
    pub fn syncing(&self) -> bool {
        self.unsynced.is_some()
    }

    /// Takes the next `Ready`, if there is one and no batch waits for
    /// [`Pump::sync`]. Its snapshot chunks are already staged and its
    /// persistence batch is kept; the caller sends its messages, applies its
    /// committed entries and answers its read states.
    pub fn poll<D: BlockDevice>(
        &mut self,
        node: &mut DiskNode<D>,
    ) -> Result<Option<Ready<Vec<u8>>>, PumpError> {
        if self.stopped || self.unsynced.is_some() || !node.has_ready() {
            return Ok(None);
        }
        let mut rd = node.ready().map_err(|e| self.stop(PumpError::Core(e)))?;
        // Chunks before the batch: its Persist may install the snapshot.
        for chunk in rd.take_snapshot_chunks() {
            if let Err(e) = node.storage_mut().stage_chunk(&chunk) {
                return Err(self.stop(PumpError::Store(e)));
            }
        }
        self.unsynced = rd.take_persist();
        Ok(Some(rd))
    }

    /// Writes and flushes the kept batch, runs `installed` if it installed
    /// a snapshot (restore the state machine from
    /// [`DiskLog::snapshot_data`]), then acknowledges the batch. Returns
    /// whether a snapshot was installed. On any error nothing is
    /// acknowledged and the pump stops.
    pub fn sync<D: BlockDevice>(
        &mut self,
        node: &mut DiskNode<D>,
        installed: impl FnOnce(&DiskLog<D>) -> Result<(), StoreError>,
    ) -> Result<bool, PumpError> {
        if self.stopped {
            return Ok(false);
        }
        let Some(p) = self.unsynced.take() else {
            return Ok(false);
        };
        let install = node
            .storage_mut()
            .persist(&p)
            .map_err(|e| self.stop(PumpError::Store(e)))?;
        if install {
            installed(node.storage()).map_err(|e| self.stop(PumpError::Store(e)))?;
        }
        // Durable: the flush in `persist` has completed.
        node.on_persisted(p.into_token())
            .map_err(|e| self.stop(PumpError::Core(e)))?;
        Ok(install)
    }

    fn stop(&mut self, e: PumpError) -> PumpError {
        self.stopped = true;
        self.unsynced = None;
        e
    }
}
