//! `chopstick serve` as a user runs it: a real child process, its first stdout line,
//! real sockets, and a graceful exit on SIGTERM/SIGINT. Also the refusals a user can
//! hit: exec/file on a non-loopback address, a missing key, a missing root; and how an
//! error with a cause reads.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

const DEADLINE: Duration = Duration::from_secs(20);
const KEY: &str = "cli test key";

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chopstick() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chopstick"));
    cmd.arg("serve")
        .env_remove("CHOPSTICK_KEY")
        .env("NO_COLOR", "1");
    cmd
}

/// Starts `cmd` and returns it with the address it announced on its first stdout line
/// (waiting at most DEADLINE for that line).
fn spawn(mut cmd: Command) -> (Server, SocketAddr) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn chopstick");
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(DEADLINE)
        .expect("no `listening on` line in time");
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line was {line:?}"))
        .trim()
        .parse()
        .unwrap();
    (server, addr)
}

/// Starts `chopstick serve ARGS` (stderr discarded).
fn serve(args: &[&str]) -> (Server, SocketAddr) {
    let mut cmd = chopstick();
    cmd.args(args).stderr(Stdio::null());
    spawn(cmd)
}

/// Runs `chopstick serve ARGS`, which must exit on its own within DEADLINE.
fn run_to_exit(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chopstick");
    wait_exit(&mut child);
    child.wait_with_output().unwrap()
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(start.elapsed() < DEADLINE, "server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(server: &Server, sig: i32) {
    // SAFETY: plain kill(2) on our own, not yet reaped, child's pid.
    unsafe { libc::kill(server.0.id() as i32, sig) };
}

/// Asserts a usage-style refusal: exit code 2, `needle` on stderr, and no
/// `listening on` line (the port is never announced for a server that will not serve).
fn assert_refused(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains(needle),
        "stderr {stderr:?} does not mention {needle:?}"
    );
    assert!(
        !stdout.contains("listening on"),
        "announced a port it does not serve: {stdout:?}"
    );
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Reads until EOF (or a reset); a read timeout fails the test.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("server did not close: {e}"),
    }
    rest
}

/// Sends SIGTERM and returns everything the server wrote to stderr.
fn stop_and_collect_stderr(mut server: Server, mut stderr: ChildStderr) -> String {
    signal(&server, libc::SIGTERM);
    let status = wait_exit(&mut server.0);
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    let mut text = String::new();
    stderr.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn serve_echo_announces_its_port_answers_and_exits_on_sigterm() {
    let (server, addr) = serve(&["echo", "--transform", "upper"]);
    assert!(
        addr.ip().is_loopback(),
        "default listen address is loopback"
    );
    let mut s = connect(addr);
    s.write_all(b"\x00\x00\x00\x05hello").unwrap();
    let mut reply = [0u8; 9];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"\x00\x00\x00\x05HELLO");
    let mut server = server;
    signal(&server, libc::SIGTERM);
    let status = wait_exit(&mut server.0);
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
}

#[test]
fn serve_exits_0_on_sigint_too() {
    let (mut server, addr) = serve(&["echo"]);
    // An open connection must not keep the server from stopping.
    let mut s = connect(addr);
    s.write_all(b"\x00\x00\x00\x01x").unwrap();
    let mut reply = [0u8; 5];
    s.read_exact(&mut reply).unwrap();
    signal(&server, libc::SIGINT);
    let status = wait_exit(&mut server.0);
    assert!(status.success(), "SIGINT exits 0, got {status}");
    assert!(read_to_close(&mut s).is_empty());
}

#[test]
fn serve_with_bad_framing_is_a_usage_error() {
    let mut cmd = chopstick();
    cmd.args(["echo", "--framing", "u24be"]);
    let out = run_to_exit(cmd);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown framing `u24be`"));
}

#[test]
fn exec_on_a_non_loopback_address_is_refused() {
    let mut cmd = chopstick();
    cmd.args(["exec", "--listen", "0.0.0.0:0"]);
    assert_refused(&run_to_exit(cmd), "exec serves only loopback addresses");
}

#[test]
fn file_on_a_non_loopback_address_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = chopstick();
    cmd.args(["file", "--listen", "0.0.0.0:0", "--root"])
        .arg(dir.path());
    assert_refused(&run_to_exit(cmd), "file serves only loopback addresses");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn file_with_a_missing_root_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir");
    let mut cmd = chopstick();
    cmd.args(["file", "--root"]).arg(&missing);
    assert_refused(&run_to_exit(cmd), "no-such-dir");
    assert!(!missing.exists(), "the root is not created behind our back");
}

#[test]
fn auth_without_a_key_file_or_env_key_is_refused() {
    let mut cmd = chopstick();
    cmd.args(["auth"]);
    assert_refused(&run_to_exit(cmd), "CHOPSTICK_KEY");
}

#[test]
fn auth_with_a_missing_inner_root_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = chopstick();
    cmd.args(["auth", "--inner", "file", "--root"])
        .arg(dir.path().join("absent"))
        .env("CHOPSTICK_KEY", KEY);
    assert_refused(&run_to_exit(cmd), "absent");
}

/// One hjson frame: u32be header length, JSON header (with `size`), body.
fn hjson(mut header: serde_json::Value, body: &[u8]) -> Vec<u8> {
    header["size"] = body.len().into();
    let header = serde_json::to_vec(&header).unwrap();
    let mut out = (header.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(body);
    out
}

fn read_hjson(s: &mut TcpStream) -> (serde_json::Value, Vec<u8>) {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut header = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut header).unwrap();
    let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
    let mut body = vec![0u8; header["size"].as_u64().unwrap() as usize];
    s.read_exact(&mut body).unwrap();
    (header, body)
}

