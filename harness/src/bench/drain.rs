//! Has the server read everything we sent? Asked of the kernel over `NETLINK_SOCK_DIAG`,
//! for the paced profiles.
//!
//! On loopback the server's socket is on this machine, so one `inet_diag` request (an
//! exact lookup by the connection's four-tuple, with the `INET_DIAG_INFO` extension)
//! returns that socket's receive queue and its `tcp_info`. A piece has reached the
//! server as its own read once
//!
//! - `tcpi_bytes_received` counts every byte we wrote (the server's TCP layer has
//!   taken it, not left it in a backlog), and
//! - the receive queue is empty (the server's process has read it).
//!
//! ```text
//! request:  nlmsghdr (16) | inet_diag_req_v2 (56): family, IPPROTO_TCP, ext=INFO,
//!           states=ESTABLISHED, sockid { sport, dport, src[16], dst[16], if, cookie }
//! reply:    nlmsghdr (16) | inet_diag_msg (72): ..., rqueue @ +56 | rtattr INFO: tcp_info
//!           (tcpi_bytes_received @ +128)
//! ```

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const INET_DIAG_INFO: u16 = 2;
const TCP_ESTABLISHED: u32 = 1;
const NLMSG_HDR_LEN: usize = 16;
const REQ_LEN: usize = NLMSG_HDR_LEN + 56;
/// Offsets inside the reply's `inet_diag_msg` (after the netlink header).
const MSG_RQUEUE: usize = 56;
const MSG_LEN: usize = 72;
/// Offset of `tcpi_bytes_received` in `struct tcp_info` (Linux >= 4.1).
const TCPI_BYTES_RECEIVED: usize = 128;
/// Reply buffer: one `inet_diag_msg` with a `tcp_info` attribute fits many times over.
const REPLY_BUF: usize = 2048;

/// What the kernel says about the server's end of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerSide {
    /// Bytes in its receive queue, not yet read by the server process.
    pub unread: u32,
    /// Bytes its TCP layer has taken in so far.
    pub received: u64,
}

/// A netlink socket asking about one connection's server end.
#[derive(Debug)]
pub struct DrainProbe {
    fd: OwnedFd,
    request: [u8; REQ_LEN],
    reply: Vec<u8>,
}

impl DrainProbe {
    /// A probe for the connection from `client` (our end) to `server`.
    pub fn new(client: SocketAddr, server: SocketAddr) -> io::Result<DrainProbe> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(DrainProbe {
            fd,
            request: request(client, server),
            reply: vec![0; REPLY_BUF],
        })
    }

    /// Asks once.
    pub fn query(&mut self) -> io::Result<ServerSide> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: send/recv on an fd we own, with buffers that live across the calls.
        let sent = unsafe { libc::send(fd, self.request.as_ptr().cast(), self.request.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = unsafe { libc::recv(fd, self.reply.as_mut_ptr().cast(), self.reply.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        parse_reply(&self.reply[..n as usize])
    }
}

fn request(client: SocketAddr, server: SocketAddr) -> [u8; REQ_LEN] {
    let mut b = [0u8; REQ_LEN];
    b[0..4].copy_from_slice(&(REQ_LEN as u32).to_ne_bytes());
    b[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    let r = &mut b[NLMSG_HDR_LEN..];
    r[0] = if server.is_ipv4() {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    };
    r[1] = libc::IPPROTO_TCP as u8;
    r[2] = 1 << (INET_DIAG_INFO - 1);
    r[4..8].copy_from_slice(&(1u32 << TCP_ESTABLISHED).to_ne_bytes());
    // The socket we ask about is the server's: its source is the server address.
    r[8..10].copy_from_slice(&server.port().to_be_bytes());
    r[10..12].copy_from_slice(&client.port().to_be_bytes());
    put_ip(&mut r[12..28], server.ip());
    put_ip(&mut r[28..44], client.ip());
    // Interface 0 (any); cookie INET_DIAG_NOCOOKIE: look the socket up by address.
    r[48..56].copy_from_slice(&[0xff; 8]);
    b
}

fn put_ip(dst: &mut [u8], ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => dst[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => dst.copy_from_slice(&v6.octets()),
    }
}

fn parse_reply(b: &[u8]) -> io::Result<ServerSide> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {what}"));
    if b.len() < NLMSG_HDR_LEN {
        return Err(bad("short reply"));
    }
    let kind = u16::from_ne_bytes([b[4], b[5]]);
    if kind == NLMSG_ERROR {
        let errno = b
            .get(16..20)
            .map(|e| i32::from_ne_bytes([e[0], e[1], e[2], e[3]]))
            .unwrap_or(0);
        return Err(io::Error::from_raw_os_error(errno.abs()));
    }
    let len = (u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize).min(b.len());
    let msg = &b[NLMSG_HDR_LEN..len];
    if msg.len() < MSG_LEN {
        return Err(bad("short inet_diag_msg"));
    }
    let unread = u32::from_ne_bytes(msg[MSG_RQUEUE..MSG_RQUEUE + 4].try_into().expect("4"));
    let mut at = MSG_LEN;
    while at + 4 <= msg.len() {
        let alen = u16::from_ne_bytes([msg[at], msg[at + 1]]) as usize;
        let akind = u16::from_ne_bytes([msg[at + 2], msg[at + 3]]);
        if alen < 4 || at + alen > msg.len() {
            break;
        }
        let data = &msg[at + 4..at + alen];
        if akind == INET_DIAG_INFO && data.len() >= TCPI_BYTES_RECEIVED + 8 {
            let received = u64::from_ne_bytes(
                data[TCPI_BYTES_RECEIVED..TCPI_BYTES_RECEIVED + 8]
                    .try_into()
                    .expect("8"),
            );
            return Ok(ServerSide { unread, received });
        }
        // Attributes are padded to 4 bytes.
        at += (alen + 3) & !3;
    }
    Err(bad("no tcp_info in the reply (kernel older than 4.1?)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn sees_unread_bytes_in_the_servers_queue_until_the_server_reads_them() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let mut probe =
            DrainProbe::new(client.local_addr().unwrap(), client.peer_addr().unwrap()).unwrap();
        assert_eq!(
            probe.query().unwrap(),
            ServerSide {
                unread: 0,
                received: 0
            }
        );
        client.write_all(b"hello").unwrap();
        // Bounded: loopback delivers at once, but give the softirq a few tries.
        let mut side = probe.query().unwrap();
        for _ in 0..1000 {
            if side.received == 5 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
            side = probe.query().unwrap();
        }
        assert_eq!(
            side,
            ServerSide {
                unread: 5,
                received: 5
            }
        );
        let mut buf = [0u8; 5];
        server.read_exact(&mut buf).unwrap();
        assert_eq!(
            probe.query().unwrap(),
            ServerSide {
                unread: 0,
                received: 5
            }
        );
    }

    #[test]
    fn a_connection_that_does_not_exist_is_an_error() {
        let mut probe = DrainProbe::new(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        )
        .unwrap();
        assert!(probe.query().is_err());
    }
}
