//! The boards. Every `unsafe` of the firmware lives below this module. One
//! board is compiled in, chosen by the target architecture:
//!
//! - `riscv32` (the files in this directory): QEMU `virt` (M-mode, `-bios none`),
//!   virtio-net and virtio-blk;
//! - `arm` (files in `mps2/`): QEMU `mps2-an386` (Arm MPS2 with the AN386
//!   FPGA image, a Cortex-M4F at 25 MHz), its on-board LAN9118 Ethernet
//!   controller, and the node's disk image as a host file through ARM
//!   semihosting (the board has no block device). Addresses and interrupt
//!   lines are those QEMU's `hw/arm/mps2.c` gives the AN385/AN386 images:
//!   CMSDK UART0 at `0x4000_4000`, CMSDK timers 0 and 1 at
//!   `0x4000_0000`/`0x4000_1000` (IRQ 8, 9), the LAN9118 at `0x4020_0000`
//!   (IRQ 13).
//!
//! Each board offers the same modules to the rest of the crate, under the
//! same paths: `board` (the network driver type; on mps2 also the bring-up,
//! which `main` does itself for `virt`), `console` (`log_line`), `disk` (`Disk`, `DiskWaiter`,
//! `DiskError`, `stats`), `power` (`off`) and an `embassy-time` driver in
//! `time`; `heap` and `ram` (the static image and the stack's high-water
//! mark, measured) are shared. (The board's files are declared here with
//! `#[path]` under these names, and the RISC-V ones stay where they were,
//! rather than in a `virt`/`mps2` module: that keeps the RISC-V image's
//! symbols, code layout and panic locations as they were.)

pub mod heap;
pub mod ram;

#[cfg(target_arch = "riscv32")]
#[path = "board.rs"]
pub mod board;
#[cfg(target_arch = "riscv32")]
#[path = "console.rs"]
pub mod console;
#[cfg(target_arch = "riscv32")]
#[path = "disk.rs"]
pub mod disk;
#[cfg(target_arch = "riscv32")]
#[path = "irq.rs"]
pub mod irq;
#[cfg(target_arch = "riscv32")]
#[path = "net.rs"]
pub mod net;
#[cfg(target_arch = "riscv32")]
#[path = "power.rs"]
pub mod power;
#[cfg(target_arch = "riscv32")]
#[path = "time.rs"]
pub mod time;
#[cfg(target_arch = "riscv32")]
#[path = "virtio.rs"]
pub mod virtio;

#[cfg(target_arch = "arm")]
#[path = "mps2/board.rs"]
pub mod board;
#[cfg(target_arch = "arm")]
#[path = "mps2/console.rs"]
pub mod console;
#[cfg(target_arch = "arm")]
#[path = "mps2/disk.rs"]
pub mod disk;
#[cfg(target_arch = "arm")]
#[path = "mps2/irq.rs"]
pub mod irq;
#[cfg(target_arch = "arm")]
#[path = "mps2/net.rs"]
pub mod net;
#[cfg(target_arch = "arm")]
#[path = "mps2/power.rs"]
pub mod power;
#[cfg(target_arch = "arm")]
#[path = "mps2/semihost.rs"]
mod semihost;
#[cfg(target_arch = "arm")]
#[path = "mps2/time.rs"]
pub mod time;
