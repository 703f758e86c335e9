//! `metalraft-kv` decoders on arbitrary bytes: commands, results and
//! snapshots must be refused with a `DecodeError`/`SnapshotError`, never
//! panic or allocate without bound; whatever decodes must round-trip, and
//! a restored store must snapshot back to a store equal to itself.
//!
//! Input: one mode byte, then the bytes the mode works on.
//! - `0`: `Command::decode` and `CommandResult::decode`;
//! - `1`: `KvStore::restore` and `restore_prefix` on the raw bytes;
//! - `2`: the same on `MAGIC | version | bytes | CRC-32C`, so the fuzzer
//!   reaches the body decoder and the invariant checks behind the checksum;
//! - `3`: commands separated by `0xFF 0xFE`, each decoded and applied to a
//!   store in turn; the final store must survive a snapshot round trip.

use metalraft_kv::{Command, CommandResult, KvStore, FORMAT_VERSION, SNAPSHOT_MAGIC};

const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// The target: one input of raw bytes, checked.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => commands(rest),
        1 => snapshot(rest),
        2 => snapshot(&with_checksum(rest)),
        _ => apply_all(rest),
    }
}

fn commands(bytes: &[u8]) {
    if let Ok(cmd) = Command::decode(bytes) {
        let again = Command::decode(&cmd.encode()).expect("an accepted command re-decodes");
        assert_eq!(again, cmd);
    }
    if let Ok(res) = CommandResult::decode(bytes) {
        let again = CommandResult::decode(&res.encode()).expect("a result re-decodes");
        assert_eq!(again, res);
    }
}

fn with_checksum(body: &[u8]) -> Vec<u8> {
    let mut out = SNAPSHOT_MAGIC.to_vec();
    out.push(FORMAT_VERSION);
    out.extend_from_slice(body);
    let crc = CRC32C.checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn snapshot(bytes: &[u8]) {
    let whole = KvStore::restore(bytes);
    if let Ok(store) = &whole {
        round_trip(store);
    }
    if let Ok((store, len)) = KvStore::restore_prefix(bytes) {
        assert!(len <= bytes.len());
        // The prefix is a snapshot on its own, of the same store.
        assert_eq!(KvStore::restore(&bytes[..len]).as_ref(), Ok(&store));
        round_trip(&store);
    }
}

fn round_trip(store: &KvStore) {
    let snap = store.snapshot();
    let back = KvStore::restore(&snap).expect("a store's own snapshot restores");
    assert_eq!(&back, store);
    assert_eq!(back.snapshot(), snap, "snapshots are deterministic");
}

fn apply_all(bytes: &[u8]) {
    let mut store = KvStore::new();
    let mut index = 0u64;
    for chunk in split(bytes, &[0xFF, 0xFE]) {
        index += 1;
        match Command::decode(chunk) {
            Ok(cmd) => {
                let _refused_is_fine = store.apply(index, &cmd);
            }
            Err(_) => store.mark_applied(index).expect("index grows"),
        }
    }
    round_trip(&store);
}

fn split<'a>(mut bytes: &'a [u8], sep: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    std::iter::from_fn(move || {
        if bytes.is_empty() {
            return None;
        }
        match bytes.windows(sep.len()).position(|w| w == sep) {
            Some(at) => {
                let (head, tail) = bytes.split_at(at);
                bytes = &tail[sep.len()..];
                Some(head)
            }
            None => Some(std::mem::take(&mut bytes)),
        }
    })
}
