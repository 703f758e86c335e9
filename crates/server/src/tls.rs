//! TLS and mutual TLS on the client and peer ports, with etcd's flags and
//! semantics, on rustls with the `ring` provider (no C toolchain beyond a C
//! compiler, no cmake/nasm: the musl build keeps working).
//!
//! - **Loading** ([`TlsSettings::from_flags`]): every certificate, key and CA
//!   file named by a flag that the configuration uses is read and parsed at
//!   startup, and the key is checked against its certificate, so a missing
//!   or broken file stops the member with an error naming the flag and the
//!   file instead of failing at the first connection.
//! - **Serving** ([`incoming`]): our own acceptor. Each accepted TCP
//!   connection is handshaken in its own task, bounded by
//!   [`TLS_HANDSHAKE_TIMEOUT`] and [`MAX_CONCURRENT_HANDSHAKES`], so a slow
//!   or garbage-speaking client never holds up the others; failures are
//!   logged with the remote address and only established streams reach the
//!   gRPC/HTTP server. ALPN offers `h2` and `http/1.1` (gRPC plus `/health`
//!   and `/metrics` on one port). With client-certificate authentication the
//!   handshake itself refuses a client without a certificate issued by the
//!   trusted CA.
//! - **Dialing** ([`TlsSettings::peer_dial`], [`TlsSettings::client_dial`]):
//!   tonic's `ClientTlsConfig` with the CA as roots and the member's
//!   certificate as client identity.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::rustls::{
    self,
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// Longest time a TLS handshake on a listener may take; a client that has
/// not finished by then is disconnected.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress on one listener; further connections wait
/// in the kernel's accept backlog until one finishes.
pub const MAX_CONCURRENT_HANDSHAKES: usize = 256;
/// Established TLS connections queued between the acceptor and the server.
pub const ACCEPTED_QUEUE: usize = 64;
/// Pause after a failed `accept` (e.g. out of file descriptors) before the
/// next attempt, so the acceptor does not spin.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// Largest certificate, key or CA file read (PEM files are a few KiB; a CA
/// bundle can be a few hundred KiB).
pub const MAX_PEM_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// ALPN protocols offered by our listeners, in preference order.
pub const ALPN_PROTOCOLS: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A certificate, key or CA file that cannot be used.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsError {
    /// The file cannot be read (missing, unreadable, a directory).
    #[error("cannot read --{flag} file {}: {reason}", path.display())]
    Read {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// The file is larger than [`MAX_PEM_FILE_BYTES`].
    #[error("--{flag} file {} is larger than {MAX_PEM_FILE_BYTES} bytes", path.display())]
    TooLarge {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// The file holds no PEM `CERTIFICATE` block, or a malformed one.
    #[error("--{flag} file {} holds no valid PEM certificate{}", path.display(), reason_suffix(reason))]
    NoCertificate {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What the PEM parser reported, if anything.
        reason: String,
    },
    /// The file holds no PEM private key (PKCS#8, PKCS#1 or SEC1), or a
    /// malformed one.
    #[error("--{flag} file {} holds no valid PEM private key{}", path.display(), reason_suffix(reason))]
    NoKey {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What the PEM parser reported, if anything.
        reason: String,
    },
    /// An `https://` listen URL without a certificate or key.
    #[error("--{missing} is required for --{url_flag} {url} with HTTPS scheme (TLS key/cert --{cert_flag} and --{key_flag} must be provided)")]
    MissingCertOrKey {
        /// The URL flag.
        url_flag: &'static str,
        /// The `https://` URL.
        url: String,
        /// The missing flag.
        missing: &'static str,
        /// The certificate flag of that side.
        cert_flag: &'static str,
        /// The key flag of that side.
        key_flag: &'static str,
    },
    /// Client-certificate authentication without a CA to verify against.
    #[error("--{flag} requires --{ca_flag} (the CA that client certificates must be issued by)")]
    CertAuthWithoutCa {
        /// `client-cert-auth` or `peer-client-cert-auth`.
        flag: &'static str,
        /// The CA flag of that side.
        ca_flag: &'static str,
    },
    /// An `https://` URL to dial without a CA to verify the server.
    #[error("--{url_flag} has {url} with HTTPS scheme: --{ca_flag} is required to verify it (system roots are not used)")]
    DialWithoutCa {
        /// The URL flag.
        url_flag: &'static str,
        /// The `https://` URL.
        url: String,
        /// The CA flag of that side.
        ca_flag: &'static str,
    },
    /// A CA file holds a certificate that cannot be a trust anchor.
    #[error("--{flag} file {}: unusable CA certificate: {reason}", path.display())]
    BadCa {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What rustls reported.
        reason: String,
    },
    /// rustls refused the certificate/key pair (e.g. the key does not
    /// belong to the certificate, or an unsupported key type).
    #[error("--{cert_flag} {} with --{key_flag} {}: {reason}", cert.display(), key.display())]
    BadKeyPair {
        /// The certificate flag.
        cert_flag: &'static str,
        /// The certificate file.
        cert: PathBuf,
        /// The key flag.
        key_flag: &'static str,
        /// The key file.
        key: PathBuf,
        /// What rustls reported.
        reason: String,
    },
}

fn reason_suffix(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(" ({reason})")
    }
}

/// The TLS-related flags of one side (client or peer), as given.
#[derive(Clone, Debug, Default)]
pub struct SideFlags {
    /// `--cert-file` / `--peer-cert-file`.
    pub cert_file: Option<PathBuf>,
    /// `--key-file` / `--peer-key-file`.
    pub key_file: Option<PathBuf>,
    /// `--trusted-ca-file` / `--peer-trusted-ca-file`.
    pub trusted_ca_file: Option<PathBuf>,
    /// `--client-cert-auth` / `--peer-client-cert-auth`.
    pub client_cert_auth: bool,
}

/// Flag names of one side, for error messages.
#[derive(Clone, Copy, Debug)]
pub struct SideNames {
    /// The client-certificate-authentication flag.
    pub auth: &'static str,
    /// The certificate flag.
    pub cert: &'static str,
    /// The key flag.
    pub key: &'static str,
    /// The CA flag.
    pub ca: &'static str,
}

/// The client side's flag names.
pub const CLIENT_FLAGS: SideNames = SideNames {
    auth: "client-cert-auth",
    cert: "cert-file",
    key: "key-file",
    ca: "trusted-ca-file",
};
/// The peer side's flag names.
pub const PEER_FLAGS: SideNames = SideNames {
    auth: "peer-client-cert-auth",
    cert: "peer-cert-file",
    key: "peer-key-file",
    ca: "peer-trusted-ca-file",
};

/// PEM material of one side, read and checked.
#[derive(Clone, Debug)]
struct Material {
    /// Certificate chain PEM and parsed DER, with the key (if both given).
    pair: Option<KeyPair>,
    /// CA PEM and parsed DER (if given).
    ca: Option<(Vec<u8>, Vec<CertificateDer<'static>>)>,
}

#[derive(Clone, Debug)]
struct KeyPair {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

/// Everything TLS a member needs, built once at startup.
#[derive(Clone, Debug, Default)]
pub struct TlsSettings {
    /// Server config of `https://` client (and metrics) listeners.
    pub client_server: Option<Arc<ServerConfig>>,
    /// Whether client listeners require a client certificate.
    pub client_cert_auth: bool,
    /// Server config of `https://` peer listeners.
    pub peer_server: Option<Arc<ServerConfig>>,
    /// Whether peer listeners require a peer certificate.
    pub peer_client_cert_auth: bool,
    /// How this member dials `https://` peer URLs: the peer CA as roots,
    /// the peer certificate (if any) as identity. `None` without
    /// `--peer-trusted-ca-file`.
    pub peer_dial: Option<ClientTlsConfig>,
    /// How a follower dials the leader's `https://` client URL to relay a
    /// membership request: `--trusted-ca-file` and `--peer-trusted-ca-file`
    /// as roots, `--cert-file`/`--key-file` (if given) as identity. `None`
    /// without either CA file.
    pub client_dial: Option<ClientTlsConfig>,
}

/// What the configuration does with TLS on one side: the first `https://`
/// URL (and its flag) it listens on, and the first it dials.
#[derive(Clone, Debug, Default)]
pub struct SideUse {
    /// An `https://` listen URL of this side (needs cert and key).
    pub serves: Option<(&'static str, String)>,
    /// An `https://` URL this member dials on this side (needs a CA).
    pub dials: Option<(&'static str, String)>,
}

impl TlsSettings {
    /// Reads and checks the files named by the flags, and builds the server
    /// and dial configurations. Only the files a side uses are read: as in
    /// etcd, certificate flags for a side that serves plain `http://` are
    /// ignored for serving (but CA and identity files still serve dialing).
    pub fn from_flags(
        client: &SideFlags,
        client_use: &SideUse,
        peer: &SideFlags,
        peer_use: &SideUse,
    ) -> Result<TlsSettings, TlsError> {
        check_side(client, client_use, CLIENT_FLAGS)?;
        check_side(peer, peer_use, PEER_FLAGS)?;
        let provider = provider();
        let client_mat = load_side(client, CLIENT_FLAGS)?;
        let peer_mat = load_side(peer, PEER_FLAGS)?;
        // etcd: a trusted CA file alone also turns client-certificate
        // authentication on (RequireAndVerifyClientCert).
        let client_auth = client.client_cert_auth || client.trusted_ca_file.is_some();
        let peer_auth = peer.client_cert_auth || peer.trusted_ca_file.is_some();
        let mut out = TlsSettings {
            client_cert_auth: client_auth,
            peer_client_cert_auth: peer_auth,
            ..TlsSettings::default()
        };
        if let (Some(_), Some(pair)) = (&client_use.serves, &client_mat.pair) {
            let ca = if client_auth {
                client_mat.ca.as_ref()
            } else {
                None
            };
            out.client_server = Some(server_config(&provider, pair, ca, client, CLIENT_FLAGS)?);
        }
        if let (Some(_), Some(pair)) = (&peer_use.serves, &peer_mat.pair) {
            let ca = if peer_auth {
                peer_mat.ca.as_ref()
            } else {
                None
            };
            out.peer_server = Some(server_config(&provider, pair, ca, peer, PEER_FLAGS)?);
        }
        if let Some((ca_pem, ca)) = &peer_mat.ca {
            if let Some(pair) = &peer_mat.pair {
                check_client_pair(&provider, ca, pair, peer, PEER_FLAGS)?;
            }
            out.peer_dial = Some(dial_config(&[ca_pem], peer_mat.pair.as_ref()));
        }
        let roots: Vec<&Vec<u8>> = [&client_mat.ca, &peer_mat.ca]
            .into_iter()
            .flatten()
            .map(|(pem, _)| pem)
            .collect();
        if !roots.is_empty() {
            out.client_dial = Some(dial_config(&roots, client_mat.pair.as_ref()));
        }
        Ok(out)
    }
}

/// etcd's rules on one side's flags, checked before any file is read.
fn check_side(flags: &SideFlags, used: &SideUse, names: SideNames) -> Result<(), TlsError> {
    if let Some((url_flag, url)) = &used.serves {
        let missing = if flags.cert_file.is_none() {
            Some(names.cert)
        } else if flags.key_file.is_none() {
            Some(names.key)
        } else {
            None
        };
        if let Some(missing) = missing {
            return Err(TlsError::MissingCertOrKey {
                url_flag,
                url: url.clone(),
                missing,
                cert_flag: names.cert,
                key_flag: names.key,
            });
        }
    }
    if flags.client_cert_auth && flags.trusted_ca_file.is_none() {
        return Err(TlsError::CertAuthWithoutCa {
            flag: names.auth,
            ca_flag: names.ca,
        });
    }
    if let Some((url_flag, url)) = &used.dials {
        if flags.trusted_ca_file.is_none() {
            return Err(TlsError::DialWithoutCa {
                url_flag,
                url: url.clone(),
                ca_flag: names.ca,
            });
        }
    }
    Ok(())
}

/// The crypto provider: ring, always explicitly (never the process default,
/// so nothing depends on which providers other crates enable).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_bounded(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let err = |e: std::io::Error| TlsError::Read {
        flag,
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(err)?;
    if !meta.is_file() {
        return Err(err(std::io::Error::other("not a regular file")));
    }
    if meta.len() > MAX_PEM_FILE_BYTES {
        return Err(TlsError::TooLarge {
            flag,
            path: path.to_path_buf(),
        });
    }
    std::fs::read(path).map_err(err)
}

fn load_certs(
    flag: &'static str,
    path: &Path,
) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), TlsError> {
    let pem = read_bounded(flag, path)?;
    let no_cert = |reason: String| TlsError::NoCertificate {
        flag,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| no_cert(e.to_string()))?;
    if certs.is_empty() {
        return Err(no_cert(String::new()));
    }
    Ok((pem, certs))
}

fn load_key(
    flag: &'static str,
    path: &Path,
) -> Result<(Vec<u8>, PrivateKeyDer<'static>), TlsError> {
    let pem = read_bounded(flag, path)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::NoKey {
        flag,
        path: path.to_path_buf(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => String::new(),
            e => e.to_string(),
        },
    })?;
    Ok((pem, key))
}

fn load_side(flags: &SideFlags, names: SideNames) -> Result<Material, TlsError> {
    let pair = match (&flags.cert_file, &flags.key_file) {
        (Some(c), Some(k)) => {
            let (cert_pem, chain) = load_certs(names.cert, c)?;
            let (key_pem, key) = load_key(names.key, k)?;
            Some(KeyPair {
                cert_pem,
                key_pem,
                chain,
                key: Arc::new(key),
            })
        }
        _ => None,
    };
    let ca = match &flags.trusted_ca_file {
        Some(p) => Some(load_certs(names.ca, p)?),
        None => None,
    };
    Ok(Material { pair, ca })
}

fn root_store(
    ca: &[CertificateDer<'static>],
    flags: &SideFlags,
    names: SideNames,
) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots.add(c.clone()).map_err(|e| TlsError::BadCa {
            flag: names.ca,
            path: flags.trusted_ca_file.clone().unwrap_or_default(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn bad_pair(flags: &SideFlags, names: SideNames, reason: String) -> TlsError {
    TlsError::BadKeyPair {
        cert_flag: names.cert,
        cert: flags.cert_file.clone().unwrap_or_default(),
        key_flag: names.key,
        key: flags.key_file.clone().unwrap_or_default(),
        reason,
    }
}

fn server_config(
    provider: &Arc<CryptoProvider>,
    pair: &KeyPair,
    client_ca: Option<&(Vec<u8>, Vec<CertificateDer<'static>>)>,
    flags: &SideFlags,
    names: SideNames,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad_pair(flags, names, e.to_string()))?;
    let builder = match client_ca {
        Some((_, ca)) => {
            let roots = Arc::new(root_store(ca, flags, names)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| TlsError::BadCa {
                    flag: names.ca,
                    path: flags.trusted_ca_file.clone().unwrap_or_default(),
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(pair.chain.clone(), pair.key.clone_key())
        .map_err(|e| bad_pair(flags, names, e.to_string()))?;
    cfg.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Checks, at startup, that the pair works as a client identity (tonic only
/// parses it when a connection is made).
fn check_client_pair(
    provider: &Arc<CryptoProvider>,
    ca: &[CertificateDer<'static>],
    pair: &KeyPair,
    flags: &SideFlags,
    names: SideNames,
) -> Result<(), TlsError> {
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad_pair(flags, names, e.to_string()))?
        .with_root_certificates(root_store(ca, flags, names)?)
        .with_client_auth_cert(pair.chain.clone(), pair.key.clone_key())
        .map(|_| ())
        .map_err(|e| bad_pair(flags, names, e.to_string()))
}

fn dial_config(ca_pems: &[&Vec<u8>], identity: Option<&KeyPair>) -> ClientTlsConfig {
    let mut c = ClientTlsConfig::new()
        .ca_certificates(ca_pems.iter().map(|p| Certificate::from_pem(p.as_slice())));
    if let Some(pair) = identity {
        c = c.identity(Identity::from_pem(&pair.cert_pem, &pair.key_pem));
    }
    c
}

/// Established TLS connections accepted on `listener`: a task accepts TCP
/// connections (TCP_NODELAY on) and hands each to its own handshake task,
/// bounded by [`TLS_HANDSHAKE_TIMEOUT`] and [`MAX_CONCURRENT_HANDSHAKES`].
/// Failed handshakes are logged with the remote address and dropped; the
/// stream never yields an error. The tasks stop when the returned stream
/// is dropped (the server shut down).
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    port: &'static str,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
    tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), port, tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

type Accepted = mpsc::Sender<std::io::Result<TlsStream<TcpStream>>>;

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    port: &'static str,
    tx: Accepted,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = tx.closed() => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = tx.closed() => return,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(port, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(port, %remote, error = %e, "could not set TCP_NODELAY");
        }
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    // A closed channel means the server stopped: drop it.
                    let _ = tx.send(Ok(stream)).await;
                }
                Ok(Err(e)) => log_handshake_error(port, remote, &e),
                Err(_) => {
                    tracing::debug!(port, %remote, timeout = ?TLS_HANDSHAKE_TIMEOUT, "TLS handshake timed out")
                }
            }
        });
    }
}

/// Certificate problems are worth a warning (a misconfigured or rogue
/// client or peer); anything else (a port scan, plain HTTP on the TLS port,
/// a reset) is debug noise.
fn log_handshake_error(port: &'static str, remote: std::net::SocketAddr, e: &std::io::Error) {
    let certificate_problem = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| {
            matches!(
                r,
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate)
                    | rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA)
                    | rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired)
            )
        });
    if certificate_problem {
        tracing::warn!(port, %remote, error = %e, "TLS handshake refused");
    } else {
        tracing::debug!(port, %remote, error = %e, "TLS handshake failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    fn side(cert: Option<PathBuf>, key: Option<PathBuf>, ca: Option<PathBuf>) -> SideFlags {
        SideFlags {
            cert_file: cert,
            key_file: key,
            trusted_ca_file: ca,
            client_cert_auth: false,
        }
    }

    fn serves() -> SideUse {
        SideUse {
            serves: Some(("listen-client-urls", "https://127.0.0.1:1".into())),
            dials: None,
        }
    }

    #[test]
    fn missing_and_garbage_files_name_the_flag_and_file() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope.pem");
        let e = TlsSettings::from_flags(
            &side(Some(missing.clone()), Some(missing.clone()), None),
            &serves(),
            &SideFlags::default(),
            &SideUse::default(),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                TlsError::Read {
                    flag: "cert-file",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("nope.pem"), "{e}");

        let garbage = write(d.path(), "garbage.pem", b"not a certificate\n");
        let e = TlsSettings::from_flags(
            &SideFlags::default(),
            &SideUse::default(),
            &side(None, None, Some(garbage.clone())),
            &SideUse::default(),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                TlsError::NoCertificate {
                    flag: "peer-trusted-ca-file",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("garbage.pem"), "{e}");

        let broken = write(
            d.path(),
            "broken.pem",
            b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        let e = load_certs("cert-file", &broken).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");
        let e = load_key("key-file", &garbage).unwrap_err();
        assert!(
            matches!(
                e,
                TlsError::NoKey {
                    flag: "key-file",
                    ..
                }
            ),
            "{e}"
        );
        let e = load_certs("cert-file", d.path()).unwrap_err();
        assert!(matches!(e, TlsError::Read { .. }), "{e}");
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let k1 = rcgen::KeyPair::generate().unwrap();
        let k2 = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&k1)
            .unwrap();
        let c = write(d.path(), "c.pem", cert.pem().as_bytes());
        let good = write(d.path(), "k1.pem", k1.serialize_pem().as_bytes());
        let bad = write(d.path(), "k2.pem", k2.serialize_pem().as_bytes());
        let ok = TlsSettings::from_flags(
            &side(Some(c.clone()), Some(good), Some(c.clone())),
            &serves(),
            &SideFlags::default(),
            &SideUse::default(),
        )
        .unwrap();
        assert!(ok.client_server.is_some());
        assert!(
            ok.client_cert_auth,
            "a trusted CA turns client auth on, as in etcd"
        );
        assert!(ok.client_dial.is_some());
        assert!(ok.peer_dial.is_none());
        let e = TlsSettings::from_flags(
            &side(Some(c), Some(bad), None),
            &serves(),
            &SideFlags::default(),
            &SideUse::default(),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                TlsError::BadKeyPair {
                    cert_flag: "cert-file",
                    ..
                }
            ),
            "{e}"
        );
    }
}
