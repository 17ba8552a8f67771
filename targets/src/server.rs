//! What every reference server shares: listener setup, the accept loop with its
//! connection limit, per-connection error accounting, counters and graceful shutdown,
//! and [`TaskHandle`], which runs a server (TCP or UDP, or the harness's proxy) on a
//! background task.
//!
//! A server module supplies only a connection handler; [`serve`] does the rest, so
//! every server behaves the same under load and abuse: a bad peer costs only its own
//! connection, and the cause is logged and counted.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Sink, SinkExt, Stream, StreamExt};
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{oneshot, Notify, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

pub use crate::activity::{Activity, Busy, Tracked};
use crate::memory::Memory;
use crate::wire::WireError;

/// Default time in-flight requests get to finish after shutdown is requested: exec's
/// default 5 s timeout fits in it.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// At most one "connection limit reached" warning per this interval (each wait is
/// still counted).
pub const LIMIT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Default idle timeout: no byte moved either way for this long closes a connection.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default frame deadline: a request frame, once started, must arrive whole within
/// this (an 8 MiB frame at 70 KiB/s or faster).
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(120);

/// Options every server takes (README.md, "Reference servers").
#[derive(Debug, Clone)]
pub struct Common {
    /// Connections served at once; further clients wait in the listen queue.
    pub max_conns: usize,
    /// A connection on which no byte moves, either way, for this long is closed
    /// (see [`crate::activity`]).
    pub idle_timeout: Duration,
    /// Once a request frame's first byte has arrived, the rest must arrive within
    /// this: the slow-sender defence (see [`crate::activity`]).
    pub frame_timeout: Duration,
    /// Largest frame payload accepted, if lower than the framing's own `max`.
    pub max_frame: Option<usize>,
    /// TCP keepalive idle time, to notice peers that vanished without a FIN.
    pub keepalive: Option<Duration>,
    /// After shutdown is requested: how long requests in flight get to finish.
    pub shutdown_grace: Duration,
    /// Cancelled when shutdown is requested: connections stop taking new requests
    /// (see [`next_frame`]). Shared by clones; set by [`serve`].
    pub draining: CancellationToken,
    /// Shared with whoever wants to read the server's counters; clone it before `run`.
    pub counters: Arc<Counters>,
    /// What all connections together may buffer (see [`crate::memory`]).
    pub memory: Arc<Memory>,
}

impl Default for Common {
    fn default() -> Self {
        Common {
            max_conns: 1024,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            frame_timeout: DEFAULT_FRAME_TIMEOUT,
            max_frame: None,
            keepalive: None,
            shutdown_grace: SHUTDOWN_GRACE,
            draining: CancellationToken::new(),
            counters: Arc::default(),
            memory: Arc::default(),
        }
    }
}

/// Why a server could not start or keep accepting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error(
        "{server} serves only loopback addresses unless behind auth; refusing to listen on {addr}"
    )]
    NotLoopback {
        server: &'static str,
        addr: SocketAddr,
    },
    #[error("bad configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Why one connection ended early. Recorded in [`Counters`] under [`ConnError::kind`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("no byte moved either way for {0:?}")]
    IdleTimeout(Duration),
    #[error("a request frame took longer than {0:?} to arrive")]
    FrameTimeout(Duration),
    #[error("no handshake reply within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("authentication failed")]
    AuthRejected,
    #[error("protocol violation: {0}")]
    Protocol(String),
}

impl ConnError {
    /// A short, stable label for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ConnError::Wire(WireError::Io(e)) if e.kind() == io::ErrorKind::OutOfMemory => "memory",
            ConnError::Wire(e) => e.kind(),
            ConnError::Io(e) if e.kind() == io::ErrorKind::ConnectionReset => "reset",
            ConnError::Io(e) if e.kind() == io::ErrorKind::BrokenPipe => "broken_pipe",
            ConnError::Io(_) => "io",
            ConnError::IdleTimeout(_) => "idle_timeout",
            ConnError::FrameTimeout(_) => "frame_timeout",
            ConnError::HandshakeTimeout(_) => "handshake_timeout",
            ConnError::AuthRejected => "auth_rejected",
            ConnError::Protocol(_) => "protocol",
        }
    }
}

/// Live counters of one server. Cheap to update; read with [`Counters::snapshot`].
#[derive(Debug, Default)]
pub struct Counters {
    accepted: AtomicU64,
    active: AtomicU64,
    completed: AtomicU64,
    aborted: AtomicU64,
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    at_limit: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    changed: Notify,
}

/// A copy of [`Counters`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CounterSnapshot {
    pub accepted: u64,
    /// Connections being served now.
    pub active: u64,
    /// Connections that ended cleanly (peer closed at a frame boundary).
    pub completed: u64,
    /// Connections that ended with an error (see `errors`).
    pub aborted: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    /// Times the accept loop found every connection slot taken and had to wait
    /// (clients then queue in the kernel's listen backlog).
    pub at_limit: u64,
    /// Aborted connections by [`ConnError::kind`].
    pub errors: BTreeMap<String, u64>,
}

