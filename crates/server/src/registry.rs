//! The replicated member registry: which members exist, their peer URLs,
//! and the attributes each member publishes about itself (name and client
//! URLs).
//!
//! The Raft core knows members only by id. Everything else MemberList shows
//! is replicated through the log as [`RegistryOp`] entries, applied in log
//! order on every member and saved in snapshots, so every member answers
//! MemberList and MemberAdd from its own applied state, whichever peers are
//! up (etcd keeps its member store the same way):
//!
//! - MemberAdd and MemberRemove carry [`RegistryOp::Add`] /
//!   [`RegistryOp::Remove`] in the configuration change's context, so the
//!   registry and the core's configuration change in one entry;
//! - each member proposes [`RegistryOp::Publish`] with its `--name` and
//!   `--advertise-client-urls` when it starts and whenever the replicated
//!   value differs from its flags (etcd's `publish`); until then it is listed
//!   with an empty name, as etcd lists an unstarted member;
//! - MemberUpdate proposes [`RegistryOp::UpdatePeerUrls`].
//!
//! The starting point is `--initial-cluster` (peer URLs only).
//!
//! # Compatibility
//!
//! Operations and snapshots are postcard, which is not self-describing, so
//! both only ever grow at the end: new [`RegistryOp`] variants are appended
//! (a WAL written before them still decodes), and [`SnapshotData`] gained
//! its `attributes` as a last field, then `auth`, then `alarms`. A snapshot written before
//! a field is the same bytes minus the field, which the full decoder
//! refuses (input ends) and the legacy decoder accepts; a current snapshot
//! leaves trailing bytes for the legacy decoders. So each snapshot decodes
//! one way only.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

/// What a member publishes about itself: etcd's member `Attributes`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attributes {
    /// `--name`.
    pub name: String,
    /// `--advertise-client-urls`, without a trailing slash.
    pub client_urls: Vec<String>,
}

/// A change to the registry, replicated through the log. Variants are only
/// ever appended (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegistryOp {
    /// A member with these peer URLs joins (as voter or learner: that is the
    /// core's configuration, changed by the same entry — MemberAdd puts
    /// this operation in the `ConfChange` context). It has no attributes
    /// until it publishes. On a member already registered it only replaces
    /// the peer URLs: MemberUpdate wrote `Add` before
    /// [`RegistryOp::UpdatePeerUrls`] existed, and such entries stay in old
    /// WALs.
    Add {
        /// Member id.
        id: u64,
        /// Peer URLs.
        peer_urls: Vec<String>,
    },
    /// A member leaves; its id is never accepted again.
    Remove {
        /// Member id.
        id: u64,
    },
    /// A member's own name and client URLs. Ignored for an id that is not
    /// registered (a removed member's late publish, as in etcd).
    Publish {
        /// Member id (the proposer's own: the leader checks it against the
        /// sender).
        id: u64,
        /// Its attributes.
        attributes: Attributes,
    },
    /// MemberUpdate: new peer URLs, attributes unchanged. Ignored for an id
    /// that is not registered (removed between the check and the commit).
    UpdatePeerUrls {
        /// Member id.
        id: u64,
        /// Peer URLs.
        peer_urls: Vec<String>,
    },
    /// Maintenance.Alarm ACTIVATE (`activate`) or DEACTIVATE of `alarm`
    /// (etcd's `AlarmType` number) for `member_id`, as etcd replicates it.
    Alarm {
        /// The member the alarm is raised for (any id, as in etcd).
        member_id: u64,
        /// etcd's `AlarmType` (1 NOSPACE, 2 CORRUPT).
        alarm: i32,
        /// Raise (`true`) or clear it.
        activate: bool,
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

/// One registered member as MemberList shows it (the learner flag is the
/// core's configuration, not the registry's).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberRecord {
    /// Peer URLs (from MemberAdd, MemberUpdate or `--initial-cluster`).
    pub peer_urls: Vec<String>,
    /// Published attributes; empty until the member published.
    pub attributes: Attributes,
}

