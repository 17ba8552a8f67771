//! `chopstick proxy`: a TCP relay that applies chaos plans to the bytes it passes on,
//! for any client and server in any language.
//!
//! # Model
//!
//! Each accepted connection (numbered from 0 in accept order) gets its own upstream
//! connection and two relays running concurrently, `Up` (client to upstream) and `Down`
//! (upstream to client). A relay whose direction is selected by
//! [`ProxyConfig::direction`] applies faults: for every *batch* of bytes it has read it
//! draws a [`Plan`] from the plan source ([`ProxyConfig::faults`], or
//! [`ProxyConfig::plans`] when set) with that direction's RNG,
//! `conn_rng(seed, conn, dir)`, and carries it out with [`PlanWriter`]: one write per
//! chunk, pauses, and at least [`ProxyConfig::min_pause`] between writes. The other
//! relays copy bytes as they come, reading and writing at once (`pump.rs`). The same
//! seed, the same batches and the same arguments give the same plans; batches depend
//! on how the peers' bytes arrive.
//!
//! With [`ProxyConfig::framing`] the relay is frame-aware: a [`FrameScanner`] follows
//! the stream across reads, and each batch comes with the layouts of its frames
//! (relative to the batch, clipped to it), so faults cut inside length fields, at
//! header ends, at frame ends. The relay holds bytes back until [`Hold::frames`] whole
//! frames are there, so a batch is whole frames and `coalesce` has several to merge;
//! holding is bounded by [`Hold::max_bytes`] and [`Hold::max_wait`], after which what
//! is held goes on as it is. A stream that turns out not to parse is relayed unframed.
//!
//! Endings pass through: a FIN from one peer becomes a FIN to the other once the held
//! bytes are delivered (half-close: the other direction keeps flowing); an RST or any
//! read error becomes an RST to the other peer (SO_LINGER 0, close). A plan that ends in
//! `close` ends the connection with FINs both ways (then drains both peers briefly so
//! unread data does not turn the FIN into an RST); one that ends in `reset` resets both
//! peers. A write that fails (the peer vanished) resets the other peer too.
//!
//! Everything is bounded: upstream connect ([`ProxyConfig::connect_timeout`]),
//! connections at once ([`ProxyConfig::max_conns`]), idle connections
//! ([`ProxyConfig::idle_timeout`]), a peer that stops reading
//! ([`ExecOptions::stall_timeout`]), held bytes ([`Hold`]), and shutdown
//! ([`ProxyConfig::shutdown_grace`]). A client whose upstream cannot be reached is reset.
//!
//! # API (for `chopstick proxy`)
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use chopstick::proxy::{self, FaultDirection, ProxyConfig};
//! let listener = chopstick_targets::server::bind("127.0.0.1:7000".parse()?, 1024)?;
//! let mut config = ProxyConfig::new("127.0.0.1:7001".parse()?);
//! config.framing = Some("u32be".parse()?);          // --framing
//! config.faults = "split:max=64".parse()?;          // --faults
//! config.direction = "both".parse::<FaultDirection>()?; // --direction
//! config.seed = 42;                                 // --seed
//! println!("listening on {}", listener.local_addr()?);
//! proxy::run(listener, config, async { tokio::signal::ctrl_c().await.ok(); }).await?;
//! # Ok(()) }
//! ```
//!
//! Tests and in-process campaigns use [`ProxyHandle::spawn`] and read
//! [`ProxyConfig::counters`] (accepted/active connections, bytes each way).
//!
//! With [`ProxyConfig::recorder`] every connection is also recorded
//! ([`crate::traffic`]): each piece read from a peer is shown to the connection's
//! [`ConnRecorder`] before it is relayed, and each direction's ending after it.
//!
//! Logs (`tracing`): each connection's number, peer and seed at info when accepted, a
//! plan summary per direction at info when it ends, every plan at debug.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use rand_chacha::ChaCha8Rng;
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::chaos::tcp::{drain_unsent, ExecError, ExecOptions, PlanWriter};
use crate::chaos::{conn_rng, Direction, Ending, FaultSet, Plan};
use crate::traffic::{ConnRecorder, Recorder};
use chopstick_targets::server::TaskHandle;
use chopstick_targets::wire::{FrameLayout, FrameScanner, Framing, StreamFrame};

pub mod api;
mod pump;

/// The signature of a plan source: `(batch length, frame layouts in the batch, rng)`.
pub type PlanFn = dyn Fn(usize, &[FrameLayout], &mut ChaCha8Rng) -> Plan + Send + Sync;

/// A custom plan source: the extension point for plans that no `--faults` list
/// describes (tests that need one exact fault, scripted scenarios, replays). When set in
/// [`ProxyConfig::plans`] it replaces [`ProxyConfig::faults`]; it is called once per
/// batch of a faulted direction, like [`FaultSet::plan`], and shared by all connections.
#[derive(Clone)]
pub struct PlanSource(Arc<PlanFn>);

