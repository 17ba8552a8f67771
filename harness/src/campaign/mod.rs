//! Campaigns: drive a target with seeded workloads under each fault, judge every reply
//! with an oracle, check liveness after every cut, shrink failures into reproducers.
//!
//! - [`conn`]: the connection a case drives: a loopback socket or an in-process duplex pipe.
//! - [`drive`]: one connection over a stream the target opened, per its plan.
//! - [`judge`]: expected versus seen, and the failure classes.
//! - [`target`]: `--connect ADDR`, `--spawn CMD` (started, watched, restarted) or
//!   `--client CMD`; it opens every connection a case uses.
//! - [`client`]: `--client CMD`: a client receiver started per case, its echoes judged.
//! - [`process`]: command lines without a shell, and the stderr tail of started processes.
//! - [`shrink`]: makes a failing case smaller while it still fails.
//! - [`repro`]: reproducer files and `chopstick replay`.
//! - [`check`]: `chopstick check`, one target under each fault profile.
//! - [`concurrency`]: `--concurrency`, and the probe that decides `auto`.
//! - [`run`]: `chopstick run`, every reference server in-process under every fault.
//! - [`preflight`]: one unfaulted round trip before any fault, and its diagnosis.
//! - [`hostile`]: over-max, negative and cut headers, garbage after a frame.
//! - [`payload`]: byte payloads in files (text or hex) and previews.
//!
//! What a request is and what a right reply is belongs to the oracle
//! ([`crate::oracle`]); this module runs the same sequence for every one of them:
//! encode, open, drive, judge, read back, liveness.

pub mod check;
pub mod client;
pub mod concurrency;
pub mod conn;
pub mod drive;
pub mod hostile;
pub mod judge;
pub mod payload;
pub mod preflight;
pub mod process;
pub mod repro;
pub mod run;
pub mod shrink;
pub(crate) mod stuck;
pub mod target;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chopstick_targets::wire::Framing;
use serde::{Deserialize, Serialize};

use crate::chaos::{conn_rng, Direction, Ending, FaultSet, Plan};
use crate::oracle::{Delivered, Encoded, Opened, Oracle, PROBE_CONN};
use crate::workload::{Mode, Workload};
/// Session templates, the interface `check --traffic` and `check --requests` feed.
pub use crate::workload::{Sessions, SessionsError};
use chopstick_targets::wire::WireError;
pub use conn::Conn;
pub use drive::{Exchange, Fin, Timing};
pub use judge::{End, Failure, FailureClass, Seen};
pub use target::{InProcess, Target, TargetError, TargetSpec};

/// Pause between connect attempts while a server returns to `accept()`.
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);

/// Everything about a case but its messages and plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseConfig {
    #[serde(with = "framing_string")]
    pub framing: Framing,
    /// The replies' framing when it is not `framing`'s (`--reply-framing`). With a
    /// `raw` request side every message goes in one write, never cut, split or merged
    /// ([`Plan::whole_frames`]), and empty messages (nothing to send) are left out.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "reply_framing_string"
    )]
    pub reply_framing: Option<Framing>,
    /// How requests are made and replies judged; stored in files by its registry name
    /// and settings ([`crate::oracle::serde_form`]).
    #[serde(with = "crate::oracle::serde_form")]
    pub oracle: Arc<dyn Oracle>,
    pub mode: Mode,
    /// Send a FIN once everything is written (when the plan does not end otherwise).
    pub half_close: bool,
    #[serde(skip)]
    pub timing: Timing,
    /// How long a fresh connection may take to be served after a fault.
    #[serde(skip, default = "default_liveness")]
    pub liveness: Duration,
}

fn default_liveness() -> Duration {
    Duration::from_secs(3)
}

