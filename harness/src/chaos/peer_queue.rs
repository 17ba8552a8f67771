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
//! of small pieces (up to 40 ms), so every piece would wait the whole gap again. A
//! merged piece is what TCP may do anyway.
//!
//! The lookup is one netlink request for one socket (`SOCK_DIAG_BY_FAMILY` without
//! `NLM_F_DUMP`, by its four-tuple), a few microseconds however many sockets the machine
//! has. It needs no privilege. Where it is not available (not Linux, no `inet_diag` in
//! the kernel, the peer is not on this machine) [`PeerQueue::new`] says `None` and
//! callers keep the fixed gap.
//!
//! Request and reply (`linux/inet_diag.h`), all after a 16-byte `nlmsghdr`:
//!
//! ```text
//! request inet_diag_req_v2           reply inet_diag_msg
//! +--------+----------+-----+-----+  +--------+-------+-------+---------+
//! | family | protocol | ext | pad |  | family | state | timer | retrans |
//! +--------+----------+-----+-----+  +--------+-------+-------+---------+
//! | states (u32)                  |  | id: inet_diag_sockid (48 bytes)  |
//! +-------------------------------+  +----------------------------------+
//! | id: inet_diag_sockid          |  | expires | rqueue | wqueue | ...  |
//! |  sport, dport (be16)          |  +----------------------------------+
//! |  src[4], dst[4] (be32)        |
//! |  if (u32), cookie[2] (u32)    |   rqueue = bytes received, not read
//! +-------------------------------+
//! ```

use std::time::Duration;

use tokio::net::TcpStream;

/// How long after the peer's queue is seen empty we still wait: the peer may still be
/// inside the read that emptied it, and a piece that arrives then joins that read.
/// Measured against a buffered Python receiver (recv(65536), one client, seed 1): with
/// 0, 4-10 % fewer separate reads than the fixed 1 ms gap gave; with 20-100 us, within
/// the fixed gap's own run-to-run spread (~1 %).
const SETTLE: Duration = Duration::from_micros(50);

/// Longest the cheap path polls before it sleeps out the rest of the gap: a peer that is
/// awake reads a piece within tens of microseconds; one that is not costs the full gap.
const SPIN: Duration = Duration::from_micros(400);

/// A netlink request for the far end of one TCP connection.
#[derive(Debug)]
pub struct PeerQueue {
    #[cfg(target_os = "linux")]
    theirs: linux::Diag,
}

impl PeerQueue {
    /// For `stream`'s far end, if the kernel can tell us about it (the peer is on this
    /// machine and sock_diag answers).
    pub fn new(stream: &TcpStream) -> Option<PeerQueue> {
        #[cfg(target_os = "linux")]
        {
            let local = stream.local_addr().ok()?;
            let peer = stream.peer_addr().ok()?;
            let q = PeerQueue {
                theirs: linux::Diag::new(peer, local)?,
            };
            // One answer now, or the peer is not ours to see.
            q.unread()?;
            Some(q)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = stream;
            None
        }
    }

    /// Bytes that reached the peer's socket and its program has not read.
    pub fn unread(&self) -> Option<u32> {
        #[cfg(target_os = "linux")]
        {
            self.theirs.queues().map(|(rq, _)| rq)
        }
        #[cfg(not(target_os = "linux"))]
        None
    }

