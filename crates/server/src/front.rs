//! The client port's front layer: repairs an HTTP/2 `:authority` that etcd
//! accepts and the `h2` crate refuses.
//!
//! # Contract
//!
//! - **What it fixes.** etcdctl 3.4 sends `:authority: http://127.0.0.1:2379`
//!   (a scheme inside the authority) for its per-endpoint calls, and
//!   clientv3 3.5.0 sends `#initially=[https://host:2379]` (etcd-io/etcd
//!   #13192). Go gRPC ignores the value; `h2` resets every such stream with
//!   `PROTOCOL_ERROR` and has no option to accept it (hyperium/h2#525). On a
//!   connection whose first request carries an authority that
//!   [`http::uri::Authority`] (the parser `h2` uses) refuses, [`Front`]
//!   rewrites every request's `:authority` to the `host:port` found inside
//!   it, or drops the field when none is found ([`repair_authority`]).
//! - **Where it sits.** On each accepted client connection, after TLS and
//!   before hyper. Server→client bytes are never touched.
//! - **The normal path.** The preface and the frames before the first
//!   HEADERS are forwarded as soon as they arrive (hyper waits for the
//!   preface before it sends its own SETTINGS). The first header block is
//!   held until complete and decoded once; when its authority is valid, or
//!   the bytes are not HTTP/2 (HTTP/1.1 for the gateway) or not parseable,
//!   the held bytes are replayed and every later read goes straight to the
//!   socket.
//! - **The repair path.** HPACK's dynamic table is connection-wide, so once
//!   one block is rewritten every client→server header block is transcoded:
//!   decoded with the client's table state, the authority repaired, and
//!   re-encoded as literals without indexing (no Huffman, no dynamic-table
//!   insertion), so the server's decoder table stays empty and consistent.
//!   Padding is dropped, priority fields are kept, and the block is re-split
//!   into HEADERS and CONTINUATION frames of at most
//!   [`OUT_FRAME_PAYLOAD_BYTES_MAX`]. Every other frame passes unchanged.
//! - **Bad input.** Bytes the layer cannot follow on the repair path (an
//!   undecodable block, a CONTINUATION out of place, a block above
//!   [`HEADER_BLOCK_BYTES_MAX`]) end the client's byte stream as seen by
//!   the server, which then closes the connection; nothing panics. On the
//!   normal path such bytes go to `h2` untouched, which answers them as it
//!   always did.
//! - **Limit.** The choice is made once per connection, on its first header
//!   block: a client that sends a valid authority first and a bad one later
//!   on the same connection is not repaired (no known client does; Go gRPC
//!   uses one authority per connection).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use loona_hpack::decoder::DecoderError;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Bytes of an HTTP/2 frame header.
pub const FRAME_HEADER_BYTES: usize = 9;
/// Largest header block (HEADERS plus CONTINUATION payloads) held for
/// decoding. hyper's default header-list limit is 16 KiB decoded; this is
/// far above any compressed block it would accept, so only garbage or an
/// attack reaches it.
pub const HEADER_BLOCK_BYTES_MAX: usize = 1 << 20;
/// Largest frame payload the layer emits: the initial
/// SETTINGS_MAX_FRAME_SIZE, which every HTTP/2 server must accept whatever
/// it advertises.
pub const OUT_FRAME_PAYLOAD_BYTES_MAX: usize = 16_384;
/// The HPACK dynamic table limit of client→server blocks: the protocol's
/// initial SETTINGS_HEADER_TABLE_SIZE, which hyper and tonic never change,
/// so a client may never grow its table beyond it.
pub const HPACK_TABLE_BYTES_MAX: usize = 4096;
/// Bytes read from the socket at a time while the layer inspects frames.
pub const READ_CHUNK_BYTES: usize = 16 * 1024;

const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// Bytes of the priority fields of a HEADERS frame (dependency + weight).
const PRIORITY_BYTES: usize = 5;
/// The prefix clientv3 3.5.0 puts before its endpoint list.
const INITIALLY_PREFIX: &[u8] = b"#initially=[";

/// Why the repair path stopped following a connection.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FrontError {
    /// A header block could not be HPACK-decoded.
    #[error("undecodable header block: {0}")]
    Hpack(DecoderError),
    /// A header block grew past [`HEADER_BLOCK_BYTES_MAX`].
    #[error("header block of more than {HEADER_BLOCK_BYTES_MAX} bytes")]
    HeaderBlockTooLarge,
    /// A CONTINUATION frame without an open header block, or for another
    /// stream.
    #[error("CONTINUATION frame outside a header block")]
    StrayContinuation,
    /// A frame other than CONTINUATION inside an open header block.
    #[error("frame of type {0:#x} inside a header block")]
    FrameInsideHeaderBlock(u8),
    /// Padding or priority fields longer than the frame.
    #[error("HEADERS frame shorter than its padding and priority fields")]
    BadPadding,
}

