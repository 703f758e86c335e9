//! Writes the seed corpora of the byte-decoding fuzz targets from the real
//! encoders (`fuzz/corpus/<target>/seed-*`). Run from the repository root:
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds
//! ```
//!
//! Each seed is the target's mode byte followed by bytes a real writer
//! produced: commands, results and snapshots of `metalraft-kv`; WAL frames,
//! a WAL segment, snapshot and backup files of the server; peer and client
//! datagrams, a config block and a disk image of the firmware.

use std::fs;
use std::path::Path;

use metalraft::storage::codec::{self, Record};
use metalraft::storage::snapshot::{self, Snapshot};
use metalraft_core::{ConfState, Entry, EntryData, HardState, Message, MessageBody};
use metalraft_kv::{Command, KvStore, PutRequest, RangeRequest};

fn write(target: &str, name: &str, mode: u8, bytes: &[u8]) {
    let dir = Path::new("fuzz/corpus").join(target);
    fs::create_dir_all(&dir).expect("corpus dir");
    let mut out = vec![mode];
    out.extend_from_slice(bytes);
    fs::write(dir.join(format!("seed-{name}")), out).expect("write seed");
}

fn put(key: &[u8], value: &[u8]) -> Command {
    Command::Put(PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        ..PutRequest::default()
    })
}

fn kv() -> KvStore {
    let mut store = KvStore::new();
    store.apply(1, &put(b"a", b"1")).expect("put");
    store.apply(2, &put(b"b", b"22")).expect("put");
    store.apply(3, &put(b"a", b"333")).expect("put");
    store
}

fn kv_seeds() {
    let t = "kv_decode";
    write(t, "put", 0, &put(b"key", b"value").encode());
    write(
        t,
        "range",
        0,
        &Command::Range(RangeRequest::prefix(b"k")).encode(),
    );
    let mut store = KvStore::new();
    let res = store.apply(1, &put(b"k", b"v")).expect("put");
    write(t, "result", 0, &res.encode());
    let snap = kv().snapshot();
    write(t, "snapshot", 1, &snap);
    // Mode 2 adds magic, version and checksum itself: the body only.
    write(t, "snapshot-body", 2, &snap[5..snap.len() - 4]);
    let mut many = put(b"a", b"1").encode();
    many.extend_from_slice(&[0xFF, 0xFE]);
    many.extend_from_slice(&put(b"b", b"2").encode());
    write(t, "apply", 3, &many);
}

fn wal_seeds() {
    let t = "wal_decode";
    let hs = HardState {
        term: 2,
        vote: Some(1),
        commit: 2,
    };
    let start = Record::SegmentStart {
        first_index: 1,
        prev_term: 0,
        hard_state: HardState::default(),
    };
    let batch = Record::Batch {
        entries: vec![
            Entry {
                term: 1,
                index: 1,
                data: metalraft_core::bootstrap_entry::<Vec<u8>>(&[1, 2, 3]).data,
            },
            Entry {
                term: 2,
                index: 2,
                data: EntryData::Noop,
            },
            Entry {
                term: 2,
                index: 3,
                data: EntryData::Normal(put(b"k", b"v").encode()),
            },
        ],
        hard_state: Some(hs),
    };
    let mut segment = Vec::new();
    for r in [&start, &batch] {
        let mut payload = Vec::new();
        codec::encode_record(r, &mut payload).expect("encodes");
        codec::encode_frame(&payload, &mut segment);
        if matches!(r, Record::Batch { .. }) {
            write(t, "record", 0, &payload);
        }
    }
    write(t, "segment", 4, &segment);
    let mut torn = segment.clone();
    torn.truncate(segment.len() - 5);
    torn.extend_from_slice(&[0; 64]);
    write(t, "segment-torn", 4, &torn);
    let snap = snapshot::encode(&Snapshot {
        index: 3,
        term: 2,
        conf_state: ConfState::with_voters(&[1, 2, 3]),
        data: kv().snapshot(),
    })
    .expect("encodes");
    write(t, "snapshot", 1, &snap);
    write(t, "snapshot-payload", 2, &snap[20..]);
    write(t, "backup", 3, &kv().snapshot());
}

fn fw_seeds() {
    use metalraft_fw_proto::client::{Op, Request};
    use metalraft_fw_proto::config::NodeConfig;
    let t = "fw_wire";
    let msg = |body| Message {
        from: 2,
        to: 1,
        term: 2,
        body,
    };
    let wire = |m: &Message<Vec<u8>>| {
        // The firmware's peer format: a version byte, then postcard.
        let mut out = vec![1u8];
        out.extend_from_slice(&postcard::to_allocvec(m).expect("encodes"));
        out
    };
    let append = msg(MessageBody::AppendEntries {
        prev_log_index: 1,
        prev_log_term: 1,
        entries: vec![Entry {
            term: 2,
            index: 2,
            data: EntryData::Normal(b"cmd".to_vec()),
        }],
        leader_commit: 1,
    });
    write(t, "append", 0, &wire(&append));
    let vote = msg(MessageBody::RequestVote {
        pre_vote: false,
        transfer: false,
        last_log_index: 1,
        last_log_term: 1,
    });
    write(t, "vote", 0, &wire(&vote));
    let req = Request {
        id: 7,
        op: Op::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        },
    };
    write(t, "client", 2, &req.encode());
    let cfg = NodeConfig {
        node_id: 1,
        members: vec![1, 2, 3],
        tick_ms: 10,
        heartbeat_ticks: 1,
        election_ticks_min: 10,
        election_ticks_max: 20,
        rng_seed: 7,
        snapshot_threshold_entries: 100,
    };
    write(t, "config", 3, &cfg.encode().expect("valid config"));
}

fn main() {
    kv_seeds();
    wal_seeds();
    fw_seeds();
}
