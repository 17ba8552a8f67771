//! The real `chopstick serve` binary attacked from outside (issue 13): killed with
//! SIGKILL while children run, its environment read through /proc, exec's children
//! asked for files outside their sandbox, stopped with SIGTERM while requests are in
//! flight. Real processes, real loopback sockets; every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(20);

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `chopstick serve ARGS` with `env` and returns it with its announced address.
fn serve(args: &[&str], env: &[(&str, &str)]) -> (Server, SocketAddr) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chopstick"));
    cmd.arg("serve")
        .args(args)
        .env_remove("CHOPSTICK_KEY")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn chopstick");
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(DEADLINE).expect("no `listening on` line");
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line was {line:?}"))
        .trim()
        .parse()
        .unwrap();
    (server, addr)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s
}

fn hjson(mut header: serde_json::Value, body: &[u8]) -> Vec<u8> {
    header["size"] = body.len().into();
    let header = serde_json::to_vec(&header).unwrap();
    let mut out = (header.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(body);
    out
}

fn read_hjson(s: &mut impl Read) -> (serde_json::Value, Vec<u8>) {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut header = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut header).unwrap();
    let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
    let mut body = vec![0u8; header["size"].as_u64().unwrap() as usize];
    s.read_exact(&mut body).unwrap();
    (header, body)
}

fn exec_request(argv: &[&str]) -> Vec<u8> {
    hjson(serde_json::json!({ "argv": argv }), b"")
}

/// `/proc/PID/stat` fields after `(comm)`: state is [0], ppid [1].
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().map(String::from).collect())
}

/// Live (not zombie) processes whose command line is exactly `argv`.
fn live_procs(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv.iter().flat_map(|a| [a.as_bytes(), b"\0"].concat()).collect();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).ok().as_deref() == Some(&want[..])
                && stat_fields(*pid).is_some_and(|f| f[0] != "Z")
        })
        .collect()
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kill_9_of_serve_exec_leaves_no_child_alive() {
    let (mut server, addr) = serve(&["exec", "--allow", "sleep", "--timeout", "120"], &[]);
    let argv = ["sleep", "97.531"];
    let conns: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = connect(addr);
            s.write_all(&exec_request(&argv)).unwrap();
            s
        })
        .collect();
    wait_until("three children running", || live_procs(&argv).len() == 3);
    server.0.kill().unwrap(); // SIGKILL: no handler, no cleanup code runs.
    server.0.wait().unwrap();
    wait_until("every child gone after the server's SIGKILL", || {
        live_procs(&argv).is_empty()
    });
    drop(conns);
}
