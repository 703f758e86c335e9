//! The block device the log lives on: whole 512-byte sectors, writes that
//! are durable only after [`BlockDevice::flush`].

use core::fmt;

/// Why a disk operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskError {
    /// The range ends past the disk.
    OutOfRange,
    /// The buffer is not a whole number of sectors.
    Misaligned,
    /// The device reported an error.
    Io,
    /// The device is read-only.
    ReadOnly,
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiskError::OutOfRange => "sector range past the end of the disk",
            DiskError::Misaligned => "buffer not a whole number of sectors",
            DiskError::Io => "device I/O error",
            DiskError::ReadOnly => "disk is read-only",
        })
    }
}

/// A disk of [`metalraft_fw_proto::disk::SECTOR_BYTES`]-byte sectors. The
/// firmware's is virtio-blk (`platform::disk::Disk`); tests use a model
/// that keeps unflushed writes apart so they can be lost.
pub trait BlockDevice {
    /// Capacity in sectors.
    fn sectors(&self) -> u64;
    /// Reads whole sectors starting at `sector` into `buf`.
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError>;
    /// Writes whole sectors starting at `sector`; not durable before
    /// [`BlockDevice::flush`] returns `Ok`.
    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), DiskError>;
    /// Makes every completed write durable. An error means some of them may
    /// be lost.
    fn flush(&mut self) -> Result<(), DiskError>;
}
