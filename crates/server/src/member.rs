//! Starting, running and stopping one member.
//!
//! Start, one function per step of [`run`]: lock and recover the data
//! directory (a torn WAL tail is truncated; corruption stops here with the
//! file and offset); settle the member's identity (bootstrap a new member
//! with the core's bootstrap entry, join an existing cluster, or read the
//! identity file); restore the state machine from the newest snapshot and
//! build the replica; start the WAL writer thread, the peer transport and
//! the Raft loop; bind and serve the gRPC ports.
//!
//! Stop (SIGTERM/SIGINT): a leader first hands leadership to a peer, then
//! the servers stop accepting, in-flight requests finish, the Raft loop
//! stops and the WAL writer drains and exits.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metalraft_core::{bootstrap_entry, bootstrap_hard_state, ConfState, ReadMode};
use metalraft_replica::{Frame, Replica};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::rustls::ServerConfig;
use tokio_stream::wrappers::TcpListenerStream;
use url::Url;

use crate::api::{ClusterService, KvService, MaintenanceService, PeerService, Shared};
use crate::cli::ClusterState;
use crate::coalesce::Coalesce;
use crate::concurrency::{ElectionService, LockService};
use crate::config::MemberConfig;
use crate::front::Front;
use crate::machine::ServerMachine;
use crate::metrics;
use crate::proto::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use crate::proto::peer::peer_server::PeerServer;
use crate::proto::peer::{peer_client::PeerClient, Envelope, InfoRequest};
use crate::proto::v3electionpb::election_server::ElectionServer;
use crate::proto::v3lockpb::lock_server::LockServer;
use crate::raft_loop::{self, LoopError, LoopParts, RaftHandle, RaftLoop};
use crate::registry::Registry;
use crate::snapshot_chain;
use crate::storage::{SharedLog, Snapshot, Storage, StorageError, WalOptions, WriteBatch};
use crate::tls;
use crate::transport::{Transport, TransportStats, PEER_MAX_GRPC_BYTES};
use crate::watch::WatchService;
use crate::writer::{self, WriterGauges};

