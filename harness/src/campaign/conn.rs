//! [`Conn`]: the one connection type a case drives, whichever way the target supplies
//! it: a loopback TCP socket (`--connect`, `--spawn`, `--client`, [`Target::serve`]) or
//! the client half of an in-process duplex pipe ([`Target::duplex`]).
//!
//! The writer applies a plan to either in the same way (chunked writes, pauses, FIN),
//! so splits and coalescing reach a duplex handler as they reach a socket's reader.
//! What a duplex cannot model, and what it does instead:
//!
//! | on a socket | on a duplex |
//! |---|---|
//! | `reset`: RST (`SO_LINGER 0`), the peer's read fails | the client half is dropped: the handler's read sees a clean EOF |
//! | kernel buffers, Nagle, segment merging | one in-memory pipe of [`DUPLEX_BUF_BYTES`]: a read takes whatever was written since the last one |
//! | connection refused, listen backlog, accept loop | none: every connection is a fresh pipe and a fresh handler task |
//!
//! [`Target::serve`]: crate::Target::serve
//! [`Target::duplex`]: crate::Target::duplex

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::TcpStream;

/// Capacity of each direction of an in-process duplex pipe. A writer that fills it
/// waits for the handler to read, as a socket's would for a full send buffer.
pub const DUPLEX_BUF_BYTES: usize = 64 * 1024;

/// The read half of a [`Conn`].
pub type ConnRead = Pin<Box<dyn AsyncRead + Send>>;
/// The write half of a [`Conn`]; dropping it (with the read half) ends the connection.
pub type ConnWrite = Pin<Box<dyn AsyncWrite + Send>>;

/// A connection to the target under test.
#[derive(Debug)]
#[non_exhaustive]
pub enum Conn {
    /// A loopback socket, NODELAY set.
    Tcp(TcpStream),
    /// The client half of an in-process pipe; the handler holds the other.
    Duplex(DuplexStream),
}

impl Conn {
    /// Makes closing this connection abort it: an RST on a socket (`SO_LINGER 0`). A
    /// duplex has no RST; closing it is an EOF either way.
    pub fn reset_on_close(&self) {
        if let Conn::Tcp(sock) = self {
            let _ = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO));
        }
    }

    /// The two halves, for a reader and a writer running at once. A socket splits
    /// without a lock; a duplex through [`tokio::io::split`].
    pub fn into_split(self) -> (ConnRead, ConnWrite) {
        match self {
            Conn::Tcp(sock) => {
                let (r, w) = sock.into_split();
                (Box::pin(r), Box::pin(w))
            }
            Conn::Duplex(pipe) => {
                let (r, w) = tokio::io::split(pipe);
                (Box::pin(r), Box::pin(w))
            }
        }
    }
}

impl From<TcpStream> for Conn {
    fn from(sock: TcpStream) -> Conn {
        Conn::Tcp(sock)
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Duplex(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Duplex(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Duplex(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Duplex(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
