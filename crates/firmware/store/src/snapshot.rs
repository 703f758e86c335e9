//! Snapshots on disk: two alternating slots (header sector + data). A new
//! snapshot — taken locally, or received from the leader (reassembled in RAM
//! by `metalraft-replica` and handed over whole with the `Persist` that
//! installs it) — is written to the slot that is not current, then its
//! header (with a higher sequence number) is written and flushed: only then
//! does it become current, and only then is the log before it released. A
//! crash at any point leaves the previous snapshot and the log it needs
//! intact.

use alloc::vec;
use alloc::vec::Vec;

use metalraft_core::{Index, SnapshotInstall, SnapshotMeta, StorageError, MAX_TERM_OR_INDEX};
use metalraft_fw_proto::disk::{
    SnapshotHeader, LOG_START_SECTOR, MAX_SNAPSHOT_BYTES, SECTOR_BYTES, SNAPSHOT_SLOTS,
};
use metalraft_fw_proto::CRC32C;

use super::{BlockDevice, DiskLog, StoreError};

/// The current snapshot.
#[derive(Clone, Debug)]
pub(super) struct Current {
    /// Slot number (0 or 1).
    pub(super) slot: usize,
    pub(super) header: SnapshotHeader,
    pub(super) meta: SnapshotMeta,
}

/// Snapshot bookkeeping of a [`DiskLog`].
#[derive(Clone, Debug, Default)]
pub(super) struct SnapshotState {
    pub(super) current: Option<Current>,
}

impl SnapshotState {
    pub(super) fn recovered(current: Option<Current>) -> SnapshotState {
        SnapshotState { current }
    }

    pub(super) fn meta(&self) -> Option<&SnapshotMeta> {
        self.current.as_ref().map(|c| &c.meta)
    }

    fn free_slot(&self) -> usize {
        self.current.as_ref().map_or(0, |c| 1 - c.slot)
    }
}

/// Encodes the core's `SnapshotMeta` for a header.
fn encode_meta(meta: &SnapshotMeta) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(meta).map_err(|_| StoreError::SnapshotTooLarge)
}

/// Decodes [`encode_meta`]'s output.
fn decode_meta(bytes: &[u8]) -> Option<SnapshotMeta> {
    postcard::from_bytes(bytes).ok()
}

fn data_sector(slot: usize, offset: u64) -> u64 {
    SNAPSHOT_SLOTS[slot] + 1 + offset / SECTOR_BYTES as u64
}

impl<D: BlockDevice> DiskLog<D> {
    /// Reads `len` data bytes of `slot` from `offset`.
    pub(super) fn read_slot_data(
        &self,
        slot: usize,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::with_capacity(len);
        let mut sector = [0u8; SECTOR_BYTES];
        let mut pos = offset;
        let mut disk = self.disk.borrow_mut();
        while out.len() < len {
            disk.read(data_sector(slot, pos), &mut sector)?;
            let within = (pos % SECTOR_BYTES as u64) as usize;
            let take = (SECTOR_BYTES - within).min(len - out.len());
            out.extend_from_slice(&sector[within..within + take]);
            pos += take as u64;
        }
        Ok(out)
    }

    /// Writes `bytes` into `slot`'s data at `offset` (read-modify-write of
    /// partial sectors).
    fn write_slot_data(
        &mut self,
        slot: usize,
        offset: u64,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let end = offset
            .checked_add(bytes.len() as u64)
            .ok_or(StoreError::SnapshotTooLarge)?;
        if end > MAX_SNAPSHOT_BYTES as u64 {
            return Err(StoreError::SnapshotTooLarge);
        }
        let mut disk = self.disk.borrow_mut();
        let mut sector = [0u8; SECTOR_BYTES];
        let mut done = 0usize;
        while done < bytes.len() {
            let pos = offset + done as u64;
            let within = (pos % SECTOR_BYTES as u64) as usize;
            let take = (SECTOR_BYTES - within).min(bytes.len() - done);
            if take < SECTOR_BYTES {
                disk.read(data_sector(slot, pos), &mut sector)?;
            }
            sector[within..within + take].copy_from_slice(&bytes[done..done + take]);
            disk.write(data_sector(slot, pos), &sector)?;
            done += take;
        }
        Ok(())
    }

