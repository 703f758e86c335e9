//! The command line: etcd's flags with etcd's names, defaults and `ETCD_*`
//! environment variables, plus the `dev` subcommand.
//!
//! etcd parses flags with Go's `flag` package, which accepts `-name` as well
//! as `--name`. [`normalize_args`] rewrites a single-dash long flag into the
//! double-dash form before clap sees it, so manifests written for etcd work.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// etcd's default `--listen-client-urls` and `--advertise-client-urls`.
pub const DEFAULT_CLIENT_URL: &str = "http://localhost:2379";
/// etcd's default `--listen-peer-urls` and `--initial-advertise-peer-urls`.
pub const DEFAULT_PEER_URL: &str = "http://localhost:2380";
/// etcd's default member name.
pub const DEFAULT_NAME: &str = "default";
/// etcd's default `--initial-cluster-token`.
pub const DEFAULT_CLUSTER_TOKEN: &str = "etcd-cluster";
/// etcd's default `--heartbeat-interval`, in milliseconds.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 100;
/// etcd's default `--election-timeout`, in milliseconds.
pub const DEFAULT_ELECTION_TIMEOUT_MS: u64 = 1000;
/// etcd 3.4's default `--snapshot-count`.
pub const DEFAULT_SNAPSHOT_COUNT: u64 = 100_000;
/// etcd's default `--max-request-bytes` (1.5 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 1024 * 1024 + 512 * 1024;
/// Default data directory of `metalraft dev`.
pub const DEFAULT_DEV_DATA_DIR: &str = "metalraft-data";

/// How `--auto-compaction-retention` is read (etcd's
/// `--auto-compaction-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AutoCompactionMode {
    /// Keep a time window of history.
    Periodic,
    /// Keep a number of revisions.
    Revision,
}

/// `metalraft`: an etcd-compatible replicated key-value server.
#[derive(Debug, Parser)]
#[command(
    name = "metalraft",
    version,
    about = "An etcd-compatible replicated key-value server built on the metalraft Raft core",
    long_about = "An etcd-compatible replicated key-value server built on the metalraft Raft core.\n\n\
                  Without a subcommand it runs one cluster member and accepts etcd's flags \
                  (also as ETCD_* environment variables). `metalraft dev` runs a local \
                  3-member cluster.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to run; without a subcommand, one member.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The member's flags.
    #[command(flatten)]
    pub member: MemberArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a local 3-member cluster (client ports 2379, 22379, 32379; peer
    /// ports 2380, 22380, 32380), each member a child process with its own
    /// data directory. Ctrl-C stops it; running it again resumes.
    Dev(DevArgs),
    /// Inspect or restore a backup written by `etcdctl snapshot save`.
    Snapshot(SnapshotArgs),
}

/// `metalraft snapshot ...`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// What to do with the file.
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

/// Backup operations (etcd 3.4's `etcdctl snapshot status|restore`).
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Print a backup's hash, revision, key count and size.
    Status {
        /// The file `etcdctl snapshot save` wrote.
        file: PathBuf,
        /// Output format.
        #[arg(long, short = 'w', value_enum, default_value_t = StatusFormat::Table)]
        write_out: StatusFormat,
    },
    /// Create a new member's data directory from a backup. Run it for every
    /// member of the new cluster with the flags the member will run with
    /// (at least --name, --initial-cluster, --initial-cluster-token,
    /// --initial-advertise-peer-urls, --data-dir), then start the members.
    Restore {
        /// The file `etcdctl snapshot save` wrote.
        file: PathBuf,
        /// Do not check the file's trailing SHA-256.
        #[arg(long)]
        skip_hash_check: bool,
        /// The new member's flags.
        #[command(flatten)]
        member: Box<MemberArgs>,
    },
}

/// Output formats of `metalraft snapshot status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    /// etcdctl's table.
    Table,
    /// One JSON object with etcdctl's field names.
    Json,
}

/// Flags of `metalraft dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Directory holding one data directory per member.
    #[arg(long, default_value = DEFAULT_DEV_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Log level of the members.
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,
    /// Added to every port (to run a second dev cluster, or in tests).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=MAX_DEV_PORT_OFFSET as i64))]
    pub port_offset: u16,
}

/// Largest `metalraft dev --port-offset` (keeps 32380 + offset a valid port).
pub const MAX_DEV_PORT_OFFSET: u16 = 30_000;