/// Members, their peer URLs and attributes, shared by the Raft loop
/// (writes, in log order) and the services (reads).
#[derive(Clone, Debug, Default)]
pub struct Registry {
    inner: Arc<RwLock<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Bumped by every change, so the Raft loop knows when to reconcile the
    /// transport's peers with the registry.
    generation: u64,
    members: BTreeMap<u64, MemberRecord>,
    /// Ids of removed members (never reused; their messages are answered
    /// with [`REMOVED_MESSAGE`] so they stop, as in etcd).
    removed: BTreeSet<u64>,
    /// Raised alarms: (member id, etcd `AlarmType`).
    alarms: BTreeSet<(u64, i32)>,
}

/// The status message a removed member gets from its former peers.
pub const REMOVED_MESSAGE: &str = "metalraft: this member was removed from the cluster";

impl Registry {
    /// A registry holding `members` (peer URLs), none of them published.
    pub fn new(members: impl IntoIterator<Item = (u64, Vec<String>)>) -> Self {
        let members = members
            .into_iter()
            .map(|(id, peer_urls)| {
                let record = MemberRecord {
                    peer_urls,
                    attributes: Attributes::default(),
                };
                (id, record)
            })
            .collect();
        Registry {
            inner: Arc::new(RwLock::new(Inner {
                generation: 0,
                members,
                removed: BTreeSet::new(),
                alarms: BTreeSet::new(),
            })),
        }
    }

    /// Applies an operation. A poisoned lock (a thread panicked while
    /// changing the registry) is an error: the registry may be half-changed.
    pub fn apply(&self, op: &RegistryOp) -> Result<(), Poisoned> {
        let mut m = self.inner.write().map_err(|_| Poisoned)?;
        if let RegistryOp::Alarm {
            member_id,
            alarm,
            activate,
        } = op
        {
            // Members are unchanged: no transport reconciliation.
            if *activate {
                m.alarms.insert((*member_id, *alarm));
            } else {
                m.alarms.remove(&(*member_id, *alarm));
            }
            return Ok(());
        }
        m.generation += 1;
        match op {
            RegistryOp::Alarm { .. } => {}
            RegistryOp::Add { id, peer_urls } => {
                m.members.entry(*id).or_default().peer_urls = peer_urls.clone();
                m.removed.remove(id);
            }
            RegistryOp::Remove { id } => {
                m.members.remove(id);
                m.removed.insert(*id);
            }
            RegistryOp::Publish { id, attributes } => {
                if let Some(r) = m.members.get_mut(id) {
                    r.attributes = attributes.clone();
                }
            }
            RegistryOp::UpdatePeerUrls { id, peer_urls } => {
                if let Some(r) = m.members.get_mut(id) {
                    r.peer_urls = peer_urls.clone();
                }
            }
        }
        Ok(())
    }

    /// Counts changes: it differs after every [`Registry::apply`] and
    /// [`Registry::restore`].
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

