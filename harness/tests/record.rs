//! `proxy --record` over real loopback sockets: clients that pipeline, half-close and
//! reset through the proxy to a real echo server (upper-casing, so replies differ from
//! requests); every frame must be recorded once, in order, with the requests that came
//! before each reply. Then the real binary: its periodic flush survives `kill -9`, and
//! SIGTERM writes a complete file. Every wait is bounded by `DEADLINE`; nothing asserts
//! on timing.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chopstick::proxy::{ProxyConfig, ProxyHandle};
use chopstick::traffic::{
    self, Connection, RecordConfig, Recorder, TrafficFile, DEFAULT_RECORD_MAX,
};
use chopstick_targets::echo::{self, Transform};
use chopstick_targets::server::TaskHandle;
use chopstick_targets::wire::Framing;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound for any single wait in these tests; nothing may hang CI.
const DEADLINE: Duration = Duration::from_secs(30);

fn listener() -> tokio::net::TcpListener {
    chopstick_targets::server::bind("127.0.0.1:0".parse().unwrap(), 128).expect("bind loopback")
}

/// A real upper-casing echo server speaking `framing`.
fn upstream(framing: Framing) -> TaskHandle<chopstick_targets::server::ServerError> {
    let config = echo::Config {
        framing,
        transform: Transform::Upper,
        ..echo::Config::default()
    };
    TaskHandle::spawn(listener(), move |l, stop| echo::run(l, config, stop)).expect("echo")
}

fn recording(dir: &Path, framing: Framing) -> Arc<Recorder> {
    Recorder::create(RecordConfig {
        path: dir.join("traffic.json"),
        framing,
        reply_framing: framing,
        max_bytes: DEFAULT_RECORD_MAX,
        upstream: "test".into(),
    })
    .unwrap()
}

fn proxy(upstream: SocketAddr, framing: Framing, recorder: &Arc<Recorder>) -> ProxyHandle {
    faulted_proxy(upstream, framing, recorder, "")
}

fn faulted_proxy(
    upstream: SocketAddr,
    framing: Framing,
    recorder: &Arc<Recorder>,
    faults: &str,
) -> ProxyHandle {
    let mut config = ProxyConfig::new(upstream);
    config.framing = Some(framing);
    config.recorder = Some(recorder.clone());
    config.faults = faults.parse().unwrap();
    config.seed = 7;
    ProxyHandle::spawn(listener(), config).expect("spawn proxy")
}

/// Polls `done` every 10 ms until it holds, at most [`DEADLINE`].
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The one recorded connection, once both its directions have ended.
async fn ended_connection(recorder: &Recorder) -> Connection {
    wait_until("the connection to end in the recording", || {
        recorder.snapshot().connections.first().is_some_and(|c| {
            c.ended
                .as_ref()
                .is_some_and(|e| e.up.is_some() && e.down.is_some())
        })
    })
    .await;
    recorder.snapshot().connections.remove(0)
}

fn payloads(n: usize) -> Vec<Vec<u8>> {
    // Sizes across the varint prefix widths, and an empty one.
    (0..n)
        .map(|i| {
            let len = [0, 1, 5, 127, 128, 300, 20_000][i % 7];
            (0..len).map(|j| b'a' + ((i + j) % 26) as u8).collect()
        })
        .collect()
}

fn bytes_of(c: &Connection) -> (Vec<Bytes>, Vec<Bytes>) {
    let req = c.requests.iter().map(|p| p.bytes().unwrap()).collect();
    let rep = c
        .replies
        .iter()
        .map(|r| r.payload.bytes().unwrap())
        .collect();
    (req, rep)
}

fn upper(v: &[Vec<u8>]) -> Vec<Bytes> {
    v.iter()
        .map(|p| Bytes::from(p.to_ascii_uppercase()))
        .collect()
}

/// Reads exactly `n` bytes (bounded by [`DEADLINE`]).
async fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut buf))
        .await
        .expect("replies in time")
        .expect("read replies");
    buf
}

