//! Logging to the NS16550A UART of QEMU `virt` (polled, no interrupts).
//! Use the crate's `info!`/`warn!` macros; each line carries the uptime.
#![allow(unsafe_code)]

use core::fmt::{self, Write};

/// MMIO base of UART0 on QEMU `virt`.
const UART0_BASE: usize = 0x1000_0000;
/// Transmit holding register offset.
const THR: usize = 0;
/// Line status register offset.
const LSR: usize = 5;
/// LSR bit: transmit holding register empty.
const LSR_THR_EMPTY: u8 = 0x20;

struct Uart;

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            // SAFETY: UART0 is a device register block at a fixed address on
            // this board; byte accesses are its documented interface.
            unsafe {
                while core::ptr::read_volatile((UART0_BASE + LSR) as *const u8) & LSR_THR_EMPTY == 0
                {
                }
                core::ptr::write_volatile((UART0_BASE + THR) as *mut u8, b);
            }
        }
        Ok(())
    }
}

/// Writes one log line: `[uptime_ms] LEVEL message`.
pub fn log_line(level: &str, args: fmt::Arguments<'_>) {
    let ms = embassy_time::Instant::now().as_millis();
    // One critical section per line so interrupt-time output cannot interleave.
    critical_section::with(|_| {
        let _ = write!(Uart, "[{ms:>8}ms] {level} ");
        let _ = Uart.write_fmt(args);
        let _ = Uart.write_str("\n");
    });
}
