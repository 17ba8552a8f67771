//! `chopstick proxy --api`: the Toxiproxy HTTP API driven by the real Toxiproxy clients
//! (toxiproxy-python from PyPI, toxiproxy-node-client from npm, installed by ci/run),
//! by raw HTTP, chopstick's frame-aware toxics observed at the upstream server's reads,
//! and the relay acceptance points of `--faults coalesce` / `split`.
//!
//! Read boundaries are only asserted structurally: a busy reader may merge pieces the
//! proxy wrote apart (so counts have loose lower bounds, or upper bounds merging cannot
//! break), but for writes this small (one segment each) it never sees a read end where
//! no write ended.
//!
//! The client tests look for the clients in `$CHOPSTICK_TOXIPROXY_CLIENTS` (default
//! `target/toxiproxy-clients`: `py/` for pip's `--target`, `node/` for npm's
//! `--prefix`). Without them they say so and pass, unless
//! `CHOPSTICK_REQUIRE_CLIENTS=1` (set by ci/run), which makes a missing client a failure.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// A running `chopstick proxy ...`, killed when dropped.
struct Chopstick {
    child: Child,
    addr: SocketAddr,
}

impl Chopstick {
    /// Starts chopstick with `args` and waits for the line `<prefix> ADDR` on stdout.
    fn start(args: &[&str], prefix: &str) -> Chopstick {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chopstick"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("chopstick starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("chopstick prints its address");
        let addr = line
            .trim()
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .trim()
            .parse()
            .expect("an address");
        Chopstick { child, addr }
    }

    fn api() -> Chopstick {
        Chopstick::start(
            &["proxy", "--api", "127.0.0.1:0", "--seed", "1"],
            "api listening on",
        )
    }
}

impl Drop for Chopstick {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback server on a thread per connection running `handle`.
fn server(handle: fn(TcpStream)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
            thread::spawn(move || handle(conn));
        }
    });
    addr
}

/// Echoes until EOF, then closes its side too.
fn echo(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 || s.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

const REPLY_LEN: usize = 8 * 1024;

/// Reads the request to EOF (the client's half-close), then sends the reply.
fn reply_after_eof(mut s: TcpStream) {
    let mut request = Vec::new();
    if s.read_to_end(&mut request).is_ok() {
        let reply: Vec<u8> = (0..REPLY_LEN).map(|i| (i % 251) as u8).collect();
        let _ = s.write_all(&reply);
    }
}

/// Counts reads (of up to 1 MiB) until EOF and sends back their sizes, comma-separated.
fn count_reads(mut s: TcpStream) {
    let mut buf = vec![0u8; 1 << 20];
    let mut reads = Vec::new();
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        reads.push(n.to_string());
    }
    let _ = s.write_all(reads.join(",").as_bytes());
}

/// One HTTP/1.1 request with `Connection: close`; `(status, body)`.
fn http(api: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

/// The installed clients' folder, or `None` (the test then passes, saying why).
fn clients(sub: &str) -> Option<PathBuf> {
    let root = std::env::var_os("CHOPSTICK_TOXIPROXY_CLIENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/toxiproxy-clients")
        });
    let dir = root.join(sub);
    if dir.exists() {
        return Some(dir);
    }
    let required = std::env::var("CHOPSTICK_REQUIRE_CLIENTS").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{} is missing (ci/run installs it)",
        dir.display()
    );
    eprintln!(
        "SKIPPED: {} is missing; run ci/run's client install",
        dir.display()
    );
    None
}

fn run_script(mut cmd: Command, what: &str) {
    let out = cmd.output().expect("the client script runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{what} stdout:\n{stdout}\n{what} stderr:\n{stderr}");
    assert!(out.status.success(), "{what} failed: {}", out.status);
    assert!(stdout.contains("checks passed"), "{what} did not finish");
}

#[test]
fn toxiproxy_python_client_drives_proxies_and_every_toxic() {
    let Some(py) = clients("py") else { return };
    let chopstick = Chopstick::api();
    let echo = server(echo);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/toxiproxy/python_client.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .arg(chopstick.addr.port().to_string())
        .arg(echo.to_string())
        .env("PYTHONPATH", py)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    run_script(cmd, "python client");
}

