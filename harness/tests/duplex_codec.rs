//! The library's in-process targets without sockets: `Target::duplex` hands a handler
//! one end of a fresh pipe per connection, and `Check::codec` makes any tokio-util
//! `Decoder + Encoder` the framing. For each, a handler with the one-read-is-one-message
//! bug is caught and its fix passes every default fault profile (no false alarm), and
//! what a pipe cannot carry over into a reproducer file is refused with a typed error.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use chopstick::campaign::{FailureClass, InProcess, Target as Live, TargetError, TargetSpec};
use chopstick::oracle::Oracle;
use chopstick::report::Report;
use chopstick::{Check, Codec, Target};
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{
    Decoder, Encoder, Framed, LengthDelimitedCodec, LinesCodec, LinesCodecError,
};

/// Upper bound for one campaign; nothing may hang CI.
const DEADLINE: Duration = Duration::from_secs(120);
const SEED: u64 = 23;
/// Longest line the line servers and the line codec take.
const MAX_LINE: usize = 4096;

/// Replies are the requests upper-cased.
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

/// The planted bug, u32be: whatever one read returns is one whole frame.
async fn one_read_frames<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let body = buf[..n].get(4..).unwrap_or_default().to_ascii_uppercase();
        s.write_all(&(body.len() as u32).to_be_bytes()).await?;
        s.write_all(&body).await?;
    }
}

/// The fix: frames from a decoder.
async fn framed_frames<S: AsyncRead + AsyncWrite + Unpin>(s: S) -> std::io::Result<()> {
    let mut framed = Framed::new(s, LengthDelimitedCodec::new());
    while let Some(frame) = framed.next().await {
        framed
            .send(Bytes::from(frame?.to_ascii_uppercase()))
            .await?;
    }
    Ok(())
}

/// The planted bug, lines: each read is split at newlines, and a line cut across two
/// reads comes out as two.
async fn one_read_lines<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        for line in buf[..n].split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            s.write_all(&line.to_ascii_uppercase()).await?;
            s.write_all(b"\n").await?;
        }
    }
}

/// `LinesCodec`, except that an unterminated last line is an error, not a line: a
/// request cut before its newline must not be answered.
struct StrictLines(LinesCodec);

impl Decoder for StrictLines {
    type Item = String;
    type Error = LinesCodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<String>, LinesCodecError> {
        self.0.decode(src)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<String>, LinesCodecError> {
        match self.0.decode(src)? {
            Some(line) => Ok(Some(line)),
            None if src.is_empty() => Ok(None),
            None => Err(std::io::Error::other("a line cut before its newline").into()),
        }
    }
}

impl Encoder<String> for StrictLines {
    type Error = LinesCodecError;

