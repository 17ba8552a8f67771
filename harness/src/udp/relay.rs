//! The UDP relay behind `chopstick proxy --udp`: clients send to the relay, the relay
//! forwards to the upstream server and the replies back, applying seeded datagram
//! faults to either direction. Any client and server in any language can be tested.
//!
//! Each client address gets its own upstream socket (like a NAT mapping), so replies
//! find their way back. The `n`-th datagram the relay receives in a direction gets
//! `faults.fate(seed, dir, n)`; the counters in [`RelayStats`] record what was applied,
//! which is what the rate test measures. Traffic stays on loopback: a non-loopback
//! upstream or listen address is refused.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;

use super::fault::{DatagramFaults, Fate};
use super::shaper::Applied;
use super::shaper::{Datagram, Shaper, DEFAULT_MAX_HOLD};
use crate::chaos::Direction;

/// Larger than any IPv4 UDP payload, so the relay itself never truncates.
const RECV_BUF: usize = 65_536;
/// Idle sessions are swept this often.
const SWEEP: Duration = Duration::from_millis(500);

pub use crate::proxy::{DirectionParseError, FaultDirection};

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub upstream: SocketAddr,
    pub faults: DatagramFaults,
    pub seed: u64,
    pub direction: FaultDirection,
    /// Clients served at once; datagrams from further clients are dropped and counted.
    pub max_sessions: usize,
    /// A client silent for this long loses its upstream socket.
    pub session_idle: Duration,
    /// Longest a reordered datagram waits for the datagrams it should let pass.
    pub max_hold: Duration,
    /// Shared with whoever reads the counters; clone it before `run`.
    pub stats: Arc<RelayStats>,
}

impl RelayConfig {
    pub fn new(upstream: SocketAddr) -> RelayConfig {
        RelayConfig {
            upstream,
            faults: DatagramFaults::none(),
            seed: 0,
            direction: FaultDirection::Up,
            max_sessions: 1024,
            session_idle: Duration::from_secs(30),
            max_hold: DEFAULT_MAX_HOLD,
            stats: Arc::default(),
        }
    }
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    #[error("{0} is not a loopback address; the udp relay only sends traffic on this machine")]
    NotLoopback(SocketAddr),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Counters of one direction.
#[derive(Debug, Default)]
pub struct DirCounters {
    received: AtomicU64,
    sent: AtomicU64,
    lost: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    truncated: AtomicU64,
    delayed: AtomicU64,
}

/// A copy of [`DirCounters`]. `lost` counts received datagrams dropped; `duplicated`,
/// `reordered`, `truncated` and `delayed` count received datagrams the fault applied to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DirSnapshot {
    pub received: u64,
    pub sent: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub truncated: u64,
    pub delayed: u64,
}

/// Live counters of one relay.
#[derive(Debug, Default)]
pub struct RelayStats {
    up: DirCounters,
    down: DirCounters,
    sessions: AtomicU64,
    refused: AtomicU64,
    io_errors: AtomicU64,
    changed: Notify,
}

/// A copy of [`RelayStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RelaySnapshot {
    pub up: DirSnapshot,
    pub down: DirSnapshot,
    /// Client sessions opened so far.
    pub sessions: u64,
    /// Datagrams dropped because `max_sessions` clients were already served.
    pub refused: u64,
    pub io_errors: u64,
}

impl DirCounters {
    fn snapshot(&self) -> DirSnapshot {
        let l = |c: &AtomicU64| c.load(Ordering::SeqCst);
        DirSnapshot {
            received: l(&self.received),
            sent: l(&self.sent),
            lost: l(&self.lost),
            duplicated: l(&self.duplicated),
            reordered: l(&self.reordered),
            truncated: l(&self.truncated),
            delayed: l(&self.delayed),
        }
    }

