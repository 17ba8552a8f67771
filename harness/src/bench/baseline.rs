//! `bench --traffic` / `--requests`: what each real request's reply looks like, learnt
//! from the server itself before any load.
//!
//! A real server's replies cannot be predicted, so they are learnt as `check`'s
//! differential oracle learns them: two unfaulted passes over the requests, each on a
//! fresh connection, one request written and its one reply read at a time. Bytes that
//! differ between the passes (a timestamp, an id) are masked; a reply whose length
//! differs is held to presence only ([`Slot`]). Under load every reply must then match
//! its request's slot, or the run is invalid.
//!
//! What this asks of the server: one reply per request, and replies that do not depend
//! on which requests came before on other connections (the load cycles the requests on
//! every connection at once). A request that gets no reply within [`REPLY_TIMEOUT`], or a
//! close, stops the bench with an error naming it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use chopstick_targets::wire::Framing;
use tokio_util::codec::Decoder;

use super::load::{Pool, REPLY_TIMEOUT};
use super::BenchError;
use crate::campaign::payload::preview;
use crate::oracle::differential::Slot;

/// Connect timeout of a baseline pass.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Passes over the requests: two, so noise shows as a difference.
const PASSES: usize = 2;

/// The pool of real requests: each encoded in `framing`, with the reply slot learnt
/// from two unfaulted passes (`PASSES`) against the server at `addr`.
pub fn learn(addr: SocketAddr, framing: Framing, requests: &[Bytes]) -> Result<Pool, BenchError> {
    let mut frames = Vec::with_capacity(requests.len());
    for r in requests {
        let mut dst = BytesMut::new();
        framing
            .encode(r, &mut dst)
            .map_err(|source| BenchError::Encode {
                size: r.len(),
                source,
            })?;
        frames.push(dst.freeze());
    }
    let mut passes = Vec::with_capacity(PASSES);
    for _ in 0..PASSES {
        passes.push(one_pass(addr, framing, requests, &frames)?);
    }
    let expected = passes[0]
        .iter()
        .zip(&passes[1])
        .map(|(a, b)| Slot::learn(a, b))
        .collect();
    Ok(Pool {
        payload_len: requests.iter().map(Bytes::len).collect(),
        frames,
        expected,
    })
}

/// One request at a time on one fresh connection: the reply to each.
fn one_pass(
    addr: SocketAddr,
    framing: Framing,
    requests: &[Bytes],
    frames: &[Bytes],
) -> Result<Vec<Bytes>, BenchError> {
    let baseline = |i: usize, why: String| BenchError::Baseline {
        request: i,
        preview: preview(&requests[i]),
        why,
    };
    let mut sock = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|e| BenchError::Load(super::LoadError::Connect { addr, source: e }))?;
    let _ = sock.set_nodelay(true);
    let mut codec = framing.codec();
    let mut buf = BytesMut::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut replies = Vec::with_capacity(frames.len());
    for (i, frame) in frames.iter().enumerate() {
        sock.set_write_timeout(Some(REPLY_TIMEOUT))
            .and_then(|()| sock.write_all(frame))
            .map_err(|e| baseline(i, format!("writing it failed: {e}")))?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let reply = loop {
            match codec.decode(&mut buf) {
                Ok(Some(r)) => break r,
                Ok(None) => {}
                Err(e) => return Err(baseline(i, format!("its reply does not decode: {e}"))),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(baseline(i, format!("no reply within {REPLY_TIMEOUT:?}")));
            }
            sock.set_read_timeout(Some(left))
                .map_err(|e| baseline(i, format!("{e}")))?;
            match sock.read(&mut chunk) {
                Ok(0) => {
                    return Err(baseline(
                        i,
                        "the server closed the connection instead of replying".into(),
                    ))
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(baseline(i, format!("no reply within {REPLY_TIMEOUT:?}")))
                }
                Err(e) => return Err(baseline(i, format!("reading its reply failed: {e}"))),
            }
        };
        replies.push(reply);
    }
    Ok(replies)
}
