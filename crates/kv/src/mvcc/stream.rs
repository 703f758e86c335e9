//! Snapshots written in bounded steps while the store keeps applying
//! ([`SnapshotStream`]), so a server can serialize a snapshot on another
//! thread, taking its lock for one step at a time, without a copy of the
//! store.
//!
//! Contract: the bytes a stream emits are exactly
//! [`MvccStore::snapshot`] of the store as it was when the stream was made
//! ([`MvccStore::snapshot_stream`]), whatever was applied between two
//! steps, as long as no new compaction was accepted and the store was not
//! replaced; otherwise a step returns [`StreamError::Changed`] and the
//! caller starts over with a new stream.
//!
//! Why that holds: a snapshot at revision `R` with compact revision `C` is
//! the state at `C` and the log records `C+1..=R`. Applies after the freeze
//! only add versions and records above `R` and move replaced versions from
//! the current map into the history, where reads at `<= R` still find them;
//! the one thing that destroys history is compaction, which only ever
//! removes versions a read at the compact revision or later cannot see. So
//! while the compact revision stays `C`, everything the snapshot needs is
//! still there at every step (even while an earlier compaction to `C` is
//! still freeing memory in chunks, see [`super::compact`]). Keys and records
//! are looked up again by key and revision at each step, never through
//! positions that moves could invalidate.

use super::history::{merged_keys, Changes};
use super::snapshot::{base_revision, ChangesRef, LeasesRef, RecordRef};
use super::{MvccStore, MVCC_LEASE_SNAPSHOT_MAGIC};
use crate::checksum::Table;
use crate::codec::FORMAT_VERSION;
use crate::keys::KeyRange;
use crate::snapshot::KeyValueRef;
use alloc::vec::Vec;
use core::fmt;
use crc::{Crc, Digest, CRC_32_ISCSI};
use serde::Serialize;

/// The checksum of the snapshot framing, as a `static` so a running digest
/// can live in the stream.
static CRC32C: Crc<u32, Table> = Crc::<u32, Table>::new(&CRC_32_ISCSI);

/// Why a [`SnapshotStream`] step could not continue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamError {
    /// The store accepted a compaction, or was replaced, since the stream
    /// was made: the history the snapshot needs may be gone. Nothing
    /// emitted so far is usable; make a new stream.
    Changed,
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::Changed => {
                f.write_str("the store was compacted or replaced during the snapshot")
            }
        }
    }
}

impl core::error::Error for StreamError {}

/// Where a stream is.
#[derive(Clone, Debug)]
enum Phase {
    /// Counting the keys live at the base revision (postcard writes a
    /// sequence's length first), resuming after `after`.
    CountBase { after: Option<Vec<u8>>, n: usize },
    /// Magic, version, revision, compact revision and applied index.
    Header,
    /// The number of keys live at the base revision.
    BaseLen,
    /// The keys live at the base revision, resuming after `after`.
    Base { after: Option<Vec<u8>>, n: usize },
    /// The log record of the base revision.
    AtBase,
    /// The record count.
    Count,
    /// The records from revision `next` to the frozen revision.
    Records { next: i64 },
    /// The frozen leases, then the checksum.
    Tail,
    /// Everything was emitted.
    Done,
}

/// The part of a snapshot's bytes a [`SnapshotStream`] step writes: every
/// step writes into one part only ([`SnapshotStream::section`]), so a
/// writer can tell where each part lies in what it wrote (a delta snapshot,
/// [`MvccStore::snapshot_delta_stream`], reuses the `Base` and `Records`
/// bytes of an earlier chainable one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// Magic, format version, revision, compact revision, applied index
    /// ([`SnapshotStream::prefix_bytes`]).
    Prefix,
    /// The keys live at the base revision (with their count) and the log
    /// record of the base revision: the same bytes for every snapshot of
    /// one compact revision.
    Base,
    /// The record count ([`SnapshotStream::count_bytes`]).
    Count,
    /// The log records after the base revision, oldest first; a later
    /// snapshot of the same compact revision starts with the same bytes.
    Records,
    /// The leases ([`SnapshotStream::leases_bytes`]) and the checksum.
    Tail,
}

/// Bytes of a [`padded_varint`]: the longest postcard varint of a `u64`.
pub const PADDED_VARINT_BYTES: usize = 10;