impl Counters {
    pub fn snapshot(&self) -> CounterSnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::SeqCst);
        CounterSnapshot {
            accepted: load(&self.accepted),
            active: load(&self.active),
            completed: load(&self.completed),
            aborted: load(&self.aborted),
            frames_in: load(&self.frames_in),
            frames_out: load(&self.frames_out),
            at_limit: load(&self.at_limit),
            errors: self
                .errors
                .lock()
                .expect("counter lock")
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
        }
    }

    pub fn frame_in(&self) {
        self.bump(&self.frames_in);
    }

    pub fn frame_out(&self) {
        self.bump(&self.frames_out);
    }

    fn bump(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    fn connection_started(&self) {
        self.active.fetch_add(1, Ordering::SeqCst);
        self.bump(&self.accepted);
    }

    /// Records how a connection ended.
    pub fn connection_ended(&self, result: &Result<(), ConnError>) {
        match result {
            Ok(()) => self.completed.fetch_add(1, Ordering::SeqCst),
            Err(e) => {
                *self
                    .errors
                    .lock()
                    .expect("counter lock")
                    .entry(e.kind())
                    .or_default() += 1;
                self.aborted.fetch_add(1, Ordering::SeqCst)
            }
        };
        self.active.fetch_sub(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Waits (at most `deadline`) until `pred` holds; returns the last snapshot either way.
    pub async fn wait_until(
        &self,
        deadline: Duration,
        pred: impl Fn(&CounterSnapshot) -> bool,
    ) -> Result<CounterSnapshot, CounterSnapshot> {
        wait_for(&self.changed, deadline, || self.snapshot(), pred).await
    }
}

/// Waits (at most `deadline`) until `pred` holds for `snapshot()`, looking again each
/// time `changed` is notified; returns the last snapshot either way. Every counters
/// type (servers, proxy, UDP relay) waits through this.
pub async fn wait_for<S>(
    changed: &Notify,
    deadline: Duration,
    snapshot: impl Fn() -> S,
    pred: impl Fn(&S) -> bool,
) -> Result<S, S> {
    let wait = async {
        loop {
            // Registered before the look, so a change in between is not missed.
            let notified = changed.notified();
            let snap = snapshot();
            if pred(&snap) {
                return snap;
            }
            notified.await;
        }
    };
    tokio::time::timeout(deadline, wait)
        .await
        .map_err(|_| snapshot())
}

/// Binds a listener with SO_REUSEADDR (a restart on the same port works at once) and
/// the given listen queue length.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    TcpListener::from_std(socket.into())
}

/// Refuses a listener that is not on a loopback address (for exec and file without auth).
pub fn require_loopback(listener: &TcpListener, server: &'static str) -> Result<(), ServerError> {
    let addr = listener.local_addr()?;
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(ServerError::NotLoopback { server, addr })
    }
}

/// Reads the next frame. `Ok(None)` = the peer closed cleanly at a frame boundary;
/// EOF inside a frame is an error from the codec. Silence is not bounded here (that
/// is [`until_idle`]'s job); once bytes of the frame arrive, the whole frame must
/// arrive within `frame_timeout`.
///
/// Once the server is draining (shutdown requested), a connection waiting for its next
/// request ends as if the peer had closed; a request already arriving is read whole
/// and answered, within the shutdown grace.
pub async fn next_frame<S, T>(
    frames: &mut S,
    activity: &Activity,
    common: &Common,
) -> Result<Option<T>, ConnError>
where
    S: Stream<Item = Result<T, WireError>> + Unpin,
{
    let frame_timeout = common.frame_timeout;
    let seen = activity.bytes_in();
    let next = frames.next();
    tokio::pin!(next);
    // Until a new byte arrives the peer is merely silent (or the frame is already
    // buffered, pipelined); from then on the deadline runs.
    let frame = tokio::select! {
        biased;
        frame = &mut next => frame,
        _ = common.draining.cancelled(), if activity.bytes_in() == seen => return Ok(None),
        _ = activity.read_beyond(seen) => {
            tokio::time::timeout(frame_timeout, &mut next)
                .await
                .map_err(|_| ConnError::FrameTimeout(frame_timeout))?
        }
    };
    Ok(frame.transpose()?)
}

/// Sends one reply frame and flushes it, so a pipelining client is never left waiting.
/// A peer that stops reading is caught by [`until_idle`] (no byte moves).
pub async fn send_frame<S, T>(frames: &mut S, item: T, counters: &Counters) -> Result<(), ConnError>
where
    S: Sink<T, Error = WireError> + Unpin,
{
    frames.send(item).await?;
    counters.frame_out();
    Ok(())
}