mod framing_string {
    use chopstick_targets::wire::Framing;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(f: &Framing, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&f.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Framing, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

mod reply_framing_string {
    use chopstick_targets::wire::Framing;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(f: &Option<Framing>, s: S) -> Result<S::Ok, S::Error> {
        match f {
            Some(f) => s.serialize_str(&f.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Framing>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// One connection's worth of test: its messages and the plan for the request stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    pub conn: u64,
    pub messages: Vec<Bytes>,
    pub plan: Plan,
}

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub failure: Option<Failure>,
    pub expected: Vec<Bytes>,
    pub seen: Seen,
    pub latencies_us: Vec<u64>,
    pub bytes: usize,
}

impl CaseConfig {
    /// The request stream of connection `conn` sending `messages`, and its frame layouts.
    pub fn encode(&self, conn: u64, messages: &[Bytes]) -> Result<Encoded, WireError> {
        self.oracle.encode(&self.framing, conn, messages)
    }

    /// The messages connection `conn` sends, made from the workload's payloads.
    pub fn messages(&self, workload: &Workload, seed: u64, conn: u64) -> Vec<Bytes> {
        let mut messages = self.oracle.messages(workload.messages(seed, conn), conn);
        if self.framing.is_raw() {
            // An empty raw message is no bytes at all: nothing a server could answer.
            messages.retain(|m| !m.is_empty());
        }
        messages
    }

    /// How replies are framed: `reply_framing`, or else `framing`.
    pub fn reply_framing(&self) -> &Framing {
        self.reply_framing.as_ref().unwrap_or(&self.framing)
    }

    /// How a case's connection takes turns when `due` replies are due.
    pub fn exchange(&self, due: usize) -> Exchange {
        Exchange {
            due,
            ping_pong: self.mode == Mode::PingPong,
            fin: if self.half_close {
                self.oracle.fin()
            } else {
                Fin::Never
            },
            timing: self.timing,
        }
    }
}

/// Draws case `conn` for any oracle: its messages (see [`CaseConfig::messages`]) and
/// the plan of `faults` for their request stream.
pub fn draw_case(
    config: &CaseConfig,
    workload: &Workload,
    faults: &FaultSet,
    seed: u64,
    conn: u64,
) -> Case {
    let messages = config.messages(workload, seed, conn);
    let plan = match config.encode(conn, &messages) {
        Ok((stream, layouts)) => {
            let plan = faults.plan(
                stream.len(),
                &layouts,
                &mut conn_rng(seed, conn, Direction::Up),
            );
            if config.framing.is_raw() {
                let ends: Vec<usize> = layouts.iter().map(|l| l.end).collect();
                plan.whole_frames(&ends)
            } else {
                plan
            }
        }
        Err(_) => Plan::default(),
    };
    Case {
        conn,
        messages,
        plan,
    }
}

impl CaseResult {
    fn new(bytes: usize) -> CaseResult {
        CaseResult {
            failure: None,
            expected: Vec::new(),
            seen: Seen {
                replies: Vec::new(),
                end: End::Eof,
            },
            latencies_us: Vec::new(),
            bytes,
        }
    }
}

/// Runs one case against `target`: encode, open, drive, judge, read back, and (after
/// a cut, or if a spawned server died) liveness. Which oracle judges is
/// `config.oracle`'s business; this sequence is the same for all.
pub async fn run_case(target: &mut Target, config: &CaseConfig, case: &Case) -> CaseResult {
    let oracle = &*config.oracle;
    let (stream, layouts) = match config.encode(case.conn, &case.messages) {
        Ok(x) => x,
        Err(e) => {
            let mut result = CaseResult::new(0);
            result.failure = Some(Failure::new(
                FailureClass::MalformedReply,
                None,
                format!("cannot encode: {e}"),
            ));
            return result;
        }
    };
    let ending = case.plan.ending();
    // Frames wholly sent before a cut are due a reply; the cut one never is.
    let complete = match ending {
        Some((_, at)) => layouts.iter().take_while(|l| l.end <= at).count(),
        None => layouts.len(),
    };
    let whole = &case.messages[..complete];
    let mut result = CaseResult::new(stream.len());
    let (before, after) = oracle.baseline().map_or((0, 0), |b| b.runs());
    let mut baselines = Vec::with_capacity(before + after);
    for _ in 0..before {
        baselines.push(unfaulted(target, config, case.conn, whole).await);
    }
    result.expected = match oracle.baseline() {
        // Due: as many replies as the most generous baseline got.
        Some(_) => baselines
            .iter()
            .max_by_key(|b| b.replies.len())
            .map(|b| b.replies.clone())
            .unwrap_or_default(),
        None => oracle.expected(case.conn, whole),
    };
    let sock = match open(target, config, case.conn, &stream).await {
        Ok(Opened::Stream(sock)) => sock,
        Ok(Opened::Settled {
            expected,
            seen,
            failure,
        }) => {
            // The handshake was the whole case: nothing inner is due.
            result.expected = expected;
            result.seen.replies = seen;
            result.failure = failure;
            if result.failure.is_none() && target.exited().is_some() {
                result.failure = liveness(target, config, &case.messages).await.err();
            }
            if let Some(f) = &result.failure {
                recover(target, config, f.class, &case.messages).await;
            }
            return result;
        }
        Err(f) => {
            await_exit(target).await;
            let failure = dead_or(target, f.class, f.detail);
            recover(target, config, failure.class, &case.messages).await;
            result.failure = Some(failure);
            return result;
        }
    };
    let driven = drive::drive(
        sock,
        oracle.reply_codec(config.reply_framing()),
        stream,
        &layouts,
        &case.plan,
        // A client printing its messages on stdout owes nothing on the socket.
        &config.exchange(if target.replies_on_socket() {
            result.expected.len()
        } else {
            0
        }),
    )
    .await;
    // After our own RST, only a prefix of the replies can be demanded; after a close
    // too, for servers that abandon work when their client closes.
    let must_finish = match ending {
        Some((Ending::Reset, _)) => false,
        Some(_) => !oracle.close_aborts(),
        None => true,
    };
    result.failure = match oracle.baseline() {
        Some(b) => {
            for _ in 0..after {
                baselines.push(unfaulted(target, config, case.conn, whole).await);
            }
            let (expected, failure) = b.judge(&baselines, &driven.seen, must_finish);
            result.expected = expected;
            failure
        }
        None => oracle.judge(&result.expected, &driven.seen, must_finish),
    };
    result.seen = driven.seen;
    result.latencies_us = driven.latencies_us;
    if let Some(client) = target.client.as_mut() {
        // A client's liveness: it must exit once its connection has ended.
        client::settle_case(client, config, ending, must_finish, &mut result).await;
        return result;
    }
    if result.failure.is_none() {
        let delivered = Delivered {
            conn: case.conn,
            messages: &case.messages,
            complete,
            layouts: &layouts,
            ending,
        };
        result.failure = read_back(target, config, &delivered).await.err();
    }
    if result.failure.is_none() && (ending.is_some() || target.exited().is_some()) {
        result.failure = liveness(target, config, &case.messages).await.err();
    }
    if let Some(f) = &result.failure {
        recover(target, config, f.class, &case.messages).await;
    }
    result
}

/// Opens case `conn`'s connection: the oracle's handshake if it has one, else a plain
/// connection from the target.
async fn open(
    target: &mut Target,
    config: &CaseConfig,
    conn: u64,
    requests: &[u8],
) -> Result<Opened, Failure> {
    if target.client.is_some() {
        // A client under test connects to us: its accepted connection is the stream.
        return target
            .open(requests.len(), &config.timing)
            .await
            .map(Opened::Stream);
    }
    match config.oracle.handshake() {
        Some(h) => h.open(target, conn, requests, &config.timing).await,
        None => open_fresh(target, config, &config.timing)
            .await
            .map(Opened::Stream),
    }
}

/// A plain, accepted connection (baselines, read-back, liveness).
async fn open_fresh(
    target: &Target,
    config: &CaseConfig,
    timing: &Timing,
) -> Result<Conn, Failure> {
    match config.oracle.handshake() {
        Some(h) => h.open_fresh(target, timing).await,
        None => target
            .connect(timing.connect)
            .await
            .map_err(|e| Failure::new(FailureClass::Refused, None, format!("cannot connect: {e}"))),
    }
}

/// What an unfaulted connection sending `messages` sees (a baseline run).
async fn unfaulted(target: &Target, config: &CaseConfig, conn: u64, messages: &[Bytes]) -> Seen {
    let nothing = |end| Seen {
        replies: Vec::new(),
        end,
    };
    let Ok((stream, layouts)) = config.encode(conn, messages) else {
        return nothing(End::Eof);
    };
    let Ok(sock) = open_fresh(target, config, &config.timing).await else {
        return nothing(End::Reset);
    };
    let plan = Plan::passthrough(stream.len());
    let exchange = Exchange {
        ping_pong: false,
        ..config.exchange(messages.len())
    };
    drive::drive(
        sock,
        config.oracle.reply_codec(config.reply_framing()),
        stream,
        &layouts,
        &plan,
        &exchange,
    )
    .await
    .seen
}

/// The read-back capability, if the oracle has it: a fresh connection checks what the
/// case left behind.
async fn read_back(
    target: &Target,
    config: &CaseConfig,
    delivered: &Delivered<'_>,
) -> Result<(), Failure> {
    let Some(rb) = config.oracle.read_back() else {
        return Ok(());
    };
    let ((stream, layouts), due) = match rb.requests(delivered) {
        Ok(Some(x)) => x,
        Ok(None) => return Ok(()),
        Err(e) => {
            return Err(Failure::new(
                FailureClass::MalformedReply,
                None,
                format!("cannot encode the read-back: {e}"),
            ))
        }
    };
    let sock = open_fresh(target, config, &config.timing)
        .await
        .map_err(|f| Failure {
            detail: format!("reading back what the case left: {}", f.detail),
            ..f
        })?;
    let plan = Plan::passthrough(stream.len());
    let exchange = Exchange {
        fin: Fin::AfterWrite,
        ..Exchange::new(due, config.timing)
    };
    let d = drive::drive(
        sock,
        config.oracle.reply_codec(config.reply_framing()),
        stream,
        &layouts,
        &plan,
        &exchange,
    )
    .await;
    match rb.judge(delivered, &d.seen) {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

/// A fresh connection must be served correctly within `config.liveness`; `session` is
/// the case's messages (an oracle may probe with one of them).
pub async fn liveness(
    target: &mut Target,
    config: &CaseConfig,
    session: &[Bytes],
) -> Result<(), Failure> {
    let probe = config.oracle.probe(session);
    let (stream, layouts) = match config.encode(PROBE_CONN, std::slice::from_ref(&probe.message)) {
        Ok(x) => x,
        Err(e) => {
            return Err(Failure::new(
                FailureClass::MalformedReply,
                None,
                format!("cannot encode the liveness probe: {e}"),
            ))
        }
    };
    let deadline = tokio::time::Instant::now() + config.liveness;
    let timing = Timing {
        reply_timeout: config.liveness,
        // Only the first reply is judged: listening on for phantom replies would cost
        // every probe `grace`, 200 ms a cut on a one-client-at-a-time server.
        grace: Duration::ZERO,
        ..config.timing
    };
    let mut last = String::new();
    // Retry connecting briefly: a server may take a moment to return to accept().
    while tokio::time::Instant::now() < deadline {
        match open_fresh(target, config, &timing).await {
            Ok(sock) => {
                let plan = Plan::passthrough(stream.len());
                let exchange = Exchange {
                    fin: probe.fin,
                    ..Exchange::new(1, timing)
                };
                let driven = drive::drive(
                    sock,
                    config.oracle.reply_codec(config.reply_framing()),
                    stream.clone(),
                    &layouts,
                    &plan,
                    &exchange,
                );
                // A server seen spinning will not serve it either: no need to wait
                // out the deadline ([`stuck`]).
                let d = match stuck::Watch::new(target) {
                    Some(mut watch) => tokio::select! {
                        d = driven => d,
                        seen = watch.spinning() => {
                            return Err(Failure::new(
                                FailureClass::Hang,
                                None,
                                format!("after the fault, a fresh connection was not served: {seen}"),
                            ));
                        }
                    },
                    None => driven.await,
                };
                return match (&probe.reply, d.seen.replies.first()) {
                    (Some(want), Some(got)) if want == got => Ok(()),
                    (None, Some(_)) => Ok(()),
                    (_, Some(got)) => Err(Failure::new(
                        FailureClass::Liveness,
                        None,
                        format!(
                            "after the fault, a fresh connection got a wrong reply {}",
                            payload::preview(got)
                        ),
                    )),
                    (_, None) => {
                        if d.seen.end != End::Timeout {
                            // Reset or closed unanswered: a dying server closes its
                            // sockets before it can be reaped.
                            await_exit(target).await;
                        }
                        Err(dead_or(
                            target,
                            FailureClass::Hang,
                            format!(
                                "after the fault, a fresh connection was not served within {:?} ({:?})",
                                config.liveness, d.seen.end
                            ),
                        ))
                    }
                };
            }
            Err(f) => {
                last = f.detail;
                if target.exited().is_some() {
                    break;
                }
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
        }
    }
    Err(dead_or(
        target,
        FailureClass::Refused,
        format!("after the fault, fresh connections are refused: {last}"),
    ))
}

/// Longest wait for a spawned server that dropped a connection unanswered to be seen
/// exiting, and how often to look.
const EXIT_GRACE: Duration = Duration::from_millis(300);
const EXIT_POLL: Duration = Duration::from_millis(10);

/// Waits (at most [`EXIT_GRACE`]) for a spawned target to exit; returns at once for
/// others, or once it has.
async fn await_exit(target: &mut Target) {
    if !target.is_spawned() {
        return;
    }
    let deadline = tokio::time::Instant::now() + EXIT_GRACE;
    while target.exited().is_none() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(EXIT_POLL).await;
    }
}

/// `class`, unless the spawned process has exited, which is reported instead.
fn dead_or(target: &mut Target, class: FailureClass, detail: String) -> Failure {
    match target.exited() {
        Some(status) => {
            let tail = target.stderr_tail();
            let stderr = if tail.is_empty() {
                String::new()
            } else {
                format!("; stderr: {tail}")
            };
            Failure::new(
                FailureClass::ServerDied,
                None,
                format!("server process exited ({status}){stderr}"),
            )
        }
        None => Failure::new(class, None, detail),
    }
}

/// Failure classes that say the server as a whole may be dead or stuck, not only one
/// connection's replies wrong.
pub(crate) fn server_wide(class: FailureClass) -> bool {
    matches!(
        class,
        FailureClass::Hang
            | FailureClass::Refused
            | FailureClass::ServerDied
            | FailureClass::Liveness
    )
}

/// How long the health check after a wrong reply may take; a server slower than that
/// is restarted, as every failed server used to be.
const HEALTH_WAIT: Duration = Duration::from_millis(500);

/// After a failure, makes sure the next case starts on a healthy spawned target. A
/// server that died, hangs or refuses is restarted; after a wrong reply on one
/// connection, a fresh connection is tried first and the server is restarted only if
/// it is not served: a respawn costs an interpreter's start-up, and a shrink makes
/// dozens of failing runs.
async fn recover(target: &mut Target, config: &CaseConfig, class: FailureClass, session: &[Bytes]) {
    if !target.is_spawned() {
        return;
    }
    if target.exited().is_none() && !server_wide(class) {
        let quick = CaseConfig {
            liveness: config.liveness.min(HEALTH_WAIT),
            ..config.clone()
        };
        if liveness(target, &quick, session).await.is_ok() {
            return;
        }
    }
    restart(target).await;
}

/// Restarts a spawned target (no-op for others), so the next case starts afresh.
async fn restart(target: &mut Target) {
    if target.is_spawned() {
        if let Err(e) = target.restart().await {
            tracing::warn!("restart failed: {e}");
        }
    }
}
