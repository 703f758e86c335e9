//! The board: QEMU `virt` (riscv32, M-mode, `-bios none`). Every `unsafe`
//! of the firmware lives below this module.

pub mod console;
pub mod disk;
pub mod heap;
pub mod irq;
pub mod net;
pub mod power;
pub mod time;
pub mod virtio;
