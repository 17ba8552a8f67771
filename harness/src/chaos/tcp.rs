//! Plans executed over a real `TcpStream`: the writer (and reader) half of the chaos
//! engine that puts faults on the wire, as opposed to `ChaosStream`'s in-process pieces.
//!
//! Writer plans ([`PlanWriter`], [`write_plan`]):
//! - `Write(n)`: the next `n` bytes in one `write` (more syscalls only if the kernel
//!   takes less; the chunk is still handed over back to back, with no pause inside).
//!   NODELAY is set so no chunk waits for Nagle to merge it with the next.
//! - `Pause(us)`: sleep, capped at [`ExecOptions::max_pause`] so no plan hangs a run.
//! - between any two writes at least [`ExecOptions::min_pause`] passes (default 1 ms),
//!   also across plans run by the same [`PlanWriter`]. On loopback a write lands in the
//!   peer's receive queue at once; if the next write follows within a few microseconds
//!   the peer, woken only once, reads both as one piece and the split never happens.
//!   1 ms is enough for a reader that keeps up; a busy reader merges pieces anyway, and
//!   that is TCP, not a bug: set it higher for a test that must see every piece.
//! - `Close`: `shutdown(Write)`, a FIN after what was written; later steps are skipped.
//! - `Reset`: waits (bounded by [`ExecOptions::drain_timeout`]) until the kernel has
//!   sent what was written — an RST throws away unsent data, so "wrote N then reset"
//!   would otherwise deliver fewer than N — then sets SO_LINGER 0 so closing the
//!   socket sends an RST.
//!
//! A plan whose writes cover less than the data is topped up with one last write (a
//! plan never loses bytes unless it ends the connection); writes beyond the data are
//! clipped. Reader plans ([`read_plan`]): `Read(n)` = one read of at most `n` bytes,
//! `Stall(us)` = sleep.

use std::io;
use std::time::{Duration, Instant};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedWriteHalf, WriteHalf};
use tokio::net::TcpStream;

use super::{Ending, Plan, Step};

/// Smallest gap between two writes by default; see the module docs for why.
pub const DEFAULT_MIN_PAUSE: Duration = Duration::from_millis(1);

/// Knobs of the TCP executors. Every wait here is bounded by one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecOptions {
    /// Smallest gap between two writes (within and across plans of one writer).
    pub min_pause: Duration,
    /// Longest single `Pause`/`Stall` step; longer ones are cut to this.
    pub max_pause: Duration,
    /// A single write or read that makes no progress for this long fails.
    pub stall_timeout: Duration,
    /// Longest wait for unsent data to leave before a `Reset`.
    pub drain_timeout: Duration,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            min_pause: DEFAULT_MIN_PAUSE,
            max_pause: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(1),
        }
    }
}

/// What a writer plan delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Bytes handed to the kernel (all of them sent, if the plan reset).
    pub bytes: usize,
    /// Write steps carried out (each one piece on the wire).
    pub writes: usize,
    /// Time spent in `Pause` steps and minimum gaps.
    pub paused: Duration,
    /// How the plan ended the connection, if it did.
    pub ending: Option<Ending>,
    /// Whether the plan covered less than the data and the rest went in one last write.
    pub topped_up: bool,
}

/// What a reader plan received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Received {
    pub bytes: usize,
    /// Reads that returned data.
    pub reads: usize,
    /// Whether the peer closed (a read returned 0 bytes).
    pub eof: bool,
}

/// Why a plan could not be carried out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("no progress for {0:?}")]
    Stalled(Duration),
    #[error("plan step `{step}` has no meaning for a {role}")]
    UnexpectedStep { step: Step, role: &'static str },
}

impl ExecError {
    /// Whether the peer is gone (reset, broken pipe): the connection is over either way.
    pub fn is_peer_gone(&self) -> bool {
        matches!(self, ExecError::Io(e) if matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted
        ))
    }
}

/// A writable TCP socket or half of one: what a writer plan needs for its socket options.
pub trait TcpSink: AsyncWrite + Unpin {
    fn tcp(&self) -> &TcpStream;
}

impl TcpSink for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl TcpSink for WriteHalf<'_> {
    fn tcp(&self) -> &TcpStream {
        self.as_ref()
    }
}

impl TcpSink for OwnedWriteHalf {
    fn tcp(&self) -> &TcpStream {
        self.as_ref()
    }
}

/// Runs writer plans on one connection, remembering when it last wrote so the minimum
/// gap holds across plans (one plan per relayed batch, in the proxy).
#[derive(Debug, Clone)]
pub struct PlanWriter {
    opts: ExecOptions,
    last_write: Option<Instant>,
}

impl PlanWriter {
    pub fn new(opts: ExecOptions) -> PlanWriter {
        PlanWriter {
            opts,
            last_write: None,
        }
    }

    pub fn options(&self) -> &ExecOptions {
        &self.opts
    }

