//! Server-side write coalescing: replies that are ready in the same round
//! of the scheduler leave a connection in one write.
//!
//! # Why
//!
//! A gRPC reply is written by the connection's task after the request's
//! handler task wakes it. Tokio runs a task woken by the running task next
//! (its LIFO slot), so when the Raft loop completes 16 reads waiting on one
//! connection, the connection task ran after each handler and wrote each
//! reply with its own `writev`: a `perf trace` of the leader under 64
//! linearizable-get clients counted **33,300 `writev` in 3 s for ~27,000
//! replies**, a quarter of the leader's CPU in the kernel's send path
//! (docs/benchmarks.md, 2026-12-07).
//!
//! # Contract
//!
//! - [`Coalesce`] wraps an accepted connection (plain TCP or TLS) under
//!   hyper. Writes are copied into a buffer of up to
//!   [`COALESCE_MAX_BYTES`]; a write that would overflow it first sends what
//!   is buffered, and one at least that large goes straight to the socket.
//! - The first `poll_flush` after buffered writes **defers once**: it wakes
//!   its own task and returns `Pending`, so Tokio runs the other ready tasks
//!   (more handlers finishing their replies) before it; the next
//!   `poll_flush` writes everything buffered, then flushes. The delay is
//!   one pass of the worker's run queue; on an idle connection the task is
//!   polled again at once.
//! - Bytes leave in the order written; nothing is dropped or reordered.
//!   Backpressure is kept: when the socket is full, writes and flushes
//!   return `Pending` until it drains. Reads pass through untouched.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes held before they are written without waiting for a flush.
pub const COALESCE_MAX_BYTES: usize = 64 * 1024;

/// A connection whose writes are coalesced until its flush (see the module
/// documentation).
pub struct Coalesce<S> {
    inner: S,
    buf: Vec<u8>,
    /// Bytes of `buf` already written (a partial write awaiting the rest).
    sent: usize,
    /// This flush has already yielded once.
    deferred: bool,
}

impl<S> Coalesce<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Coalesce {
            inner,
            buf: Vec::new(),
            sent: 0,
            deferred: false,
        }
    }
}

impl<S: AsyncWrite + Unpin> Coalesce<S> {
    /// Writes out everything buffered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.buf.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Makes room for `len` more bytes: `true` if they should be buffered,
    /// `false` if they are too large and should go straight out (after what
    /// was buffered).
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<bool>> {
        if self.buf.len() + len > COALESCE_MAX_BYTES {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(len < COALESCE_MAX_BYTES))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesce<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if ready!(this.poll_room(cx, buf.len()))? {
            this.buf.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        } else {
            Pin::new(&mut this.inner).poll_write(cx, buf)
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len = bufs.iter().map(|b| b.len()).sum();
        if ready!(this.poll_room(cx, len))? {
            for b in bufs {
                this.buf.extend_from_slice(b);
            }
            Poll::Ready(Ok(len))
        } else {
            Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.len() > this.sent && !this.deferred {
            this.deferred = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.poll_drain(cx))?;
        this.deferred = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesce<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Coalesce<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A real socket that counts the writes reaching it.
    struct Counted {
        sock: TcpStream,
        writes: Arc<AtomicUsize>,
    }

    impl AsyncWrite for Counted {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let r = Pin::new(&mut this.sock).poll_write(cx, buf);
            if r.is_ready() {
                this.writes.fetch_add(1, Ordering::Relaxed);
            }
            r
        }
        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().sock).poll_flush(cx)
        }
        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().sock).poll_shutdown(cx)
        }
    }

    async fn pair() -> (Coalesce<Counted>, Arc<AtomicUsize>, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
        let writes = Arc::new(AtomicUsize::new(0));
        let c = Coalesce::new(Counted {
            sock: a.unwrap(),
            writes: writes.clone(),
        });
        (c, writes, b.unwrap().0)
    }

    #[tokio::test]
    async fn writes_before_a_flush_leave_in_one_write_in_order() {
        let (mut c, writes, mut peer) = pair().await;
        for part in [&b"one "[..], b"two ", b"three"] {
            c.write_all(part).await.unwrap();
        }
        assert_eq!(
            writes.load(Ordering::Relaxed),
            0,
            "nothing leaves before the flush"
        );
        c.flush().await.unwrap();
        assert_eq!(writes.load(Ordering::Relaxed), 1);
        let mut got = vec![0u8; 13];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"one two three");
    }

    #[tokio::test]
    async fn large_writes_pass_through_after_what_was_buffered() {
        let (mut c, _, mut peer) = pair().await;
        let big: Vec<u8> = (0..3 * COALESCE_MAX_BYTES)
            .map(|i| (i % 251) as u8)
            .collect();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 5 + big.len() + 4];
            peer.read_exact(&mut got).await.unwrap();
            (got, big)
        });
        let big2: Vec<u8> = (0..3 * COALESCE_MAX_BYTES)
            .map(|i| (i % 251) as u8)
            .collect();
        c.write_all(b"head ").await.unwrap();
        c.write_all(&big2).await.unwrap();
        c.write_all(b"tail").await.unwrap();
        c.flush().await.unwrap();
        let (got, big) = reader.await.unwrap();
        assert_eq!(&got[..5], b"head ");
        assert_eq!(&got[5..5 + big.len()], &big[..]);
        assert_eq!(&got[5 + big.len()..], b"tail");
    }

    #[tokio::test]
    async fn shutdown_sends_what_is_buffered() {
        let (mut c, _, mut peer) = pair().await;
        c.write_all(b"last words").await.unwrap();
        c.shutdown().await.unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(&got, b"last words");
    }
}