#[tokio::test]
async fn a_pipelining_client_has_every_frame_recorded_once_in_order() {
    for spec in ["varint", "u32be", "netstring"] {
        let framing: Framing = spec.parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let rec = recording(dir.path(), framing);
        let server = upstream(framing);
        let proxy = proxy(server.addr, framing, &rec);
        let msgs = payloads(40);
        let (stream, _) = framing.encode_all(&msgs).unwrap();
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        // All requests in one write: the proxy reads them in whatever pieces come.
        client.write_all(&stream).await.unwrap();
        let _ = read_n(&mut client, stream.len()).await;
        drop(client);
        let c = ended_connection(&rec).await;
        let (req, rep) = bytes_of(&c);
        assert_eq!(req, msgs, "{spec}: requests");
        assert_eq!(rep, upper(&msgs), "{spec}: replies");
        // Reply i answers request i: it cannot have come before it, and `after` grows.
        for (i, r) in c.replies.iter().enumerate() {
            assert!(r.after > i as u64, "{spec}: reply {i} after {}", r.after);
        }
        assert!(c.replies.windows(2).all(|w| w[0].after <= w[1].after));
        assert!(c.errors.is_empty(), "{spec}: {:?}", c.errors);
        proxy.shutdown().await.unwrap();
        rec.finish().unwrap();
        // What is on disk is what was recorded.
        let file = traffic::read(&dir.path().join("traffic.json")).unwrap();
        assert!(file.complete);
        assert_eq!(bytes_of(&file.connections[0]).0, msgs);
    }
}

#[tokio::test]
async fn a_faulted_proxy_cuts_inside_varint_and_netstring_headers_and_still_records_every_frame() {
    // Frame-aware faults find the variable-length headers (FrameScanner) and cut there;
    // the real echo server copes, and the recording holds the bytes as the peers sent them.
    for spec in ["varint", "netstring"] {
        let framing: Framing = spec.parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let rec = recording(dir.path(), framing);
        let server = upstream(framing);
        let proxy = faulted_proxy(server.addr, framing, &rec, "boundary:all=true,split");
        let msgs = payloads(14);
        let (stream, _) = framing.encode_all(&msgs).unwrap();
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        client.write_all(&stream).await.unwrap();
        let replies = read_n(&mut client, stream.len()).await;
        let (expected, _) = framing.encode_all(&upper(&msgs)).unwrap();
        assert_eq!(&replies[..], &expected[..], "{spec}");
        drop(client);
        let c = ended_connection(&rec).await;
        let (req, rep) = bytes_of(&c);
        assert_eq!(req, msgs, "{spec}");
        assert_eq!(rep, upper(&msgs), "{spec}");
        proxy.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_half_closing_client_gets_its_replies_and_both_directions_end_in_eof() {
    let framing: Framing = "varint".parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rec = recording(dir.path(), framing);
    let server = upstream(framing);
    let proxy = proxy(server.addr, framing, &rec);
    let msgs = payloads(3);
    let (stream, _) = framing.encode_all(&msgs).unwrap();
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    // One request and its reply first, so `after` is seen to count.
    let first = stream.len() - framing.encode_all(&msgs[1..]).unwrap().0.len();
    client.write_all(&stream[..first]).await.unwrap();
    let first_reply = framing.encode_all(&msgs[..1]).unwrap().0.len();
    let _ = read_n(&mut client, first_reply).await;
    client.write_all(&stream[first..]).await.unwrap();
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, client.read_to_end(&mut rest))
        .await
        .expect("EOF in time")
        .unwrap();
    assert_eq!(rest.len(), stream.len() - first_reply);
    let c = ended_connection(&rec).await;
    let (req, rep) = bytes_of(&c);
    assert_eq!(req, msgs);
    assert_eq!(rep, upper(&msgs));
    assert_eq!(c.replies[0].after, 1);
    let ended = c.ended.unwrap();
    assert_eq!(
        (ended.up.as_deref(), ended.down.as_deref()),
        (Some("eof"), Some("eof"))
    );
    proxy.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_resetting_client_mid_frame_leaves_its_whole_frames_and_a_truncated_error() {
    let framing: Framing = "u32be".parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rec = recording(dir.path(), framing);
    let server = upstream(framing);
    let proxy = proxy(server.addr, framing, &rec);
    let msgs = payloads(2);
    let (stream, _) = framing.encode_all(&msgs).unwrap();
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client.write_all(&stream).await.unwrap();
    let _ = read_n(&mut client, stream.len()).await;
    // Half of a third frame, then an RST.
    client.write_all(b"\0\0\0\x0aabc").await.unwrap();
    wait_until("the partial frame to reach the proxy", || {
        proxy.counters().snapshot().bytes_up >= stream.len() as u64 + 7
    })
    .await;
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
    let c = ended_connection(&rec).await;
    let (req, rep) = bytes_of(&c);
    assert_eq!(req, msgs);
    assert_eq!(rep, upper(&msgs));
    assert_eq!(c.errors.len(), 1, "{:?}", c.errors);
    assert_eq!(
        (
            &c.errors[0].dir[..],
            &c.errors[0].kind[..],
            c.errors[0].after
        ),
        ("request", "truncated", 2)
    );
    assert_eq!(c.ended.unwrap().up.as_deref(), Some("reset"));
    proxy.shutdown().await.unwrap();
}

/// The real binary, recording; killed by the test at the end whatever happens.
struct Binary(Child);

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `chopstick proxy --record FILE` and returns it with its listening address.
fn spawn_recording_proxy(upstream: SocketAddr, file: &Path) -> (Binary, SocketAddr) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_chopstick"))
        .args([
            "proxy",
            "--upstream",
            &upstream.to_string(),
            "--framing",
            "varint",
        ])
        .arg("--record")
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chopstick proxy");
    let stdout = child.stdout.take().unwrap();
    let bin = Binary(child);
    // The first line says where it listens (a bounded read: the process prints it at
    // once or dies, closing the pipe).
    let mut line = String::new();
    let mut reader = std::io::BufReader::new(stdout);
    reader.read_line(&mut line).unwrap();
    // Keep draining: a closed pipe would make the child's next print fail.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    (bin, addr)
}

/// The requests of connection 0 in the file, if it reads.
fn recorded(file: &Path) -> Option<(TrafficFile, Vec<Bytes>)> {
    let f = traffic::read(file).ok()?;
    let req = f
        .connections
        .first()
        .map(|c| bytes_of(c).0)
        .unwrap_or_default();
    Some((f, req))
}

#[tokio::test]
async fn kill_9_of_the_recording_proxy_keeps_what_the_last_periodic_flush_wrote() {
    let framing: Framing = "varint".parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("traffic.json");
    let server = upstream(framing);
    let (mut bin, addr) = spawn_recording_proxy(server.addr, &file);
    let msgs = payloads(10);
    let (stream, _) = framing.encode_all(&msgs).unwrap();
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(&stream).await.unwrap();
    let _ = read_n(&mut client, stream.len()).await;
    // The connection stays open and the process is never asked to stop: only the
    // periodic flush can put these frames on disk.
    wait_until("the periodic flush to write the requests", || {
        recorded(&file).is_some_and(|(_, req)| req == msgs)
    })
    .await;
    bin.0.kill().unwrap(); // SIGKILL
    bin.0.wait().unwrap();
    let (f, req) = recorded(&file).expect("the file left by kill -9 reads");
    assert_eq!(req, msgs);
    assert!(!f.complete, "only a clean exit marks the file complete");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temp file left"
    );
}

