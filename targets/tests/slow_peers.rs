//! Slow peers against the shared idle timeout and frame deadline (issue 13, finding 6):
//! idle means no byte moved either way, so a trickling sender and a slow reader are
//! served; a sender too slow to finish a frame in time is cut by the separate frame
//! deadline, counted `frame_timeout`.

mod common;

use std::time::Duration;

use chopstick_targets::echo;
use chopstick_targets::server::{Counters, Handle};
use chopstick_targets::wire::Framing;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn start(idle: Duration, frame: Duration) -> (Handle, std::sync::Arc<Counters>, Framing) {
    let mut config = echo::Config {
        framing: "u32be,max=32MiB".parse().unwrap(),
        ..Default::default()
    };
    config.common.idle_timeout = idle;
    config.common.frame_timeout = frame;
    let counters = config.common.counters.clone();
    let framing = config.framing;
    let handle = Handle::spawn(listener(), move |l, stop| echo::run(l, config, stop)).unwrap();
    (handle, counters, framing)
}

#[tokio::test]
async fn a_request_trickled_for_longer_than_the_idle_timeout_is_served() {
    let (server, counters, framing) = start(Duration::from_millis(400), Duration::from_secs(60));
    let (bytes, _) = framing.encode_all(&[b"trickled"]).unwrap();
    let mut s = connect(server.addr).await;
    // 12 bytes, one every 150 ms: 1.8 s in all, never 400 ms without a byte.
    for b in bytes.iter() {
        s.write_all(std::slice::from_ref(b)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let replies = read_frames(&mut s, framing.codec(), 1).await;
    assert_eq!(&replies[0][..], b"trickled");
    assert_eq!(counters.snapshot().aborted, 0, "{:?}", counters.snapshot());
}

#[tokio::test]
async fn a_large_reply_drained_for_longer_than_the_idle_timeout_arrives_whole() {
    // The kernel wakes a blocked writer once a third of its send buffer (up to 4 MiB)
    // is free, so bytes reach the server's socket in steps of up to ~1.3 MiB: the idle
    // timeout must exceed one step at the reader's pace (0.2 s here).
    let (server, counters, framing) = start(Duration::from_secs(1), Duration::from_secs(60));
    let payload: Vec<u8> = (0..16 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let (bytes, _) = framing.encode_all(&[&payload]).unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // A fixed small receive buffer: the reply cannot sit in the kernel, it has to be
    // drained by the reader, slowly.
    socket.set_recv_buffer_size(256 * 1024).unwrap();
    let mut s = tokio::time::timeout(DEADLINE, socket.connect(server.addr))
        .await
        .unwrap()
        .unwrap();
    s.write_all(&bytes).await.unwrap();
    // About 6 MiB/s: more than two seconds for the whole reply, in gaps of ~10 ms.
    let mut got = Vec::with_capacity(bytes.len());
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < bytes.len() {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .expect("reply stalled")
            .unwrap();
        assert!(
            n > 0,
            "server closed after {} of {} bytes",
            got.len(),
            bytes.len()
        );
        got.extend_from_slice(&buf[..n]);
        tokio::time::sleep(Duration::from_micros(n as u64 * 1_000_000 / (6 << 20))).await;
    }
    assert!(got == bytes[..], "reply differs");
    assert_eq!(counters.snapshot().aborted, 0, "{:?}", counters.snapshot());
}

#[tokio::test]
async fn a_sender_too_slow_to_finish_a_frame_is_cut_by_the_frame_deadline() {
    let (server, counters, framing) = start(Duration::from_secs(30), Duration::from_millis(500));
    let (bytes, _) = framing.encode_all(&[&[b'x'; 64]]).unwrap();
    let mut s = connect(server.addr).await;
    let trickle = async {
        for b in bytes.iter() {
            if s.write_all(std::slice::from_ref(b)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // 68 bytes at 10/s would take 6.8 s; the deadline is 0.5 s after the first byte.
    tokio::time::timeout(DEADLINE, trickle).await.unwrap();
    let c = counters
        .wait_until(DEADLINE, |c| c.aborted == 1 && c.active == 0)
        .await
        .unwrap_or_else(|c| panic!("trickler not cut: {c:?}"));
    assert_eq!(c.errors.get("frame_timeout"), Some(&1), "{c:?}");
}