/// Extra bytes allowed on the client port above `--max-request-bytes`
/// (etcd's gRPC overhead allowance), so an oversized request reaches the
/// handler and gets etcd's "request is too large" rather than a transport error.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// How long a leader waits for its leadership transfer on shutdown.
pub const SHUTDOWN_TRANSFER_TIMEOUT: Duration = Duration::from_secs(3);
/// How long servers get to finish in-flight requests on shutdown.
pub const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a member could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    /// Storage could not be opened or recovered.
    #[error("{0}")]
    Storage(#[from] StorageError),
    /// A listen address could not be bound.
    #[error("cannot listen on {url}: {source}")]
    Listen {
        /// The URL.
        url: String,
        /// Why.
        source: std::io::Error,
    },
    /// The replica rejected its configuration or the stored state.
    #[error("raft: {0}")]
    Raft(metalraft_replica::ConfigError),
    /// `--initial-cluster-state=existing`, and no peer answered in time.
    #[error(
        "--initial-cluster-state=existing: no member of --initial-cluster answered within {0:?}"
    )]
    JoinTimeout(Duration),
    /// Joining a cluster that does not list this member.
    #[error("member {id:x} (peer URLs {urls}) is not in the cluster's member list; add it first with `etcdctl member add {name} --peer-urls=...`")]
    NotInCluster {
        /// This member's id.
        id: u64,
        /// Its advertised peer URLs.
        urls: String,
        /// Its name.
        name: String,
    },
    /// An https listener without a TLS configuration (config validation
    /// rules it out; never serve plain text on https).
    #[error("{0}: https listener without a TLS configuration")]
    NoTls(Url),
    /// A thread or signal handler could not be set up.
    #[error("cannot start {what}: {source}")]
    Start {
        /// What.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The Raft loop stopped on its own.
    #[error("{0}")]
    Loop(#[from] LoopError),
    /// The Raft loop panicked.
    #[error("raft loop panicked: {0}")]
    LoopPanicked(String),
    /// The Raft loop stopped without saying why (it always does; a bug).
    #[error("the raft loop stopped")]
    LoopStopped,
}

/// Binds every address the URL's host resolves to (`localhost` is both
/// 127.0.0.1 and ::1), so clients reach the member whichever they use. At
/// least one must bind; an address family the machine lacks is skipped.
async fn bind(url: &Url) -> Result<Vec<TcpListener>, MemberError> {
    let host = url.host_str().unwrap_or("localhost");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port().unwrap_or(0);
    let err = |source| MemberError::Listen {
        url: url.to_string(),
        source,
    };
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(err)?
        .collect();
    addrs.sort();
    addrs.dedup();
    let mut out = Vec::new();
    let mut last = None;
    for a in addrs {
        match TcpListener::bind(a).await {
            Ok(l) => out.push(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Err(err(e)),
            Err(e) => last = Some(e),
        }
    }
    if out.is_empty() {
        return Err(err(last.unwrap_or_else(|| {
            std::io::Error::other("host resolves to no address")
        })));
    }
    Ok(out)
}

fn core_config(cfg: &MemberConfig) -> metalraft_core::Config {
    let mut c = metalraft_core::Config::new(cfg.id);
    let election = cfg.election_ticks().max(2);
    c.heartbeat_interval_ticks = 1;
    c.election_timeout_ticks_min = election;
    c.election_timeout_ticks_max = election.saturating_mul(2);
    c.pre_vote = true;
    c.check_quorum = true;
    c.read_mode = ReadMode::Safe;
    // Different timeouts on every start, so restarted members do not
    // campaign in lockstep.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    c.rng_seed = nanos ^ cfg.id;
    c
}

/// File in `<data-dir>/member` recording which cluster and member the data
/// belongs to (a joining member learns the cluster id from its peers).
pub const IDENTITY_FILE: &str = "identity";
/// How long a joining member keeps asking its peers for the cluster's view.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a joining member keeps asking after a member answered with a
/// list that does not include it (that member had not applied the
/// MemberAdd yet), before it gives up as not a member.
pub const JOIN_NOT_LISTED_GRACE: Duration = Duration::from_secs(5);
/// Pause between two rounds over the peers while joining.
pub const JOIN_RETRY_INTERVAL: Duration = Duration::from_millis(200);

/// What `member/identity` records: the cluster, this member, and the member
/// registry the cluster started from (etcd too ignores `--initial-cluster`
/// once a data directory exists; later changes come from the log).
pub(crate) struct Identity {
    pub(crate) cluster_id: u64,
    pub(crate) member_id: u64,
    pub(crate) initial_members: BTreeMap<u64, Vec<String>>,
}

fn read_identity(path: &Path) -> Result<Option<Identity>, MemberError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::from_io(path, e).into()),
    };
    let bad = || -> MemberError {
        StorageError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            reason: "identity file is not `cluster_id=<hex>` / `member_id=<hex>` / `member=<hex> <urls>` lines".into(),
        }
        .into()
    };
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    };
    let (Some(cluster_id), Some(member_id)) = (field("cluster_id="), field("member_id=")) else {
        return Err(bad());
    };
    let mut initial_members = BTreeMap::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("member=")) {
        let (id, urls) = line.split_once(' ').ok_or_else(bad)?;
        let id = u64::from_str_radix(id, 16).map_err(|_| bad())?;
        initial_members.insert(id, urls.split(',').map(str::to_string).collect());
    }
    Ok(Some(Identity {
        cluster_id,
        member_id,
        initial_members,
    }))
}

pub(crate) fn write_identity(path: &Path, id: &Identity) -> Result<(), MemberError> {
    let tmp = path.with_extension("tmp");
    let mut body = format!(
        "cluster_id={:x}\nmember_id={:x}\n",
        id.cluster_id, id.member_id
    );
    for (m, urls) in &id.initial_members {
        body.push_str(&format!("member={m:x} {}\n", urls.join(",")));
    }
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, body.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
    };
    write().map_err(|e| StorageError::from_io(path, e).into())
}

