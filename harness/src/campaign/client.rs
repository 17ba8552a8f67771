//! `check --client`: the receiver under test is a *client*. chopstick listens, starts
//! the client command with `{port}` filled, accepts its one connection and then drives
//! that socket exactly as it drives a server's: the same messages, plans, oracles,
//! shrinking and reproducers. Only two steps differ, and they live here:
//!
//! - **open**: bind a fresh loopback listener, start the client (stderr captured, and
//!   stdout with `--client-output lines-hex`), accept within [`ACCEPT_WAIT`] — or report
//!   that it exited first (with its stderr) or never connected;
//! - **settle** (a client's liveness): once the connection has ended, the client must
//!   exit within the case's liveness deadline; [`verdict`] combines that with the echoes.
//!
//! The client's contract mirrors an echo server's:
//!
//! ```text
//!  chopstick                               client under test
//!  listen 127.0.0.1:P  ── start `CMD P` ──▶ connects to P
//!  frames, cut per plan ─────────────────▶ its receiver delivers whole messages
//!  echoes (same framing) ◀──────────────── one frame per message (or a hex line on stdout)
//!  FIN (or the plan's close / reset) ────▶ exits: 0 after a clean end, any status after a cut
//! ```
//!
//! What is judged (see [`verdict`]):
//! - the echoes (or stdout lines) must be exactly the messages wholly sent before any
//!   cut, in order: a short, corrupted, repeated or extra ("phantom") one fails with the
//!   oracle's class. After our own RST only a prefix can be demanded (the kernel may
//!   drop what the client had not read yet), after a FIN all of them;
//! - the client must exit within `liveness` after the connection ends; one still
//!   running is a `hang` (killed, stderr reported);
//! - after a clean end (no cut) it must exit with status 0; otherwise, or when it exits
//!   before echoing what was due, it is `client_crashed`, with its exit status and stderr.
//!   After a cut any exit status is fine: a nonzero exit is how a client reports the error.

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::judge::{End, Failure, FailureClass, Seen};
use super::payload::preview;
use super::process::{capture_tail, owns_connection, split_command, tail_lines, BadCommand};
use super::{CaseConfig, CaseResult};
use crate::chaos::Ending;

/// How long a started client gets to connect.
pub const ACCEPT_WAIT: Duration = Duration::from_secs(15);
/// How long stdout and stderr may still flow after the client exited (a grandchild
/// holding a pipe open must not stall the case).
const PIPE_DRAIN: Duration = Duration::from_secs(1);
/// Room in the stdout cap beyond the hex of every message sent (newlines, slack).
const STDOUT_SLACK_BYTES: usize = 64 * 1024;

/// How a client hands back what it received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientOutput {
    /// Each received message is sent back on the socket, framed the same way.
    #[default]
    Echo,
    /// Each received message is printed on stdout as one line of hex (empty line for an
    /// empty message); nothing is sent back.
    LinesHex,
}

/// Why a client could not be started and connected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error(transparent)]
    BadCommand(#[from] BadCommand),
    #[error("cannot listen on loopback: {0}")]
    Listen(std::io::Error),
    #[error("cannot start it: {0}")]
    Spawn(std::io::Error),
    #[error("the client exited ({status}) before connecting; stderr:\n{stderr}")]
    Exited { status: String, stderr: String },
    #[error("the client did not connect to {addr} within {ACCEPT_WAIT:?}; stderr:\n{stderr}")]
    NoConnect { addr: SocketAddr, stderr: String },
}

impl OpenError {
    /// The same, as the failure of one case.
    pub fn into_failure(self) -> Failure {
        let class = match self {
            OpenError::NoConnect { .. } => FailureClass::Hang,
            _ => FailureClass::ClientCrashed,
        };
        Failure::new(class, None, self.to_string())
    }
}

/// What a client printed on stdout, up to a cap.
#[derive(Debug, Default)]
struct Captured {
    bytes: Vec<u8>,
    overflow: bool,
}

/// One started client.
#[derive(Debug)]
struct Running {
    child: Child,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// Ends when the client's stderr closes.
    stderr_task: Option<JoinHandle<()>>,
    stdout: Option<JoinHandle<Captured>>,
}

impl Running {
    /// Waits (bounded) until everything the exited client wrote to stderr is captured.
    async fn drain_stderr(&mut self) {
        if let Some(mut task) = self.stderr_task.take() {
            if tokio::time::timeout(PIPE_DRAIN, &mut task).await.is_err() {
                task.abort();
            }
        }
    }
}

/// What came first while waiting for a started client.
enum Accepted {
    Conn(std::io::Result<(TcpStream, SocketAddr)>),
    /// It exited (the status as printed).
    Exited(String),
    TimedOut,
}

