//! The front layer over crafted client byte streams, fed whole and split
//! at every size, decoded back as the server's `h2` would.

use super::*;

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

const BAD: &[u8] = b"http://127.0.0.1:2379";
const FIXED: &[u8] = b"127.0.0.1:2379";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let len = u32::try_from(payload.len()).unwrap();
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn settings() -> Vec<u8> {
    // SETTINGS_ENABLE_PUSH = 0, SETTINGS_INITIAL_WINDOW_SIZE = 65535.
    frame(0x4, 0, 0, &[0, 2, 0, 0, 0, 0, 0, 4, 0, 0, 0xff, 0xff])
}

fn request(authority: &[u8], path: &[u8]) -> Fields {
    vec![
        (b":method".to_vec(), b"POST".to_vec()),
        (b":scheme".to_vec(), b"http".to_vec()),
        (b":path".to_vec(), path.to_vec()),
        (b":authority".to_vec(), authority.to_vec()),
        (b"content-type".to_vec(), b"application/grpc".to_vec()),
        (b"user-agent".to_vec(), b"grpc-go/1.26.0".to_vec()),
        (b"te".to_vec(), b"trailers".to_vec()),
    ]
}

/// A client's encoder: indexes everything it can, so later blocks refer
/// to the connection's dynamic table.
fn encode(enc: &mut loona_hpack::Encoder<'static>, fields: &Fields) -> Vec<u8> {
    enc.encode(fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())))
}

/// Parses a server-side byte stream into frames; panics on a torn one.
fn frames(mut b: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        assert!(b.len() >= FRAME_HEADER_BYTES, "torn frame header");
        let h = parse_header(b);
        let end = FRAME_HEADER_BYTES + h.len;
        assert!(b.len() >= end, "torn frame payload");
        out.push((h, b[FRAME_HEADER_BYTES..end].to_vec()));
        b = &b[end..];
    }
    out
}

/// What the server sees: each header block decoded (with one decoder for
/// the connection, as `h2` does) and the other frames as they are.
#[derive(Debug, PartialEq)]
enum Seen {
    Block {
        stream: u32,
        end_stream: bool,
        fields: Fields,
    },
    Other(u8, Vec<u8>),
}

fn server_view(stream: &[u8]) -> Vec<Seen> {
    assert_eq!(&stream[..PREFACE.len()], PREFACE);
    let mut dec = loona_hpack::Decoder::new();
    let mut seen = Vec::new();
    let mut block: Option<(u32, bool, Vec<u8>)> = None;
    for (h, p) in frames(&stream[PREFACE.len()..]) {
        match h.kind {
            TYPE_HEADERS => {
                assert!(block.is_none());
                let (_, frag) = headers_payload(h.flags, &p).unwrap();
                block = Some((h.stream, h.flags & FLAG_END_STREAM != 0, frag.to_vec()));
            }
            TYPE_CONTINUATION => block.as_mut().unwrap().2.extend_from_slice(&p),
            k => seen.push(Seen::Other(k, p)),
        }
        if matches!(h.kind, TYPE_HEADERS | TYPE_CONTINUATION) && h.flags & FLAG_END_HEADERS != 0 {
            let (stream, end_stream, frag) = block.take().unwrap();
            let fields = dec.decode(&frag).unwrap();
            seen.push(Seen::Block {
                stream,
                end_stream,
                fields,
            });
        }
    }
    assert!(block.is_none(), "unterminated header block");
    seen
}

/// Runs `input` through a rewriter in chunks of `chunk` bytes.
fn run(input: &[u8], chunk: usize) -> (Vec<u8>, Rewriter) {
    let mut rw = Rewriter::new();
    let mut out = Vec::new();
    for piece in input.chunks(chunk) {
        rw.feed(piece, &mut out).unwrap();
    }
    rw.finish(&mut out);
    (out, rw)
}

const CHUNKS: &[usize] = &[1, 2, 5, 9, 10, 24, 33, 100, 1 << 20];

fn with_authority(fields: &Fields, a: &[u8]) -> Fields {
    fields
        .iter()
        .map(|(n, v)| {
            let v = if n.as_slice() == b":authority" {
                a.to_vec()
            } else {
                v.clone()
            };
            (n.clone(), v)
        })
        .collect()
}