/// A member joining a running cluster asks the members listed in
/// `--initial-cluster` for the cluster id and member registry, and takes
/// the first answer that lists a member with our advertised peer URLs
/// (`mine`). A member's answer comes from its applied state, and the
/// MemberAdd that added us answered once the member that served it had
/// applied it: another member may not have yet, so an answer without us
/// sends us to the next member, and round after round until
/// [`JOIN_NOT_LISTED_GRACE`] has passed since the first such answer. Then
/// the last answer is returned, and the caller reports that we are not a
/// member.
async fn join_info(
    cfg: &MemberConfig,
    mine: &BTreeSet<String>,
) -> Result<(u64, BTreeMap<u64, Vec<String>>), MemberError> {
    let start = tokio::time::Instant::now();
    let deadline = start + JOIN_TIMEOUT;
    let mut not_listed: Option<(tokio::time::Instant, u64, BTreeMap<u64, Vec<String>>)> = None;
    loop {
        for p in cfg.peers() {
            let Some(url) = p.peer_urls.first() else {
                continue;
            };
            let Ok(ep) = crate::transport::endpoint(url, cfg.tls.peer_dial.as_ref()) else {
                continue;
            };
            let Ok(ch) = ep.connect().await else { continue };
            let mut c = PeerClient::new(ch);
            let req = InfoRequest {
                envelope: Some(Envelope::default()),
            };
            if let Ok(r) = c.info(req).await {
                let r = r.into_inner();
                let members: BTreeMap<u64, Vec<String>> =
                    r.members.into_iter().map(|m| (m.id, m.peer_urls)).collect();
                if find_by_peer_urls(&members, mine).is_some() {
                    return Ok((r.cluster_id, members));
                }
                let since = not_listed
                    .as_ref()
                    .map_or_else(tokio::time::Instant::now, |n| n.0);
                not_listed = Some((since, r.cluster_id, members));
            }
        }
        let now = tokio::time::Instant::now();
        if let Some((since, cluster_id, members)) = &not_listed {
            if now >= *since + JOIN_NOT_LISTED_GRACE || now > deadline {
                return Ok((*cluster_id, members.clone()));
            }
        } else if now > deadline {
            return Err(MemberError::JoinTimeout(JOIN_TIMEOUT));
        }
        tokio::time::sleep(JOIN_RETRY_INTERVAL).await;
    }
}

/// The member whose peer URLs are exactly `mine` (compared without a
/// trailing `/`).
fn find_by_peer_urls(members: &BTreeMap<u64, Vec<String>>, mine: &BTreeSet<String>) -> Option<u64> {
    members.iter().find_map(|(id, urls)| {
        let theirs: BTreeSet<String> = urls
            .iter()
            .map(|u| u.trim_end_matches('/').to_string())
            .collect();
        (&theirs == mine).then_some(*id)
    })
}

/// Runs a member until SIGTERM/SIGINT or a fatal error.
pub async fn run(mut cfg: MemberConfig) -> Result<(), MemberError> {
    let opened = Storage::open(&cfg.data_dir, ConfState::default(), WalOptions::default())?;
    if let Some((file, offset)) = &opened.torn_tail {
        tracing::warn!(file = %file.display(), offset, "recovered from a torn final WAL record");
    }
    let mut storage = opened.storage;
    let members = settle_identity(&mut cfg, &mut storage, opened.snapshot.is_none()).await?;
    let snapshot = opened.snapshot;
    let (replica, restored) = build_replica(
        &cfg,
        storage.log(),
        Registry::new(members),
        snapshot.as_ref(),
        opened.repair_barrier,
    )?;
    // A delta loaded at start: the next snapshot may extend its chain,
    // from the state the snapshot itself restored (not the WAL after it).
    let chain = opened
        .snapshot_extents
        .as_deref()
        .zip(restored)
        .and_then(|(extents, r)| {
            snapshot_chain::Chain::loaded(extents, r.revision, r.compact_revision, r.generation)
        });
    // Restored: the loaded bytes are not needed any more (followers are
    // served from the file), and `run` lives as long as the member.
    drop(snapshot);
    let started = start(&cfg, storage, replica, chain)?;
    // Bind everything before serving, so a busy port fails the start.
    let listeners = bind_all(&cfg).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let loop_task = tokio::spawn(started.raft_loop.run(stop_rx.clone()));
    let servers = serve_all(listeners, &started.shared, &cfg, &stop_rx);
    if let Some(setting) = cfg.auto_compaction {
        tokio::spawn(crate::compactor::run(
            started.shared.clone(),
            setting,
            stop_rx.clone(),
        ));
    }
    let publisher = tokio::spawn(crate::publish::run(started.shared.clone(), stop_rx.clone()));
    tracing::info!(
        name = %cfg.name,
        member = %format!("{:x}", cfg.id),
        clients = %cfg.listen_client_urls.iter().map(Url::as_str).collect::<Vec<_>>().join(","),
        peers = %cfg.listen_peer_urls.iter().map(Url::as_str).collect::<Vec<_>>().join(","),
        "member started"
    );
    let stopped_by_itself = wait_for_stop(&started.shared, &started.handle).await?;
    let _ = stop_tx.send(true);
    // It returns on `stop`; nothing it does needs finishing.
    publisher.abort();
    let _ = publisher.await;
    for s in servers {
        match tokio::time::timeout(SHUTDOWN_DRAIN_TIMEOUT, s).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server stopped with an error"),
            _ => tracing::warn!("a server did not stop in time"),
        }
    }
    let loop_result = loop_task
        .await
        .map_err(|e| MemberError::LoopPanicked(e.to_string()))?;
    drop(started.shared);
    drop(started.handle);
    // The loop dropped the job sender: the writer drains and exits.
    let writer_thread = started.writer_thread;
    let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
    loop_result?;
    if stopped_by_itself {
        return Err(MemberError::LoopStopped);
    }
    tracing::info!("stopped");
    Ok(())
}