/// Whether the member starts a new cluster or joins an existing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ClusterState {
    /// All members in `--initial-cluster` start together.
    New,
    /// The member joins a running cluster.
    Existing,
}

/// etcd's `--metrics` levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MetricsLevel {
    /// etcd's default series.
    Basic,
    /// Also `grpc_server_handling_seconds`, per method.
    Extensive,
}

/// etcd's log levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    /// Everything, including per-request traces.
    Debug,
    /// Normal operation.
    Info,
    /// Only problems.
    Warn,
    /// Only errors.
    Error,
    /// Like `error` (etcd's zap level).
    Panic,
    /// Like `error` (etcd's zap level).
    Fatal,
}

impl LogLevel {
    /// The `tracing` level to filter at.
    pub fn tracing_level(self) -> tracing::Level {
        match self {
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Error | LogLevel::Panic | LogLevel::Fatal => tracing::Level::ERROR,
        }
    }

    /// The flag value, for passing on to child processes.
    pub fn as_flag(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
            LogLevel::Panic => "panic",
            LogLevel::Fatal => "fatal",
        }
    }
}

/// One member's flags, named and defaulted as etcd's (see
/// <https://etcd.io/docs/v3.4/op-guide/configuration/>). Validation of the
/// values and their relationships happens in [`crate::config`].
#[derive(Debug, Args)]
pub struct MemberArgs {
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = DEFAULT_NAME)]
    pub name: String,
    /// Path to the data directory [default: ${name}.etcd].
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// List of URLs to listen on for client traffic (comma-separated).
    #[arg(long, env = "ETCD_LISTEN_CLIENT_URLS", default_value = DEFAULT_CLIENT_URL)]
    pub listen_client_urls: String,
    /// List of this member's client URLs to advertise to the public.
    #[arg(long, env = "ETCD_ADVERTISE_CLIENT_URLS", default_value = DEFAULT_CLIENT_URL)]
    pub advertise_client_urls: String,
    /// List of URLs to listen on for peer traffic.
    #[arg(long, env = "ETCD_LISTEN_PEER_URLS", default_value = DEFAULT_PEER_URL)]
    pub listen_peer_urls: String,
    /// List of this member's peer URLs to advertise to the rest of the cluster.
    #[arg(long, env = "ETCD_INITIAL_ADVERTISE_PEER_URLS", default_value = DEFAULT_PEER_URL)]
    pub initial_advertise_peer_urls: String,
    /// Initial cluster configuration for bootstrapping, `name=peer-url,...`
    /// [default: ${name}=${initial-advertise-peer-urls}].
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Initial cluster state ('new' or 'existing').
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", value_enum, default_value_t = ClusterState::New)]
    pub initial_cluster_state: ClusterState,
    /// Initial cluster token for the cluster during bootstrap; members with
    /// different tokens reject each other's messages.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_TOKEN", default_value = DEFAULT_CLUSTER_TOKEN)]
    pub initial_cluster_token: String,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = DEFAULT_HEARTBEAT_INTERVAL_MS)]
    pub heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = DEFAULT_ELECTION_TIMEOUT_MS)]
    pub election_timeout: u64,
    /// Number of committed transactions to trigger a snapshot to disk.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = DEFAULT_SNAPSHOT_COUNT)]
    pub snapshot_count: u64,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: u64,
    /// Raise alarms when the backend size exceeds the given quota (0 defaults
    /// to the low space quota).
    #[arg(long, env = "ETCD_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    pub quota_backend_bytes: u64,
    /// Auth token type: 'simple' (random tokens replicated through the
    /// log) or 'jwt,pub-key=<path>,priv-key=<path>,sign-method=<RS256|
    /// RS384|RS512|PS256|PS384|PS512|ES256|ES384>[,ttl=<duration>]'.
    #[arg(long, env = "ETCD_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,
    /// Time (in seconds) of a simple auth token's TTL, renewed on each use.
    #[arg(long, env = "ETCD_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// Cost of bcrypt hashing for user passwords (4 to 31).
    #[arg(long, env = "ETCD_BCRYPT_COST", default_value_t = 10)]
    pub bcrypt_cost: u32,
    /// Interpret --auto-compaction-retention as hours/a duration
    /// ('periodic') or as a number of revisions ('revision').
    #[arg(long, env = "ETCD_AUTO_COMPACTION_MODE", value_enum, default_value_t = AutoCompactionMode::Periodic)]
    pub auto_compaction_mode: AutoCompactionMode,
    /// Auto compaction retention for the MVCC key-value history: '0' is
    /// off; in periodic mode a number of hours or a duration ('5m', '72h');
    /// in revision mode a number of revisions.
    #[arg(long, env = "ETCD_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,
    /// Duration of the periodic watch progress notifications (etcd's
    /// experimental flag; a Go duration such as '10m0s').
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL",
        default_value = "10m0s"
    )]
    pub experimental_watch_progress_notify_interval: String,
    /// List of URLs to listen on for the metrics and health endpoints.
    #[arg(long, env = "ETCD_LISTEN_METRICS_URLS")]
    pub listen_metrics_urls: Option<String>,
    /// Set level of detail for exported metrics: 'basic' or 'extensive'
    /// (adds the per-method gRPC handling-time histograms).
    #[arg(long, env = "ETCD_METRICS", value_enum, default_value_t = MetricsLevel::Basic)]
    pub metrics: MetricsLevel,
    /// Log level: debug, info, warn, error, panic, or fatal.
    #[arg(long, env = "ETCD_LOG_LEVEL", value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,
    /// Path to the client server TLS cert file (needed by https:// client
    /// and metrics URLs).
    #[arg(long, env = "ETCD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Path to the client server TLS key file.
    #[arg(long, env = "ETCD_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Path to the client server TLS trusted CA cert file; as in etcd, it
    /// also turns client certificate authentication on.
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Enable client cert authentication (requires --trusted-ca-file).
    #[arg(long, env = "ETCD_CLIENT_CERT_AUTH", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_value_t = false, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub client_cert_auth: bool,
    /// Path to the peer server TLS cert file (also this member's client
    /// certificate when it dials peers).
    #[arg(long, env = "ETCD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Path to the peer server TLS key file.
    #[arg(long, env = "ETCD_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// Path to the peer server TLS trusted CA file (verifies peers in both
    /// directions; as in etcd, it also turns peer client cert auth on).
    #[arg(long, env = "ETCD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Enable peer client cert authentication (requires
    /// --peer-trusted-ca-file).
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_AUTH", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_value_t = false, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub peer_client_cert_auth: bool,
}

