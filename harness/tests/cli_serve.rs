//! `chopstick serve` as a user runs it: a real child process, its first stdout line,
//! real sockets, and a graceful exit on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(20);

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `chopstick serve ARGS` and returns it with the address it announced.
fn serve(args: &[&str]) -> (Server, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chopstick"))
        .arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chopstick");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line was {line:?}"))
        .trim()
        .parse()
        .unwrap();
    (Server(child), addr)
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

#[test]
fn serve_echo_announces_its_port_answers_and_exits_on_sigterm() {
    let (mut server, addr) = serve(&["echo", "--transform", "upper"]);
    assert!(
        addr.ip().is_loopback(),
        "default listen address is loopback"
    );
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"\x00\x00\x00\x05hello").unwrap();
    let mut reply = [0u8; 9];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"\x00\x00\x00\x05HELLO");
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) };
    let status = wait_exit(&mut server.0);
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
}

#[test]
fn serve_with_bad_framing_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_chopstick"))
        .args(["serve", "echo", "--framing", "u24be"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown framing `u24be`"));
}