#[tokio::test]
async fn sigterm_writes_a_complete_recording_with_the_connection_ended() {
    let framing: Framing = "varint".parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("traffic.json");
    let server = upstream(framing);
    let (mut bin, addr) = spawn_recording_proxy(server.addr, &file);
    let msgs = payloads(5);
    let (stream, _) = framing.encode_all(&msgs).unwrap();
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(&stream).await.unwrap();
    let _ = read_n(&mut client, stream.len()).await;
    drop(client);
    // SAFETY: kill(2) on the pid of our own child.
    unsafe { libc::kill(bin.0.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    let status = loop {
        if let Some(s) = bin.0.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < DEADLINE, "proxy did not exit on SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    let (f, req) = recorded(&file).unwrap();
    assert!(f.complete);
    assert_eq!(req, msgs);
    assert_eq!(bytes_of(&f.connections[0]).1, upper(&msgs));
    assert!(f.connections[0].ended.is_some());
}

#[test]
fn record_without_a_framing_and_raw_both_ways_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.json");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_chopstick"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run chopstick");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&[
        "proxy",
        "--upstream",
        "127.0.0.1:9",
        "--record",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--record needs --framing"), "{err}");
    assert!(!file.exists(), "nothing recorded, nothing written");
    let (code, err) = run(&["check", "--connect", "127.0.0.1:9", "--framing", "raw"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--framing raw has no message boundaries"),
        "{err}"
    );
}
