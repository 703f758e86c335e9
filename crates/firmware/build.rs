//! Puts the board's linker memory map on the linker search path as
//! `memory.x`: `memory-virt.x` for QEMU `virt` (riscv32), `memory-mps2.x` for
//! QEMU `mps2-an386` (arm; cortex-m-rt's `link.x` includes it).
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let map: &[u8] = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("arm") => include_bytes!("memory-mps2.x"),
        _ => include_bytes!("memory-virt.x"),
    };
    fs::write(out.join("memory.x"), map).expect("write memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory-virt.x");
    println!("cargo:rerun-if-changed=memory-mps2.x");
}
