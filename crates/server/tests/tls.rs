//! TLS and mutual TLS on real `metalraft` processes on loopback, with
//! certificates generated here (rcgen) and Debian's `etcdctl`, the
//! `etcd-client` crate and raw rustls/tonic clients on the other end.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bin, etcdctl_try, eventually, free_port, json_u64, wait_exit, WAIT};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tokio_rustls::rustls;

// ---------------------------------------------------------------- PKI

/// A certificate authority generated for one test.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    /// The CA certificate as a PEM file.
    pem: PathBuf,
}

/// A certificate and its key, as PEM files.
#[derive(Clone)]
struct Pair {
    cert: PathBuf,
    key: PathBuf,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let pem = dir.join(format!("{name}.pem"));
        std::fs::write(&pem, cert.pem()).unwrap();
        Ca { cert, key, pem }
    }

    /// A leaf for 127.0.0.1/localhost; `server` adds the serverAuth usage
    /// (clientAuth is always there: members use their certificates both ways).
    fn issue(&self, dir: &Path, name: &str, server: bool) -> Pair {
        let mut p =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if server {
            p.extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        let pair = Pair {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&pair.cert, cert.pem()).unwrap();
        std::fs::write(&pair.key, key.serialize_pem()).unwrap();
        pair
    }
}

/// Everything a test cluster needs: a client CA and a peer CA (different,
/// as recommended), member certificates, a good etcdctl client certificate,
/// and a rogue CA with its own client and peer certificates.
struct Pki {
    client_ca: Ca,
    peer_ca: Ca,
    /// Client-port server certificate (also the relay's client identity).
    server: Pair,
    /// Peer certificate (server and client).
    peer: Pair,
    /// etcdctl's certificate, issued by the client CA.
    client: Pair,
    /// A client certificate issued by the rogue CA.
    rogue_client: Pair,
    /// A peer certificate issued by the rogue CA.
    rogue_peer: Pair,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let client_ca = Ca::new(dir, "client-ca");
        let peer_ca = Ca::new(dir, "peer-ca");
        let rogue_ca = Ca::new(dir, "rogue-ca");
        Pki {
            server: client_ca.issue(dir, "server", true),
            peer: peer_ca.issue(dir, "peer", true),
            client: client_ca.issue(dir, "etcdctl", false),
            rogue_client: rogue_ca.issue(dir, "rogue-etcdctl", false),
            rogue_peer: rogue_ca.issue(dir, "rogue-peer", true),
            client_ca,
            peer_ca,
        }
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

// ---------------------------------------------------------------- cluster

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    metrics_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Members with https client and peer URLs, client-cert-auth and
/// peer-client-cert-auth, and a plain-http metrics URL.
struct TlsCluster {
    dir: tempfile::TempDir,
    pki: Pki,
    members: Vec<Member>,
}

impl TlsCluster {
    fn start(n: usize) -> TlsCluster {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        let mut c = TlsCluster {
            pki,
            members: Vec::new(),
            dir,
        };
        for i in 0..n {
            c.add_spec(&format!("m{i}"));
        }
        let cluster = c.initial_cluster(n);
        for i in 0..n {
            let flags = c.flags(i, &cluster, "new", &c.pki.peer);
            c.spawn(i, &flags);
        }
        c.wait_for_leader();
        c
    }

    fn add_spec(&mut self, name: &str) -> usize {
        self.members.push(Member {
            name: name.to_string(),
            client_port: free_port(),
            peer_port: free_port(),
            metrics_port: free_port(),
            data_dir: self.dir.path().join(name),
            log: self.dir.path().join(format!("{name}.log")),
            child: None,
        });
        self.members.len() - 1
    }

    fn peer_url(&self, i: usize) -> String {
        format!("https://127.0.0.1:{}", self.members[i].peer_port)
    }