    /// Makes `slot` current: writes its header and flushes, then releases
    /// the log up to the snapshot. `tail` says whether entries after the
    /// snapshot stay (`log_start` is then the first one's sector).
    fn commit_slot(
        &mut self,
        slot: usize,
        meta: &SnapshotMeta,
        data_len: u64,
        data_crc: u32,
    ) -> Result<(), StoreError> {
        // Entries after the snapshot that stay, and where they start.
        let keep_from = meta.index.saturating_sub(self.base.0) as usize;
        let tail = keep_from < self.slots.len() && meta.index >= self.base.0;
        let log_start = if tail {
            u64::from(self.slots[keep_from].sector)
        } else {
            self.next_sector
        };
        // Without a tail the next record is written in the current epoch;
        // with one, the record at `log_start` is the right one by position.
        let first_epoch = if tail { 0 } else { self.epoch };
        if first_epoch > crate::LAST_WRITABLE_EPOCH {
            return Err(StoreError::LogFull);
        }
        // A damaged but checksummed slot may hold any sequence number; an
        // exhausted one stops the node rather than wrap (a wrapped header
        // would lose to the stale slot at the next boot).
        let seq = match self.snap.current.as_ref() {
            Some(c) => c.header.seq.checked_add(1).ok_or(StoreError::LogFull)?,
            None => 1,
        };
        let header = SnapshotHeader {
            seq,
            index: meta.index,
            term: meta.term,
            log_start_sector: log_start,
            data_len: u32::try_from(data_len).map_err(|_| StoreError::SnapshotTooLarge)?,
            data_crc,
            first_epoch,
            meta: encode_meta(meta)?,
        };
        let sector = header.encode().map_err(|_| StoreError::SnapshotTooLarge)?;
        {
            let mut disk = self.disk.borrow_mut();
            disk.write(SNAPSHOT_SLOTS[slot], &sector)?;
            disk.flush()?;
        }
        if tail {
            self.slots.drain(..keep_from);
        } else {
            self.slots.clear();
        }
        self.base = (meta.index, meta.term);
        self.snap.current = Some(Current {
            slot,
            header,
            meta: meta.clone(),
        });
        Ok(())
    }

    /// Stores a snapshot of the state machine taken at `meta.index` (from
    /// `Node::snapshot_created`) and compacts the log up to it. Skipped
    /// (`Ok(false)`) if the current snapshot already covers `meta.index`.
    pub fn create_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: &[u8],
    ) -> Result<bool, StoreError> {
        if meta.index <= self.base.0 {
            return Ok(false);
        }
        if data.len() > MAX_SNAPSHOT_BYTES {
            return Err(StoreError::SnapshotTooLarge);
        }
        let slot = self.snap.free_slot();
        self.write_slot_data(slot, 0, data)?;
        self.commit_slot(slot, meta, data.len() as u64, CRC32C.checksum(data))?;
        Ok(true)
    }

    /// Installs the snapshot received from the leader (first step of a
    /// `Persist`): its `data` goes to the free slot, then the slot becomes
    /// current as in [`DiskLog::create_snapshot`].
    pub(super) fn install_snapshot(
        &mut self,
        install: &SnapshotInstall,
        data: &[u8],
    ) -> Result<(), StoreError> {
        if data.len() > MAX_SNAPSHOT_BYTES {
            return Err(StoreError::SnapshotTooLarge);
        }
        let slot = self.snap.free_slot();
        self.write_slot_data(slot, 0, data)?;
        if !install.keep_entries_after {
            // Everything after the old head is stale from now on.
            self.slots.truncate(0);
            self.epoch = self.epoch.checked_add(1).ok_or(StoreError::LogFull)?;
        }
        let meta = &install.meta;
        self.commit_slot(slot, meta, data.len() as u64, CRC32C.checksum(data))?;
        self.hard.commit = self.hard.commit.max(meta.index);
        Ok(())
    }

    pub(super) fn read_snapshot_chunk(
        &self,
        index: Index,
        offset: u64,
        max_len: usize,
    ) -> Result<(Vec<u8>, bool), StorageError> {
        let Some(c) = &self.snap.current else {
            return Err(StorageError::SnapshotOutOfDate);
        };
        if c.header.index != index {
            return Err(StorageError::SnapshotOutOfDate);
        }
        let total = u64::from(c.header.data_len);
        let start = offset.min(total);
        let len = (total - start).min(max_len as u64) as usize;
        let bytes = self
            .read_slot_data(c.slot, start, len)
            .map_err(|_| StorageError::Io)?;
        Ok((bytes, start + len as u64 == total))
    }
}

/// Reads and verifies one snapshot slot at boot.
pub(super) fn load_slot<D: BlockDevice>(
    disk: &mut D,
    slot: usize,
) -> Option<(Current, u32, Vec<u8>)> {
    let mut sector = [0u8; SECTOR_BYTES];
    disk.read(SNAPSHOT_SLOTS[slot], &mut sector).ok()?;
    let header = SnapshotHeader::decode(&sector).ok()?;
    let meta = decode_meta(&header.meta)?;
    let epoch = header.first_epoch;
    if meta.index != header.index || meta.term != header.term {
        return None;
    }
    // The log after the snapshot starts at `index + 1`; the core refuses
    // anything above MAX_TERM_OR_INDEX. A snapshot covers at least the
    // bootstrap entry: one at index 0 describes nothing, and its term would
    // make the chain refuse the bootstrap entry written after it (bug 10).
    if header.index == 0 || header.index > MAX_TERM_OR_INDEX || header.term > MAX_TERM_OR_INDEX {
        return None;
    }
    // The log continues inside the ring (or at its very end, where the
    // writer wraps): anywhere else, recovery would read (and the node later
    // write) the fixed areas or past the disk.
    if !(LOG_START_SECTOR..=disk.sectors()).contains(&header.log_start_sector) {
        return None;
    }
    let len = header.data_len as usize;
    let mut data = vec![0u8; len.div_ceil(SECTOR_BYTES) * SECTOR_BYTES];
    if len > 0 {
        disk.read(SNAPSHOT_SLOTS[slot] + 1, &mut data).ok()?;
    }
    data.truncate(len);
    if CRC32C.checksum(&data) != header.data_crc {
        return None;
    }
    Some((Current { slot, header, meta }, epoch, data))
}