#[test]
fn toxiproxy_node_client_drives_proxies_and_toxics() {
    let Some(node) = clients("node") else { return };
    let chopstick = Chopstick::api();
    let echo = server(echo);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/toxiproxy/node_client.js");
    let mut cmd = Command::new("node");
    cmd.arg(script)
        .arg(format!("http://{}", chopstick.addr))
        .arg(echo.to_string())
        .env("NODE_PATH", node.join("node_modules"));
    run_script(cmd, "node client");
}

#[test]
fn api_answers_with_toxiproxys_status_codes_and_bodies() {
    let chopstick = Chopstick::api();
    let api = chopstick.addr;
    let echo = server(echo);
    let (status, body) = http(api, "GET", "/version", "");
    assert_eq!(status, 200);
    assert!(json(&body)["version"]
        .as_str()
        .unwrap()
        .starts_with("chopstick"));
    let create = format!(r#"{{"name":"a","upstream":"{echo}","listen":"127.0.0.1:0"}}"#);
    let (status, body) = http(api, "POST", "/proxies", &create);
    assert_eq!(status, 201, "{body}");
    let a = json(&body);
    assert_eq!(a["enabled"], true);
    assert_eq!(a["toxics"], serde_json::json!([]));
    let (status, body) = http(api, "POST", "/proxies", &create);
    assert_eq!(
        (status, json(&body)),
        (
            409,
            serde_json::json!({"error": "proxy already exists", "status": 409})
        )
    );
    let (status, body) = http(api, "POST", "/proxies", r#"{"upstream":"127.0.0.1:1"}"#);
    assert_eq!(
        (status, json(&body)["error"].as_str()),
        (400, Some("missing required field: name"))
    );
    let (status, _) = http(
        api,
        "POST",
        "/proxies",
        r#"{"name":"far","upstream":"192.0.2.1:80"}"#,
    );
    assert_eq!(status, 400, "a non-loopback upstream is refused");
    let (status, body) = http(api, "DELETE", "/proxies/zz", "");
    assert_eq!(
        (status, json(&body)["error"].as_str()),
        (404, Some("proxy not found"))
    );

    let toxic = r#"{"type":"latency","attributes":{"latency":10}}"#;
    let (status, body) = http(api, "POST", "/proxies/a/toxics", toxic);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["name"], "latency_downstream");
    let (status, body) = http(api, "POST", "/proxies/a/toxics", toxic);
    assert_eq!(
        (status, json(&body)["error"].as_str()),
        (409, Some("toxic already exists"))
    );
    let (status, body) = http(
        api,
        "PATCH",
        "/proxies/a/toxics/latency_downstream",
        r#"{"attributes":{"jitter":3}}"#,
    );
    assert_eq!(status, 200);
    assert_eq!(
        json(&body)["attributes"],
        serde_json::json!({"latency": 10, "jitter": 3})
    );
    let (status, body) = http(api, "GET", "/proxies/a/toxics/nope", "");
    assert_eq!(
        (status, json(&body)["error"].as_str()),
        (404, Some("toxic not found"))
    );
    let (status, body) = http(
        api,
        "POST",
        "/proxies/a/toxics",
        r#"{"type":"latency","stream":"sideways"}"#,
    );
    assert_eq!(status, 400);
    assert!(json(&body)["error"]
        .as_str()
        .unwrap()
        .starts_with("stream was invalid"));

    // populate keeps an identical proxy, creates a new one, answers 201 with both.
    let listen = a["listen"].as_str().unwrap();
    let list = format!(
        r#"[{{"name":"a","upstream":"{echo}","listen":"{listen}"}},{{"name":"b","upstream":"{echo}"}}]"#
    );
    let (status, body) = http(api, "POST", "/populate", &list);
    assert_eq!(status, 201, "{body}");
    let proxies = json(&body)["proxies"].as_array().unwrap().clone();
    assert_eq!(proxies.len(), 2);
    assert_eq!(
        proxies[0]["toxics"].as_array().unwrap().len(),
        1,
        "kept with its toxic"
    );
    let (status, body) = http(api, "POST", "/populate", r#"[{"name":"c"}]"#);
    assert_eq!(status, 400);
    assert_eq!(
        json(&body)["error"],
        "missing required field: upstream at proxy 1"
    );

    let (status, _) = http(api, "POST", "/proxies/a", r#"{"enabled":false}"#);
    assert_eq!(status, 200);
    assert!(
        TcpStream::connect(listen).is_err(),
        "a disabled proxy does not listen"
    );
    let (status, _) = http(api, "POST", "/reset", "");
    assert_eq!(status, 204);
    let (_, body) = http(api, "GET", "/proxies", "");
    let all = json(&body);
    assert_eq!(all["a"]["enabled"], true);
    assert_eq!(all["a"]["listen"], listen, "re-enabled on the same port");
    assert_eq!(all["a"]["toxics"], serde_json::json!([]));
    let (status, _) = http(api, "DELETE", "/proxies/a", "");
    assert_eq!(status, 204);
    assert!(
        TcpStream::connect(listen).is_err(),
        "a deleted proxy does not listen"
    );
}

#[test]
fn config_file_creates_its_proxies_at_start() {
    let echo = server(echo);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("toxiproxy.json");
    std::fs::write(
        &path,
        format!(
            r#"[{{"name":"from_file","listen":"127.0.0.1:0","upstream":"{echo}","enabled":true}}]"#
        ),
    )
    .unwrap();
    let chopstick = Chopstick::start(
        &[
            "proxy",
            "--api",
            "127.0.0.1:0",
            "--config",
            path.to_str().unwrap(),
        ],
        "api listening on",
    );
    let (status, body) = http(chopstick.addr, "GET", "/proxies/from_file", "");
    assert_eq!(status, 200, "{body}");
    let listen = json(&body)["listen"].as_str().unwrap().to_string();
    let mut s = TcpStream::connect(listen).unwrap();
    s.write_all(b"hello").unwrap();
    let mut got = [0u8; 5];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");

    // A config that is not a proxy list stops chopstick with a message.
    std::fs::write(&path, "{").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chopstick"))
        .args([
            "proxy",
            "--api",
            "127.0.0.1:0",
            "--config",
            path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad request body"));
}

#[test]
fn half_close_through_an_api_proxy_delivers_the_whole_reply_1000_times() {
    let chopstick = Chopstick::api();
    let upstream = server(reply_after_eof);
    let (status, body) = http(
        chopstick.addr,
        "POST",
        "/proxies",
        &format!(r#"{{"name":"hc","upstream":"{upstream}"}}"#),
    );
    assert_eq!(status, 201, "{body}");
    let listen: SocketAddr = json(&body)["listen"].as_str().unwrap().parse().unwrap();
    let expected: Vec<u8> = (0..REPLY_LEN).map(|i| (i % 251) as u8).collect();
    for trial in 0..1000 {
        let mut s = TcpStream::connect(listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(b"request, then FIN").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut reply = Vec::new();
        s.read_to_end(&mut reply)
            .unwrap_or_else(|e| panic!("trial {trial}: {e}"));
        assert!(
            reply == expected,
            "trial {trial}: {} of {REPLY_LEN} bytes",
            reply.len()
        );
    }
}

/// Sends `chunks` through a `chopstick proxy` with `args` to a read counter; the reads.
fn reads_through(args: &[&str], chunks: Vec<Vec<u8>>, gap: Duration) -> Vec<usize> {
    let counter = server(count_reads);
    let upstream = counter.to_string();
    let mut all = vec![
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &upstream,
        "--seed",
        "3",
    ];
    all.extend_from_slice(args);
    let chopstick = Chopstick::start(&all, "listening on");
    let mut s = TcpStream::connect(chopstick.addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    for chunk in chunks {
        s.write_all(&chunk).unwrap();
        thread::sleep(gap);
    }
    s.shutdown(Shutdown::Write).unwrap();
    let mut report = String::new();
    s.read_to_string(&mut report).unwrap();
    report
        .split(',')
        .filter(|r| !r.is_empty())
        .map(|r| r.parse().unwrap())
        .collect()
}

#[test]
fn coalesce_merges_frames_sent_5_ms_apart() {
    let frames: Vec<Vec<u8>> = (0..40u8)
        .map(|i| {
            let mut f = 8u32.to_be_bytes().to_vec();
            f.extend([i; 8]);
            f
        })
        .collect();
    let reads = reads_through(
        &[
            "--faults",
            // Held well beyond the 5 ms gaps (default 12 ms), so a sender starved by
            // other processes still lands its next frame inside the hold.
            "coalesce:hold_ms=50",
            "--framing",
            "u32be",
            "--direction",
            "up",
        ],
        frames,
        Duration::from_millis(5),
    );
    assert_eq!(reads.iter().sum::<usize>(), 40 * 12);
    eprintln!("40 frames 5 ms apart arrived in {} reads", reads.len());
    assert!(reads.len() <= 30, "{} reads: {reads:?}", reads.len());
}

#[test]
fn split_without_framing_cuts_64_kib_into_pieces_of_at_most_16_kib() {
    let started = Instant::now();
    let data: Vec<u8> = (0..64 * 1024).map(|i| (i % 253) as u8).collect();
    let reads = reads_through(
        &["--faults", "split", "--direction", "up"],
        vec![data],
        Duration::ZERO,
    );
    assert_eq!(reads.iter().sum::<usize>(), 64 * 1024);
    assert!(reads.len() >= 16, "{} reads", reads.len());
    assert!(reads.iter().all(|&r| r <= 16 * 1024), "{reads:?}");
    eprintln!("{} reads in {:?}", reads.len(), started.elapsed());
}

// ---- chopstick's frame-aware toxics, seen at the upstream server's reads ----

/// Longest any one step of the frame-aware tests may wait (accept, read, result).
const DEADLINE: Duration = Duration::from_secs(30);

/// How an upstream peer's reading ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    Eof,
    Reset,
    Other(std::io::ErrorKind),
}

/// What the upstream server read on its one connection: every read's bytes, and the end.
#[derive(Debug)]
struct Seen {
    reads: Vec<Vec<u8>>,
    end: End,
}

impl Seen {
    fn bytes(&self) -> Vec<u8> {
        self.reads.concat()
    }

    /// Stream offsets where reads ended (the last one is the stream's length).
    fn read_ends(&self) -> Vec<usize> {
        self.reads
            .iter()
            .scan(0, |at, r| {
                *at += r.len();
                Some(*at)
            })
            .collect()
    }
}

/// A one-connection upstream that records its reads (1 MiB buffer, so one read is what
/// the kernel had queued) until EOF or error; the recording comes through the receiver.
fn recording_upstream() -> (SocketAddr, std::sync::mpsc::Receiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let started = Instant::now();
        let mut s = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if started.elapsed() < DEADLINE => thread::sleep(Duration::from_millis(2)),
                Err(e) => panic!("no connection reached the upstream: {e}"),
            }
        };
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut reads = Vec::new();
        let end = loop {
            match s.read(&mut buf) {
                Ok(0) => break End::Eof,
                Ok(n) => reads.push(buf[..n].to_vec()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break End::Reset,
                Err(e) => break End::Other(e.kind()),
            }
        };
        let _ = tx.send(Seen { reads, end });
    });
    (addr, rx)
}

/// `payloads` as one `u32be` stream, with each frame's layout.
fn u32be_frames(payloads: &[Vec<u8>]) -> (Vec<u8>, Vec<chopstick_targets::wire::FrameLayout>) {
    let framing: chopstick_targets::wire::Framing = "u32be".parse().unwrap();
    let (stream, layouts) = framing.encode_all(payloads).unwrap();
    (stream.to_vec(), layouts)
}

/// Payloads of the given sizes, each byte telling its frame and position apart.
fn payloads(sizes: &[usize]) -> Vec<Vec<u8>> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| (0..n).map(|j| (i * 31 + j) as u8).collect())
        .collect()
}

/// Splits a `u32be` stream into its payloads; panics on a malformed or partial one.
fn u32be_payloads(mut stream: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !stream.is_empty() {
        let (head, rest) = stream.split_at(4);
        let n = u32::from_be_bytes(head.try_into().unwrap()) as usize;
        out.push(rest[..n].to_vec());
        stream = &rest[n..];
    }
    out
}

/// A running API with one proxy to `upstream` carrying the upstream-stream toxic
/// `toxic` (a JSON body for `POST /proxies/{name}/toxics`); the proxy's address.
fn proxy_with_toxic(upstream: SocketAddr, toxic: &str) -> (Chopstick, SocketAddr) {
    let chopstick = Chopstick::api();
    let (status, body) = http(
        chopstick.addr,
        "POST",
        "/proxies",
        &format!(r#"{{"name":"framed","upstream":"{upstream}","listen":"127.0.0.1:0"}}"#),
    );
    assert_eq!(status, 201, "{body}");
    let listen = json(&body)["listen"].as_str().unwrap().parse().unwrap();
    let (status, body) = http(chopstick.addr, "POST", "/proxies/framed/toxics", toxic);
    assert_eq!(status, 200, "{body}");
    eprintln!("toxic as shown back (its seed replays it): {body}");
    (chopstick, listen)
}

/// Writes each of `writes` through the proxy at `listen`, `gap` apart, then half-closes
/// and waits (bounded) until the proxy ends the connection; what the upstream read.
fn send_through(
    listen: SocketAddr,
    writes: &[Vec<u8>],
    gap: Duration,
    upstream: &std::sync::mpsc::Receiver<Seen>,
) -> Seen {
    let mut s = TcpStream::connect(listen).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    for (i, w) in writes.iter().enumerate() {
        if i > 0 {
            thread::sleep(gap);
        }
        // A proxy that already cut the connection may refuse the rest; the upstream's
        // reads tell what went through.
        if s.write_all(w).is_err() {
            break;
        }
    }
    let _ = s.shutdown(Shutdown::Write);
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    upstream
        .recv_timeout(DEADLINE)
        .expect("the upstream's connection ends within the deadline")
}

#[test]
fn split_toxic_with_framing_cuts_each_frame_into_separate_reads_and_delivers_it_byte_exact() {
    let (upstream, seen) = recording_upstream();
    // Ten small frames and one of 8 KiB: fine cuts of at most `max` bytes at every frame
    // edge, coarse ones (up to 64 KiB, split's default) inside the large body.
    let sizes = [0, 1, 3, 20, 8192, 5, 40, 2, 17, 9, 30];
    let sent = payloads(&sizes);
    let (stream, _) = u32be_frames(&sent);
    let (_api, listen) = proxy_with_toxic(
        upstream,
        r#"{"name":"cut","type":"split","stream":"upstream",
            "attributes":{"framing":"u32be","max":8,"pause_us":20000,"seed":11}}"#,
    );
    let seen = send_through(listen, std::slice::from_ref(&stream), Duration::ZERO, &seen);
    assert_eq!(seen.end, End::Eof, "the client's FIN is passed on");
    assert_eq!(seen.bytes(), stream, "the stream arrives byte-exact");
    assert_eq!(u32be_payloads(&seen.bytes()), sent, "every frame whole");
    let reads = seen.reads.len();
    eprintln!("split: {} bytes in {reads} reads", stream.len());
    // About 70 pieces of 1..=8 bytes lie near frame edges, 20 ms apart (a 3 ms gap is
    // within a starved reader's wake-up latency); a starved reader still merges some.
    assert!(reads >= 20, "pieces seen as separate reads: only {reads}");
    // Frame-aware: the middle of the large body goes coarse. Cut unframed at 8 bytes,
    // that body alone would take 1 000 reads (merging only lowers the count).
    assert!(
        reads < 8192 / 8,
        "{reads} reads: the large body was cut finely"
    );
}

#[test]
fn boundary_toxic_ends_every_read_at_a_frame_edge_cut() {
    let (upstream, seen) = recording_upstream();
    let sizes = [0, 1, 2, 5, 20, 40, 3, 17, 100, 9];
    let sent = payloads(&sizes);
    let (stream, layouts) = u32be_frames(&sent);
    let cuts = chopstick::chaos::faults::boundary::cuts(&layouts);
    let mut allowed: Vec<usize> = cuts.iter().map(|&(_, at)| at).collect();
    allowed.push(stream.len());
    let (_api, listen) = proxy_with_toxic(
        upstream,
        r#"{"name":"edges","type":"boundary","stream":"upstream",
            "attributes":{"framing":"u32be","all":true,"pause_us":20000,"seed":5}}"#,
    );
    let seen = send_through(listen, std::slice::from_ref(&stream), Duration::ZERO, &seen);
    assert_eq!(seen.end, End::Eof);
    assert_eq!(seen.bytes(), stream, "the stream arrives byte-exact");
    let ends = seen.read_ends();
    let stray: Vec<usize> = ends
        .iter()
        .copied()
        .filter(|e| !allowed.contains(e))
        .collect();
    eprintln!(
        "boundary: {} cuts planned, {} reads",
        cuts.len(),
        ends.len()
    );
    assert!(
        stray.is_empty(),
        "reads ended off the frame edges at {stray:?}; all: {ends:?}"
    );
    assert!(
        ends.len() >= sizes.len(),
        "{} reads for {} cuts: the frames were not cut",
        ends.len(),
        cuts.len()
    );
    // Header edges are among them: at least one read ends exactly where a body starts
    // or inside a length field (a receiver that assumes whole headers breaks there).
    let header_edges: Vec<usize> = layouts
        .iter()
        .flat_map(|f| f.length_field.start + 1..=f.body.start)
        .collect();
    assert!(
        ends.iter().any(|e| header_edges.contains(e)),
        "no read ended inside or at the end of a header: {ends:?}"
    );
}

#[test]
fn coalesce_toxic_merges_frames_sent_5_ms_apart_into_fewer_reads_at_frame_ends() {
    let (upstream, seen) = recording_upstream();
    let sent: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 8]).collect();
    let (stream, layouts) = u32be_frames(&sent);
    let writes: Vec<Vec<u8>> = layouts
        .iter()
        .map(|f| stream[f.start..f.end].to_vec())
        .collect();
    // partial=0: groups of whole frames only, so every read ends at a frame end. Held
    // 50 ms (default 12), well beyond the 5 ms gaps, so a starved sender still merges.
    let (_api, listen) = proxy_with_toxic(
        upstream,
        r#"{"name":"sticky","type":"coalesce","stream":"upstream",
            "attributes":{"framing":"u32be","partial":0,"hold_ms":50,"seed":3}}"#,
    );
    let seen = send_through(listen, &writes, Duration::from_millis(5), &seen);
    assert_eq!(seen.end, End::Eof);
    assert_eq!(seen.bytes(), stream, "the stream arrives byte-exact");
    let ends = seen.read_ends();
    eprintln!("coalesce: 40 frames sent 5 ms apart, {} reads", ends.len());
    assert!(
        ends.len() <= 30,
        "{} reads: frames were not merged",
        ends.len()
    );
    let frame_ends: Vec<usize> = layouts.iter().map(|f| f.end).collect();
    assert!(
        ends.iter().all(|e| frame_ends.contains(e)),
        "a read ended inside a frame: {ends:?}"
    );
}

