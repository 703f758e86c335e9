//! A member's validated configuration, built from [`crate::cli::MemberArgs`].
//!
//! Every check etcd makes on its flags that applies to us is made here, with
//! etcd's wording where etcd has one, so a bad manifest fails the same way.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use crate::auth::jwt::{JwtConfigError, JwtOptions, JwtTokens};
use crate::cli::{ClusterState, LogLevel, MemberArgs, MetricsLevel};
use crate::compactor::{AutoCompaction, AutoCompactionError};
use crate::duration::{parse_go_duration, DurationError};
use crate::tls::{SideFlags, SideUse, TlsError, TlsSettings};

/// etcd's upper bound on `--election-timeout`.
pub const MAX_ELECTION_TIMEOUT_MS: u64 = 50_000;
/// etcd requires the election timeout to be at least this many heartbeats.
pub const MIN_ELECTION_TO_HEARTBEAT_RATIO: u64 = 5;
/// The backend quota used when `--quota-backend-bytes` is 0 (etcd's 2 GiB).
pub const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Largest accepted `--max-request-bytes` (etcd warns above 10 MiB; we refuse
/// above 64 MiB because a request is held in memory several times).
pub const MAX_MAX_REQUEST_BYTES: u64 = 64 * 1024 * 1024;
/// Largest number of members in `--initial-cluster`.
pub const MAX_CLUSTER_MEMBERS: usize = 64;

/// A flag value or combination that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A duration flag does not parse (Go syntax, e.g. `10m0s`) or is zero.
    #[error("invalid value for --{flag}: {reason}")]
    BadDuration {
        /// The flag.
        flag: &'static str,
        /// Why.
        reason: DurationError,
    },
    /// The auto-compaction flags are inconsistent.
    #[error(transparent)]
    AutoCompaction(#[from] AutoCompactionError),
    /// A URL flag holds something that is not a usable URL.
    #[error("invalid value {value:?} for --{flag}: {reason}")]
    BadUrl {
        /// The flag.
        flag: &'static str,
        /// The offending value.
        value: String,
        /// Why it is unusable.
        reason: String,
    },
    /// A URL list flag is empty.
    #[error("--{0} must not be empty")]
    EmptyUrls(&'static str),
    /// `--initial-cluster` is malformed.
    #[error("invalid --initial-cluster {value:?}: {reason}")]
    BadInitialCluster {
        /// The offending value.
        value: String,
        /// Why.
        reason: String,
    },
    /// The member's name is missing from `--initial-cluster`.
    #[error("couldn't find local name {0:?} in the initial cluster configuration")]
    NameNotInCluster(String),
    /// The advertised peer URLs disagree with `--initial-cluster`.
    #[error("--initial-cluster has {name}={cluster} but missing from --initial-advertise-peer-urls={advertised}")]
    PeerUrlMismatch {
        /// Member name.
        name: String,
        /// URLs listed in `--initial-cluster`.
        cluster: String,
        /// URLs in `--initial-advertise-peer-urls`.
        advertised: String,
    },
    /// The election timeout is too short for the heartbeat interval.
    #[error("--election-timeout[{election_ms}ms] should be at least as 5 times as --heartbeat-interval[{heartbeat_ms}ms]")]
    ElectionTooShort {
        /// `--election-timeout`.
        election_ms: u64,
        /// `--heartbeat-interval`.
        heartbeat_ms: u64,
    },
    /// The election timeout exceeds etcd's bound.
    #[error("--election-timeout[{0}ms] is too long, and should be set less than 50000ms")]
    ElectionTooLong(u64),
    /// The heartbeat interval is zero.
    #[error("--heartbeat-interval must be at least 1ms")]
    ZeroHeartbeat,
    /// `--max-request-bytes` is zero or too large.
    #[error("--max-request-bytes must be between 1 and {MAX_MAX_REQUEST_BYTES}, got {0}")]
    BadMaxRequestBytes(u64),
    /// The member name is empty or unusable.
    #[error("--name must be non-empty and contain no '=' or ',' (got {0:?})")]
    BadName(String),
    /// A TLS flag, a combination of them or a file they name is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// `--auth-token` names a token type this server does not serve.
    #[error("--auth-token {0:?} is not supported (only 'simple' and 'jwt,...' are)")]
    BadAuthToken(String),
    /// `--auth-token jwt,...` with unusable options or keys.
    #[error("--auth-token: {0}")]
    Jwt(#[from] crate::auth::jwt::JwtConfigError),
    /// `--bcrypt-cost` is outside bcrypt's bounds.
    #[error("--bcrypt-cost must be between 4 and 31, got {0}")]
    BadBcryptCost(u32),
    /// `--auth-token-ttl` is zero.
    #[error("--auth-token-ttl must be at least 1 second")]
    ZeroAuthTokenTtl,
}

/// `--auth-token jwt,...`: its options parsed and its keys loaded
/// (`None` for `simple`).
fn jwt_tokens(a: &MemberArgs) -> Result<Option<JwtTokens>, ConfigError> {
    match a.auth_token.split_once(',') {
        Some(("jwt", opts)) => Ok(Some(JwtOptions::parse(opts)?.load()?)),
        None if a.auth_token == "jwt" => Err(JwtConfigError::Missing("sign-method").into()),
        _ => Ok(None),
    }
}

/// `--auth-token`: `simple`, optionally with etcd's `,key=value` options
/// (ignored), or `jwt,...` ([`jwt_tokens`]). With `--auth-token-ttl`.
fn auth_token_ttl(a: &MemberArgs) -> Result<Duration, ConfigError> {
    let kind = a.auth_token.split(',').next();
    if kind != Some("simple") && kind != Some("jwt") {
        return Err(ConfigError::BadAuthToken(a.auth_token.clone()));
    }
    if a.auth_token_ttl == 0 {
        return Err(ConfigError::ZeroAuthTokenTtl);
    }
    Ok(Duration::from_secs(a.auth_token_ttl))
}

fn bcrypt_cost(cost: u32) -> Result<u32, ConfigError> {
    use crate::auth::service::{BCRYPT_COST_MAX, BCRYPT_COST_MIN};
    if !(BCRYPT_COST_MIN..=BCRYPT_COST_MAX).contains(&cost) {
        return Err(ConfigError::BadBcryptCost(cost));
    }
    Ok(cost)
}

/// One member of the initial cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Member name.
    pub name: String,
    /// Member id, derived like etcd's from the peer URLs and cluster token.
    pub id: u64,
    /// Peer URLs.
    pub peer_urls: Vec<Url>,
}

/// A member's validated configuration.
#[derive(Clone, Debug)]
pub struct MemberConfig {
    /// Member name.
    pub name: String,
    /// This member's id.
    pub id: u64,
    /// Cluster id, derived from the member ids.
    pub cluster_id: u64,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Client listen URLs.
    pub listen_client_urls: Vec<Url>,
    /// Advertised client URLs.
    pub advertise_client_urls: Vec<Url>,
    /// Peer listen URLs.
    pub listen_peer_urls: Vec<Url>,
    /// Advertised peer URLs.
    pub advertise_peer_urls: Vec<Url>,
    /// All members, this one included, sorted by id.
    pub initial_cluster: Vec<Peer>,
    /// New or existing cluster.
    pub initial_cluster_state: ClusterState,
    /// Cluster token; peers with another token are rejected.
    pub cluster_token: String,
    /// Heartbeat interval (also the tick of the Raft core).
    pub heartbeat_interval: Duration,
    /// Election timeout.
    pub election_timeout: Duration,
    /// Applied entries between state-machine snapshots.
    pub snapshot_count: u64,
    /// Largest client request accepted.
    pub max_request_bytes: usize,
    /// Backend quota; writes beyond it raise the NOSPACE alarm.
    pub quota_backend_bytes: u64,
    /// Metrics/health listen URLs.
    pub listen_metrics_urls: Vec<Url>,
    /// Automatic compaction of the key-value history (`None`: off).
    pub auto_compaction: Option<AutoCompaction>,
    /// Period of Watch progress notifications.
    pub watch_progress_notify_interval: Duration,
    /// `--metrics`: whether the gRPC handling-time histograms are served.
    pub metrics: MetricsLevel,
    /// Log level.
    pub log_level: LogLevel,
    /// TLS server and dial configurations (files loaded and checked).
    pub tls: TlsSettings,
    /// `--auth-token-ttl`: how long an unused simple token lives.
    pub auth_token_ttl: Duration,
    /// `--auth-token jwt,...`: the loaded keys (`None`: simple tokens).
    pub jwt: Option<JwtTokens>,
    /// `--bcrypt-cost`.
    pub bcrypt_cost: u32,
}

impl MemberConfig {
    /// Validates the flags and derives ids.
    pub fn from_args(a: &MemberArgs) -> Result<Self, ConfigError> {
        if a.name.is_empty() || a.name.contains(['=', ',']) {
            return Err(ConfigError::BadName(a.name.clone()));
        }
        let listen_client_urls = parse_urls("listen-client-urls", &a.listen_client_urls)?;
        let advertise_client_urls = parse_urls("advertise-client-urls", &a.advertise_client_urls)?;
        let listen_peer_urls = parse_urls("listen-peer-urls", &a.listen_peer_urls)?;
        let advertise_peer_urls = parse_urls(
            "initial-advertise-peer-urls",
            &a.initial_advertise_peer_urls,
        )?;
        let listen_metrics_urls = match &a.listen_metrics_urls {
            Some(s) if !s.trim().is_empty() => parse_urls("listen-metrics-urls", s)?,
            _ => Vec::new(),
        };
        if a.heartbeat_interval == 0 {
            return Err(ConfigError::ZeroHeartbeat);
        }
        if a.election_timeout < MIN_ELECTION_TO_HEARTBEAT_RATIO * a.heartbeat_interval {
            return Err(ConfigError::ElectionTooShort {
                election_ms: a.election_timeout,
                heartbeat_ms: a.heartbeat_interval,
            });
        }
        if a.election_timeout > MAX_ELECTION_TIMEOUT_MS {
            return Err(ConfigError::ElectionTooLong(a.election_timeout));
        }
        let auto_compaction =
            AutoCompaction::from_flags(a.auto_compaction_mode, &a.auto_compaction_retention)?;
        let watch_progress_notify_interval =
            parse_go_duration(&a.experimental_watch_progress_notify_interval).map_err(|e| {
                ConfigError::BadDuration {
                    flag: "experimental-watch-progress-notify-interval",
                    reason: e,
                }
            })?;
        if watch_progress_notify_interval.is_zero() {
            return Err(ConfigError::BadDuration {
                flag: "experimental-watch-progress-notify-interval",
                reason: DurationError::Invalid("0".into()),
            });
        }
        if a.max_request_bytes == 0 || a.max_request_bytes > MAX_MAX_REQUEST_BYTES {
            return Err(ConfigError::BadMaxRequestBytes(a.max_request_bytes));
        }
        let cluster_spec = match &a.initial_cluster {
            Some(s) => s.clone(),
            // etcd: the default initial cluster is this member alone.
            None => advertise_peer_urls
                .iter()
                .map(|u| format!("{}={}", a.name, u.as_str().trim_end_matches('/')))
                .collect::<Vec<_>>()
                .join(","),
        };
        let initial_cluster = parse_initial_cluster(&cluster_spec, &a.initial_cluster_token)?;
        let me = initial_cluster
            .iter()
            .find(|p| p.name == a.name)
            .ok_or_else(|| ConfigError::NameNotInCluster(a.name.clone()))?;
        let listed: BTreeSet<String> = me.peer_urls.iter().map(url_key).collect();
        let advertised: BTreeSet<String> = advertise_peer_urls.iter().map(url_key).collect();
        if listed != advertised {
            return Err(ConfigError::PeerUrlMismatch {
                name: a.name.clone(),
                cluster: join_urls(&me.peer_urls),
                advertised: join_urls(&advertise_peer_urls),
            });
        }
        let first_https = |flag: &'static str, urls: &[Url]| {
            urls.iter()
                .find(|u| u.scheme() == "https")
                .map(|u| (flag, u.as_str().trim_end_matches('/').to_string()))
        };
        let client_use = SideUse {
            serves: first_https("listen-client-urls", &listen_client_urls)
                .or_else(|| first_https("listen-metrics-urls", &listen_metrics_urls)),
            dials: None,
        };
        let cluster_urls: Vec<Url> = initial_cluster
            .iter()
            .flat_map(|p| p.peer_urls.iter().cloned())
            .collect();
        let peer_use = SideUse {
            serves: first_https("listen-peer-urls", &listen_peer_urls),
            dials: first_https("initial-cluster", &cluster_urls),
        };
        let tls = TlsSettings::from_flags(
            &SideFlags {
                cert_file: a.cert_file.clone(),
                key_file: a.key_file.clone(),
                trusted_ca_file: a.trusted_ca_file.clone(),
                client_cert_auth: a.client_cert_auth,
            },
            &client_use,
            &SideFlags {
                cert_file: a.peer_cert_file.clone(),
                key_file: a.peer_key_file.clone(),
                trusted_ca_file: a.peer_trusted_ca_file.clone(),
                client_cert_auth: a.peer_client_cert_auth,
            },
            &peer_use,
        )?;
        let id = me.id;
        let cluster_id = cluster_id(&initial_cluster, &a.initial_cluster_token);
        Ok(MemberConfig {
            name: a.name.clone(),
            id,
            cluster_id,
            data_dir: a
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", a.name))),
            listen_client_urls,
            advertise_client_urls,
            listen_peer_urls,
            advertise_peer_urls,
            initial_cluster,
            initial_cluster_state: a.initial_cluster_state,
            cluster_token: a.initial_cluster_token.clone(),
            heartbeat_interval: Duration::from_millis(a.heartbeat_interval),
            election_timeout: Duration::from_millis(a.election_timeout),
            snapshot_count: if a.snapshot_count == 0 {
                crate::cli::DEFAULT_SNAPSHOT_COUNT
            } else {
                a.snapshot_count
            },
            auto_compaction,
            watch_progress_notify_interval,
            max_request_bytes: usize::try_from(a.max_request_bytes)
                .map_err(|_| ConfigError::BadMaxRequestBytes(a.max_request_bytes))?,
            quota_backend_bytes: if a.quota_backend_bytes == 0 {
                DEFAULT_QUOTA_BACKEND_BYTES
            } else {
                a.quota_backend_bytes
            },
            listen_metrics_urls,
            metrics: a.metrics,
            log_level: a.log_level,
            tls,
            auth_token_ttl: auth_token_ttl(a)?,
            jwt: jwt_tokens(a)?,
            bcrypt_cost: bcrypt_cost(a.bcrypt_cost)?,
        })
    }

    /// Election timeout in heartbeat ticks (the core's clock unit).
    pub fn election_ticks(&self) -> u32 {
        let ticks = self.election_timeout.as_millis() / self.heartbeat_interval.as_millis().max(1);
        u32::try_from(ticks).unwrap_or(u32::MAX)
    }

    /// The other members.
    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.initial_cluster.iter().filter(move |p| p.id != self.id)
    }
}

