//! The exec server: runs an allow-listed program for each request, without a shell,
//! and answers with its exit status and output. hjson frames both ways
//! (see [`crate::wire::HjsonCodec`]).
//!
//! ```text
//! request:  u32be hlen | {"argv": ["seq", "1", "3"], "size": N}        | N bytes: stdin
//! reply:    u32be hlen | {"exit": 0, "stdout": 6, "stderr": 0,        | stdout bytes,
//!                      |  "timed_out": false, "truncated": false,     | then stderr bytes
//!                      |  "size": 6}                                  |
//! killed:              | {"exit": null, "signal": 9, ...}             |
//! refused:  u32be hlen | {"error": "program `sh` is not allowed", "size": 0}
//! ```
//!
//! Why it is safe to expose a process runner to a fuzzer:
//! - no shell: `argv` is passed to execve as is, so `$(id)`, `;` and `&&` are plain
//!   arguments; `argv[0]` must equal an `allow` entry and contain no `/`, and it is
//!   looked up only on [`FIXED_PATH`]; the child gets an empty environment plus that PATH;
//! - every command has a deadline and an output cap (stdout + stderr together); beyond
//!   either its whole process group is killed and the reply says `timed_out`/`truncated`;
//! - a client that goes away while its command runs (a reset, an EOF inside a request,
//!   a reply that cannot be written) gets the command killed, and every child is
//!   reaped: no orphans, no zombies. A FIN after complete requests is not going away:
//!   it means "no more requests" (`nc -N`, `shutdown(SHUT_WR)`), so the requests
//!   already received run and are answered before the server closes; the deadline
//!   bounds what a peer that closed entirely can cost;
//! - a refused request costs nothing but an `error` reply; the connection stays usable.
//!   That includes a header longer than [`MAX_HEADER`] (up to the frame limit): it is
//!   stepped over as it streams in, never held ([`SkippingHjsonCodec`]). A corrupt
//!   stream (bad header, a `size` above the frame limit, a header whose `size` cannot
//!   be found) closes the connection after the replies to the requests before it, and
//!   is counted.
//!
//! Requests may be pipelined: they are answered in order, and up to [`MAX_QUEUED`]
//! (and about [`MAX_QUEUED_BYTES`] of stdin) wait while a command runs.
//!
//! Under concurrency ([`slots`]): at most `max_children` commands run server-wide
//! (default sized to the machine: 512 here), at most `max_waiting` more wait for one,
//! in arrival order; a request finding the queue full is refused (`server busy`) at
//! once. The `timeout` counts from when the server takes a request up, waiting for a
//! slot included, so every request is answered (or its child killed) within about its
//! timeout; one that got no slot in time is refused as busy. The CPU is shared by
//! priority ([`priority`]): the server first, then fresh commands (nice +10), then
//! long jobs (50 ms of CPU used, or that old and still runnable: nice 19), so `echo hi`
//! is answered at once behind 300 hogs. Children run with resource limits, confined to their own
//! directory ([`sandbox`]), and die with the server however it dies.
//!
//! Limits a client can hit: at most [`MAX_ARGS`] arguments of [`MAX_ARG_LEN`] bytes
//! each, and the whole JSON header is at most [`MAX_HEADER`] (64 KiB), so in practice
//! argv is bounded by the header. Each limit is an error reply naming it, a header
//! beyond 64 KiB included. Duplicate keys in a header are not refused: the last one
//! wins (serde_json's map).

mod child;
pub mod priority;
pub mod sandbox;
pub mod slots;
mod spawner;
pub mod trampoline;

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::memory::{Budgeted, Reservation};
use crate::server::{self, Busy, Common, ConnError, ServerError, Tracked};
use crate::wire::{
    HjsonCodec, HjsonFrame, HjsonItem, SkippingHjsonCodec, WireError, DEFAULT_MAX, MAX_HEADER,
};

pub use child::FIXED_PATH;
pub use sandbox::Limits;
pub use slots::{Slots, SlotsSnapshot};

/// The programs allowed when the configuration names none.
pub const DEFAULT_ALLOW: &[&str] = &[
    "echo", "printf", "seq", "cat", "head", "wc", "true", "false",
];

