//! Driving one connection: write the request stream as its plan says, read the replies
//! concurrently, and record what came back and how fast.
//!
//! The reply side decodes with the same framing. In ping-pong mode the writer waits for
//! reply k before it writes past frame k. When the plan has no close/reset, the writer
//! half-closes once everything is sent (optional) so the server can tell it is done;
//! the reader then keeps reading until EOF (or `grace`) to catch phantom replies.
//! Servers that treat a FIN as "abort what is running" (exec) get [`Fin::AfterReplies`]:
//! the FIN only goes out once every due reply has come.
//!
//! Replies are decoded by a [`ReplyCodec`]: the framing's payloads, or for the exec and
//! file oracles each hjson reply turned into comparable bytes (see [`crate::oracle`]).

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio_util::codec::{Decoder, FramedRead};

use super::conn::Conn;
use super::judge::{End, Seen};
use crate::chaos::peer_queue::PeerQueue;
use crate::chaos::{Ending, Plan, Step};
use bytes::BytesMut;
use chopstick_targets::wire::{
    FrameCodec, FrameLayout, Framing, HjsonCodec, HjsonFrame, WireError,
};

/// When the writer half-closes a connection whose plan does not end it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fin {
    /// Never: the reader stops after the last due reply and `grace`.
    Never,
    /// Right after the last byte is written.
    AfterWrite,
    /// Once every due reply has come (or the reply timeout passed).
    AfterReplies,
}

/// A decoder of the library user's own, its items as bytes (see
/// [`crate::oracle::codec::Codec`]).
pub type BoxDecoder = Box<dyn Decoder<Item = Bytes, Error = WireError> + Send>;

/// Decodes the reply stream into the byte strings `judge` compares.
pub enum ReplyCodec {
    /// The framing's payloads.
    Frames(FrameCodec),
    /// hjson replies, each mapped to comparable bytes.
    Hjson(HjsonCodec, fn(HjsonFrame) -> Bytes),
    /// A custom codec's decoded items.
    Custom(BoxDecoder),
}

impl std::fmt::Debug for ReplyCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplyCodec::Frames(c) => f.debug_tuple("Frames").field(c).finish(),
            ReplyCodec::Hjson(c, _) => f.debug_tuple("Hjson").field(c).finish(),
            ReplyCodec::Custom(_) => f.write_str("Custom"),
        }
    }
}

impl ReplyCodec {
    pub fn frames(framing: &Framing) -> ReplyCodec {
        ReplyCodec::Frames(framing.codec())
    }
}

impl Decoder for ReplyCodec {
    type Item = Bytes;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
        match self {
            ReplyCodec::Frames(c) => c.decode(src),
            ReplyCodec::Hjson(c, map) => Ok(c.decode(src)?.map(*map)),
            ReplyCodec::Custom(c) => c.decode(src),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
        match self {
            ReplyCodec::Frames(c) => c.decode_eof(src),
            ReplyCodec::Hjson(c, map) => Ok(c.decode_eof(src)?.map(*map)),
            ReplyCodec::Custom(c) => c.decode_eof(src),
        }
    }
}

/// How patient the driver is.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Longest wait for the next reply byte before calling it a hang.
    pub reply_timeout: Duration,
    /// After the last due reply: how long to keep listening for extra (phantom) replies.
    pub grace: Duration,
    /// Connect timeout.
    pub connect: Duration,
    /// Least time between two writes. On loopback the kernel merges writes that come
    /// closer together, so without it a plan's cuts would not reach the peer as cuts.
    pub min_pause: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            reply_timeout: Duration::from_secs(3),
            grace: Duration::from_millis(200),
            connect: Duration::from_secs(3),
            min_pause: Duration::from_millis(1),
        }
    }
}

/// What one driven connection produced.
#[derive(Debug, Clone)]
pub struct Driven {
    pub seen: Seen,
    /// Microseconds from a request's last byte written to its reply's arrival.
    pub latencies_us: Vec<u64>,
}

/// How one connection's requests and replies take turns: what the oracle and the case
/// config decide, apart from the bytes.
#[derive(Debug, Clone, Copy)]
pub struct Exchange {
    /// How many replies are due (the frames completed before any cut).
    pub due: usize,
    /// Wait for each reply before sending further frames.
    pub ping_pong: bool,
    /// When to half-close if the plan does not end the connection.
    pub fin: Fin,
    pub timing: Timing,
}

impl Exchange {
    /// `due` replies, pipelined, no FIN.
    pub fn new(due: usize, timing: Timing) -> Exchange {
        Exchange {
            due,
            ping_pong: false,
            fin: Fin::Never,
            timing,
        }
    }
}