fn url_key(u: &Url) -> String {
    u.as_str().trim_end_matches('/').to_string()
}

fn join_urls(urls: &[Url]) -> String {
    urls.iter().map(url_key).collect::<Vec<_>>().join(",")
}

/// Parses a comma-separated list of `http://host:port` or
/// `https://host:port` URLs.
pub fn parse_urls(flag: &'static str, value: &str) -> Result<Vec<Url>, ConfigError> {
    let mut out = Vec::new();
    for part in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        out.push(parse_url(flag, part)?);
    }
    if out.is_empty() {
        return Err(ConfigError::EmptyUrls(flag));
    }
    Ok(out)
}

fn parse_url(flag: &'static str, value: &str) -> Result<Url, ConfigError> {
    let bad = |reason: &str| ConfigError::BadUrl {
        flag,
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let u = Url::parse(value).map_err(|e| bad(&e.to_string()))?;
    match u.scheme() {
        "http" | "https" => {}
        s => return Err(bad(&format!("URL scheme must be http or https, got {s:?}"))),
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(bad("URL must have a host"));
    }
    if u.port().is_none() {
        return Err(bad("URL must have an explicit port"));
    }
    if !(u.path().is_empty() || u.path() == "/") || u.query().is_some() {
        return Err(bad("URL must not have a path or query"));
    }
    Ok(u)
}

/// Parses `name=url,name=url,...` (a name may repeat to list several URLs).
fn parse_initial_cluster(value: &str, token: &str) -> Result<Vec<Peer>, ConfigError> {
    let bad = |reason: String| ConfigError::BadInitialCluster {
        value: value.to_string(),
        reason,
    };
    let mut by_name: Vec<(String, Vec<Url>)> = Vec::new();
    let mut seen_urls = BTreeSet::new();
    for part in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, url) = part
            .split_once('=')
            .ok_or_else(|| bad(format!("{part:?} is not name=url")))?;
        let url = parse_url("initial-cluster", url)?;
        if !seen_urls.insert(url_key(&url)) {
            return Err(bad(format!("URL {url} appears more than once")));
        }
        // `etcdctl member add` prints a member that was added but never
        // started as `=<peer URL>` (no name yet), and etcd accepts it: each
        // such URL stays a member of its own.
        match by_name
            .iter_mut()
            .find(|(n, _)| !name.is_empty() && n == name)
        {
            Some((_, urls)) => urls.push(url),
            None => by_name.push((name.to_string(), vec![url])),
        }
    }
    if by_name.is_empty() {
        return Err(bad("no members".to_string()));
    }
    if by_name.len() > MAX_CLUSTER_MEMBERS {
        return Err(bad(format!("more than {MAX_CLUSTER_MEMBERS} members")));
    }
    let mut peers: Vec<Peer> = by_name
        .into_iter()
        .map(|(name, peer_urls)| Peer {
            id: member_id(&peer_urls, token),
            name,
            peer_urls,
        })
        .collect();
    peers.sort_by_key(|p| p.id);
    if peers.windows(2).any(|w| w[0].id == w[1].id) {
        return Err(bad("two members hash to the same id".to_string()));
    }
    Ok(peers)
}

