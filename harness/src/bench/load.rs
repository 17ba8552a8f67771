//! The load generator: N pipelined connections, at most `depth` requests in flight on
//! each, writing per a [`Profile`] for a warm-up and a measured window.
//!
//! Plain threads and blocking sockets, two per connection: the writer takes one
//! in-flight credit per message, cuts what it may send into the profile's writes and
//! hands each message's send time (its last byte written) to the reader; the reader
//! decodes replies, judges each against the oracle's expected reply and returns the
//! credit. Threads keep the generator's own cost low and easy to see: the main thread
//! reads every thread's CPU time from /proc at the window's edges.
//!
//! Every wait is bounded: credits and replies are waited for in short slices that
//! check the stop flag, a reply or a drain that takes longer than [`REPLY_TIMEOUT`] is
//! a `hang`, and socket writes time out too.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use chopstick_targets::wire::{Framing, WireError};
use hdrhistogram::Histogram;
use tokio_util::codec::Decoder;

use super::cpu;
use super::drain::DrainProbe;
use super::profile::Profile;
use crate::campaign::judge::{judge, End, Failure, FailureClass, Seen};
use crate::oracle::differential::Slot;

/// Longest wait for a reply, a drained piece or a blocked write before calling it a hang.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connect timeout per connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often blocked threads look at the stop flag.
const POLL: Duration = Duration::from_millis(50);
/// Read buffer per connection.
const READ_BUF: usize = 64 * 1024;
/// Paced profiles ask the kernel this many times back to back before sleeping.
const SPIN_POLLS: u32 = 16;
/// Sleep between later drain polls (with the thread's timer slack at [`TIMER_SLACK_NS`]).
const DRAIN_SLEEP: Duration = Duration::from_micros(20);
/// Timer slack of a pacing writer, so its short sleeps stay short.
const TIMER_SLACK_NS: libc::c_ulong = 1_000;
/// Latencies recorded up to this, in nanoseconds (a minute).
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// The messages a bench cycles through: encoded requests and the replies due.
#[derive(Debug)]
pub struct Pool {
    pub frames: Vec<Bytes>,
    pub expected: Vec<Slot>,
    pub payload_len: Vec<usize>,
}

/// One measurement: a profile at a connection count.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    pub framing: Framing,
    pub profile: Profile,
    pub connections: usize,
    pub depth: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// The server's process, when chopstick started it: its CPU time is sampled.
    pub server_pid: Option<u32>,
}

/// What one measurement saw inside its window.
#[derive(Debug)]
pub struct Measured {
    /// Replies judged correct inside the window.
    pub messages: u64,
    /// Request payload bytes of those.
    pub payload_bytes: u64,
    pub window: Duration,
    /// Reply latency in nanoseconds.
    pub latency: Histogram<u64>,
    pub server_cpu_ns: Option<u64>,
    /// The whole generator process (this process, all threads).
    pub gen_cpu_ns: u64,
    /// The busiest generator thread's CPU time as a share of the window (1.0 = a core).
    pub gen_busiest: f64,
    /// The first wrong or missing reply, which invalidates the measurement.
    pub failure: Option<Failure>,
}

/// Why a measurement could not run at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot ask the kernel about the server's socket (paced profiles need NETLINK_SOCK_DIAG): {0}")]
    Probe(std::io::Error),
    #[error("cannot start a load thread: {0}")]
    Thread(std::io::Error),
}

struct Shared {
    stop: AtomicBool,
    failure: Mutex<Option<Failure>>,
    window_start: Instant,
    window_end: Instant,
}