    fn record(&self, a: Applied) {
        let add = |c: &AtomicU64, b: bool| {
            c.fetch_add(u64::from(b), Ordering::SeqCst);
        };
        add(&self.received, true);
        add(&self.lost, a.lost);
        add(&self.duplicated, a.duplicated);
        add(&self.reordered, a.reordered);
        add(&self.truncated, a.truncated);
        add(&self.delayed, a.delayed);
    }
}

impl RelayStats {
    pub fn snapshot(&self) -> RelaySnapshot {
        let l = |c: &AtomicU64| c.load(Ordering::SeqCst);
        RelaySnapshot {
            up: self.up.snapshot(),
            down: self.down.snapshot(),
            sessions: l(&self.sessions),
            refused: l(&self.refused),
            io_errors: l(&self.io_errors),
        }
    }

    fn dir(&self, dir: Direction) -> &DirCounters {
        match dir {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        }
    }

    fn bump(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::SeqCst);
    }

    /// Waits (at most `deadline`) until `pred` holds; returns the last snapshot either way.
    pub async fn wait_until(
        &self,
        deadline: Duration,
        pred: impl Fn(&RelaySnapshot) -> bool,
    ) -> Result<RelaySnapshot, RelaySnapshot> {
        chopstick_targets::server::wait_for(&self.changed, deadline, || self.snapshot(), pred).await
    }
}

struct Session {
    upstream: Arc<UdpSocket>,
    up: Shaper,
    down: Shaper,
    last_seen: Instant,
    reader: tokio::task::AbortHandle,
}

async fn open_session(upstream: SocketAddr) -> io::Result<Arc<UdpSocket>> {
    let bind: SocketAddr = if upstream.is_ipv4() {
        "127.0.0.1:0".parse().expect("literal")
    } else {
        "[::1]:0".parse().expect("literal")
    };
    let sock = UdpSocket::bind(bind).await?;
    // Connected: only the upstream's replies are accepted on this socket.
    sock.connect(upstream).await?;
    Ok(Arc::new(sock))
}

