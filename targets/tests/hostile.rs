//! Hostile length fields against every server, with a counting allocator: a length of
//! 0xFFFFFFFF, a negative i32le, and hjson's `size` of -1 or 2^32-1 each close only
//! that connection, are counted by kind, and never cause a large allocation.
//!
//! This binary has its own global allocator and a single test, so the peak it records
//! belongs to the servers under test (and small bookkeeping), nothing else.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use chopstick_targets::server::{Counters, Handle};
use chopstick_targets::wire::{Framing, HjsonCodec, HjsonFrame};
use chopstick_targets::{auth, echo, exec, file};
use common::{connect, listener, read_frames, read_to_end_or_error, DEADLINE};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::Encoder;

/// Records the largest single allocation (or reallocation) since the last reset.
struct Peak;

static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Peak {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        PEAK.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        PEAK.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        PEAK.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Peak = Peak;

/// Far below the 8 MiB default max that a hostile length would otherwise reserve.
const LARGE: usize = 1024 * 1024;

const KEY: &[u8] = b"hostile test key";

enum Kind {
    Echo(Framing),
    Exec,
    File,
    /// auth in front of echo with this framing.
    Auth(Framing),
}

struct Server {
    handle: Handle,
    counters: Arc<Counters>,
    kind: Kind,
    _root: Option<tempfile::TempDir>,
}

fn start(kind: Kind) -> Server {
    let counters = Arc::new(Counters::default());
    let common = chopstick_targets::server::Common {
        counters: counters.clone(),
        ..Default::default()
    };
    let mut root = None;
    let l = listener();
    let handle = match &kind {
        Kind::Echo(framing) => {
            let config = echo::Config {
                common,
                framing: *framing,
                ..Default::default()
            };
            Handle::spawn(l, move |l, stop| echo::run(l, config, stop))
        }
        Kind::Exec => {
            let config = exec::Config {
                common,
                ..Default::default()
            };
            Handle::spawn(l, move |l, stop| exec::run(l, config, stop))
        }
        Kind::File => {
            let dir = tempfile::tempdir().unwrap();
            let config = file::Config {
                common,
                root: dir.path().to_path_buf(),
            };
            root = Some(dir);
            Handle::spawn(l, move |l, stop| file::run(l, config, stop))
        }
        Kind::Auth(framing) => {
            let inner = echo::Config {
                framing: *framing,
                ..Default::default()
            };
            let mut config = auth::Config::new(KEY.to_vec(), auth::Inner::Echo(inner));
            config.common = common;
            Handle::spawn(l, move |l, stop| auth::run(l, config, stop))
        }
    }
    .unwrap();
    Server {
        handle,
        counters,
        kind,
        _root: root,
    }
}

async fn open(server: &Server) -> tokio::net::TcpStream {
    let mut s = connect(server.handle.addr).await;
    if let Kind::Auth(_) = server.kind {
        let accepted = tokio::time::timeout(DEADLINE, auth::client_handshake(&mut s, KEY))
            .await
            .expect("handshake timed out")
            .expect("handshake");
        assert!(accepted);
    }
    s
}

fn hjson(header: serde_json::Value, body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    HjsonCodec::new(usize::MAX)
        .encode(HjsonFrame::new(header, body.to_vec()), &mut buf)
        .unwrap();
    buf
}

/// A fresh client gets a correct answer.
async fn assert_serving(server: &Server) {
    let mut s = open(server).await;
    match &server.kind {
        Kind::Echo(framing) | Kind::Auth(framing) => {
            let (req, _) = framing.encode_all(&[b"alive"]).unwrap();
            s.write_all(&req).await.unwrap();
            let reply = read_frames(&mut s, framing.codec(), 1).await;
            assert_eq!(reply[0], &b"alive"[..]);
        }
        Kind::Exec => {
            s.write_all(&hjson(serde_json::json!({"argv": ["echo", "alive"]}), b""))
                .await
                .unwrap();
            let reply = read_frames(&mut s, HjsonCodec::new(1024), 1).await;
            assert_eq!(&reply[0].body[..], b"alive\n");
        }
        Kind::File => {
            s.write_all(&hjson(serde_json::json!({"op": "list"}), b""))
                .await
                .unwrap();
            let reply = read_frames(&mut s, HjsonCodec::new(1024), 1).await;
            assert_eq!(reply[0].header["ok"], true);
        }
    }
}

async fn hostile(name: &str, server: Server, bytes: &[u8], kind: &str) {
    // Warm up (runtime, first connection) before measuring.
    assert_serving(&server).await;
    let before = server
        .counters
        .wait_until(DEADLINE, |c| c.active == 0)
        .await
        .expect("quiet server");
    let mut s = open(&server).await;
    PEAK.store(0, Ordering::SeqCst);
    s.write_all(bytes).await.unwrap();
    let (rest, _) = read_to_end_or_error(&mut s).await;
    let after = server
        .counters
        .wait_until(DEADLINE, |c| c.aborted > before.aborted && c.active == 0)
        .await
        .unwrap_or_else(|c| panic!("{name}: not counted as aborted: {c:?}"));
    let peak = PEAK.load(Ordering::SeqCst);
    assert!(rest.is_empty(), "{name}: no reply to a hostile length");
    assert_eq!(
        after.errors.get(kind).copied().unwrap_or(0),
        before.errors.get(kind).copied().unwrap_or(0) + 1,
        "{name}: {after:?}"
    );
    assert!(peak < LARGE, "{name}: allocated {peak} bytes at once");
    assert!(!server.handle.is_finished(), "{name}: server died");
    assert_serving(&server).await;
    server.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn hostile_lengths_on_every_server() {
    let u32be: Framing = "u32be".parse().unwrap();
    let i32le: Framing = "i32le".parse().unwrap();
    let all_ones = 0xFFFF_FFFFu32.to_be_bytes();
    let neg = (-1i32).to_le_bytes();
    let min = i32::MIN.to_le_bytes();
    // `{"size":-1}` and `{"size":4294967295}` written by hand: the encoder sets `size`.
    let raw = |header: &[u8]| {
        let mut v = (header.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(header);
        v
    };
    let size_minus_one = raw(br#"{"op":"put","name":"x","sha256":"00","size":-1}"#);
    let size_huge = raw(br#"{"op":"put","name":"x","sha256":"00","size":4294967295}"#);
    let argv_neg = raw(br#"{"argv":["cat"],"size":-1}"#);
    let argv_huge = raw(br#"{"argv":["cat"],"size":4294967295}"#);

    let cases: Vec<(&str, Kind, Vec<u8>, &str)> = vec![
        (
            "echo u32be 0xFFFFFFFF",
            Kind::Echo(u32be),
            all_ones.to_vec(),
            "too_large",
        ),
        (
            "echo i32le -1",
            Kind::Echo(i32le),
            neg.to_vec(),
            "negative_length",
        ),
        (
            "echo i32le MIN",
            Kind::Echo(i32le),
            min.to_vec(),
            "negative_length",
        ),
        (
            "exec 0xFFFFFFFF",
            Kind::Exec,
            all_ones.to_vec(),
            "too_large",
        ),
        ("exec size -1", Kind::Exec, argv_neg, "bad_header"),
        ("exec size 2^32-1", Kind::Exec, argv_huge, "too_large"),
        (
            "file 0xFFFFFFFF",
            Kind::File,
            all_ones.to_vec(),
            "too_large",
        ),
        ("file size -1", Kind::File, size_minus_one, "bad_header"),
        ("file size 2^32-1", Kind::File, size_huge, "too_large"),
        (
            "auth/echo 0xFFFFFFFF",
            Kind::Auth(u32be),
            all_ones.to_vec(),
            "too_large",
        ),
        (
            "auth/echo i32le -1",
            Kind::Auth(i32le),
            neg.to_vec(),
            "negative_length",
        ),
    ];
    for (name, kind, bytes, error) in cases {
        hostile(name, start(kind), &bytes, error).await;
    }
}