/// Preface, SETTINGS, then for each request HEADERS and a DATA frame, the
/// encoder keeping its dynamic table across requests.
fn connection(authority: &[u8], requests: usize) -> (Vec<u8>, Vec<Fields>) {
    let mut enc = loona_hpack::Encoder::new();
    let mut b = PREFACE.to_vec();
    b.extend(settings());
    b.extend(frame(0x8, 0, 0, &[0, 0, 0x10, 0])); // WINDOW_UPDATE
    let mut sent = Vec::new();
    for i in 0..requests {
        let stream = 1 + 2 * u32::try_from(i).unwrap();
        let f = request(authority, b"/etcdserverpb.Maintenance/Status");
        b.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            stream,
            &encode(&mut enc, &f),
        ));
        b.extend(frame(0x0, FLAG_END_STREAM, stream, &[0, 0, 0, 0, 0]));
        sent.push(f);
    }
    (b, sent)
}

#[test]
fn repair_authority_takes_the_host_and_port_or_drops() {
    assert_eq!(repair_authority(b"127.0.0.1:2379"), Repair::Keep);
    assert_eq!(repair_authority(b"example.com"), Repair::Keep);
    assert_eq!(repair_authority(BAD), Repair::Replace(FIXED.to_vec()));
    assert_eq!(
        repair_authority(b"https://[::1]:2379/some/path"),
        Repair::Replace(b"[::1]:2379".to_vec())
    );
    assert_eq!(
        repair_authority(b"#initially=[https://example.com:2379;https://b:2379]"),
        Repair::Replace(b"example.com:2379".to_vec())
    );
    assert_eq!(repair_authority(b"#initially=[]"), Repair::Drop);
    assert_eq!(repair_authority(b"unix:///tmp/etcd.sock"), Repair::Drop);
    assert_eq!(repair_authority(b"a b"), Repair::Drop);
}

#[test]
fn a_valid_connection_passes_byte_for_byte_and_stops_inspecting() {
    let (input, _) = connection(b"127.0.0.1:2379", 3);
    for &c in CHUNKS {
        let mut rw = Rewriter::new();
        let mut out = Vec::new();
        let mut passed_at = None;
        for (i, piece) in input.chunks(c).enumerate() {
            rw.feed(piece, &mut out).unwrap();
            if rw.is_pass() && passed_at.is_none() {
                passed_at = Some(i * c);
            }
        }
        assert_eq!(out, input, "chunk {c}");
        // Decided on the first block: before the second request's bytes.
        let first_block_end = input.len() / 2;
        assert!(
            passed_at.unwrap() < first_block_end,
            "chunk {c}: decided late"
        );
    }
}

#[test]
fn the_preface_and_settings_are_forwarded_before_the_first_request() {
    let mut b = PREFACE.to_vec();
    b.extend(settings());
    let mut rw = Rewriter::new();
    let mut out = Vec::new();
    rw.feed(&b, &mut out).unwrap();
    assert_eq!(out, b, "hyper must see the preface to send its SETTINGS");
    assert!(!rw.is_pass() && !rw.is_repairing());
}

#[test]
fn http1_passes_at_once() {
    let req = b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut rw = Rewriter::new();
    let mut out = Vec::new();
    rw.feed(&req[..3], &mut out).unwrap();
    assert!(rw.is_pass());
    rw.feed(&req[3..], &mut out).unwrap();
    assert_eq!(out, req);
}

#[test]
fn bad_authorities_are_repaired_on_every_block_and_every_split() {
    let (input, sent) = connection(BAD, 4);
    for &c in CHUNKS {
        let (out, rw) = run(&input, c);
        assert_eq!(rw.repaired_blocks(), 0, "finish() leaves the repair mode");
        let seen = server_view(&out);
        let blocks: Vec<&Fields> = seen
            .iter()
            .filter_map(|s| match s {
                Seen::Block { fields, .. } => Some(fields),
                Seen::Other(..) => None,
            })
            .collect();
        assert_eq!(blocks.len(), sent.len(), "chunk {c}");
        for (got, want) in blocks.iter().zip(&sent) {
            assert_eq!(**got, with_authority(want, FIXED), "chunk {c}");
        }
        let data = seen
            .iter()
            .filter(|s| matches!(s, Seen::Other(0, p) if p == &[0; 5]))
            .count();
        assert_eq!(data, sent.len(), "chunk {c}: DATA frames untouched");
        // SETTINGS and WINDOW_UPDATE go first, unchanged.
        assert_eq!(
            seen[0],
            Seen::Other(0x4, settings()[FRAME_HEADER_BYTES..].to_vec())
        );
    }
    let mut rw = Rewriter::new();
    rw.feed(&input, &mut Vec::new()).unwrap();
    assert!(rw.is_repairing());
    assert_eq!(rw.repaired_blocks(), 4);
}

#[test]
fn clientv3_3_5_initially_authority_is_repaired() {
    let (input, sent) = connection(b"#initially=[http://127.0.0.1:2379]", 2);
    let (out, _) = run(&input, 7);
    let seen = server_view(&out);
    match &seen[2] {
        Seen::Block {
            fields,
            stream,
            end_stream,
        } => {
            assert_eq!(*fields, with_authority(&sent[0], FIXED));
            assert_eq!((*stream, *end_stream), (1, false));
        }
        other => panic!("expected a block, got {other:?}"),
    }
}