#[test]
fn disconnect_toxic_delivers_whole_frames_then_cuts_inside_the_next_one() {
    let sizes = [6, 30, 0, 12, 50, 8, 25, 4];
    let sent = payloads(&sizes);
    let (stream, layouts) = u32be_frames(&sent);
    for (at, mode, end) in [
        ("mid-body", "close", End::Eof),
        ("mid-header", "reset", End::Reset),
        ("boundary", "close", End::Eof),
    ] {
        let (upstream, seen) = recording_upstream();
        let toxic = format!(
            r#"{{"name":"drop","type":"disconnect","stream":"upstream",
                "attributes":{{"framing":"u32be","mode":"{mode}","at":"{at}","seed":9}}}}"#
        );
        let (_api, listen) = proxy_with_toxic(upstream, &toxic);
        let seen = send_through(listen, std::slice::from_ref(&stream), Duration::ZERO, &seen);
        let got = seen.bytes();
        eprintln!(
            "disconnect {at} {mode}: {} of {} bytes, {:?}",
            got.len(),
            stream.len(),
            seen.end
        );
        assert_eq!(seen.end, end, "{at} {mode}: the connection ends as asked");
        assert_eq!(got, stream[..got.len()], "{at}: what arrived is a prefix");
        // The frame the cut fell in, and how far into it.
        let cut = got.len();
        let whole = layouts.iter().filter(|f| f.end <= cut).count();
        let next = layouts.get(whole);
        match at {
            "mid-body" => {
                let f = next.expect("a frame was cut");
                assert!(
                    cut > f.body.start && cut < f.end,
                    "{cut} is not inside the body {:?}",
                    f.body
                );
            }
            "mid-header" => {
                let f = next.expect("a frame was cut");
                assert!(
                    cut > f.start && cut < f.body.start,
                    "{cut} is not inside the header {:?}",
                    f.header()
                );
            }
            _ => assert!(
                cut == 0 || layouts.iter().any(|f| f.end == cut),
                "{cut} is not between frames"
            ),
        }
        // Everything before the cut's frame is whole frames, byte-exact.
        let before = layouts[..whole].last().map_or(0, |f| f.end);
        assert_eq!(u32be_payloads(&got[..before]), sent[..whole]);
    }
}

