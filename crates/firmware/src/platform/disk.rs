//! The block device: virtio-blk behind a small typed API of 512-byte
//! sectors. Writes to consecutive sectors are merged into one request;
//! several writes may be in flight, but a flush starts only once every
//! write before it completed and no write starts before it completed, so
//! every flush covers exactly what a synchronous disk's would. A write or a flush
//! returns as soon as it is submitted, and only the next request (or the
//! Raft task, through [`DiskWaiter::idle`], before it acknowledges a
//! batch) waits for it. So the flush that ends a batch — QEMU's
//! `fdatasync` — runs while the node receives datagrams and ticks. Where
//! code must wait synchronously (the next request, a read), the hart
//! sleeps (`wfi`) until the completion interrupt instead of spinning, so a
//! waiting node costs the host no CPU, which the other emulated nodes on
//! the same host then get.
//!
//! The request path is this module's own (virtio 1.x §5.2: a 16-byte
//! header — type, reserved, sector — then the data, then one status byte)
//! over `virtio-drivers`' virtqueue and MMIO transport: the crate's own
//! block driver has no non-blocking flush and spins on every request.
#![allow(unsafe_code)]

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::task::Poll;

use embassy_sync::waitqueue::AtomicWaker;
use static_cell::StaticCell;
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
/// Writes the device carries out at once (three descriptors each).
const MAX_WRITES_IN_FLIGHT: usize = 4;
const _: () = assert!(3 * MAX_WRITES_IN_FLIGHT <= QUEUE_SIZE);
/// Most bytes of consecutive writes merged into one request.
const MAX_MERGED_WRITE_BYTES: usize = 16 * 1024;
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

/// Woken by the block device's interrupt (a request completed).
pub static WAKER: AtomicWaker = AtomicWaker::new();

/// The request the device is carrying out: its buffers stay here, owned,
/// until the device has used them.
struct InFlight {
    token: u16,
    header: [u8; 16],
    data: Vec<u8>,
    status: [u8; 1],
    flush: bool,
    /// First sector written (a write).
    sector: u64,
    since: embassy_time::Instant,
}

impl InFlight {
    /// Whether this write covers any of `len` bytes from `sector`.
    fn overlaps(&self, sector: u64, len: usize) -> bool {
        let end = |s: u64, l: usize| s + (l / SECTOR_BYTES) as u64;
        !self.flush && self.sector < end(sector, len) && sector < end(self.sector, self.data.len())
    }
}

/// The device and its requests in flight.
struct Device {
    transport: MmioTransport<'static>,
    queue: VirtQueue<HalImpl, QUEUE_SIZE>,
    /// Boxed: the device reads and writes their buffers (the header and
    /// status arrays inside `InFlight`) by address, so they must not move
    /// when the vector does (`swap_remove`). Either up to
    /// [`MAX_WRITES_IN_FLIGHT`] writes, or one flush.
    #[allow(clippy::vec_box)]
    inflight: Vec<Box<InFlight>>,
    /// Writes not yet submitted: consecutive sectors from the first, merged
    /// into one request (a batch's records lie one after the other).
    pending: Option<(u64, Vec<u8>)>,
    /// A request failed: every later one fails too (the node stops).
    failed: bool,
}

