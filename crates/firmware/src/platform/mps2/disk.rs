//! The node's disk on a board without a block device: the same disk
//! image the RISC-V nodes get (config block in sector 0, the log after
//! it), kept in a host file that QEMU reaches through ARM semihosting. The
//! file's path is the semihosting command line after [`CMDLINE_PREFIX`]
//! (`-semihosting-config enable=on,target=native,arg=disk=PATH`; without
//! an `arg`, QEMU passes the kernel's file name, which must not be taken
//! for a disk).
//!
//! **Durability.** With `target=native`, QEMU carries out every `SYS_WRITE`
//! as a `write(2)` on its own file descriptor before the guest resumes —
//! there is no buffer in QEMU or the guest — so once [`Disk::write`]
//! returns, the bytes are in the host kernel's page cache, and a `kill -9`
//! of the emulator (or any crash of the guest) cannot lose them. Semihosting
//! has no `fsync`: [`Disk::flush`] has nothing left to push, and the data
//! is only as safe as the host kernel's write-back — a *host* power cut can
//! lose writes this node acknowledged. That is the semantics of a
//! write-through cache in front of a volatile store: enough for the
//! emulated cluster (what its tests kill is the emulator), not for a real
//! board, whose flash or SD card driver must make `flush` durable.
//!
//! Every operation is synchronous (the host call completes before the
//! guest resumes), so [`DiskWaiter`] never waits.

use core::cell::Cell;

use critical_section::Mutex;

use super::semihost;

pub use metalraft_fw_store::DiskError;

/// Bytes per sector.
pub const SECTOR_BYTES: usize = 512;
/// Longest semihosting command line accepted (plus its NUL).
const MAX_CMDLINE_BYTES: usize = 256;
/// What the command line starts with: the rest is the storage file's path.
pub const CMDLINE_PREFIX: &[u8] = b"disk=";

/// Why the storage file cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenError {
    /// QEMU passed no `disk=PATH` command line (semihosting `arg=`
    /// missing, or too long).
    NoPath,
    /// The host could not open the file (missing, or not writable).
    Open,
    /// The host could not tell its length, or it is not whole sectors.
    Length,
}

impl core::fmt::Display for OpenError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            OpenError::NoPath => {
                "no storage file: start QEMU with -semihosting-config enable=on,target=native,arg=disk=PATH"
            }
            OpenError::Open => "the host cannot open the storage file for reading and writing",
            OpenError::Length => "the storage file's length is unknown or not whole sectors",
        })
    }
}

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
/// A request failed: the batch it belonged to must not be acknowledged.
static FAILED: Mutex<Cell<bool>> = Mutex::new(Cell::new(false));

/// The disk's counters so far.
pub fn stats() -> DiskStats {
    critical_section::with(|cs| STATS.borrow(cs).get())
}

fn fail(e: DiskError) -> DiskError {
    critical_section::with(|cs| FAILED.borrow(cs).set(true));
    e
}

/// Lets the Raft task wait for the disk (never long here: every request
/// has completed when it returns).
#[derive(Clone, Copy)]
pub struct DiskWaiter;

impl DiskWaiter {
    /// `Err` if a request failed (its batch must not be acknowledged).
    /// Never, if not `wanted` (nothing to acknowledge).
    pub async fn idle(&self, wanted: bool) -> Result<(), DiskError> {
        if !wanted {
            core::future::pending::<()>().await;
        }
        match critical_section::with(|cs| FAILED.borrow(cs).get()) {
            true => Err(DiskError::Io),
            false => Ok(()),
        }
    }
}

/// The storage file, as 512-byte sectors.
pub struct Disk {
    handle: usize,
    sectors: u64,
}

impl Disk {
    /// Opens the file named by the semihosting command line.
    pub fn open() -> Result<Disk, OpenError> {
        let mut line = [0u8; MAX_CMDLINE_BYTES + 1];
        let len = semihost::cmdline(&mut line[..MAX_CMDLINE_BYTES]).ok_or(OpenError::NoPath)?;
        if len <= CMDLINE_PREFIX.len() || !line.starts_with(CMDLINE_PREFIX) {
            return Err(OpenError::NoPath);
        }
        line[len] = 0;
        let handle = semihost::open(&line[CMDLINE_PREFIX.len()..=len]).ok_or(OpenError::Open)?;
        let bytes = semihost::flen(handle).ok_or(OpenError::Length)?;
        if bytes == 0 || bytes % SECTOR_BYTES != 0 {
            return Err(OpenError::Length);
        }
        Ok(Disk {
            handle,
            sectors: (bytes / SECTOR_BYTES) as u64,
        })
    }

    /// The handle the Raft task waits with.
    pub fn waiter(&self) -> DiskWaiter {
        DiskWaiter
    }

    /// Capacity in sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Seeks to `sector` after checking that `len` bytes from there are
    /// whole sectors inside the file.
    fn seek(&self, sector: u64, len: usize) -> Result<(), DiskError> {
        if len == 0 || len % SECTOR_BYTES != 0 {
            return Err(DiskError::Misaligned);
        }
        let end = sector
            .checked_add((len / SECTOR_BYTES) as u64)
            .ok_or(DiskError::OutOfRange)?;
        if end > self.sectors {
            return Err(DiskError::OutOfRange);
        }
        // The file length fit a `usize` (`flen`), so every offset in it does.
        let pos =
            usize::try_from(sector * SECTOR_BYTES as u64).map_err(|_| DiskError::OutOfRange)?;
        match semihost::seek(self.handle, pos) {
            true => Ok(()),
            false => Err(fail(DiskError::Io)),
        }
    }

    /// Reads whole sectors starting at `sector` into `buf`.
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.seek(sector, buf.len())?;
        match semihost::read(self.handle, buf) {
            true => Ok(()),
            false => Err(fail(DiskError::Io)),
        }
    }

    /// Writes whole sectors starting at `sector`: in the host kernel when
    /// this returns (see the module docs for what that survives).
    pub fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), DiskError> {
        let start = embassy_time::Instant::now();
        self.seek(sector, buf.len())?;
        if !semihost::write(self.handle, buf) {
            return Err(fail(DiskError::Io));
        }
        let us = start.elapsed().as_micros();
        critical_section::with(|cs| {
            let s = STATS.borrow(cs);
            let mut v = s.get();
            v.writes += 1;
            v.write_us += us;
            s.set(v);
        });
        Ok(())
    }

    /// Every completed write is already with the host (no semihosting call
    /// can do more; see the module docs); counted for `status`.
    pub fn flush(&mut self) -> Result<(), DiskError> {
        critical_section::with(|cs| {
            let s = STATS.borrow(cs);
            let mut v = s.get();
            v.flushes += 1;
            s.set(v);
        });
        Ok(())
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
