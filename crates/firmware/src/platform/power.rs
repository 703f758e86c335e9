//! Stopping the board for good when the node has nothing left to do (it
//! was removed from the cluster): QEMU `virt`'s SiFive test finisher, a
//! register at [`FINISHER_BASE`] that ends the emulator when written; with
//! [`FINISHER_PASS`] QEMU exits with status 0, so the host sees a clean
//! stop, not a crash. On a board without such a device this would be a
//! low-power halt.
#![allow(unsafe_code)]

/// MMIO address of the test finisher on QEMU `virt`.
const FINISHER_BASE: usize = 0x10_0000;
/// Finisher command: power off, exit status 0.
const FINISHER_PASS: u32 = 0x5555;

/// Powers the board off (the emulator exits with status 0).
pub fn off() -> ! {
    // SAFETY: the finisher is a device register at a fixed address on this
    // board; a 32-bit write of a command is its documented interface.
    unsafe { core::ptr::write_volatile(FINISHER_BASE as *mut u32, FINISHER_PASS) };
    // Not reached under QEMU; elsewhere, stop without power-off.
    crate::halt()
}
