//! The server's replicated state machine: the key-value store, the
//! member registry and the auth state ([`crate::auth`]), driven by
//! [`metalraft_replica::Replica`].
//!
//! Both halves are shared with the gRPC services (serializable reads, the
//! member list) behind locks, and written only here, in log order, on the
//! Raft loop's task. A snapshot holds both ([`SnapshotData`]), so a member
//! that installs one from its leader gets the member table with the keys.
//!
//! Snapshots are taken off the apply path ([`SnapshotJob`], issue 18): the
//! replica only says one is due, the loop freezes the state here in
//! O(leases and members), and the loop serializes it from the live store
//! in steps of [`SNAPSHOT_STEP_ITEMS`] keys or log records between its
//! rounds, handing the pieces to a thread that writes the snapshot file.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use metalraft_core::{ConfChange, Index, Term};
use metalraft_kv as kv;
use metalraft_replica::{Instant, KvError, MvccEvent, StateMachine, StateMachineError};

use crate::auth::{Auth, AuthError, AuthOp, AuthState};
use crate::command::{self, CommandError, KIND_AUTH, KIND_KV};
use crate::latency::{Latency, Stage};
use crate::lease::LeaseClock;
use crate::registry::{CodecError, Registry, RegistryOp, SnapshotData};
use crate::storage::snapshot::{self, PreparedSnapshot};
use crate::watch::WatchFeed;
use crate::writer::DurationHistogram;

/// etcd's `AlarmType_NOSPACE`.
pub const NOSPACE_ALARM: i32 = 1;

/// What a proposer gets back from an applied command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// A key-value command's result.
    Kv(kv::CommandResult),
    /// A registry change was applied.
    Registry,
    /// An auth change was applied.
    Auth,
}

/// Why an applied command produced no result. Deterministic: every member
/// refuses the same command alike, and the state is unchanged (but for the
/// applied index).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The key-value store refused the command (etcd's error to the client).
    Kv(kv::RequestError),
    /// The command does not decode (a bug in some member's encoder).
    Undecodable(CommandError),
    /// The auth store refused the change (etcd's error to the client).
    Auth(AuthError),
    /// A write that adds data while the NOSPACE alarm is raised (etcd's
    /// capped applier): `etcdserver: mvcc: database space exceeded`.
    NoSpace,
}

