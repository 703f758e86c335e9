//! Chains of snapshots (issue 18, ADR 0033): a full snapshot the later
//! ones extend with deltas, so a snapshot writes what changed since the
//! previous one, not the whole store again.
//!
//! The Raft loop keeps the [`Chain`] the last snapshot left (the snapshot
//! thread updates it when a file is durable). When the next snapshot is
//! due and the chain may grow ([`Chain::may_grow`], [`Chain::may_extend`]:
//! same compact revision, same store generation, fewer than
//! [`MAX_DELTAS_PER_CHAIN`] deltas), the loop
//! serializes only the log records after the chain's revision and the
//! thread writes a delta file ([`crate::storage::delta`]) whose manifest
//! spells out the whole snapshot from the full file's `Base` and `Records`
//! bytes, the earlier deltas' records and its own. Otherwise it writes a
//! full snapshot, which starts a new chain. A compaction (new compact
//! revision) or a snapshot installed from the leader (new generation)
//! ends a chain; a restart continues the chain of the delta it loaded
//! ([`Chain::loaded`]), or starts with none after a full snapshot.
//!
//! Written bytes per snapshot: the records since the previous one plus
//! the small parts (leases, membership, auth). Nothing a chain holds is
//! ever stale: the full snapshot's base and every record stay part of
//! every later snapshot until a compaction (which ends the chain), so a
//! long chain costs files, not bytes; [`MAX_DELTAS_PER_CHAIN`] bounds the
//! files a load opens and the manifest's length.

use std::sync::{Arc, Mutex};

use metalraft_core::ConfState;
use metalraft_kv as kv;

use crate::machine::{kv_len_slot, SnapshotJob};
use crate::storage::delta::Extent;
use crate::storage::snapshot::{SnapshotFile, SnapshotWriter};
use crate::storage::StorageError;

/// Most deltas on one full snapshot: a delta's manifest lists an extent
/// per earlier delta (about 60 bytes each), and loading one opens every
/// file of its chain. At the default `--snapshot-count` (100,000) a chain
/// covers 12.8 million entries.
pub const MAX_DELTAS_PER_CHAIN: usize = 128;

/// The chain the next snapshot may extend, shared by the Raft loop and the
/// snapshot thread (which sets it once a file is durable).
pub type SharedChain = Arc<Mutex<Option<Chain>>>;

/// A full chainable snapshot and the deltas written on it so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// The key-value revision the newest snapshot of the chain carries.
    pub revision: i64,
    /// The compact revision every snapshot of the chain carries.
    pub compact_revision: i64,
    /// The store generation (bumped by restores) of the chain.
    pub generation: u64,
    /// The full snapshot's `Base` section.
    pub base: Extent,
    /// The `Records` sections, oldest first: the full snapshot's, then
    /// each delta's (empty ones left out).
    pub records: Vec<Extent>,
    /// Deltas written.
    pub deltas: usize,
}

impl Chain {
    /// Whether the next snapshot may be a delta on this chain (it has
    /// fewer than [`MAX_DELTAS_PER_CHAIN`]).
    pub fn may_grow(&self) -> bool {
        self.deltas < MAX_DELTAS_PER_CHAIN
    }

    /// Whether `job` (a delta job) extends this chain: same compact
    /// revision and store generation, and not behind it.
    pub fn may_extend(&self, job: &SnapshotJob) -> bool {
        job.is_delta()
            && job.compact_revision() == self.compact_revision
            && job.generation() == self.generation
            && job.revision() >= self.revision
    }

    /// The chain a delta loaded at start continues (so the first snapshot
    /// after a restart need not be a full one): its data's extents are
    /// `[head, Base, count, Records…, tail]` ([`finish_delta`]), and the
    /// store restored from it is at its `revision` and `compact_revision`,
    /// `generation`. `None` for any other layout.
    pub fn loaded(
        extents: &[Extent],
        revision: i64,
        compact_revision: i64,
        generation: u64,
    ) -> Option<Chain> {
        let [_, base, _, records @ .., _] = extents else {
            return None;
        };
        Some(Chain {
            revision,
            compact_revision,
            generation,
            base: base.clone(),
            records: records.to_vec(),
            deltas: records.len(),
        })
    }
}

/// What the thread writing a snapshot needs besides the pieces.
pub enum Plan {
    /// A full chainable snapshot: the chain it starts.
    Full {
        /// The job's key-value revision.
        revision: i64,
        /// Its compact revision.
        compact_revision: i64,
        /// Its store generation.
        generation: u64,
    },
    /// A delta on `chain`.
    Delta {
        /// The chain it extends.
        chain: Box<Chain>,
        /// The parts it writes besides the records.
        parts: Box<DeltaParts>,
    },
}

impl Plan {
    /// The plan of `job`, a delta on `chain` or a full snapshot.
    pub fn of(job: &SnapshotJob, chain: Option<Chain>) -> Plan {
        match chain {
            Some(chain) if chain.may_extend(job) => Plan::Delta {
                chain: Box::new(chain),
                parts: Box::new(DeltaParts {
                    head: job.head().to_vec(),
                    tail: job.tail().to_vec(),
                    prefix: job.prefix_bytes(),
                    count: job.count_bytes(),
                    leases: job.leases_bytes().to_vec(),
                    revision: job.revision(),
                }),
            },
            _ => Plan::Full {
                revision: job.revision(),
                compact_revision: job.compact_revision(),
                generation: job.generation(),
            },
        }
    }
}

