//! Helpers shared by the real-socket server tests. Each test binary uses a subset.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Decoder, FramedRead};

/// Upper bound for any single wait in these tests; nothing may hang CI.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A listener on an ephemeral loopback port.
pub fn listener() -> TcpListener {
    chopstick_targets::server::bind("127.0.0.1:0".parse().unwrap(), 128).expect("bind loopback")
}

pub async fn connect(addr: SocketAddr) -> TcpStream {
    let s = tokio::time::timeout(DEADLINE, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    s.set_nodelay(true).unwrap();
    s
}

/// Closes with an RST instead of a FIN (SO_LINGER 0).
pub fn reset(stream: TcpStream) {
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stream);
}

/// Writes `bytes` one byte per write, pausing so the server really reads them apart.
pub async fn write_bytewise<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) {
    for b in bytes {
        w.write_all(std::slice::from_ref(b)).await.unwrap();
        w.flush().await.unwrap();
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// Reads the next `n` frames with `codec`, failing the test on error or timeout.
pub async fn read_frames<R, D>(r: R, codec: D, n: usize) -> Vec<D::Item>
where
    R: AsyncRead + Unpin,
    D: Decoder,
    D::Error: std::fmt::Debug,
{
    let mut frames = FramedRead::new(r, codec);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let next = tokio::time::timeout(DEADLINE, frames.next())
            .await
            .expect("reply timed out");
        out.push(next.expect("server closed early").expect("bad reply frame"));
    }
    assert!(
        frames.read_buffer().is_empty(),
        "unexpected extra bytes after {n} frames"
    );
    out
}

/// Reads until EOF or error; returns what arrived and whether it ended in an error.
pub async fn read_to_end_or_error<R: AsyncRead + Unpin>(
    r: &mut R,
) -> (BytesMut, Option<std::io::Error>) {
    use tokio::io::AsyncReadExt;
    let mut buf = BytesMut::new();
    loop {
        match tokio::time::timeout(DEADLINE, r.read_buf(&mut buf))
            .await
            .expect("read timed out")
        {
            Ok(0) => return (buf, None),
            Ok(_) => {}
            Err(e) => return (buf, Some(e)),
        }
    }
}

/// Where a client cuts one request: inside the header, right after it, inside the body.
pub fn cut_points(layout: &chopstick_targets::wire::FrameLayout) -> Vec<(&'static str, usize)> {
    let header = layout.header();
    assert!(
        header.len() >= 2 && layout.body.len() >= 2,
        "need a 2+ byte header and body to cut inside them"
    );
    vec![
        ("mid-header", header.start + header.len() / 2),
        ("after-header", layout.body.start),
        ("mid-body", layout.body.start + layout.body.len() / 2),
    ]
}

/// For each cut point and for both FIN and RST: sends `request[..cut]` on a fresh
/// connection, disconnects, waits until the server counts one more aborted connection,
/// then runs `healthy` (which must prove a new client is served correctly).
pub async fn disconnect_matrix<F, Fut>(
    addr: SocketAddr,
    counters: &chopstick_targets::server::Counters,
    request: &[u8],
    layout: &chopstick_targets::wire::FrameLayout,
    healthy: F,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for (region, at) in cut_points(layout) {
        for rst in [false, true] {
            // Earlier clients (including `healthy`'s) must be gone, or counts would race.
            let before = counters
                .wait_until(DEADLINE, |c| c.active == 0)
                .await
                .unwrap_or_else(|c| panic!("earlier connections still open: {c:?}"));
            let mut s = connect(addr).await;
            s.write_all(&request[..at]).await.unwrap();
            // Let the partial request reach the server before the connection goes.
            tokio::time::sleep(Duration::from_millis(5)).await;
            if rst {
                reset(s);
            } else {
                s.shutdown().await.unwrap();
                drop(s);
            }
            let how = if rst { "RST" } else { "FIN" };
            let after = counters
                .wait_until(DEADLINE, |c| c.aborted > before.aborted && c.active == 0)
                .await
                .unwrap_or_else(|c| {
                    panic!("{how} {region} (byte {at}) not counted as aborted: {c:?}")
                });
            assert_eq!(
                after.completed, before.completed,
                "{how} {region}: a cut is not a clean end"
            );
            healthy().await;
        }
    }
}
pub mod exec;