impl Shared {
    fn fail(&self, f: Failure) {
        let mut slot = self.failure.lock().expect("failure lock");
        slot.get_or_insert(f);
        self.stop.store(true, Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn in_window(&self, t: Instant) -> bool {
        t >= self.window_start && t < self.window_end
    }
}

/// Per connection: what the writer has sent, for the reader to know when it is done.
#[derive(Default)]
struct Progress {
    sent: AtomicU64,
    writer_done: AtomicBool,
}

/// What a reader thread hands back.
struct ReaderOut {
    messages: u64,
    payload_bytes: u64,
    latency: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("static histogram bounds")
}

/// Runs one measurement (blocking; call it from a blocking thread).
pub fn measure(spec: &LoadSpec, pool: &Arc<Pool>) -> Result<Measured, LoadError> {
    let mut socks = Vec::with_capacity(spec.connections);
    for _ in 0..spec.connections {
        let s = TcpStream::connect_timeout(&spec.addr, CONNECT_TIMEOUT).map_err(|source| {
            LoadError::Connect {
                addr: spec.addr,
                source,
            }
        })?;
        let conf = |s: &TcpStream| -> std::io::Result<()> {
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(POLL))?;
            s.set_write_timeout(Some(REPLY_TIMEOUT))
        };
        conf(&s).map_err(|source| LoadError::Connect {
            addr: spec.addr,
            source,
        })?;
        socks.push(s);
    }
    let mut probes = Vec::new();
    for s in &socks {
        probes.push(if spec.profile.paced() {
            let local = s.local_addr().map_err(LoadError::Probe)?;
            let mut p = DrainProbe::new(local, spec.addr).map_err(LoadError::Probe)?;
            p.query().map_err(LoadError::Probe)?;
            Some(p)
        } else {
            None
        });
    }

    let start = Instant::now();
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        failure: Mutex::new(None),
        window_start: start + spec.warmup,
        window_end: start + spec.warmup + spec.duration,
    });
    let (tid_tx, tid_rx) = mpsc::channel::<u32>();
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for (conn, (sock, probe)) in socks.into_iter().zip(probes).enumerate() {
        let (credit_tx, credit_rx) = mpsc::sync_channel::<()>(spec.depth);
        for _ in 0..spec.depth {
            credit_tx.send(()).expect("room for every credit");
        }
        let (sent_tx, sent_rx) = mpsc::channel::<(usize, Instant)>();
        let progress = Arc::new(Progress::default());
        let read_sock = sock.try_clone().map_err(LoadError::Thread)?;
        let w = Writer {
            conn,
            sock,
            probe,
            profile: spec.profile,
            depth: spec.depth,
            pool: pool.clone(),
            shared: shared.clone(),
            progress: progress.clone(),
            credits: credit_rx,
            sent: sent_tx,
        };
        let r = Reader {
            conn,
            sock: read_sock,
            codec: spec.framing,
            pool: pool.clone(),
            shared: shared.clone(),
            progress,
            credits: credit_tx,
            sent: sent_rx,
        };
        let tx = tid_tx.clone();
        writers.push(
            thread::Builder::new()
                .name(format!("bench-w{conn}"))
                .spawn(move || {
                    let _ = tx.send(cpu::current_tid());
                    w.run()
                })
                .map_err(LoadError::Thread)?,
        );
        let tx = tid_tx.clone();
        readers.push(
            thread::Builder::new()
                .name(format!("bench-r{conn}"))
                .spawn(move || {
                    let _ = tx.send(cpu::current_tid());
                    r.run()
                })
                .map_err(LoadError::Thread)?,
        );
    }
    drop(tid_tx);
    let tids: Vec<u32> = (0..2 * spec.connections)
        .filter_map(|_| tid_rx.recv_timeout(REPLY_TIMEOUT).ok())
        .collect();

    let pid = cpu::own_pid();
    let sample = || {
        (
            Instant::now(),
            spec.server_pid.and_then(|p| cpu::process_ns(p).ok()),
            cpu::self_ns(),
            tids.iter()
                .map(|&t| cpu::thread_ns(pid, t).unwrap_or(0))
                .collect::<Vec<u64>>(),
        )
    };
    sleep_until(&shared, shared.window_start);
    let before = sample();
    sleep_until(&shared, shared.window_end);
    let after = sample();

    for w in writers {
        let _ = w.join();
    }
    let mut out = ReaderOut {
        messages: 0,
        payload_bytes: 0,
        latency: histogram(),
    };
    for r in readers {
        if let Ok(o) = r.join() {
            out.messages += o.messages;
            out.payload_bytes += o.payload_bytes;
            let _ = out.latency.add(&o.latency);
        }
    }
    let window = after.0.saturating_duration_since(before.0);
    let busiest = before
        .3
        .iter()
        .zip(&after.3)
        .map(|(b, a)| a.saturating_sub(*b))
        .max()
        .unwrap_or(0);
    let failure = shared.failure.lock().expect("failure lock").take();
    Ok(Measured {
        messages: out.messages,
        payload_bytes: out.payload_bytes,
        window,
        latency: out.latency,
        server_cpu_ns: match (before.1, after.1) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b)),
            _ => None,
        },
        gen_cpu_ns: after.2.saturating_sub(before.2),
        gen_busiest: busiest as f64 / window.as_nanos().max(1) as f64,
        failure,
    })
}

/// Sleeps until `t`, or until a failure stops the measurement.
fn sleep_until(shared: &Shared, t: Instant) {
    while !shared.stopped() {
        let now = Instant::now();
        if now >= t {
            return;
        }
        thread::sleep((t - now).min(POLL));
    }
}

