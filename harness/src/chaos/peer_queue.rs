//! How much of what we wrote on a loopback connection the peer *program* has not read
//! yet: the receive queue of the other end's socket, asked of the kernel (sock_diag).
//!
//! A split only reaches a receiver as separate reads if the receiver has read one piece
//! before the next arrives. A fixed gap (1 ms) is a guess that costs every piece a
//! timer tick; the peer's receive queue says it: once it is empty, the peer has read
//! the last piece and the next write starts a new read. [`PeerQueue::wait_read`] waits
//! for that, never longer than the gap it replaces, so a peer that reads slowly or not
//! at all gets the same pieces as before.
//!
//! Not exact: a peer still inside the read that emptied its queue (it holds the socket
//! until it returns) takes a piece that arrives then into the same read, so the wait
//! goes on 50 us (`SETTLE`) after the queue is seen empty. Waiting for our own
//! unacknowledged bytes to reach zero instead would be exact, but loopback delays ACKs
//! of small pieces (up to 40 ms), so every piece would wait the whole gap again. The
//! bench's exact test (`received` counts every byte written, see
//! [`crate::bench::drain`]) would also do; the settle is what this was measured with.
//!
//! The lookup is the bench's [`DrainProbe`]: one netlink request for one socket, a few
//! microseconds however many sockets the machine has, no privilege needed. Where it
//! does not answer (no `inet_diag` in the kernel, the peer is not on this machine)
//! [`PeerQueue::new`] says `None` and callers keep the fixed gap.

use std::time::Duration;

use tokio::net::TcpStream;

use crate::bench::drain::DrainProbe;

/// How long after the peer's queue is seen empty we still wait: the peer may still be
/// inside the read that emptied it, and a piece that arrives then joins that read.
/// Measured against a buffered Python receiver (recv(65536), one client, seed 1): with
/// 0, 4-10 % fewer separate reads than the fixed 1 ms gap gave; with 20-100 us, within
/// the fixed gap's own run-to-run spread (~1 %).
const SETTLE: Duration = Duration::from_micros(50);

/// Longest the cheap path polls before it sleeps out the rest of the gap: a peer that is
/// awake reads a piece within tens of microseconds; one that is not costs the full gap.
const SPIN: Duration = Duration::from_micros(400);

/// A netlink request for the far end of one TCP connection (the bench's
/// [`DrainProbe`], which asks the same question of paced bench connections).
#[derive(Debug)]
pub struct PeerQueue {
    probe: DrainProbe,
}

impl PeerQueue {
    /// For `stream`'s far end, if the kernel can tell us about it (the peer is on this
    /// machine and sock_diag answers).
    pub fn new(stream: &TcpStream) -> Option<PeerQueue> {
        let probe = DrainProbe::new(stream.local_addr().ok()?, stream.peer_addr().ok()?).ok()?;
        let mut q = PeerQueue { probe };
        // One answer now, or the peer is not ours to see.
        q.unread()?;
        Some(q)
    }

    /// Bytes that reached the peer's socket and its program has not read.
    pub fn unread(&mut self) -> Option<u32> {
        self.probe.query().ok().map(|side| side.unread)
    }

    /// Waits until the peer has read everything we sent (and 50 us more), or `gap`
    /// has passed, whichever comes first. Returns how long it waited.
    pub async fn wait_read(&mut self, gap: Duration) -> Duration {
        let start = tokio::time::Instant::now();
        let deadline = start + gap;
        let spin_until = start + SPIN.min(gap);
        let mut read_at: Option<tokio::time::Instant> = None;
        loop {
            let now = tokio::time::Instant::now();
            if read_at.is_none() && self.unread() == Some(0) {
                read_at = Some(now);
            }
            let read = read_at.is_some_and(|t| now - t >= SETTLE);
            if read || now >= deadline {
                return now - start;
            }
            if now >= spin_until && read_at.is_none() {
                tokio::time::sleep_until(deadline).await;
                return start.elapsed();
            }
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn sees_what_the_peer_has_not_read_and_then_that_it_has() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut ours = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut theirs, _) = listener.accept().await.unwrap();
        let mut q = PeerQueue::new(&ours).expect("sock_diag answers on loopback");
        assert_eq!(q.unread(), Some(0));
        ours.write_all(b"hello").await.unwrap();
        // Loopback delivers within the write; bounded in case the machine is slow.
        let mut seen = None;
        for _ in 0..1000 {
            seen = q.unread();
            if seen == Some(5) {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(seen, Some(5), "five bytes wait unread");
        let mut buf = [0u8; 3];
        theirs.read_exact(&mut buf).await.unwrap();
        assert_eq!(q.unread(), Some(2));
        let mut rest = [0u8; 2];
        theirs.read_exact(&mut rest).await.unwrap();
        assert_eq!(q.unread(), Some(0));
        // Read already: no wait beyond the cheap checks.
        let waited = q.wait_read(Duration::from_secs(5)).await;
        assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    }

    #[tokio::test]
    async fn a_peer_that_does_not_read_costs_the_whole_gap_and_no_more() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut ours = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (_theirs, _) = listener.accept().await.unwrap();
        let mut q = PeerQueue::new(&ours).unwrap();
        ours.write_all(b"x").await.unwrap();
        let gap = Duration::from_millis(20);
        let waited = q.wait_read(gap).await;
        assert!(waited >= gap, "waited {waited:?}, the peer never read");
    }
}