/// The members of `--initial-cluster`, with their peer URLs.
fn initial_members(cfg: &MemberConfig) -> BTreeMap<u64, Vec<String>> {
    cfg.initial_cluster
        .iter()
        .map(|p| {
            (
                p.id,
                p.peer_urls
                    .iter()
                    .map(|u| u.as_str().trim_end_matches('/').to_string())
                    .collect(),
            )
        })
        .collect()
}

/// Settles which cluster and member the data directory belongs to, and the
/// member registry it starts from: a fresh member bootstraps a new cluster
/// or joins an existing one and records its identity; an existing one
/// reads it back (etcd too ignores `--initial-cluster` then).
async fn settle_identity(
    cfg: &mut MemberConfig,
    storage: &mut Storage,
    no_snapshot: bool,
) -> Result<BTreeMap<u64, Vec<String>>, MemberError> {
    let log = storage.log();
    let (_, last) = log.bounds()?;
    let fresh = last == 0 && log.hard_state()? == Default::default() && no_snapshot;
    let identity_path = cfg.data_dir.join("member").join(IDENTITY_FILE);
    let mut members = initial_members(cfg);
    if fresh {
        match cfg.initial_cluster_state {
            ClusterState::New => {
                let voters: Vec<u64> = cfg.initial_cluster.iter().map(|p| p.id).collect();
                tracing::info!(member = %format!("{:x}", cfg.id), cluster = %format!("{:x}", cfg.cluster_id), members = voters.len(), "bootstrapping a new member");
                storage.write(
                    &[WriteBatch {
                        entries: vec![bootstrap_entry(&voters)],
                        hard_state: Some(bootstrap_hard_state()),
                        clears_repair: false,
                    }],
                    true,
                )?;
            }
            ClusterState::Existing => members = join_existing(cfg).await?,
        }
        write_identity(
            &identity_path,
            &Identity {
                cluster_id: cfg.cluster_id,
                member_id: cfg.id,
                initial_members: members.clone(),
            },
        )?;
    } else if let Some(identity) = read_identity(&identity_path)? {
        if identity.member_id != cfg.id {
            // The peer URLs changed since the member was created (etcdctl
            // member update): the data directory keeps its identity.
            tracing::info!(
                member = %format!("{:x}", identity.member_id),
                from_flags = %format!("{:x}", cfg.id),
                "using the member id recorded in the data directory"
            );
            cfg.id = identity.member_id;
        }
        cfg.cluster_id = identity.cluster_id;
        if !identity.initial_members.is_empty() {
            members = identity.initial_members;
        }
    }
    Ok(members)
}

