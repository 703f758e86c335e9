//! Interrupts of the board: the NVIC lines this firmware uses, and one
//! handler for all of them (cortex-m-rt sends every device interrupt
//! without a handler of its own to `DefaultHandler` with its number).
#![allow(unsafe_code)]

use cortex_m::interrupt::InterruptNumber;
use cortex_m::peripheral::NVIC;

/// The device interrupt lines used (AN385/AN386 numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Irq {
    /// CMSDK timer 0: the time driver's alarm.
    Timer0 = 8,
    /// CMSDK timer 1: the time driver's free-running counter wrapped.
    Timer1 = 9,
    /// The LAN9118 Ethernet controller.
    Ethernet = 13,
}

// SAFETY: the numbers are the board's device interrupt lines, all below
// the 32 lines QEMU's AN385/AN386 NVIC has.
unsafe impl InterruptNumber for Irq {
    fn number(self) -> u16 {
        self as u16
    }
}

/// Unmasks `irq` in the NVIC (its handler is `DefaultHandler` below).
pub fn enable(irq: Irq) {
    NVIC::unpend(irq);
    // SAFETY: every line unmasked here has its handler below; none is
    // used as a critical-section boundary (`critical-section` masks all).
    unsafe { NVIC::unmask(irq) }
}

/// Makes `irq` pending, so its handler runs as soon as interrupts allow.
pub fn pend(irq: Irq) {
    NVIC::pend(irq);
}

#[cortex_m_rt::exception]
unsafe fn DefaultHandler(irqn: i16) {
    match irqn {
        n if n == Irq::Timer0 as i16 => super::time::on_alarm(),
        n if n == Irq::Timer1 as i16 => super::time::on_wrap(),
        n if n == Irq::Ethernet as i16 => super::net::on_interrupt(),
        _ => {}
    }
}
