//! `chopstick proxy --api`: the Toxiproxy HTTP API driven by the real Toxiproxy clients
//! (toxiproxy-python from PyPI, toxiproxy-node-client from npm, installed by ci/run),
//! by raw HTTP, and the relay acceptance points of `--faults coalesce` / `split`.
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
            "coalesce",
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
