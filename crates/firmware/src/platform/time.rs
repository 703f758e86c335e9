//! embassy-time driver on the CLINT of QEMU `virt`: `mtime` runs at 10 MHz,
//! matching the `tick-hz-10_000_000` feature; `mtimecmp` of hart 0 raises
//! the machine timer interrupt.
#![allow(unsafe_code)]

use core::cell::RefCell;
use core::task::Waker;

use critical_section::Mutex;
use embassy_time_driver::Driver;
use embassy_time_queue_utils::Queue;

const CLINT_BASE: usize = 0x0200_0000;
const MTIMECMP_HART0: usize = CLINT_BASE + 0x4000;
const MTIME: usize = CLINT_BASE + 0xBFF8;

/// Reads the 64-bit `mtime` on a 32-bit hart (high, low, high until stable).
fn mtime() -> u64 {
    loop {
        // SAFETY: fixed CLINT registers on this board.
        let (hi, lo, hi2) = unsafe {
            (
                core::ptr::read_volatile((MTIME + 4) as *const u32),
                core::ptr::read_volatile(MTIME as *const u32),
                core::ptr::read_volatile((MTIME + 4) as *const u32),
            )
        };
        if hi == hi2 {
            return (u64::from(hi) << 32) | u64::from(lo);
        }
    }
}

fn set_mtimecmp(at: u64) {
    // Low word to MAX first so the compare value never passes through a
    // smaller value than either the old or the new one.
    // SAFETY: fixed CLINT registers on this board.
    unsafe {
        core::ptr::write_volatile(MTIMECMP_HART0 as *mut u32, u32::MAX);
        core::ptr::write_volatile((MTIMECMP_HART0 + 4) as *mut u32, (at >> 32) as u32);
        core::ptr::write_volatile(MTIMECMP_HART0 as *mut u32, at as u32);
    }
}

struct ClintDriver {
    queue: Mutex<RefCell<Queue>>,
}

impl Driver for ClintDriver {
    fn now(&self) -> u64 {
        mtime()
    }

    fn schedule_wake(&self, at: u64, waker: &Waker) {
        critical_section::with(|cs| {
            let mut q = self.queue.borrow(cs).borrow_mut();
            if q.schedule_wake(at, waker) {
                // The timer interrupt is level-triggered: a deadline already
                // in the past fires at once.
                set_mtimecmp(q.next_expiration(mtime()));
            }
        })
    }
}

embassy_time_driver::time_driver_impl!(static DRIVER: ClintDriver = ClintDriver {
    queue: Mutex::new(RefCell::new(Queue::new())),
});

/// Disarms the compare register and enables the timer interrupt.
pub fn init() {
    set_mtimecmp(u64::MAX);
    // SAFETY: enabling an interrupt whose handler (`on_timer_interrupt`) is installed.
    unsafe { riscv::register::mie::set_mtimer() };
}

/// The machine timer interrupt: wake expired timers, re-arm for the next.
pub fn on_timer_interrupt() {
    critical_section::with(|cs| {
        let mut q = DRIVER.queue.borrow(cs).borrow_mut();
        set_mtimecmp(q.next_expiration(mtime()));
    })
}