/// The parts of a delta snapshot besides its records, frozen with its job.
pub struct DeltaParts {
    /// The envelope's bytes before the key-value length.
    pub head: Vec<u8>,
    /// The envelope's bytes after the key-value part.
    pub tail: Vec<u8>,
    /// The key-value header ([`kv::Section::Prefix`]).
    pub prefix: Vec<u8>,
    /// The record count ([`kv::Section::Count`]).
    pub count: Vec<u8>,
    /// The leases, before the key-value checksum.
    pub leases: Vec<u8>,
    /// The key-value revision.
    pub revision: i64,
}

/// Records, while a full chainable snapshot is written, where its `Base`
/// and `Records` sections lie in the file.
#[derive(Default)]
pub struct SectionTracker {
    current: Option<kv::Section>,
    base: Option<Extent>,
    records: Option<Extent>,
}

impl SectionTracker {
    /// The next bytes written to `w` belong to `section` (`None`: to no
    /// section the chain reuses).
    pub fn enter(&mut self, w: &mut SnapshotWriter, section: Option<kv::Section>) {
        if section == self.current {
            return;
        }
        self.close(w);
        if matches!(section, Some(kv::Section::Base | kv::Section::Records)) {
            w.begin_extent();
        }
        self.current = section;
    }

    fn close(&mut self, w: &mut SnapshotWriter) {
        match self.current.take() {
            Some(kv::Section::Base) => self.base = Some(w.end_extent()),
            Some(kv::Section::Records) => self.records = Some(w.end_extent()),
            _ => {}
        }
    }

    /// The chain the full snapshot `w` wrote starts (all its data written,
    /// not yet finished); `None` if it is not a chainable snapshot.
    pub fn chain(mut self, w: &mut SnapshotWriter, plan: &Plan) -> Option<Chain> {
        self.close(w);
        let Plan::Full {
            revision,
            compact_revision,
            generation,
        } = *plan
        else {
            return None;
        };
        Some(Chain {
            revision,
            compact_revision,
            generation,
            base: self.base?,
            records: self.records.into_iter().filter(|e| e.len > 0).collect(),
            deltas: 0,
        })
    }
}

/// Ends a delta file whose records (`own_records`, possibly empty) `w`
/// has written: writes the parts around them, with the key-value length
/// and checksum of the whole snapshot computed from the extents'
/// checksums, and the manifest. Returns the snapshot's data and the chain
/// with this delta.
pub fn finish_delta(
    mut w: SnapshotWriter,
    chain: &Chain,
    parts: &DeltaParts,
    own_records: Extent,
    conf_state: &ConfState,
) -> Result<(SnapshotFile, Chain), StorageError> {
    let mut records = chain.records.clone();
    if own_records.len > 0 {
        records.push(own_records);
    }
    let records_len: u64 = records.iter().map(|e| e.len).sum();
    let kv_len = parts.prefix.len() as u64
        + chain.base.len
        + parts.count.len() as u64
        + records_len
        + parts.leases.len() as u64
        + KV_CHECKSUM_BYTES;
    let mut crc = crc32c::crc32c(&parts.prefix);
    crc = combine(crc, &chain.base);
    crc = crc32c::crc32c_append(crc, &parts.count);
    for e in &records {
        crc = combine(crc, e);
    }
    crc = crc32c::crc32c_append(crc, &parts.leases);

    w.begin_extent();
    w.write(&parts.head)?;
    w.write(&kv_len_slot(kv_len))?;
    w.write(&parts.prefix)?;
    let front = w.end_extent();
    w.begin_extent();
    w.write(&parts.count)?;
    let count = w.end_extent();
    w.begin_extent();
    w.write(&parts.leases)?;
    w.write(&crc.to_le_bytes())?;
    w.write(&parts.tail)?;
    let end = w.end_extent();

    let mut data = vec![front, chain.base.clone(), count];
    data.extend(records.iter().cloned());
    data.push(end);
    let file = w.finish_delta(conf_state, data)?;
    let next = Chain {
        revision: parts.revision,
        records,
        deltas: chain.deltas + 1,
        ..chain.clone()
    };
    Ok((file, next))
}

/// Bytes of the key-value snapshot's checksum.
const KV_CHECKSUM_BYTES: u64 = 4;

/// `crc` extended by the bytes of `e`, from its checksum.
fn combine(crc: u32, e: &Extent) -> u32 {
    crc32c::crc32c_combine(crc, e.crc, e.len as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extent(file: &str, offset: u64) -> Extent {
        Extent {
            file: file.into(),
            offset,
            len: 10,
            crc: 7,
        }
    }

    #[test]
    fn a_loaded_delta_continues_its_chain_and_other_layouts_do_not() {
        let data = [
            extent("d2", 0),
            extent("full", 100),
            extent("d2", 10),
            extent("full", 200),
            extent("d1", 8),
            extent("d2", 20),
            extent("d2", 30),
        ];
        let c = Chain::loaded(&data, 40, 3, 1).unwrap();
        assert_eq!(c.base, data[1]);
        assert_eq!(c.records, data[3..6]);
        assert_eq!((c.revision, c.compact_revision, c.generation), (40, 3, 1));
        assert!(c.may_grow());
        assert!(Chain::loaded(&data[..3], 40, 3, 1).is_none());
        let full = Chain {
            deltas: MAX_DELTAS_PER_CHAIN,
            ..c
        };
        assert!(!full.may_grow());
    }
}
