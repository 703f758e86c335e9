//! `powercut BACKING MOUNTPOINT [SEED]`: mounts a power-cut file system (see
//! the crate README) and reads commands from standard input, one a line:
//! `cut` cuts the power (kill the processes using the mount first), `quit`
//! (or end of input) unmounts.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (backing, mountpoint, seed) = match args.as_slice() {
        [b, m] => (b, m, None),
        [b, m, s] => (b, m, Some(s)),
        _ => {
            eprintln!("usage: powercut BACKING MOUNTPOINT [SEED]");
            return ExitCode::from(2);
        }
    };
    let seed = match seed.map(|s| s.parse::<u64>()) {
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            eprintln!("powercut: SEED must be an unsigned integer: {e}");
            return ExitCode::from(2);
        }
    };
    let mount = match powercut::mount(&PathBuf::from(backing), &PathBuf::from(mountpoint), seed) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("powercut: mounting {mountpoint} failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "powercut: mounted {mountpoint} (backing {backing}, seed {seed}); commands: cut, quit"
    );
    for line in std::io::stdin().lock().lines() {
        match line.as_deref().map(str::trim) {
            Ok("cut") => eprintln!("powercut: cut: {:?}", mount.handle.cut()),
            Ok("quit") | Err(_) => break,
            Ok("") => {}
            Ok(other) => eprintln!("powercut: unknown command {other:?} (cut, quit)"),
        }
    }
    drop(mount);
    ExitCode::SUCCESS
}