impl PlanSource {
    pub fn new(
        f: impl Fn(usize, &[FrameLayout], &mut ChaCha8Rng) -> Plan + Send + Sync + 'static,
    ) -> PlanSource {
        PlanSource(Arc::new(f))
    }
}

impl fmt::Debug for PlanSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlanSource(..)")
    }
}

/// Which directions of each connection get faults (`--direction up|down|both`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum FaultDirection {
    /// Client to upstream only.
    Up,
    /// Upstream to client only.
    Down,
    #[default]
    Both,
}

impl FaultDirection {
    pub fn applies_to(self, dir: Direction) -> bool {
        matches!(
            (self, dir),
            (FaultDirection::Both, _)
                | (FaultDirection::Up, Direction::Up)
                | (FaultDirection::Down, Direction::Down)
        )
    }
}

/// A `--direction` that is not `up`, `down` or `both`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown direction `{0}` (expected up, down or both)")]
pub struct DirectionParseError(pub String);

impl FromStr for FaultDirection {
    type Err = DirectionParseError;

    fn from_str(s: &str) -> Result<FaultDirection, DirectionParseError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "up" => Ok(FaultDirection::Up),
            "down" => Ok(FaultDirection::Down),
            "both" => Ok(FaultDirection::Both),
            _ => Err(DirectionParseError(s.to_string())),
        }
    }
}

impl fmt::Display for FaultDirection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultDirection::Up => "up",
            FaultDirection::Down => "down",
            FaultDirection::Both => "both",
        })
    }
}

/// How long a frame-aware, faulted relay holds bytes back to gather whole frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    /// Whole frames to gather before a batch goes on (0 = never hold). Raise it to give
    /// `coalesce` several frames per batch.
    pub frames: usize,
    /// Never hold more than this many bytes; also the largest batch.
    pub max_bytes: usize,
    /// Never hold a byte longer than this.
    pub max_wait: Duration,
    /// When positive, held bytes also go on once nothing more has arrived for this long
    /// (a window that follows the sender; `max_wait` still bounds it). `coalesce`'s
    /// `hold_ms`.
    pub gap: Duration,
}

impl Default for Hold {
    fn default() -> Self {
        Hold {
            frames: 1,
            max_bytes: 1 << 20,
            max_wait: Duration::from_millis(5),
            gap: Duration::ZERO,
        }
    }
}

impl Hold {
    /// The holding `faults` need: for a `coalesce` entry (directly or through `mixed`),
    /// up to its `max` frames, waiting `hold_ms` for each next send (see
    /// [`crate::chaos::faults::Coalesce`]); otherwise the default.
    pub fn for_faults(faults: &FaultSet) -> Hold {
        use crate::chaos::faults::{Coalesce, FaultSpec};
        let coalesce = faults.entries().iter().find_map(|e| match e.spec {
            FaultSpec::Coalesce(c) => Some(c),
            FaultSpec::Mixed => Some(Coalesce::default()),
            _ => None,
        });
        match coalesce {
            Some(c) if c.hold_ms > 0 => {
                let gap = Duration::from_millis(c.hold_ms);
                Hold {
                    frames: c.max.max(1),
                    gap,
                    max_wait: gap.saturating_mul(c.max.clamp(1, 64) as u32),
                    ..Hold::default()
                }
            }
            Some(c) => Hold {
                frames: c.max.max(1),
                ..Hold::default()
            },
            None => Hold::default(),
        }
    }

    /// When bytes held since `first` must go on, the last of them read at `now`.
    fn deadline(
        &self,
        first: tokio::time::Instant,
        now: tokio::time::Instant,
    ) -> tokio::time::Instant {
        let cap = after(first, self.max_wait);
        if self.gap.is_zero() {
            cap
        } else {
            cap.min(after(now, self.gap))
        }
    }
}

