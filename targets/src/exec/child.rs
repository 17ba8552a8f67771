//! Running one child process: feed its stdin while collecting stdout and stderr under a
//! shared cap, enforce the deadline, kill its whole process group, and always reap it.
//!
//! Each command runs on its own task ([`spawn`]) that owns the [`tokio::process::Child`].
//! The connection keeps only a [`Job`]: dropping it (client gone, connection cancelled
//! at shutdown) tells the task to kill and reap at once. Cleanup therefore never depends
//! on the connection future being polled to completion.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::priority::{Priority, Start};
use super::sandbox::{self, Limits};
use super::slots::Ticket;
use super::spawner;
use super::trampoline;
use super::Launch;
use crate::memory::{Memory, Reservation};

/// The only PATH a child sees, and the only places a program is looked up in.
pub const FIXED_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// How long reaping may take after SIGKILL before we leave it to tokio's orphan reaper.
const REAP_GRACE: Duration = Duration::from_secs(5);

/// Bytes read from a pipe at a time; each pipe gets its own buffer.
const READ_CHUNK: usize = 64 * 1024;

/// A validated command, ready to start.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Absolute path found on [`FIXED_PATH`].
    pub program: PathBuf,
    /// argv as the client sent it; `argv[0]` is the bare allow-listed name.
    pub argv: Vec<String>,
    pub stdin: Bytes,
    /// Counts from when the server takes the request up: waiting for a slot included.
    pub timeout: Duration,
    pub output_cap: usize,
    pub limits: Limits,
    pub launch: Launch,
    /// Output is reserved here as it arrives (see [`crate::memory`]).
    pub memory: Arc<Memory>,
}

/// What happened to one command.
#[derive(Debug, Default)]
pub struct Outcome {
    /// `None` if it never ran (see `spawn_error`) or was abandoned before reaping.
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub timed_out: bool,
    pub truncated: bool,
    /// The program could not be started at all (the request is refused).
    pub spawn_error: Option<io::Error>,
    /// No child slot came free before the deadline: the program never ran.
    pub busy: bool,
    /// The memory `stdout` and `stderr` hold (twice their length: the reply body and
    /// its encoded copy), until the reply is written.
    pub held: Option<Reservation>,
}

impl Outcome {
    /// The exit code, if the child exited normally.
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// The signal that killed the child, if one did.
    pub fn signal(&self) -> Option<i32> {
        self.status.and_then(|s| s.signal())
    }
}

/// A command running on its own task. Dropping it kills the command.
#[derive(Debug)]
pub struct Job {
    /// Dropped (never sent) to abort: a closed channel is the signal.
    abort: oneshot::Sender<()>,
    pub done: JoinHandle<Outcome>,
}

impl Job {
    /// Tells the task to kill the command now; await the handle to know it is reaped.
    pub fn cancel(self) -> JoinHandle<Outcome> {
        let Job { abort, done } = self;
        drop(abort);
        done
    }
}

/// Starts `spec` on a new task once `ticket` is admitted to a running slot.
pub fn spawn(spec: Spec, ticket: Ticket) -> Job {
    let (abort_tx, abort_rx) = oneshot::channel();
    let done = tokio::spawn(run(spec, ticket, abort_rx));
    Job {
        abort: abort_tx,
        done,
    }
}

/// Kills a whole process group unless disarmed; the backstop if the task itself is
/// dropped (runtime shutting down) between spawning and reaping the child.
struct GroupKill {
    pgid: Option<i32>,
}

