//! The global allocator: a linked-list heap over a static arena, wrapped to
//! record the high-water mark reported in the node's status.
#![allow(unsafe_code)]

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicUsize, Ordering};

use embedded_alloc::LlffHeap;

/// Size of the heap arena. Holds the virtqueues (a page per ring), the disk's
/// write buffers, the Raft log index, in-flight entries and messages, and
/// the key-value store (see README: memory budget). The network frames and
/// socket buffers are static.
pub const HEAP_BYTES: usize = 192 * 1024;

struct TrackingHeap {
    inner: LlffHeap,
    high_water: AtomicUsize,
}

#[global_allocator]
static HEAP: TrackingHeap = TrackingHeap {
    inner: LlffHeap::empty(),
    high_water: AtomicUsize::new(0),
};

// SAFETY: delegates to LlffHeap, which is a correct allocator; the wrapper only
// reads its usage counter afterwards.
unsafe impl GlobalAlloc for TrackingHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { self.inner.alloc(layout) };
        self.high_water
            .fetch_max(self.inner.used(), Ordering::Relaxed);
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { self.inner.dealloc(ptr, layout) }
    }
}

/// Hands the arena to the allocator. Call once, first thing at boot.
pub fn init() {
    static mut ARENA: [u8; HEAP_BYTES] = [0; HEAP_BYTES];
    // SAFETY: called once before any allocation; ARENA is used by nothing else.
    unsafe {
        HEAP.inner
            .init(core::ptr::addr_of_mut!(ARENA) as usize, HEAP_BYTES)
    }
}

/// Heap bytes in use now.
pub fn used() -> usize {
    HEAP.inner.used()
}

/// Most heap bytes ever in use.
pub fn high_water() -> usize {
    HEAP.high_water.load(Ordering::Relaxed)
}