/// How a client's process ended, once its connection had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Success,
    /// Nonzero status or a signal (the status as printed).
    Failed(String),
    /// Still running after the deadline (it was killed).
    StillRunning,
}

/// What [`ClientTarget::settle`] found.
#[derive(Debug)]
pub struct Settled {
    pub exit: Exit,
    pub stderr: String,
    /// `--client-output lines-hex`: the messages printed, and how the output ended.
    pub printed: Option<Seen>,
}

/// A client command, started afresh for every case.
#[derive(Debug)]
pub struct ClientTarget {
    cmd: String,
    pub output: ClientOutput,
    running: Option<Running>,
    /// Clients started so far.
    pub starts: u32,
}

impl ClientTarget {
    /// Checks that the command splits into words (nothing is started yet).
    pub fn new(cmd: &str, output: ClientOutput) -> Result<ClientTarget, BadCommand> {
        split_command(cmd)?;
        Ok(ClientTarget {
            cmd: cmd.to_string(),
            output,
            running: None,
            starts: 0,
        })
    }

    /// Pre-flight: the client starts and connects; the connection is then closed at a
    /// frame boundary (no messages) and the client stopped.
    pub async fn preflight(&mut self) -> Result<(), OpenError> {
        let sock = self.open(0).await?;
        drop(sock);
        self.kill().await;
        Ok(())
    }

    /// Starts the client on a fresh port and accepts its connection. `sent` is the
    /// length of the request stream (it bounds what the client may print).
    pub async fn open(&mut self, sent: usize) -> Result<TcpStream, OpenError> {
        self.kill().await;
        // A fresh listener per case: a connection left over from an earlier client can
        // never be taken for this one's.
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(OpenError::Listen)?;
        let addr = listener.local_addr().map_err(OpenError::Listen)?;
        let words: Vec<String> = split_command(&self.cmd)
            .map_err(OpenError::BadCommand)?
            .into_iter()
            .map(|w| w.replace("{port}", &addr.port().to_string()))
            .collect();
        let lines = self.output == ClientOutput::LinesHex;
        let mut child = Command::new(&words[0])
            .args(&words[1..])
            .stdin(Stdio::null())
            .stdout(if lines { Stdio::piped() } else { Stdio::null() })
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(OpenError::Spawn)?;
        self.starts += 1;
        let stderr = Arc::<Mutex<Vec<u8>>>::default();
        let stderr_task = child
            .stderr
            .take()
            .map(|err| tokio::spawn(capture_tail(err, stderr.clone())));
        let cap = sent * 2 + sent / 2 + STDOUT_SLACK_BYTES;
        let stdout = child
            .stdout
            .take()
            .map(|out| tokio::spawn(capture_capped(out, cap)));
        let pid = child.id();
        let deadline = tokio::time::Instant::now() + ACCEPT_WAIT;
        let accepted = loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    // Someone else's connection (see `owns_connection`): wait on.
                    Ok((_, peer)) if pid.and_then(|p| owns_connection(p, addr, peer)) == Some(false) => {
                        tracing::warn!("a connection from {peer} is not the client's; dropped");
                    }
                    other => break Accepted::Conn(other),
                },
                status = child.wait() => break Accepted::Exited(status.map(|s| s.to_string())
                    .unwrap_or_else(|e| format!("unknown ({e})"))),
                () = tokio::time::sleep_until(deadline) => break Accepted::TimedOut,
            }
        };
        let mut run = Running {
            child,
            stderr,
            stderr_task,
            stdout,
        };
        if matches!(accepted, Accepted::Exited(_)) {
            run.drain_stderr().await;
        }
        self.running = Some(run);
        match accepted {
            Accepted::Conn(Ok((sock, _))) => {
                let _ = sock.set_nodelay(true);
                Ok(sock)
            }
            Accepted::Conn(Err(e)) => Err(OpenError::Listen(e)),
            Accepted::Exited(status) => Err(OpenError::Exited {
                status,
                stderr: self.stderr_tail(),
            }),
            Accepted::TimedOut => Err(OpenError::NoConnect {
                addr,
                stderr: self.stderr_tail(),
            }),
        }
    }

    /// After the connection ended: waits up to `deadline` for the client to exit (kills
    /// it otherwise) and collects what it printed.
    pub async fn settle(&mut self, deadline: Duration) -> Settled {
        let Some(mut run) = self.running.take() else {
            return Settled {
                exit: Exit::StillRunning,
                stderr: String::new(),
                printed: None,
            };
        };
        let exit = match tokio::time::timeout(deadline, run.child.wait()).await {
            Ok(Ok(status)) => exit_of(status),
            Ok(Err(e)) => Exit::Failed(format!("unknown ({e})")),
            Err(_) => {
                let _ = run.child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), run.child.wait()).await;
                Exit::StillRunning
            }
        };
        let printed = match run.stdout.take() {
            Some(mut task) => {
                let captured = match tokio::time::timeout(PIPE_DRAIN, &mut task).await {
                    Ok(Ok(c)) => c,
                    _ => {
                        task.abort();
                        Captured::default()
                    }
                };
                Some(parse_printed(&captured, exit == Exit::StillRunning))
            }
            None => None,
        };
        run.drain_stderr().await;
        let stderr = tail_of(&run.stderr);
        Settled {
            exit,
            stderr,
            printed,
        }
    }

    /// The last lines of the current client's stderr.
    pub fn stderr_tail(&self) -> String {
        self.running
            .as_ref()
            .map(|r| tail_of(&r.stderr))
            .unwrap_or_default()
    }

    /// Stops the current client, if any.
    pub async fn kill(&mut self) {
        if let Some(mut run) = self.running.take() {
            let _ = run.child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), run.child.wait()).await;
            if let Some(task) = run.stdout {
                task.abort();
            }
            if let Some(task) = run.stderr_task {
                task.abort();
            }
        }
    }
}