/// Everything `chopstick proxy` takes. Build with [`ProxyConfig::new`] and set fields.
#[derive(Debug)]
pub struct ProxyConfig {
    /// Where every accepted connection is relayed to (`--upstream`).
    pub upstream: SocketAddr,
    /// Frame-aware relaying (`--framing`, spoken both ways); `None` relays bytes
    /// without layouts and never holds them back.
    pub framing: Option<Framing>,
    /// Faults to apply (`--faults`); empty = a plain relay.
    pub faults: FaultSet,
    /// Replaces `faults` as the plan source when set; see [`PlanSource`].
    pub plans: Option<PlanSource>,
    /// Which directions get faults (`--direction`, default both).
    pub direction: FaultDirection,
    /// Master seed (`--seed`); connection `i`'s plans come from `conn_rng(seed, i, dir)`.
    pub seed: u64,
    /// Smallest gap between two faulted writes; see [`crate::chaos::tcp`] for why.
    pub min_pause: Duration,
    /// Holding of bytes to gather whole frames (frame-aware faulted relays only).
    pub hold: Hold,
    /// Bytes read from a peer at once, at first.
    pub read_buffer: usize,
    /// A direction whose reads keep filling the buffer (a bulk transfer) doubles it up
    /// to this: fewer reads, writes and wakeups per byte. It starts again from
    /// `read_buffer` once the direction goes quiet and its buffer is freed.
    pub read_buffer_max: usize,
    /// Giving up on the upstream; the client is then reset.
    pub connect_timeout: Duration,
    /// A connection with no byte in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// A write to a peer that makes no progress for this long resets the connection.
    pub stall_timeout: Duration,
    /// After a `close` fault, how long both peers are drained before the sockets close.
    pub close_linger: Duration,
    /// Connections relayed at once; more wait in the listen queue.
    pub max_conns: usize,
    /// On shutdown, how long live connections may finish before they are cut.
    pub shutdown_grace: Duration,
    /// Shared with whoever reads the counters; clone it before `run`.
    pub counters: Arc<ProxyCounters>,
    /// Records every connection's frames (`--record`); flushing is the owner's job.
    pub recorder: Option<Arc<Recorder>>,
}

impl ProxyConfig {
    /// A plain relay to `upstream` with the defaults.
    pub fn new(upstream: SocketAddr) -> ProxyConfig {
        ProxyConfig {
            upstream,
            framing: None,
            faults: FaultSet::none(),
            plans: None,
            direction: FaultDirection::Both,
            seed: 0,
            min_pause: crate::chaos::tcp::DEFAULT_MIN_PAUSE,
            hold: Hold::default(),
            read_buffer: 64 * 1024,
            read_buffer_max: 256 * 1024,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(30),
            close_linger: Duration::from_secs(1),
            max_conns: 1024,
            shutdown_grace: Duration::from_secs(2),
            counters: Arc::default(),
            recorder: None,
        }
    }

    fn validate(&self) -> Result<(), ProxyError> {
        let zero = |what: &str| Err(ProxyError::Config(format!("{what} must be positive")));
        if self.read_buffer == 0 {
            return zero("read_buffer");
        }
        if self.read_buffer_max < self.read_buffer {
            return Err(ProxyError::Config(
                "read_buffer_max must be at least read_buffer".into(),
            ));
        }
        if self.hold.max_bytes == 0 {
            return zero("hold.max_bytes");
        }
        if self.max_conns == 0 {
            return zero("max_conns");
        }
        if self.idle_timeout.is_zero() {
            return zero("idle_timeout");
        }
        Ok(())
    }

    /// Whether bytes going `dir` get plans at all.
    fn faulted(&self, dir: Direction) -> bool {
        self.direction.applies_to(dir) && (self.plans.is_some() || !self.faults.is_empty())
    }

    fn plan(&self, len: usize, frames: &[FrameLayout], rng: &mut ChaCha8Rng) -> Plan {
        match &self.plans {
            Some(source) => (source.0)(len, frames, rng),
            None => self.faults.plan(len, frames, rng),
        }
    }

    fn exec_options(&self) -> ExecOptions {
        ExecOptions {
            min_pause: self.min_pause,
            stall_timeout: self.stall_timeout,
            ..ExecOptions::default()
        }
    }
}

/// Why the proxy could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    #[error("bad proxy configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Live counters of one proxy; read with [`ProxyCounters::snapshot`].
#[derive(Debug, Default)]
pub struct ProxyCounters {
    accepted: AtomicU64,
    active: AtomicU64,
    upstream_failures: AtomicU64,
    fault_closes: AtomicU64,
    fault_resets: AtomicU64,
    peer_resets: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    changed: Notify,
}

/// A copy of [`ProxyCounters`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProxySnapshot {
    pub accepted: u64,
    /// Connections being relayed now (their sockets are open).
    pub active: u64,
    /// Clients reset because the upstream refused, timed out or failed.
    pub upstream_failures: u64,
    /// Connections ended by a plan's `close`.
    pub fault_closes: u64,
    /// Connections ended by a plan's `reset`.
    pub fault_resets: u64,
    /// Connections reset because a peer reset, vanished or stalled.
    pub peer_resets: u64,
    /// Bytes delivered to the upstream.
    pub bytes_up: u64,
    /// Bytes delivered to the client.
    pub bytes_down: u64,
}