/// Default deadline of one command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default output cap (stdout + stderr together).
pub const DEFAULT_OUTPUT_CAP: usize = 16 * 1024 * 1024;
/// Most arguments (`argv[0]` included) in one request.
pub const MAX_ARGS: usize = 256;
/// Longest single argument, in bytes.
pub const MAX_ARG_LEN: usize = 4096;
/// Requests read ahead while a command runs; beyond this the connection is not read
/// (TCP backpressure) until the queue drains.
pub const MAX_QUEUED: usize = 16;
/// Stdin bytes held by queued requests before read-ahead stops (one frame may overshoot).
pub const MAX_QUEUED_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Config {
    pub common: Common,
    /// Program names that may run (`argv[0]`, matched exactly).
    pub allow: Vec<String>,
    /// A command running longer is killed and reported `timed_out`.
    pub timeout: Duration,
    /// Most stdout+stderr bytes returned; beyond it the child is killed and `truncated` set.
    pub output_cap: usize,
    /// Children running at once and requests waiting for one, shared by every
    /// connection (and every clone of this config).
    pub slots: Arc<Slots>,
    /// Priority and resource limits of each child.
    pub limits: Limits,
    /// How a child is started.
    pub launch: Launch,
}

/// How exec starts a child; either way it gets the same confinement ([`sandbox`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Launch {
    /// Fork the server, confine the copy, exec the program: works in any binary, but
    /// each fork copies the server's page tables under its memory-map lock, which
    /// stalls the server's threads when hundreds of commands start at once.
    #[default]
    Fork,
    /// `posix_spawn` this binary, whose `main` calls [`trampoline::enter_if_invoked`]
    /// first (`/proc/self/exe` for chopstick itself): no copy of the server is made;
    /// the new process confines itself, then executes the program ([`trampoline`]).
    Trampoline(std::path::PathBuf),
}

impl Default for Config {
    fn default() -> Self {
        Config {
            common: Common::default(),
            allow: DEFAULT_ALLOW.iter().map(|s| s.to_string()).collect(),
            timeout: DEFAULT_TIMEOUT,
            output_cap: DEFAULT_OUTPUT_CAP,
            slots: Arc::default(),
            limits: Limits::default(),
            launch: Launch::default(),
        }
    }
}

/// Serves exec on `listener` until `shutdown` resolves. Refuses a non-loopback
/// listener: exposing a process runner to the network needs auth in front of it
/// (auth calls [`serve_conn`] directly).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    server::require_loopback(&listener, "exec")?;
    let config = Arc::new(config);
    server::serve(
        listener,
        &config.common.clone(),
        shutdown,
        move |stream, _peer| {
            let config = config.clone();
            async move { serve_conn(stream, &config).await }
        },
    )
    .await
}

