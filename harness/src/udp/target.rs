//! The UDP server under test: an address, or a command chopstick starts itself with a
//! free UDP port in place of `{port}`. UDP has no accept to wait for, so readiness is
//! a probe datagram answered (any answer will do).

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::process::{Child, Command};

use crate::campaign::process::capture_tail;

/// How long a spawned target gets to answer its first probe.
pub const STARTUP: Duration = Duration::from_secs(15);
/// Receive buffer for the probe's answer: the largest datagram there is.
const PROBE_REPLY_BUF: usize = 65_536;
/// The probe: a request no check ever sends (tag `ffffffff`).
pub const PROBE: &[u8] = b"#ffffffff# probe";

/// Where the target comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum UdpTarget {
    Connect(SocketAddr),
    /// A command line with `{port}`; split on whitespace, '...' and "..." group words.
    Spawn(String),
}

impl std::fmt::Display for UdpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UdpTarget::Connect(a) => write!(f, "udp://{a}"),
            UdpTarget::Spawn(cmd) => write!(f, "spawn `{cmd}`"),
        }
    }
}

/// Why the target cannot be used at all (a usage error, exit code 2).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UdpTargetError {
    #[error("{0} is not loopback; chopstick only sends traffic to this machine")]
    NotLoopback(SocketAddr),
    #[error("bad --spawn command: {0}")]
    BadCommand(String),
    #[error("cannot start `{cmd}`: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("`{cmd}` exited ({status}) before answering; stderr:\n{stderr}")]
    DiedAtStart {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("{target} did not answer a probe datagram on {addr} within {STARTUP:?}")]
    NotAnswering { target: String, addr: SocketAddr },
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
}

/// A running (or connected) target. A spawned child is killed when this is dropped.
#[derive(Debug)]
pub struct RunningTarget {
    pub addr: SocketAddr,
    child: Option<Child>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

/// Splits a command line like `check --spawn` does (see [`crate::campaign::target::split_command`]).
pub fn split_command(cmd: &str) -> Result<Vec<String>, UdpTargetError> {
    crate::campaign::target::split_command(cmd).map_err(|e| UdpTargetError::BadCommand(e.0))
}

impl RunningTarget {
    /// Connects to or starts `spec`, and waits until it answers a probe.
    pub async fn start(spec: &UdpTarget) -> Result<RunningTarget, UdpTargetError> {
        let mut t = match spec {
            UdpTarget::Connect(addr) if !addr.ip().is_loopback() => {
                return Err(UdpTargetError::NotLoopback(*addr))
            }
            UdpTarget::Connect(addr) => RunningTarget {
                addr: *addr,
                child: None,
                stderr: Arc::default(),
            },
            UdpTarget::Spawn(cmd) => {
                // Bind-and-release: the port is free now; a race with another process
                // taking it shows up as a target that never answers.
                let port = std::net::UdpSocket::bind("127.0.0.1:0")?
                    .local_addr()?
                    .port();
                let words: Vec<String> = split_command(cmd)?
                    .into_iter()
                    .map(|w| w.replace("{port}", &port.to_string()))
                    .collect();
                let mut child = Command::new(&words[0])
                    .args(&words[1..])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true)
                    // Its own process group, killed whole (see `Drop`).
                    .process_group(0)
                    .spawn()
                    .map_err(|source| UdpTargetError::Spawn {
                        cmd: cmd.clone(),
                        source,
                    })?;
                let stderr: Arc<Mutex<Vec<u8>>> = Arc::default();
                if let Some(pipe) = child.stderr.take() {
                    tokio::spawn(capture_tail(pipe, stderr.clone()));
                }
                RunningTarget {
                    addr: SocketAddr::from(([127, 0, 0, 1], port)),
                    child: Some(child),
                    stderr,
                }
            }
        };
        t.wait_ready(spec).await?;
        Ok(t)
    }

    async fn wait_ready(&mut self, spec: &UdpTarget) -> Result<(), UdpTargetError> {
        let probe = UdpSocket::bind("127.0.0.1:0").await?;
        let start = Instant::now();
        let mut buf = vec![0u8; PROBE_REPLY_BUF];
        while start.elapsed() < STARTUP {
            if let Some(child) = &mut self.child {
                if let Ok(Some(status)) = child.try_wait() {
                    // Give the stderr reader a moment to collect the last words.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return Err(UdpTargetError::DiedAtStart {
                        cmd: match spec {
                            UdpTarget::Spawn(c) => c.clone(),
                            UdpTarget::Connect(a) => a.to_string(),
                        },
                        status: status.to_string(),
                        stderr: self.stderr(),
                    });
                }
            }
            let _ = probe.send_to(PROBE, self.addr).await;
            if let Ok(Ok((_, from))) =
                tokio::time::timeout(Duration::from_millis(100), probe.recv_from(&mut buf)).await
            {
                if from == self.addr {
                    return Ok(());
                }
            }
        }
        Err(UdpTargetError::NotAnswering {
            target: spec.to_string(),
            addr: self.addr,
        })
    }

    /// What a spawned target wrote to stderr (the last 64 KiB, as `check --spawn` keeps).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Stops a spawned target and its process group, and waits for it (bounded).
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pgid) = child.id() {
                crate::campaign::target::kill_group(pgid);
            }
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        }
    }
}

impl Drop for RunningTarget {
    fn drop(&mut self) {
        // `kill_on_drop` reaches the child only; its group goes here.
        if let Some(pgid) = self.child.as_ref().and_then(Child::id) {
            crate::campaign::target::kill_group(pgid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_split_like_a_shell_without_one() {
        assert_eq!(
            split_command("python3 'my dir/x.py' {port}").unwrap(),
            ["python3", "my dir/x.py", "{port}"]
        );
        assert!(split_command("  ").is_err());
        assert!(split_command("a 'b").is_err());
    }
}