/// A fresh member joining a running cluster: learns the cluster id and the
/// registry from its peers and finds its own id there.
async fn join_existing(cfg: &mut MemberConfig) -> Result<BTreeMap<u64, Vec<String>>, MemberError> {
    // MemberAdd assigns ids with a time salt (as etcd does, so a removed
    // member's URLs can be added again): find ours by our advertised peer
    // URLs.
    let mine: BTreeSet<String> = cfg
        .advertise_peer_urls
        .iter()
        .map(|u| u.as_str().trim_end_matches('/').to_string())
        .collect();
    let (cluster_id, remote) = join_info(cfg, &mine).await?;
    if let Some(id) = find_by_peer_urls(&remote, &mine) {
        cfg.id = id;
    }
    if !remote.contains_key(&cfg.id) {
        return Err(MemberError::NotInCluster {
            id: cfg.id,
            urls: cfg
                .advertise_peer_urls
                .iter()
                .map(Url::as_str)
                .collect::<Vec<_>>()
                .join(","),
            name: cfg.name.clone(),
        });
    }
    tracing::info!(member = %format!("{:x}", cfg.id), cluster = %format!("{cluster_id:x}"), "joining an existing cluster");
    cfg.cluster_id = cluster_id;
    Ok(remote)
}

/// The store as a snapshot restored it, before any entry after it.
#[derive(Clone, Copy, Debug)]
struct Restored {
    revision: i64,
    compact_revision: i64,
    generation: u64,
}

/// Restores the state machine from the newest snapshot and builds the
/// replica over the durable log; also what the snapshot restored.
fn build_replica(
    cfg: &MemberConfig,
    log: SharedLog,
    registry: Registry,
    snapshot: Option<&Snapshot>,
    vote_barrier: Option<u64>,
) -> Result<(raft_loop::ServerReplica, Option<Restored>), MemberError> {
    let corrupt = |path: &str, reason: String| StorageError::Corrupt {
        path: cfg.data_dir.join(path),
        offset: 0,
        reason,
    };
    let mut machine = ServerMachine::new(registry);
    let mut restored = None;
    if let Some(snap) = snapshot {
        machine.recover(snap.index, &snap.data).map_err(|e| {
            corrupt(
                "member/snap",
                format!("snapshot at index {} does not restore: {e}", snap.index),
            )
        })?;
        restored = machine.kv().read().ok().map(|k| Restored {
            revision: k.revision(),
            compact_revision: k.compact_revision(),
            generation: machine.store_generation(),
        });
        tracing::info!(
            index = snap.index,
            revision = restored.map_or(0, |r| r.revision),
            "restored state machine from snapshot"
        );
    }
    // Entries carry the replica's envelope since the replica layer; an
    // entry without one (a WAL of an earlier version) would be skipped on
    // apply, so refuse to start on it rather than lose its write.
    if let Some(index) = log.find_entry(
        |e| matches!(&e.data, metalraft_core::EntryData::Normal(d) if Frame::decode(d).is_none()),
    )? {
        return Err(corrupt(
            "member/wal",
            format!("entry {index} is not in the replica envelope format (a WAL written before metalraft's replica layer); restore this member from a backup (`etcdctl snapshot save` on the old version, then `metalraft snapshot restore`)"),
        )
        .into());
    }
    let mut core = core_config(cfg);
    // Repair mode after mid-log WAL damage (ADR 0021).
    core.vote_barrier = vote_barrier;
    let rc = raft_loop::replica_config(core, cfg.snapshot_count, cfg.heartbeat_interval);
    let replica = Replica::new(rc, log, machine).map_err(MemberError::Raft)?;
    Ok((replica, restored))
}

/// What runs once the member has started.
struct Started {
    raft_loop: RaftLoop,
    handle: RaftHandle,
    shared: Arc<Shared>,
    writer_thread: std::thread::JoinHandle<()>,
}

