//! chopstick from Rust, no socket: a campaign against your own in-process server over
//! duplex pipes, with your own codec as the framing and your own oracle, catching a
//! planted bug and passing the fix. CI runs it from `ci/lib-user/` (a crate outside the
//! workspace; its `src/main.rs` is this file) and as
//! `cargo run -p chopstick --example duplex_codec` (exit 0 = bug caught, fix passed).
//!
//! The protocol: each message is a 2-byte big-endian length and that many bytes (a
//! codec written here, not one of chopstick's framings), answered with its ASCII
//! upper-case. The buggy server takes one read for one message; the fixed one decodes
//! frames with the codec, however the bytes arrive.

use std::process::ExitCode;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use chopstick::oracle::Oracle;
use chopstick::{Check, Codec, Target};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder, Framed};

/// Bytes before each body: its length, u16 big-endian.
const HEADER_BYTES: usize = 2;

/// The user's own codec: `u16be` length, then the body.
#[derive(Debug, Default)]
struct Short;

impl Decoder for Short {
    type Item = BytesMut;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, std::io::Error> {
        let Some(header) = src.get(..HEADER_BYTES) else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes([header[0], header[1]]));
        if src.len() < HEADER_BYTES + len {
            src.reserve(HEADER_BYTES + len - src.len());
            return Ok(None);
        }
        src.advance(HEADER_BYTES);
        Ok(Some(src.split_to(len)))
    }
}

impl Encoder<Bytes> for Short {
    type Error = std::io::Error;

    fn encode(&mut self, body: Bytes, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        let len = u16::try_from(body.len())
            .map_err(|_| std::io::Error::other("a body longer than 65535 bytes"))?;
        dst.put_u16(len);
        dst.extend_from_slice(&body);
        Ok(())
    }
}

/// The user's idea of a right reply: the request, upper-cased.
#[derive(Debug)]
struct Shouted;

impl Oracle for Shouted {
    fn name(&self) -> &str {
        "shouted"
    }

    fn expected(&self, _conn: u64, messages: &[Bytes]) -> Vec<Bytes> {
        messages
            .iter()
            .map(|m| Bytes::from(m.to_ascii_uppercase()))
            .collect()
    }
}

/// The planted bug: whatever one read returns is taken for one whole frame.
async fn buggy<S: AsyncRead + AsyncWrite + Unpin>(mut sock: S) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = sock.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let body = buf[..n]
            .get(HEADER_BYTES..)
            .unwrap_or_default()
            .to_ascii_uppercase();
        sock.write_all(&(body.len() as u16).to_be_bytes()).await?;
        sock.write_all(&body).await?;
    }
}

/// The fix: frames come from the codec, however the bytes arrive.
async fn fixed<S: AsyncRead + AsyncWrite + Unpin>(sock: S) -> std::io::Result<()> {
    let mut framed = Framed::new(sock, Short);
    while let Some(frame) = framed.next().await {
        framed
            .send(Bytes::from(frame?.to_ascii_uppercase()))
            .await?;
    }
    Ok(())
}

fn check(target: Target) -> Check {
    Check::new(target)
        // Each frame's first two bytes are its header: `boundary` cuts between them.
        .codec(Codec::new(|| Short).header_len(HEADER_BYTES))
        .oracle(Shouted)
        .faults("split,boundary,coalesce,disconnect")
        .expect("valid profiles")
        .connections(8)
        .messages(4)
        .max_size(2048)
        .shrink(false)
        .seed(7)
}

#[tokio::main]
async fn main() -> ExitCode {
    let bad = check(Target::duplex(buggy)).run().await;
    print!("{}", bad.table());
    let good = check(Target::duplex(fixed)).run().await;
    print!("{}", good.table());
    if bad.exit_code() == 1 && good.exit_code() == 0 {
        println!("the planted bug was caught and the fixed server passed");
        ExitCode::SUCCESS
    } else {
        println!(
            "unexpected: buggy exit {}, fixed exit {}",
            bad.exit_code(),
            good.exit_code()
        );
        ExitCode::FAILURE
    }
}
