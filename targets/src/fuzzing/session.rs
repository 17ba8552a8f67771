//! `auth_handshake` and `server_session`: reference servers in-process, over
//! `tokio::io::duplex`, against arbitrary client bytes, chunking and disconnects.
//!
//! Every session ends with a barrier: the server task must have finished this
//! connection (returned, not panicked) within [`DEADLINE`] before the body returns, so a
//! failure is pinned on the input that caused it and nothing bleeds into the next one.
//!
//! - auth: the verdict is 1 exactly when the 32 bytes sent equal HMAC-SHA256(key, nonce);
//!   fewer than 32 bytes then EOF is `Truncated` with no verdict; after acceptance the
//!   inner echo answers; after rejection the server closes with `AuthRejected`.
//! - every server: no panic and no hang whatever the client sends; echo (half-closed
//!   connections) answers exactly the frames a one-shot decode of the bytes finds, and
//!   ends cleanly exactly when they end at a frame boundary; afterwards the same server
//!   (same config, counters and file root) serves a well-formed session correctly.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;
use tokio_util::codec::{Decoder, Framed};

use super::{chunk_sizes, Rest};
use crate::auth::{self, Inner, ACCEPTED, DIGEST_LEN, NONCE_LEN, REJECTED};
use crate::server::{Common, ConnError};
use crate::wire::{Framing, HjsonCodec, HjsonFrame, WireError};
use crate::{echo, exec, file};

/// Bound on every session and on each barrier.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// `max_frame` of the fuzzed servers: small, so no input makes them allocate much.
const MAX_FRAME: usize = 64 * 1024;
const KEY_SEED: &[u8] = b"chopstick-fuzz-key";

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = {
        ignore_sigpipe();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    };
}

/// Does what Rust's own `main` does before any Rust binary runs: SIGPIPE is ignored, so
/// a write to a closed pipe is an `EPIPE` error. A fuzz target's `main` is libFuzzer's
/// (C), which leaves the default action, and the exec server writing stdin to a child
/// that already exited would kill the whole fuzzer (found by `server_session`).
fn ignore_sigpipe() {
    // SAFETY: installing SIG_IGN for SIGPIPE has no memory-safety preconditions and is
    // what the Rust runtime itself does at startup.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    RUNTIME.with(|rt| rt.block_on(f))
}

fn common() -> Common {
    Common {
        idle_timeout: DEADLINE,
        max_frame: Some(MAX_FRAME),
        ..Common::default()
    }
}

/// Waits for the server task to finish this connection: the barrier.
async fn barrier(task: JoinHandle<Result<(), ConnError>>, what: &str) -> Result<(), ConnError> {
    match tokio::time::timeout(DEADLINE, task).await {
        Err(_) => panic!("{what}: the server did not finish this connection within {DEADLINE:?}"),
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => panic!("{what}: server task failed: {e}"),
        Ok(Ok(result)) => result,
    }
}

async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no progress within {DEADLINE:?}"))
}

