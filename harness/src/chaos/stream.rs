//! [`ChaosStream`]: runs plans in-process by limiting each read and write of a wrapped
//! `AsyncRead + AsyncWrite`.
//!
//! Like the partial-io crate, but driven by [`Plan`]s, so the same frame-aware, seeded
//! plan that a TCP executor or the proxy would play over a socket replays here exactly
//! and without real time passing:
//!
//! - `Write(n)` / `Read(n)`: the next operations together move at most `n` bytes; a step
//!   is only left once all `n` bytes moved, so a planned cut is never crossed even when
//!   the caller's buffer is smaller than the step.
//! - `Pause` / `Stall`: the operation returns `Pending` once and wakes its own task at
//!   once: the peer gets a chance to run, and no timer is involved.
//! - `Close`: writes fail with `BrokenPipe` after the inner stream is shut down (the
//!   peer sees EOF); reads return EOF.
//! - `Reset`: writes and reads fail with `ConnectionReset`. An in-memory peer cannot see
//!   an RST, so the writer side also shuts the inner stream down (the peer sees EOF).
//!
//! The writer and reader plans are independent; either kind of step works in either
//! plan (`Write` limits a read like `Read` does), so a fault's writer plan can drive a
//! reader directly. Once a plan is exhausted, operations pass straight through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Ending, Plan, Step};

/// What the plan allows for the next operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// The plan is exhausted.
    Pass,
    /// At most this many bytes (never 0).
    Limit(usize),
    /// Return `Pending` once.
    Yield,
    End(Ending),
}

/// A position in one plan.
#[derive(Debug, Clone, Default)]
struct Cursor {
    steps: Vec<Step>,
    pos: usize,
    /// Bytes still to move in the current `Write`/`Read` step, once entered.
    left: Option<usize>,
}

impl Cursor {
    fn new(plan: Plan) -> Cursor {
        Cursor {
            steps: plan.steps,
            pos: 0,
            left: None,
        }
    }

    fn gate(&mut self) -> Gate {
        // Each iteration either returns or moves past one step: bounded by the plan's length.
        while let Some(&step) = self.steps.get(self.pos) {
            match step {
                Step::Write(n) | Step::Read(n) => {
                    let left = *self.left.get_or_insert(n);
                    if left > 0 {
                        return Gate::Limit(left);
                    }
                    self.advance();
                }
                Step::Pause(_) | Step::Stall(_) => {
                    self.advance();
                    return Gate::Yield;
                }
                // An ending is sticky: every later operation sees it too.
                Step::Close => return Gate::End(Ending::Close),
                Step::Reset => return Gate::End(Ending::Reset),
            }
        }
        Gate::Pass
    }

    fn advance(&mut self) {
        self.pos += 1;
        self.left = None;
    }

    fn consumed(&mut self, n: usize) {
        if let Some(left) = self.left.as_mut() {
            *left = left.saturating_sub(n);
            if *left == 0 {
                self.advance();
            }
        }
    }
}

/// Wraps a stream and plays a writer plan on its writes and a reader plan on its reads.
///
/// The inner stream must be `Unpin` (sockets, `tokio::io::duplex` halves and `&[u8]`
/// are); box it otherwise.
#[derive(Debug)]
pub struct ChaosStream<S> {
    inner: S,
    writer: Cursor,
    reader: Cursor,
    /// Set once the writer plan's ending has been reached.
    write_end: Option<Ending>,
    /// Whether the inner stream's shutdown has completed after a writer ending.
    shut: bool,
}

impl<S> ChaosStream<S> {
    /// No plans: everything passes through.
    pub fn new(inner: S) -> ChaosStream<S> {
        ChaosStream::with_plans(inner, Plan::default(), Plan::default())
    }

    /// Plays `writer` on writes and `reader` on reads.
    pub fn with_plans(inner: S, writer: Plan, reader: Plan) -> ChaosStream<S> {
        ChaosStream {
            inner,
            writer: Cursor::new(writer),
            reader: Cursor::new(reader),
            write_end: None,
            shut: false,
        }
    }

    /// Plays `plan` on writes; reads pass through.
    pub fn writer(inner: S, plan: Plan) -> ChaosStream<S> {
        ChaosStream::with_plans(inner, plan, Plan::default())
    }

    /// Plays `plan` on reads; writes pass through.
    pub fn reader(inner: S, plan: Plan) -> ChaosStream<S> {
        ChaosStream::with_plans(inner, Plan::default(), plan)
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    pub fn into_inner(self) -> S {
        self.inner
    }

    /// How the writer plan ended the stream, once it has.
    pub fn write_ending(&self) -> Option<Ending> {
        self.write_end
    }
}

fn ending_error(how: Ending) -> io::Error {
    match how {
        Ending::Close => io::Error::new(io::ErrorKind::BrokenPipe, "chaos plan closed the stream"),
        Ending::Reset => io::Error::new(
            io::ErrorKind::ConnectionReset,
            "chaos plan reset the stream",
        ),
    }
}

impl<S: AsyncWrite + Unpin> ChaosStream<S> {
    /// Shuts the inner stream down once after a writer ending, then reports the ending.
    fn poll_ended(&mut self, cx: &mut Context<'_>, how: Ending) -> Poll<io::Result<()>> {
        self.write_end = Some(how);
        if !self.shut {
            let res = std::task::ready!(Pin::new(&mut self.inner).poll_shutdown(cx));
            self.shut = true;
            // A reset discards whatever the inner stream thinks of its shutdown.
            if how == Ending::Close {
                res?;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ChaosStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(how) = this.write_end {
            // Finish a shutdown that returned Pending earlier before failing again.
            std::task::ready!(this.poll_ended(cx, how))?;
            return Poll::Ready(Err(ending_error(how)));
        }
        if buf.is_empty() {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        match this.writer.gate() {
            Gate::Pass => Pin::new(&mut this.inner).poll_write(cx, buf),
            Gate::Limit(n) => {
                let res = std::task::ready!(
                    Pin::new(&mut this.inner).poll_write(cx, &buf[..n.min(buf.len())])
                );
                if let Ok(k) = res {
                    this.writer.consumed(k);
                }
                Poll::Ready(res)
            }
            Gate::Yield => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Gate::End(how) => {
                std::task::ready!(this.poll_ended(cx, how))?;
                Poll::Ready(Err(ending_error(how)))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.write_end {
            Some(Ending::Reset) => Poll::Ready(Err(ending_error(Ending::Reset))),
            Some(Ending::Close) => Poll::Ready(Ok(())),
            None => Pin::new(&mut this.inner).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.write_end {
            Some(Ending::Reset) => Poll::Ready(Err(ending_error(Ending::Reset))),
            Some(Ending::Close) => this.poll_ended(cx, Ending::Close),
            None => Pin::new(&mut this.inner).poll_shutdown(cx),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ChaosStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        match this.reader.gate() {
            Gate::Pass => Pin::new(&mut this.inner).poll_read(cx, buf),
            Gate::Limit(n) => {
                // Read into a window of at most `n` bytes of the caller's buffer, so the
                // inner stream cannot hand over more than the step allows.
                let window = buf.initialize_unfilled_to(n.min(buf.remaining()));
                let mut sub = ReadBuf::new(window);
                std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut sub))?;
                let k = sub.filled().len();
                buf.advance(k);
                this.reader.consumed(k);
                Poll::Ready(Ok(()))
            }
            Gate::Yield => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Gate::End(Ending::Close) => Poll::Ready(Ok(())),
            Gate::End(Ending::Reset) => Poll::Ready(Err(ending_error(Ending::Reset))),
        }
    }
}

#[cfg(test)]
mod tests;