/// Speaks exec on one connection (any byte stream: a socket, or auth's inner stream).
///
/// Reads requests concurrently with the running command, so a disconnect is noticed
/// (and the command killed) at once and pipelined requests queue up. `Ok(())` only when
/// the peer closes at a frame boundary with nothing in flight.
pub async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    config: &Config,
) -> Result<(), ConnError> {
    let request_max = config.common.max_frame.unwrap_or(DEFAULT_MAX);
    // The reply body is stdout+stderr, at most the cap; never above max_frame either,
    // so a client with the server's limits can always read the reply.
    let output_cap = config
        .common
        .max_frame
        .map_or(config.output_cap, |m| m.min(config.output_cap));
    let counters = &*config.common.counters;
    let common = &config.common;
    let (stream, activity) = Tracked::new(stream);
    let (rd, wr) = tokio::io::split(stream);
    let mut requests = FramedRead::new(
        rd,
        Budgeted::new(SkippingHjsonCodec::new(request_max), &common.memory),
    );
    let mut replies = FramedWrite::new(wr, HjsonCodec::new(output_cap));

    // Each with its stdin's reservation, or why it is refused before it runs (no
    // memory for its stdin, a header too long to read).
    let mut queue: VecDeque<(HjsonFrame, Result<Reservation, Refusal>)> = VecDeque::new();
    let mut queued_bytes = 0usize;
    let mut running: Option<child::Job> = None;
    // Held while a command runs: a client silently waiting for it is not idle (the
    // command's own deadline bounds that wait).
    let mut working: Option<Busy> = None;
    // A corrupt frame seen behind earlier requests: answer those, then close.
    let mut corrupt: Option<ConnError> = None;
    // The peer sent FIN at a frame boundary: answer what was asked, then close.
    let mut finished = false;

    server::until_idle(&activity, common.idle_timeout, async {
        loop {
            if running.is_none() {
                match queue.pop_front() {
                    Some((request, held)) => {
                        queued_bytes -= request.body.len();
                        match held.and_then(|held| {
                            // The stdin now belongs to the command (its own copy in
                            // the spec); the output is reserved as it comes.
                            drop(held);
                            parse_request(&request, config, output_cap)
                        }).and_then(|spec| {
                            let ticket =
                                config.slots.enter().ok_or_else(|| busy(&config.slots))?;
                            Ok(child::spawn(spec, ticket))
                        }) {
                            Ok(job) => {
                                running = Some(job);
                                working = Some(activity.busy());
                            }
                            Err(refusal) => {
                                server::send_frame(&mut replies, refusal.reply(), counters)
                                    .await?;
                            }
                        }
                        continue;
                    }
                    None => {
                        if let Some(e) = corrupt.take() {
                            return Err(e);
                        }
                        if finished {
                            return Ok(());
                        }
                    }
                }
            }
            let busy = running.is_some();
            let can_read = !finished
                && corrupt.is_none()
                && queue.len() < MAX_QUEUED
                && queued_bytes < MAX_QUEUED_BYTES;
            tokio::select! {
                next = server::next_frame(&mut requests, &activity, common), if can_read => match next {
                    Ok(Some(HjsonItem::Frame(mut frame))) => {
                        counters.frame_in();
                        let held = common.memory.try_reserve(frame.body.len()).ok_or_else(|| {
                            frame.body = Bytes::new();
                            Refusal("server memory budget exhausted; try again later".into())
                        });
                        queued_bytes += frame.body.len();
                        queue.push_back((frame, held));
                    }
                    // Stepped over unread (finding 9): refused in its turn, and the
                    // connection goes on with the next request.
                    Ok(Some(HjsonItem::Oversize { header_len, .. })) => {
                        counters.frame_in();
                        queue.push_back((HjsonFrame::default(), Err(oversize(header_len))));
                    }
                    // FIN at a frame boundary: no more requests, but the ones received
                    // (running or queued) are still answered.
                    Ok(None) => finished = true,
                    // A reset or an EOF inside a frame: the client is gone.
                    Err(e @ (ConnError::Wire(WireError::Io(_) | WireError::Truncated { .. }) | ConnError::Io(_))) => {
                        return Err(abandon(running.take(), e).await);
                    }
                    // Bad header, oversize frame, a frame too slow: no more requests
                    // from this stream, but the ones already received are answered.
                    Err(e) => corrupt = Some(e),
                },
                (reply, held) = wait_job(&mut running), if busy => {
                    running = None;
                    working = None;
                    server::send_frame(&mut replies, reply, counters).await?;
                    drop(held);
                }
                // Unreachable (a stream that cannot be read has a job or a queue), but
                // select! would panic without it.
                else => return Err(ConnError::Protocol("exec connection stalled".into())),
            }
        }
    })
    .await
}

/// The reply of the running job, with the memory its output holds until written.
async fn wait_job(running: &mut Option<child::Job>) -> (HjsonFrame, Option<Reservation>) {
    let Some(job) = running else {
        return std::future::pending().await;
    };
    match (&mut job.done).await {
        Ok(mut outcome) => {
            let held = outcome.held.take();
            (outcome_reply(outcome), held)
        }
        // The job task panicked or was cancelled: say so instead of taking the
        // connection down.
        Err(e) => (
            Refusal(format!("internal error running the command: {e}")).reply(),
            None,
        ),
    }
}