    /// Delivers `data` to `sink` as `plan` says.
    ///
    /// On `Reset` the socket is left open with SO_LINGER 0: the RST goes out when the
    /// caller drops it (a borrowed half cannot close the socket). A plan with reader
    /// steps is refused before anything is written.
    pub async fn run<W: TcpSink>(
        &mut self,
        sink: &mut W,
        data: &[u8],
        plan: &Plan,
    ) -> Result<Delivered, ExecError> {
        if let Some(&step) = plan
            .steps
            .iter()
            .find(|s| matches!(s, Step::Read(_) | Step::Stall(_)))
        {
            return Err(ExecError::UnexpectedStep {
                step,
                role: "writer",
            });
        }
        sink.tcp().set_nodelay(true)?;
        let mut done = Delivered::default();
        for step in &plan.steps {
            match *step {
                Step::Write(n) => {
                    let n = n.min(data.len() - done.bytes);
                    if n > 0 {
                        self.write(sink, &data[done.bytes..done.bytes + n], &mut done)
                            .await?;
                    }
                }
                Step::Pause(us) => {
                    let pause = Duration::from_micros(us).min(self.opts.max_pause);
                    // A zero sleep would still wait for the next timer tick (up to 1 ms).
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                        done.paused += pause;
                    }
                }
                Step::Close => {
                    sink.shutdown().await?;
                    done.ending = Some(Ending::Close);
                    return Ok(done);
                }
                Step::Reset => {
                    drain_unsent(sink.tcp(), self.opts.drain_timeout).await;
                    SockRef::from(sink.tcp()).set_linger(Some(Duration::ZERO))?;
                    done.ending = Some(Ending::Reset);
                    return Ok(done);
                }
                Step::Read(_) | Step::Stall(_) => unreachable!("refused above"),
            }
        }
        if done.bytes < data.len() {
            done.topped_up = true;
            self.write(sink, &data[done.bytes..], &mut done).await?;
        }
        Ok(done)
    }

    async fn write<W: TcpSink>(
        &mut self,
        sink: &mut W,
        chunk: &[u8],
        done: &mut Delivered,
    ) -> Result<(), ExecError> {
        if let Some(last) = self.last_write {
            let gap = self.opts.min_pause.saturating_sub(last.elapsed());
            if !gap.is_zero() {
                tokio::time::sleep(gap).await;
                done.paused += gap;
            }
        }
        let stall = self.opts.stall_timeout;
        tokio::time::timeout(stall, sink.write_all(chunk))
            .await
            .map_err(|_| ExecError::Stalled(stall))??;
        self.last_write = Some(Instant::now());
        done.bytes += chunk.len();
        done.writes += 1;
        Ok(())
    }
}

/// Runs one writer plan over an owned stream and closes it as the plan says.
///
/// Returns what was delivered and the stream, unless the plan reset it (then the
/// stream is dropped here and the RST is on its way).
pub async fn write_plan(
    mut stream: TcpStream,
    data: &[u8],
    plan: &Plan,
    opts: ExecOptions,
) -> Result<(Delivered, Option<TcpStream>), ExecError> {
    let done = PlanWriter::new(opts).run(&mut stream, data, plan).await?;
    let stream = (done.ending != Some(Ending::Reset)).then_some(stream);
    Ok((done, stream))
}

/// Runs a reader plan: appends what it reads to `out`. Stops at EOF or the plan's end.
pub async fn read_plan<R: AsyncRead + Unpin>(
    reader: &mut R,
    plan: &Plan,
    out: &mut Vec<u8>,
    opts: ExecOptions,
) -> Result<Received, ExecError> {
    if let Some(&step) = plan
        .steps
        .iter()
        .find(|s| !matches!(s, Step::Read(_) | Step::Stall(_)))
    {
        return Err(ExecError::UnexpectedStep {
            step,
            role: "reader",
        });
    }
    let mut got = Received::default();
    for step in &plan.steps {
        match *step {
            Step::Read(0) => {}
            Step::Read(n) => {
                let old = out.len();
                // One read of at most n bytes: the buffer is exactly n long.
                out.resize(old + n, 0);
                let read = tokio::time::timeout(opts.stall_timeout, reader.read(&mut out[old..]))
                    .await
                    .map_err(|_| ExecError::Stalled(opts.stall_timeout));
                let n = match read {
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) => {
                        out.truncate(old);
                        return Err(e.into());
                    }
                    Err(e) => {
                        out.truncate(old);
                        return Err(e);
                    }
                };
                out.truncate(old + n);
                if n == 0 {
                    got.eof = true;
                    return Ok(got);
                }
                got.bytes += n;
                got.reads += 1;
            }
            Step::Stall(us) => {
                tokio::time::sleep(Duration::from_micros(us).min(opts.max_pause)).await;
            }
            _ => unreachable!("refused above"),
        }
    }
    Ok(got)
}

/// Waits until the kernel has sent (and the peer acknowledged) everything written to
/// `stream`, or `timeout` passes. Used before an RST, which discards unsent data.
pub async fn drain_unsent(stream: &TcpStream, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        match unsent(stream) {
            Some(0) => return,
            // The OS cannot tell us: a short grace is the best we can do.
            None => return tokio::time::sleep(timeout.min(Duration::from_millis(10))).await,
            Some(_) if Instant::now() >= deadline => return,
            Some(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// Bytes written but not yet acknowledged by the peer (SIOCOUTQ), where the OS says.
#[cfg(target_os = "linux")]
fn unsent(stream: &TcpStream) -> Option<usize> {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (= SIOCOUTQ on sockets) writes one c_int through the pointer,
    // which points at a live local; the fd is owned by `stream` for the whole call.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    // A failing ioctl means a socket past sending (e.g. already reset): nothing to wait for.
    Some(if rc == 0 { n.max(0) as usize } else { 0 })
}

/// Elsewhere there is no portable way to ask.
#[cfg(not(target_os = "linux"))]
fn unsent(_stream: &TcpStream) -> Option<usize> {
    None
}
