//! The block device: virtio-blk behind a small typed API of 512-byte
//! sectors. Each request is synchronous for its caller — it returns once
//! the device completed it, which keeps the storage code simple and
//! ordered — but the hart does not spin meanwhile: it sleeps (`wfi`) until
//! the device's completion interrupt. QEMU carries out the request (and a
//! flush's `fdatasync`) on its I/O thread, so a waiting node costs the host
//! no CPU, which the other emulated nodes on the same host then get.
//!
//! The request path is this module's own (virtio 1.x §5.2: a 16-byte
//! header — type, reserved, sector — then the data, then one status byte)
//! over `virtio-drivers`' virtqueue and MMIO transport: the crate's own
//! block driver has no non-blocking flush and spins on every request.
#![allow(unsafe_code)]

use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::mmio::MmioTransport;
use virtio_drivers::transport::{DeviceStatus, Transport};

use super::virtio::HalImpl;

/// Bytes per sector.
pub const SECTOR_BYTES: usize = 512;

pub use metalraft_fw_store::DiskError;

use core::cell::Cell;
use critical_section::Mutex;

/// Descriptors in the request queue (one request uses three).
const QUEUE_SIZE: usize = 16;
/// The request queue's index.
const REQUEST_QUEUE: u16 = 0;
/// Feature bits: read-only device, flush command, virtio 1.x.
const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;
const F_VERSION_1: u64 = 1 << 32;
/// Request types.
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
/// Status byte of a request that succeeded.
const S_OK: u8 = 0;

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

/// Sleeps until `done()` holds. The check and the `wfi` run with
/// interrupts masked, so a completion interrupt between them is not lost:
/// `wfi` returns on a pending enabled interrupt whatever the global enable,
/// and unmasking then runs its handler (which acknowledges the device).
/// Before interrupts are enabled at boot this simply polls.
fn sleep_until(mut done: impl FnMut() -> bool) {
    loop {
        let enabled = riscv::register::mstatus::read().mie();
        riscv::interrupt::disable();
        let ready = done();
        if !ready {
            riscv::asm::wfi();
        }
        if enabled {
            // SAFETY: restores the enable state found on entry.
            unsafe { riscv::interrupt::enable() };
        }
        if ready {
            return;
        }
    }
}

/// A virtio-blk disk.
pub struct Disk {
    transport: MmioTransport<'static>,
    queue: VirtQueue<HalImpl, QUEUE_SIZE>,
    sectors: u64,
    /// The device carries out flushes (else writes are write-through).
    flush: bool,
}

impl Disk {
    /// Initializes the device (virtio 1.x §3.1.1). Its completion
    /// interrupt is routed by `irq::enable_blk`.
    pub fn new(mut transport: MmioTransport<'static>) -> Result<Disk, DiskError> {
        transport.set_status(DeviceStatus::empty());
        transport.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let offered = transport.read_device_features();
        let features = offered & (F_RO | F_FLUSH | F_VERSION_1);
        transport.write_driver_features(features);
        transport.set_status(
            DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK,
        );
        transport.set_guest_page_size(virtio_drivers::PAGE_SIZE as u32);
        // Capacity: a little-endian u64 at offset 0 of the config space.
        let lo: u32 = transport.read_config_space(0).map_err(|_| DiskError::Io)?;
        let hi: u32 = transport.read_config_space(4).map_err(|_| DiskError::Io)?;
        let queue = VirtQueue::new(&mut transport, REQUEST_QUEUE, false, false)
            .map_err(|_| DiskError::Io)?;
        transport.set_status(
            DeviceStatus::ACKNOWLEDGE
                | DeviceStatus::DRIVER
                | DeviceStatus::FEATURES_OK
                | DeviceStatus::DRIVER_OK,
        );
        if features & F_RO != 0 {
            return Err(DiskError::ReadOnly);
        }
        Ok(Disk {
            transport,
            queue,
            sectors: (u64::from(hi) << 32) | u64::from(lo),
            flush: features & F_FLUSH != 0,
        })
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

    /// Submits one request and sleeps until the device completed it.
    /// `data` goes to the device for a write, comes from it for a read.
    fn request(&mut self, kind: u32, sector: u64, data: Data<'_>) -> Result<(), DiskError> {
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&kind.to_le_bytes());
        header[8..].copy_from_slice(&sector.to_le_bytes());
        let mut status = [0xffu8; 1];
        let queue = &mut self.queue;
        let transport = &mut self.transport;
        let used = match data {
            Data::None => {
                let inputs: [&[u8]; 1] = [&header];
                let mut outputs: [&mut [u8]; 1] = [&mut status];
                submit_wait(queue, transport, &inputs, &mut outputs)
            }
            Data::Out(buf) => {
                let inputs: [&[u8]; 2] = [&header, buf];
                let mut outputs: [&mut [u8]; 1] = [&mut status];
                submit_wait(queue, transport, &inputs, &mut outputs)
            }
            Data::In(buf) => {
                let inputs: [&[u8]; 1] = [&header];
                let mut outputs: [&mut [u8]; 2] = [buf, &mut status];
                submit_wait(queue, transport, &inputs, &mut outputs)
            }
        };
        match (used, status[0]) {
            (Ok(()), S_OK) => Ok(()),
            _ => Err(DiskError::Io),
        }
    }

    /// Reads whole sectors starting at `sector` into `buf`.
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.check(sector, buf.len())?;
        self.request(T_IN, sector, Data::In(buf))
    }

    /// Writes whole sectors starting at `sector` (not yet durable: see
    /// [`Disk::flush`]).
    pub fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), DiskError> {
        self.check(sector, buf.len())?;
        timed(false, || self.request(T_OUT, sector, Data::Out(buf)))
    }

    /// Makes every completed write durable (virtio-blk FLUSH; QEMU
    /// fdatasyncs the image file). A device that does not offer flushes
    /// must be write-through (see the README).
    pub fn flush(&mut self) -> Result<(), DiskError> {
        if !self.flush {
            return Ok(());
        }
        timed(true, || self.request(T_FLUSH, 0, Data::None))
    }
}

/// The data of one request.
enum Data<'a> {
    None,
    Out(&'a [u8]),
    In(&'a mut [u8]),
}

/// Adds one descriptor chain, notifies the device and sleeps until it is
/// used. Requests are issued one at a time, so the used element is ours.
fn submit_wait<'a>(
    queue: &mut VirtQueue<HalImpl, QUEUE_SIZE>,
    transport: &mut MmioTransport<'static>,
    inputs: &'a [&'a [u8]],
    outputs: &'a mut [&'a mut [u8]],
) -> Result<(), virtio_drivers::Error> {
    // SAFETY: the buffers stay borrowed, untouched, until `pop_used`
    // below returns them; nothing else is in flight on this queue.
    let token = unsafe { queue.add(inputs, outputs)? };
    if queue.should_notify() {
        transport.notify(REQUEST_QUEUE);
    }
    sleep_until(|| queue.can_pop());
    // SAFETY: the same buffers as given to `add`, for its token.
    unsafe { queue.pop_used(token, inputs, outputs) }.map(|_| ())
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