struct Writer {
    conn: usize,
    sock: TcpStream,
    probe: Option<DrainProbe>,
    profile: Profile,
    depth: usize,
    pool: Arc<Pool>,
    shared: Arc<Shared>,
    progress: Arc<Progress>,
    credits: Receiver<()>,
    sent: mpsc::Sender<(usize, Instant)>,
}

impl Writer {
    fn run(mut self) {
        if self.probe.is_some() {
            // SAFETY: prctl with PR_SET_TIMERSLACK only changes this thread's timer slack.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, TIMER_SLACK_NS) };
        }
        let mut next = self.conn;
        let mut written = 0u64;
        let mut buf = Vec::new();
        let mut ends: Vec<(usize, usize)> = Vec::new();
        let batch = match self.profile {
            Profile::Whole => 1,
            _ => self.depth,
        };
        'send: while !self.shared.stopped() && Instant::now() < self.shared.window_end {
            match self.credits.recv_timeout(POLL) {
                Ok(()) => {}
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let mut n = 1;
            while n < batch && self.credits.try_recv().is_ok() {
                n += 1;
            }
            buf.clear();
            ends.clear();
            for _ in 0..n {
                let idx = next % self.pool.frames.len();
                buf.extend_from_slice(&self.pool.frames[idx]);
                ends.push((buf.len(), idx));
                next += 1;
            }
            let piece = self.profile.piece().unwrap_or(buf.len()).max(1);
            let (mut off, mut e) = (0, 0);
            while off < buf.len() {
                let end = (off + piece).min(buf.len());
                if let Err(err) = self.sock.write_all(&buf[off..end]) {
                    if !self.shared.stopped() {
                        self.shared.fail(write_failure(self.conn, &err));
                    }
                    break 'send;
                }
                written += (end - off) as u64;
                let now = Instant::now();
                while e < ends.len() && ends[e].0 <= end {
                    let _ = self.sent.send((ends[e].1, now));
                    self.progress.sent.fetch_add(1, Ordering::Release);
                    e += 1;
                }
                if !self.wait_drained(written) {
                    break 'send;
                }
                off = end;
            }
        }
        self.progress.writer_done.store(true, Ordering::Release);
        // A FIN tells the server this client is done (after the replies still due).
        let _ = self.sock.shutdown(Shutdown::Write);
    }

    /// Paced profiles: waits until the server's process has read every byte written.
    fn wait_drained(&mut self, written: u64) -> bool {
        let Some(probe) = self.probe.as_mut() else {
            return true;
        };
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut polls = 0u32;
        loop {
            match probe.query() {
                Ok(side) if side.received >= written && side.unread == 0 => return true,
                Ok(_) => {}
                Err(e) => {
                    self.shared.fail(Failure::new(
                        FailureClass::Lost,
                        None,
                        format!(
                            "connection {}: the server's socket is gone ({e})",
                            self.conn
                        ),
                    ));
                    return false;
                }
            }
            if self.shared.stopped() {
                return false;
            }
            if Instant::now() >= deadline {
                self.shared.fail(Failure::new(
                    FailureClass::Hang,
                    None,
                    format!(
                        "connection {}: the server left bytes unread for {REPLY_TIMEOUT:?}",
                        self.conn
                    ),
                ));
                return false;
            }
            polls += 1;
            if polls < SPIN_POLLS {
                thread::yield_now();
            } else {
                thread::sleep(DRAIN_SLEEP);
            }
        }
    }
}

fn write_failure(conn: usize, err: &std::io::Error) -> Failure {
    let class = if err.kind() == std::io::ErrorKind::WouldBlock
        || err.kind() == std::io::ErrorKind::TimedOut
    {
        FailureClass::Hang
    } else {
        FailureClass::Lost
    };
    Failure::new(
        class,
        None,
        format!("connection {conn}: write failed: {err}"),
    )
}

struct Reader {
    conn: usize,
    sock: TcpStream,
    codec: Framing,
    pool: Arc<Pool>,
    shared: Arc<Shared>,
    progress: Arc<Progress>,
    credits: SyncSender<()>,
    sent: Receiver<(usize, Instant)>,
}

