//! The UDP reference servers: `echo` (each datagram answered by the same bytes, or
//! their ASCII upper-case) and `time` (the request is a strftime-like format, see
//! [`strftime`]; the reply is the current UTC time in it, an empty request meaning
//! [`strftime::DEFAULT_FORMAT`]).
//!
//! UDP has no stream to split, but it has its own receiver bug: reading into a buffer
//! smaller than the datagram silently drops the rest. This server receives into a
//! buffer one byte larger than `max_datagram`, so a datagram that filled it is known
//! to be too large; it is never served, and the client gets a truncation report
//! ([`truncation_report`]) instead, so it cannot mistake a cut request for a whole one.

pub mod strftime;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::Notify;

use crate::echo::Transform;
use crate::server::{ServerError, TaskHandle};

/// The largest payload of one IPv4 UDP datagram (65535 - 8 UDP - 20 IP header bytes).
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// Every truncation report starts with these bytes.
pub const TRUNCATED_PREFIX: &[u8] = b"!truncated ";

/// How many leading request bytes a truncation report quotes, so the client can tell
/// which of its requests was refused.
pub const TRUNCATION_HEAD: usize = 32;

/// What the server does with a datagram.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    #[default]
    Echo,
    Time,
}

/// A `--mode` other than `echo` or `time`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown udp mode `{0}` (expected echo or time)")]
pub struct ModeParseError(pub String);

impl FromStr for Mode {
    type Err = ModeParseError;
    fn from_str(s: &str) -> Result<Mode, ModeParseError> {
        match s {
            "echo" => Ok(Mode::Echo),
            "time" => Ok(Mode::Time),
            _ => Err(ModeParseError(s.to_string())),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    /// Echo only; `time` refuses anything but [`Transform::None`].
    pub transform: Transform,
    /// Largest request served (`--max-datagram`); larger ones get a truncation report.
    pub max_datagram: usize,
    /// Shared with whoever reads the counters; clone it before `run`.
    pub counters: Arc<UdpCounters>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: Mode::Echo,
            transform: Transform::None,
            max_datagram: MAX_UDP_PAYLOAD,
            counters: Arc::default(),
        }
    }
}

impl Config {
    /// Checks the options before any socket work, so a bad one is a usage error.
    pub fn validate(&self) -> Result<(), ServerError> {
        if self.max_datagram == 0 || self.max_datagram > MAX_UDP_PAYLOAD {
            return Err(ServerError::Config(format!(
                "--max-datagram must be 1..={MAX_UDP_PAYLOAD}, got {}",
                self.max_datagram
            )));
        }
        if self.mode == Mode::Time && self.transform != Transform::None {
            return Err(ServerError::Config(
                "--transform applies to --mode echo only".into(),
            ));
        }
        Ok(())
    }
}

/// Live counters of one UDP server.
#[derive(Debug, Default)]
pub struct UdpCounters {
    datagrams_in: AtomicU64,
    replies_out: AtomicU64,
    truncated: AtomicU64,
    reply_too_large: AtomicU64,
    io_errors: AtomicU64,
    changed: Notify,
}

/// A copy of [`UdpCounters`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct UdpCounterSnapshot {
    pub datagrams_in: u64,
    pub replies_out: u64,
    /// Requests larger than `max_datagram`, answered with a truncation report.
    pub truncated: u64,
    /// Time requests whose expansion would not fit in one datagram.
    pub reply_too_large: u64,
    /// Failed receives and sends (logged; the server keeps going).
    pub io_errors: u64,
}

impl UdpCounters {
    pub fn snapshot(&self) -> UdpCounterSnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::SeqCst);
        UdpCounterSnapshot {
            datagrams_in: load(&self.datagrams_in),
            replies_out: load(&self.replies_out),
            truncated: load(&self.truncated),
            reply_too_large: load(&self.reply_too_large),
            io_errors: load(&self.io_errors),
        }
    }

    fn bump(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Waits (at most `deadline`) until `pred` holds; returns the last snapshot either way.
    pub async fn wait_until(
        &self,
        deadline: Duration,
        pred: impl Fn(&UdpCounterSnapshot) -> bool,
    ) -> Result<UdpCounterSnapshot, UdpCounterSnapshot> {
        crate::server::wait_for(&self.changed, deadline, || self.snapshot(), pred).await
    }
}

/// What the server answers to one datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// The normal answer.
    Served(Vec<u8>),
    /// The request was larger than `max_datagram`: a truncation report.
    Truncated(Vec<u8>),
    /// A time request whose expansion would exceed one datagram: an error line.
    TooLarge(Vec<u8>),
}

impl Reply {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Reply::Served(b) | Reply::Truncated(b) | Reply::TooLarge(b) => b,
        }
    }
}

/// The report sent instead of serving a request that did not fit in `max` bytes:
/// `!truncated max=N head=` followed by the first [`TRUNCATION_HEAD`] bytes received.
pub fn truncation_report(max: usize, received: &[u8]) -> Vec<u8> {
    let mut out = format!("!truncated max={max} head=").into_bytes();
    out.extend_from_slice(&received[..received.len().min(TRUNCATION_HEAD)]);
    out
}