/// Runs one connection's protocol, ending it with [`ConnError::IdleTimeout`] once no
/// byte has moved either way for `idle` (see [`crate::activity`]).
pub async fn until_idle(
    activity: &Activity,
    idle: Duration,
    conn: impl Future<Output = Result<(), ConnError>>,
) -> Result<(), ConnError> {
    tokio::select! {
        result = conn => result,
        _ = activity.idle(idle) => Err(ConnError::IdleTimeout(idle)),
    }
}

/// The accept loop shared by every server.
///
/// Waits for a free connection slot before accepting (so excess clients queue in the
/// kernel's backlog; each such wait is counted in `at_limit` and logged, at most once
/// per [`LIMIT_LOG_INTERVAL`]), runs `handler` on each connection in its own task,
/// records how it ended. On `shutdown` it stops accepting (the listener is closed),
/// marks the server draining, so connections between requests close and requests in
/// flight are answered, and after `shutdown_grace` cuts whatever is left.
pub async fn serve<H, Fut>(
    listener: TcpListener,
    common: &Common,
    shutdown: impl Future<Output = ()>,
    handler: H,
) -> Result<(), ServerError>
where
    H: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = Result<(), ConnError>> + Send + 'static,
{
    tokio::pin!(shutdown);
    let slots = Arc::new(Semaphore::new(common.max_conns.max(1)));
    let cancel = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let mut last_limit_log: Option<tokio::time::Instant> = None;
    loop {
        if slots.available_permits() == 0 {
            common.counters.bump(&common.counters.at_limit);
            let now = tokio::time::Instant::now();
            if last_limit_log.is_none_or(|t| now - t >= LIMIT_LOG_INTERVAL) {
                last_limit_log = Some(now);
                tracing::warn!(
                    max_conns = common.max_conns,
                    waits = common.counters.at_limit.load(Ordering::SeqCst),
                    "connection limit reached: new clients wait in the listen backlog \
                     until a connection ends (raise --max-conns, lower --idle-timeout)"
                );
            }
        }
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => permit.expect("semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
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
        if let Err(e) = tune(&stream, common) {
            tracing::debug!(%peer, "socket options not applied: {e}");
        }
        let counters = common.counters.clone();
        counters.connection_started();
        let conn = handler(stream, peer);
        let cancelled = cancel.clone().cancelled_owned();
        tasks.spawn(async move {
            let _permit = permit;
            let result = tokio::select! {
                result = conn => result,
                _ = cancelled => Ok(()),
            };
            if let Err(e) = &result {
                tracing::info!(%peer, kind = e.kind(), "connection aborted: {e}");
            }
            counters.connection_ended(&result);
        });
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    common.draining.cancel();
    let drained = tokio::time::timeout(common.shutdown_grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "shutdown grace of {:?} over: cutting the connections still in flight",
            common.shutdown_grace
        );
        cancel.cancel();
        // Bounded: a cancelled connection ends at its next await (exec's then
        // reaps its child within the child's own grace).
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
    }
    Ok(())
}

fn tune(stream: &TcpStream, common: &Common) -> io::Result<()> {
    stream.set_nodelay(true)?;
    if let Some(idle) = common.keepalive {
        SockRef::from(stream).set_tcp_keepalive(&TcpKeepalive::new().with_time(idle))?;
    }
    Ok(())
}

/// What [`TaskHandle::spawn`] needs of the socket it is given: the address to report,
/// so one handle serves TCP and UDP servers alike.
pub trait LocalAddr {
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

impl LocalAddr for TcpListener {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        TcpListener::local_addr(self)
    }
}

impl LocalAddr for UdpSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        UdpSocket::local_addr(self)
    }
}

/// A server (or the proxy) running on a background task; for tests and in-process
/// campaigns. Dropping it asks the task to stop, so a test that fails or returns early
/// leaves no server behind; [`TaskHandle::shutdown`] also waits for it and reports how
/// it ended.
#[derive(Debug)]
pub struct TaskHandle<E> {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), E>>,
}

/// The handle of a TCP reference server, under the name its callers use.
pub type Handle = TaskHandle<ServerError>;

impl<E> TaskHandle<E> {
    /// Spawns `run(listener, shutdown)` — any server's `run` with its config bound in.
    pub fn spawn<L, R, Fut>(listener: L, run: R) -> io::Result<TaskHandle<E>>
    where
        L: LocalAddr,
        R: FnOnce(L, futures::future::BoxFuture<'static, ()>) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Send + 'static,
    {
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = Box::pin(async move {
            let _ = stopped.await;
        });
        let task = tokio::spawn(run(listener, shutdown));
        Ok(TaskHandle {
            addr,
            stop: Some(stop),
            task,
        })
    }

    /// Whether the task has ended (it should not, before `shutdown`).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Requests a graceful shutdown and waits for the task to return.
    pub async fn shutdown(mut self) -> Result<(), E>
    where
        E: From<io::Error>,
    {
        self.stop();
        (&mut self.task)
            .await
            .map_err(|e| E::from(io::Error::other(e)))?
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl<E> Drop for TaskHandle<E> {
    fn drop(&mut self) {
        self.stop();
    }
}