/// RFC 7541 Appendix B codes for the characters of [`BAD`].
fn huffman(s: &[u8]) -> Vec<u8> {
    let code = |c: u8| -> (u32, u32) {
        match c {
            b'0' => (0x0, 5),
            b'1' => (0x1, 5),
            b'2' => (0x2, 5),
            b't' => (0x9, 5),
            b'.' => (0x17, 6),
            b'/' => (0x18, 6),
            b'3' => (0x19, 6),
            b'7' => (0x1d, 6),
            b'9' => (0x1f, 6),
            b'h' => (0x27, 6),
            b'p' => (0x2b, 6),
            b':' => (0x5c, 7),
            other => panic!("no code for {other}"),
        }
    };
    let (mut acc, mut bits, mut out) = (0u64, 0u32, Vec::new());
    for &c in s {
        let (v, n) = code(c);
        acc = (acc << n) | u64::from(v);
        bits += n;
        while bits >= 8 {
            out.push((acc >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    if bits > 0 {
        // Pad with the EOS prefix (all ones).
        out.push(((acc << (8 - bits)) as u8) | ((1u8 << (8 - bits)) - 1));
    }
    out
}

#[test]
fn huffman_padded_priority_continuation_and_size_update_are_followed() {
    // Block 1: a table size update, :method POST (static 3), :scheme http
    // (static 6), :path literal with indexing, :authority (static name 1)
    // as a Huffman literal with incremental indexing.
    let mut block = vec![0x3f, 0xe1, 0x1f, 0x83, 0x86];
    block.extend([0x44, 4]);
    block.extend(b"/a/b");
    let h = huffman(BAD);
    block.push(0x41);
    encode_int(&mut block, h.len(), 7, 0x80);
    block.extend(&h);
    // Check the Huffman helper against the decoder itself.
    let decoded = loona_hpack::Decoder::new().decode(&block).unwrap();
    assert_eq!(decoded[3], (b":authority".to_vec(), BAD.to_vec()));

    // Sent as PADDED|PRIORITY HEADERS + CONTINUATION + CONTINUATION.
    let (a, rest) = block.split_at(4);
    let (b, c) = rest.split_at(5);
    let mut p = vec![3]; // pad length
    p.extend([0, 0, 0, 0, 15]); // priority: depends on 0, weight 16
    p.extend(a);
    p.extend([0, 0, 0]);
    let mut input = PREFACE.to_vec();
    input.extend(settings());
    input.extend(frame(
        TYPE_HEADERS,
        FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
        1,
        &p,
    ));
    input.extend(frame(TYPE_CONTINUATION, 0, 1, b));
    input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, c));
    // Block 2 refers to both dynamic entries: 63 = :path, 62 = :authority.
    input.extend(frame(
        TYPE_HEADERS,
        FLAG_END_HEADERS,
        3,
        &[0x83, 0x86, 0x80 | 63, 0x80 | 62],
    ));
    input.extend(frame(0x2, 0, 3, &[0, 0, 0, 1, 200])); // PRIORITY frame

    for &chunk in CHUNKS {
        let (out, _) = run(&input, chunk);
        let seen = server_view(&out);
        let want = vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (b":path".to_vec(), b"/a/b".to_vec()),
            (b":authority".to_vec(), FIXED.to_vec()),
        ];
        assert_eq!(
            seen[1],
            Seen::Block {
                stream: 1,
                end_stream: true,
                fields: want.clone()
            },
            "chunk {chunk}"
        );
        assert_eq!(
            seen[2],
            Seen::Block {
                stream: 3,
                end_stream: false,
                fields: want
            }
        );
        assert_eq!(seen[3], Seen::Other(0x2, vec![0, 0, 0, 1, 200]));
        // The priority fields survive, the padding does not.
        let fr = frames(&out[PREFACE.len()..]);
        assert_eq!(
            fr[1].0.flags,
            FLAG_PRIORITY | FLAG_END_STREAM | FLAG_END_HEADERS
        );
        assert_eq!(&fr[1].1[..PRIORITY_BYTES], &[0, 0, 0, 0, 15]);
    }
}

#[test]
fn a_block_larger_than_one_frame_is_re_split() {
    let mut f = request(BAD, b"/x");
    f.push((b"x-big".to_vec(), vec![b'v'; 40_000]));
    let mut enc = loona_hpack::Encoder::new();
    let block = encode(&mut enc, &f);
    let mut input = PREFACE.to_vec();
    input.extend(settings());
    let (a, b) = block.split_at(16_000);
    input.extend(frame(TYPE_HEADERS, 0, 1, a));
    input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, b));
    let (out, _) = run(&input, 4096);
    let fr = frames(&out[PREFACE.len()..]);
    assert!(fr.iter().all(|(h, _)| h.len <= OUT_FRAME_PAYLOAD_BYTES_MAX));
    assert!(
        fr.iter()
            .filter(|(h, _)| h.kind == TYPE_CONTINUATION)
            .count()
            >= 2
    );
    match &server_view(&out)[1] {
        Seen::Block { fields, .. } => assert_eq!(*fields, with_authority(&f, FIXED)),
        other => panic!("expected a block, got {other:?}"),
    }
}

