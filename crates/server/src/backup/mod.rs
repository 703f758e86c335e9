//! Backups: the file `etcdctl snapshot save` writes from a member, read back
//! by `metalraft snapshot status` and turned into a new member's data
//! directory by `metalraft snapshot restore` (what etcd 3.4's `etcdctl
//! snapshot status|restore` do with etcd's files).
//!
//! File layout, as the Maintenance `Snapshot` RPC streams it
//! ([`crate::api::etcd_snapshot_frame`]): etcd 3.4's database — a bbolt
//! file with etcd's buckets ([`etcd_db`]), which `etcdctl snapshot status`
//! checks and `etcdctl snapshot restore` turns into an etcd member — plus a
//! bucket holding the `metalraft-kv` snapshot that `metalraft snapshot
//! restore` reads; then the SHA-256 of everything before it (as etcd
//! appends). Files written before this layout (a bare `metalraft-kv`
//! snapshot zero-padded to [`SNAPSHOT_PAGE_BYTES`]) are still read. A
//! backup of etcd 3.4 itself (no metalraft bucket) is imported from etcd's
//! buckets, so a cluster moves from etcd to metalraft the way etcd
//! restores one.
//!
//! Restoring creates a new cluster, as etcd does: every member of
//! `--initial-cluster` is restored from the same file with the same flags
//! and gets the same starting state — a Raft snapshot at index
//! [`RESTORED_INDEX`] holding the keys (revisions kept) and the new member
//! registry. Nothing of the old cluster's membership or log survives.

pub mod etcd_db;
pub mod live;
pub mod spool;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use metalraft_core::{ConfState, HardState, SnapshotInstall, SnapshotMeta, BOOTSTRAP_TERM};
use metalraft_kv as kv;
use sha2::Digest;

use crate::api::SNAPSHOT_PAGE_BYTES;
use crate::config::MemberConfig;
use crate::member::{write_identity, Identity, MemberError};
use crate::registry::SnapshotData;
use crate::storage::{Snapshot, Storage, StorageError, WalOptions, WriteBatch};

/// Bytes of the trailing SHA-256.
pub const DIGEST_BYTES: usize = 32;
/// Log index of the snapshot a restored member starts from (the index a
/// new cluster's bootstrap entry takes).
pub const RESTORED_INDEX: u64 = 1;
/// Suffix of the directory a restore is built in before it is renamed into
/// place, so an interrupted restore never leaves a half-made data directory.
pub const RESTORE_TMP_SUFFIX: &str = ".restore-tmp";