impl ProxyCounters {
    pub fn snapshot(&self) -> ProxySnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::SeqCst);
        ProxySnapshot {
            accepted: load(&self.accepted),
            active: load(&self.active),
            upstream_failures: load(&self.upstream_failures),
            fault_closes: load(&self.fault_closes),
            fault_resets: load(&self.fault_resets),
            peer_resets: load(&self.peer_resets),
            bytes_up: load(&self.bytes_up),
            bytes_down: load(&self.bytes_down),
        }
    }

    /// Waits (at most `deadline`) until `pred` holds; returns the last snapshot either way.
    pub async fn wait_until(
        &self,
        deadline: Duration,
        pred: impl Fn(&ProxySnapshot) -> bool,
    ) -> Result<ProxySnapshot, ProxySnapshot> {
        chopstick_targets::server::wait_for(&self.changed, deadline, || self.snapshot(), pred).await
    }

    fn add(&self, c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    fn delivered(&self, dir: Direction, n: usize) {
        match dir {
            Direction::Up => self.add(&self.bytes_up, n as u64),
            Direction::Down => self.add(&self.bytes_down, n as u64),
        }
    }
}

/// Keeps `active` honest: decremented when the connection's task ends or is dropped,
/// after its sockets (declared later, dropped earlier) are closed.
struct ActiveGuard(Arc<ProxyCounters>);

impl ActiveGuard {
    fn new(counters: Arc<ProxyCounters>) -> ActiveGuard {
        counters.active.fetch_add(1, Ordering::SeqCst);
        counters.add(&counters.accepted, 1);
        ActiveGuard(counters)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

/// Relays connections from `listener` to `config.upstream` until `shutdown` resolves.
///
/// On shutdown it stops accepting, lets live connections finish for
/// `shutdown_grace`, then cuts the rest. Accept errors (e.g. out of fds) are logged
/// and retried after a short back-off, not returned.
pub async fn run(
    listener: TcpListener,
    config: ProxyConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProxyError> {
    config.validate()?;
    let config = Arc::new(config);
    tracing::info!(
        listen = %listener.local_addr()?,
        upstream = %config.upstream,
        framing = config.framing.map(|f| f.to_string()),
        faults = ?config.faults,
        custom_plans = config.plans.is_some(),
        direction = %config.direction,
        seed = config.seed,
        "proxy listening"
    );
    tokio::pin!(shutdown);
    let slots = Arc::new(Semaphore::new(config.max_conns));
    let cancel = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let mut next_conn = 0u64;
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break, // never closed; stop rather than panic
            },
        };
        let (client, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let conn = next_conn;
        next_conn += 1;
        let guard = ActiveGuard::new(config.counters.clone());
        let config = config.clone();
        let cancelled = cancel.clone().cancelled_owned();
        tasks.spawn(async move {
            let _permit = permit;
            let _guard = guard;
            tokio::select! {
                () = serve_conn(client, peer, conn, &config) => {}
                () = cancelled => tracing::info!(conn, "connection cut by shutdown"),
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    if !join_all(&mut tasks, config.shutdown_grace).await {
        cancel.cancel();
        // Cancelled connections only drop their sockets: this is quick.
        if !join_all(&mut tasks, Duration::from_secs(1)).await {
            tasks.abort_all();
        }
    }
    Ok(())
}

/// Waits for every task to end, at most `limit`; whether they all did.
async fn join_all(tasks: &mut JoinSet<()>, limit: Duration) -> bool {
    tokio::time::timeout(limit, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_ok()
}

/// How one direction's relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DirEnd {
    /// The source sent FIN; it was passed on. The other direction may go on.
    Eof,
    /// A plan ended the connection.
    Fault(Ending),
    /// The source reset or failed: pass the RST on.
    SourceReset,
    /// Writing to the destination failed: it is gone; reset the source.
    DestGone,
    /// The destination stopped reading for `stall_timeout`.
    Stalled,
    /// Nothing moved either way for `idle_timeout`.
    Idle,
    /// The plan source produced a plan the executor refuses.
    BadPlan,
}

impl DirEnd {
    /// Its name in a recording.
    fn label(self) -> &'static str {
        match self {
            DirEnd::Eof => "eof",
            DirEnd::Fault(Ending::Close) => "fault_close",
            DirEnd::Fault(Ending::Reset) => "fault_reset",
            DirEnd::SourceReset => "reset",
            DirEnd::DestGone => "dest_gone",
            DirEnd::Stalled => "stalled",
            DirEnd::Idle => "idle",
            DirEnd::BadPlan => "bad_plan",
        }
    }

    /// How the whole connection must end, if this end decides it.
    fn teardown(self) -> Option<Ending> {
        match self {
            DirEnd::Eof => None,
            DirEnd::Fault(e) => Some(e),
            DirEnd::Idle => Some(Ending::Close),
            DirEnd::SourceReset | DirEnd::DestGone | DirEnd::Stalled | DirEnd::BadPlan => {
                Some(Ending::Reset)
            }
        }
    }
}

/// What one direction did, for the plan summary in the log.
#[derive(Debug, Clone, Default)]
struct DirStats {
    bytes: u64,
    batches: u64,
    writes: u64,
    paused: Duration,
    topped_up: u64,
    end: Option<DirEnd>,
}

impl fmt::Display for DirStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} B in {} batches, {} writes, {} ms paused",
            self.bytes,
            self.batches,
            self.writes,
            self.paused.as_millis()
        )?;
        if self.topped_up > 0 {
            write!(f, ", {} short plans topped up", self.topped_up)?;
        }
        match self.end {
            Some(end) => write!(f, ", ended {end:?}"),
            None => f.write_str(", cut"),
        }
    }
}