/// Why a snapshot of this state machine could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The registry/key-value envelope does not decode.
    #[error("snapshot envelope: {0}")]
    Envelope(#[from] CodecError),
    /// The key-value snapshot does not restore.
    #[error("key-value snapshot: {0}")]
    Kv(#[from] kv::SnapshotError),
    /// A lock was poisoned.
    #[error("{0}")]
    Poisoned(#[from] crate::registry::Poisoned),
}

/// Decodes snapshot `data` and restores its key-value store; the returned
/// envelope's `kv` is emptied (its bytes are no longer needed). Logs how
/// long each part took: with a million keys a restore takes seconds
/// (issue 18; the breakdown is in crates/kv/README.md, "Restore time").
fn open_snapshot(data: &[u8]) -> Result<(SnapshotData, kv::MvccStore), RestoreError> {
    let started = std::time::Instant::now();
    let (decoded, kv_bytes) = SnapshotData::decode_split(data)?;
    let envelope = started.elapsed();
    let store = kv::MvccStore::restore(&kv_bytes)?;
    let restored = started.elapsed();
    drop(kv_bytes);
    tracing::info!(
        bytes = data.len(),
        keys = store.len(),
        revision = store.revision(),
        envelope_ms = envelope.as_millis() as u64,
        kv_restore_ms = restored.saturating_sub(envelope).as_millis() as u64,
        "decoded the snapshot and restored its key-value store"
    );
    Ok((decoded, store))
}

/// Keys or log records a snapshot job serializes per step. Steps run on
/// the Raft loop, between its rounds (issue 18: a step on another thread
/// held the store's lock, and when that thread was preempted inside a step
/// every apply waited for it, up to 205 ms; docs/latency-budget.md). 128
/// items of 256-byte values take tens of µs.
pub const SNAPSHOT_STEP_ITEMS: usize = 128;

/// Bytes of the slot that holds the key-value part's length in the
/// snapshot's envelope: the longest postcard varint of a `u64`. The length
/// is known only once the part is written (one pass over the store), so the
/// slot is reserved before it and filled at the end with the length as a
/// varint padded to this width ([`kv_len_slot`]), which postcard decodes
/// as the same number.
pub const KV_LEN_SLOT_BYTES: usize = kv::PADDED_VARINT_BYTES;

/// `len` as a postcard varint of exactly [`KV_LEN_SLOT_BYTES`] bytes: every
/// byte but the last carries the continuation bit ([`kv::padded_varint`]).
pub fn kv_len_slot(len: u64) -> [u8; KV_LEN_SLOT_BYTES] {
    kv::padded_varint(len)
}

/// Why a [`SnapshotJob`] stopped. Nothing is lost: the WAL keeps every
/// entry, and the replica tries again at the next threshold.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotJobError {
    /// A compaction was applied, or a snapshot from the leader installed,
    /// while the snapshot was being written.
    #[error("the store was compacted or replaced during the snapshot")]
    Changed,
    /// A lock was poisoned.
    #[error("the store's lock is poisoned")]
    Poisoned,
    /// The member is stopping.
    #[error("the member is stopping")]
    Cancelled,
    /// The registry or auth part did not encode.
    #[error("snapshot envelope: {0}")]
    Envelope(#[from] CodecError),
}

/// A snapshot of the state machine frozen at one applied index and
/// serialized in steps on the Raft loop, in one pass: the [`SnapshotData`]
/// envelope [`StateMachine::snapshot`] returned at that index, as
/// `head | kv length slot | key-value part | tail`.
///
/// The envelope's bytes are [`head`](Self::head), then the
/// [`KV_LEN_SLOT_BYTES`]-byte slot, filled at the end with
/// [`kv_len_slot`]`(`[`kv_len`](Self::kv_len)`)`, then the pieces of
/// [`step`](Self::step) until it says done, then [`tail`](Self::tail). They
/// decode to what `snapshot()` returned; the key-value part is the same
/// bytes, the length before it is a padded varint.
pub struct SnapshotJob {
    store: Arc<RwLock<kv::MvccStore>>,
    stream: kv::SnapshotStream,
    /// Only the log records after an earlier chainable snapshot
    /// ([`ServerMachine::chained_snapshot_job`]).
    delta: bool,
    /// Bumped by every restore; the job gives up if it moved.
    generation: Arc<AtomicU64>,
    frozen_generation: u64,
    /// The encoded members and removed ids.
    head: Vec<u8>,
    /// The encoded attributes and auth state.
    tail: Vec<u8>,
    /// Where a step's time goes (`snapshot_step`).
    latency: Arc<Latency>,
}

impl SnapshotJob {
    /// The applied index the snapshot carries.
    pub fn index(&self) -> Index {
        self.stream.applied_index()
    }

    /// The envelope's bytes before the key-value length slot.
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// Whether the steps write only the log records after an earlier
    /// chainable snapshot (the rest of the snapshot is that snapshot's
    /// bytes and this job's [`prefix_bytes`](Self::prefix_bytes),
    /// [`count_bytes`](Self::count_bytes) and
    /// [`leases_bytes`](Self::leases_bytes); see
    /// [`kv::MvccStore::snapshot_delta_stream`]).
    pub fn is_delta(&self) -> bool {
        self.delta
    }

    /// The part of the key-value snapshot the next step writes.
    pub fn section(&self) -> Option<kv::Section> {
        self.stream.section()
    }

    /// The key-value revision the snapshot carries.
    pub fn revision(&self) -> i64 {
        self.stream.revision()
    }

    /// The key-value compact revision the snapshot carries.
    pub fn compact_revision(&self) -> i64 {
        self.stream.compact_revision()
    }

    /// The store's generation (bumped by every restore) at the freeze.
    pub fn generation(&self) -> u64 {
        self.frozen_generation
    }

    /// The key-value header as written ([`kv::Section::Prefix`]).
    pub fn prefix_bytes(&self) -> Vec<u8> {
        self.stream.prefix_bytes()
    }

    /// The record count as written ([`kv::Section::Count`]).
    pub fn count_bytes(&self) -> Vec<u8> {
        self.stream.count_bytes()
    }

    /// The leases as written, before the key-value checksum.
    pub fn leases_bytes(&self) -> &[u8] {
        self.stream.leases_bytes()
    }

    /// The envelope's bytes after the key-value part.
    pub fn tail(&self) -> &[u8] {
        &self.tail
    }

    /// Bytes of the key-value part emitted so far (its length once
    /// [`step`](Self::step) said done).
    pub fn kv_len(&self) -> u64 {
        self.stream.emitted()
    }

    /// Appends the next piece of the key-value part (at most
    /// [`SNAPSHOT_STEP_ITEMS`] keys or log records) to `out`; `true` once
    /// the last was appended. Meant for the thread that applies (the Raft
    /// loop), so no apply ever waits for a step; it takes the store's read
    /// lock, which only the apply contends for.
    pub fn step(&mut self, out: &mut Vec<u8>) -> Result<bool, SnapshotJobError> {
        let started = std::time::Instant::now();
        let store = self.store.read().map_err(|_| SnapshotJobError::Poisoned)?;
        if self.generation.load(Ordering::Acquire) != self.frozen_generation {
            return Err(SnapshotJobError::Changed);
        }
        let r = self
            .stream
            .step(&store, SNAPSHOT_STEP_ITEMS, out)
            .map_err(|_: kv::StreamError| SnapshotJobError::Changed);
        drop(store);
        self.latency.since(Stage::SnapshotStep, started);
        r
    }

    /// The whole envelope in one go (the steps run back to back).
    pub fn run_to_end(&mut self) -> Result<Vec<u8>, SnapshotJobError> {
        let mut out = self.head.clone();
        out.extend_from_slice(&[0; KV_LEN_SLOT_BYTES]);
        let at = out.len();
        while !self.step(&mut out)? {}
        out[at - KV_LEN_SLOT_BYTES..at].copy_from_slice(&kv_len_slot(self.kv_len()));
        out.extend_from_slice(&self.tail);
        Ok(out)
    }
}

/// The key-value store and the member registry as one [`StateMachine`].
///
/// Linearizable reads are barriers (`Query = ()`): the replica answers once
/// this member has applied the read index, and the gRPC task then reads the
/// store under its lock, so range scans never run on the Raft loop.
#[derive(Debug)]
pub struct ServerMachine {
    kv: Arc<RwLock<kv::MvccStore>>,
    registry: Registry,
    auth: Auth,
    /// The store's applied index, kept here so the replica's frequent
    /// `applied_index()` calls take no lock.
    applied: Index,
    /// The leader's lease deadlines (not replicated), shared with the Lease
    /// service for keepalives.
    leases: LeaseClock,
    /// Where applied events go (`crate::watch`): the store reports them only
    /// while someone is subscribed.
    watch_feed: WatchFeed,
    /// Bumped whenever the store is replaced (restore), so a snapshot job
    /// reading it from another thread notices.
    generation: Arc<AtomicU64>,
    /// The write path's stage histograms (`apply_lock_wait`, `apply`).
    latency: Arc<Latency>,
    /// How long each applied key-value command held the store's write lock
    /// (`etcd_disk_backend_commit_duration_seconds`): the MVCC store's
    /// commit, which etcd makes in a bbolt transaction.
    backend_commits: Arc<DurationHistogram>,
    /// The snapshot being received from the leader, whose file the restore
    /// writes alongside ([`ReceivedFile`]).
    received: ReceivedFile,
}

/// A snapshot received from the leader is saved while the state machine
/// restores from it (issue 18: saving it after the restore took ~2 s of a
/// 1,000,000-key catch-up): the restore writes and syncs its file under a
/// temporary name on a second thread from the same bytes, and the WAL
/// writer renames it where it saved the snapshot before
/// ([`crate::storage::Storage::install_received_snapshot`]). The order the
/// install needs is unchanged: the file is a snapshot only once renamed,
/// before the log is reset and the install acknowledged.
#[derive(Debug, Default)]
struct ReceivedFile {
    /// The member's snapshot directory (none: files are written after the
    /// restore, by the writer, as before).
    dir: Option<std::path::PathBuf>,
    /// The snapshot the leader is sending (from its chunks' metadata).
    expected: Option<metalraft_core::SnapshotMeta>,
    /// Its file, written and synced by the restore, not yet committed.
    prepared: Option<PreparedSnapshot>,
}

impl ServerMachine {
    /// A state machine over an empty store and `registry`.
    pub fn new(registry: Registry) -> Self {
        ServerMachine {
            kv: Arc::new(RwLock::new(kv::MvccStore::new())),
            registry,
            auth: Auth::new(),
            applied: 0,
            leases: LeaseClock::new(),
            watch_feed: WatchFeed::new(),
            generation: Arc::new(AtomicU64::new(0)),
            latency: Arc::default(),
            backend_commits: Arc::default(),
            received: ReceivedFile::default(),
        }
    }

    /// Writes the file of each snapshot received from the leader into
    /// `dir` while restoring from it ([`ReceivedFile`]).
    pub fn set_snapshot_dir(&mut self, dir: std::path::PathBuf) {
        self.received.dir = Some(dir);
    }

    /// Records that the leader is sending the snapshot `meta` (called for
    /// each of its chunks; cheap when it is the one already recorded).
    pub fn expect_snapshot(&mut self, meta: &metalraft_core::SnapshotMeta) {
        if self.received.dir.is_some()
            && self
                .received
                .expected
                .as_ref()
                .is_none_or(|m| (m.index, m.term) != (meta.index, meta.term))
        {
            self.received.expected = Some(meta.clone());
        }
    }

    /// The file the restore of snapshot `index` wrote, if it did.
    pub fn take_prepared(&mut self, index: Index) -> Option<PreparedSnapshot> {
        self.received.prepared.take().filter(|p| p.index() == index)
    }

    /// Replaces the whole state with the snapshot `data` of `index`.
    fn restore_state(&mut self, index: Index, data: &[u8]) -> Result<(), StateMachineError> {
        // Check before changing anything: on error the state stays as it was.
        let (decoded, store) = open_snapshot(data).map_err(|_| StateMachineError::BadSnapshot)?;
        let auth = AuthState::decode(&decoded.auth).map_err(|_| StateMachineError::BadSnapshot)?;
        if store.applied_index() != index {
            return Err(StateMachineError::Inconsistent);
        }
        {
            // Bumped under the lock: a job's next step sees both or neither.
            let mut kv = self.store()?;
            *kv = store;
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        self.registry
            .restore(&decoded)
            .map_err(|_| StateMachineError::Unavailable)?;
        self.auth.restore(auth);
        self.applied = index;
        Ok(())
    }

    /// Records this machine's stages (and its snapshot jobs') in `latency`
    /// (the member's, exported in `/metrics`).
    pub fn set_latency(&mut self, latency: Arc<Latency>) {
        self.latency = latency;
    }

    /// The store's commit latencies, for `/metrics`.
    pub fn backend_commits(&self) -> Arc<DurationHistogram> {
        self.backend_commits.clone()
    }

    /// Freezes the state for a snapshot at the current applied index (the
    /// replica said one is due: [`metalraft_replica::SnapshotDue`]). Cheap:
    /// the registry, the auth state and the leases are copied; the keys and
    /// their history are read later, by the job, from the live store.
    pub fn snapshot_job(&self) -> Result<SnapshotJob, SnapshotJobError> {
        let stream = self
            .kv
            .read()
            .map_err(|_| SnapshotJobError::Poisoned)?
            .snapshot_stream();
        self.job_of(stream, false)
    }

    /// A job for the snapshot of the state as it is now that a later delta
    /// can extend ([`kv::MvccStore::chainable_snapshot_stream`]), or, with
    /// `delta_after`, the delta after the chainable snapshot at that
    /// key-value revision (a full chainable job if the store's revision is
    /// not at or after it). The caller checks the compact revision and
    /// generation match the earlier snapshot's.
    pub fn chained_snapshot_job(
        &self,
        delta_after: Option<i64>,
    ) -> Result<SnapshotJob, SnapshotJobError> {
        let store = self.kv.read().map_err(|_| SnapshotJobError::Poisoned)?;
        let (stream, delta) = match delta_after.and_then(|r| store.snapshot_delta_stream(r)) {
            Some(s) => (s, true),
            None => (store.chainable_snapshot_stream(), false),
        };
        drop(store);
        self.job_of(stream, delta)
    }

    fn job_of(
        &self,
        stream: kv::SnapshotStream,
        delta: bool,
    ) -> Result<SnapshotJob, SnapshotJobError> {
        let data = self
            .registry
            .snapshot_data(Vec::new())
            .map_err(|_| SnapshotJobError::Poisoned)?;
        let auth = self.auth.snapshot().encode()?;
        // Field order of `SnapshotData`: members, removed, kv, attributes,
        // auth, alarms.
        let head =
            postcard::to_allocvec(&(&data.members, &data.removed)).map_err(CodecError::from)?;
        let tail = postcard::to_allocvec(&(&data.attributes, &auth, &data.alarms))
            .map_err(CodecError::from)?;
        Ok(SnapshotJob {
            store: self.kv.clone(),
            stream,
            delta,
            generation: self.generation.clone(),
            frozen_generation: self.generation.load(Ordering::Acquire),
            head,
            tail,
            latency: self.latency.clone(),
        })
    }

    /// The feed of applied events, for Watch and the concurrency services.
    pub fn watch_feed(&self) -> WatchFeed {
        self.watch_feed.clone()
    }

    /// The store's generation (bumped by every restore; a snapshot chain
    /// belongs to one).
    pub fn store_generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The lease clock, shared with the Lease service.
    pub fn leases(&self) -> LeaseClock {
        self.leases.clone()
    }

    /// Restores the store and the registry from snapshot `data` (taken at
    /// index `index`, or a restored backup); returns the store's applied
    /// index, which is at most `index`.
    pub fn recover(&mut self, index: Index, data: &[u8]) -> Result<Index, RestoreError> {
        let (decoded, store) = open_snapshot(data)?;
        let auth = AuthState::decode(&decoded.auth)?;
        let applied = store.applied_index().min(index);
        {
            // Bumped under the lock: a job's next step sees both or neither.
            let mut kv = self.kv.write().map_err(|_| crate::registry::Poisoned)?;
            *kv = store;
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        self.registry.restore(&decoded)?;
        self.auth.restore(auth);
        self.applied = applied;
        Ok(applied)
    }

    /// The store, shared with the gRPC services (read it under the lock).
    pub fn kv(&self) -> Arc<RwLock<kv::MvccStore>> {
        self.kv.clone()
    }

    /// The member registry, shared with the gRPC services.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The auth state, shared with the gRPC services.
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    fn store(&self) -> Result<std::sync::RwLockWriteGuard<'_, kv::MvccStore>, StateMachineError> {
        self.kv.write().map_err(|_| StateMachineError::Unavailable)
    }

    fn mark_applied(&mut self, index: Index) -> Result<(), StateMachineError> {
        self.store()?
            .mark_applied(index)
            .map_err(|_| StateMachineError::Inconsistent)?;
        self.applied = index;
        Ok(())
    }

    fn apply_registry(&mut self, index: Index, op: &RegistryOp) -> Result<(), StateMachineError> {
        self.mark_applied(index)?;
        self.registry
            .apply(op)
            .map_err(|_| StateMachineError::Unavailable)
    }
}

impl StateMachine for ServerMachine {
    type Output = Result<Applied, Refused>;
    type Query = ();
    type ReadOutput = ();
    type Event = MvccEvent;

    fn applied_index(&self) -> Index {
        self.applied
    }

    fn apply(
        &mut self,
        index: Index,
        term: Term,
        cmd: &[u8],
        events: Option<&mut Vec<MvccEvent>>,
    ) -> Result<Self::Output, StateMachineError> {
        let refused = match command::split_command(cmd) {
            Ok((KIND_KV, body))
                if self.registry.alarm_raised(NOSPACE_ALARM)
                    && kv::Command::decode(body).is_ok_and(|c| command::adds_data(&c)) =>
            {
                // etcd's capped applier: every member has the same alarms
                // at this index, so every member refuses alike.
                self.mark_applied(index)?;
                return Ok(Err(Refused::NoSpace));
            }
            Ok((KIND_KV, body)) => {
                // Collecting events copies every change; skip it while
                // nobody listens. A subscriber that arrives meanwhile finds
                // the gap by revision and reads history (`crate::watch`).
                let events = events.filter(|_| self.watch_feed.streams() > 0);
                let asked = std::time::Instant::now();
                let mut store = self.store()?;
                let locked = std::time::Instant::now();
                self.latency.observe(
                    Stage::ApplyLockWait,
                    locked.saturating_duration_since(asked),
                );
                let out = StateMachine::apply(&mut *store, index, term, body, events)?;
                drop(store);
                // The store's commit (etcd's bbolt transaction): the time
                // the write lock was held.
                self.backend_commits.observe(locked.elapsed());
                self.latency.since(Stage::Apply, locked);
                self.applied = index;
                match out {
                    Ok(r) => {
                        self.leases.observe(body, &r);
                        return Ok(Ok(Applied::Kv(r)));
                    }
                    Err(KvError::Rejected(e)) => return Ok(Err(Refused::Kv(e))),
                    Err(KvError::Decode(e)) => CommandError::Kv(e),
                }
            }
            Ok((KIND_AUTH, body)) => match AuthOp::decode(body) {
                Ok(op) => {
                    self.mark_applied(index)?;
                    return Ok(self
                        .auth
                        .apply(&op)
                        .map(|()| Applied::Auth)
                        .map_err(Refused::Auth));
                }
                Err(e) => {
                    self.mark_applied(index)?;
                    CommandError::Auth(e)
                }
            },
            Ok((_, body)) => match RegistryOp::decode(body) {
                Ok(op) => {
                    self.apply_registry(index, &op)?;
                    return Ok(Ok(Applied::Registry));
                }
                Err(e) => {
                    self.mark_applied(index)?;
                    CommandError::Registry(e)
                }
            },
            Err(e) => {
                self.mark_applied(index)?;
                e
            }
        };
        // Every member decodes the same bytes the same way, so skipping is
        // consistent; it can only come from a bug.
        tracing::error!(index, reason = %refused, "undecodable committed command skipped");
        Ok(Err(Refused::Undecodable(refused)))
    }

    fn apply_empty(&mut self, index: Index, _term: Term) -> Result<(), StateMachineError> {
        self.mark_applied(index)
    }

    fn apply_conf_change(
        &mut self,
        index: Index,
        _term: Term,
        change: &ConfChange,
    ) -> Result<(), StateMachineError> {
        // MemberAdd/MemberRemove carry their registry change in the context:
        // applied with the configuration, atomically.
        if change.context.is_empty() {
            return self.mark_applied(index);
        }
        match RegistryOp::decode(&change.context) {
            Ok(op) => self.apply_registry(index, &op),
            Err(reason) => {
                // Same bytes, same verdict on every member.
                tracing::error!(index, %reason, "undecodable membership change context skipped");
                self.mark_applied(index)
            }
        }
    }

    fn query(&self, _barrier: &()) {}

    fn snapshot(&self) -> Result<Vec<u8>, StateMachineError> {
        let kv = self
            .kv
            .read()
            .map_err(|_| StateMachineError::Unavailable)?
            .snapshot();
        let mut data = self
            .registry
            .snapshot_data(kv)
            .map_err(|_| StateMachineError::Unavailable)?;
        data.auth = self
            .auth
            .snapshot()
            .encode()
            .map_err(|_| StateMachineError::Unavailable)?;
        data.encode().map_err(|_| StateMachineError::Unavailable)
    }

    /// The loop takes snapshots on a snapshot thread ([`SnapshotJob`]).
    fn defers_snapshots(&self) -> bool {
        true
    }

    /// A snapshot received from the leader is also written to its file
    /// meanwhile, on a second thread ([`ReceivedFile`]).
    fn restore(&mut self, index: Index, data: &[u8]) -> Result<(), StateMachineError> {
        self.received.prepared = None;
        let expected = self.received.expected.take().filter(|m| m.index == index);
        let (Some(dir), Some(meta)) = (self.received.dir.clone(), expected) else {
            return self.restore_state(index, data);
        };
        let (restored, file) = std::thread::scope(|s| {
            let writer = std::thread::Builder::new()
                .name("snapshot-receive".into())
                .spawn_scoped(s, || {
                    let started = std::time::Instant::now();
                    let r = snapshot::prepare(&dir, meta.index, meta.term, &meta.conf_state, data);
                    (r, started.elapsed())
                });
            let restored = self.restore_state(index, data);
            (restored, writer.map(|h| h.join()))
        });
        match file {
            Ok(Ok((Ok(p), took))) => {
                tracing::info!(
                    index,
                    bytes = data.len(),
                    write_ms = took.as_millis() as u64,
                    "wrote and synced the received snapshot's file during the restore"
                );
                if restored.is_ok() {
                    self.received.prepared = Some(p);
                }
            }
            // The writer saves it after the restore, as without a directory.
            Ok(Ok((Err(e), _))) => {
                tracing::warn!(error = %e, index, "writing the received snapshot during the restore failed; it is saved after");
            }
            Ok(Err(_)) => tracing::warn!(
                index,
                "the received snapshot's writing thread panicked; it is saved after"
            ),
            Err(e) => {
                tracing::warn!(error = %e, index, "no thread to write the received snapshot during the restore; it is saved after")
            }
        }
        restored
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.leases.next_deadline()
    }

    fn on_timeout(&mut self, now: Instant, proposals: &mut Vec<Vec<u8>>) {
        if let Ok(store) = self.kv.read() {
            self.leases.expire(&store, now, proposals);
        }
    }

    fn on_leader_change(&mut self, leader: bool, now: Instant) {
        match self.kv.read() {
            Ok(store) if leader => self.leases.promote(&store, now),
            _ => self.leases.demote(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{encode_command, Payload};

    fn machine() -> ServerMachine {
        ServerMachine::new(Registry::new([(1, vec!["http://a:1".to_string()])]))
    }

    #[test]
    fn a_raised_nospace_refuses_growing_writes_at_apply_and_survives_a_snapshot() {
        let mut m = machine();
        let put = encode_command(&Payload::Kv(kv::Command::Put(kv::PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })))
        .unwrap();
        let delete = encode_command(&Payload::Kv(kv::Command::DeleteRange(
            kv::DeleteRangeRequest {
                key: b"k".to_vec(),
                ..Default::default()
            },
        )))
        .unwrap();
        let alarm = |activate| {
            encode_command(&Payload::Registry(RegistryOp::Alarm {
                member_id: 9,
                alarm: NOSPACE_ALARM,
                activate,
            }))
            .unwrap()
        };
        assert!(matches!(m.apply(1, 1, &put, None), Ok(Ok(Applied::Kv(_)))));
        assert_eq!(m.apply(2, 1, &alarm(true), None), Ok(Ok(Applied::Registry)));
        assert_eq!(m.apply(3, 1, &put, None), Ok(Err(Refused::NoSpace)));
        assert_eq!(m.applied_index(), 3);
        let snap = m.snapshot().unwrap();
        let mut other = machine();
        other.restore(3, &snap).unwrap();
        assert_eq!(other.registry().alarms(), vec![(9, NOSPACE_ALARM)]);
        assert_eq!(other.apply(4, 1, &put, None), Ok(Err(Refused::NoSpace)));
        assert!(matches!(
            other.apply(5, 1, &delete, None),
            Ok(Ok(Applied::Kv(kv::CommandResult::DeleteRange(_))))
        ));
        assert_eq!(
            other.apply(6, 1, &alarm(false), None),
            Ok(Ok(Applied::Registry))
        );
        assert!(matches!(
            other.apply(7, 1, &put, None),
            Ok(Ok(Applied::Kv(_)))
        ));
        assert_eq!(other.kv().read().unwrap().revision(), 4);
    }

    #[test]
    fn kv_and_registry_commands_apply_in_order_and_snapshot_together() {
        let mut m = machine();
        let put = Payload::Kv(kv::Command::Put(kv::PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        }));
        let out = m.apply(1, 1, &encode_command(&put).unwrap(), None).unwrap();
        assert!(matches!(out, Ok(Applied::Kv(kv::CommandResult::Put(_)))));
        let add = Payload::Registry(RegistryOp::Add {
            id: 2,
            peer_urls: vec!["http://b:2".into()],
        });
        let out = m.apply(2, 1, &encode_command(&add).unwrap(), None).unwrap();
        assert_eq!(out, Ok(Applied::Registry));
        let out = m.apply(3, 1, &[7, 1, 2], None).unwrap();
        assert_eq!(out, Err(Refused::Undecodable(CommandError::UnknownKind(7))));
        assert_eq!(m.applied_index(), 3);

        let snap = m.snapshot().unwrap();
        let mut other = machine();
        assert_eq!(
            other.restore(2, &snap),
            Err(StateMachineError::Inconsistent)
        );
        assert_eq!(
            other.applied_index(),
            0,
            "a refused restore changes nothing"
        );
        other.restore(3, &snap).unwrap();
        assert_eq!(other.applied_index(), 3);
        assert!(other.registry().contains(2));
        let kv = other.kv();
        let got = kv.read().unwrap().range(&kv::RangeRequest::single(b"k"));
        assert_eq!(got.unwrap().kvs[0].value, b"v");
    }

    #[test]
    fn auth_changes_apply_in_log_order_and_travel_in_snapshots() {
        use crate::auth::{AuthError, AuthOp, ROOT_ROLE, ROOT_USER};
        let mut m = machine();
        let ops = [
            AuthOp::Enable,
            AuthOp::UserAdd {
                name: ROOT_USER.into(),
                password_hash: Some("hash".into()),
            },
            AuthOp::UserGrantRole {
                user: ROOT_USER.into(),
                role: ROOT_ROLE.into(),
            },
            AuthOp::Enable,
        ];
        let mut outs = Vec::new();
        for (i, op) in ops.into_iter().enumerate() {
            let cmd = encode_command(&Payload::Auth(op)).unwrap();
            outs.push(m.apply(i as u64 + 1, 1, &cmd, None).unwrap());
        }
        assert_eq!(
            outs,
            vec![
                Err(Refused::Auth(AuthError::RootUserNotExist)),
                Ok(Applied::Auth),
                Ok(Applied::Auth),
                Ok(Applied::Auth),
            ]
        );
        assert_eq!(m.applied_index(), 4);
        assert!(m.auth().read(|a| a.enabled));

        let snap = m.snapshot().unwrap();
        let mut other = machine();
        other.restore(4, &snap).unwrap();
        assert_eq!(other.auth().snapshot(), m.auth().snapshot());
        let mut recovered = machine();
        assert_eq!(recovered.recover(4, &snap).unwrap(), 4);
        assert!(recovered.auth().read(|a| a.users.contains_key(ROOT_USER)));
    }

    fn put(m: &mut ServerMachine, index: Index, key: &str, value: &[u8]) {
        let cmd = Payload::Kv(kv::Command::Put(kv::PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.to_vec(),
            ..Default::default()
        }));
        let out = m
            .apply(index, 1, &encode_command(&cmd).unwrap(), None)
            .unwrap();
        assert!(out.is_ok());
    }

    /// Runs `job` to the end as the Raft loop does, applying a put to `m`
    /// between steps; the envelope's bytes.
    fn run_job_while_applying(
        job: &mut SnapshotJob,
        m: &mut ServerMachine,
    ) -> Result<Vec<u8>, SnapshotJobError> {
        let mut kv_part = Vec::new();
        let mut next = m.applied_index() + 1;
        while !job.step(&mut kv_part)? {
            put(m, next, &format!("late{next}"), b"after the freeze");
            next += 1;
        }
        assert_eq!(job.kv_len(), kv_part.len() as u64);
        let mut bytes = job.head().to_vec();
        bytes.extend_from_slice(&kv_len_slot(job.kv_len()));
        bytes.extend_from_slice(&kv_part);
        bytes.extend_from_slice(job.tail());
        Ok(bytes)
    }

    #[test]
    fn the_padded_length_slot_decodes_as_the_length() {
        for len in [
            0u64,
            1,
            127,
            128,
            300,
            1 << 20,
            60_000_000,
            u64::MAX >> 1,
            u64::MAX,
        ] {
            let slot = kv_len_slot(len);
            assert_eq!(postcard::from_bytes::<u64>(&slot).unwrap(), len, "{len}");
        }
    }

    #[test]
    fn a_snapshot_job_writes_the_snapshot_at_its_freeze() {
        let mut m = machine();
        for i in 1..=3000u64 {
            put(&mut m, i, &format!("k{}", i % 700), &[b'v'; 100]);
        }
        let expected = m.snapshot().unwrap();
        let mut job = m.snapshot_job().unwrap();
        assert_eq!(job.index(), 3000);
        let got = run_job_while_applying(&mut job, &mut m).unwrap();
        assert!(m.applied_index() > 3000, "applies went on meanwhile");
        // The same envelope: the same key-value bytes, only the varint of
        // their length is padded to its slot.
        let (want, have) = (
            SnapshotData::decode(&expected).unwrap(),
            SnapshotData::decode(&got).unwrap(),
        );
        assert_eq!(have.kv, want.kv);
        assert_eq!(have.members, want.members);
        assert_eq!(have.auth, want.auth);
        let canonical = postcard::to_allocvec(&(want.kv.len() as u64))
            .unwrap()
            .len();
        assert_eq!(got.len(), expected.len() - canonical + KV_LEN_SLOT_BYTES);
        let now = m.snapshot_job().unwrap().run_to_end().unwrap();
        assert_eq!(
            SnapshotData::decode(&now).unwrap().kv,
            SnapshotData::decode(&m.snapshot().unwrap()).unwrap().kv
        );
        let mut other = machine();
        other.restore(3000, &got).unwrap();
        assert_eq!(
            *other.kv().read().unwrap(),
            kv::MvccStore::restore(&want.kv).unwrap()
        );
    }

    #[test]
    fn a_snapshot_job_gives_up_when_the_store_is_replaced_or_compacted() {
        let mut m = machine();
        for i in 1..=2500u64 {
            put(&mut m, i, &format!("k{}", i % 300), b"x");
        }
        let snap = m.snapshot().unwrap();
        let mut job = m.snapshot_job().unwrap();
        m.restore(2500, &snap).unwrap();
        assert!(matches!(job.run_to_end(), Err(SnapshotJobError::Changed)));

        let mut job = m.snapshot_job().unwrap();
        let mut piece = Vec::new();
        assert!(!job.step(&mut piece).unwrap(), "more than one step");
        let compact = Payload::Kv(kv::Command::Compact(kv::CompactionRequest {
            revision: 100,
        }));
        m.apply(2501, 1, &encode_command(&compact).unwrap(), None)
            .unwrap()
            .unwrap();
        assert!(matches!(job.run_to_end(), Err(SnapshotJobError::Changed)));
    }

    #[test]
    fn a_membership_change_applies_its_registry_context() {
        let mut m = machine();
        let op = RegistryOp::Remove { id: 1 };
        let cc = ConfChange::new(&[metalraft_core::ConfChangeOp::Remove(1)])
            .with_context(op.encode().unwrap());
        m.apply_conf_change(1, 1, &cc).unwrap();
        assert!(!m.registry().contains(1));
        assert!(m.registry().is_removed(1));
        assert_eq!(m.applied_index(), 1);
    }

    #[test]
    fn a_received_snapshot_is_written_during_its_restore_and_a_failed_one_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = machine();
        let put = Payload::Kv(kv::Command::Put(kv::PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        }));
        m.apply(1, 1, &encode_command(&put).unwrap(), None)
            .unwrap()
            .unwrap();
        let snap = m.snapshot().unwrap();
        let files = || -> Vec<String> {
            std::fs::read_dir(dir.path())
                .map(|rd| {
                    rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        let meta = |index| metalraft_core::SnapshotMeta {
            index,
            term: 2,
            conf_state: metalraft_core::ConfState::default(),
        };
        let mut other = machine();
        other.set_snapshot_dir(dir.path().to_path_buf());
        // Not announced by a leader's chunk (e.g. at startup): no file.
        other.restore(1, &snap).unwrap();
        assert!(other.take_prepared(1).is_none());
        assert!(files().is_empty(), "{:?}", files());
        // A refused restore discards the file it wrote.
        other.expect_snapshot(&meta(2));
        assert_eq!(
            other.restore(2, &snap),
            Err(StateMachineError::Inconsistent)
        );
        assert!(other.take_prepared(2).is_none());
        assert!(files().is_empty(), "{:?}", files());
        // Announced and restored: its file is ready for the install.
        other.expect_snapshot(&meta(1));
        other.restore(1, &snap).unwrap();
        let p = other.take_prepared(1).expect("the restore wrote the file");
        assert_eq!(files().len(), 1);
        assert!(files()[0].ends_with(".received.tmp"), "{:?}", files());
        let full = crate::storage::Snapshot {
            index: 1,
            term: 2,
            conf_state: metalraft_core::ConfState::default(),
            data: snap.clone(),
        };
        assert!(p.is_of(&full));
        drop(p);
        assert!(files().is_empty(), "dropped uncommitted: removed");
    }
}
