//! Child processes chopstick starts (`--spawn` servers, `--client` clients): their
//! command lines, split without a shell, and the tail of their stderr.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;

/// Most stderr kept from a started process (the tail is what matters).
const STDERR_CAP: usize = 64 * 1024;
/// Lines of stderr quoted in failures.
const STDERR_TAIL_LINES: usize = 20;

/// A `--spawn` or `--client` command line that cannot be split into words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad command line: {0}")]
pub struct BadCommand(pub String);

/// Splits a command line into words as a POSIX shell would ('...', "...", `\` escapes;
/// `shell_words::join` of the words gives them back). No shell is run.
pub fn split_command(cmd: &str) -> Result<Vec<String>, BadCommand> {
    let words = shell_words::split(cmd).map_err(|e| BadCommand(format!("{e} in `{cmd}`")))?;
    if words.is_empty() {
        return Err(BadCommand("empty command".into()));
    }
    Ok(words)
}

/// Reads a child's stderr into `sink` until it closes, keeping the last
/// [`STDERR_CAP`] bytes.
pub(crate) async fn capture_tail(mut err: impl AsyncReadExt + Unpin, sink: Arc<Mutex<Vec<u8>>>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = err.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let mut s = sink.lock().expect("stderr lock");
        s.extend_from_slice(&buf[..n]);
        if s.len() > STDERR_CAP {
            let cut = s.len() - STDERR_CAP;
            s.drain(..cut);
        }
    }
}

/// The last [`STDERR_TAIL_LINES`] lines of captured output.
pub(crate) fn tail_lines(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n")
}

/// Most processes [`process_tree`] lists (a started process and its descendants).
const MAX_TREE: usize = 64;

/// Whether the loopback IPv4 connection from `peer` to `local` is held by process `pid`
/// or one of its descendants, read from Linux's `/proc` (`/proc/net/tcp` gives the
/// socket's inode, `/proc/PID/fd` who holds it). `None` where `/proc` cannot tell.
///
/// A listener on a free port can be reached by anyone on the machine (another
/// program's "is the server up yet?" probe to a port it just freed, say): this tells
/// the client started for a case from a stranger.
pub fn owns_connection(pid: u32, local: SocketAddr, peer: SocketAddr) -> Option<bool> {
    let (SocketAddr::V4(local), SocketAddr::V4(peer)) = (local, peer) else {
        return None;
    };
    let hex = |a: std::net::SocketAddrV4| format!("{}:{:04X}", hex_ip(a.into()), a.port());
    let (theirs, ours) = (hex(peer), hex(local));
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && f[1] == theirs && f[2] == ours).then(|| f[9].to_string())
    })?;
    let socket = format!("socket:[{inode}]");
    let holds = |p: u32| {
        std::fs::read_dir(format!("/proc/{p}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == socket.as_str()))
    };
    Some(process_tree(pid)?.into_iter().any(holds))
}

/// An address as `/proc/net/tcp{,6}` prints it: 32-bit words in host (little-endian)
/// byte order, in hex.
pub(crate) fn hex_ip(addr: SocketAddr) -> String {
    let octets: Vec<u8> = match addr {
        SocketAddr::V4(a) => a.ip().octets().to_vec(),
        SocketAddr::V6(a) => a.ip().octets().to_vec(),
    };
    octets
        .chunks(4)
        .map(|w| format!("{:08X}", u32::from_le_bytes([w[0], w[1], w[2], w[3]])))
        .collect()
}

/// `pid` and its descendants (at most `MAX_TREE`, 64), from `/proc/PID/task/*/children`;
/// `None` if the tree is larger. A process that exits meanwhile is simply missing.
pub fn process_tree(pid: u32) -> Option<Vec<u32>> {
    let mut tree = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        if tree.len() == MAX_TREE {
            return None;
        }
        tree.push(p);
        for task in std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(kids) = std::fs::read_to_string(task.path().join("children")) {
                todo.extend(
                    kids.split_whitespace()
                        .filter_map(|k| k.parse::<u32>().ok()),
                );
            }
        }
    }
    Some(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_told_apart_from_a_strangers() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let mine = std::net::TcpStream::connect(local).unwrap();
        let (_accepted, peer) = listener.accept().unwrap();
        assert_eq!(mine.local_addr().unwrap(), peer);
        if let Some(owned) = owns_connection(std::process::id(), local, peer) {
            assert!(owned);
            // A process of our own that does not hold the socket.
            let mut other = std::process::Command::new("sleep")
                .arg("5")
                .spawn()
                .unwrap();
            let held = owns_connection(other.id(), local, peer);
            let _ = other.kill();
            let _ = other.wait();
            assert_eq!(held, Some(false));
        }
    }

    #[test]
    fn splits_like_a_user_expects_without_a_shell() {
        assert_eq!(
            split_command("python3 srv.py {port}").unwrap(),
            ["python3", "srv.py", "{port}"]
        );
        assert_eq!(
            split_command(r#"a 'b c' "d e"f"#).unwrap(),
            ["a", "b c", "d ef"]
        );
        assert_eq!(split_command("a ''").unwrap(), ["a", ""]);
        assert!(split_command("a 'b").is_err());
        assert!(split_command("   ").is_err());
    }

    #[test]
    fn quotes_and_escapes_round_trip_through_a_shell_quoted_join() {
        assert_eq!(
            split_command(r#"srv --name my\ server 'it'\''s' "a \"b\"" {port}"#).unwrap(),
            ["srv", "--name", "my server", "it's", "a \"b\"", "{port}"]
        );
        let words = [
            "python3",
            "dir with space/x.py",
            "it's",
            "$HOME",
            "a\\b",
            "{port}",
        ];
        let line = shell_words::join(words);
        assert_eq!(split_command(&line).unwrap(), words);
    }
}
