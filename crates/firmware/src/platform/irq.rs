//! Interrupts: the PLIC routes virtio-net's and virtio-blk's lines to hart
//! 0 (M-mode); the handlers acknowledge the device and wake the network
//! driver or the task waiting for the disk.
#![allow(unsafe_code)]

use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use riscv::interrupt::machine::Interrupt;

const PLIC_BASE: usize = 0x0c00_0000;
const PLIC_ENABLE_CTX0: usize = PLIC_BASE + 0x2000;
const PLIC_THRESHOLD_CTX0: usize = PLIC_BASE + 0x20_0000;
const PLIC_CLAIM_CTX0: usize = PLIC_BASE + 0x20_0004;
/// virtio-mmio InterruptStatus register offset.
const VIRTIO_INTERRUPT_STATUS: usize = 0x60;
/// virtio-mmio InterruptACK register offset.
const VIRTIO_INTERRUPT_ACK: usize = 0x64;

/// PLIC source and MMIO base of the network device (0: none).
static NET_IRQ: AtomicU32 = AtomicU32::new(0);
static NET_MMIO: AtomicUsize = AtomicUsize::new(0);

/// PLIC source and MMIO base of the block device (0: none).
static BLK_IRQ: AtomicU32 = AtomicU32::new(0);
static BLK_MMIO: AtomicUsize = AtomicUsize::new(0);

/// Routes PLIC source `irq` (the network device at `mmio_base`) to hart 0.
pub fn enable_net(irq: u32, mmio_base: usize) {
    NET_MMIO.store(mmio_base, Ordering::Relaxed);
    NET_IRQ.store(irq, Ordering::Relaxed);
    route(irq);
}

/// Routes PLIC source `irq` (the block device at `mmio_base`) to hart 0.
pub fn enable_blk(irq: u32, mmio_base: usize) {
    BLK_MMIO.store(mmio_base, Ordering::Relaxed);
    BLK_IRQ.store(irq, Ordering::Relaxed);
    route(irq);
}

fn route(irq: u32) {
    // SAFETY: fixed PLIC registers on this board; the handler is installed.
    unsafe {
        core::ptr::write_volatile((PLIC_BASE + 4 * irq as usize) as *mut u32, 1);
        let enable = (PLIC_ENABLE_CTX0 + 4 * (irq as usize / 32)) as *mut u32;
        core::ptr::write_volatile(enable, core::ptr::read_volatile(enable) | (1 << (irq % 32)));
        core::ptr::write_volatile(PLIC_THRESHOLD_CTX0 as *mut u32, 0);
        riscv::register::mie::set_mext();
    }
}

/// Globally enables machine interrupts (after drivers are set up).
pub fn enable_all() {
    // SAFETY: every enabled source has a handler.
    unsafe { riscv::interrupt::enable() };
}

#[riscv_rt::core_interrupt(Interrupt::MachineTimer)]
fn machine_timer() {
    super::time::on_timer_interrupt();
}

#[riscv_rt::core_interrupt(Interrupt::MachineExternal)]
fn machine_external() {
    // SAFETY: fixed PLIC claim/complete register.
    let irq = unsafe { core::ptr::read_volatile(PLIC_CLAIM_CTX0 as *const u32) };
    if irq == 0 {
        return;
    }
    if irq == NET_IRQ.load(Ordering::Relaxed) {
        ack(NET_MMIO.load(Ordering::Relaxed));
        super::net::WAKER.wake();
    } else if irq == BLK_IRQ.load(Ordering::Relaxed) {
        ack(BLK_MMIO.load(Ordering::Relaxed));
        super::disk::WAKER.wake();
    }
    // SAFETY: completing the claimed source.
    unsafe { core::ptr::write_volatile(PLIC_CLAIM_CTX0 as *mut u32, irq) };
}

/// Acknowledges every pending interrupt of the virtio device at `base`.
fn ack(base: usize) {
    // SAFETY: `base` is a virtio-mmio register block found at discovery.
    unsafe {
        let status = core::ptr::read_volatile((base + VIRTIO_INTERRUPT_STATUS) as *const u32);
        core::ptr::write_volatile((base + VIRTIO_INTERRUPT_ACK) as *mut u32, status);
    }
}