/// State shared by both directions of one connection.
struct Conn<'a> {
    config: &'a ProxyConfig,
    id: u64,
    started: Instant,
    /// Milliseconds since `started` at the last byte read in either direction.
    last_activity_ms: AtomicU64,
    recorder: Option<ConnRecorder>,
}

impl Conn<'_> {
    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_activity_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Shows bytes just read from `dir`'s source to the recorder, if recording.
    fn record(&self, dir: Direction, bytes: &[u8]) {
        if let Some(r) = &self.recorder {
            r.read(dir, bytes);
        }
    }

    fn idle_for(&self) -> Duration {
        self.started.elapsed().saturating_sub(Duration::from_millis(
            self.last_activity_ms.load(Ordering::Relaxed),
        ))
    }
}

async fn serve_conn(client: TcpStream, peer: SocketAddr, conn: u64, config: &ProxyConfig) {
    let counters = &config.counters;
    tracing::info!(conn, %peer, seed = config.seed, "connection accepted");
    let _ = client.set_nodelay(true);
    let upstream = match tokio::time::timeout(
        config.connect_timeout,
        TcpStream::connect(config.upstream),
    )
    .await
    {
        Ok(Ok(s)) => s,
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {:?}", config.connect_timeout),
            };
            tracing::info!(conn, upstream = %config.upstream, "upstream unreachable, resetting client: {why}");
            counters.add(&counters.upstream_failures, 1);
            reset(client);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let mut client = client;
    let mut upstream = upstream;
    let state = Conn {
        config,
        id: conn,
        started: Instant::now(),
        last_activity_ms: AtomicU64::new(0),
        recorder: config.recorder.as_ref().map(|r| r.open(conn, peer)),
    };
    let mut up_stats = DirStats::default();
    let mut down_stats = DirStats::default();
    let teardown = {
        let (mut cr, mut cw) = client.split();
        let (mut ur, mut uw) = upstream.split();
        let up = relay(&mut cr, &mut uw, &state, Direction::Up, &mut up_stats);
        let down = relay(&mut ur, &mut cw, &state, Direction::Down, &mut down_stats);
        tokio::pin!(up, down);
        let (mut up_end, mut down_end) = (None, None);
        loop {
            tokio::select! {
                end = &mut up, if up_end.is_none() => up_end = Some(end),
                end = &mut down, if down_end.is_none() => down_end = Some(end),
            }
            let teardown = [up_end, down_end]
                .into_iter()
                .flatten()
                .find_map(DirEnd::teardown);
            if teardown.is_some() || (up_end.is_some() && down_end.is_some()) {
                break teardown;
            }
        }
    };
    // A direction cut short by the other's ending never returned: say so.
    if let Some(r) = &state.recorder {
        for (dir, stats) in [(Direction::Up, &up_stats), (Direction::Down, &down_stats)] {
            if stats.end.is_none() {
                r.ended(dir, "torn_down");
            }
        }
    }
    match teardown {
        None => {}
        Some(Ending::Close) => {
            // FIN both ways, then read and discard until both peers close (bounded):
            // closing a socket with unread data would send an RST instead of the FIN.
            let _ = client.shutdown().await;
            let _ = upstream.shutdown().await;
            let _ = tokio::time::timeout(
                config.close_linger,
                futures::future::join(discard(&mut client), discard(&mut upstream)),
            )
            .await;
        }
        Some(Ending::Reset) => {
            for s in [&client, &upstream] {
                let _ = SockRef::from(s).set_linger(Some(Duration::ZERO));
            }
        }
    }
    for end in [up_stats.end, down_stats.end].into_iter().flatten() {
        match end {
            DirEnd::Fault(Ending::Close) => counters.add(&counters.fault_closes, 1),
            DirEnd::Fault(Ending::Reset) => counters.add(&counters.fault_resets, 1),
            DirEnd::SourceReset | DirEnd::DestGone | DirEnd::Stalled => {
                counters.add(&counters.peer_resets, 1)
            }
            _ => {}
        }
    }
    tracing::info!(
        conn,
        seed = config.seed,
        ended = ?teardown,
        "connection done: up {up_stats}; down {down_stats}"
    );
}

