//! The auth server over real loopback sockets, with echo as the inner protocol
//! (exec and file are tested in their own binaries; auth only dispatches to them).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use chopstick_targets::auth::{self, Inner, NONCE_LEN};
use chopstick_targets::echo;
use chopstick_targets::server::{CounterSnapshot, Counters, Handle, ServerError};
use chopstick_targets::wire::Framing;
use common::{
    connect, cut_points, listener, read_frames, read_to_end_or_error, reset, write_bytewise,
    DEADLINE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &[u8] = b"integration test key \x00\xff";

struct Server {
    handle: Handle,
    /// The auth server's own counters: connections and handshake errors.
    auth: Arc<Counters>,
    /// The inner echo's counters: its frames.
    inner: Arc<Counters>,
}

fn start(handshake_timeout: Duration) -> Server {
    let inner = echo::Config::default();
    let inner_counters = inner.common.counters.clone();
    let mut config = auth::Config::new(KEY.to_vec(), Inner::Echo(inner));
    config.handshake_timeout = handshake_timeout;
    let auth_counters = config.common.counters.clone();
    let handle = Handle::spawn(listener(), move |l, stop| auth::run(l, config, stop)).unwrap();
    Server {
        handle,
        auth: auth_counters,
        inner: inner_counters,
    }
}

fn start_default() -> Server {
    start(auth::DEFAULT_HANDSHAKE_TIMEOUT)
}

async fn read_nonce(s: &mut TcpStream) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut nonce))
        .await
        .expect("nonce timed out")
        .expect("read nonce");
    nonce
}

async fn read_verdict(s: &mut TcpStream) -> u8 {
    let mut verdict = [0u8; 1];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut verdict))
        .await
        .expect("verdict timed out")
        .expect("read verdict");
    verdict[0]
}

fn frame(payload: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    Framing::default().encode(payload, &mut buf).unwrap();
    buf
}

async fn echo_roundtrip(s: &mut TcpStream, payload: &[u8]) {
    s.write_all(&frame(payload)).await.unwrap();
    let replies = read_frames(&mut *s, Framing::default().codec(), 1).await;
    assert_eq!(replies[0].as_ref(), payload);
}

/// Closes our side and waits for the server to close its own: a clean end.
async fn finish(mut s: TcpStream) {
    s.shutdown().await.unwrap();
    let (rest, err) = read_to_end_or_error(&mut s).await;
    assert!(
        rest.is_empty() && err.is_none(),
        "unclean end: {rest:?} {err:?}"
    );
}

/// Proves the server still serves: a fresh client authenticates and gets an echo.
async fn healthy(addr: SocketAddr) {
    let mut s = connect(addr).await;
    let accepted = tokio::time::timeout(DEADLINE, auth::client_handshake(&mut s, KEY))
        .await
        .expect("handshake timed out")
        .expect("handshake");
    assert!(accepted, "right key rejected");
    echo_roundtrip(&mut s, b"still serving").await;
    finish(s).await;
}

async fn wait(
    counters: &Counters,
    what: &str,
    pred: impl Fn(&CounterSnapshot) -> bool,
) -> CounterSnapshot {
    counters
        .wait_until(DEADLINE, pred)
        .await
        .unwrap_or_else(|c| panic!("{what}: counters never got there: {c:?}"))
}

fn errors(c: &CounterSnapshot, kind: &str) -> u64 {
    c.errors.get(kind).copied().unwrap_or(0)
}

/// Expects the server to have closed (EOF or reset) without sending anything more.
async fn expect_closed(s: &mut TcpStream) {
    let (rest, _err) = read_to_end_or_error(s).await;
    assert!(
        rest.is_empty(),
        "bytes after the server should have closed: {rest:?}"
    );
}

