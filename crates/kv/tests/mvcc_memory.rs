//! What MVCC history costs, measured once and written down in the crate
//! README and ADR 0013: 1,000,000 revisions of 256-byte values over 100,000
//! keys, with `size_bytes()` next to the real heap (a counting global
//! allocator: bytes requested, not the allocator's own overhead).
//!
//! ```sh
//! cargo test --release -p metalraft-kv --test mvcc_memory -- --ignored --nocapture
//! ```

// The one unsafe block in this crate's tests: a global allocator must
// implement the unsafe `GlobalAlloc` trait. It forwards to `System`.
#![allow(unsafe_code)]

use metalraft_kv::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Live heap bytes requested through the global allocator.
static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
/// The most `LIVE_BYTES` reached since last reset.
static PEAK_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Starts a new peak measurement at the current heap.
fn reset_peak() {
    PEAK_BYTES.store(LIVE_BYTES.load(Ordering::Relaxed), Ordering::Relaxed);
}

struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK_BYTES.fetch_max(live, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const KEYS: usize = 100_000;
const REVISIONS: usize = 1_000_000;
const VALUE_BYTES: usize = 256;

fn key(i: usize) -> Vec<u8> {
    format!("/registry/pods/{:08}", i % KEYS).into_bytes()
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[test]
#[ignore = "measurement: about 1 GB of heap and a minute; run by hand"]
fn one_million_revisions_of_256_byte_values() {
    let base = LIVE_BYTES.load(Ordering::Relaxed);
    let mut kv = MvccStore::new();
    let started = Instant::now();
    for i in 0..REVISIONS {
        let mut value = vec![b'v'; VALUE_BYTES];
        value[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let put = Command::Put(PutRequest {
            key: key(i),
            value,
            ..Default::default()
        });
        kv.apply(i as u64 + 1, &put).unwrap();
    }
    let applied = started.elapsed();
    let heap = LIVE_BYTES.load(Ordering::Relaxed) - base;
    let per_revision = |bytes: usize| bytes as f64 / REVISIONS as f64;
    println!(
        "{REVISIONS} puts over {KEYS} keys ({} B keys, {VALUE_BYTES} B values) in {:.1?}",
        key(0).len(),
        applied
    );
    println!(
        "  size_bytes {:.1} MiB ({:.0} B/revision), heap {:.1} MiB ({:.0} B/revision)",
        mib(kv.size_bytes()),
        per_revision(kv.size_bytes()),
        mib(heap),
        per_revision(heap)
    );

    // The server's way (issue 18): a stream in steps of 1,024 items, each
    // piece written out and dropped; the heap does not grow by the snapshot.
    reset_peak();
    let started = Instant::now();
    let mut stream = kv.snapshot_stream();
    let (mut piece, mut longest, mut steps) = (Vec::new(), std::time::Duration::ZERO, 0);
    loop {
        piece.clear();
        let step = Instant::now();
        let done = stream.step(&kv, 1024, &mut piece).unwrap();
        longest = longest.max(step.elapsed());
        steps += 1;
        if done {
            break;
        }
    }
    println!(
        "  snapshot stream: {:.1} MiB in {:.1?}, {steps} steps, longest {:.2?}, heap peak +{:.1} MiB",
        mib(stream.emitted() as usize),
        started.elapsed(),
        longest,
        mib(PEAK_BYTES.load(Ordering::Relaxed) - heap - base)
    );

    reset_peak();
    let started = Instant::now();
    let snapshot = kv.snapshot();
    println!(
        "  snapshot {:.1} MiB in {:.1?} (in one Vec: heap peak +{:.1} MiB)",
        mib(snapshot.len()),
        started.elapsed(),
        mib(PEAK_BYTES.load(Ordering::Relaxed) - heap - base)
    );
    assert_eq!(snapshot.len() as u64, stream.emitted());
    let started = Instant::now();
    let restored = MvccStore::restore(&snapshot).unwrap();
    println!("  restore in {:.1?}", started.elapsed());
    assert_eq!(restored, kv);
    drop((restored, snapshot));

    let started = Instant::now();
    let batch = kv.changes(2, b"\0", b"\0", 100_000).unwrap();
    println!(
        "  watch catch-up: {} events from revision 2 in {:.1?}",
        batch.changes.len(),
        started.elapsed()
    );
    drop(batch);

    let half = kv.revision() / 2;
    let started = Instant::now();
    let index = kv.applied_index() + 1;
    kv.apply(
        index,
        &Command::Compact(CompactionRequest { revision: half }),
    )
    .unwrap();
    let compact_apply = started.elapsed();
    // The rest is freed by the entries that follow, one chunk each.
    let (mut entries, mut longest) = (0, compact_apply);
    let started = Instant::now();
    while kv.is_pruning() {
        let index = kv.applied_index() + 1;
        let entry = Instant::now();
        kv.mark_applied(index).unwrap();
        longest = longest.max(entry.elapsed());
        entries += 1;
    }
    let heap_half = LIVE_BYTES.load(Ordering::Relaxed) - base;
    println!(
        "  compact to {half}: the Compact entry {compact_apply:.1?}, then {entries} entries in {:.1?} \
         (longest {longest:.2?}): size_bytes {:.1} MiB, heap {:.1} MiB",
        started.elapsed(),
        mib(kv.size_bytes()),
        mib(heap_half)
    );

    let current = kv.revision();
    let started = Instant::now();
    let index = kv.applied_index() + 1;
    kv.apply(
        index,
        &Command::Compact(CompactionRequest { revision: current }),
    )
    .unwrap();
    while kv.is_pruning() {
        let index = kv.applied_index() + 1;
        kv.mark_applied(index).unwrap();
    }
    let heap_now = LIVE_BYTES.load(Ordering::Relaxed) - base;
    println!(
        "  compact to {current} in {:.1?}: size_bytes {:.1} MiB, heap {:.1} MiB (current data only)",
        started.elapsed(),
        mib(kv.size_bytes()),
        mib(heap_now)
    );
    assert!(kv.size_bytes() < heap);
}

/// Keys of the bench's big-* workloads (issue 18).
const BIG_KEYS: u64 = 1_000_000;
/// Puts per txn in the bench's load.
const BIG_PUTS_PER_TXN: u64 = 100;

fn big_key(i: u64) -> Vec<u8> {
    // As `crates/bench/src/server/big.rs` names them; its 16 clients
    // interleave, so keys arrive out of order.
    format!("big/{:08}", i.wrapping_mul(7_919) % BIG_KEYS).into_bytes()
}

/// Issue 18's 1,000,000-key store as the bench's `big-rss` cluster holds it
/// (10,000 txns of 100 puts of 256 bytes, never compacted), taken apart by
/// structure: the revision log (freed by a compaction to the current
/// revision), the current map, and what a restore from a snapshot holds.
///
/// ```sh
/// cargo test --release -p metalraft-kv --test mvcc_memory -- --ignored --nocapture big
/// ```
#[test]
#[ignore = "measurement: about 1 GB of heap and half a minute; run by hand"]
fn big_store_bytes_per_key_by_structure() {
    let base = LIVE_BYTES.load(Ordering::Relaxed);
    let heap = || LIVE_BYTES.load(Ordering::Relaxed) - base;
    let per_key = |bytes: usize| bytes as f64 / BIG_KEYS as f64;
    let mut kv = MvccStore::new();
    let mut index = 0;
    let started = Instant::now();
    for t in 0..BIG_KEYS / BIG_PUTS_PER_TXN {
        let success = (t * BIG_PUTS_PER_TXN..(t + 1) * BIG_PUTS_PER_TXN)
            .map(|i| {
                let mut value = vec![b'v'; VALUE_BYTES];
                value[..8].copy_from_slice(&i.to_le_bytes());
                RequestOp::Put(PutRequest {
                    key: big_key(i),
                    value,
                    ..Default::default()
                })
            })
            .collect();
        let txn = TxnRequest {
            compare: Vec::new(),
            success,
            failure: Vec::new(),
        };
        index += 1;
        kv.apply(index, &Command::Txn(txn)).unwrap();
    }
    let loaded = heap();
    println!(
        "{BIG_KEYS} keys of {} B with {VALUE_BYTES} B values in {} txns, {:.1?}: heap {:.1} MiB \
         ({:.0} B/key), size_bytes {:.1} MiB",
        big_key(0).len(),
        BIG_KEYS / BIG_PUTS_PER_TXN,
        started.elapsed(),
        mib(loaded),
        per_key(loaded),
        mib(kv.size_bytes())
    );

    reset_peak();
    let snapshot = kv.snapshot();
    let started = Instant::now();
    let restored = MvccStore::restore(&snapshot).unwrap();
    let restore_time = started.elapsed();
    assert!(restored == kv);
    let with_restored = heap();
    drop(restored);
    let restored_heap = with_restored - heap();
    println!(
        "  snapshot {:.1} MiB; restore {restore_time:.1?}; the restored store: heap {:.1} MiB \
         ({:.0} B/key)",
        mib(snapshot.len()),
        mib(restored_heap),
        per_key(restored_heap)
    );
    drop(snapshot);

    let revision = kv.revision();
    index += 1;
    kv.apply(index, &Command::Compact(CompactionRequest { revision }))
        .unwrap();
    while kv.is_pruning() {
        index += 1;
        kv.mark_applied(index).unwrap();
    }
    let current = heap();
    println!(
        "  revision log ({BIG_KEYS} changes in {} records): {:.1} MiB ({:.0} B/change)",
        BIG_KEYS / BIG_PUTS_PER_TXN,
        mib(loaded - current),
        per_key(loaded - current)
    );
    println!(
        "  current map (key + value allocations and tree nodes): {:.1} MiB ({:.0} B/key, of \
         which {} B key and {VALUE_BYTES} B value bytes)",
        mib(current),
        per_key(current),
        big_key(0).len()
    );
}