/// Why a backup could not be read or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A bbolt database that is damaged or holds no metalraft snapshot.
    #[error("{path}: {reason}")]
    Database {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: etcd_db::DbError,
    },
    /// The size is not pages plus a digest.
    #[error(
        "{path}: {len} bytes is not a snapshot file (512-byte pages followed by a 32-byte SHA-256)"
    )]
    NotBackup {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// The trailing SHA-256 does not match.
    #[error("{path}: SHA-256 mismatch, the file is damaged or incomplete (--skip-hash-check skips this check)")]
    HashMismatch {
        /// The file.
        path: PathBuf,
    },
    /// The content is not a valid `metalraft-kv` snapshot.
    #[error("{path}: not a metalraft snapshot: {reason}")]
    Snapshot {
        /// The file.
        path: PathBuf,
        /// What the snapshot reader refused.
        reason: kv::SnapshotError,
    },
    /// Something other than zero padding follows the snapshot.
    #[error("{path}: {len} bytes after the snapshot at offset {offset} are not zero padding")]
    BadPadding {
        /// The file.
        path: PathBuf,
        /// Offset of the first byte after the snapshot.
        offset: usize,
        /// How many bytes follow it.
        len: usize,
    },
    /// The target data directory exists.
    #[error("data directory {path} already exists; restore into a new one")]
    DataDirExists {
        /// The directory.
        path: PathBuf,
    },
    /// Writing the new data directory failed.
    #[error("{0}")]
    Storage(#[from] StorageError),
    /// Writing the member identity failed.
    #[error("{0}")]
    Member(#[from] MemberError),
    /// The snapshot could not be encoded.
    #[error("encoding the snapshot: {0}")]
    Encode(#[from] crate::registry::CodecError),
}

/// What `metalraft snapshot status` prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupInfo {
    /// etcdctl's hash: CRC-32C of the database's buckets (for a file of the
    /// older layout, the snapshot's own CRC-32C).
    pub hash: u32,
    /// etcdctl's revision: the newest version's (the store's revision for
    /// the older layout).
    pub revision: i64,
    /// The compacted revision.
    pub compact_revision: i64,
    /// etcdctl's total keys: items in all buckets (keys for the older
    /// layout).
    pub total_keys: usize,
    /// etcdctl's total size: the database's pages (the file's size for the
    /// older layout).
    pub total_size: u64,
    /// The restored store's revision (what a restored member serves).
    pub store_revision: i64,
    /// Live keys in the restored store.
    pub live_keys: usize,
}

/// Reads and checks a backup file; with `check_hash` the trailing SHA-256
/// must match (etcdctl's default; `--skip-hash-check` turns it off).
pub fn read(path: &Path, check_hash: bool) -> Result<(kv::MvccStore, BackupInfo), BackupError> {
    let bytes = std::fs::read(path).map_err(|source| BackupError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let not_backup = || BackupError::NotBackup {
        path: path.to_path_buf(),
        len: bytes.len() as u64,
    };
    let body_len = bytes
        .len()
        .checked_sub(DIGEST_BYTES)
        .ok_or_else(not_backup)?;
    if body_len == 0 || body_len % SNAPSHOT_PAGE_BYTES != 0 {
        return Err(not_backup());
    }
    let (body, digest) = bytes.split_at(body_len);
    if check_hash && sha2::Sha256::digest(body).as_slice() != digest {
        return Err(BackupError::HashMismatch {
            path: path.to_path_buf(),
        });
    }
    if etcd_db::looks_like_bolt(body) {
        let db_err = |reason| BackupError::Database {
            path: path.to_path_buf(),
            reason,
        };
        let status = etcd_db::status(body).map_err(db_err)?;
        let store = etcd_db::restore(body).map_err(|e| match e {
            etcd_db::RestoreError::Snapshot(reason) => BackupError::Snapshot {
                path: path.to_path_buf(),
                reason,
            },
            etcd_db::RestoreError::Db(reason) => db_err(reason),
        })?;
        let info = BackupInfo {
            hash: status.hash,
            revision: status.revision,
            compact_revision: store.compact_revision(),
            total_keys: status.total_keys,
            total_size: status.total_size,
            store_revision: store.revision(),
            live_keys: store.len(),
        };
        return Ok((store, info));
    }
    // Backups written before etcd's layout (a bare `metalraft-kv`
    // snapshot, zero-padded) still restore.
    let (store, len) =
        kv::MvccStore::restore_prefix(body).map_err(|reason| BackupError::Snapshot {
            path: path.to_path_buf(),
            reason,
        })?;
    if body[len..].iter().any(|b| *b != 0) {
        return Err(BackupError::BadPadding {
            path: path.to_path_buf(),
            offset: len,
            len: body_len - len,
        });
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&body[len - 4..len]);
    let info = BackupInfo {
        hash: u32::from_le_bytes(crc),
        revision: store.revision(),
        compact_revision: store.compact_revision(),
        total_keys: store.len(),
        total_size: bytes.len() as u64,
        store_revision: store.revision(),
        live_keys: store.len(),
    };
    Ok((store, info))
}

/// Creates `cfg.data_dir` for member `cfg.name` of a new cluster
/// (`cfg.initial_cluster`, `cfg.cluster_token`) holding the backup's keys.
/// Start the member afterwards with the same flags. Refuses an existing
/// data directory; builds the new one beside it and renames it into place.
pub fn restore(
    file: &Path,
    cfg: &MemberConfig,
    check_hash: bool,
) -> Result<BackupInfo, BackupError> {
    let (mut store, info) = read(file, check_hash)?;
    let target = &cfg.data_dir;
    if target.exists() {
        return Err(BackupError::DataDirExists {
            path: target.clone(),
        });
    }
    let mut tmp = target.as_os_str().to_owned();
    tmp.push(RESTORE_TMP_SUFFIX);
    let tmp = PathBuf::from(tmp);
    if tmp.exists() {
        // Left by an interrupted restore: never a member's data.
        std::fs::remove_dir_all(&tmp).map_err(|e| StorageError::from_io(&tmp, e))?;
    }
    store.rebase_applied_index(RESTORED_INDEX);
    let members: BTreeMap<u64, Vec<String>> = cfg
        .initial_cluster
        .iter()
        .map(|p| {
            let urls = p
                .peer_urls
                .iter()
                .map(|u| u.as_str().trim_end_matches('/').to_string())
                .collect();
            (p.id, urls)
        })
        .collect();
    let voters: Vec<u64> = members.keys().copied().collect();
    let conf_state = ConfState::with_voters(&voters);
    let data = SnapshotData {
        members: members.clone(),
        removed: BTreeSet::new(),
        kv: store.snapshot(),
        // Each member publishes its name and client URLs when it starts.
        attributes: BTreeMap::new(),
        // A backup holds keys only: a restored cluster starts with auth
        // disabled and no users or roles (etcd's restore keeps them).
        auth: Vec::new(),
        // etcd's restore drops alarms too.
        alarms: BTreeSet::new(),
    }
    .encode()?;
    let snap = Snapshot {
        index: RESTORED_INDEX,
        term: BOOTSTRAP_TERM,
        conf_state: conf_state.clone(),
        data,
    };
    {
        let opened = Storage::open(&tmp, ConfState::default(), WalOptions::default())?;
        let mut storage = opened.storage;
        storage.install_snapshot(
            &snap,
            &SnapshotInstall {
                meta: SnapshotMeta {
                    index: RESTORED_INDEX,
                    term: BOOTSTRAP_TERM,
                    conf_state,
                },
                keep_entries_after: false,
            },
        )?;
        storage.write(
            &[WriteBatch {
                entries: Vec::new(),
                hard_state: Some(HardState {
                    term: BOOTSTRAP_TERM,
                    vote: None,
                    commit: RESTORED_INDEX,
                }),
                clears_repair: false,
            }],
            true,
        )?;
        write_identity(
            &tmp.join("member").join(crate::member::IDENTITY_FILE),
            &Identity {
                cluster_id: cfg.cluster_id,
                member_id: cfg.id,
                initial_members: members,
            },
        )?;
    }
    std::fs::rename(&tmp, target).map_err(|e| StorageError::from_io(target, e))?;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::from_io(parent, e))?;
    Ok(info)
}

/// `metalraft snapshot status -w table`, laid out like etcdctl's.
pub fn status_table(i: &BackupInfo) -> String {
    let header = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
    let row = [
        // etcdctl prints `%x`: no leading zeros.
        format!("{:x}", i.hash),
        i.revision.to_string(),
        i.total_keys.to_string(),
        human_bytes(i.total_size),
    ];
    let widths: Vec<usize> = header
        .iter()
        .zip(&row)
        .map(|(h, r)| h.len().max(r.len()) + 2)
        .collect();
    let line: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(*w)))
        .collect::<String>()
        + "+";
    // etcdctl's table: headers centred, cells right-aligned, one space of
    // margin.
    let cells = |cols: &[String], right: bool| -> String {
        cols.iter()
            .zip(&widths)
            .map(|(c, w)| {
                if right {
                    format!("| {c:>0$} ", w - 2)
                } else {
                    format!("|{c:^w$}")
                }
            })
            .collect::<String>()
            + "|"
    };
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    format!(
        "{line}\n{}\n{line}\n{}\n{line}\n",
        cells(&header, false),
        cells(&row, true)
    )
}