fn tail_of(buf: &Mutex<Vec<u8>>) -> String {
    tail_lines(&buf.lock().expect("stderr lock"))
}

fn exit_of(status: ExitStatus) -> Exit {
    if status.success() {
        Exit::Success
    } else {
        Exit::Failed(status.to_string())
    }
}

/// Reads `out` to its end, keeping at most `cap` bytes (the rest is drained, so the
/// client never blocks on a full pipe, and flagged).
async fn capture_capped(mut out: impl AsyncReadExt + Unpin, cap: usize) -> Captured {
    let mut c = Captured::default();
    let mut buf = [0u8; 8192];
    while let Ok(n) = out.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = cap.saturating_sub(c.bytes.len());
        c.bytes.extend_from_slice(&buf[..n.min(room)]);
        c.overflow |= n > room;
    }
    c
}

/// `lines-hex` output as messages: one per line, each line lower- or upper-case hex.
fn parse_printed(c: &Captured, killed: bool) -> Seen {
    let mut replies = Vec::new();
    let mut end = if killed { End::Timeout } else { End::Eof };
    if c.overflow {
        end = End::Malformed(format!(
            "the client printed more than {} bytes, more than every message sent in hex",
            c.bytes.len()
        ));
    }
    let text = c.bytes.strip_suffix(b"\n").unwrap_or(&c.bytes);
    if !c.bytes.is_empty() && !c.overflow {
        for (i, line) in text.split(|&b| b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            match hex::decode(line) {
                Ok(m) => replies.push(Bytes::from(m)),
                Err(e) => {
                    end = End::Malformed(format!(
                        "stdout line {} is not hex ({e}): {}",
                        i + 1,
                        preview(line)
                    ));
                    break;
                }
            }
        }
    }
    Seen { replies, end }
}

/// The end of a client case, after the connection was driven and the echoes judged:
/// waits for the client to exit, judges its printed lines instead of the echoes with
/// `lines-hex`, and folds in how it ended ([`verdict`]).
pub async fn settle_case(
    client: &mut ClientTarget,
    config: &CaseConfig,
    cut: Option<(Ending, usize)>,
    must_finish: bool,
    result: &mut CaseResult,
) {
    let settled = client.settle(config.liveness).await;
    if let Some(printed) = &settled.printed {
        result.seen = printed.clone();
        result.latencies_us.clear();
        result.failure = config
            .oracle
            .judge(&result.expected, &result.seen, must_finish);
    }
    result.failure = verdict(
        result.failure.take(),
        &result.seen,
        result.expected.len(),
        cut,
        &settled,
        config.liveness,
    );
}