/// The client side of the auth handshake; returns the verdict byte.
fn handshake(s: &mut TcpStream, key: &[u8]) -> u8 {
    let mut nonce = [0u8; 32];
    s.read_exact(&mut nonce).unwrap();
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
    mac.update(&nonce);
    s.write_all(&mac.finalize().into_bytes()).unwrap();
    let mut verdict = [0u8; 1];
    s.read_exact(&mut verdict).unwrap();
    verdict[0]
}

#[test]
fn auth_inner_file_may_listen_on_all_interfaces_with_the_key_from_the_env() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = chopstick();
    cmd.args(["auth", "--inner", "file", "--listen", "0.0.0.0:0", "--root"])
        .arg(dir.path())
        .env("CHOPSTICK_KEY", KEY)
        .stderr(Stdio::null());
    let (mut server, addr) = spawn(cmd);
    assert!(addr.ip().is_unspecified(), "bound to {addr}");
    let local: SocketAddr = ([127, 0, 0, 1], addr.port()).into();

    let mut s = connect(local);
    assert_eq!(handshake(&mut s, KEY.as_bytes()), 1, "right key accepted");
    let body = b"stored behind auth";
    let sha = hex::encode(Sha256::digest(body));
    s.write_all(&hjson(
        serde_json::json!({"op": "put", "name": "d/f.txt", "sha256": sha}),
        body,
    ))
    .unwrap();
    let (reply, _) = read_hjson(&mut s);
    assert_eq!(reply["ok"], true, "{reply}");
    s.write_all(&hjson(
        serde_json::json!({"op": "get", "name": "d/f.txt"}),
        b"",
    ))
    .unwrap();
    let (reply, got) = read_hjson(&mut s);
    assert_eq!(
        (reply["sha256"].as_str(), &got[..]),
        (Some(&sha[..]), &body[..])
    );
    assert_eq!(std::fs::read(dir.path().join("d/f.txt")).unwrap(), body);
    drop(s);

    let mut wrong = connect(local);
    assert_eq!(
        handshake(&mut wrong, b"not the key"),
        0,
        "wrong key rejected"
    );
    assert!(read_to_close(&mut wrong).is_empty());

    // The key is nowhere on the command line.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", server.0.id())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(KEY));

    signal(&server, libc::SIGTERM);
    assert!(wait_exit(&mut server.0).success());
}

/// A hostile length closes only that connection, and the reason is logged to stderr.
#[test]
fn hostile_lengths_are_logged_with_their_reason() {
    for (framing, header, reason) in [
        (
            "u32be",
            0xFFFF_FFFFu32.to_be_bytes(),
            "frame length 4294967295 exceeds the maximum",
        ),
        ("i32le", (-1i32).to_le_bytes(), "negative frame length -1"),
        (
            "i32le",
            i32::MIN.to_le_bytes(),
            "negative frame length -2147483648",
        ),
    ] {
        let mut cmd = chopstick();
        cmd.args(["echo", "--framing", framing])
            .stderr(Stdio::piped());
        let (mut server, addr) = spawn(cmd);
        let stderr = server.0.stderr.take().unwrap();
        let mut s = connect(addr);
        s.write_all(&header).unwrap();
        assert!(read_to_close(&mut s).is_empty(), "{framing}: no reply");
        // Still serving.
        let mut s = connect(addr);
        let mut frame = if framing == "u32be" {
            2u32.to_be_bytes().to_vec()
        } else {
            2i32.to_le_bytes().to_vec()
        };
        frame.extend_from_slice(b"ok");
        s.write_all(&frame).unwrap();
        let mut reply = [0u8; 6];
        s.read_exact(&mut reply).unwrap();
        assert_eq!(reply[..], frame[..], "{framing}");
        drop(s);
        let log = stop_and_collect_stderr(server, stderr);
        assert!(
            log.contains("connection aborted") && log.contains(reason),
            "{framing}: reason {reason:?} not logged in {log:?}"
        );
    }
}

/// `serve file` as the README shows it, driven like its Python example.
#[test]
fn serve_file_round_trip_and_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = chopstick();
    cmd.args(["file", "--root"])
        .arg(dir.path())
        .stderr(Stdio::null());
    let (_server, addr) = spawn(cmd);
    let mut s = connect(addr);
    let sha = hex::encode(Sha256::digest(b"hi"));
    s.write_all(&hjson(
        serde_json::json!({"op": "put", "name": "notes/a.txt", "sha256": sha}),
        b"hi",
    ))
    .unwrap();
    assert_eq!(read_hjson(&mut s).0["ok"], true);
    s.write_all(&hjson(serde_json::json!({"op": "list"}), b""))
        .unwrap();
    let (list, _) = read_hjson(&mut s);
    assert_eq!(
        list["files"],
        serde_json::json!([{"name": "notes/a.txt", "bytes": 2, "sha256": sha}])
    );
    s.write_all(&hjson(
        serde_json::json!({"op": "get", "name": "nope"}),
        b"",
    ))
    .unwrap();
    let (reply, _) = read_hjson(&mut s);
    assert_eq!(reply["ok"], false);
    assert!(file_exists(dir.path(), "notes/a.txt"));
}

fn file_exists(root: &Path, name: &str) -> bool {
    root.join(name).is_file()
}

#[test]
fn an_error_says_its_cause_once() {
    let missing = std::env::temp_dir().join("chopstick-no-such-reproducer.json");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chopstick"));
    cmd.arg("replay").arg(&missing);
    let out = run_to_exit(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("cannot read"), "{stderr:?}");
    assert_eq!(
        stderr.matches("os error 2").count(),
        1,
        "the cause is said once: {stderr:?}"
    );
}