    /// `name=url` of the first `n` members.
    fn initial_cluster(&self, n: usize) -> String {
        (0..n)
            .map(|i| format!("{}={}", self.members[i].name, self.peer_url(i)))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn flags(&self, i: usize, cluster: &str, state: &str, peer: &Pair) -> Vec<String> {
        let m = &self.members[i];
        let p = &self.pki;
        vec![
            format!("--name={}", m.name),
            format!("--data-dir={}", s(&m.data_dir)),
            format!("--listen-client-urls=https://127.0.0.1:{}", m.client_port),
            format!(
                "--advertise-client-urls=https://127.0.0.1:{}",
                m.client_port
            ),
            format!("--listen-peer-urls={}", self.peer_url(i)),
            format!("--initial-advertise-peer-urls={}", self.peer_url(i)),
            format!("--listen-metrics-urls=http://127.0.0.1:{}", m.metrics_port),
            format!("--initial-cluster={cluster}"),
            format!("--initial-cluster-state={state}"),
            "--initial-cluster-token=tls-test".to_string(),
            format!("--cert-file={}", s(&p.server.cert)),
            format!("--key-file={}", s(&p.server.key)),
            format!("--trusted-ca-file={}", s(&p.client_ca.pem)),
            "--client-cert-auth".to_string(),
            format!("--peer-cert-file={}", s(&peer.cert)),
            format!("--peer-key-file={}", s(&peer.key)),
            format!("--peer-trusted-ca-file={}", s(&p.peer_ca.pem)),
            "--peer-client-cert-auth".to_string(),
            "--log-level=debug".to_string(),
        ]
    }

    fn spawn(&mut self, i: usize, flags: &[String]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.members[i].log)
            .unwrap();
        let child = Command::new(bin())
            .args(flags)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn metalraft");
        self.members[i].child = Some(child);
    }

    fn endpoint(&self, i: usize) -> String {
        format!("https://127.0.0.1:{}", self.members[i].client_port)
    }