/// What [`repair_authority`] decided for one `:authority` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    /// The value parses as an authority: keep it.
    Keep,
    /// The value is refused; this `host[:port]` found inside it is not.
    Replace(Vec<u8>),
    /// The value is refused and holds no usable authority: drop the field
    /// (`h2` accepts a request without one, and etcd ignores it).
    Drop,
}

/// Whether `h2` accepts `value` as an `:authority`.
pub fn authority_ok(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// Decides what to do with an `:authority` value: keep a valid one; for
/// `scheme://host:port[/path]` or `#initially=[url;url…]` use the first
/// URL's `host:port`; drop anything else.
pub fn repair_authority(value: &[u8]) -> Repair {
    if authority_ok(value) {
        return Repair::Keep;
    }
    let mut v = value;
    if let Some(rest) = v.strip_prefix(INITIALLY_PREFIX) {
        v = rest.strip_suffix(b"]").unwrap_or(rest);
        v = v.split(|b| *b == b';' || *b == b',').next().unwrap_or(v);
    }
    if let Some(at) = v.windows(3).position(|w| w == b"://") {
        v = &v[at + 3..];
    }
    if let Some(slash) = v.iter().position(|b| *b == b'/') {
        v = &v[..slash];
    }
    if !v.is_empty() && authority_ok(v) {
        Repair::Replace(v.to_vec())
    } else {
        Repair::Drop
    }
}

/// One parsed frame header.
#[derive(Debug, Clone, Copy)]
struct FrameHeader {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

fn parse_header(b: &[u8]) -> FrameHeader {
    debug_assert!(b.len() >= FRAME_HEADER_BYTES);
    FrameHeader {
        len: (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]),
        kind: b[3],
        flags: b[4],
        stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
    }
}

fn push_header(out: &mut Vec<u8>, h: FrameHeader) {
    let len = u32::try_from(h.len).expect("emitted frames are at most 16 KiB");
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(h.kind);
    out.push(h.flags);
    out.extend_from_slice(&h.stream.to_be_bytes());
}

/// A header block being collected from HEADERS and CONTINUATION frames.
#[derive(Debug)]
struct OpenBlock {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; PRIORITY_BYTES]>,
    fragment: Vec<u8>,
}

/// The fragment and priority fields of a HEADERS payload, without padding.
fn headers_payload(
    flags: u8,
    payload: &[u8],
) -> Result<(Option<[u8; PRIORITY_BYTES]>, &[u8]), FrontError> {
    let mut p = payload;
    let mut pad = 0usize;
    if flags & FLAG_PADDED != 0 {
        let (&n, rest) = p.split_first().ok_or(FrontError::BadPadding)?;
        pad = usize::from(n);
        p = rest;
    }
    let mut priority = None;
    if flags & FLAG_PRIORITY != 0 {
        if p.len() < PRIORITY_BYTES {
            return Err(FrontError::BadPadding);
        }
        let (pri, rest) = p.split_at(PRIORITY_BYTES);
        priority = Some(pri.try_into().expect("split at PRIORITY_BYTES"));
        p = rest;
    }
    if pad > p.len() {
        return Err(FrontError::BadPadding);
    }
    Ok((priority, &p[..p.len() - pad]))
}

/// HPACK integer with an `n`-bit prefix (RFC 7541 §5.1), `high` holding the
/// representation's leading bits.
fn encode_int(out: &mut Vec<u8>, value: usize, n: u32, high: u8) {
    let limit = (1usize << n) - 1;
    if value < limit {
        out.push(high | value as u8);
        return;
    }
    out.push(high | limit as u8);
    let mut rest = value - limit;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// A literal header field without indexing, new name, no Huffman
/// (RFC 7541 §6.2.2): never touches either side's dynamic table.
fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    encode_int(out, name.len(), 7, 0x00);
    out.extend_from_slice(name);
    encode_int(out, value.len(), 7, 0x00);
    out.extend_from_slice(value);
}

/// Follows client→server header blocks on a connection being repaired.
struct Transcoder {
    decoder: loona_hpack::Decoder<'static>,
    /// Unconsumed input (at most one incomplete frame of interest).
    buf: Vec<u8>,
    /// Payload bytes of the current non-header frame still to forward.
    forward: usize,
    open: Option<OpenBlock>,
    /// Blocks whose authority was rewritten or dropped (for tests and logs).
    repaired: u64,
}

