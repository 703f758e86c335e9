//! Building the firmware: runs cargo in `crates/firmware` (its own
//! workspace, target and profile) and returns the ELF path; and measuring
//! it: [`section_bytes`] reads a section's size from the ELF's section
//! headers (what `llvm-size -A` reports), checked against
//! [`TEXT_BUDGET_BYTES`] by the tests.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The firmware's target triple (QEMU `virt`, RISC-V).
pub const TARGET: &str = "riscv32imac-unknown-none-elf";
/// The target triple of the Cortex-M4F build (QEMU `mps2-an386`).
pub const ARM_TARGET: &str = "thumbv7em-none-eabihf";
/// The firmware's binary name.
pub const BIN: &str = "metalraft-firmware";
/// The `.text` budget of the firmware (192 KiB of code, for MCUs with 256
/// KiB of flash and room for `.rodata`; see the firmware README).
pub const TEXT_BUDGET_BYTES: u64 = 192 * 1024;

/// The firmware crate's directory (next to this crate in the repository).
pub fn crate_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("firmware")
}

/// Where the release ELF lands.
pub fn elf_path() -> PathBuf {
    target_elf_path(TARGET)
}

/// Where the release ELF of the Cortex-M4F build lands.
pub fn arm_elf_path() -> PathBuf {
    target_elf_path(ARM_TARGET)
}

fn target_elf_path(target: &str) -> PathBuf {
    crate_dir()
        .join("target")
        .join(target)
        .join("release")
        .join(BIN)
}

/// A cargo command run in the firmware's workspace as an independent
/// build: settings of an outer cargo (when this is called from `cargo test`
/// or `cargo run`) must not leak into it.
fn firmware_cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(crate_dir()).args(args);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().to_string();
        let outer = key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_NET_OFFLINE";
        if outer || key.starts_with("RUSTC") || key == "RUSTFLAGS" || key == "RUSTDOCFLAGS" {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// Builds the release firmware (a no-op when it is up to date).
pub fn build() -> io::Result<PathBuf> {
    let dir = crate_dir();
    let status = firmware_cargo(&["build", "--release", "--locked"]).status()?;
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

/// Builds the release firmware for QEMU `mps2-an386` (Cortex-M4F).
pub fn build_arm() -> io::Result<PathBuf> {
    let status =
        firmware_cargo(&["build", "--release", "--locked", "--target", ARM_TARGET]).status()?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "Cortex-M firmware build failed ({status}) in {}",
            crate_dir().display()
        )));
    }
    let elf = arm_elf_path();
    if !elf.is_file() {
        return Err(io::Error::other(format!(
            "firmware build produced no {}",
            elf.display()
        )));
    }
    Ok(elf)
}

/// The crates of the firmware's workspace that build and test on the host:
/// the wire formats and the storage with the order in which the Raft task
/// carries out a replica output (whose `held_messages` test shows no message
/// leaves before its flush).
pub const HOST_TESTED: [&str; 2] = ["metalraft-fw-proto", "metalraft-fw-store"];

/// Runs the tests of [`HOST_TESTED`] for the host (the firmware workspace
/// builds for RISC-V by default, so they need an explicit host target).
pub fn host_tests() -> io::Result<()> {
    let out = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
        .arg("-vV")
        .output()?;
    let info = String::from_utf8_lossy(&out.stdout);
    let host = info
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .ok_or_else(|| io::Error::other("`rustc -vV` names no host"))?
        .to_string();
    let mut args = vec!["test", "--locked", "--target", host.as_str()];
    for c in HOST_TESTED {
        args.extend(["-p", c]);
    }
    let status = firmware_cargo(&args).status()?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "firmware host tests failed ({status}) in {}",
            crate_dir().display()
        )));
    }
    Ok(())
}

/// Reads a little-endian integer of `N` bytes at `at`.
fn le<const N: usize>(b: &[u8], at: usize) -> io::Result<u64> {
    let bytes = b
        .get(at..at + N)
        .ok_or_else(|| io::Error::other("ELF file too short"))?;
    Ok(bytes
        .iter()
        .rev()
        .fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
}

/// The size in bytes of section `name` of a 32-bit little-endian ELF file
/// (the firmware's format), from its section headers.
pub fn section_bytes(elf: &Path, name: &str) -> io::Result<u64> {
    let b = std::fs::read(elf)?;
    let bad = |what: &str| io::Error::other(format!("{}: {what}", elf.display()));
    if b.get(..4) != Some(b"\x7fELF") || b.get(4) != Some(&1) || b.get(5) != Some(&1) {
        return Err(bad("not a 32-bit little-endian ELF file"));
    }
    let shoff = le::<4>(&b, 0x20)? as usize;
    let shentsize = le::<2>(&b, 0x2e)? as usize;
    let shnum = le::<2>(&b, 0x30)? as usize;
    let shstrndx = le::<2>(&b, 0x32)? as usize;
    // Section header fields: name offset at 0, file offset at 0x10, size at 0x14.
    let header = |i: usize| shoff + i * shentsize;
    let strtab = le::<4>(&b, header(shstrndx) + 0x10)? as usize;
    for i in 0..shnum {
        let name_at = strtab + le::<4>(&b, header(i))? as usize;
        let end = b[name_at.min(b.len())..]
            .iter()
            .position(|&c| c == 0)
            .ok_or_else(|| bad("unterminated section name"))?;
        if &b[name_at..name_at + end] == name.as_bytes() {
            return le::<4>(&b, header(i) + 0x14);
        }
    }
    Err(bad(&format!("no section {name}")))
}