    fn endpoints(&self, n: usize) -> String {
        (0..n)
            .map(|i| self.endpoint(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// etcdctl with the CA and the good client certificate.
    fn ctl(&self, eps: &str, args: &[&str]) -> Output {
        let p = &self.pki;
        let mut v = vec![
            format!("--endpoints={eps}"),
            format!("--cacert={}", s(&p.client_ca.pem)),
            format!("--cert={}", s(&p.client.cert)),
            format!("--key={}", s(&p.client.key)),
        ];
        v.extend(args.iter().map(|a| a.to_string()));
        etcdctl_try(&v.iter().map(String::as_str).collect::<Vec<_>>())
    }

    fn ctl_ok(&self, eps: &str, args: &[&str]) -> String {
        let out = self.ctl(eps, args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `put`, retried while the cluster is electing.
    fn put(&self, eps: &str, k: &str, v: &str) {
        eventually(&format!("put {k}"), || {
            let out = self.ctl(eps, &["put", k, v]);
            out.status.success().then_some(())
        });
    }

    fn status(&self, i: usize) -> Option<String> {
        let out = self.ctl(&self.endpoint(i), &["endpoint", "status", "-w", "json"]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn wait_for_leader(&self) -> usize {
        let n = self.members.iter().filter(|m| m.child.is_some()).count();
        eventually("a leader", || {
            (0..n).find(|&i| {
                self.status(i).is_some_and(|t| {
                    let leader = json_u64(&t, "leader").unwrap_or(0);
                    leader != 0 && Some(leader) == json_u64(&t, "member_id")
                })
            })
        })
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.members[i].log).unwrap_or_default()
    }

    fn alive(&mut self, i: usize) -> bool {
        self.members[i]
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(c) = m.child.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            for m in &self.members {
                eprintln!(
                    "===== {} log =====\n{}",
                    m.name,
                    std::fs::read_to_string(&m.log).unwrap_or_default()
                );
            }
        }
    }
}

// ---------------------------------------------------------------- raw TLS clients

fn rustls_client(ca: &Path, identity: Option<&Pair>, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some(p) => b
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(&p.cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(&p.key).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(cfg)
}

/// `GET path` over HTTPS/1.1; the response, or the error that ended the
/// exchange (a refused client certificate ends it with a TLS alert).
fn https_get(port: u16, path: &str, ca: &Path, identity: Option<&Pair>) -> Result<String, String> {
    let cfg = rustls_client(ca, identity, b"http/1.1");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(cfg, name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    match tls.read_to_end(&mut out) {
        Ok(_) => {}
        // rustls reports a peer closing without close_notify; the body is there.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    if text.is_empty() {
        return Err("connection closed without a response".into());
    }
    Ok(text)
}

fn http_get(port: u16, path: &str) -> String {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).unwrap();
    out
}

/// A Peer-service `Deliver` of an empty batch with a valid envelope, over
/// TLS with `identity` as the client certificate.
fn deliver(
    rt: &tokio::runtime::Runtime,
    peer_port: u16,
    ca: &Path,
    identity: Option<&Pair>,
    envelope: metalraft::proto::peer::Envelope,
) -> Result<(), (tonic::Code, String)> {
    use metalraft::proto::peer::{peer_client::PeerClient, RaftBatch};
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    rt.block_on(async {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()));
        if let Some(p) = identity {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(&p.cert).unwrap(),
                std::fs::read(&p.key).unwrap(),
            ));
        }
        let ep = Endpoint::from_shared(format!("https://127.0.0.1:{peer_port}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .tls_config(tls)
            .unwrap();
        let ch = ep
            .connect()
            .await
            .map_err(|e| (tonic::Code::Unavailable, format!("connect: {e:?}")))?;
        PeerClient::new(ch)
            .deliver(RaftBatch {
                envelope: Some(envelope),
                messages: Vec::new(),
            })
            .await
            .map(|_| ())
            .map_err(|st| (st.code(), st.to_string()))
    })
}

// ---------------------------------------------------------------- tests

/// (a) + (b): a 3-member cluster with mutual TLS on both ports elects a
/// leader and serves etcdctl with the right certificate; without a client
/// certificate, or with one from another CA, etcdctl and HTTPS clients are
/// refused; the plain-http metrics URL serves probes without a certificate.
#[test]
fn mutual_tls_cluster_serves_etcdctl_and_refuses_untrusted_clients() {
    let c = TlsCluster::start(3);
    let eps = c.endpoints(3);
    c.put(&eps, "greeting", "hello");
    for i in 0..3 {
        let ep = c.endpoint(i);
        assert_eq!(c.ctl_ok(&ep, &["get", "greeting"]), "greeting\nhello\n");
    }
    let status = c.ctl_ok(&eps, &["endpoint", "status", "-w", "table"]);
    for i in 0..3 {
        assert!(status.contains(&c.endpoint(i)), "{status}");
    }
    let members = c.ctl_ok(&eps, &["member", "list"]);
    assert_eq!(members.lines().count(), 3, "{members}");
    assert!(members.contains("https://127.0.0.1:"), "{members}");

    let p = &c.pki;
    let ep0 = c.endpoint(0);
    let ca = format!("--cacert={}", s(&p.client_ca.pem));
    // No client certificate: refused in the handshake.
    let out = etcdctl_try(&[&format!("--endpoints={ep0}"), &ca, "get", "greeting"]);
    assert!(
        !out.status.success(),
        "etcdctl without a client cert succeeded"
    );
    // A client certificate from another CA: refused.
    let out = etcdctl_try(&[
        &format!("--endpoints={ep0}"),
        &ca,
        &format!("--cert={}", s(&p.rogue_client.cert)),
        &format!("--key={}", s(&p.rogue_client.key)),
        "put",
        "greeting",
        "rogue",
    ]);
    assert!(
        !out.status.success(),
        "etcdctl with a foreign client cert succeeded"
    );
    // Plain text on the https port: refused.
    let out = etcdctl_try(&[
        &format!("--endpoints=127.0.0.1:{}", c.members[0].client_port),
        "get",
        "greeting",
    ]);
    assert!(!out.status.success(), "plain-text etcdctl succeeded");
    // The right one still works, and the rogue write did not happen.
    assert_eq!(
        c.ctl_ok(&ep0, &["get", "greeting", "--print-value-only"])
            .trim(),
        "hello"
    );

    // /health and /metrics on the client port need the client certificate
    // too (as in etcd); the http metrics URL serves without one.
    let port = c.members[0].client_port;
    let ok = https_get(port, "/health", &p.client_ca.pem, Some(&p.client)).expect("health");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("\"health\":\"true\""), "{ok}");
    let no_cert = https_get(port, "/health", &p.client_ca.pem, None);
    assert!(
        no_cert.is_err(),
        "health without a client cert: {no_cert:?}"
    );
    let rogue = https_get(port, "/metrics", &p.client_ca.pem, Some(&p.rogue_client));
    assert!(
        rogue.is_err(),
        "metrics with a foreign client cert: {rogue:?}"
    );
    let probe = http_get(c.members[0].metrics_port, "/health");
    assert!(probe.starts_with("HTTP/1.1 200"), "{probe}");
    assert!(http_get(c.members[0].metrics_port, "/metrics").contains("etcd_server_has_leader 1"));
    // The refusals were logged with the remote address.
    assert!(
        c.log(0).contains("TLS handshake refused"),
        "no refused handshake in the log"
    );
}

/// (c): a peer certificate from another CA cannot deliver Raft messages
/// (raw Peer-service calls with a valid envelope) nor join the cluster
/// (a 4th process after `member add`), while a member with a proper
/// certificate joins and catches up, and the three keep serving. The
/// member is added through a follower, so the relay to the leader's https
/// client URL is exercised too.
#[test]
fn peer_with_a_certificate_from_another_ca_cannot_deliver_or_join() {
    let mut c = TlsCluster::start(3);
    let eps = c.endpoints(3);
    c.put(&eps, "before", "1");
    let leader = c.wait_for_leader();
    let status = c.status(leader).expect("leader status");
    let cluster_id = json_u64(&status, "cluster_id").expect("cluster_id");
    let leader_id = json_u64(&status, "member_id").expect("member_id");
    let follower = (leader + 1) % 3;
    let follower_id = json_u64(&c.status(follower).expect("status"), "member_id").unwrap();
    let env = metalraft::proto::peer::Envelope {
        cluster_id,
        from: leader_id,
        to: follower_id,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fport = c.members[follower].peer_port;
    let p = &c.pki;
    // Control: the real peer certificate delivers.
    deliver(&rt, fport, &p.peer_ca.pem, Some(&p.peer), env).expect("deliver with the peer cert");
    // A rogue peer certificate (trusting the real CA) is refused before
    // any gRPC call reaches the service; so is no certificate at all.
    for (what, id) in [("rogue cert", Some(&p.rogue_peer)), ("no cert", None)] {
        let e = deliver(&rt, fport, &p.peer_ca.pem, id, env).expect_err(what);
        assert_ne!(
            e.0,
            tonic::Code::PermissionDenied,
            "{what} reached the service: {e:?}"
        );
        assert_ne!(
            e.0,
            tonic::Code::InvalidArgument,
            "{what} reached the service: {e:?}"
        );
        eprintln!("{what}: refused with {e:?}");
    }
    // The client certificate is not a peer certificate (other CA) either.
    let e = deliver(&rt, fport, &p.peer_ca.pem, Some(&p.client), env).expect_err("client cert");
    assert_ne!(e.0, tonic::Code::PermissionDenied, "{e:?}");

    // A 4th process whose peer certificate comes from the rogue CA, added
    // as a learner through a follower.
    let rogue = c.add_spec("rogue");
    let out = c.ctl_ok(
        &c.endpoint(follower),
        &[
            "member",
            "add",
            "rogue",
            "--learner",
            &format!("--peer-urls={}", c.peer_url(rogue)),
        ],
    );
    assert!(out.contains("added"), "{out}");
    let cluster = format!("{},rogue={}", c.initial_cluster(3), c.peer_url(rogue));
    let rogue_peer = c.pki.rogue_peer.clone();
    let flags = c.flags(rogue, &cluster, "existing", &rogue_peer);
    c.spawn(rogue, &flags);
    c.put(&eps, "after", "2");
    // It cannot even learn the cluster's member list: it gives up.
    let status = wait_exit(c.members[rogue].child.as_mut().unwrap(), WAIT)
        .expect("the rogue member kept running");
    c.members[rogue].child = None;
    assert!(!status.success());
    assert!(
        c.log(rogue)
            .contains("no member of --initial-cluster answered"),
        "{}",
        c.log(rogue)
    );
    assert!(
        (0..3).any(|i| c.log(i).contains("TLS handshake refused")),
        "no member logged the refused peer handshake"
    );
    // The three keep serving.
    c.put(&eps, "still", "3");
    assert_eq!(
        c.ctl_ok(&eps, &["get", "still", "--print-value-only"])
            .trim(),
        "3"
    );

    // Control: the same procedure with a proper peer certificate works.
    c.ctl_ok(
        &eps,
        &["member", "remove", &member_id_by_peer_url(&c, &eps, rogue)],
    );
    let good = c.add_spec("good");
    let out = c.ctl_ok(
        &c.endpoint(follower),
        &[
            "member",
            "add",
            "good",
            "--learner",
            &format!("--peer-urls={}", c.peer_url(good)),
        ],
    );
    assert!(out.contains("added"), "{out}");
    let cluster = format!("{},good={}", c.initial_cluster(3), c.peer_url(good));
    let peer = c.pki.peer.clone();
    let flags = c.flags(good, &cluster, "existing", &peer);
    c.spawn(good, &flags);
    let ep = c.endpoint(good);
    eventually("the new member catches up", || {
        let out = c.ctl(
            &ep,
            &["get", "still", "--consistency=s", "--print-value-only"],
        );
        (out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "3").then_some(())
    });
    assert!(c.alive(good));
}

/// The hex id of member `i` (started or not), from `member list`.
fn member_id_by_peer_url(c: &TlsCluster, eps: &str, i: usize) -> String {
    let list = c.ctl_ok(eps, &["member", "list"]);
    let url = c.peer_url(i);
    list.lines()
        .find(|l| l.contains(&url))
        .and_then(|l| l.split(',').next())
        .map(|id| id.trim().to_string())
        .unwrap_or_else(|| panic!("{url} not in member list:\n{list}"))
}

/// Garbage, plain text, a truncated ClientHello and idle connections on the
/// https client and peer ports: the member neither crashes nor stops
/// serving, idle handshakes are cut after the handshake timeout, and other
/// clients are served while they hang.
#[test]
fn garbage_and_stalled_handshakes_on_tls_ports_do_not_stop_the_member() {
    let mut c = TlsCluster::start(1);
    let ports = [c.members[0].client_port, c.members[0].peer_port];
    let mut idle = Vec::new();
    for port in ports {
        for payload in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..],
            &[0xff; 4096][..],
            &[0x16, 0x03, 0x03, 0xff, 0xff, 0x01, 0x00, 0xff, 0xfb][..],
        ] {
            let mut t = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let _ = t.write_all(payload);
            idle.push(t);
        }
        let mut junk = Vec::new();
        let mut x: u32 = 0x1234_5678;
        for _ in 0..65536 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            junk.push(x as u8);
        }
        let mut t = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _ = t.write_all(&junk);
        drop(t);
        // Connections that never say anything.
        for _ in 0..20 {
            idle.push(TcpStream::connect(("127.0.0.1", port)).unwrap());
        }
    }
    // While all of them hang, the member serves.
    let started = Instant::now();
    let ep = c.endpoint(0);
    c.put(&ep, "k", "v");
    assert_eq!(
        c.ctl_ok(&ep, &["get", "k", "--print-value-only"]).trim(),
        "v"
    );
    // Were handshakes served one at a time, each stalled one would hold
    // the port for the whole handshake timeout.
    assert!(
        started.elapsed() < 2 * metalraft::tls::TLS_HANDSHAKE_TIMEOUT,
        "serving waited for the stalled handshakes ({:?})",
        started.elapsed()
    );
    // A connection that never finishes its handshake is closed by the
    // member once the handshake timeout passes.
    let mut hung = TcpStream::connect(("127.0.0.1", ports[0])).unwrap();
    hung.set_read_timeout(Some(metalraft::tls::TLS_HANDSHAKE_TIMEOUT * 3))
        .unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 16];
    let n = hung
        .read(&mut buf)
        .expect("the member closes a stalled handshake");
    assert_eq!(n, 0);
    assert!(t0.elapsed() >= metalraft::tls::TLS_HANDSHAKE_TIMEOUT - Duration::from_secs(1));
    drop(idle);
    assert!(c.alive(0), "the member died");
    let p = &c.pki;
    let h = https_get(
        c.members[0].client_port,
        "/health",
        &p.client_ca.pem,
        Some(&p.client),
    )
    .expect("health");
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    assert!(
        c.log(0).contains("TLS handshake failed"),
        "garbage not logged"
    );
    c.put(&ep, "k2", "v2");
    assert!(c.alive(0));
}

/// Mixed listeners: one plain and one mutual-TLS client URL on the same
/// member (plain peer URL); etcdctl works on both (certificate only on the
/// https one) and the `etcd-client` crate connects over TLS.
#[test]
fn mixed_http_and_https_listeners_and_the_etcd_client_crate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (plain, secure, peer) = (free_port(), free_port(), free_port());
    let log = dir.path().join("m.log");
    let mut child = Command::new(bin())
        .args([
            "--name=m",
            &format!("--data-dir={}", s(&dir.path().join("m"))),
            &format!("--listen-client-urls=http://127.0.0.1:{plain},https://127.0.0.1:{secure}"),
            &format!("--advertise-client-urls=https://127.0.0.1:{secure}"),
            &format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            &format!("--initial-cluster=m=http://127.0.0.1:{peer}"),
            &format!("--cert-file={}", s(&pki.server.cert)),
            &format!("--key-file={}", s(&pki.server.key)),
            &format!("--trusted-ca-file={}", s(&pki.client_ca.pem)),
            "--client-cert-auth",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(&mut child, log.clone());
    let plain_ep = format!("--endpoints=127.0.0.1:{plain}");
    eventually("put over plain http", || {
        etcdctl_try(&[&plain_ep, "put", "a", "1"])
            .status
            .success()
            .then_some(())
    });
    let tls = [
        format!("--endpoints=https://127.0.0.1:{secure}"),
        format!("--cacert={}", s(&pki.client_ca.pem)),
        format!("--cert={}", s(&pki.client.cert)),
        format!("--key={}", s(&pki.client.key)),
    ];
    let mut args: Vec<&str> = tls.iter().map(String::as_str).collect();
    args.extend(["get", "a", "--print-value-only"]);
    let out = etcdctl_try(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    let out = etcdctl_try(&[&tls[0], &tls[1], "get", "a"]);
    assert!(
        !out.status.success(),
        "https without a client cert succeeded"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
        let opts = ConnectOptions::new().with_tls(
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(
                    std::fs::read(&pki.client_ca.pem).unwrap(),
                ))
                .identity(Identity::from_pem(
                    std::fs::read(&pki.client.cert).unwrap(),
                    std::fs::read(&pki.client.key).unwrap(),
                )),
        );
        let mut cl = Client::connect([format!("https://127.0.0.1:{secure}")], Some(opts))
            .await
            .expect("connect over TLS");
        cl.put("b", "2", None).await.expect("put over TLS");
        let r = cl.get("a", None).await.expect("get over TLS");
        assert_eq!(r.kvs()[0].value(), b"1");
        let st = cl.status().await.expect("status over TLS");
        assert_ne!(st.header().expect("header").member_id(), 0);
    });
    drop(guard);
}

struct KillOnDrop<'a>(&'a mut Child, PathBuf);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if std::thread::panicking() {
            eprintln!("{}", std::fs::read_to_string(&self.1).unwrap_or_default());
        }
    }
}