/// A toxic added and removed over and over on both streams switches each direction
/// between the plain relay and the queued toxic path, mid-stream: every byte must still
/// arrive once and in order (a switch that dropped the queue, or read ahead of it,
/// would lose or reorder bytes), and the connection must stay open throughout.
#[test]
fn toxics_coming_and_going_lose_and_reorder_no_byte() {
    let chopstick = Chopstick::api();
    let api = chopstick.addr;
    let upstream = server(echo);
    let (status, body) = http(
        api,
        "POST",
        "/proxies",
        &format!(r#"{{"name":"churn","upstream":"{upstream}","listen":"127.0.0.1:0"}}"#),
    );
    assert_eq!(status, 201, "{body}");
    let listen: SocketAddr = json(&body)["listen"].as_str().unwrap().parse().unwrap();

    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let made = std::sync::Arc::new(AtomicU32::new(0));
    let churn = {
        let (stop, made) = (stop.clone(), made.clone());
        thread::spawn(move || {
            let mut changes = 0u32;
            // Bounded even if the main thread never stops it.
            while !stop.load(Ordering::Relaxed) && changes < 4_000 {
                let stream = if changes % 4 < 2 {
                    "upstream"
                } else {
                    "downstream"
                };
                let toxic = format!(
                    r#"{{"name":"t","type":"latency","stream":"{stream}","attributes":{{"latency":1}}}}"#
                );
                let (status, body) = if changes % 2 == 0 {
                    http(api, "POST", "/proxies/churn/toxics", &toxic)
                } else {
                    http(api, "DELETE", "/proxies/churn/toxics/t", "")
                };
                assert!(status == 200 || status == 204, "{status} {body}");
                changes += 1;
                made.store(changes, Ordering::Relaxed);
            }
            changes
        })
    };
    // Each pause of the writer lasts until the next toxic change (bounded), so changes
    // fall between writes however the machine schedules the two threads.
    let next_change = |seen: &mut u32| {
        let until = Instant::now() + Duration::from_millis(100);
        while made.load(Ordering::Relaxed) == *seen && Instant::now() < until {
            thread::sleep(Duration::from_millis(1));
        }
        *seen = made.load(Ordering::Relaxed);
    };

    let mut s = TcpStream::connect(listen).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let sent: Vec<u8> = (0..2u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut seen = 0;
    next_change(&mut seen);
    let during_from = seen;
    let (got, during) = thread::scope(|scope| {
        let mut w = s.try_clone().unwrap();
        let sent = &sent;
        let writer = scope.spawn(move || {
            // Writes of varying sizes, some paced, so chunks are in flight at every switch.
            let (mut at, mut k) = (0usize, 0usize);
            while at < sent.len() {
                let n = [1usize, 700, 4096, 65_536, 13][k % 5].min(sent.len() - at);
                w.write_all(&sent[at..at + n]).unwrap();
                at += n;
                k += 1;
                if k % 3 == 0 {
                    next_change(&mut seen);
                }
            }
            seen
        });
        let mut got = vec![0u8; sent.len()];
        s.read_exact(&mut got)
            .expect("every byte comes back through the proxy within the deadline");
        (got, writer.join().unwrap() - during_from)
    });
    stop.store(true, Ordering::Relaxed);
    let changes = churn.join().unwrap();
    let first_bad = got.iter().zip(&sent).position(|(a, b)| a != b);
    assert_eq!(first_bad, None, "bytes differ from offset {first_bad:?}");
    // Each change answers within the HTTP timeout, so the bounded waits above saw some.
    assert!(
        during >= 1,
        "no toxic change while the bytes were in flight"
    );
    eprintln!("{during} of {changes} toxic changes while 2 MiB went through and back");
}
