//! A minimal `no_std` binary for `thumbv7em-none-eabihf`. With feature
//! `with-core` it drives a `metalraft_core::Node` through every input and
//! output, so the linker keeps the whole state machine; without it, it is
//! the empty baseline. The difference in `.text` is what the core adds.

#![no_std]
#![no_main]

extern crate alloc;

use core::alloc::{GlobalAlloc, Layout};

/// The smallest allocator that links: this binary is measured, never run.
/// Its result is opaque (a volatile load) so the optimizer cannot prove
/// that allocations fail and delete the code that uses them.
struct NoAlloc;

unsafe impl GlobalAlloc for NoAlloc {
    unsafe fn alloc(&self, _: Layout) -> *mut u8 {
        unsafe { core::ptr::read_volatile(0x2000_0010 as *const usize) as *mut u8 }
    }
    unsafe fn dealloc(&self, _: *mut u8, _: Layout) {}
}

#[global_allocator]
static ALLOC: NoAlloc = NoAlloc;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(feature = "with-core")]
fn probe(input: u64) -> u64 {
    use alloc::vec::Vec;
    use metalraft_core::*;
    let storage = MemStorage::<Vec<u8>>::bootstrap(&[1, 2, 3]);
    let Ok(mut node) = Node::new(Config::new(1), storage, 0) else { return 0 };
    let _ = node.campaign();
    let _ = node.tick();
    let m = Message {
        from: 2,
        to: 1,
        term: input,
        body: MessageBody::<Vec<u8>>::HeartbeatResponse { read_seq: input },
    };
    let _ = node.step(m);
    let _ = node.propose(Vec::from([input as u8]));
    let _ = node.read_index(input);
    let _ = node.transfer_leader(2);
    let _ = node.propose_conf_change(ConfChange::new(&[ConfChangeOp::AddVoter(4)]));
    let _ = node.snapshot_created(input);
    let mut sum = 0;
    if let Ok(mut rd) = node.ready() {
        sum += rd.take_messages().len() as u64;
        if let Some(p) = rd.take_persist() {
            node.storage_mut().apply_persist(&p);
            let _ = node.on_persisted(p.into_token());
        }
        sum += rd.take_committed_entries().len() as u64;
    }
    sum + node.term()
}

#[cfg(not(feature = "with-core"))]
fn probe(input: u64) -> u64 {
    input
}

#[no_mangle]
pub extern "C" fn _start() -> ! {
    // Read the input through a volatile load so nothing is folded away.
    let input = unsafe { core::ptr::read_volatile(0x2000_0000 as *const u64) };
    let out = probe(input);
    unsafe { core::ptr::write_volatile(0x2000_0008 as *mut u64, out) };
    loop {}
}