/// (d): configuration errors exit with status 2 before anything is bound,
/// naming the flag or the file.
#[test]
fn tls_configuration_errors_name_the_flag_or_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let data = format!("--data-dir={}", s(&dir.path().join("d")));
    let https_client = format!("--listen-client-urls=https://127.0.0.1:{}", free_port());
    let https_peer = format!("https://127.0.0.1:{}", free_port());
    let cert = format!("--cert-file={}", s(&pki.server.cert));
    let key = format!("--key-file={}", s(&pki.server.key));
    let cases: Vec<(Vec<String>, Vec<String>)> = vec![
        (vec![https_client.clone()], vec!["--cert-file".into()]),
        (
            vec![https_client.clone(), cert.clone()],
            vec!["--key-file".into()],
        ),
        (
            vec![
                format!("--listen-peer-urls={https_peer}"),
                format!("--initial-advertise-peer-urls={https_peer}"),
                format!("--initial-cluster=default={https_peer}"),
                format!("--peer-trusted-ca-file={}", s(&pki.peer_ca.pem)),
            ],
            vec!["--peer-cert-file".into()],
        ),
        (
            vec![
                https_client.clone(),
                format!("--cert-file={}", s(&missing)),
                key.clone(),
            ],
            vec!["--cert-file".into(), s(&missing)],
        ),
        (
            vec![
                https_client.clone(),
                cert.clone(),
                format!("--key-file={}", s(&garbage)),
            ],
            vec!["--key-file".into(), s(&garbage)],
        ),
        (
            vec![
                https_client.clone(),
                cert.clone(),
                format!("--key-file={}", s(&pki.client.key)),
            ],
            vec!["--key-file".into(), s(&pki.client.key)],
        ),
        (
            vec![
                https_client.clone(),
                cert.clone(),
                key.clone(),
                "--client-cert-auth".into(),
            ],
            vec!["--trusted-ca-file".into()],
        ),
        (
            vec![
                https_client.clone(),
                cert.clone(),
                key.clone(),
                format!("--trusted-ca-file={}", s(&garbage)),
            ],
            vec!["--trusted-ca-file".into(), s(&garbage)],
        ),
        (
            vec!["--peer-client-cert-auth".into()],
            vec!["--peer-trusted-ca-file".into()],
        ),
        (
            vec![
                format!("--initial-advertise-peer-urls={https_peer}"),
                format!("--initial-cluster=default={https_peer}"),
            ],
            vec!["--peer-trusted-ca-file".into()],
        ),
    ];
    for (args, wanted) in cases {
        let out = Command::new(bin())
            .arg(&data)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        for w in wanted {
            assert!(err.contains(&w), "{args:?}: {err:?} does not name {w}");
        }
    }
    // Nothing was created.
    assert!(!dir.path().join("d").exists());
}