/// Writes `data` in the plan's chunk sizes, yielding between them so the server reads
/// them apart. Stops quietly when the server has gone (its end of the pipe is closed).
async fn write_chunked<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8], plan: &[u8]) {
    let mut at = 0;
    for size in chunk_sizes(plan, data.len()) {
        if w.write_all(&data[at..at + size]).await.is_err() {
            return;
        }
        at += size;
        tokio::task::yield_now().await;
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub struct AuthHandshakeInput {
    /// 0: the right digest; 1: the right digest with byte `flip` xored with `mask`
    /// (0 becomes 1); 2: the tail (after the key) as the answer.
    pub mode: u8,
    pub flip: u8,
    pub mask: u8,
    /// The key is `1 + key_len % 48` bytes taken from the start of the tail.
    pub key_len: u8,
    /// How many answer bytes are sent before EOF (at least 32: all, then an echo frame).
    pub send: u8,
    pub chunks: [u8; 4],
    pub data: Rest,
}

/// The auth server's handshake against arbitrary answers, chunking and EOF.
pub fn auth_handshake(input: AuthHandshakeInput) {
    let tail = &input.data.0;
    let key_len = (1 + usize::from(input.key_len) % 48).min(tail.len());
    let key = if key_len == 0 {
        KEY_SEED.to_vec()
    } else {
        tail[..key_len].to_vec()
    };
    let raw_answer = &tail[key_len..];
    let config = auth::Config {
        common: common(),
        handshake_timeout: DEADLINE,
        ..auth::Config::new(key.clone(), Inner::Echo(echo::Config::default()))
    };
    block_on(async {
        let (mut client, server) = tokio::io::duplex(64);
        let task = tokio::spawn(async move { auth::serve_conn(server, &config).await });
        let mut nonce = [0u8; NONCE_LEN];
        bounded("nonce", client.read_exact(&mut nonce))
            .await
            .expect("the server sends a nonce");
        let right = auth::digest(&key, &nonce);
        let answer = match input.mode % 3 {
            0 => right.to_vec(),
            1 => {
                let mut a = right;
                a[usize::from(input.flip) % DIGEST_LEN] ^= input.mask.max(1);
                a.to_vec()
            }
            _ => raw_answer[..raw_answer.len().min(DIGEST_LEN)].to_vec(),
        };
        let sent = answer.len().min(usize::from(input.send));
        bounded(
            "answer",
            write_chunked(&mut client, &answer[..sent], &input.chunks),
        )
        .await;

        if sent < DIGEST_LEN {
            client.shutdown().await.expect("half-close");
            let mut rest = Vec::new();
            let _ = bounded("reading after EOF", client.read_to_end(&mut rest)).await;
            assert!(
                rest.is_empty(),
                "a verdict {rest:?} for a {sent}-byte answer"
            );
            match barrier(task, "short answer").await {
                Err(ConnError::Wire(WireError::Truncated { received })) if received == sent => {}
                other => panic!("a {sent}-byte answer then EOF ended {other:?}"),
            }
            return;
        }
        let mut verdict = [0u8; 1];
        bounded("verdict", client.read_exact(&mut verdict))
            .await
            .expect("a verdict byte");
        let correct = answer[..] == right[..];
        assert_eq!(
            verdict[0],
            if correct { ACCEPTED } else { REJECTED },
            "verdict for a {} answer",
            if correct { "right" } else { "wrong" }
        );
        if correct {
            let mut frames = Framed::new(client, Framing::default().codec());
            bounded("echo", frames.send(Bytes::from_static(b"ping")))
                .await
                .expect("send to the inner echo");
            let reply = bounded("echo reply", frames.next()).await;
            assert_eq!(
                reply.map(|r| r.ok()),
                Some(Some(Bytes::from_static(b"ping")))
            );
            drop(frames);
            barrier(task, "accepted session")
                .await
                .expect("an accepted session closed at a frame boundary ends cleanly");
        } else {
            let mut rest = Vec::new();
            let _ = bounded("reading after rejection", client.read_to_end(&mut rest)).await;
            assert!(rest.is_empty(), "bytes after a rejection: {rest:?}");
            assert!(matches!(
                barrier(task, "rejected session").await,
                Err(ConnError::AuthRejected)
            ));
        }
    });
}

/// The reference servers a session can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Echo(Framing),
    Exec,
    File,
    Auth,
}

const ECHO_FRAMINGS: [&str; 4] = ["u32be", "u8", "line", "hjson"];

#[derive(Arbitrary, Debug, Clone)]
pub struct ServerSessionInput {
    /// Modulo 4: echo, exec, file, auth (with inner echo).
    pub server: u8,
    /// Echo's framing, modulo 4: u32be, u8, line, hjson.
    pub framing: u8,
    /// The pipe's buffer is `1 + pipe` bytes.
    pub pipe: u8,
    pub chunks: [u8; 8],
    /// The client stops after `disconnect % (len + 1)` bytes (flag bit 2: sends all).
    pub disconnect: u16,
    /// Bit 0: drop the connection instead of half-closing it; bit 1: (auth) answer
    /// with the right digest, else the first 32 bytes are the answer; bit 2: send all.
    pub flags: u8,
    pub data: Rest,
}

/// Per thread: configs of every server, sharing counters and a file root across inputs.
struct Kit {
    exec: exec::Config,
    file: file::Config,
    auth: auth::Config,
}

thread_local! {
    static KIT: Kit = Kit::new();
}

impl Kit {
    fn new() -> Kit {
        let root = std::env::temp_dir().join(format!(
            "chopstick-fuzz-files-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        reset_dir(&root);
        Kit {
            exec: exec::Config {
                common: common(),
                timeout: Duration::from_secs(2),
                output_cap: 64 * 1024,
                ..exec::Config::default()
            },
            file: file::Config {
                common: common(),
                root,
            },
            auth: auth::Config {
                common: common(),
                handshake_timeout: DEADLINE,
                ..auth::Config::new(
                    KEY_SEED.to_vec(),
                    Inner::Echo(echo_config(Framing::default())),
                )
            },
        }
    }
}

fn reset_dir(dir: &PathBuf) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("fuzz file root");
}

fn echo_config(framing: Framing) -> echo::Config {
    echo::Config {
        common: common(),
        framing,
        ..echo::Config::default()
    }
}

fn spawn_server(
    kit: &Kit,
    server: Server,
    stream: DuplexStream,
) -> JoinHandle<Result<(), ConnError>> {
    match server {
        Server::Echo(framing) => {
            let config = echo_config(framing);
            tokio::spawn(async move { echo::serve_conn(stream, &config).await })
        }
        Server::Exec => {
            let config = kit.exec.clone();
            tokio::spawn(async move { exec::serve_conn(stream, &config).await })
        }
        Server::File => {
            let config = kit.file.clone();
            tokio::spawn(async move { file::serve_conn(stream, &config).await })
        }
        Server::Auth => {
            let config = kit.auth.clone();
            tokio::spawn(async move { auth::serve_conn(stream, &config).await })
        }
    }
}

/// An arbitrary client session against one server, then a well-formed one.
pub fn server_session(input: ServerSessionInput) {
    let server = match input.server % 4 {
        0 => {
            let spec = ECHO_FRAMINGS[usize::from(input.framing) % ECHO_FRAMINGS.len()];
            Server::Echo(spec.parse().expect("a known framing"))
        }
        1 => Server::Exec,
        2 => Server::File,
        _ => Server::Auth,
    };
    KIT.with(|kit| {
        if server == Server::File {
            reset_dir(&kit.file.root);
        }
        block_on(async {
            bounded("fuzzed session", fuzzed_session(kit, server, &input)).await;
            bounded("well-formed session", well_formed_session(kit, server)).await;
        })
    });
}

async fn fuzzed_session(kit: &Kit, server: Server, input: &ServerSessionInput) {
    let data = &input.data.0;
    let cut = if input.flags & 4 != 0 {
        data.len()
    } else {
        usize::from(input.disconnect) % (data.len() + 1)
    };
    let sent = &data[..cut];
    let drop_connection = input.flags & 1 != 0;

    let (client, server_end) = tokio::io::duplex(1 + usize::from(input.pipe));
    let task = spawn_server(kit, server, server_end);
    let (mut rd, mut wr) = tokio::io::split(client);
    if server == Server::Auth {
        let mut nonce = [0u8; NONCE_LEN];
        if rd.read_exact(&mut nonce).await.is_ok() && input.flags & 2 != 0 {
            let _ = wr.write_all(&auth::digest(KEY_SEED, &nonce)).await;
        }
    }
    let reader = tokio::spawn(async move {
        let mut replies = Vec::new();
        let _ = rd.read_to_end(&mut replies).await;
        replies
    });
    write_chunked(&mut wr, sent, &input.chunks).await;
    let replies = if drop_connection {
        reader.abort();
        drop(wr);
        None
    } else {
        let _ = wr.shutdown().await;
        let replies = reader.await.expect("the reader task");
        drop(wr);
        Some(replies)
    };
    let result = barrier(task, "fuzzed session").await;

    if let (Server::Echo(framing), Some(replies)) = (server, replies) {
        // The one-shot decode of what was sent says what echo must answer and how it ends.
        let mut codec = framing.with_max(MAX_FRAME).codec();
        let mut buf = BytesMut::from(sent);
        let mut frames = Vec::new();
        let clean = loop {
            match codec.decode_eof(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break true,
                Err(_) => break false,
            }
        };
        let (expected, _) = framing.encode_all(&frames).expect("decoded frames encode");
        assert!(
            replies[..] == expected[..],
            "echo ({framing}) answered {} bytes, expected {} ({} frames)",
            replies.len(),
            expected.len(),
            frames.len()
        );
        assert_eq!(
            result.is_ok(),
            clean,
            "echo ({framing}) ended {result:?} for a stream that {} at a frame boundary",
            if clean { "ends" } else { "does not end" }
        );
    }
}

/// A correct client session against the same server.
async fn well_formed_session(kit: &Kit, server: Server) {
    let (client, server_end) = tokio::io::duplex(4096);
    let task = spawn_server(kit, server, server_end);
    match server {
        Server::Echo(framing) => echo_round_trip(client, framing).await,
        Server::Auth => {
            let mut client = client;
            let accepted = auth::client_handshake(&mut client, KEY_SEED)
                .await
                .expect("handshake i/o");
            assert!(accepted, "the right key is rejected");
            echo_round_trip(client, Framing::default()).await;
        }
        Server::Exec => {
            let mut frames = Framed::new(client, HjsonCodec::new(MAX_FRAME));
            let request = HjsonFrame::new(json!({"argv": ["echo", "ok"]}), Bytes::new());
            frames.send(request).await.expect("send exec request");
            let reply = frames
                .next()
                .await
                .expect("an exec reply")
                .expect("a reply frame");
            assert_eq!(
                reply.header.get("exit"),
                Some(&json!(0)),
                "{:?}",
                reply.header
            );
            assert_eq!(&reply.body[..], b"ok\n");
        }
        Server::File => {
            let mut frames = Framed::new(client, HjsonCodec::new(MAX_FRAME));
            let body = Bytes::from_static(b"well-formed");
            let sha = hex::encode(Sha256::digest(&body));
            let requests = [
                json!({"op": "put", "name": "check/well-formed.txt", "sha256": sha}),
                json!({"op": "get", "name": "check/well-formed.txt"}),
                json!({"op": "delete", "name": "check/well-formed.txt"}),
            ];
            for (i, header) in requests.into_iter().enumerate() {
                let frame_body = if i == 0 { body.clone() } else { Bytes::new() };
                frames
                    .send(HjsonFrame::new(header, frame_body))
                    .await
                    .expect("send file request");
                let reply = frames
                    .next()
                    .await
                    .expect("a file reply")
                    .expect("a reply frame");
                assert_eq!(
                    reply.header.get("ok"),
                    Some(&json!(true)),
                    "{:?}",
                    reply.header
                );
                if i == 1 {
                    assert_eq!(reply.body, body);
                }
            }
        }
    }
    barrier(task, "well-formed session")
        .await
        .expect("a well-formed session ends cleanly");
}

async fn echo_round_trip<S: AsyncRead + AsyncWrite + Unpin>(stream: S, framing: Framing) {
    let payloads = [
        Bytes::new(),
        Bytes::from_static(b"hello"),
        Bytes::from(vec![b'a'; 200]),
    ];
    let mut frames = Framed::new(stream, framing.codec());
    for p in &payloads {
        frames.send(p.clone()).await.expect("send echo frame");
    }
    for p in &payloads {
        let reply = frames
            .next()
            .await
            .expect("an echo reply")
            .expect("a reply frame");
        assert_eq!(&reply, p);
    }
}

pub(crate) fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let auth = |mode: u8, send: u8, chunks: [u8; 4], tail: &[u8]| {
        let mut b = vec![mode, 3, 0x80, 7, send];
        b.extend_from_slice(&chunks);
        b.extend_from_slice(tail);
        b
    };
    let session = |server: u8, framing: u8, flags: u8, disconnect: u16, tail: &[u8]| {
        let mut b = vec![server, framing, 16];
        b.extend_from_slice(&[1, 3, 0, 7, 2, 64, 5, 255]);
        b.extend_from_slice(&disconnect.to_le_bytes());
        b.push(flags);
        b.extend_from_slice(tail);
        b
    };
    let hjson = |header: &str, body: &[u8]| {
        let mut b = (header.len() as u32).to_be_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(body);
        b
    };
    let key = b"k3y-of-8";
    vec![
        ("auth_handshake", "right", auth(0, 32, [1, 5, 0, 31], key)),
        ("auth_handshake", "flipped", auth(1, 32, [32, 0, 0, 0], key)),
        ("auth_handshake", "short", auth(0, 17, [3, 3, 3, 3], key)),
        (
            "auth_handshake",
            "raw",
            auth(2, 40, [8, 8, 8, 8], &[key, &[0x5a; 32][..]].concat()),
        ),
        (
            "server_session",
            "echo-u32be",
            session(0, 0, 4, 0, b"\0\0\0\x05hello\0\0\0\0\0\0\0\x01!"),
        ),
        (
            "server_session",
            "echo-line-cut",
            session(0, 2, 0, 9, b"one\ntwo\nthree\n"),
        ),
        (
            "server_session",
            "echo-hjson-drop",
            session(0, 3, 5, 0, &hjson(r#"{"size":2}"#, b"hi")),
        ),
        (
            "server_session",
            "exec-echo",
            session(1, 0, 4, 0, &hjson(r#"{"argv":["echo","x"],"size":0}"#, b"")),
        ),
        (
            "server_session",
            "exec-cat-cut",
            session(1, 0, 0, 40, &hjson(r#"{"argv":["cat"],"size":3}"#, b"abc")),
        ),
        (
            "server_session",
            "file-list-get",
            session(
                2,
                0,
                4,
                0,
                &[
                    hjson(r#"{"op":"list","size":0}"#, b""),
                    hjson(r#"{"op":"get","name":"../x","size":0}"#, b""),
                ]
                .concat(),
            ),
        ),
        (
            "server_session",
            "file-put-empty",
            session(
                2,
                0,
                4,
                0,
                &hjson(
                    r#"{"op":"put","name":"e","size":0,"sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}"#,
                    b"",
                ),
            ),
        ),
        (
            "server_session",
            "auth-then-echo",
            session(3, 0, 6, 0, b"\0\0\0\x02hi"),
        ),
        (
            "server_session",
            "auth-garbage",
            session(3, 0, 0, 33, &[7; 40]),
        ),
    ]
}
