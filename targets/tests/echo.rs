//! The echo server over real loopback sockets: happy path, splitting, coalescing,
//! disconnects at every region, hostile lengths, limits and restart.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use chopstick_targets::echo::{self, Transform};
use chopstick_targets::server::{self, Counters, Handle};
use chopstick_targets::wire::Framing;
use common::*;
use tokio::io::AsyncWriteExt;
use tokio_util::codec::Encoder;

struct Echo {
    handle: Handle,
    counters: Arc<Counters>,
    framing: Framing,
}

fn start_with(config: echo::Config) -> Echo {
    let counters = config.common.counters.clone();
    let framing = config.framing;
    let handle = Handle::spawn(listener(), move |l, stop| echo::run(l, config, stop)).unwrap();
    Echo {
        handle,
        counters,
        framing,
    }
}

fn start(framing: &str) -> Echo {
    start_with(echo::Config {
        framing: framing.parse().unwrap(),
        ..Default::default()
    })
}

/// Sends `payloads` coalesced into one write on a fresh connection; checks the replies.
async fn round_trip(addr: SocketAddr, framing: &Framing, payloads: &[&[u8]]) {
    let (stream, _) = framing.encode_all(payloads).unwrap();
    let mut s = connect(addr).await;
    s.write_all(&stream).await.unwrap();
    let replies = read_frames(&mut s, framing.codec(), payloads.len()).await;
    let expected: Vec<Bytes> = payloads.iter().map(|p| Bytes::copy_from_slice(p)).collect();
    assert_eq!(replies, expected);
}