#[tokio::test]
async fn right_key_is_accepted_and_inner_echo_works() {
    let server = start_default();
    let mut s = connect(server.handle.addr).await;
    let nonce = read_nonce(&mut s).await;
    s.write_all(&auth::digest(KEY, &nonce)).await.unwrap();
    assert_eq!(read_verdict(&mut s).await, auth::ACCEPTED);
    echo_roundtrip(&mut s, b"hello").await;
    echo_roundtrip(&mut s, b"").await;
    finish(s).await;

    let outer = wait(&server.auth, "auth", |c| c.completed == 1 && c.active == 0).await;
    assert_eq!(outer.aborted, 0, "{outer:?}");
    let inner = server.inner.snapshot();
    assert_eq!(
        (inner.frames_in, inner.frames_out),
        (2, 2),
        "inner frames: {inner:?}"
    );
    server.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn digest_and_first_frame_in_one_write_are_both_served() {
    // The server must read exactly 32 digest bytes and leave the rest to the inner echo.
    let server = start_default();
    let mut s = connect(server.handle.addr).await;
    let nonce = read_nonce(&mut s).await;
    let mut request = BytesMut::from(&auth::digest(KEY, &nonce)[..]);
    request.extend_from_slice(&frame(b"pipelined"));
    s.write_all(&request).await.unwrap();
    assert_eq!(read_verdict(&mut s).await, auth::ACCEPTED);
    let replies = read_frames(&mut s, Framing::default().codec(), 1).await;
    assert_eq!(replies[0].as_ref(), b"pipelined");
    finish(s).await;
}

#[tokio::test]
async fn wrong_key_gets_verdict_zero_and_the_server_closes() {
    let server = start_default();
    let mut s = connect(server.handle.addr).await;
    let nonce = read_nonce(&mut s).await;
    s.write_all(&auth::digest(b"not the key", &nonce))
        .await
        .unwrap();
    assert_eq!(read_verdict(&mut s).await, auth::REJECTED);
    expect_closed(&mut s).await;

    let c = wait(&server.auth, "rejection", |c| {
        errors(c, "auth_rejected") == 1
    })
    .await;
    assert_eq!(c.completed, 0, "{c:?}");
    assert_eq!(
        server.inner.snapshot().frames_in,
        0,
        "rejected client reached echo"
    );
    healthy(server.handle.addr).await;
}

#[tokio::test]
async fn digest_written_one_byte_at_a_time_is_accepted() {
    let server = start_default();
    let mut s = connect(server.handle.addr).await;
    let nonce = read_nonce(&mut s).await;
    write_bytewise(&mut s, &auth::digest(KEY, &nonce)).await;
    assert_eq!(read_verdict(&mut s).await, auth::ACCEPTED);
    echo_roundtrip(&mut s, b"after a split digest").await;
    finish(s).await;
}

#[tokio::test]
async fn nonces_of_two_connections_differ() {
    let server = start_default();
    let mut a = connect(server.handle.addr).await;
    let mut b = connect(server.handle.addr).await;
    let (na, nb) = (read_nonce(&mut a).await, read_nonce(&mut b).await);
    assert_ne!(na, nb);
    assert_ne!(
        na, [0u8; NONCE_LEN],
        "all-zero nonce: the generator is not used"
    );
}

#[tokio::test]
async fn replayed_digest_from_another_connection_is_rejected() {
    let server = start_default();
    // Connection A: an eavesdropper records the nonce and the client's valid digest.
    let mut a = connect(server.handle.addr).await;
    let nonce_a = read_nonce(&mut a).await;
    let captured = auth::digest(KEY, &nonce_a);
    a.write_all(&captured).await.unwrap();
    assert_eq!(read_verdict(&mut a).await, auth::ACCEPTED);
    finish(a).await;

    // Connection B: the attacker replays it without knowing the key.
    let mut b = connect(server.handle.addr).await;
    let nonce_b = read_nonce(&mut b).await;
    assert_ne!(nonce_a, nonce_b);
    b.write_all(&captured).await.unwrap();
    assert_eq!(read_verdict(&mut b).await, auth::REJECTED);
    expect_closed(&mut b).await;
    wait(&server.auth, "replay", |c| errors(c, "auth_rejected") == 1).await;
}

#[tokio::test]
async fn silent_client_is_dropped_at_the_handshake_timeout() {
    let server = start(Duration::from_millis(200));
    let mut s = connect(server.handle.addr).await;
    let _ = read_nonce(&mut s).await;
    // Send nothing; the server must give up on its own (bounded by DEADLINE here).
    expect_closed(&mut s).await;
    let c = wait(&server.auth, "timeout", |c| {
        errors(c, "handshake_timeout") == 1
    })
    .await;
    assert_eq!(c.active, 0, "{c:?}");
    healthy(server.handle.addr).await;
}

#[tokio::test]
async fn digest_cut_after_31_bytes_by_fin_or_rst_is_a_clean_error() {
    let server = start_default();
    let addr = server.handle.addr;
    for rst in [false, true] {
        let before = wait(&server.auth, "quiet", |c| c.active == 0).await;
        let mut s = connect(addr).await;
        let nonce = read_nonce(&mut s).await;
        s.write_all(&auth::digest(KEY, &nonce)[..31]).await.unwrap();
        if rst {
            // Let the 31 bytes arrive before the reset.
            tokio::time::sleep(Duration::from_millis(5)).await;
            reset(s);
        } else {
            s.shutdown().await.unwrap();
            // No verdict for an incomplete digest: just the close.
            expect_closed(&mut s).await;
        }
        let how = if rst { "RST" } else { "FIN" };
        let after = wait(&server.auth, how, |c| {
            c.aborted > before.aborted && c.active == 0
        })
        .await;
        if !rst {
            assert_eq!(
                errors(&after, "truncated"),
                errors(&before, "truncated") + 1,
                "{after:?}"
            );
        }
        assert_eq!(after.completed, before.completed, "{how}: {after:?}");
        healthy(addr).await;
    }
    assert!(!server.handle.is_finished());
}

#[tokio::test]
async fn disconnect_mid_handshake_or_mid_inner_frame_leaves_the_server_serving() {
    // common::disconnect_matrix writes a fixed request, but the digest depends on each
    // connection's nonce, so this is the same loop with the nonce read first.
    let server = start_default();
    let addr = server.handle.addr;
    // Layout of digest + one frame: encode after a 32-byte placeholder so the frame's
    // offsets already include the digest.
    let mut template = BytesMut::from(&[0u8; auth::DIGEST_LEN][..]);
    let layout = Framing::default()
        .encode(b"payload cut in flight", &mut template)
        .unwrap();
    let mut cuts = vec![("before-digest", 0), ("mid-digest", auth::DIGEST_LEN / 2)];
    cuts.extend(cut_points(&layout));

    for (region, at) in cuts {
        for rst in [false, true] {
            let before = wait(&server.auth, "quiet", |c| c.active == 0).await;
            let mut s = connect(addr).await;
            let nonce = read_nonce(&mut s).await;
            let mut request = template.clone();
            request[..auth::DIGEST_LEN].copy_from_slice(&auth::digest(KEY, &nonce));
            s.write_all(&request[..at]).await.unwrap();
            if at >= auth::DIGEST_LEN {
                // Take the verdict so no unread byte turns our FIN into an RST.
                assert_eq!(read_verdict(&mut s).await, auth::ACCEPTED);
            }
            // Let the partial request reach the server before the connection goes.
            tokio::time::sleep(Duration::from_millis(5)).await;
            if rst {
                reset(s);
            } else {
                s.shutdown().await.unwrap();
                drop(s);
            }
            let how = if rst { "RST" } else { "FIN" };
            let after = wait(&server.auth, &format!("{how} {region} (byte {at})"), |c| {
                c.aborted > before.aborted && c.active == 0
            })
            .await;
            assert_eq!(
                after.completed, before.completed,
                "{how} {region}: a cut is not a clean end"
            );
            healthy(addr).await;
        }
    }
    assert!(!server.handle.is_finished());
}

#[tokio::test]
async fn inner_length_0xffffffff_closes_the_connection_but_not_the_server() {
    let server = start_default();
    let mut s = connect(server.handle.addr).await;
    let nonce = read_nonce(&mut s).await;
    s.write_all(&auth::digest(KEY, &nonce)).await.unwrap();
    assert_eq!(read_verdict(&mut s).await, auth::ACCEPTED);
    s.write_all(&[0xff; 4]).await.unwrap();
    expect_closed(&mut s).await;
    wait(&server.auth, "too large", |c| errors(c, "too_large") == 1).await;
    healthy(server.handle.addr).await;
    assert!(!server.handle.is_finished());
}

#[tokio::test]
async fn run_refuses_an_empty_key() {
    let config = auth::Config::new(Vec::new(), Inner::Echo(echo::Config::default()));
    let never = std::future::pending::<()>();
    let result = tokio::time::timeout(DEADLINE, auth::run(listener(), config, never))
        .await
        .expect("run with an empty key should return at once");
    assert!(matches!(result, Err(ServerError::Config(_))), "{result:?}");
}

#[test]
fn load_key_drops_exactly_one_trailing_newline_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    for (name, contents, want) in [
        ("lf", &b"secret\n"[..], &b"secret"[..]),
        ("crlf", b"secret\r\n", b"secret"),
        ("two-lf", b"secret\n\n", b"secret\n"),
        ("none", b"secret", b"secret"),
        ("binary", b"\x00\xff\n", b"\x00\xff"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        assert_eq!(auth::load_key(Some(&path)).unwrap(), want, "{name}");
    }
}

#[test]
fn load_key_rejects_an_empty_or_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    for (name, contents) in [
        ("empty", &b""[..]),
        ("only-newline", b"\n"),
        ("only-crlf", b"\r\n"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        let err = auth::load_key(Some(&path)).unwrap_err();
        assert!(matches!(err, auth::KeyError::Empty(_)), "{name}: {err:?}");
    }
    let missing = dir.path().join("absent");
    let err = auth::load_key(Some(&missing)).unwrap_err();
    assert!(matches!(err, auth::KeyError::Read { .. }), "{err:?}");
}

/// The only test that touches CHOPSTICK_KEY, so no other test can race it.
#[test]
fn load_key_uses_the_env_var_only_without_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, b"from-file\n").unwrap();

    std::env::set_var(auth::KEY_ENV, "from-env");
    assert_eq!(auth::load_key(None).unwrap(), b"from-env");
    assert_eq!(
        auth::load_key(Some(&path)).unwrap(),
        b"from-file",
        "the file wins"
    );

    std::env::set_var(auth::KEY_ENV, "");
    let err = auth::load_key(None).unwrap_err();
    assert!(matches!(err, auth::KeyError::Empty(_)), "{err:?}");

    std::env::remove_var(auth::KEY_ENV);
    let err = auth::load_key(None).unwrap_err();
    assert!(matches!(err, auth::KeyError::Missing), "{err:?}");
}