impl GroupKill {
    fn kill(&self) {
        if let Some(pgid) = self.pgid {
            // SAFETY: kill(2) has no memory-safety preconditions. The negative pid
            // addresses the process group our child leads (`process_group(0)`), and we
            // only call this while the leader is not yet reaped, so the group id cannot
            // have been reused by an unrelated process group.
            let _ = unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }

    /// Call right after reaping the leader: from then on the id may be reused.
    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How the I/O phase ended.
enum End {
    /// Both pipes reached EOF within the cap.
    Drained,
    Truncated,
    TimedOut,
    Aborted,
}

async fn run(spec: Spec, ticket: Ticket, mut abort: oneshot::Receiver<()>) -> Outcome {
    let mut outcome = Outcome::default();
    let deadline = Instant::now() + spec.timeout;
    let fresh = ticket.fresh();
    // Held until the child is reaped (the end of this function), so a slot stands for
    // a live process.
    let _slot = tokio::select! {
        biased;
        _ = &mut abort => return outcome,
        admitted = tokio::time::timeout_at(deadline, ticket.admit()) => match admitted {
            Ok(permit) => permit,
            Err(_) => {
                outcome.busy = true;
                return outcome;
            }
        },
    };
    // Removed (with anything the child left in it) when this function returns, after
    // the reap.
    let cell = match sandbox::Cell::new(spec.launch == Launch::Fork) {
        Ok(cell) => cell,
        Err(e) => {
            outcome.spawn_error = Some(e);
            return outcome;
        }
    };
    // Chosen before the start, so a trampoline starts at it already.
    let start = Start::claim(&spec.limits, fresh);
    let mut cmd = match &spec.launch {
        Launch::Fork => {
            let mut cmd = Command::new(&spec.program);
            // The child sees the bare name as argv[0], as a shell would have given it.
            cmd.arg0(&spec.argv[0]);
            cmd.args(&spec.argv[1..]);
            cmd
        }
        Launch::Trampoline(path) => {
            let mut cmd = Command::new(path);
            cmd.arg0(trampoline::ARG0);
            cmd.args(trampoline::args(
                start.nice,
                spec.limits,
                sandbox::cpu_seconds(spec.timeout),
                cell.landlock(),
                cell.dir(),
                &spec.program,
                &spec.argv,
            ));
            cmd
        }
    };
    cmd.env_clear()
        .env("PATH", FIXED_PATH)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so a kill reaches anything it forked too.
        .process_group(0)
        // Backstop: kills the leader if the Child is dropped un-reaped; tokio then
        // reaps it in the background.
        .kill_on_drop(true);
    match spec.launch {
        Launch::Fork => sandbox::confine(cmd.as_std_mut(), spec.limits, spec.timeout, &cell),
        // It confines itself; only the directory is set from here.
        Launch::Trampoline(_) => {
            cmd.current_dir(cell.dir());
        }
    }
    let mut child = match spawner::spawn(cmd).await {
        Ok(child) => child,
        Err(e) => {
            outcome.spawn_error = Some(e);
            return outcome;
        }
    };
    let mut guard = GroupKill {
        pgid: child.id().and_then(|id| i32::try_from(id).ok()),
    };
    // Polled only beside the pump and the wait below, that is while the child is
    // unreaped, as `demote_when_due` requires.
    let mut priority = child
        .id()
        .and_then(|pid| Priority::start(pid, start, &spec.limits));
    let demote = async {
        match &mut priority {
            Some(p) => p.demote_when_due().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(demote);

    let mut held = spec.memory.empty();
    let end = {
        let io = pump(
            &mut child,
            spec.stdin,
            spec.output_cap,
            &mut outcome,
            &mut held,
        );
        tokio::select! {
            biased;
            _ = &mut abort => End::Aborted,
            r = tokio::time::timeout_at(deadline, io) => match r {
                Ok(true) => End::Truncated,
                Ok(false) => End::Drained,
                Err(_) => End::TimedOut,
            },
            never = &mut demote => match never {},
        }
    };
    outcome.held = Some(held);
    let end = match end {
        // The pipes closed; the child is exiting or already gone. Wait for it within
        // what is left of the deadline.
        End::Drained => tokio::select! {
            biased;
            _ = &mut abort => End::Aborted,
            r = tokio::time::timeout_at(deadline, child.wait()) => match r {
                Ok(Ok(status)) => {
                    guard.disarm();
                    outcome.status = Some(status);
                    return outcome;
                }
                // wait() failing means we cannot learn its fate; kill to be sure.
                Ok(Err(e)) => {
                    tracing::warn!("waiting for child failed: {e}");
                    End::Aborted
                }
                Err(_) => End::TimedOut,
            },
            never = &mut demote => match never {},
        },
        other => other,
    };
    outcome.timed_out = matches!(end, End::TimedOut);
    outcome.truncated = matches!(end, End::Truncated);
    guard.kill();
    match tokio::time::timeout(REAP_GRACE, child.wait()).await {
        Ok(Ok(status)) => outcome.status = Some(status),
        Ok(Err(e)) => tracing::warn!("reaping killed child failed: {e}"),
        Err(_) => tracing::warn!("killed child not reaped within {REAP_GRACE:?}"),
    }
    // Reaped (or abandoned to tokio's reaper via kill_on_drop): never signal the group
    // again, its id may be reused from here on.
    guard.disarm();
    outcome
}

/// Writes `stdin` to the child while reading its stdout and stderr, so neither side can
/// block the other (a large `cat` fills both pipes at once). Returns `true` if the
/// output went beyond `cap` (only `cap` bytes are kept), `false` once both pipes are at
/// EOF. Stdin is closed when written, or when this returns.
async fn pump(
    child: &mut Child,
    stdin: Bytes,
    cap: usize,
    outcome: &mut Outcome,
    held: &mut Reservation,
) -> bool {
    let feed = {
        let pipe = child.stdin.take();
        async move {
            if let Some(mut pipe) = pipe {
                // A child that exits without reading all its input is not an error.
                let _ = pipe.write_all(&stdin).await;
                let _ = pipe.shutdown().await;
            }
        }
    };
    // The output pipes stay in `child` (borrowed, not taken): on truncation they are
    // still open when the group is killed, so the child dies of our SIGKILL rather than
    // racing us with a SIGPIPE.
    let collect = collect(
        &mut child.stdout,
        &mut child.stderr,
        cap,
        &mut outcome.stdout,
        &mut outcome.stderr,
        held,
    );
    tokio::pin!(feed, collect);
    let mut fed = false;
    loop {
        tokio::select! {
            _ = &mut feed, if !fed => fed = true,
            truncated = &mut collect => return truncated,
        }
    }
}

/// Reads both pipes until EOF, keeping at most `cap` bytes in total.
async fn collect(
    stdout: &mut Option<impl AsyncRead + Unpin>,
    stderr: &mut Option<impl AsyncRead + Unpin>,
    cap: usize,
    out: &mut Vec<u8>,
    err: &mut Vec<u8>,
    held: &mut Reservation,
) -> bool {
    let mut buf_out = vec![0u8; READ_CHUNK];
    let mut buf_err = vec![0u8; READ_CHUNK];
    loop {
        let (n, is_stdout) = tokio::select! {
            r = read_some(stdout, &mut buf_out), if stdout.is_some() => match r {
                Some(n) => (n, true),
                None => { *stdout = None; continue; }
            },
            r = read_some(stderr, &mut buf_err), if stderr.is_some() => match r {
                Some(n) => (n, false),
                None => { *stderr = None; continue; }
            },
            else => return false,
        };
        let room = cap.saturating_sub(out.len() + err.len());
        // Backpressure: until the budget has room the pipes are not read, so the child
        // blocks; its deadline bounds the wait.
        held.grow(2 * n.min(room)).await;
        let (into, src) = if is_stdout {
            (&mut *out, &buf_out)
        } else {
            (&mut *err, &buf_err)
        };
        if n > room {
            into.extend_from_slice(&src[..room]);
            return true;
        }
        into.extend_from_slice(&src[..n]);
    }
}

/// One read; `None` at EOF or on a read error (either way the pipe is done).
async fn read_some<R: AsyncRead + Unpin>(pipe: &mut Option<R>, buf: &mut [u8]) -> Option<usize> {
    let pipe = pipe.as_mut()?;
    match pipe.read(buf).await {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(n),
    }
}
