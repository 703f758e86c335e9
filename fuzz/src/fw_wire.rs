//! The firmware's wire decoders on arbitrary datagrams and blocks:
//! - the peer protocol (`crates/firmware/src/raft/wire.rs`, compiled here
//!   from its own source file), whose decoded messages are then stepped into
//!   a real node: a peer must never trip an assertion;
//! - the client protocol (`metalraft_fw_proto::client` requests and
//!   responses);
//! - the configuration block in sector 0 (`metalraft_fw_proto::config`).
//!
//! Every decoder must refuse bad input with its error type, never panic;
//! whatever decodes must re-encode to something that decodes to itself.
//! Decoding a peer datagram must stay within the allocation bound
//! `wire.rs` documents (`DECODE_ALLOC_BOUND_BYTES`), measured by a counting
//! allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use metalraft_core::{Config, MemStorage, Node};
use metalraft_fw_proto::addr::MAX_DATAGRAM_BYTES;
use metalraft_fw_proto::client::{Request, Response};
use metalraft_fw_proto::config::{NodeConfig, CONFIG_BLOCK_BYTES};

/// The firmware's peer wire format, from its own source file (the firmware
/// crate itself only builds for its RISC-V target). It names
/// `crate::platform::heap` (see `lib.rs`).
#[path = "../../crates/firmware/src/raft/wire.rs"]
#[allow(dead_code, unreachable_pub)]
pub(crate) mod wire;

/// Counts live heap bytes and their peak, per thread, to measure a
/// decoder's worst transient allocation. Per thread, so that a test
/// harness running other tests at the same time does not disturb it.
///
/// The binary that runs [`run`] must install it as its global allocator
/// (`#[global_allocator]`); `run` asserts that it is installed.
pub struct CountingAlloc;

std::thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn live() -> usize {
    LIVE.try_with(Cell::get).unwrap_or(0)
}

fn peak() -> usize {
    PEAK.try_with(Cell::get).unwrap_or(0)
}

fn reset_peak() {
    let _ = PEAK.try_with(|p| p.set(live()));
}

// SAFETY: forwards every call to the system allocator unchanged; only
// counts bytes on the side (in const-initialized thread locals, which
// never allocate).
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            let _ = LIVE.try_with(|l| {
                let now = l.get() + layout.size();
                l.set(now);
                let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
            });
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(layout.size())));
        System.dealloc(ptr, layout)
    }
}

/// Whether [`CountingAlloc`] is the global allocator (a measurement that
/// always reads 0 would let every allocation bound pass).
fn counting_installed() -> bool {
    let before = live();
    let probe = std::hint::black_box(Vec::<u8>::with_capacity(64));
    let counted = live() >= before + 64;
    drop(probe);
    counted
}

/// The target: one input of raw bytes, checked.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 | 1 => peer(rest),
        2 => client(rest),
        _ => config(rest),
    }
}

fn peer(datagram: &[u8]) {
    let datagram = &datagram[..datagram.len().min(MAX_DATAGRAM_BYTES)];
    // Accept whatever recipient and sender the datagram names, so the
    // fuzzer need not guess them to get past the address checks.
    // (The body starts with the sender's and the recipient's ids.)
    let ids = datagram
        .get(1..)
        .map(postcard::take_from_bytes::<(u64, u64)>);
    let (me, source) = match ids {
        Some(Ok(((from, to), _))) => (to, u8::try_from(from).unwrap_or(0)),
        _ => (1, 2),
    };
    assert!(
        counting_installed(),
        "CountingAlloc is not the global allocator"
    );
    let base = live();
    reset_peak();
    let decoded = wire::decode(datagram, me, source);
    let peak = peak() - base;
    assert!(
        peak <= wire::DECODE_ALLOC_BOUND_BYTES,
        "decoding {} bytes allocated {peak} bytes at peak (bound {})",
        datagram.len(),
        wire::DECODE_ALLOC_BOUND_BYTES
    );
    let Ok(msg) = decoded else { return };
    let mut buf = [0u8; MAX_DATAGRAM_BYTES];
    if let Ok(again) = wire::encode(&msg, &mut buf) {
        let back = wire::decode(again, me, source).expect("re-decodes");
        assert_eq!(back, msg);
    }
    if !(1..=3).contains(&msg.to) {
        return;
    }
    // The core validates everything the wire format does not.
    let storage = MemStorage::bootstrap(&[1, 2, 3]);
    let mut node: Node<Vec<u8>, MemStorage<Vec<u8>>> =
        Node::new(Config::new(msg.to), storage, 0).expect("valid");
    let _refused_is_fine = node.step(msg);
    while node.has_ready() {
        let mut rd = node.ready().expect("ready");
        if let Some(p) = rd.take_persist() {
            if let Some(install) = p.snapshot() {
                node.storage_mut().install_snapshot(install, Vec::new());
            }
            node.storage_mut().apply_persist(&p);
            node.on_persisted(p.into_token()).expect("in order");
        }
    }
}

fn client(bytes: &[u8]) {
    if let Ok(r) = Request::decode(bytes) {
        assert_eq!(Request::decode(&r.encode()), Ok(r));
    }
    if let Ok(r) = Response::decode(bytes) {
        assert_eq!(Response::decode(&r.encode()), Ok(r));
    }
}

fn config(bytes: &[u8]) {
    let mut block = [0u8; CONFIG_BLOCK_BYTES];
    let n = bytes.len().min(CONFIG_BLOCK_BYTES);
    block[..n].copy_from_slice(&bytes[..n]);
    for b in [&block[..], bytes] {
        if let Ok(c) = NodeConfig::decode(b) {
            let again = c.encode().expect("a decoded config encodes");
            assert_eq!(NodeConfig::decode(&again), Ok(c));
        }
    }
}