/// `metalraft snapshot status -w json`, with etcdctl's field names.
pub fn status_json(i: &BackupInfo) -> String {
    format!(
        "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}}}\n",
        i.hash, i.revision, i.total_keys, i.total_size
    )
}

/// Sizes as etcdctl prints them (`2.1 MB`: decimal units).
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    // go-humanize's `Bytes`, which etcdctl uses: one decimal place below
    // 10 of the unit (rounded to it first), none from 10 on.
    let v = (v * 10.0 + 0.5).floor() / 10.0;
    if u == 0 {
        format!("{n} B")
    } else if v < 10.0 {
        format!("{v:.1} {}", UNITS[u])
    } else {
        format!("{v:.0} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_like_etcdctl() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(2_100_000), "2.1 MB");
        // etcdctl 3.4.23 printed "37 kB" for 36,864 bytes.
        assert_eq!(human_bytes(36_864), "37 kB");
        assert_eq!(human_bytes(9_960), "10 kB");
        assert_eq!(human_bytes(1_234), "1.2 kB");
    }

    #[test]
    fn status_table_has_etcdctls_columns() {
        let t = status_table(&BackupInfo {
            hash: 0xfe01cf57,
            revision: 10,
            compact_revision: 0,
            total_keys: 7,
            total_size: 36_864,
            store_revision: 10,
            live_keys: 3,
        });
        assert!(
            t.contains("|   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |"),
            "{t}"
        );
        assert!(
            t.contains("| fe01cf57 |       10 |          7 |      37 kB |"),
            "{t}"
        );
    }
}