/// Long flag names that etcd users may spell with a single dash.
const LONG_FLAGS: &[&str] = &[
    "name",
    "data-dir",
    "listen-client-urls",
    "advertise-client-urls",
    "listen-peer-urls",
    "initial-advertise-peer-urls",
    "initial-cluster",
    "initial-cluster-state",
    "initial-cluster-token",
    "heartbeat-interval",
    "election-timeout",
    "snapshot-count",
    "max-request-bytes",
    "quota-backend-bytes",
    "auth-token",
    "auth-token-ttl",
    "bcrypt-cost",
    "listen-metrics-urls",
    "metrics",
    "auto-compaction-mode",
    "auto-compaction-retention",
    "experimental-watch-progress-notify-interval",
    "log-level",
    "cert-file",
    "key-file",
    "trusted-ca-file",
    "client-cert-auth",
    "peer-cert-file",
    "peer-key-file",
    "peer-trusted-ca-file",
    "peer-client-cert-auth",
    "version",
    "help",
];

/// Rewrites Go-style single-dash long flags (`-name x`, `-name=x`) into
/// `--name x` / `--name=x`. Everything else is passed through unchanged;
/// values are never rewritten (only an argument that names a known flag is).
pub fn normalize_args<I: IntoIterator<Item = OsString>>(args: I) -> Vec<OsString> {
    args.into_iter()
        .map(|arg| {
            let Some(s) = arg.to_str() else { return arg };
            let Some(rest) = s.strip_prefix('-') else {
                return arg;
            };
            if rest.starts_with('-') {
                return arg;
            }
            let flag = rest.split_once('=').map_or(rest, |(f, _)| f);
            if LONG_FLAGS.contains(&flag) {
                OsString::from(format!("-{s}"))
            } else {
                arg
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let v = normalize_args(args.iter().map(OsString::from));
        Cli::try_parse_from(v)
    }

    #[test]
    fn single_and_double_dash_long_flags_are_equivalent() {
        let a = parse(&["metalraft", "-name", "n1", "-heartbeat-interval=50"]).unwrap();
        let b = parse(&["metalraft", "--name=n1", "--heartbeat-interval", "50"]).unwrap();
        assert_eq!(a.member.name, "n1");
        assert_eq!(b.member.name, "n1");
        assert_eq!(a.member.heartbeat_interval, 50);
        assert_eq!(b.member.heartbeat_interval, 50);
    }

    #[test]
    fn values_that_look_like_flags_are_not_rewritten() {
        // A value following a flag is never touched unless it names a known flag.
        let v = normalize_args(["metalraft", "--name", "-x"].iter().map(OsString::from));
        assert_eq!(v[2], OsString::from("-x"));
    }

    #[test]
    fn defaults_match_etcd() {
        let c = parse(&["metalraft"]).unwrap();
        let m = c.member;
        assert_eq!(m.name, "default");
        assert_eq!(m.listen_client_urls, "http://localhost:2379");
        assert_eq!(m.listen_peer_urls, "http://localhost:2380");
        assert_eq!(m.initial_cluster_state, ClusterState::New);
        assert_eq!(m.initial_cluster_token, "etcd-cluster");
        assert_eq!(m.heartbeat_interval, 100);
        assert_eq!(m.election_timeout, 1000);
        assert_eq!(m.snapshot_count, 100_000);
        assert_eq!(m.max_request_bytes, 1_572_864);
        assert_eq!(m.log_level, LogLevel::Info);
    }

    #[test]
    fn unknown_flag_is_an_error() {
        let e = parse(&["metalraft", "--no-such-flag"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
    }

    #[test]
    fn bad_enum_value_is_an_error() {
        let e = parse(&["metalraft", "--initial-cluster-state", "maybe"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue);
    }

    #[test]
    fn tls_flags_parse_like_go_booleans() {
        let c = parse(&["metalraft"]).unwrap().member;
        assert!(!c.client_cert_auth && !c.peer_client_cert_auth);
        assert_eq!(c.cert_file, None);
        let c = parse(&[
            "metalraft",
            "--client-cert-auth",
            "-peer-client-cert-auth=true",
            "--cert-file=/c.pem",
            "-key-file",
            "/k.pem",
            "--trusted-ca-file=/ca.pem",
            "--peer-cert-file=/pc.pem",
            "--peer-key-file=/pk.pem",
            "--peer-trusted-ca-file=/pca.pem",
        ])
        .unwrap()
        .member;
        assert!(c.client_cert_auth && c.peer_client_cert_auth);
        assert_eq!(c.cert_file, Some(PathBuf::from("/c.pem")));
        assert_eq!(c.key_file, Some(PathBuf::from("/k.pem")));
        assert_eq!(c.trusted_ca_file, Some(PathBuf::from("/ca.pem")));
        assert_eq!(c.peer_cert_file, Some(PathBuf::from("/pc.pem")));
        assert_eq!(c.peer_key_file, Some(PathBuf::from("/pk.pem")));
        assert_eq!(c.peer_trusted_ca_file, Some(PathBuf::from("/pca.pem")));
        let c = parse(&["metalraft", "--client-cert-auth=false"])
            .unwrap()
            .member;
        assert!(!c.client_cert_auth);
        assert!(parse(&["metalraft", "--client-cert-auth=maybe"]).is_err());
    }

    #[test]
    fn dev_subcommand_parses() {
        let c = parse(&["metalraft", "dev", "--data-dir", "/tmp/x"]).unwrap();
        match c.command {
            Some(Command::Dev(d)) => assert_eq!(d.data_dir, PathBuf::from("/tmp/x")),
            other => panic!("expected dev, got {other:?}"),
        }
    }

    #[test]
    fn snapshot_restore_takes_the_member_flags() {
        let c = parse(&[
            "metalraft",
            "snapshot",
            "restore",
            "/tmp/b.db",
            "--name",
            "n1",
            "--skip-hash-check",
        ])
        .unwrap();
        match c.command {
            Some(Command::Snapshot(SnapshotArgs {
                command:
                    SnapshotCommand::Restore {
                        file,
                        skip_hash_check,
                        member,
                    },
            })) => {
                assert_eq!(file, PathBuf::from("/tmp/b.db"));
                assert!(skip_hash_check);
                assert_eq!(member.name, "n1");
            }
            other => panic!("expected snapshot restore, got {other:?}"),
        }
        assert!(parse(&["metalraft", "snapshot", "restore"]).is_err());
        assert!(parse(&["metalraft", "snapshot", "status", "f", "-w", "yaml"]).is_err());
    }
}