impl Transcoder {
    fn new(decoder: loona_hpack::Decoder<'static>) -> Self {
        Self {
            decoder,
            buf: Vec::new(),
            forward: 0,
            open: None,
            repaired: 0,
        }
    }

    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), FrontError> {
        let mut input = input;
        if self.buf.is_empty() && self.forward > 0 {
            let n = self.forward.min(input.len());
            out.extend_from_slice(&input[..n]);
            self.forward -= n;
            input = &input[n..];
        }
        self.buf.extend_from_slice(input);
        let mut pos = 0;
        let result = self.drain(&mut pos, out);
        self.buf.drain(..pos);
        result
    }

    fn drain(&mut self, pos: &mut usize, out: &mut Vec<u8>) -> Result<(), FrontError> {
        loop {
            if self.forward > 0 {
                let n = self.forward.min(self.buf.len() - *pos);
                out.extend_from_slice(&self.buf[*pos..*pos + n]);
                *pos += n;
                self.forward -= n;
                if self.forward > 0 {
                    return Ok(());
                }
            }
            if self.buf.len() - *pos < FRAME_HEADER_BYTES {
                return Ok(());
            }
            let h = parse_header(&self.buf[*pos..]);
            let is_block = h.kind == TYPE_HEADERS || h.kind == TYPE_CONTINUATION;
            if !is_block {
                if self.open.is_some() {
                    return Err(FrontError::FrameInsideHeaderBlock(h.kind));
                }
                out.extend_from_slice(&self.buf[*pos..*pos + FRAME_HEADER_BYTES]);
                *pos += FRAME_HEADER_BYTES;
                self.forward = h.len;
                continue;
            }
            if h.len > HEADER_BLOCK_BYTES_MAX {
                return Err(FrontError::HeaderBlockTooLarge);
            }
            let end = *pos + FRAME_HEADER_BYTES + h.len;
            if self.buf.len() < end {
                return Ok(());
            }
            let payload = self.buf[*pos + FRAME_HEADER_BYTES..end].to_vec();
            *pos = end;
            self.block_frame(h, &payload, out)?;
        }
    }

    /// Takes one HEADERS or CONTINUATION frame; emits the block once it ends.
    fn block_frame(
        &mut self,
        h: FrameHeader,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), FrontError> {
        if h.kind == TYPE_HEADERS {
            if self.open.is_some() {
                return Err(FrontError::FrameInsideHeaderBlock(h.kind));
            }
            let (priority, fragment) = headers_payload(h.flags, payload)?;
            self.open = Some(OpenBlock {
                stream: h.stream,
                end_stream: h.flags & FLAG_END_STREAM != 0,
                priority,
                fragment: fragment.to_vec(),
            });
        } else {
            let open = self.open.as_mut().ok_or(FrontError::StrayContinuation)?;
            if open.stream != h.stream {
                return Err(FrontError::StrayContinuation);
            }
            open.fragment.extend_from_slice(payload);
        }
        let open = self.open.as_ref().expect("opened above");
        if open.fragment.len() > HEADER_BLOCK_BYTES_MAX {
            return Err(FrontError::HeaderBlockTooLarge);
        }
        if h.flags & FLAG_END_HEADERS == 0 {
            return Ok(());
        }
        let open = self.open.take().expect("opened above");
        let fields = self
            .decoder
            .decode(&open.fragment)
            .map_err(FrontError::Hpack)?;
        if emit_block(&open, &fields, out) {
            self.repaired += 1;
        }
        Ok(())
    }
}

/// Re-encodes a decoded block with its authority repaired as HEADERS plus
/// CONTINUATION frames. Returns whether the authority was changed.
fn emit_block(open: &OpenBlock, fields: &[(Vec<u8>, Vec<u8>)], out: &mut Vec<u8>) -> bool {
    let mut block = Vec::new();
    let mut changed = false;
    for (name, value) in fields {
        if name.as_slice() == b":authority" {
            match repair_authority(value) {
                Repair::Keep => encode_literal(&mut block, name, value),
                Repair::Replace(v) => {
                    changed = true;
                    encode_literal(&mut block, name, &v);
                }
                Repair::Drop => changed = true,
            }
        } else {
            encode_literal(&mut block, name, value);
        }
    }
    let mut first = Vec::with_capacity(PRIORITY_BYTES);
    let mut flags = 0;
    if open.end_stream {
        flags |= FLAG_END_STREAM;
    }
    if let Some(p) = open.priority {
        flags |= FLAG_PRIORITY;
        first.extend_from_slice(&p);
    }
    let room = OUT_FRAME_PAYLOAD_BYTES_MAX - first.len();
    let (head, mut rest) = block.split_at(block.len().min(room));
    first.extend_from_slice(head);
    let last = rest.is_empty();
    push_header(
        out,
        FrameHeader {
            len: first.len(),
            kind: TYPE_HEADERS,
            flags: flags | if last { FLAG_END_HEADERS } else { 0 },
            stream: open.stream,
        },
    );
    out.extend_from_slice(&first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(OUT_FRAME_PAYLOAD_BYTES_MAX));
        rest = tail;
        push_header(
            out,
            FrameHeader {
                len: chunk.len(),
                kind: TYPE_CONTINUATION,
                flags: if rest.is_empty() { FLAG_END_HEADERS } else { 0 },
                stream: open.stream,
            },
        );
        out.extend_from_slice(chunk);
    }
    changed
}

