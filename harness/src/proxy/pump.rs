//! The relay of a direction without faults.
//!
//! Each pass reads until the source has nothing more (or the buffer is full), then
//! writes until the destination takes no more (or the buffer is empty), and only then
//! waits: for the source while the buffer is empty, for the destination while it is
//! not. Every wakeup thus moves everything that is ready in as few syscalls as the
//! buffer allows, which is what bounds a relay on a machine where waking a thread is
//! the expensive part (see BENCHMARKS.md). The buffer starts at
//! [`ProxyConfig::read_buffer`], doubles up to [`ProxyConfig::read_buffer_max`] while
//! reads keep filling it (a bulk transfer), and is freed, back to its first size,
//! after [`RELEASE_AFTER`] without a byte: an idle direction holds no buffer.
//!
//! Endings are those of the faulted relay: EOF is passed on as a FIN once every byte
//! read before it went out; a failed read is passed on as an RST after the same; a
//! failed write is `DestGone`; a destination that takes nothing for `stall_timeout`
//! while bytes wait is `Stalled`; nothing either way for `idle_timeout` is `Idle`.

use std::io;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::time::Instant;

use super::{after, Conn, DirEnd, DirStats, ProxyConfig, RELEASE_AFTER};
use crate::chaos::tcp::drain_unsent;
use crate::chaos::Direction;

/// How the source ended, once it has.
enum SourceEnd {
    Eof,
    Failed(io::Error),
}

pub(super) async fn pump(
    src: &mut ReadHalf<'_>,
    dst: &mut WriteHalf<'_>,
    conn: &Conn<'_>,
    dir: Direction,
    stats: &mut DirStats,
) -> DirEnd {
    let config = conn.config;
    let counters = &config.counters;
    let mut size = ReadSize::new(config);
    // Allocated when the source first has bytes: an idle direction holds no buffer.
    let mut buf = BytesMut::new();
    let mut ended: Option<SourceEnd> = None;
    // The last time the destination took a byte (or had nothing to take).
    let mut wrote_at = Instant::now();
    // The last time a byte was read; an empty buffer is freed RELEASE_AFTER later.
    let mut read_at = Instant::now();
    // Every pass either moves bytes, ends, or waits on a bounded deadline.
    loop {
        let mut moved = false;
        // Nothing waits yet, so the stall clock of whatever is read now starts now, not
        // before a quiet spell (a destination still full from earlier bytes would
        // otherwise be judged stalled at its first WouldBlock).
        if buf.is_empty() {
            wrote_at = Instant::now();
        }
        // Read until the source has nothing more or the buffer is full, then write
        // until the destination takes no more or the buffer is empty: big batches, few
        // syscalls per byte. Bytes waiting for the destination are never moved: more
        // is read behind them only into the room the buffer already has. Every turn of
        // these loops moves bytes or leaves.
        while ended.is_none() && buf.capacity() > 0 {
            let mut room = size.now.saturating_sub(buf.len());
            if buf.is_empty() {
                buf.reserve(room);
            } else {
                room = room.min(buf.capacity() - buf.len());
            }
            if room == 0 {
                break;
            }
            match src.as_ref().try_read_buf(&mut (&mut buf).limit(room)) {
                Ok(0) => ended = Some(SourceEnd::Eof),
                Ok(n) => {
                    conn.touch();
                    conn.record(dir, &buf[buf.len() - n..]);
                    size.filled(n == room);
                    read_at = Instant::now();
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => ended = Some(SourceEnd::Failed(e)),
            }
        }
        while !buf.is_empty() {
            match dst.as_ref().try_write(&buf) {
                Ok(n) => {
                    buf.advance(n);
                    stats.bytes += n as u64;
                    stats.batches += 1;
                    stats.writes += 1;
                    counters.delivered(dir, n);
                    wrote_at = Instant::now();
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(conn = conn.id, ?dir, "destination gone: {e}");
                    return DirEnd::DestGone;
                }
            }
        }
        if buf.is_empty() {
            match ended.take() {
                Some(SourceEnd::Eof) => {
                    let _ = dst.shutdown().await;
                    return DirEnd::Eof;
                }
                Some(SourceEnd::Failed(e)) => {
                    tracing::debug!(conn = conn.id, ?dir, "source failed: {e}");
                    drain_unsent(dst.as_ref(), std::time::Duration::from_secs(1)).await;
                    return DirEnd::SourceReset;
                }
                None => {}
            }
        }
        if moved {
            // try_read/try_write take no part in tokio's cooperative budget: without
            // this a bulk transfer could run for as long as both peers keep up, and
            // hold back the other direction, timers and other tasks on this worker.
            tokio::task::coop::consume_budget().await;
            continue;
        }

        // While the destination is full the source is left alone: its bytes gather
        // in the kernel and the next pass reads them in one go, instead of a wakeup
        // per packet that could not be passed on anyway.
        let want_read = ended.is_none() && buf.is_empty();
        let want_write = !buf.is_empty();
        let now = Instant::now();
        let deadline = if want_write {
            after(wrote_at, config.stall_timeout)
        } else {
            // Idle is judged over both directions: wake at this direction's share
            // and ask the connection.
            let idle = config
                .idle_timeout
                .saturating_sub(conn.idle_for())
                .max(std::time::Duration::from_millis(1));
            let mut at = after(now, idle);
            if buf.capacity() > 0 {
                at = at.min(read_at + RELEASE_AFTER);
            }
            at
        };
        tokio::select! {
            ready = src.as_ref().readable(), if want_read => match ready {
                Ok(()) => {
                    if buf.capacity() == 0 {
                        buf.reserve(size.now);
                    }
                }
                Err(e) => ended = Some(SourceEnd::Failed(e)),
            },
            ready = dst.as_ref().writable(), if want_write => {
                if let Err(e) = ready {
                    tracing::debug!(conn = conn.id, ?dir, "destination gone: {e}");
                    return DirEnd::DestGone;
                }
            },
            () = tokio::time::sleep_until(deadline) => {
                if want_write {
                    if wrote_at.elapsed() >= config.stall_timeout {
                        return DirEnd::Stalled;
                    }
                } else if buf.capacity() > 0 && read_at.elapsed() >= RELEASE_AFTER {
                    buf = BytesMut::new();
                    size.reset();
                } else if conn.idle_for() >= config.idle_timeout {
                    return DirEnd::Idle;
                }
            }
        }
    }
}

/// How much one read asks for: see [`ProxyConfig::read_buffer_max`].
struct ReadSize {
    now: usize,
    first: usize,
    max: usize,
}

impl ReadSize {
    fn new(config: &ProxyConfig) -> ReadSize {
        ReadSize {
            now: config.read_buffer,
            first: config.read_buffer,
            max: config.read_buffer_max.max(config.read_buffer),
        }
    }

    /// After a read: one that filled all the room it was given asks for more next time.
    fn filled(&mut self, full: bool) {
        if full {
            self.now = self.now.saturating_mul(2).min(self.max);
        }
    }

    fn reset(&mut self) {
        self.now = self.first;
    }
}
