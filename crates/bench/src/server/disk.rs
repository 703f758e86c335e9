//! The machine's ceilings: fdatasync of 4 KiB appends on the data
//! directory's file system, and the loopback TCP round trip.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes per append.
pub const APPEND_BYTES: usize = 4096;
/// Upper bound on appends in one measurement (on top of the duration).
pub const MAX_APPENDS: usize = 200_000;
/// Round trips measured on loopback.
pub const RTT_SAMPLES: usize = 5_000;

/// Size of the preallocated file of the overwrite probe (like a WAL
/// segment: both servers preallocate theirs).
pub const PREALLOC_BYTES: usize = 64 << 20;

/// Latencies in microseconds, sorted.
pub struct Ceiling {
    /// 4 KiB appends that grow the file, each followed by fdatasync (the
    /// file size changes, so each sync also commits metadata).
    pub fsync_us: Vec<u32>,
    pub fsync_secs: f64,
    /// 4 KiB sequential writes into a preallocated, synced file, each
    /// followed by fdatasync (what a WAL with preallocated segments does).
    pub prealloc_us: Vec<u32>,
    pub prealloc_secs: f64,
    pub rtt_us: Vec<u32>,
}

impl Ceiling {
    pub fn fsyncs_per_sec(&self) -> f64 {
        self.fsync_us.len() as f64 / self.fsync_secs
    }
    pub fn prealloc_per_sec(&self) -> f64 {
        self.prealloc_us.len() as f64 / self.prealloc_secs
    }
}

/// Appends 4 KiB and calls fdatasync, for `dur`, on a new file in `dir`;
/// then the same into a preallocated file, for `dur`.
pub fn measure(dir: &Path, dur: Duration) -> Result<Ceiling, String> {
    let (fsync_us, fsync_secs) = probe(dir, dur, false)?;
    let (prealloc_us, prealloc_secs) = probe(dir, dur, true)?;
    Ok(Ceiling {
        fsync_us,
        fsync_secs,
        prealloc_us,
        prealloc_secs,
        rtt_us: loopback_rtt()?,
    })
}

fn probe(dir: &Path, dur: Duration, prealloc: bool) -> Result<(Vec<u32>, f64), String> {
    let path = dir.join("fsync-probe.dat");
    let mut f = File::create(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
    let block = vec![0xA5u8; APPEND_BYTES];
    if prealloc {
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..PREALLOC_BYTES / zeros.len() {
            f.write_all(&zeros)
                .map_err(|e| format!("preallocate: {e}"))?;
        }
        f.sync_all().map_err(|e| format!("fsync: {e}"))?;
        f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    }
    let max = if prealloc {
        MAX_APPENDS.min(PREALLOC_BYTES / APPEND_BYTES)
    } else {
        MAX_APPENDS
    };
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed() < dur && lat.len() < max {
        let t = Instant::now();
        f.write_all(&block).map_err(|e| format!("write: {e}"))?;
        f.sync_data().map_err(|e| format!("fdatasync: {e}"))?;
        lat.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
    }
    let secs = start.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    lat.sort_unstable();
    Ok((lat, secs))
}

/// 1-byte ping-pong over a loopback TCP connection (TCP_NODELAY), with the
/// echo on another thread: the cheapest request/response the kernel allows.
fn loopback_rtt() -> Result<Vec<u32>, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = l.accept()?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 1];
        for _ in 0..RTT_SAMPLES {
            s.read_exact(&mut b)?;
            s.write_all(&b)?;
        }
        Ok(())
    });
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut lat = Vec::with_capacity(RTT_SAMPLES);
    let mut b = [7u8; 1];
    for _ in 0..RTT_SAMPLES {
        let t = Instant::now();
        s.write_all(&b).map_err(|e| e.to_string())?;
        s.read_exact(&mut b).map_err(|e| e.to_string())?;
        lat.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
    }
    echo.join()
        .map_err(|_| "echo thread panicked".to_string())?
        .map_err(|e| e.to_string())?;
    lat.sort_unstable();
    Ok(lat)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_something() {
        let dir = std::env::temp_dir();
        let c = measure(&dir, Duration::from_millis(50)).unwrap();
        assert!(!c.fsync_us.is_empty() && !c.prealloc_us.is_empty());
        assert_eq!(c.rtt_us.len(), RTT_SAMPLES);
    }
}