/// The buffers of a request as the virtqueue takes them: header (and data,
/// for a write) in, status out.
fn with_buffers<T>(
    r: &mut InFlight,
    f: impl for<'a> FnOnce(&'a [&'a [u8]], &'a mut [&'a mut [u8]]) -> T,
) -> T {
    let inputs: [&[u8]; 2] = [&r.header, &r.data];
    let mut outputs: [&mut [u8]; 1] = [&mut r.status];
    let n = if r.data.is_empty() { 1 } else { 2 };
    f(&inputs[..n], &mut outputs)
}

impl Device {
    /// Takes every completed request off the queue: counts it, records a
    /// failure. Returns whether nothing is in flight.
    fn reap(&mut self) -> bool {
        while let Some(token) = self.queue.peek_used() {
            let Some(at) = self.inflight.iter().position(|r| r.token == token) else {
                // Not ours: cannot happen (every request is in the table).
                self.failed = true;
                return self.inflight.is_empty();
            };
            let mut req = self.inflight.swap_remove(at);
            let queue = &mut self.queue;
            // SAFETY: the same buffers as given to `add` for this token.
            let used = with_buffers(&mut req, |i, o| unsafe { queue.pop_used(token, i, o) });
            if used.is_err() || req.status[0] != S_OK {
                self.failed = true;
            }
            let us = req.since.elapsed().as_micros();
            critical_section::with(|cs| {
                let cell = STATS.borrow(cs);
                let mut s = cell.get();
                if req.flush {
                    s.flushes += 1;
                    s.flush_us += us;
                } else {
                    s.writes += 1;
                    s.write_us += us;
                }
                cell.set(s);
            });
        }
        self.inflight.is_empty()
    }

    /// Waits (asleep) until nothing is in flight; fails if anything did.
    fn settle(&mut self) -> Result<(), DiskError> {
        sleep_until(|| self.reap());
        if self.failed {
            return Err(DiskError::Io);
        }
        Ok(())
    }

    /// Submits a write (`data`) or flush (`data` empty) and returns: the
    /// device completes it while the node goes on. Writes to different
    /// sectors may run side by side (nothing is promised of an unflushed
    /// write, so their order does not matter; one that overlaps a write in
    /// flight waits for it); a flush waits until every write before it completed (it
    /// covers only those), and a write after a flush waits for the flush.
    fn submit(&mut self, kind: u32, sector: u64, data: Vec<u8>) -> Result<(), DiskError> {
        let flush = kind == T_FLUSH;
        let len = data.len();
        sleep_until(|| {
            let idle = self.reap();
            idle || (!flush
                && self.inflight.len() < MAX_WRITES_IN_FLIGHT
                && !self
                    .inflight
                    .iter()
                    .any(|r| r.flush || r.overlaps(sector, len)))
        });
        if self.failed {
            return Err(DiskError::Io);
        }
        let mut req = Box::new(InFlight {
            token: 0,
            header: [0; 16],
            data,
            status: [0xff],
            flush,
            sector,
            since: embassy_time::Instant::now(),
        });
        req.header[..4].copy_from_slice(&kind.to_le_bytes());
        req.header[8..].copy_from_slice(&sector.to_le_bytes());
        let queue = &mut self.queue;
        // SAFETY: the buffers live in the box kept in `inflight` (heap
        // memory that does not move) until `reap` pops this token.
        let token =
            with_buffers(&mut req, |i, o| unsafe { queue.add(i, o) }).map_err(|_| DiskError::Io)?;
        req.token = token;
        self.inflight.push(req);
        if self.queue.should_notify() {
            self.transport.notify(REQUEST_QUEUE);
        }
        Ok(())
    }

    /// Queues a write: merged with the pending one if it continues it,
    /// else the pending one is submitted first.
    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), DiskError> {
        if let Some((start, buf)) = &mut self.pending {
            let end = *start + (buf.len() / SECTOR_BYTES) as u64;
            if end == sector && buf.len() + data.len() <= MAX_MERGED_WRITE_BYTES {
                buf.extend_from_slice(data);
                return Ok(());
            }
        }
        self.submit_pending()?;
        self.pending = Some((sector, data.to_vec()));
        Ok(())
    }

    /// Submits the pending writes, if any.
    fn submit_pending(&mut self) -> Result<(), DiskError> {
        match self.pending.take() {
            Some((sector, data)) => self.submit(T_OUT, sector, data),
            None => Ok(()),
        }
    }

    /// Reads synchronously (after whatever was pending or in flight).
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.submit_pending()?;
        self.settle()?;
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&T_IN.to_le_bytes());
        header[8..].copy_from_slice(&sector.to_le_bytes());
        let mut status = [0xffu8; 1];
        let inputs: [&[u8]; 1] = [&header];
        let mut outputs: [&mut [u8]; 2] = [buf, &mut status];
        let queue = &mut self.queue;
        // SAFETY: the buffers outlive the request: we wait for it here.
        let token = unsafe { queue.add(&inputs, &mut outputs) }.map_err(|_| DiskError::Io)?;
        if queue.should_notify() {
            self.transport.notify(REQUEST_QUEUE);
        }
        sleep_until(|| queue.can_pop());
        // SAFETY: the same buffers as given to `add`.
        let used = unsafe { queue.pop_used(token, &inputs, &mut outputs) };
        match (used, status[0]) {
            (Ok(_), S_OK) => Ok(()),
            _ => {
                self.failed = true;
                Err(DiskError::Io)
            }
        }
    }
}