impl Reader {
    fn run(mut self) -> ReaderOut {
        let mut out = ReaderOut {
            messages: 0,
            payload_bytes: 0,
            latency: histogram(),
        };
        let mut codec = self.codec.codec();
        let mut buf = BytesMut::with_capacity(READ_BUF);
        let mut chunk = vec![0u8; READ_BUF];
        let mut replies = 0u64;
        let mut prev: Option<usize> = None;
        let mut last_progress = Instant::now();
        loop {
            loop {
                let reply = match codec.decode(&mut buf) {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => return self.fail_malformed(out, replies, &e),
                };
                let (idx, sent_at) = match self.next_sent() {
                    Some(s) => s,
                    None => {
                        self.shared.fail(Failure::new(
                            FailureClass::Phantom,
                            None,
                            format!(
                                "connection {}: reply #{replies} answers no request",
                                self.conn
                            ),
                        ));
                        return out;
                    }
                };
                let now = Instant::now();
                if !self.pool.expected[idx].matches(&reply) {
                    let f = self.classify(prev, idx, reply, &mut codec, &mut buf, replies);
                    self.shared.fail(f);
                    return out;
                }
                if self.shared.in_window(now) {
                    out.messages += 1;
                    out.payload_bytes += self.pool.payload_len[idx] as u64;
                    let ns = now.saturating_duration_since(sent_at).as_nanos() as u64;
                    let _ = out.latency.record(ns.clamp(1, MAX_LATENCY_NS));
                }
                let _ = self.credits.try_send(());
                prev = Some(idx);
                replies += 1;
                last_progress = now;
            }
            let sent = self.progress.sent.load(Ordering::Acquire);
            if self.progress.writer_done.load(Ordering::Acquire) && replies >= sent {
                return out;
            }
            if self.shared.stopped() && self.progress.writer_done.load(Ordering::Acquire) {
                return out;
            }
            match self.sock.read(&mut chunk) {
                Ok(0) => {
                    let sent = self.progress.sent.load(Ordering::Acquire);
                    if replies < sent {
                        self.shared.fail(Failure::new(
                            FailureClass::Lost,
                            Some(replies as usize),
                            format!(
                                "connection {}: the server closed with {} replies still due",
                                self.conn,
                                sent - replies
                            ),
                        ));
                    }
                    return out;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    let sent = self.progress.sent.load(Ordering::Acquire);
                    if replies < sent && last_progress.elapsed() >= REPLY_TIMEOUT {
                        self.shared.fail(Failure::new(
                            FailureClass::Hang,
                            Some(replies as usize),
                            format!(
                                "connection {}: no reply for {REPLY_TIMEOUT:?} with {} due",
                                self.conn,
                                sent - replies
                            ),
                        ));
                        return out;
                    }
                    if replies >= sent {
                        // Nothing due: waiting is not a hang.
                        last_progress = Instant::now();
                    }
                }
                Err(e) => {
                    self.shared.fail(Failure::new(
                        FailureClass::Lost,
                        Some(replies as usize),
                        format!("connection {}: read failed: {e}", self.conn),
                    ));
                    return out;
                }
            }
        }
    }

    /// The send record of the next reply due; the writer may still be about to hand it
    /// over (a reply can beat the bookkeeping), so wait a little.
    fn next_sent(&self) -> Option<(usize, Instant)> {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            match self.sent.recv_timeout(POLL) {
                Ok(s) => return Some(s),
                Err(RecvTimeoutError::Disconnected) => return None,
                Err(RecvTimeoutError::Timeout) if Instant::now() >= deadline => return None,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    fn fail_malformed(&self, out: ReaderOut, replies: u64, e: &WireError) -> ReaderOut {
        self.shared.fail(Failure::new(
            FailureClass::MalformedReply,
            Some(replies as usize),
            format!(
                "connection {}: reply #{replies} does not decode: {e}",
                self.conn
            ),
        ));
        out
    }

    /// Names what is wrong with a reply as `check` does: [`judge`] over the replies
    /// around it (the one before, this one, and whatever else is already here).
    fn classify(
        &self,
        prev: Option<usize>,
        idx: usize,
        reply: Bytes,
        codec: &mut chopstick_targets::wire::FrameCodec,
        buf: &mut BytesMut,
        replies: u64,
    ) -> Failure {
        let mut expected = Vec::new();
        let mut seen = Vec::new();
        if let Some(p) = prev {
            expected.push(self.pool.expected[p].reply().clone());
            seen.push(self.pool.expected[p].reply().clone());
        }
        expected.push(self.pool.expected[idx].reply().clone());
        seen.push(reply);
        while let Ok((i, _)) = self.sent.try_recv() {
            expected.push(self.pool.expected[i].reply().clone());
        }
        while let Ok(Some(r)) = codec.decode(buf) {
            seen.push(r);
        }
        let seen = Seen {
            replies: seen,
            end: End::Timeout,
        };
        let mut f = judge(&expected, &seen, false).unwrap_or_else(|| {
            Failure::new(
                FailureClass::Corrupted,
                None,
                "reply differs from its request",
            )
        });
        let offset = replies as usize - usize::from(prev.is_some());
        f.message = Some(replies as usize);
        f.detail = format!(
            "connection {} (replies counted from #{offset}): {}",
            self.conn, f.detail
        );
        f
    }
}