/// Kills the running command (if any) and waits, bounded, until it is reaped, so the
/// connection is only counted as ended once its child is gone.
async fn abandon(running: Option<child::Job>, error: ConnError) -> ConnError {
    if let Some(job) = running {
        // Bounded: the task reaps within its own grace period after SIGKILL.
        let _ = tokio::time::timeout(Duration::from_secs(10), job.cancel()).await;
    }
    error
}

/// Why a request is refused; the text goes to the client in `error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal(pub(crate) String);

impl Refusal {
    fn reply(self) -> HjsonFrame {
        HjsonFrame::new(json!({ "error": self.0 }), Bytes::new())
    }
}

/// Quotes client-supplied text in an error message, shortened so a reply header stays small.
fn quoted(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((at, _)) => format!("`{}...`", s[..at].escape_debug()),
        None => format!("`{}`", s.escape_debug()),
    }
}

/// Validates a request against the allow-list and limits and resolves the program.
/// (`pub(crate)` for the `exec_request` fuzz body in `crate::fuzzing`.)
pub(crate) fn parse_request(
    request: &HjsonFrame,
    config: &Config,
    output_cap: usize,
) -> Result<child::Spec, Refusal> {
    let argv = parse_argv(&request.header)?;
    let name = &argv[0];
    if name.contains('/') {
        return Err(Refusal(format!(
            "program {} is a path; give a bare allow-listed name",
            quoted(name)
        )));
    }
    if !config.allow.iter().any(|a| a == name) {
        return Err(Refusal(format!(
            "program {} is not allowed (allowed: {})",
            quoted(name),
            config.allow.join(", ")
        )));
    }
    let program = resolve(name, FIXED_PATH).ok_or_else(|| {
        Refusal(format!(
            "program {} not found on {FIXED_PATH}",
            quoted(name)
        ))
    })?;
    Ok(child::Spec {
        program,
        argv,
        stdin: request.body.clone(),
        timeout: config.timeout,
        output_cap,
        limits: config.limits,
        launch: config.launch.clone(),
        memory: config.common.memory.clone(),
    })
}

fn parse_argv(header: &Map<String, Value>) -> Result<Vec<String>, Refusal> {
    let refuse = |m: &str| Err(Refusal(m.to_string()));
    let Some(argv) = header.get("argv") else {
        return refuse("request has no `argv`");
    };
    let Value::Array(items) = argv else {
        return refuse("`argv` must be an array of strings");
    };
    if items.is_empty() {
        return refuse("`argv` is empty");
    }
    if items.len() > MAX_ARGS {
        return Err(Refusal(format!(
            "too many arguments: {} (at most {MAX_ARGS})",
            items.len()
        )));
    }
    let mut argv = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::String(arg) = item else {
            return Err(Refusal(format!("argv[{i}] is not a string")));
        };
        if arg.len() > MAX_ARG_LEN {
            return Err(Refusal(format!(
                "argv[{i}] is {} bytes long (at most {MAX_ARG_LEN})",
                arg.len()
            )));
        }
        // execve cannot pass a NUL; silently cutting the argument would run something
        // other than what was asked.
        if arg.contains('\0') {
            return Err(Refusal(format!("argv[{i}] contains a NUL byte")));
        }
        argv.push(arg.clone());
    }
    Ok(argv)
}

