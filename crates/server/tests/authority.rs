//! etcdctl 3.4's per-endpoint commands, which send an HTTP/2 `:authority`
//! with a scheme (`http://127.0.0.1:2379`), and clientv3 3.5.0's
//! `#initially=[…]` authority, against a 3-member cluster of real
//! processes: the client port's front layer (src/front.rs, ADR 0019)
//! repairs them, as etcd accepts them.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{etcdctl, json_u64, Cluster, WAIT};

/// `http://` URLs of every member's client port.
fn http_endpoints(c: &Cluster) -> String {
    (0..c.members.len())
        .map(|i| format!("http://{}", c.endpoint(i)))
        .collect::<Vec<_>>()
        .join(",")
}

fn member_id_hex(c: &Cluster, i: usize) -> String {
    let out = etcdctl(&[
        "--endpoints",
        &c.endpoint(i),
        "endpoint",
        "status",
        "-w",
        "json",
    ]);
    format!("{:x}", json_u64(&out, "member_id").expect("member_id"))
}

#[test]
fn etcdctl_cluster_wide_and_per_endpoint_commands_succeed() {
    let c = Cluster::start(3);
    let ep0 = c.endpoint(0);
    etcdctl(&["--endpoints", &ep0, "put", "k", "v"]);
    // --cluster dials the client URLs each member has published.
    common::eventually("every member published its client URL", || {
        let list = etcdctl(&["--endpoints", &ep0, "member", "list"]);
        (list.matches("http://").count() == 6).then_some(())
    });

    let status = etcdctl(&[
        "--endpoints",
        &ep0,
        "endpoint",
        "status",
        "--cluster",
        "-w",
        "json",
    ]);
    assert_eq!(status.matches("\"leader\":").count(), 3, "{status}");
    for i in 0..3 {
        assert!(
            status.contains(&format!("http://{}", c.endpoint(i))),
            "{status}"
        );
    }

    let hashes = etcdctl(&[
        "--endpoints",
        &ep0,
        "endpoint",
        "hashkv",
        "--cluster",
        "-w",
        "json",
    ]);
    assert_eq!(hashes.matches("\"hash\":").count(), 3, "{hashes}");

    let defrag = etcdctl(&["--endpoints", &ep0, "defrag", "--cluster"]);
    assert_eq!(
        defrag.matches("Finished defragmenting etcd member").count(),
        3,
        "{defrag}"
    );

    // move-leader with http:// endpoints: etcdctl asks each for its status,
    // then the leader to transfer.
    let leader = c.wait_for_leader();
    let target = (leader + 1) % 3;
    let target_id = member_id_hex(&c, target);
    let moved = etcdctl(&[
        "--endpoints",
        &http_endpoints(&c),
        "move-leader",
        &target_id,
    ]);
    assert!(moved.contains("Leadership transferred"), "{moved}");
    common::eventually("target leads", || {
        (c.leader() == Some(target)).then_some(())
    });

    // Plain calls through http:// endpoints too.
    etcdctl(&["--endpoints", &http_endpoints(&c), "put", "k2", "v2"]);
    assert_eq!(
        etcdctl(&[
            "--endpoints",
            &http_endpoints(&c),
            "get",
            "k2",
            "--print-value-only"
        ])
        .trim(),
        "v2"
    );
}

// A hand-written HTTP/2 client, since no Rust client can send an invalid
// authority: clientv3 3.5.0's request as it appears on the wire.

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A literal header field without indexing, new name, no Huffman (short
/// strings only: one-byte lengths).
fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    assert!(name.len() < 127 && value.len() < 127);
    out.push(0x00);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

fn read_frame(s: &mut TcpStream) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut h = [0u8; 9];
    s.read_exact(&mut h).ok()?;
    let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).ok()?;
    Some((h[3], h[4], stream, p))
}

/// Sends one Maintenance/Status call with `authority` on a fresh
/// connection; returns the response's decoded header fields (headers and
/// trailers), or what went wrong.
fn raw_status_call(port: u16, authority: &str) -> Result<Vec<(String, String)>, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut block = Vec::new();
    for (n, v) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/etcdserverpb.Maintenance/Status"),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        literal(&mut block, n, v);
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    out.extend(frame(0x1, 0x4, 1, &block));
    out.extend(frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0])); // empty StatusRequest
    s.write_all(&out).map_err(|e| e.to_string())?;
    let mut dec = loona_hpack::Decoder::new();
    let mut fields = Vec::new();
    loop {
        let (kind, flags, stream, p) = read_frame(&mut s).ok_or("connection closed")?;
        match kind {
            0x4 if flags & 0x1 == 0 => s.write_all(&frame(0x4, 0x1, 0, &[])).unwrap(),
            0x3 if stream == 1 => return Err(format!("RST_STREAM {p:?}")),
            0x7 => return Err(format!("GOAWAY {p:?}")),
            0x1 if stream == 1 => {
                for (n, v) in dec.decode(&p).map_err(|e| e.to_string())? {
                    fields.push((
                        String::from_utf8_lossy(&n).into_owned(),
                        String::from_utf8_lossy(&v).into_owned(),
                    ));
                }
                if flags & 0x1 != 0 {
                    return Ok(fields);
                }
            }
            _ => {}
        }
    }
}

#[test]
fn clientv3_3_5_initially_authority_gets_an_answer() {
    let c = Cluster::start(1);
    let port = c.members[0].client_port;
    for authority in [
        format!("#initially=[http://127.0.0.1:{port}]"),
        format!("http://127.0.0.1:{port}"),
        format!("127.0.0.1:{port}"),
    ] {
        let fields = raw_status_call(port, &authority)
            .unwrap_or_else(|e| panic!("authority {authority:?}: {e}"));
        assert!(
            fields.contains(&(":status".into(), "200".into())),
            "{authority}: {fields:?}"
        );
        assert!(
            fields.contains(&("grpc-status".into(), "0".into())),
            "{authority}: {fields:?}"
        );
    }
    // Still served normally afterwards (no member harmed by the garbage
    // below either).
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut bad = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bad.extend(frame(0x4, 0, 0, &[]));
    let mut block = Vec::new();
    literal(&mut block, ":authority", "http://x:1");
    bad.extend(frame(0x1, 0x4, 1, &block));
    bad.extend(frame(0x9, 0x4, 7, &[0xff, 0xff, 0xff]));
    s.write_all(&bad).unwrap();
    let mut sink = Vec::new();
    // The member closes the connection (EOF or reset): it does not hang.
    if let Err(e) = s.read_to_end(&mut sink) {
        assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "connection left open: {e}"
        );
    }
    let fields = raw_status_call(port, &format!("http://127.0.0.1:{port}")).unwrap();
    assert!(
        fields.contains(&("grpc-status".into(), "0".into())),
        "{fields:?}"
    );
}