/// Starts the WAL writer thread and the peer transport, and builds the
/// Raft loop around `replica`.
fn start(
    cfg: &MemberConfig,
    storage: Storage,
    replica: raft_loop::ServerReplica,
    chain: Option<snapshot_chain::Chain>,
) -> Result<Started, MemberError> {
    let gauges = Arc::new(WriterGauges::default());
    let (job_tx, job_rx) = std::sync::mpsc::channel();
    let (ev_tx, ev_rx) = tokio::sync::mpsc::unbounded_channel();
    let writer_gauges = gauges.clone();
    let snap_dir = storage.snap_dir().to_path_buf();
    let writer_thread = std::thread::Builder::new()
        .name("wal-writer".into())
        .spawn(move || writer::run(storage, job_rx, ev_tx, writer_gauges))
        .map_err(|source| MemberError::Start {
            what: "the WAL writer thread",
            source,
        })?;
    let transport_stats = Arc::new(TransportStats::default());
    let peer_urls: Vec<(u64, Url)> = replica
        .state_machine()
        .registry()
        .members()
        .into_iter()
        .filter(|(id, _)| *id != cfg.id)
        .filter_map(|(id, urls)| {
            urls.first()
                .and_then(|u| Url::parse(u).ok())
                .map(|u| (id, u))
        })
        .collect();
    let transport = Transport::start(
        cfg.cluster_id,
        cfg.id,
        &peer_urls,
        transport_stats.clone(),
        cfg.tls.peer_dial.clone(),
    );
    let (raft_loop, handle) = RaftLoop::new(LoopParts {
        replica,
        transport,
        writer: job_tx,
        writer_events: ev_rx,
        gauges: gauges.clone(),
        tick: cfg.heartbeat_interval,
        snap_dir,
        chain,
    });
    handle.auth.tokens().set_ttl(cfg.auth_token_ttl);
    if let Some(jwt) = &cfg.jwt {
        handle.auth.set_jwt(jwt.clone());
    }
    handle.auth.set_cert_users(cfg.tls.client_cert_auth);
    let shared = Arc::new(Shared::new(
        cfg.clone(),
        handle.clone(),
        gauges,
        transport_stats,
    ));
    Ok(Started {
        raft_loop,
        handle,
        shared,
        writer_thread,
    })
}

/// Bound listeners, each with the TLS config of its side when its URL is
/// https.
type Listeners = Vec<(TcpListener, Option<Arc<ServerConfig>>)>;

/// The member's bound ports: peer, client, metrics.
struct Bound {
    peer: Listeners,
    client: Listeners,
    metrics: Listeners,
}

async fn bind_side(
    urls: &[Url],
    tls: &Option<Arc<ServerConfig>>,
) -> Result<Listeners, MemberError> {
    let mut out = Vec::new();
    for u in urls {
        let tls = match u.scheme() {
            // Config validation guarantees it; never serve plain text on https.
            "https" => Some(tls.clone().ok_or_else(|| MemberError::NoTls(u.clone()))?),
            _ => None,
        };
        out.extend(bind(u).await?.into_iter().map(|l| (l, tls.clone())));
    }
    Ok(out)
}

async fn bind_all(cfg: &MemberConfig) -> Result<Bound, MemberError> {
    Ok(Bound {
        peer: bind_side(&cfg.listen_peer_urls, &cfg.tls.peer_server).await?,
        client: bind_side(&cfg.listen_client_urls, &cfg.tls.client_server).await?,
        // As in etcd, https metrics URLs use the client certificate and
        // client-certificate authentication; http ones stay plain (probes).
        metrics: bind_side(&cfg.listen_metrics_urls, &cfg.tls.client_server).await?,
    })
}

type ServerTask = tokio::task::JoinHandle<Result<(), tonic::transport::Error>>;

