//! Campaigns: drive a target with seeded workloads under each fault, judge every reply
//! with an oracle, check liveness after every cut, shrink failures into reproducers.
//!
//! - [`drive`]: one connection over a real socket, per its plan.
//! - [`judge`]: expected versus seen, and the failure classes.
//! - [`target`]: `--connect ADDR` or `--spawn CMD` (started, watched, restarted).
//! - [`shrink`]: makes a failing case smaller while it still fails.
//! - [`repro`]: reproducer files and `chopstick replay`.
//! - [`protocol`]: how exec, file and auth messages become requests and replies.
//! - [`run`]: `chopstick run`, every reference server in-process under every fault.

pub mod check;
pub mod drive;
pub mod judge;
pub mod payload;
pub mod protocol;
pub mod repro;
pub mod run;
pub mod shrink;
pub mod target;

use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use chopstick_targets::wire::Framing;
use serde::{Deserialize, Serialize};

use crate::chaos::{conn_rng, Direction, Ending, FaultSet, Plan};
use crate::workload::{Mode, Workload};
use chopstick_targets::wire::{FrameLayout, HjsonCodec, WireError, DEFAULT_MAX};
pub use drive::Timing;
use drive::{Fin, ReplyCodec};
pub use judge::{End, Failure, FailureClass, Seen};
use protocol::{AuthKey, AuthVariant};
pub use target::{Target, TargetError, TargetSpec};

/// How replies are judged (and, for exec, file and auth, how requests are made: see
/// [`protocol`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OracleKind {
    /// Each reply equals its request.
    Echo,
    /// Each reply is its request with ASCII a-z upper-cased.
    Upper,
    /// Each reply equals the reply to the same request on an unfaulted connection.
    Differential,
    /// The exec server (hjson): messages are `ARGV_JSON\nSTDIN` requests of known
    /// commands; replies are compared by exit, signal, stdout, stderr, timed_out and
    /// truncated. Only a prefix of replies is due after a cut: the server kills a
    /// running command when its client closes.
    Exec,
    /// The file server (hjson): each message is put under a name derived from it; a
    /// fresh connection then gets every file back. A put cut by a disconnect must have
    /// left the old file or none, never part of the new one.
    File,
    /// The auth server with inner echo: a handshake variant per connection
    /// ([`AuthVariant::for_conn`]), then the echo oracle on the inner stream.
    Auth { key: AuthKey },
}

impl FromStr for OracleKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "echo" => Ok(OracleKind::Echo),
            "upper" => Ok(OracleKind::Upper),
            "differential" => Ok(OracleKind::Differential),
            _ => Err(format!(
                "unknown oracle `{s}` (expected echo, upper or differential)"
            )),
        }
    }
}

/// Everything about a case but its messages and plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseConfig {
    #[serde(with = "framing_string")]
    pub framing: Framing,
    pub oracle: OracleKind,
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

impl OracleKind {
    /// The replies due for `messages` (not for differential, which needs a baseline run).
    pub fn expected(self, messages: &[Bytes]) -> Vec<Bytes> {
        match self {
            OracleKind::Upper => messages
                .iter()
                .map(|m| Bytes::from(m.to_ascii_uppercase()))
                .collect(),
            OracleKind::Exec => messages
                .iter()
                .map(|m| protocol::exec_expected(m))
                .collect(),
            OracleKind::File => messages
                .iter()
                .map(|m| protocol::file_put_expected(m))
                .collect(),
            _ => messages.to_vec(),
        }
    }
}