/// With `--client-cert-auth` and auth enabled, a request without a token is
/// the user its certificate's CommonName names (etcd's behaviour); a token
/// (`--user`) wins over the certificate.
#[test]
fn the_client_certificate_common_name_is_the_auth_user() {
    let c = TlsCluster::start(1);
    let ep = c.endpoint(0);
    // etcdctl's certificate says CN=etcdctl.
    for args in [
        &["user", "add", "root:pw"][..],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "etcdctl:unused"],
        &["role", "add", "r"],
        &["role", "grant-permission", "r", "readwrite", "foo"],
        &["user", "grant-role", "etcdctl", "r"],
        &["auth", "enable"],
    ] {
        c.ctl_ok(&ep, args);
    }
    assert_eq!(c.ctl_ok(&ep, &["put", "foo", "1"]), "OK\n");
    let out = c.ctl(&ep, &["put", "bar", "1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Error: etcdserver: permission denied"),
        "{out:?}"
    );
    assert_eq!(
        c.ctl_ok(&ep, &["--user", "root:pw", "put", "bar", "1"]),
        "OK\n"
    );
}

/// etcdctl's per-endpoint commands over TLS send `:authority:
/// https://127.0.0.1:port`; the front layer repairs it after the handshake
/// (src/front.rs, ADR 0019).
#[test]
fn cluster_wide_etcdctl_commands_over_tls() {
    let c = TlsCluster::start(3);
    let ep0 = c.endpoint(0);
    c.put(&ep0, "k", "v");
    // --cluster dials the client URLs each member has published.
    eventually("every member published its client URL", || {
        let list = c.ctl_ok(&ep0, &["member", "list"]);
        (list.matches("https://").count() == 6).then_some(())
    });
    let status = c.ctl_ok(&ep0, &["endpoint", "status", "--cluster", "-w", "json"]);
    assert_eq!(status.matches("\"leader\":").count(), 3, "{status}");
    let hashes = c.ctl_ok(&ep0, &["endpoint", "hashkv", "--cluster", "-w", "json"]);
    assert_eq!(hashes.matches("\"hash\":").count(), 3, "{hashes}");
    let defrag = c.ctl_ok(&ep0, &["defrag", "--cluster"]);
    assert_eq!(
        defrag.matches("Finished defragmenting etcd member").count(),
        3,
        "{defrag}"
    );
}