/// Relays datagrams between clients of `socket` and `config.upstream` until `shutdown`
/// resolves; returns the final counters.
pub async fn run(
    socket: UdpSocket,
    config: RelayConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<RelaySnapshot, RelayError> {
    if !config.upstream.ip().is_loopback() {
        return Err(RelayError::NotLoopback(config.upstream));
    }
    let local = socket.local_addr()?;
    if !local.ip().is_loopback() {
        return Err(RelayError::NotLoopback(local));
    }
    tokio::pin!(shutdown);
    let stats = config.stats.clone();
    let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
    let mut readers = JoinSet::new();
    // Bounded: a flood from upstream waits for the relay instead of growing memory.
    let (down_tx, mut down_rx) = mpsc::channel::<(SocketAddr, Bytes)>(1024);
    let mut index = [0u64; 2];
    let mut buf = vec![0u8; RECV_BUF];
    let mut next_sweep = Instant::now() + SWEEP;

    // The n-th datagram received in a direction, and its fate.
    let fate = |index: &mut [u64; 2], dir: Direction| -> (u64, Fate) {
        let slot = &mut index[usize::from(dir == Direction::Down)];
        let n = *slot;
        *slot += 1;
        if config.direction.applies_to(dir) {
            (n, config.faults.fate(config.seed, dir, n))
        } else {
            (n, Fate::CLEAN)
        }
    };

    loop {
        let wake = sessions
            .values()
            .flat_map(|s| [s.up.next_wake(), s.down.next_wake()])
            .flatten()
            .min()
            .unwrap_or(next_sweep)
            .min(next_sweep);
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, client)) => {
                    let now = Instant::now();
                    if !sessions.contains_key(&client) {
                        if sessions.len() >= config.max_sessions.max(1) {
                            stats.bump(&stats.refused);
                            continue;
                        }
                        let upstream = match open_session(config.upstream).await {
                            Ok(u) => u,
                            Err(e) => {
                                tracing::warn!("cannot open upstream socket: {e}");
                                stats.bump(&stats.io_errors);
                                continue;
                            }
                        };
                        let (reader_sock, tx) = (upstream.clone(), down_tx.clone());
                        let reader = readers.spawn(read_upstream(reader_sock, client, tx));
                        stats.bump(&stats.sessions);
                        sessions.insert(client, Session {
                            upstream,
                            up: Shaper::new(config.max_hold),
                            down: Shaper::new(config.max_hold),
                            last_seen: now,
                            reader,
                        });
                    }
                    let (seq, f) = fate(&mut index, Direction::Up);
                    if let Some(s) = sessions.get_mut(&client) {
                        s.last_seen = now;
                        let bytes = Bytes::copy_from_slice(&buf[..n]);
                        stats.up.record(s.up.push(now, &f, Datagram { seq, bytes }));
                    }
                }
                Err(e) => {
                    tracing::debug!("relay receive failed: {e}");
                    stats.bump(&stats.io_errors);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            },
            Some((client, bytes)) = down_rx.recv() => {
                let (seq, f) = fate(&mut index, Direction::Down);
                if let Some(s) = sessions.get_mut(&client) {
                    let now = Instant::now();
                    s.last_seen = now;
                    stats.down.record(s.down.push(now, &f, Datagram { seq, bytes }));
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        let now = Instant::now();
        for (client, s) in sessions.iter_mut() {
            while let Some(d) = s.up.pop_due(now) {
                send(&stats, Direction::Up, s.upstream.send(&d.bytes).await);
            }
            while let Some(d) = s.down.pop_due(now) {
                send(
                    &stats,
                    Direction::Down,
                    socket.send_to(&d.bytes, client).await,
                );
            }
        }
        if now >= next_sweep {
            next_sweep = now + SWEEP;
            // A session with datagrams still in flight is kept until they have left.
            sessions.retain(|_, s| {
                let keep = now.duration_since(s.last_seen) < config.session_idle
                    || !s.up.is_empty()
                    || !s.down.is_empty();
                if !keep {
                    s.reader.abort();
                }
                keep
            });
            while readers.try_join_next().is_some() {}
        }
        stats.changed.notify_waiters();
    }
    readers.abort_all();
    Ok(stats.snapshot())
}

fn send(stats: &RelayStats, dir: Direction, result: io::Result<usize>) {
    match result {
        Ok(_) => stats.bump(&stats.dir(dir).sent),
        Err(e) => {
            // A closed upstream port answers with ICMP, surfacing here; the datagram is
            // lost exactly as it would be on a real network.
            tracing::debug!(?dir, "relay send failed: {e}");
            stats.bump(&stats.io_errors);
        }
    }
}

/// Forwards everything the upstream sends on one session's socket to the main loop.
async fn read_upstream(
    sock: Arc<UdpSocket>,
    client: SocketAddr,
    tx: mpsc::Sender<(SocketAddr, Bytes)>,
) {
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        match sock.recv(&mut buf).await {
            Ok(n) => {
                if tx
                    .send((client, Bytes::copy_from_slice(&buf[..n])))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            // ECONNREFUSED from an earlier send to a closed port: not fatal; the server
            // may come back. Pause so a persistent error cannot spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direction_parses_and_covers() {
        assert_eq!("both".parse::<FaultDirection>(), Ok(FaultDirection::Both));
        assert!("sideways".parse::<FaultDirection>().is_err());
        assert!(FaultDirection::Up.applies_to(Direction::Up));
        assert!(!FaultDirection::Up.applies_to(Direction::Down));
        assert!(FaultDirection::Both.applies_to(Direction::Down));
    }

    #[tokio::test]
    async fn non_loopback_upstream_is_refused() {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let config = RelayConfig::new("192.0.2.1:9".parse().unwrap());
        let result = run(sock, config, std::future::pending()).await;
        assert!(matches!(result, Err(RelayError::NotLoopback(_))));
    }
}
