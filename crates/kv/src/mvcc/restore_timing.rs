//! Where the time of [`MvccStore::restore`] goes, on a store of 1,000,000
//! keys of 256 bytes with history: measured by hand, written down in the
//! crate README ("Restore time"). `fast-checksum` is the server's CRC.
//!
//! ```sh
//! cargo test --release -p metalraft-kv --features fast-checksum --lib restore_timing -- --ignored --nocapture
//! ```

use super::snapshot::{from_lease_body, LeaseBody};
use super::MvccStore;
use crate::checksum::CRC32C;
use crate::request::{
    Command, CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseOption, PutRequest,
    RequestOp, TxnRequest,
};
use crate::snapshot::decode_framed;
use crate::MVCC_LEASE_SNAPSHOT_MAGIC;
use std::time::{Duration, Instant};
use std::{format, println, vec::Vec};

/// Keys of the store (issue 18's big workloads).
const KEYS: u64 = 1_000_000;
/// Bytes per value.
const VALUE_BYTES: usize = 256;
/// Puts per loading txn, as the bench's load.
const PUTS_PER_TXN: u64 = 100;
/// Keys overwritten once after the load (past versions).
const OVERWRITES: u64 = 100_000;
/// Keys deleted after the load (tombstones).
const DELETES: u64 = 10_000;
/// Keys put with a lease.
const LEASED: u64 = 1_000;
/// Times each measured phase is run; the fastest counts.
const RUNS: usize = 3;

fn key(i: u64) -> Vec<u8> {
    // The bench's load interleaves 16 clients: keys arrive out of order.
    format!("/registry/pods/{:08}", i.wrapping_mul(7_919) % KEYS).into_bytes()
}

fn value(i: u64, salt: u8) -> Vec<u8> {
    let mut v = std::vec![salt; VALUE_BYTES];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

fn put(i: u64, salt: u8) -> PutRequest {
    PutRequest {
        key: key(i),
        value: value(i, salt),
        ..PutRequest::default()
    }
}

/// The store the big workloads restore: every key written once in txns of
/// [`PUTS_PER_TXN`], then history on top; compacted at `compact` (a
/// fraction of the load, 0 for never) so the snapshot has a base.
pub(super) fn big_store(compact_after_txns: u64) -> MvccStore {
    let mut kv = MvccStore::new();
    let mut index = 0u64;
    let mut apply = |kv: &mut MvccStore, cmd: Command| {
        index += 1;
        kv.apply(index, &cmd).expect("applies");
    };
    apply(
        &mut kv,
        Command::LeaseGrant(LeaseGrantRequest { id: 7, ttl: 60 }),
    );
    for t in 0..KEYS / PUTS_PER_TXN {
        let ops = (t * PUTS_PER_TXN..(t + 1) * PUTS_PER_TXN)
            .map(|i| RequestOp::Put(put(i, b'v')))
            .collect();
        let txn = TxnRequest {
            compare: Vec::new(),
            success: ops,
            failure: Vec::new(),
        };
        apply(&mut kv, Command::Txn(txn));
        if t + 1 == compact_after_txns {
            let revision = kv.revision();
            apply(&mut kv, Command::Compact(CompactionRequest { revision }));
        }
    }
    for i in 0..OVERWRITES {
        apply(&mut kv, Command::Put(put(i * 3, b'w')));
    }
    for i in 0..DELETES {
        let delete = DeleteRangeRequest {
            key: key(i * 5 + 1),
            ..DeleteRangeRequest::default()
        };
        apply(&mut kv, Command::DeleteRange(delete));
    }
    for i in 0..LEASED {
        let l = LeaseOption {
            lease: 7,
            ignore_lease: false,
        };
        apply(&mut kv, Command::LeasePut(put(i * 11 + 2, b'l'), l));
    }
    kv
}

/// The fastest of [`RUNS`] runs of `f`, and its last result.
fn fastest<T>(mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..RUNS {
        drop(out.take());
        let started = Instant::now();
        let got = f();
        best = best.min(started.elapsed());
        out = Some(got);
    }
    (best, out.expect("RUNS > 0"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn measure(label: &str, kv: &MvccStore) {
    let (t_snapshot, bytes) = fastest(|| kv.snapshot());
    let (t_crc, _) =
        fastest(|| std::hint::black_box(CRC32C.checksum(std::hint::black_box(&bytes))));
    let (t_decode, _) =
        fastest(|| decode_framed::<LeaseBody>(&bytes, MVCC_LEASE_SNAPSHOT_MAGIC).unwrap());
    let mut t_build = Duration::MAX;
    for _ in 0..RUNS {
        let body = decode_framed::<LeaseBody>(&bytes, MVCC_LEASE_SNAPSHOT_MAGIC).unwrap();
        let started = Instant::now();
        let store = from_lease_body(body).unwrap();
        t_build = t_build.min(started.elapsed());
        drop(store);
    }
    let (t_restore, restored) = fastest(|| MvccStore::restore(&bytes).unwrap());
    let started = Instant::now();
    assert!(restored == *kv, "the restored store equals the original");
    let t_eq = started.elapsed();
    let started = Instant::now();
    drop(restored);
    let t_drop = started.elapsed();
    println!(
        "{label}: {} keys live, revision {}, compact revision {}, snapshot {:.1} MiB\n  \
         snapshot {:.0} ms; restore {:.0} ms = CRC {:.0} ms + postcard decode {:.0} ms \
         (with CRC: {:.0}) + building the store {:.0} ms (best of {RUNS})\n  \
         (comparing two stores {:.0} ms, dropping one {:.0} ms)",
        kv.len(),
        kv.revision(),
        kv.compact_revision(),
        bytes.len() as f64 / (1024.0 * 1024.0),
        ms(t_snapshot),
        ms(t_restore),
        ms(t_crc),
        ms(t_decode.saturating_sub(t_crc)),
        ms(t_decode),
        ms(t_build),
        ms(t_eq),
        ms(t_drop),
    );
}

#[test]
#[ignore = "measurement: about 2 GB of heap and a minute in release; run by hand"]
fn restore_time_of_one_million_keys() {
    let started = Instant::now();
    let kv = big_store(0);
    println!(
        "built the uncompacted store in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    measure("never compacted (as the bench's big-* clusters)", &kv);
    drop(kv);
    let kv = big_store(KEYS / PUTS_PER_TXN);
    measure("compacted after the load", &kv);
}
