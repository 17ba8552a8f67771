//! chopstick from Rust: a campaign against your own in-process server with your own
//! oracle, catching a planted bug and passing the fix, over real loopback sockets. CI
//! runs it from `ci/lib-user/` (its `check_in_process` program is this file); by hand:
//! `cargo run -p chopstick --example check_in_process` (exit 0 = bug caught, fix passed).
//! `duplex_codec.rs` does the same without a socket and with a codec of its own.
//!
//! The protocol: u32be length-prefixed messages, each answered with its ASCII
//! upper-case. The buggy server takes one read for one message (the "sticky packet"
//! bug); the fixed one decodes frames with a tokio-util codec.

use std::process::ExitCode;

use bytes::Bytes;
use chopstick::oracle::Oracle;
use chopstick::{Check, Target};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

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
async fn buggy(mut sock: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = sock.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let body = buf[..n].get(4..).unwrap_or_default().to_ascii_uppercase();
        sock.write_all(&(body.len() as u32).to_be_bytes()).await?;
        sock.write_all(&body).await?;
    }
}

/// The fix: frames come from a decoder, however the bytes arrive.
async fn fixed(sock: TcpStream) -> std::io::Result<()> {
    let mut framed = Framed::new(sock, LengthDelimitedCodec::new());
    while let Some(frame) = framed.next().await {
        framed
            .send(Bytes::from(frame?.to_ascii_uppercase()))
            .await?;
    }
    Ok(())
}

fn check(target: Target) -> Check {
    Check::new(target)
        .oracle(Shouted)
        .faults("split,coalesce")
        .expect("valid profiles")
        .connections(4)
        .messages(4)
        .max_size(2048)
        .shrink(false)
        .seed(7)
}

#[tokio::main]
async fn main() -> ExitCode {
    let bad = check(Target::serve(buggy)).run().await;
    print!("{}", bad.table());
    let good = check(Target::serve(fixed)).run().await;
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