#[test]
fn bad_bytes_on_the_repair_path_fail_without_panicking() {
    let (input, _) = connection(BAD, 1);
    let cases: Vec<(Vec<u8>, FrontError)> = vec![
        (
            frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &[0x82]),
            FrontError::StrayContinuation,
        ),
        (
            frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &[0x80 | 70]),
            FrontError::Hpack(DecoderError::HeaderIndexOutOfBounds),
        ),
        (
            frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &[0x3f, 0xe2, 0x1f, 0x82]),
            FrontError::Hpack(DecoderError::InvalidMaxDynamicSize),
        ),
        (
            frame(TYPE_HEADERS, FLAG_PADDED | FLAG_END_HEADERS, 3, &[9, 0x82]),
            FrontError::BadPadding,
        ),
        (
            [frame(TYPE_HEADERS, 0, 3, &[0x82]), frame(0x0, 0, 3, &[1])].concat(),
            FrontError::FrameInsideHeaderBlock(0),
        ),
        (
            {
                let mut h = frame(TYPE_HEADERS, 0, 3, &[]);
                h[..3].copy_from_slice(&[0x20, 0, 0]);
                h
            },
            FrontError::HeaderBlockTooLarge,
        ),
    ];
    for (tail, want) in cases {
        let mut rw = Rewriter::new();
        let mut out = Vec::new();
        rw.feed(&input, &mut out).unwrap();
        assert_eq!(rw.feed(&tail, &mut out), Err(want));
        assert!(rw.is_failed());
        let before = out.len();
        rw.feed(b"more", &mut out).unwrap();
        assert_eq!(out.len(), before, "nothing after a failure");
    }
}

#[test]
fn random_garbage_never_panics() {
    let (good, _) = connection(BAD, 2);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..2000 {
        let mut input = good.clone();
        let flips = 1 + next() % 8;
        for _ in 0..flips {
            let i = (next() as usize) % input.len();
            input[i] = next() as u8;
        }
        let cut = (next() as usize) % input.len();
        input.truncate(cut.max(1));
        let mut rw = Rewriter::new();
        let mut out = Vec::new();
        for piece in input.chunks(1 + (next() % 50) as usize) {
            if rw.feed(piece, &mut out).is_err() {
                assert!(rw.is_failed());
            }
        }
        rw.finish(&mut out);
        assert!(
            out.len() <= 4 * input.len() + 1024,
            "output bounded by input"
        );
    }
}

#[tokio::test]
async fn front_repairs_reads_and_passes_writes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (input, sent) = connection(BAD, 3);
    let (mut client, server) = tokio::io::duplex(64);
    let mut front = Front::new(server);
    let writer = tokio::spawn(async move {
        for piece in input.chunks(13) {
            client.write_all(piece).await.unwrap();
        }
        let mut reply = [0u8; 5];
        client.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"hello");
        client.shutdown().await.unwrap();
    });
    front.write_all(b"hello").await.unwrap();
    let mut out = Vec::new();
    front.read_to_end(&mut out).await.unwrap();
    writer.await.unwrap();
    let blocks = server_view(&out)
        .into_iter()
        .filter_map(|s| match s {
            Seen::Block { fields, .. } => Some(fields),
            Seen::Other(..) => None,
        })
        .collect::<Vec<_>>();
    assert_eq!(
        blocks,
        sent.iter()
            .map(|f| with_authority(f, FIXED))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn front_passes_a_valid_connection_unchanged() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (input, _) = connection(b"localhost:2379", 3);
    let (mut client, server) = tokio::io::duplex(64);
    let mut front = Front::new(server);
    let expect = input.clone();
    let writer = tokio::spawn(async move {
        client.write_all(&input).await.unwrap();
        client.shutdown().await.unwrap();
    });
    let mut out = Vec::new();
    front.read_to_end(&mut out).await.unwrap();
    writer.await.unwrap();
    assert_eq!(out, expect);
    assert!(front.rw.is_pass());
}