impl CaseConfig {
    /// The request stream of connection `conn` sending `messages`, and its frame layouts.
    pub fn encode(
        &self,
        conn: u64,
        messages: &[Bytes],
    ) -> Result<(Bytes, Vec<FrameLayout>), WireError> {
        match self.oracle {
            OracleKind::Exec => protocol::encode_hjson(
                &messages
                    .iter()
                    .map(|m| protocol::exec_request(m))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            OracleKind::File => protocol::encode_hjson(
                &messages
                    .iter()
                    .map(|m| protocol::file_put(conn, m))
                    .collect::<Vec<_>>(),
            ),
            _ => self.framing.encode_all(messages),
        }
    }

    /// The decoder turning replies into what the oracle compares.
    fn reply_codec(&self) -> ReplyCodec {
        match self.oracle {
            OracleKind::Exec => {
                ReplyCodec::Hjson(HjsonCodec::new(DEFAULT_MAX), protocol::exec_canonical)
            }
            OracleKind::File => {
                ReplyCodec::Hjson(HjsonCodec::new(DEFAULT_MAX), protocol::file_canonical)
            }
            _ => ReplyCodec::frames(&self.framing),
        }
    }

    /// When to half-close after the last request.
    fn fin(&self) -> Fin {
        match (self.half_close, self.oracle) {
            (false, _) => Fin::Never,
            // exec kills a running command on FIN; it may only come once all replies have.
            (true, OracleKind::Exec) => Fin::AfterReplies,
            (true, _) => Fin::AfterWrite,
        }
    }

    /// The messages connection `conn` sends, made from the workload's payloads.
    pub fn messages(&self, workload: &Workload, seed: u64, conn: u64) -> Vec<Bytes> {
        let payloads = workload.messages(seed, conn);
        match self.oracle {
            OracleKind::Exec => protocol::exec_messages(&payloads, conn),
            _ => payloads,
        }
    }

    /// The one message a liveness probe sends.
    fn probe(&self) -> Bytes {
        match self.oracle {
            OracleKind::Exec => protocol::exec_message(&["echo", "chopstick liveness probe"], b""),
            _ => Bytes::from_static(b"chopstick liveness probe"),
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
        Ok((stream, layouts)) => faults.plan(
            stream.len(),
            &layouts,
            &mut conn_rng(seed, conn, Direction::Up),
        ),
        Err(_) => Plan::default(),
    };
    Case {
        conn,
        messages,
        plan,
    }
}

/// Runs one case against `target`, then (after a cut) checks liveness.
pub async fn run_case(target: &mut Target, config: &CaseConfig, case: &Case) -> CaseResult {
    let (stream, layouts) = match config.encode(case.conn, &case.messages) {
        Ok(x) => x,
        Err(e) => {
            return CaseResult {
                failure: Some(Failure::new(
                    FailureClass::MalformedReply,
                    None,
                    format!("cannot encode: {e}"),
                )),
                expected: Vec::new(),
                seen: Seen {
                    replies: Vec::new(),
                    end: End::Eof,
                },
                latencies_us: Vec::new(),
                bytes: 0,
            }
        }
    };
    let ending = case.plan.ending();
    // Frames wholly sent before a cut are due a reply; the cut one never is.
    let complete = match ending {
        Some((_, at)) => layouts.iter().take_while(|l| l.end <= at).count(),
        None => layouts.len(),
    };
    let expected = match config.oracle {
        OracleKind::Differential => baseline(target, config, &case.messages[..complete]).await,
        oracle => oracle.expected(&case.messages[..complete]),
    };
    let bytes = stream.len();
    let mut result = CaseResult {
        failure: None,
        expected,
        seen: Seen {
            replies: Vec::new(),
            end: End::Eof,
        },
        latencies_us: Vec::new(),
        bytes,
    };
    let variant = match config.oracle {
        OracleKind::Auth { .. } => Some(AuthVariant::for_conn(case.conn)),
        _ => None,
    };
    let opened = match (config.oracle, variant) {
        (OracleKind::Auth { key }, Some(v)) if !v.accepted() => {
            // A rejected handshake is the whole case: nothing inner is due.
            result.expected = vec![Bytes::from_static(b"verdict 0, then close")];
            let (failure, seen) = auth_reject_case(target.addr, key, v, &stream, config).await;
            result.seen.replies = seen.into_iter().collect();
            result.failure = failure;
            if result.failure.is_none() && target.exited().is_some() {
                result.failure = liveness(target, config).await.err();
            }
            if result.failure.is_some() {
                recover(target).await;
            }
            return result;
        }
        (OracleKind::Auth { key }, Some(v)) => {
            open_auth(
                target.addr,
                key,
                v == AuthVariant::SplitDigest,
                &config.timing,
            )
            .await
        }
        _ => drive::connect(target.addr, &config.timing)
            .await
            .map_err(|e| Failure::new(FailureClass::Refused, None, format!("cannot connect: {e}"))),
    };
    let sock = match opened {
        Ok(s) => s,
        Err(f) => {
            result.failure = Some(dead_or(target, f.class, f.detail));
            recover(target).await;
            return result;
        }
    };
    let driven = drive::drive_with(
        sock,
        config.reply_codec(),
        stream,
        &layouts,
        &case.plan,
        result.expected.len(),
        config.mode == Mode::PingPong,
        config.fin(),
        &config.timing,
    )
    .await;
    // exec kills a running command when its client closes: after any cut, only a
    // prefix of the replies can be demanded. After our own RST, for everyone.
    let must_finish = match ending {
        Some((Ending::Reset, _)) => false,
        Some(_) => config.oracle != OracleKind::Exec,
        None => true,
    };
    result.failure = judge::judge(&result.expected, &driven.seen, must_finish);
    result.seen = driven.seen;
    result.latencies_us = driven.latencies_us;
    if result.failure.is_none() && config.oracle == OracleKind::File {
        result.failure = verify_files(target.addr, config, case, complete, &layouts, ending)
            .await
            .err();
    }
    if result.failure.is_none() && (ending.is_some() || target.exited().is_some()) {
        result.failure = liveness(target, config).await.err();
    }
    if result.failure.is_some() {
        recover(target).await;
    }
    result
}

/// The reply sequence of an unfaulted connection sending `messages`.
async fn baseline(target: &mut Target, config: &CaseConfig, messages: &[Bytes]) -> Vec<Bytes> {
    let Ok((stream, layouts)) = config.framing.encode_all(messages) else {
        return Vec::new();
    };
    let Ok(sock) = drive::connect(target.addr, &config.timing).await else {
        return Vec::new();
    };
    let plan = Plan::passthrough(stream.len());
    drive::drive(
        sock,
        &config.framing,
        stream,
        &layouts,
        &plan,
        messages.len(),
        false,
        config.half_close,
        &config.timing,
    )
    .await
    .seen
    .replies
}

/// A fresh connection must be served correctly within `config.liveness`.
pub async fn liveness(target: &mut Target, config: &CaseConfig) -> Result<(), Failure> {
    let probe = vec![config.probe()];
    let expected = match config.oracle {
        OracleKind::Differential => None,
        oracle => Some(oracle.expected(&probe)),
    };
    let (stream, layouts) = match config.encode(u64::MAX, &probe) {
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
        ..config.timing
    };
    let mut last = String::new();
    // Retry connecting briefly: a server may take a moment to return to accept().
    while tokio::time::Instant::now() < deadline {
        let opened = match config.oracle {
            OracleKind::Auth { key } => open_auth(target.addr, key, false, &timing)
                .await
                .map_err(|f| f.detail),
            _ => drive::connect(target.addr, &timing)
                .await
                .map_err(|e| e.to_string()),
        };
        match opened {
            Ok(sock) => {
                let plan = Plan::passthrough(stream.len());
                // The older oracles keep their original probe (no FIN); the new ones
                // close once answered, so a correct server ends the probe at once.
                let fin = match config.oracle {
                    OracleKind::Echo | OracleKind::Upper | OracleKind::Differential => Fin::Never,
                    _ => Fin::AfterReplies,
                };
                let d = drive::drive_with(
                    sock,
                    config.reply_codec(),
                    stream.clone(),
                    &layouts,
                    &plan,
                    1,
                    false,
                    fin,
                    &timing,
                )
                .await;
                return match (&expected, d.seen.replies.first()) {
                    (Some(want), Some(got)) if want[0] == *got => Ok(()),
                    (None, Some(_)) => Ok(()),
                    (_, Some(got)) => Err(Failure::new(
                        FailureClass::Liveness,
                        None,
                        format!(
                            "after the fault, a fresh connection got a wrong reply {}",
                            payload::preview(got)
                        ),
                    )),
                    (_, None) => Err(dead_or(
                        target,
                        FailureClass::Hang,
                        format!(
                            "after the fault, a fresh connection was not served within {:?} ({:?})",
                            config.liveness, d.seen.end
                        ),
                    )),
                };
            }
            Err(e) => {
                last = e;
                if target.exited().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Err(dead_or(
        target,
        FailureClass::Refused,
        format!("after the fault, fresh connections are refused: {last}"),
    ))
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

/// After a failure, restart a spawned target so the next case starts healthy.
async fn recover(target: &mut Target) {
    if target.is_spawned() {
        if let Err(e) = target.restart().await {
            tracing::warn!("restart failed: {e}");
        }
    }
}

/// Reads exactly `buf.len()` bytes within the reply timeout; `what` names them in failures.
async fn read_within(
    sock: &mut tokio::net::TcpStream,
    buf: &mut [u8],
    timing: &Timing,
    what: &str,
) -> Result<(), Failure> {
    use tokio::io::AsyncReadExt;
    match tokio::time::timeout(timing.reply_timeout, sock.read_exact(buf)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(Failure::new(
            FailureClass::Lost,
            None,
            format!("the connection ended before the {what}: {e}"),
        )),
        Err(_) => Err(Failure::new(
            FailureClass::Hang,
            None,
            format!("no {what} within {:?}", timing.reply_timeout),
        )),
    }
}

/// Sends an auth digest: in one write, or one byte per write with a pause between so
/// the server really reads it in pieces.
async fn send_digest(
    sock: &mut tokio::net::TcpStream,
    digest: &[u8],
    split: bool,
    timing: &Timing,
) -> Result<(), Failure> {
    use tokio::io::AsyncWriteExt;
    let send = async {
        if split {
            for b in digest {
                sock.write_all(std::slice::from_ref(b)).await?;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok(())
        } else {
            sock.write_all(digest).await
        }
    };
    match tokio::time::timeout(timing.reply_timeout, send).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failure::new(
            FailureClass::Lost,
            None,
            format!("the server closed while the digest was sent: {e}"),
        )),
        Err(_) => Err(Failure::new(
            FailureClass::Hang,
            None,
            "the server stopped reading the digest",
        )),
    }
}

/// Connects and reads the server's nonce.
async fn auth_connect(
    addr: std::net::SocketAddr,
    timing: &Timing,
) -> Result<
    (
        tokio::net::TcpStream,
        [u8; chopstick_targets::auth::NONCE_LEN],
    ),
    Failure,
> {
    let mut sock = drive::connect(addr, timing)
        .await
        .map_err(|e| Failure::new(FailureClass::Refused, None, format!("cannot connect: {e}")))?;
    let mut nonce = [0u8; chopstick_targets::auth::NONCE_LEN];
    read_within(&mut sock, &mut nonce, timing, "auth nonce").await?;
    Ok((sock, nonce))
}

async fn read_verdict(sock: &mut tokio::net::TcpStream, timing: &Timing) -> Result<u8, Failure> {
    let mut verdict = [0u8; 1];
    read_within(sock, &mut verdict, timing, "auth verdict").await?;
    Ok(verdict[0])
}

/// Connects and authenticates with the right key (the digest split into 1-byte writes
/// when `split`); the stream then speaks the inner protocol.
async fn open_auth(
    addr: std::net::SocketAddr,
    key: AuthKey,
    split: bool,
    timing: &Timing,
) -> Result<tokio::net::TcpStream, Failure> {
    let (mut sock, nonce) = auth_connect(addr, timing).await?;
    send_digest(
        &mut sock,
        &chopstick_targets::auth::digest(key.bytes(), &nonce),
        split,
        timing,
    )
    .await?;
    match read_verdict(&mut sock, timing).await? {
        chopstick_targets::auth::ACCEPTED => Ok(sock),
        chopstick_targets::auth::REJECTED => Err(Failure::new(
            FailureClass::AuthRejected,
            None,
            if split {
                "the right digest, written one byte at a time, was rejected"
            } else {
                "the right digest was rejected"
            },
        )),
        other => Err(Failure::new(
            FailureClass::MalformedReply,
            None,
            format!("auth verdict byte {other}, expected 0 or 1"),
        )),
    }
}

/// A connection that must be rejected (wrong key, or a digest replayed from an earlier
/// connection): verdict 0, then a close, and nothing of the inner protocol even if the
/// client sends `inner` anyway. Returns the failure, if any, and what was seen.
async fn auth_reject_case(
    addr: std::net::SocketAddr,
    key: AuthKey,
    variant: AuthVariant,
    inner: &[u8],
    config: &CaseConfig,
) -> (Option<Failure>, Option<Bytes>) {
    let timing = &config.timing;
    let attempt = async {
        let (mut sock, nonce) = auth_connect(addr, timing).await?;
        let (digest, what) = if variant == AuthVariant::Replayed {
            // The earlier connection: authenticate properly, remember the digest.
            let first = chopstick_targets::auth::digest(key.bytes(), &nonce);
            send_digest(&mut sock, &first, false, timing).await?;
            match read_verdict(&mut sock, timing).await? {
                chopstick_targets::auth::ACCEPTED => {}
                v => {
                    return Err(Failure::new(
                        FailureClass::AuthRejected,
                        None,
                        format!("the right digest got verdict {v} (before the replay)"),
                    ))
                }
            }
            drop(sock);
            let (again, fresh) = auth_connect(addr, timing).await?;
            if fresh == nonce {
                return Err(Failure::new(
                    FailureClass::AuthBypass,
                    None,
                    "a fresh connection got the same nonce as the previous one",
                ));
            }
            sock = again;
            (first, "a digest replayed from an earlier connection")
        } else {
            (
                chopstick_targets::auth::digest(key.wrong().bytes(), &nonce),
                "a digest made with the wrong key",
            )
        };
        send_digest(&mut sock, &digest, false, timing).await?;
        match read_verdict(&mut sock, timing).await? {
            chopstick_targets::auth::REJECTED => {}
            chopstick_targets::auth::ACCEPTED => {
                return Err(Failure::new(
                    FailureClass::AuthBypass,
                    None,
                    format!("{what} was accepted"),
                ))
            }
            other => {
                return Err(Failure::new(
                    FailureClass::MalformedReply,
                    None,
                    format!("auth verdict byte {other}, expected 0"),
                ))
            }
        }
        // Rejected: it must close, and must not serve what we send regardless. Errors
        // writing are expected (the server may be gone already).
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = tokio::time::timeout(timing.reply_timeout, sock.write_all(inner)).await;
        let mut buf = [0u8; 256];
        match tokio::time::timeout(timing.reply_timeout, sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => Ok(()),
            Ok(Ok(n)) => Err(Failure::new(
                FailureClass::AuthBypass,
                None,
                format!(
                    "after rejecting {what} the server still sent {}",
                    payload::preview(&buf[..n])
                ),
            )),
            Err(_) => Err(Failure::new(
                FailureClass::Hang,
                None,
                format!(
                    "after rejecting {what} the server kept the connection open for {:?}",
                    timing.reply_timeout
                ),
            )),
        }
    };
    match attempt.await {
        Ok(()) => (None, Some(Bytes::from_static(b"verdict 0, then close"))),
        Err(f) => {
            let seen = Bytes::from(f.detail.clone());
            (Some(f), Some(seen))
        }
    }
}

/// File oracle, after the driven connection: a fresh connection gets every file whose
/// put was sent whole, and the one a cut interrupted. A put that was acknowledged must
/// read back exactly; one that was cut (or sent just before our own RST, which may
/// discard it unread) must read back whole or not at all, never partly written.
async fn verify_files(
    addr: std::net::SocketAddr,
    config: &CaseConfig,
    case: &Case,
    complete: usize,
    layouts: &[FrameLayout],
    ending: Option<(Ending, usize)>,
) -> Result<(), Failure> {
    let cut = ending.and_then(|(_, at)| {
        layouts
            .get(complete)
            .filter(|l| at > l.start)
            .map(|_| (complete, at))
    });
    let reset = matches!(ending, Some((Ending::Reset, _)));
    let n = (complete + usize::from(cut.is_some())).min(case.messages.len());
    if n == 0 {
        return Ok(());
    }
    let gets: Vec<_> = case.messages[..n]
        .iter()
        .map(|m| protocol::file_get(case.conn, m))
        .collect();
    let (stream, get_layouts) = protocol::encode_hjson(&gets).map_err(|e| {
        Failure::new(
            FailureClass::MalformedReply,
            None,
            format!("cannot encode gets: {e}"),
        )
    })?;
    let sock = drive::connect(addr, &config.timing).await.map_err(|e| {
        Failure::new(
            FailureClass::Refused,
            None,
            format!("cannot connect to read the files back: {e}"),
        )
    })?;
    let plan = Plan::passthrough(stream.len());
    let d = drive::drive_with(
        sock,
        config.reply_codec(),
        stream,
        &get_layouts,
        &plan,
        n,
        false,
        Fin::AfterWrite,
        &config.timing,
    )
    .await;
    for (i, message) in case.messages[..n].iter().enumerate() {
        let want = protocol::file_get_expected(message);
        let name = protocol::file_name(case.conn, message);
        let whole_due = i < complete && !reset;
        let Some(got) = d.seen.replies.get(i) else {
            let class = if d.seen.end == End::Timeout {
                FailureClass::Hang
            } else {
                FailureClass::Lost
            };
            return Err(Failure::new(
                class,
                Some(i),
                format!(
                    "reading back `{name}` (put #{i}) got no reply ({:?})",
                    d.seen.end
                ),
            ));
        };
        if *got == want || (!whole_due && protocol::file_absent(got)) {
            continue;
        }
        let failure = if !whole_due {
            let how = match cut {
                Some((j, at)) if j == i => format!("was cut at stream byte {at}"),
                _ => "was sent just before a reset".to_string(),
            };
            Failure::new(
                FailureClass::NotAtomic,
                Some(i),
                format!(
                    "put #{i} of `{name}` {how}; a fresh get must find the whole file or none, got {} (whole: {})",
                    payload::preview(got),
                    payload::preview(&want)
                ),
            )
        } else if protocol::file_absent(got) {
            Failure::new(
                FailureClass::Lost,
                Some(i),
                format!("put #{i} of `{name}` was acknowledged, but a fresh get finds no file"),
            )
        } else {
            Failure::new(
                FailureClass::Corrupted,
                Some(i),
                format!(
                    "reading back `{name}` (put #{i}): expected {}, got {}",
                    payload::preview(&want),
                    payload::preview(got)
                ),
            )
        };
        return Err(failure);
    }
    Ok(())
}