/// The server's answer to `received`, which is what one receive returned into a
/// buffer of `config.max_datagram + 1` bytes at UTC `now`. Pure, so it is tested
/// without sockets.
pub fn respond(config: &Config, received: &[u8], now: i64) -> Reply {
    if received.len() > config.max_datagram {
        return Reply::Truncated(truncation_report(config.max_datagram, received));
    }
    match config.mode {
        Mode::Echo => Reply::Served(match config.transform {
            Transform::None => received.to_vec(),
            Transform::Upper => received.to_ascii_uppercase(),
        }),
        Mode::Time => {
            let format = if received.is_empty() {
                strftime::DEFAULT_FORMAT.as_bytes()
            } else {
                received
            };
            match strftime::format(format, &strftime::UtcTime::from_unix(now), MAX_UDP_PAYLOAD) {
                Ok(text) => Reply::Served(text),
                Err(e) => Reply::TooLarge(format!("!error {e}").into_bytes()),
            }
        }
    }
}

/// Binds a UDP socket with SO_REUSEADDR (a restart on the same port works at once).
pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Serves `config.mode` on `socket` until `shutdown` resolves. One task serves every
/// peer: each datagram is independent, and the reply is computed without waiting.
pub async fn run(
    socket: UdpSocket,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    config.validate()?;
    tokio::pin!(shutdown);
    let counters = config.counters.clone();
    // One byte more than the largest request served: a receive that fills it was cut
    // by the kernel (or was simply too large), and is reported instead of served.
    let mut buf = vec![0u8; config.max_datagram + 1];
    loop {
        let (n, peer) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            received = socket.recv_from(&mut buf) => match received {
                Ok(pair) => pair,
                Err(e) => {
                    // ICMP errors from earlier replies surface here on some systems;
                    // they concern one peer, never the server. Back off briefly in case
                    // it is something persistent, so we never spin.
                    tracing::debug!("udp receive failed: {e}");
                    counters.bump(&counters.io_errors);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            },
        };
        counters.bump(&counters.datagrams_in);
        let reply = respond(&config, &buf[..n], strftime::unix_now());
        match &reply {
            Reply::Truncated(_) => {
                tracing::info!(%peer, max = config.max_datagram, "datagram larger than the receive limit; reported, not served");
                counters.bump(&counters.truncated);
            }
            Reply::TooLarge(_) => counters.bump(&counters.reply_too_large),
            Reply::Served(_) => {}
        }
        match socket.send_to(reply.bytes(), peer).await {
            Ok(_) => counters.bump(&counters.replies_out),
            Err(e) => {
                tracing::debug!(%peer, "udp reply failed: {e}");
                counters.bump(&counters.io_errors);
            }
        }
    }
}

/// A UDP server running on a background task; for tests and in-process campaigns.
#[derive(Debug)]
pub struct UdpHandle {
    pub addr: SocketAddr,
    task: TaskHandle<ServerError>,
}

impl UdpHandle {
    /// Spawns [`run`] on `socket`.
    pub fn spawn(socket: UdpSocket, config: Config) -> io::Result<UdpHandle> {
        let task = TaskHandle::spawn(socket, |socket, stop| run(socket, config, stop))?;
        Ok(UdpHandle {
            addr: task.addr,
            task,
        })
    }

    /// Whether the server task has ended (it should not, before `shutdown`).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Requests shutdown and waits for the server to return.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        self.task.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(mode: Mode, transform: Transform, max: usize) -> Config {
        Config {
            mode,
            transform,
            max_datagram: max,
            ..Config::default()
        }
    }

    #[test]
    fn echo_returns_same_bytes_or_upper_case() {
        let plain = config(Mode::Echo, Transform::None, 16);
        assert_eq!(
            respond(&plain, b"hi\xff", 0),
            Reply::Served(b"hi\xff".to_vec())
        );
        assert_eq!(respond(&plain, b"", 0), Reply::Served(vec![]));
        let upper = config(Mode::Echo, Transform::Upper, 16);
        assert_eq!(
            respond(&upper, b"ab-c\xe9", 0),
            Reply::Served(b"AB-C\xe9".to_vec())
        );
    }

    #[test]
    fn request_filling_the_oversized_buffer_is_reported_not_served() {
        let c = config(Mode::Echo, Transform::None, 4);
        assert_eq!(respond(&c, b"1234", 0), Reply::Served(b"1234".to_vec()));
        assert_eq!(
            respond(&c, b"12345", 0),
            Reply::Truncated(b"!truncated max=4 head=12345".to_vec())
        );
    }

    #[test]
    fn time_with_empty_request_uses_default_format() {
        let c = config(Mode::Time, Transform::None, 64);
        assert_eq!(
            respond(&c, b"", 86_399),
            Reply::Served(b"1970-01-01 23:59:59".to_vec())
        );
        assert_eq!(respond(&c, b"%s!", 5), Reply::Served(b"5!".to_vec()));
    }

    #[test]
    fn time_request_expanding_past_one_datagram_is_an_error_reply() {
        let c = config(Mode::Time, Transform::None, MAX_UDP_PAYLOAD);
        let f = "%s".repeat(20_000);
        assert!(matches!(
            respond(&c, f.as_bytes(), 1_700_000_000),
            Reply::TooLarge(_)
        ));
    }

    #[test]
    fn bad_options_are_config_errors() {
        assert!(config(Mode::Echo, Transform::None, 0).validate().is_err());
        assert!(config(Mode::Echo, Transform::None, MAX_UDP_PAYLOAD + 1)
            .validate()
            .is_err());
        assert!(config(Mode::Time, Transform::Upper, 10).validate().is_err());
        assert!("tcp".parse::<Mode>().is_err());
        assert_eq!("time".parse::<Mode>(), Ok(Mode::Time));
    }
}