/// Drives one connection over `sock` (from [`super::Target::connect`] or a handshake),
/// a socket or a duplex pipe alike.
///
/// `stream`/`layouts` are the encoded requests, written as `plan` says; `replies`
/// decodes what comes back.
pub async fn drive(
    sock: Conn,
    replies: ReplyCodec,
    stream: Bytes,
    layouts: &[FrameLayout],
    plan: &Plan,
    exchange: &Exchange,
) -> Driven {
    let Exchange {
        due: expected,
        ping_pong,
        fin,
        timing,
    } = *exchange;
    let timing = &timing;
    let resets = matches!(plan.ending(), Some((Ending::Reset, _)));
    if resets {
        // SO_LINGER 0: closing the socket at the plan's `reset` sends an RST.
        sock.reset_on_close();
    }
    // Where the kernel tells us what the server has read, the gap between two writes
    // ends as soon as it has read the last piece ([`PeerQueue`]).
    let mut peer = match &sock {
        Conn::Tcp(tcp) => PeerQueue::new(tcp),
        Conn::Duplex(_) => None,
    };
    let (read, mut write) = sock.into_split();
    let (replies_tx, mut replies_rx) = watch::channel(0usize);
    let frame_ends: Vec<usize> = layouts.iter().map(|l| l.end).collect();
    let (sent_tx, sent_rx) = watch::channel(Vec::<Instant>::new());

    let writer_plan = plan.clone();
    let writer = async move {
        let mut offset = 0usize;
        let mut next_frame = 0usize;
        let mut sent_at = Vec::new();
        let mut ended = false;
        let mut last_write: Option<tokio::time::Instant> = None;
        for step in &writer_plan.steps {
            match *step {
                Step::Write(n) => {
                    let mut start = offset;
                    let end = (offset + n).min(stream.len());
                    while start < end {
                        // Ping-pong: do not write past frame k until reply k has come.
                        if ping_pong && next_frame > 0 && start >= frame_ends[next_frame - 1] {
                            let want = next_frame;
                            let ok = tokio::time::timeout(
                                timing.reply_timeout,
                                replies_rx.wait_for(|&r| r >= want),
                            )
                            .await;
                            if !matches!(ok, Ok(Ok(_))) {
                                return (write, true);
                            }
                        }
                        let stop = if ping_pong {
                            frame_ends
                                .get(next_frame)
                                .copied()
                                .unwrap_or(end)
                                .min(end)
                                .max(start + 1)
                        } else {
                            end
                        };
                        // Only when there is something left to wait: a tokio sleep that is
                        // already due still waits for the next timer tick (up to 1 ms).
                        if let Some(due) = last_write.map(|t| t + timing.min_pause) {
                            let now = tokio::time::Instant::now();
                            match peer.as_mut() {
                                Some(q) if due > now => {
                                    q.wait_read(due - now).await;
                                }
                                None if due > now => tokio::time::sleep_until(due).await,
                                _ => {}
                            }
                        }
                        // A server that stops reading must not stall us forever.
                        let written = tokio::time::timeout(
                            timing.reply_timeout,
                            write.write_all(&stream[start..stop]),
                        )
                        .await;
                        if !matches!(written, Ok(Ok(()))) {
                            return (write, true);
                        }
                        last_write = Some(tokio::time::Instant::now());
                        start = stop;
                        while next_frame < frame_ends.len() && frame_ends[next_frame] <= start {
                            sent_at.push(Instant::now());
                            next_frame += 1;
                        }
                        let _ = sent_tx.send(sent_at.clone());
                    }
                    offset = end;
                }
                Step::Pause(0) | Step::Stall(0) => {}
                Step::Pause(us) | Step::Stall(us) => {
                    tokio::time::sleep(Duration::from_micros(us)).await
                }
                Step::Close => {
                    let _ = write.shutdown().await;
                    ended = true;
                    break;
                }
                Step::Reset => {
                    ended = true;
                    break;
                }
                Step::Read(_) => {}
            }
        }
        if !ended && fin == Fin::AfterReplies {
            // Bounded like every other wait; a missing reply is the reader's verdict.
            let _ = tokio::time::timeout(
                timing.reply_timeout,
                replies_rx.wait_for(|&r| r >= expected),
            )
            .await;
        }
        if !ended && fin != Fin::Never {
            let _ = write.shutdown().await;
        }
        (write, false)
    };

    if resets {
        // Everything the plan allows is written, then both halves go: an RST. Replies
        // cannot be read after that, so only liveness is checked for this connection.
        let (write, _) = writer.await;
        drop((write, read));
        return Driven {
            seen: Seen {
                replies: Vec::new(),
                end: End::Reset,
            },
            latencies_us: Vec::new(),
        };
    }

    let reader = async {
        let mut frames = FramedRead::new(read, replies);
        let mut replies = Vec::new();
        let mut latencies = Vec::new();
        let end = loop {
            let wait = if replies.len() >= expected {
                timing.grace
            } else {
                timing.reply_timeout
            };
            match tokio::time::timeout(wait, frames.next()).await {
                Err(_) if replies.len() >= expected => break End::Eof,
                Err(_) => break End::Timeout,
                Ok(None) => break End::Eof,
                Ok(Some(Ok(reply))) => {
                    if let Some(t) = sent_rx.borrow().get(replies.len()) {
                        latencies.push(t.elapsed().as_micros() as u64);
                    }
                    replies.push(reply);
                    let _ = replies_tx.send(replies.len());
                }
                Ok(Some(Err(WireError::Io(e)))) if is_reset(&e) => break End::Reset,
                Ok(Some(Err(e))) => break End::Malformed(e.to_string()),
            }
        };
        (replies, latencies, end)
    };
    let (_, (replies, latencies_us, end)) = tokio::join!(writer, reader);
    Driven {
        seen: Seen { replies, end },
        latencies_us,
    }
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
    )
}