    /// Waits until the peer has read everything we sent (and 50 us more), or `gap`
    /// has passed, whichever comes first. Returns how long it waited.
    pub async fn wait_read(&self, gap: Duration) -> Duration {
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

#[cfg(target_os = "linux")]
mod linux {
    use std::net::{IpAddr, SocketAddr};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 1;
    const NLMSG_ERROR: u16 = 2;
    const HDR: usize = 16;
    const REQ_LEN: usize = HDR + 56;
    /// Offset of `idiag_rqueue` in a reply: header, 4 bytes, the 48-byte id, `expires`.
    const RQUEUE_AT: usize = HDR + 4 + 48 + 4;

    #[derive(Debug)]
    pub(super) struct Diag {
        fd: OwnedFd,
        request: [u8; REQ_LEN],
    }

    impl Diag {
        /// Asks for the socket whose local end is `src` and remote end `dst`.
        pub(super) fn new(src: SocketAddr, dst: SocketAddr) -> Option<Diag> {
            let family = match (src.ip(), dst.ip()) {
                (IpAddr::V4(_), IpAddr::V4(_)) => libc::AF_INET,
                (IpAddr::V6(_), IpAddr::V6(_)) => libc::AF_INET6,
                _ => return None,
            };
            let mut r = [0u8; REQ_LEN];
            r[0..4].copy_from_slice(&(REQ_LEN as u32).to_ne_bytes());
            r[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
            r[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
            let b = HDR;
            r[b] = family as u8;
            r[b + 1] = libc::IPPROTO_TCP as u8;
            // Every state: the peer may have half-closed already.
            r[b + 4..b + 8].copy_from_slice(&u32::MAX.to_ne_bytes());
            let id = b + 8;
            r[id..id + 2].copy_from_slice(&src.port().to_be_bytes());
            r[id + 2..id + 4].copy_from_slice(&dst.port().to_be_bytes());
            let octets = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => {
                    let mut o = [0u8; 16];
                    o[..4].copy_from_slice(&v4.octets());
                    o
                }
                IpAddr::V6(v6) => v6.octets(),
            };
            r[id + 4..id + 20].copy_from_slice(&octets(src.ip()));
            r[id + 20..id + 36].copy_from_slice(&octets(dst.ip()));
            // No interface; cookie INET_DIAG_NOCOOKIE (all ones): match by address only.
            r[id + 40..id + 48].fill(0xff);
            // SAFETY: plain socket(2); the result is checked before it is owned.
            let fd = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                    libc::NETLINK_SOCK_DIAG,
                )
            };
            if fd < 0 {
                return None;
            }
            // SAFETY: `fd` is a fresh descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            Some(Diag { fd, request: r })
        }

        /// One request, one reply: the socket's `(rqueue, wqueue)`, or `None` on any
        /// error (no such socket, a short or unexpected reply). For a connected socket
        /// rqueue is received and not read, wqueue sent and not acknowledged.
        pub(super) fn queues(&self) -> Option<(u32, u32)> {
            let fd = self.fd.as_raw_fd();
            // SAFETY: sends from and receives into live buffers of the lengths given;
            // the kernel is the only netlink peer (address 0, the default).
            let sent =
                unsafe { libc::send(fd, self.request.as_ptr().cast(), self.request.len(), 0) };
            if sent != self.request.len() as isize {
                return None;
            }
            let mut reply = [0u8; 1024];
            // SAFETY: as above; MSG_DONTWAIT would only matter if the kernel did not
            // answer synchronously, which it does for a request without NLM_F_DUMP.
            let n = unsafe { libc::recv(fd, reply.as_mut_ptr().cast(), reply.len(), 0) };
            let n = usize::try_from(n).ok()?;
            if n < RQUEUE_AT + 8 {
                return None;
            }
            let kind = u16::from_ne_bytes([reply[4], reply[5]]);
            if kind == NLMSG_ERROR || kind != SOCK_DIAG_BY_FAMILY {
                return None;
            }
            let word = |at: usize| {
                u32::from_ne_bytes([reply[at], reply[at + 1], reply[at + 2], reply[at + 3]])
            };
            Some((word(RQUEUE_AT), word(RQUEUE_AT + 4)))
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
        let q = PeerQueue::new(&ours).expect("sock_diag answers on loopback");
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
        let q = PeerQueue::new(&ours).unwrap();
        ours.write_all(b"x").await.unwrap();
        let gap = Duration::from_millis(20);
        let waited = q.wait_read(gap).await;
        assert!(waited >= gap, "waited {waited:?}, the peer never read");
    }

    #[test]
    fn a_socket_that_is_not_there_is_none() {
        let gone = linux::Diag::new(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(gone.queues(), None);
    }
}