/// The client's verdict on one case.
///
/// `judged` is the oracle's verdict on `seen` (the echoes, or the printed lines);
/// `due` how many were due; `cut` the plan's ending, if it had one.
pub fn verdict(
    judged: Option<Failure>,
    seen: &Seen,
    due: usize,
    cut: Option<(Ending, usize)>,
    settled: &Settled,
    deadline: Duration,
) -> Option<Failure> {
    let with_stderr = |mut f: Failure| {
        if !settled.stderr.is_empty() {
            f.detail = format!("{}; client stderr:\n{}", f.detail, settled.stderr);
        }
        f
    };
    let absent = matches!(
        judged.as_ref().map(|f| f.class),
        Some(FailureClass::Lost | FailureClass::Hang)
    );
    if judged.is_some() && !absent {
        // A wrong message is the finding, whatever the process did next.
        return judged.map(with_stderr);
    }
    let after = match cut {
        Some((how, at)) => format!(
            "after a {} at stream byte {at}",
            if how == Ending::Reset {
                "reset"
            } else {
                "close"
            }
        ),
        None => "after the connection ended cleanly".to_string(),
    };
    let got = seen.replies.len();
    let so_far = match &judged {
        Some(f) => format!(" ({})", f.detail),
        None => String::new(),
    };
    match &settled.exit {
        Exit::StillRunning => Some(with_stderr(Failure::new(
            FailureClass::Hang,
            judged.and_then(|f| f.message),
            format!(
                "the client was still running {deadline:?} {after}, {got} of {due} messages delivered{so_far}"
            ),
        ))),
        Exit::Failed(status) if judged.is_some() || cut.is_none() => Some(with_stderr(Failure::new(
            FailureClass::ClientCrashed,
            (got < due).then_some(got),
            format!(
                "the client exited ({status}) with {got} of {due} messages delivered{so_far}; {}",
                match cut {
                    Some((how, at)) => format!(
                        "the connection was {} at stream byte {at}",
                        if how == Ending::Reset { "reset" } else { "closed" }
                    ),
                    None => "the connection had no cut".to_string(),
                }
            ),
        ))),
        _ => judged.map(with_stderr),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settled(exit: Exit) -> Settled {
        Settled {
            exit,
            stderr: "boom".into(),
            printed: None,
        }
    }

    fn seen(n: usize) -> Seen {
        Seen {
            replies: vec![Bytes::from_static(b"m"); n],
            end: End::Eof,
        }
    }

    fn class(
        judged: Option<FailureClass>,
        got: usize,
        cut: Option<(Ending, usize)>,
        exit: Exit,
    ) -> Option<FailureClass> {
        let judged = judged.map(|c| Failure::new(c, None, "judged"));
        verdict(
            judged,
            &seen(got),
            2,
            cut,
            &settled(exit),
            Duration::from_secs(1),
        )
        .map(|f| f.class)
    }

    #[test]
    fn a_clean_end_needs_every_echo_and_exit_status_zero() {
        assert_eq!(class(None, 2, None, Exit::Success), None);
        assert_eq!(
            class(None, 2, None, Exit::Failed("exit status: 1".into())),
            Some(FailureClass::ClientCrashed)
        );
        assert_eq!(
            class(None, 2, None, Exit::StillRunning),
            Some(FailureClass::Hang)
        );
    }

    #[test]
    fn after_a_cut_any_exit_status_is_an_acceptable_report() {
        let cut = Some((Ending::Close, 7));
        assert_eq!(
            class(None, 2, cut, Exit::Failed("exit status: 1".into())),
            None
        );
        assert_eq!(class(None, 2, cut, Exit::Success), None);
        assert_eq!(
            class(None, 2, cut, Exit::StillRunning),
            Some(FailureClass::Hang)
        );
    }

    #[test]
    fn missing_echoes_from_a_client_that_died_are_a_crash_with_its_stderr() {
        let f = verdict(
            Some(Failure::new(FailureClass::Lost, Some(1), "judged")),
            &seen(1),
            2,
            Some((Ending::Close, 9)),
            &settled(Exit::Failed("exit status: 1".into())),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(f.class, FailureClass::ClientCrashed);
        assert_eq!(f.message, Some(1));
        assert!(f.detail.contains("1 of 2") && f.detail.ends_with("boom"));
        // Exiting cleanly without them is still the oracle's finding.
        assert_eq!(
            class(Some(FailureClass::Lost), 1, None, Exit::Success),
            Some(FailureClass::Lost)
        );
    }

    #[test]
    fn a_short_or_phantom_message_is_the_finding_whatever_the_exit() {
        for c in [FailureClass::Truncated, FailureClass::Phantom] {
            for exit in [Exit::Success, Exit::Failed("x".into()), Exit::StillRunning] {
                assert_eq!(class(Some(c), 2, Some((Ending::Close, 3)), exit), Some(c));
            }
        }
    }

    #[test]
    fn printed_lines_are_hex_messages_and_anything_else_is_malformed() {
        let ok = Captured {
            bytes: b"6869\n\nFF\n".to_vec(),
            overflow: false,
        };
        let s = parse_printed(&ok, false);
        assert_eq!(s.replies, [&b"hi"[..], b"", b"\xff"]);
        assert_eq!(s.end, End::Eof);
        assert!(parse_printed(&Captured::default(), false)
            .replies
            .is_empty());
        let bad = Captured {
            bytes: b"6869\nhello\n".to_vec(),
            overflow: false,
        };
        let s = parse_printed(&bad, false);
        assert_eq!(s.replies.len(), 1);
        assert!(matches!(s.end, End::Malformed(ref m) if m.contains("line 2")));
        let big = Captured {
            bytes: b"00\n".to_vec(),
            overflow: true,
        };
        assert!(matches!(parse_printed(&big, false).end, End::Malformed(_)));
        assert_eq!(parse_printed(&ok, true).end, End::Timeout);
    }
}