/// The first executable regular file named `name` in the `:`-separated `path`.
fn resolve(name: &str, path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if name.is_empty() || name == "." || name == ".." {
        return None;
    }
    path.split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// The refusal of a request whose header was too long to read.
fn oversize(header_len: usize) -> Refusal {
    Refusal(format!(
        "request header is {header_len} bytes, more than the limit of {MAX_HEADER} \
         (argv must fit in it: at most {MAX_ARGS} arguments of at most {MAX_ARG_LEN} \
         bytes each, all of them within the header); the request and its stdin were \
         skipped unread"
    ))
}

/// The refusal of a request that found every slot taken and the queue full.
fn busy(slots: &Slots) -> Refusal {
    let s = slots.snapshot();
    Refusal(format!(
        "server busy: {} commands running and {} waiting (at most {} + {}); try again later",
        s.running, s.waiting, s.max_children, s.max_waiting
    ))
}

fn outcome_reply(outcome: child::Outcome) -> HjsonFrame {
    if outcome.busy {
        return Refusal(
            "server busy: no free child slot before the timeout; try again later".into(),
        )
        .reply();
    }
    if let Some(e) = &outcome.spawn_error {
        return Refusal(format!("cannot start the program: {e}")).reply();
    }
    let mut header = json!({
        "exit": outcome.code(),
        "stdout": outcome.stdout.len(),
        "stderr": outcome.stderr.len(),
        "timed_out": outcome.timed_out,
        "truncated": outcome.truncated,
    });
    if let Some(signal) = outcome.signal() {
        header["signal"] = json!(signal);
    }
    let mut body = outcome.stdout;
    body.extend_from_slice(&outcome.stderr);
    HjsonFrame::new(header, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(header: Value) -> HjsonFrame {
        HjsonFrame::new(header, Bytes::new())
    }

    fn refused(header: Value) -> String {
        parse_request(&request(header), &Config::default(), 1024)
            .expect_err("should be refused")
            .0
    }

    #[test]
    fn allowed_program_resolves_on_fixed_path() {
        let spec = parse_request(
            &request(json!({"argv": ["echo", "hi"]})),
            &Config::default(),
            1024,
        )
        .unwrap();
        assert!(spec.program.is_absolute());
        assert!(spec.program.ends_with("echo"));
        assert_eq!(spec.argv, ["echo", "hi"]);
    }

    #[test]
    fn malformed_argv_is_refused_with_a_reason() {
        assert!(refused(json!({})).contains("no `argv`"));
        assert!(refused(json!({"argv": "echo hi"})).contains("array of strings"));
        assert!(refused(json!({"argv": []})).contains("empty"));
        assert!(refused(json!({"argv": ["echo", 1]})).contains("argv[1] is not a string"));
        assert!(refused(json!({"argv": ["echo", "a\u{0}b"]})).contains("NUL"));
        let many = vec!["x"; MAX_ARGS + 1];
        assert!(refused(json!({ "argv": many })).contains("too many"));
        let long = "x".repeat(MAX_ARG_LEN + 1);
        assert!(refused(json!({"argv": ["echo", long]})).contains("bytes long"));
    }

    #[test]
    fn paths_and_unlisted_programs_are_refused() {
        for name in ["/bin/sh", "../../bin/sh", "./echo", "/usr/bin/echo"] {
            assert!(
                refused(json!({ "argv": [name] })).contains("is a path"),
                "{name}"
            );
        }
        for name in ["sh", "bash", "rm", "", "ECHO", "echo "] {
            assert!(
                refused(json!({ "argv": [name] })).contains("not allowed"),
                "{name:?}"
            );
        }
    }

    #[test]
    fn allow_listed_but_missing_program_is_refused() {
        let config = Config {
            allow: vec!["no-such-program-chopstick".into()],
            ..Config::default()
        };
        let err = parse_request(
            &request(json!({"argv": ["no-such-program-chopstick"]})),
            &config,
            1024,
        )
        .unwrap_err();
        assert!(err.0.contains("not found"), "{}", err.0);
    }

    #[test]
    fn long_names_are_shortened_in_errors() {
        let name = "a".repeat(10_000);
        let msg = refused(json!({ "argv": [name] }));
        assert!(msg.len() < 300, "{}", msg.len());
    }

    #[test]
    fn signal_reply_has_null_exit_and_signal() {
        use std::os::unix::process::ExitStatusExt;
        let reply = outcome_reply(child::Outcome {
            status: Some(std::process::ExitStatus::from_raw(libc::SIGKILL)),
            stdout: b"out".to_vec(),
            stderr: b"err".to_vec(),
            timed_out: true,
            ..Default::default()
        });
        assert_eq!(reply.header["exit"], Value::Null);
        assert_eq!(reply.header["signal"], json!(libc::SIGKILL));
        assert_eq!(reply.header["stdout"], json!(3));
        assert_eq!(reply.header["timed_out"], json!(true));
        assert_eq!(&reply.body[..], b"outerr");
    }
}
