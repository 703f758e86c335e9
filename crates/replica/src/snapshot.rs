//! Reassembly of a snapshot the leader sends in chunks.

use alloc::vec::Vec;

use metalraft_core::{SnapshotChunk, SnapshotMeta};

use crate::error::ChunkError;

/// Collects the chunks of an incoming snapshot in memory, checking that each
/// continues the previous one (same snapshot, offset = bytes so far) and
/// that the whole stays within a size cap. A chunk at offset 0 starts over.
/// On any error the partial data is dropped.
#[derive(Debug)]
pub struct SnapshotAssembler {
    max_bytes: u64,
    current: Option<(SnapshotMeta, Vec<u8>)>,
}

impl SnapshotAssembler {
    /// An empty assembler refusing snapshots above `max_bytes`.
    pub fn new(max_bytes: u64) -> Self {
        SnapshotAssembler {
            max_bytes,
            current: None,
        }
    }

    /// Bytes received of the snapshot in progress.
    pub fn received(&self) -> u64 {
        self.current.as_ref().map_or(0, |(_, d)| d.len() as u64)
    }

    /// Adds one chunk.
    pub fn push(&mut self, chunk: SnapshotChunk) -> Result<(), ChunkError> {
        let r = self.push_inner(chunk);
        if r.is_err() {
            self.current = None;
        }
        r
    }

    fn push_inner(&mut self, chunk: SnapshotChunk) -> Result<(), ChunkError> {
        if chunk.offset == 0 {
            self.current = Some((chunk.meta.clone(), Vec::new()));
        }
        let (meta, buf) = self.current.as_mut().ok_or(ChunkError::NoStart)?;
        if *meta != chunk.meta {
            return Err(ChunkError::OtherSnapshot);
        }
        let have = buf.len() as u64;
        if chunk.offset != have {
            return Err(ChunkError::Gap {
                expected: have,
                got: chunk.offset,
            });
        }
        let total = have.saturating_add(chunk.data.len() as u64);
        if total > self.max_bytes {
            return Err(ChunkError::TooLarge {
                max: self.max_bytes,
            });
        }
        buf.extend_from_slice(&chunk.data);
        Ok(())
    }

    /// Takes the received data of snapshot `meta` (to install it).
    pub fn finish(&mut self, meta: &SnapshotMeta) -> Result<Vec<u8>, ChunkError> {
        match self.current.take() {
            Some((m, data)) if m == *meta => Ok(data),
            _ => Err(ChunkError::Missing),
        }
    }
}
