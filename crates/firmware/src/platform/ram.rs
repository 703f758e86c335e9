//! RAM use, measured by the node: the static image (`.data`, `.bss`,
//! `.uninit` from the linker's symbols, minus the heap arena, which
//! [`heap`](super::heap) measures) and the main stack's high-water mark.
//!
//! The stack is measured by painting: at boot [`paint_stack`] fills the
//! [`STACK_WATCH_BYTES`] below the top of the stack (down from just below
//! the caller's frame) with a pattern; [`stack_high_water`] finds the
//! lowest word that no longer holds it. Interrupt handlers run on the same
//! stack on both boards, so their frames count too. A word a deep frame
//! wrote with the pattern's own value would hide that frame: the figure
//! could be one frame low, never high.
#![allow(unsafe_code)]

use core::ptr::addr_of;

/// Bytes below the top of the stack that are painted and watched: the
/// stack reservation of the mps2 board's linker script (`STACK`, 32 KiB),
/// and the same window on QEMU `virt` (whose stack reaches down to the end
/// of `.bss`). A high-water mark equal to it means "at least this deep".
pub const STACK_WATCH_BYTES: usize = 32 * 1024;
/// The paint.
const PATTERN: u32 = 0x5ac3_3ca5;
/// Left unpainted below the painting function's own locals.
const PAINT_MARGIN_BYTES: usize = 256;

extern "C" {
    static _stack_start: u8;
    static __sdata: u8;
    static __edata: u8;
    static __sbss: u8;
    static __ebss: u8;
    static __suninit: u8;
    static __euninit: u8;
}

/// The address of a linker symbol (taking an address reads nothing).
macro_rules! sym {
    ($s:ident) => {
        addr_of!($s) as usize
    };
}

fn stack_top() -> usize {
    sym!(_stack_start)
}

/// The lowest address of the watched window.
fn watch_bottom() -> usize {
    stack_top() - STACK_WATCH_BYTES
}

/// Paints the watched stack window below the caller. Call once, first
/// thing at boot.
#[inline(never)]
pub fn paint_stack() {
    let marker = 0u8;
    let here = addr_of!(marker) as usize;
    let end = here.saturating_sub(PAINT_MARGIN_BYTES) & !3;
    let mut p = watch_bottom();
    while p < end {
        // SAFETY: `p` lies in the stack region below every live frame
        // (below this function's own, less a margin for the loop itself),
        // word-aligned; nothing refers to that memory.
        unsafe { core::ptr::write_volatile(p as *mut u32, PATTERN) };
        p += 4;
    }
}

/// The deepest the main stack has been since [`paint_stack`], in bytes
/// below its top (at most [`STACK_WATCH_BYTES`]).
pub fn stack_high_water() -> usize {
    let top = stack_top();
    let mut p = watch_bottom();
    // SAFETY: word-aligned reads inside the stack window; a frame may be
    // using a word (the value read is then simply not the pattern).
    while p < top && unsafe { core::ptr::read_volatile(p as *const u32) } == PATTERN {
        p += 4;
    }
    top - p
}

/// Static RAM: `.data`, `.bss` and `.uninit` without the heap arena.
pub fn static_bytes() -> usize {
    let data = sym!(__edata) - sym!(__sdata);
    let bss = sym!(__ebss) - sym!(__sbss);
    let uninit = sym!(__euninit) - sym!(__suninit);
    (data + bss + uninit).saturating_sub(super::heap::HEAP_BYTES)
}
