//! embassy-time driver on two CMSDK APB timers of the MPS2 board, both
//! clocked by the 25 MHz peripheral clock: timer 1 counts down from
//! `u32::MAX` for ever (a 64-bit time is its wraps — counted by its
//! interrupt — and its count), timer 0 is a one-shot alarm for the next
//! expiry of embassy-time's queue. The `tick-hz-10_000_000` ticks are
//! converted from clock cycles by the exact ratio 2/5.
#![allow(unsafe_code)]

use core::cell::{Cell, RefCell};
use core::task::Waker;

use critical_section::Mutex;
use embassy_time_driver::{Driver, TICK_HZ};
use embassy_time_queue_utils::Queue;

use super::irq::{self, Irq};

/// The timers' clock (QEMU's `SYSCLK_FRQ` for MPS2).
const PCLK_HZ: u64 = 25_000_000;
const fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}
/// ticks = cycles × TICKS_PER / CYCLES_PER.
const TICKS_PER: u64 = TICK_HZ / gcd(TICK_HZ, PCLK_HZ);
const CYCLES_PER: u64 = PCLK_HZ / gcd(TICK_HZ, PCLK_HZ);

/// Timer 0 (the alarm) and timer 1 (the counter).
const TIMER0: usize = 0x4000_0000;
const TIMER1: usize = 0x4000_1000;
/// Register offsets of a CMSDK APB timer.
const CTRL: usize = 0x0;
const VALUE: usize = 0x4;
const RELOAD: usize = 0x8;
const INTSTATUS: usize = 0xc;
/// CTRL bits: count, raise the interrupt at zero.
const CTRL_EN: u32 = 1;
const CTRL_IRQ_EN: u32 = 1 << 3;
/// Longest alarm in cycles (a later expiry is re-armed when this fires).
const MAX_ALARM_CYCLES: u64 = u32::MAX as u64 - 1;

fn read(timer: usize, offset: usize) -> u32 {
    // SAFETY: fixed CMSDK timer registers on this board.
    unsafe { core::ptr::read_volatile((timer + offset) as *const u32) }
}

fn write(timer: usize, offset: usize, value: u32) {
    // SAFETY: fixed CMSDK timer registers on this board.
    unsafe { core::ptr::write_volatile((timer + offset) as *mut u32, value) }
}

/// Wraps of timer 1 so far.
static WRAPS: Mutex<Cell<u32>> = Mutex::new(Cell::new(0));

/// Cycles since boot. Timer 1 raises its interrupt when its count reaches
/// zero and reloads `u32::MAX` one cycle later; a wrap whose interrupt has
/// not run yet is counted here once the reload happened.
fn cycles() -> u64 {
    critical_section::with(|cs| {
        let mut v = read(TIMER1, VALUE);
        let mut wraps = WRAPS.borrow(cs).get();
        if read(TIMER1, INTSTATUS) & 1 != 0 {
            v = read(TIMER1, VALUE);
            if v != 0 {
                wraps += 1;
            }
        }
        (u64::from(wraps) << 32) | u64::from(u32::MAX - v)
    })
}

/// Arms timer 0 to fire at tick `at` (`u64::MAX`: never); a time already
/// past makes its interrupt pending at once.
fn set_alarm(at: u64) {
    write(TIMER0, CTRL, 0);
    write(TIMER0, INTSTATUS, 1);
    if at == u64::MAX {
        return;
    }
    let now = DRIVER.now();
    if at <= now {
        irq::pend(Irq::Timer0);
        return;
    }
    let wait = ((at - now) * CYCLES_PER).div_ceil(TICKS_PER);
    // Writing RELOAD also loads the count; VALUE then sets this countdown.
    write(TIMER0, RELOAD, u32::MAX);
    write(TIMER0, VALUE, wait.clamp(1, MAX_ALARM_CYCLES) as u32);
    write(TIMER0, CTRL, CTRL_EN | CTRL_IRQ_EN);
}

struct CmsdkDriver {
    queue: Mutex<RefCell<Queue>>,
}

impl Driver for CmsdkDriver {
    fn now(&self) -> u64 {
        cycles() * TICKS_PER / CYCLES_PER
    }

    fn schedule_wake(&self, at: u64, waker: &Waker) {
        critical_section::with(|cs| {
            let mut q = self.queue.borrow(cs).borrow_mut();
            if q.schedule_wake(at, waker) {
                set_alarm(q.next_expiration(self.now()));
            }
        })
    }
}

embassy_time_driver::time_driver_impl!(static DRIVER: CmsdkDriver = CmsdkDriver {
    queue: Mutex::new(RefCell::new(Queue::new())),
});

/// Starts the counter, disarms the alarm, unmasks both interrupts.
pub fn init() {
    write(TIMER0, CTRL, 0);
    write(TIMER1, CTRL, 0);
    write(TIMER1, RELOAD, u32::MAX);
    write(TIMER1, INTSTATUS, 1);
    write(TIMER1, CTRL, CTRL_EN | CTRL_IRQ_EN);
    irq::enable(Irq::Timer0);
    irq::enable(Irq::Timer1);
}

/// Timer 0's interrupt: wake expired timers, re-arm for the next.
pub fn on_alarm() {
    critical_section::with(|cs| {
        let mut q = DRIVER.queue.borrow(cs).borrow_mut();
        set_alarm(q.next_expiration(DRIVER.now()));
    })
}

/// Timer 1's interrupt: one more wrap. Waits (one cycle at most) for the
/// reload that follows zero, so `cycles` never counts this wrap twice.
pub fn on_wrap() {
    critical_section::with(|cs| {
        while read(TIMER1, VALUE) == 0 {}
        write(TIMER1, INTSTATUS, 1);
        let w = WRAPS.borrow(cs);
        w.set(w.get().wrapping_add(1));
    })
}
