//! When bytes last moved on a connection, for the idle timeout and the slow-sender
//! defence that every server shares (issue 13, finding 6).
//!
//! - **Idle** means no byte moved in *either* direction for `idle_timeout`: a client
//!   trickling a request one byte a second, or draining a large reply slowly, is not
//!   idle. [`Tracked`] wraps the connection's stream and stamps every read and write
//!   that moved bytes; [`Activity::idle`] resolves once the stamp is older than the
//!   limit. A server may declare itself busy ([`Activity::busy`]) while it works for
//!   the peer (exec running a command), so a client waiting for a long command in
//!   silence is not idle either.
//! - **Slow senders** are a separate limit: once the first byte of a request frame
//!   has arrived, the whole frame must arrive within `frame_timeout`
//!   ([`crate::server::next_frame`]); a peer that keeps a slot by trickling (one byte
//!   every idle_timeout - 1 s) is cut there, counted `frame_timeout`.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The activity record of one connection; cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct Activity(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    start: Instant,
    /// Milliseconds since `start` of the last byte moved.
    last_ms: AtomicU64,
    /// Bytes read so far (so a waiter can tell the first byte of a frame).
    bytes_in: AtomicU64,
    busy: AtomicUsize,
    read: Notify,
}

impl Default for Activity {
    fn default() -> Self {
        Activity(Arc::new(Inner {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            read: Notify::new(),
        }))
    }
}

/// While held, the connection counts as active (see [`Activity::busy`]).
#[derive(Debug)]
pub struct Busy(Activity);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0 .0.busy.fetch_sub(1, Ordering::SeqCst);
        // Idle time counts from the end of the work, not from before it.
        self.0.touch();
    }
}

impl Activity {
    fn touch(&self) {
        let ms = self.0.start.elapsed().as_millis() as u64;
        self.0.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn read(&self, n: usize) {
        self.touch();
        self.0.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        self.0.read.notify_waiters();
    }

    /// Bytes read from the peer so far.
    pub fn bytes_in(&self) -> u64 {
        self.0.bytes_in.load(Ordering::Relaxed)
    }

    /// Resolves once more than `seen` bytes have been read.
    pub async fn read_beyond(&self, seen: u64) {
        loop {
            let notified = self.0.read.notified();
            if self.bytes_in() > seen {
                return;
            }
            notified.await;
        }
    }

    /// Marks the connection busy until the guard is dropped.
    pub fn busy(&self) -> Busy {
        self.0.busy.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// Resolves once no byte moved for `limit` while not busy.
    pub async fn idle(&self, limit: Duration) {
        loop {
            let last = self.0.start + Duration::from_millis(self.0.last_ms.load(Ordering::Relaxed));
            let due = last + limit;
            if self.0.busy.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(limit).await;
            } else if Instant::now() >= due {
                return;
            } else {
                tokio::time::sleep_until(due).await;
            }
        }
    }
}

/// A stream that records its traffic in an [`Activity`].
#[derive(Debug)]
pub struct Tracked<S> {
    inner: S,
    activity: Activity,
}

impl<S> Tracked<S> {
    pub fn new(inner: S) -> (Tracked<S>, Activity) {
        let activity = Activity::default();
        (
            Tracked {
                inner,
                activity: activity.clone(),
            },
            activity,
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.activity.read(n);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
