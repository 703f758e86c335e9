//! Stopping the board for good when the node has nothing left to do (it
//! was removed from the cluster): semihosting `SYS_EXIT` with
//! `ADP_Stopped_ApplicationExit`, which ends QEMU with exit status 0, so
//! the host sees a clean stop, not a crash.

/// Powers the board off (the emulator exits with status 0).
pub fn off() -> ! {
    super::semihost::exit();
    // Not reached under QEMU; elsewhere, stop without power-off.
    crate::halt()
}
