//! ChaosStream over `tokio::io::duplex` and in-memory readers: exact limits, self-waking
//! pauses, endings.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn plan(s: &str) -> Plan {
    s.parse().unwrap()
}

/// Polls `fut` once with a no-op waker.
fn poll_once<F: Future>(fut: F) -> Poll<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    pin!(fut).poll(&mut cx)
}

#[test]
fn writes_are_cut_exactly_at_the_plan() {
    let mut s = ChaosStream::writer(Vec::new(), plan("w3 w1 w5"));
    let mut sizes = vec![];
    futures::executor::block_on(async {
        let data = b"0123456789abc";
        let mut at = 0;
        while at < data.len() {
            let n = s.write(&data[at..]).await.unwrap();
            sizes.push(n);
            at += n;
        }
    });
    assert_eq!(sizes, [3, 1, 5, 4]);
    assert_eq!(s.into_inner(), b"0123456789abc");
}

#[test]
fn a_small_write_buffer_does_not_cross_a_cut() {
    let mut s = ChaosStream::writer(Vec::new(), plan("w5 w5"));
    let sizes: Vec<usize> = futures::executor::block_on(async {
        let mut v = vec![];
        for piece in [&b"abc"[..], b"defgh", b"ij"] {
            v.push(s.write(piece).await.unwrap());
        }
        v
    });
    // "abc" uses 3 of the first 5; "defgh" may only take the 2 left.
    assert_eq!(sizes, [3, 2, 2]);
}

#[test]
fn a_pause_returns_pending_once_and_wakes_itself() {
    let mut s = ChaosStream::writer(Vec::new(), plan("p1000 w2"));
    let woke = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    struct Flag(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl std::task::Wake for Flag {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let waker = Waker::from(std::sync::Arc::new(Flag(woke.clone())));
    let mut cx = Context::from_waker(&waker);
    let mut write = pin!(s.write(b"abc"));
    assert!(write.as_mut().poll(&mut cx).is_pending());
    assert!(woke.load(std::sync::atomic::Ordering::SeqCst));
    assert!(matches!(write.as_mut().poll(&mut cx), Poll::Ready(Ok(2))));
}

#[test]
fn close_shuts_the_peer_down_and_later_writes_get_broken_pipe() {
    futures::executor::block_on(async {
        let (a, mut b) = tokio::io::duplex(64);
        let mut s = ChaosStream::writer(a, plan("w2 close"));
        assert_eq!(s.write(b"hello").await.unwrap(), 2);
        let err = s.write(b"llo").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(
            s.write(b"x").await.unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
        assert_eq!(s.write_ending(), Some(Ending::Close));
        let mut got = vec![];
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"he");
    });
}

#[test]
fn reset_fails_writes_with_connection_reset() {
    futures::executor::block_on(async {
        let (a, _b) = tokio::io::duplex(64);
        let mut s = ChaosStream::writer(a, plan("w1 reset"));
        let err = s.write_all(b"abc").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(
            s.flush().await.unwrap_err().kind(),
            io::ErrorKind::ConnectionReset
        );
    });
}

#[test]
fn reads_are_limited_per_step_then_pass_through() {
    let data: &[u8] = b"abcdefghij";
    let mut s = ChaosStream::reader(data, plan("r1 s5 w2 r3"));
    let sizes = futures::executor::block_on(async {
        let mut sizes = vec![];
        let mut buf = [0u8; 64];
        // Bounded: ten bytes, every read returns at least one until EOF.
        for _ in 0..20 {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            sizes.push(n);
        }
        sizes
    });
    assert_eq!(sizes, [1, 2, 3, 4]);
}

#[test]
fn a_reader_close_is_eof_at_the_cut_and_a_reset_is_an_error() {
    let data: &[u8] = b"abcdefghij";
    futures::executor::block_on(async {
        let mut s = ChaosStream::reader(data, plan("r2 w2 close"));
        let mut got = vec![];
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"abcd");

        let mut s = ChaosStream::reader(data, plan("w3 reset"));
        let mut got = vec![];
        let err = s.read_to_end(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(got, b"abc");
    });
}

#[test]
fn a_stall_is_pending_once() {
    let data: &[u8] = b"ab";
    let mut s = ChaosStream::reader(data, plan("s100 r1"));
    let mut buf = [0u8; 4];
    assert!(poll_once(s.read(&mut buf)).is_pending());
    assert!(matches!(poll_once(s.read(&mut buf)), Poll::Ready(Ok(1))));
}

#[test]
fn both_directions_over_a_duplex_deliver_every_byte() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let (a, b) = tokio::io::duplex(8);
        let data: Vec<u8> = (0..200u8).collect();
        let mut w = ChaosStream::writer(a, plan("w1 p1 w7 p1 w50 w3"));
        let mut r = ChaosStream::reader(b, plan("r2 s1 r9 s1 r1"));
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut got = vec![];
        r.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got, expected);
    });
}