/// Serves the peer service, the client services (gRPC plus etcd's HTTP
/// endpoints on one port) and the metrics endpoints until `stop` changes.
fn serve_all(
    bound: Bound,
    shared: &Arc<Shared>,
    cfg: &MemberConfig,
    stop: &watch::Receiver<bool>,
) -> Vec<ServerTask> {
    let mut servers = Vec::new();
    for (l, tls) in bound.peer {
        let svc = PeerServer::new(PeerService(shared.clone()))
            .max_decoding_message_size(PEER_MAX_GRPC_BYTES)
            .max_encoding_message_size(PEER_MAX_GRPC_BYTES);
        let router = tonic::transport::Server::builder().add_service(svc);
        servers.push(serve(router, l, tls, "peer", stop.clone()));
    }
    let max_recv = cfg.max_request_bytes + GRPC_OVERHEAD_BYTES;
    for (l, tls) in bound.client {
        let routes = tonic::service::Routes::new(
            KvServer::new(KvService(shared.clone())).max_decoding_message_size(max_recv),
        )
        .add_service(
            ClusterServer::new(ClusterService(shared.clone())).max_decoding_message_size(max_recv),
        )
        .add_service(
            MaintenanceServer::new(MaintenanceService(shared.clone()))
                .max_decoding_message_size(max_recv),
        )
        .add_service(
            LeaseServer::new(crate::lease::LeaseService(shared.clone()))
                .max_decoding_message_size(max_recv),
        )
        .add_service(
            WatchServer::new(WatchService(shared.clone())).max_decoding_message_size(max_recv),
        )
        .add_service(
            crate::proto::etcdserverpb::auth_server::AuthServer::new(
                crate::auth::service::AuthService(shared.clone()),
            )
            .max_decoding_message_size(max_recv),
        )
        .add_service(
            LockServer::new(LockService(shared.clone())).max_decoding_message_size(max_recv),
        )
        .add_service(
            ElectionServer::new(ElectionService(shared.clone()))
                .max_decoding_message_size(max_recv),
        )
        // grpc.health.v1 as etcd 3.4 serves it: "" SERVING, nothing else
        // registered.
        .add_service(tonic_health::server::health_reporter().1)
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            crate::auth::service::token_gate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            learner_gate,
        ))
        .layer(axum::middleware::from_fn(grpc_go_statuses))
        // Outermost, so refusals by the layers inside are counted too.
        .layer(axum::middleware::from_fn_with_state(
            shared.grpc_metrics.clone(),
            crate::grpc_metrics::layer,
        ))
        .merge(metrics::router(shared.clone()))
        .merge(crate::gateway::router(shared.clone()));
        let router = tonic::transport::Server::builder()
            .accept_http1(true)
            .max_concurrent_streams(CLIENT_MAX_CONCURRENT_STREAMS)
            .add_routes(tonic::service::Routes::from(routes));
        servers.push(serve(router, l, tls, "client", stop.clone()));
    }
    for (l, tls) in bound.metrics {
        let router = tonic::transport::Server::builder()
            .accept_http1(true)
            .add_routes(tonic::service::Routes::from(metrics::router(
                shared.clone(),
            )));
        servers.push(serve(router, l, tls, "metrics", stop.clone()));
    }
    servers
}

/// HTTP/2 streams one client connection may have open at once: grpc-go's
/// (and so etcd's) unlimited default, instead of hyper's 200, so a client
/// multiplexing hundreds of Watch streams on one connection is not stalled.
pub const CLIENT_MAX_CONCURRENT_STREAMS: u32 = u32::MAX;

/// The etcd gRPC methods a learner serves, as in etcd 3.4: Status, and
/// Range (whose linearizable form the handler refuses on a learner, since
/// only the request says which it is).
const LEARNER_METHODS: &[&str] = &["/etcdserverpb.Maintenance/Status", "/etcdserverpb.KV/Range"];

/// Refuses every other etcd gRPC method on a learner with etcd 3.4's
/// "rpc not supported for learner" (Unavailable, so clients with several
/// endpoints try another). One check for every service, present and
/// future: a method is refused unless listed. etcd's HTTP endpoints
/// (health, version, metrics) stay served.
async fn learner_gate(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if learner_refuses(&shared, req.uri().path()) {
        return tonic::Status::from(crate::errors::EtcdError::NotSupportedForLearner).into_http();
    }
    next.run(req).await
}

/// The gRPC services of the client port, as grpc-go names them in its
/// UNIMPLEMENTED messages.
const CLIENT_SERVICES: &[&str] = &[
    "etcdserverpb.KV",
    "etcdserverpb.Watch",
    "etcdserverpb.Lease",
    "etcdserverpb.Cluster",
    "etcdserverpb.Maintenance",
    "etcdserverpb.Auth",
    "v3lockpb.Lock",
    "v3electionpb.Election",
    "grpc.health.v1.Health",
];

/// Gives the statuses tonic answers by itself (an unknown service or
/// method, a request above the receive limit) etcd's codes and messages
/// ([`crate::errors::grpc_go_status`]). Only trailers-only responses carry
/// them in the headers, which is where tonic puts these: a streaming call
/// whose later message is too large keeps tonic's trailer.
async fn grpc_go_statuses(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = req.uri().path().to_owned();
    let mut resp = next.run(req).await;
    let Some(status) = tonic::Status::from_header_map(resp.headers()) else {
        return resp;
    };
    if let Some(etcd) = crate::errors::grpc_go_status(&path, CLIENT_SERVICES, &status) {
        let h = resp.headers_mut();
        h.remove(tonic::Status::GRPC_STATUS);
        h.remove(tonic::Status::GRPC_MESSAGE);
        if let Err(e) = etcd.add_header(h) {
            tracing::debug!(error = %e, "could not rewrite a gRPC status");
        }
    }
    resp
}