/// `n` as a postcard varint of exactly [`PADDED_VARINT_BYTES`] bytes: every
/// byte but the last carries the continuation bit. Postcard decodes it as
/// the same number, so a field written this way can be rewritten in place
/// with another value.
pub fn padded_varint(n: u64) -> [u8; PADDED_VARINT_BYTES] {
    let mut out = [0u8; PADDED_VARINT_BYTES];
    for (i, b) in out.iter_mut().enumerate() {
        let bits = (n >> (7 * i)) as u8 & 0x7f;
        *b = if i + 1 < PADDED_VARINT_BYTES {
            bits | 0x80
        } else {
            bits
        };
    }
    out
}

/// Postcard's zig-zag form of an `i64` (how it encodes signed varints).
fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

/// A snapshot of an [`MvccStore`] as it was when
/// [`MvccStore::snapshot_stream`] froze it, emitted in steps of bounded
/// work ([`step`](Self::step)). See the module doc for when the store may
/// change between steps.
#[derive(Clone)]
pub struct SnapshotStream {
    revision: i64,
    compact_revision: i64,
    applied_index: u64,
    base: i64,
    /// Records after the base revision at the freeze.
    records: usize,
    /// The encoded leases at the freeze (small next to the data: one entry
    /// per lease and attached key).
    leases: Vec<u8>,
    /// The keys live at the base revision, once counted.
    base_len: Option<usize>,
    /// Chainable: the revision, applied index and record count are
    /// [`padded_varint`]s, so a delta snapshot can rewrite them.
    padded: bool,
    /// A delta: only the records after this revision, then done.
    delta_after: Option<i64>,
    phase: Phase,
    digest: Digest<'static, u32, Table>,
    emitted: u64,
}

impl fmt::Debug for SnapshotStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotStream")
            .field("revision", &self.revision)
            .field("compact_revision", &self.compact_revision)
            .field("applied_index", &self.applied_index)
            .field("phase", &self.phase)
            .field("emitted", &self.emitted)
            .finish()
    }
}

/// Appends `value`'s postcard encoding to `out`.
fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    let buf = core::mem::take(out);
    // Serializing into a Vec only fails for sequences of unknown length,
    // which none of these types have: a failure is a bug.
    *out = postcard::to_extend(value, buf).expect("postcard cannot fail to encode into a Vec");
}

impl MvccStore {
    /// Freezes what a snapshot of the store as it is now needs (its
    /// revisions, applied index, record count and leases) and returns the
    /// stream that writes it in steps. O(leases); the data and history are
    /// read by the steps.
    pub fn snapshot_stream(&self) -> SnapshotStream {
        let base = base_revision(self.compact_revision());
        let after = self.past.log_position(base.saturating_add(1));
        let mut leases = Vec::new();
        encode_into(&LeasesRef(self), &mut leases);
        SnapshotStream {
            revision: self.revision(),
            compact_revision: self.compact_revision(),
            applied_index: self.applied_index(),
            base,
            records: self.past.log.len().saturating_sub(after),
            leases,
            base_len: None,
            padded: false,
            delta_after: None,
            phase: Phase::CountBase { after: None, n: 0 },
            digest: CRC32C.digest(),
            emitted: 0,
        }
    }

    /// [`snapshot_stream`](Self::snapshot_stream) with the revision, the
    /// applied index and the record count written as [`padded_varint`]s:
    /// the same snapshot (it restores to the same store), a few bytes
    /// longer, whose [`Section::Base`] and [`Section::Records`] bytes a
    /// later delta ([`snapshot_delta_stream`](Self::snapshot_delta_stream))
    /// can reuse.
    pub fn chainable_snapshot_stream(&self) -> SnapshotStream {
        SnapshotStream {
            padded: true,
            ..self.snapshot_stream()
        }
    }

    /// The part of a snapshot of the store as it is now that a chainable
    /// snapshot taken at `after_revision` (same compact revision) does not
    /// have: a stream of only the [`Section::Records`] bytes of the
    /// revisions after `after_revision`, frozen like
    /// [`snapshot_stream`](Self::snapshot_stream). The whole snapshot is
    /// [`prefix_bytes`](SnapshotStream::prefix_bytes), the earlier one's
    /// `Base` bytes, [`count_bytes`](SnapshotStream::count_bytes), the
    /// earlier one's `Records` bytes, this stream's,
    /// [`leases_bytes`](SnapshotStream::leases_bytes), and the CRC-32C of
    /// all that, little-endian.
    ///
    /// `None` if `after_revision` is not between the base revision and the
    /// current revision.
    pub fn snapshot_delta_stream(&self, after_revision: i64) -> Option<SnapshotStream> {
        let s = self.chainable_snapshot_stream();
        if after_revision < s.base || after_revision > s.revision {
            return None;
        }
        Some(SnapshotStream {
            delta_after: Some(after_revision),
            phase: Phase::Records {
                next: after_revision.saturating_add(1),
            },
            ..s
        })
    }
}