/// FNV-1a, 64 bit: a stable hash for deriving ids.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for part in parts {
        for b in part.iter() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
        // Separator so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(PRIME);
    }
    h
}

/// A member id from its sorted peer URLs and the cluster token (as etcd
/// derives it, with a different hash). Never 0.
pub fn member_id(peer_urls: &[Url], token: &str) -> u64 {
    let mut urls: Vec<String> = peer_urls.iter().map(url_key).collect();
    urls.sort();
    let joined = urls.join("");
    fnv1a(&[joined.as_bytes(), token.as_bytes()]).max(1)
}

/// A cluster id from the member ids and the token. Never 0.
pub fn cluster_id(peers: &[Peer], token: &str) -> u64 {
    let mut ids: Vec<u64> = peers.iter().map(|p| p.id).collect();
    ids.sort_unstable();
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    fnv1a(&[&bytes, token.as_bytes()]).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{normalize_args, Cli};
    use clap::Parser;

    fn config(args: &[&str]) -> Result<MemberConfig, ConfigError> {
        let mut v = vec!["metalraft"];
        v.extend_from_slice(args);
        let cli = Cli::try_parse_from(normalize_args(v.into_iter().map(Into::into))).unwrap();
        MemberConfig::from_args(&cli.member)
    }

    const THREE: &str = "a=http://127.0.0.1:2380,b=http://127.0.0.1:22380,c=http://127.0.0.1:32380";

    #[test]
    fn defaults_form_a_single_member_cluster() {
        let c = config(&[]).unwrap();
        assert_eq!(c.initial_cluster.len(), 1);
        assert_eq!(c.initial_cluster[0].name, "default");
        assert_eq!(c.data_dir, PathBuf::from("default.etcd"));
        assert_eq!(c.election_ticks(), 10);
    }

    #[test]
    fn three_members_get_distinct_ids_and_one_cluster_id() {
        let a = config(&[
            "--name=a",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster",
            THREE,
        ])
        .unwrap();
        let b = config(&[
            "--name=b",
            "--initial-advertise-peer-urls=http://127.0.0.1:22380",
            "--initial-cluster",
            THREE,
        ])
        .unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(a.cluster_id, b.cluster_id);
        assert_eq!(a.peers().count(), 2);
    }

    #[test]
    fn name_missing_from_initial_cluster_is_rejected() {
        let e = config(&["--name=z", "--initial-cluster", THREE]).unwrap_err();
        assert_eq!(e, ConfigError::NameNotInCluster("z".into()));
        assert!(e.to_string().contains("couldn't find local name \"z\""));
    }

    #[test]
    fn advertised_peer_urls_must_match_initial_cluster() {
        let e = config(&[
            "--name=a",
            "--initial-advertise-peer-urls=http://127.0.0.1:9999",
            "--initial-cluster",
            THREE,
        ])
        .unwrap_err();
        assert!(matches!(e, ConfigError::PeerUrlMismatch { .. }), "{e}");
    }

    #[test]
    fn heartbeat_not_well_below_election_timeout_is_rejected() {
        let e = config(&["--heartbeat-interval=500", "--election-timeout=1000"]).unwrap_err();
        assert_eq!(
            e,
            ConfigError::ElectionTooShort {
                election_ms: 1000,
                heartbeat_ms: 500
            }
        );
        let e = config(&["--election-timeout=60000"]).unwrap_err();
        assert_eq!(e, ConfigError::ElectionTooLong(60000));
    }

    #[test]
    fn bad_urls_are_rejected_with_the_flag_name() {
        for bad in [
            "localhost:2379",
            "unixs://127.0.0.1:2379",
            "http://127.0.0.1",
            "http://127.0.0.1:1/x",
            "",
        ] {
            let e = config(&["--listen-client-urls", bad]).unwrap_err();
            assert!(e.to_string().contains("listen-client-urls"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn unnamed_members_printed_by_member_add_are_accepted() {
        let c = config(&[
            "--name=a",
            "--initial-cluster-state=existing",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster",
            "=http://127.0.0.1:1,=http://127.0.0.1:2,a=http://127.0.0.1:2380",
        ])
        .unwrap();
        assert_eq!(c.initial_cluster.len(), 3);
    }

    #[test]
    fn malformed_initial_cluster_is_rejected() {
        for bad in [
            "a",
            "=http://127.0.0.1:1",
            "a=http://127.0.0.1:1,b=http://127.0.0.1:1",
        ] {
            assert!(
                config(&["--name=a", "--initial-cluster", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn https_urls_need_certificates_and_cert_auth_needs_a_ca() {
        let e = config(&["--listen-client-urls=https://127.0.0.1:2379"]).unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::Tls(TlsError::MissingCertOrKey {
                    missing: "cert-file",
                    ..
                })
            ),
            "{e}"
        );
        assert!(e.to_string().contains("--cert-file"), "{e}");
        let e = config(&[
            "--listen-metrics-urls=https://127.0.0.1:2381",
            "--cert-file=/nonexistent/c.pem",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("--key-file"), "{e}");
        let e = config(&["--listen-peer-urls=https://127.0.0.1:2380"]).unwrap_err();
        assert!(e.to_string().contains("--peer-cert-file"), "{e}");
        let e = config(&["--client-cert-auth"]).unwrap_err();
        assert_eq!(
            e,
            ConfigError::Tls(TlsError::CertAuthWithoutCa {
                flag: "client-cert-auth",
                ca_flag: "trusted-ca-file"
            })
        );
        let e = config(&["--peer-client-cert-auth=true"]).unwrap_err();
        assert!(e.to_string().contains("--peer-trusted-ca-file"), "{e}");
        // Dialing https peers needs the peer CA.
        let e = config(&[
            "--initial-advertise-peer-urls=https://127.0.0.1:2380",
            "--initial-cluster=default=https://127.0.0.1:2380",
        ])
        .unwrap_err();
        assert!(
            matches!(e, ConfigError::Tls(TlsError::DialWithoutCa { .. })),
            "{e}"
        );
        // A missing file is named.
        let e = config(&[
            "--listen-client-urls=https://127.0.0.1:2379",
            "--cert-file=/nonexistent/c.pem",
            "--key-file=/nonexistent/k.pem",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/c.pem"), "{e}");
        // Files named by flags are checked even when only dialing uses them.
        let e = config(&["--peer-trusted-ca-file=/nonexistent/ca.pem"]).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let c = config(&[]).unwrap();
        assert!(c.tls.client_server.is_none() && c.tls.peer_dial.is_none());
    }

    #[test]
    fn existing_cluster_state_is_accepted() {
        let c = config(&["--initial-cluster-state=existing"]).unwrap();
        assert_eq!(c.initial_cluster_state, ClusterState::Existing);
    }
}
