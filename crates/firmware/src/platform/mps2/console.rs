//! Logging to CMSDK APB UART0 of the MPS2 board (polled, no interrupts;
//! QEMU's `-serial` connects it). Use the crate's `info!`/`warn!` macros;
//! each line carries the uptime.
#![allow(unsafe_code)]

use core::fmt::{self, Write};

/// MMIO base of UART0.
const UART0_BASE: usize = 0x4000_4000;
/// Data register (write: transmit a byte).
const DATA: usize = 0x00;
/// State register; bit 0: transmit buffer full.
const STATE: usize = 0x04;
const STATE_TX_FULL: u32 = 1;
/// Control register; bit 0: transmitter enabled.
const CTRL: usize = 0x08;
const CTRL_TX_EN: u32 = 1;
/// Baud rate divider register.
const BAUDDIV: usize = 0x10;
/// Smallest divider the UART accepts (QEMU's line speed is not emulated).
const MIN_BAUDDIV: u32 = 16;

fn reg(offset: usize) -> *mut u32 {
    (UART0_BASE + offset) as *mut u32
}

struct Uart;

impl Uart {
    /// Enables the transmitter if it is not yet (the first line after reset).
    fn enable() {
        // SAFETY: UART0 is a device register block at a fixed address on
        // this board; 32-bit accesses are its documented interface.
        unsafe {
            if core::ptr::read_volatile(reg(CTRL)) & CTRL_TX_EN == 0 {
                core::ptr::write_volatile(reg(BAUDDIV), MIN_BAUDDIV);
                core::ptr::write_volatile(reg(CTRL), CTRL_TX_EN);
            }
        }
    }
}

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            // SAFETY: as in `enable`.
            unsafe {
                while core::ptr::read_volatile(reg(STATE)) & STATE_TX_FULL != 0 {}
                core::ptr::write_volatile(reg(DATA), u32::from(b));
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
        Uart::enable();
        let _ = write!(Uart, "[{ms:>8}ms] {level} ");
        let _ = Uart.write_fmt(args);
        let _ = Uart.write_str("\n");
    });
}