impl SnapshotStream {
    /// The applied index the snapshot carries.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// The revision the snapshot carries.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Bytes emitted so far (the whole snapshot's length once
    /// [`is_done`](Self::is_done)).
    pub fn emitted(&self) -> u64 {
        self.emitted
    }

    /// Whether every byte was emitted.
    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// The compact revision the snapshot carries.
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// The part the next [`step`](Self::step) writes into (`None` when it
    /// writes nothing: counting, or done).
    pub fn section(&self) -> Option<Section> {
        match (&self.phase, self.delta_after) {
            (Phase::CountBase { .. } | Phase::Done, _) => None,
            (Phase::Header, _) => Some(Section::Prefix),
            (Phase::BaseLen | Phase::Base { .. } | Phase::AtBase, _) => Some(Section::Base),
            (Phase::Count, _) => Some(Section::Count),
            (Phase::Records { .. }, _) => Some(Section::Records),
            (Phase::Tail, _) => Some(Section::Tail),
        }
    }

    /// The [`Section::Prefix`] bytes: magic, format version and the
    /// header (revision and applied index padded in a chainable stream).
    pub fn prefix_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MVCC_LEASE_SNAPSHOT_MAGIC);
        out.push(FORMAT_VERSION);
        if self.padded {
            out.extend_from_slice(&padded_varint(zigzag(self.revision)));
            encode_into(&self.compact_revision, &mut out);
            out.extend_from_slice(&padded_varint(self.applied_index));
        } else {
            let header = (self.revision, self.compact_revision, self.applied_index);
            encode_into(&header, &mut out);
        }
        out
    }

    /// The [`Section::Count`] bytes: the number of records after the base
    /// revision (padded in a chainable stream).
    pub fn count_bytes(&self) -> Vec<u8> {
        if self.padded {
            padded_varint(self.records as u64).to_vec()
        } else {
            let mut out = Vec::new();
            encode_into(&self.records, &mut out);
            out
        }
    }

    /// The frozen leases as written, the [`Section::Tail`] bytes before the
    /// checksum.
    pub fn leases_bytes(&self) -> &[u8] {
        &self.leases
    }

    /// The frozen leases, decoded: each lease with its TTL and the keys
    /// attached to it when the stream was made, by ID. For a caller that
    /// needs the leases as of the snapshot's revision (a backup in etcd's
    /// layout) while the store keeps applying.
    ///
    /// # Errors
    /// [`SnapshotError::Malformed`] only if this crate's own encoding does
    /// not decode (a bug).
    pub fn leases(&self) -> Result<Vec<super::LeaseInfo>, crate::SnapshotError> {
        let leases: Vec<super::snapshot::SnapLease> = crate::codec::decode_exact(&self.leases)
            .map_err(|_| crate::SnapshotError::Malformed)?;
        Ok(leases
            .into_iter()
            .map(|l| super::LeaseInfo {
                id: l.id,
                ttl: l.ttl,
                keys: l.keys.into_iter().map(|k| k.0).collect(),
            })
            .collect())
    }

    /// Starts the output over from the first byte (the same bytes come
    /// again; keys already counted are not counted twice). For a caller
    /// that measures the length in a first pass and writes in a second.
    pub fn rewind(&mut self) {
        self.phase = match (self.delta_after, self.base_len) {
            (Some(after), _) => Phase::Records {
                next: after.saturating_add(1),
            },
            (None, Some(_)) => Phase::Header,
            (None, None) => Phase::CountBase { after: None, n: 0 },
        };
        self.digest = CRC32C.digest();
        self.emitted = 0;
    }

    /// Appends the next bytes to `out`, visiting at most `max_items` keys
    /// or log records of `store` (at least one), and returns whether the
    /// snapshot is complete. `store` must be the store the stream was made
    /// from, possibly with more entries applied since.
    ///
    /// # Errors
    /// [`StreamError::Changed`] if `store` accepted a compaction or went
    /// back in revision since the freeze (it was replaced): start over.
    pub fn step(
        &mut self,
        store: &MvccStore,
        max_items: usize,
        out: &mut Vec<u8>,
    ) -> Result<bool, StreamError> {
        if !store.holds_history_of(self.revision, self.compact_revision, self.applied_index) {
            return Err(StreamError::Changed);
        }
        let max_items = max_items.max(1);
        let start = out.len();
        let phase = core::mem::replace(&mut self.phase, Phase::Done);
        self.phase = match phase {
            Phase::CountBase { after, n } => self.count_base(store, after, n, max_items)?,
            Phase::Header => {
                out.extend_from_slice(&self.prefix_bytes());
                Phase::BaseLen
            }
            Phase::BaseLen => {
                encode_into(&self.base_len.unwrap_or(0), out);
                Phase::Base { after: None, n: 0 }
            }
            Phase::Base { after, n } => self.base(store, after, n, max_items, out)?,
            Phase::AtBase => {
                let at = store.past.log_position(self.base);
                let none = Changes::default();
                let at_base = match store.past.log.get(at) {
                    Some(r) if r.revision == self.base => &r.changes,
                    _ => &none,
                };
                encode_into(at_base, out);
                Phase::Count
            }
            Phase::Count => {
                out.extend_from_slice(&self.count_bytes());
                Phase::Records {
                    next: self.base.saturating_add(1),
                }
            }
            Phase::Records { next } => match self.records(store, next, max_items, out)? {
                // A delta ends with its records.
                Phase::Tail if self.delta_after.is_some() => Phase::Done,
                p => p,
            },
            Phase::Tail => {
                out.extend_from_slice(&self.leases);
                self.digest.update(&out[start..]);
                let crc = core::mem::replace(&mut self.digest, CRC32C.digest()).finalize();
                out.extend_from_slice(&crc.to_le_bytes());
                self.emitted = self.emitted.saturating_add((out.len() - start) as u64);
                self.phase = Phase::Done;
                return Ok(true);
            }
            Phase::Done => return Ok(true),
        };
        self.digest.update(&out[start..]);
        self.emitted = self.emitted.saturating_add((out.len() - start) as u64);
        Ok(matches!(self.phase, Phase::Done))
    }

    /// Up to `max` keys of the store (live now or with history), from
    /// after `after`, with the version each had at the base revision.
    fn base_keys<'s>(
        &self,
        store: &'s MvccStore,
        after: &'s Option<Vec<u8>>,
        max: usize,
    ) -> impl Iterator<Item = (&'s Vec<u8>, Option<&'s crate::store::Entry>)> + 's {
        let from = after.as_deref().unwrap_or(&[]);
        let base = self.base;
        merged_keys(
            KeyRange::From(from),
            &store.current.map,
            &store.past.versions,
        )
        .skip_while(move |(k, _)| after.as_deref() == Some(k.as_slice()))
        .take(max)
        .map(move |(k, live)| (k, store.past.value_at(live, k, base)))
    }

    fn count_base(
        &mut self,
        store: &MvccStore,
        after: Option<Vec<u8>>,
        mut n: usize,
        max: usize,
    ) -> Result<Phase, StreamError> {
        let mut last = None;
        let mut visited = 0;
        for (key, at_base) in self.base_keys(store, &after, max) {
            visited += 1;
            n += usize::from(at_base.is_some());
            last = Some(key);
        }
        if visited < max {
            self.base_len = Some(n);
            return Ok(Phase::Header);
        }
        Ok(Phase::CountBase {
            after: last.cloned(),
            n,
        })
    }

    fn base(
        &mut self,
        store: &MvccStore,
        after: Option<Vec<u8>>,
        mut n: usize,
        max: usize,
        out: &mut Vec<u8>,
    ) -> Result<Phase, StreamError> {
        let mut last = None;
        let mut visited = 0;
        for (key, at_base) in self.base_keys(store, &after, max) {
            visited += 1;
            last = Some(key);
            let Some(e) = at_base else { continue };
            n += 1;
            let kv = KeyValueRef {
                key,
                create_revision: e.create_revision,
                mod_revision: e.mod_revision,
                version: e.version,
                value: &e.value,
            };
            encode_into(&kv, out);
        }
        if visited < max {
            // The history at the base revision cannot change while the
            // compact revision stays; a different count is a replaced store.
            if Some(n) != self.base_len {
                return Err(StreamError::Changed);
            }
            return Ok(Phase::AtBase);
        }
        Ok(Phase::Base {
            after: last.cloned(),
            n,
        })
    }

    fn records(
        &mut self,
        store: &MvccStore,
        mut next: i64,
        max: usize,
        out: &mut Vec<u8>,
    ) -> Result<Phase, StreamError> {
        let first = store.past.log_position(next);
        for record in store.past.log.iter_from(first).take(max) {
            if record.revision > self.revision {
                break;
            }
            if record.revision != next {
                return Err(StreamError::Changed);
            }
            let r = RecordRef {
                revision: record.revision,
                changes: ChangesRef(store, record),
            };
            encode_into(&r, out);
            next = next.saturating_add(1);
        }
        if next > self.revision {
            return Ok(Phase::Tail);
        }
        Ok(Phase::Records { next })
    }
}