/// Where a connection stands.
enum Mode {
    /// Before the first header block is complete: `held` starts at the
    /// first byte not yet forwarded (a partial frame, or the first block).
    Sniff { held: Vec<u8>, preface_seen: bool },
    /// Untouched from here on.
    Pass,
    /// Every header block transcoded.
    Repair(Box<Transcoder>),
    /// The repair path met bytes it cannot follow: the server sees EOF.
    Failed,
}

/// The sans-IO core of [`Front`]: bytes from the client in, bytes for the
/// server out.
pub struct Rewriter {
    mode: Mode,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Rewriter {
    /// A rewriter at the start of a connection.
    pub fn new() -> Self {
        Self {
            mode: Mode::Sniff {
                held: Vec::new(),
                preface_seen: false,
            },
        }
    }

    /// Whether every later byte passes untouched (the caller may then read
    /// straight from the socket).
    pub fn is_pass(&self) -> bool {
        matches!(self.mode, Mode::Pass)
    }

    /// Whether the connection is being repaired.
    pub fn is_repairing(&self) -> bool {
        matches!(self.mode, Mode::Repair(_))
    }

    /// Whether the repair path gave up: the server must see EOF.
    pub fn is_failed(&self) -> bool {
        matches!(self.mode, Mode::Failed)
    }

    /// Header blocks whose authority was rewritten or dropped so far.
    pub fn repaired_blocks(&self) -> u64 {
        match &self.mode {
            Mode::Repair(t) => t.repaired,
            _ => 0,
        }
    }

    /// Takes the next bytes from the client and appends to `out` the bytes
    /// the server should read. After an error the rewriter is
    /// [`Self::is_failed`] and emits nothing more.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), FrontError> {
        let result = match &mut self.mode {
            Mode::Pass => {
                out.extend_from_slice(input);
                Ok(())
            }
            Mode::Failed => Ok(()),
            Mode::Repair(t) => t.feed(input, out),
            Mode::Sniff { held, preface_seen } => {
                held.extend_from_slice(input);
                let held = std::mem::take(held);
                let seen = *preface_seen;
                self.sniff(held, seen, out)
            }
        };
        if result.is_err() {
            self.mode = Mode::Failed;
        }
        result
    }

    /// The client closed its side: whatever is still held goes to the
    /// server as it is (it is not a complete block, so `h2` will refuse it
    /// as it would have without this layer).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if let Mode::Sniff { held, .. } = &mut self.mode {
            out.append(held);
        }
        self.mode = Mode::Pass;
    }

    fn sniff(
        &mut self,
        mut held: Vec<u8>,
        mut preface_seen: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), FrontError> {
        let pass = |held: Vec<u8>, out: &mut Vec<u8>, mode: &mut Mode| {
            out.extend_from_slice(&held);
            *mode = Mode::Pass;
            Ok(())
        };
        if !preface_seen {
            let n = held.len().min(PREFACE.len());
            if held[..n] != PREFACE[..n] {
                // Not HTTP/2 with prior knowledge (HTTP/1.1 for the
                // gateway, or garbage for hyper to refuse).
                return pass(held, out, &mut self.mode);
            }
            if n < PREFACE.len() {
                self.mode = Mode::Sniff {
                    held,
                    preface_seen: false,
                };
                return Ok(());
            }
            out.extend_from_slice(&held[..PREFACE.len()]);
            held.drain(..PREFACE.len());
            preface_seen = true;
        }
        // Forward whole frames until the first HEADERS.
        let mut pos = 0;
        let mut at_headers = false;
        while held.len() - pos >= FRAME_HEADER_BYTES {
            let h = parse_header(&held[pos..]);
            if h.kind == TYPE_HEADERS {
                at_headers = true;
                break;
            }
            if h.len > HEADER_BLOCK_BYTES_MAX {
                // Not a frame a client sends before its first request:
                // let `h2` judge it.
                return pass(held, out, &mut self.mode);
            }
            let end = pos + FRAME_HEADER_BYTES + h.len;
            if end > held.len() {
                break;
            }
            pos = end;
        }
        out.extend_from_slice(&held[..pos]);
        held.drain(..pos);
        let decided = if at_headers { first_block(&held) } else { None };
        let Some(decided) = decided else {
            if held.len() > HEADER_BLOCK_BYTES_MAX + FRAME_HEADER_BYTES {
                return pass(held, out, &mut self.mode);
            }
            self.mode = Mode::Sniff { held, preface_seen };
            return Ok(());
        };
        match decided {
            FirstBlock::Pass => pass(held, out, &mut self.mode),
            FirstBlock::Repair(decoder) => {
                let mut t = Transcoder::new(*decoder);
                t.feed(&held, out)?;
                self.mode = Mode::Repair(Box::new(t));
                Ok(())
            }
        }
    }
}