/// Whether this member, a learner, refuses gRPC method `path`
/// (`/etcdserverpb.KV/Put`); the HTTP gateway asks the same.
pub fn learner_refuses(shared: &Shared, path: &str) -> bool {
    path.starts_with("/etcdserverpb.")
        && !LEARNER_METHODS.contains(&path)
        && shared.raft.status.borrow().is_learner
}

/// Waits for SIGTERM/SIGINT (then a leader hands leadership over) or for
/// the Raft loop to stop by itself (`true`).
async fn wait_for_stop(shared: &Shared, handle: &RaftHandle) -> Result<bool, MemberError> {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| MemberError::Start {
            what: "the SIGTERM handler",
            source,
        })?;
    let mut status = handle.status.clone();
    let stopped_by_itself = tokio::select! {
        _ = tokio::signal::ctrl_c() => false,
        _ = sigterm.recv() => false,
        _ = status.wait_for(|s| s.stopped) => true,
    };
    if !stopped_by_itself {
        tracing::info!("shutting down");
        hand_over_leadership(shared).await;
    }
    Ok(stopped_by_itself)
}

/// A leader transfers leadership to the most suitable peer before it
/// stops, so the cluster does not wait an election timeout.
async fn hand_over_leadership(shared: &Shared) {
    let st = *shared.raft.status.borrow();
    if !st.is_leader {
        return;
    }
    let voters = shared
        .raft
        .conf
        .read()
        .map(|c| c.voters.clone())
        .unwrap_or_default();
    let Some(target) = voters.into_iter().find(|v| *v != shared.cfg.id) else {
        return;
    };
    if let Err(e) = shared.raft.transfer(target).await {
        tracing::warn!(error = %e, "leadership transfer on shutdown refused");
        return;
    }
    let mut s = shared.raft.status.clone();
    let done = tokio::time::timeout(
        SHUTDOWN_TRANSFER_TIMEOUT,
        s.wait_for(|x| !x.is_leader || x.stopped),
    )
    .await;
    match done {
        Ok(_) => tracing::info!(to = %format!("{target:x}"), "handed leadership over"),
        Err(_) => tracing::warn!("leadership transfer did not finish before shutdown"),
    }
}

/// Serves `router` on `l` until `stop` changes: over TLS (our acceptor,
/// [`tls::incoming`]) when `tls` is set, in plain text otherwise. Client
/// connections pass through the [`Front`] layer (after TLS), which repairs
/// the `:authority` etcd clients send and `h2` refuses.
fn serve(
    router: tonic::transport::server::Router,
    l: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    port: &'static str,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Result<(), tonic::transport::Error>> {
    let shutdown = async move {
        let _ = stop.changed().await;
    };
    use tokio_stream::StreamExt;
    // Only the client port meets etcdctl's and clientv3's authorities; the
    // peer port talks to our own tonic client.
    let front = port == "client";
    // Replies ready in the same scheduler round leave in one write
    // (`crate::coalesce`), on both ports.
    match (tls, front) {
        (Some(cfg), false) => tokio::spawn(router.serve_with_incoming_shutdown(
            tls::incoming(l, cfg, port).map(|c| c.map(Coalesce::new)),
            shutdown,
        )),
        (Some(cfg), true) => tokio::spawn(router.serve_with_incoming_shutdown(
            tls::incoming(l, cfg, port).map(|c| c.map(|s| Front::new(Coalesce::new(s)))),
            shutdown,
        )),
        (None, false) => tokio::spawn(router.serve_with_incoming_shutdown(
            nodelay_incoming(l).map(|c| c.map(Coalesce::new)),
            shutdown,
        )),
        (None, true) => tokio::spawn(router.serve_with_incoming_shutdown(
            nodelay_incoming(l).map(|c| c.map(|s| Front::new(Coalesce::new(s)))),
            shutdown,
        )),
    }
}

/// Accepted connections with Nagle's algorithm off: tonic's `tcp_nodelay`
/// only applies to listeners it binds itself, and small gRPC replies would
/// otherwise wait for the delayed ACK (~40 ms stalls seen in the benchmark).
fn nodelay_incoming(
    l: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(l).map(|conn| {
        let stream = conn?;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY on an accepted connection");
        }
        Ok(stream)
    })
}
