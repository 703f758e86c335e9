//! The replicated member registry: which members exist and their peer URLs.
//!
//! The Raft core knows members only by id. Their peer URLs are replicated
//! through the log as [`RegistryOp`] entries (etcd does the same with its
//! member attributes), applied in log order on every member, and saved in
//! snapshots. The starting point is `--initial-cluster`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

/// A change to the registry, replicated through the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegistryOp {
    /// A member with these peer URLs joins (as voter or learner: that is the
    /// core's configuration, changed by the same entry — MemberAdd puts
    /// this operation in the `ConfChange` context).
    Add {
        /// Member id.
        id: u64,
        /// Peer URLs.
        peer_urls: Vec<String>,
    },
    /// A member leaves.
    Remove {
        /// Member id.
        id: u64,
    },
}

impl RegistryOp {
    /// Encodes with postcard (the `ConfChange` context of MemberAdd and
    /// MemberRemove, and the body of a registry command).
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        Ok(postcard::to_allocvec(self)?)
    }

    /// Decodes, checking the whole input is used.
    pub fn decode(bytes: &[u8]) -> Result<RegistryOp, CodecError> {
        decode_exact(bytes)
    }
}

/// Members and their peer URLs, shared by the Raft loop (writes, in log
/// order) and the services (reads).
#[derive(Clone, Debug, Default)]
pub struct Registry {
    inner: Arc<RwLock<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Bumped by every change, so the Raft loop knows when to reconcile the
    /// transport's peers with the registry.
    generation: u64,
    members: BTreeMap<u64, Vec<String>>,
    /// Ids of removed members (never reused; their messages are answered
    /// with [`REMOVED_MESSAGE`] so they stop, as in etcd).
    removed: BTreeSet<u64>,
}

/// The status message a removed member gets from its former peers.
pub const REMOVED_MESSAGE: &str = "metalraft: this member was removed from the cluster";

impl Registry {
    /// A registry holding `members`.
    pub fn new(members: impl IntoIterator<Item = (u64, Vec<String>)>) -> Self {
        Registry {
            inner: Arc::new(RwLock::new(Inner {
                generation: 0,
                members: members.into_iter().collect(),
                removed: BTreeSet::new(),
            })),
        }
    }

    /// Applies an operation. A poisoned lock (a thread panicked while
    /// changing the registry) is an error: the registry may be half-changed.
    pub fn apply(&self, op: &RegistryOp) -> Result<(), Poisoned> {
        let mut m = self.inner.write().map_err(|_| Poisoned)?;
        m.generation += 1;
        match op {
            RegistryOp::Add { id, peer_urls } => {
                m.members.insert(*id, peer_urls.clone());
                m.removed.remove(id);
            }
            RegistryOp::Remove { id } => {
                m.members.remove(id);
                m.removed.insert(*id);
            }
        }
        Ok(())
    }

    /// Counts changes: it differs after every [`Registry::apply`] and
    /// [`Registry::replace`].
    pub fn generation(&self) -> u64 {
        self.inner.read().map(|m| m.generation).unwrap_or(u64::MAX)
    }

    /// Whether `id` is a member.
    pub fn contains(&self, id: u64) -> bool {
        self.inner
            .read()
            .map(|m| m.members.contains_key(&id))
            .unwrap_or(false)
    }

    /// Whether `id` was removed.
    pub fn is_removed(&self, id: u64) -> bool {
        self.inner
            .read()
            .map(|m| m.removed.contains(&id))
            .unwrap_or(false)
    }

    /// Ids of removed members.
    pub fn removed(&self) -> BTreeSet<u64> {
        self.inner
            .read()
            .map(|m| m.removed.clone())
            .unwrap_or_default()
    }

    /// Members and removed ids, read together (for a snapshot: a poisoned
    /// lock is an error, never an empty table).
    pub fn table(&self) -> Result<(MemberUrls, BTreeSet<u64>), Poisoned> {
        let m = self.inner.read().map_err(|_| Poisoned)?;
        Ok((m.members.clone(), m.removed.clone()))
    }

    /// Every member, by id.
    pub fn members(&self) -> BTreeMap<u64, Vec<String>> {
        self.inner
            .read()
            .map(|m| m.members.clone())
            .unwrap_or_default()
    }

    /// Replaces the content (snapshot restore).
    pub fn replace(
        &self,
        members: BTreeMap<u64, Vec<String>>,
        removed: BTreeSet<u64>,
    ) -> Result<(), Poisoned> {
        let mut m = self.inner.write().map_err(|_| Poisoned)?;
        let generation = m.generation + 1;
        *m = Inner {
            generation,
            members,
            removed,
        };
        Ok(())
    }
}

/// Peer URLs by member id.
pub type MemberUrls = BTreeMap<u64, Vec<String>>;

/// A lock was poisoned: a thread panicked while holding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the member registry's lock is poisoned")]
pub struct Poisoned;

/// A registry operation or snapshot could not be encoded or decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// postcard refused the bytes (or, encoding, the value).
    #[error("postcard: {0}")]
    Postcard(#[from] postcard::Error),
    /// The value ended before the input did.
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
}

/// What a member's snapshot holds: the registry and the key-value store.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotData {
    /// The registry.
    pub members: BTreeMap<u64, Vec<String>>,
    /// Removed member ids.
    pub removed: BTreeSet<u64>,
    /// `metalraft_kv::KvStore::snapshot` bytes.
    pub kv: Vec<u8>,
}

impl SnapshotData {
    /// Encodes with postcard.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        Ok(postcard::to_allocvec(self)?)
    }

    /// Decodes, checking the whole input is used.
    pub fn decode(bytes: &[u8]) -> Result<SnapshotData, CodecError> {
        decode_exact(bytes)
    }
}

/// postcard decoding that refuses trailing bytes.
fn decode_exact<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (v, rest) = postcard::take_from_bytes::<T>(bytes)?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes(rest.len()));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::RegistryOp;

    #[test]
    fn registry_ops_round_trip_and_garbage_is_refused() {
        for op in [
            RegistryOp::Add {
                id: 7,
                peer_urls: vec!["http://10.0.0.7:2380".into()],
            },
            RegistryOp::Remove { id: u64::MAX },
        ] {
            assert_eq!(RegistryOp::decode(&op.encode().unwrap()), Ok(op.clone()));
            let mut long = op.encode().unwrap();
            long.push(0);
            assert!(RegistryOp::decode(&long).is_err());
        }
        assert!(RegistryOp::decode(&[]).is_err());
        assert!(RegistryOp::decode(&[9, 9, 9]).is_err());
    }
}