    fn encode(&mut self, line: String, dst: &mut BytesMut) -> Result<(), LinesCodecError> {
        self.0.encode(line, dst)
    }
}

/// The fix: lines from a line decoder.
async fn framed_lines<S: AsyncRead + AsyncWrite + Unpin>(s: S) -> std::io::Result<()> {
    let codec = StrictLines(LinesCodec::new_with_max_length(MAX_LINE));
    let mut framed = Framed::new(s, codec);
    while let Some(line) = framed.next().await {
        let line = line.map_err(std::io::Error::other)?;
        framed
            .send(line.to_ascii_uppercase())
            .await
            .map_err(std::io::Error::other)?;
    }
    Ok(())
}

/// A line codec whose frames are the line, then its newline (the trailer).
fn lines() -> Codec {
    Codec::text(|| LinesCodec::new_with_max_length(MAX_LINE))
        .layout(|frame| 0..frame.len().saturating_sub(1))
}

fn check(target: Target, faults: &str) -> Check {
    Check::new(target)
        .oracle(Shouted)
        .faults(faults)
        .expect("valid profiles")
        .connections(6)
        .messages(5)
        .max_size(512)
        .shrink(false)
        .seed(SEED)
}

async fn run(check: Check) -> Report {
    tokio::time::timeout(DEADLINE, check.run())
        .await
        .expect("the campaign ends within its deadline")
}

fn classes(report: &Report) -> Vec<FailureClass> {
    report.failures.iter().map(|f| f.class).collect()
}

#[tokio::test]
async fn a_one_read_server_on_a_duplex_is_caught_and_its_fix_passes_every_fault() {
    println!("seed {SEED}");
    let bad = run(check(Target::duplex(one_read_frames), "split,coalesce")).await;
    assert_eq!(bad.exit_code(), 1, "{}", bad.table());
    assert!(bad.unusable.is_empty(), "{:?}", bad.unusable);
    assert_eq!(bad.rows[0].target, "in-process duplex");
    assert!(!classes(&bad).is_empty());
    let good = run(check(
        Target::duplex(framed_frames),
        "split,boundary,coalesce,disconnect,mixed",
    ))
    .await;
    assert_eq!(good.exit_code(), 0, "{}", good.table());
    assert_eq!(good.rows.len(), 5);
    assert!(good
        .rows
        .iter()
        .all(|r| r.connections == 6 && r.messages > 0));
}

#[tokio::test]
async fn a_custom_line_codec_frames_requests_and_replies_and_catches_a_line_per_read_server() {
    println!("seed {SEED}");
    let bad = run(check(Target::duplex(one_read_lines), "split,boundary").codec(lines())).await;
    assert_eq!(bad.exit_code(), 1, "{}", bad.table());
    let good = run(check(
        Target::duplex(framed_lines),
        "split,boundary,coalesce,disconnect",
    )
    .codec(lines()))
    .await;
    assert_eq!(good.exit_code(), 0, "{}", good.table());
    // The same codec and handler over a real loopback socket agree.
    let tcp = run(check(Target::serve(framed_lines), "split,coalesce").codec(lines())).await;
    assert_eq!(tcp.exit_code(), 0, "{}", tcp.table());
}

#[tokio::test]
async fn a_reply_the_custom_codec_cannot_decode_is_a_malformed_reply() {
    println!("seed {SEED}");
    // Replies a line longer than the client's codec takes.
    let too_long = |mut s: tokio::io::DuplexStream| async move {
        let mut buf = [0u8; 1024];
        while s.read(&mut buf).await? > 0 {
            s.write_all(&[b'A'; MAX_LINE + 10]).await?;
            s.write_all(b"\n").await?;
        }
        Ok(())
    };
    let report = run(check(Target::duplex(too_long), "split").codec(lines())).await;
    assert_eq!(report.exit_code(), 1, "{}", report.table());
    let first = &report.failures[0];
    assert_eq!(
        first.class,
        FailureClass::MalformedReply,
        "{}",
        first.detail
    );
    assert!(first.detail.contains("codec"), "{}", first.detail);
}

#[tokio::test]
async fn a_duplex_reproducer_names_its_target_and_a_file_cannot_start_it() {
    println!("seed {SEED}");
    let dir = tempfile::tempdir().unwrap();
    let report = run(check(Target::duplex(one_read_frames), "coalesce")
        .shrink(true)
        .artifacts(dir.path()))
    .await;
    assert_eq!(report.exit_code(), 1, "{}", report.table());
    let path = report.findings[0].reproducer.clone().expect("a reproducer");
    let text = std::fs::read_to_string(&path).unwrap();
    let file: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        file["target"],
        serde_json::json!({"in_process": "in-process duplex"})
    );
    let spec: TargetSpec = serde_json::from_value(file["target"].clone()).unwrap();
    assert!(matches!(
        Live::start(&spec).await,
        Err(TargetError::NotInProcess(name)) if name == "in-process duplex"
    ));
    // A spec with a handler starts, and its name is its report name.
    let live = InProcess::new("mine", Arc::new(|s| framed_frames(s).boxed()));
    let spec = TargetSpec::InProcess(live);
    assert_eq!(spec.display_name(), "mine");
    assert!(Live::start(&spec).await.is_ok());
}