#[tokio::test]
async fn digest_and_inner_requests_written_one_byte_at_a_time() {
    let server = start_default();
    let mut s = connect(server.handle.addr).await;
    let nonce = read_nonce(&mut s).await;
    let mut all = BytesMut::from(&auth::digest(KEY, &nonce)[..]);
    all.extend_from_slice(&frame(b"first"));
    all.extend_from_slice(&frame(b""));
    all.extend_from_slice(&frame(b"third"));
    write_bytewise(&mut s, &all).await;
    assert_eq!(read_verdict(&mut s).await, auth::ACCEPTED);
    let replies = read_frames(&mut s, Framing::default().codec(), 3).await;
    assert_eq!(replies, [&b"first"[..], b"", b"third"]);
    finish(s).await;
}

#[tokio::test]
async fn digest_and_many_pipelined_requests_in_one_write_are_answered_in_order() {
    let server = start_default();
    let mut s = connect(server.handle.addr).await;
    let nonce = read_nonce(&mut s).await;
    let payloads: Vec<Vec<u8>> = (0..50)
        .map(|i: u32| i.to_be_bytes().repeat(i as usize % 5))
        .collect();
    let mut all = BytesMut::from(&auth::digest(KEY, &nonce)[..]);
    for p in &payloads {
        all.extend_from_slice(&frame(p));
    }
    s.write_all(&all).await.unwrap();
    assert_eq!(read_verdict(&mut s).await, auth::ACCEPTED);
    let replies = read_frames(&mut s, Framing::default().codec(), payloads.len()).await;
    assert_eq!(replies, payloads);
    finish(s).await;
    let inner = wait(&server.inner, "inner frames", |c| c.frames_out == 50).await;
    assert_eq!(inner.frames_in, 50);
}

