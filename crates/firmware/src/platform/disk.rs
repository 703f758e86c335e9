//! The block device: virtio-blk behind a small typed API of 512-byte
//! sectors. Requests complete synchronously (QEMU serves the queue on the
//! notify write), which keeps the storage code simple and ordered.

use virtio_drivers::device::blk::VirtIOBlk;
use virtio_drivers::transport::mmio::MmioTransport;

use super::virtio::HalImpl;

/// Bytes per sector.
pub const SECTOR_BYTES: usize = virtio_drivers::device::blk::SECTOR_SIZE;

pub use metalraft_fw_store::DiskError;

use core::cell::Cell;
use critical_section::Mutex;

/// Disk requests and the time they took since boot (`status`).
#[derive(Clone, Copy, Default)]
pub struct DiskStats {
    /// Write requests.
    pub writes: u64,
    /// Flush requests.
    pub flushes: u64,
    /// Time in writes, µs.
    pub write_us: u64,
    /// Time in flushes, µs.
    pub flush_us: u64,
}

static STATS: Mutex<Cell<DiskStats>> = Mutex::new(Cell::new(DiskStats {
    writes: 0,
    flushes: 0,
    write_us: 0,
    flush_us: 0,
}));

/// The disk's counters so far.
pub fn stats() -> DiskStats {
    critical_section::with(|cs| STATS.borrow(cs).get())
}

/// Runs `f`, counting it as a write (`flush` false) or a flush.
fn timed<T>(flush: bool, f: impl FnOnce() -> T) -> T {
    let start = embassy_time::Instant::now();
    let r = f();
    let us = start.elapsed().as_micros();
    critical_section::with(|cs| {
        let cell = STATS.borrow(cs);
        let mut s = cell.get();
        if flush {
            s.flushes += 1;
            s.flush_us += us;
        } else {
            s.writes += 1;
            s.write_us += us;
        }
        cell.set(s);
    });
    r
}

/// A virtio-blk disk.
pub struct Disk {
    blk: VirtIOBlk<HalImpl, MmioTransport<'static>>,
    sectors: u64,
}

impl Disk {
    /// Initializes the device.
    pub fn new(transport: MmioTransport<'static>) -> Result<Disk, DiskError> {
        let blk = VirtIOBlk::<HalImpl, _>::new(transport).map_err(|_| DiskError::Io)?;
        if blk.readonly() {
            return Err(DiskError::ReadOnly);
        }
        let sectors = blk.capacity();
        Ok(Disk { blk, sectors })
    }

    /// Capacity in sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    fn check(&self, sector: u64, len: usize) -> Result<(), DiskError> {
        if len == 0 || len % SECTOR_BYTES != 0 {
            return Err(DiskError::Misaligned);
        }
        let end = sector
            .checked_add((len / SECTOR_BYTES) as u64)
            .ok_or(DiskError::OutOfRange)?;
        if end > self.sectors {
            return Err(DiskError::OutOfRange);
        }
        Ok(())
    }

    /// Reads whole sectors starting at `sector` into `buf`.
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.check(sector, buf.len())?;
        self.blk
            .read_blocks(sector as usize, buf)
            .map_err(|_| DiskError::Io)
    }

    /// Writes whole sectors starting at `sector` (not yet durable: see
    /// [`Disk::flush`]).
    pub fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), DiskError> {
        self.check(sector, buf.len())?;
        let blk = &mut self.blk;
        timed(false, || blk.write_blocks(sector as usize, buf)).map_err(|_| DiskError::Io)
    }

    /// Makes every completed write durable (virtio-blk FLUSH; QEMU
    /// fdatasyncs the image file).
    pub fn flush(&mut self) -> Result<(), DiskError> {
        let blk = &mut self.blk;
        timed(true, || blk.flush()).map_err(|_| DiskError::Io)
    }
}

impl metalraft_fw_store::BlockDevice for Disk {
    fn sectors(&self) -> u64 {
        Disk::sectors(self)
    }

    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        Disk::read(self, sector, buf)
    }

    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), DiskError> {
        Disk::write(self, sector, buf)
    }

    fn flush(&mut self) -> Result<(), DiskError> {
        Disk::flush(self)
    }
}