/// What the first header block decided.
enum FirstBlock {
    Pass,
    /// Repair, starting again from the block with this fresh decoder.
    Repair(Box<loona_hpack::Decoder<'static>>),
}

fn new_decoder() -> loona_hpack::Decoder<'static> {
    let mut d = loona_hpack::Decoder::new();
    d.set_max_allowed_table_size(HPACK_TABLE_BYTES_MAX);
    d
}

/// Looks at `held`, which starts with a frame that is HEADERS (or
/// something `h2` will refuse). `None` while the first block is incomplete.
fn first_block(held: &[u8]) -> Option<FirstBlock> {
    let mut pos = 0;
    let mut fragment = Vec::new();
    loop {
        if held.len() - pos < FRAME_HEADER_BYTES {
            return None;
        }
        let h = parse_header(&held[pos..]);
        let expected = if pos == 0 {
            TYPE_HEADERS
        } else {
            TYPE_CONTINUATION
        };
        if h.kind != expected || h.len > HEADER_BLOCK_BYTES_MAX {
            return Some(FirstBlock::Pass);
        }
        let end = pos + FRAME_HEADER_BYTES + h.len;
        if end > held.len() {
            return None;
        }
        let payload = &held[pos + FRAME_HEADER_BYTES..end];
        if pos == 0 {
            match headers_payload(h.flags, payload) {
                Ok((_, f)) => fragment.extend_from_slice(f),
                Err(_) => return Some(FirstBlock::Pass),
            }
        } else {
            fragment.extend_from_slice(payload);
        }
        pos = end;
        if h.flags & FLAG_END_HEADERS != 0 {
            break;
        }
    }
    let mut probe = new_decoder();
    let Ok(fields) = probe.decode(&fragment) else {
        return Some(FirstBlock::Pass);
    };
    let bad = fields
        .iter()
        .any(|(n, v)| n.as_slice() == b":authority" && !authority_ok(v));
    Some(if bad {
        FirstBlock::Repair(Box::new(new_decoder()))
    } else {
        FirstBlock::Pass
    })
}

/// A client connection behind the front layer: reads go through a
/// [`Rewriter`] until it passes, then straight to `inner`; writes always go
/// straight to `inner`.
pub struct Front<S> {
    inner: S,
    rw: Rewriter,
    out: Vec<u8>,
    out_pos: usize,
    scratch: Vec<u8>,
}

impl<S> Front<S> {
    /// Puts the layer in front of a freshly accepted connection.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            rw: Rewriter::new(),
            out: Vec::new(),
            out_pos: 0,
            scratch: Vec::new(),
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Front<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                    if this.rw.is_pass() {
                        // The normal path keeps no buffers.
                        this.out = Vec::new();
                        this.scratch = Vec::new();
                    }
                }
                return Poll::Ready(Ok(()));
            }
            if this.rw.is_pass() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if this.rw.is_failed() {
                return Poll::Ready(Ok(()));
            }
            if this.scratch.is_empty() {
                this.scratch = vec![0; READ_CHUNK_BYTES];
            }
            let mut rb = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                this.rw.finish(&mut this.out);
                if this.out.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let was_repairing = this.rw.is_repairing();
            if let Err(e) = this.rw.feed(&this.scratch[..n], &mut this.out) {
                tracing::debug!(error = %e, "front layer: closing a client connection it cannot follow");
            }
            if !was_repairing && this.rw.is_repairing() {
                tracing::debug!("front layer: repairing the :authority of a client connection");
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Front<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Front<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests;