/// Closes with an RST (SO_LINGER 0) instead of a FIN.
fn reset(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Reads and throws away until EOF or error.
async fn discard(stream: &mut TcpStream) {
    // On the heap, only once needed: an array here would sit in every connection's
    // future (two of them, 32 KiB) for the connection's whole life.
    let mut sink = vec![0u8; 16 * 1024];
    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// The frame-aware, faulted part of one direction's relay.
pub(crate) struct Chaos {
    rng: ChaCha8Rng,
    writer: PlanWriter,
    /// `None` without `--framing`, or once the stream failed to parse.
    scanner: Option<FrameScanner>,
    /// Complete frames not yet entirely released (absolute offsets).
    frames: VecDeque<StreamFrame>,
    /// Absolute stream offset of the first held byte.
    base: u64,
}

impl Chaos {
    /// Follows `bytes` (just read, appended to the held bytes) in the frame scanner.
    fn scan(&mut self, bytes: &[u8], conn: u64, dir: Direction) {
        let Some(scanner) = &mut self.scanner else {
            return;
        };
        let mut done = Vec::new();
        let result = scanner.feed(bytes, &mut done);
        self.frames.extend(done);
        if let Err(e) = result {
            tracing::warn!(
                conn,
                ?dir,
                "stream does not parse, relaying it unframed: {e}"
            );
            self.scanner = None;
            self.frames.clear();
        }
    }

    /// How many held bytes may go on now (0 = keep holding).
    fn releasable(&self, held: usize, hold: &Hold) -> usize {
        if self.scanner.is_none() || hold.frames == 0 || held >= hold.max_bytes {
            return held;
        }
        match self.frames.back() {
            Some(last) if self.frames.len() >= hold.frames => (last.end - self.base) as usize,
            _ => 0,
        }
    }

    /// The layouts of the frames in the next `n` held bytes, relative to them.
    fn layouts(&self, n: usize) -> Vec<FrameLayout> {
        let window = self.base..self.base + n as u64;
        let open = self.scanner.as_ref().and_then(FrameScanner::open_frame);
        self.frames
            .iter()
            .chain(open)
            .filter_map(|f| f.clip(window.clone()))
            .collect()
    }

    fn released(&mut self, n: usize) {
        self.base += n as u64;
        while self.frames.front().is_some_and(|f| f.end <= self.base) {
            self.frames.pop_front();
        }
    }
}

/// What waiting for the next read gave.
enum Got {
    Data(usize),
    Eof,
    Failed(io::Error),
    HoldExpired,
    Idle,
}

/// Relays one direction until it ends; returns how, and keeps `stats` up to date.
async fn relay(
    src: &mut ReadHalf<'_>,
    dst: &mut WriteHalf<'_>,
    conn: &Conn<'_>,
    dir: Direction,
    stats: &mut DirStats,
) -> DirEnd {
    let end = relay_inner(src, dst, conn, dir, stats).await;
    stats.end = Some(end);
    if let Some(r) = &conn.recorder {
        r.ended(dir, end.label());
    }
    end
}

async fn relay_inner(
    src: &mut ReadHalf<'_>,
    dst: &mut WriteHalf<'_>,
    conn: &Conn<'_>,
    dir: Direction,
    stats: &mut DirStats,
) -> DirEnd {
    let config = conn.config;
    if !config.faulted(dir) {
        return pump::pump(src, dst, conn, dir, stats).await;
    }
    let mut chaos = Chaos {
        rng: conn_rng(config.seed, conn.id, dir),
        writer: PlanWriter::new(config.exec_options()),
        scanner: config.framing.map(FrameScanner::new),
        frames: VecDeque::new(),
        base: 0,
    };
    let cap = config.hold.max_bytes.max(config.read_buffer);
    // Allocated by the first read that finds bytes (see `read_some`): a connection that
    // never speaks costs no read buffer.
    let mut held = BytesMut::new();
    // When the held bytes must go on at the latest, and when the oldest was read.
    let mut hold_deadline: Option<tokio::time::Instant> = None;
    let mut held_since: Option<tokio::time::Instant> = None;
    loop {
        let room = (cap - held.len()).min(config.read_buffer);
        let got = read_some(src, &mut held, room, hold_deadline, conn).await;
        let forced = match got {
            Got::Data(n) => {
                conn.touch();
                conn.record(dir, &held[held.len() - n..]);
                chaos.scan(&held[held.len() - n..], conn.id, dir);
                let now = tokio::time::Instant::now();
                let first = *held_since.get_or_insert(now);
                hold_deadline = Some(config.hold.deadline(first, now));
                false
            }
            Got::HoldExpired => true,
            Got::Idle => return DirEnd::Idle,
            Got::Eof | Got::Failed(_) => {
                // What was read before the end still goes on, as it would have
                // without the proxy; then the end itself.
                let flushed = deliver(dst, &mut held, &mut chaos, conn, dir, stats).await;
                if let Err(end) = flushed {
                    return end;
                }
                return match got {
                    Got::Failed(e) => {
                        tracing::debug!(conn = conn.id, ?dir, "source failed: {e}");
                        drain_unsent(dst.as_ref(), Duration::from_secs(1)).await;
                        DirEnd::SourceReset
                    }
                    _ => {
                        let _ = dst.shutdown().await;
                        DirEnd::Eof
                    }
                };
            }
        };
        let n = if forced {
            held.len()
        } else {
            chaos.releasable(held.len(), &config.hold)
        };
        if n == 0 {
            continue;
        }
        let mut batch = held.split_to(n);
        let result = deliver(dst, &mut batch, &mut chaos, conn, dir, stats).await;
        // The split-off batch is gone; let the next reads reuse its space.
        drop(batch);
        let now = tokio::time::Instant::now();
        held_since = (!held.is_empty()).then_some(now);
        hold_deadline = held_since.map(|first| config.hold.deadline(first, now));
        if let Err(end) = result {
            return end;
        }
    }
}

/// `at + wait`, or a day later if that is not representable (a `Duration::MAX` limit).
fn after(at: tokio::time::Instant, wait: Duration) -> tokio::time::Instant {
    at.checked_add(wait)
        .unwrap_or_else(|| at + Duration::from_secs(86_400))
}

/// How long an empty read buffer may sit unused before it is freed, so a connection
/// that goes quiet holds no buffer while it waits.
const RELEASE_AFTER: Duration = Duration::from_millis(250);

/// Reads at most `room` more bytes into `held`, waiting no longer than the hold
/// deadline (if bytes are held) and the connection's idle limit.
///
/// Reads go into `held`'s spare capacity (no zero-filling). While nothing is readable
/// the task waits for readiness without needing a buffer: `held` is only allocated
/// once bytes are there, and an empty one is freed after [`RELEASE_AFTER`] of quiet.
async fn read_some(
    src: &mut ReadHalf<'_>,
    held: &mut BytesMut,
    room: usize,
    hold_deadline: Option<tokio::time::Instant>,
    conn: &Conn<'_>,
) -> Got {
    let idle = conn.config.idle_timeout;
    loop {
        let now = tokio::time::Instant::now();
        if hold_deadline.is_some_and(|d| d <= now) || (room == 0 && !held.is_empty()) {
            return Got::HoldExpired;
        }
        // Idle is judged over both directions: wake up at this direction's share
        // and ask the connection.
        let idle_wait = idle
            .saturating_sub(conn.idle_for())
            .max(Duration::from_millis(1));
        let wait_until =
            hold_deadline.map_or(after(now, idle_wait), |d| d.min(after(now, idle_wait)));
        if held.capacity() > 0 {
            held.reserve(room);
            match src.as_ref().try_read_buf(&mut (&mut *held).limit(room)) {
                Ok(0) => return Got::Eof,
                Ok(n) => return Got::Data(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Got::Failed(e),
            }
        }
        let release = held.is_empty() && held.capacity() > 0;
        let until = if release {
            wait_until.min(now + RELEASE_AFTER)
        } else {
            wait_until
        };
        match tokio::time::timeout_at(until, src.as_ref().readable()).await {
            Ok(Ok(())) => {
                if held.capacity() == 0 {
                    held.reserve(room);
                }
            }
            Ok(Err(e)) => return Got::Failed(e),
            Err(_) if release && until < wait_until => *held = BytesMut::new(),
            Err(_) => {
                if hold_deadline.is_none() && conn.idle_for() >= idle {
                    return Got::Idle;
                }
            }
        }
    }
}

/// Passes `batch` on to `dst` through a plan, and empties it. `Err` = the connection must end that way.
async fn deliver(
    dst: &mut WriteHalf<'_>,
    batch: &mut BytesMut,
    chaos: &mut Chaos,
    conn: &Conn<'_>,
    dir: Direction,
    stats: &mut DirStats,
) -> Result<(), DirEnd> {
    if batch.is_empty() {
        return Ok(());
    }
    let n = batch.len();
    let counters = &conn.config.counters;
    let layouts = chaos.layouts(n);
    let plan = conn.config.plan(n, &layouts, &mut chaos.rng);
    tracing::debug!(conn = conn.id, ?dir, offset = chaos.base, len = n, frames = layouts.len(), %plan, "plan");
    let result = chaos.writer.run(dst, batch, &plan).await;
    chaos.released(n);
    batch.clear();
    stats.batches += 1;
    match result {
        Ok(done) => {
            stats.bytes += done.bytes as u64;
            stats.writes += done.writes as u64;
            stats.paused += done.paused;
            stats.topped_up += u64::from(done.topped_up);
            counters.delivered(dir, done.bytes);
            match done.ending {
                Some(ending) => Err(DirEnd::Fault(ending)),
                None => Ok(()),
            }
        }
        Err(ExecError::Stalled(_)) => Err(DirEnd::Stalled),
        Err(e @ ExecError::UnexpectedStep { .. }) => {
            tracing::error!(conn = conn.id, ?dir, %plan, "plan refused: {e}");
            Err(DirEnd::BadPlan)
        }
        Err(e) => {
            tracing::debug!(conn = conn.id, ?dir, "destination gone: {e}");
            Err(DirEnd::DestGone)
        }
    }
}

/// A proxy running on a background task; for tests and in-process campaigns.
#[derive(Debug)]
pub struct ProxyHandle {
    /// Where clients connect.
    pub addr: SocketAddr,
    counters: Arc<ProxyCounters>,
    task: TaskHandle<ProxyError>,
}

impl ProxyHandle {
    /// Spawns [`run`] on the current tokio runtime.
    pub fn spawn(listener: TcpListener, config: ProxyConfig) -> io::Result<ProxyHandle> {
        let counters = config.counters.clone();
        let task = TaskHandle::spawn(listener, |listener, stop| run(listener, config, stop))?;
        Ok(ProxyHandle {
            addr: task.addr,
            counters,
            task,
        })
    }

    pub fn counters(&self) -> &Arc<ProxyCounters> {
        &self.counters
    }

    /// Whether the proxy task has ended (it should not, before `shutdown`).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Requests a graceful shutdown and waits for the proxy to return.
    pub async fn shutdown(self) -> Result<(), ProxyError> {
        self.task.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direction_parses_and_selects() {
        assert_eq!("up".parse(), Ok(FaultDirection::Up));
        assert_eq!(" Down ".parse(), Ok(FaultDirection::Down));
        assert_eq!("both".parse(), Ok(FaultDirection::Both));
        assert!("sideways".parse::<FaultDirection>().is_err());
        assert!(FaultDirection::Up.applies_to(Direction::Up));
        assert!(!FaultDirection::Up.applies_to(Direction::Down));
        assert!(FaultDirection::Both.applies_to(Direction::Down));
        assert_eq!(FaultDirection::Down.to_string(), "down");
    }

    #[test]
    fn coalesce_holds_frames_for_its_window_and_others_do_not() {
        let hold = Hold::for_faults(&"coalesce:max=3:hold_ms=20".parse().unwrap());
        assert_eq!(hold.frames, 3);
        assert_eq!(hold.gap, Duration::from_millis(20));
        assert_eq!(hold.max_wait, Duration::from_millis(60));
        // The window follows the sender but never passes max_wait.
        let t0 = tokio::time::Instant::now();
        assert_eq!(hold.deadline(t0, t0), t0 + Duration::from_millis(20));
        let late = t0 + Duration::from_millis(50);
        assert_eq!(hold.deadline(t0, late), t0 + Duration::from_millis(60));
        let off = Hold::for_faults(&"coalesce:hold_ms=0".parse().unwrap());
        assert!(off.gap.is_zero());
        assert_eq!(Hold::for_faults(&"split".parse().unwrap()), Hold::default());
    }

    #[test]
    fn hold_releases_whole_frames_only() {
        let framing: Framing = "u32be".parse().unwrap();
        let (stream, _) = framing.encode_all(&[&b"ab"[..], &b"cdef"[..]]).unwrap();
        let mut chaos = Chaos {
            rng: conn_rng(0, 0, Direction::Up),
            writer: PlanWriter::new(ExecOptions::default()),
            scanner: Some(FrameScanner::new(framing)),
            frames: VecDeque::new(),
            base: 0,
        };
        let hold = Hold {
            frames: 2,
            ..Hold::default()
        };
        // First frame and half the second: not enough yet.
        chaos.scan(&stream[..9], 0, Direction::Up);
        assert_eq!(chaos.releasable(9, &hold), 0);
        chaos.scan(&stream[9..], 0, Direction::Up);
        assert_eq!(chaos.releasable(stream.len(), &hold), stream.len());
        let layouts = chaos.layouts(stream.len());
        assert_eq!(layouts.len(), 2);
        assert_eq!(layouts[1].body, 10..14);
        chaos.released(stream.len());
        assert!(chaos.frames.is_empty());
        // A stream that does not parse is relayed as it comes.
        chaos.scan(&[0xff, 0xff, 0xff, 0xff], 0, Direction::Up);
        assert_eq!(chaos.releasable(4, &hold), 4);
    }
}
