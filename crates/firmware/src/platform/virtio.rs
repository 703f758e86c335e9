//! virtio-mmio discovery and the `virtio-drivers` HAL (identity-mapped
//! memory, DMA buffers from the heap).
#![allow(unsafe_code)]

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use core::ptr::NonNull;

use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

/// First virtio-mmio slot of QEMU `virt`.
const VIRTIO_MMIO_BASE: usize = 0x1000_1000;
/// Size of each slot.
const VIRTIO_MMIO_STRIDE: usize = 0x1000;
/// Slots QEMU `virt` provides.
const VIRTIO_MMIO_SLOTS: usize = 8;
/// PLIC source of slot 0 (slot `i` is `FIRST_IRQ + i`).
const VIRTIO_FIRST_IRQ: u32 = 1;

/// The HAL: physical = virtual, DMA memory from the global allocator.
pub struct HalImpl;

fn dma_layout(pages: usize) -> Option<Layout> {
    Layout::from_size_align(pages.checked_mul(PAGE_SIZE)?, PAGE_SIZE).ok()
}

// SAFETY: allocations are page-aligned, zeroed and live until dma_dealloc;
// memory is identity mapped and not cached differently for devices.
unsafe impl Hal for HalImpl {
    fn dma_alloc(pages: usize, _dir: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let layout = dma_layout(pages).expect("DMA size overflow");
        // SAFETY: layout has a non-zero size (pages >= 1 per the trait).
        let p = unsafe { alloc_zeroed(layout) };
        let p = NonNull::new(p).expect("out of memory for DMA buffers");
        (p.as_ptr() as usize as PhysAddr, p)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        let layout = dma_layout(pages).expect("DMA size overflow");
        // SAFETY: allocated by dma_alloc with the same layout.
        unsafe { dealloc(vaddr.as_ptr(), layout) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as usize as *mut u8).expect("null MMIO address")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _dir: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as usize as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _dir: BufferDirection) {}
}

/// A virtio device found on the bus.
pub struct Found {
    /// Its transport.
    pub transport: MmioTransport<'static>,
    /// MMIO base address.
    pub base: usize,
    /// PLIC source.
    pub irq: u32,
}

/// The first network and block devices on the virtio-mmio bus.
#[derive(Default)]
pub struct Devices {
    /// virtio-net.
    pub net: Option<Found>,
    /// virtio-blk.
    pub blk: Option<Found>,
}

/// Probes every slot.
pub fn discover() -> Devices {
    let mut devices = Devices::default();
    for slot in 0..VIRTIO_MMIO_SLOTS {
        let base = VIRTIO_MMIO_BASE + slot * VIRTIO_MMIO_STRIDE;
        let Some(header) = NonNull::new(base as *mut VirtIOHeader) else {
            continue;
        };
        // SAFETY: QEMU `virt` maps a virtio-mmio register block at each slot.
        let Ok(transport) = (unsafe { MmioTransport::new(header, VIRTIO_MMIO_STRIDE) }) else {
            continue; // empty slot
        };
        let found = Found {
            base,
            irq: VIRTIO_FIRST_IRQ + slot as u32,
            transport,
        };
        match found.transport.device_type() {
            DeviceType::Network if devices.net.is_none() => devices.net = Some(found),
            DeviceType::Block if devices.blk.is_none() => devices.blk = Some(found),
            _ => {}
        }
    }
    devices
}
