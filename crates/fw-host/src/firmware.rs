//! Building the firmware: runs cargo in `crates/firmware` (its own
//! workspace, target and profile) and returns the ELF path.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The firmware's target triple.
pub const TARGET: &str = "riscv32imac-unknown-none-elf";
/// The firmware's binary name.
pub const BIN: &str = "metalraft-firmware";

/// The firmware crate's directory (next to this crate in the repository).
pub fn crate_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("firmware")
}

/// Where the release ELF lands.
pub fn elf_path() -> PathBuf {
    crate_dir()
        .join("target")
        .join(TARGET)
        .join("release")
        .join(BIN)
}

/// Builds the release firmware (a no-op when it is up to date).
pub fn build() -> io::Result<PathBuf> {
    let dir = crate_dir();
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(&dir)
        .args(["build", "--release", "--locked"]);
    // Run as an independent build: settings of an outer cargo (when this is
    // called from `cargo test` or `cargo run`) must not leak into it.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().to_string();
        let outer = key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_NET_OFFLINE";
        if outer || key.starts_with("RUSTC") || key == "RUSTFLAGS" || key == "RUSTDOCFLAGS" {
            cmd.env_remove(&key);
        }
    }
    let status = cmd.status()?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "firmware build failed ({status}) in {}",
            dir.display()
        )));
    }
    let elf = elf_path();
    if !elf.is_file() {
        return Err(io::Error::other(format!(
            "firmware build produced no {}",
            elf.display()
        )));
    }
    Ok(elf)
}