/// A virtio-blk disk. Every request waits for the one before it, so the
/// device sees them in the order they are made, as with a synchronous
/// disk; but a write or flush returns once submitted, and the caller that
/// must know it is done — the Raft task before it acknowledges a batch —
/// awaits [`DiskWaiter::idle`], receiving datagrams and ticking meanwhile.
/// Reads wait for whatever is in flight, then for themselves.
pub struct Disk {
    dev: &'static RefCell<Device>,
    sectors: u64,
    /// The device carries out flushes (else writes are write-through).
    flush: bool,
}

/// Lets the Raft task wait for the disk while the [`Disk`] itself belongs
/// to the log.
#[derive(Clone, Copy)]
pub struct DiskWaiter {
    dev: &'static RefCell<Device>,
}

impl DiskWaiter {
    /// Completes when nothing is in flight: `Err` if a request failed (its
    /// batch must not be acknowledged). Never, if not `wanted` (the Raft
    /// task has nothing on the disk to acknowledge).
    pub async fn idle(&self, wanted: bool) -> Result<(), DiskError> {
        core::future::poll_fn(|cx| {
            if !wanted {
                return Poll::Pending;
            }
            WAKER.register(cx.waker());
            let mut dev = self.dev.borrow_mut();
            if let Err(e) = dev.submit_pending() {
                return Poll::Ready(Err(e));
            }
            if !dev.reap() {
                return Poll::Pending;
            }
            Poll::Ready(if dev.failed {
                Err(DiskError::Io)
            } else {
                Ok(())
            })
        })
        .await
    }
}

static DEVICE: StaticCell<RefCell<Device>> = StaticCell::new();

impl Disk {
    /// Initializes the device (virtio 1.x §3.1.1). Its completion
    /// interrupt is routed by `irq::enable_blk`. Called once.
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
        let dev = DEVICE.try_init(RefCell::new(Device {
            transport,
            queue,
            inflight: Vec::with_capacity(MAX_WRITES_IN_FLIGHT),
            pending: None,
            failed: false,
        }));
        let dev = dev.ok_or(DiskError::Io)?;
        Ok(Disk {
            dev,
            sectors: (u64::from(hi) << 32) | u64::from(lo),
            flush: features & F_FLUSH != 0,
        })
    }

    /// The handle the Raft task waits with.
    pub fn waiter(&self) -> DiskWaiter {
        DiskWaiter { dev: self.dev }
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
        self.dev.borrow_mut().read(sector, buf)
    }

    /// Writes whole sectors starting at `sector` (queued — merged with the
    /// previous write when it continues it — or submitted; not yet durable:
    /// see [`Disk::flush`]).
    pub fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), DiskError> {
        self.check(sector, buf.len())?;
        self.dev.borrow_mut().write(sector, buf)
    }

    /// Makes every completed write durable (virtio-blk FLUSH; QEMU
    /// fdatasyncs the image file), once it completes: submitted after the
    /// writes before it completed (a flush covers only those). A device
    /// that does not offer flushes must be write-through (see the README).
    pub fn flush(&mut self) -> Result<(), DiskError> {
        if !self.flush {
            return Ok(());
        }
        let mut dev = self.dev.borrow_mut();
        dev.submit_pending()?;
        dev.submit(T_FLUSH, 0, Vec::new())
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