#[tokio::test]
async fn happy_path_ping_pong_in_every_framing() {
    for spec in [
        "u32be",
        "u8",
        "u16le",
        "i32le",
        "u64be",
        "u16be,offset=2,adjust=-2",
        "line",
        "hjson",
    ] {
        let server = start(spec);
        let mut s = connect(server.handle.addr).await;
        let mut codec = server.framing.codec();
        for payload in [&b"hello"[..], b"", b"x", &[b'z'; 200]] {
            let mut buf = BytesMut::new();
            codec.encode(payload, &mut buf).unwrap();
            s.write_all(&buf).await.unwrap();
            let reply = read_frames(&mut s, server.framing.codec(), 1).await;
            assert_eq!(reply[0], payload, "{spec}");
        }
        drop(s);
        let c = server
            .counters
            .wait_until(DEADLINE, |c| c.active == 0)
            .await
            .unwrap();
        assert_eq!(
            (c.completed, c.aborted, c.frames_in, c.frames_out),
            (1, 0, 4, 4),
            "{spec}"
        );
        server.handle.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn request_written_one_byte_at_a_time() {
    let server = start("u32be");
    let (stream, _) = server
        .framing
        .encode_all(&[&b"split me"[..], b"", b"again"])
        .unwrap();
    let mut s = connect(server.handle.addr).await;
    write_bytewise(&mut s, &stream).await;
    let replies = read_frames(&mut s, server.framing.codec(), 3).await;
    assert_eq!(
        replies,
        vec![Bytes::from("split me"), Bytes::new(), Bytes::from("again")]
    );
}

#[tokio::test]
async fn coalesced_requests_are_answered_in_order() {
    let server = start("u32be");
    let payloads: Vec<Vec<u8>> = (0..200usize)
        .map(|i| i.to_string().repeat(i % 7).into_bytes())
        .collect();
    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    round_trip(server.handle.addr, &server.framing, &refs).await;
    let c = server
        .counters
        .wait_until(DEADLINE, |c| c.active == 0)
        .await
        .unwrap();
    assert_eq!((c.frames_in, c.frames_out), (200, 200));
}

#[tokio::test]
async fn upper_transform_changes_ascii_letters_only() {
    let server = start_with(echo::Config {
        transform: Transform::Upper,
        ..Default::default()
    });
    let mut s = connect(server.handle.addr).await;
    let (stream, _) = server.framing.encode_all(&["héllo, wörld 123 ÿ"]).unwrap();
    s.write_all(&stream).await.unwrap();
    let reply = read_frames(&mut s, server.framing.codec(), 1).await;
    assert_eq!(reply[0], "HéLLO, WöRLD 123 ÿ".as_bytes());
}

#[tokio::test]
async fn disconnect_inside_a_frame_is_counted_and_next_client_served() {
    for spec in ["u32be", "hjson", "i32le"] {
        let server = start(spec);
        let (request, layouts) = server.framing.encode_all(&[&b"a body to cut"[..]]).unwrap();
        let addr = server.handle.addr;
        let framing = server.framing;
        disconnect_matrix(
            addr,
            &server.counters,
            &request,
            &layouts[0],
            || async move {
                round_trip(addr, &framing, &[b"still here", b""]).await;
            },
        )
        .await;
        let c = server.counters.snapshot();
        assert_eq!(c.aborted, 6, "{spec}: {c:?}");
        // FIN cuts are a truncated frame; RST cuts a reset (or a truncation seen first).
        assert!(
            c.errors.get("truncated").copied().unwrap_or(0) >= 3,
            "{spec}: {c:?}"
        );
    }
}

#[tokio::test]
async fn huge_or_negative_length_closes_only_that_connection() {
    for (spec, header, kind) in [
        ("u32be", 0xFFFF_FFFFu32.to_be_bytes(), "too_large"),
        ("i32le", (-1i32).to_le_bytes(), "negative_length"),
        ("i32le", i32::MIN.to_le_bytes(), "negative_length"),
    ] {
        let server = start(spec);
        let mut s = connect(server.handle.addr).await;
        s.write_all(&header).await.unwrap();
        let (rest, _) = read_to_end_or_error(&mut s).await;
        assert!(rest.is_empty(), "{spec}: no reply to a bad length");
        let c = server
            .counters
            .wait_until(DEADLINE, |c| c.aborted == 1)
            .await
            .unwrap();
        assert_eq!(c.errors.get(kind), Some(&1), "{spec}: {c:?}");
        round_trip(server.handle.addr, &server.framing, &[b"alive"]).await;
    }
}

#[tokio::test]
async fn max_frame_option_lowers_the_framing_max() {
    let mut config = echo::Config::default();
    config.common.max_frame = Some(16);
    let server = start_with(config);
    round_trip(server.handle.addr, &server.framing, &[&[b'a'; 16]]).await;
    let mut s = connect(server.handle.addr).await;
    let (stream, _) = server.framing.encode_all(&[[b'b'; 17]]).unwrap();
    s.write_all(&stream).await.unwrap();
    let (reply, _) = read_to_end_or_error(&mut s).await;
    assert!(reply.is_empty());
    let c = server
        .counters
        .wait_until(DEADLINE, |c| c.aborted == 1)
        .await
        .unwrap();
    assert_eq!(c.errors.get("too_large"), Some(&1));
}

#[tokio::test]
async fn idle_client_is_dropped() {
    let mut config = echo::Config::default();
    config.common.idle_timeout = Duration::from_millis(100);
    let server = start_with(config);
    let mut s = connect(server.handle.addr).await;
    let (rest, _) = read_to_end_or_error(&mut s).await;
    assert!(rest.is_empty());
    let c = server
        .counters
        .wait_until(DEADLINE, |c| c.aborted == 1)
        .await
        .unwrap();
    assert_eq!(c.errors.get("idle_timeout"), Some(&1));
}

#[tokio::test]
async fn connection_limit_queues_the_next_client_until_a_slot_frees() {
    let mut config = echo::Config::default();
    config.common.max_conns = 1;
    let server = start_with(config);
    let framing = server.framing;
    let mut first = connect(server.handle.addr).await;
    round_trip_on(&mut first, &framing, b"first").await;
    // The second client's connect succeeds (kernel backlog) but nobody reads it yet.
    let mut second = connect(server.handle.addr).await;
    let (req, _) = framing.encode_all(&[b"second"]).unwrap();
    second.write_all(&req).await.unwrap();
    // Give a (wrongly) unlimited server time to accept and answer; the right one waits.
    let early = tokio::time::timeout(
        std::time::Duration::from_millis(200),
        read_frames(&mut second, framing.codec(), 1),
    )
    .await;
    assert!(
        early.is_err(),
        "second client served while the first held the only slot"
    );
    assert_eq!(server.counters.snapshot().accepted, 1);
    drop(first);
    let reply = read_frames(&mut second, framing.codec(), 1).await;
    assert_eq!(reply[0], &b"second"[..]);
    assert_eq!(server.counters.snapshot().accepted, 2);
}

async fn round_trip_on(s: &mut tokio::net::TcpStream, framing: &Framing, payload: &[u8]) {
    let (req, _) = framing.encode_all(&[payload]).unwrap();
    s.write_all(&req).await.unwrap();
    assert_eq!(read_frames(&mut *s, framing.codec(), 1).await[0], payload);
}

#[tokio::test]
async fn restart_on_the_same_port_works_at_once() {
    let server = start("u32be");
    let addr = server.handle.addr;
    // The side that closes first keeps TIME_WAIT. Shutting down with a client still
    // connected makes the server close first, so its port has a TIME_WAIT socket, which
    // only SO_REUSEADDR lets a new listener bind past.
    let mut open = connect(addr).await;
    round_trip_on(&mut open, &server.framing, b"one").await;
    server.handle.shutdown().await.unwrap();
    let (rest, _) = read_to_end_or_error(&mut open).await;
    assert!(rest.is_empty());
    drop(open);
    let again = server::bind(addr, 16).expect("rebind the same port at once (SO_REUSEADDR)");
    let handle =
        Handle::spawn(again, |l, stop| echo::run(l, echo::Config::default(), stop)).unwrap();
    round_trip(addr, &Framing::default(), &[b"two"]).await;
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_open_connections_and_returns() {
    let server = start("u32be");
    let mut idle = connect(server.handle.addr).await;
    round_trip_on(&mut idle, &server.framing, b"x").await;
    tokio::time::timeout(DEADLINE, server.handle.shutdown())
        .await
        .expect("shutdown hung")
        .unwrap();
    let (rest, _) = read_to_end_or_error(&mut idle).await;
    assert!(rest.is_empty());
}

#[tokio::test]
async fn client_that_never_reads_its_replies_is_dropped_at_the_idle_timeout() {
    let mut config = echo::Config::default();
    config.common.idle_timeout = Duration::from_millis(300);
    let server = start_with(config);
    let s = connect(server.handle.addr).await;
    let (mut rd, mut wr) = s.into_split();
    // 64 MiB of requests, far beyond what socket buffers hold: the server's replies
    // back up and its writes stall. Written on its own task, which ends when the
    // server closes (the write fails) or the test ends.
    let payload = vec![b'p'; 64 * 1024];
    let (stream, _) = server.framing.encode_all(&vec![payload; 1024]).unwrap();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&stream).await;
    });
    let c = server
        .counters
        .wait_until(DEADLINE, |c| c.aborted == 1 && c.active == 0)
        .await
        .unwrap_or_else(|c| panic!("a client that never reads holds its slot: {c:?}"));
    assert_eq!(c.errors.get("idle_timeout"), Some(&1), "{c:?}");
    writer.abort();
    drop(read_to_end_or_error(&mut rd));
    round_trip(server.handle.addr, &server.framing, &[b"next"]).await;
}