#[tokio::test]
async fn inner_exec_and_file_work_behind_auth() {
    use chopstick_targets::wire::{HjsonCodec, HjsonFrame};
    use tokio_util::codec::Encoder;
    let dir = tempfile::tempdir().unwrap();
    let hjson = |header: serde_json::Value, body: &[u8]| {
        let mut buf = BytesMut::new();
        HjsonCodec::new(1 << 20)
            .encode(HjsonFrame::new(header, body.to_vec()), &mut buf)
            .unwrap();
        buf
    };
    let inners = [
        Inner::Exec(chopstick_targets::exec::Config::default()),
        Inner::File(chopstick_targets::file::Config::new(dir.path())),
    ];
    for inner in inners {
        let is_exec = matches!(inner, Inner::Exec(_));
        let config = auth::Config::new(KEY.to_vec(), inner);
        let handle = Handle::spawn(listener(), move |l, stop| auth::run(l, config, stop)).unwrap();
        let mut s = connect(handle.addr).await;
        let accepted = tokio::time::timeout(DEADLINE, auth::client_handshake(&mut s, KEY))
            .await
            .expect("handshake timed out")
            .expect("handshake");
        assert!(accepted);
        if is_exec {
            s.write_all(&hjson(serde_json::json!({"argv": ["seq", "1", "3"]}), b""))
                .await
                .unwrap();
            let reply = read_frames(&mut s, HjsonCodec::new(1 << 20), 1).await;
            assert_eq!(reply[0].header["exit"], 0);
            assert_eq!(&reply[0].body[..], b"1\n2\n3\n");
        } else {
            use sha2::Digest;
            let sha = hex::encode(sha2::Sha256::digest(b"behind auth"));
            let mut reqs = hjson(
                serde_json::json!({"op": "put", "name": "f", "sha256": sha}),
                b"behind auth",
            );
            reqs.extend_from_slice(&hjson(serde_json::json!({"op": "get", "name": "f"}), b""));
            s.write_all(&reqs).await.unwrap();
            let replies = read_frames(&mut s, HjsonCodec::new(1 << 20), 2).await;
            assert_eq!(replies[0].header["ok"], true, "{:?}", replies[0].header);
            assert_eq!(&replies[1].body[..], b"behind auth");
            assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"behind auth");
        }
        finish(s).await;
        handle.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn inner_file_with_a_missing_root_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let inner = Inner::File(chopstick_targets::file::Config::new(
        dir.path().join("absent"),
    ));
    let config = auth::Config::new(KEY.to_vec(), inner);
    let never = std::future::pending::<()>();
    let result = tokio::time::timeout(DEADLINE, auth::run(listener(), config, never))
        .await
        .expect("run should return at once");
    assert!(matches!(result, Err(ServerError::Config(_))), "{result:?}");
}