    /// Every member's peer URLs, by id.
    pub fn members(&self) -> BTreeMap<u64, Vec<String>> {
        self.inner
            .read()
            .map(|m| {
                m.members
                    .iter()
                    .map(|(id, r)| (*id, r.peer_urls.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every member with its peer URLs and attributes, by id.
    pub fn records(&self) -> BTreeMap<u64, MemberRecord> {
        self.inner
            .read()
            .map(|m| m.members.clone())
            .unwrap_or_default()
    }

    /// Member `id`'s published attributes (`None`: not registered).
    pub fn attributes(&self, id: u64) -> Option<Attributes> {
        self.inner
            .read()
            .ok()?
            .members
            .get(&id)
            .map(|r| r.attributes.clone())
    }

    /// The registry's part of a snapshot, around the key-value store's
    /// bytes. A poisoned lock is an error, never an empty table.
    pub fn snapshot_data(&self, kv: Vec<u8>) -> Result<SnapshotData, Poisoned> {
        let m = self.inner.read().map_err(|_| Poisoned)?;
        let members = m
            .members
            .iter()
            .map(|(id, r)| (*id, r.peer_urls.clone()))
            .collect();
        let attributes = m
            .members
            .iter()
            .filter(|(_, r)| r.attributes != Attributes::default())
            .map(|(id, r)| (*id, r.attributes.clone()))
            .collect();
        Ok(SnapshotData {
            members,
            removed: m.removed.clone(),
            kv,
            attributes,
            auth: Vec::new(),
            alarms: m.alarms.clone(),
        })
    }

    /// The raised alarms: (member id, etcd `AlarmType`), in order.
    pub fn alarms(&self) -> Vec<(u64, i32)> {
        self.inner
            .read()
            .map(|m| m.alarms.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Whether any member's `alarm` is raised.
    pub fn alarm_raised(&self, alarm: i32) -> bool {
        self.inner
            .read()
            .map(|m| m.alarms.iter().any(|(_, a)| *a == alarm))
            .unwrap_or(false)
    }

    /// Replaces the content with a snapshot's (restore). Attributes of ids
    /// that are not members are dropped.
    pub fn restore(&self, data: &SnapshotData) -> Result<(), Poisoned> {
        let mut m = self.inner.write().map_err(|_| Poisoned)?;
        let generation = m.generation + 1;
        let members = data
            .members
            .iter()
            .map(|(id, peer_urls)| {
                let record = MemberRecord {
                    peer_urls: peer_urls.clone(),
                    attributes: data.attributes.get(id).cloned().unwrap_or_default(),
                };
                (*id, record)
            })
            .collect();
        *m = Inner {
            generation,
            members,
            removed: data.removed.clone(),
            alarms: data.alarms.clone(),
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
/// Fields are only ever appended (see the module doc).
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotData {
    /// Peer URLs by member.
    pub members: MemberUrls,
    /// Removed member ids.
    pub removed: BTreeSet<u64>,
    /// `metalraft_kv::KvStore::snapshot` bytes, written and read as one
    /// block (hundreds of MB with a million keys; same postcard bytes as
    /// serde's element-by-element `Vec<u8>`).
    #[serde(with = "metalraft_kv::bytes")]
    pub kv: Vec<u8>,
    /// Published attributes by member (members that have not published are
    /// absent). Missing in snapshots written before attributes were
    /// replicated.
    pub attributes: BTreeMap<u64, Attributes>,
    /// The auth state ([`crate::auth::AuthState::encode`]); empty in
    /// snapshots written before auth existed, which decode as no users, no
    /// roles, auth disabled.
    #[serde(with = "metalraft_kv::bytes")]
    pub auth: Vec<u8>,
    /// Raised alarms (member id, etcd `AlarmType`); missing in snapshots
    /// written before alarms were replicated, which decode with none.
    pub alarms: BTreeSet<(u64, i32)>,
}

/// A snapshot as written before alarms were replicated.
#[derive(Deserialize)]
struct SnapshotDataV3 {
    members: MemberUrls,
    removed: BTreeSet<u64>,
    #[serde(deserialize_with = "metalraft_kv::bytes::deserialize")]
    kv: Vec<u8>,
    attributes: BTreeMap<u64, Attributes>,
    #[serde(deserialize_with = "metalraft_kv::bytes::deserialize")]
    auth: Vec<u8>,
}

/// A snapshot as written before auth was replicated.
#[derive(Deserialize)]
struct SnapshotDataV2 {
    members: MemberUrls,
    removed: BTreeSet<u64>,
    #[serde(deserialize_with = "metalraft_kv::bytes::deserialize")]
    kv: Vec<u8>,
    attributes: BTreeMap<u64, Attributes>,
}

/// A snapshot as written before attributes were replicated.
#[derive(Deserialize)]
struct SnapshotDataV1 {
    members: MemberUrls,
    removed: BTreeSet<u64>,
    #[serde(deserialize_with = "metalraft_kv::bytes::deserialize")]
    kv: Vec<u8>,
}

/// The current snapshot layout with the key-value part borrowed from the
/// input, not copied (hundreds of MB with a million keys).
#[derive(Deserialize)]
struct SnapshotDataRef<'a> {
    members: MemberUrls,
    removed: BTreeSet<u64>,
    #[serde(borrow)]
    kv: &'a [u8],
    attributes: BTreeMap<u64, Attributes>,
    #[serde(deserialize_with = "metalraft_kv::bytes::deserialize")]
    auth: Vec<u8>,
    alarms: BTreeSet<(u64, i32)>,
}

impl SnapshotData {
    /// [`decode`](Self::decode) with the key-value part handed back apart
    /// (the returned data's `kv` is empty): borrowed from `bytes` for the
    /// current layout, so a restore reads it in place.
    pub fn decode_split(
        bytes: &[u8],
    ) -> Result<(SnapshotData, std::borrow::Cow<'_, [u8]>), CodecError> {
        match postcard::take_from_bytes::<SnapshotDataRef<'_>>(bytes) {
            Ok((r, [])) => Ok((
                SnapshotData {
                    members: r.members,
                    removed: r.removed,
                    kv: Vec::new(),
                    attributes: r.attributes,
                    auth: r.auth,
                    alarms: r.alarms,
                },
                std::borrow::Cow::Borrowed(r.kv),
            )),
            _ => {
                let mut d = SnapshotData::decode(bytes)?;
                let kv = std::mem::take(&mut d.kv);
                Ok((d, std::borrow::Cow::Owned(kv)))
            }
        }
    }

    /// Encodes with postcard.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        Ok(postcard::to_allocvec(self)?)
    }

    /// Decodes, checking the whole input is used; a snapshot written before
    /// attributes were replicated decodes with none.
    pub fn decode(bytes: &[u8]) -> Result<SnapshotData, CodecError> {
        let current = match decode_exact::<SnapshotData>(bytes) {
            Ok(d) => return Ok(d),
            Err(e) => e,
        };
        if let Ok(v3) = decode_exact::<SnapshotDataV3>(bytes) {
            return Ok(SnapshotData {
                members: v3.members,
                removed: v3.removed,
                kv: v3.kv,
                attributes: v3.attributes,
                auth: v3.auth,
                alarms: BTreeSet::new(),
            });
        }
        if let Ok(v2) = decode_exact::<SnapshotDataV2>(bytes) {
            return Ok(SnapshotData {
                members: v2.members,
                removed: v2.removed,
                kv: v2.kv,
                attributes: v2.attributes,
                auth: Vec::new(),
                alarms: BTreeSet::new(),
            });
        }
        match decode_exact::<SnapshotDataV1>(bytes) {
            Ok(v1) => Ok(SnapshotData {
                members: v1.members,
                removed: v1.removed,
                kv: v1.kv,
                attributes: BTreeMap::new(),
                auth: Vec::new(),
                alarms: BTreeSet::new(),
            }),
            // Report the current format's complaint.
            Err(_) => Err(current),
        }
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
    use super::*;

    fn attrs(name: &str, url: &str) -> Attributes {
        Attributes {
            name: name.into(),
            client_urls: vec![url.into()],
        }
    }

    #[test]
    fn registry_ops_round_trip_and_garbage_is_refused() {
        for op in [
            RegistryOp::Add {
                id: 7,
                peer_urls: vec!["http://10.0.0.7:2380".into()],
            },
            RegistryOp::Remove { id: u64::MAX },
            RegistryOp::Publish {
                id: 3,
                attributes: attrs("m3", "http://10.0.0.3:2379"),
            },
            RegistryOp::UpdatePeerUrls {
                id: 3,
                peer_urls: vec!["http://10.0.0.3:2390".into()],
            },
        ] {
            assert_eq!(RegistryOp::decode(&op.encode().unwrap()), Ok(op.clone()));
            let mut long = op.encode().unwrap();
            long.push(0);
            assert!(RegistryOp::decode(&long).is_err());
        }
        assert!(RegistryOp::decode(&[]).is_err());
        assert!(RegistryOp::decode(&[9, 9, 9]).is_err());
    }

    /// postmortem guard: entries written by earlier versions sit in WALs;
    /// reordering the variants would make them decode as something else.
    #[test]
    fn wal_entries_of_earlier_versions_decode_as_written() {
        let add = [0u8, 7, 1, 1, b'a'];
        assert_eq!(
            RegistryOp::decode(&add),
            Ok(RegistryOp::Add {
                id: 7,
                peer_urls: vec!["a".into()]
            })
        );
        assert_eq!(
            RegistryOp::decode(&[1, 5]),
            Ok(RegistryOp::Remove { id: 5 })
        );
    }

    #[test]
    fn publish_and_update_keep_each_others_fields_and_ignore_strangers() {
        let r = Registry::new([(1, vec!["http://a:1".to_string()])]);
        let published = attrs("one", "http://a:2");
        r.apply(&RegistryOp::Publish {
            id: 1,
            attributes: published.clone(),
        })
        .unwrap();
        r.apply(&RegistryOp::UpdatePeerUrls {
            id: 1,
            peer_urls: vec!["http://a:3".into()],
        })
        .unwrap();
        // An old MemberUpdate entry (`Add` on a registered member).
        r.apply(&RegistryOp::Add {
            id: 1,
            peer_urls: vec!["http://a:4".into()],
        })
        .unwrap();
        let rec = &r.records()[&1];
        assert_eq!(rec.peer_urls, vec!["http://a:4".to_string()]);
        assert_eq!(rec.attributes, published);
        // Strangers: a removed member's late publish, an update that lost
        // the race with a removal.
        r.apply(&RegistryOp::Remove { id: 1 }).unwrap();
        r.apply(&RegistryOp::Publish {
            id: 1,
            attributes: published,
        })
        .unwrap();
        r.apply(&RegistryOp::UpdatePeerUrls {
            id: 9,
            peer_urls: vec!["http://z:1".into()],
        })
        .unwrap();
        assert!(r.records().is_empty());
        assert!(r.is_removed(1));
        assert_eq!(r.attributes(1), None);
    }

    #[test]
    fn snapshots_carry_attributes_and_old_snapshots_still_restore() {
        let r = Registry::new([
            (1, vec!["http://a:1".to_string()]),
            (2, vec!["http://b:1".to_string()]),
        ]);
        r.apply(&RegistryOp::Publish {
            id: 1,
            attributes: attrs("one", "http://a:2"),
        })
        .unwrap();
        r.apply(&RegistryOp::Remove { id: 3 }).unwrap();
        let data = r.snapshot_data(vec![1, 2, 3]).unwrap();
        let bytes = data.encode().unwrap();
        let decoded = SnapshotData::decode(&bytes).unwrap();
        assert_eq!(decoded, data);
        let other = Registry::default();
        other.restore(&decoded).unwrap();
        assert_eq!(other.records(), r.records());
        assert_eq!(other.removed(), r.removed());

        // The layout before attributes: the same fields, minus the last.
        #[derive(Serialize)]
        struct Old<'a> {
            members: &'a MemberUrls,
            removed: &'a BTreeSet<u64>,
            kv: &'a [u8],
        }
        let old = postcard::to_allocvec(&Old {
            members: &data.members,
            removed: &data.removed,
            kv: &data.kv,
        })
        .unwrap();
        let decoded = SnapshotData::decode(&old).unwrap();
        assert_eq!(decoded.members, data.members);
        assert_eq!(decoded.kv, data.kv);
        assert!(decoded.attributes.is_empty());
        // Split: the key-value part borrowed from the current layout,
        // owned from an old one; the rest as `decode` gives it.
        let (rest, kv) = SnapshotData::decode_split(&bytes).unwrap();
        assert!(matches!(kv, std::borrow::Cow::Borrowed(_)));
        assert_eq!(
            (&rest.members, &rest.attributes, &kv[..]),
            (&data.members, &data.attributes, &data.kv[..])
        );
        assert!(rest.kv.is_empty());
        let (rest, kv) = SnapshotData::decode_split(&old).unwrap();
        assert!(matches!(kv, std::borrow::Cow::Owned(_)));
        assert_eq!((&rest.members, &kv[..]), (&data.members, &data.kv[..]));
        let mut long = bytes.clone();
        long.push(0);
        assert!(SnapshotData::decode(&long).is_err());
        assert!(SnapshotData::decode_split(&long).is_err());
        // With no alarms the last byte is their empty length; one byte
        // less cuts into the auth state, which no layout accepts.
        let with_auth = SnapshotData {
            auth: vec![1, 2, 3],
            ..r.snapshot_data(vec![1, 2, 3]).unwrap()
        }
        .encode()
        .unwrap();
        assert!(SnapshotData::decode(&with_auth[..with_auth.len() - 2]).is_err());
    }

    #[test]
    fn alarms_apply_travel_in_snapshots_and_old_snapshots_have_none() {
        let r = Registry::new([(1, vec!["http://a:1".to_string()])]);
        let generation = r.generation();
        for (member_id, alarm, activate) in
            [(1, 1, true), (9, 2, true), (9, 2, false), (1, 1, true)]
        {
            r.apply(&RegistryOp::Alarm {
                member_id,
                alarm,
                activate,
            })
            .unwrap();
        }
        assert_eq!(r.alarms(), vec![(1, 1)]);
        assert!(r.alarm_raised(1) && !r.alarm_raised(2));
        assert_eq!(r.generation(), generation, "members unchanged");
        let data = r.snapshot_data(vec![5]).unwrap();
        let bytes = data.encode().unwrap();
        let back = SnapshotData::decode(&bytes).unwrap();
        assert_eq!(back, data);
        let fresh = Registry::new([]);
        fresh.restore(&back).unwrap();
        assert_eq!(fresh.alarms(), vec![(1, 1)]);
        // The layout before alarms: the same fields, minus the last.
        #[derive(Serialize)]
        struct V3<'a> {
            members: &'a MemberUrls,
            removed: &'a BTreeSet<u64>,
            kv: &'a [u8],
            attributes: &'a BTreeMap<u64, Attributes>,
            auth: &'a [u8],
        }
        let old = postcard::to_allocvec(&V3 {
            members: &data.members,
            removed: &data.removed,
            kv: &data.kv,
            attributes: &data.attributes,
            auth: &[1, 0],
        })
        .unwrap();
        let decoded = SnapshotData::decode(&old).unwrap();
        assert_eq!((decoded.kv, decoded.auth), (data.kv, vec![1, 0]));
        assert!(decoded.alarms.is_empty());
    }

    #[test]
    fn snapshots_from_before_auth_restore_with_no_auth_state() {
        let r = Registry::new([(1, vec!["http://a:1".to_string()])]);
        r.apply(&RegistryOp::Publish {
            id: 1,
            attributes: attrs("one", "http://a:2"),
        })
        .unwrap();
        let data = SnapshotData {
            auth: vec![1, 0, 0, 0, 0],
            ..r.snapshot_data(vec![7, 7]).unwrap()
        };
        assert_eq!(SnapshotData::decode(&data.encode().unwrap()).unwrap(), data);
        // The layout before auth: the same fields, minus the last.
        #[derive(Serialize)]
        struct V2<'a> {
            members: &'a MemberUrls,
            removed: &'a BTreeSet<u64>,
            kv: &'a [u8],
            attributes: &'a BTreeMap<u64, Attributes>,
        }
        let old = postcard::to_allocvec(&V2 {
            members: &data.members,
            removed: &data.removed,
            kv: &data.kv,
            attributes: &data.attributes,
        })
        .unwrap();
        let decoded = SnapshotData::decode(&old).unwrap();
        assert_eq!(decoded.attributes, data.attributes);
        assert_eq!(decoded.kv, data.kv);
        assert!(decoded.auth.is_empty());
    }
}
